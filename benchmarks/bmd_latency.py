"""Latency per radiograph of the bmd bundle, INT8 vs float (ONNX Runtime, CPU), p50 / p99.

    .venv/bin/python benchmarks/bmd_latency.py --bundle bundles/bmd --data DIR --out benchmarks/results

Two figures per model variant, each over ``--runs`` single-radiograph calls after ``--warmup`` calls, on
``--images`` phantom radiographs of DIR (cycled), ``--threads`` ORT intra-op threads (default 2: the 2-core box):
* ``graph``: the ONNX graph alone on the preprocessed (1, 1, 512, 512) input;
* ``analyze``: ``BmdModel.analyze`` end to end (gray conversion, image checks, letterbox, graph, OOD distance,
  calibration, referral) on the stored radiograph, as ``sonogate analyze`` calls it.
Writes ``bmd_latency.json`` and ``bmd_latency.md`` under ``--out``. The goal (issue 21): <= 60 ms p50.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from model_timing import time_graph_and_analyze

GOAL_P50_MS = 60.0


def main(argv: list[str] | None = None) -> int:
    import cv2

    from sonogate.core.bundle import load_bundle
    from sonogate.runtime.model_api import create_model
    from sonogate.tasks.bmd.data import read_bmd_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="bundles/bmd")
    parser.add_argument("--data", required=True, help="a phantom bmd folder (radiographs to time)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    bundle = load_bundle(args.bundle)
    folder = read_bmd_folder(args.data)
    frames = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in folder.paths[: args.images]]
    result = {"bundle": args.bundle, "bundle_sha256": bundle.bundle_hash, "data": str(Path(args.data).resolve()),
              "n_images": len(frames), "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
              "goal_p50_ms": GOAL_P50_MS, "models": {}}
    for variant in [v for v in ("float", "int8") if v in bundle.models]:
        model = create_model(bundle, device="ort-cpu", threads=args.threads, precision=variant)
        result["models"][variant] = {**time_graph_and_analyze(model, frames, args.runs, args.warmup),
                                     "file": bundle.models[variant]["file"],
                                     "size_mb": round((Path(args.bundle) / bundle.models[variant]["file"]).stat().st_size
                                                      / 1e6, 2)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bmd_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    note = (f"Bundle `{args.bundle}` (sha256 {bundle.bundle_hash[:12]}...), {len(frames)} phantom radiographs "
            f"(512 x 512), ONNX Runtime CPU, {args.threads} threads, batch 1, {args.runs} calls after {args.warmup} "
            f"warm-up; CPU {result['cpu']} ({result['cpu_count']} cores, shared: load average "
            f"{result['load_average'][0]} at the start). Goal: <= {GOAL_P50_MS:g} ms p50.")
    lines = ["# bmd: latency per radiograph, INT8 vs float", "",
             (f"`python benchmarks/bmd_latency.py --bundle {args.bundle} --data {args.data} --out {args.out} "
              f"--runs {args.runs}`"), "",
             note, "",
             "| model | size (MB) | graph p50 (ms) | graph p99 (ms) | analyze p50 (ms) | analyze p99 (ms) |",
             "|---|---|---|---|---|---|"]
    for variant, block in result["models"].items():
        g, a = block["graph"], block["analyze"]
        lines.append(f"| {variant} | {block['size_mb']} | {g['p50_ms']} | {g['p99_ms']} | {a['p50_ms']} | "
                     f"{a['p99_ms']} |")
    (out / "bmd_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(result["models"]) - 2:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
