"""The X-ray bundle in the live process (``sonogate run --xr-bundle --xr-watch``): new radiographs in a folder
are measured on a background thread and written as "xray" events beside the ultrasound decisions. Real ONNX
Runtime on a hand-built whole-pelvis bundle (no torch), real files, real DICOM."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest

from sonogate.errors import SonogateError
from sonogate.runtime.analyze import XrayModel
from sonogate.runtime.xr_watch import XrayWatcher
from tests.test_xr import _dicom, _run_cli, handmade_xr_bundle
from tests.tiny_bundle import write_tiny_bundle

pytestmark = pytest.mark.torchfree


def _pelvis(bright_left: bool = True) -> np.ndarray:
    gray = np.full((60, 80), 40, np.uint8)
    if bright_left:
        gray[:, :40] = 220
    else:
        gray[:, 40:] = 220
    return gray


def test_watcher_measures_new_files_once_and_reports_bad_ones(tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    cv2.imwrite(str(folder / "old.png"), _pelvis())  # there before the session: not measured
    watcher = XrayWatcher(XrayModel(handmade_xr_bundle(tmp_path / "xr"), device="ort-cpu"), folder)
    assert watcher.poll_once() == 0
    cv2.imwrite(str(folder / "new.png"), _pelvis())
    _dicom(folder / "pelvis.dcm", _pelvis(bright_left=False))
    (folder / "broken.dcm").write_bytes(b"DICM" + b"\0" * 40)
    assert watcher.poll_once() == 0  # first sighting: the file may still be growing
    assert watcher.poll_once() == 3
    assert watcher.poll_once() == 0  # each file once
    events = {e["file"]: e for e in watcher.drain()}
    assert set(events) == {"new.png", "pelvis.dcm", "broken.dcm"}
    png = events["new.png"]
    assert png["type"] == "xray" and png["error"] is None
    right, left = png["hips"]["right"]["ai_deg"]["value"], png["hips"]["left"]["ai_deg"]["value"]
    # the bright image-left half, letterboxed: 60 of its 80 padded rows are image
    assert right == pytest.approx(20 + 10 * (220 * 60 / 80 / 255 - 0.5) / 0.25, abs=0.3)
    assert left < right
    assert any("no calibration" in n for n in png["notes"])
    assert png["model"]["bundle_sha256"]
    dicom = events["pelvis.dcm"]["hips"]
    assert dicom["right"]["ai_deg"]["value"] < dicom["left"]["ai_deg"]["value"]
    broken = events["broken.dcm"]
    assert broken["hips"] is None and "\n" not in broken["error"]
    assert watcher.drain() == []


def test_watch_folder_must_exist(tmp_path):
    model = XrayModel(handmade_xr_bundle(tmp_path / "xr"), device="ort-cpu")
    with pytest.raises(SonogateError, match="does not exist"):
        XrayWatcher(model, tmp_path / "missing")


def test_sonogate_run_measures_a_radiograph_that_arrives_during_the_scan(tmp_path):
    """One process, two bundles: the ultrasound stream keeps its per-frame events while a radiograph dropped
    into the watched folder comes back as an 'xray' event in the same JSONL."""
    from tests.tiny_bundle import speckled_frame

    video = tmp_path / "scan.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (96, 96))
    rng = np.random.default_rng(0)
    for _ in range(90):
        writer.write(speckled_frame(170, rng))
    writer.release()
    us_bundle = write_tiny_bundle(tmp_path / "us")
    xr_bundle = handmade_xr_bundle(tmp_path / "xr")
    folder = tmp_path / "incoming"
    folder.mkdir()
    events = tmp_path / "events.jsonl"

    def drop_radiograph():
        time.sleep(0.8)
        cv2.imwrite(str(folder / "pelvis.png"), _pelvis())

    dropper = threading.Thread(target=drop_radiograph)
    dropper.start()
    rc = _run_cli(["run", "--bundle", str(us_bundle), "--source", str(video), "--headless", "--device", "ort-cpu",
                   "--xr-bundle", str(xr_bundle), "--xr-watch", str(folder), "--events", str(events)])
    dropper.join()
    assert rc == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    xray = [e for e in lines if e.get("type") == "xray"]
    frames = [e for e in lines if "recommendation" in e and e.get("type") != "xray"]
    assert len(xray) == 1 and xray[0]["file"] == "pelvis.png" and xray[0]["error"] is None
    assert xray[0]["hips"]["right"]["ai_deg"]["value"] > xray[0]["hips"]["left"]["ai_deg"]["value"]
    assert len(frames) > 30


def test_xr_watch_without_xr_bundle_is_a_one_line_error(tmp_path, capsys):
    us_bundle = write_tiny_bundle(tmp_path / "us")
    rc = _run_cli(["run", "--bundle", str(us_bundle), "--source", "phantom:1", "--headless", "--max-frames", "2",
                   "--xr-watch", str(tmp_path)])
    assert rc == 2
    assert "--xr-watch needs --xr-bundle" in capsys.readouterr().err
