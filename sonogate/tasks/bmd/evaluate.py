"""``sonogate bmd evaluate --bundle B --data DIR --out OUT``: a bmd bundle (the runtime's model, INT8 when present)
on the held-out patients and the held-out devices of a phantom folder (no torch).

OUT/evaluation.json: r, RMSE, MAE, osteoporosis AUC per split and device; interval coverage with the bundle's
calibration.json on the held-out patients (devices A-D) and on E / F before and after site recalibration (a few
labelled radiographs of the device, ``calibrate.site_recalibration``); the screening call on held-out patients
(sensitivity for osteoporosis, referral rate). OUT/bmd_scatter.png (predicted vs true BMD) and
OUT/bmd_bland_altman.png (difference vs mean).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from sonogate.calibration.calfile import load_calibration
from sonogate.core.bundle import load_bundle
from sonogate.tasks.bmd.calibrate import bundle_predictions, coverage, site_recalibration
from sonogate.tasks.bmd.data import HELD_OUT_DEVICES, bundle_split_seed, read_bmd_folder, split_patients
from sonogate.tasks.bmd.metrics import OSTEOPOROSIS_BMD, regression_block

T_MEAN, T_SD = 0.858, 0.120


def screening(corrected: np.ndarray, radius: float | None, true: np.ndarray, in_field: np.ndarray,
              t_threshold: float = -2.5) -> dict:
    """Per in-field hip: referral unless the lower bound's T-score > threshold; sensitivity for osteoporosis
    (true T <= -2.5) and the referral rate."""
    r = math.inf if radius is None else radius
    lower_t = (corrected - r - T_MEAN) / T_SD
    referred = (lower_t <= t_threshold)[in_field]
    osteo = (true <= OSTEOPOROSIS_BMD)[in_field]
    return {"n_hips": int(in_field.sum()), "n_osteoporotic": int(osteo.sum()),
            "osteoporotic_referred": int((referred & osteo).sum()),
            "sensitivity": None if not osteo.any() else round(float(referred[osteo].mean()), 4),
            "referral_rate": round(float(referred.mean()), 4),
            "osteoporotic_cleared": int((~referred & osteo).sum())}


def image_check_rates(bundle_dir: str, folder, splits: dict) -> dict:
    """Share of radiographs the runtime refuses whole by their image statistics (``BmdModel.image_distance`` above
    the bundle's threshold), per split and held-out device."""
    import cv2

    from sonogate.runtime.model_api import create_model
    from sonogate.tasks.bmd.data import letterbox_gray

    model = create_model(bundle_dir, device="ort-cpu")
    limit = model.checks.get("image_ood_threshold")
    p = model.bundle.preprocessing
    out = {"threshold": limit}
    groups = {"test (devices A-D)": splits["test"]}
    for device in HELD_OUT_DEVICES:
        groups[f"device {device}"] = splits["external"][folder.devices[splits["external"]] == device]
    for name, idx in groups.items():
        refused = 0
        for i in idx:
            gray = letterbox_gray(cv2.imread(str(folder.root / folder.images[i]), cv2.IMREAD_GRAYSCALE), p.height)
            x = (gray.astype(np.float32) / 255.0 - p.mean) / p.std
            d = model.image_distance(x)
            refused += int(d is not None and limit is not None and d > limit)
        out[name] = {"n_images": len(idx), "refused_share": round(refused / max(len(idx), 1), 4)}
    return out


def plots(pred: np.ndarray, true: np.ndarray, ext_pred: np.ndarray, ext_true: np.ndarray, out: Path,
          title: str) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.scatter(true, pred, s=9, alpha=0.6, label=f"held-out patients, devices A-D (r {np.corrcoef(pred, true)[0, 1]:.3f})")
    ax.scatter(ext_true, ext_pred, s=6, alpha=0.35, marker="x",
               label=f"held-out devices E/F, before recalibration (r {np.corrcoef(ext_pred, ext_true)[0, 1]:.3f})")
    lo, hi = 0.3, 1.3
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.axvline(OSTEOPOROSIS_BMD, color="grey", lw=0.8, ls=":")
    ax.axhline(OSTEOPOROSIS_BMD, color="grey", lw=0.8, ls=":")
    ax.set_xlim(lo, hi); ax.set_ylim(lo, hi)
    ax.set_xlabel("true femoral-neck BMD (g/cm2, phantom DXA label)")
    ax.set_ylabel("predicted BMD (g/cm2, bundle INT8, calibrated)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "bmd_scatter.png", dpi=110)
    plt.close(fig)
    files["scatter"] = str(out / "bmd_scatter.png")

    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    mean, diff = (pred + true) / 2, pred - true
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    ax.scatter(mean, diff, s=9, alpha=0.6)
    for y, label in ((bias, f"bias {bias:+.3f}"), (bias + 1.96 * sd, f"+1.96 SD {bias + 1.96 * sd:+.3f}"),
                     (bias - 1.96 * sd, f"-1.96 SD {bias - 1.96 * sd:+.3f}")):
        ax.axhline(y, color="k", lw=1, ls="-" if y == bias else "--")
        ax.text(mean.max(), y, label, fontsize=7, va="bottom", ha="right")
    ax.set_xlabel("mean of predicted and true BMD (g/cm2)")
    ax.set_ylabel("predicted - true (g/cm2)")
    ax.set_title(f"Bland-Altman, held-out patients (devices A-D): {pred.size} hips, bundle INT8, calibrated",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bmd_bland_altman.png", dpi=110)
    plt.close(fig)
    files["bland_altman"] = str(out / "bmd_bland_altman.png")
    return files


def evaluate_main(bundle_dir: str, data: str, out: str, site_images: int = 20, draws: int = 50,
                  osteoporotic: int | None = None, site_data: list[str] | None = None) -> int:
    """Write OUT/evaluation.json and the plots (module docstring); prints a summary line."""
    bundle = load_bundle(bundle_dir)
    calibration = load_calibration(bundle.calibration_path, bundle_hash=bundle.bundle_hash)
    cal = calibration.measurements["bmd_g_cm2"]
    decision = calibration.measurements.get("bmd_g_cm2_decision", cal)
    base = {"a": cal.a, "b": cal.b, "radius": cal.radius, "decision_radius": decision.radius,
            "decision_n": decision.n}
    folder = read_bmd_folder(data)
    splits = split_patients(folder, bundle_split_seed(bundle.manifest))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"bundle": str(Path(bundle_dir).resolve()), "bundle_sha256": bundle.bundle_hash,
                    "data": str(Path(data).resolve()), "delta": calibration.delta, "calibration": base}
    preds = {}
    for name in ("test", "external"):
        idx = splits[name]
        raw = bundle_predictions(bundle_dir, folder, idx)["bmd"]
        corrected = cal.a * raw + cal.b
        preds[name] = (idx, raw, corrected)
        inf = folder.in_field[idx]
        result[name] = {"raw": regression_block(raw[inf], folder.bmd[idx][inf]),
                        "calibrated": regression_block(corrected[inf], folder.bmd[idx][inf]),
                        "interval": coverage(raw, folder.bmd[idx], inf, base),
                        "screening": screening(corrected, decision.radius, folder.bmd[idx], inf)}
    result["image_check"] = image_check_rates(bundle_dir, folder, splits)
    idx, raw, _ = preds["external"]
    result["devices"] = {}
    site_folders = [read_bmd_folder(d) for d in site_data or ()]
    for device in HELD_OUT_DEVICES:
        m = folder.devices[idx] == device
        inf = folder.in_field[idx][m]
        block = {"n_images": int(m.sum()), "raw": regression_block(raw[m][inf], folder.bmd[idx][m][inf]),
                 "calibrated": regression_block((cal.a * raw[m] + cal.b)[inf], folder.bmd[idx][m][inf])}
        site_raw, site_true, site_inf = raw[m], folder.bmd[idx][m], inf
        site_folder = next((f for f in site_folders if np.any(f.devices == device)), None)
        if site_folder is not None:
            # a larger pool of the device (other patients) for the site study: more osteoporotic hips to judge
            keep = np.flatnonzero(site_folder.devices == device)
            site_raw = bundle_predictions(bundle_dir, site_folder, keep)["bmd"]
            site_true, site_inf = site_folder.bmd[keep], site_folder.in_field[keep]
            block["site_data"] = str(site_folder.root.resolve())
        block["site_recalibration"] = site_recalibration(site_raw, site_true, site_inf, base, site_images,
                                                         float(calibration.delta), draws,
                                                         n_osteoporotic=osteoporotic)
        result["devices"][device] = block
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    t_idx, _, t_corr = preds["test"]
    e_idx, _, e_corr = preds["external"]
    ti, ei = folder.in_field[t_idx], folder.in_field[e_idx]
    plots(t_corr[ti], folder.bmd[t_idx][ti], e_corr[ei], folder.bmd[e_idx][ei], out_dir,
          f"{Path(bundle_dir).name}: {int(ti.sum())} + {int(ei.sum())} hips")
    h, e = result["test"]["calibrated"], result["external"]["calibrated"]
    print(f"held-out patients: r {h['r']:.3f}, RMSE {h['rmse']:.4f} g/cm2, interval coverage "
          f"{result['test']['interval']['image_coverage']:.3f}; held-out devices: r {e['r']:.3f}, RMSE {e['rmse']:.4f}"
          f" ({out_dir / 'evaluation.json'})")
    return 0
