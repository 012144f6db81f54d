"""The fused inference network: what ``sonogate export`` turns into ``model.onnx``.

image (N, 1, S, S) normalised
  -> encoder -> layer3, layer4 -> pooled features (N, 512)
  -> plane head (512 -> 128 -> 1)                       plane_logit (N, 1)
  -> head "mlp":      512 -> 128 -> 3, de-standardised    measurements (N, 3) in deg, deg, %
     head "landmark": heatmaps -> soft-argmax landmarks -> Graf geometry (atan2) -> measurements
outputs: measurements, plane_logit, features (names fixed by the runtime contract)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sonogate.measurements import US_MEASUREMENTS
from sonogate.models.encoder import Encoder, pool
from sonogate.models.heads import LandmarkHead, MLPHead

HEADS = ("mlp", "landmark")
OUTPUT_NAMES = ("measurements", "plane_logit", "features")
US_NAMES = tuple(m.name for m in US_MEASUREMENTS)


class HipUSNet(nn.Module):
    """Encoder + plane head + measurement head (``head`` = "mlp" or "landmark").

    ``landmark_names`` (landmark head only) orders the K landmarks the geometry reads.
    ``forward(image)`` -> (measurements (N, 3), plane_logit (N, 1), features (N, 512)).
    """

    def __init__(self, head: str = "mlp", landmark_names: Sequence[str] = ()) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, not {head!r}")
        self.head = head
        self.landmark_names = tuple(landmark_names)
        self.encoder = Encoder()
        self.plane_head = MLPHead(1)
        # Targets are standardised for the L1 loss so alpha, beta and coverage weigh the same; the
        # de-standardisation lives in the graph so the ONNX outputs are in physical units.
        self.register_buffer("target_mean", torch.zeros(len(US_NAMES)))
        self.register_buffer("target_std", torch.ones(len(US_NAMES)))
        if head == "mlp":
            self.measure_head = MLPHead(len(US_NAMES))
        else:
            from sonogate.tasks.hip_us.geometry import GrafGeometry

            self.landmark_head = LandmarkHead(len(self.landmark_names))
            self.geometry = GrafGeometry(self.landmark_names)

    def heads_from_maps(self, f2: torch.Tensor, f3: torch.Tensor, f4: torch.Tensor):
        """(measurements, plane_logit, features, landmarks or None) from encoder maps; used by training
        on cached maps and by ``forward``."""
        feats = pool(f4)
        plane = self.plane_head(feats)
        if self.head == "mlp":
            return self.measure_head(feats) * self.target_std + self.target_mean, plane, feats, None
        coords = self.landmark_head(f2, f3, f4)
        return self.geometry(coords), plane, feats, coords

    def forward(self, image: torch.Tensor):
        meas, plane, feats, _ = self.heads_from_maps(*self.encoder.forward_maps(image))
        return meas, plane, feats
