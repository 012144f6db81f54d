"""Proof that the generic per-image calibration gives the hip_xr calibration.json of the former X-ray-only module.

    python scripts/per_image_calibration_parity.py [--old-commit db4f50d]

Fits a seeded synthetic table of hip rows (120 radiographs, 60 patients) with the former
``sonogate/calibration/xr.py`` (read from git at ``--old-commit``) and with ``sonogate.tasks.hip_xr.calibrate``, in
the joint, separate, bonferroni (guarantee "abnormal") and PAC modes, and prints whether the JSON and the
requirement lines are identical. Exit code 1 when any differs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from sonogate.calibration.fit import PredictionTable
from sonogate.tasks.hip_xr.calibrate import CALIBRATOR


def synthetic_table(seed: int = 0, n_images: int = 120) -> PredictionTable:
    rng = np.random.default_rng(seed)
    ids, groups, subjects, pred, true = [], [], [], [], []
    for i in range(n_images):
        for side in "RL":
            ids.append(f"im{i}:{side}")
            groups.append(f"im{i}")
            subjects.append(f"p{i // 2}")
            truth = [rng.normal(25, 6), rng.normal(25, 8)]
            true.append(truth)
            pred.append([truth[0] + rng.normal(0, 3), truth[1] + rng.normal(0, 4)])
    return PredictionTable(ids=np.array(ids), groups=np.array(groups), names=("ai_deg", "ce_deg"),
                           pred=np.array(pred), true=np.array(true), quality=np.ones(len(ids)),
                           subjects=np.array(subjects))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-commit", default="db4f50d")
    args = parser.parse_args()
    source = subprocess.run(["git", "show", f"{args.old_commit}:sonogate/calibration/xr.py"], check=True,
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "former_xr_calibration.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("former_xr_calibration", path)
        former = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(former)
    table = synthetic_table()
    all_same = True
    for options in (dict(mode="joint", affine=True, seed=1), dict(mode="separate", affine=False),
                    dict(mode="bonferroni", affine=True, seed=2, guarantee="abnormal"),
                    dict(mode="joint", affine=True, seed=3, pac_gamma=0.1)):
        before = former.fit_xr_calibration(table, delta=0.1, **options)
        after = CALIBRATOR.fit(table, delta=0.1, **options)
        same_json = (json.dumps(before.to_json(), sort_keys=True, default=str)
                     == json.dumps(after.to_json(), sort_keys=True, default=str))
        same_lines = former.requirement_lines(before) == CALIBRATOR.requirement_lines(after)
        all_same &= same_json and same_lines
        print(f"{options}: calibration.json identical {same_json}, requirement lines identical {same_lines}")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
