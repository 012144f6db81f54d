"""Phantom-like synthetic predictions for tests, demos and the policy report (numpy only).

Hips with a Graf-like truth (whole-degree labels, alpha and coverage correlated, about ``prevalence`` of them
below alpha 60) are swept by a simulated model: each sweep has a sweep-level error shared by its frames
(correlated across measurements: the same mis-placed baseline moves alpha and coverage together), a
regression-to-the-mean shrink, frame noise that grows as the standard-plane probability falls, and off-plane
frames with an anterior/posterior alpha offset. Frames of one sweep are therefore *not* exchangeable, which is
what the per-sweep calibration is for.

    python -m sonogate.calibration.synthetic --out synth.csv [--infants 200] [--accuracy paper|good] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from sonogate.calibration.fit import PredictionTable

NAMES = ("alpha_deg", "beta_deg", "coverage_pct")

# (shrink towards the population mean, sweep-level sd, frame-level sd) per accuracy level; alpha in degrees,
# beta x 1.2 and coverage x 1.5 of these. "paper" gives a per-image alpha MAE near the seed paper's 9.7 deg.
ACCURACY = {
    "paper": (0.8, 7.0, 5.0),
    "good": (0.95, 2.5, 3.0),
}


def synthetic_table(
    n_infants: int = 200,
    accuracy: str = "good",
    prevalence: float = 0.3,
    frames: tuple[int, int] = (6, 20),
    sweeps_per_hip: int = 1,
    single_frame: bool = False,
    seed: int = 0,
) -> PredictionTable:
    """Simulated per-frame predictions for ``n_infants`` infants x 2 hips x ``sweeps_per_hip`` sweeps.

    Output: PredictionTable with names (alpha_deg, beta_deg, coverage_pct), groups = sweeps, subjects = infants,
    hip-level truths repeated on every frame. ``single_frame=True`` gives one quality-1 row per sweep (still
    images, as in the seed paper).
    """
    if accuracy not in ACCURACY:
        raise ValueError(f"accuracy must be one of {', '.join(ACCURACY)}")
    shrink, sd_sweep, sd_frame = ACCURACY[accuracy]
    rng = np.random.default_rng(seed)
    n_hips = n_infants * 2
    infant_effect = np.repeat(rng.normal(0.0, 1.5, n_infants), 2)
    abnormal = rng.random(n_hips) < prevalence
    alpha = np.where(abnormal, rng.normal(52.0, 5.0, n_hips), rng.normal(65.0, 3.0, n_hips)) + infant_effect
    alpha = np.clip(alpha, 30.0, 80.0)
    coverage = np.clip(50.0 + 1.5 * (alpha - 60.0) + rng.normal(0.0, 6.0, n_hips), 5.0, 85.0)
    beta = np.clip(50.0 - 0.9 * (alpha - 62.0) + rng.normal(0.0, 5.0, n_hips), 30.0, 90.0)
    truth = np.round(np.stack([alpha, beta, coverage], axis=1))  # whole-degree / whole-percent labels: ties
    population_mean = np.array([61.0, 51.0, 52.0])
    unit = np.array([1.0, 1.2, 1.5])
    # alpha and coverage errors correlate (+0.6); beta anti-correlates with alpha.
    corr = np.array([[1.0, -0.4, 0.6], [-0.4, 1.0, -0.3], [0.6, -0.3, 1.0]])
    chol = np.linalg.cholesky(corr)

    ids, groups, subjects, quality, pred, true = [], [], [], [], [], []
    for hip in range(n_hips):
        infant = f"inf{hip // 2:04d}"
        side = "LR"[hip % 2]
        for sweep in range(sweeps_per_hip):
            group = f"{infant}_{side}_s{sweep}"
            n_frames = 1 if single_frame else int(rng.integers(frames[0], frames[1] + 1))
            sweep_err = (chol @ rng.normal(size=3)) * sd_sweep * unit
            if single_frame:
                q = np.ones(1)
                off = np.zeros(1, dtype=bool)
            else:
                off = rng.random(n_frames) < 0.3
                q = np.where(off, rng.beta(2.0, 6.0, n_frames), rng.beta(8.0, 2.0, n_frames))
            frame_err = rng.normal(size=(n_frames, 3)) * sd_frame * unit * (1.0 + 2.0 * (1.0 - q))[:, None]
            plane_offset = np.zeros((n_frames, 3))
            plane_offset[:, 0] = np.where(off, rng.choice([-4.0, 4.0], n_frames), 0.0)
            p = population_mean + shrink * (truth[hip] - population_mean) + sweep_err + frame_err + plane_offset
            for f in range(n_frames):
                ids.append(f"{group}_f{f:03d}")
                groups.append(group)
                subjects.append(infant)
            quality.append(q)
            pred.append(p)
            true.append(np.repeat(truth[hip][None, :], n_frames, axis=0))
    return PredictionTable(
        ids=np.array(ids),
        groups=np.array(groups),
        names=NAMES,
        pred=np.concatenate(pred),
        true=np.concatenate(true),
        quality=np.concatenate(quality),
        subjects=np.array(subjects),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write a phantom-like synthetic predictions CSV")
    parser.add_argument("--out", required=True)
    parser.add_argument("--infants", type=int, default=200)
    parser.add_argument("--accuracy", choices=sorted(ACCURACY), default="good")
    parser.add_argument("--prevalence", type=float, default=0.3)
    parser.add_argument("--single-frame", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    table = synthetic_table(
        args.infants, args.accuracy, args.prevalence, single_frame=args.single_frame, seed=args.seed
    )
    table.to_csv(args.out)
    print(f"wrote {len(table)} rows, {len(np.unique(table.groups))} sweeps to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
