"""``sonogate run`` with a task decided per image (``ImageSession``): one measurement per new image, the task's
safe default on any fault, the wrapper's own picture in the overlay."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonogate.errors import SonogateError
from sonogate.runtime.image_session import ImageSession
from sonogate.runtime.session import Session, open_session
from tests.test_analyze import _expected, run_cli, write_tiny_xr_bundle
from tests.tiny_bundle import write_tiny_bundle

pytestmark = pytest.mark.torchfree


def write_video(path: Path, greys: list[int], size=(96, 64)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    for grey in greys:
        writer.write(np.full((size[1], size[0], 3), grey, np.uint8))
    writer.release()
    return path


def test_open_session_picks_the_session_by_the_tasks_decision_unit(tmp_path):
    xr = write_tiny_xr_bundle(tmp_path / "xr")
    us = write_tiny_bundle(tmp_path / "us")
    with open_session(xr) as session:
        assert isinstance(session, ImageSession)
        assert session.task == "hip_xr"
    with open_session(us) as session:
        assert isinstance(session, Session)
    with pytest.raises(SonogateError, match="decided per image: --calibration"):
        open_session(xr, calibration=str(tmp_path / "other.json"))


def test_each_new_image_is_measured_once_and_repeated_frames_reuse_it(tmp_path):
    bundle = write_tiny_xr_bundle(tmp_path / "xr")
    with ImageSession(bundle) as session:
        events = [session.process(np.full((64, 96, 3), grey, np.uint8)) for grey in [100] * 4 + [200] * 3]
    assert [e["measured"] for e in events] == [True, False, False, False, True, False, False]
    for event, grey in zip(events, [100] * 4 + [200] * 3):
        ai, ce = _expected(grey)
        hip = event["result"]["hips"]["right"]
        assert hip["ai_deg"]["value"] == pytest.approx(ai, abs=1e-3)
        assert hip["ce_deg"]["value"] == pytest.approx(ce, abs=1e-3)
        # calibrated one-sided bounds on the safe side of each value (radii 3 and 4 in the tiny bundle)
        assert hip["ai_deg"]["upper_bound"] == pytest.approx(ai + 3.0, abs=1e-3)
        assert hip["ce_deg"]["lower_bound"] == pytest.approx(ce - 4.0, abs=1e-3)
        assert event["task"] == "hip_xr" and event["fault"] is None
        assert event["bundle_sha256"] == session.bundle.bundle_hash
        # the radiograph's own outcome: reassuring only when both hips' bounds are on the safe side
        if ai + 3.0 <= 30.0 and ce - 4.0 >= 20.0:
            assert event["recommendation"] == "normal within bounds", event["reason"]
        else:
            assert event["recommendation"] == "abnormal or uncertain"
            assert "right hip: AI bound" in event["reason"] and "left hip: AI bound" in event["reason"]
    assert {e["recommendation"] for e in events} == {"normal within bounds", "abnormal or uncertain"}


def test_faults_and_bad_frames_give_the_tasks_safe_default(tmp_path):
    bundle = write_tiny_xr_bundle(tmp_path / "xr")
    with ImageSession(bundle) as session:
        safe = session.safe_default
        lost = session.process(None, fault="source lost: no frame")
        garbage = session.process(np.zeros((0, 0), np.uint8))
    assert safe == "abnormal or uncertain"
    assert lost["recommendation"] == safe and lost["fault"] == "source lost: no frame"
    assert garbage["recommendation"] == safe and "not a 2-D or 3-D image" in garbage["reason"]
    assert safe not in session.reassuring


def test_sonogate_run_takes_a_radiograph_bundle_and_draws_the_tasks_picture(tmp_path):
    bundle = write_tiny_xr_bundle(tmp_path / "xr")
    video = write_video(tmp_path / "station.avi", [90] * 5 + [180] * 5)
    events_path, snapshot = tmp_path / "events.jsonl", tmp_path / "snap.png"
    code = run_cli(["run", "--bundle", str(bundle), "--source", str(video), "--headless", "--no-realtime",
                    "--events", str(events_path), "--snapshot", str(snapshot)])
    assert code == 0
    lines = [json.loads(line) for line in events_path.read_text().splitlines()]
    frames = [e for e in lines if e.get("type") == "image_task"]
    assert len(frames) == 10
    assert sum(e["measured"] for e in frames) == 2  # one per image shown, MJPG noise is below the change level
    picture = cv2.imread(str(snapshot))
    # hip_xr's own SC drawing (image + 300-px panel) under the decision banner, not the ultrasound overlay
    assert picture.shape[1] == 96 + 300
    assert tuple(int(v) for v in picture[10, 10]) == (30, 30, 220)  # red banner: not a reassuring outcome
    # the first radiograph (grey 90) is normal within bounds in both hips, the second (180) is not
    assert [e["recommendation"] for e in frames] == ["normal within bounds"] * 5 + ["abnormal or uncertain"] * 5
