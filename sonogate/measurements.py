"""What each task measures: names, units and which side of the bound is the safe one.

Shared by training, export, calibration and runtime (no torch, no numpy needed).
``bound_side = "lower"`` means low values are abnormal (alpha, coverage, CE angle), so the policy needs a
lower bound; ``"upper"`` means high values are abnormal (beta, acetabular index), so it needs an upper bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MeasurementSpec:
    name: str  # column / output name, e.g. "alpha_deg"
    unit: str  # display unit
    ucum: str  # UCUM code for DICOM SR
    bound_side: str  # "lower" or "upper"
    description: str


ALPHA = MeasurementSpec("alpha_deg", "deg", "deg", "lower", "Graf alpha angle (baseline vs bony roof line)")
BETA = MeasurementSpec("beta_deg", "deg", "deg", "upper", "Graf beta angle (baseline vs cartilage roof line)")
COVERAGE = MeasurementSpec(
    "coverage_pct", "%", "%", "lower", "femoral-head coverage: share of the head diameter medial to the baseline"
)
ACETABULAR_INDEX = MeasurementSpec("ai_deg", "deg", "deg", "upper", "acetabular index (X-ray)")
CENTRE_EDGE = MeasurementSpec("ce_deg", "deg", "deg", "lower", "centre-edge angle (X-ray)")

US_MEASUREMENTS: tuple[MeasurementSpec, ...] = (ALPHA, BETA, COVERAGE)
XR_MEASUREMENTS: tuple[MeasurementSpec, ...] = (ACETABULAR_INDEX, CENTRE_EDGE)

BY_NAME: dict[str, MeasurementSpec] = {m.name: m for m in US_MEASUREMENTS + XR_MEASUREMENTS}

# Policy defaults from the paper: T_alpha = 60 deg, T_cov = 50 %.
DEFAULT_THRESHOLDS: dict[str, float] = {"alpha_deg": 60.0, "coverage_pct": 50.0}

# Rule families: which measurements must clear their threshold (by their bound) for "ultrasound sufficient".
RULES: dict[str, tuple[tuple[str, ...], str]] = {
    "alpha": (("alpha_deg",), "all"),
    "and": (("alpha_deg", "coverage_pct"), "all"),
    "or": (("alpha_deg", "coverage_pct"), "any"),
}


def graf_type(alpha_deg: float, beta_deg: float | None = None) -> str:
    """Graf type from alpha (and beta where it separates Ia/Ib and IIc/D); age-dependent IIa/IIb reported as II."""
    if math.isnan(alpha_deg):
        return "?"
    if alpha_deg >= 60.0:
        if beta_deg is None:
            return "I"
        return "Ia" if beta_deg < 55.0 else "Ib"
    if alpha_deg >= 50.0:
        return "II"
    if alpha_deg >= 43.0:
        if beta_deg is None:
            return "IIc/D"
        return "D" if beta_deg > 77.0 else "IIc"
    return "III/IV"
