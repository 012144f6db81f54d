"""Ordinal calibration.json (sonogate.calibration.ordinal_calfile) and the radiograph input checks
(sonogate.runtime.radiograph_checks): numpy / OpenCV only, no torch."""

from __future__ import annotations

import numpy as np
import pytest

from sonogate.calibration.class_sets import ConformalClassSets, OrdinalIntervalConformal, set_coverage
from sonogate.calibration.ordinal_calfile import (
    load_ordinal_calibration,
    ordinal_calibration,
    save_ordinal_calibration,
)
from sonogate.errors import CalibrationError, DataError
from sonogate.runtime.radiograph_checks import check_gray_radiograph, fit_view_classifier


def _classifier(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic ordinal classifier: true index y, probabilities peaked near y with noise."""
    y = rng.integers(0, k, n)
    logits = -0.8 * (np.arange(k)[None, :] - (y + rng.normal(0, 0.8, n))[:, None]) ** 2
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), y


def test_calibration_file_round_trip_reproduces_sets_and_interval(tmp_path):
    rng = np.random.default_rng(0)
    p, y = _classifier(400, 5, rng)
    sets = ConformalClassSets(0.1, "lac", contiguous=True).fit(p[:200], y[:200])
    totals = np.clip(y[:200] + rng.integers(-1, 2, 200), 0, 4)
    interval = OrdinalIntervalConformal(0.1, score="absolute", value_range=(0, 4)).fit(y[:200].astype(float), totals)
    raw = ordinal_calibration("knee_kl", "abc", range(5), sets, unit="image", items_per_unit=1, guarantee="g",
                              data={}, interval=interval)
    save_ordinal_calibration(tmp_path / "calibration.json", raw)
    loaded = load_ordinal_calibration(tmp_path / "calibration.json", bundle_hash="abc")
    np.testing.assert_array_equal(loaded.sets(p[200:]), sets.predict(p[200:]))
    lo1, hi1 = loaded.interval(y[200:].astype(float))
    lo2, hi2 = interval.predict(y[200:].astype(float))
    np.testing.assert_array_equal(lo1, lo2)
    np.testing.assert_array_equal(hi1, hi2)
    assert loaded.delta == 0.1 and loaded.grades == [0, 1, 2, 3, 4]
    # held-out coverage of the round-tripped sets is near the target, not trivially 1
    coverage = set_coverage(loaded.sets(p[200:]), y[200:])
    assert 0.84 <= coverage <= 0.97
    assert loaded.sets(p[200:]).sum(1).mean() < 4.0


def test_calibration_file_refuses_stale_or_foreign(tmp_path):
    rng = np.random.default_rng(1)
    p, y = _classifier(50, 3, rng)
    sets = ConformalClassSets(0.1, "lac").fit(p, y)
    save_ordinal_calibration(tmp_path / "c.json", ordinal_calibration("rust", "hash-a", (1, 2, 3), sets, "case", 4,
                                                                      "g", {}))
    with pytest.raises(CalibrationError, match="another bundle"):
        load_ordinal_calibration(tmp_path / "c.json", bundle_hash="hash-b")
    (tmp_path / "other.json").write_text('{"format_version": 1}')
    with pytest.raises(CalibrationError, match="not an ordinal calibration"):
        load_ordinal_calibration(tmp_path / "other.json")
    with pytest.raises(CalibrationError, match="no interval"):
        load_ordinal_calibration(tmp_path / "c.json").interval([5.0])


def test_gray_radiograph_check_refuses_colour_blank_and_tiny():
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 255, (128, 128), dtype=np.uint8)
    assert check_gray_radiograph(np.dstack([gray] * 3)).shape == (128, 128)  # grey stored as BGR passes
    photo = np.zeros((100, 100, 3), np.uint8)
    photo[..., 2] = 200
    photo[..., 1] = rng.integers(0, 255, (100, 100))
    with pytest.raises(DataError, match="colour"):
        check_gray_radiograph(photo, "x.jpg")
    with pytest.raises(DataError, match="blank"):
        check_gray_radiograph(np.full((64, 64), 77, np.uint8))
    with pytest.raises(DataError, match="usable"):
        check_gray_radiograph(np.zeros((10, 10), np.uint8))


def test_view_classifier_separates_two_feature_clouds():
    rng = np.random.default_rng(3)
    first = rng.normal(0.0, 1.0, (200, 16))
    second = rng.normal(0.0, 1.0, (200, 16))
    second[:, 3] += 3.0
    fit = fit_view_classifier(first, second)
    assert fit["train_accuracy"] > 0.9
    test_second = rng.normal(0.0, 1.0, (100, 16))
    test_second[:, 3] += 3.0
    z = test_second @ fit["view_weights"] + float(fit["view_bias"])
    assert np.mean(z > 0) > 0.85
