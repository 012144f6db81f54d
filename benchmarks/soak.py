"""Soak: a long run of the real runtime on a looping source, watching memory and latency drift.

    .venv/bin/python benchmarks/soak.py --bundle demo/bundle --frames 100000 --out benchmarks/results

Frames come from a phantom cine replayed in a loop through the capture source (every frame processed, none
dropped, so the run measures the runtime and not the pacing). Every ``--window`` frames it records the
process RSS and the window's latency percentiles. Verdicts: RSS growth after warm-up <= 5 MB, and the p50
latency of the last windows within 20 % of the first windows (no drift). Writes soak.json, soak.md, soak.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def soak(bundle: str, frames: int, window: int = 1000, warmup_windows: int = 2, cine: str | None = None,
         device: str = "auto", progress: bool = True, seed: int = 3) -> dict:
    import psutil

    from sonogate.device.capture import open_source
    from sonogate.runtime.session import Session

    process = psutil.Process()
    if cine is None:
        from sonogate.phantom.cine import write_cine

        cine_path = Path("out/soak/cine.mp4")
        cine_path.parent.mkdir(parents=True, exist_ok=True)
        if not cine_path.exists():
            write_cine(cine_path, seconds=20, fps=15, seed=seed)
        cine = str(cine_path)
    source = open_source(cine, loop=True, realtime=False)
    windows = []
    latencies = np.empty(window, dtype=np.float64)
    recommendations: dict[str, int] = {}
    iterator = range(frames // window)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="soak", unit=f"x{window} frames")
    t0 = time.perf_counter()
    with Session(bundle, device=device) as session:
        for w in iterator:
            for i in range(window):
                ok, frame = source.read()
                if not ok:
                    raise RuntimeError("looping source ended")
                event = session.process(frame)
                latencies[i] = event["latency_ms"]
                recommendations[event["recommendation"]] = recommendations.get(event["recommendation"], 0) + 1
            windows.append({
                "frames": (w + 1) * window,
                "rss_mb": round(process.memory_info().rss / 2**20, 2),
                "p50_ms": round(float(np.percentile(latencies, 50)), 3),
                "p99_ms": round(float(np.percentile(latencies, 99)), 3),
                "elapsed_s": round(time.perf_counter() - t0, 1),
            })
    source.close()
    base = windows[min(warmup_windows, len(windows) - 1)]
    rss_growth = round(max(x["rss_mb"] for x in windows[warmup_windows:] or windows) - base["rss_mb"], 2)
    k = max(1, len(windows) // 10)
    first_p50 = float(np.median([x["p50_ms"] for x in windows[warmup_windows:warmup_windows + k] or windows[:k]]))
    last_p50 = float(np.median([x["p50_ms"] for x in windows[-k:]]))
    return {
        "bundle": bundle, "frames": len(windows) * window, "window": window, "device": device,
        "rss_growth_after_warmup_mb": rss_growth, "rss_goal_mb": 5.0, "rss_ok": rss_growth <= 5.0,
        "p50_first_ms": round(first_p50, 3), "p50_last_ms": round(last_p50, 3),
        "latency_drift": round(last_p50 / first_p50 - 1.0, 3) if first_p50 > 0 else None,
        "latency_ok": last_p50 <= 1.2 * first_p50,
        "recommendations": recommendations, "windows": windows,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(ROOT / "demo" / "bundle"))
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--cine")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    result = soak(args.bundle, args.frames, args.window, cine=args.cine, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (f"| frames | RSS growth after warm-up | p50 first / last | drift | verdict |\n|---|---|---|---|---|\n"
          f"| {result['frames']} | {result['rss_growth_after_warmup_mb']} MB (goal <= 5) | "
          f"{result['p50_first_ms']} / {result['p50_last_ms']} ms | {result['latency_drift']:+.1%} | "
          f"{'PASS' if result['rss_ok'] and result['latency_ok'] else 'FAIL'} |\n")
    (out / "soak.md").write_text(md)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
        xs = [w["frames"] for w in result["windows"]]
        ax1.plot(xs, [w["rss_mb"] for w in result["windows"]])
        ax1.set_ylabel("RSS (MB)")
        ax2.plot(xs, [w["p50_ms"] for w in result["windows"]], label="p50")
        ax2.plot(xs, [w["p99_ms"] for w in result["windows"]], label="p99")
        ax2.set_ylabel("latency (ms)")
        ax2.set_xlabel("frames")
        ax2.legend()
        fig.tight_layout()
        fig.savefig(out / "soak.png", dpi=100)
    except ImportError:
        pass
    print(md)
    return 0 if result["rss_ok"] and result["latency_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
