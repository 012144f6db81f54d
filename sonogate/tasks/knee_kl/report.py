"""Knee KL figures: the shipped bundle on ``val`` (accuracy, MAE, QWK, per-grade recall, confusion-matrix plot,
set coverage and size), and the ordinal-vs-one-hot head comparison on the trained trunk's frozen features.

    python -m sonogate.tasks.knee_kl.report evaluate --bundle bundles/knee_kl --data ../shared/data/knee-oa-kl-xray \
        --json benchmarks/results/knee_kl_val.json --plot docs/img/knee_kl_confusion.png
    python -m sonogate.tasks.knee_kl.report heads --run RUN_DIR --json benchmarks/results/knee_kl_heads.json
    python -m sonogate.tasks.knee_kl.report runs --run RUN_A --run RUN_B ... --json benchmarks/results/knee_kl_runs.json

``evaluate`` runs the bundle's INT8 model through the runtime wrapper's ``grade`` (the same path as ``sonogate
analyze``, checks included; a refused val image counts as an error and is listed). ``heads`` fits CORAL, CORN and
softmax (one-hot) heads, each with and without effective-number class weights, on the frozen trunk features of
``train`` (full-batch AdamW, 300 steps) and scores them on ``val``: a like-for-like comparison of the heads on one
representation, not of separately trained networks. ``runs`` scores trained runs (float, best.pt, through the
export's graph wrapper: mirror average, and for a combination the ensemble's normalised geometric mean) alone
and in every combination on ``val``: the figures that choose which runs a bundle ships.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sonogate.calibration.ordinal_metrics import ordinal_report
from sonogate.tasks.knee_kl.data import KL_GRADES, load_knee_images, read_knee_split


def plot_confusion(matrix: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]}\n{rows[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set(xticks=range(5), yticks=range(5), xlabel="predicted KL grade", ylabel="expert KL grade", title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_bundle(bundle: str, data: str, json_path: str | None, plot_path: str | None) -> dict:
    import cv2

    from sonogate.errors import DataError
    from sonogate.runtime.model_api import create_model

    model = create_model(bundle, device="ort-cpu", threads=2)
    val = read_knee_split(data, "val")
    grades, sets, refused = [], [], []
    for path, truth in zip(val.paths, val.grades):
        try:
            g = model.grade(cv2.imread(str(path), cv2.IMREAD_COLOR), path.name)
        except DataError as exc:
            refused.append({"image": path.name, "grade": int(truth), "error": str(exc)})
            continue
        grades.append(g["grade"])
        sets.append(g["set"])
    kept = np.array([p.name not in {r["image"] for r in refused} for p in val.paths])
    truth = val.grades[kept]
    report = ordinal_report(truth, np.array(grades), KL_GRADES)
    result = {"bundle": bundle, "bundle_sha256": model.bundle.bundle_hash, "variant": model.variant,
              "data": f"{data} split val", "n_images": len(val), "refused": refused, "report": report}
    if sets and sets[0] is not None:
        s = np.stack(sets)
        result["sets"] = {"coverage": float(np.mean(s[np.arange(len(truth)), truth])),
                          "mean_size": float(s.sum(1).mean()),
                          "size_histogram": np.bincount(s.sum(1), minlength=6).tolist(),
                          "note": "fitted on these same val images (in-sample); the held-out estimate is "
                                  "calibration.json's evaluation block"}
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    if plot_path:
        plot_confusion(np.array(report["confusion"]), Path(plot_path),
                       f"knee KL, val (n={len(truth)}), acc {report['accuracy']:.1%}, MAE {report['mae']:.3f}")
    return result


def compare_heads(run_dir: str, json_path: str | None, steps: int = 300) -> dict:
    import torch

    from sonogate.models.ordinal import fit_frozen_heads, predict_grade
    from sonogate.tasks.knee_kl.train import load_knee_run

    torch.set_num_threads(1)
    model, cfg = load_knee_run(run_dir)
    train, val = read_knee_split(cfg["data"], "train"), read_knee_split(cfg["data"], "val")

    def features(split) -> torch.Tensor:
        images = load_knee_images(split.paths, cfg["size"])
        with torch.no_grad():
            x = (torch.from_numpy(images).float()[:, None] / 255.0 - cfg["mean"]) / cfg["std"]
            return torch.cat([model.features(x[s : s + 64]) for s in range(0, len(x), 64)])

    f_train, f_val = features(train), features(val)
    y_train = torch.from_numpy(train.grades)
    rows = []
    for kind, weights, head in fit_frozen_heads(f_train, y_train, 5, steps=steps):
        with torch.no_grad():
            pred = predict_grade(head(f_val), kind, "median").numpy()
        r = ordinal_report(val.grades, pred, KL_GRADES)
        rows.append({"head": kind, "weights": weights, **{k: r[k] for k in ("accuracy", "mae", "qwk",
                                                                             "macro_recall", "per_grade_recall")}})
        print(f"{kind:8s} {weights:10s} acc {r['accuracy']:.3f} MAE {r['mae']:.3f} QWK {r['qwk']:.3f} "
              f"macro recall {r['macro_recall']:.3f}", file=sys.stderr)
    result = {"run": str(run_dir), "trunk_head": cfg["head"], "steps": steps, "rows": rows,
              "note": "heads refitted on the frozen trunk features of train (trained with the trunk's own head); "
                      "scored on val"}
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    return result


def compare_runs(run_dirs: list[str], json_path: str | None) -> dict:
    import itertools

    import torch

    from sonogate.tasks.knee_kl.export import median_grades
    from sonogate.tasks.knee_kl.net import KneeKLExport
    from sonogate.tasks.knee_kl.train import load_knee_run, normalise01

    torch.set_num_threads(1)
    log_probs, configs = {}, {}
    for run in run_dirs:
        net, cfg = load_knee_run(run)
        wrapper = KneeKLExport(net, flip_average=True).eval()
        val = read_knee_split(cfg["data"], "val")
        images = load_knee_images(val.paths, cfg["size"])
        with torch.no_grad():
            x = normalise01(torch.from_numpy(images).float()[:, None] / 255.0, cfg["mean"], cfg["std"])
            log_probs[run] = torch.cat([wrapper(x[s : s + 64])[0] for s in range(0, len(x), 64)])
        configs[run] = cfg
    rows = []
    for k in range(1, len(run_dirs) + 1):
        for combo in itertools.combinations(run_dirs, k):
            if len({(configs[r]["size"], configs[r]["mean"], configs[r]["std"]) for r in combo}) > 1:
                continue  # one graph takes one input: only runs with the same input can be combined
            # the export's ensemble: mean of the members' log-probabilities, renormalised (median ignores the norm)
            mean_log_probs = torch.stack([log_probs[r] for r in combo]).mean(0).numpy()
            r = ordinal_report(val.grades, median_grades(mean_log_probs), KL_GRADES)
            rows.append({"runs": [str(x) for x in combo], "size": configs[combo[0]]["size"],
                         **{m: r[m] for m in ("accuracy", "mae", "qwk", "macro_recall", "per_grade_recall")}})
            print(f"{' + '.join(Path(x).name for x in combo):45s} acc {r['accuracy']:.4f} MAE {r['mae']:.4f} "
                  f"QWK {r['qwk']:.4f}", file=sys.stderr)
    result = {"n_val": len(val.paths), "graph": "float, best.pt (EMA), image + mirror geometric mean", "rows": rows}
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sonogate.tasks.knee_kl.report")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("evaluate")
    p.add_argument("--bundle", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--json")
    p.add_argument("--plot")
    p = sub.add_parser("heads")
    p.add_argument("--run", required=True)
    p.add_argument("--json")
    p.add_argument("--steps", type=int, default=300)
    p = sub.add_parser("runs")
    p.add_argument("--run", required=True, action="append", help="a run folder (repeat for each run)")
    p.add_argument("--json")
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        r = evaluate_bundle(args.bundle, args.data, args.json, args.plot)
        print(json.dumps({k: r["report"][k] for k in ("accuracy", "mae", "qwk", "per_grade_recall")} |
                         {"sets": r.get("sets"), "refused": len(r["refused"])}))
    elif args.command == "heads":
        compare_heads(args.run, args.json, args.steps)
    else:
        compare_runs(args.run, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
