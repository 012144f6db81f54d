"""``sonogate analyze``: batch over stored studies, bad files reported without stopping, X-ray per hip, CSV."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sonogate.calibration.calfile import CalibrationFile, MeasurementCalibration
from sonogate.core.bundle import Preprocessing, write_manifest
from sonogate.errors import SonogateError
from sonogate.runtime.analyze import CSV_COLUMNS, NO_XRAY_MODEL, find_inputs
from sonogate.runtime.dicom_report import read_sr
from tests.test_dicom import SECRET_ID, make_dataset, save
from tests.tiny_bundle import write_tiny_bundle

pytestmark = pytest.mark.torchfree
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
XR_SIZE = 32


def write_tiny_xr_bundle(folder: Path, calibrate: bool = True) -> Path:
    """A real ONNX X-ray bundle: ai_deg = 20 + 10 * mean(x), ce_deg = 25 - 5 * mean(x) for one hip image x."""
    folder.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, XR_SIZE, XR_SIZE])
    y = helper.make_tensor_value_info("measurements", TensorProto.FLOAT, ["N", 2])
    inits = [numpy_helper.from_array(np.array([[10.0, -5.0]], np.float32), "scale"),
             numpy_helper.from_array(np.array([[20.0, 25.0]], np.float32), "offset"),
             numpy_helper.from_array(np.array([-1, 1], np.int64), "shape")]
    nodes = [helper.make_node("ReduceMean", ["image"], ["m4"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Reshape", ["m4", "shape"], ["m"]),
             helper.make_node("Mul", ["m", "scale"], ["s"]),
             helper.make_node("Add", ["s", "offset"], ["measurements"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny_xr", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    bundle_hash = write_manifest(folder, {
        "task": "hip_xr",
        "preprocessing": Preprocessing(height=XR_SIZE, width=XR_SIZE).to_json(),
        "outputs": {"measurements": {"names": ["ai_deg", "ce_deg"], "units": ["deg", "deg"]}},
        "models": {"float": {"file": "model.onnx", "format": "onnx", "precision": "fp32"}},
    })
    if calibrate:
        CalibrationFile(delta=0.1, rule="alpha", mode="separate", thresholds={}, task="hip_xr",
                        measurements={"ai_deg": MeasurementCalibration("upper", radius=3.0, n=40, k=37),
                                      "ce_deg": MeasurementCalibration("lower", radius=4.0, n=40, k=37)},
                        bundle_sha256=bundle_hash).save(folder / "calibration.json")
    return folder


def _expected(gray: float) -> tuple[float, float]:
    x = (gray / 255.0 - 0.5) / 0.25
    return 20 + 10 * x, 25 - 5 * x


def radiograph(path: Path, orientation=None) -> Path:
    pixels = np.full((64, 96), 50, np.uint8)
    pixels[:, :48] = 200  # the image's left half is bright
    extra = {"PatientOrientation": list(orientation)} if orientation else {}
    return save(make_dataset(pixels, "MONOCHROME2", sop_class=DX, modality="DX", **extra), path)


def run_cli(argv: list[str]) -> int:
    """``sonogate <argv>`` through the package CLI when it builds, else through a parser holding only ours
    (same contract: SonogateError -> one line on stderr, exit code 2)."""
    try:
        from sonogate.cli import build_parser

        parser = build_parser()
    except ImportError:
        from sonogate.runtime.analyze_cli import register

        parser = argparse.ArgumentParser(prog="sonogate")
        register(parser.add_subparsers())
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SonogateError as exc:
        print(f"sonogate: error: {exc}", file=sys.stderr)
        return 2


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return {"us": write_tiny_bundle(root / "us"), "xr": write_tiny_xr_bundle(root / "xr")}


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "analysis.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0].keys()) == CSV_COLUMNS
    return {Path(row["input"]).name: row for row in rows}  # the column holds the path as given


def test_batch_reports_a_bad_file_and_goes_on(tmp_path, bundles, capsys):
    cine = SHARED_DATA / "us-dicom-generic" / "examples_ybr_color.dcm"
    xray = SHARED_DATA / "hip-radiopaedia-ddh" / "dicoms" / "xray" / "331_DDH_10.dcm"
    if not cine.is_file() or not xray.is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    studies = tmp_path / "studies"
    (studies / "b").mkdir(parents=True)
    shutil.copy(cine, studies / "a_cine.dcm")
    shutil.copy(xray, studies / "b" / "pelvis.dcm")
    (studies / "b" / "broken.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (studies / "notes.txt").write_text("not an input")
    out = tmp_path / "out"
    code = run_cli(["analyze", str(studies), "--bundle", str(bundles["us"]), "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2  # one input failed
    error_lines = [line for line in captured.err.splitlines() if line.startswith("sonogate: ")]
    assert error_lines == ["sonogate: cannot read DICOM broken.dcm: not a DICOM file"]
    assert "analyzed 3 input(s): 1 ok, 1 failed, 1 radiograph(s) without an X-ray model" in captured.out
    rows = _rows(out)
    assert set(rows) == {"a_cine.dcm", "pelvis.dcm", "broken.dcm"}
    assert rows["broken.dcm"]["status"] == "error" and "not a DICOM file" in rows["broken.dcm"]["error"]
    cine_row = rows["a_cine.dcm"]
    # a cardiac sector cine: the geometry gate refuses (Graf needs a linear probe), never a reassurance
    assert cine_row["status"] == "ok" and cine_row["frames"] == "30" and int(cine_row["usable_frames"]) <= 6
    assert cine_row["recommendation"] == "insufficient_image"
    assert float(cine_row["mm_per_pixel_x"]) == pytest.approx(0.5105, abs=1e-4)
    assert rows["pelvis.dcm"]["status"] == "no_xray_model"
    assert rows["pelvis.dcm"]["recommendation"] == NO_XRAY_MODEL and rows["pelvis.dcm"]["right_ai_deg"] == ""
    # outputs named after the inputs; sub-folders joined so names stay unique
    for name in ("a_cine.json", "a_cine.sr.dcm", "a_cine.sc.dcm", "b__pelvis.json", "b__broken.json"):
        assert (out / name).is_file(), name
    assert not (out / "b__pelvis.sr.dcm").exists()  # no numbers invented for a radiograph without a model
    pelvis = json.loads((out / "b__pelvis.json").read_text())
    assert pelvis["result"]["recommendation"] == NO_XRAY_MODEL and pelvis["result"]["hips"] is None
    broken = json.loads((out / "b__broken.json").read_text())
    assert broken["status"] == "error" and broken["error"].startswith("cannot read DICOM broken.dcm")


def test_xray_bundle_measures_each_hip_with_bounds(tmp_path, bundles):
    (tmp_path / "in").mkdir()
    radiograph(tmp_path / "in" / "pelvis.dcm")
    out = tmp_path / "out"
    code = run_cli(["analyze", str(tmp_path / "in" / "pelvis.dcm"), "--bundle", str(bundles["us"]),
                    "--xr-bundle", str(bundles["xr"]), "--out", str(out), "--no-progress"])
    assert code == 0
    record = json.loads((out / "pelvis.json").read_text())
    hips = record["result"]["hips"]
    ai_bright, ce_bright = _expected(200)
    ai_dark, ce_dark = _expected(50)
    # radiographic convention: the patient's right hip is on the image's left (the bright half)
    assert hips["right"]["ai_deg"]["value"] == pytest.approx(ai_bright, abs=0.01)
    assert hips["right"]["ai_deg"]["upper_bound"] == pytest.approx(ai_bright + 3.0, abs=0.01)
    assert hips["right"]["ce_deg"]["lower_bound"] == pytest.approx(ce_bright - 4.0, abs=0.01)
    assert hips["left"]["ai_deg"]["value"] == pytest.approx(ai_dark, abs=0.01)
    assert hips["left"]["ce_deg"]["value"] == pytest.approx(ce_dark, abs=0.01)
    assert any("radiographic convention" in w for w in record["warnings"])
    report = read_sr(out / "pelvis.sr.dcm")
    by_side = {group["laterality"]: group for group in report["groups"]}
    assert set(by_side) == {"R", "L"}
    assert by_side["R"]["measurements"]["ai_deg"]["upper_bound"] == pytest.approx(ai_bright + 3.0, abs=0.01)
    assert by_side["L"]["measurements"]["ce_deg"]["lower_bound"] == pytest.approx(ce_dark - 4.0, abs=0.01)
    assert by_side["R"]["algorithm"]["parameters"]["task"] == "hip_xr"
    row = _rows(out)["pelvis.dcm"]
    assert float(row["right_ai_deg_upper_bound"]) == pytest.approx(ai_bright + 3.0, abs=0.01)
    assert float(row["left_ce_deg_lower_bound"]) == pytest.approx(ce_dark - 4.0, abs=0.01)
    assert (out / "pelvis.sc.dcm").is_file()


def test_patient_orientation_decides_which_half_is_the_right_hip(tmp_path, bundles):
    from sonogate.runtime.analyze import AnalyzeOptions, analyze

    path = radiograph(tmp_path / "swapped.dcm", orientation=("R", "F"))  # rows run toward the patient's right
    summary = analyze([path], AnalyzeOptions(bundle=bundles["us"], xr_bundle=bundles["xr"], out=tmp_path / "o",
                                             progress=False, write_dicom=False))
    (record,) = summary.records
    assert record["result"]["hips"]["right"]["ai_deg"]["value"] == pytest.approx(_expected(50)[0], abs=0.01)
    assert not any("radiographic convention" in w for w in record["warnings"])


def test_an_unusable_xr_bundle_says_no_xray_model(tmp_path, bundles, capsys):
    path = radiograph(tmp_path / "pelvis.dcm")
    out = tmp_path / "out"
    code = run_cli(["analyze", str(path), "--bundle", str(bundles["us"]), "--xr-bundle",
                    str(tmp_path / "missing-bundle"), "--out", str(out), "--no-progress"])
    assert code == 0  # not a failed input: the output says there is no X-ray model
    assert "no X-ray model" in capsys.readouterr().err
    record = json.loads((out / "pelvis.json").read_text())
    assert record["status"] == "no_xray_model" and "bundle folder not found" in record["result"]["reason"]


def test_missing_input_or_empty_folder_is_exit_2_with_one_line(tmp_path, bundles, capsys):
    code = run_cli(["analyze", str(tmp_path / "nope.dcm"), "--bundle", str(bundles["us"]), "--out",
                    str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"sonogate: error: input not found: {tmp_path / 'nope.dcm'}"
    (tmp_path / "empty").mkdir()
    code = run_cli(["analyze", str(tmp_path / "empty"), "--bundle", str(bundles["us"]), "--out",
                    str(tmp_path / "o")])
    assert code == 2 and "no DICOM files" in capsys.readouterr().err


def test_a_non_image_modality_is_a_reported_failure(tmp_path, bundles):
    from sonogate.runtime.analyze import AnalyzeOptions, analyze

    ct = save(make_dataset(np.zeros((16, 16), np.uint8), "MONOCHROME2", sop_class="1.2.840.10008.5.1.4.1.1.2",
                           modality="CT"), tmp_path / "ct.dcm")
    summary = analyze([ct], AnalyzeOptions(bundle=bundles["us"], out=tmp_path / "o", progress=False))
    assert summary.exit_code == 2
    assert "neither an ultrasound nor a radiograph (Modality CT" in summary.records[0]["error"]


def test_find_inputs_recurses_skips_others_and_keeps_names_unique(tmp_path):
    for rel in ("a/IM1.dcm", "b/IM1.dcm", "IM1.DCM", "c/notes.txt", "out/x.sr.dcm"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = find_inputs([tmp_path], exclude=tmp_path / "out")
    assert [stem for _, stem in found] == ["IM1", "a__IM1", "b__IM1"]


def test_the_runtime_path_never_imports_torch(tmp_path, bundles):
    path = radiograph(tmp_path / "pelvis.dcm")
    code = ("import sys\n"
            "from sonogate.runtime.analyze import AnalyzeOptions, analyze\n"
            f"s = analyze([{str(path)!r}], AnalyzeOptions(bundle={str(bundles['us'])!r}, "
            f"xr_bundle={str(bundles['xr'])!r}, out={str(tmp_path / 'o')!r}, progress=False))\n"
            "assert s.exit_code == 0, s.records\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert SECRET_ID not in result.stdout + result.stderr
