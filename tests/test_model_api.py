"""One runtime for many tasks: ``create_model`` picks the wrapper from the bundle's model type, the generic
image-measurement wrapper runs a task with two named image inputs and no quality output, a per-image task goes
through ``sonogate analyze`` with its own CSV columns, and a v1 bundle and its v2 upgrade give identical outputs.
Real ONNX Runtime on hand-built graphs and the demo bundle; no torch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sonogate.core.bundle import Preprocessing, load_bundle, write_manifest
from sonogate.core.registry import register
from sonogate.core.task import DecisionSpec, InputSpec, MeasurementSpec, OutputSpec, TaskSpec
from sonogate.errors import BundleError, SonogateError
from sonogate.runtime.engine import ImageMeasurementModel
from sonogate.runtime.model_api import create_model, model_type_of
from sonogate.runtime.preprocess import ImagePreprocessor, Preprocessor, letterbox
from tests.test_xr import _dicom, _run_cli, handmade_xr_bundle

pytestmark = pytest.mark.torchfree

SIZE = 16
TWO_VIEWS = register(TaskSpec(
    id="test_two_views", version=1, title="two radiographs, one score", modality="DX", model_type="image_measurement",
    inputs=(InputSpec(name="ap_image", view="ap", height=SIZE, width=SIZE),
            InputSpec(name="lat_image", view="lat", height=SIZE, width=SIZE, interpolation="linear")),
    outputs=(OutputSpec(name="measurements", kind="measurement", axes=("N", 1), names=("score",)),),
    measurements=(MeasurementSpec(name="score", unit="1", threshold=0.0, safe_side="above"),),
    decision=DecisionSpec(unit="case", rule="score above 0", outcomes=("fine", "unsure"), safe_default="unsure",
                          reassuring=("fine",)),
    analyze_columns=("score", "score_lower_bound", "decision"),
))
ONE_VIEW = register(TaskSpec(
    id="test_one_view", version=1, title="one radiograph, one score", modality="DX", model_type="image_measurement",
    inputs=(InputSpec(name="image", view="knee", height=SIZE, width=SIZE),),
    outputs=(OutputSpec(name="measurements", kind="measurement", axes=("N", 1), names=("score",)),),
    measurements=(MeasurementSpec(name="score", unit="1", threshold=0.0, safe_side="above",
                                  plausible_range=(-10.0, 10.0)),),
    decision=DecisionSpec(unit="image", rule="score above 0", outcomes=("fine", "unsure"), safe_default="unsure",
                          reassuring=("fine",)),
    analyze_columns=("score", "score_lower_bound", "decision"),
))


def _mean_graph(inputs: list[str], weights: list[float]) -> onnx.ModelProto:
    """measurements (N, 1) = sum_i weights[i] * mean(inputs[i]); each input (N, 1, SIZE, SIZE)."""
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1, SIZE, SIZE]) for n in inputs]
    out = helper.make_tensor_value_info("measurements", TensorProto.FLOAT, ["N", 1])
    inits = [numpy_helper.from_array(np.array([-1, 1], np.int64), "shape")]
    nodes, terms = [], []
    for i, (name, weight) in enumerate(zip(inputs, weights)):
        inits.append(numpy_helper.from_array(np.array(weight, np.float32), f"w{i}"))
        nodes += [helper.make_node("ReduceMean", [name], [f"m{i}"], axes=[1, 2, 3], keepdims=1),
                  helper.make_node("Mul", [f"m{i}", f"w{i}"], [f"t{i}"])]
        terms.append(f"t{i}")
    total = terms[0]
    for i, term in enumerate(terms[1:]):
        nodes.append(helper.make_node("Add", [total, term], [f"s{i}"]))
        total = f"s{i}"
    nodes.append(helper.make_node("Reshape", [total, "shape"], ["measurements"]))
    model = helper.make_model(helper.make_graph(nodes, "means", values, [out], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _bundle(folder, task: str, inputs: list[str], weights: list[float]):
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(_mean_graph(inputs, weights), str(folder / "model.onnx"))
    write_manifest(folder, {
        "task": task,
        "preprocessing": Preprocessing(height=SIZE, width=SIZE, input_name=inputs[0]).to_json(),
        "outputs": {"measurements": {"names": ["score"], "units": ["1"]}},
        "models": {"float": {"file": "model.onnx", "format": "onnx", "precision": "fp32"}},
    })
    return folder


def _normalised(level: int) -> float:
    return (level / 255 - 0.5) / 0.25


def test_create_model_chooses_the_wrapper_from_the_model_type(tmp_path):
    from sonogate.tasks.hip_xr.model import HipXrPelvisModel

    us = create_model("demo/bundle", device="ort-cpu")
    assert type(us) is ImageMeasurementModel and model_type_of(us.bundle) == "hip_us_frame"
    assert us.quality_output == "plane_logit" and us.decision_unit == "frame_window" and us.image_kind == "ultrasound"
    xr = create_model(handmade_xr_bundle(tmp_path / "xr"), device="ort-cpu")
    assert type(xr) is HipXrPelvisModel and xr.image_kind == "radiograph" and xr.decision_unit == "image"
    assert xr.preprocessor.spec.resize == "letterbox"
    generic = create_model(_bundle(tmp_path / "one", "test_one_view", ["image"], [1.0]), device="ort-cpu")
    assert type(generic) is ImageMeasurementModel and generic.quality_output is None

    manifest_path = tmp_path / "one" / "manifest.json"  # a v2 bundle of a model type no wrapper runs
    manifest = json.loads(manifest_path.read_text())
    manifest["task"]["model_type"] = "no_such_model"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="no runtime wrapper for model type 'no_such_model'"):
        create_model(tmp_path / "one", device="ort-cpu")


def test_a_two_view_task_runs_by_input_name_or_view(tmp_path):
    model = create_model(_bundle(tmp_path / "two", "test_two_views", ["ap_image", "lat_image"], [1.0, 2.0]),
                         device="ort-cpu")
    assert [spec.name for spec in model.inputs] == ["ap_image", "lat_image"]
    assert model.preprocessors["lat_image"].spec.interpolation == "linear"  # each input as its spec says
    ap, lat = np.full((40, 30), 200, np.uint8), np.full((20, 50, 3), 60, np.uint8)
    result = model({"ap": ap, "lat": lat})  # by view
    assert result.plane_probability is None and result.finite and not result.out_of_distribution
    expected = _normalised(200) + 2 * _normalised(60)
    assert result.measurements[0] == pytest.approx(expected, abs=1e-4)
    by_name = model({"lat_image": ap, "ap_image": lat})  # by input name; swapped images give another value
    assert by_name.measurements[0] == pytest.approx(_normalised(60) + 2 * _normalised(200), abs=1e-4)
    with pytest.raises(SonogateError, match="needs input"):
        model({"ap": ap})
    with pytest.raises(SonogateError, match="takes 2 inputs"):
        model(ap)


def test_a_per_image_task_is_analyzed_with_its_own_columns(tmp_path, capsys):
    bundle = _bundle(tmp_path / "one", "test_one_view", ["image"], [1.0])
    bright, dark = np.full((40, 40), 230, np.uint8), np.full((40, 40), 30, np.uint8)
    cv2.imwrite(str(tmp_path / "bright.png"), bright)
    _dicom(tmp_path / "dark.dcm", dark)
    out = tmp_path / "out"
    assert _run_cli(["analyze", str(tmp_path / "bright.png"), str(tmp_path / "dark.dcm"), "--bundle", str(bundle),
                     "--out", str(out), "--device", "ort-cpu", "--no-progress"]) == 0
    with open(out / "analysis.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = {Path(r["input"]).name: r for r in reader}
        header = reader.fieldnames
    assert header[:7] == ["input", "kind", "status", "error", "score", "score_lower_bound", "decision"]
    assert float(rows["bright.png"]["score"]) == pytest.approx(_normalised(230), abs=1e-3)
    assert float(rows["dark.dcm"]["score"]) == pytest.approx(_normalised(30), abs=1e-3)
    # no calibration: no bound, so never the reassuring outcome
    assert rows["bright.png"]["score_lower_bound"] == "" and rows["bright.png"]["decision"] == "unsure"
    assert "no calibration" in rows["bright.png"]["warnings"]
    assert rows["dark.dcm"]["sr"] == "dark.sr.dcm" and (out / "dark.sc.dcm").is_file()
    assert rows["bright.png"]["sr"] == ""  # no DICOM header to report against


def test_the_x_ray_bundle_as_bundle_or_xr_bundle_gives_the_same_rows(tmp_path):
    bundle = handmade_xr_bundle(tmp_path / "xr")
    gray = np.full((48, 64), 40, np.uint8)
    gray[:, :32] = 220
    _dicom(tmp_path / "in" / "pelvis.dcm", gray, orientation=("L", "F"))
    rows = {}
    for flag, folder in (("--bundle", "a"), ("--xr-bundle", "b")):
        argv = ["analyze", str(tmp_path / "in"), flag, str(bundle), "--out", str(tmp_path / folder), "--device",
                "ort-cpu", "--no-progress"]
        if flag == "--xr-bundle":
            argv += ["--bundle", "demo/bundle"]
        assert _run_cli(argv) == 0
        with open(tmp_path / folder / "analysis.csv", newline="") as handle:
            rows[folder] = next(csv.DictReader(handle))
    keep = [k for k in rows["a"] if k not in ("seconds", "json", "sr", "sc")]
    assert {k: rows["a"][k] for k in keep} == {k: rows["b"][k] for k in keep}
    assert float(rows["a"]["right_ai_deg"]) > float(rows["a"]["left_ai_deg"]) and rows["a"]["status"] == "ok"


def test_a_v1_bundle_and_its_v2_upgrade_give_identical_outputs(tmp_path):
    upgraded = tmp_path / "v2"
    assert _run_cli(["bundle", "upgrade", "--bundle", "demo/bundle", "--out", str(upgraded)]) == 0
    v1, v2 = load_bundle("demo/bundle"), load_bundle(upgraded)
    assert v1.format_version == 1 and v2.format_version == 2
    old, new = create_model(v1, device="ort-cpu"), create_model(v2, device="ort-cpu")
    assert old.inputs == new.inputs and old.quality_output == new.quality_output == "plane_logit"
    assert old.variant == new.variant and old.task == new.task == "hip_us"
    rng = np.random.default_rng(5)
    for _ in range(3):
        frame = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
        a, b = old(frame), new(frame)
        np.testing.assert_array_equal(a.measurements, b.measurements)
        assert (a.plane_probability, a.ood_distance, a.image_ood_distance) == (
            b.plane_probability, b.ood_distance, b.image_ood_distance)


def test_one_preprocessor_for_stretch_and_letterbox():
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 255, (30, 50), dtype=np.uint8)
    stretch = Preprocessor(Preprocessing(height=SIZE, width=SIZE, channels=2, mean=0.4, std=0.2))
    tensor = stretch(gray)
    expected = (cv2.resize(gray, (SIZE, SIZE), interpolation=cv2.INTER_AREA) / 255 - 0.4) / 0.2
    np.testing.assert_allclose(tensor[0, 0], expected, atol=1e-5)
    np.testing.assert_array_equal(tensor[0, 1], tensor[0, 0])
    boxed = ImagePreprocessor(InputSpec(name="x", height=SIZE, width=SIZE, resize="letterbox"), pad_value=7,
                              layout="NHWC")
    tensor, box = boxed.with_meta(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    square, expected_box = letterbox(gray, SIZE, 7)
    assert tensor.shape == (1, SIZE, SIZE, 1) and box == expected_box and (box.pad_x, box.pad_y) == (0, 10)
    np.testing.assert_allclose(tensor[0, :, :, 0], (square / 255 - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(BundleError, match="must be square"):
        ImagePreprocessor(InputSpec(name="x", height=SIZE, width=2 * SIZE, resize="letterbox"))
    with pytest.raises(BundleError, match="resize 'crop'"):
        ImagePreprocessor(InputSpec(name="x", height=SIZE, width=SIZE, resize="crop"))


def test_an_ultrasound_video_is_analyzed_like_a_cine(tmp_path):
    from tests.tiny_bundle import speckled_frame, write_tiny_bundle

    bundle = write_tiny_bundle(tmp_path / "us")
    path = tmp_path / "sweep.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (96, 96))
    assert writer.isOpened()
    rng = np.random.default_rng(4)
    for _ in range(12):
        writer.write(speckled_frame(200, rng))
    writer.release()
    out = tmp_path / "out"
    assert _run_cli(["analyze", str(path), "--bundle", str(bundle), "--out", str(out), "--device", "ort-cpu",
                     "--no-progress"]) == 0
    with open(out / "analysis.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert Path(row["input"]).name == "sweep.avi" and row["kind"] == "ultrasound" and row["status"] == "ok"
    assert row["frames"] == "12" and row["recommendation"] and row["alpha_deg"] != ""
    record = json.loads((out / "sweep.json").read_text())
    assert record["timing"]["frame_time_ms"] == pytest.approx(40.0) and record["frames"]["processed"] == 12
    assert row["sr"] == "" and not (out / "sweep.sr.dcm").exists()  # no DICOM header to report against


POINTS = register(TaskSpec(
    id="test_two_clouds", version=1, title="two point clouds, one distance", modality="US",
    model_type="image_measurement",
    inputs=(InputSpec(name="us_points", kind="points", view="ultrasound", n_points=5, units="mm"),
            InputSpec(name="xr_points", kind="points", view="radiograph", n_points=5, units="mm")),
    outputs=(OutputSpec(name="measurements", kind="measurement", axes=("N", 1), names=("shift_mm",)),),
    measurements=(MeasurementSpec(name="shift_mm", unit="mm"),),
    decision=DecisionSpec(unit="case", rule="none", outcomes=("reported", "unsure"), safe_default="unsure"),
))


def test_a_two_point_cloud_task_runs_by_view(tmp_path):
    """measurements = mean(xr_points) - mean(us_points) over every coordinate: the clouds reach the graph as
    (1, 5, 3) float32, by name, never resampled."""
    clouds = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 5, 3]) for n in ("us_points", "xr_points")]
    out = helper.make_tensor_value_info("measurements", TensorProto.FLOAT, ["N", 1])
    nodes = [helper.make_node("ReduceMean", ["us_points"], ["mu"], axes=[2], keepdims=0),
             helper.make_node("ReduceMean", ["xr_points"], ["mx"], axes=[2], keepdims=0),
             helper.make_node("Sub", ["mx", "mu"], ["d"]),
             helper.make_node("ReduceMean", ["d"], ["measurements"], axes=[1], keepdims=1)]
    graph = helper.make_model(helper.make_graph(nodes, "clouds", clouds, [out]),
                              opset_imports=[helper.make_opsetid("", 17)])
    graph.ir_version = 8
    folder = tmp_path / "clouds"
    folder.mkdir()
    onnx.save(graph, str(folder / "model.onnx"))
    write_manifest(folder, {
        "task": "test_two_clouds",
        "preprocessing": Preprocessing(height=1, width=1, input_name="us_points").to_json(),
        "outputs": {"measurements": {"names": ["shift_mm"], "units": ["mm"]}},
        "models": {"float": {"file": "model.onnx", "format": "onnx", "precision": "fp32"}},
    })
    model = create_model(folder, device="ort-cpu")
    rng = np.random.default_rng(9)
    us = rng.normal(0, 10, (5, 3))
    result = model({"ultrasound": us, "radiograph": us + 2.5})
    assert result.measurements[0] == pytest.approx(2.5, abs=1e-4) and result.plane_probability is None
    with pytest.raises(SonogateError, match="takes 5 points, not 4"):
        model({"ultrasound": us[:4], "radiograph": us[:4]})
    with pytest.raises(SonogateError, match=r"\(n, 3\) array"):
        model({"ultrasound": us[:, :2], "radiograph": us})


def test_a_two_view_task_is_analyzed_one_row_per_case_folder(tmp_path):
    bundle = _bundle(tmp_path / "two", "test_two_views", ["ap_image", "lat_image"], [1.0, 2.0])
    cases = tmp_path / "cases"
    (cases / "c1").mkdir(parents=True)
    (cases / "c2").mkdir()
    cv2.imwrite(str(cases / "c1" / "ap.png"), np.full((30, 30), 200, np.uint8))
    _dicom(cases / "c1" / "lat.dcm", np.full((30, 30), 60, np.uint8))
    cv2.imwrite(str(cases / "c2" / "knee_AP.png"), np.full((30, 30), 100, np.uint8))
    cv2.imwrite(str(cases / "c2" / "knee_lat.png"), np.full((30, 30), 100, np.uint8))
    (cases / "c2" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert _run_cli(["analyze", str(cases), "--bundle", str(bundle), "--out", str(out), "--device", "ort-cpu",
                     "--no-progress"]) == 0
    with open(out / "analysis.csv", newline="") as handle:
        rows = {r["input"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {str(cases / "c1"), str(cases / "c2")}
    one, two = rows[str(cases / "c1")], rows[str(cases / "c2")]
    assert one["kind"] == "case" and one["status"] == "ok" and one["decision"] == "unsure"
    assert float(one["score"]) == pytest.approx(_normalised(200) + 2 * _normalised(60), abs=1e-3)
    assert float(two["score"]) == pytest.approx(3 * _normalised(100), abs=1e-3)
    assert two["sr"] == "" and (out / "c1.json").is_file()  # c1's first view (ap) is a PNG: no SR either
    (cases / "c2" / "knee_lat.png").unlink()
    assert _run_cli(["analyze", str(cases), "--bundle", str(bundle), "--out", str(tmp_path / "again"),
                     "--device", "ort-cpu", "--no-progress"]) == 2  # an incomplete case is a one-line error
