"""Vectorised Monte-Carlo checks of the conformal guarantees (used by the tests; runnable for the figures).

Each function simulates ``trials`` independent calibration/test draws at once with numpy and returns the mean
empirical coverage with its standard error, so a test can compare it with the theoretical interval
[1 - delta, 1 - delta + 1/(n + 1)] (MAPIE's ``test_coverage_validity`` pattern: repeated splits, both edges,
Bonferroni-corrected).

    python -m sonogate.calibration.validity      # prints the coverage tables
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sonogate.calibration.conformal import (
    as_fraction,
    conformal_radii,
    conformal_rank,
    pac_rank,
)


def marginal_coverage(n: int, delta, trials: int = 2000, n_test: int = 50, seed: int = 0) -> dict[str, float]:
    """One-sided split conformal on iid standard-normal scores: mean coverage over ``trials`` draws.

    Output: dict with mean, se (standard error of the mean over trials), the interval edges and k.
    """
    rng = np.random.default_rng(seed)
    cal = rng.standard_normal((trials, n))
    test = rng.standard_normal((trials, n_test))
    radius = conformal_radii(cal, delta)  # +inf when k > n
    per_trial = np.mean(test <= radius[:, None], axis=1)
    d = float(as_fraction(delta))
    return {
        "n": n,
        "delta": d,
        "k": conformal_rank(n, delta),
        "mean": float(per_trial.mean()),
        "se": float(per_trial.std(ddof=1) / np.sqrt(trials)),
        "low": 1 - d,
        "high": 1 - d + 1 / (n + 1),
    }


def joint_coverage(
    n: int, delta, rho: float = 0.5, trials: int = 2000, n_test: int = 50, n_fit: int = 30, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Two correlated one-sided scores (sd 1 and 2, correlation ``rho``): joint coverage of both bounds.

    Methods: ``separate`` (delta each), ``bonferroni`` (delta/2 each), ``max_score`` (max of scaled scores at delta;
    scales = mean |score| on an independent fit sample of ``n_fit``, so fixed before calibration).
    Output: method -> {mean, se}.
    """
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, 2.0 * rho], [2.0 * rho, 4.0]])
    chol = np.linalg.cholesky(cov)

    def draw(m):
        return rng.standard_normal((trials, m, 2)) @ chol.T

    fit, cal, test = draw(n_fit), draw(n), draw(n_test)
    out = {}
    d = as_fraction(delta)
    for name, dd in (("separate", d), ("bonferroni", d / 2)):
        r = np.stack([conformal_radii(cal[:, :, j], dd) for j in range(2)], axis=1)  # (trials, 2)
        ok = np.all(test <= r[:, None, :], axis=2).mean(axis=1)
        out[name] = {"mean": float(ok.mean()), "se": float(ok.std(ddof=1) / np.sqrt(trials))}
    scales = np.mean(np.abs(fit), axis=1)  # (trials, 2), from the fit sample only
    t = conformal_radii(np.max(cal / scales[:, None, :], axis=2), d)
    ok = np.all(test <= (t[:, None] * scales)[:, None, :], axis=2).mean(axis=1)
    out["max_score"] = {"mean": float(ok.mean()), "se": float(ok.std(ddof=1) / np.sqrt(trials))}
    return out


def pac_coverage(n: int, delta, gamma, trials: int = 4000, seed: int = 0) -> dict[str, float]:
    """Share of calibration draws whose *conditional* coverage falls below 1 - delta, marginal vs PAC rank.

    Uniform(0, 1) scores, so the conditional coverage of radius r is r itself.
    """
    rng = np.random.default_rng(seed)
    cal = rng.random((trials, n))
    d = float(as_fraction(delta))
    marginal = np.minimum(conformal_radii(cal, delta), 1.0)
    pac = np.minimum(conformal_radii(cal, delta, gamma=gamma), 1.0)
    return {
        "n": n,
        "delta": d,
        "gamma": float(as_fraction(gamma, "gamma")),
        "k_marginal": conformal_rank(n, delta),
        "k_pac": max(conformal_rank(n, delta), pac_rank(n, delta, gamma)),
        "below_marginal": float(np.mean(marginal < 1 - d)),
        "below_pac": float(np.mean(pac < 1 - d)),
    }


def sweep_vs_frame_coverage(
    n_sweeps: int = 40,
    frames: int = 10,
    delta=0.1,
    sd_sweep: float = 3.0,
    sd_frame: float = 1.5,
    trials: int = 1000,
    n_test: int = 40,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Frames share a sweep-level error (not exchangeable). Compare, per test sweep:

    ``per_sweep``  median of the sweep's frames, radius from per-sweep medians of the calibration sweeps
                  (aggregate_frames' rule with quality 1: the median of all frames);
    ``frame_pool_any_frame``  radius from all calibration frames pooled, applied to every test frame; the sweep is
                  covered only if no frame's bound is wrong (a live cart reassures on the first frame that passes).
    Output: method -> {mean, se} of the per-sweep coverage.
    """
    rng = np.random.default_rng(seed)

    def draw(m):
        sweep = rng.normal(0.0, sd_sweep, (trials, m, 1))
        return sweep + rng.normal(0.0, sd_frame, (trials, m, frames))  # scores = prediction - truth per frame

    cal, test = draw(n_sweeps), draw(n_test)
    out = {}
    r = conformal_radii(np.median(cal, axis=2), delta)
    ok = (np.median(test, axis=2) <= r[:, None]).mean(axis=1)
    out["per_sweep"] = {"mean": float(ok.mean()), "se": float(ok.std(ddof=1) / np.sqrt(trials))}
    r = conformal_radii(cal.reshape(trials, -1), delta)
    ok = np.all(test <= r[:, None, None], axis=2).mean(axis=1)
    out["frame_pool_any_frame"] = {"mean": float(ok.mean()), "se": float(ok.std(ddof=1) / np.sqrt(trials))}
    ok = (test <= r[:, None, None]).mean(axis=(1, 2))
    out["frame_pool_per_frame"] = {"mean": float(ok.mean()), "se": float(ok.std(ddof=1) / np.sqrt(trials))}
    return out


def coverage_table(
    ns: Sequence[int] = (10, 20, 30, 50),
    deltas: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.4),
    trials: int = 2000,
    seed: int = 0,
) -> list[dict[str, float]]:
    """``marginal_coverage`` over a grid (each cell its own seed)."""
    rows = []
    for i, n in enumerate(ns):
        for j, d in enumerate(deltas):
            rows.append(marginal_coverage(n, d, trials=trials, seed=seed + 1000 * i + j))
    return rows


def main() -> int:
    print("one-sided split conformal, mean coverage over 2000 draws (50 test points each)")
    print(f"{'n':>4} {'delta':>6} {'k':>4} {'mean':>8} {'se':>7} {'[1-d,':>7} {'1-d+1/(n+1)]':>12}")
    for row in coverage_table():
        print(
            f"{row['n']:>4} {row['delta']:>6g} {row['k']:>4} {row['mean']:>8.4f} {row['se']:>7.4f} "
            f"{row['low']:>7.4f} {row['high']:>12.4f}"
        )
    print("\njoint coverage of two correlated bounds (rho 0.5), n = 50")
    for d in (0.05, 0.1, 0.2):
        res = joint_coverage(50, d)
        print(f"  delta {d:g}: " + ", ".join(f"{m} {v['mean']:.4f}" for m, v in res.items()))
    print("\nPAC: share of calibration draws with conditional coverage < 1 - delta")
    for n, d, g in ((50, 0.1, 0.1), (200, 0.1, 0.05), (100, 0.05, 0.1)):
        res = pac_coverage(n, d, g)
        print(
            f"  n {n}, delta {d:g}, gamma {g:g}: k {res['k_marginal']} -> {res['k_pac']}, below: marginal "
            f"{res['below_marginal']:.3f}, PAC {res['below_pac']:.3f}"
        )
    print("\nsweeps of 10 frames sharing a sweep-level error, delta 0.1, 40 calibration sweeps")
    res = sweep_vs_frame_coverage()
    print("  " + ", ".join(f"{m} {v['mean']:.4f}" for m, v in res.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
