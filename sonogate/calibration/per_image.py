"""Calibration of a task decided per image: affine correction + one-sided split-conformal bounds, with the image
as the exchangeable unit even when it holds several rows (e.g. the two hips of one pelvic radiograph).

The task says what it measures (``PerImageCalibration``: names, the side of each bound, thresholds, the rule's name,
what one image and one row are called, and the event its guarantee is about); this module fits:

1. Rows (``PredictionTable``: ``group`` = image, ``subject`` = patient) hold the task's measurements; an image has
   at most ``max_rows_per_image`` rows.
2. Images are split by patient: ``affine_fraction`` fit ``y ~ a * yhat + b`` per measure (rows pooled), the rest
   calibrate (``affine=False``: a = 1, b = 0, every image calibrates).
3. Per row the one-sided score is ``s = y - y~`` (upper bound) or ``s = y~ - y`` (lower bound); per image the score
   is the **max over its rows**. Every bound of the image holds exactly when that max is <= r.
4. ``mode``:
   * ``joint`` (default): max over the rows *and* the measures of the scaled scores ``s_m / scale_m`` (scales fixed
     before calibration: the affine split's mean |residual|, else the prior scales), radius t at delta; per measure
     the stored radius is ``t * scale_m``. Guarantee: P(any bound of the image fails) <= delta, hence the task's
     event (a row called normal while its truth is on the unsafe side of a threshold) has probability <= delta.
   * ``separate``: per measure, the max over the rows at delta (each measure's bounds hold with probability
     >= 1 - delta; the verdict only by n_measures x delta). ``bonferroni``: the same at delta / n_measures each.
5. ``guarantee="abnormal"``: only images with at least one truly abnormal row (a truth on the unsafe side of its
   threshold) calibrate, so the statement holds conditionally on the image showing an abnormal row.

The guarantee is marginal over images exchangeable with the calibration images (same site, device, population);
it is per image, not per row. ``calibration.json`` uses the format of ``calfile.py`` with the task's id and rule,
bound to the bundle hash. A task names its own in its spec (``parts["calibrator"]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sonogate.calibration.calfile import CalibrationFile, MeasurementCalibration
from sonogate.calibration.conformal import fit_affine, min_calibration_size, one_sided_scores
from sonogate.calibration.fit import (
    GUARANTEES,
    MODES,
    PRIOR_SCALES,
    FitOptions,
    PredictionTable,
    affine_split,
    estimate_scales,
    group_rows,
    max_score_calibration,
    one_sided_calibration,
    require_truths,
)
from sonogate.errors import DataError

__all__ = ["GUARANTEES", "MODES", "PerImageCalibration"]


@dataclass(frozen=True)
class PerImageCalibration:
    """What a per-image task calibrates. ``sides``: "upper" / "lower" bound per name; ``thresholds``: the decision
    threshold per name (a row is truly abnormal when its truth is on the unsafe side of one); ``image`` / ``row``:
    what one exchangeable image and one row are called in messages and the statement; ``event``: the guarantee's
    event in words; ``normal``: the reassuring call the requirement lines speak of."""

    task: str
    rule: str
    names: tuple[str, ...]
    sides: Mapping[str, str]
    thresholds: Mapping[str, float]
    image: str = "image"
    row: str = "row"
    max_rows_per_image: int = 1
    event: str = "P(some row of the image is called normal while a truth is on the unsafe side of its threshold"
    normal: str = "normal within bounds"

    def fit(self, table: PredictionTable, **options) -> CalibrationFile:
        """Fit on ``table`` with the keywords of ``sonogate.calibration.fit.FitOptions`` (module docstring)."""
        return fit_per_image_calibration(table, self, **options)

    def requirement_lines(self, cal: CalibrationFile) -> list[str]:
        """What a row needs for the reassuring call, in raw-prediction terms."""
        return requirement_lines(cal, self)

    def summary_lines(self, cal: CalibrationFile, guarantee: str) -> list[str]:
        """Two lines saying what was calibrated on what (``sonogate calibrate`` prints them)."""
        d, image = cal.data, self.image
        rows = f" (max over {_all(self.max_rows_per_image, self.row)})" if self.max_rows_per_image > 1 else ""
        return [f"calibrated bounds per {image}{rows}, mode {cal.mode}, delta {cal.delta:g}, guarantee {guarantee}",
                (f"  {d[f'n_{image}s']} {image}s of {d['n_patients']} patients; split by {d['split_by']}: "
                 f"{d[f'n_{image}s_affine']} affine, {d[f'n_{image}s_calibration']} calibration")]

    def predict_folder(self, bundle_path, data_dir, device: str = "auto", progress: bool = True,
                       precision: str = "auto", threads: int = 1) -> PredictionTable:
        """The task's bundle run over its labelled folder: one row per ``row`` (a task overrides this)."""
        raise DataError(f"task {self.task} cannot calibrate from a labelled folder: give --predictions CSV")


def _per_image(table: PredictionTable, task: PerImageCalibration) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(image ids, their patient, row indices per image). DataError when an image has more rows than the task
    allows or spans several patients."""
    uniq, rows = group_rows(table.groups)
    keys = table.split_keys
    subjects = []
    for group, r in zip(uniq, rows):
        if len(r) > task.max_rows_per_image:
            raise DataError(f"{task.image} {group} has {len(r)} rows; one holds at most {task.max_rows_per_image} "
                            f"({task.row}s)")
        values = np.unique(keys[r])
        if len(values) != 1:
            raise DataError(f"{task.image} {group} spans several patients ({', '.join(values[:3])})")
        subjects.append(values[0])
    return uniq, np.array(subjects, dtype=str), rows


def _row_abnormal(true: np.ndarray, task: PerImageCalibration, thresholds: Mapping[str, float]) -> np.ndarray:
    """(rows,) True where a known truth is on the unsafe side of its threshold (above an upper bound's threshold,
    below a lower bound's)."""
    abnormal = np.zeros(len(true), dtype=bool)
    with np.errstate(invalid="ignore"):
        for j, name in enumerate(task.names):
            if name not in thresholds:
                continue
            column = true[:, j]
            unsafe = column > thresholds[name] if task.sides[name] == "upper" else column < thresholds[name]
            abnormal |= np.isfinite(column) & unsafe
    return abnormal


def fit_per_image_calibration(table: PredictionTable, task: PerImageCalibration, **options) -> CalibrationFile:
    """Per-image calibration (module docstring).

    Inputs: rows (a task's labelled-folder prediction, or a predictions CSV with pred_/true_ columns of the task's
    names, ``group`` = image, ``subject`` = patient), the task's ``PerImageCalibration`` and the keywords of
    ``sonogate.calibration.fit.FitOptions`` (``thresholds`` override the task's; the affine split is by patient).
    Output: CalibrationFile (the task's id and rule; radius None = infinite bound).
    """

    opts = FitOptions(**options)
    delta_f, gamma_f = opts.checked()
    mode, guarantee, affine, scales = opts.mode, opts.guarantee, opts.affine, opts.scales
    idx = [table.index(n) for n in task.names]  # DataError when a column is missing
    pred, true = table.pred[:, idx], table.true[:, idx]
    require_truths(table, task.names)
    merged = dict(task.thresholds)
    merged.update({k: float(v) for k, v in (opts.thresholds or {}).items()})

    images, subjects, rows = _per_image(table, task)
    fit_mask, cal_mask = affine_split(subjects, affine, opts.affine_fraction, opts.seed, "patients")
    fit_rows = np.concatenate([rows[g] for g in np.flatnonzero(fit_mask)]) if fit_mask.any() else np.zeros(0, int)
    ab = {
        n: (fit_affine(pred[fit_rows, j], true[fit_rows, j]) if affine else (1.0, 0.0)) for j, n in enumerate(task.names)
    }

    # Scores per row, then the max over the rows of each calibration image.
    row_scores = np.stack(
        [one_sided_scores(ab[n][0] * pred[:, j] + ab[n][1], true[:, j], task.sides[n]) for j, n in enumerate(task.names)],
        axis=1,
    )
    abnormal = _row_abnormal(true, task, merged)
    cal_groups = [g for g in np.flatnonzero(cal_mask) if guarantee == "marginal" or abnormal[rows[g]].any()]
    per_image = np.full((len(cal_groups), len(task.names)), np.nan)
    for i, g in enumerate(cal_groups):
        s = row_scores[rows[g]]
        # A row whose truth or prediction is missing cannot be scored: its image's bound is unscored (NaN) for
        # that measure and the image is left out of that measure's calibration.
        per_image[i] = np.where(np.all(np.isfinite(s), axis=0), np.max(s, axis=0), np.nan)

    if scales is None:
        scale_map, source = estimate_scales(
            task.names, pred[fit_rows], true[fit_rows], ab, f"affine split mean |residual| ({task.row}s pooled)"
        )
    else:
        scale_map = {n: float(scales.get(n, PRIOR_SCALES[n])) for n in task.names}
        source = {n: "given" for n in task.names}

    measurements: dict[str, MeasurementCalibration] = {}
    joint_info = None
    if mode == "joint":
        measurements, joint_info = max_score_calibration(
            per_image, task.names, task.sides, ab, scale_map, source, delta_f, gamma_f,
            method=f"max_scaled_score over {_all(task.max_rows_per_image, task.row)} and "
                   f"{_all(len(task.names), 'measure')} per {task.image}",
        )  # fmt: skip
    else:
        per_delta = delta_f / len(task.names) if mode == "bonferroni" else delta_f
        for j, n in enumerate(task.names):
            measurements[n] = one_sided_calibration(per_image[:, j], task.sides[n], ab[n], per_delta, gamma_f)
    event = task.event
    event += f" | the {task.image} shows a truly abnormal {task.row})" if guarantee == "abnormal" else ")"
    if mode == "separate":
        statement = (
            f"each measure's bounds on {_all(task.max_rows_per_image, task.row)} of {_a(task.image)} hold together "
            f"with probability >= {1 - float(delta_f):g}; the verdict's false-reassurance probability is only bounded "
            f"by {len(task.names)} x {float(delta_f):g}"
        )
    else:
        statement = (f"{event} <= {float(delta_f):g} for a new {task.image} exchangeable with the calibration "
                     f"{task.image}s")
    if gamma_f is not None:
        statement += f", with probability >= {1 - float(gamma_f):g} over the calibration draw"
    n_patients = len(np.unique(subjects))
    provenance = dict(opts.data or {})
    provenance.update(
        {
            "n_rows": len(table),
            f"n_{task.image}s": len(images),
            "n_patients": int(n_patients),
            **opts.split_provenance(table),
            f"n_{task.image}s_affine": int(fit_mask.sum()),
            f"n_{task.image}s_calibration": int(cal_mask.sum()),
            "n_calibration_scores": len(cal_groups),
            f"n_{task.row}s_truly_abnormal_calibration": int(sum(abnormal[rows[g]].sum()
                                                                for g in np.flatnonzero(cal_mask))),
        }
    )
    return opts.calibration_file(
        task=task.task,
        rule=task.rule,
        thresholds=merged,
        measurements=measurements,
        aggregation={
            "method": "single_image",
            "unit": task.image,
            "score": f"max over {_all(task.max_rows_per_image, task.row)} of the one-sided nonconformity score",
        },
        joint=joint_info,
        provenance=provenance,
        statement=statement,
        conditional_on=(f"{task.image}s with a truly abnormal {task.row}" if guarantee == "abnormal"
                        else f"all {task.image}s"),
        unit=task.image if task.max_rows_per_image == 1 else f"{task.image} ({_all(task.max_rows_per_image, task.row)})",
        min_n_for_finite=min_calibration_size(delta_f if mode != "bonferroni" else delta_f / 2),
    )


def requirement_lines(cal: CalibrationFile, task: PerImageCalibration) -> list[str]:
    """What a row needs for the task's reassuring call, in raw-prediction terms."""
    lines = []
    for name in task.names:
        mc, threshold = cal.measurements[name], cal.thresholds[name]
        op = "<=" if mc.side == "upper" else ">="
        if mc.radius is None:
            lines.append(
                f"{name} {op} {threshold:g}: infinite bound (n={mc.n} < {min_calibration_size(mc.delta)} "
                f"needed): no {task.row} can be called {task.normal}"
            )
            continue
        need = threshold - mc.radius if mc.side == "upper" else threshold + mc.radius
        raw = ""
        if abs(mc.a) > 1e-12:
            raw_op = op if mc.a > 0 else ("<=" if op == ">=" else ">=")
            raw = f" (raw prediction {raw_op} {(need - mc.b) / mc.a:.1f})"
        lines.append(f"{name} {op} {threshold:g} needs a corrected {name} {op} {need:.1f}{raw}")
    return [f"{task.normal} needs {'both' if len(lines) == 2 else 'all'} of:"] + lines


def _all(n: int, word: str) -> str:
    """"both hips", "all 3 measures", "the row": how the statement names every row / measure of an image."""
    return f"the {word}" if n == 1 else f"both {word}s" if n == 2 else f"all {n} {word}s"


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"
