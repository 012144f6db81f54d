"""Choose what the bmd site recalibration refits (offset only vs slope and offset) on validation data.

Each training device A-D is treated as a "new site" from the validation and calibration patients of the training
folder of ``bundles/bmd``: 50 draws of 20 labelled radiographs (10 refit, 10 give the interval radius), judged on
the device's other radiographs. Held-out devices E / F are not used for the choice.

    python scripts/bmd_site_refit.py [BMD_DATA_DIR] [--out benchmarks/results/bmd_site_refit.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sonogate.calibration.calfile import load_calibration
from sonogate.core.bundle import load_bundle
from sonogate.tasks.bmd.calibrate import bundle_predictions, site_recalibration
from sonogate.tasks.bmd.data import bundle_split_seed, read_bmd_folder, split_patients


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default="/work/scratch/bmd/data", help="training folder of the bundle")
    parser.add_argument("--bundle", default=str(ROOT / "bundles" / "bmd"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bmd_site_refit.json"))
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    cal = load_calibration(bundle.calibration_path, bundle_hash=bundle.bundle_hash)
    interval, decision = cal.measurements["bmd_g_cm2"], cal.measurements["bmd_g_cm2_decision"]
    base = {"a": interval.a, "b": interval.b, "radius": interval.radius, "decision_radius": decision.radius}
    folder = read_bmd_folder(args.data)
    splits = split_patients(folder, bundle_split_seed(bundle.manifest))
    idx = np.concatenate([splits["val"], splits["cal"]])
    raw = bundle_predictions(args.bundle, folder, idx)["bmd"]
    result: dict = {"bundle_sha256": bundle.bundle_hash, "data": str(Path(args.data).resolve()), "devices": {}}
    for device in "ABCD":
        m = folder.devices[idx] == device
        for refit in ("offset", "affine"):
            after = site_recalibration(raw[m], folder.bmd[idx][m], folder.in_field[idx][m], base, 20, 0.1, 50,
                                       n_osteoporotic=0, refit=refit)["after"]
            row = {k: after[k] for k in ("image_coverage", "interval_width", "rmse")}
            result["devices"][f"{device}_{refit}"] = {"n_images": int(m.sum()), **row}
            print(device, refit, int(m.sum()), row)
    for refit in ("offset", "affine"):
        rows = [result["devices"][f"{d}_{refit}"] for d in "ABCD"]
        result[refit] = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("interval_width", "rmse")}
        print(refit, result[refit])
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
