"""Site adaptation, the pure half (numpy only): refit a bundle's statistics and bounds on one site's frames.

What ``sonogate adapt`` fits, given the frames the bundle's own model produced on the site (``SiteFrames``):

1. **Out-of-distribution statistics** (``refit_ood``): the Mahalanobis statistics of the image descriptor (all
   frames) and of the encoder features (standard-plane frames when labelled, else all), with a threshold at a
   high percentile of *cross-fitted* distances: each frame's distance under statistics fitted without its infant
   (group), so the threshold is not optimistic. Unlabelled frames suffice.
2. **A ridge head on the features** (``fit_ridge_head``, optional): per measurement, a ridge regression of the
   frame labels on the frozen encoder's features, chosen against the graph's own output by grouped
   cross-validation (folds by infant) of the frame MAE; kept only for the measurements where it wins.
3. **Affine correction and joint bounds** (``fit_site_calibration``): infants split into a fit part (head, affine
   and max-score scales, from out-of-fold head predictions) and a calibration part (the conformal radius on the
   sweeps' aggregated predictions, the runtime's frame rule), exactly ``sonogate.calibration.fit``'s per-sweep
   joint rule. The head never sees a calibration sweep, so the split-conformal guarantee holds for the site.
4. **A held-out check** (``held_out_check``): K folds by infant; the whole procedure (1-3) is refitted without the
   fold and judged on the fold's sweeps (joint coverage, US-only rate, false reassurances with a Wilson interval).

Refusals (``SiteDataError``, one line with the number needed): too few usable calibration sweeps for delta
(k > n), too few usable fit sweeps, a degenerate alpha range in the fit part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sonogate.calibration.aggregate import AggregationRule, aggregate_frames
from sonogate.calibration.calfile import CalibrationFile
from sonogate.calibration.conformal import as_fraction, conformal_rank, min_calibration_size
from sonogate.calibration.fit import (
    FitOptions,
    PredictionTable,
    aggregate_table,
    apply_calibration_array,
    calibrate_units,
    group_rows,
    group_split,
    guarantee_text,
)
from sonogate.calibration.ood import fit_ood, mahalanobis
from sonogate.calibration.rules import rule_holds_array, rule_measurements
from sonogate.errors import DataError
from sonogate.measurements import DEFAULT_THRESHOLDS, RULES

RIDGE_LAMBDAS = tuple(float(x) for x in np.logspace(-1, 4, 11))  # per standardised feature, times n_frames
MIN_RIDGE_FRAMES = 40  # labelled standard-plane frames a ridge head needs (below: graph output + affine only)
MIN_RIDGE_GROUPS = 4  # infants a grouped cross-validation needs
MIN_FIT_SWEEPS = 5  # usable sweeps the affine / scales need
MIN_ALPHA_SPREAD = 3.0  # deg: standard deviation of the fit sweeps' true alpha below which the affine is degenerate
MIN_OOD_FRAMES = 20
OOD_PERCENTILE = 99.5


class SiteDataError(DataError):
    """The site data cannot support the requested adaptation (the message says what more is needed)."""


@dataclass
class SiteFrames:
    """What a bundle's model made of a site's frames, one row per frame, in time order within a sweep.

    ``graph`` (n, m) the graph's own measurements; ``features`` (n, d) encoder features (None: the graph has
    none); ``descriptors`` (n, k) image statistics (None: the bundle has no image check); ``plane_probability``
    (n,) (1 where the model has no quality output); ``true`` (n, m) frame labels (NaN: unlabelled);
    ``hip_true`` (n, m) the hip-level truth when the data has it (phantom ``hip_*`` columns), else None (the
    sweep's truth is then the median of its frames' labels); ``standard_plane`` (n,) bool label (True where
    unknown); ``labelled`` (n,) rows that carry labels; ``sweeps`` / ``subjects`` (n,) str.
    """

    names: tuple[str, ...]
    graph: np.ndarray
    features: np.ndarray | None
    descriptors: np.ndarray | None
    plane_probability: np.ndarray
    true: np.ndarray
    hip_true: np.ndarray | None
    standard_plane: np.ndarray
    labelled: np.ndarray
    sweeps: np.ndarray
    subjects: np.ndarray
    sources: np.ndarray | None = None  # (n,) file of each frame, for the data hash and messages

    def __len__(self) -> int:
        return len(self.sweeps)

    def subset(self, mask: np.ndarray) -> SiteFrames:
        mask = np.asarray(mask)
        pick = (lambda a: None if a is None else a[mask])
        return SiteFrames(self.names, self.graph[mask], pick(self.features), pick(self.descriptors),
                          self.plane_probability[mask], self.true[mask], pick(self.hip_true),
                          self.standard_plane[mask], self.labelled[mask], self.sweeps[mask], self.subjects[mask],
                          pick(self.sources))

    def save(self, path) -> None:
        """Write the frames to an ``.npz`` (a benchmark reuses one model pass for many adaptations)."""
        arrays = {k: v for k, v in {
            "names": np.array(self.names), "graph": self.graph, "features": self.features,
            "descriptors": self.descriptors, "plane_probability": self.plane_probability, "true": self.true,
            "hip_true": self.hip_true, "standard_plane": self.standard_plane, "labelled": self.labelled,
            "sweeps": self.sweeps.astype(str), "subjects": self.subjects.astype(str),
            "sources": None if self.sources is None else self.sources.astype(str)}.items() if v is not None}
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path) -> SiteFrames:
        with np.load(path, allow_pickle=False) as data:
            get = (lambda key: data[key] if key in data.files else None)
            return cls(tuple(str(n) for n in data["names"]), data["graph"], get("features"), get("descriptors"),
                       data["plane_probability"], data["true"], get("hip_true"), data["standard_plane"],
                       data["labelled"], data["sweeps"], data["subjects"], get("sources"))


# ------------------------------------------------------------------------------------------ OOD statistics
def _group_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index (0..folds-1) of every row, whole groups per fold, groups dealt in a seeded random order."""
    uniq, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of_group = np.empty(len(uniq), dtype=np.int64)
    fold_of_group[order] = np.arange(len(uniq)) % max(1, folds)
    return fold_of_group[inverse]


def cross_fitted_ood(x: np.ndarray, groups: np.ndarray, percentile: float = OOD_PERCENTILE, folds: int = 5,
                     seed: int = 0) -> dict[str, Any]:
    """``fit_ood`` statistics of all rows of ``x`` (n, d), thresholded at ``percentile`` of cross-fitted distances
    (each row's distance under statistics fitted without its group's fold). SiteDataError with fewer than
    MIN_OOD_FRAMES rows or fewer than 2 groups."""
    x = np.asarray(x, dtype=np.float64)
    n_groups = len(np.unique(np.asarray(groups).astype(str)))
    if len(x) < MIN_OOD_FRAMES or n_groups < 2:
        raise SiteDataError(f"out-of-distribution statistics need at least {MIN_OOD_FRAMES} frames from 2 sweeps "
                            f"or infants; the site data has {len(x)} frames from {n_groups}")
    fold = _group_folds(groups, min(folds, n_groups), seed)
    held_out = np.empty(len(x))
    for f in np.unique(fold):
        inside = fold != f
        stats = fit_ood(x[inside], x[inside])
        held_out[~inside] = mahalanobis(x[~inside], stats["mean"], stats["precision"])
    stats = fit_ood(x, x, percentile=percentile)
    stats["threshold"] = float(np.percentile(held_out, percentile))
    stats["n_heldout"] = len(x)
    stats["threshold_source"] = f"{percentile:g}th percentile of distances cross-fitted over {int(fold.max()) + 1} folds"
    return stats


def refit_ood(frames: SiteFrames, seed: int = 0) -> dict[str, dict[str, Any] | None]:
    """New OOD statistics of the site: {"features": stats or None, "image": stats or None}. Feature statistics are
    fitted on the labelled standard-plane frames when there are enough of them, else on every frame (as the
    export fits them on training standard-plane frames)."""
    groups = frames.subjects
    out: dict[str, dict[str, Any] | None] = {"features": None, "image": None}
    if frames.descriptors is not None:
        out["image"] = cross_fitted_ood(frames.descriptors, groups, seed=seed)
        out["image"]["fitted_on"] = f"image statistics of {len(frames)} site frames"
    if frames.features is not None:
        standard = frames.labelled & frames.standard_plane
        use = standard if standard.sum() >= MIN_OOD_FRAMES and len(np.unique(groups[standard])) >= 2 \
            else np.ones(len(frames), dtype=bool)
        out["features"] = cross_fitted_ood(frames.features[use], groups[use], seed=seed)
        out["features"]["fitted_on"] = (f"features of {int(use.sum())} site "
                                        + ("labelled standard-plane frames" if use is standard else "frames"))
    return out


def ood_flags(frames: SiteFrames, stats: Mapping[str, Mapping[str, Any] | None]) -> np.ndarray:
    """(n,) bool: the frame fails either check under ``stats`` (as ``FrameResult.out_of_distribution``)."""
    flags = np.zeros(len(frames), dtype=bool)
    for key, x in (("features", frames.features), ("image", frames.descriptors)):
        s = stats.get(key)
        if s is None or x is None:
            continue
        d = mahalanobis(x, s["mean"], s["precision"])
        flags |= ~(d <= s["threshold"])
    return flags


# ------------------------------------------------------------------------------------------ ridge head
@dataclass
class RidgeHead:
    """value_j = weights[j] . features + bias[j] for the measurements in ``names`` (standardisation folded in)."""

    names: tuple[str, ...]
    weights: np.ndarray  # (k, d)
    bias: np.ndarray  # (k,)
    lambdas: dict[str, float]
    cv: dict[str, Any] = field(default_factory=dict)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float64) @ self.weights.T + self.bias

    def apply(self, graph: np.ndarray, features: np.ndarray | None, names: Sequence[str]) -> np.ndarray:
        """``graph`` (n, m) with the head's measurements replaced by its predictions on ``features``."""
        out = np.array(graph, dtype=np.float64)
        if not self.names:
            return out
        values = self.predict(features)
        for j, name in enumerate(self.names):
            out[:, list(names).index(name)] = values[:, j]
        return out


class _RidgePath:
    """Ridge solutions for every lambda of one training set (one decomposition), features standardised on that
    set. With fewer frames than features (the usual case: ~100 frames, 512 features) the thin SVD comes from the
    eigendecomposition of the n x n Gram matrix, far cheaper than an SVD of the n x d matrix."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.mean = x.mean(0)
        self.scale = x.std(0)
        self.scale[self.scale < 1e-8] = 1.0
        z = (x - self.mean) / self.scale
        self.y_mean = np.nanmean(y, axis=0)
        if z.shape[0] < z.shape[1]:
            eigval, eigvec = np.linalg.eigh(z @ z.T)
            keep = eigval > 1e-9 * max(float(eigval.max()), 1e-300)
            self.s = np.sqrt(eigval[keep])
            self.u = eigvec[:, keep]
            self.vt = (z.T @ self.u / self.s).T
        else:
            self.u, self.s, self.vt = np.linalg.svd(z, full_matrices=False)
        self.n = len(x)
        self.y = y

    def coefficients(self, lam: float, j: int) -> tuple[np.ndarray, float]:
        """(weights on raw features (d,), bias) for measurement column ``j`` at ``lam`` (times n)."""
        yc = self.y[:, j] - self.y_mean[j]
        shrink = self.s / (self.s**2 + lam * self.n)
        w_std = self.vt.T @ (shrink * (self.u.T @ yc))
        w = w_std / self.scale
        return w, float(self.y_mean[j] - w @ self.mean)


def fit_ridge_head(features: np.ndarray, targets: np.ndarray, graph: np.ndarray, groups: np.ndarray,
                   names: Sequence[str], folds: int = 5, seed: int = 0,
                   lambdas: Sequence[float] = RIDGE_LAMBDAS) -> tuple[RidgeHead | None, np.ndarray, dict[str, Any]]:
    """Choose, per measurement, between the graph's output (with a frame-level affine) and a ridge head on the
    features, by grouped cross-validation of the frame MAE.

    Inputs: labelled standard-plane frames' ``features`` (n, d), ``targets`` (n, m) labels (a frame whose label
    of a measurement is missing is left out of that measurement's fit), ``graph`` (n, m) outputs, ``groups`` (n,)
    infants. Output: (head over the measurements where ridge won, or None; out-of-fold predictions (n, m) of the
    chosen predictor, affine-free for the graph; info with every candidate's CV MAE).
    """
    n_groups = len(np.unique(groups))
    names = list(names)
    oof_graph = np.array(graph, dtype=np.float64)
    info: dict[str, Any] = {"n_frames": len(features), "n_groups": n_groups, "folds": 0, "measurements": {}}
    if len(features) < MIN_RIDGE_FRAMES or n_groups < MIN_RIDGE_GROUPS:
        info["skipped"] = (f"a ridge head needs {MIN_RIDGE_FRAMES} labelled standard-plane frames from "
                           f"{MIN_RIDGE_GROUPS} infants; the fit part has {len(features)} from {n_groups}")
        return None, oof_graph, info
    k = min(folds, n_groups)
    info["folds"] = k
    fold = _group_folds(groups, k, seed)
    features = np.asarray(features, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    oof_ridge = np.full((len(features), len(lambdas), len(names)), np.nan)
    oof_affine = np.full((len(features), len(names)), np.nan)
    for f in range(k):
        train, test = fold != f, fold == f
        for j in range(len(names)):
            ok = train & np.isfinite(targets[:, j])
            if ok.sum() < 10:
                continue
            path = _RidgePath(features[ok], targets[ok][:, [j]])
            for li, lam in enumerate(lambdas):
                w, b = path.coefficients(lam, 0)
                oof_ridge[test, li, j] = features[test] @ w + b
            g = graph[ok, j]
            good = np.isfinite(g)
            if good.sum() >= 3 and np.ptp(g[good]) > 1e-9:
                a1, b1 = np.polyfit(g[good], targets[ok][good, j], 1)
                oof_affine[test, j] = a1 * graph[test, j] + b1
    chosen, weights, biases, lambdas_used = [], [], [], {}
    oof = oof_graph.copy()
    for j, name in enumerate(names):
        y = targets[:, j]
        ok = np.isfinite(y)
        if ok.sum() < 10:
            continue
        graph_mae = float(np.nanmean(np.abs(oof_affine[ok, j] - y[ok])))
        ridge_mae = [float(np.nanmean(np.abs(oof_ridge[ok, li, j] - y[ok]))) for li in range(len(lambdas))]
        best = int(np.nanargmin(ridge_mae))
        info["measurements"][name] = {"graph_affine_cv_mae": round(graph_mae, 4),
                                      "ridge_cv_mae": {f"{lam:g}": round(m, 4) for lam, m in zip(lambdas, ridge_mae)},
                                      "best_lambda": lambdas[best], "best_ridge_cv_mae": round(ridge_mae[best], 4)}
        if not (ridge_mae[best] < graph_mae) and math.isfinite(graph_mae):
            info["measurements"][name]["chosen"] = "graph"
            continue
        info["measurements"][name]["chosen"] = "ridge"
        path = _RidgePath(features[ok], y[ok][:, None])
        w, b = path.coefficients(lambdas[best], 0)
        chosen.append(name)
        weights.append(w)
        biases.append(b)
        lambdas_used[name] = lambdas[best]
        oof[:, j] = oof_ridge[:, best, j]
        # frames without a label of this measurement were never predicted out of fold: use the final head
        missing = ~np.isfinite(oof[:, j])
        oof[missing, j] = features[missing] @ w + b
    if not chosen:
        return None, oof_graph, info
    head = RidgeHead(tuple(chosen), np.array(weights), np.array(biases), lambdas_used, cv=info)
    return head, oof, info


# ------------------------------------------------------------------------------------------ calibration
@dataclass(frozen=True)
class SiteOptions:
    """``delta`` guaranteed P(false reassurance); ``rule`` alpha | or | and; ``ridge`` "auto" | "off";
    ``affine`` fit the affine correction (with ``fit_fraction`` of the infants; without it every usable sweep
    calibrates and no head is fitted); ``seed`` of the split; ``check_folds`` of the held-out check (0: none);
    ``aggregation`` the frame rule (the base calibration's)."""

    delta: Any = 0.1
    rule: str = "and"
    ridge: str = "auto"
    affine: bool = True
    fit_fraction: float = 0.5
    seed: int = 0
    check_folds: int = 5
    aggregation: AggregationRule = field(default_factory=AggregationRule)
    thresholds: Mapping[str, float] | None = None


@dataclass
class SiteAdaptation:
    """The result of ``adapt_site``: new OOD statistics, an optional head, the calibration and the check."""

    ood: dict[str, dict[str, Any] | None]
    head: RidgeHead | None
    calibration: CalibrationFile
    check: dict[str, Any] | None
    summary: dict[str, Any]


def _table(frames: SiteFrames, pred: np.ndarray, quality: np.ndarray) -> PredictionTable:
    truth = frames.hip_true if frames.hip_true is not None else frames.true
    return PredictionTable(ids=np.arange(len(frames)).astype(str), groups=frames.sweeps, names=frames.names,
                           pred=pred, true=truth, quality=quality, subjects=frames.subjects)


def site_quality(frames: SiteFrames, ood: Mapping[str, Mapping[str, Any] | None]) -> np.ndarray:
    """The frame quality the runtime would use: plane probability, 0 when the frame is out of distribution."""
    return np.where(ood_flags(frames, ood), 0.0, frames.plane_probability)


def _needed_message(delta, n_cal: int, n_usable: int, n_total: int, affine: bool, fit_fraction: float) -> str:
    need = min_calibration_size(delta)
    share = (1 - fit_fraction) if affine else 1.0
    total_needed = math.ceil(need / share)
    usable = "" if n_usable == n_total else f" ({n_total - n_usable} of {n_total} had too few usable frames)"
    how = (f"{n_cal} of {n_usable} usable sweeps would calibrate after the correction's share of infants"
           if affine else f"{n_cal} usable sweeps calibrate")
    return (f"too few sweeps for delta {float(as_fraction(delta)):g}: a finite bound needs k = ceil((n+1)(1-delta))"
            f" <= n, i.e. at least {need} calibration sweeps; {how}{usable}: label at least {total_needed} usable "
            f"sweeps in all (about {max(0, total_needed - n_usable)} more)"
            + (", or pass --no-affine --ridge off to calibrate on every sweep" if affine and n_usable >= need else ""))


def fit_site_calibration(frames: SiteFrames, ood: Mapping[str, Mapping[str, Any] | None], options: SiteOptions,
                         data: dict[str, Any] | None = None, bundle_sha256: str | None = None,
                         ) -> tuple[RidgeHead | None, CalibrationFile, dict[str, Any]]:
    """Head, affine and joint per-sweep bounds from the labelled frames (infants split fit / calibration).

    Output: (head or None, CalibrationFile, info). SiteDataError (with the number needed) when the fit part or the
    calibration part cannot support the fit."""
    delta = as_fraction(options.delta)
    if options.rule not in RULES:
        raise SiteDataError(f"unknown rule {options.rule!r} (choose from {', '.join(RULES)})")
    labelled = frames.subset(frames.labelled)
    if len(labelled) == 0:
        raise SiteDataError("the site data has no labelled frames: label sweeps (sonogate label) to recalibrate")
    quality = site_quality(labelled, ood)
    n_sweeps_total = len(np.unique(labelled.sweeps))
    if options.affine:
        fit_mask, cal_mask = group_split(labelled.subjects, [options.fit_fraction, 1 - options.fit_fraction],
                                         options.seed)
    else:
        fit_mask, cal_mask = np.zeros(len(labelled), dtype=bool), np.ones(len(labelled), dtype=bool)
    head, head_info = None, None
    pred = labelled.graph.copy()  # what the adapted bundle will output on every labelled frame
    fit_pred = labelled.graph.copy()  # what the affine and the scales are fitted on (out of fold where it can)
    if options.affine and options.ridge != "off" and labelled.features is not None:
        fit = labelled.subset(fit_mask)
        train = fit.standard_plane & np.any(np.isfinite(fit.true), axis=1)
        head, oof, head_info = fit_ridge_head(fit.features[train], fit.true[train], fit.graph[train],
                                              fit.subjects[train], labelled.names, seed=options.seed)
        if head is not None:
            pred = head.apply(labelled.graph, labelled.features, labelled.names)
            fit_pred = pred.copy()
            fit_pred[np.flatnonzero(fit_mask)[train]] = oof
    table = _table(labelled, fit_pred, quality)
    sweeps_fit, agg_fit = aggregate_table(table.__class__(
        ids=table.ids[fit_mask], groups=table.groups[fit_mask], names=table.names, pred=table.pred[fit_mask],
        true=table.true[fit_mask], quality=table.quality[fit_mask], subjects=table.subjects[fit_mask]),
        options.aggregation) if fit_mask.any() else (None, {"n_groups": 0, "n_groups_usable": 0})
    cal_table = _table(labelled.subset(cal_mask), pred[cal_mask], quality[cal_mask])
    sweeps_cal, agg_cal = aggregate_table(cal_table, options.aggregation)
    n_usable = int(agg_cal["n_groups_usable"] + agg_fit["n_groups_usable"])
    n_cal = len(sweeps_cal)
    if conformal_rank(n_cal, delta) > n_cal:
        raise SiteDataError(_needed_message(delta, n_cal, n_usable, n_sweeps_total, options.affine,
                                            options.fit_fraction))
    if options.affine:
        n_fit = int(agg_fit["n_groups_usable"])
        if n_fit < MIN_FIT_SWEEPS:
            raise SiteDataError(f"the affine correction needs at least {MIN_FIT_SWEEPS} usable sweeps in its share "
                                f"of infants; the site data gives {n_fit} (of {n_sweeps_total} labelled sweeps): label "
                                f"at least {math.ceil(MIN_FIT_SWEEPS / options.fit_fraction)} usable sweeps, or pass "
                                "--no-affine")
        alpha = sweeps_fit.true[:, list(frames.names).index("alpha_deg")] if "alpha_deg" in frames.names else None
        if alpha is not None:
            spread = float(np.nanstd(alpha))
            if not spread >= MIN_ALPHA_SPREAD:
                raise SiteDataError(f"the labelled sweeps cannot support an affine correction: their true alpha spans "
                                    f"{np.nanmin(alpha):.1f}-{np.nanmax(alpha):.1f} deg (sd {spread:.1f}, need >= "
                                    f"{MIN_ALPHA_SPREAD:g}); label hips across the range, abnormal ones (alpha < 60) "
                                    "included, or pass --no-affine")
    measurements, joint, info = calibrate_units(
        frames.names, sweeps_fit.pred if sweeps_fit is not None else np.zeros((0, len(frames.names))),
        sweeps_fit.true if sweeps_fit is not None else np.zeros((0, len(frames.names))),
        sweeps_cal.pred, sweeps_cal.true, delta=delta, rule=options.rule, mode="joint", affine=options.affine,
        thresholds=options.thresholds)
    thresholds = dict(DEFAULT_THRESHOLDS)
    thresholds.update({k: float(v) for k, v in (options.thresholds or {}).items()})
    opts = FitOptions(delta=delta, mode="joint", affine=options.affine, seed=options.seed,
                      affine_fraction=options.fit_fraction if options.affine else 0.5, bundle_sha256=bundle_sha256,
                      data=data, thresholds=thresholds)
    provenance = dict(data or {})
    provenance.update({"split_by": "subject", "seed": int(options.seed), "affine": bool(options.affine),
                       "affine_fraction": float(options.fit_fraction) if options.affine else 0.0,
                       "n_groups": n_sweeps_total, "n_groups_usable": n_usable,
                       "n_groups_affine": int(agg_fit["n_groups_usable"]), "n_groups_calibration": n_cal,
                       "n_calibration_scores": info["n_scores"], "head": None if head is None else list(head.names)})
    cal = opts.calibration_file(
        task="hip_us", rule=options.rule, thresholds=thresholds, measurements=measurements,
        aggregation=options.aggregation.to_json(), joint=joint, provenance=provenance,
        statement=guarantee_text(options.rule, "joint", float(delta), "marginal"), conditional_on="all hips",
        unit=options.aggregation.unit, min_n_for_finite=min_calibration_size(delta))
    return head, cal, {"head": head_info, "n_fit_sweeps": int(agg_fit["n_groups_usable"]), "n_cal_sweeps": n_cal,
                       "n_usable_sweeps": n_usable, "n_sweeps": n_sweeps_total}


# ------------------------------------------------------------------------------------------ evaluation
def sweep_decisions(frames: SiteFrames, ood: Mapping[str, Mapping[str, Any] | None], head: RidgeHead | None,
                    calibration: CalibrationFile) -> dict[str, np.ndarray]:
    """Per sweep of ``frames`` (labelled): what the adapted bundle decides, by the runtime's frame rule.

    Output arrays over all sweeps: ``sweeps``, ``usable`` (enough good frames), ``reassured`` (the rule holds on
    the bounds), ``abnormal`` (the rule fails on the truths), ``covered`` (every rule bound valid), ``pred`` /
    ``true`` (corrected aggregated value and truth, NaN when unusable) in ``frames.names`` order."""
    pred = frames.graph if head is None else head.apply(frames.graph, frames.features, frames.names)
    quality = site_quality(frames, ood)
    rule = AggregationRule.from_json(calibration.aggregation)
    truth = frames.hip_true if frames.hip_true is not None else frames.true
    names = list(frames.names)
    all_sweeps, rows_of = group_rows(frames.sweeps.astype(str))
    n = len(all_sweeps)
    true = np.full((n, len(names)), np.nan)
    aggregated = np.full((n, len(names)), np.nan)
    usable = np.zeros(n, dtype=bool)
    for i, rows in enumerate(rows_of):
        agg = aggregate_frames(pred[rows], quality[rows], rule)  # the runtime's frame rule
        if agg is not None:
            aggregated[i], usable[i] = agg, True
        t = truth[rows]
        for j in range(len(names)):
            column = t[:, j][np.isfinite(t[:, j])]
            true[i, j] = np.median(column) if column.size else np.nan
    corrected_all, bounds_all = apply_calibration_array(calibration.measurements, names, aggregated)
    bounds_all[~usable] = np.nan
    rule_names = rule_measurements(calibration.rule)
    bound_map = {m: np.where(usable, bounds_all[:, names.index(m)], -np.inf) for m in rule_names}
    reassured = usable & rule_holds_array(calibration.rule, bound_map, calibration.thresholds)
    truths = {m: true[:, names.index(m)] for m in rule_names}
    abnormal = ~rule_holds_array(calibration.rule, truths, calibration.thresholds)
    covered = np.ones(n, dtype=bool)
    for m in rule_names:
        j = names.index(m)
        side = calibration.measurements[m].side
        valid = (true[:, j] >= bounds_all[:, j]) if side == "lower" else (true[:, j] <= bounds_all[:, j])
        covered &= valid
    return {"sweeps": all_sweeps, "usable": usable, "reassured": reassured, "abnormal": abnormal,
            "covered": covered, "pred": corrected_all, "true": true}


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float | None, float | None]:
    """Wilson score interval (95 % by default) of a proportion k / n; (None, None) when n == 0."""
    if n == 0:
        return None, None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def decision_summary(decisions: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, Any]:
    """Counts and rates of ``sweep_decisions`` output: sweeps, usable, US-only, false reassurances (with a Wilson
    interval), coverage of the usable sweeps' joint bounds, alpha MAE of the usable sweeps."""
    n = len(decisions["sweeps"])
    usable = decisions["usable"]
    reassured = decisions["reassured"]
    false = reassured & decisions["abnormal"]
    low, high = wilson_interval(int(false.sum()), n)
    out = {"n_sweeps": n, "n_usable": int(usable.sum()), "n_reassured": int(reassured.sum()),
           "n_abnormal": int(decisions["abnormal"].sum()), "n_false_reassurance": int(false.sum()),
           "us_only_rate": float(reassured.mean()) if n else None,
           "false_reassurance_rate": float(false.mean()) if n else None, "false_reassurance_ci95": [low, high],
           "joint_coverage": float(decisions["covered"][usable].mean()) if usable.any() else None}
    if "alpha_deg" in names:
        j = list(names).index("alpha_deg")
        err = np.abs(decisions["pred"][usable, j] - decisions["true"][usable, j])
        out["alpha_mae_deg"] = float(np.nanmean(err)) if err.size else None
    return out


def held_out_check(frames: SiteFrames, options: SiteOptions, folds: int | None = None) -> dict[str, Any]:
    """K folds by infant: OOD, head, affine and bounds refitted without the fold, judged on its sweeps. A fold
    whose remaining data cannot support the fit counts its sweeps as not reassured (and is listed)."""
    labelled = frames.subset(frames.labelled)
    infants = np.unique(labelled.subjects)
    k = min(folds or options.check_folds, len(infants))
    if k < 2:
        return {"folds": 0, "note": "fewer than 2 infants: no held-out check"}
    fold = _group_folds(labelled.subjects, k, options.seed + 1)
    parts, refused = [], []
    for f in range(k):
        train, test = labelled.subset(fold != f), labelled.subset(fold == f)
        try:
            ood = refit_ood(train, seed=options.seed)
            head, cal, _ = fit_site_calibration(train, ood, options)
            parts.append(sweep_decisions(test, ood, head, cal))
        except SiteDataError as exc:
            refused.append({"fold": f, "reason": str(exc)})
            n_test = len(np.unique(test.sweeps))
            decisions = {"sweeps": np.unique(test.sweeps), "usable": np.zeros(n_test, bool),
                         "reassured": np.zeros(n_test, bool), "covered": np.zeros(n_test, bool),
                         "pred": np.full((n_test, len(frames.names)), np.nan),
                         "true": np.full((n_test, len(frames.names)), np.nan)}
            tt = _table(test, test.graph, np.ones(len(test)))
            agg, _ = aggregate_table(tt, AggregationRule(quality_threshold=0.0, min_frames=1, window=10**6))
            rule_names = rule_measurements(options.rule)
            decisions["abnormal"] = ~rule_holds_array(options.rule, {m: agg.true[:, list(frames.names).index(m)]
                                                                      for m in rule_names}, options.thresholds)
            parts.append(decisions)
    merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    summary = decision_summary(merged, frames.names)
    summary.update({"folds": k, "unit": "infant", "refused_folds": refused})
    return summary


def adapt_site(frames: SiteFrames, options: SiteOptions, data: dict[str, Any] | None = None) -> SiteAdaptation:
    """The whole adaptation of ``frames``: OOD refit (all frames), then, when some frames are labelled, the head,
    affine and bounds, and the held-out check. Without labelled frames ``calibration`` is None (the adapted bundle
    then measures but never recommends)."""
    ood = refit_ood(frames, seed=options.seed)
    if not frames.labelled.any():
        return SiteAdaptation(ood=ood, head=None, calibration=None, check=None,  # type: ignore[arg-type]
                              summary={"labelled_frames": 0})
    head, cal, info = fit_site_calibration(frames, ood, options, data=data)
    check = held_out_check(frames, options) if options.check_folds else None
    info["labelled_frames"] = int(frames.labelled.sum())
    info["n_infants"] = len(np.unique(frames.subjects[frames.labelled]))
    return SiteAdaptation(ood=ood, head=head, calibration=cal, check=check, summary=info)
