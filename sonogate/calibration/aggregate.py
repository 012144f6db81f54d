"""Frame aggregation shared by calibration and the live runtime.

Frames of one cine are not exchangeable, so the conformal guarantee is made per sweep: the frames of a sweep
are reduced to one prediction by a fixed rule, and calibration scores are computed on those. The runtime must
reduce its recent frames by exactly the same rule, which is why both import this function.

Rule ``quality_gated_median``: keep the frames whose standard-plane probability is >= ``quality_threshold``,
take the most recent ``window`` of them, and return the per-measurement median if at least ``min_frames``
remain, else None ("image not usable yet").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AggregationRule:
    quality_threshold: float = 0.5
    min_frames: int = 3
    window: int = 15
    method: str = "quality_gated_median"
    unit: str = "sweep"

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "unit": self.unit,
            "quality_threshold": self.quality_threshold,
            "min_frames": self.min_frames,
            "window": self.window,
        }

    @classmethod
    def from_json(cls, obj: dict | None) -> AggregationRule:
        obj = obj or {}
        method = obj.get("method", "quality_gated_median")
        if method != "quality_gated_median":
            raise ValueError(f"unknown aggregation method {method!r}")
        return cls(
            quality_threshold=float(obj.get("quality_threshold", 0.5)),
            min_frames=int(obj.get("min_frames", 3)),
            window=int(obj.get("window", 15)),
            unit=str(obj.get("unit", "sweep")),
        )


def aggregate_frames(predictions: np.ndarray, quality: np.ndarray, rule: AggregationRule) -> np.ndarray | None:
    """Reduce a sweep's frames to one prediction vector.

    Inputs: ``predictions`` (n_frames, n_measurements) in time order, ``quality`` (n_frames,) standard-plane
    probabilities. Output: (n_measurements,) medians, or None when fewer than ``min_frames`` frames pass.
    Frames with any non-finite prediction never count.
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    quality = np.asarray(quality, dtype=np.float64)
    keep = (quality >= rule.quality_threshold) & np.all(np.isfinite(predictions), axis=1)
    accepted = predictions[keep]
    if len(accepted) > rule.window:
        accepted = accepted[-rule.window :]
    if len(accepted) < rule.min_frames:
        return None
    return np.median(accepted, axis=0)
