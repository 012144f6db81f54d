"""A live network stream (ffmpeg -> MPEG-TS over UDP on 127.0.0.1) through the grabber: live, lost, live again."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonogate.device.capture import StreamSource, open_source
from sonogate.device.grabber import LatestFrameGrabber

FFMPEG = shutil.which("ffmpeg")
pytestmark = [
    pytest.mark.torchfree,
    pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (apt-get install ffmpeg)"),
]


def write_video(path: Path, count: int = 60, fps: float = 30.0) -> Path:
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 120))
    for i in range(count):
        img = cv2.GaussianBlur(rng.rayleigh(40.0, (120, 160)).astype(np.float32), (0, 0), 1.0)
        img = np.clip(img * 1.5, 0, 255).astype(np.uint8)
        cv2.line(img, (0, (7 * i) % 120), (159, (7 * i + 15) % 120), 255, 3)
        writer.write(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_sender(video: Path, port: int) -> subprocess.Popen:
    cmd = [
        FFMPEG, "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(video), "-an",
        "-c:v", "mpeg2video", "-q:v", "5", "-g", "10",  # a key frame every 1/3 s: quick to join mid-stream
        "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_sender(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)


def wait_for(predicate, timeout: float, step: float = 0.02) -> float | None:
    """Seconds until ``predicate()`` holds, or None after ``timeout``."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if predicate():
            return time.perf_counter() - t0
        time.sleep(step)
    return None


def test_udp_stream_live_lost_and_back(tmp_path):
    video = write_video(tmp_path / "test.mp4")
    port = free_udp_port()
    url = f"udp://127.0.0.1:{port}"
    sender = start_sender(video, port)
    grabber = None
    try:
        def factory():
            # 5 s to open: a cold ffmpeg on a busy CI machine once took over 2 s to send its first packet; loss
            # below is detected by the read timeout and staleness, which stay short
            return open_source(url, open_timeout_s=5.0, read_timeout_s=1.0)

        grabber = LatestFrameGrabber(factory, stale_after_s=1.0, reconnect_backoff_s=(0.25, 0.5, 1.0)).start()
        # 1. frames arrive, state live
        frames = []
        t_end = time.perf_counter() + 1.5
        while time.perf_counter() < t_end:
            frame = grabber.get(timeout=1.0)
            if frame is not None:
                frames.append(frame.index)
        assert len(frames) >= 15, f"only {len(frames)} frames in 1.5 s"
        assert grabber.state == "live"
        assert grabber.source_name == url and grabber.source_fps == pytest.approx(30.0, rel=0.1)

        # 2. the sender dies: lost within ~2 s (stale after 1 s), not OpenCV's 30 s
        stop_sender(sender)
        sender = None
        t_lost = wait_for(lambda: grabber.state == "lost", timeout=3.0)
        assert t_lost is not None and t_lost <= 2.0, f"state still {grabber.state} after the sender died"
        assert grabber.last_error

        # 3. the sender comes back: the grabber reconnects and frames flow again
        time.sleep(0.5)
        sender = start_sender(video, port)
        last_index = frames[-1]
        t_back = wait_for(lambda: grabber.state == "live", timeout=12.0)
        assert t_back is not None, f"no reconnect: {grabber.state} ({grabber.last_error})"
        again = [f for f in (grabber.get(timeout=1.0) for _ in range(5)) if f is not None]
        assert again and again[-1].index > last_index
        assert grabber.reconnects >= 1
        print(f"\nlost after {t_lost:.2f} s, live again {t_back:.2f} s after the sender restarted, "
              f"{grabber.reconnects} reconnect(s)")
    finally:
        stop_sender(sender)
        if grabber is not None:
            grabber.stop()


def test_stream_source_type_and_timeouts(tmp_path):
    video = write_video(tmp_path / "test.mp4", count=30)
    port = free_udp_port()
    sender = start_sender(video, port)
    try:
        src = open_source(f"udp://127.0.0.1:{port}", open_timeout_s=3.0, read_timeout_s=0.5)
        try:
            assert isinstance(src, StreamSource) and not getattr(src, "finite", False)
            ok, frame = src.read()
            assert ok and frame.shape == (120, 160, 3)
            stop_sender(sender)
            sender = None
            t0 = time.perf_counter()
            for _ in range(20):  # a few buffered frames may still come, then reads fail, each within the timeout
                if not src.read()[0]:
                    break
            assert time.perf_counter() - t0 < 3.0
        finally:
            src.close()
    finally:
        stop_sender(sender)


def test_runtime_on_a_udp_stream_says_no_recommendation_during_the_gap(tmp_path):
    """The whole runtime (LivePipeline + Session + real ONNX Runtime) on a UDP stream: kill and restart the
    sender mid-run; the events show no_recommendation while the source is lost and measured frames after."""
    import json
    import threading

    from sonogate.runtime.pipeline import LivePipeline, PipelineOptions
    from sonogate.runtime.session import Session
    from tests.tiny_bundle import write_tiny_bundle

    video = write_video(tmp_path / "test.mp4")
    port = free_udp_port()
    url = f"udp://127.0.0.1:{port}"
    events_path = tmp_path / "events.jsonl"
    sender = start_sender(video, port)
    try:
        session = Session(write_tiny_bundle(tmp_path / "b"), device="ort-cpu", roi=(0, 0, 160, 120))
        pipeline = LivePipeline(session, PipelineOptions(source=url, headless=True, events_path=str(events_path),
                                                         max_seconds=9.0))
        runner = threading.Thread(target=pipeline.run, daemon=True)
        runner.start()
        time.sleep(2.5)
        stop_sender(sender)
        sender = None
        time.sleep(2.5)
        sender = start_sender(video, port)
        runner.join(timeout=30)
        assert not runner.is_alive()
    finally:
        stop_sender(sender)
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    frames = [e for e in events if not e.get("summary")]
    lost = [i for i, e in enumerate(frames) if e["fault"] and e["fault"].startswith("source")]
    assert lost, "no source-lost event during the gap"
    assert all(frames[i]["recommendation"] == "no_recommendation" for i in lost)
    measured_before = [e for e in frames[: lost[0]] if e["frame_measurements"] is not None]
    measured_after = [e for e in frames[lost[-1] + 1:] if e["frame_measurements"] is not None]
    assert measured_before and measured_after, "frames were not measured before and after the gap"
    assert events[-1]["summary"] is True and events[-1]["faults"]
