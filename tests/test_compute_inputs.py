"""Compute backends with N named inputs: a real two-input ONNX graph (two images, weighted and summed) on ONNX
Runtime and OpenVINO, fed by name; a bare array still works for a one-input model. No torch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sonogate.errors import SonogateError

pytestmark = pytest.mark.torchfree


def _two_input_model(folder) -> str:
    """``total`` (N, 1) = mean(ap) + 2 * mean(lat); ``difference`` (N, 1, 8, 8) = ap - lat. Inputs ap and lat are
    (N, 1, 8, 8) float32; the batch is dynamic."""
    ap = helper.make_tensor_value_info("ap", TensorProto.FLOAT, ["N", 1, 8, 8])
    lat = helper.make_tensor_value_info("lat", TensorProto.FLOAT, ["N", 1, 8, 8])
    outputs = [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", 1]),
               helper.make_tensor_value_info("difference", TensorProto.FLOAT, ["N", 1, 8, 8])]
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array([-1, 1], np.int64), "shape")]
    nodes = [
        helper.make_node("ReduceMean", ["ap"], ["ap_mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("ReduceMean", ["lat"], ["lat_mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Mul", ["lat_mean4", "two"], ["lat_twice"]),
        helper.make_node("Add", ["ap_mean4", "lat_twice"], ["total4"]),
        helper.make_node("Reshape", ["total4", "shape"], ["total"]),
        helper.make_node("Sub", ["ap", "lat"], ["difference"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "two_views", [ap, lat], outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / "two_views.onnx"
    onnx.save(model, str(path))
    return path


def _devices():
    from sonogate.device.compute import available_devices

    return [d for d in ("ort-cpu", "openvino-cpu") if d in available_devices()]


@pytest.mark.parametrize("device", ["ort-cpu", "openvino-cpu"])
def test_two_named_inputs_give_the_graph_values(tmp_path, device):
    if device not in _devices():
        pytest.skip(f"{device} not available here")
    from sonogate.device.compute import create_backend

    backend, note = create_backend(_two_input_model(tmp_path), device)
    assert backend.input_names == ("ap", "lat") and backend.output_names == ("total", "difference")
    assert backend.input_shapes == ((1, 1, 8, 8), (1, 1, 8, 8)) and "warm-up" in note  # both inputs warmed up
    rng = np.random.default_rng(7)
    ap = rng.uniform(0, 1, (2, 1, 8, 8)).astype(np.float32)
    lat = rng.uniform(0, 1, (2, 1, 8, 8)).astype(np.float32)
    out = backend.infer({"lat": lat, "ap": ap})  # by name, in any order
    expected = ap.mean(axis=(1, 2, 3)) + 2 * lat.mean(axis=(1, 2, 3))
    np.testing.assert_allclose(out["total"].reshape(-1), expected, rtol=1e-5)
    np.testing.assert_allclose(out["difference"], ap - lat, atol=1e-6)
    swapped = backend.infer({"ap": lat, "lat": ap})  # the names, not the order, decide
    assert not np.allclose(swapped["total"], out["total"])
    with pytest.raises(RuntimeError, match=r"missing input\(s\) lat"):
        backend.infer({"ap": ap})
    with pytest.raises(RuntimeError, match=r"unknown input\(s\) pa"):
        backend.infer({"ap": ap, "lat": lat, "pa": ap})
    with pytest.raises(RuntimeError, match="2 named inputs"):
        backend.infer(ap)
    with pytest.raises(RuntimeError, match="inference failed"):
        backend.infer({"ap": ap, "lat": lat[:, :, :4]})  # a wrong shape on one input is an error, never empty


def test_ort_and_openvino_agree_on_two_inputs(tmp_path):
    if len(_devices()) < 2:
        pytest.skip("needs ONNX Runtime and OpenVINO")
    from sonogate.device.compute import create_backend

    path = _two_input_model(tmp_path)
    rng = np.random.default_rng(3)
    feeds = {"ap": rng.normal(0, 1, (1, 1, 8, 8)).astype(np.float32),
             "lat": rng.normal(0, 1, (1, 1, 8, 8)).astype(np.float32)}
    a = create_backend(path, "ort-cpu")[0].infer(feeds)
    b = create_backend(path, "openvino-cpu")[0].infer(feeds)
    for key in ("total", "difference"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)


def test_a_bare_array_still_feeds_a_one_input_model(tmp_path):
    from sonogate.device.compute import as_feeds

    x = np.zeros((1, 1, 4, 4), np.float32)
    assert as_feeds(x, ("image",), "test")["image"] is x
    with pytest.raises(RuntimeError, match="pass a dict"):
        as_feeds(x, ("ap", "lat"), "test")
    with pytest.raises(SonogateError, match="model file not found"):
        from sonogate.device.compute import create_backend

        create_backend(tmp_path / "none.onnx", "ort-cpu")
