"""Small heads on top of the (frozen or lightly fine-tuned) encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sonogate.models.encoder import FEATURE_DIM, LAYER2_CHANNELS, LAYER3_CHANNELS


class MLPHead(nn.Module):
    """features (N, in_dim) -> (N, out_dim): standardise features, Linear -> ReLU -> Dropout -> Linear.

    The paper's head is 512 -> 128 -> outputs. Frozen SimSiam features have very different scales per
    dimension, so we standardise them with training statistics held as buffers (exported with the graph).
    """

    def __init__(self, out_dim: int, in_dim: int = FEATURE_DIM, hidden: int = 128, dropout: float = 0.3) -> None:
        super().__init__()
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
        )

    def set_feature_stats(self, feats: torch.Tensor) -> None:
        std = feats.std(0)
        # Nearly constant dimensions would be blown up into noise (and explode on a new scanner): floor them.
        self.feat_mean.copy_(feats.mean(0))
        self.feat_std.copy_(std.clamp(min=max(1e-6, 0.1 * float(std.median()))))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net((feats - self.feat_mean) / self.feat_std)


class LandmarkHead(nn.Module):
    """layer2 (N, 128, h, w), layer3 (N, 256, h/2, w/2), layer4 (N, 512, h/4, w/4) -> landmark (x, y) in
    [0, 1] of the input, (N, K, 2).

    A small feature pyramid: layer4 and layer3 decide *which* bright edge is the bony rim or the labrum,
    layer2 (stride 8) says *where* it is to a pixel. Heatmaps at stride 8 are decoded by a soft-argmax
    (integral regression): differentiable, sub-pixel, plain ONNX ops (Softmax, Mul, ReduceSum), and
    translation-equivariant, which a dense regressor from pooled features is not.
    """

    def __init__(self, n_landmarks: int, width: int = 64) -> None:
        super().__init__()
        self.n_landmarks = n_landmarks
        self.lat2 = nn.Conv2d(LAYER2_CHANNELS, width, 1)
        self.lat3 = nn.Conv2d(LAYER3_CHANNELS, width, 1)
        self.lat4 = nn.Conv2d(FEATURE_DIM, width, 1)
        self.block = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.refine = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, n_landmarks, 1),
        )
        # Sharpness of the soft-argmax; learned, starts moderately peaked.
        self.log_beta = nn.Parameter(torch.tensor(1.0))

    def heatmap_logits(self, f2: torch.Tensor, f3: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        top = F.interpolate(self.lat4(f4), size=f3.shape[-2:], mode="bilinear", align_corners=False)
        x = self.block(F.relu(self.lat3(f3) + top))
        x = F.interpolate(x, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(F.relu(x + self.lat2(f2)))

    def forward(self, f2: torch.Tensor, f3: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        logits = self.heatmap_logits(f2, f3, f4)
        n, k, h, w = logits.shape
        prob = torch.softmax(logits.flatten(2) * self.log_beta.exp(), dim=-1).reshape(n, k, h, w)
        # Cell centres in [0, 1]: pixel-centre convention matching cv2.resize / align_corners=False.
        xs = (torch.arange(w, dtype=logits.dtype, device=logits.device) + 0.5) / w
        ys = (torch.arange(h, dtype=logits.dtype, device=logits.device) + 0.5) / h
        x = (prob.sum(2) * xs).sum(-1)
        y = (prob.sum(3) * ys).sum(-1)
        return torch.stack([x, y], dim=-1)
