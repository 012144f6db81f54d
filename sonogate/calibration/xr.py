"""Calibration of a pelvic X-ray bundle: affine correction + one-sided split-conformal bounds per radiograph.

Bounds: acetabular index (AI) gets an **upper** bound (high AI is abnormal), centre-edge angle (CE) a **lower**
bound (low CE is abnormal). The runtime calls a hip "normal within bounds" only when AI upper bound <= 30 deg
and CE lower bound >= 20 deg (``sonogate.runtime.xr.hip_verdict``).

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

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sonogate.calibration.calfile import CalibrationFile, MeasurementCalibration
from sonogate.calibration.conformal import (
    as_fraction,
    fit_affine,
    max_score_radius,
    min_calibration_size,
    one_sided_radius,
    one_sided_scores,
)
from sonogate.calibration.fit import PRIOR_SCALES, PredictionTable, group_rows, group_split
from sonogate.errors import CalibrationError, DataError, SonogateError

XR_RULE = "xr_ai_ce"
XR_NAMES = ("ai_deg", "ce_deg")
XR_SIDES = {"ai_deg": "upper", "ce_deg": "lower"}
MODES = ("joint", "separate", "bonferroni")
GUARANTEES = ("marginal", "abnormal")


def predict_xr_folder(
    bundle_path: str | Path,
    data_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    precision: str = "auto",
    threads: int = 1,
) -> PredictionTable:
    """Run a whole-pelvis X-ray bundle over a labelled X-ray folder (``sonogate.data.xr``).

    Output: a PredictionTable with one row per hip (id ``<image>:R`` / ``:L``), ``group`` = radiograph,
    ``subject`` = patient, names ai_deg and ce_deg (raw model outputs and labels). The model variant is the one
    the runtime uses (``precision`` "auto": INT8 when present).
    """
    from sonogate.data.xr import read_xr_folder
    from sonogate.runtime.xr import XrPredictor

    predictor = XrPredictor(bundle_path, device=device, threads=threads, precision=precision)
    folder = read_xr_folder(data_dir)
    ids, groups, subjects, pred, true = [], [], [], [], []
    iterator = range(len(folder))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="predict", unit="radiograph")
    for i in iterator:
        out = predictor.predict(folder.load_gray(i))
        image = folder.image_paths[i].name
        for side, code in (("right", "R"), ("left", "L")):
            j = 0 if side == "right" else 2
            ids.append(f"{image}:{code}")
            groups.append(folder.image_paths[i].as_posix())
            subjects.append(folder.patients[i])
            pred.append([out.values[f"ai_deg_{side}"], out.values[f"ce_deg_{side}"]])
            true.append(folder.targets[i, j : j + 2])
    return PredictionTable(
        ids=np.array(ids),
        groups=np.array(groups),
        names=XR_NAMES,
        pred=np.array(pred),
        true=np.array(true),
        quality=np.ones(len(ids)),
        subjects=np.array(subjects),
    )


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


def fit_xr_calibration(
    table: PredictionTable,
    delta=0.1,
    mode: str = "joint",
    affine: bool = True,
    pac_gamma=None,
    seed: int = 0,
    affine_fraction: float = 0.5,
    bundle_sha256: str | None = None,
    data: dict | None = None,
    thresholds: Mapping[str, float] | None = None,
    guarantee: str = "marginal",
    scales: Mapping[str, float] | None = None,
) -> CalibrationFile:
    """Per-radiograph X-ray calibration (module docstring).

    Inputs: hip rows (``predict_xr_folder`` or a predictions CSV with pred_/true_ ai_deg and ce_deg, ``group`` =
    radiograph, ``subject`` = patient); ``delta``; ``mode`` joint | separate | bonferroni; ``affine`` and
    ``affine_fraction`` / ``seed`` of the split by patient; ``pac_gamma`` for a training-conditional radius;
    ``thresholds`` override ai_deg=30 / ce_deg=20; ``guarantee`` marginal | abnormal; ``scales`` fixed
    max-score scales. Output: CalibrationFile (task hip_xr; radius None = infinite bound).
    """
    from sonogate import __version__
    from sonogate.runtime.xr import XR_THRESHOLDS

    try:
        delta_f = as_fraction(delta)
        gamma_f = None if pac_gamma is None else as_fraction(pac_gamma, "gamma")
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"bad delta or PAC gamma: {exc}") from None
    if mode not in MODES:
        raise CalibrationError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    if guarantee not in GUARANTEES:
        raise CalibrationError(f"unknown guarantee {guarantee!r} (choose from {', '.join(GUARANTEES)})")
    if not 0 < affine_fraction < 1:
        raise CalibrationError(f"affine_fraction must be in (0, 1), got {affine_fraction}")
    idx = [table.index(n) for n in XR_NAMES]  # DataError when a column is missing
    pred, true = table.pred[:, idx], table.true[:, idx]
    for j, name in enumerate(XR_NAMES):
        if not np.any(np.isfinite(true[:, j])):
            raise DataError(f"the calibration data has no true values for {name}: calibration needs labelled hips")
    merged = dict(XR_THRESHOLDS)
    merged.update({k: float(v) for k, v in (thresholds or {}).items()})

    radiographs, subjects, rows = _per_radiograph(table)
    if affine:
        fit_mask, cal_mask = group_split(subjects, [affine_fraction, 1 - affine_fraction], seed)
        if not fit_mask.any() or not cal_mask.any():
            raise CalibrationError(
                f"the affine/conformal split needs at least 2 patients (have "
                f"{len(np.unique(subjects))}); use --no-affine"
            )
    else:
        fit_mask = np.zeros(len(radiographs), dtype=bool)
        cal_mask = np.ones(len(radiographs), dtype=bool)
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
        scale_map, source = {}, {}
        for j, n in enumerate(XR_NAMES):
            resid = (true[fit_rows, j] - (ab[n][0] * pred[fit_rows, j] + ab[n][1])) if len(fit_rows) else np.zeros(0)
            resid = resid[np.isfinite(resid)]
            value = float(np.mean(np.abs(resid))) if resid.size >= 2 else math.nan
            if math.isfinite(value) and value > 1e-9:
                scale_map[n], source[n] = value, "affine split mean |residual| (hips pooled)"
            else:
                scale_map[n], source[n] = PRIOR_SCALES[n], "prior (seed paper MAE)"
    else:
        scale_map = {n: float(scales.get(n, PRIOR_SCALES[n])) for n in XR_NAMES}
        source = {n: "given" for n in XR_NAMES}

    measurements: dict[str, MeasurementCalibration] = {}
    joint_info = None
    if mode == "joint":
        s = per_radiograph[np.all(np.isfinite(per_radiograph), axis=1)]
        t, k = max_score_radius(s, np.array([scale_map[n] for n in XR_NAMES]), delta_f, gamma_f)
        for n in XR_NAMES:
            measurements[n] = MeasurementCalibration(
                side=XR_SIDES[n],
                a=ab[n][0],
                b=ab[n][1],
                radius=None if t is None else float(t * scale_map[n]),
                n=len(s),
                k=int(k),
                delta=float(delta_f),
            )
        joint_info = {
            "method": "max_scaled_score over both hips and both measures per radiograph",
            "measurements": list(XR_NAMES),
            "scales": scale_map,
            "scale_source": source,
            "t": t,
            "n": len(s),
            "k": int(k),
            "delta": float(delta_f),
        }
    else:
        per_delta = delta_f / len(XR_NAMES) if mode == "bonferroni" else delta_f
        for j, n in enumerate(XR_NAMES):
            s = per_radiograph[:, j]
            s = s[np.isfinite(s)]
            radius, k = one_sided_radius(s, per_delta, gamma_f)
            measurements[n] = MeasurementCalibration(
                side=XR_SIDES[n], a=ab[n][0], b=ab[n][1], radius=radius, n=int(s.size), k=int(k), delta=float(per_delta)
            )
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
    provenance = dict(data or {})
    provenance.update(
        {
            "n_rows": len(table),
            "n_radiographs": len(radiographs),
            "n_patients": int(n_patients),
            "split_by": "subject" if table.subjects is not None else "group",
            "seed": int(seed),
            "affine": bool(affine),
            "affine_fraction": float(affine_fraction) if affine else 0.0,
            "n_radiographs_affine": int(fit_mask.sum()),
            "n_radiographs_calibration": int(cal_mask.sum()),
            "n_calibration_scores": len(cal_groups),
            "n_hips_truly_abnormal_calibration": int(sum(abnormal[rows[g]].sum() for g in np.flatnonzero(cal_mask))),
        }
    )
    return CalibrationFile(
        delta=float(delta_f),
        rule=XR_RULE,
        mode=mode,
        thresholds=merged,
        measurements=measurements,
        bundle_sha256=bundle_sha256,
        task="hip_xr",
        aggregation={
            "method": "single_image",
            "unit": "radiograph",
            "score": "max over both hips of the one-sided nonconformity score",
        },
        joint=joint_info,
        data=provenance,
        guarantee={
            "statement": statement,
            "conditional_on": "radiographs with a truly abnormal hip" if guarantee == "abnormal" else "all radiographs",
            "kind": guarantee,
            "pac_gamma": None if gamma_f is None else float(gamma_f),
            "unit": "radiograph (both hips)",
            "infinite": [n for n, m in measurements.items() if m.radius is None],
            "min_n_for_finite": min_calibration_size(delta_f if mode != "bonferroni" else delta_f / 2),
        },
        created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        sonogate_version=__version__,
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


def is_xr_request(args) -> bool:
    """``sonogate calibrate`` dispatch: ``--modality xr``, or ``--modality auto`` with a bundle whose task is
    hip_xr."""
    modality = getattr(args, "modality", "auto")
    if modality != "auto":
        return modality == "xr"
    if not getattr(args, "bundle", None):
        return False
    from sonogate.core.bundle import load_bundle

    try:
        return load_bundle(args.bundle, verify=False).task == "hip_xr"
    except SonogateError:  # the ultrasound path reports a bad bundle with its own message
        return False


def cmd_calibrate_xr(args) -> int:
    """``sonogate calibrate`` for an X-ray bundle or X-ray predictions CSV (--rule and aggregation flags do not
    apply: the verdict is fixed, one image per radiograph)."""
    import hashlib

    from sonogate.calibration.cli import _thresholds, save_calibration
    from sonogate.calibration.fit import read_predictions_csv

    try:
        delta = as_fraction(args.delta, "--delta")
        gamma = None if args.pac_gamma is None else as_fraction(args.pac_gamma, "--pac-gamma")
    except (TypeError, ValueError) as exc:
        raise CalibrationError(str(exc)) from None
    if args.predictions and not args.out:
        raise SonogateError("--out FILE.json is required with --predictions")
    bundle = None
    if args.predictions:
        if args.data:
            raise SonogateError("--data goes with --bundle, not with --predictions")
        path = Path(args.predictions)
        table = read_predictions_csv(path)
        provenance: dict[str, Any] = {
            "source": "predictions_csv",
            "path": str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    else:
        if not args.data:
            raise DataError("--bundle needs --data DIR (a labelled X-ray folder)")
        from sonogate.core.bundle import load_bundle

        bundle = load_bundle(args.bundle)  # verifies every file: never calibrate a tampered bundle
        table = predict_xr_folder(args.bundle, args.data, device=args.device, progress=True)
        provenance = {"source": "image_folder", "path": str(args.data), "bundle": str(args.bundle)}
    cal = fit_xr_calibration(
        table,
        delta=delta,
        mode=args.mode,
        affine=not args.no_affine,
        pac_gamma=gamma,
        seed=args.seed,
        affine_fraction=args.affine_fraction,
        bundle_sha256=None if bundle is None else bundle.bundle_hash,
        data=provenance,
        thresholds=_thresholds(args.threshold),
        guarantee=args.guarantee,
    )
    out = Path(args.out) if args.out else bundle.calibration_path
    save_calibration(cal, out)
    d = cal.data
    print(
        f"calibrated X-ray bounds per radiograph (max over both hips), mode {cal.mode}, delta {cal.delta:g}, "
        f"guarantee {args.guarantee}"
    )
    print(
        f"  {d['n_radiographs']} radiographs of {d['n_patients']} patients; split by {d['split_by']}: "
        f"{d['n_radiographs_affine']} affine, {d['n_radiographs_calibration']} calibration"
    )
    for name, mc in cal.measurements.items():
        radius = "infinite" if mc.radius is None else f"{mc.radius:.2f}"
        print(
            f"  {name:<8} {mc.side:<5} a={mc.a:.3f} b={mc.b:+.2f}  radius {radius:>8}  n={mc.n} k={mc.k} "
            f"(delta {mc.delta:g})"
        )
    print(f"  guarantee: {cal.guarantee['statement']}")
    for line in requirement_lines(cal):
        print(f"  {line}")
    print(f"wrote {out}" + (f" (bound to bundle {cal.bundle_sha256[:12]})" if cal.bundle_sha256 else ""))
    return 0
