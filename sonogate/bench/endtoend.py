"""End to end: the runtime (``Session`` + ``LivePipeline``, what ``sonogate run --headless`` runs) in a fresh
process on a phantom cine, polled by the parent for CPU time, peak RSS and the time to the first decision."""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sonogate.bench.text import one_line
from sonogate.bench.workers import worker_command, worker_env
from sonogate.errors import SonogateError

HOW = ("Session + LivePipeline with --events (what `sonogate run --headless` runs) in a fresh process, "
       "OMP_NUM_THREADS=1; CPU and peak RSS (VmHWM) polled by the parent; start-up = process spawn to "
       "the first non-fault event (interpreter start, imports, bundle verification, model load)")


def cine(cache: Path, fps: float, seconds: float, notes: list[str]) -> tuple[Path, str]:
    """A cached source video of ``seconds`` at ``fps``: a phantom cine (seed 7), else a synthetic speckle video
    (a note says why). Returns (path, "phantom" or "synthetic")."""
    name = f"cine_{fps:g}fps_{seconds:g}s_seed7"
    phantom_path = cache / f"{name}_phantom.mp4"
    synthetic_path = cache / f"{name}_synthetic.mp4"
    if phantom_path.is_file():
        return phantom_path, "phantom"
    try:
        from sonogate.phantom.cine import write_cine
    except ImportError as exc:
        why = f"sonogate.phantom.cine not importable ({exc.name})"
    else:
        try:
            write_cine(phantom_path, seconds=seconds, fps=fps, seed=7)
            return phantom_path, "phantom"
        except Exception as exc:  # noqa: BLE001
            why = f"write_cine failed: {one_line(exc)}"
    if not synthetic_path.is_file():
        write_synthetic_cine(synthetic_path, fps, seconds)
    note = f"end to end: {why}; a synthetic speckle video is the source"
    if note not in notes:
        notes.append(note)
    return synthetic_path, "synthetic"


def write_synthetic_cine(path: Path, fps: float, seconds: float, width: int = 640, height: int = 480) -> None:
    """An mp4 of a moving bright blob in speckle with a dark top band, ``seconds`` long at ``fps``."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise SonogateError(f"cannot write video {path}")
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(round(seconds * fps)):
        cx = width / 2 + 80 * math.sin(i / fps * 1.3)
        blob = np.exp(-(((xx - cx) / 90) ** 2 + ((yy - height / 2) / 60) ** 2))
        speckle = rng.rayleigh(40.0, (height, width)).astype(np.float32)
        frame = np.clip(30 + 120 * blob + speckle * (0.4 + blob), 0, 255).astype(np.uint8)
        frame[:40] = 0  # a dark band, like scanner chrome
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _first_decision_seen(events: Path, offset: int, buffered: str) -> tuple[bool, int, str]:
    """Read what was appended to the events file since ``offset``; True when a non-fault decision is in it."""
    with events.open("rb") as handle:
        handle.seek(offset)
        chunk = handle.read()
    offset += len(chunk)
    buffered += chunk.decode("utf-8", errors="replace")
    while "\n" in buffered:
        line, buffered = buffered.split("\n", 1)
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not event.get("summary") and event.get("fault") is None:
            return True, offset, buffered
    return False, offset, buffered


def _summarise(run: dict, events: Path, result: dict, pace: float | None, seconds: float) -> None:
    """Frames, FPS (first to last event time), dropped frames and latencies from the events file into ``run``."""
    summary, first_t, last_t = result.get("summary"), None, None
    if events.is_file():
        for line in events.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("summary"):
                summary = summary or event
            elif event.get("t_s") is not None:
                first_t = event["t_s"] if first_t is None else first_t
                last_t = event["t_s"]
    if summary is not None:
        frames = int(summary.get("frames", 0))
        duration = (last_t - first_t) if (first_t is not None and last_t is not None) else None
        run.update({
            "frames": frames,
            "fps": round((frames - 1) / duration, 2) if duration and frames > 1 else None,
            "dropped_frames": summary.get("dropped_frames"),
            "latency_ms": summary.get("latency_ms"),
            "session_start_to_first_decision_s": summary.get("start_to_first_decision_s"),
            "device": summary.get("device"),
            "faults": summary.get("faults"),
        })
        if pace:
            run["source_frames"] = round(pace * seconds)
    elif "error" not in run:
        run["error"] = "no summary line in the events file"


def e2e_run(options: dict[str, Any], bundle_path: Path, source: Path, pace: float | None, seconds: float) -> dict:
    """One runtime process on ``source``, paced at ``pace`` FPS (None: unpaced, looped for ``seconds``), on
    ``options["e2e_device"]`` with 1 thread. Returns the run: wall and CPU seconds, CPU % of a core, peak RSS
    (MB), spawn to first decision (s), frames, FPS, dropped frames, latency_ms, or "error"."""
    import psutil

    with tempfile.TemporaryDirectory(prefix="sonogate-e2e-") as tmp:
        events, spec_path, result_path = Path(tmp) / "events.jsonl", Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec = {"task": "e2e", "bundle": str(bundle_path), "source": str(source), "device": options["e2e_device"],
                "threads": 1, "events": str(events), "realtime": pace is not None, "loop": pace is None,
                "max_seconds": seconds if pace is None else None, "result_path": str(result_path)}
        spec_path.write_text(json.dumps(spec))
        run: dict[str, Any] = {"pace_fps": pace, "source": source.name, "seconds": seconds}
        log_path = Path(tmp) / "stderr.txt"
        log = log_path.open("w")
        t_spawn = time.perf_counter()
        proc = subprocess.Popen(worker_command(spec_path), env=worker_env(1), stdout=subprocess.DEVNULL, stderr=log)
        ps = psutil.Process(proc.pid)
        rss_peak, cpu, t_first, offset, last_sample = 0.0, 0.0, None, 0, 0.0
        deadline = t_spawn + seconds * 3 + options["timeout"]
        buffered = ""
        while proc.poll() is None:
            now = time.perf_counter()
            if now > deadline:
                proc.kill()
                run["error"] = "timed out"
                break
            if now - last_sample > 0.1:
                last_sample = now
                try:
                    cpu_t = ps.cpu_times()
                    cpu = cpu_t.user + cpu_t.system
                    rss_peak = max(rss_peak, _vm_hwm_mb(proc.pid) or ps.memory_info().rss / 2**20)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            if t_first is None and events.exists():
                seen, offset, buffered = _first_decision_seen(events, offset, buffered)
                if seen:
                    t_first = time.perf_counter() - t_spawn
            time.sleep(0.01)
        wall = time.perf_counter() - t_spawn
        proc.wait()
        log.close()
        stderr = log_path.read_text(errors="replace")
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if "error" in result and "error" not in run:
            run["error"] = result["error"]
        elif proc.returncode != 0 and "error" not in run:
            lines = [ln for ln in stderr.splitlines() if ln.strip()]
            run["error"] = f"runtime exited {proc.returncode}: {lines[-1].strip()[:300] if lines else ''}"
        run.update({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                    "cpu_percent_of_one_core": round(100 * cpu / wall, 1) if wall > 0 else None,
                    "rss_peak_mb": round(rss_peak, 1) if rss_peak else None,
                    "start_to_first_decision_s": round(t_first, 3) if t_first is not None else None,
                    "device_note": result.get("device_note"), "model_variant": result.get("variant")})
        _summarise(run, events, result, pace, seconds)
    return run
