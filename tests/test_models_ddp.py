"""SimSiam pretraining under torchrun: two CPU processes, gloo backend, DistributedDataParallel (tiny)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from models_fixture import synthetic_folder


def test_torchrun_two_cpu_processes(tmp_path):
    data = synthetic_folder(tmp_path / "data", n=24, size=32, infants=8)
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "sonogate.models.cli", "train", "--data", str(data), "--out", str(out), "--size", "32",
        "--ssl-epochs", "2", "--head-epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    ssl = metrics["ssl"]
    assert ssl["world_size"] == 2 and all(h["world_size"] == 2 for h in ssl["history"])
    assert ssl["replicas_in_sync"] is True  # DDP kept both encoders identical
    assert len(ssl["history"]) == 2
    assert (out / "checkpoint.pt").is_file()
