"""``sonogate export``: ONNX == torch, INT8 in ORT and OpenVINO tracks float, the bundle loads in the runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from models_fixture import phantom_folder

from sonogate.core.bundle import load_bundle
from sonogate.errors import SonogateError
from sonogate.export.bundle import ExportOptions, export_bundle
from sonogate.export.onnx_export import check_onnx, export_onnx, ort_session, run_ort
from sonogate.tasks.hip_us.net import OUTPUT_NAMES
from sonogate.tasks.hip_us.train import TrainConfig, build_model, load_checkpoint, run_training

SIZE = 64


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    data = phantom_folder(root / "data", n=40, size=SIZE, seed=5)
    cfg = TrainConfig(data=str(data), out=str(root / "run"), size=SIZE, ssl_epochs=1, ssl_lr=1.0, head_epochs=20,
                      batch_size=16, progress=False)  # fmt: skip
    run_training(cfg, log=lambda m: None)
    return root / "run"


@pytest.fixture(scope="module")
def bundle(run_dir):
    out = run_dir.parent / "bundle"
    export_bundle(
        str(run_dir), str(out), ExportOptions(progress=False, latency_runs=3, calib_frames=24), log=lambda m: None
    )
    return out


def test_bundle_files_manifest_and_runtime_load(bundle):
    b = load_bundle(bundle)  # verifies every sha256
    assert b.task == "hip_us" and b.measurement_names == ("alpha_deg", "beta_deg", "coverage_pct")
    assert b.measurement_units == ("deg", "deg", "%")
    assert b.preprocessing.height == SIZE and b.preprocessing.mean == 0.5 and b.preprocessing.std == 0.25
    assert set(b.models) == {"float", "int8", "openvino"}
    assert b.models["openvino"]["precision"] in ("fp32", "int8")
    m = b.manifest
    assert m["outputs"]["features"]["dim"] == 512 and m["ood"]["file"] == "ood.npz"
    prov = m["provenance"]
    assert "Apache-2.0" in prov["training_data"]["licence"] and "Radiopaedia" not in json.dumps(prov)
    assert {"torch", "onnx", "onnxruntime", "openvino", "sonogate"} <= set(prov["versions"])
    assert "calibration.json" not in m["files"]
    ood = np.load(bundle / "ood.npz")
    assert ood["mean"].shape == (512,) and ood["precision"].shape == (512, 512) and float(ood["threshold"]) > 0


def test_onnx_graph_contract_and_matches_torch(bundle, run_dir):
    import onnx

    model = onnx.load(str(bundle / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "image" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, SIZE, SIZE]
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    torch_model = build_model(load_checkpoint(run_dir))
    x = np.random.default_rng(0).normal(size=(5, 1, SIZE, SIZE)).astype(np.float32)  # batch 5: dynamic N
    got = run_ort(ort_session(bundle / "model.onnx"), x)
    with torch.no_grad():
        ref = [t.numpy() for t in torch_model(torch.from_numpy(x))]
    for name, r in zip(OUTPUT_NAMES, ref):
        assert got[name].shape == r.shape
        np.testing.assert_allclose(got[name], r, atol=1e-3, rtol=1e-4)


def test_int8_runs_in_ort_and_openvino_and_tracks_float(bundle):
    import onnx
    import openvino as ov

    int8 = onnx.load(str(bundle / "model.int8.onnx"))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # Per-channel: some weight scale is a vector (one per output channel).
    scales = [i for i in int8.graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1 and i.dims[0] > 1]
    assert scales
    folder_images = sorted((bundle.parent / "data" / "images").glob("*.png"))[:12]
    import cv2

    x = np.stack([cv2.resize(cv2.imread(str(p), 0), (SIZE, SIZE), interpolation=cv2.INTER_AREA) for p in folder_images])
    x = ((x.astype(np.float32) / 255 - 0.5) / 0.25)[:, None]
    ref = run_ort(ort_session(bundle / "model.onnx"), x)
    q = run_ort(ort_session(bundle / "model.int8.onnx"), x)
    compiled = ov.Core().compile_model(str(bundle / "model.int8.onnx"), "CPU")
    qov = compiled(x)[compiled.output("measurements")]
    ir = ov.Core().compile_model(str(bundle / "openvino" / "model.xml"), "CPU")
    ov_meas = ir(x)[ir.output("measurements")]
    spread = ref["measurements"].std(0) + 1.0
    for out in (q["measurements"], qov, ov_meas):
        assert out.shape == ref["measurements"].shape
        # Tracks float: errors small against the spread of the predictions themselves.
        assert (np.abs(out - ref["measurements"]).mean(0) < 0.5 * spread).all()
    assert np.corrcoef(q["features"].ravel(), ref["features"].ravel())[0, 1] > 0.95


def test_parity_json_reports_int8_vs_float_truth_and_latency(bundle):
    parity = json.loads((bundle / "parity.json").read_text())
    assert parity["data"]["n_frames"] > 0
    for variant in ("float", "int8", "openvino"):
        block = parity["models"][variant]
        assert block["latency"]["median_ms"] > 0
        assert set(block["vs_truth_standard_plane"]) == {"alpha_deg", "beta_deg", "coverage_pct"}
    assert "alpha_deg" in parity["models"]["int8"]["vs_float_standard_plane"]
    assert isinstance(parity["models"]["int8"]["meets_goal"], bool)


def test_export_refuses_non_empty_folder_and_missing_run(bundle, tmp_path):
    with pytest.raises(SonogateError, match="not empty"):
        export_bundle(str(bundle.parent / "run"), str(bundle), ExportOptions(progress=False))
    with pytest.raises(SonogateError, match="no training checkpoint"):
        export_bundle(str(tmp_path / "nothing"), str(tmp_path / "b"), ExportOptions(progress=False))


def test_landmark_graph_exports_with_atan2_and_matches_torch(tmp_path):
    from sonogate.tasks.hip_us.geometry import GRAF_LANDMARKS
    from sonogate.tasks.hip_us.net import HipUSNet

    torch.manual_seed(0)
    model = HipUSNet("landmark", GRAF_LANDMARKS).eval()
    path = export_onnx(model, tmp_path / "lm.onnx", SIZE, OUTPUT_NAMES)
    x = np.random.default_rng(2).normal(size=(3, 1, SIZE, SIZE)).astype(np.float32)
    diffs = check_onnx(path, model, x)  # raises when ORT and torch differ by > 1e-3
    assert set(diffs) == set(OUTPUT_NAMES)


def test_force_never_wipes_a_folder_that_is_not_a_bundle(bundle, tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(SonogateError, match="non-bundle files"):
        export_bundle(str(bundle.parent / "run"), str(tmp_path), ExportOptions(progress=False, force=True))
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_shipped_graph_carries_no_local_paths(bundle):
    data = (bundle / "model.onnx").read_bytes()
    assert b"/work/" not in data and b"stack_trace" not in data
