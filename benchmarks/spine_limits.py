"""What limits the spine completion (issue 22): the metric's floor, where the output points go, fit against
generalisation, and the share of the X-ray-to-ultrasound registration error.

    .venv/bin/python benchmarks/spine_limits.py --data DIR[,DIR2...] --runs us=RUN_US,early+late=RUN_EL \\
        --out benchmarks/results

1. **Floor**: for ``--floor-cases`` test cases the truth's own surface (rebuilt from ``meta.json``: its source
   shape and deformation seed; checked: the phantom's seeded sample of it reproduces ``complete.ply``) sampled
   again, (a) uniformly with another seed, (b) as blue noise (furthest-point 2,048 of 16,384 uniform points).
   Body / arch / whole CD-L2 x 10^4 of those against ``complete.ply``: what a prediction that knew the surface
   exactly would score, since the truth is itself a random sample.
2. **Allocation**, per run on the test cases: the share of the output points in the arch (behind the truth's
   centroid y) against the truth's share; per part the mean squared nearest distance truth -> prediction (the
   coverage) and prediction -> truth (the accuracy), mm^2.
3. **Fit**: each run on every 4th training case and on the test cases (body / arch / whole CD-L2 x 10^4).
4. **Registration**: the first ``--data`` folder written again with the registration offset set to 0 (same seed,
   so the same shapes and ultrasound clouds: checked), each run on its validation and test cases with the offset
   as drawn and with none. The networks were trained with the offset (sd 1 mm, 1 deg); this bounds what a
   perfect registration step before them could give.
5. **Frame**: each run on the test cases with the input frame's x = 0 moved to the ultrasound centroid's x (the
   clouds and the truth shifted alike; the radiograph cannot see a lateral shift). The phantom's frame has x = 0
   at the true mid-sagittal plane, which a real ultrasound frame does not give: a network that puts the X-ray
   there (``--mid-plane frame``, the paper's convention) loses accuracy; one that takes the plane from the
   ultrasound (``--mid-plane us``) gives the same figures both ways.

Needs torch (the runs are checkpoints) and ../shared/data/vertebra-meshes. Writes ``spine_limits.json`` and
``spine_limits.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PARTS = ("body", "arch", "whole")
BLUE_NOISE_POOL = 16384


def _cd(summary: dict) -> dict:
    return {part: round(summary[part]["cd_l2_x1e4"], 3) for part in PARTS}


def metric_floor(test, n_cases: int) -> dict:
    from sonogate.tasks.spine import shapes
    from sonogate.tasks.spine.export import body_arch
    from sonogate.tasks.spine.raster import furthest_point_sample

    sources = {s.source_id: s for s in shapes.source_shapes(levels=shapes.LUMBAR_LEVELS)}
    truths, uniform, blue, worst_check = [], [], [], 0.0
    for folder, truth in list(zip(test.folders, test.complete))[:n_cases]:
        meta = json.loads((Path(folder) / "meta.json").read_text())
        seed = meta["deformation_seed"]
        shape = shapes.deform(sources[meta["source_id"]], np.random.default_rng(seed),
                              strength=meta["deformation"]["strength"])
        # the phantom's first draw from this stream is the truth sample (phantom.make_case)
        again = shapes.sample_surface(shape, len(truth), np.random.default_rng([seed, 1]))
        worst_check = max(worst_check, float(np.abs(again - truth).max()))
        other = np.random.default_rng([seed, 99])
        truths.append(truth)
        uniform.append(shapes.sample_surface(shape, len(truth), other))
        pool = shapes.sample_surface(shape, BLUE_NOISE_POOL, other)
        blue.append(pool[furthest_point_sample(pool, len(truth), start=int(other.integers(len(pool))))])
    if worst_check > 1e-3:
        raise SystemExit(f"the rebuilt surfaces do not reproduce complete.ply (max {worst_check:.3g} mm): "
                         "different meshes or phantom code")
    truths = np.stack(truths)
    return {"n_cases": len(truths), "rebuilt_truth_max_mm": worst_check,
            "uniform": _cd(body_arch(np.stack(uniform), truths)), "blue_noise": _cd(body_arch(np.stack(blue), truths))}


def allocation(predicted: np.ndarray, truth: np.ndarray) -> dict:
    from sonogate.tasks.spine.metrics import nearest_distances

    arch_share, truth_arch_share = [], []
    squared = {part: {"truth_to_pred_mm2": [], "pred_to_truth_mm2": []} for part in ("body", "arch")}
    for pred, true in zip(predicted, truth):
        centre_y = true[:, 1].mean()
        arch_share.append(float((pred[:, 1] > centre_y).mean()))
        truth_arch_share.append(float((true[:, 1] > centre_y).mean()))
        for part, pick in (("body", np.less_equal), ("arch", np.greater)):
            p, t = pred[pick(pred[:, 1], centre_y)], true[pick(true[:, 1], centre_y)]
            if len(p) == 0:
                continue
            pred_to_truth, truth_to_pred = nearest_distances(p, t)
            squared[part]["truth_to_pred_mm2"].append(float((truth_to_pred ** 2).mean()))
            squared[part]["pred_to_truth_mm2"].append(float((pred_to_truth ** 2).mean()))
    return {"arch_share": round(float(np.mean(arch_share)), 4),
            "truth_arch_share": round(float(np.mean(truth_arch_share)), 4),
            **{part: {k: round(float(np.mean(v)), 3) for k, v in d.items()} for part, d in squared.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="phantom folder(s) the runs were trained on (comma list)")
    parser.add_argument("--runs", required=True, help="name=RUN_DIR, comma list")
    parser.add_argument("--floor-cases", type=int, default=40)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    import torch

    from sonogate.tasks.spine.export import body_arch, load_run
    from sonogate.tasks.spine.phantom import write_spine_phantom
    from sonogate.tasks.spine.train import default_val_sources, load_folders, predict, split_cases

    torch.set_num_threads(2)
    runs = dict(item.split("=", 1) for item in args.runs.split(","))
    nets = {name: load_run(path)[0] for name, path in runs.items()}
    embeddings = {net.xray_embedding for net in nets.values() if net.mode != "us"} or {"plane"}  # us: no X-ray
    if len(embeddings) != 1:
        raise SystemExit(f"the runs embed the X-ray differently ({sorted(embeddings)}): compare like with like")
    embedding = embeddings.pop()
    cases = load_folders(args.data, embedding)
    val_sources = default_val_sources(cases)
    train, val, test = split_cases(cases, val_sources)
    report = {"data": args.data, "runs": runs, "n_train": len(train), "n_val": len(val), "n_test": len(test),
              "floor": metric_floor(test, args.floor_cases), "allocation": {}, "fit": {}, "registration": {}}
    train_subset = train.subset(np.arange(len(train)) % 4 == 0)
    lateral = np.zeros((len(test), 1, 3), np.float32)
    lateral[:, 0, 0] = test.us[:, :, 0].mean(axis=1)  # the ultrasound centroid's x, per case
    report["frame"] = {"us_centroid_x_mm_mean_abs": round(float(np.abs(lateral[:, 0, 0]).mean()), 3), "runs": {}}
    for name, net in nets.items():
        report["frame"]["runs"][name] = {
            "x = 0 at the true mid-plane": _cd(body_arch(predict(net, test.us, test.xray), test.complete)),
            "x = 0 at the ultrasound centroid": _cd(body_arch(predict(net, test.us - lateral, test.xray),
                                                              test.complete - lateral))}
    for name, net in nets.items():
        on_test = predict(net, test.us, test.xray)
        report["allocation"][name] = allocation(on_test, test.complete)
        report["fit"][name] = {"train_every_4th": _cd(body_arch(predict(net, train_subset.us, train_subset.xray),
                                                                train_subset.complete)),
                               "test": _cd(body_arch(on_test, test.complete))}

    first = args.data.split(",")[0]
    metas = sorted(Path(first).glob("case_*/meta.json"))
    seed = json.loads(metas[0].read_text())["seed"]
    with tempfile.TemporaryDirectory() as tmp:
        exact_dir = write_spine_phantom(Path(tmp) / "exact", len(metas), seed, progress=True,
                                        registration_sd_mm=0.0, registration_sd_deg=0.0)
        drawn = split_cases(load_folders(first, embedding), val_sources)
        exact = split_cases(load_folders(str(exact_dir), embedding), val_sources)
    if not np.array_equal(drawn[0].us, exact[0].us):
        raise SystemExit("the copy without a registration offset has other ultrasound clouds: not the same cases")
    for name, net in nets.items():
        row = {}
        for label, parts in (("as drawn", drawn), ("no offset", exact)):
            for split, part in (("val", parts[1]), ("test", parts[2])):
                row[f"{split}, {label}"] = _cd(body_arch(predict(net, part.us, part.xray), part.complete))
        report["registration"][name] = row
    report["registration_cases"] = {"folder": first, "seed": seed, "n_val": len(drawn[1]), "n_test": len(drawn[2])}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spine_limits.json").write_text(json.dumps(report, indent=1))
    (out / "spine_limits.md").write_text(markdown(report, argv if argv is not None else sys.argv[1:]))
    print(markdown(report, argv if argv is not None else sys.argv[1:]))
    return 0


def markdown(report: dict, argv) -> str:
    floor = report["floor"]
    lines = ["# What limits the spine completion", "",
             f"Command: `python benchmarks/spine_limits.py {' '.join(argv)}`", "",
             f"Phantom cases: {report['n_train']} train / {report['n_val']} val / {report['n_test']} test.", "",
             f"## Floor of CD-L2 x 10^4 ({floor['n_cases']} test cases, the truth's own surface sampled again)", "",
             "| sample | body | arch | whole |", "|---|---|---|---|"]
    for label in ("uniform", "blue_noise"):
        lines.append(f"| {label.replace('_', ' ')} | " + " | ".join(str(floor[label][p]) for p in PARTS) + " |")
    lines += ["", "## Where the output points go (test cases)", "",
              "| run | arch share (truth) | body truth->pred / pred->truth mm^2 | arch truth->pred / pred->truth mm^2 |",
              "|---|---|---|---|"]
    for name, row in report["allocation"].items():
        lines.append(f"| {name} | {row['arch_share']} ({row['truth_arch_share']}) | "
                     f"{row['body']['truth_to_pred_mm2']} / {row['body']['pred_to_truth_mm2']} | "
                     f"{row['arch']['truth_to_pred_mm2']} / {row['arch']['pred_to_truth_mm2']} |")
    lines += ["", "## Fit: every 4th training case against the test cases (CD-L2 x 10^4 body / arch / whole)", "",
              "| run | train | test |", "|---|---|---|"]
    for name, row in report["fit"].items():
        lines.append(f"| {name} | " + " | ".join(" / ".join(str(row[k][p]) for p in PARTS)
                                                for k in ("train_every_4th", "test")) + " |")
    cases = report["registration_cases"]
    lines += ["", (f"## Registration offset as drawn and none ({cases['folder']}, seed {cases['seed']}: "
              f"{cases['n_val']} val / {cases['n_test']} test cases; CD-L2 x 10^4 body / arch / whole)"), "",
              "| run | " + " | ".join(next(iter(report["registration"].values()))) + " |",
              "|---|" + "---|" * len(next(iter(report["registration"].values())))]
    for name, row in report["registration"].items():
        lines.append(f"| {name} | " + " | ".join(" / ".join(str(v[p]) for p in PARTS) for v in row.values()) + " |")
    frame = report["frame"]
    lines += ["", ("## Frame: x = 0 moved from the true mid-plane to the ultrasound centroid (test cases; the centroid "
              f"is {frame['us_centroid_x_mm_mean_abs']} mm from it on average; CD-L2 x 10^4 body / arch / whole)"), "",
              "| run | " + " | ".join(next(iter(frame["runs"].values()))) + " |",
              "|---|" + "---|" * len(next(iter(frame["runs"].values())))]
    for name, row in frame["runs"].items():
        lines.append(f"| {name} | " + " | ".join(" / ".join(str(v[p]) for p in PARTS) for v in row.values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
