"""Calibration of a pelvic X-ray bundle: affine correction + one-sided split-conformal bounds per radiograph.

Bounds: acetabular index (AI) gets an **upper** bound (high AI is abnormal), centre-edge angle (CE) a **lower**
bound (low CE is abnormal). The runtime calls a hip "normal within bounds" only when AI upper bound <= 30 deg
and CE lower bound >= 20 deg (``hip_verdict`` of the hip_xr task's runtime wrapper, ``sonogate.tasks.hip_xr.model``).

Why per radiograph: the two hips of one pelvis share the patient, the exposure and the model's view of the
pelvis, so their errors are not independent, and a clinician reads both from one image. The unit of
exchangeability is therefore the radiograph (patient), not the hip:

1. Rows are hips (``PredictionTable``: ``group`` = radiograph, ``subject`` = patient, names ai_deg, ce_deg);
   a radiograph has one or two rows.
2. Radiographs are split by patient: ``affine_fraction`` fit ``y ~ a * yhat + b`` per measure (both hips pooled),
   the rest calibrate (``affine=False``: a = 1, b = 0, every radiograph calibrates).
3. Per hip the one-sided score is ``s = y - y~`` (AI, upper) or ``s = y~ - y`` (CE, lower); per radiograph the
   score is the **max over its hips**. Every bound of the radiograph holds exactly when that max is <= r.
4. ``mode``:
   * ``joint`` (default): max over both hips *and* both measures of the scaled scores ``s_m / scale_m`` (scales
     fixed before calibration: the affine split's mean |residual|, else the seed paper's MAE), radius t at
     delta; per measure the stored radius is ``t * scale_m``. Guarantee: P(any of the radiograph's four bounds
     fails) <= delta, hence P(some hip of a radiograph is called normal within bounds while its true AI > 30 or
     true CE < 20) <= delta.
   * ``separate``: per measure, the max over both hips at delta (each measure's pair of bounds holds with
     probability >= 1 - delta; the verdict only by 2 x delta). ``bonferroni``: the same at delta / 2 each.
5. ``guarantee="abnormal"``: only radiographs with at least one truly abnormal hip (AI > T_AI or CE < T_CE)
   calibrate, so the statement holds conditionally on the radiograph showing an abnormal hip.

The guarantee is marginal over radiographs exchangeable with the calibration radiographs (same site,
device, population); it is per radiograph, not per hip. ``calibration.json`` uses the format of
``calfile.py`` with task "hip_xr", rule "xr_ai_ce", measurements ai_deg / ce_deg, bound to the bundle hash.
"""

from __future__ import annotations

from collections.abc import Mapping

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

XR_RULE = "xr_ai_ce"
XR_NAMES = ("ai_deg", "ce_deg")
XR_SIDES = {"ai_deg": "upper", "ce_deg": "lower"}
# The verdict's thresholds (docs/xray.md): a hip is normal within bounds when AI <= 30 deg and CE >= 20 deg.
XR_THRESHOLDS = {"ai_deg": 30.0, "ce_deg": 20.0}
__all__ = ["GUARANTEES", "MODES", "XR_NAMES", "XR_RULE", "XR_SIDES", "XR_THRESHOLDS", "fit_xr_calibration",
           "requirement_lines"]


def _per_radiograph(table: PredictionTable) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(radiograph ids, their patient, row indices per radiograph). DataError when a radiograph has more than
    two rows or spans several patients."""
    uniq, rows = group_rows(table.groups)
    keys = table.split_keys
    subjects = []
    for group, r in zip(uniq, rows):
        if len(r) > 2:
            raise DataError(f"radiograph {group} has {len(r)} rows; an AP pelvis has at most two hips")
        values = np.unique(keys[r])
        if len(values) != 1:
            raise DataError(f"radiograph {group} spans several patients ({', '.join(values[:3])})")
        subjects.append(values[0])
    return uniq, np.array(subjects, dtype=str), rows


def _hip_abnormal(true: np.ndarray, thresholds: Mapping[str, float]) -> np.ndarray:
    """(rows,) True where the hip's known truth fails the X-ray rule (AI > T_AI or CE < T_CE)."""
    ai, ce = true[:, 0], true[:, 1]
    with np.errstate(invalid="ignore"):
        return (np.isfinite(ai) & (ai > thresholds["ai_deg"])) | (np.isfinite(ce) & (ce < thresholds["ce_deg"]))


def fit_xr_calibration(table: PredictionTable, **options) -> CalibrationFile:
    """Per-radiograph X-ray calibration (module docstring).

    Inputs: hip rows (``sonogate.runtime.calibrate_cli.predict_xr_folder`` or a predictions CSV with pred_/true_
    ai_deg and ce_deg, ``group`` = radiograph, ``subject`` = patient) and the keywords of
    ``sonogate.calibration.fit.FitOptions`` (``thresholds`` override ai_deg=30 / ce_deg=20; the affine split is by
    patient). Output: CalibrationFile (task hip_xr; radius None = infinite bound).
    """

    opts = FitOptions(**options)
    delta_f, gamma_f = opts.checked()
    mode, guarantee, affine, scales = opts.mode, opts.guarantee, opts.affine, opts.scales
    idx = [table.index(n) for n in XR_NAMES]  # DataError when a column is missing
    pred, true = table.pred[:, idx], table.true[:, idx]
    require_truths(table, XR_NAMES)
    merged = dict(XR_THRESHOLDS)
    merged.update({k: float(v) for k, v in (opts.thresholds or {}).items()})

    radiographs, subjects, rows = _per_radiograph(table)
    fit_mask, cal_mask = affine_split(subjects, affine, opts.affine_fraction, opts.seed, "patients")
    fit_rows = np.concatenate([rows[g] for g in np.flatnonzero(fit_mask)]) if fit_mask.any() else np.zeros(0, int)
    ab = {
        n: (fit_affine(pred[fit_rows, j], true[fit_rows, j]) if affine else (1.0, 0.0)) for j, n in enumerate(XR_NAMES)
    }

    # Scores per hip, then the max over the hips of each calibration radiograph.
    hip_scores = np.stack(
        [one_sided_scores(ab[n][0] * pred[:, j] + ab[n][1], true[:, j], XR_SIDES[n]) for j, n in enumerate(XR_NAMES)],
        axis=1,
    )
    abnormal = _hip_abnormal(true, merged)
    cal_groups = [g for g in np.flatnonzero(cal_mask) if guarantee == "marginal" or abnormal[rows[g]].any()]
    per_radiograph = np.full((len(cal_groups), len(XR_NAMES)), np.nan)
    for i, g in enumerate(cal_groups):
        s = hip_scores[rows[g]]
        # A hip whose truth or prediction is missing cannot be scored: its radiograph's bound is unscored
        # (NaN) for that measure and the radiograph is left out of that measure's calibration.
        per_radiograph[i] = np.where(np.all(np.isfinite(s), axis=0), np.max(s, axis=0), np.nan)

    if scales is None:
        scale_map, source = estimate_scales(
            XR_NAMES, pred[fit_rows], true[fit_rows], ab, "affine split mean |residual| (hips pooled)"
        )
    else:
        scale_map = {n: float(scales.get(n, PRIOR_SCALES[n])) for n in XR_NAMES}
        source = {n: "given" for n in XR_NAMES}

    measurements: dict[str, MeasurementCalibration] = {}
    joint_info = None
    if mode == "joint":
        measurements, joint_info = max_score_calibration(
            per_radiograph, XR_NAMES, XR_SIDES, ab, scale_map, source, delta_f, gamma_f,
            method="max_scaled_score over both hips and both measures per radiograph",
        )  # fmt: skip
    else:
        per_delta = delta_f / len(XR_NAMES) if mode == "bonferroni" else delta_f
        for j, n in enumerate(XR_NAMES):
            measurements[n] = one_sided_calibration(per_radiograph[:, j], XR_SIDES[n], ab[n], per_delta, gamma_f)
    event = "P(some hip of the radiograph is called normal within bounds while its true AI > T_AI or CE < T_CE"
    event += " | the radiograph shows a truly abnormal hip)" if guarantee == "abnormal" else ")"
    if mode == "separate":
        statement = (
            f"each measure's bounds on both hips of a radiograph hold together with probability >= "
            f"{1 - float(delta_f):g}; the verdict's false-reassurance probability is only bounded by "
            f"2 x {float(delta_f):g}"
        )
    else:
        statement = f"{event} <= {float(delta_f):g} for a new radiograph exchangeable with the calibration radiographs"
    if gamma_f is not None:
        statement += f", with probability >= {1 - float(gamma_f):g} over the calibration draw"
    n_patients = len(np.unique(subjects))
    provenance = dict(opts.data or {})
    provenance.update(
        {
            "n_rows": len(table),
            "n_radiographs": len(radiographs),
            "n_patients": int(n_patients),
            **opts.split_provenance(table),
            "n_radiographs_affine": int(fit_mask.sum()),
            "n_radiographs_calibration": int(cal_mask.sum()),
            "n_calibration_scores": len(cal_groups),
            "n_hips_truly_abnormal_calibration": int(sum(abnormal[rows[g]].sum() for g in np.flatnonzero(cal_mask))),
        }
    )
    return opts.calibration_file(
        task="hip_xr",
        rule=XR_RULE,
        thresholds=merged,
        measurements=measurements,
        aggregation={
            "method": "single_image",
            "unit": "radiograph",
            "score": "max over both hips of the one-sided nonconformity score",
        },
        joint=joint_info,
        provenance=provenance,
        statement=statement,
        conditional_on="radiographs with a truly abnormal hip" if guarantee == "abnormal" else "all radiographs",
        unit="radiograph (both hips)",
        min_n_for_finite=min_calibration_size(delta_f if mode != "bonferroni" else delta_f / 2),
    )


def requirement_lines(cal: CalibrationFile) -> list[str]:
    """What a hip needs for "normal within bounds", in raw-prediction terms."""
    lines = []
    for name in XR_NAMES:
        mc, threshold = cal.measurements[name], cal.thresholds[name]
        op = "<=" if mc.side == "upper" else ">="
        if mc.radius is None:
            lines.append(
                f"{name} {op} {threshold:g}: infinite bound (n={mc.n} < {min_calibration_size(mc.delta)} "
                "needed): no hip can be called normal within bounds"
            )
            continue
        need = threshold - mc.radius if mc.side == "upper" else threshold + mc.radius
        raw = ""
        if abs(mc.a) > 1e-12:
            raw_op = op if mc.a > 0 else ("<=" if op == ">=" else ">=")
            raw = f" (raw prediction {raw_op} {(need - mc.b) / mc.a:.1f})"
        lines.append(f"{name} {op} {threshold:g} needs a corrected {name} {op} {need:.1f}{raw}")
    return ["normal within bounds needs both of:"] + lines
