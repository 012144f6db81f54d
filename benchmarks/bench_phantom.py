"""Phantom rendering speed: frames per second at 256 x 256 on one CPU core.

    python benchmarks/bench_phantom.py [--frames 200] [--out benchmarks/results]

Writes ``phantom.json`` and ``phantom.md`` (a markdown table) under ``--out``. OpenCV is limited to one
thread. Both wall-clock and process CPU time are reported: on a shared machine the CPU-time figure is the
one that says what a training data loader worker will get; the load average at start is recorded so a
slow wall-clock figure can be read in context.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sonogate.phantom import chrome, cine, hip_us, writer, xray
from sonogate.phantom.devices import DEVICES


def _timed(fn, count: int) -> dict:
    fn(0)  # warm caches (device maps, first allocation)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(count):
        fn(i + 1)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"frames": count, "fps_wall": count / wall, "fps_cpu": count / cpu, "ms_cpu": 1000.0 * cpu / count}


def run(frames: int, size: int = 256) -> dict:
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    hips = [hip_us.sample_hip_params(rng) for _ in range(frames + 1)]
    results: dict[str, dict] = {}
    for name in DEVICES:
        results[f"us_frame_{name}"] = _timed(lambda i, d=name: hip_us.render_us_frame(hips[i], rng, d, size), frames)
    defects = hip_us.DEFECTS
    results["us_frame_defects_A"] = _timed(
        lambda i: hip_us.render_us_frame(hips[i], rng, "A", size, defects[i % len(defects)]), frames)
    layout = chrome.make_chrome(np.random.default_rng(1), (size, size))
    for name in ("A", "B"):
        results[f"us_frame_realistic_{name}"] = _timed(
            lambda i, d=name: hip_us.render_us_frame(hips[i], rng, d, size, style="realistic"), frames)
    results["us_frame_with_chrome_A"] = _timed(
        lambda i: layout.compose(hip_us.render_us_frame(hips[i], rng, "A", size).image, i / 15.0), frames)
    sweep = cine.sweep_frames(3, frames / 15.0 + 1.0, 15.0, size=size, chrome=True)
    results["cine_frame_with_chrome_A"] = _timed(lambda i: next(sweep), frames)
    pelves = [xray.sample_xr_params(rng) for _ in range(frames // 4 + 1)]
    results["xray_frame"] = _timed(lambda i: xray.render_xr_frame(pelves[i], rng, size), frames // 4)
    with tempfile.TemporaryDirectory() as tmp:
        count = max(8, frames // 4)
        t0, c0 = time.perf_counter(), time.process_time()
        writer.write_us_dataset(Path(tmp) / "us", count, seed=1, size=size, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        results["write_us_dataset_png"] = {"frames": count, "fps_wall": count / wall, "fps_cpu": count / cpu,
                                           "ms_cpu": 1000.0 * cpu / count}
    return results


def markdown(results: dict, meta: dict) -> str:
    lines = [
        (f"Phantom rendering speed at {meta['size']} x {meta['size']}, one OpenCV thread "
         f"({meta['cpu']}, load average at start {meta['loadavg_1min']:.2f} on {meta['cpus']} cores)."),
        "",
        "| what | frames | frames/s (CPU time) | ms/frame (CPU) | frames/s (wall clock) |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, r in results.items():
        lines.append(f"| {key} | {r['frames']} | {r['fps_cpu']:.0f} | {r['ms_cpu']:.2f} | {r['fps_wall']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="frames per measurement (default 200)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    if args.frames < 8:
        parser.error("--frames must be >= 8")
    meta = {
        "size": args.size,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    results = run(args.frames, args.size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "phantom.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    table = markdown(results, meta)
    (out / "phantom.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
