"""Latency of the ordinal radiograph bundles, INT8 vs float (ONNX Runtime, CPU), p50 / p99: per knee image
(``knee_kl``) and per RUST case (``rust``: an AP and a lateral radiograph).

    .venv/bin/python benchmarks/radiograph_latency.py --task knee_kl --bundle B --data ../shared/data/knee-oa-kl-xray
    .venv/bin/python benchmarks/radiograph_latency.py --task rust --bundle B --data PHANTOM_DIR

Per model variant of the bundle (export with the float model kept to time both: ``sonogate knee-kl export RUN
--out B`` / ``sonogate rust export RUN --out B --keep-float``), over ``--runs`` calls after ``--warmup``,
``--threads`` ORT intra-op threads (default 2: the 2-core box), batch 1:
* ``graph``: the ONNX graph alone on preprocessed inputs;
* ``analyze``: the task wrapper's ``analyze`` end to end (checks, letterbox, graph, OOD, sets, decision).
Writes ``<task>_latency.json`` / ``.md`` / ``.png`` (p50 and p99 bars with the goal) under ``--out``. Goals:
<= 40 ms p50 per knee image, <= 80 ms per RUST case (issue 20), <= 60 ms per hip radiograph (issue 21).
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

GOALS_P50_MS = {"knee_kl": 40.0, "rust": 80.0, "bmd": 60.0}
UNITS = {"knee_kl": "knee image", "rust": "RUST case (AP + lateral)", "bmd": "hip radiograph"}


def inputs(task: str, data: str, n: int) -> list:
    import cv2

    if task == "knee_kl":
        from sonogate.tasks.knee_kl.data import read_knee_split

        split = read_knee_split(data, "val")
        return [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in split.paths[:n]]
    if task == "bmd":
        from sonogate.tasks.bmd.data import read_bmd_folder

        return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in read_bmd_folder(data).paths[:n]]
    from sonogate.tasks.rust.train import read_rust_folder

    folder = read_rust_folder(data)
    return [{"ap": cv2.imread(str(a), cv2.IMREAD_COLOR), "lat": cv2.imread(str(b), cv2.IMREAD_COLOR)}
            for a, b in zip(folder.ap_paths[:n], folder.lat_paths[:n])]


def plot_latency(result: dict, path: Path) -> None:
    """p50 / p99 of the graph and of ``analyze`` per model variant, with the issue's p50 goal as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(result["models"])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.2
    for k, (stage, pct) in enumerate([(s, q) for s in ("graph", "analyze") for q in ("p50", "p99")]):
        values = [result["models"][v][stage][f"{pct}_ms"] for v in variants]
        ax.bar([i + (k - 1.5) * width for i in range(len(variants))], values, width, label=f"{stage} {pct}")
    goal = result["goal_p50_ms"]
    ax.axhline(goal, color="k", linestyle="--", linewidth=1, label=f"goal p50 {goal:g} ms")
    ax.set_xticks(range(len(variants)), variants)
    ax.set_ylabel("ms per " + UNITS[result["task"]])
    ax.set_title(f"{result['task']}: ONNX Runtime CPU, {result['threads']} threads, batch 1", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from sonogate.core.bundle import load_bundle
    from sonogate.runtime.model_api import create_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(GOALS_P50_MS), required=True)
    parser.add_argument("--bundle")
    parser.add_argument("--data")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--inputs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--replot", action="store_true", help="only redraw <task>_latency.png from its JSON")
    args = parser.parse_args(argv)
    if args.replot:
        plot_latency(json.loads((Path(args.out) / f"{args.task}_latency.json").read_text()),
                     Path(args.out) / f"{args.task}_latency.png")
        return 0
    if not (args.bundle and args.data):
        parser.error("--bundle and --data are required (unless --replot)")

    bundle = load_bundle(args.bundle)
    items = inputs(args.task, args.data, args.inputs)
    result = {"task": args.task, "bundle": args.bundle, "bundle_sha256": bundle.bundle_hash,
              "data": str(Path(args.data).resolve()), "n_inputs": len(items), "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "load_average": [round(v, 2) for v in os.getloadavg()], "goal_p50_ms": GOALS_P50_MS[args.task],
              "models": {}}
    from sonogate.errors import DataError

    for variant in [v for v in ("float", "int8") if v in bundle.models]:
        model = create_model(bundle, device="ort-cpu", threads=args.threads, precision=variant)
        usable = []
        for item in items:  # time the inputs the model scores (a refused one stops early and is not a score)
            try:
                model.analyze(item, None, [])
                usable.append(item)
            except DataError:
                continue
        result["models"][variant] = {**time_graph_and_analyze(model, usable, args.runs, args.warmup),
                                     "n_scored_inputs": len(usable),
                                     "size_mb": round((Path(args.bundle) / bundle.models[variant]["file"]).stat()
                                                      .st_size / 1e6, 2)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.task}_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# {args.task}: latency per {UNITS[args.task]}, INT8 vs float", "",
             (f"`python benchmarks/radiograph_latency.py --task {args.task} --bundle {args.bundle} --data {args.data} "
             f"--out {args.out}`"), "",
             (f"Bundle sha256 {bundle.bundle_hash[:12]}..., {len(items)} inputs cycled, ONNX Runtime CPU, "
             f"{args.threads} threads, batch 1, {args.runs} calls after {args.warmup} warm-up; CPU {result['cpu']} "
             f"({result['cpu_count']} cores, shared: load average {result['load_average'][0]} at the start). "
             f"Goal: <= {GOALS_P50_MS[args.task]:g} ms p50."), "",
             "| model | size (MB) | graph p50 (ms) | graph p99 (ms) | analyze p50 (ms) | analyze p99 (ms) |",
             "|---|---|---|---|---|---|"]
    for variant, block in result["models"].items():
        g, a = block["graph"], block["analyze"]
        lines.append(f"| {variant} | {block['size_mb']} | {g['p50_ms']} | {g['p99_ms']} | {a['p50_ms']} | "
                     f"{a['p99_ms']} |")
    lines += ["", f"![latency](./{args.task}_latency.png)"]
    (out / f"{args.task}_latency.md").write_text("\n".join(lines) + "\n")
    plot_latency(result, out / f"{args.task}_latency.png")
    print("\n".join(lines[-len(result["models"]) - 4:-2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
