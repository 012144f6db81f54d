"""calibration.json of an ordinal-grade bundle (knee KL grade, RUST cortices): conformal class sets per item and,
optionally, a conformal interval on the total, bound to the bundle's manifest hash (numpy only).

Schema (``format`` "sonogate-ordinal-calibration/1")::

    {
      "format": "sonogate-ordinal-calibration/1",
      "bundle_sha256": "<sha256 of manifest.json>",
      "task": "knee_kl",
      "delta": 0.1,
      "grades": [0, 1, 2, 3, 4],                    # class index k is grade grades[k]
      "class_sets": {"score": "lac", "contiguous": true, "threshold": 0.83, "rank": 712, "n_units": 790,
                     "unit": "image" | "case", "items_per_unit": 1 | 4},
      "total_interval": null | {"score": "absolute", "side": "two-sided", "value_range": [4, 12],
                                 "threshold": 1.4, "rank": 90, "n_units": 100, "prediction": "expected total"},
      "guarantee": "...",                           # what delta bounds, in words
      "data": {...}, "evaluation": {...}, "created_utc": "...", "sonogate_version": "..."
    }

``ordinal_calibration(...)`` builds the dict from fitted ``ConformalClassSets`` / ``OrdinalIntervalConformal``;
``load_ordinal_calibration(path, bundle_hash)`` reads it back as an ``OrdinalCalibration`` whose ``sets(probs)`` and
``interval(predictions)`` reproduce the fitted objects' ``predict``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sonogate.calibration.class_sets import ConformalClassSets, OrdinalIntervalConformal
from sonogate.errors import CalibrationError

ORDINAL_FORMAT = "sonogate-ordinal-calibration/1"


def ordinal_calibration(task: str, bundle_hash: str, grades, class_sets: ConformalClassSets, unit: str,
                        items_per_unit: int, guarantee: str, data: dict, evaluation: dict | None = None,
                        interval: OrdinalIntervalConformal | None = None, interval_prediction: str = "") -> dict:
    """The calibration.json dict (schema above) of fitted conformal objects."""
    import sonogate

    if not hasattr(class_sets, "threshold_"):
        raise CalibrationError("fit the class sets before writing their calibration")
    block = None
    if interval is not None:
        if not hasattr(interval, "threshold_"):
            raise CalibrationError("fit the total interval before writing its calibration")
        block = {"score": interval.score, "side": interval.side,
                 "value_range": list(interval.value_range) if interval.value_range else None,
                 "threshold": float(interval.threshold_), "rank": int(interval.rank_),
                 "n_units": int(interval.n_units_), "prediction": interval_prediction}
    return {
        "format": ORDINAL_FORMAT, "bundle_sha256": bundle_hash, "task": task, "delta": float(class_sets.delta),
        "grades": [int(g) for g in grades],
        "class_sets": {"score": class_sets.score, "contiguous": bool(class_sets.contiguous),
                       "threshold": float(class_sets.threshold_), "rank": int(class_sets.rank_),
                       "n_units": int(class_sets.n_units_), "unit": unit, "items_per_unit": int(items_per_unit)},
        "total_interval": block, "guarantee": guarantee, "data": data, "evaluation": evaluation or {},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sonogate_version": sonogate.__version__,
    }


@dataclass(frozen=True)
class OrdinalCalibration:
    """A loaded ordinal calibration: ``sets(probabilities (n, K)) -> (n, K) bool``; ``interval(predictions (n,))
    -> (lower, upper)`` integer arrays (CalibrationError when the file has no total interval)."""

    raw: dict[str, Any]
    class_sets: ConformalClassSets
    total: OrdinalIntervalConformal | None

    @property
    def delta(self) -> float:
        return float(self.raw["delta"])

    @property
    def grades(self) -> list[int]:
        return list(self.raw["grades"])

    def sets(self, probabilities) -> np.ndarray:
        return self.class_sets.predict(probabilities)

    def interval(self, predictions) -> tuple[np.ndarray, np.ndarray]:
        if self.total is None:
            raise CalibrationError("this calibration has no interval on the total")
        return self.total.predict(predictions)


def load_ordinal_calibration(path: str | os.PathLike, bundle_hash: str | None = None) -> OrdinalCalibration:
    """Read an ordinal calibration.json; refuse (CalibrationError, one line) a missing, malformed or foreign file
    (``bundle_hash`` given and different: a stale calibration)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"calibration file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"calibration file is unreadable ({exc}): {path}") from None
    if not isinstance(obj, dict) or obj.get("format") != ORDINAL_FORMAT:
        raise CalibrationError(f"{path} is not an ordinal calibration ({ORDINAL_FORMAT})")
    if bundle_hash is not None and obj.get("bundle_sha256") != bundle_hash:
        raise CalibrationError(f"calibration file {path} belongs to another bundle (stale calibration)")
    try:
        block = obj["class_sets"]
        sets = ConformalClassSets(delta=float(obj["delta"]), score=block["score"], contiguous=bool(block["contiguous"]))
        sets.threshold_, sets.rank_, sets.n_units_ = float(block["threshold"]), int(block["rank"]), int(block["n_units"])
        sets.n_classes_ = len(obj["grades"])
        total = None
        if obj.get("total_interval"):
            t = obj["total_interval"]
            total = OrdinalIntervalConformal(delta=float(obj["delta"]), side=t["side"], score=t["score"],
                                             value_range=tuple(t["value_range"]) if t["value_range"] else None)
            total.threshold_, total.rank_, total.n_units_ = float(t["threshold"]), int(t["rank"]), int(t["n_units"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"calibration file is malformed ({exc}): {path}") from None
    return OrdinalCalibration(raw=obj, class_sets=sets, total=total)


def save_ordinal_calibration(path: str | os.PathLike, calibration: dict) -> None:
    Path(path).write_text(json.dumps(calibration, indent=2) + "\n")
