"""Fit calibration.json from a table of predictions and truths (any model's output).

Pipeline (docs/calibration.md):

1. Frames are reduced per group (sweep) by the fixed rule of ``aggregate.py`` (quality-gated median); the truth
   of a group is its hip-level truth (median of the rows' truths, which should all be equal).
2. Groups are split by *subject* (infant, when the table has one, else by group) - never by frame - into an
   affine split and a conformal split. ``affine=False`` skips the split: a = 1, b = 0 and every group calibrates.
3. Affine correction ``y ~ a * yhat + b`` (least squares) on the affine split.
4. One-sided conformal radius on the conformal split, per mode:
   ``separate`` each measurement at delta (the paper's mode; does not bound the rule),
   ``bonferroni`` each rule measurement at delta / m, ``joint`` the max of scaled scores over the rule's
   measurements at delta, scales fixed before calibration (affine split's mean absolute residual, or the seed
   paper's MAE when there is no affine split). Measurements outside the rule are calibrated separately at delta.
5. ``guarantee="abnormal"`` calibrates on the truly abnormal groups only (rule fails on the truths), which bounds
   the miss rate among abnormal hips, P(us_sufficient | abnormal) <= delta, instead of P(miss) overall.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from sonogate.calibration.aggregate import AggregationRule, aggregate_frames
from sonogate.calibration.calfile import CalibrationFile, MeasurementCalibration
from sonogate.calibration.conformal import (
    as_fraction,
    fit_affine,
    max_score_radius,
    min_calibration_size,
    one_sided_radius,
    one_sided_scores,
)
from sonogate.calibration.rules import rule_holds_array, rule_measurements
from sonogate.errors import CalibrationError, DataError
from sonogate.measurements import BY_NAME, DEFAULT_THRESHOLDS, RULES

MODES = ("joint", "separate", "bonferroni")
GUARANTEES = ("marginal", "abnormal")

# Data-independent scales for the max-score when there is no affine split to estimate them from: the seed paper's
# MAE per measurement. Any fixed positive scales keep the joint guarantee exact; good ones only make it tighter.
PRIOR_SCALES: dict[str, float] = {
    "alpha_deg": 9.69,
    "beta_deg": 11.25,
    "coverage_pct": 13.97,
    "ai_deg": 7.60,
    "ce_deg": 8.93,
}

_MISSING = {"", "nan", "na", "n/a", "none", "null"}


def side_of(name: str) -> str:
    spec = BY_NAME.get(name)
    return spec.bound_side if spec is not None else "lower"


@dataclass
class PredictionTable:
    """Per-frame (or per-image) predictions with truths.

    ``ids`` (n,) row ids; ``groups`` (n,) sweep (or infant) of each row, rows of a group in time order;
    ``names`` the m measurement names; ``pred`` / ``true`` (n, m) floats (NaN = missing); ``quality`` (n,)
    standard-plane probability (1 when unknown); ``subjects`` (n,) optional infant ids, the split unit when given
    (several sweeps of one infant never straddle calibration and evaluation).
    """

    ids: np.ndarray
    groups: np.ndarray
    names: tuple[str, ...]
    pred: np.ndarray
    true: np.ndarray
    quality: np.ndarray
    subjects: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids).astype(str)
        self.groups = np.asarray(self.groups).astype(str)
        self.names = tuple(str(n) for n in self.names)
        self.pred = np.asarray(self.pred, dtype=np.float64).reshape(len(self.ids), len(self.names))
        self.true = np.asarray(self.true, dtype=np.float64).reshape(len(self.ids), len(self.names))
        self.quality = np.asarray(self.quality, dtype=np.float64).reshape(len(self.ids))
        if self.subjects is not None:
            self.subjects = np.asarray(self.subjects).astype(str).reshape(len(self.ids))
        if len(self.groups) != len(self.ids):
            raise ValueError("ids and groups must have the same length")

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise DataError(f"no predictions for {name} (columns pred_{name}, true_{name})") from None

    @property
    def split_keys(self) -> np.ndarray:
        """The unit of every random split: the subject (infant) when known, else the group."""
        return self.subjects if self.subjects is not None else self.groups

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write the CSV that ``read_predictions_csv`` reads."""
        header = ["id", "group"] + (["subject"] if self.subjects is not None else []) + ["quality"]
        header += [f"pred_{n}" for n in self.names] + [f"true_{n}" for n in self.names]
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for i in range(len(self)):
                row = [self.ids[i], self.groups[i]]
                if self.subjects is not None:
                    row.append(self.subjects[i])
                row.append(f"{self.quality[i]:.6g}")
                row += ["" if not math.isfinite(v) else f"{v:.6g}" for v in self.pred[i]]
                row += ["" if not math.isfinite(v) else f"{v:.6g}" for v in self.true[i]]
                writer.writerow(row)


def _parse_float(cell: str, path, line: int, column: str) -> float:
    text = cell.strip()
    if text.lower() in _MISSING:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}:{line}: column {column} is not a number: {cell!r}") from None


def read_predictions_csv(path: str | os.PathLike) -> PredictionTable:
    """Read a predictions CSV.

    Columns: ``id``, ``group`` (sweep or infant), optional ``subject`` (or ``infant``: the split unit), optional
    ``quality`` (standard-plane probability; absent or empty = 1), and ``pred_<m>`` with ``true_<m>`` for each
    measurement m (empty cell = missing). Output: PredictionTable. DataError on a missing file or column, a
    non-numeric cell, or no rows.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise DataError(f"predictions file not found: {path}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"predictions file {path} is not a readable CSV ({exc})") from None
    except OSError as exc:
        raise DataError(f"cannot read predictions file {path}: {exc.strerror or exc}") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(f"predictions file is empty: {path}")
    header = [h.strip() for h in rows[0]]
    col = {h: i for i, h in enumerate(header)}
    for required in ("id", "group"):
        if required not in col:
            raise DataError(f"predictions file {path} has no '{required}' column (columns: {', '.join(header)})")
    names = [h[len("pred_") :] for h in header if h.startswith("pred_") and len(h) > len("pred_")]
    if not names:
        raise DataError(f"predictions file {path} has no pred_<measurement> columns")
    for name in names:
        if f"true_{name}" not in col:
            raise DataError(f"predictions file {path} has pred_{name} but no true_{name} column")
    subject_col = "subject" if "subject" in col else ("infant" if "infant" in col else None)
    body = rows[1:]
    if not body:
        raise DataError(f"predictions file {path} has a header but no rows")
    n, m = len(body), len(names)
    ids, groups, subjects = [], [], []
    quality = np.ones(n)
    pred = np.full((n, m), np.nan)
    true = np.full((n, m), np.nan)
    for i, row in enumerate(body):
        line = i + 2
        if len(row) != len(header):
            raise DataError(f"{path}:{line}: expected {len(header)} cells, got {len(row)}")
        ids.append(row[col["id"]].strip())
        group = row[col["group"]].strip()
        if not group:
            raise DataError(f"{path}:{line}: empty group")
        groups.append(group)
        if subject_col is not None:
            subjects.append(row[col[subject_col]].strip() or group)
        if "quality" in col:
            q = _parse_float(row[col["quality"]], path, line, "quality")
            quality[i] = 1.0 if math.isnan(q) else q
        for j, name in enumerate(names):
            pred[i, j] = _parse_float(row[col[f"pred_{name}"]], path, line, f"pred_{name}")
            true[i, j] = _parse_float(row[col[f"true_{name}"]], path, line, f"true_{name}")
    if not np.all(np.isfinite(quality)):
        raise DataError(f"predictions file {path}: quality must be finite")
    return PredictionTable(
        ids=np.array(ids),
        groups=np.array(groups),
        names=tuple(names),
        pred=pred,
        true=true,
        quality=quality,
        subjects=np.array(subjects) if subject_col is not None else None,
    )


@dataclass
class SweepTable:
    """One row per group after frame aggregation: ``pred``/``true`` (G, m), ``n_frames`` frames that passed."""

    groups: np.ndarray
    subjects: np.ndarray
    names: tuple[str, ...]
    pred: np.ndarray
    true: np.ndarray
    n_frames: np.ndarray

    def __len__(self) -> int:
        return len(self.groups)


def default_aggregation(table: PredictionTable) -> AggregationRule:
    """min_frames = 1 when every group has one row (still images), else the AggregationRule defaults."""
    _, counts = np.unique(table.groups, return_counts=True)
    return AggregationRule(min_frames=1) if np.all(counts == 1) else AggregationRule()


def group_rows(groups: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unique groups in first-appearance order and each group's row indices in file (time) order."""
    uniq, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order_of_groups = np.argsort(first, kind="stable")
    rows_sorted = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1]
    per_group = np.split(rows_sorted, bounds)
    return uniq[order_of_groups], [per_group[g] for g in order_of_groups]


def aggregate_table(table: PredictionTable, rule: AggregationRule) -> tuple[SweepTable, dict[str, Any]]:
    """Reduce frames to one prediction per group with ``aggregate_frames`` (the runtime's rule).

    Output: (SweepTable of the usable groups, info with counts of groups dropped for too few good frames and of
    groups whose rows disagree on the truth).
    """
    names = table.names
    uniq, rows_per_group = group_rows(table.groups)
    keys = table.split_keys
    out_groups, out_subjects, preds, trues, frames = [], [], [], [], []
    dropped, inconsistent = [], 0
    for group, rows in zip(uniq, rows_per_group):
        subject_values = np.unique(keys[rows])
        if len(subject_values) != 1:
            raise DataError(f"group {group} spans several subjects ({', '.join(subject_values[:3])})")
        agg = aggregate_frames(table.pred[rows], table.quality[rows], rule)
        if agg is None:
            dropped.append(str(group))
            continue
        t = table.true[rows]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns -> NaN truth
            truth = np.nanmedian(t, axis=0) if len(rows) > 1 else t[0]
            spread = np.nanmax(t, axis=0) - np.nanmin(t, axis=0) if len(rows) > 1 else np.zeros(len(names))
        if np.any(spread > 1e-9):
            inconsistent += 1
        kept = (table.quality[rows] >= rule.quality_threshold) & np.all(np.isfinite(table.pred[rows]), axis=1)
        out_groups.append(group)
        out_subjects.append(subject_values[0])
        preds.append(agg)
        trues.append(truth)
        frames.append(min(int(kept.sum()), rule.window))
    m = len(names)
    sweeps = SweepTable(
        groups=np.array(out_groups, dtype=str),
        subjects=np.array(out_subjects, dtype=str),
        names=names,
        pred=np.array(preds, dtype=np.float64).reshape(-1, m),
        true=np.array(trues, dtype=np.float64).reshape(-1, m),
        n_frames=np.array(frames, dtype=int),
    )
    info = {
        "n_rows": len(table),
        "n_groups": len(uniq),
        "n_groups_usable": len(sweeps),
        "n_groups_dropped": len(dropped),
        "dropped_groups": dropped[:20],
        "n_groups_inconsistent_truth": inconsistent,
    }
    return sweeps, info


def group_split(keys: np.ndarray, fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """Random split of rows by ``keys`` (subject or group): all rows of a key land in the same part.

    Output: one boolean mask per fraction. Parts get ``round(cumulative fraction * n_keys)`` keys.
    """
    keys = np.asarray(keys).astype(str)
    uniq = np.unique(keys)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    cuts = np.round(np.cumsum(fractions) / np.sum(fractions) * len(uniq)).astype(int)
    starts = np.concatenate([[0], cuts[:-1]])
    masks = []
    for start, stop in zip(starts, cuts):
        chosen = uniq[perm[start:stop]]
        masks.append(np.isin(keys, chosen))
    return masks


def _mode_deltas(names: Sequence[str], rule_names: Sequence[str], delta: Fraction, mode: str) -> dict[str, Fraction]:
    """Per-measurement delta for separate / bonferroni (joint measurements get the rule-level delta)."""
    out = {}
    for name in names:
        if mode == "bonferroni" and name in rule_names:
            out[name] = delta / len(rule_names)
        else:
            out[name] = delta
    return out


def estimate_scales(
    names: Sequence[str],
    fit_pred: np.ndarray,
    fit_true: np.ndarray,
    affine_ab: Mapping[str, tuple[float, float]],
    source: str = "affine split mean |residual|",
) -> tuple[dict[str, float], dict[str, str]]:
    """Max-score scales from the affine split: mean |truth - corrected|, falling back to PRIOR_SCALES.

    Inputs: names, (n_fit, m) predictions and truths of the affine split, (a, b) per name, and the words that
    record where an estimated scale came from. Output: (scale per name, source per name).
    """
    scales, sources = {}, {}
    for j, name in enumerate(names):
        a, b = affine_ab[name]
        resid = fit_true[:, j] - (a * fit_pred[:, j] + b) if len(fit_pred) else np.zeros(0)
        resid = resid[np.isfinite(resid)]
        value = float(np.mean(np.abs(resid))) if resid.size >= 2 else math.nan
        if math.isfinite(value) and value > 1e-9:
            scales[name], sources[name] = value, source
        else:
            scales[name], sources[name] = PRIOR_SCALES.get(name, 1.0), "prior (seed paper MAE)"
    return scales, sources


@dataclass(frozen=True)
class FitOptions:
    """The options every calibration fit takes (``fit_calibration``, ``sonogate.calibration.xr``).

    ``delta`` the guaranteed false-reassurance probability; ``mode`` joint | separate | bonferroni; ``affine``
    fit y ~ a*yhat + b on ``affine_fraction`` of the subjects (``seed`` picks them); ``pac_gamma`` for a
    training-conditional radius; ``bundle_sha256`` and ``data`` provenance; ``thresholds`` override the
    defaults; ``guarantee`` "marginal" or "abnormal"; ``scales`` fixed max-score scales.
    """

    delta: Any = 0.1
    mode: str = "joint"
    affine: bool = True
    pac_gamma: Any = None
    seed: int = 0
    affine_fraction: float = 0.5
    bundle_sha256: str | None = None
    data: dict | None = None
    thresholds: Mapping[str, float] | None = None
    guarantee: str = "marginal"
    scales: Mapping[str, float] | None = None

    def checked(self) -> tuple[Fraction, Any]:
        """(delta, PAC gamma or None) as fractions; CalibrationError names a bad option."""
        return check_fit_options(self.delta, self.pac_gamma, self.mode, self.guarantee, self.affine_fraction)

    def calibration_file(
        self, *, task: str, rule: str, thresholds: dict[str, float], measurements: dict[str, MeasurementCalibration],
        aggregation: dict[str, Any], joint: dict[str, Any] | None, provenance: dict[str, Any], statement: str,
        conditional_on: str, unit: str, min_n_for_finite: int,
    ) -> CalibrationFile:
        """The CalibrationFile of a fit made with these options (guarantee block, provenance, time, version)."""
        from sonogate import __version__

        gamma = None if self.pac_gamma is None else float(as_fraction(self.pac_gamma, "gamma"))
        return CalibrationFile(
            delta=float(as_fraction(self.delta)),
            rule=rule,
            mode=self.mode,
            thresholds=thresholds,
            measurements=measurements,
            bundle_sha256=self.bundle_sha256,
            task=task,
            aggregation=aggregation,
            joint=joint,
            data=provenance,
            guarantee={
                "statement": statement,
                "conditional_on": conditional_on,
                "kind": self.guarantee,
                "pac_gamma": gamma,
                "unit": unit,
                "infinite": [n for n, m in measurements.items() if m.radius is None],
                "min_n_for_finite": min_n_for_finite,
            },
            created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            sonogate_version=__version__,
        )  # fmt: skip

    def split_provenance(self, table: PredictionTable) -> dict[str, Any]:
        """What calibration.json's ``data`` block records of the split."""
        return {
            "split_by": "subject" if table.subjects is not None else "group",
            "seed": int(self.seed),
            "affine": bool(self.affine),
            "affine_fraction": float(self.affine_fraction) if self.affine else 0.0,
        }


def require_truths(table: PredictionTable, names: Sequence[str]) -> None:
    """DataError when a column of ``names`` is missing or has no finite truth at all."""
    for name in names:
        j = table.index(name)  # DataError when the column is missing
        if not np.any(np.isfinite(table.true[:, j])):
            raise DataError(f"the calibration data has no true values for {name}: calibration needs labelled hips")


def check_fit_options(delta, pac_gamma, mode: str, guarantee: str, affine_fraction: float) -> tuple[Fraction, Any]:
    """Validated (delta, PAC gamma or None) as fractions; CalibrationError names the bad option."""
    try:
        delta_f = as_fraction(delta)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"bad delta: {exc}") from None
    try:
        gamma_f = None if pac_gamma is None else as_fraction(pac_gamma, "gamma")
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"bad PAC gamma: {exc}") from None
    if mode not in MODES:
        raise CalibrationError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    if guarantee not in GUARANTEES:
        raise CalibrationError(f"unknown guarantee {guarantee!r} (choose from {', '.join(GUARANTEES)})")
    if not 0 < affine_fraction < 1:
        raise CalibrationError(f"affine_fraction must be in (0, 1), got {affine_fraction}")
    return delta_f, gamma_f


def affine_split(
    keys: np.ndarray, affine: bool, affine_fraction: float, seed: int, unit: str
) -> tuple[np.ndarray, np.ndarray]:
    """(affine mask, conformal mask) over calibration units split by ``keys`` (their subject); without
    ``affine`` every unit calibrates. CalibrationError when either part would be empty (``unit`` names what
    is counted in the message, e.g. "subjects")."""
    if not affine:
        return np.zeros(len(keys), dtype=bool), np.ones(len(keys), dtype=bool)
    fit_mask, cal_mask = group_split(keys, [affine_fraction, 1 - affine_fraction], seed)
    if not fit_mask.any() or not cal_mask.any():
        raise CalibrationError(
            f"the affine/conformal split needs at least 2 {unit} (have {len(np.unique(keys))}); use --no-affine"
        )
    return fit_mask, cal_mask


def one_sided_calibration(
    scores: np.ndarray, side: str, ab: tuple[float, float], delta, gamma
) -> MeasurementCalibration:
    """One measurement calibrated on its own: the radius at ``delta`` of its finite one-sided ``scores``."""
    s = scores[np.isfinite(scores)]
    radius, k = one_sided_radius(s, delta, gamma)
    return MeasurementCalibration(
        side=side, a=float(ab[0]), b=float(ab[1]), radius=radius, n=int(s.size), k=int(k), delta=float(delta)
    )


def max_score_calibration(
    scores: np.ndarray,
    names: Sequence[str],
    sides: Mapping[str, str],
    affine_ab: Mapping[str, tuple[float, float]],
    scales: Mapping[str, float],
    sources: Mapping[str, str],
    delta,
    gamma,
    method: str = "max_scaled_score",
) -> tuple[dict[str, MeasurementCalibration], dict[str, Any]]:
    """Joint calibration of ``names`` by the max of their scaled scores.

    Inputs: ``scores`` (n, len(names)) one-sided scores (rows with a non-finite score are left out), each
    name's bound side, (a, b) and fixed scale (and its source), delta and PAC gamma. Output: (calibration per
    name with radius ``t * scale``, the joint provenance block of calibration.json).
    """
    s = scores[np.all(np.isfinite(scores), axis=1)]
    t, k = max_score_radius(s, np.array([scales[n] for n in names]), delta, gamma)
    out = {
        name: MeasurementCalibration(
            side=sides[name],
            a=float(affine_ab[name][0]),
            b=float(affine_ab[name][1]),
            radius=None if t is None else float(t * scales[name]),
            n=len(s),
            k=int(k),
            delta=float(delta),
        )
        for name in names
    }
    joint_info = {
        "method": method,
        "measurements": list(names),
        "scales": {n: scales[n] for n in names},
        "scale_source": {n: sources[n] for n in names},
        "t": t,
        "n": len(s),
        "k": int(k),
        "delta": float(delta),
    }
    return out, joint_info


def calibrate_units(
    names: Sequence[str],
    fit_pred: np.ndarray,
    fit_true: np.ndarray,
    cal_pred: np.ndarray,
    cal_true: np.ndarray,
    *,
    delta,
    rule: str = "and",
    mode: str = "joint",
    affine: bool = True,
    pac_gamma=None,
    thresholds: Mapping[str, float] | None = None,
    guarantee: str = "marginal",
    scales: Mapping[str, float] | None = None,
) -> tuple[dict[str, MeasurementCalibration], dict[str, Any] | None, dict[str, Any]]:
    """Core of ``fit_calibration`` on already aggregated, already split units (also used by the report).

    Inputs: measurement ``names``; (n_fit, m) / (n_cal, m) predictions and truths of the affine and conformal
    splits. Output: (MeasurementCalibration per name, joint provenance or None, info with counts).
    """
    names = list(names)
    delta_f = as_fraction(delta)
    gamma_f = None if pac_gamma is None else as_fraction(pac_gamma, "gamma")
    rule_names = [n for n in rule_measurements(rule)]
    missing = [n for n in rule_names if n not in names]
    if missing:
        raise DataError(f"rule {rule!r} needs {', '.join(missing)} (columns pred_<m> and true_<m>)")
    if mode not in MODES:
        raise CalibrationError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    if guarantee not in GUARANTEES:
        raise CalibrationError(f"unknown guarantee {guarantee!r} (choose from {', '.join(GUARANTEES)})")
    fit_pred = np.asarray(fit_pred, dtype=np.float64).reshape(-1, len(names))
    fit_true = np.asarray(fit_true, dtype=np.float64).reshape(-1, len(names))
    cal_pred = np.asarray(cal_pred, dtype=np.float64).reshape(-1, len(names))
    cal_true = np.asarray(cal_true, dtype=np.float64).reshape(-1, len(names))

    affine_ab = {
        name: fit_affine(fit_pred[:, j], fit_true[:, j]) if affine else (1.0, 0.0) for j, name in enumerate(names)
    }
    a = np.array([affine_ab[n][0] for n in names])
    b = np.array([affine_ab[n][1] for n in names])
    corrected = a * cal_pred + b
    scores = np.stack([one_sided_scores(corrected[:, j], cal_true[:, j], side_of(n)) for j, n in enumerate(names)], 1)
    scores = scores.reshape(-1, len(names))

    if guarantee == "abnormal":
        # Conditioning on the test hip being abnormal: it is exchangeable with the abnormal calibration hips, so
        # calibrating on them bounds P(us_sufficient | abnormal). Normal hips cannot be false reassurance.
        idx = [names.index(n) for n in rule_names]
        known = np.all(np.isfinite(cal_true[:, idx]), axis=1)
        truths = {n: cal_true[:, names.index(n)] for n in rule_names}
        abnormal = known & ~rule_holds_array(rule, truths, thresholds)
        scores = scores[abnormal]

    deltas = _mode_deltas(names, rule_names, delta_f, mode)
    out: dict[str, MeasurementCalibration] = {}
    joint_info: dict[str, Any] | None = None
    # A max-score over one measurement is that measurement's own calibration: use the exact separate path
    # (no divide/multiply by the scale, so the radius is bit-identical to the k-th score).
    joint_names = rule_names if mode == "joint" and len(rule_names) > 1 else []
    for j, name in enumerate(names):
        if name not in joint_names:
            out[name] = one_sided_calibration(scores[:, j], side_of(name), affine_ab[name], deltas[name], gamma_f)
    if joint_names:
        if scales is None:
            if affine and len(fit_pred):
                scale_map, sources = estimate_scales(names, fit_pred, fit_true, affine_ab)
            else:
                scale_map = {n: PRIOR_SCALES.get(n, 1.0) for n in names}
                sources = {n: "prior (seed paper MAE)" for n in names}
        else:
            scale_map = {n: float(scales.get(n, PRIOR_SCALES.get(n, 1.0))) for n in names}
            sources = {n: "given" for n in names}
        idx = [names.index(n) for n in joint_names]
        joint, joint_info = max_score_calibration(
            scores[:, idx], joint_names, {n: side_of(n) for n in joint_names}, affine_ab, scale_map, sources,
            delta_f, gamma_f,
        )  # fmt: skip
        out.update(joint)
    out = {n: out[n] for n in names}
    info = {"n_fit": len(fit_pred) if affine else 0, "n_cal": len(cal_pred), "n_scores": len(scores)}
    return out, joint_info, info


def guarantee_text(rule: str, mode: str, delta: float, guarantee: str, pac_gamma=None) -> str:
    """What delta bounds, in words."""
    names = rule_measurements(rule)
    event = "P(us_sufficient and the hip fails the rule on its true values)"
    if guarantee == "abnormal":
        event = "P(us_sufficient | the hip fails the rule on its true values)"
    if mode == "separate" and len(names) > 1:
        text = (
            f"each bound holds with probability >= {1 - delta:g} on its own; the rule's false-reassurance "
            f"probability is only bounded by {len(names)} x {delta:g} (union bound), not by {delta:g}"
        )
    else:
        text = f"{event} <= {delta:g} for a new sweep exchangeable with the calibration sweeps"
    if pac_gamma is not None:
        text += f", with probability >= {1 - float(pac_gamma):g} over the calibration draw"
    return text


def fit_calibration(
    table: PredictionTable,
    delta: float = 0.1,
    rule: str = "and",
    mode: str = "joint",
    affine: bool = True,
    aggregation: AggregationRule | None = None,
    pac_gamma: float | None = None,
    seed: int = 0,
    affine_fraction: float = 0.5,
    bundle_sha256: str | None = None,
    data: dict | None = None,
    thresholds: Mapping[str, float] | None = None,
    guarantee: str = "marginal",
    scales: Mapping[str, float] | None = None,
) -> CalibrationFile:
    """Fit a calibration file from per-frame predictions.

    Inputs: the table; ``delta`` the guaranteed false-reassurance probability of ``rule`` (for ``mode`` joint or
    bonferroni; per measurement for separate); ``affine`` fit y ~ a*yhat + b on ``affine_fraction`` of the subjects
    (``seed`` picks them); ``aggregation`` the frame rule (default: ``default_aggregation``); ``pac_gamma`` for a
    training-conditional radius; ``bundle_sha256`` and ``data`` provenance; ``thresholds`` override the defaults;
    ``guarantee`` "marginal" or "abnormal"; ``scales`` fixed max-score scales. Output: CalibrationFile (radius
    None where k > n). Raises CalibrationError / DataError on bad input.
    """
    opts = FitOptions(delta, mode, affine, pac_gamma, seed, affine_fraction, bundle_sha256, data, thresholds,
                      guarantee, scales)  # fmt: skip
    delta_f, _ = opts.checked()
    if rule not in RULES:
        raise CalibrationError(f"unknown rule {rule!r} (choose from {', '.join(RULES)})")
    require_truths(table, rule_measurements(rule))
    agg_rule = aggregation if aggregation is not None else default_aggregation(table)
    sweeps, agg_info = aggregate_table(table, agg_rule)
    if len(sweeps) == 0:
        raise CalibrationError(
            f"no group has {agg_rule.min_frames} frame(s) with quality >= {agg_rule.quality_threshold}: nothing to "
            "calibrate on"
        )
    split_by = "subject" if table.subjects is not None else "group"
    fit_mask, cal_mask = affine_split(sweeps.subjects, affine, affine_fraction, seed, f"{split_by}s")
    measurements, joint, info = calibrate_units(
        sweeps.names,
        sweeps.pred[fit_mask],
        sweeps.true[fit_mask],
        sweeps.pred[cal_mask],
        sweeps.true[cal_mask],
        delta=delta_f,
        rule=rule,
        mode=mode,
        affine=affine,
        pac_gamma=pac_gamma,
        thresholds=thresholds,
        guarantee=guarantee,
        scales=scales,
    )
    merged_thresholds = dict(DEFAULT_THRESHOLDS)
    if thresholds:
        merged_thresholds.update({k: float(v) for k, v in thresholds.items()})
    provenance = dict(data or {})
    provenance.update(agg_info)
    provenance.update(
        {
            **opts.split_provenance(table),
            "n_groups_affine": int(fit_mask.sum()),
            "n_groups_calibration": int(cal_mask.sum()),
            "n_calibration_scores": info["n_scores"],
        }
    )
    return opts.calibration_file(
        task="hip_us",
        rule=rule,
        thresholds=merged_thresholds,
        measurements=measurements,
        aggregation=agg_rule.to_json(),
        joint=joint,
        provenance=provenance,
        statement=guarantee_text(rule, mode, float(delta_f), guarantee, pac_gamma),
        conditional_on="truly abnormal hips" if guarantee == "abnormal" else "all hips",
        unit=agg_rule.unit,
        min_n_for_finite=min_calibration_size(delta_f),
    )


def apply_calibration(cal: CalibrationFile, aggregated_pred: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """Corrected value and one-sided bound per measurement for one aggregated prediction.

    Input: the calibration and name -> aggregated (median) raw prediction. Output: name -> (corrected, bound) for
    every calibrated measurement present in the input; the bound is -inf (lower) / +inf (upper) when the radius is
    infinite or the prediction is not finite, so the rule can never reassure on it.
    """
    out: dict[str, tuple[float, float]] = {}
    for name, mc in cal.measurements.items():
        if name not in aggregated_pred:
            continue
        try:
            value = float(aggregated_pred[name])
        except (TypeError, ValueError):
            value = math.nan
        out[name] = (mc.corrected(value), mc.bound(value))
    return out


def apply_calibration_array(
    measurements: Mapping[str, MeasurementCalibration], names: Sequence[str], pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``apply_calibration``: pred (N, m) in ``names`` order -> (corrected, bounds), each (N, m)."""
    pred = np.asarray(pred, dtype=np.float64)
    corrected = np.empty_like(pred)
    bounds = np.empty_like(pred)
    for j, name in enumerate(names):
        mc = measurements[name]
        corrected[:, j] = mc.a * pred[:, j] + mc.b
        worst = -np.inf if mc.side == "lower" else np.inf
        if mc.radius is None:
            bounds[:, j] = worst
        else:
            b = corrected[:, j] - mc.radius if mc.side == "lower" else corrected[:, j] + mc.radius
            bounds[:, j] = np.where(np.isfinite(corrected[:, j]), b, worst)
    return corrected, bounds


def requirement_text(cal: CalibrationFile) -> list[str]:
    """Lines saying what the rule needs for "us_sufficient", e.g. "alpha_deg >= 60 needs a corrected alpha_deg
    >= 66.3 (raw prediction >= 64.1)"."""
    names, combine = RULES[cal.rule]
    lines = []
    for name in names:
        mc = cal.measurements.get(name)
        threshold = cal.thresholds.get(name, DEFAULT_THRESHOLDS.get(name))
        if mc is None or threshold is None:
            continue
        op = ">=" if mc.side == "lower" else "<="
        if mc.radius is None:
            lines.append(
                f"{name} {op} {threshold:g}: bound is infinite (k={mc.k} > n={mc.n}; a finite bound at delta "
                f"{mc.delta:g} needs n >= {min_calibration_size(mc.delta)}); this measurement can never reassure"
            )
            continue
        need = threshold + mc.radius if mc.side == "lower" else threshold - mc.radius
        raw = ""
        if abs(mc.a) > 1e-12:
            raw_need = (need - mc.b) / mc.a
            raw_op = op if mc.a > 0 else ("<=" if op == ">=" else ">=")
            raw = f" (raw prediction {raw_op} {raw_need:.1f})"
        lines.append(f"{name} {op} {threshold:g} needs a corrected {name} {op} {need:.1f}{raw}")
    joiner = "both of" if combine == "all" and len(names) > 1 else ("either of" if len(names) > 1 else "")
    if joiner and lines:
        lines.insert(0, f"us_sufficient needs {joiner}:")
    infinite = [cal.measurements.get(n) is None or cal.measurements[n].radius is None for n in names]
    if all(infinite) if combine == "any" else any(infinite):
        lines.append("=> with this calibration the policy can NEVER say us_sufficient (collect more calibration data)")
    return lines
