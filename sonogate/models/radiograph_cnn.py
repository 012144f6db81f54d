"""A small residual CNN for one gray radiograph, trained from scratch (torch).

No ImageNet / RadImageNet weights can be downloaded here, and a ResNet-18 at 224 px is too slow to train from
scratch on a 2-core CPU in the time a task has; this trunk is about 0.1 GMAC per 224 px image (ResNet-18: 1.8),
which is what lets the ordinal radiograph tasks (knee KL grade, RUST) train on CPU.

``RadiographCNN(widths, feature_dim)``: stem (3x3 stride 2, max-pool 2, 3x3: /4), then one residual stage per
entry of ``widths[1:]`` (each halves the side), then global average and max pooling concatenated and a linear
projection (no activation) to ``feature_dim``. ``forward(x)`` takes (N, 1, S, S) already normalised, returns (N, feature_dim).
Only Conv / BatchNorm / ReLU / MaxPool / ReduceMean / ReduceMax / Gemm: exports to ONNX and quantises to INT8.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResidualStage(nn.Module):
    """Two 3x3 convolutions (the first with stride 2) plus a strided 1x1 shortcut: (N, cin, H, W) -> (N, cout,
    H/2, W/2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 2)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)
        nn.init.zeros_(self.conv2[1].weight)  # each stage starts as its shortcut (stable from-scratch training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class RadiographCNN(nn.Module):
    """Small residual trunk for one gray channel; see the module docstring. ``feature_dim`` is ``self.feature_dim``."""

    def __init__(self, widths: tuple[int, ...] = (24, 32, 64, 128, 192), feature_dim: int = 256,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError("widths needs the stem width and at least one stage width")
        self.stem = nn.Sequential(_conv_bn(1, widths[0], 2), nn.MaxPool2d(2), _conv_bn(widths[0], widths[1]))
        self.stages = nn.Sequential(*(ResidualStage(a, b) for a, b in itertools.pairwise(widths[1:])))
        # linear projection, no ReLU after it: a ReLU here let most units die early in from-scratch training (250
        # of 256 dead after one knee epoch, constant output), which no gradient can revive
        self.project = nn.Sequential(nn.Dropout(dropout) if dropout else nn.Identity(),
                                     nn.Linear(2 * widths[-1], feature_dim))
        self.feature_dim = feature_dim
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's feature map (N, widths[-1], S/2^(1+len(widths)), ...)."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.maps(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.project(pooled)


def augment_radiographs(x01: torch.Tensor, gen: torch.Generator, rotate_deg: float = 10.0,
                        zoom: tuple[float, float] = (0.9, 1.1), shift: float = 0.06, hflip: bool = True,
                        contrast: float = 0.2, brightness: float = 0.08, gamma: float = 0.25,
                        noise_std: float = 0.015) -> torch.Tensor:
    """Random geometric and photometric jitter of a batch of gray radiographs in [0, 1].

    Inputs: ``x01`` (N, 1, H, W) float in [0, 1]; ``gen`` the torch generator (reproducible runs). Each image gets
    its own rotation (+-``rotate_deg``), zoom, shift (fraction of the side), optional left-right mirror (for
    grades that do not depend on the side), contrast / brightness / gamma jitter and Gaussian noise. Output: the
    same shape, clipped to [0, 1]. Border pixels that come in are zero (black, as collimation and letterboxing).
    """
    import math

    import torch.nn.functional as F

    n = x01.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle = uniform(-rotate_deg, rotate_deg) * math.pi / 180.0
    scale = 1.0 / uniform(*zoom)
    mirror = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if hflip else torch.ones(n)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * mirror, -sin, uniform(-shift, shift) * 2], dim=1),
                         torch.stack([sin * mirror, cos, uniform(-shift, shift) * 2], dim=1)], dim=1)
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    out = F.grid_sample(x01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    g = torch.exp(uniform(-gamma, gamma))[:, None, None, None]
    out = out.clamp(0.0, 1.0) ** g
    c = uniform(1.0 - contrast, 1.0 + contrast)[:, None, None, None]
    b = uniform(-brightness, brightness)[:, None, None, None]
    out = (out - 0.5) * c + 0.5 + b
    if noise_std:
        out = out + noise_std * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(out.shape, generator=gen)
    return out.clamp(0.0, 1.0)
