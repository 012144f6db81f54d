"""The pelvic X-ray modality end to end: whole-pelvis network and geometry, train -> export -> calibrate ->
``sonogate analyze`` on a DICOM, the torch-free runtime contract, per-radiograph calibration, real radiographs.

Tests marked ``torchfree`` run in the runtime venv (no torch); the others train a tiny model once (module
fixture, 64 px, seconds) and use real ONNX Runtime throughout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sonogate.calibration.fit import PredictionTable
from sonogate.core.bundle import Preprocessing, write_manifest
from sonogate.errors import CalibrationError
from sonogate.runtime.preprocess import letterbox
from sonogate.tasks.hip_xr.calibrate import fit_xr_calibration
from sonogate.tasks.hip_xr.model import NORMAL, NOT_NORMAL, WHOLE_PELVIS, XR_OUTPUT_NAMES, hip_verdict
from sonogate.tasks.hip_xr.phantom import (
    XR_LANDMARK_NAMES,
    measure_xr_from_landmarks,
    render_xr_frame,
    sample_xr_params,
)
from tests.test_dicom import make_dataset, save
from tests.tiny_bundle import write_tiny_bundle

SHARED_XR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hip-radiopaedia-ddh"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
SIZE = 32


def _dicom(path: Path, gray: np.ndarray, orientation=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"PatientOrientation": list(orientation)} if orientation else {}
    return save(make_dataset(np.ascontiguousarray(gray), "MONOCHROME2", sop_class=DX, modality="DX", **extra), path)


def _run_cli(argv: list[str]) -> int:
    from sonogate.cli import build_parser
    from sonogate.errors import SonogateError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SonogateError as exc:
        print(f"sonogate: error: {exc}", file=sys.stderr)
        return 2


# -- torch-free: contract, letterbox, verdict, calibration ------------------------------------------------------
LANDMARKS01 = np.array(
    [[0.30, 0.55], [0.70, 0.55], [0.18, 0.48], [0.83, 0.50], [0.22, 0.60], [0.80, 0.61], [0.22, 0.68], [0.80, 0.69]],
    np.float32,
)


def handmade_xr_bundle(folder: Path) -> Path:
    """A whole-pelvis bundle from a hand-built ONNX graph (no torch): ai_deg_right = 20 + 10 * mean(left half of
    the input), ai_deg_left = 20 + 10 * mean(right half), ce = 25; fixed landmarks ``LANDMARKS01``; IHDI I / III."""
    folder.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])
    outs = [
        helper.make_tensor_value_info("measurements", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("ihdi_logits", TensorProto.FLOAT, ["N", 2, 4]),
        helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, ["N", 8, 2]),
    ]
    c = {
        "half": np.array([SIZE // 2], np.int64),
        "zero": np.array([0], np.int64),
        "end": np.array([SIZE], np.int64),
        "axis": np.array([3], np.int64),
        "n1": np.array([-1, 1], np.int64),
        "n11": np.array([-1, 1, 1], np.int64),
        "gain_r": np.array([[10, 0, 0, 0]], np.float32),
        "gain_l": np.array([[0, 0, 10, 0]], np.float32),
        "offset": np.array([[20, 25, 20, 25]], np.float32),
        "lm": LANDMARKS01[None],
        "ihdi": np.array([[[5, 0, 0, 0], [0, 0, 5, 0]]], np.float32),
        "z": np.array(0, np.float32),
    }
    inits = [numpy_helper.from_array(v, k) for k, v in c.items()]
    nodes = [
        helper.make_node("Slice", ["image", "zero", "half", "axis"], ["left"]),
        helper.make_node("Slice", ["image", "half", "end", "axis"], ["right"]),
        helper.make_node("ReduceMean", ["left"], ["ml4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("ReduceMean", ["right"], ["mr4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["ml4", "n1"], ["ml"]),
        helper.make_node("Reshape", ["mr4", "n1"], ["mr"]),
        helper.make_node("Mul", ["ml", "gain_r"], ["a"]),
        helper.make_node("Mul", ["mr", "gain_l"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["ab"]),
        helper.make_node("Add", ["ab", "offset"], ["measurements"]),
        helper.make_node("Reshape", ["ml4", "n11"], ["m3"]),
        helper.make_node("Mul", ["m3", "z"], ["zero3"]),
        helper.make_node("Add", ["zero3", "lm"], ["landmarks"]),
        helper.make_node("Add", ["zero3", "ihdi"], ["ihdi_logits"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "handmade_xr", [x], outs, inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    write_manifest(
        folder,
        {
            "task": "hip_xr",
            "xr_contract": WHOLE_PELVIS,
            "preprocessing": {
                **Preprocessing(height=SIZE, width=SIZE).to_json(),
                "resize": "letterbox",
                "pad_value": 0,
            },
            "outputs": {
                "measurements": {"names": list(XR_OUTPUT_NAMES), "units": ["deg"] * 4},
                "ihdi_logits": {"source": "geometry"},
                "landmarks": {"names": list(XR_LANDMARK_NAMES)},
            },
            "models": {"float": {"file": "model.onnx", "format": "onnx", "precision": "fp32"}},
        },
    )
    return folder


@pytest.mark.torchfree
def test_letterbox_keeps_the_aspect_and_maps_points_back():
    gray = np.zeros((60, 100), np.uint8)
    gray[30, 70] = 255
    square, box = letterbox(gray, 50)
    assert square.shape == (50, 50) and (box.side, box.pad_x, box.pad_y) == (100, 0, 20)
    y, x = np.unravel_index(np.argmax(square), square.shape)
    assert (x, y) == (35, 25)  # pixel (70, 30 + 20 pad) of the 100 px square, halved
    points = np.array([[70.0, 30.0], [0.0, 59.0]])
    np.testing.assert_allclose(box.to_image(box.to_model(points)), points, atol=1e-9)


@pytest.mark.torchfree
def test_verdict_is_normal_only_with_both_bounds_on_the_safe_side():
    assert hip_verdict(28.0, 22.0, 1)[0] == NORMAL
    assert hip_verdict(31.0, 22.0, 1) == (NOT_NORMAL, "AI bound 31.0 > 30")
    assert hip_verdict(28.0, 19.0)[0] == NOT_NORMAL
    assert hip_verdict(None, 25.0)[0] == NOT_NORMAL  # no calibration: never normal
    assert hip_verdict(28.0, float("-inf"))[0] == NOT_NORMAL  # infinite radius
    assert "IHDI grade III" in hip_verdict(20.0, 30.0, 3)[1]
    assert hip_verdict(33.0, 22.0, 1, {"ai_deg": 35.0})[0] == NORMAL
    # a reading that is not anatomy (CE near 180: landmarks on the wrong structure) is never normal
    verdict, reason = hip_verdict(25.0, 170.0, 1, values={"ai_deg": 20.0, "ce_deg": 175.0})
    assert verdict == NOT_NORMAL and "implausible ce_deg" in reason


def _hip_table(n_patients: int, seed: int = 0, shared_error: float = 3.0) -> PredictionTable:
    """Two hips per radiograph whose errors share a per-patient part (as in a real pelvis)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        common = rng.normal(0, shared_error, 2)
        for side in "RL":
            true = np.array([rng.uniform(15, 40), rng.uniform(-10, 40)])
            pred = true + common + rng.normal(0, 1.0, 2)
            rows.append((f"p{p}:{side}", f"img{p}", f"p{p}", *pred, *true))
    ids, groups, subjects, pa, pc, ta, tc = zip(*rows)
    return PredictionTable(
        ids=np.array(ids),
        groups=np.array(groups),
        subjects=np.array(subjects),
        names=("ai_deg", "ce_deg"),
        pred=np.c_[pa, pc],
        true=np.c_[ta, tc],
        quality=np.ones(len(ids)),
    )


@pytest.mark.torchfree
def test_calibration_scores_the_max_over_both_hips_of_a_radiograph():
    table = _hip_table(40)
    cal = fit_xr_calibration(table, delta=0.1, mode="separate", affine=False)
    assert cal.task == "hip_xr" and cal.measurements["ai_deg"].side == "upper"
    assert cal.measurements["ce_deg"].side == "lower"
    # per radiograph: max over the two hips of truth - prediction (AI) / prediction - truth (CE); k = 37 of 40
    ai_scores = (table.true[:, 0] - table.pred[:, 0]).reshape(40, 2).max(1)
    ce_scores = (table.pred[:, 1] - table.true[:, 1]).reshape(40, 2).max(1)
    assert cal.measurements["ai_deg"].n == 40 and cal.measurements["ai_deg"].k == 37
    assert cal.measurements["ai_deg"].radius == pytest.approx(np.sort(ai_scores)[36])
    assert cal.measurements["ce_deg"].radius == pytest.approx(np.sort(ce_scores)[36])
    joint = fit_xr_calibration(table, delta=0.1, mode="joint", affine=True, seed=1)
    assert joint.joint["n"] + joint.data["n_radiographs_affine"] == 40
    assert "per radiograph" not in joint.guarantee["statement"] and "radiograph" in joint.guarantee["statement"]
    few = fit_xr_calibration(_hip_table(6), delta=0.1, mode="joint", affine=False)
    assert few.measurements["ai_deg"].radius is None  # n = 6 < 9: infinite bound, never "normal"


@pytest.mark.torchfree
def test_whole_pelvis_runtime_mirrors_by_patient_orientation(tmp_path):
    from sonogate.runtime.analyze import XrayModel

    model = XrayModel(handmade_xr_bundle(tmp_path / "xr"), device="ort-cpu")
    gray = np.full((48, 64), 40, np.uint8)
    gray[:, :32] = 220  # bright image-left half
    notes: list[str] = []
    hips = model.measure(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), None, notes)
    assert any("radiographic convention" in n for n in notes)
    assert hips["right"]["ai_deg"]["value"] > hips["left"]["ai_deg"]["value"]  # bright half = patient's right
    assert hips["right"]["ai_deg"]["upper_bound"] is None and hips["right"]["verdict"]["value"] == NOT_NORMAL
    assert hips["right"]["ihdi"] == {"grade": 1, "source": "geometry"} and hips["left"]["ihdi"]["grade"] == 3
    # landmarks back in image pixels: 64 x 48 letterboxed into a 64 px square (8 rows of padding above)
    x01, y01 = LANDMARKS01[0]
    assert hips["right"]["landmarks"]["triradiate"] == pytest.approx([x01 * 64 - 0.5, y01 * 64 - 0.5 - 8], abs=0.01)

    class Image:  # what XrayModel reads of a DicomImage
        patient_orientation = ("R", "F")

    swapped = model.measure(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), Image(), [])
    # rows run toward the patient's right: the bright image-left half is the patient's LEFT hip
    assert swapped["left"]["ai_deg"]["value"] == pytest.approx(hips["right"]["ai_deg"]["value"], abs=0.01)
    # the model saw the mirrored image; its landmarks are mirrored back into the original pixels
    assert swapped["right"]["landmarks"]["triradiate"][0] == pytest.approx(63 - (x01 * 64 - 0.5), abs=0.01)


@pytest.mark.torchfree
def test_real_radiographs_reference_and_runtime(shared_data, tmp_path):
    from sonogate.data.dicom import read_dicom
    from sonogate.runtime.analyze import XrayModel
    from sonogate.tasks.hip_xr.data import retuve_reference

    labels = sorted((shared_data / "hip-radiopaedia-ddh" / "labels" / "xray").glob("*.json"))
    assert len(labels) == 10
    refs = [retuve_reference(json.loads(p.read_text())) for p in labels]
    # the shared JSONs' femoral point is the inner acetabular point: no CE reference anywhere
    assert all(r.fem_is_inner["right"] and r.fem_is_inner["left"] for r in refs)
    assert all(r.ce_deg == {"right": None, "left": None} for r in refs)
    assert all(10 < a < 45 for r in refs for a in r.ai_deg.values())
    assert {r.json_sides_follow_image for r in refs} == {True, False}  # JSON l / r is not the patient's side
    image = read_dicom(shared_data / "hip-radiopaedia-ddh" / "dicoms" / "xray" / "331_DDH_10.dcm")
    hips = XrayModel(handmade_xr_bundle(tmp_path / "xr"), device="ort-cpu").measure(image.frames[0], image, [])
    assert all(np.isfinite(hips[s]["ai_deg"]["value"]) for s in ("right", "left"))
    x, _ = hips["left"]["landmarks"]["acetabular_edge"]
    assert x == pytest.approx(LANDMARKS01[3][0] * 331 - 0.5, abs=0.01)  # square 331 px: no padding


# -- with torch: a tiny trained model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("torch")
    import torch

    from sonogate.cli import main as models_main
    from sonogate.tasks.hip_xr.phantom import write_xr_dataset

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("xr")
    train = write_xr_dataset(root / "train", 20, seed=31, size=96, progress=False)
    calib = write_xr_dataset(root / "calib", 16, seed=32, size=96, progress=False)
    common = ["--no-progress"]
    rc = models_main(
        [
            "train",
            "--modality",
            "xr",
            "--data",
            str(train),
            "--out",
            str(root / "run"),
            "--size",
            "64",
            "--ssl-epochs",
            "1",
            "--ssl-size",
            "32",
            "--head-epochs",
            "2",
            "--head-augment",
            "1",
            "--batch-size",
            "8",
            *common,
        ]
    )
    assert rc == 0
    rc = models_main(
        ["export", "--run", str(root / "run"), "--out", str(root / "bundle"), "--calib-frames", "6", *common]
    )
    assert rc == 0
    return {"root": root, "bundle": root / "bundle", "calib": calib, "train": train}


def test_metrics_and_manifest_of_a_tiny_run(trained):
    metrics = json.loads((trained["root"] / "run" / "metrics.json").read_text())
    assert metrics["task"] == "hip_xr" and metrics["split"]["unit"] == "patient_id"
    held = metrics["heldout"]
    assert {"ai_deg", "ce_deg", "ihdi", "landmark_error_px"} <= set(held)
    held_out = set(metrics["split"]["heldout_groups"])
    assert 1 <= len(held_out) < 20 and held_out <= {f"s31-x{i:05d}" for i in range(20)}
    assert held["n_patients"] == len(held_out) and metrics["split"]["n_train_groups"] == 20 - len(held_out)
    manifest = json.loads((trained["bundle"] / "manifest.json").read_text())
    assert manifest["task"]["id"] == "hip_xr" and manifest["xr_contract"] == WHOLE_PELVIS
    assert manifest["outputs"]["measurements"]["names"] == list(XR_OUTPUT_NAMES)
    assert manifest["preprocessing"]["resize"] == "letterbox"
    assert set(manifest["files"]) >= {"model.onnx", "model.int8.onnx", "parity.json"}
    assert manifest["provenance"]["seed"] == 0 and "Apache-2.0" in manifest["provenance"]["training_data"]["licence"]
    parity = json.loads((trained["bundle"] / "parity.json").read_text())
    assert "ai_deg_right" in parity["models"]["int8"]["vs_float"]


def test_geometry_in_the_onnx_graph_equals_the_phantom_measure(trained):
    import onnx.utils
    import onnxruntime as ort

    model = onnx.load(str(trained["bundle"] / "model.onnx"))
    geometry = onnx.utils.Extractor(model).extract_model(["landmarks"], ["measurements", "ihdi_logits"])
    session = ort.InferenceSession(geometry.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    points, refs = [], []
    for _ in range(30):
        frame = render_xr_frame(sample_xr_params(rng), rng, 64)
        points.append(
            [((frame.landmarks[n][0] + 0.5) / 64, (frame.landmarks[n][1] + 0.5) / 64) for n in XR_LANDMARK_NAMES]
        )
        refs.append(measure_xr_from_landmarks(frame.landmarks))
    meas, ihdi = session.run(None, {"landmarks": np.array(points, np.float32)})
    expected = [[r["ai_deg_right"], r["ce_deg_right"], r["ai_deg_left"], r["ce_deg_left"]] for r in refs]
    np.testing.assert_allclose(meas, expected, atol=2e-3)
    np.testing.assert_array_equal(ihdi.argmax(-1) + 1, [[r["ihdi_right"], r["ihdi_left"]] for r in refs])


def test_calibrate_then_analyze_a_phantom_radiograph_dicom_without_torch(trained, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    assert (
        _run_cli(
            [
                "calibrate",
                "--bundle",
                str(bundle),
                "--data",
                str(trained["calib"]),
                "--delta",
                "0.2",
                "--no-affine",
                "--device",
                "ort-cpu",
            ]
        )
        == 0
    )
    cal = json.loads((bundle / "calibration.json").read_text())
    assert cal["task"] == "hip_xr" and cal["measurements"]["ai_deg"]["radius"] is not None
    assert cal["data"]["n_radiographs"] == 16 and cal["joint"]["n"] == 16
    gray = cv2.imread(str(next((trained["calib"] / "images").glob("*.png"))), cv2.IMREAD_GRAYSCALE)
    dicom = _dicom(tmp_path / "in" / "pelvis.dcm", np.pad(gray, ((0, 0), (16, 16))), orientation=("L", "F"))
    us = write_tiny_bundle(tmp_path / "us")
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "from sonogate.runtime.analyze import AnalyzeOptions, analyze\n"
        f"s = analyze([{str(dicom)!r}], AnalyzeOptions(bundle={str(us)!r}, xr_bundle={str(bundle)!r}, "
        f"out={str(out)!r}, device='ort-cpu', progress=False))\n"
        "assert s.exit_code == 0, s.records\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "pelvis.json").read_text())
    assert record["status"] == "ok" and record["model"]["task"] == "hip_xr"
    for side in ("right", "left"):
        hip = record["result"]["hips"][side]
        assert hip["ai_deg"]["upper_bound"] == pytest.approx(
            hip["ai_deg"]["value"] + cal["measurements"]["ai_deg"]["radius"], abs=0.01
        )
        assert hip["ce_deg"]["lower_bound"] is not None and hip["verdict"]["value"] in (NORMAL, NOT_NORMAL)
        assert set(hip["landmarks"]) == {"triradiate", "acetabular_edge", "head_center", "h_point"}
        assert hip["ihdi"]["grade"] in (1, 2, 3, 4)
    from sonogate.runtime.dicom_report import read_sr

    groups = {g["laterality"]: g for g in read_sr(out / "pelvis.sr.dcm")["groups"]}
    assert set(groups) == {"R", "L"} and "upper_bound" in groups["R"]["measurements"]["ai_deg"]


def test_a_calibration_of_another_bundle_is_refused(trained, tmp_path):
    from sonogate.runtime.analyze import XrayModel

    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    assert (
        _run_cli(
            [
                "calibrate",
                "--bundle",
                str(bundle),
                "--data",
                str(trained["calib"]),
                "--delta",
                "0.2",
                "--no-affine",
                "--device",
                "ort-cpu",
            ]
        )
        == 0
    )
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["provenance"]["note"] = "re-exported"
    write_manifest(other, {k: v for k, v in manifest.items() if k not in ("files", "format_version")})
    with pytest.raises(CalibrationError, match="another bundle"):
        XrayModel(other, device="ort-cpu")
    XrayModel(bundle, device="ort-cpu")  # its own calibration loads


def test_the_mlp_head_builds_and_runs():
    """``--head mlp`` failed at construction ("attribute 'values' already exists": a ModuleDict key shadowing
    ModuleDict.values); it must build, run and name its three outputs."""
    torch = pytest.importorskip("torch")
    from sonogate.tasks.hip_xr.net import XR_NAMES, HipXRNet

    model = HipXRNet(head="mlp").eval()
    with torch.no_grad():
        measurements, ihdi, features = model(torch.zeros(2, 1, 64, 64))
    assert model.output_names == ("measurements", "ihdi_logits", "features")
    assert measurements.shape == (2, len(XR_NAMES)) and ihdi.shape == (2, 2, 4) and features.shape[0] == 2
    assert set(dict(model.named_children())["measure_head"].keys()) == {"angles", "ihdi"}
