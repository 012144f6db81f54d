"""The hash-chained audit log: only changes are written, every kind of tampering is found at the right line,
no patient identifier gets in, and the CLI answers OK / TAMPERED / one-line error with exit 0 / 1 / 2."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from sonogate.errors import SonogateError
from sonogate.runtime.audit import (
    GENESIS,
    AuditLog,
    canonical_json,
    line_sha256,
    scrub_text,
    session_log_path,
    verify_audit_log,
)
from sonogate.runtime.recommend import RecommenderConfig
from tests.tiny_bundle import SIZE, speckled_frame, write_tiny_bundle

pytestmark = pytest.mark.torchfree

REQUIRED = {"seq", "time_utc", "event", "recommendation", "reason", "bundle_sha256", "calibration_sha256",
            "thresholds", "delta", "rule", "device", "session_id", "prev_sha256", "sha256"}
PATIENT_NAME, PATIENT_ID = "Doe^Janeway", "MRN-7781234"


def good_frame(level: float, rng: np.random.Generator) -> np.ndarray:
    """Speckled frame at the model's input size (no resize: the speckle variance survives, p(plane) ~ 1)."""
    return speckled_frame(level, rng, size=SIZE)


def _event(recommendation: str, frame: int, fault: str | None = None, alpha: float = 70.0) -> dict:
    return {"frame": frame, "t_s": frame / 10, "recommendation": recommendation, "candidate": recommendation,
            "reason": fault or f"alpha_deg bound {alpha - 3:.1f} >= 60", "hip": "R", "graf_type": "Ia",
            "accepted_frames": 5, "fault": fault,
            "measurements": {"alpha_deg": {"value": alpha, "lower_bound": alpha - 3, "upper_bound": None}}}


def _synthetic_log(path: Path) -> Path:
    """A log of 7 lines: start, insufficient, us_sufficient, fault, xray, (repeats not written), end."""
    clock = iter(f"2026-01-01T00:00:{i:02d}.000Z" for i in range(60))
    with AuditLog(path, bundle_sha256="b" * 64, calibration_sha256="c" * 64,
                  thresholds={"alpha_deg": 60.0, "coverage_pct": 50.0}, delta=0.1, rule="and",
                  device="onnxruntime:CPUExecutionProvider", clock=lambda: next(clock)) as log:
        for frame, rec in enumerate(["insufficient_image"] * 3 + ["us_sufficient"] * 4):
            log.record(_event(rec, frame))
        log.record(_event("no_recommendation", 7, fault="source lost: no frame"))
        log.record(_event("no_recommendation", 8, fault="source lost: no frame"))
        for frame in range(9, 12):
            log.record(_event("xray_recommended", frame, alpha=55.0))
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


# --------------------------------------------------------------------------- writing
def test_only_changes_are_written_and_the_chain_verifies(tmp_path):
    path = _synthetic_log(tmp_path / "audit.jsonl")
    lines = [json.loads(text) for text in _lines(path)]
    assert [line["event"] for line in lines] == [
        "session_start", "recommendation", "recommendation", "fault", "recommendation", "session_end"]
    assert [line["recommendation"] for line in lines[1:]] == [
        "insufficient_image", "us_sufficient", "no_recommendation", "xray_recommended", "xray_recommended"]
    assert [line["seq"] for line in lines] == list(range(1, 7))
    assert lines[0]["prev_sha256"] == GENESIS
    for previous, line in itertools.pairwise(lines):
        assert line["prev_sha256"] == previous["sha256"]
    for line in lines:
        assert REQUIRED <= set(line)
        assert line["sha256"] == line_sha256(line)
        assert line["thresholds"] == {"alpha_deg": 60.0, "coverage_pct": 50.0} and line["delta"] == 0.1
    assert lines[2]["measurements"]["alpha_deg"] == {"value": 70.0, "lower_bound": 67.0, "upper_bound": None}
    assert lines[-1]["changes"] == 4 and lines[-1]["faults"] == 1
    result = verify_audit_log(path)
    assert result.ok and result.lines == 6 and result.first_bad_line is None and result.reason == "chain intact"
    assert result.head_sha256 == lines[-1]["sha256"]


def test_audit_of_a_real_session(tmp_path):
    from sonogate.runtime.session import Session

    rng = np.random.default_rng(3)
    folder = write_tiny_bundle(tmp_path / "b")
    path = tmp_path / "audit.jsonl"
    with Session(folder, device="ort-cpu", detect_roi=False, config=RecommenderConfig(confirm_frames=3)) as session:
        log = AuditLog.for_session(path, session)
        events = [session.process(good_frame(200, rng)) for _ in range(8)]
        events += [session.process(None, fault="source lost: no frame") for _ in range(3)]
        events += [session.process(good_frame(90, rng)) for _ in range(10)]
        for event in events:
            log.record(event)
        log.close()
    shown = [e["recommendation"] for e in events]
    assert "us_sufficient" in shown and shown[-1] == "xray_recommended"
    changes = 1 + sum(a != b for a, b in itertools.pairwise(shown))
    lines = [json.loads(text) for text in _lines(path)]
    assert len(lines) == 2 + changes  # start + one per change (the fault is a change here) + end
    reassured = next(line for line in lines if line["recommendation"] == "us_sufficient")
    assert reassured["bundle_sha256"] == session.bundle.bundle_hash
    assert reassured["calibration_sha256"] == session.calibration_sha256
    assert reassured["rule"] == "and" and reassured["device"].startswith("onnxruntime")
    assert reassured["measurements"]["alpha_deg"]["lower_bound"] >= 60
    assert verify_audit_log(path, expected_head=log.head_sha256).ok


def test_a_log_file_is_continued_across_sessions_and_a_broken_one_is_refused(tmp_path):
    path = _synthetic_log(tmp_path / "audit.jsonl")
    _synthetic_log(path)  # second session appends to the same chain
    result = verify_audit_log(path)
    assert result.ok and result.lines == 12 and result.sessions == 2 and result.open_sessions == 0
    lines = _lines(path)
    path.write_text("".join(lines[:3] + lines[4:]))
    with pytest.raises(SonogateError, match="fails verification"):
        AuditLog(path, bundle_sha256=None, calibration_sha256=None, thresholds=None, delta=None, rule=None,
                 device=None)
    assert session_log_path(tmp_path) != session_log_path(tmp_path).with_name("x")
    assert session_log_path(tmp_path).parent == tmp_path


def test_junk_events_never_raise_and_keep_the_chain_valid(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, bundle_sha256=None, calibration_sha256=None, thresholds={"alpha_deg": float("nan")},
                   delta=float("inf"), rule=None, device=None)
    for junk in [None, 3, "x", {}, {"recommendation": None},
                 {"recommendation": "xray_recommended", "measurements": {"alpha_deg": {"value": float("nan")}}},
                 {"recommendation": "us_sufficient", "measurements": [1, 2], "frame": float("inf"), "reason": 7},
                 {"recommendation": {"nested": True}, "hip": object(), "fault": ValueError("boom")}]:
        log.record(junk)
    log.close()
    log.close()  # idempotent
    assert log.healthy and verify_audit_log(path).ok


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to simulate a full disk")
def test_a_full_disk_never_stops_the_session():
    log = AuditLog("/dev/full", bundle_sha256=None, calibration_sha256=None, thresholds=None, delta=None,
                   rule=None, device=None)
    assert log.record(_event("us_sufficient", 1)) is None
    log.close()
    assert not log.healthy and "write failed" in log.error


# --------------------------------------------------------------------------- tampering
def _edit_value(lines):
    line = json.loads(lines[2])  # the us_sufficient line: make it look like an X-ray was advised
    line["recommendation"] = "xray_recommended"
    lines[2] = canonical_json(line) + "\n"
    return lines, 3


def _edit_and_rehash(lines):
    line = json.loads(lines[2])
    line["measurements"]["alpha_deg"]["lower_bound"] = 61.0
    line["sha256"] = line_sha256(line)
    lines[2] = canonical_json(line) + "\n"
    return lines, 4  # the edited line is self-consistent; the next line no longer chains to it


def _edit_spacing(lines):
    lines[2] = lines[2].replace('":', '": ', 1)
    return lines, 3


def _delete(lines):
    del lines[3]
    return lines, 4


def _delete_first(lines):
    del lines[0]
    return lines, 1


def _swap(lines):
    lines[2], lines[3] = lines[3], lines[2]
    return lines, 3


def _insert_copy(lines):
    lines.insert(4, lines[3])
    return lines, 5


def _truncate_mid_line(lines):
    lines[-1] = lines[-1][: len(lines[-1]) // 2]
    return lines, len(lines)


def _truncate_inside(lines):
    lines[2] = lines[2][:40] + "\n"
    return lines, 3


def _blank_line(lines):
    lines.insert(2, "\n")
    return lines, 3


TAMPERING = {"edit a value": _edit_value, "edit and recompute its hash": _edit_and_rehash,
             "reformat a line": _edit_spacing, "delete a line": _delete, "delete the first line": _delete_first,
             "swap two lines": _swap, "insert a copied line": _insert_copy, "truncate mid-line": _truncate_mid_line,
             "cut a line inside the file": _truncate_inside, "insert a blank line": _blank_line}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_tampering_is_detected_at_the_right_line(tmp_path, how):
    path = _synthetic_log(tmp_path / "audit.jsonl")
    lines, expected_line = TAMPERING[how](_lines(path))
    path.write_text("".join(lines))
    result = verify_audit_log(path)
    assert not result.ok, how
    assert result.first_bad_line == expected_line, (how, result)
    assert result.reason and "\n" not in result.reason


def test_lines_cut_off_the_end_need_the_head_anchor(tmp_path):
    path = _synthetic_log(tmp_path / "audit.jsonl")
    head = verify_audit_log(path).head_sha256
    lines = _lines(path)
    path.write_text("".join(lines[:-2]))  # a clean cut at a line boundary keeps a valid chain...
    plain = verify_audit_log(path)
    assert plain.ok and plain.open_sessions == 1 and "without session_end" in plain.reason
    anchored = verify_audit_log(path, expected_head=head)  # ...that the anchored check refuses
    assert not anchored.ok and anchored.first_bad_line == 5 and "cut off the end" in anchored.reason
    path.write_text("")
    assert not verify_audit_log(path).ok


# --------------------------------------------------------------------------- CLI
def _cli(argv, capsys):
    from sonogate.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_audit_verify(tmp_path, capsys):
    path = _synthetic_log(tmp_path / "audit.jsonl")
    code, out, err = _cli(["audit", "verify", str(path)], capsys)
    assert code == 0 and out.strip() == "OK: 6 lines, chain intact" and err == ""
    lines = _lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_text("".join(lines))
    code, out, err = _cli(["audit", "verify", str(path)], capsys)
    assert code == 1 and out.startswith("TAMPERED: line 3: ") and len(out.strip().splitlines()) == 1
    for missing in (tmp_path / "missing.jsonl", tmp_path):
        code, out, err = _cli(["audit", "verify", str(missing)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    unreadable = tmp_path / "locked.jsonl"
    unreadable.write_text("x")
    unreadable.chmod(0)
    if not os.access(unreadable, os.R_OK):  # root reads anything
        code, out, err = _cli(["audit", "verify", str(unreadable)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- privacy
def write_small_dicom(path: Path, frames: np.ndarray, patient_name: str = PATIENT_NAME,
                      patient_id: str = PATIENT_ID) -> Path:
    """An uncompressed 8-bit MONOCHROME2 ultrasound multi-frame DICOM with patient identifiers set."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim == 2:
        frames = frames[None]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "US"
    ds.PatientName, ds.PatientID = patient_name, patient_id
    ds.PatientBirthDate = "20260101"
    ds.NumberOfFrames = frames.shape[0]
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.CineRate = 15
    ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_corrupt_length_dicom(path: Path) -> Path:
    """A small DICOM whose SOP Class UID length field is corrupt (600): the value swallows the elements after it,
    PatientName and PatientID included, so a parser error or warning that quotes the value quotes them too."""
    import struct

    frames = np.zeros((3, SIZE, SIZE), np.uint8)
    data = bytearray(write_small_dicom(path, frames).read_bytes())
    at = data.find(b"\x08\x00\x16\x00UI")  # (0008,0016) SOP Class UID, explicit VR little endian
    assert at > 0
    data[at + 6: at + 8] = struct.pack("<H", 600)
    path.write_bytes(bytes(data))
    return path


def test_no_patient_identifier_reaches_the_audit_log(tmp_path):
    import pydicom

    from sonogate.runtime.session import Session

    rng = np.random.default_rng(5)
    frames = np.stack([good_frame(200, rng)[:, :, 0] for _ in range(8)])
    dicom = write_small_dicom(tmp_path / "Doe_Janeway_MRN-7781234.dcm", frames)
    ds = pydicom.dcmread(dicom)
    assert str(ds.PatientName) == PATIENT_NAME
    faults = [f"source lost: cannot open source '{dicom}': no such file",
              f"source ended: {dicom} (PatientName='{ds.PatientName}')",
              f"model error: RuntimeError: {ds.PatientID} {ds.PatientName}"]
    try:  # the real DICOM reader's error on a corrupt file can quote the patient name (a length field gone bad)
        from sonogate.data.dicom import read_dicom
        from sonogate.errors import DataError
        try:
            read_dicom(write_corrupt_length_dicom(tmp_path / "corrupt.dcm"))
        except DataError as exc:
            faults.append(f"source lost: cannot open source 'corrupt.dcm': {exc}")
    except ModuleNotFoundError:
        pass
    folder = write_tiny_bundle(tmp_path / "b")
    plain, redacting = tmp_path / "audit.jsonl", tmp_path / "audit-redact.jsonl"
    with Session(folder, device="ort-cpu", detect_roi=False, config=RecommenderConfig(confirm_frames=3)) as session:
        logs = [AuditLog.for_session(plain, session),
                AuditLog.for_session(redacting, session, redact=(str(ds.PatientName), ds.PatientID))]
        events = []
        for frame in ds.pixel_array:
            events.append(session.process(frame))
        for fault in faults:
            events.append(session.process(None, fault=fault))
            events.append(session.process(frames[0][:, :, None].repeat(2, axis=2)))  # unreadable frame: fault
            events.append(session.process(frames[0]))  # fault over: the next fault line is written
        for event in events:
            # session events do not carry patient identifiers (keep it so) ...
            if event["fault"] is None:
                assert PATIENT_ID not in json.dumps(event) and "Janeway" not in json.dumps(event)
            # ... and even if one did, the audit copies only a fixed list of keys, and a fault's kind only
            leaky = {**event, "patient_name": str(ds.PatientName), "patient_id": ds.PatientID, "source": str(dicom)}
            logs[0].record(leaky)
            # a reason text quoting a bare identifier is only caught when the caller names it in ``redact``
            logs[1].record({**leaky, "reason": f"{event['reason']} ({ds.PatientID})"})
        for log in logs:
            log.close()
    assert "us_sufficient" in [e["recommendation"] for e in events]
    for path in (plain, redacting):
        text = path.read_text()
        for identifier in (PATIENT_NAME, "Janeway", PATIENT_ID, "7781234", "Doe_", str(tmp_path)):
            assert identifier not in text, (path.name, identifier)
        assert verify_audit_log(path).ok
        kinds = [json.loads(line)["fault"] for line in text.splitlines() if json.loads(line)["event"] == "fault"]
        assert "source lost" in kinds and "model error: RuntimeError" in kinds


def test_scrub_text_keeps_the_reason_readable():
    assert scrub_text("alpha_deg bound 63.2 >= 60, coverage_pct bound 67.0 >= 50") == (
        "alpha_deg bound 63.2 >= 60, coverage_pct bound 67.0 >= 50")
    assert scrub_text("source lost: cannot open source '/data/Doe Jane.mp4': no such file") == (
        "source lost: cannot open source <redacted>: no such file")
    assert "secret" not in scrub_text("source lost: rtsp://user:secret@10.0.0.2/live")
    assert "Doe" not in scrub_text(r"model error: C:\scans\Doe\x.dcm broken")
    assert len(scrub_text("x" * 1000)) == 300 and "\n" not in scrub_text("a\nb")
