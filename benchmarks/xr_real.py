"""The X-ray bundle on the 10 real pelvic radiographs of ../shared/data/hip-radiopaedia-ddh (CC BY 4.0).

    .venv/bin/python benchmarks/xr_real.py --bundle out/xr_bundle --out benchmarks/results

Per image: the reference AI per hip from the Retuve landmark JSON (``sonogate.tasks.hip_xr.data.retuve_reference``: sides
by image position, Hilgenreiner through both pel_*_i, AI to pel_*_o), the bundle's AI (raw and, with a
calibration, corrected with its upper bound) through ``XrayModel`` (the runtime path, torch-free), the
absolute error, and the landmark error in image pixels (triradiate and acetabular edge; the JSONs have no
head centre or H-point). CE is reported only where the JSON's fem_* is a point of its own: in the shared files
it is always identical to pel_*_i, so no CE reference exists. A no-skill baseline (leave-one-image-out mean of
the reference AIs) puts the MAE in context. ``331_DDH_1.dcm`` holds the pixels of ``331_DDH_12.dcm``; its own
pixels are taken from ``other/xray/331_DDH_1.jpg``.

Writes ``xr_real.json`` and ``xr_real.md``. The labels are Retuve model output, not expert ground truth.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "hip-radiopaedia-ddh"
WRONG_PIXELS = {"331_DDH_1": "DICOM holds the pixels of 331_DDH_12; its JPG is used"}
SIDES = ("right", "left")


def evaluate(bundle: str, data: Path = DATA, device: str = "auto") -> dict:
    """Run the bundle on every radiograph that has a landmark JSON. Output: the report dict."""
    from sonogate.data.dicom import read_dicom
    from sonogate.runtime.analyze import XrayModel
    from sonogate.tasks.hip_xr.data import retuve_reference

    model = XrayModel(bundle, device=device, threads=1)
    rows = []
    for label in sorted((data / "labels" / "xray").glob("*.json")):
        name = label.stem
        ref = retuve_reference(json.loads(label.read_text()))
        notes: list[str] = []
        if name in WRONG_PIXELS:
            frame, image, source = cv2.imread(str(data / "other" / "xray" / f"{name}.jpg")), None, "jpg"
        else:
            image = read_dicom(data / "dicoms" / "xray" / f"{name}.dcm")
            frame, source = image.frames[0], "dicom"
        t0 = time.perf_counter()
        hips = model.measure(frame, image, notes)
        ms = (time.perf_counter() - t0) * 1000
        row = {
            "image": name,
            "pixels": source,
            "note": WRONG_PIXELS.get(name),
            "ms": round(ms, 1),
            "json_sides_follow_image": ref.json_sides_follow_image,
            "hips": {},
        }
        for side in SIDES:
            hip = hips[side]
            ai = hip["ai_deg"]
            entry = {
                "ai_ref": round(ref.ai_deg[side], 2),
                "ai_value": ai["value"],
                "ai_upper_bound": ai["upper_bound"],
                "ai_raw": (hip.get("raw") or {}).get("ai_deg"),
                "ce_ref": ref.ce_deg[side],
                "ce_value": hip["ce_deg"]["value"],
                "fem_is_inner": ref.fem_is_inner[side],
                "verdict": (hip.get("verdict") or {}).get("value"),
                "ihdi": (hip.get("ihdi") or {}).get("grade"),
            }
            pred_raw = entry["ai_raw"] if entry["ai_raw"] is not None else ai["value"]
            entry["ai_abs_err_raw"] = None if pred_raw is None else round(abs(pred_raw - ref.ai_deg[side]), 2)
            entry["ai_abs_err_value"] = None if ai["value"] is None else round(abs(ai["value"] - ref.ai_deg[side]), 2)
            lms = hip.get("landmarks") or {}
            for key in ("triradiate", "acetabular_edge"):
                if key in lms:
                    rx, ry = ref.landmarks[f"{key}_{side[0]}"]
                    entry[f"{key}_err_px"] = round(float(math.hypot(lms[key][0] - rx, lms[key][1] - ry)), 1)
            row["hips"][side] = entry
        rows.append(row)

    hips = [h for r in rows for h in r["hips"].values()]
    refs = np.array([h["ai_ref"] for h in hips])
    loo = np.array([(refs.sum() - v) / (len(refs) - 1) for v in refs]) if len(refs) > 1 else refs
    errors_raw = [h["ai_abs_err_raw"] for h in hips if h["ai_abs_err_raw"] is not None]
    errors_val = [h["ai_abs_err_value"] for h in hips if h["ai_abs_err_value"] is not None]
    lm = {k: [h[f"{k}_err_px"] for h in hips if f"{k}_err_px" in h] for k in ("triradiate", "acetabular_edge")}
    manifest = model.bundle.manifest
    summary = {
        "n_images": len(rows),
        "n_hips": len(hips),
        "ai_mae_raw_deg": round(float(np.mean(errors_raw)), 2) if errors_raw else None,
        "ai_mae_calibrated_value_deg": round(float(np.mean(errors_val)), 2)
        if errors_val and model.calibration
        else None,
        "ai_mae_no_skill_baseline_deg": round(float(np.mean(np.abs(loo - refs))), 2),
        "ai_reference_range_deg": [round(float(refs.min()), 1), round(float(refs.max()), 1)],
        "landmark_error_px": {k: round(float(np.mean(v)), 1) for k, v in lm.items() if v},
        "image_width_px": 331,
        "ce": f"no reference: fem_* equals pel_*_i in {sum(h['fem_is_inner'] for h in hips)} of {len(hips)} hips",
        "hips_called_normal_within_bounds": sum(h["verdict"] == "normal within bounds" for h in hips),
        "ms_per_radiograph_median": float(np.median([r["ms"] for r in rows])),
    }
    return {
        "bundle": str(bundle),
        "bundle_sha256": model.bundle.bundle_hash,
        "calibration": None
        if model.calibration is None
        else {"sha256": model.calibration_sha256, "delta": model.calibration.delta, "mode": model.calibration.mode},
        "device": model.device_name,
        "data": "hip-radiopaedia-ddh X-ray (Fraiwan et al. 2022, Mendeley Data, doi:10.17632/jf3pv98m9g.2, CC BY 4.0); "
        "landmarks generated by Retuve (not expert ground truth)",
        "phantom_heldout": manifest.get("provenance", {}).get("metrics", {}).get("heldout"),
        "summary": summary,
        "images": rows,
    }


def write_markdown(report: dict, path: Path) -> None:
    s = report["summary"]
    ph = report.get("phantom_heldout") or {}
    cal = report["calibration"]
    cal_text = "none" if cal is None else f"{cal['mode']}, delta {cal['delta']}"
    lines = [
        "# X-ray bundle on the real pelvic radiographs",
        "",
        (
            f"Bundle `{report['bundle']}` (sha256 {report['bundle_sha256'][:12]}), device {report['device']}, "
            f"calibration: {cal_text}."
        ),
        f"Data: {report['data']}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| AI MAE, raw model output ({s['n_hips']} hips, {s['n_images']} images) | {s['ai_mae_raw_deg']} deg |",
        f"| AI MAE, calibrated value (affine-corrected) | {s['ai_mae_calibrated_value_deg']} deg |",
        f"| AI MAE of a no-skill baseline (leave-one-out mean of the references) | {s['ai_mae_no_skill_baseline_deg']} deg |",
        f"| reference AI range | {s['ai_reference_range_deg'][0]} - {s['ai_reference_range_deg'][1]} deg |",
        (
            f"| landmark error, triradiate / acetabular edge (331 px images) | "
            f"{s['landmark_error_px'].get('triradiate')} / {s['landmark_error_px'].get('acetabular_edge')} px |"
        ),
        f"| CE | {s['ce']} |",
        f"| hips called normal within bounds | {s['hips_called_normal_within_bounds']} of {s['n_hips']} |",
        f"| phantom held-out AI / CE MAE (same model) | {ph.get('ai_deg', {}).get('mae')} / {ph.get('ce_deg', {}).get('mae')} deg |",
        "",
        "| image | pixels | AI ref R / L | AI raw R / L | abs err R / L | triradiate err px R / L | edge err px R / L | verdict R / L |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["images"]:
        h = r["hips"]

        def pair(key, fmt="{:.1f}", h=h):
            return " / ".join("-" if h[side].get(key) is None else fmt.format(h[side][key]) for side in SIDES)

        lines.append(
            f"| {r['image']} | {r['pixels']} | {pair('ai_ref')} | {pair('ai_raw')} | {pair('ai_abs_err_raw')} | "
            f"{pair('triradiate_err_px')} | {pair('acetabular_edge_err_px')} | {pair('verdict', '{}')} |"
        )
    lines += [
        "",
        (
            "Sides: the pair of points on the image's left is the patient's right (radiographic convention; the "
            "JSONs' own l / r follows the image in only some files). CE is not evaluated: the JSONs' femoral point "
            "is the inner acetabular point, not a head centre."
        ),
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="out/xr_bundle", help="whole-pelvis X-ray bundle")
    parser.add_argument("--out", default="benchmarks/results", help="folder for xr_real.json / xr_real.md")
    parser.add_argument("--data", default=str(DATA), help="hip-radiopaedia-ddh folder")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    from sonogate.errors import SonogateError

    data = Path(args.data)
    if not (data / "labels" / "xray").is_dir():
        print(f"sonogate: error: real X-ray data not found at {data}", file=sys.stderr)
        return 2
    try:
        report = evaluate(args.bundle, data, args.device)
    except SonogateError as err:
        print(f"sonogate: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "xr_real.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out / "xr_real.md")
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
