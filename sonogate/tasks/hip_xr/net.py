"""The hip_xr task's network: what ``sonogate export`` turns into a whole-pelvis bundle's ``model.onnx``.

image (N, 1, S, S), the letterboxed AP pelvis, normalised
  -> encoder (ResNet-18, 1 channel, SimSiam-pretrained, frozen) -> layer2, layer3, layer4, pooled (N, 512)
  head "landmark" (default): LandmarkHead -> 8 landmarks (N, 8, 2) in [0, 1]
        -> ``XrGeometry`` (atan2 / Where, exports to ONNX): AI and CE per hip from Hilgenreiner's line through
           both triradiate points, IHDI scores from the H-point
  head "mlp" (the paper's): 512 -> 128 -> (AI_r, CE_r, AI_l, CE_l) de-standardised, and 512 -> 128 -> 8
        IHDI logits (4 per hip)
outputs: measurements (N, 4) ai_deg right, ce_deg right, ai_deg left, ce_deg left; ihdi_logits (N, 2, 4);
         landmarks (N, 8, 2) (landmark head only); features (N, 512)

The geometry is the one of ``sonogate.tasks.hip_xr.phantom.measure_xr_from_landmarks`` (tested against it in the
ONNX graph): "right" is the hip on the image's left.
"""

from __future__ import annotations

import torch
from torch import nn

from sonogate.models.encoder import Encoder, pool
from sonogate.models.heads import LandmarkHead, MLPHead
from sonogate.tasks.hip_xr.phantom import XR_LANDMARK_NAMES

XR_HEADS = ("landmark", "mlp")
XR_NAMES = ("ai_deg_right", "ce_deg_right", "ai_deg_left", "ce_deg_left")
XR_LANDMARKS = tuple(XR_LANDMARK_NAMES)
# Landmark index of each name's mirror image (r <-> l): a horizontal flip swaps the patient's sides.
FLIP_LANDMARKS = tuple(XR_LANDMARKS.index(n[:-1] + ("l" if n.endswith("_r") else "r")) for n in XR_LANDMARKS)
FLIP_TARGETS = (2, 3, 0, 1)
IHDI_GAIN = 20.0  # geometric IHDI margins are in units of the triradiate distance; x20 gives logit-like scales


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1]


def _deg_atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.atan2(y, x))


def xr_geometry(points: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """AI, CE per hip and geometric IHDI scores from named (N, 2) landmark tensors (any isotropic unit).

    Output: measurements (N, 4) = ai_right, ce_right, ai_left, ce_left (deg) and ihdi scores (N, 2, 4) whose
    argmax (first index on ties) is ``sonogate.tasks.hip_xr.phantom.ihdi_grade`` - 1.
    Hilgenreiner H = unit vector triradiate_r -> triradiate_l; lateral = -H (right) / +H (left); "up" is the
    normal of H on the side of that hip's acetabular edge. AI = atan2(<e - t, up>, <e - t, lateral>),
    CE = atan2(<e - c, lateral>, <e - c, up>) with t triradiate, e acetabular edge, c head centre.
    """
    tri_r, tri_l = points["triradiate_r"], points["triradiate_l"]
    axis = tri_l - tri_r
    length = torch.sqrt(_dot(axis, axis)).clamp(min=1e-9)
    h = axis / length[..., None]
    normal = torch.stack([-h[..., 1], h[..., 0]], dim=-1)
    measurements, scores = [], []
    for s, tri, lateral in (("r", tri_r, -h), ("l", tri_l, h)):
        edge, centre, hp = points[f"acetabular_edge_{s}"], points[f"head_center_{s}"], points[f"h_point_{s}"]
        roof = edge - tri
        up = normal * torch.where(_dot(roof, normal) < 0, -1.0, 1.0).to(roof.dtype)[..., None]
        ai = _deg_atan2(_dot(roof, up), _dot(roof, lateral))
        reach = edge - centre
        ce = _deg_atan2(_dot(reach, lateral), _dot(reach, up))
        measurements += [ai, ce]
        # IHDI: H-point relative to the corner of Hilgenreiner's and Perkin's lines below the edge.
        corner = tri + _dot(roof, lateral)[..., None] * lateral
        v = hp - corner
        above, lat = _dot(v, up), _dot(v, lateral)
        down = -above
        grade = torch.stack(
            [
                torch.minimum(down, -lat),  # I: medial of Perkin, below H
                torch.minimum(torch.minimum(down, lat), down - lat),  # II: lateral, inside the D-line
                torch.minimum(down, lat - down),  # III: beyond the D-line, below H
                above,  # IV: above H
            ],
            dim=-1,
        )
        scores.append(grade * (IHDI_GAIN / length[..., None]))
    return torch.stack(measurements, dim=-1), torch.stack(scores, dim=-2)


class XrGeometry(nn.Module):
    """landmarks (N, 8, 2) in ``XR_LANDMARKS`` order -> (measurements (N, 4), ihdi scores (N, 2, 4))."""

    def forward(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return xr_geometry({n: coords[:, i] for i, n in enumerate(XR_LANDMARKS)})


class HipXRNet(nn.Module):
    """Encoder + X-ray head (``head`` = "landmark" or "mlp"); see the module docstring for the outputs.

    ``forward(image)`` -> (measurements, ihdi_logits, landmarks, features) for the landmark head and
    (measurements, ihdi_logits, features) for the mlp head, in the order of ``output_names``.
    """

    def __init__(self, head: str = "landmark") -> None:
        super().__init__()
        if head not in XR_HEADS:
            raise ValueError(f"head must be one of {XR_HEADS}, not {head!r}")
        self.head = head
        self.encoder = Encoder()
        # Standardised targets for the mlp head's L1 loss; de-standardised in the graph (physical units out).
        self.register_buffer("target_mean", torch.zeros(len(XR_NAMES)))
        self.register_buffer("target_std", torch.ones(len(XR_NAMES)))
        if head == "mlp":
            # Both under "measure_head." so INT8 export keeps them float (sonogate.export.quantize.HEAD_PREFIXES).
            # Not "values": ModuleDict has a values() method, and that key made the mlp head fail at construction.
            self.measure_head = nn.ModuleDict({"angles": MLPHead(len(XR_NAMES)), "ihdi": MLPHead(8)})
        else:
            self.landmark_head = LandmarkHead(len(XR_LANDMARKS))
            self.geometry = XrGeometry()

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.head == "mlp":
            return ("measurements", "ihdi_logits", "features")
        return ("measurements", "ihdi_logits", "landmarks", "features")

    def heads_from_maps(self, f2: torch.Tensor, f3: torch.Tensor, f4: torch.Tensor):
        """(measurements, ihdi_logits, features, landmarks or None) from encoder maps (training on cached maps
        and ``forward`` share it)."""
        feats = pool(f4)
        if self.head == "mlp":
            meas = self.measure_head["angles"](feats) * self.target_std + self.target_mean
            return meas, self.measure_head["ihdi"](feats).reshape(-1, 2, 4), feats, None
        coords = self.landmark_head(f2, f3, f4)
        meas, ihdi = self.geometry(coords)
        return meas, ihdi, feats, coords

    def forward(self, image: torch.Tensor):
        meas, ihdi, feats, coords = self.heads_from_maps(*self.encoder.forward_maps(image))
        if coords is None:
            return meas, ihdi, feats
        return meas, ihdi, coords, feats
