"""Short soak for CI: thousands of frames through a real Session must not grow memory (the full run is
benchmarks/soak.py, 100,000 frames)."""

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.tiny_bundle import speckled_frame, write_tiny_bundle

pytestmark = pytest.mark.torchfree
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_short_soak_has_no_memory_growth(tmp_path):
    psutil = pytest.importorskip("psutil")
    from benchmarks.soak import soak

    bundle = write_tiny_bundle(tmp_path / "b")
    rng = np.random.default_rng(0)
    video = tmp_path / "loop.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (128, 128))
    for level in (200,) * 20 + (90,) * 20:
        writer.write(speckled_frame(level, rng, size=128))
    writer.release()
    result = soak(str(bundle), frames=4000, window=500, warmup_windows=2, cine=str(video), device="ort-cpu",
                  progress=False)
    assert result["frames"] == 4000
    assert result["rss_growth_after_warmup_mb"] <= 5.0, result["windows"]
    assert set(result["recommendations"]) >= {"us_sufficient", "xray_recommended"}
    assert psutil.Process().memory_info().rss > 0
