"""Is one held-out coverage figure of the bmd interval a fluke? Repeated calibration / test splits.

The bundle's graph runs once over the calibration and test radiographs (devices A-D, other patients than training
and validation) of a phantom folder; its affine correction is kept; then, ``--splits`` times, the pooled patients
are split at random in two halves: the interval radius from one half (the bundle's conformal rank at ``--delta``),
the per-radiograph coverage on the other. Split conformal promises a mean coverage >= 1 - delta over such draws;
the spread shows what one test set can read.

    python scripts/bmd_coverage_splits.py --bundle bundles/bmd --data DIR [--splits 200] [--json OUT]
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
from sonogate.calibration.conformal import one_sided_radius
from sonogate.data.splits import split_by_group
from sonogate.tasks.bmd.calibrate import bundle_predictions, image_scores
from sonogate.tasks.bmd.data import read_bmd_folder, split_patients


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True, help="the bundle's training folder (its cal and test patients)")
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    folder = read_bmd_folder(args.data)
    splits = split_patients(folder, 0)
    idx = np.concatenate([splits["cal"], splits["test"]])
    raw = bundle_predictions(args.bundle, folder, idx)["bmd"]
    cal = load_calibration(Path(args.bundle) / "calibration.json").measurements["bmd_g_cm2"]
    scores = image_scores(cal.a * raw + cal.b, folder.bmd[idx], folder.in_field[idx])
    ok = np.isfinite(scores)
    scores, patients = scores[ok], folder.patients[idx][ok]
    covered = []
    for r in range(args.splits):
        cal_rows, test_rows = split_by_group(patients, [0.5, 0.5], seed=1000 + r)
        radius, _k = one_sided_radius(scores[cal_rows], args.delta)
        covered.append(float(np.mean(scores[test_rows] <= radius)))
    covered = np.array(covered)
    result = {"bundle": str(Path(args.bundle).resolve()), "data": str(Path(args.data).resolve()),
              "n_radiographs": int(scores.size), "splits": args.splits, "delta": args.delta,
              "coverage_mean": round(float(covered.mean()), 4),
              "coverage_p05": round(float(np.percentile(covered, 5)), 4),
              "coverage_min": round(float(covered.min()), 4), "coverage_max": round(float(covered.max()), 4)}
    print(f"{scores.size} radiographs (cal + test), {args.splits} half splits by patient: image coverage mean "
          f"{result['coverage_mean']:.3f}, p05 {result['coverage_p05']:.3f}, range {result['coverage_min']:.3f}-"
          f"{result['coverage_max']:.3f} (target >= {1 - args.delta:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
