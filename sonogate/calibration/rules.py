"""Rule families for "ultrasound sufficient": alpha-only, alpha OR coverage, alpha AND coverage.

A rule is evaluated on *bounds* (the policy) or on *true values* (to know whether a hip is truly abnormal).
A measurement clears its threshold when its value is on the safe side, inclusive: ``value >= T`` for lower-bounded
measurements (alpha, coverage), ``value <= T`` for upper-bounded ones (beta, AI). Any non-finite value (NaN, or an
infinite bound from an undersized calibration) never clears: the rule fails safe towards "X-ray".

All rules are monotone (raising a lower-bounded value never turns "holds" into "fails"), which is what makes
valid bounds imply "no false reassurance": if every bound holds and the rule holds on the bounds, it holds on
the truths.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sonogate.errors import CalibrationError
from sonogate.measurements import BY_NAME, DEFAULT_THRESHOLDS, RULES


def rule_measurements(rule: str) -> tuple[str, ...]:
    """Measurement names the rule looks at (CalibrationError for an unknown rule)."""
    try:
        return RULES[rule][0]
    except KeyError:
        raise CalibrationError(f"unknown rule {rule!r} (choose from {', '.join(RULES)})") from None


def _side(name: str) -> str:
    spec = BY_NAME.get(name)
    return spec.bound_side if spec is not None else "lower"


def _threshold(name: str, thresholds: Mapping[str, float] | None) -> float:
    if thresholds is not None and name in thresholds:
        return float(thresholds[name])
    if name in DEFAULT_THRESHOLDS:
        return float(DEFAULT_THRESHOLDS[name])
    raise CalibrationError(f"no threshold for {name}")


def clears(name: str, value, threshold: float):
    """Whether ``value`` (scalar or array) is on the safe side of ``threshold`` for measurement ``name``."""
    value = np.asarray(value, dtype=np.float64)
    finite = np.isfinite(value)
    with np.errstate(invalid="ignore"):
        ok = value >= threshold if _side(name) == "lower" else value <= threshold
    return ok & finite


def rule_holds_array(
    rule: str, values: Mapping[str, np.ndarray], thresholds: Mapping[str, float] | None = None
) -> np.ndarray:
    """Vectorised ``rule_holds``: values maps each rule measurement to an array (same shape). Output: bool array."""
    names, combine = RULES[rule] if rule in RULES else (rule_measurements(rule), "all")
    parts = []
    for name in names:
        if name not in values:
            raise CalibrationError(f"rule {rule!r} needs {name}")
        parts.append(clears(name, values[name], _threshold(name, thresholds)))
    stacked = np.stack(np.broadcast_arrays(*parts))
    return np.all(stacked, axis=0) if combine == "all" else np.any(stacked, axis=0)


def rule_holds(rule: str, values: Mapping[str, float], thresholds: Mapping[str, float] | None = None) -> bool:
    """Whether ``rule`` holds on ``values`` (bounds for the policy, truths for "truly normal").

    Inputs: rule "alpha" | "or" | "and"; values name -> float (a missing rule measurement counts as not
    clearing); thresholds name -> float (missing names fall back to ``DEFAULT_THRESHOLDS``). NaN and infinite
    values never clear. Output: bool.
    """
    names, combine = RULES[rule] if rule in RULES else (rule_measurements(rule), "all")
    results = []
    for name in names:
        value = values.get(name, float("nan"))
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = float("nan")
        results.append(bool(clears(name, value, _threshold(name, thresholds))))
    return all(results) if combine == "all" else any(results)


def describe_rule(rule: str, thresholds: Mapping[str, float] | None = None) -> str:
    """Human text, e.g. ``alpha_deg >= 60 and coverage_pct >= 50``."""
    names, combine = RULES[rule] if rule in RULES else (rule_measurements(rule), "all")
    parts = [f"{n} {'>=' if _side(n) == 'lower' else '<='} {_threshold(n, thresholds):g}" for n in names]
    return (" and " if combine == "all" else " or ").join(parts)
