"""Policy report: what each rule, delta and calibration mode buys (US-only rate) and costs (misses).

``policy_report(table, out_dir)`` repeats a random three-way split *by subject* (evaluation / affine / conformal)
``n_splits`` times, calibrates every method on the calibration subjects only, evaluates it on the disjoint
evaluation subjects, pools the counts over splits and writes:

* ``report.json``   every number (config, data summary, per method x rule x delta rates, heatmaps, decision curves)
* ``report.md``     summary, the headline "US-only rate at a guaranteed miss rate", and a table shaped like the
                    seed paper's Table 1 (rule, delta, coverage, US-only rate, miss rate), ours beside the paper's
* ``coverage.png``, ``tradeoff.png``, ``heatmap_<rule>.png``, ``decision_curves.png``, ``net_benefit.png``

Methods (units: a *sweep* = one aggregated group; a *frame* = one quality-gated row):

``ours``                 joint max-score calibration per sweep, P(false reassurance) <= delta
``ours_abnormal``        the same, calibrated on truly abnormal sweeps only: P(us_sufficient | abnormal) <= delta
``bonferroni_sweep``     delta / 2 per measurement per sweep
``separate_sweep``       delta per measurement per sweep (no rule-level guarantee)
``paper_frame``          the seed paper: frames pooled, affine and radius on the same frames, delta per measurement,
                         evaluated per frame (as published)
``paper_cine_any_frame`` the paper's frame calibration used live: a sweep is reassured as soon as one frame's
                         bounds pass the rule (no aggregation)

Rates: ``us_only_rate`` = P(us_sufficient); ``miss_rate`` = false reassurance among truly abnormal hips
(abnormal = the rule fails on the true values); ``false_reassurance`` = P(us_sufficient and abnormal), the quantity
a marginal calibration bounds by delta; ``coverage_joint`` = share of units where every rule bound holds.
Choosing delta by these numbers is fine only because they come from held-out subjects; never tune on the
calibration split itself.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from sonogate.calibration.aggregate import AggregationRule
from sonogate.calibration.calfile import MeasurementCalibration
from sonogate.calibration.conformal import (
    as_fraction,
    conformal_rank,
    fit_affine,
    kth_smallest,
    min_calibration_size,
    one_sided_radius,
    one_sided_scores,
)
from sonogate.calibration.fit import (
    PredictionTable,
    aggregate_table,
    apply_calibration_array,
    calibrate_units,
    default_aggregation,
    group_rows,
    group_split,
    side_of,
)
from sonogate.calibration.rules import describe_rule, rule_holds_array, rule_measurements
from sonogate.errors import DataError
from sonogate.measurements import DEFAULT_THRESHOLDS, RULES

DEFAULT_DELTAS = (0.05, 0.1, 0.2, 0.3, 0.4)
HEATMAP_DELTAS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)

METHODS: dict[str, str] = {
    "ours": "ours: joint max-score, per sweep",
    "ours_abnormal": "ours: joint, abnormal-conditional, per sweep",
    "bonferroni_sweep": "Bonferroni, per sweep",
    "separate_sweep": "separate deltas, per sweep",
    "paper_frame": "paper: separate deltas, per frame",
    "paper_cine_any_frame": "paper's calibration, live per sweep (any frame)",
    "decision": "experimental: miss-controlled threshold, per sweep",
    "decision_abnormal": "experimental: miss-rate-controlled threshold, per sweep",
}
_SWEEP_MODES = {
    "ours": ("joint", "marginal"),
    "ours_abnormal": ("joint", "abnormal"),
    "bonferroni_sweep": ("bonferroni", "marginal"),
    "separate_sweep": ("separate", "marginal"),
}


def _key(delta) -> str:
    return f"{float(delta):g}"


class _Counts:
    """Pooled counts of one (method, rule, delta) over splits."""

    def __init__(self, rule_names: Sequence[str]):
        self.rule_names = list(rule_names)
        self.n = self.us = self.abnormal = self.miss = self.covered = 0
        self.covered_each = np.zeros(len(rule_names), dtype=np.int64)
        self.split_coverage: list[float] = []
        self.split_us: list[float] = []
        self.splits = 0
        self.infinite_splits = 0
        self.radii: list[list[float]] = [[] for _ in rule_names]
        self.n_cal: list[int] = []

    def add(self, us: np.ndarray, abnormal: np.ndarray, covered_each: np.ndarray) -> None:
        covered = np.all(covered_each, axis=1)
        self.n += int(us.size)
        self.us += int(us.sum())
        self.abnormal += int(abnormal.sum())
        self.miss += int((us & abnormal).sum())
        self.covered += int(covered.sum())
        self.covered_each += covered_each.sum(axis=0)
        if us.size:
            self.split_coverage.append(float(covered.mean()))
            self.split_us.append(float(us.mean()))

    def add_radii(self, radii: Sequence[float | None], n_cal: int) -> None:
        self.splits += 1
        self.n_cal.append(int(n_cal))
        if any(r is None for r in radii):
            self.infinite_splits += 1
        for j, r in enumerate(radii):
            self.radii[j].append(math.inf if r is None else float(r))

    def summary(self) -> dict[str, Any]:
        def rate(num, den):
            return None if den == 0 else num / den

        out: dict[str, Any] = {
            "n_units": self.n,
            "us_only": self.us,
            "abnormal": self.abnormal,
            "misses": self.miss,
            "us_only_rate": rate(self.us, self.n),
            "p_xray": rate(self.n - self.us, self.n),
            "prevalence": rate(self.abnormal, self.n),
            "miss_rate": rate(self.miss, self.abnormal),
            "false_reassurance": rate(self.miss, self.n),
            "coverage_joint": rate(self.covered, self.n),
            "coverage": {n: rate(int(c), self.n) for n, c in zip(self.rule_names, self.covered_each)},
            "coverage_split_sd": float(np.std(self.split_coverage)) if self.split_coverage else None,
            "coverage_split_min": float(np.min(self.split_coverage)) if self.split_coverage else None,
            "splits": self.splits,
            "infinite_radius_splits": self.infinite_splits,
            "n_calibration_mean": float(np.mean(self.n_cal)) if self.n_cal else None,
        }
        radius = {}
        for name, values in zip(self.rule_names, self.radii):
            finite = [v for v in values if math.isfinite(v)]
            radius[name] = float(np.median(finite)) if finite else None
        out["radius_median"] = radius
        return out


def _covered(names: Sequence[str], bounds: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N, r) bool: truth on the safe side of its bound (inclusive); an infinite bound always covers."""
    cols = []
    for j, name in enumerate(names):
        with np.errstate(invalid="ignore"):
            ok = truth[:, j] >= bounds[:, j] if side_of(name) == "lower" else truth[:, j] <= bounds[:, j]
        cols.append(ok | ~np.isfinite(bounds[:, j]))
    return np.stack(cols, axis=1) if cols else np.zeros((len(bounds), 0), dtype=bool)


def _evaluate(rule: str, names: Sequence[str], bounds: np.ndarray, truth: np.ndarray, thresholds) -> tuple:
    """us_sufficient, abnormal and per-measurement coverage for units in ``names`` column order."""
    us = rule_holds_array(rule, {n: bounds[:, j] for j, n in enumerate(names)}, thresholds)
    abnormal = ~rule_holds_array(rule, {n: truth[:, j] for j, n in enumerate(names)}, thresholds)
    return us, abnormal, _covered(names, bounds, truth)


def _frame_calibration(
    names: Sequence[str], pred: np.ndarray, true: np.ndarray, deltas: dict[str, Any]
) -> dict[str, MeasurementCalibration]:
    """The seed paper's calibration: affine and radius both on the same pooled frames, one delta per measurement."""
    out = {}
    for j, name in enumerate(names):
        ok = np.isfinite(pred[:, j]) & np.isfinite(true[:, j])
        a, b = fit_affine(pred[ok, j], true[ok, j])
        scores = one_sided_scores(a * pred[ok, j] + b, true[ok, j], side_of(name))
        radius, k = one_sided_radius(scores, deltas[name])
        out[name] = MeasurementCalibration(side=side_of(name), a=a, b=b, radius=radius, n=int(ok.sum()), k=k)
    return out


def _decision_radii(
    rule: str,
    names: Sequence[str],
    fit_pred: np.ndarray,
    fit_true: np.ndarray,
    cal_pred: np.ndarray,
    cal_true: np.ndarray,
    delta,
    thresholds,
    conditional: bool,
) -> tuple[dict[str, tuple[float, float, float | None]], int]:
    """Experimental decision calibration: control the miss event itself instead of covering every measurement.

    With radii t * scale_m, a unit is reassured iff t <= u, u = min (AND) / max (OR) over m of the scaled margin
    (corrected_m - T_m) / scale_m (lower side). A *miss* needs reassurance and a truly abnormal unit, so its score
    is r = u for abnormal units and -inf for normal ones; taking t just above the k-th smallest r,
    k = ceil((n+1)(1-delta)), gives P(miss) <= delta (split conformal on r; ``conditional``: over abnormal units
    only, P(miss | abnormal) <= delta). The bounds it produces are decision thresholds, not coverage bounds on
    the measurements, and hold only for these thresholds; t is clamped at >= 0 (never above the prediction).
    Output: name -> (a, b, radius or None), and the number of calibration units used.
    """
    from sonogate.calibration.fit import estimate_scales

    affine_ab = {n: fit_affine(fit_pred[:, j], fit_true[:, j]) for j, n in enumerate(names)}
    scales, _ = estimate_scales(names, fit_pred, fit_true, affine_ab)
    known = np.all(np.isfinite(cal_true), axis=1) & np.all(np.isfinite(cal_pred), axis=1)
    margins = []
    for j, name in enumerate(names):
        a, b = affine_ab[name]
        c = a * cal_pred[known, j] + b
        threshold = thresholds[name]
        margins.append((c - threshold if side_of(name) == "lower" else threshold - c) / scales[name])
    margins = np.stack(margins, axis=1)
    u = margins.min(axis=1) if RULES[rule][1] == "all" else margins.max(axis=1)
    abnormal = ~rule_holds_array(rule, {n: cal_true[known, j] for j, n in enumerate(names)}, thresholds)
    r = np.where(abnormal, u, -np.inf)
    if conditional:
        r = r[abnormal]
    k = conformal_rank(r.size, delta)
    if k > r.size:
        return {n: (*affine_ab[n], None) for n in names}, int(r.size)
    t = max(0.0, float(np.nextafter(kth_smallest(r, k), np.inf)))
    return {n: (*affine_ab[n], t * scales[n]) for n in names}, int(r.size)


def _decision_curves(summary: dict, lambdas: np.ndarray, mus: Sequence[float], thresholds_pt: np.ndarray) -> dict:
    """U(lambda) = -lambda P(X-ray) - mu P(miss) and the net benefit of "defer to X-ray" at p_t = lambda / mu."""
    p_x = summary["p_xray"]
    p_miss = summary["false_reassurance"]
    prev = summary["prevalence"]
    if p_x is None:
        return {}
    tp = prev - p_miss  # deferred and truly abnormal (fraction of all units)
    fp = p_x - tp  # deferred and truly normal
    return {
        "utility": {_key(mu): (-lambdas * p_x - mu * p_miss).tolist() for mu in mus},
        "net_benefit": (tp - fp * thresholds_pt / (1.0 - thresholds_pt)).tolist(),
        "tp": tp,
        "fp": fp,
    }


def _data_summary(table: PredictionTable, sweeps, agg_info: dict, rules, thresholds) -> dict:
    summary: dict[str, Any] = dict(agg_info)
    summary["n_subjects"] = len(np.unique(table.split_keys))
    summary["split_by"] = "subject" if table.subjects is not None else "group"
    summary["frames_per_sweep_median"] = float(np.median(sweeps.n_frames)) if len(sweeps) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summary["mae_sweep"] = {
            n: float(np.nanmean(np.abs(sweeps.pred[:, j] - sweeps.true[:, j]))) for j, n in enumerate(sweeps.names)
        }
        summary["mae_frame"] = {
            n: float(np.nanmean(np.abs(table.pred[:, j] - table.true[:, j]))) for j, n in enumerate(table.names)
        }
    prevalence = {}
    for rule in rules:
        names = rule_measurements(rule)
        truth = {n: sweeps.true[:, sweeps.names.index(n)] for n in names}
        prevalence[rule] = float(np.mean(~rule_holds_array(rule, truth, thresholds))) if len(sweeps) else None
    summary["prevalence_abnormal"] = prevalence
    return summary


def policy_report(
    table: PredictionTable,
    out_dir: str | os.PathLike,
    deltas: Sequence[float] = DEFAULT_DELTAS,
    seed: int = 0,
    n_splits: int = 20,
    eval_fraction: float = 0.4,
    affine_fraction: float = 0.5,
    rules: Sequence[str] = ("alpha", "or", "and"),
    thresholds: dict[str, float] | None = None,
    aggregation: AggregationRule | None = None,
    heatmap_deltas: Sequence[float] = HEATMAP_DELTAS,
    mus: Sequence[float] = (0.0, 0.5, 1.0),
    targets: Sequence[float] = (0.05, 0.1),
    plots: bool = True,
    source: str = "",
) -> dict:
    """Evaluate the rule families over delta grids on held-out subjects and write report.md / report.json / PNGs.

    Inputs: per-frame ``table``; ``deltas`` the grid (the ``targets`` for the headline are added to it);
    ``n_splits`` random evaluation/affine/calibration splits by subject, seeded from ``seed``; ``eval_fraction``
    of the subjects evaluate, ``affine_fraction`` of the rest fit the affine correction (ours; the paper's mode
    fits affine and radius on all non-evaluation frames). Output: the dict written to report.json.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    thr = dict(DEFAULT_THRESHOLDS)
    thr.update(thresholds or {})
    rules = [r for r in rules if r in RULES]
    for rule in rules:
        for name in rule_measurements(rule):
            table.index(name)
    deltas = sorted({float(as_fraction(d)) for d in list(deltas) + list(targets)})
    agg_rule = aggregation if aggregation is not None else default_aggregation(table)
    sweeps, agg_info = aggregate_table(table, agg_rule)
    if len(np.unique(table.split_keys)) < 3:
        raise DataError("the policy report needs at least 3 subjects (evaluation, affine and calibration splits)")
    names = list(table.names)

    # Frame-level arrays for the paper's mode: quality-gated rows with finite predictions, with their group.
    uniq_groups, rows_per_group = group_rows(table.groups)
    group_index = np.empty(len(table), dtype=np.int64)
    for g, rows in enumerate(rows_per_group):
        group_index[rows] = g
    gated = (table.quality >= agg_rule.quality_threshold) & np.all(np.isfinite(table.pred), axis=1)
    f_pred, f_true = table.pred[gated], table.true[gated]
    f_key, f_group = table.split_keys[gated], group_index[gated]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        group_truth = np.stack([np.nanmedian(table.true[rows], axis=0) for rows in rows_per_group])
    group_key = np.array([table.split_keys[rows[0]] for rows in rows_per_group])

    counts: dict[tuple[str, str, str], _Counts] = {}

    def bucket(method, rule, delta):
        key = (method, rule, _key(delta))
        if key not in counts:
            counts[key] = _Counts(rule_measurements(rule))
        return counts[key]

    two_way = [r for r in rules if len(rule_measurements(r)) == 2]
    hd = [float(as_fraction(d)) for d in heatmap_deltas]
    heat = {r: {k: np.zeros((len(hd), len(hd))) for k in ("n", "us", "abnormal", "miss", "covered")} for r in two_way}

    all_keys = np.unique(table.split_keys)
    rest = 1.0 - eval_fraction
    for split in range(n_splits):
        ev_k, fit_k, cal_k = group_split(
            all_keys, [eval_fraction, rest * affine_fraction, rest * (1 - affine_fraction)], seed + split
        )
        ev_keys, fit_keys, cal_keys = all_keys[ev_k], all_keys[fit_k], all_keys[cal_k]
        s_ev, s_fit, s_cal = (np.isin(sweeps.subjects, k) for k in (ev_keys, fit_keys, cal_keys))
        f_ev = np.isin(f_key, ev_keys)
        f_cal = ~f_ev
        g_ev = np.isin(group_key, ev_keys)

        for rule in rules:
            r_names = list(rule_measurements(rule))
            r_idx = [names.index(n) for n in r_names]
            known_s = np.all(np.isfinite(sweeps.true[:, r_idx]), axis=1)
            ev_rows = s_ev & known_s
            for delta in deltas:
                # Per-sweep methods: calibrate on the calibration subjects, evaluate on the held-out ones.
                for method, (mode, guarantee) in _SWEEP_MODES.items():
                    cal, _, _ = calibrate_units(
                        names,
                        sweeps.pred[s_fit],
                        sweeps.true[s_fit],
                        sweeps.pred[s_cal],
                        sweeps.true[s_cal],
                        delta=delta,
                        rule=rule,
                        mode=mode,
                        affine=True,
                        thresholds=thr,
                        guarantee=guarantee,
                    )
                    _, bounds = apply_calibration_array(cal, r_names, sweeps.pred[ev_rows][:, r_idx])
                    us, abnormal, cov = _evaluate(rule, r_names, bounds, sweeps.true[ev_rows][:, r_idx], thr)
                    c = bucket(method, rule, delta)
                    c.add(us, abnormal, cov)
                    c.add_radii([cal[n].radius for n in r_names], cal[r_names[0]].n)
                # Experimental: calibrate the decision itself (see _decision_radii).
                for method, conditional in (("decision", False), ("decision_abnormal", True)):
                    radii, n_used = _decision_radii(
                        rule,
                        r_names,
                        sweeps.pred[s_fit][:, r_idx],
                        sweeps.true[s_fit][:, r_idx],
                        sweeps.pred[s_cal][:, r_idx],
                        sweeps.true[s_cal][:, r_idx],
                        delta,
                        thr,
                        conditional,
                    )
                    bounds = np.empty((int(ev_rows.sum()), len(r_names)))
                    for j, name in enumerate(r_names):
                        a, b, radius = radii[name]
                        corrected = a * sweeps.pred[ev_rows, r_idx[j]] + b
                        worst = -np.inf if side_of(name) == "lower" else np.inf
                        if radius is None:
                            bounds[:, j] = worst
                        else:
                            bounds[:, j] = corrected - radius if side_of(name) == "lower" else corrected + radius
                    us, abnormal, cov = _evaluate(rule, r_names, bounds, sweeps.true[ev_rows][:, r_idx], thr)
                    c = bucket(method, rule, delta)
                    c.add(us, abnormal, cov)
                    c.add_radii([radii[n][2] for n in r_names], n_used)
                # The paper's mode: frames pooled, affine + radius on the same frames, delta per measurement.
                fcal = _frame_calibration(
                    r_names, f_pred[f_cal][:, r_idx], f_true[f_cal][:, r_idx], {n: delta for n in r_names}
                )
                fe_known = f_ev & np.all(np.isfinite(f_true[:, r_idx]), axis=1)
                _, fb = apply_calibration_array(fcal, r_names, f_pred[fe_known][:, r_idx])
                us, abnormal, cov = _evaluate(rule, r_names, fb, f_true[fe_known][:, r_idx], thr)
                c = bucket("paper_frame", rule, delta)
                c.add(us, abnormal, cov)
                c.add_radii([fcal[n].radius for n in r_names], fcal[r_names[0]].n)
                # ... used live: a sweep is reassured when any of its frames passes; covered when all frames are.
                fg = f_group[fe_known]
                n_groups = len(uniq_groups)
                us_g = np.bincount(fg, weights=us, minlength=n_groups) > 0
                miss_cov = np.stack(
                    [np.bincount(fg, weights=~cov[:, j], minlength=n_groups) == 0 for j in range(len(r_names))], axis=1
                )
                has = np.bincount(fg, minlength=n_groups) > 0
                sel = has & g_ev & np.all(np.isfinite(group_truth[:, r_idx]), axis=1)
                abnormal_g = ~rule_holds_array(rule, {n: group_truth[sel, names.index(n)] for n in r_names}, thr)
                c = bucket("paper_cine_any_frame", rule, delta)
                c.add(us_g[sel], abnormal_g, miss_cov[sel])
                c.add_radii([fcal[n].radius for n in r_names], fcal[r_names[0]].n)

        # Heatmaps over (delta_alpha, delta_cov): separate per-sweep calibration with two deltas.
        if two_way:
            pair = list(rule_measurements(two_way[0]))
            p_idx = [names.index(n) for n in pair]
            ev_rows = s_ev & np.all(np.isfinite(sweeps.true[:, p_idx]), axis=1)
            per_meas_bounds = []
            for j in p_idx:
                name = names[j]
                a, b = fit_affine(sweeps.pred[s_fit, j], sweeps.true[s_fit, j])
                ok = s_cal & np.isfinite(sweeps.true[:, j]) & np.isfinite(sweeps.pred[:, j])
                scores = one_sided_scores(a * sweeps.pred[ok, j] + b, sweeps.true[ok, j], side_of(name))
                corrected = a * sweeps.pred[ev_rows, j] + b
                rows = []
                for d in hd:
                    r = float(kth_smallest(scores, conformal_rank(scores.size, d)))
                    rows.append(corrected - r if side_of(name) == "lower" else corrected + r)
                per_meas_bounds.append(np.nan_to_num(np.array(rows), nan=-np.inf))  # (len(hd), N)
            truth = sweeps.true[ev_rows][:, p_idx]
            cov_a = _covered([pair[0]] * len(hd), per_meas_bounds[0].T, np.repeat(truth[:, :1], len(hd), 1))
            cov_c = _covered([pair[1]] * len(hd), per_meas_bounds[1].T, np.repeat(truth[:, 1:], len(hd), 1))
            for rule in two_way:
                abnormal = ~rule_holds_array(rule, {pair[0]: truth[:, 0], pair[1]: truth[:, 1]}, thr)
                us = rule_holds_array(
                    rule, {pair[0]: per_meas_bounds[0][:, None, :], pair[1]: per_meas_bounds[1][None, :, :]}, thr
                )  # (len(hd) alpha, len(hd) cov, N)
                h = heat[rule]
                h["n"] += truth.shape[0]
                h["us"] += us.sum(axis=2)
                h["abnormal"] += abnormal.sum()
                h["miss"] += (us & abnormal[None, None, :]).sum(axis=2)
                h["covered"] += (cov_a.T[:, None, :] & cov_c.T[None, :, :]).sum(axis=2)

    results: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    for (method, rule, dkey), c in counts.items():
        results[method][rule][dkey] = c.summary()
    results = {m: {r: dict(v) for r, v in rr.items()} for m, rr in results.items()}

    lambdas = np.linspace(0.0, 1.0, 101)
    p_t = np.linspace(0.01, 0.99, 99)
    curves: dict[str, Any] = {"lambda": lambdas.tolist(), "p_t": p_t.tolist(), "mu": list(mus), "policies": {}}
    for method in ("ours", "ours_abnormal", "paper_cine_any_frame"):
        for rule in rules:
            for delta in deltas:
                s = results[method][rule][_key(delta)]
                curves["policies"][f"{method}|{rule}|{_key(delta)}"] = _decision_curves(s, lambdas, mus, p_t)
    curves["reference"] = {
        "xray_all": {_key(mu): (-lambdas).tolist() for mu in mus},
        "us_all": {
            rule: {_key(mu): float(-mu * results["ours"][rule][_key(deltas[0])]["prevalence"]) for mu in mus}
            for rule in rules
        },
    }

    heatmaps = {}
    for rule, h in heat.items():
        n = np.maximum(h["n"], 1)
        heatmaps[rule] = {
            "delta_alpha": hd,
            "delta_cov": hd,
            "us_only_rate": (h["us"] / n).tolist(),
            "miss_rate": (h["miss"] / np.maximum(h["abnormal"], 1)).tolist(),
            "false_reassurance": (h["miss"] / n).tolist(),
            "coverage_joint": (h["covered"] / n).tolist(),
        }

    headline = _headline(results, rules, targets)
    report = {
        "config": {
            "deltas": deltas,
            "n_splits": n_splits,
            "seed": seed,
            "eval_fraction": eval_fraction,
            "affine_fraction": affine_fraction,
            "rules": {r: describe_rule(r, thr) for r in rules},
            "thresholds": thr,
            "aggregation": agg_rule.to_json(),
            "targets": list(targets),
            "source": source,
            "methods": METHODS,
        },
        "data": _data_summary(table, sweeps, agg_info, rules, thr),
        "results": results,
        "headline": headline,
        "heatmaps": heatmaps,
        "decision_curves": curves,
        "files": [],
    }
    if plots:
        report["files"] = _plots(report, out_dir, rules, deltas)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    (out_dir / "report.md").write_text(_markdown(report, rules, deltas))
    return report


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Fraction):
        return float(obj)
    raise TypeError(type(obj).__name__)


def _headline(results: dict, rules: Sequence[str], targets: Sequence[float]) -> list[dict]:
    """For each target miss level: the best rule's US-only rate for ours and for the paper's mode."""
    rows = []
    for t in targets:
        key = _key(t)
        row: dict[str, Any] = {"target": float(t)}
        for method in ("ours", "ours_abnormal", "decision", "decision_abnormal", "paper_frame", "paper_cine_any_frame"):
            best = None
            for rule in rules:
                s = results[method][rule][key]
                if best is None or (s["us_only_rate"] or 0) > (best[1]["us_only_rate"] or 0):
                    best = (rule, s)
            if best is not None:
                rule, s = best
                row[method] = {
                    "rule": rule,
                    "us_only_rate": s["us_only_rate"],
                    "miss_rate": s["miss_rate"],
                    "false_reassurance": s["false_reassurance"],
                    "coverage_joint": s["coverage_joint"],
                    "infinite_radius_splits": s["infinite_radius_splits"],
                }
        rows.append(row)
    return rows


def _fmt(x, digits=2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _delta_text(method: str, rule: str, delta: float) -> str:
    m = len(rule_measurements(rule))
    if m == 1:
        return f"{delta:g}"
    if method in ("ours", "ours_abnormal"):
        return f"{delta:g} (rule)"
    if method == "bonferroni_sweep":
        return f"{delta:g} ({delta / m:g} each)"
    return f"{delta:g}/{delta:g}"


def _markdown(report: dict, rules: Sequence[str], deltas: Sequence[float]) -> str:
    cfg, data, results = report["config"], report["data"], report["results"]
    lines = ["# sonogate policy report", ""]
    if cfg["source"]:
        lines += [f"Data: `{cfg['source']}`", ""]
    lines += [
        (
            f"{data['n_rows']} rows, {data['n_groups']} groups ({data['n_groups_usable']} usable after the "
            f"{cfg['aggregation']['method']} rule, min {cfg['aggregation']['min_frames']} frame(s) with quality >= "
            f"{cfg['aggregation']['quality_threshold']}), {data['n_subjects']} {data['split_by']}s. "
            f"{cfg['n_splits']} random splits by {data['split_by']}: {cfg['eval_fraction']:.0%} evaluation, the rest "
            f"{cfg['affine_fraction']:.0%} affine / {1 - cfg['affine_fraction']:.0%} conformal calibration. "
            "Evaluation subjects never calibrate. Counts are pooled over splits."
        ),
        "",
        "MAE per sweep (aggregated): "
        + ", ".join(f"{k} {v:.2f}" for k, v in data["mae_sweep"].items())
        + "; per frame: "
        + ", ".join(f"{k} {v:.2f}" for k, v in data["mae_frame"].items())
        + ".",
        "Truly abnormal (rule fails on true values): "
        + ", ".join(f"{r} {_fmt(v)}" for r, v in data["prevalence_abnormal"].items())
        + ".",
        "",
        "## US-only rate at a guaranteed miss level",
        "",
        (
            "`ours` guarantees P(false reassurance) = P(us_sufficient and truly abnormal) <= delta; `ours_abnormal` "
            "guarantees the miss rate among truly abnormal hips P(us_sufficient | abnormal) <= delta. The paper's mode "
            "(separate deltas, frames pooled) guarantees neither for OR/AND rules, and nothing per sweep. "
            "The experimental `decision` rows calibrate the reassurance decision itself (a miss score per "
            "calibration sweep); they keep the same miss guarantee but their bounds are decision thresholds for "
            "these thresholds only, not coverage bounds on the measurements (not written to calibration.json). "
            "Rules define 'abnormal' differently (OR: both measurements fail), so compare rules with care."
        ),
        "",
        "| target | method | best rule | US-only rate | miss rate (abnormal) | P(false reassurance) | guaranteed |",
        "|---|---|---|---|---|---|---|",
    ]
    guaranteed = {
        "ours": "P(miss) <= target",
        "ours_abnormal": "miss rate <= target",
        "paper_frame": "no (per frame, per measurement only)",
        "paper_cine_any_frame": "no",
        "decision": "P(miss) <= target (decision only, not coverage)",
        "decision_abnormal": "miss rate <= target (decision only, not coverage)",
    }
    for row in report["headline"]:
        for method in ("ours", "ours_abnormal", "paper_frame", "paper_cine_any_frame", "decision", "decision_abnormal"):
            if method not in row:
                continue
            s = row[method]
            lines.append(
                f"| {row['target']:g} | {METHODS[method]} | {s['rule']} | {_fmt(s['us_only_rate'])} | "
                f"{_fmt(s['miss_rate'], 3)} | {_fmt(s['false_reassurance'], 3)} | {guaranteed[method]} |"
            )
    lines += [
        "",
        "## Table 1 (shape of the seed paper's): coverage, US-only rate and miss rate",
        "",
        "Coverage = share of held-out units whose bound holds (per measurement, and jointly for the rule).",
        "",
        (
            "| Rule | delta | Method | Cov. alpha | Cov. coverage | Joint cov. | US-only rate | Miss rate | "
            "P(false reass.) | median radius |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rule in rules:
        for delta in deltas:
            for method in ("ours", "paper_frame", "paper_cine_any_frame"):
                s = results[method][rule][_key(delta)]
                cov = s["coverage"]
                radius = ", ".join(
                    f"{n.split('_')[0]} {_fmt(v, 1) if v is not None else 'inf'}" for n, v in s["radius_median"].items()
                )
                lines.append(
                    f"| {rule} | {_delta_text(method, rule, delta)} | {METHODS[method]} | "
                    f"{_fmt(cov.get('alpha_deg'))} | {_fmt(cov.get('coverage_pct'))} | {_fmt(s['coverage_joint'])} | "
                    f"{_fmt(s['us_only_rate'])} | {_fmt(s['miss_rate'], 3)} | {_fmt(s['false_reassurance'], 3)} | "
                    f"{radius} |"
                )
    lines += [
        "",
        "## Calibration modes per sweep",
        "",
        "| Rule | delta | Method | Joint cov. | US-only rate | Miss rate | P(false reass.) |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule in rules:
        for delta in deltas:
            for method in (
                "ours",
                "ours_abnormal",
                "bonferroni_sweep",
                "separate_sweep",
                "decision",
                "decision_abnormal",
            ):
                s = results[method][rule][_key(delta)]
                lines.append(
                    f"| {rule} | {_delta_text(method, rule, delta)} | {METHODS[method]} | {_fmt(s['coverage_joint'])} |"
                    f" {_fmt(s['us_only_rate'])} | {_fmt(s['miss_rate'], 3)} | {_fmt(s['false_reassurance'], 3)} |"
                )
    notes = []
    for method, per_rule in results.items():
        for rule, per_delta in per_rule.items():
            for dkey, s in per_delta.items():
                if s["infinite_radius_splits"]:
                    notes.append(
                        f"- {METHODS[method]}, rule {rule}, delta {dkey}: the radius was infinite (k > n) in "
                        f"{s['infinite_radius_splits']}/{s['splits']} splits (mean n = {s['n_calibration_mean']:.0f}; "
                        f"a finite bound needs n >= {min_calibration_size(dkey)} at this delta, more for the "
                        "per-measurement deltas of Bonferroni); there the policy can never say us_sufficient."
                    )
    if notes:
        lines += ["", "## Infinite bounds", ""] + notes
    lines += [
        "",
        "## Notes",
        "",
        "- Decision curves: U(lambda) = -lambda P(X-ray) - mu P(miss), mu in "
        + ", ".join(f"{m:g}" for m in report["decision_curves"]["mu"])
        + "; equivalently U = -mu pi + (mu - lambda) NB(p_t = lambda / mu), NB the net benefit of "
        '"defer to X-ray" with truly abnormal hips as events (report.json: decision_curves).',
        (
            "- Heatmaps (heatmap_<rule>.png) use separate per-sweep calibration with (delta_alpha, delta_cov); only "
            "the joint mode turns a single delta into a rule-level guarantee."
        ),
        (
            "- Any delta picked from this report must be chosen on these held-out numbers, then recalibrated on the "
            "site's calibration data; choosing delta by utility on the calibration data voids the guarantee."
        ),
    ]
    if report["files"]:
        lines += ["", "## Plots", ""] + [f"- ![{f}]({f})" for f in report["files"]]
    return "\n".join(lines) + "\n"


def _plots(report: dict, out_dir: Path, rules: Sequence[str], deltas: Sequence[float]) -> list[str]:
    """PNG plots with the object API of matplotlib (no pyplot state, Agg canvas, safe in threads/headless)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = report["results"]
    files = []
    colors = {
        "ours": "C0",
        "ours_abnormal": "C2",
        "bonferroni_sweep": "C4",
        "separate_sweep": "C5",
        "paper_frame": "C1",
        "paper_cine_any_frame": "C3",
        "decision": "C6",
        "decision_abnormal": "C7",
    }
    d = np.array(deltas)

    def save(fig, name):
        FigureCanvasAgg(fig)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        files.append(name)

    fig = Figure(figsize=(4.2 * len(rules), 3.8))
    for i, rule in enumerate(rules):
        ax = fig.add_subplot(1, len(rules), i + 1)
        ax.plot(d, 1 - d, "k--", lw=1, label="1 - delta")
        for method, label in METHODS.items():
            y = [results[method][rule][_key(x)]["coverage_joint"] for x in deltas]
            ax.plot(d, [np.nan if v is None else v for v in y], "o-", color=colors[method], label=label, ms=3)
        ax.set_title(f"rule {rule}: joint coverage")
        ax.set_xlabel("delta")
        ax.set_ylim(0.4, 1.01)
    fig.axes[0].legend(fontsize=6, loc="lower left")
    save(fig, "coverage.png")

    fig = Figure(figsize=(4.2 * len(rules), 7))
    for i, rule in enumerate(rules):
        ax = fig.add_subplot(2, len(rules), i + 1)
        ax2 = fig.add_subplot(2, len(rules), len(rules) + i + 1)
        for method in ("ours", "ours_abnormal", "bonferroni_sweep", "paper_frame", "paper_cine_any_frame"):
            s = [results[method][rule][_key(x)] for x in deltas]
            ax.plot(d, [v["us_only_rate"] or 0 for v in s], "o-", color=colors[method], label=METHODS[method], ms=3)
            ax2.plot(
                d, [np.nan if v["miss_rate"] is None else v["miss_rate"] for v in s], "o-", color=colors[method], ms=3
            )
        ax2.plot(d, d, "k--", lw=1, label="delta")
        ax.set_title(f"rule {rule}: US-only rate")
        ax2.set_title(f"rule {rule}: miss rate among abnormal")
        ax2.set_xlabel("delta")
    fig.axes[0].legend(fontsize=6)
    save(fig, "tradeoff.png")

    for rule, h in report["heatmaps"].items():
        fig = Figure(figsize=(10, 4.2))
        for i, (key, title) in enumerate((("us_only_rate", "US-only rate"), ("miss_rate", "miss rate (abnormal)"))):
            ax = fig.add_subplot(1, 2, i + 1)
            grid = np.array(h[key])
            im = ax.imshow(grid, origin="lower", cmap="viridis" if i == 0 else "magma")
            ax.set_xticks(range(len(h["delta_cov"])), [f"{x:g}" for x in h["delta_cov"]], fontsize=7)
            ax.set_yticks(range(len(h["delta_alpha"])), [f"{x:g}" for x in h["delta_alpha"]], fontsize=7)
            ax.set_xlabel("delta_cov")
            ax.set_ylabel("delta_alpha")
            ax.set_title(f"rule {rule}: {title}")
            for (r, c), v in np.ndenumerate(grid):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
            fig.colorbar(im, ax=ax, shrink=0.8)
        save(fig, f"heatmap_{rule}.png")

    curves = report["decision_curves"]
    lam = np.array(curves["lambda"])
    mus = curves["mu"]
    rule_colors = {r: f"C{i}" for i, r in enumerate(rules)}
    fig = Figure(figsize=(4.2 * len(mus), 3.8))
    for i, mu in enumerate(mus):
        ax = fig.add_subplot(1, len(mus), i + 1)
        ax.plot(lam, curves["reference"]["xray_all"][_key(mu)], "k-", lw=1.5, label="X-ray for all")
        for rule in rules:
            ax.axhline(curves["reference"]["us_all"][rule][_key(mu)], color=rule_colors[rule], ls=":", lw=1)
            for j, delta in enumerate(deltas):
                c = curves["policies"][f"ours|{rule}|{_key(delta)}"]
                if c:
                    ax.plot(
                        lam,
                        c["utility"][_key(mu)],
                        color=rule_colors[rule],
                        alpha=0.3 + 0.7 * (j + 1) / len(deltas),
                        lw=1,
                        label=f"{rule}, delta {delta:g}" if mu == mus[0] else None,
                    )
        ax.set_title(f"U(lambda), mu = {mu:g} (ours)")
        ax.set_xlabel("lambda (cost of an X-ray)")
    fig.axes[0].legend(fontsize=5, ncol=2)
    save(fig, "decision_curves.png")

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    pt = np.array(curves["p_t"])
    for rule in rules:
        prev = results["ours"][rule][_key(deltas[0])]["prevalence"] or 0.0
        ax.plot(pt, prev - (1 - prev) * pt / (1 - pt), color=rule_colors[rule], ls=":", lw=1)
        for j, delta in enumerate(deltas):
            c = curves["policies"][f"ours|{rule}|{_key(delta)}"]
            if c:
                ax.plot(
                    pt,
                    c["net_benefit"],
                    color=rule_colors[rule],
                    alpha=0.3 + 0.7 * (j + 1) / len(deltas),
                    lw=1,
                    label=f"{rule}, delta {delta:g}",
                )
    ax.axhline(0, color="k", lw=1)
    ax.set_ylim(-0.1, 0.6)
    ax.set_xlabel("threshold probability p_t = lambda / mu")
    ax.set_ylabel("net benefit of deferring to X-ray")
    ax.set_title("net benefit (dotted: X-ray for all)")
    ax.legend(fontsize=5, ncol=2)
    save(fig, "net_benefit.png")
    return files
