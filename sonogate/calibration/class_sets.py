"""Split-conformal prediction sets for classification and conformal intervals for ordinal totals (numpy only).

MAPIE / scikit-learn shaped: ``fit`` on a calibration split, ``predict`` on new units. Used by ordinal tasks
(``rust``: a 1-3 grade per cortex and the 4-12 total; ``knee_kl``: Kellgren-Lawrence grade 0-4).

Conventions:

* ``probabilities`` are (n, K) rows of class probabilities (each row sums to 1); ``labels`` are class *indexes*
  0..K-1 (map a grade g to ``g - lowest_grade`` first: RUST grade 1 is index 0, KL grade 0 is index 0).
* A score says how badly the model fits the true class; class k is in the set of a unit when its score is
  ``<= threshold_``, where ``threshold_`` is the k-th smallest calibration score, ``k = ceil((n + 1)(1 - delta))``
  in exact integers (``sonogate.calibration.conformal.conformal_rank``). Then P(true class in set) >= 1 - delta on
  average over calibration draws, and <= 1 - delta + 1/(n + 1) for continuous scores.
* Groups (``groups=`` case or patient ids): the score of a group is the max over its members, and n counts groups.
  A new group then has *all* its members' true classes in their sets with probability >= 1 - delta: the guarantee
  is per group (per case), which is what "coverage >= 1 - delta by case" asks. It needs whole groups to be
  exchangeable (split calibration/test by group; several films of one patient are not independent cases, so
  group by patient when a patient can contribute several cases). Members of one group are *not* required to be
  exchangeable with each other.
* When ``k > n`` the set would be every class for every unit: ``fit`` refuses with a one-line ``CalibrationError``
  naming the number of calibration units needed.
"""

from __future__ import annotations

import math

import numpy as np

from sonogate.calibration.conformal import (
    DeltaLike,
    as_fraction,
    check_levels,
    conformal_rank,
    min_calibration_size,
    pac_rank,
)
from sonogate.errors import CalibrationError, DataError

CLASS_SCORES = ("lac", "aps")
INTERVAL_SCORES = ("absolute", "cqr")
INTERVAL_SIDES = ("two-sided", "lower", "upper")

# Rows of probabilities must sum to 1 within this (float32 softmax outputs are within ~1e-6).
PROBABILITY_SUM_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------------------------
# input checks and the shared calibration rank


def check_probabilities(probabilities, name: str = "probabilities") -> np.ndarray:
    """``probabilities`` as a float64 (n, K) array; DataError unless finite, in [0, 1] and rows summing to 1."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise DataError(f"{name} must be an (n, K) array with K >= 2 classes, got shape {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise DataError(f"{name} contain NaN or infinite values")
    if probs.size and (probs.min() < -1e-9 or probs.max() > 1 + 1e-9):
        raise DataError(f"{name} must lie in [0, 1] (got min {probs.min():.4g}, max {probs.max():.4g})")
    if probs.shape[0]:
        worst = float(np.max(np.abs(probs.sum(axis=1) - 1.0)))
        if worst > PROBABILITY_SUM_TOLERANCE:
            raise DataError(f"{name} rows must sum to 1 (worst row is off by {worst:.3g})")
    return probs


def check_labels(labels, n: int, n_classes: int) -> np.ndarray:
    """``labels`` as an int64 (n,) array of class indexes in [0, n_classes); DataError otherwise."""
    raw = np.asarray(labels)
    if raw.shape != (n,):
        raise DataError(f"labels must have shape ({n},) to match the probabilities, got {raw.shape}")
    if raw.size and not np.issubdtype(raw.dtype, np.integer):
        as_float = raw.astype(np.float64)
        if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
            raise DataError("labels must be integer class indexes (0..K-1)")
    out = raw.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= n_classes):
        raise DataError(
            f"labels must be class indexes in 0..{n_classes - 1} (got {out.min()}..{out.max()}); "
            "map grades to indexes first (grade - lowest grade)"
        )
    return out


def group_max(scores: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
    """Per-group maximum of ``scores``.

    Inputs: ``scores`` (n,), ``groups`` (n,) hashable ids (strings or integers). Outputs: ``(group_ids, maxima)``,
    both (G,), group ids sorted. The score of a group is its worst member, so "group score <= t" means every
    member is covered.
    """
    scores = np.asarray(scores, dtype=np.float64)
    ids = np.asarray(groups)
    if ids.shape != scores.shape:
        raise DataError(f"groups must have shape {scores.shape} (one id per unit), got {ids.shape}")
    unique, inverse = np.unique(ids, return_inverse=True)
    maxima = np.full(unique.size, -np.inf)
    np.maximum.at(maxima, inverse.reshape(-1), scores)
    return unique, maxima


def calibration_threshold(
    scores: np.ndarray, delta: DeltaLike, gamma: DeltaLike | None = None, unit: str = "calibration units"
) -> tuple[float, int]:
    """The conformal threshold: the k-th smallest of ``scores``, ``k = ceil((n + 1)(1 - delta))`` (exact integers).

    Inputs: ``scores`` (n,) one per exchangeable unit, ``delta`` the miscoverage, optional ``gamma`` for the
    training-conditional (PAC) rank (the larger rank is used). Output: ``(threshold, k)``. Raises
    ``CalibrationError`` (one line, with the number of units needed) when ``k > n``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = int(scores.size)
    k = conformal_rank(n, delta)
    if gamma is not None:
        k = max(k, pac_rank(n, delta, gamma))
    if k > n:
        need = min_calibration_size(delta) if gamma is None else _min_size_pac(delta, gamma)
        raise CalibrationError(
            f"calibration needs at least {need} {unit} for delta={delta}"
            + (f" and gamma={gamma}" if gamma is not None else "")
            + f", got {n}"
        )
    return float(np.partition(scores, k - 1)[k - 1]), k


def _min_size_pac(delta: DeltaLike, gamma: DeltaLike) -> int:
    """Smallest n with a finite PAC rank (k <= n): (1 - delta)^n <= gamma."""
    d, g = float(as_fraction(delta)), float(as_fraction(gamma, "gamma"))
    n = max(1, math.floor(math.log(g) / math.log1p(-d)) - 1)
    while max(conformal_rank(n, delta), pac_rank(n, delta, gamma)) > n:
        n += 1
    return n


# --------------------------------------------------------------------------------------------------------------
# classification scores


def lac_scores(probabilities: np.ndarray) -> np.ndarray:
    """LAC score of every class: ``1 - p_k``. Input (n, K) probabilities; output (n, K), unitless in [0, 1]."""
    return 1.0 - np.asarray(probabilities, dtype=np.float64)


def aps_scores(probabilities: np.ndarray, uniforms: np.ndarray | None = None) -> np.ndarray:
    """APS score of every class (Romano et al. 2020).

    Classes are ranked by probability, highest first (ties broken by the lower class index, so the order is
    deterministic). Deterministic score (``uniforms`` None): the probability mass of class k and every class ranked
    before it. Randomised score: the mass ranked strictly before k plus ``u * p_k``, one uniform ``u`` in [0, 1) per
    unit (the same for all its classes), which makes coverage exact instead of conservative.

    Inputs: (n, K) probabilities, optional (n,) uniforms. Output: (n, K) scores in [0, 1].
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=1)
    cumulative = np.cumsum(sorted_probs, axis=1)
    if uniforms is not None:
        cumulative = cumulative - sorted_probs * (1.0 - np.asarray(uniforms, dtype=np.float64)[:, None])
    scores = np.empty_like(probs)
    np.put_along_axis(scores, order, cumulative, axis=1)
    return scores


def set_coverage(sets: np.ndarray, labels, groups=None) -> float:
    """Fraction of units (or of groups, when ``groups`` is given: all members covered) whose true class is in its set.

    Inputs: ``sets`` (n, K) boolean, ``labels`` (n,) class indexes, optional ``groups`` (n,) ids. Output: a fraction
    in [0, 1] (NaN for n = 0).
    """
    sets = np.asarray(sets, dtype=bool)
    labels = check_labels(labels, sets.shape[0], sets.shape[1])
    covered = sets[np.arange(sets.shape[0]), labels]
    if covered.size == 0:
        return float("nan")
    if groups is None:
        return float(covered.mean())
    _, worst = group_max((~covered).astype(np.float64), groups)
    return float(np.mean(worst == 0.0))


def mean_set_size(sets: np.ndarray) -> float:
    """Mean number of classes per set. Input (n, K) boolean; output classes per unit (NaN for n = 0)."""
    sets = np.asarray(sets, dtype=bool)
    return float(sets.sum(axis=1).mean()) if sets.shape[0] else float("nan")


def fill_gaps(sets: np.ndarray) -> np.ndarray:
    """Each set widened to the range between its lowest and highest class. Input/output (n, K) boolean; empty sets
    stay empty."""
    sets = np.asarray(sets, dtype=bool)
    index = np.arange(sets.shape[1])
    first = np.where(sets.any(axis=1), np.argmax(sets, axis=1), sets.shape[1])
    last = sets.shape[1] - 1 - np.argmax(sets[:, ::-1], axis=1)
    return (index[None, :] >= first[:, None]) & (index[None, :] <= last[:, None])


def set_to_text(mask, labels) -> str | list[str]:
    """A prediction set as text: ``"1|2"`` (class labels joined by ``|`` in class order; ``""`` for an empty set).

    Inputs: ``mask`` (K,) boolean for one unit, or (n, K) for several; ``labels`` (K,) the printable label of each
    class (e.g. grades ``[1, 2, 3]``). Output: one string, or a list of n strings.
    """
    mask = np.asarray(mask, dtype=bool)
    names = [str(label) for label in labels]
    if mask.shape[-1] != len(names):
        raise DataError(f"set has {mask.shape[-1]} classes but {len(names)} labels were given")
    if mask.ndim == 1:
        return "|".join(name for name, keep in zip(names, mask) if keep)
    if mask.ndim == 2:
        return ["|".join(name for name, keep in zip(names, row) if keep) for row in mask]
    raise DataError(f"set mask must be (K,) or (n, K), got shape {mask.shape}")


class ConformalClassSets:
    """Split-conformal prediction sets for a K-class (or ordinal) classifier.

    Parameters: ``delta`` miscoverage (0.1: sets hold the true class for >= 90 % of units, or of groups); ``score``
    "lac" (``1 - p_true``: smallest sets on average; a set may be empty, which a caller must read as "no class is
    plausible", never as a grade) or "aps" (cumulative mass: adaptive; the deterministic form always holds the most
    probable class, so it is never empty, and its score has an atom at 1 (true class ranked last), so it can
    overcover when that is common); ``randomized`` (APS only: exact instead of conservative coverage, at the price
    of sets that depend on a random draw, and sets may be empty; off by default so one image always gets the same
    set); ``random_state``
    seeds that draw; ``gamma`` (optional) asks for the training-conditional rank: coverage >= 1 - delta with
    probability >= 1 - gamma over the calibration draw; ``contiguous`` (ordinal grades) fills the gaps of a set
    (``{1, 3}`` becomes ``{1, 2, 3}``): a superset, so the guarantee stands, and a set that reads as a grade range.

    After ``fit``: ``threshold_`` (score units, in [0, 1]), ``rank_`` (k), ``n_units_`` (calibration units: groups
    when given, else rows), ``n_classes_``, ``unit_`` ("group" or "unit").

    Example::

        sets = ConformalClassSets(delta=0.1, score="aps").fit(p_cal, y_cal, groups=case_cal).predict(p_new)
        text = set_to_text(sets[0], [1, 2, 3])      # e.g. "2|3"

    RUST, coverage by case: cortex probabilities (cases, 4, 3) and grades (cases, 4) become
    ``fit(p.reshape(-1, 3), (grades - 1).reshape(-1), groups=np.repeat(case_ids, 4))``; then all four cortex sets
    of a new case hold their true grades with probability >= 1 - delta.
    """

    def __init__(
        self,
        delta: DeltaLike = 0.1,
        score: str = "lac",
        randomized: bool = False,
        random_state: int | None = None,
        gamma: DeltaLike | None = None,
        contiguous: bool = False,
    ):
        if score not in CLASS_SCORES:
            raise ValueError(f"score must be one of {CLASS_SCORES}, got {score!r}")
        if randomized and score != "aps":
            raise ValueError("randomized sets exist for score='aps' only")
        check_levels(delta, gamma)
        self.delta = delta
        self.score = score
        self.randomized = randomized
        self.random_state = random_state
        self.gamma = gamma
        self.contiguous = contiguous
        self._rng = np.random.default_rng(random_state)

    def class_scores(self, probabilities, uniforms=None) -> np.ndarray:
        """Score of every class of every unit. Inputs (n, K) probabilities and, for randomised APS, optional (n,)
        uniforms in [0, 1) (default: drawn from ``random_state``). Output (n, K)."""
        probs = check_probabilities(probabilities)
        if self.score == "lac":
            return lac_scores(probs)
        if not self.randomized:
            return aps_scores(probs)
        if uniforms is None:
            uniforms = self._rng.random(probs.shape[0])
        uniforms = np.asarray(uniforms, dtype=np.float64)
        if uniforms.shape != (probs.shape[0],) or np.any((uniforms < 0) | (uniforms > 1)):
            raise DataError(f"uniforms must be ({probs.shape[0]},) numbers in [0, 1]")
        return aps_scores(probs, uniforms)

    def conformity_scores(self, probabilities, labels, uniforms=None) -> np.ndarray:
        """Score of the true class of each unit. Inputs (n, K) probabilities, (n,) class indexes, optional (n,)
        uniforms (randomised APS); output (n,)."""
        probs = check_probabilities(probabilities)
        labels = check_labels(labels, probs.shape[0], probs.shape[1])
        return self.class_scores(probs, uniforms)[np.arange(probs.shape[0]), labels]

    def fit(self, probabilities, labels, groups=None) -> ConformalClassSets:
        """Calibrate on held-out units.

        Inputs: ``probabilities`` (n, K), ``labels`` (n,) class indexes, optional ``groups`` (n,) case / patient
        ids (score per group = max over its members). Output: self. Raises ``CalibrationError`` when there are too
        few units (or groups) for ``delta``, ``DataError`` for malformed input.
        """
        probs = check_probabilities(probabilities)
        scores = self.conformity_scores(probs, labels)
        if groups is not None:
            _, scores = group_max(scores, groups)
        self.unit_ = "group" if groups is not None else "unit"
        unit_words = "calibration groups (cases)" if groups is not None else "calibration units"
        self.threshold_, self.rank_ = calibration_threshold(scores, self.delta, self.gamma, unit_words)
        self.n_units_ = int(scores.size)
        self.n_classes_ = int(probs.shape[1])
        self.calibration_scores_ = scores
        return self

    def predict(self, probabilities, uniforms=None) -> np.ndarray:
        """Prediction sets. Input (m, K) probabilities (and, for randomised APS, optional (m,) uniforms: default drawn
        from ``random_state``); output (m, K) boolean, True where the class is in the set."""
        if not hasattr(self, "threshold_"):
            raise RuntimeError("call fit() before predict()")
        probs = check_probabilities(probabilities)
        if probs.shape[1] != self.n_classes_:
            raise DataError(f"probabilities have {probs.shape[1]} classes, the calibration had {self.n_classes_}")
        sets = self.class_scores(probs, uniforms) <= self.threshold_
        if self.score == "aps" and not self.randomized:
            # never empty: the most probable class is always in (argmax takes the lower index on ties, as the APS
            # ranking does); this only adds coverage
            sets[np.arange(probs.shape[0]), np.argmax(probs, axis=1)] = True
        return fill_gaps(sets) if self.contiguous else sets


# --------------------------------------------------------------------------------------------------------------
# ordinal totals: conformal intervals


def sum_distribution(item_probabilities, item_values) -> tuple[np.ndarray, np.ndarray]:
    """Distribution of a total of independent ordinal items (e.g. the RUST total of four cortex grades).

    Inputs: ``item_probabilities`` (n, T, K) class probabilities of T items, ``item_values`` (K,) integer value of
    each class (RUST: [1, 2, 3]). Output: ``(total_values, pmf)`` with total_values (T*(K-1)+1,) integers from
    ``T*min`` to ``T*max`` and pmf (n, len(total_values)). Assumes the items independent given the image, which
    is only an approximation: calibrate intervals built from it conformally, never use its quantiles raw.
    """
    probs = np.asarray(item_probabilities, dtype=np.float64)
    values = np.asarray(item_values)
    if probs.ndim != 3 or probs.shape[2] != values.size:
        raise DataError(f"item probabilities must be (n, T, {values.size}), got shape {probs.shape}")
    if not np.issubdtype(values.dtype, np.integer) or np.any(np.diff(values) != 1):
        raise DataError("item values must be consecutive integers (e.g. 1, 2, 3)")
    n, items, classes = probs.shape
    pmf = np.ones((n, 1))
    for t in range(items):
        grown = np.zeros((n, pmf.shape[1] + classes - 1))
        for c in range(classes):
            grown[:, c : c + pmf.shape[1]] += pmf * probs[:, t, c : c + 1]
        pmf = grown
    totals = np.arange(items * int(values[0]), items * int(values[-1]) + 1)
    return totals, pmf


def pmf_quantile(pmf, values, level: float) -> np.ndarray:
    """Smallest value v with P(Y <= v) >= level, per row. Inputs (n, V) pmf, (V,) values; output (n,) values."""
    pmf = np.asarray(pmf, dtype=np.float64)
    values = np.asarray(values)
    cdf = np.cumsum(pmf, axis=1)
    index = np.argmax(cdf >= level - 1e-12, axis=1)
    return values[index]


def pmf_mean(pmf, values) -> np.ndarray:
    """Expected value per row. Inputs (n, V) pmf, (V,) values; output (n,) float."""
    return np.asarray(pmf, dtype=np.float64) @ np.asarray(values, dtype=np.float64)


class OrdinalIntervalConformal:
    """Split-conformal interval (or one-sided bound) for an ordinal or continuous total, e.g. RUST 4-12.

    Parameters:

    * ``delta``: miscoverage; ``side``: "two-sided" (``[lower, upper]``), "lower" (a lower bound only: the upper
      end is the top of the range, or +inf) or "upper" (an upper bound only).
    * ``score``: "absolute" (predictions (n,) points; two-sided score ``|y - p|``, lower ``p - y``, upper
      ``y - p``) or "cqr" (predictions (n, 2) = lower and upper quantile predictions, e.g. ``pmf_quantile`` at
      delta/2 and 1 - delta/2; score ``max(lo - y, y - hi)``, lower ``lo - y``, upper ``y - hi``; Romano 2019).
    * ``value_range``: ``(lowest, highest)`` integer values of the total (RUST (4, 12)). With it, the interval is
      the exact set of integers v in range whose score ``<= threshold_`` (so a truth is covered exactly when its
      score is): integer bounds, clipped to the range. Without it, float bounds ``p -/+ threshold_``.
    * ``gamma``: optional PAC rank, as in ``ConformalClassSets``.

    ``fit(predictions, truths, groups=None)``: groups (e.g. patient ids when a patient has several cases) take the
    max score, so that all of a group's intervals hold together with probability >= 1 - delta.
    ``predict(predictions)`` -> ``(lower, upper)``, each (m,). An integer set that comes out empty (only possible
    when no integer lies within the threshold of a fractional prediction) is widened to the integers either side
    of the prediction: never empty, and only ever wider, so the guarantee stands.
    """

    def __init__(
        self,
        delta: DeltaLike = 0.1,
        side: str = "two-sided",
        score: str = "absolute",
        value_range: tuple[int, int] | None = None,
        gamma: DeltaLike | None = None,
    ):
        if side not in INTERVAL_SIDES:
            raise ValueError(f"side must be one of {INTERVAL_SIDES}, got {side!r}")
        if score not in INTERVAL_SCORES:
            raise ValueError(f"score must be one of {INTERVAL_SCORES}, got {score!r}")
        if value_range is not None:
            low, high = value_range
            if int(low) != low or int(high) != high or low > high:
                raise ValueError(f"value_range must be two integers (lowest, highest), got {value_range!r}")
            value_range = (int(low), int(high))
        check_levels(delta, gamma)
        self.delta = delta
        self.side = side
        self.score = score
        self.value_range = value_range
        self.gamma = gamma

    def _check_predictions(self, predictions) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) point arrays: the same column twice for "absolute"."""
        pred = np.asarray(predictions, dtype=np.float64)
        if self.score == "absolute":
            if pred.ndim != 1:
                raise DataError(f"score='absolute' takes (n,) point predictions, got shape {pred.shape}")
            lo = hi = pred
        else:
            if pred.ndim != 2 or pred.shape[1] != 2:
                raise DataError(f"score='cqr' takes (n, 2) [lower, upper] quantile predictions, got {pred.shape}")
            lo, hi = pred[:, 0], pred[:, 1]
        if not np.all(np.isfinite(pred)):
            raise DataError("predictions contain NaN or infinite values")
        return lo, hi

    def _scores(self, lo: np.ndarray, hi: np.ndarray, truths: np.ndarray) -> np.ndarray:
        """Score of truth(s) ``truths`` (broadcast against lo/hi): how far the truth falls outside [lo, hi]."""
        if self.side == "lower":
            return lo - truths
        if self.side == "upper":
            return truths - hi
        return np.maximum(lo - truths, truths - hi)

    def fit(self, predictions, truths, groups=None) -> OrdinalIntervalConformal:
        """Calibrate. Inputs: predictions (n,) or (n, 2) for "cqr", truths (n,) in the total's units, optional groups
        (n,). Output: self; ``threshold_`` (total units), ``rank_``, ``n_units_``. ``CalibrationError`` when n is too
        small for delta."""
        lo, hi = self._check_predictions(predictions)
        truth = np.asarray(truths, dtype=np.float64)
        if truth.shape != lo.shape:
            raise DataError(f"truths must have shape {lo.shape}, got {truth.shape}")
        if not np.all(np.isfinite(truth)):
            raise DataError("truths contain NaN or infinite values")
        if self.value_range is not None and truth.size:
            low, high = self.value_range
            if truth.min() < low or truth.max() > high or np.any(truth != np.round(truth)):
                raise DataError(f"truths must be integers in {low}..{high}")
        scores = self._scores(lo, hi, truth)
        if groups is not None:
            _, scores = group_max(scores, groups)
        unit_words = "calibration groups (cases)" if groups is not None else "calibration units"
        self.threshold_, self.rank_ = calibration_threshold(scores, self.delta, self.gamma, unit_words)
        self.n_units_ = int(scores.size)
        self.calibration_scores_ = scores
        return self

    def predict(self, predictions) -> tuple[np.ndarray, np.ndarray]:
        """Bounds. Input predictions (m,) or (m, 2); output ``(lower, upper)`` each (m,): int64 with a value_range
        (inclusive integer bounds), else float64 (-inf / +inf for the open side of a one-sided bound)."""
        if not hasattr(self, "threshold_"):
            raise RuntimeError("call fit() before predict()")
        lo, hi = self._check_predictions(predictions)
        q = self.threshold_
        if self.value_range is None:
            lower = lo - q if self.side != "upper" else np.full(lo.shape, -np.inf)
            upper = hi + q if self.side != "lower" else np.full(hi.shape, np.inf)
            return lower, upper
        low, high = self.value_range
        grid = np.arange(low, high + 1, dtype=np.float64)
        inside = self._scores(lo[:, None], hi[:, None], grid[None, :]) <= q  # (m, V), contiguous per row
        empty = ~inside.any(axis=1)
        if empty.any():
            centre = (lo[empty] + hi[empty]) / 2.0
            near = (grid[None, :] >= np.floor(centre)[:, None]) & (grid[None, :] <= np.ceil(centre)[:, None])
            near |= grid[None, :] == np.clip(np.round(centre), low, high)[:, None]  # a centre outside the range
            inside[empty] = near
        first = np.argmax(inside, axis=1)
        last = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)
        return (first + low).astype(np.int64), (last + low).astype(np.int64)


def interval_coverage(lower, upper, truths, groups=None) -> float:
    """Fraction of units (or groups: all members) with ``lower <= truth <= upper``. Inputs (n,) each; output in [0, 1]."""
    truth = np.asarray(truths, dtype=np.float64)
    covered = (np.asarray(lower) <= truth) & (truth <= np.asarray(upper))
    if covered.size == 0:
        return float("nan")
    if groups is None:
        return float(covered.mean())
    _, worst = group_max((~covered).astype(np.float64), groups)
    return float(np.mean(worst == 0.0))
