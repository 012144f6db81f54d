"""Conformal prediction sets / ordinal intervals (sonogate.calibration.class_sets) and the ordinal metrics.

Validity is tested the way MAPIE's ``test_coverage_validity`` does it: many random calibration/test splits, the
mean coverage against both edges of [1 - delta, 1 - delta + 1/(n + 1)] with a Monte-Carlo margin. With continuous
scores the expected coverage is exactly k/(n + 1), which is checked too; a check that the naive rank ceil(n(1-delta))
fails proves that the test has the power to catch a wrong quantile.
"""

from __future__ import annotations

import numpy as np
import pytest

from sonogate.calibration.class_sets import (
    ConformalClassSets,
    OrdinalIntervalConformal,
    aps_scores,
    fill_gaps,
    group_max,
    interval_coverage,
    lac_scores,
    mean_set_size,
    pmf_mean,
    pmf_quantile,
    set_coverage,
    set_to_text,
    sum_distribution,
)
from sonogate.calibration.conformal import conformal_rank
from sonogate.calibration.ordinal_metrics import (
    accuracy,
    average_precision,
    confusion_matrix,
    icc,
    icc_mean_squares,
    macro_recall,
    mean_absolute_error,
    one_hot,
    one_hot_precision_recall,
    ordinal_report,
    per_grade_recall,
    pr_auc,
    quadratic_weighted_kappa,
    within_one_accuracy,
)
from sonogate.errors import CalibrationError, DataError

pytestmark = pytest.mark.torchfree

Z = 4.0  # Monte-Carlo margin in standard errors (about 30 checks in this file: Bonferroni-safe)


def dirichlet_classifier(rng, shape, n_classes, quality, class_prior=None):
    """Synthetic classifier outputs: labels (shape) and probabilities (shape + (K,)) ~ Dirichlet(1 + quality e_y).

    ``quality`` (scalar or broadcastable to shape) is the extra concentration on the true class: 0 is a useless
    classifier, 20 a good one.
    """
    prior = np.full(n_classes, 1.0 / n_classes) if class_prior is None else np.asarray(class_prior)
    labels = rng.choice(n_classes, size=shape, p=prior)
    concentration = np.ones(shape + (n_classes,))
    np.put_along_axis(
        concentration, labels[..., None], 1.0 + np.broadcast_to(quality, shape)[..., None], axis=-1
    )
    gammas = rng.gamma(concentration)
    return labels, gammas / gammas.sum(axis=-1, keepdims=True)


def coverage_trials(make_sets, n, delta, n_classes=4, quality=3.0, trials=800, n_test=100, seed=0):
    """Per-trial test coverage of sets calibrated on n fresh units. Returns (coverages (trials,), mean size)."""
    rng = np.random.default_rng(seed)
    labels, probs = dirichlet_classifier(rng, (trials, n + n_test), n_classes, quality)
    coverages = np.empty(trials)
    sizes = np.empty(trials)
    for t in range(trials):
        # a fresh seed per trial: with one seed for all trials the uniforms of randomised APS would be the same
        # fixed numbers every time, which breaks exchangeability between calibration and test units
        sets = make_sets(t).fit(probs[t, :n], labels[t, :n]).predict(probs[t, n:])
        coverages[t] = set_coverage(sets, labels[t, n:])
        sizes[t] = mean_set_size(sets)
    return coverages, float(sizes.mean())


def assert_valid(coverages, n, delta, exact=True, upper=True):
    """Mean coverage within [1 - delta, 1 - delta + 1/(n+1)] (and equal to k/(n+1) when ``exact``), up to Z s.e.;
    ``upper`` False checks the lower edge only (conservative methods, tied scores)."""
    mean = coverages.mean()
    se = coverages.std(ddof=1) / np.sqrt(coverages.size)
    assert mean >= 1 - delta - Z * se, f"undercoverage {mean:.4f} < {1 - delta} (se {se:.4f})"
    if upper:
        assert mean <= 1 - delta + 1 / (n + 1) + Z * se, f"overcoverage {mean:.4f} (se {se:.4f})"
    if exact:
        expected = conformal_rank(n, delta) / (n + 1)
        assert abs(mean - expected) <= Z * se, f"mean {mean:.4f} vs k/(n+1) = {expected:.4f} (se {se:.4f})"


# --------------------------------------------------------------------------------------------------------------
# scores


def test_lac_and_aps_scores_by_hand():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(lac_scores(probs), [[0.5, 0.7, 0.8], [0.9, 0.9, 0.2]])
    # APS: mass of the class and of every class ranked before it (ties: lower index first)
    np.testing.assert_allclose(aps_scores(probs), [[0.5, 0.8, 1.0], [0.9, 1.0, 0.8]])
    # randomised: mass strictly before + u * p
    np.testing.assert_allclose(aps_scores(probs, np.array([0.5, 0.0])), [[0.25, 0.65, 0.9], [0.8, 0.9, 0.0]])


def test_set_membership_matches_the_true_class_score():
    """A class is in the set exactly when its score is <= the threshold (the identity the guarantee rests on)."""
    rng = np.random.default_rng(3)
    labels, probs = dirichlet_classifier(rng, (400,), 5, 2.0)
    for score, randomized in (("lac", False), ("aps", True), ("aps", False)):
        model = ConformalClassSets(delta=0.2, score=score, randomized=randomized, random_state=0)
        model.fit(probs[:200], labels[:200])
        uniforms = rng.random(200)
        sets = model.predict(probs[200:], uniforms)
        scores = model.conformity_scores(probs[200:], labels[200:], uniforms)
        covered = sets[np.arange(200), labels[200:]]
        if randomized or score == "lac":
            np.testing.assert_array_equal(covered, scores <= model.threshold_)
        else:  # plus the top class when the set would be empty
            assert np.all(covered[scores <= model.threshold_]) and covered.sum() > np.sum(scores <= model.threshold_)
        assert model.threshold_ == np.sort(model.calibration_scores_)[model.rank_ - 1]


def test_aps_deterministic_sets_are_never_empty_and_are_top_classes():
    rng = np.random.default_rng(4)
    labels, probs = dirichlet_classifier(rng, (600,), 5, 4.0)
    sets = ConformalClassSets(delta=0.1, score="aps").fit(probs[:300], labels[:300]).predict(probs[300:])
    assert sets.sum(axis=1).min() >= 1
    # an APS set is the top-m classes by probability
    order = np.argsort(-probs[300:], axis=1, kind="stable")
    ranked = np.take_along_axis(sets, order, axis=1)
    assert np.all(np.diff(ranked.astype(int), axis=1) <= 0)


# --------------------------------------------------------------------------------------------------------------
# marginal validity over repeated splits


@pytest.mark.parametrize("score,randomized", [("lac", False), ("aps", False), ("aps", True)])
@pytest.mark.parametrize("n,delta", [(20, 0.1), (50, 0.2), (99, 0.05)])
def test_class_set_coverage_validity(score, randomized, n, delta):
    coverages, _ = coverage_trials(
        lambda trial: ConformalClassSets(delta=delta, score=score, randomized=randomized, random_state=trial),
        n, delta, seed=n,
    )
    if score == "aps" and not randomized:
        # deterministic APS puts the top class into sets that would be empty: conservative, only the lower edge holds
        assert_valid(coverages, n, delta, exact=False, upper=False)
    else:
        assert_valid(coverages, n, delta)


def test_validity_check_catches_the_naive_rank():
    """The same check flags sets built at the naive rank ceil(n (1 - delta)) (np.quantile-like): the test has power."""
    n, delta = 20, 0.1
    rng = np.random.default_rng(20)
    labels, probs = dirichlet_classifier(rng, (800, n + 100), 4, 3.0)
    naive_rank = int(np.ceil(n * (1 - delta)))  # 18, against the conformal 19
    assert naive_rank < conformal_rank(n, delta)
    coverages = np.empty(800)
    for t in range(800):
        cal = 1.0 - probs[t, np.arange(n), labels[t, :n]]
        threshold = np.sort(cal)[naive_rank - 1]
        coverages[t] = np.mean(1.0 - probs[t, n + np.arange(100), labels[t, n:]] <= threshold)
    with pytest.raises(AssertionError, match="undercoverage"):
        assert_valid(coverages, n, delta)


def test_coverage_with_imbalanced_classes_and_a_pac_rank():
    """Imbalanced grades (like KL): still valid; with gamma the coverage of one calibration draw is >= 1 - delta in
    at least 1 - gamma of the draws."""
    n, delta, gamma = 200, 0.1, 0.1
    rng = np.random.default_rng(7)
    labels, probs = dirichlet_classifier(rng, (400, n + 400), 5, 3.0, class_prior=[0.4, 0.2, 0.2, 0.15, 0.05])
    marginal = np.empty(400)
    pac = np.empty(400)
    for t in range(400):
        cal, test = slice(0, n), slice(n, None)
        marginal[t] = set_coverage(ConformalClassSets(delta).fit(probs[t, cal], labels[t, cal]).predict(
            probs[t, test]), labels[t, test])
        pac[t] = set_coverage(ConformalClassSets(delta, gamma=gamma).fit(probs[t, cal], labels[t, cal]).predict(
            probs[t, test]), labels[t, test])
    assert_valid(marginal, n, delta)
    # a finite test set adds binomial noise; 1 - delta - 0.02 is about one test-set s.e. below
    assert np.mean(pac >= 1 - delta - 0.02) >= 1 - gamma
    assert np.mean(marginal >= 1 - delta) < np.mean(pac >= 1 - delta)


def test_better_classifier_gives_smaller_sets():
    n, delta = 100, 0.1
    for score in ("lac", "aps"):
        sizes = []
        for quality in (1.0, 4.0, 20.0):
            coverages, size = coverage_trials(lambda trial, score=score: ConformalClassSets(delta, score=score), n, delta,
                                              n_classes=5, quality=quality, trials=100, seed=5)
            assert_valid(coverages, n, delta, exact=False, upper=score == "lac")
            sizes.append(size)
        assert sizes[0] > sizes[1] > sizes[2], (score, sizes)
        assert sizes[2] < 1.75 and sizes[0] > 2.5


# --------------------------------------------------------------------------------------------------------------
# groups: coverage by case


def grouped_data(rng, n_groups, members_per_group=4, n_classes=3):
    """Cases of 4 cortices whose difficulty is shared (a poor film is poor for all four): (labels, probs, groups)."""
    quality = np.repeat(rng.choice([0.5, 3.0, 12.0], size=n_groups), members_per_group)
    labels, probs = dirichlet_classifier(rng, (n_groups * members_per_group,), n_classes, quality)
    groups = np.repeat(np.array([f"case{i:04d}" for i in range(n_groups)]), members_per_group)
    return labels, probs, groups


@pytest.mark.parametrize("score,randomized", [("lac", False), ("aps", True), ("aps", False)])
def test_group_max_score_gives_coverage_by_case(score, randomized):
    n_groups, delta, trials = 30, 0.1, 600
    rng = np.random.default_rng(11)
    by_case, by_case_pooled = np.empty(trials), np.empty(trials)
    for t in range(trials):
        labels, probs, groups = grouped_data(rng, n_groups + 50)
        cal = groups < f"case{n_groups:04d}"
        grouped = ConformalClassSets(delta, score=score, randomized=randomized, random_state=t)
        grouped.fit(probs[cal], labels[cal], groups=groups[cal])
        assert grouped.n_units_ == n_groups and grouped.unit_ == "group"
        by_case[t] = set_coverage(grouped.predict(probs[~cal]), labels[~cal], groups=groups[~cal])
        pooled = ConformalClassSets(delta, score=score, randomized=randomized, random_state=t).fit(probs[cal], labels[cal])
        by_case_pooled[t] = set_coverage(pooled.predict(probs[~cal]), labels[~cal], groups=groups[~cal])
    # deterministic APS: its score has an atom at 1 (true class ranked last), frequent in poor cases: conservative
    assert_valid(by_case, n_groups, delta, exact=randomized or score == "lac", upper=randomized or score == "lac")
    # calibrating cortices one by one covers cortices, not cases
    se = by_case_pooled.std(ddof=1) / np.sqrt(trials)
    assert by_case_pooled.mean() < 1 - delta - Z * se


def test_group_max_and_grouped_coverage_by_hand():
    ids, maxima = group_max(np.array([0.1, 0.7, 0.3, 0.2]), np.array(["b", "a", "b", "a"]))
    assert ids.tolist() == ["a", "b"] and maxima.tolist() == [0.7, 0.3]
    sets = np.array([[True, False], [True, False], [False, True], [False, True]])
    labels = np.array([0, 1, 1, 1])  # unit 1 is missed
    assert set_coverage(sets, labels) == 0.75
    assert set_coverage(sets, labels, groups=[1, 1, 2, 2]) == 0.5


# --------------------------------------------------------------------------------------------------------------
# refusal, exact rank, determinism, input errors


def test_refuses_too_few_calibration_units_with_the_number_needed():
    rng = np.random.default_rng(0)
    labels, probs = dirichlet_classifier(rng, (40,), 3, 2.0)
    with pytest.raises(CalibrationError, match=r"at least 9 calibration units for delta=0.1, got 8"):
        ConformalClassSets(0.1).fit(probs[:8], labels[:8])
    ConformalClassSets(0.1).fit(probs[:9], labels[:9])  # n = 9: k = 9 <= n
    with pytest.raises(CalibrationError, match=r"at least 19 calibration groups \(cases\) for delta=0.05, got 10"):
        ConformalClassSets(0.05).fit(probs, labels, groups=np.arange(40) // 4)
    with pytest.raises(CalibrationError, match=r"at least 22 calibration units for delta=0.1 and gamma=0.1"):
        ConformalClassSets(0.1, gamma=0.1).fit(probs[:21], labels[:21])
    ConformalClassSets(0.1, gamma=0.1).fit(probs[:22], labels[:22])
    with pytest.raises(CalibrationError, match="at least 9"):
        OrdinalIntervalConformal(0.1).fit(np.zeros(8), np.zeros(8))
    assert "\n" not in str(pytest.raises(CalibrationError, ConformalClassSets(0.1).fit, probs[:3], labels[:3]).value)


def test_exact_integer_rank_where_floating_point_gets_it_wrong():
    rng = np.random.default_rng(1)
    labels, probs = dirichlet_classifier(rng, (99,), 3, 2.0)
    model = ConformalClassSets(0.45).fit(probs, labels)
    assert model.rank_ == 55  # (99 + 1) * 0.55 = 55 exactly; math.ceil(100 * (1 - 0.45)) gives 56
    assert model.threshold_ == np.sort(model.calibration_scores_)[54]


def test_determinism():
    rng = np.random.default_rng(2)
    labels, probs = dirichlet_classifier(rng, (300,), 4, 2.0)
    first = ConformalClassSets(0.1, score="aps").fit(probs[:150], labels[:150]).predict(probs[150:])
    again = ConformalClassSets(0.1, score="aps").fit(probs[:150], labels[:150]).predict(probs[150:])
    np.testing.assert_array_equal(first, again)
    random_a = ConformalClassSets(0.1, "aps", randomized=True, random_state=5).fit(probs[:150], labels[:150])
    random_b = ConformalClassSets(0.1, "aps", randomized=True, random_state=5).fit(probs[:150], labels[:150])
    random_c = ConformalClassSets(0.1, "aps", randomized=True, random_state=6).fit(probs[:150], labels[:150])
    np.testing.assert_array_equal(random_a.predict(probs[150:]), random_b.predict(probs[150:]))
    assert random_a.threshold_ == random_b.threshold_ != random_c.threshold_


def test_bad_inputs_raise_one_line_data_errors():
    good = np.array([[0.2, 0.8], [0.6, 0.4]])
    with pytest.raises(DataError, match="sum to 1"):
        ConformalClassSets().fit(np.array([[0.2, 0.7], [0.6, 0.4]]), [0, 1])
    with pytest.raises(DataError, match="class indexes in 0..1"):
        ConformalClassSets().fit(good, [1, 2])
    with pytest.raises(DataError, match="NaN"):
        ConformalClassSets().fit(np.array([[np.nan, 1.0], [0.6, 0.4]]), [0, 1])
    with pytest.raises(DataError, match="shape"):
        ConformalClassSets().fit(good, [0, 1, 1])
    with pytest.raises(DataError, match="integer class indexes"):
        ConformalClassSets().fit(good, [0.5, 1])
    with pytest.raises(ValueError, match="randomized"):
        ConformalClassSets(score="lac", randomized=True)
    with pytest.raises(DataError, match="3 classes, the calibration had 2"):
        rng = np.random.default_rng(0)
        labels, probs = dirichlet_classifier(rng, (30,), 2, 1.0)
        ConformalClassSets(0.1).fit(probs, labels).predict(np.full((1, 3), 1 / 3))


def test_contiguous_sets_fill_gaps_and_keep_coverage():
    sets = np.array([[True, False, True, False], [False, False, False, False], [False, True, False, False]])
    np.testing.assert_array_equal(fill_gaps(sets), [[True, True, True, False], [False] * 4, [False, True, False, False]])
    # a poorly ordinal classifier (probability mass on both sides) makes gapped LAC sets
    rng = np.random.default_rng(12)
    labels, probs = dirichlet_classifier(rng, (2000,), 5, 1.0)
    plain = ConformalClassSets(0.3).fit(probs[:1000], labels[:1000]).predict(probs[1000:])
    filled = ConformalClassSets(0.3, contiguous=True).fit(probs[:1000], labels[:1000]).predict(probs[1000:])
    assert np.all(filled >= plain) and filled.sum() > plain.sum()
    assert np.all(np.diff(filled.astype(int), axis=1).clip(min=0).sum(axis=1) <= 1)  # one run of True per row
    assert set_coverage(filled, labels[1000:]) >= set_coverage(plain, labels[1000:])


def test_set_to_text():
    assert set_to_text(np.array([True, True, False]), [1, 2, 3]) == "1|2"
    assert set_to_text(np.array([False, False, False]), [1, 2, 3]) == ""
    assert set_to_text(np.array([[False, True, True, False, False], [True] * 5]), range(5)) == ["1|2", "0|1|2|3|4"]
    with pytest.raises(DataError, match="3 classes but 2 labels"):
        set_to_text(np.array([True, False, True]), [1, 2])


# --------------------------------------------------------------------------------------------------------------
# ordinal totals


def total_data(rng, shape, noise=1.2):
    """RUST-like totals 4..12 and point predictions truth + noise (clipped to the range)."""
    truth = rng.integers(4, 13, size=shape)
    return truth, np.clip(truth + rng.normal(0.0, noise, size=shape), 4.0, 12.0)


@pytest.mark.parametrize("side", ["two-sided", "lower", "upper"])
def test_ordinal_interval_validity_and_integer_bounds(side):
    n, delta, trials = 40, 0.1, 800
    rng = np.random.default_rng({"two-sided": 1, "lower": 2, "upper": 3}[side])
    truth, pred = total_data(rng, (trials, n + 100))
    float_cov, int_cov, widths = np.empty(trials), np.empty(trials), np.empty(trials)
    for t in range(trials):
        model = OrdinalIntervalConformal(delta, side=side).fit(pred[t, :n], truth[t, :n])
        lower, upper = model.predict(pred[t, n:])
        float_cov[t] = interval_coverage(lower, upper, truth[t, n:])
        grid = OrdinalIntervalConformal(delta, side=side, value_range=(4, 12)).fit(pred[t, :n], truth[t, :n])
        int_lower, int_upper = grid.predict(pred[t, n:])
        assert int_lower.dtype == np.int64 and np.all((int_lower >= 4) & (int_upper <= 12) & (int_lower <= int_upper))
        int_cov[t] = interval_coverage(int_lower, int_upper, truth[t, n:])
        widths[t] = np.mean(int_upper - int_lower)
    assert_valid(float_cov, n, delta)
    # integer bounds hold exactly the integers the float interval holds (unless widened from empty: only more)
    assert np.all(int_cov >= float_cov)
    assert np.mean(int_cov == float_cov) > 0.99
    if side == "lower":
        assert np.all(widths <= 8)


def test_cqr_interval_from_the_total_distribution_is_valid_and_adaptive():
    """RUST: four cortex probabilities -> distribution of the total -> CQR on its delta/2 and 1 - delta/2 quantiles."""
    n_cases, delta, trials = 60, 0.1, 300
    rng = np.random.default_rng(8)
    grades = np.array([1, 2, 3])
    coverages, widths_good, widths_poor = np.empty(trials), [], []
    for t in range(trials):
        quality = rng.choice([0.5, 8.0], size=(n_cases + 100, 1))
        labels, probs = dirichlet_classifier(rng, (n_cases + 100, 4), 3, np.broadcast_to(quality, (n_cases + 100, 4)))
        totals, pmf = sum_distribution(probs, grades)
        band = np.column_stack([pmf_quantile(pmf, totals, delta / 2), pmf_quantile(pmf, totals, 1 - delta / 2)])
        truth = (labels + 1).sum(axis=1)
        model = OrdinalIntervalConformal(delta, score="cqr", value_range=(4, 12)).fit(band[:n_cases], truth[:n_cases])
        lower, upper = model.predict(band[n_cases:])
        coverages[t] = interval_coverage(lower, upper, truth[n_cases:])
        good = quality[n_cases:, 0] == 8.0
        widths_good.append(np.mean((upper - lower)[good]))
        widths_poor.append(np.mean((upper - lower)[~good]))
    # integer truths and quantiles make ties, so only the lower edge (>= 1 - delta) is guaranteed
    se = coverages.std(ddof=1) / np.sqrt(trials)
    assert coverages.mean() >= 1 - delta - Z * se
    assert np.mean(widths_good) + 1.0 < np.mean(widths_poor)


def test_interval_groups_cover_all_cases_of_a_patient():
    n_patients, delta, trials = 25, 0.1, 600
    rng = np.random.default_rng(9)
    by_patient = np.empty(trials)
    for t in range(trials):
        truth, pred = total_data(rng, (3 * (n_patients + 40),))
        patients = np.repeat(np.arange(n_patients + 40), 3)
        cal = patients < n_patients
        model = OrdinalIntervalConformal(delta).fit(pred[cal], truth[cal], groups=patients[cal])
        lower, upper = model.predict(pred[~cal])
        by_patient[t] = interval_coverage(lower, upper, truth[~cal], groups=patients[~cal])
    assert_valid(by_patient, n_patients, delta)


def test_integer_interval_by_hand():
    truths = np.array([5, 6, 4, 5, 7, 5, 5, 5, 6])
    model = OrdinalIntervalConformal(0.2, value_range=(4, 12)).fit(np.full(9, 5.0), truths)
    # scores |y - 5|: 0,1,1,0,2,0,0,0,1 -> k = ceil(10 * 0.8) = 8 -> threshold 1
    assert model.rank_ == 8 and model.threshold_ == 1.0
    lower, upper = model.predict(np.array([8.4, 11.8, 4.5]))
    assert lower.tolist() == [8, 11, 4] and upper.tolist() == [9, 12, 5]
    # a fractional prediction farther than the threshold from every integer is widened, never empty
    narrow = OrdinalIntervalConformal(0.2, value_range=(4, 12)).fit(np.full(9, 5.0), np.full(9, 5))
    assert narrow.threshold_ == 0.0
    lower, upper = narrow.predict(np.array([6.5, 6.0, 13.5]))
    assert lower.tolist() == [6, 6, 12] and upper.tolist() == [7, 6, 12]
    upper_only = OrdinalIntervalConformal(0.2, side="upper").fit(np.full(9, 5.0), truths)
    lower, upper = upper_only.predict(np.array([5.0]))
    assert lower[0] == -np.inf and upper[0] == 6.0  # scores y - 5: 0,1,-1,0,2,0,0,0,1 -> 8th smallest 1


def test_sum_distribution_matches_enumeration():
    rng = np.random.default_rng(10)
    _, probs = dirichlet_classifier(rng, (5, 2), 3, 1.0)
    totals, pmf = sum_distribution(probs, np.array([1, 2, 3]))
    assert totals.tolist() == [2, 3, 4, 5, 6]
    for i in range(5):
        brute = np.zeros(5)
        for a in range(3):
            for b in range(3):
                brute[a + b] += probs[i, 0, a] * probs[i, 1, b]
        np.testing.assert_allclose(pmf[i], brute, atol=1e-12)
    certain = np.zeros((1, 4, 3))
    certain[0, :, 2] = 1.0
    certain[0, 0] = [0.0, 1.0, 0.0]
    totals, pmf = sum_distribution(certain, np.array([1, 2, 3]))
    assert totals[np.argmax(pmf[0])] == 11 and pmf_mean(pmf, totals)[0] == pytest.approx(11.0)
    assert pmf_quantile(pmf, totals, 0.05)[0] == 11


# --------------------------------------------------------------------------------------------------------------
# ordinal metrics


def test_qwk_by_hand_and_against_scikit_learn():
    truth = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 2, 2, 2])
    # O = [[1,1,0],[0,1,1],[0,0,2]], sum W*O = 1/2, sum W*E = 2 -> 1 - 0.25
    assert quadratic_weighted_kappa(truth, pred) == pytest.approx(0.75, abs=1e-12)
    assert quadratic_weighted_kappa(truth, truth) == pytest.approx(1.0)
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = rng.integers(0, 5, size=200)
        pred = np.clip(truth + rng.integers(-2, 3, size=200) * (rng.random(200) < 0.4), 0, 4)
        ours = quadratic_weighted_kappa(truth, pred, grades=range(5))
        theirs = metrics.cohen_kappa_score(truth, pred, weights="quadratic", labels=list(range(5)))
        assert ours == pytest.approx(theirs, abs=1e-12)
        np.testing.assert_array_equal(confusion_matrix(truth, pred, range(5)),
                                      metrics.confusion_matrix(truth, pred, labels=list(range(5))))
        assert macro_recall(truth, pred, range(5)) == pytest.approx(metrics.balanced_accuracy_score(truth, pred))
        np.testing.assert_allclose(per_grade_recall(truth, pred, range(5)),
                                   metrics.recall_score(truth, pred, average=None, labels=list(range(5))))
        assert mean_absolute_error(truth, pred) == pytest.approx(metrics.mean_absolute_error(truth, pred))


def test_icc_against_shrout_fleiss_1979():
    """Shrout & Fleiss (1979) table 2: 6 targets, 4 judges; their table 4 gives ICC(1,1) .17, ICC(2,1) .29,
    ICC(3,1) .71 and the mean squares BMS 11.24, JMS 32.49, EMS 1.02, WMS 6.26."""
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    ms = icc_mean_squares(ratings)
    assert ms["rows"] == pytest.approx(11.24, abs=0.005)
    assert ms["columns"] == pytest.approx(32.49, abs=0.005)
    assert ms["error"] == pytest.approx(1.02, abs=0.005)
    assert ms["within"] == pytest.approx(6.26, abs=0.005)
    assert icc(ratings, "1,1") == pytest.approx(0.17, abs=0.005)
    assert icc(ratings, "2,1") == pytest.approx(0.29, abs=0.005)
    assert icc(ratings, "3,1") == pytest.approx(0.71, abs=0.005)


def test_icc_properties():
    rng = np.random.default_rng(1)
    truth = rng.integers(4, 13, size=100).astype(float)
    assert icc(np.column_stack([truth, truth]), "2,1") == pytest.approx(1.0)
    pred = truth + rng.normal(0, 1.0, size=100)
    shifted = pred + 2.0
    # consistency ignores a constant offset, absolute agreement does not
    assert icc(np.column_stack([truth, shifted]), "3,1") == pytest.approx(icc(np.column_stack([truth, pred]), "3,1"))
    assert icc(np.column_stack([truth, shifted]), "2,1") < icc(np.column_stack([truth, pred]), "2,1") - 0.1
    with pytest.raises(DataError, match="NaN"):
        icc(np.array([[1.0, np.nan], [2.0, 3.0]]))


def test_one_hot_metrics_against_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    labels, probs = dirichlet_classifier(rng, (300,), 6, 2.0, class_prior=[0.4, 0.3, 0.1, 0.1, 0.07, 0.03])
    probs = np.round(probs, 2)  # ties in the scores
    targets = one_hot(labels, 6)
    for c in range(6):
        assert average_precision(targets[:, c], probs[:, c]) == pytest.approx(
            metrics.average_precision_score(targets[:, c], probs[:, c]), abs=1e-12)
    assert pr_auc(targets, probs, "macro") == pytest.approx(
        metrics.average_precision_score(targets, probs, average="macro"), abs=1e-12)
    assert pr_auc(targets, probs, "micro") == pytest.approx(
        metrics.average_precision_score(targets, probs, average="micro"), abs=1e-12)
    predicted = (probs >= 0.5).astype(int)
    precision, recall = one_hot_precision_recall(targets, probs, 0.5, "micro")
    assert precision == pytest.approx(metrics.precision_score(targets, predicted, average="micro"))
    assert recall == pytest.approx(metrics.recall_score(targets, predicted, average="micro"))
    precision, recall = one_hot_precision_recall(targets, probs, 0.5, "macro")
    assert precision == pytest.approx(
        metrics.precision_score(targets, predicted, average="macro", zero_division=np.nan))
    assert recall == pytest.approx(metrics.recall_score(targets, predicted, average="macro", zero_division=np.nan))
    # a perfect ranking has AP 1; a softmax with no class above 0.5 has recall 0 at threshold 0.5
    assert pr_auc(targets, targets + 0.0) == pytest.approx(1.0)
    assert one_hot_precision_recall(targets, np.full_like(probs, 1 / 6))[1] == 0.0


def test_ordinal_report_and_metric_errors():
    report = ordinal_report([0, 1, 2, 2], [0, 2, 2, 2], grades=range(5))
    assert report["accuracy"] == 0.75 and report["mae"] == 0.25
    assert report["per_grade_recall"] == {"0": 1.0, "1": 0.0, "2": 1.0, "3": None, "4": None}
    assert report["macro_recall"] == pytest.approx(2 / 3)
    assert report["confusion"][1] == [0, 0, 1, 0, 0]
    assert accuracy([1, 2], [1, 3]) == 0.5 and within_one_accuracy([1, 2], [3, 3]) == 0.5
    with pytest.raises(DataError, match="not among the task's grades"):
        confusion_matrix([0, 7], [0, 1], grades=range(5))
    with pytest.raises(DataError, match="same length"):
        accuracy([0, 1], [0])
    with pytest.raises(DataError, match="integers"):
        accuracy([0.5, 1], [0, 1])
