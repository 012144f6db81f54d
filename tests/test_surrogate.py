"""US -> X-ray surrogate (sonogate.calibration.surrogate) and the paired phantom (sonogate.phantom.paired)."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from sonogate.calibration.conformal import conformal_rank, pac_rank
from sonogate.calibration.surrogate import (
    AlphaBaselineAI,
    SurrogateAI,
    SurrogateError,
    grouped_folds,
    load_surrogate,
)
from sonogate.errors import SonogateError
from sonogate.phantom.paired import DEFAULT_AI_MODEL, AiModel, iter_paired_patients, paired_hips

pytestmark = pytest.mark.torchfree

HASH_A = "a" * 64
HASH_B = "b" * 64


def _linear_data(rng, n, w, b=30.0, noise=0.5):
    """Features with uneven scales and offsets, target linear in the raw features plus normal noise."""
    d = w.size
    scales = np.linspace(0.2, 20.0, d)
    offsets = np.linspace(-50.0, 50.0, d)
    x = rng.normal(size=(n, d)) * scales + offsets
    return x, x @ w + b + rng.normal(0.0, noise, n)


def test_ridge_recovers_a_linear_relation():
    rng = np.random.default_rng(0)
    d = 12
    w = rng.normal(0.0, 0.3, d) / np.linspace(0.2, 20.0, d)  # similar influence per feature
    x, y = _linear_data(rng, 400, w)
    groups = np.repeat(np.arange(200), 2)
    model = SurrogateAI().fit(x, y, groups=groups)
    assert model.cv_ is not None and model.cv_["grouped"]
    assert model.alpha_ridge_ <= 10.0  # little shrinkage needed at n = 400, d = 12
    raw_coef = model.coef_ / model.feature_scale_
    np.testing.assert_allclose(raw_coef, w, atol=0.1 * np.abs(w).max())
    x_new, y_new = _linear_data(rng, 2000, w)
    mae = np.mean(np.abs(model.predict(x_new) - y_new))
    assert mae < 0.5  # noise alone: 0.5 * sqrt(2 / pi) = 0.40

    # ridge strength 0 is ordinary least squares
    ols = SurrogateAI(alpha_ridge=0.0).fit(x, y)
    design = np.column_stack([x, np.ones(len(x))])
    expected = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(ols.predict(x), expected, atol=1e-6)


def test_alpha_baseline_recovers_a_line():
    rng = np.random.default_rng(1)
    alpha = rng.uniform(35.0, 76.0, 500)
    ai = 65.0 - 0.67 * alpha + rng.normal(0.0, 1.0, 500)
    model = AlphaBaselineAI().fit(alpha, ai)
    assert model.a_ == pytest.approx(-0.67, abs=0.03)
    assert model.b_ == pytest.approx(65.0, abs=1.5)


def test_grouped_folds_keep_groups_whole():
    groups = np.repeat([f"p{i}" for i in range(23)], 2)
    folds = grouped_folds(groups, groups.size, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(groups.size))
    for fold in folds:
        held = set(groups[fold])
        rest = set(groups[np.setdiff1d(np.arange(groups.size), fold)])
        assert not held & rest


def test_radius_is_the_exact_conformal_rank():
    rng = np.random.default_rng(2)
    alpha = rng.uniform(40, 70, 99)
    ai = 65 - 0.67 * alpha + rng.normal(0, 3, 99)
    model = AlphaBaselineAI().fit(alpha[:40], ai[:40]).calibrate(alpha[40:], ai[40:], "0.45")
    scores = np.sort(ai[40:] - model.predict(alpha[40:]))
    k = conformal_rank(59, "0.45")
    assert model.k_ == k and model.n_ == 59
    assert model.radius_ == scores[k - 1]
    # too few calibration units for delta 0.1: infinite bound, never "normal"
    small = AlphaBaselineAI().fit(alpha[:40], ai[:40]).calibrate(alpha[40:45], ai[40:45], 0.1)
    assert small.radius_ is None
    assert np.all(np.isinf(small.predict_bound(alpha[:3])[1]))


def test_upper_bound_covers_over_repeated_splits():
    """Each trial draws fresh fit / calibration / test data; one test hip and one test patient (2 hips) per trial,
    so the covered counts are Binomial(trials, p) with p >= 1 - delta. Tolerances are exact binomial tails."""
    rng = np.random.default_rng(11)
    trials, n_fit, n_cal, delta = 1500, 60, 30, Fraction(1, 10)
    d = 6
    w = rng.normal(0.0, 1.0, d)
    covered_hip = covered_patient = 0
    for _ in range(trials):
        x, y = _linear_data(rng, n_fit + n_cal + 3, w / np.linspace(0.2, 20.0, d), noise=2.0)
        # heavy-tailed extra noise so the bound cannot lean on normality
        y = y + rng.standard_t(3, y.size)
        model = SurrogateAI(alpha_ridge=1.0).fit(x[:n_fit], y[:n_fit])
        cal_x, cal_y = x[n_fit : n_fit + n_cal], y[n_fit : n_fit + n_cal]
        model.calibrate(cal_x, cal_y, delta)
        assert model.n_ == n_cal and model.unit_ == "row"
        _, upper = model.predict_bound(x[-3:])
        covered_hip += bool(y[-3] <= upper[0])
        model.calibrate(cal_x, cal_y, delta, groups=np.repeat(np.arange(n_cal // 2), 2))
        assert model.n_ == n_cal // 2
        _, upper = model.predict_bound(x[-2:])
        covered_patient += bool(np.all(y[-2:] <= upper))
    gamma = Fraction(1, 1000)
    # lower edge: covered ~ Binomial(trials, >= 1 - delta); P(covered <= c) <= gamma
    misses_limit = pac_rank(trials, 1 - delta, gamma)  # smallest m with P(Bin(trials, delta) >= m) <= gamma
    assert trials - covered_hip < misses_limit, covered_hip / trials
    assert trials - covered_patient < misses_limit, covered_patient / trials
    # upper edge (per hip, continuous scores): coverage <= 1 - delta + 1/(n + 1)
    p_max = 1 - delta + Fraction(1, n_cal + 1)
    hits_limit = pac_rank(trials, 1 - p_max, gamma)  # smallest h with P(Bin(trials, p_max) >= h) <= gamma
    assert covered_hip < hits_limit, covered_hip / trials


def test_json_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    w = rng.normal(0.0, 0.1, 8)
    x, y = _linear_data(rng, 120, w)
    groups = np.repeat(np.arange(60), 2)
    ridge = SurrogateAI(bundle_sha256=HASH_A).fit(x[:80], y[:80], groups[:80])
    ridge.calibrate(x[80:], y[80:], 0.1, groups=groups[80:])
    ridge.meta = {"note": "synthetic"}
    path = ridge.save(tmp_path / "ridge.json")
    loaded = SurrogateAI.load(path, HASH_A)
    for a, b in zip(ridge.predict_bound(x), loaded.predict_bound(x), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (loaded.radius_, loaded.k_, loaded.n_, loaded.unit_) == (ridge.radius_, ridge.k_, ridge.n_, ridge.unit_)
    assert loaded.alpha_ridge_ == ridge.alpha_ridge_ and loaded.meta == {"note": "synthetic"}
    assert json.loads(path.read_text())["calibration"]["delta_exact"] == "1/10"
    assert isinstance(load_surrogate(path, HASH_A), SurrogateAI)

    base = AlphaBaselineAI(bundle_sha256=HASH_A).fit(x[:80, 0], y[:80]).calibrate(x[80:85, 0], y[80:85], 0.1)
    assert base.radius_ is None  # 5 units at delta 0.1: infinite, stored as null
    loaded_base = load_surrogate(base.save(tmp_path / "base.json"), HASH_A)
    assert isinstance(loaded_base, AlphaBaselineAI)
    assert np.all(np.isinf(loaded_base.predict_bound(x[:4, 0])[1]))
    with pytest.raises(SurrogateError):
        SurrogateAI.load(tmp_path / "base.json", HASH_A)  # wrong kind


def test_refuses_another_bundle_and_bad_files(tmp_path):
    rng = np.random.default_rng(5)
    x, y = _linear_data(rng, 60, rng.normal(0.0, 0.1, 4))
    model = SurrogateAI(alpha_ridge=1.0, bundle_sha256=HASH_A).fit(x[:40], y[:40]).calibrate(x[40:], y[40:], 0.1)
    path = model.save(tmp_path / "s.json")
    with pytest.raises(SonogateError) as info:
        SurrogateAI.load(path, HASH_B)
    assert isinstance(info.value, SurrogateError)
    message = str(info.value)
    assert "\n" not in message and "bundle" in message and HASH_A[:12] in message

    with pytest.raises(SurrogateError):
        SurrogateAI(alpha_ridge=1.0).fit(x, y).save(tmp_path / "unbound.json")  # no bundle hash
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SurrogateError):
        load_surrogate(tmp_path / "bad.json", HASH_A)
    obj = json.loads(path.read_text())
    obj["model"]["coef"] = obj["model"]["coef"][:-1]
    (tmp_path / "short.json").write_text(json.dumps(obj))
    with pytest.raises(SurrogateError):
        load_surrogate(tmp_path / "short.json", HASH_A)
    with pytest.raises(SurrogateError):
        load_surrogate(tmp_path / "missing.json", HASH_A)


def test_paired_phantom_is_deterministic():
    first = paired_hips(2, seed=3, frames_per_hip=1, size=128)
    second = paired_hips(2, seed=3, frames_per_hip=1, size=128)
    assert [h.truth() for h in first] == [h.truth() for h in second]
    for a, b in zip(first, second, strict=True):
        assert len(a.frames) == 1 and a.frames[0].standard_plane == 1
        np.testing.assert_array_equal(a.frames[0].image, b.frames[0].image)
    # the truth does not depend on how many frames are rendered, nor on how many patients are drawn
    truth_only = paired_hips(3, seed=3, frames_per_hip=0)
    assert [h.truth() for h in truth_only[:4]] == [h.truth() for h in first]
    assert all(not h.frames for h in truth_only)
    assert [h.truth() for h in paired_hips(2, seed=4, frames_per_hip=0)] != [h.truth() for h in first]
    # two hips per patient, one device per patient
    assert [h.side for h in first] == ["R", "L", "R", "L"]
    assert first[0].patient_id == first[1].patient_id != first[2].patient_id
    assert first[0].device == first[1].device and first[0].device in ("A", "B", "C")


def test_paired_ai_follows_the_documented_relation():
    hips = [h for p in iter_paired_patients(1500, seed=9, frames_per_hip=0) for h in p]
    alpha = np.array([h.alpha_deg for h in hips])
    ai = np.array([h.ai_deg for h in hips])
    ai_mean = np.array([h.ai_mean_deg for h in hips])
    np.testing.assert_allclose(ai_mean, 65.0 - 0.67 * alpha)
    assert np.all((ai >= 5.0) & (ai <= 50.0))
    resid = ai - ai_mean  # the clip at [5, 50] is almost never reached (AI 14-42 + noise)
    n = resid.size
    assert abs(resid.mean()) < 4 * 3.5 / np.sqrt(n)
    assert resid.std() == pytest.approx(3.5, rel=0.06)
    slope, intercept = np.polyfit(alpha, ai, 1)
    assert slope == pytest.approx(-0.67, abs=0.03)
    assert intercept == pytest.approx(65.0, abs=2.0)
    assert np.corrcoef(alpha, ai)[0, 1] < -0.8  # stronger than the literature's r about -0.6 (documented)
    assert DEFAULT_AI_MODEL.oracle_mae() == pytest.approx(3.5 * np.sqrt(2 / np.pi))
    with pytest.raises(SonogateError):
        AiModel(noise_sd=-1.0)
    # a noise-free model is exactly the line (clipped)
    exact = AiModel(noise_sd=0.0)
    assert exact.sample(80.0, np.random.default_rng(0)) == pytest.approx(max(5.0, 65.0 - 0.67 * 80.0))
