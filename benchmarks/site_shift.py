"""Site-shift benchmark: adapt the shipped demo bundle to a phantom scanner it never saw (issue 23).

The new site is one phantom rendering style + scanner preset + display orientation the demo bundle was not trained
on (default: the ``realistic`` style, device D - the bundle's validation device, never trained on - shown in
``graf_mirrored`` orientation; the bundle was trained on the schematic style, devices A/B/C, horizontal and
device C's Graf orientation). The benchmark

1. writes a pool of labelled site sweeps (``sonogate phantom us``) and runs the bundle's model over it once
   (``sonogate.runtime.adapt.read_site_frames``, the code ``sonogate adapt`` runs; cached);
2. for each number of labelled sweeps (10 / 20 / 40) and each of ``--splits`` random draws of infants, adapts on
   those sweeps with ``sonogate.calibration.site.adapt_site`` (the fit ``sonogate adapt`` writes) and judges the
   result on every other infant of the pool (disjoint): alpha MAE, radii, US-only rate, false reassurances;
   the same for the base bundle as shipped ("before");
3. times the real command, ``sonogate adapt`` in a fresh process with 1 thread, once per size;
4. optionally (``--radiopaedia DIR``) refits the out-of-distribution statistics on the real Radiopaedia cines
   (non-commercial licence: evaluation only; the adapted bundle stays in the work folder and is never shipped).

    .venv/bin/python benchmarks/site_shift.py --out benchmarks/results \
        --radiopaedia ../shared/data/hip-radiopaedia-ddh/dicoms/ultrasound

Writes ``site_shift.json``, ``site_shift.md`` and ``site_shift.png`` under ``--out``; data and bundles under
``--work`` (default /work/scratch/site_shift).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

# one BLAS thread: on a shared 2-core machine OpenBLAS's spinning threads make a 100 x 100 eigh 200 times slower
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sonogate.calibration.calfile import load_calibration
from sonogate.calibration.site import (
    SiteDataError,
    SiteFrames,
    SiteOptions,
    adapt_site,
    decision_summary,
    sweep_decisions,
    wilson_interval,
)


def _sonogate() -> list[str]:
    return [sys.executable, "-m", "sonogate.cli"]


def make_pool(work: Path, args) -> Path:
    pool = work / "site_pool"
    if not (pool / "labels.csv").is_file():
        cmd = _sonogate() + ["phantom", "us", "--n", str(args.pool_frames), "--seed", str(args.seed),
                             "--out", str(pool), "--devices", args.device, "--frames-per-sweep",
                             str(args.frames_per_sweep), "--style", args.style, "--orientations", args.orientation]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return pool


def pool_frames(bundle: Path, pool: Path, work: Path, transform: str | None = None) -> SiteFrames:
    cache = work / ("site_pool_frames.npz" if not transform else f"site_pool_frames_{transform}.npz")
    if cache.is_file():
        return SiteFrames.load(cache)
    from sonogate.runtime.adapt import read_site_frames

    frames, _ = read_site_frames(bundle, pool, progress=True, transform=transform)
    frames.save(cache)
    return frames


def base_ood(bundle: Path) -> dict:
    with np.load(bundle / "ood.npz") as data:
        out = {"features": {"mean": data["mean"].astype(np.float64), "precision": data["precision"].astype(np.float64),
                            "threshold": float(data["threshold"])}}
        if "image_mean" in data.files:
            out["image"] = {"mean": data["image_mean"], "precision": data["image_precision"],
                            "threshold": float(data["image_threshold"])}
    return out


def raw_alpha_mae(frames: SiteFrames, calibration) -> float:
    """The base bundle's sweep-level alpha (its affine on the median of its standard-plane-probability >= 0.5
    frames), out-of-distribution check ignored: how far its numbers are off on this site."""
    j = list(frames.names).index("alpha_deg")
    mc = calibration.measurements["alpha_deg"]
    truth = frames.hip_true if frames.hip_true is not None else frames.true
    errors = []
    for sweep in np.unique(frames.sweeps):
        rows = frames.sweeps == sweep
        good = rows & (frames.plane_probability >= 0.5)
        use = good if good.sum() >= 3 else rows
        errors.append(abs(mc.a * np.median(frames.graph[use, j]) + mc.b - np.nanmedian(truth[rows, j])))
    return float(np.mean(errors))


def head_ceiling(frames: SiteFrames, n_infants: int = 150, seed: int = 0) -> dict:
    """How far a ridge head on the frozen features can get with far more labels than a site has: fitted (with
    adapt's own cross-validated choice) on the standard-plane frames of ``n_infants`` infants of the pool, judged
    per frame on the rest; beside it the MAE of predicting the training mean."""
    from sonogate.calibration.site import fit_ridge_head

    infants = np.random.default_rng(seed).permutation(np.unique(frames.subjects))[:n_infants]
    train = np.isin(frames.subjects, infants) & frames.standard_plane
    test = ~np.isin(frames.subjects, infants) & frames.standard_plane
    head, _, info = fit_ridge_head(frames.features[train], frames.true[train], frames.graph[train],
                                   frames.subjects[train], frames.names)
    pred = frames.graph[test] if head is None else head.apply(frames.graph[test], frames.features[test], frames.names)
    j = list(frames.names).index("alpha_deg")
    truth = frames.true[test, j]
    return {"train_infants": n_infants, "train_frames": int(train.sum()), "test_frames": int(test.sum()),
            "alpha_frame_mae": float(np.mean(np.abs(pred[:, j] - truth))),
            "alpha_frame_mae_predicting_mean": float(np.mean(np.abs(truth - frames.true[train, j].mean()))),
            "alpha_chosen": info["measurements"].get("alpha_deg", {}).get("chosen")}


def split_infants(frames: SiteFrames, n_sweeps: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Random infants until ``n_sweeps`` labelled sweeps (whole infants); the rest of the pool is the test set."""
    infants = np.unique(frames.subjects)
    chosen, count = [], 0
    for infant in rng.permutation(infants):
        if count >= n_sweeps:
            break
        chosen.append(infant)
        count += len(np.unique(frames.sweeps[frames.subjects == infant]))
    train = np.isin(frames.subjects, chosen)
    return train, ~train


def run_sizes(frames: SiteFrames, before_ood, before_cal, args) -> dict:
    results = {}
    for variant, affine, ridge in (("default", True, "auto"), ("no_affine", False, "off")):
        for n in args.sizes:
            rng = np.random.default_rng(args.seed + 1000 * n)
            rows, refusals = [], []
            pooled = []
            for split in range(args.splits):
                train, test = split_infants(frames, n, rng)
                options = SiteOptions(delta=args.delta, rule=args.rule, ridge=ridge, affine=affine, seed=split,
                                      check_folds=0, aggregation=before_cal_aggregation(before_cal))
                t0 = time.perf_counter()
                try:
                    adaptation = adapt_site(frames.subset(train), options)
                except SiteDataError as exc:
                    refusals.append(str(exc))
                    continue
                fit_s = time.perf_counter() - t0
                test_frames = frames.subset(test)
                decisions = sweep_decisions(test_frames, adaptation.ood, adaptation.head, adaptation.calibration)
                summary = decision_summary(decisions, frames.names)
                summary["radii"] = {k: m.radius for k, m in adaptation.calibration.measurements.items()}
                summary["head"] = None if adaptation.head is None else list(adaptation.head.names)
                summary["fit_s"] = fit_s
                rows.append(summary)
                pooled.append(decisions)
            entry = {"n_labelled_sweeps": n, "variant": variant, "splits": args.splits, "refused": len(refusals),
                     "refusal_example": refusals[0] if refusals else None, "per_split": rows}
            if rows:
                false = sum(r["n_false_reassurance"] for r in rows)
                total = sum(r["n_sweeps"] for r in rows)
                abnormal = sum(r["n_abnormal"] for r in rows)
                low, high = wilson_interval(false, total)
                def radius(name, rows=rows):
                    return [r["radii"][name] for r in rows]

                def finite(xs):
                    return [x for x in xs if x is not None]
                entry.update({
                    "alpha_mae_after": float(np.mean([r["alpha_mae_deg"] for r in rows if r["alpha_mae_deg"] is not None])),
                    "us_only_rate": float(np.mean([r["us_only_rate"] for r in rows])),
                    "us_only_sd": float(np.std([r["us_only_rate"] for r in rows])),
                    "usable_rate": float(np.mean([r["n_usable"] / r["n_sweeps"] for r in rows])),
                    "false_reassurance": false, "test_sweeps": total, "abnormal_test_sweeps": abnormal,
                    "false_reassurance_rate": false / total, "false_reassurance_ci95": [low, high],
                    "miss_rate_among_abnormal": false / abnormal if abnormal else None,
                    "joint_coverage": float(np.mean([r["joint_coverage"] for r in rows if r["joint_coverage"] is not None])),
                    "radius_alpha_median": float(np.median(finite(radius("alpha_deg")))) if finite(radius("alpha_deg")) else None,
                    "radius_coverage_median": float(np.median(finite(radius("coverage_pct")))) if finite(radius("coverage_pct")) else None,
                    "infinite_radius_splits": sum(r["radii"]["alpha_deg"] is None for r in rows),
                    "head_chosen_splits": sum(bool(r["head"]) for r in rows),
                    "fit_s_median": float(np.median([r["fit_s"] for r in rows])),
                })
            results[f"{variant}_{n}"] = entry
            print(f"{variant} n={n}: " + json.dumps({k: v for k, v in entry.items() if k not in ("per_split",)})[:600],
                  flush=True)
    return results


def before_cal_aggregation(calibration):
    from sonogate.calibration.aggregate import AggregationRule

    return AggregationRule.from_json(calibration.aggregation)


def time_cli(bundle: Path, pool: Path, frames: SiteFrames, work: Path, sizes, args) -> dict:
    """Wall time of ``sonogate adapt`` (fresh process, 1 thread) on the first infants of the pool."""
    timings = {}
    with open(pool / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    infants = list(dict.fromkeys(r["patient_id"] for r in rows))
    for n in sizes:
        chosen, count = set(), 0
        for infant in infants:
            if count >= n:
                break
            chosen.add(infant)
            count += len({r["sweep_id"] for r in rows if r["patient_id"] == infant})
        site = work / f"site_{n}"
        site.mkdir(parents=True, exist_ok=True)
        with open(site / "labels.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            for r in rows:
                if r["patient_id"] in chosen:
                    writer.writerow(dict(r, image=str(Path("..") / pool.name / r["image"])))
        out = work / f"bundle_site_{n}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        (work / f"bundle_site_{n}.audit.jsonl").unlink(missing_ok=True)
        cmd = _sonogate() + ["adapt", "--bundle", str(bundle), "--data", str(site), "--out", str(out), "--delta",
                             str(args.delta), "--rule", args.rule, "--no-progress", "--json", "--threads", "1"]
        if args.undo_orientation:
            cmd += ["--orientation", args.orientation]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), check=False)
        wall = time.perf_counter() - t0
        entry = {"n_labelled_sweeps": count, "frames": sum(r["patient_id"] in chosen for r in rows),
                 "wall_s": round(wall, 1), "exit_code": proc.returncode, "command": "sonogate " + " ".join(cmd[3:])}
        if proc.returncode == 0:
            entry["summary"] = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            entry["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        timings[str(n)] = entry
        print(f"sonogate adapt with {count} sweeps: {wall:.1f} s, exit {proc.returncode} {entry.get('error', '')}",
              flush=True)
    return timings


def radiopaedia(bundle: Path, cines: Path, work: Path, labels_json: Path | None,
                site_frames: SiteFrames | None = None) -> dict:
    """OOD refit on the real cines (evaluation only): frames flagged before / after (cross-fitted by cine)."""
    from sonogate.calibration.site import cross_fitted_ood, ood_flags
    from sonogate.runtime.adapt import read_site_frames

    frames, data = read_site_frames(bundle, cines, progress=True)
    before = ood_flags(frames, base_ood(bundle))
    out: dict = {"cines": len(np.unique(frames.sweeps)), "frames": len(frames),
                 "frames_flagged_before": int(before.sum()), "data_sha256": data["sha256"]}
    # each cine judged by statistics fitted on the other cines (leave-one-cine-out)
    from sonogate.calibration.ood import fit_ood, mahalanobis

    flagged_after, per_cine = 0, {}
    for cine in np.unique(frames.sweeps):
        inside = frames.sweeps != cine
        flags = np.zeros((~inside).sum(), dtype=bool)
        for x in (frames.descriptors, frames.features):
            stats = cross_fitted_ood(x[inside], frames.sweeps[inside])
            d = mahalanobis(x[~inside], stats["mean"], stats["precision"])
            flags |= ~(d <= stats["threshold"])
        flagged_after += int(flags.sum())
        j = list(frames.names).index("alpha_deg")
        per_cine[cine] = {"frames": int((~inside).sum()), "flagged_before": int(before[~inside].sum()),
                          "flagged_leave_one_out": int(flags.sum()),
                          "raw_alpha_median": round(float(np.median(frames.graph[~inside, j])), 1)}
    del fit_ood
    out["frames_flagged_leave_one_cine_out"] = flagged_after
    out["per_cine"] = per_cine
    if labels_json is not None and labels_json.is_file():
        labels = json.loads(labels_json.read_text())
        for cine, entry in per_cine.items():
            case = labels.get(Path(cine).stem)
            if isinstance(case, dict):
                entry["report_alpha"] = {side: case[side].get("alpha") for side in ("R", "L") if side in case}
    target = work / "bundle_radiopaedia_ood_only"
    if target.exists():
        import shutil

        shutil.rmtree(target)
    (work / "bundle_radiopaedia_ood_only.audit.jsonl").unlink(missing_ok=True)
    cmd = _sonogate() + ["adapt", "--bundle", str(bundle), "--data", str(cines), "--out", str(target),
                         "--no-progress", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    out["adapt_command"] = "sonogate " + " ".join(cmd[3:])
    out["adapt_exit_code"] = proc.returncode
    out["adapt_wall_s"] = round(time.perf_counter() - t0, 1)
    out["adapt_output"] = (proc.stdout or proc.stderr).strip().splitlines()[-1][:400] if (proc.stdout or proc.stderr) else ""
    if proc.returncode == 0 and site_frames is not None:
        # does a domain refitted on 12 cines of many scanners still refuse the phantom site?
        out["phantom_site_frames_flagged_after"] = float(ood_flags(site_frames, base_ood(target)).mean())
    return out


def fmt(x, spec=".2f"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def write_outputs(report: dict, out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    before = report["before"]
    lines = [
        "# Site shift: adapting the demo bundle to an unseen phantom scanner",
        "",
        (f"Site: phantom style `{report['site']['style']}`, device `{report['site']['device']}`, orientation "
        f"`{report['site']['orientation']}` ({report['site']['sweeps']} sweeps of {report['site']['infants']} infants, "
        f"{report['site']['frames_per_sweep']} frames each, {100 * report['site']['abnormal_share']:.0f} % of sweeps "
        f"abnormal under rule {report['rule']}). Bundle: `{report['bundle']}` as shipped. delta {report['delta']}, "
        f"rule {report['rule']}, {report['splits']} random draws of infants per size; each adapted bundle judged on "
        "every other infant of the pool."),
        "",
        f"Command: `{report['command']}`",
        "",
        (f"**Before** (the bundle as shipped): {100 * before['frames_ood']:.1f} % of the site's frames fail its "
        f"out-of-distribution check, US-only rate {fmt(before['us_only_rate'])}, alpha MAE of its sweep output (OOD "
        f"check ignored) {fmt(before['alpha_mae_raw'], '.1f')} deg."),
        "",
        ("| labelled sweeps | variant | refused draws | alpha MAE after (deg) | alpha radius (median) | coverage radius "
        "(median) | usable | US-only (sd) | false reassurance (95 % CI) | miss rate among abnormal | joint coverage | "
        "ridge head chosen | adapt fit (s) |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["results"].values():
        if "us_only_rate" not in e:
            lines.append(f"| {e['n_labelled_sweeps']} | {e['variant']} | {e['refused']}/{e['splits']} | - | - | - | - | "
                         f"- | - | - | - | - | - |")
            continue
        ci = e["false_reassurance_ci95"]
        lines.append(
            f"| {e['n_labelled_sweeps']} | {e['variant']} | {e['refused']}/{e['splits']} | {fmt(e['alpha_mae_after'])} | "
            f"{fmt(e['radius_alpha_median'])} | {fmt(e['radius_coverage_median'])} | {fmt(e['usable_rate'])} | "
            f"{fmt(e['us_only_rate'])} ({fmt(e['us_only_sd'])}) | {e['false_reassurance']}/{e['test_sweeps']} = "
            f"{fmt(e['false_reassurance_rate'], '.3f')} ({fmt(ci[0], '.3f')}-{fmt(ci[1], '.3f')}) | "
            f"{fmt(e['miss_rate_among_abnormal'], '.3f')} | {fmt(e['joint_coverage'], '.3f')} | "
            f"{e['head_chosen_splits']}/{len(e['per_split'])} | {fmt(e['fit_s_median'], '.1f')} |")
    refusals = [e["refusal_example"] for e in report["results"].values() if e.get("refusal_example")]
    if refusals:
        lines += ["", "Refusal, as printed: `" + refusals[0] + "`"]
    lines += ["", ("Wall time of the command (`sonogate adapt`, fresh process, 1 inference thread, model run over the "
              "site's frames included, on the shared 2-core machine):"), "",
              ("| labelled sweeps | frames | wall (s) | exit | alpha radius | coverage radius | held-out check: US-only, "
              "false reassurance |"), "|---|---|---|---|---|---|---|"]
    for t in report["cli"].values():
        s = t.get("summary") or {}
        radii = s.get("radii") or {}
        check = s.get("held_out_check") or {}
        held = "-" if not check else (f"{fmt(check.get('us_only_rate'))}, {check.get('n_false_reassurance')}/"
                                      f"{check.get('n_sweeps')}")
        lines.append(f"| {t['n_labelled_sweeps']} | {t['frames']} | {t['wall_s']} | {t['exit_code']} | "
                     f"{fmt(radii.get('alpha_deg'))} | {fmt(radii.get('coverage_pct'))} | {held} |")
    ceiling = report.get("head_ceiling")
    if ceiling:
        lines += ["", (f"Ceiling of a ridge head on the frozen features at this site: trained on "
                  f"{ceiling['train_frames']} standard-plane frames of {ceiling['train_infants']} infants (adapt's own "
                  f"cross-validated choice: {ceiling['alpha_chosen']}), alpha per frame on the other infants "
                  f"{ceiling['alpha_frame_mae']:.2f} deg off (predicting the mean: "
                  f"{ceiling['alpha_frame_mae_predicting_mean']:.2f} deg).")]
    goal = report["goal"]
    lines += ["", "Goal (issue 23, <= 40 labelled sweeps): " + "; ".join(
        f"{k}: {'met' if v['met'] else 'NOT met'} ({v['value']})" for k, v in goal.items())]
    if report.get("radiopaedia"):
        r = report["radiopaedia"]
        lines += ["", "## Real Radiopaedia cines (evaluation only, CC BY-NC-SA: never shipped)", "",
                  (f"{r['cines']} cines, {r['frames']} frames. Frames failing the shipped bundle's OOD check: "
                  f"{r['frames_flagged_before']}/{r['frames']}. After an OOD-only adaptation, judged leave one cine "
                  f"out (each cine by statistics fitted on the other 11): {r['frames_flagged_leave_one_cine_out']}/"
                  f"{r['frames']}. `{r['adapt_command']}`: exit {r['adapt_exit_code']} in {r['adapt_wall_s']} s; "
                  "the bundle it writes has no calibration, so it measures and never recommends. Frames of this "
                  "benchmark's phantom site that its statistics refuse: "
                  f"{fmt(r.get('phantom_site_frames_flagged_after'), '.3f')}."), "",
                  "| cine | frames | OOD before | OOD leave-one-out | raw alpha (median) | report alpha (R / L) |",
                  "|---|---|---|---|---|---|"]
        for cine, c in r["per_cine"].items():
            rep = c.get("report_alpha") or {}
            lines.append(f"| {cine} | {c['frames']} | {c['flagged_before']} | {c['flagged_leave_one_out']} | "
                         f"{c['raw_alpha_median']} | {rep.get('R', '-')} / {rep.get('L', '-')} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


def plot(report: dict, out: Path, stem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for variant, marker in (("default", "o"), ("no_affine", "s")):
        entries = [e for e in report["results"].values() if e["variant"] == variant and "us_only_rate" in e]
        if not entries:
            continue
        n = [e["n_labelled_sweeps"] for e in entries]
        axes[0].plot(n, [e["alpha_mae_after"] for e in entries], marker=marker, label=f"after ({variant})")
        axes[1].errorbar(n, [e["us_only_rate"] for e in entries], yerr=[e["us_only_sd"] for e in entries],
                         marker=marker, capsize=3, label=variant)
        rates = [e["false_reassurance_rate"] for e in entries]
        lo = [max(0.0, r - e["false_reassurance_ci95"][0]) for r, e in zip(rates, entries)]
        hi = [max(0.0, e["false_reassurance_ci95"][1] - r) for r, e in zip(rates, entries)]
        axes[2].errorbar(n, rates, yerr=[lo, hi], marker=marker, capsize=3, label=variant)
    axes[0].axhline(report["before"]["alpha_mae_raw"], color="grey", ls=":", label="before (shipped)")
    axes[0].axhline(3.0, color="red", ls="--", lw=0.8, label="goal 3 deg")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("alpha MAE per sweep (deg)")
    axes[1].axhline(0.4, color="red", ls="--", lw=0.8, label="goal 0.4")
    axes[1].set_ylabel(f"US-only rate (delta {report['delta']}, {report['rule']})")
    axes[2].axhline(report["delta"], color="red", ls="--", lw=0.8, label="delta")
    axes[2].set_ylabel("observed false reassurance (95 % CI)")
    for ax in axes:
        ax.set_xlabel("labelled site sweeps")
        ax.legend(fontsize=7)
    fig.suptitle(f"Adapting to an unseen phantom scanner ({report['site']['style']}, device {report['site']['device']},"
                 f" {report['site']['orientation']}); {report['splits']} draws per size", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "demo" / "bundle"))
    parser.add_argument("--work", default="/work/scratch/site_shift")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--sizes", default="10,20,40")
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--rule", default="and")
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--pool-frames", type=int, default=2400)
    parser.add_argument("--frames-per-sweep", type=int, default=6)
    parser.add_argument("--style", default="realistic")
    parser.add_argument("--device", default="D")
    parser.add_argument("--orientation", default="graf_mirrored")
    parser.add_argument("--radiopaedia", help="folder of the real Radiopaedia hip cines (evaluation only)")
    parser.add_argument("--no-cli", action="store_true", help="skip timing the command")
    parser.add_argument("--tag", default="", help="suffix of the output files (site_shift_<tag>.*)")
    parser.add_argument("--from-json", help="only re-render the table and plot of an earlier run's JSON")
    parser.add_argument("--undo-orientation", action="store_true",
                        help="adapt with --orientation (the site declares its display orientation; the adapted bundle "
                             "turns the image back before the model); the 'before' figures stay the base bundle's")
    args = parser.parse_args()
    args.sizes = [int(x) for x in args.sizes.split(",")]
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        stem = Path(args.from_json).stem
        cache = Path(args.work) / f"{report['site']['style']}_{report['site']['device']}_{report['site']['orientation']}" \
            / "site_pool_frames.npz"
        if cache.is_file():
            report["head_ceiling"] = head_ceiling(SiteFrames.load(cache))
        if args.radiopaedia:  # redo only the real-cine part of that run
            cines = Path(args.radiopaedia)
            work = Path(args.work) / f"{report['site']['style']}_{report['site']['device']}_{report['site']['orientation']}"
            report["radiopaedia"] = radiopaedia(Path(report["bundle"]), cines, work,
                                                cines.parents[1] / "case_report_labels.json",
                                                SiteFrames.load(cache) if cache.is_file() else None)
            report["command"] += f" (real-cine part: --from-json {args.from_json} --radiopaedia {args.radiopaedia})"
        write_outputs(report, Path(args.out), stem)
        plot(report, Path(args.out), stem)
        return 0
    work = Path(args.work) / f"{args.style}_{args.device}_{args.orientation}"
    work.mkdir(parents=True, exist_ok=True)
    bundle = Path(args.bundle)
    pool = make_pool(work, args)
    frames = pool_frames(bundle, pool, work)
    adapt_frames = frames
    if args.undo_orientation:
        from sonogate.tasks.hip_us.adapt_cli import ORIENTATION_TRANSFORMS

        adapt_frames = pool_frames(bundle, pool, work, ORIENTATION_TRANSFORMS[args.orientation])
    calibration = load_calibration(bundle / "calibration.json")
    ood = base_ood(bundle)
    from sonogate.calibration.site import ood_flags

    before_decisions = sweep_decisions(frames, ood, None, calibration)
    before = decision_summary(before_decisions, frames.names)
    before["frames_ood"] = float(ood_flags(frames, ood).mean())
    before["alpha_mae_raw"] = raw_alpha_mae(frames, calibration)
    results = run_sizes(adapt_frames, ood, calibration, args)
    cli = {} if args.no_cli else time_cli(bundle, pool, adapt_frames, work, args.sizes, args)
    best = {n: results.get(f"default_{n}", {}) for n in args.sizes if n <= 40}
    ok = [e for e in best.values() if "us_only_rate" in e]
    top = max(ok, key=lambda e: e["us_only_rate"]) if ok else {}
    max_wall = max((t["wall_s"] for t in cli.values()), default=None)
    goal = {
        "alpha MAE <= 3 deg": {"value": fmt(top.get("alpha_mae_after")), "met": bool(top) and top["alpha_mae_after"] <= 3},
        "US-only >= 0.40": {"value": fmt(top.get("us_only_rate")), "met": bool(top) and top["us_only_rate"] >= 0.4},
        "false reassurance <= delta": {"value": fmt(top.get("false_reassurance_rate"), ".3f"),
                                       "met": bool(top) and top["false_reassurance_rate"] <= args.delta},
        "adapt <= 300 s": {"value": fmt(max_wall, ".0f"), "met": max_wall is not None and max_wall <= 300},
    }
    truth = frames.hip_true if frames.hip_true is not None else frames.true
    abnormal = before_decisions["abnormal"]
    report = {
        "command": "python benchmarks/site_shift.py " + " ".join(sys.argv[1:]),
        "bundle": str(bundle), "delta": args.delta, "rule": args.rule, "splits": args.splits,
        "site": {"style": args.style, "device": args.device, "orientation": args.orientation,
                 "frames_per_sweep": args.frames_per_sweep, "frames": len(frames),
                 "sweeps": len(np.unique(frames.sweeps)), "infants": len(np.unique(frames.subjects)),
                 "abnormal_share": float(abnormal.mean()), "pool": str(pool), "seed": args.seed,
                 "undo_orientation": bool(args.undo_orientation)},
        "before": before, "results": results, "cli": cli, "goal": goal,
    }
    del truth
    report["head_ceiling"] = head_ceiling(adapt_frames)
    if args.radiopaedia:
        cines = Path(args.radiopaedia)
        report["radiopaedia"] = radiopaedia(bundle, cines, work, cines.parents[1] / "case_report_labels.json", frames)
    out = Path(args.out)
    stem = "site_shift" + (f"_{args.tag}" if args.tag else "")
    write_outputs(report, out, stem)
    plot(report, out, stem)
    print(f"wrote {out / (stem + '.md')}, {out / (stem + '.json')}, {out / (stem + '.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
