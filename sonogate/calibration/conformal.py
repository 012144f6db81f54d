"""One-sided split conformal bounds with exact integer ranks (numpy + math only, no scipy, no torch).

Conventions (see docs/calibration.md):

* A *score* is "how far the corrected prediction overshoots the truth on the dangerous side":
  ``s = corrected - truth`` for a lower bound (alpha, coverage: low is abnormal) and ``s = truth - corrected`` for an
  upper bound (beta, AI: high is abnormal). The bound is ``corrected - r`` (lower) or ``corrected + r`` (upper), and
  ``truth >= corrected - r`` exactly when ``s <= r``; comparisons use ``>=``/``<=`` everywhere (whole-degree ties).
* The radius ``r`` is the k-th smallest of the n calibration scores, ``k = ceil((n + 1)(1 - delta))``, computed in
  integers from ``delta`` as a Fraction. Floating point gets this ceil wrong (delta = 0.45 at n = 99, 179, 199, ...).
* When ``k > n`` the bound is infinite (radius ``None``): the calibration set is too small for this delta and the
  policy can never reassure on that measurement.
"""

from __future__ import annotations

import math
import operator
from decimal import Decimal
from fractions import Fraction

import numpy as np

DeltaLike = float | str | Fraction | Decimal

SIDES = ("lower", "upper")


def as_fraction(value: DeltaLike, name: str = "delta") -> Fraction:
    """``value`` as an exact Fraction in (0, 1).

    Floats go through their shortest round-trip decimal (``repr``), so ``0.45`` becomes ``9/20`` and not the binary
    double ``0.450000000000000011102...``; strings may be decimals ("0.45") or ratios ("1/3").
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if isinstance(value, Fraction):
        frac = value
    elif isinstance(value, (int, Decimal)):
        frac = Fraction(value)
    elif isinstance(value, str):
        try:
            frac = Fraction(value.strip())
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{name} must be a number in (0, 1), got {value!r}") from None
    else:
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(as_float):
            raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        frac = Fraction(repr(as_float))
    if not 0 < frac < 1:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return frac


def check_levels(delta: DeltaLike, gamma: DeltaLike | None = None) -> None:
    """Raise (ValueError / TypeError, naming it) unless ``delta`` and, when given, ``gamma`` are in (0, 1): what
    every conformal object checks when it is built, before any data is seen."""
    as_fraction(delta)
    if gamma is not None:
        as_fraction(gamma, "gamma")


def conformal_rank(n: int, delta: DeltaLike) -> int:
    """Exact ``ceil((n + 1)(1 - delta))``.

    Inputs: ``n`` calibration scores (>= 0), ``delta`` (float, decimal string or Fraction). Output: the rank k
    (1-based) of the score used as radius; ``k > n`` means the bound is infinite.
    """
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    frac = as_fraction(delta)
    p, q = frac.numerator, frac.denominator
    # (n+1)(q-p)/q rounded up, in integers.
    return ((n + 1) * (q - p) + q - 1) // q


def min_calibration_size(delta: DeltaLike) -> int:
    """Smallest n for which ``conformal_rank(n, delta) <= n`` (a finite bound): ``ceil(1/delta) - 1``."""
    frac = as_fraction(delta)
    p, q = frac.numerator, frac.denominator
    return (q - 1) // p


def _binomial_upper_tail_exact(n: int, success: Fraction, gamma: Fraction) -> int:
    """Smallest k in [1, n + 1] with P(Binomial(n, success) >= k) <= gamma, in exact integer arithmetic."""
    a, b = success.numerator, success.denominator - success.numerator  # P(success) = a / (a + b)
    denom = (a + b) ** n
    limit = gamma.numerator * denom  # compare tail * gamma_den <= gamma_num * denom
    g_den = gamma.denominator
    tail = 0
    term = a**n  # C(n, n) a^n b^0
    for j in range(n, 0, -1):
        tail += term
        if tail * g_den > limit:
            return j + 1
        # term(j-1) = C(n, j-1) a^(j-1) b^(n-j+1) = term(j) * j * b / ((n - j + 1) * a), an exact integer.
        term = term * j * b // ((n - j + 1) * a)
    return 1


def _binomial_upper_tail_float(n: int, success: float, gamma: float) -> int:
    """Float (log-space) version of ``_binomial_upper_tail_exact`` for large n."""
    j = np.arange(n + 1, dtype=np.float64)
    log_pmf = (
        math.lgamma(n + 1)
        - np.array([math.lgamma(x + 1) for x in j])
        - np.array([math.lgamma(n - x + 1) for x in j])
        + j * math.log(success)
        + (n - j) * math.log1p(-success)
    )
    pmf = np.exp(log_pmf - log_pmf.max())
    pmf /= pmf.sum()
    tail = np.cumsum(pmf[::-1])[::-1]  # tail[k] = P(X >= k)
    ok = np.nonzero(tail <= gamma)[0]
    return int(ok[0]) if ok.size else n + 1


def pac_rank(n: int, delta: DeltaLike, gamma: DeltaLike) -> int:
    """Training-conditional (PAC) rank: coverage >= 1 - delta with probability >= 1 - gamma over the calibration draw.

    For continuous scores the coverage of the k-th smallest score is Beta(k, n + 1 - k) distributed, and
    P(Beta(k, n+1-k) < x) = P(Binomial(n, x) >= k). So k is the smallest rank with
    P(Binomial(n, 1 - delta) >= k) <= gamma. Output: k in [1, n + 1]; ``k = n + 1`` means infinite.
    Ties only raise the coverage, so the statement stays valid with whole-degree labels.
    Exact integer arithmetic up to n = 3000, log-space floats beyond.
    """
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    d = as_fraction(delta)
    g = as_fraction(gamma, "gamma")
    if n == 0:
        return 1
    if n <= 3000:
        return _binomial_upper_tail_exact(n, 1 - d, g)
    return _binomial_upper_tail_float(n, float(1 - d), float(g))


def binomial_tail(n: int, p: float, k: int) -> float:
    """P(Binomial(n, p) >= k) as a float (exact rational sum; used by tests and reports)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    pf = Fraction(repr(float(p)))
    total = sum(math.comb(n, j) * pf**j * (1 - pf) ** (n - j) for j in range(k, n + 1))
    return float(total)


def kth_smallest(scores: np.ndarray, k: int | np.ndarray, axis: int = -1) -> np.ndarray:
    """Vectorised k-th smallest (1-based) along ``axis``; +inf where ``k > n``.

    Input: scores (..., n, ...) finite, k a scalar rank. Output: array with ``axis`` removed.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[axis]
    k = int(k)
    if k > n:
        shape = list(scores.shape)
        del shape[axis]
        return np.full(shape, np.inf)
    if k < 1:
        raise ValueError(f"rank must be >= 1, got {k}")
    return np.take(np.partition(scores, k - 1, axis=axis), k - 1, axis=axis)


def conformal_radii(scores: np.ndarray, delta: DeltaLike, axis: int = -1, gamma: DeltaLike | None = None) -> np.ndarray:
    """Batch version of ``one_sided_radius`` for many calibration sets at once (+inf where k > n).

    Input: scores with the n calibration scores along ``axis`` (e.g. (trials, n)). Output: radii (trials,).
    """
    n = np.asarray(scores).shape[axis]
    k = conformal_rank(n, delta)
    if gamma is not None:
        k = max(k, pac_rank(n, delta, gamma))
    return kth_smallest(scores, k, axis=axis)


def _check_scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite (drop units with missing predictions or truths first)")
    return s


def one_sided_radius(scores: np.ndarray, delta: DeltaLike, gamma: DeltaLike | None = None) -> tuple[float | None, int]:
    """Radius of a one-sided split-conformal bound.

    Inputs: ``scores`` (n,) finite calibration scores (prediction minus truth for a lower bound), ``delta`` the
    miscoverage, optional ``gamma`` for the PAC rank (the larger of the two ranks is used, so the marginal
    guarantee is kept too). Output: ``(radius, k)``; radius is None (infinite bound) when k > n.
    """
    s = _check_scores(scores)
    n = s.size
    k = conformal_rank(n, delta)
    if gamma is not None:
        k = max(k, pac_rank(n, delta, gamma))
    if k > n:
        return None, k
    return float(np.partition(s, k - 1)[k - 1]), k


def max_score_radius(
    scores: np.ndarray, scales: np.ndarray, delta: DeltaLike, gamma: DeltaLike | None = None
) -> tuple[float | None, int]:
    """Joint calibration of several one-sided bounds by the max of scaled scores.

    Inputs: ``scores`` (n, m) one-sided scores of m measurements on the same n units, ``scales`` (m,) positive,
    fixed before calibration (from another split or a prior). Output: ``(t, k)``; the radius of measurement j is
    ``t * scales[j]`` and P(all m bounds hold) >= 1 - delta. ``t`` is None when k > n.
    """
    s = np.asarray(scores, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)
    if s.ndim != 2 or scales.shape != (s.shape[1],):
        raise ValueError(f"scores must be (n, m) and scales (m,), got {s.shape} and {scales.shape}")
    if not np.all(np.isfinite(scales) & (scales > 0)):
        raise ValueError("scales must be finite and > 0")
    joint = np.max(s / scales, axis=1) if s.shape[0] else np.zeros(0)
    return one_sided_radius(joint, delta, gamma)


def fit_affine(pred: np.ndarray, true: np.ndarray, min_points: int = 3) -> tuple[float, float]:
    """Least-squares ``true ~ a * pred + b`` over the finite pairs.

    Output ``(a, b)``. With fewer than ``min_points`` pairs the identity (1, 0) is returned; with constant
    predictions only the offset is fitted (a = 1).
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    ok = np.isfinite(pred) & np.isfinite(true)
    x, y = pred[ok], true[ok]
    if x.size < min_points:
        return 1.0, 0.0
    x_mean, y_mean = x.mean(), y.mean()
    sxx = float(np.sum((x - x_mean) ** 2))
    if sxx <= 1e-12 * max(1.0, float(np.sum(x**2))):
        return 1.0, float(y_mean - x_mean)
    a = float(np.sum((x - x_mean) * (y - y_mean)) / sxx)
    return a, float(y_mean - a * x_mean)


def one_sided_scores(corrected: np.ndarray, true: np.ndarray, side: str) -> np.ndarray:
    """Scores for ``side``: corrected - truth (lower) or truth - corrected (upper)."""
    if side not in SIDES:
        raise ValueError(f"side must be lower or upper, got {side!r}")
    corrected = np.asarray(corrected, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    return corrected - true if side == "lower" else true - corrected


class OneSidedConformal:
    """MAPIE-shaped one-sided split-conformal bound for one measurement.

    ``fit(pred, true)`` fits the affine correction on one split; ``conformalize(pred, true)`` computes the radius
    on a disjoint split; ``predict(pred)`` returns the corrected values and ``predict_bound(pred)`` the bounds
    (-inf / +inf when the radius is infinite). Attributes after fitting: ``a_``, ``b_``, ``radius_``, ``n_``,
    ``k_``.

    Example::

        cp = OneSidedConformal(delta=0.1).fit(p_fit, y_fit).conformalize(p_cal, y_cal)
        lower = cp.predict_bound(p_new)
    """

    def __init__(self, delta: DeltaLike = 0.1, side: str = "lower", affine: bool = True, pac_gamma=None):
        if side not in SIDES:
            raise ValueError(f"side must be lower or upper, got {side!r}")
        check_levels(delta, pac_gamma)
        self.delta = delta
        self.side = side
        self.affine = affine
        self.pac_gamma = pac_gamma
        self.a_, self.b_ = 1.0, 0.0

    def fit(self, pred, true) -> OneSidedConformal:
        self.a_, self.b_ = fit_affine(pred, true) if self.affine else (1.0, 0.0)
        return self

    def predict(self, pred) -> np.ndarray:
        return self.a_ * np.asarray(pred, dtype=np.float64) + self.b_

    def conformalize(self, pred, true) -> OneSidedConformal:
        pred = np.asarray(pred, dtype=np.float64)
        true = np.asarray(true, dtype=np.float64)
        ok = np.isfinite(pred) & np.isfinite(true)
        scores = one_sided_scores(self.predict(pred[ok]), true[ok], self.side)
        self.radius_, self.k_ = one_sided_radius(scores, self.delta, self.pac_gamma)
        self.n_ = int(scores.size)
        return self

    def predict_bound(self, pred) -> np.ndarray:
        if not hasattr(self, "radius_"):
            raise RuntimeError("call conformalize() before predict_bound()")
        corrected = self.predict(pred)
        if self.radius_ is None:
            return np.full_like(corrected, -np.inf if self.side == "lower" else np.inf)
        bound = corrected - self.radius_ if self.side == "lower" else corrected + self.radius_
        return np.where(np.isfinite(corrected), bound, -np.inf if self.side == "lower" else np.inf)
