"""The recommendation: sweep-level aggregation, calibrated bounds, the rule, and a state machine with hysteresis.

Per frame, input: the frame's raw measurements, its standard-plane probability, whether it is usable
(not out of distribution) and its capture time; or a fault. Output: a ``Decision`` with the displayed
recommendation, the aggregated measurements with their bounds and the reason.

Safety properties (tested):
- "us_sufficient" only when the calibrated bounds satisfy the rule on at least ``min_frames`` recent
  standard-plane frames, confirmed on ``confirm_frames`` consecutive frames;
- any fault (no frame, model error, non-finite output, missing or stale calibration) shows
  "no_recommendation" at once and clears the frame buffer;
- leaving "us_sufficient" is immediate; only entering it needs confirmation;
- on a source the session judged out of the model's domain (``out_of_domain``: a scanner the bundle was not
  calibrated for) nothing is aggregated and "insufficient_image" is shown at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from sonogate.calibration.aggregate import AggregationRule, aggregate_frames
from sonogate.calibration.calfile import CalibrationFile
from sonogate.calibration.rules import rule_holds
from sonogate.measurements import BY_NAME, RULES, graf_type


class Recommendation(str, Enum):
    US_SUFFICIENT = "us_sufficient"
    XRAY_RECOMMENDED = "xray_recommended"
    INSUFFICIENT_IMAGE = "insufficient_image"
    NO_RECOMMENDATION = "no_recommendation"


DISPLAY_TEXT = {
    Recommendation.US_SUFFICIENT: "ULTRASOUND SUFFICIENT",
    Recommendation.XRAY_RECOMMENDED: "X-RAY RECOMMENDED",
    Recommendation.INSUFFICIENT_IMAGE: "KEEP SCANNING - image not usable",
    Recommendation.NO_RECOMMENDATION: "NO RECOMMENDATION",
}


@dataclass
class MeasuredValue:
    value: float  # affine-corrected aggregate
    lower_bound: float | None  # None where this measurement has no lower bound (upper-side measurements)
    upper_bound: float | None

    def to_json(self) -> dict:
        return {"value": _finite_or_none(self.value), "lower_bound": _finite_or_none(self.lower_bound),
                "upper_bound": _finite_or_none(self.upper_bound)}


def _finite_or_none(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), 3)


@dataclass
class Decision:
    recommendation: Recommendation
    candidate: Recommendation
    reason: str
    measurements: dict[str, MeasuredValue] | None
    accepted_frames: int
    graf_type: str | None = None
    hip: str = "R"
    changed: bool = False


@dataclass
class RecommenderConfig:
    confirm_frames: int = 5  # consecutive agreeing frames before the displayed state changes (except safety moves)
    max_age_s: float = 3.0  # accepted frames older than this no longer count (the probe has moved on)


@dataclass
class _FrameBuffer:
    capacity: int
    n_measurements: int
    predictions: np.ndarray = field(init=False)
    quality: np.ndarray = field(init=False)
    times: np.ndarray = field(init=False)
    count: int = 0

    def __post_init__(self):
        self.predictions = np.empty((self.capacity, self.n_measurements), dtype=np.float64)
        self.quality = np.empty(self.capacity, dtype=np.float64)
        self.times = np.empty(self.capacity, dtype=np.float64)

    def clear(self) -> None:
        self.count = 0

    def push(self, prediction: np.ndarray, quality: float, t: float) -> None:
        if self.count == self.capacity:  # keep time order: shift left by one (capacity is small)
            self.predictions[:-1] = self.predictions[1:]
            self.quality[:-1] = self.quality[1:]
            self.times[:-1] = self.times[1:]
            self.count -= 1
        self.predictions[self.count] = prediction
        self.quality[self.count] = quality
        self.times[self.count] = t
        self.count += 1

    def expire(self, now: float, max_age_s: float) -> None:
        keep = self.times[: self.count] >= now - max_age_s
        if keep.all():
            return
        n = int(keep.sum())
        self.predictions[:n] = self.predictions[: self.count][keep]
        self.quality[:n] = self.quality[: self.count][keep]
        self.times[:n] = self.times[: self.count][keep]
        self.count = n


class Recommender:
    """Turns per-frame results into a stable, justified recommendation for one hip at a time.

    ``calibration=None`` (missing or stale calibration) keeps measuring but never recommends.
    """

    def __init__(self, measurement_names: tuple[str, ...], calibration: CalibrationFile | None,
                 config: RecommenderConfig | None = None):
        self.names = measurement_names
        self.calibration = calibration
        self.config = config or RecommenderConfig()
        self.aggregation = AggregationRule.from_json(calibration.aggregation if calibration else None)
        self._buffer = _FrameBuffer(self.aggregation.window, len(measurement_names))
        self.state = Recommendation.INSUFFICIENT_IMAGE if calibration else Recommendation.NO_RECOMMENDATION
        self._pending: Recommendation | None = None
        self._pending_count = 0
        self.hip = "R"
        if calibration is not None:
            missing = [m for m in RULES[calibration.rule][0] if m not in calibration.measurements]
            if missing or any(m not in measurement_names for m in RULES[calibration.rule][0]):
                raise ValueError(f"calibration rule '{calibration.rule}' needs {RULES[calibration.rule][0]}")

    def reset(self, next_hip: bool = False) -> None:
        """Forget the frames of the current hip (the sonographer moves on)."""
        self._buffer.clear()
        self._pending, self._pending_count = None, 0
        self.state = Recommendation.INSUFFICIENT_IMAGE if self.calibration else Recommendation.NO_RECOMMENDATION
        if next_hip:
            self.hip = "L" if self.hip == "R" else "R"

    def fault(self, reason: str) -> Decision:
        """Source lost, model error, unreadable frame: no recommendation at once."""
        self._buffer.clear()
        self._pending, self._pending_count = None, 0
        changed = self.state != Recommendation.NO_RECOMMENDATION
        self.state = Recommendation.NO_RECOMMENDATION
        return Decision(self.state, Recommendation.NO_RECOMMENDATION, reason, None, 0, None, self.hip, changed)

    def refuse(self, reason: str, t: float) -> Decision:
        """A frame the image gates refused (flat, sector, colour): not measured, and while refused frames
        arrive nothing is reassuring. The buffer keeps its recent accepted frames (they still age out)."""
        self._buffer.expire(t, self.config.max_age_s)
        if self.calibration is None:
            return self._settle(Recommendation.NO_RECOMMENDATION, "no valid calibration for this bundle", None,
                                self._buffer.count)
        return self._settle(Recommendation.INSUFFICIENT_IMAGE, f"image refused: {reason}", None, self._buffer.count)

    def out_of_domain(self, reason: str) -> Decision:
        """The session judged the whole image source out of the model's domain (a scanner it was not
        calibrated for: ``Session.scanner_status``). No frame of that source is trusted, even one that passes the
        per-frame checks: the buffer is cleared and "insufficient_image" is shown at once, with no measurements.
        Without a calibration the state stays "no_recommendation", as it would anyway."""
        self._buffer.clear()
        self._pending, self._pending_count = None, 0
        previous = self.state
        self.state = Recommendation.INSUFFICIENT_IMAGE if self.calibration else Recommendation.NO_RECOMMENDATION
        if self.calibration is None:
            reason = "no valid calibration for this bundle"
        return Decision(self.state, self.state, reason, None, 0, None, self.hip, self.state != previous)

    def update(self, measurements: np.ndarray, plane_probability: float, usable: bool, t: float) -> Decision:
        """One processed frame. ``usable=False`` (out of distribution) keeps the frame out of the aggregate."""
        if not (np.all(np.isfinite(measurements)) and math.isfinite(plane_probability)):
            return self.fault("model output not finite")
        quality = plane_probability if usable else 0.0
        if quality >= self.aggregation.quality_threshold:
            self._buffer.push(measurements, quality, t)
        self._buffer.expire(t, self.config.max_age_s)
        n = self._buffer.count
        aggregated = aggregate_frames(self._buffer.predictions[:n], self._buffer.quality[:n], self.aggregation)

        if self.calibration is None:
            values = None if aggregated is None else {
                name: MeasuredValue(float(v), None, None) for name, v in zip(self.names, aggregated)}
            return self._settle(Recommendation.NO_RECOMMENDATION, "no valid calibration for this bundle", values, n)
        if aggregated is None:
            reason = "out-of-distribution image" if not usable else (
                f"{n} of {self.aggregation.min_frames} standard-plane frames")
            return self._settle(Recommendation.INSUFFICIENT_IMAGE, reason, None, n)

        values = self._bounded(aggregated)
        rule_names = RULES[self.calibration.rule][0]
        bounds = {name: self._safe_side_bound(name, values[name]) for name in rule_names}
        if rule_holds(self.calibration.rule, bounds, self.calibration.thresholds):
            candidate = Recommendation.US_SUFFICIENT
            reason = ", ".join(f"{name} bound {bounds[name]:.1f} >= {self.calibration.thresholds[name]:g}"
                               for name in rule_names if bounds[name] >= self.calibration.thresholds[name])
        else:
            candidate = Recommendation.XRAY_RECOMMENDED
            failing = [name for name in rule_names if not bounds[name] >= self.calibration.thresholds[name]]
            reason = ", ".join(
                f"{name} bound {'-inf' if not math.isfinite(bounds[name]) else format(bounds[name], '.1f')}"
                f" < {self.calibration.thresholds[name]:g}" for name in failing)
        return self._settle(candidate, reason, values, n)

    def _bounded(self, aggregated: np.ndarray) -> dict[str, MeasuredValue]:
        values: dict[str, MeasuredValue] = {}
        for name, prediction in zip(self.names, aggregated):
            cal = self.calibration.measurements.get(name) if self.calibration else None
            if cal is None:
                values[name] = MeasuredValue(float(prediction), None, None)
                continue
            bound = cal.bound(float(prediction))
            corrected = cal.corrected(float(prediction))
            if cal.side == "lower":
                values[name] = MeasuredValue(corrected, bound, None)
            else:
                values[name] = MeasuredValue(corrected, None, bound)
        return values

    @staticmethod
    def _safe_side_bound(name: str, value: MeasuredValue) -> float:
        side = BY_NAME[name].bound_side if name in BY_NAME else "lower"
        bound = value.lower_bound if side == "lower" else value.upper_bound
        return -math.inf if bound is None else bound

    def _settle(self, candidate: Recommendation, reason: str, values, accepted: int) -> Decision:
        previous = self.state
        if candidate == self.state:
            self._pending, self._pending_count = None, 0
        elif previous == Recommendation.US_SUFFICIENT or candidate == Recommendation.NO_RECOMMENDATION:
            # leaving reassurance, or a fault: never wait
            self.state = candidate
            self._pending, self._pending_count = None, 0
        else:
            if candidate == self._pending:
                self._pending_count += 1
            else:
                self._pending, self._pending_count = candidate, 1
            if self._pending_count >= self.config.confirm_frames:
                self.state = candidate
                self._pending, self._pending_count = None, 0
        shown_values = values
        graf = None
        if values and "alpha_deg" in values:
            beta = values.get("beta_deg")
            graf = graf_type(values["alpha_deg"].value, beta.value if beta else None)
        return Decision(self.state, candidate, reason, shown_values, accepted, graf, self.hip, self.state != previous)
