"""calibration.json: affine correction + one-sided conformal radius per measurement, bound to a bundle.

Schema (format_version 1)::

    {
      "format_version": 1,
      "bundle_sha256": "<sha256 of the bundle's manifest.json>" | null,   # null: from a predictions CSV
      "task": "hip_us",
      "delta": 0.1,                       # guaranteed P(false reassurance of the rule) <= delta
      "rule": "alpha" | "or" | "and",
      "mode": "joint" | "separate" | "bonferroni",
      "thresholds": {"alpha_deg": 60.0, "coverage_pct": 50.0},
      "aggregation": {"method": "quality_gated_median", "unit": "sweep", "quality_threshold": 0.5,
                      "min_frames": 3, "window": 15},
      "measurements": {
        "alpha_deg": {"side": "lower", "affine": {"a": 1.0, "b": 0.0}, "radius": 4.2 | null,
                      "n": 40, "k": 37, "delta": 0.1},
        ...
      },
      "joint": {...} | null,             # provenance of a max-score calibration (scales, n, k, t)
      "guarantee": {...},                # what delta bounds, in words and fields (optional); "devices": the
                                         # acquisition devices it holds for (bmd: enforced by its runtime)
      "data": {...},                     # where the calibration data came from
      "created_utc": "...", "sonogate_version": "..."
    }

``radius`` is the effective one-sided radius the runtime uses for that measurement under the chosen mode
(for a joint calibration it is t * scale). ``null`` means the bound is infinite (k > n): the policy can never
reassure on that measurement. The runtime never needs to know which mode produced a radius.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sonogate.errors import CalibrationError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class MeasurementCalibration:
    """Affine correction y~ = a * y^ + b and one-sided radius for one measurement."""

    side: str  # "lower": bound = y~ - radius ; "upper": bound = y~ + radius
    a: float = 1.0
    b: float = 0.0
    radius: float | None = None  # None: infinite bound
    n: int = 0
    k: int = 0
    delta: float = 0.1

    def corrected(self, prediction: float) -> float:
        return self.a * prediction + self.b

    def bound(self, prediction: float) -> float:
        """The one-sided bound on the true value for a raw prediction (-inf / +inf when not finite)."""
        corrected = self.a * prediction + self.b
        if self.radius is None or not math.isfinite(corrected):
            return -math.inf if self.side == "lower" else math.inf
        return corrected - self.radius if self.side == "lower" else corrected + self.radius

    def to_json(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "affine": {"a": self.a, "b": self.b},
            "radius": self.radius,
            "n": self.n,
            "k": self.k,
            "delta": self.delta,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> MeasurementCalibration:
        side = obj["side"]
        if side not in ("lower", "upper"):
            raise ValueError(f"side must be lower or upper, got {side!r}")
        radius = obj.get("radius")
        radius = None if radius is None else float(radius)
        if radius is not None and not math.isfinite(radius):
            raise ValueError("radius must be finite or null")
        affine = obj.get("affine", {})
        return cls(
            side=side,
            a=float(affine.get("a", 1.0)),
            b=float(affine.get("b", 0.0)),
            radius=radius,
            n=int(obj.get("n", 0)),
            k=int(obj.get("k", 0)),
            delta=float(obj.get("delta", 0.1)),
        )


@dataclass
class CalibrationFile:
    delta: float
    rule: str
    mode: str
    thresholds: dict[str, float]
    measurements: dict[str, MeasurementCalibration]
    bundle_sha256: str | None = None
    task: str = "hip_us"
    aggregation: dict[str, Any] = field(default_factory=dict)
    joint: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    guarantee: dict[str, Any] = field(default_factory=dict)
    created_utc: str = ""
    sonogate_version: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "bundle_sha256": self.bundle_sha256,
            "task": self.task,
            "delta": self.delta,
            "rule": self.rule,
            "mode": self.mode,
            "thresholds": self.thresholds,
            "aggregation": self.aggregation,
            "measurements": {name: m.to_json() for name, m in self.measurements.items()},
            "joint": self.joint,
            "guarantee": self.guarantee,
            "data": self.data,
            "created_utc": self.created_utc,
            "sonogate_version": self.sonogate_version,
        }

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CalibrationFile:
        if obj.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version must be {FORMAT_VERSION}")
        return cls(
            delta=float(obj["delta"]),
            rule=str(obj["rule"]),
            mode=str(obj.get("mode", "separate")),
            thresholds={k: float(v) for k, v in obj["thresholds"].items()},
            measurements={k: MeasurementCalibration.from_json(v) for k, v in obj["measurements"].items()},
            bundle_sha256=obj.get("bundle_sha256"),
            task=str(obj.get("task", "hip_us")),
            aggregation=dict(obj.get("aggregation") or {}),
            joint=obj.get("joint"),
            data=dict(obj.get("data") or {}),
            guarantee=dict(obj.get("guarantee") or {}),
            created_utc=str(obj.get("created_utc", "")),
            sonogate_version=str(obj.get("sonogate_version", "")),
        )


def load_calibration(path: str | os.PathLike, bundle_hash: str | None = None) -> CalibrationFile:
    """Read calibration.json; when ``bundle_hash`` is given, refuse a file bound to another bundle."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"calibration file not found: {path} (run 'sonogate calibrate')") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"calibration file is unreadable ({exc}): {path}") from None
    try:
        calibration = CalibrationFile.from_json(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CalibrationError(f"calibration file is malformed ({exc}): {path}") from None
    if bundle_hash is not None and calibration.bundle_sha256 != bundle_hash:
        raise CalibrationError(
            f"calibration file {path} belongs to another bundle (stale calibration): recalibrate with 'sonogate calibrate'"
        )
    return calibration
