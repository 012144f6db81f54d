"""Calibration: exact ranks, statistical validity (vectorised Monte Carlo), joint bounds, per-sweep aggregation.

Statistical tests follow MAPIE's test_coverage_validity: many repeated draws, the mean coverage is tested against
both edges of [1 - delta, 1 - delta + 1/(n + 1)] with a Bonferroni-corrected z bound. All draws are vectorised
with numpy and seeded, so the file runs in a few seconds and is deterministic.
"""

from __future__ import annotations

import functools
import json
import math
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sonogate.calibration.aggregate import AggregationRule, aggregate_frames
from sonogate.calibration.calfile import CalibrationFile, load_calibration
from sonogate.calibration.conformal import (
    OneSidedConformal,
    _binomial_upper_tail_float,
    binomial_tail,
    conformal_radii,
    conformal_rank,
    fit_affine,
    max_score_radius,
    min_calibration_size,
    one_sided_radius,
    pac_rank,
)
from sonogate.calibration.fit import (
    PredictionTable,
    aggregate_table,
    apply_calibration,
    calibrate_units,
    fit_calibration,
    group_split,
    requirement_text,
)
from sonogate.calibration.rules import describe_rule, rule_holds, rule_holds_array
from sonogate.calibration.synthetic import synthetic_table
from sonogate.calibration.validity import (
    coverage_table,
    joint_coverage,
    pac_coverage,
    sweep_vs_frame_coverage,
)
from sonogate.errors import CalibrationError, DataError

pytestmark = pytest.mark.torchfree

NS = (10, 20, 30, 50)
DELTAS = (0.05, 0.1, 0.2, 0.3, 0.4)
# Bonferroni over every (n, delta) cell and both edges, family-wise level 1 %.
Z = NormalDist().inv_cdf(1 - 0.01 / (2 * len(NS) * len(DELTAS)))


# --- exact ranks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, expected", [(99, 55), (179, 99), (199, 110)])
def test_rank_exact_where_float_ceil_is_wrong(n, expected):
    # (n + 1) * (1 - 0.45) is 55.00000000000001 in floating point for n = 99: ceil gives 56, the true rank is 55.
    assert math.ceil((n + 1) * (1 - 0.45)) == expected + 1
    for delta in (0.45, "0.45", Fraction(9, 20), np.float64(0.45)):
        assert conformal_rank(n, delta) == expected


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 20000), p=st.integers(1, 999))
def test_rank_matches_rational_ceil(n, p):
    delta = Fraction(p, 1000)
    expected = math.ceil((n + 1) * (1 - delta))  # exact on Fractions
    assert conformal_rank(n, delta) == expected
    assert conformal_rank(n, f"{p / 1000:g}") == expected
    assert conformal_rank(n, p / 1000) == expected


def test_rank_rejects_bad_delta():
    for bad in (0, 1, -0.1, 1.5, "abc", float("nan")):
        with pytest.raises(ValueError):
            conformal_rank(10, bad)


def test_min_calibration_size():
    assert min_calibration_size(0.1) == 9
    assert min_calibration_size(0.05) == 19
    for delta in (0.1, 0.05, 0.2, 0.45, 0.33):
        n_min = min_calibration_size(delta)
        assert conformal_rank(n_min, delta) <= n_min
        assert conformal_rank(n_min - 1, delta) > n_min - 1


def test_radius_is_kth_smallest_and_none_when_k_exceeds_n():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=99)
    radius, k = one_sided_radius(scores, 0.45)
    assert k == 55 and radius == np.sort(scores)[54]
    radius, k = one_sided_radius(scores[:8], 0.1)
    assert radius is None and k == 9
    radius, k = one_sided_radius(scores[:9], 0.1)
    assert k == 9 and radius == scores[:9].max()
    assert one_sided_radius(np.zeros(0), 0.1) == (None, 1)
    with pytest.raises(ValueError):
        one_sided_radius(np.array([1.0, np.nan]), 0.1)


# --- statistical validity ---------------------------------------------------------------------------------


def test_marginal_coverage_validity():
    """Mean coverage over 2000 draws lies in [1 - delta, 1 - delta + 1/(n + 1)] for every (n, delta)."""
    rows = coverage_table(NS, DELTAS, trials=2000, seed=0)
    for row in rows:
        lo, hi, mean, se = row["low"], row["high"], row["mean"], row["se"]
        assert mean >= lo - Z * se - 1e-12, row
        assert mean <= hi + Z * se + 1e-12, row
        if row["k"] <= row["n"]:  # exact expectation k / (n + 1) for continuous scores
            assert abs(mean - row["k"] / (row["n"] + 1)) <= Z * se + 1e-12, row


def test_marginal_coverage_catches_an_off_by_one():
    """The same test rejects the classic bug of using rank ceil(n(1 - delta)) (no +1): it undercovers."""
    rng = np.random.default_rng(1)
    n, delta, trials = 20, 0.2, 4000
    cal, test = rng.standard_normal((trials, n)), rng.standard_normal((trials, 50))
    k_wrong = math.ceil(n * (1 - delta))
    radius = np.sort(cal, axis=1)[:, k_wrong - 1]
    per_trial = np.mean(test <= radius[:, None], axis=1)
    se = per_trial.std(ddof=1) / np.sqrt(trials)
    assert per_trial.mean() < 1 - delta - Z * se


def test_one_sided_conformal_object_matches_functions_and_sides():
    rng = np.random.default_rng(2)
    truth = rng.normal(60, 5, 200)
    pred = 0.8 * truth + 15 + rng.normal(0, 2, 200)
    lower = OneSidedConformal(delta=0.1).fit(pred[:100], truth[:100]).conformalize(pred[100:], truth[100:])
    a, b = fit_affine(pred[:100], truth[:100])
    assert (lower.a_, lower.b_) == (a, b)
    radius, k = one_sided_radius(a * pred[100:] + b - truth[100:], 0.1)
    assert (lower.radius_, lower.k_, lower.n_) == (radius, k, 100)
    np.testing.assert_allclose(lower.predict_bound(pred[:3]), a * pred[:3] + b - radius)
    upper = OneSidedConformal(delta=0.1, side="upper", affine=False).conformalize(pred[100:], truth[100:])
    radius_u, _ = one_sided_radius(truth[100:] - pred[100:], 0.1)
    np.testing.assert_allclose(upper.predict_bound(pred[:3]), pred[:3] + radius_u)
    tiny = OneSidedConformal(delta=0.1).conformalize(pred[:5], truth[:5])
    assert tiny.radius_ is None and np.all(tiny.predict_bound(pred[:3]) == -np.inf)


def test_joint_max_score_covers_where_separate_bounds_do_not():
    """Two correlated measurements: separate bounds at delta each fall below 1 - delta jointly; max-score doesn't."""
    n, delta = 50, 0.1
    res = joint_coverage(n, delta, rho=0.5, trials=3000, seed=3)
    sep, bonf, mx = res["separate"], res["bonferroni"], res["max_score"]
    assert sep["mean"] < 1 - delta - 0.04  # about 0.83-0.84, the figure in the design notes
    assert mx["mean"] >= 1 - delta - Z * mx["se"]
    assert mx["mean"] <= 1 - delta + 1 / (n + 1) + Z * mx["se"]
    assert bonf["mean"] >= 1 - delta - Z * bonf["se"]
    assert bonf["mean"] > mx["mean"]  # Bonferroni is valid but more conservative


def test_max_score_radius_matches_batch():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(40, 2)) * [1.0, 3.0]
    scales = np.array([1.0, 3.0])
    t, k = max_score_radius(scores, scales, 0.1)
    assert k == 37
    assert t == pytest.approx(float(conformal_radii(np.max(scores / scales, axis=1)[None, :], 0.1)[0]))
    assert max_score_radius(scores[:5], scales, 0.1)[0] is None
    with pytest.raises(ValueError):
        max_score_radius(scores, np.array([1.0, 0.0]), 0.1)


def test_pac_rank_is_smallest_rank_with_binomial_tail_below_gamma():
    for n, delta, gamma in ((50, 0.1, 0.1), (100, 0.05, 0.05), (30, 0.2, 0.01), (200, "0.45", "0.1")):
        k = pac_rank(n, delta, gamma)
        p = 1 - float(Fraction(str(delta)))
        g = float(Fraction(str(gamma)))
        assert binomial_tail(n, p, k) <= g
        assert k == 1 or binomial_tail(n, p, k - 1) > g
    assert pac_rank(5, 0.1, 0.1) == 6  # nothing below k = n + 1: infinite
    # the float fallback for large n agrees with the exact sum
    assert _binomial_upper_tail_float(3000, 0.9, 0.05) == pac_rank(3000, 0.1, 0.05)


def test_pac_radius_is_training_conditional():
    """Marginal radius: below 1 - delta in about half the draws; PAC radius: in at most gamma of them."""
    res = pac_coverage(50, 0.1, 0.1, trials=4000, seed=5)
    assert res["below_marginal"] > 0.3
    se = math.sqrt(0.1 * 0.9 / 4000)
    assert res["below_pac"] <= 0.1 + 3 * se
    # and the radius function picks the larger (PAC) rank
    scores = np.random.default_rng(6).random(50)
    assert one_sided_radius(scores, 0.1, gamma=0.1)[1] == res["k_pac"] == 49


def test_per_sweep_aggregation_keeps_validity_where_frame_pooling_breaks_it():
    res = sweep_vs_frame_coverage(n_sweeps=40, frames=10, delta=0.1, trials=1500, seed=7)
    sweep, pooled = res["per_sweep"], res["frame_pool_any_frame"]
    assert sweep["mean"] >= 0.9 - Z * sweep["se"]
    assert sweep["mean"] <= 0.9 + 1 / 41 + Z * sweep["se"]
    assert pooled["mean"] < 0.8  # a live "any frame passes" rule on a frame-pooled radius: far below 0.9


def test_sweep_median_equals_aggregate_frames_rule():
    """The vectorised median used in the validity simulation is aggregate_frames' rule with quality 1."""
    rng = np.random.default_rng(8)
    frames = rng.normal(size=(10, 2))
    rule = AggregationRule(min_frames=3, window=15)
    np.testing.assert_allclose(aggregate_frames(frames, np.ones(10), rule), np.median(frames, axis=0))


@functools.cache
def _population(n_infants=600, seed=11):
    table = synthetic_table(n_infants, accuracy="paper", seed=seed)
    sweeps, _ = aggregate_table(table, AggregationRule())
    return sweeps


@pytest.mark.parametrize("rule", ["or", "and"])
def test_end_to_end_rule_guarantee_over_repeated_splits(rule):
    """Full pipeline on aggregated synthetic sweeps: affine split + joint calibration keeps
    P(false reassurance) <= delta and joint coverage >= 1 - delta; separate mode loses joint coverage."""
    sweeps = _population()
    names = list(sweeps.names)
    idx = [names.index("alpha_deg"), names.index("coverage_pct")]
    rng = np.random.default_rng(12)
    delta, trials, n_fit, n_cal = 0.2, 300, 30, 30
    cov_joint, cov_sep, fr = [], [], []
    for _ in range(trials):
        perm = rng.permutation(len(sweeps))
        fit, cal, test = perm[:n_fit], perm[n_fit : n_fit + n_cal], perm[n_fit + n_cal :]
        for mode, sink in (("joint", cov_joint), ("separate", cov_sep)):
            m, joint, _ = calibrate_units(
                names,
                sweeps.pred[fit],
                sweeps.true[fit],
                sweeps.pred[cal],
                sweeps.true[cal],
                delta=delta,
                rule=rule,
                mode=mode,
            )
            bounds = np.stack(
                [m[names[j]].a * sweeps.pred[test, j] + m[names[j]].b - m[names[j]].radius for j in idx], axis=1
            )
            truth = sweeps.true[test][:, idx]
            sink.append(np.mean(np.all(truth >= bounds, axis=1)))
            if mode == "joint":
                us = rule_holds_array(rule, {"alpha_deg": bounds[:, 0], "coverage_pct": bounds[:, 1]})
                abnormal = ~rule_holds_array(rule, {"alpha_deg": truth[:, 0], "coverage_pct": truth[:, 1]})
                fr.append(np.mean(us & abnormal))
                assert m["alpha_deg"].radius == pytest.approx(joint["t"] * joint["scales"]["alpha_deg"])
    cov_joint, cov_sep = np.array(cov_joint), np.array(cov_sep)
    se = cov_joint.std(ddof=1) / np.sqrt(trials)
    assert cov_joint.mean() >= 1 - delta - Z * se
    assert cov_joint.mean() <= 1 - delta + 1 / (n_cal + 1) + Z * se
    assert np.mean(fr) <= delta
    assert cov_sep.mean() < 1 - delta - 0.03


# --- rules ------------------------------------------------------------------------------------------------


def test_rule_holds_inclusive_and_fail_safe():
    t = {"alpha_deg": 60.0, "coverage_pct": 50.0}
    assert rule_holds("alpha", {"alpha_deg": 60.0}, t)  # >= : whole-degree ties reassure
    assert not rule_holds("alpha", {"alpha_deg": 59.999}, t)
    assert not rule_holds("alpha", {"alpha_deg": float("nan")}, t)
    assert not rule_holds("alpha", {"alpha_deg": -math.inf}, t)
    assert not rule_holds("alpha", {}, t)
    assert rule_holds("or", {"alpha_deg": float("nan"), "coverage_pct": 55.0}, t)
    assert not rule_holds("and", {"alpha_deg": 70.0, "coverage_pct": -math.inf}, t)
    assert rule_holds("and", {"alpha_deg": 70.0, "coverage_pct": 50.0}, t)
    assert not rule_holds("or", {"alpha_deg": 59.0, "coverage_pct": 49.0}, t)
    assert rule_holds("alpha", {"alpha_deg": 61.0}, {})  # defaults
    assert describe_rule("or", t) == "alpha_deg >= 60 or coverage_pct >= 50"
    with pytest.raises(CalibrationError):
        rule_holds("xor", {"alpha_deg": 70.0}, t)
    values = {"alpha_deg": np.array([60.0, 59.0, np.nan, 70.0]), "coverage_pct": np.array([40.0, 55.0, 60.0, 10.0])}
    np.testing.assert_array_equal(rule_holds_array("or", values), [True, True, True, True])
    np.testing.assert_array_equal(rule_holds_array("and", values), [False, False, False, False])


# --- fit_calibration / calibration.json -------------------------------------------------------------------


def _small_table(n_groups=6, frames=1, seed=0):
    rng = np.random.default_rng(seed)
    rows = n_groups * frames
    truth = np.repeat(rng.normal([62, 50, 55], [5, 5, 8], (n_groups, 3)), frames, axis=0)
    return PredictionTable(
        ids=np.array([f"r{i}" for i in range(rows)]),
        groups=np.repeat([f"g{i}" for i in range(n_groups)], frames),
        names=("alpha_deg", "beta_deg", "coverage_pct"),
        pred=truth + rng.normal(0, 2, (rows, 3)),
        true=truth,
        quality=np.ones(rows),
    )


def test_k_above_n_gives_null_radius_and_never_us_sufficient(tmp_path):
    cal = fit_calibration(_small_table(6), delta=0.1, rule="or", mode="joint", affine=False)
    for name, mc in cal.measurements.items():
        assert mc.radius is None and mc.n == 6 and mc.k == 7, name
    path = tmp_path / "calibration.json"
    cal.save(path)
    obj = json.loads(path.read_text())
    assert obj["measurements"]["alpha_deg"]["radius"] is None
    assert obj["measurements"]["alpha_deg"]["n"] == 6 and obj["measurements"]["alpha_deg"]["k"] == 7
    loaded = load_calibration(path)
    out = apply_calibration(loaded, {"alpha_deg": 90.0, "beta_deg": 30.0, "coverage_pct": 90.0})
    assert out["alpha_deg"][1] == -math.inf and out["beta_deg"][1] == math.inf
    for rule in ("alpha", "or", "and"):
        assert not rule_holds(rule, {n: b for n, (_, b) in out.items()}, loaded.thresholds)
    assert any("NEVER" in line for line in requirement_text(loaded))
    assert loaded.guarantee["infinite"] == ["alpha_deg", "beta_deg", "coverage_pct"]


def test_fit_calibration_modes_and_schema():
    table = synthetic_table(120, accuracy="good", seed=3)
    joint = fit_calibration(table, delta=0.1, rule="and", mode="joint", seed=1)
    sep = fit_calibration(table, delta=0.1, rule="and", mode="separate", seed=1)
    bonf = fit_calibration(table, delta=0.1, rule="and", mode="bonferroni", seed=1)
    # same split, same affine
    assert joint.measurements["alpha_deg"].a == sep.measurements["alpha_deg"].a
    n = sep.measurements["alpha_deg"].n
    assert sep.measurements["alpha_deg"].k == conformal_rank(n, 0.1)
    assert bonf.measurements["alpha_deg"].k == conformal_rank(n, Fraction(1, 20))
    assert bonf.measurements["alpha_deg"].delta == 0.05 and bonf.measurements["beta_deg"].delta == 0.1
    assert bonf.measurements["alpha_deg"].radius >= sep.measurements["alpha_deg"].radius
    j = joint.joint
    assert j["measurements"] == ["alpha_deg", "coverage_pct"] and j["k"] == conformal_rank(j["n"], 0.1)
    for name in j["measurements"]:
        assert joint.measurements[name].radius == pytest.approx(j["t"] * j["scales"][name])
    assert joint.measurements["beta_deg"].radius == sep.measurements["beta_deg"].radius  # outside the rule
    assert joint.data["split_by"] == "subject"
    assert joint.data["n_groups_affine"] + joint.data["n_groups_calibration"] == joint.data["n_groups_usable"]
    assert joint.aggregation["min_frames"] == 3  # multi-frame groups: AggregationRule defaults
    # round trip through the schema
    again = CalibrationFile.from_json(json.loads(json.dumps(joint.to_json())))
    assert again.to_json() == joint.to_json()


def test_no_affine_uses_every_group_and_identity():
    table = _small_table(40, frames=1, seed=2)
    cal = fit_calibration(table, delta=0.1, rule="and", affine=False)
    mc = cal.measurements["alpha_deg"]
    assert (mc.a, mc.b, mc.n) == (1.0, 0.0, 40)
    assert cal.aggregation["min_frames"] == 1  # one row per group
    assert cal.joint["scale_source"]["alpha_deg"].startswith("prior")  # no affine split: data-free scales
    alpha_only = fit_calibration(table, delta=0.1, rule="alpha", affine=False)
    scores = table.pred[:, 0] - table.true[:, 0]
    assert alpha_only.joint is None  # one measurement: joint == separate, exactly
    assert alpha_only.measurements["alpha_deg"].radius == one_sided_radius(scores, 0.1)[0]


def test_pac_and_abnormal_guarantee_options():
    table = synthetic_table(150, accuracy="good", seed=4)
    base = fit_calibration(table, delta=0.1, rule="alpha", seed=2)
    pac = fit_calibration(table, delta=0.1, rule="alpha", seed=2, pac_gamma=0.05)
    assert pac.measurements["alpha_deg"].k > base.measurements["alpha_deg"].k
    assert pac.measurements["alpha_deg"].radius >= base.measurements["alpha_deg"].radius
    assert pac.guarantee["pac_gamma"] == 0.05
    ab = fit_calibration(table, delta=0.1, rule="alpha", seed=2, guarantee="abnormal")
    assert ab.measurements["alpha_deg"].n < base.measurements["alpha_deg"].n
    assert ab.guarantee["conditional_on"] == "truly abnormal hips"


def test_affine_split_is_by_subject_and_disjoint():
    keys = np.repeat(np.array([f"inf{i}" for i in range(30)]), 4)
    a, b, c = group_split(keys, [0.4, 0.3, 0.3], seed=3)
    assert not np.any(a & b) and not np.any(a & c) and not np.any(b & c) and np.all(a | b | c)
    for part in (a, b, c):
        for key in np.unique(keys[part]):
            assert np.all(part[keys == key])  # all rows of an infant in one part


def test_fit_affine_recovers_line_and_degenerate_cases():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert fit_affine(x, 2 * x + 1) == pytest.approx((2.0, 1.0))
    assert fit_affine(np.full(4, 3.0), np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx((1.0, -0.5))
    assert fit_affine(x[:2], x[:2]) == (1.0, 0.0)


def test_fit_calibration_user_errors():
    table = _small_table(20)
    with pytest.raises(CalibrationError):
        fit_calibration(table, delta=1.5)
    with pytest.raises(CalibrationError):
        fit_calibration(table, rule="xor")
    with pytest.raises(CalibrationError):
        fit_calibration(table, mode="magic")
    only_alpha = PredictionTable(
        table.ids, table.groups, ("alpha_deg",), table.pred[:, :1], table.true[:, :1], table.quality
    )
    with pytest.raises(DataError):
        fit_calibration(only_alpha, rule="and")
    unlabelled = PredictionTable(
        table.ids, table.groups, table.names, table.pred, np.full_like(table.true, np.nan), table.quality
    )
    with pytest.raises(DataError, match="no true values"):
        fit_calibration(unlabelled, rule="alpha")
    with pytest.raises(CalibrationError):  # every group fails the quality gate
        fit_calibration(
            PredictionTable(table.ids, table.groups, table.names, table.pred, table.true, np.zeros(len(table))),
            delta=0.1,
        )


def test_apply_calibration_upper_side_and_requirements():
    table = synthetic_table(100, accuracy="good", seed=5)
    cal = fit_calibration(table, delta=0.1, rule="and", seed=0)
    out = apply_calibration(cal, {"alpha_deg": 70.0, "beta_deg": 50.0, "coverage_pct": float("nan")})
    b = cal.measurements["beta_deg"]
    assert out["beta_deg"] == pytest.approx((b.a * 50 + b.b, b.a * 50 + b.b + b.radius))
    assert out["coverage_pct"][1] == -math.inf
    lines = requirement_text(cal)
    need = 60 + cal.measurements["alpha_deg"].radius
    assert any(f"needs a corrected alpha_deg >= {need:.1f}" in line for line in lines)


def test_experimental_decision_calibration_controls_the_miss_rate():
    """The report's decision calibration (miss score per sweep) keeps P(miss | abnormal) <= delta over splits."""
    from sonogate.calibration.report import _decision_radii

    sweeps = _population()
    names = ["alpha_deg", "coverage_pct"]
    idx = [list(sweeps.names).index(n) for n in names]
    pred, true = sweeps.pred[:, idx], sweeps.true[:, idx]
    thresholds = {"alpha_deg": 60.0, "coverage_pct": 50.0}
    rng = np.random.default_rng(13)
    delta, trials = 0.1, 300
    miss_rate = []
    for _ in range(trials):
        perm = rng.permutation(len(sweeps))
        fit, cal, test = perm[:40], perm[40:160], perm[160:]
        radii, _ = _decision_radii("or", names, pred[fit], true[fit], pred[cal], true[cal], delta, thresholds, True)
        bounds = {n: radii[n][0] * pred[test, j] + radii[n][1] - radii[n][2] for j, n in enumerate(names)}
        us = rule_holds_array("or", bounds, thresholds)
        abnormal = ~rule_holds_array("or", {n: true[test, j] for j, n in enumerate(names)}, thresholds)
        miss_rate.append(np.sum(us & abnormal) / max(1, np.sum(abnormal)))
    miss_rate = np.array(miss_rate)
    assert miss_rate.mean() <= delta + Z * miss_rate.std(ddof=1) / np.sqrt(trials)


def test_calibration_package_is_torch_and_scipy_free():
    import subprocess
    import sys

    code = (
        "import sys, sonogate.calibration, sonogate.calibration.cli, sonogate.calibration.report, "
        "sonogate.calibration.validity, sonogate.calibration.synthetic\n"
        "bad = [m for m in ('torch', 'scipy', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
