"""Graf alpha, beta and femoral-head coverage from landmarks, in torch ops that export to ONNX.

Same construction as ``sonogate.phantom.hip_us.measure_from_landmarks`` (tested against it):
alpha = angle between the baseline (top -> bottom) and the bony roof line (rim -> lower limb);
beta = angle between the baseline and the cartilage roof line (rim -> labrum);
coverage = share of the head diameter (lateral -> medial, projected on the baseline normal) on the medial
side of the baseline (the side of the lower limb), clipped to 0..100 %.
Only unsigned angles and a side test are used, so both display orientations (ilium horizontal or vertical)
and mirrored images give the same numbers. Angles use atan2(|cross|, dot): exact at every angle (no acos
loss of precision near 0 / 180 deg) and exported by torch.onnx as Atan + Where.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

GRAF_LANDMARKS: tuple[str, ...] = (
    "baseline_top",
    "baseline_bottom",
    "bony_rim",
    "lower_limb",
    "labrum",
    "head_medial",
    "head_lateral",
)


def required_landmarks() -> list[str]:
    """Landmark names the landmark head predicts (the columns lm_<name>_x/_y it trains on)."""
    return list(GRAF_LANDMARKS)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1]


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.atan2(_cross(a, b).abs(), _dot(a, b)))


def graf_measurements(points: dict[str, torch.Tensor]) -> torch.Tensor:
    """(..., 3) alpha_deg, beta_deg, coverage_pct from named (..., 2) landmark tensors (any isotropic unit)."""
    top, bottom = points["baseline_top"], points["baseline_bottom"]
    rim, lower, labrum = points["bony_rim"], points["lower_limb"], points["labrum"]
    baseline = bottom - top
    alpha = _angle_deg(baseline, lower - rim)
    beta = _angle_deg(baseline, labrum - rim)
    normal = torch.stack([-baseline[..., 1], baseline[..., 0]], dim=-1)
    # Orient the normal towards the lower limb (medial); the length cancels in the ratio below.
    side = torch.where(_dot(lower - top, normal) < 0, -1.0, 1.0).to(baseline.dtype)
    s_medial = side * _dot(points["head_medial"] - top, normal)
    s_lateral = side * _dot(points["head_lateral"] - top, normal)
    span = s_medial - s_lateral
    # A degenerate head (medial == lateral) is undefined; keep the graph finite for training and export.
    eps = 1e-6 * (_dot(baseline, baseline) + 1e-12)
    span = torch.where(span.abs() < eps, torch.full_like(span, 1.0) * eps, span)
    coverage = (100.0 * s_medial / span).clamp(0.0, 100.0)
    return torch.stack([alpha, beta, coverage], dim=-1)


class GrafGeometry(nn.Module):
    """landmarks (N, K, 2) ordered as ``names`` -> measurements (N, 3) = alpha_deg, beta_deg, coverage_pct."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        missing = [n for n in GRAF_LANDMARKS if n not in names]
        if missing:
            raise ValueError(f"geometry needs landmarks {missing}")
        self.index = {n: list(names).index(n) for n in GRAF_LANDMARKS}

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return graf_measurements({n: coords[:, i] for n, i in self.index.items()})


# For each landmark, the line it only has to lie on (pairs of landmark names; direction first -> second)
# and None where the position itself matters. An error along that line does not change any measurement:
# baseline points may slide along the baseline, the lower limb along the bony roof line, the labrum along
# the cartilage roof line, and the head's medial / lateral points along the baseline (only their depth
# along the baseline normal enters the coverage).
FREE_DIRECTION: dict[str, tuple[str, str] | None] = {
    "baseline_top": ("baseline_top", "baseline_bottom"),
    "baseline_bottom": ("baseline_top", "baseline_bottom"),
    "bony_rim": None,
    "lower_limb": ("bony_rim", "lower_limb"),
    "labrum": ("bony_rim", "labrum"),
    "head_medial": ("baseline_top", "baseline_bottom"),
    "head_lateral": ("baseline_top", "baseline_bottom"),
}


def line_aware_error(pred: torch.Tensor, true: torch.Tensor, names: Sequence[str], along_weight: float = 0.2):
    """Per-coordinate errors (N, K, 2) for a landmark loss that cares about what the measurements use.

    Inputs: predicted and true landmarks (N, K, 2) ordered as ``names``. For a landmark with a free line,
    the error is split into the component across the line (full weight) and along it (``along_weight``);
    other landmarks keep their x / y errors. Feed the result to an L1-type loss against zero.
    """
    err = pred - true
    out = []
    index = {n: i for i, n in enumerate(names)}
    for k, name in enumerate(names):
        pair = FREE_DIRECTION.get(name)
        e = err[:, k]
        if pair is None or pair[0] not in index or pair[1] not in index:
            out.append(e)
            continue
        d = true[:, index[pair[1]]] - true[:, index[pair[0]]]
        d = d / d.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        along = _dot(e, d)
        across = _cross(d, e)
        out.append(torch.stack([across, along_weight * along], dim=-1))
    return torch.stack(out, dim=1)
