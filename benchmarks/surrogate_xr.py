"""US -> X-ray surrogate on paired phantom hips: predict the acetabular index (AI) from ultrasound, with a bound.

    .venv/bin/python benchmarks/surrogate_xr.py --bundle demo/bundle --out benchmarks/results

1. Paired phantom patients (``sonogate.phantom.paired``: two hips each, one scanner A / B / C per patient,
   ``--frames`` standard-plane frames per hip; AI = clip(65 - 0.67 alpha + N(0, 3.5), 5, 50), **an assumed
   relation**). Patients 0..F-1 fit, the next C calibrate, the last T test (disjoint by patient; seeded).
2. Every frame goes through the committed ultrasound bundle with the torch-free runtime pieces
   (``load_bundle`` -> ``create_backend`` on the bundle's INT8 model -> ``Preprocessor``, as
   ``sonogate.runtime.engine`` runs it); per hip the mean of the frames' ``features`` (512) and of the predicted
   alpha.
3. Surrogates (``sonogate.calibration.surrogate``): ridge on the features (strength by grouped 5-fold CV on the
   fit patients), the 1-d line AI ~ predicted alpha, and an oracle line AI ~ true alpha (the floor the assumed
   noise allows). Each gets a one-sided split-conformal upper bound at ``--delta`` on the calibration
   patients (unit: the patient, max over both hips; the per-hip radius is reported too).
4. On the test hips: AI MAE, Pearson r, radius, empirical coverage of the upper bound, the share of hips whose
   upper bound is <= 30 deg (what the radiograph would call normal) and how many of those truly have AI > 30.

Writes ``surrogate_xr.json``, ``surrogate_xr.md`` and ``surrogate_xr.png`` under ``--out``, and the fitted
ridge surrogate (bound to the bundle hash) to ``--model-out``.
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
AI_NORMAL_MAX = 30.0  # the X-ray reads AI <= 30 deg as normal (docs/xray.md)


def _rel(path) -> str:
    """``path`` relative to the repository when it lies inside it (stable reports across checkouts)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def run_bundle(
    bundle_path: str, n_patients: int, seed: int, frames: int, device: str, threads: int, progress: bool
) -> tuple[dict, dict]:
    """Generate the paired patients and run every frame through the bundle. Output: (per-hip arrays, info)."""
    from sonogate.core.bundle import load_bundle
    from sonogate.device.compute import create_backend
    from sonogate.phantom.paired import DEFAULT_AI_MODEL, iter_paired_patients
    from sonogate.runtime.engine import OodModel, choose_variant
    from sonogate.runtime.preprocess import Preprocessor

    bundle = load_bundle(bundle_path)
    variant = choose_variant(bundle, "auto")
    backend, note = create_backend(bundle.model_path(variant), device=device, threads=threads)
    preprocessor = Preprocessor(bundle.preprocessing)
    ood = OodModel.from_bundle(bundle)
    alpha_index = bundle.measurement_names.index("alpha_deg")

    rows: dict[str, list] = {
        k: []
        for k in (
            "patient_id",
            "hip_id",
            "device",
            "alpha_true",
            "beta_true",
            "coverage_true",
            "ai_true",
            "ai_mean",
            "alpha_hat",
            "features",
            "frame_alpha_true",
            "ood_frames",
        )
    }
    iterator = iter_paired_patients(n_patients, seed, frames_per_hip=frames)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=n_patients, desc="paired patients", unit="patient")
    t0 = time.perf_counter()
    for patient in iterator:
        for hip in patient:
            feats, alphas, n_ood = [], [], 0
            for frame in hip.frames:
                out = backend.infer(preprocessor(frame.image))
                f = np.asarray(out["features"], dtype=np.float64).reshape(-1).copy()
                feats.append(f)
                alphas.append(float(np.asarray(out["measurements"]).reshape(-1)[alpha_index]))
                if ood is not None and not ood.distance(f) <= ood.threshold:
                    n_ood += 1
            rows["patient_id"].append(hip.patient_id)
            rows["hip_id"].append(hip.hip_id)
            rows["device"].append(hip.device)
            rows["alpha_true"].append(hip.alpha_deg)
            rows["beta_true"].append(hip.beta_deg)
            rows["coverage_true"].append(hip.coverage_pct)
            rows["ai_true"].append(hip.ai_deg)
            rows["ai_mean"].append(hip.ai_mean_deg)
            rows["alpha_hat"].append(float(np.mean(alphas)))
            rows["features"].append(np.mean(feats, axis=0))
            rows["frame_alpha_true"].append(float(np.mean([fr.alpha_deg for fr in hip.frames])))
            rows["ood_frames"].append(n_ood)
    seconds = time.perf_counter() - t0
    data = {k: np.asarray(v) for k, v in rows.items()}
    info = {
        "bundle": _rel(bundle_path),
        "bundle_sha256": bundle.bundle_hash,
        "model_variant": variant,
        "backend_note": note,
        "frames_per_hip": frames,
        "n_frames": int(frames * data["ai_true"].size),
        "render_and_infer_s": round(seconds, 1),
        "ai_model": DEFAULT_AI_MODEL.to_dict(),
        "frames_out_of_distribution": int(data["ood_frames"].sum()),
    }
    return data, info


def evaluate(name: str, model, x_test, ai_test, pid_test) -> dict:
    """Test-split figures of one calibrated surrogate."""
    ai_hat, upper = model.predict_bound(x_test)
    err = ai_hat - ai_test
    covered = ai_test <= upper
    reassured = upper <= AI_NORMAL_MAX
    abnormal = ai_test > AI_NORMAL_MAX
    wrong = reassured & abnormal
    patients = np.unique(pid_test)
    patient_covered = np.array([bool(np.all(covered[pid_test == p])) for p in patients])
    n = ai_test.size
    return {
        "model": name,
        "mae_deg": float(np.mean(np.abs(err))),
        "rmse_deg": float(np.sqrt(np.mean(err**2))),
        "pearson_r": float(np.corrcoef(ai_hat, ai_test)[0, 1]) if np.std(ai_hat) > 0 else float("nan"),
        "radius_deg": model.radius_,
        "radius_unit": model.unit_,
        "n_cal_units": model.n_,
        "k": model.k_,
        "coverage_hips": float(np.mean(covered)),
        "coverage_patients": float(np.mean(patient_covered)),
        "share_upper_le_30": float(np.mean(reassured)),
        "n_upper_le_30": int(np.sum(reassured)),
        "n_wrong": int(np.sum(wrong)),
        "wrong_among_reassured": float(np.sum(wrong) / np.sum(reassured)) if np.any(reassured) else None,
        "p_reassured_and_abnormal": float(np.sum(wrong) / n),
        "normal_hips_reassured": float(np.sum(reassured & ~abnormal) / max(1, np.sum(~abnormal))),
        "ai_hat_needed_for_normal": None if model.radius_ is None else AI_NORMAL_MAX - model.radius_,
        "ai_hat": ai_hat.tolist(),
        "upper": upper.tolist(),
    }


def resplit(model, x, ai, pid, n_cal_patients: int, delta: float, repeats: int, seed: int) -> dict:
    """Coverage and reassurance over ``repeats`` random re-splits (by patient) of the calibration + test patients,
    with the fit unchanged: how much of the single split's figures is the luck of that one draw."""
    import copy

    clone = copy.deepcopy(model)
    pred = clone.predict(x)
    patients = np.unique(pid)
    rng = np.random.default_rng(seed)
    cov_hips, cov_patients, reassured, wrong = [], [], [], []
    for _ in range(repeats):
        cal_set = set(rng.permutation(patients)[:n_cal_patients].tolist())
        cal = np.array([p in cal_set for p in pid])
        clone.calibrate(x[cal], ai[cal], delta, groups=pid[cal])
        upper = pred[~cal] + (np.inf if clone.radius_ is None else clone.radius_)
        ok = ai[~cal] <= upper
        cov_hips.append(float(np.mean(ok)))
        test_pid = pid[~cal]
        cov_patients.append(float(np.mean([np.all(ok[test_pid == p]) for p in np.unique(test_pid)])))
        calm = upper <= AI_NORMAL_MAX
        reassured.append(float(np.mean(calm)))
        wrong.append(float(np.mean(calm & (ai[~cal] > AI_NORMAL_MAX))))
    return {
        "repeats": repeats,
        "coverage_hips_mean": float(np.mean(cov_hips)),
        "coverage_patients_mean": float(np.mean(cov_patients)),
        "coverage_patients_p05": float(np.quantile(cov_patients, 0.05)),
        "share_upper_le_30_mean": float(np.mean(reassured)),
        "p_reassured_and_abnormal_mean": float(np.mean(wrong)),
    }


def per_hip_radius(model, x_cal, ai_cal, delta) -> float | None:
    """Radius of the same surrogate calibrated per hip (the unit the phantom's independent hips allow)."""
    import copy

    clone = copy.deepcopy(model)
    clone.calibrate(x_cal, ai_cal, delta)
    return clone.radius_


def plot(path: Path, ai_test: np.ndarray, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 4.6), sharex=True, sharey=True)
    lo, hi = 0.0, 60.0
    for ax, res in zip(np.atleast_1d(axes), results, strict=True):
        ai_hat, upper = np.asarray(res["ai_hat"]), np.asarray(res["upper"])
        wrong = (upper <= AI_NORMAL_MAX) & (ai_test > AI_NORMAL_MAX)
        ax.vlines(ai_test, ai_hat, np.minimum(upper, hi), color="tab:orange", alpha=0.15, lw=0.8)
        ax.scatter(ai_test, ai_hat, s=7, color="tab:blue", alpha=0.6, label="prediction")
        ax.scatter(
            ai_test,
            np.minimum(upper, hi),
            s=7,
            marker="_",
            color="tab:orange",
            alpha=0.8,
            label=f"upper bound (delta {res['delta']})",
        )
        if np.any(wrong):
            ax.scatter(
                ai_test[wrong], upper[wrong], s=22, marker="x", color="tab:red", label="bound <= 30 but true AI > 30"
            )
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        ax.axhline(AI_NORMAL_MAX, color="k", ls=":", lw=0.8)
        ax.axvline(AI_NORMAL_MAX, color="k", ls=":", lw=0.8)
        radius = "inf" if res["radius_deg"] is None else f"{res['radius_deg']:.1f}"
        ax.set_title(
            f"{res['label']}\nMAE {res['mae_deg']:.2f} deg, r {res['pearson_r']:.2f}, radius {radius}", fontsize=9
        )
        ax.set_xlabel("true AI (deg, assumed alpha->AI model)")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.legend(fontsize=7, loc="upper left")
    np.atleast_1d(axes)[0].set_ylabel("predicted AI / upper bound (deg)")
    fig.suptitle("US -> X-ray surrogate on paired phantom hips (test patients)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(report: dict) -> str:
    cfg, split = report["config"], report["split"]
    lines = [
        "# US -> X-ray surrogate on paired phantom hips",
        "",
        f"`{report['command']}`",
        "",
        (
            f"Bundle `{cfg['bundle']}` (sha256 {report['bundle']['bundle_sha256'][:12]}..., {report['bundle']['model_variant']}"
            f" model); {split['fit_hips']} fit / {split['cal_hips']} calibration / {split['test_hips']} test hips "
            f"({split['fit_patients']} / {split['cal_patients']} / {split['test_patients']} patients, disjoint), "
            f"{cfg['frames_per_hip']} frames per hip, seed {cfg['seed']}, delta {cfg['delta']}. "
            "AI truth = clip(65 - 0.67 alpha_true + N(0, 3.5), 5, 50): **an assumed relation, not a clinical one**."
        ),
        "",
        (
            "| model | AI MAE (deg) | r | radius (deg, per patient) | radius per hip | coverage (hips / patients) "
            "| upper <= 30 | of those AI > 30 | normal hips called normal |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for res in report["results"]:
        lines.append(
            f"| {res['label']} | {fmt(res['mae_deg'])} | {fmt(res['pearson_r'])} | {fmt(res['radius_deg'])} | "
            f"{fmt(res['radius_per_hip_deg'])} | {fmt(res['coverage_hips'], 3)} / {fmt(res['coverage_patients'], 3)} | "
            f"{fmt(res['share_upper_le_30'], 3)} ({res['n_upper_le_30']}) | {res['n_wrong']} | "
            f"{fmt(res['normal_hips_reassured'], 3)} |"
        )
    ctx = report["context"]
    lines += [
        f"| no skill (mean AI of the fit hips) | {fmt(ctx['no_skill_mae_deg'])} | - | - | - | - | - | - | - |",
        "",
        (
            f"Over {report['results'][0]['resplit']['repeats']} random re-splits (by patient) of the "
            f"{split['cal_patients'] + split['test_patients']} calibration + test patients (fit unchanged):"
        ),
        "",
        "| model | coverage hips (mean) | coverage patients (mean / 5th pct) | upper <= 30 (mean) | P(upper <= 30 and AI > 30) |",
        "|---|---|---|---|---|",
    ]
    for res in report["results"]:
        rs = res["resplit"]
        lines.append(
            f"| {res['label']} | {fmt(rs['coverage_hips_mean'], 3)} | {fmt(rs['coverage_patients_mean'], 3)} / "
            f"{fmt(rs['coverage_patients_p05'], 3)} | {fmt(rs['share_upper_le_30_mean'], 3)} | "
            f"{fmt(rs['p_reassured_and_abnormal_mean'], 4)} |"
        )
    lines += [
        "",
        (
            f"* Oracle MAE floor of the assumed noise: 3.5 * sqrt(2/pi) = {fmt(ctx['oracle_mae_theory_deg'])} deg "
            f"(the oracle row is its empirical value); its one-sided 90 % quantile is 1.2816 * 3.5 = "
            f"{fmt(ctx['oracle_q90_theory_deg'])} deg."
        ),
        (
            f"* Test hips with AI > 30: {ctx['test_abnormal']} of {split['test_hips']}; correlation of true alpha and "
            f"AI on all hips r = {fmt(ctx['alpha_ai_r_all_hips'])}."
        ),
        (
            f"* The bundle's per-hip alpha MAE on these hips (mean of {cfg['frames_per_hip']} frames): "
            f"{fmt(ctx['bundle_alpha_mae_deg'])} deg; frames flagged out of distribution: "
            f"{report['bundle']['frames_out_of_distribution']} of {report['bundle']['n_frames']}."
        ),
        (
            f"* Coverage target 1 - delta = {1 - cfg['delta']:.2f}; binomial sd at n = {split['test_hips']} hips: "
            f"{fmt(ctx['coverage_sd_hips'], 3)}."
        ),
        (
            f"* Ridge strength chosen by grouped 5-fold CV: {fmt(report['ridge']['alpha_ridge'], 3)} "
            f"(at the grid edge: {report['ridge']['at_grid_edge']})."
        ),
        (
            f"* Wall time: {fmt(report['timing']['total_s'], 0)} s (render + inference "
            f"{fmt(report['bundle']['render_and_infer_s'], 0)} s) on {report['timing']['machine']}."
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(ROOT / "demo" / "bundle"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--model-out", default=str(ROOT / "out" / "surrogate_xr" / "surrogate_ai.json"))
    parser.add_argument("--fit-patients", type=int, default=300)
    parser.add_argument("--cal-patients", type=int, default=150)
    parser.add_argument("--test-patients", type=int, default=150)
    parser.add_argument("--frames", type=int, default=4, help="standard-plane frames per hip")
    parser.add_argument("--seed", type=int, default=20257)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resplits", type=int, default=200, help="random re-splits of the cal + test patients")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from sonogate.calibration.surrogate import AlphaBaselineAI, SurrogateAI
    from sonogate.errors import SonogateError
    from sonogate.phantom.paired import DEFAULT_AI_MODEL

    t_start = time.perf_counter()
    n_patients = args.fit_patients + args.cal_patients + args.test_patients
    try:
        data, bundle_info = run_bundle(
            args.bundle, n_patients, args.seed, args.frames, args.device, args.threads, not args.no_progress
        )
    except SonogateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # split by patient index (each patient has its own random stream, so this is a split by patient)
    hips_per_patient = 2
    index = np.arange(data["ai_true"].size) // hips_per_patient
    fit = index < args.fit_patients
    cal = (index >= args.fit_patients) & (index < args.fit_patients + args.cal_patients)
    test = index >= args.fit_patients + args.cal_patients
    ai, pid = data["ai_true"], data["patient_id"]
    inputs = {"features": data["features"], "alpha_hat": data["alpha_hat"], "alpha_true": data["alpha_true"]}
    sha = bundle_info["bundle_sha256"]
    specs = [
        ("ridge_features", "ridge on US features (512)", SurrogateAI(bundle_sha256=sha), "features"),
        ("linear_alpha_hat", "line on predicted alpha", AlphaBaselineAI(bundle_sha256=sha), "alpha_hat"),
        ("oracle_true_alpha", "oracle: line on true alpha", AlphaBaselineAI(bundle_sha256=sha), "alpha_true"),
    ]
    results = []
    ridge_model = None
    for key, label, model, source in specs:
        x = inputs[source]
        model.fit(x[fit], ai[fit], groups=pid[fit])
        model.calibrate(x[cal], ai[cal], args.delta, groups=pid[cal])
        res = evaluate(key, model, x[test], ai[test], pid[test])
        res["label"] = label
        res["input"] = source
        res["delta"] = args.delta
        res["radius_per_hip_deg"] = per_hip_radius(model, x[cal], ai[cal], args.delta)
        res["resplit"] = resplit(
            model, x[~fit], ai[~fit], pid[~fit], args.cal_patients, args.delta, args.resplits, args.seed
        )
        results.append(res)
        if key == "ridge_features":
            ridge_model = model
    ridge_model.meta = {
        "data": "paired phantom hips (sonogate.phantom.paired)",
        "ai_model": DEFAULT_AI_MODEL.to_dict(),
        "seed": args.seed,
        "fit_patients": args.fit_patients,
        "cal_patients": args.cal_patients,
        "frames_per_hip": args.frames,
        "aggregation": "mean of the hip's frames' features",
    }
    model_path = ridge_model.save(args.model_out)

    no_skill = float(np.mean(np.abs(ai[test] - ai[fit].mean())))
    total_s = time.perf_counter() - t_start
    report = {
        "command": "python benchmarks/surrogate_xr.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {
            "bundle": _rel(args.bundle),
            "seed": args.seed,
            "delta": args.delta,
            "frames_per_hip": args.frames,
            "device": args.device,
            "threads": args.threads,
            "ai_normal_max_deg": AI_NORMAL_MAX,
        },
        "split": {
            "fit_patients": args.fit_patients,
            "cal_patients": args.cal_patients,
            "test_patients": args.test_patients,
            "fit_hips": int(fit.sum()),
            "cal_hips": int(cal.sum()),
            "test_hips": int(test.sum()),
            "unit": "patient (2 hips)",
        },
        "bundle": bundle_info,
        "ridge": {
            "alpha_ridge": ridge_model.alpha_ridge_,
            "at_grid_edge": ridge_model.cv_["at_grid_edge"],
            "cv_best_mse": ridge_model.cv_["best_mse"],
            "saved_to": _rel(model_path),
        },
        "context": {
            "oracle_mae_theory_deg": DEFAULT_AI_MODEL.oracle_mae(),
            "oracle_q90_theory_deg": 1.2815515655446004 * DEFAULT_AI_MODEL.noise_sd,
            "no_skill_mae_deg": no_skill,
            "test_abnormal": int(np.sum(ai[test] > AI_NORMAL_MAX)),
            "alpha_ai_r_all_hips": float(np.corrcoef(data["alpha_true"], ai)[0, 1]),
            "bundle_alpha_mae_deg": float(np.mean(np.abs(data["alpha_hat"] - data["alpha_true"]))),
            "bundle_alpha_mae_test_deg": float(np.mean(np.abs(data["alpha_hat"][test] - data["alpha_true"][test]))),
            "coverage_sd_hips": math.sqrt((1 - args.delta) * args.delta / max(1, int(test.sum()))),
        },
        "results": results,
        "test_truth": {
            "hip_id": data["hip_id"][test].tolist(),
            "ai_deg": ai[test].tolist(),
            "alpha_deg": data["alpha_true"][test].tolist(),
            "alpha_hat": data["alpha_hat"][test].tolist(),
        },
        "timing": {
            "total_s": total_s,
            "machine": f"{platform.machine()}, {platform.python_version()}, {os.cpu_count()} cores (shared)",
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "surrogate_xr.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "surrogate_xr.md").write_text(markdown(report))
    plot(out / "surrogate_xr.png", ai[test], results)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
