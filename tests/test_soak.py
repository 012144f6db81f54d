"""Short soak for CI: thousands of frames through a real Session must not grow memory (the full run is
benchmarks/soak.py, 100,000 frames).

The soak runs in a fresh process, as the benchmark does: the RSS of the pytest process also moves with whatever the
tests before it left behind (torch's allocator, freed arenas, finished threads), which the runtime does not own.
"""

import json
import subprocess
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
    bundle = write_tiny_bundle(tmp_path / "b")
    rng = np.random.default_rng(0)
    video = tmp_path / "loop.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (128, 128))
    for level in (200,) * 20 + (90,) * 20:
        writer.write(speckled_frame(level, rng, size=128))
    writer.release()
    code = ("import json, sys; from benchmarks.soak import soak; "
            f"print(json.dumps(soak({str(bundle)!r}, frames=4000, window=500, warmup_windows=2, cine={str(video)!r}, "
            "device='ort-cpu', progress=False)))")
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", code], check=False, cwd=root, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["frames"] == 4000
    assert result["rss_growth_after_warmup_mb"] <= 5.0, result["windows"]
    assert set(result["recommendations"]) >= {"us_sufficient", "xray_recommended"}
    assert psutil.Process().memory_info().rss > 0
