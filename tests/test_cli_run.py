"""`sonogate run` end to end on a real video file and a real (tiny) ONNX bundle, and its bad-input errors."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.tiny_bundle import speckled_frame, write_tiny_bundle

pytestmark = pytest.mark.torchfree


def _write_video(path, frames, fps=30.0):
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()


def _sonogate(*args):
    return subprocess.run([sys.executable, "-m", "sonogate.cli", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_run_file_headless_writes_events(tmp_path):
    bundle = write_tiny_bundle(tmp_path / "bundle")
    rng = np.random.default_rng(3)
    frames = [speckled_frame(200, rng, size=128) for _ in range(40)] + [speckled_frame(80, rng, size=128)
                                                                         for _ in range(40)]
    video = tmp_path / "scan.mp4"
    _write_video(video, frames)
    events_path = tmp_path / "events.jsonl"
    snapshot = tmp_path / "frame.png"
    result = _sonogate("run", "--bundle", str(bundle), "--source", str(video), "--headless", "--no-realtime",
                       "--events", str(events_path), "--snapshot", str(snapshot), "--roi", "0,0,128,128",
                       "--device", "ort-cpu")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in events_path.read_text().splitlines()]
    summary = lines[-1]
    events = lines[:-1]
    assert summary["summary"] is True and summary["frames"] == len(events) > 0
    for event in events:
        assert isinstance(event["frame"], int) and event["latency_ms"] >= 0
        assert event["recommendation"] in {"us_sufficient", "xray_recommended", "insufficient_image",
                                           "no_recommendation"}
    seen = [e["recommendation"] for e in events]
    assert "us_sufficient" in seen and "xray_recommended" in seen
    assert seen.index("us_sufficient") < len(seen) - seen[::-1].index("xray_recommended") - 1
    assert summary["final_recommendation"] == "xray_recommended"
    assert "final recommendation: xray_recommended" in result.stdout
    image = cv2.imread(str(snapshot))
    assert image is not None and image.shape[1] > 128  # frame plus the side panel


@pytest.mark.parametrize("case", ["missing_source", "missing_bundle", "bad_max_frames"])
def test_run_bad_input_is_one_line_exit_2(tmp_path, case):
    bundle = write_tiny_bundle(tmp_path / "bundle")
    args = ["run", "--bundle", str(bundle), "--source", str(tmp_path / "nope.mp4"), "--headless"]
    if case == "missing_bundle":
        video = tmp_path / "v.mp4"
        _write_video(video, [speckled_frame(100, size=64)] * 3)
        args = ["run", "--bundle", str(tmp_path / "no_bundle"), "--source", str(video), "--headless"]
    if case == "bad_max_frames":
        args += ["--max-frames", "-3"]
    result = _sonogate(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error:" in last
    if case != "bad_max_frames":  # argparse prints its usage first; our own errors are exactly one line
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
