"""DICOM out, round trip: a real cine analysed with a real (tiny) ONNX bundle, its SR and SC written with
highdicom, read back with pydicom and highdicom, and checked by the dciodvfy validator when installed."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sonogate.core.bundle import load_bundle
from sonogate.runtime.analyze import AnalyzeOptions, analyze
from sonogate.runtime.dicom_report import AlgorithmInfo, ReportError, ReportGroup, build_sr, read_sr, write_sc, write_sr
from tests.test_dicom import SECRET_BIRTH, SECRET_ID, SECRET_NAME, make_dataset, save
from tests.tiny_bundle import write_tiny_bundle

pytestmark = pytest.mark.torchfree
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A real Radiopaedia hip cine (given a recognisable fake patient), another hip cine, and the real 30-frame
    cardiac YBR cine (a sector image the runtime must refuse), analysed."""
    cine = SHARED_DATA / "hip-radiopaedia-ddh" / "dicoms" / "ultrasound" / "171551.dcm"
    hip = SHARED_DATA / "hip-radiopaedia-ddh" / "dicoms" / "ultrasound" / "56568.dcm"
    cardiac = SHARED_DATA / "us-dicom-generic" / "examples_ybr_color.dcm"
    short = SHARED_DATA / "hip-radiopaedia-ddh" / "dicoms" / "ultrasound" / "167857.dcm"
    if not cine.is_file() or not hip.is_file() or not short.is_file() or not cardiac.is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("report")
    bundle = write_tiny_bundle(root / "bundle")
    (root / "in").mkdir()
    source = pydicom.dcmread(cine)
    source.PatientName, source.PatientID, source.PatientBirthDate = SECRET_NAME, SECRET_ID, SECRET_BIRTH
    source.save_as(root / "in" / "cine.dcm")
    shutil.copy(hip, root / "in" / "56568.dcm")
    shutil.copy(short, root / "in" / "167857.dcm")
    shutil.copy(cardiac, root / "in" / "cardiac.dcm")
    summary = analyze([root / "in"], AnalyzeOptions(bundle=bundle, out=root / "out", progress=False))
    assert summary.exit_code == 0, [r["error"] for r in summary.records]
    return {"root": root, "out": root / "out", "bundle": bundle, "source": source,
            "records": {Path(r["input"]).name: r for r in summary.records}}


def test_sr_holds_values_units_bounds_delta_and_recommendation(analysed):
    record = analysed["records"]["cine.dcm"]
    assert record["status"] == "ok" and record["frames"]["total"] == 15
    result = record["result"]
    assert result["recommendation"] in ("xray_recommended", "us_sufficient")  # measured, so bounds exist
    report = read_sr(analysed["out"] / "cine.sr.dcm")
    assert report["sop_class_uid"] == COMPREHENSIVE_SR and report["template"] == "1500"
    (group,) = report["groups"]
    for name, unit in (("alpha_deg", "deg"), ("beta_deg", "deg"), ("coverage_pct", "%")):
        written, expected = group["measurements"][name], result["measurements"][name]
        assert written["unit"] == unit
        assert written["value"] == pytest.approx(expected["value"])
        assert written["delta"] == pytest.approx(0.1)
    assert group["measurements"]["alpha_deg"]["lower_bound"] == pytest.approx(result["measurements"]["alpha_deg"]
                                                                                ["lower_bound"])
    assert group["measurements"]["alpha_deg"]["lower_bound_unit"] == "deg"
    assert group["measurements"]["beta_deg"]["upper_bound"] == pytest.approx(result["measurements"]["beta_deg"]
                                                                               ["upper_bound"])
    assert group["measurements"]["beta_deg"]["lower_bound"] is None
    assert group["measurements"]["coverage_pct"]["lower_bound"] == pytest.approx(
        result["measurements"]["coverage_pct"]["lower_bound"])
    assert group["recommendation"] == "xray_recommended" and group["reason"] == result["reason"]
    assert group["graf_type"] == result["graf_type"]


def test_sr_parses_with_plain_pydicom_and_highdicom(analysed):
    path = analysed["out"] / "cine.sr.dcm"
    ds = pydicom.dcmread(path)
    nums = {}

    def walk(items):
        for item in items:
            if item.ValueType == "NUM":
                code = item.ConceptNameCodeSequence[0]
                unit = item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
                nums.setdefault(str(code.CodeValue), []).append(
                    (float(item.MeasuredValueSequence[0].NumericValue), str(unit.CodingSchemeDesignator),
                     str(unit.CodeValue)))
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    assert nums["ALPHA"][0][1:] == ("UCUM", "deg") and nums["COVERAGE"][0][1:] == ("UCUM", "%")
    assert len(nums["LOWER-BOUND"]) == 2 and len(nums["UPPER-BOUND"]) == 1  # alpha, coverage / beta
    schemes = [str(item.CodingSchemeDesignator) for item in ds.CodingSchemeIdentificationSequence]
    assert "99SONOGATE" in schemes

    import highdicom as hd

    sr = hd.sr.srread(path)
    (group,) = sr.content.get_image_measurement_groups()
    values = {str(m.name.value): m.value for m in group.get_measurements()}
    assert set(values) == {"ALPHA", "BETA", "COVERAGE"}
    evaluations = {str(q.name.value): str(q.value.value) for q in group.get_qualitative_evaluations()}
    assert evaluations["121075"] == "XRAY-RECOMMENDED"


def test_sr_identifies_the_algorithm_bundle_and_calibration(analysed):
    report = read_sr(analysed["out"] / "cine.sr.dcm")
    algorithm = report["groups"][0]["algorithm"]
    bundle = load_bundle(analysed["bundle"])
    calibration_sha = hashlib.sha256((analysed["bundle"] / "calibration.json").read_bytes()).hexdigest()
    assert algorithm["name"] == "sonogate"
    from sonogate import __version__

    assert algorithm["version"] == __version__
    assert algorithm["parameters"]["bundle_sha256"] == bundle.bundle_hash
    assert algorithm["parameters"]["calibration_sha256"] == calibration_sha
    assert algorithm["parameters"]["delta"] == "0.1" and algorithm["parameters"]["rule"] == "and"
    ds = pydicom.dcmread(analysed["out"] / "cine.sr.dcm")
    assert ds.Manufacturer == "sonogate" and ds.VerificationFlag == "UNVERIFIED"
    assert ds.PreliminaryFlag == "PRELIMINARY"
    record = analysed["records"]["cine.dcm"]
    assert record["model"]["bundle_sha256"] == bundle.bundle_hash
    assert record["model"]["calibration_sha256"] == calibration_sha


def test_sr_and_sc_link_to_the_source_study_and_patient(analysed):
    source = analysed["source"]
    sr = pydicom.dcmread(analysed["out"] / "cine.sr.dcm")
    sc = pydicom.dcmread(analysed["out"] / "cine.sc.dcm")
    for ds in (sr, sc):
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SOPInstanceUID != source.SOPInstanceUID
        assert str(ds.PatientName) == SECRET_NAME and ds.PatientID == SECRET_ID  # copied for PACS linkage
        assert ds.PatientBirthDate == SECRET_BIRTH
    assert sr.SeriesInstanceUID != sc.SeriesInstanceUID
    report = read_sr(sr)
    assert report["evidence"] == [{"study_instance_uid": source.StudyInstanceUID,
                                   "series_instance_uid": source.SeriesInstanceUID,
                                   "sop_class_uid": source.SOPClassUID,
                                   "sop_instance_uid": source.SOPInstanceUID}]
    assert report["groups"][0]["source_images"][0]["sop_instance_uid"] == source.SOPInstanceUID
    assert sc.SOPClassUID == SECONDARY_CAPTURE
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    # the wrong SOP class of a Radiopaedia file is referenced as stored (that is how a PACS finds it)
    hip_source = pydicom.dcmread(SHARED_DATA / "hip-radiopaedia-ddh" / "dicoms" / "ultrasound" / "56568.dcm",
                                 stop_before_pixels=True)
    hip_report = read_sr(analysed["out"] / "56568.sr.dcm")
    assert hip_report["study_instance_uid"] == hip_source.StudyInstanceUID
    assert hip_report["evidence"][0]["sop_class_uid"] == hip_source.SOPClassUID


def test_sc_is_the_annotated_last_frame(analysed):
    sc = pydicom.dcmread(analysed["out"] / "cine.sc.dcm")
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3 and sc.BitsAllocated == 8
    pixels = sc.pixel_array
    source = analysed["source"]
    last = source.pixel_array[-1]  # RGB
    assert pixels.shape == (max(360, last.shape[0]), last.shape[1] + 300, 3)  # frame + the side panel
    # below the banner and away from the ROI box the SC shows the source frame (lossless)
    roi = analysed["records"]["cine.dcm"]["roi"]["box"]
    y0 = roi[1] + roi[3] + 3
    height, width = last.shape[:2]
    if y0 < height - 4:
        assert np.abs(pixels[y0:height, :width].astype(int) - last[y0:height].astype(int)).max() <= 1
    red_banner = pixels[5:40, 5:300]
    assert np.median(red_banner[..., 0]) > 150 and np.median(red_banner[..., 2]) < 80  # "X-RAY RECOMMENDED"


def test_no_patient_data_in_json_or_csv(analysed):
    texts = [p.read_text() for p in analysed["out"].glob("*.json")] + [(analysed["out"] / "analysis.csv").read_text()]
    for text in texts:
        for secret in ("Secretname", SECRET_ID, SECRET_BIRTH):
            assert secret not in text
    record = json.loads((analysed["out"] / "cine.json").read_text())
    assert record["outputs"] == {"json": "cine.json", "sr": "cine.sr.dcm", "sc": "cine.sc.dcm"}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) not installed")
def test_dciodvfy_finds_no_errors_in_sr_and_sc(analysed):
    for name in ("cine.sr.dcm", "cine.sc.dcm", "56568.sr.dcm", "56568.sc.dcm"):
        result = subprocess.run(["dciodvfy", str(analysed["out"] / name)], capture_output=True, text=True,
                                timeout=60, check=False)
        lines = (result.stdout + result.stderr).splitlines()
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, f"{name}: {errors}"
        assert any(line.strip() in ("ComprehensiveSR", "SCImage") for line in lines)


def test_sr_of_an_insufficient_sweep_has_the_recommendation_without_numbers(analysed):
    record = analysed["records"]["56568.dcm"]
    assert record["result"]["recommendation"] == "insufficient_image"  # 2 frames < min_frames 3
    report = read_sr(analysed["out"] / "56568.sr.dcm")
    (group,) = report["groups"]
    assert group["recommendation"] == "insufficient_image" and group["measurements"] == {}


def test_an_unconfirmed_candidate_is_explained_not_hidden(analysed):
    record = analysed["records"]["167857.dcm"]  # 4 frames: bounds exist, but 5 confirming frames do not
    result = record["result"]
    assert result["recommendation"] == "insufficient_image" and result["candidate"] == "xray_recommended"
    assert result["reason"].startswith("xray_recommended not confirmed by the end of the cine (alpha_deg bound")
    assert result["measurements"]["alpha_deg"]["lower_bound"] is not None
    (group,) = read_sr(analysed["out"] / "167857.sr.dcm")["groups"]
    assert group["recommendation"] == "insufficient_image" and group["reason"] == result["reason"]
    assert group["measurements"]["alpha_deg"]["lower_bound"] == pytest.approx(
        result["measurements"]["alpha_deg"]["lower_bound"])


def test_infinite_bounds_are_left_out_and_laterality_is_coded(tmp_path):
    ds = make_dataset(np.full((32, 32), 60, np.uint8), "MONOCHROME2", sop_class="1.2.840.10008.5.1.4.1.1.6.1",
                      ImageLaterality="L")
    from sonogate.data.dicom import read_dicom

    image = read_dicom(save(ds, tmp_path / "one.dcm"))
    assert image.laterality == "L"
    group = ReportGroup(label="sweep", laterality="L", delta=0.1, recommendation="xray_recommended",
                        measurements={"alpha_deg": {"value": 55.0, "lower_bound": None, "upper_bound": None},
                                      "coverage_pct": {"value": float("nan"), "lower_bound": None}})
    algorithm = AlgorithmInfo(bundle_sha256="0" * 64)
    write_sr(tmp_path / "one.sr.dcm", image, [group], algorithm)
    report = read_sr(tmp_path / "one.sr.dcm")
    (written,) = report["groups"]
    assert written["laterality"] == "L"
    assert set(written["measurements"]) == {"alpha_deg"}  # NaN coverage is not written as a number
    assert written["measurements"]["alpha_deg"]["lower_bound"] is None
    assert written["algorithm"]["parameters"]["calibration_sha256"] == "none"
    sc = write_sc(tmp_path / "one.sc.dcm", image, np.zeros((40, 50, 3), np.uint8), algorithm)
    assert sc.Laterality == "L"


def test_a_tasks_own_measurement_gets_its_specs_code_and_unit(tmp_path):
    """A task's measurement is coded as its spec declares (MeasurementSpec.dicom_code, unit): BMD in g/cm2 under
    BMD-NECK, read back by name; nothing about it is listed in the SR module."""
    from sonogate.data.dicom import read_dicom
    from sonogate.runtime.dicom_report import MEASUREMENT_CODES, task_measurement_codes

    assert "bmd_g_cm2" not in MEASUREMENT_CODES
    assert task_measurement_codes("bmd")["bmd_g_cm2"] == ("BMD-NECK", "Femoral neck bone mineral density", "g/cm2")
    image = read_dicom(save(make_dataset(np.full((32, 32), 90, np.uint8), "MONOCHROME2",
                                         sop_class="1.2.840.10008.5.1.4.1.1.1.1", modality="DX"), tmp_path / "h.dcm"))
    group = ReportGroup(label="left hip", laterality="L", delta=0.1, recommendation=None,
                        measurements={"bmd_g_cm2": {"value": 0.71, "lower_bound": 0.52, "upper_bound": 0.90}})
    write_sr(tmp_path / "h.sr.dcm", image, [group], AlgorithmInfo(bundle_sha256="0" * 64, task="bmd"))
    (written,) = read_sr(tmp_path / "h.sr.dcm")["groups"]
    assert written["measurements"]["bmd_g_cm2"]["value"] == pytest.approx(0.71)
    assert written["measurements"]["bmd_g_cm2"]["unit"] == "g/cm2"
    assert written["measurements"]["bmd_g_cm2"]["lower_bound"] == pytest.approx(0.52)


def test_report_errors_are_one_line(tmp_path):
    ds = make_dataset(np.full((32, 32), 60, np.uint8), "MONOCHROME2")
    from sonogate.data.dicom import read_dicom

    image = read_dicom(save(ds, tmp_path / "two.dcm"))
    with pytest.raises(ReportError, match="nothing to report"):
        build_sr(image, [], AlgorithmInfo(bundle_sha256="0" * 64))
    with pytest.raises(ReportError) as info:
        write_sc(tmp_path / "two.sc.dcm", image, np.zeros((40, 50), np.uint8), AlgorithmInfo(bundle_sha256="0"))
    assert "\n" not in str(info.value)
    image.header.SOPInstanceUID = ""
    with pytest.raises(ReportError, match="no SOPInstanceUID"):
        build_sr(image, [ReportGroup(label="x", recommendation="no_recommendation")],
                 AlgorithmInfo(bundle_sha256="0" * 64))
