"""calibration.json of a bmd bundle, and site recalibration for a new device (numpy + ONNX Runtime, no torch).

``calibrate_bundle(BUNDLE)``: the bundle's runtime model (INT8 when present) reads the validation patients
(affine correction true ~ a raw + b) and the calibration patients (conformal radius) of its training folder. One
score per radiograph: the larger |a raw + b - true| of its in-field hips; the radius is the split-conformal rank
ceil((n + 1)(1 - delta)) of the n scores, so P(both hips of a new radiograph inside their intervals) >= 1 - delta
for radiographs exchangeable with the calibration ones (same devices, same population).

``site_recalibration(raw, true, ...)``: a new device breaks that exchangeability. Given a few labelled
radiographs of the device, half refit the affine correction, the other half give the conformal radius (with n
images the rank needs n >= 1 / delta - 1, so 10 images suffice at delta 0.1). The screening bound is recalibrated
on the device too (``fit_site_calibration``): on the osteoporotic hips of the site's radiographs, to which the site
adds radiographs of patients with a DEXA-confirmed osteoporosis (the bound is conditional on osteoporosis, so
such a sample is what it needs); with fewer than the rank needs the radius is None and every hip is referred. The
bundle's own screening radius is never carried to a new device: measured, it cleared 11.7 % of device E's
osteoporotic hips after the site's affine correction. The rest of the device's radiographs measure the coverage
and the screening call before and after.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sonogate.calibration.calfile import CalibrationFile, MeasurementCalibration
from sonogate.calibration.conformal import fit_affine, one_sided_radius
from sonogate.core.bundle import load_bundle
from sonogate.errors import DataError
from sonogate.tasks.bmd.data import (
    HELD_OUT_DEVICES,
    BmdFolder,
    bundle_split_seed,
    letterbox_gray,
    read_bmd_folder,
    split_patients,
)

PHANTOM_MANUFACTURER = "sonogate phantom"
RULE = ("per hip: no referral only when the T-score of the osteoporosis-conditional lower bound (bmd_g_cm2_decision) "
        "> -2.5")
OSTEOPOROSIS_G_CM2 = 0.858 - 2.5 * 0.120


def bundle_predictions(bundle_dir: str | Path, folder: BmdFolder, idx: np.ndarray, precision: str = "auto",
                       batch: int = 8, progress: bool = True) -> dict[str, np.ndarray]:
    """The bundle's graph (``precision``: "auto" = what the runtime uses) on radiographs ``idx`` of ``folder``:
    every output, stacked (bmd (n, 2), landmarks (n, 4, 2), ...)."""
    import cv2
    from tqdm import tqdm

    from sonogate.runtime.model_api import InferenceAdapter

    bundle = load_bundle(bundle_dir)
    adapter = InferenceAdapter(bundle, device="ort-cpu", threads=1, precision=precision)
    pre = bundle.preprocessing
    parts: dict[str, list] = {}
    for s in tqdm(range(0, len(idx), batch), desc="bmd predictions", disable=not progress, unit="batch"):
        x = []
        for i in idx[s:s + batch]:
            gray = cv2.imread(str(folder.root / folder.images[i]), cv2.IMREAD_GRAYSCALE)
            if gray is None:
                raise DataError(f"cannot read radiograph {folder.root / folder.images[i]}")
            x.append((letterbox_gray(gray, pre.height).astype(np.float32) / 255.0 - pre.mean) / pre.std)
        out = adapter.infer_sync({"image": np.stack(x)[:, None]})
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in parts.items()}


def image_scores(corrected: np.ndarray, true: np.ndarray, in_field: np.ndarray) -> np.ndarray:
    """One interval score per radiograph: max over its in-field hips of |corrected - true| (nan: none in field)."""
    err = np.where(in_field, np.abs(corrected - true), -np.inf)
    score = err.max(axis=1)
    return np.where(np.isfinite(score), score, np.nan)


def fit_interval(raw_fit, true_fit, in_fit, raw_conf, true_conf, in_conf, delta: float,
                 slope: float | None = None) -> dict:
    """Affine (a, b) from the first set's in-field hips (``slope`` given: a kept, only the offset b fitted),
    radius from the second set's per-radiograph scores."""
    if slope is None:
        a, b = fit_affine(raw_fit[in_fit], true_fit[in_fit])
    else:
        a, b = slope, float(np.mean(true_fit[in_fit] - slope * raw_fit[in_fit]))
    scores = image_scores(a * raw_conf + b, true_conf, in_conf)
    scores = scores[np.isfinite(scores)]
    radius, k = one_sided_radius(scores, delta)
    return {"a": float(a), "b": float(b), "radius": radius, "n": int(scores.size), "k": int(k)}


def fit_decision_radius(raw, true, in_field, a: float, b: float, delta: float) -> dict:
    """The screening bound's radius, conditional on osteoporosis (Mondrian split conformal): one score per
    radiograph with an osteoporotic in-field hip (true T <= -2.5), the largest a raw + b - true of those hips; the
    radius is the conformal rank of these scores, so P(a raw + b - radius > true | osteoporotic) <= delta and an
    osteoporotic hip is cleared (lower bound's T > -2.5) with probability <= delta. None (never clear) when there
    are too few osteoporotic radiographs for the rank (n < 1 / delta - 1)."""
    osteo = in_field & (true <= OSTEOPOROSIS_G_CM2)
    err = np.where(osteo, a * raw + b - true, -np.inf).max(axis=1)
    scores = err[np.isfinite(err)]
    if scores.size == 0:
        return {"radius": None, "n": 0, "k": 0}
    radius, k = one_sided_radius(scores, delta)
    return {"radius": radius, "n": int(scores.size), "k": int(k)}


def coverage(raw, true, in_field, cal: dict) -> dict:
    """Share of in-field hips and of radiographs (all hips) inside a x raw + b +- radius; mean width; RMSE."""
    corrected = cal["a"] * raw + cal["b"]
    r = math.inf if cal["radius"] is None else cal["radius"]
    inside = np.abs(corrected - true) <= r
    per_image = np.all(inside | ~in_field, axis=1)
    err = (corrected - true)[in_field]
    return {"hip_coverage": round(float(inside[in_field].mean()), 4), "image_coverage": round(float(per_image.mean()), 4),
            "interval_width": None if not math.isfinite(r) else round(2 * r, 4),
            "rmse": round(float(np.sqrt(np.mean(err**2))), 4), "bias": round(float(err.mean()), 4)}


def phantom_devices(letters) -> list[str]:
    """The acquisition-device names of phantom devices (``sonogate phantom bmd --device``) as a DICOM header of
    theirs would state them: "sonogate phantom A", ..."""
    return [f"{PHANTOM_MANUFACTURER} {letter}" for letter in sorted(set(letters))]


def calibration_file(cal: dict, delta: float, bundle_sha256: str | None, data: dict, holds_for: str,
                     devices: list[str] | None = None) -> CalibrationFile:
    """calibration.json of a bmd bundle from a fit (``fit_interval`` plus ``decision_radius`` / ``_n`` / ``_k``):
    the interval's lower and upper bounds and the osteoporosis-conditional screening bound; ``devices``: the
    acquisition devices they hold for (the runtime refers every hip of a DICOM radiograph from another; None: not
    bound)."""
    common = {"a": cal["a"], "b": cal["b"], "radius": cal["radius"], "n": cal["n"], "k": cal["k"], "delta": delta}
    decision = {**common, "radius": cal["decision_radius"], "n": cal["decision_n"], "k": cal["decision_k"]}
    return CalibrationFile(
        delta=delta, rule=RULE, mode="interval", thresholds={"t_score": -2.5, "bmd_g_cm2": OSTEOPOROSIS_G_CM2},
        measurements={"bmd_g_cm2": MeasurementCalibration(side="lower", **common),
                      "bmd_g_cm2_upper": MeasurementCalibration(side="upper", **common),
                      "bmd_g_cm2_decision": MeasurementCalibration(side="lower", **decision)},
        bundle_sha256=bundle_sha256, task="bmd", data=data,
        guarantee={"what": "P(every in-field hip of a radiograph has its true femoral-neck BMD inside "
                           "[bmd_lower, bmd_upper]) >= 1 - delta; P(an osteoporotic hip is cleared) <= delta "
                           "(bmd_g_cm2_decision, conditional on osteoporosis; radius null = too few osteoporotic "
                           "calibration radiographs: every hip referred)",
                   "unit": "radiograph", "holds_for": holds_for, "devices": devices},
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def calibrate_bundle(bundle_dir: str | Path, data: str | Path | None = None, delta: float = 0.1,
                     log: Callable[[str], None] = print, extra: str | Path | None = None) -> Path:
    """Write BUNDLE/calibration.json (module docstring); ``data``: the labelled folder (default: the training
    folder named in the manifest); ``extra``: a further labelled folder whose radiographs of the training devices
    (A-D; other patients) join the conformal set (more osteoporotic radiographs for the screening bound).
    Returns its path."""
    bundle = load_bundle(bundle_dir)
    config = ((bundle.manifest.get("provenance") or {}).get("train_config") or {})
    root = Path(data or config.get("data", ""))
    folder = read_bmd_folder(root)
    splits = split_patients(folder, bundle_split_seed(bundle.manifest))
    val, cal = splits["val"], splits["cal"]
    p_val = bundle_predictions(bundle_dir, folder, val)
    p_cal = bundle_predictions(bundle_dir, folder, cal)
    raw_c, true_c, in_c = p_cal["bmd"], folder.bmd[cal], folder.in_field[cal]
    n_extra = 0
    if extra is not None:
        more = read_bmd_folder(extra)
        keep = np.flatnonzero(~np.isin(more.devices, HELD_OUT_DEVICES))
        p_more = bundle_predictions(bundle_dir, more, keep)
        raw_c = np.concatenate([raw_c, p_more["bmd"]])
        true_c = np.concatenate([true_c, more.bmd[keep]])
        in_c = np.concatenate([in_c, more.in_field[keep]])
        n_extra = len(keep)
    fit = fit_interval(p_val["bmd"], folder.bmd[val], folder.in_field[val], raw_c, true_c, in_c, delta)
    decision = fit_decision_radius(raw_c, true_c, in_c, fit["a"], fit["b"], delta)
    calibration = calibration_file(
        {**fit, "decision_radius": decision["radius"], "decision_n": decision["n"], "decision_k": decision["k"]},
        delta, bundle.bundle_hash,
        data={"folder": str(root.resolve()), "affine_fit": f"{len(val)} validation radiographs (devices A-D)",
              "conformal": f"{len(cal)} calibration radiographs (devices A-D, patients unseen in training)"
                           + (f" + {n_extra} radiographs of devices A-D from {Path(extra).resolve()}" if extra else ""),
              "model_variant": "the runtime's (INT8 when the bundle has one)"},
        holds_for="radiographs exchangeable with the calibration set (devices A-D); a new device needs site "
                  "recalibration",
        devices=phantom_devices(folder.devices[cal]))
    path = Path(bundle_dir) / "calibration.json"
    calibration.save(path)
    log(f"calibration.json: a {fit['a']:.3f}, b {fit['b']:+.3f}, radius {fit['radius']} g/cm2 (n {fit['n']}, "
        f"k {fit['k']}, delta {delta}); osteoporosis-conditional radius {decision['radius']} (n {decision['n']} "
        f"radiographs with an osteoporotic hip, k {decision['k']})")
    return path


def cleared(raw, true, in_field, cal: dict, t_threshold: float = -2.5) -> dict:
    """The screening call of in-field hips under ``cal``: share of osteoporotic hips (true T <= -2.5) cleared
    (lower bound's T-score above the threshold: the unsafe error) and the referral rate."""
    radius = cal.get("decision_radius", cal["radius"])
    r = math.inf if radius is None else radius
    lower_t = (cal["a"] * raw + cal["b"] - r - 0.858) / 0.120
    clear = (lower_t > t_threshold)[in_field]
    osteo = ((true - 0.858) / 0.120 <= t_threshold)[in_field]
    return {"osteoporotic_cleared_share": float((clear & osteo).sum() / max(osteo.sum(), 1)) if osteo.any() else None,
            "osteoporotic_cleared": int((clear & osteo).sum()), "osteoporotic_hips": int(osteo.sum()),
            "referral_rate": float(1 - clear.mean())}


def minimum_osteoporotic(delta: float) -> int:
    """Radiographs with an osteoporotic hip that the screening radius needs at ``delta`` (the rank
    ceil((n + 1)(1 - delta)) must not exceed n: n >= 1 / delta - 1)."""
    return math.ceil(1.0 / delta - 1.0 - 1e-9)


def fit_site_calibration(raw, true, in_field, fit_idx, conformal_idx, osteoporotic_idx, delta: float,
                         slope: float | None = None) -> dict:
    """A device's own calibration: the correction from radiographs ``fit_idx`` (``slope`` given: the bundle's
    slope kept and only the offset refitted, the device's bias; None: slope and offset), interval radius from
    ``conformal_idx`` (a random sample of the site), screening radius from the osteoporotic hips of
    ``conformal_idx`` and ``osteoporotic_idx`` (radiographs of DEXA-confirmed osteoporotic patients; disjoint
    from ``fit_idx``) under that correction. ``decision_radius`` None: too few, every hip referred."""
    fit_idx, conformal_idx = np.asarray(fit_idx, dtype=np.int64), np.asarray(conformal_idx, dtype=np.int64)
    # ten radiographs fix a bias well and a slope badly (a refitted slope doubled device E's interval)
    cal = fit_interval(raw[fit_idx], true[fit_idx], in_field[fit_idx], raw[conformal_idx], true[conformal_idx],
                       in_field[conformal_idx], delta, slope)
    screen_idx = np.union1d(conformal_idx, np.asarray(osteoporotic_idx, dtype=np.int64))
    decision = fit_decision_radius(raw[screen_idx], true[screen_idx], in_field[screen_idx], cal["a"], cal["b"], delta)
    cal.update({"decision_radius": decision["radius"], "decision_n": decision["n"], "decision_k": decision["k"]})
    return cal


def osteoporotic_images(true: np.ndarray, in_field: np.ndarray) -> np.ndarray:
    """Indices of the radiographs with an in-field osteoporotic hip (true T <= -2.5)."""
    return np.flatnonzero(np.any(in_field & (true <= OSTEOPOROSIS_G_CM2), axis=1))


def site_recalibration(raw: np.ndarray, true: np.ndarray, in_field: np.ndarray, base: dict, n_site: int,
                       delta: float, draws: int = 50, seed: int = 0, n_osteoporotic: int | None = None,
                       refit: str = "offset") -> dict:
    """Coverage, error and screening call of one device's radiographs before (``base`` calibration) and after
    recalibration, averaged over ``draws`` random picks; each pick recalibrates on ``n_site`` random radiographs
    (half affine, half interval radius) plus ``n_osteoporotic`` (default: the minimum the rank needs) radiographs
    with an osteoporotic hip (the screening radius, ``fit_site_calibration``), and is judged on the device's
    other radiographs. ``after_random_only``: the same without the osteoporotic sample (the screening radius from
    the random radiographs alone: usually too few, every hip referred). ``refit`` "offset" keeps the bundle's slope
    (``base["a"]``), "affine" refits it too."""
    rng = np.random.default_rng(seed)
    n = len(raw)
    n_osteoporotic = minimum_osteoporotic(delta) if n_osteoporotic is None else int(n_osteoporotic)
    if n < n_site + 10:
        raise DataError(f"{n} radiographs of the device: need at least {n_site + 10} for site recalibration")
    osteo_all = osteoporotic_images(true, in_field)
    slope = base["a"] if refit == "offset" else None
    before, after, random_only = [], [], []
    for _ in range(draws):
        perm = rng.permutation(n)
        site, rest = perm[:n_site], perm[n_site:]
        half = n_site // 2
        fit_idx, conformal_idx = site[:half], site[half:]
        candidates = np.intersect1d(osteo_all, rest)
        extra = rng.choice(candidates, size=min(n_osteoporotic, candidates.size), replace=False)
        judged = np.setdiff1d(rest, extra)
        cal = fit_site_calibration(raw, true, in_field, fit_idx, conformal_idx, extra, delta, slope)
        plain = fit_site_calibration(raw, true, in_field, fit_idx, conformal_idx, [], delta, slope)
        r, t, f = raw[judged], true[judged], in_field[judged]
        before.append({**coverage(r, t, f, base), **cleared(r, t, f, base)})
        after.append({**coverage(r, t, f, cal), **cleared(r, t, f, cal)})
        random_only.append({**coverage(r, t, f, plain), **cleared(r, t, f, plain)})

    def mean(blocks, key):
        values = [b[key] for b in blocks if b[key] is not None]
        return round(float(np.mean(values)), 4) if values else None

    keys = ("hip_coverage", "image_coverage", "interval_width", "rmse", "bias", "osteoporotic_cleared_share",
            "referral_rate")
    return {"n_site_images": n_site, "n_osteoporotic_images": n_osteoporotic, "refit": refit,
            "n_device_osteoporotic_images": int(osteo_all.size), "draws": draws, "n_images": n,
            "before": {k: mean(before, k) for k in keys}, "after": {k: mean(after, k) for k in keys},
            "after_random_only": {k: mean(random_only, k) for k in keys},
            "pooled_osteoporotic_cleared": {name: _pooled(blocks) for name, blocks in
                                            (("before", before), ("after", after), ("after_random_only", random_only))}}


def _pooled(blocks: list[dict]) -> dict:
    """Osteoporotic hips cleared over all draws (judged hips repeat across draws: the interval is indicative)."""
    from sonogate.calibration.site import wilson_interval

    cleared_hips = sum(b["osteoporotic_cleared"] for b in blocks)
    hips = sum(b["osteoporotic_hips"] for b in blocks)
    low, high = wilson_interval(cleared_hips, hips) if hips else (None, None)
    return {"cleared": int(cleared_hips), "osteoporotic_hips": int(hips),
            "share": round(cleared_hips / hips, 4) if hips else None,
            "ci95": None if low is None else [round(low, 4), round(high, 4)]}
