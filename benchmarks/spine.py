"""Spine completion (issue 22): ablation table, latency and the registration-sensitivity sweep.

    .venv/bin/python benchmarks/spine.py --bundle bundles/spine --data DIR[,DIR2] \\
        --runs us=RUN_US,xray=RUN_XRAY,early=RUN_EARLY,late=RUN_LATE,early+late=RUN_EL \\
        --out benchmarks/results --img docs/img/spine_registration_sweep.png

1. **Ablation**: each run's ``metrics.json`` (``python -m sonogate.tasks.spine.train``): test figures on the
   held-out source shapes (body / arch / whole CD-L2 x 10^4 with sd, CD-L1 mm, F1 at 1 mm, body mean / p95 mm),
   the validation body CD-L2 (what choices were made on), epochs and training minutes; the body and arch change of
   every mode against ``us`` (ultrasound only); paired per-case body improvement share.
2. **Latency** of the bundle's model with ONNX Runtime (CPU, batch 1, 1 and 2 intra-op threads, p50 / p90 over
   ``--runs-latency`` calls after warm-up) on test cases, and of the whole per-case step of the runtime wrapper
   (``SpineCompletionModel.analyze``: reading and checking the inputs, the X-ray cloud from xray.png, the
   graph), 1 thread.
3. **Registration sweep**: the bundle's model on the test cases with the X-ray cloud moved against the
   ultrasound: translation 0-10 mm (a seeded random direction per case in the radiograph's (y, z) plane) and
   rotation 0-5 degrees (seeded random sign) about the lateral (x) axis through the cloud's centroid. For a
   parallel lateral projection both are exact image-plane moves of the silhouette (a shift along x is invisible
   to it; rotations about y or z change the silhouette's shape and would need the mesh re-rendered: not swept).
   On top of the phantom's own registration offset (sd 1 mm, 1 deg). Body and arch CD-L2 per step, with the
   ultrasound-only model's test figure as the reference line.
4. **Attenuation sweep** (bundles whose X-ray embedding is ``half_path``: the cloud's x is half the bone path
   length read from the pixel through an assumed attenuation): the path lengths scaled by 0.6-1.4, what a
   radiograph whose attenuation (kVp, filtration, soft-tissue baseline) differs from the assumed one by
   -40 % .. +40 % would give.

Writes ``spine.json`` and ``spine.md`` under ``--out`` and the sweep plot at ``--img``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PARTS = ("body", "arch", "whole")
TRANSLATIONS_MM = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0)
ROTATIONS_DEG = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
PATH_SCALES = (0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.4)


def ablation(runs: dict[str, Path]) -> dict:
    table = {}
    for mode, run in runs.items():
        report = json.loads((Path(run) / "metrics.json").read_text())
        entry = report["modes"].get(mode)
        if entry is None:
            raise SystemExit(f"{run}/metrics.json has no mode {mode!r} (it has {', '.join(report['modes'])})")
        test, val = entry["test"], entry.get("val") or {}
        table[mode] = {
            "run": str(run), "epochs": entry["epochs"], "best_epoch": entry.get("best_epoch"),
            "train_minutes": entry["train_minutes"], "settings": entry.get("settings"),
            "net_config": entry.get("net_config"), "n_test": report["n_test"], "n_train": report["n_train"],
            "n_val": report["n_val"],
            "val_body_cd_l2_x1e4": (val.get("body") or {}).get("cd_l2_x1e4"),
            **{f"{part}_{key}": test[part][key] for part in PARTS
               for key in ("cd_l2_x1e4", "cd_l2_x1e4_sd", "cd_l1_mm", "f1", "mean_mm", "p95_mm")},
            "per_case": test["per_case"],
        }
    base = table.get("us")
    if base:
        for mode, row in table.items():
            row["body_change_vs_us"] = row["body_cd_l2_x1e4"] / base["body_cd_l2_x1e4"] - 1.0
            row["arch_change_vs_us"] = row["arch_cd_l2_x1e4"] / base["arch_cd_l2_x1e4"] - 1.0
            shared = sorted(set(row["per_case"]) & set(base["per_case"]))
            row["body_better_than_us_cases"] = [sum(row["per_case"][c]["body"] < base["per_case"][c]["body"]
                                                    for c in shared), len(shared)]
    for row in table.values():
        row.pop("per_case")
    return table


def _session(path: Path, threads: int):
    from sonogate.export.onnx_export import ort_session

    return ort_session(path, threads=threads)


def latency(bundle, test, runs: int) -> dict:
    import cv2

    from sonogate.runtime.model_api import create_model

    model_path = bundle.model_path(next(iter(bundle.models)))
    out = {"model_file": model_path.name, "graph": []}
    for threads in (1, 2):
        sess = _session(model_path, threads)
        times = []
        for k in range(runs + 3):
            feeds = {"us_points": test.us[k % len(test):k % len(test) + 1],
                     "xray_points": test.xray[k % len(test):k % len(test) + 1]}
            start = time.perf_counter()
            sess.run(None, feeds)
            if k >= 3:
                times.append((time.perf_counter() - start) * 1000)
        out["graph"].append({"threads": threads, "runs": runs, "p50_ms": round(float(np.median(times)), 2),
                             "p90_ms": round(float(np.percentile(times, 90)), 2)})
    model = create_model(bundle, device="ort-cpu", threads=1)
    times = []
    folders = test.folders[:min(len(test), max(10, runs // 3))]
    for k, folder in enumerate([folders[0]] * 2 + folders):
        frames = {"us_partial": Path(folder) / "us_partial.ply",
                  "xray": cv2.imread(str(Path(folder) / "xray.png"), cv2.IMREAD_COLOR)}
        start = time.perf_counter()
        model.analyze(frames, None, [])
        if k >= 2:
            times.append((time.perf_counter() - start) * 1000)
    out["analyze_case"] = {"threads": 1, "cases": len(times), "p50_ms": round(float(np.median(times)), 2),
                           "p90_ms": round(float(np.percentile(times, 90)), 2),
                           "what": "SpineCompletionModel.analyze: read + check inputs, X-ray cloud from xray.png "
                                   "(furthest-point sampling), graph"}
    return out


def move_xray(xray: np.ndarray, rng: np.random.Generator, shift_mm: float, angle_deg: float) -> np.ndarray:
    """(C, N, 3) X-ray clouds moved in their (y, z) plane: ``shift_mm`` along a random direction per case, then
    ``angle_deg`` (random sign per case) about the x axis through each cloud's centroid."""
    moved = xray.astype(np.float64).copy()
    for cloud in moved:
        direction = rng.uniform(0.0, 2 * math.pi)
        sign = rng.choice([-1.0, 1.0])
        centre = cloud[:, 1:].mean(axis=0)
        a = math.radians(sign * angle_deg)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        cloud[:, 1:] = (cloud[:, 1:] - centre) @ rot.T + centre
        cloud[:, 1:] += shift_mm * np.array([math.cos(direction), math.sin(direction)])
    return moved.astype(np.float32)


def sweep(sess, test) -> dict:
    """Body / arch CD-L2 with the X-ray cloud moved against the ultrasound (``sess``: the bundle's ORT session)."""
    from sonogate.tasks.spine.export import body_arch, run_session

    result = {"translation": [], "rotation": []}
    for key, steps in (("translation", TRANSLATIONS_MM), ("rotation", ROTATIONS_DEG)):
        for step in steps:
            rng = np.random.default_rng(2202)  # the same directions / signs at every step
            moved = move_xray(test.xray, rng, step if key == "translation" else 0.0,
                              step if key == "rotation" else 0.0)
            figures = body_arch(run_session(sess, test.us, moved), test.complete)
            result[key].append({"step": step, **{f"{part}_cd_l2_x1e4": figures[part]["cd_l2_x1e4"]
                                                 for part in PARTS}})
            print(f"sweep {key} {step}: body {figures['body']['cd_l2_x1e4']:.2f}", file=sys.stderr)
    return result


def path_scale_sweep(sess, test) -> list[dict]:
    """Body / arch CD-L2 with the X-ray cloud's half path lengths (x) scaled by each of ``PATH_SCALES``."""
    from sonogate.tasks.spine.export import body_arch, run_session

    rows = []
    for scale in PATH_SCALES:
        scaled = test.xray.copy()
        scaled[:, :, 0] *= np.float32(scale)
        figures = body_arch(run_session(sess, test.us, scaled), test.complete)
        rows.append({"path_scale": scale, **{f"{part}_cd_l2_x1e4": figures[part]["cd_l2_x1e4"] for part in PARTS}})
        print(f"attenuation sweep x{scale}: body {figures['body']['cd_l2_x1e4']:.2f}", file=sys.stderr)
    return rows


def plot(sweep_result: dict, table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, unit in ((axes[0], "translation", "mm"), (axes[1], "rotation", "deg")):
        rows = sweep_result[key]
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["body_cd_l2_x1e4"] for r in rows], "o-", color="tab:blue", label="body, US + X-ray")
        ax.plot(steps, [r["arch_cd_l2_x1e4"] for r in rows], "s-", color="tab:green", label="arch, US + X-ray")
        if "us" in table:
            ax.axhline(table["us"]["body_cd_l2_x1e4"], color="tab:red", ls="--", label="body, ultrasound only")
            ax.axhline(table["us"]["arch_cd_l2_x1e4"], color="tab:orange", ls=":", label="arch, ultrasound only")
        ax.set_xlabel(f"X-ray {key} against the ultrasound ({unit})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CD-L2 x 10^4 (mm^2), held-out test shapes")
    axes[1].legend(fontsize=8)
    fig.suptitle("Spine completion: registration sensitivity (phantom, in-plane moves of the lateral X-ray)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def markdown(result: dict) -> str:
    lines = ["# Spine completion benchmark", "", f"Command: `{result['command']}`", "",
             (f"Data: {result['data']} ({result['n_test']} held-out test cases of sources "
             f"{', '.join(result['test_sources'])}); machine: {result['machine']}."), "",
             ("| mode | epochs (best) | train min | val body | test body CD-L2 x1e4 | arch | whole | body mean / p95 mm "
             "| body F1 | body vs us | arch vs us | body better than us |"), "|---" * 12 + "|"]
    for mode, r in result["ablation"].items():
        better = r.get("body_better_than_us_cases") or ["", ""]
        lines.append(
            f"| `{mode}` | {r['epochs']} ({r['best_epoch']}) | {r['train_minutes']:.0f} | "
            f"{(r['val_body_cd_l2_x1e4'] or float('nan')):.1f} | {r['body_cd_l2_x1e4']:.1f} +- "
            f"{r['body_cd_l2_x1e4_sd']:.1f} | {r['arch_cd_l2_x1e4']:.1f} +- {r['arch_cd_l2_x1e4_sd']:.1f} | "
            f"{r['whole_cd_l2_x1e4']:.1f} | {r['body_mean_mm']:.2f} / {r['body_p95_mm']:.2f} | {r['body_f1']:.3f} | "
            f"{r.get('body_change_vs_us', 0):+.0%} | {r.get('arch_change_vs_us', 0):+.0%} | "
            f"{better[0]} / {better[1]} |")
    lat = result["latency"]
    lines += ["", f"Latency ({lat['model_file']}, ONNX Runtime CPU, batch 1, one vertebra):", "",
              "| what | threads | p50 ms | p90 ms |", "|---|---|---|---|"]
    for row in lat["graph"]:
        lines.append(f"| graph | {row['threads']} | {row['p50_ms']} | {row['p90_ms']} |")
    case = lat["analyze_case"]
    lines.append(f"| whole case (wrapper analyze) | 1 | {case['p50_ms']} | {case['p90_ms']} |")
    lines += ["", "Registration sweep (bundle model, test cases; CD-L2 x 10^4):", "",
              "| move | body | arch |", "|---|---|---|"]
    for key, unit in (("translation", "mm"), ("rotation", "deg")):
        for row in result["sweep"][key]:
            lines.append(f"| {key} {row['step']:g} {unit} | {row['body_cd_l2_x1e4']:.2f} | "
                         f"{row['arch_cd_l2_x1e4']:.2f} |")
    if result.get("path_scale_sweep"):
        lines += ["", ("Attenuation sweep (bundle model, test cases; the X-ray cloud's half path lengths scaled, "
                  "as a wrong assumed attenuation would; CD-L2 x 10^4):"), "",
                  "| path length x | body | arch |", "|---|---|---|"]
        for row in result["path_scale_sweep"]:
            lines.append(f"| {row['path_scale']:g} | {row['body_cd_l2_x1e4']:.2f} | {row['arch_cd_l2_x1e4']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "bundles" / "spine"))
    parser.add_argument("--data", required=True, help="phantom folder(s), comma list (the runs' data)")
    parser.add_argument("--runs", required=True, help="mode=RUN_DIR, comma list")
    parser.add_argument("--val-sources", default="", help="as the runs used (default: from the first run)")
    parser.add_argument("--runs-latency", type=int, default=60)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--img", default=str(ROOT / "docs" / "img" / "spine_registration_sweep.png"))
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from sonogate.core.bundle import load_bundle
    from sonogate.tasks.spine.train import load_folders, split_cases

    runs = {pair.split("=", 1)[0]: Path(pair.split("=", 1)[1]) for pair in args.runs.split(",") if "=" in pair}
    first = json.loads((next(iter(runs.values())) / "metrics.json").read_text())
    val_sources = args.val_sources.split(",") if args.val_sources else first["val_sources"]
    bundle = load_bundle(args.bundle)
    embedding = (bundle.manifest.get("spine", {}).get("network") or {}).get("xray_embedding", "plane")
    _, _, test = split_cases(load_folders(args.data, embedding), val_sources)
    table = ablation(runs)
    result = {"command": "python benchmarks/spine.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "data": args.data, "n_test": len(test), "test_sources": sorted(set(test.sources)),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
              "bundle_sha256": bundle.bundle_hash, "ablation": table,
              "latency": latency(bundle, test, args.runs_latency)}
    sess = None if args.skip_sweep else _session(bundle.model_path(next(iter(bundle.models))), 0)
    result["sweep"] = {"translation": [], "rotation": []} if args.skip_sweep else sweep(sess, test)
    result["xray_embedding"] = embedding
    if embedding == "half_path" and not args.skip_sweep:
        result["path_scale_sweep"] = path_scale_sweep(sess, test)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spine.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "spine.md").write_text(markdown(result))
    if not args.skip_sweep:
        plot(result["sweep"], table, Path(args.img))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
