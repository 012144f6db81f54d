"""Batched augmentations for grayscale ultrasound / X-ray (SimSiam views), on the training device.

Everything is vectorised over the batch (one affine grid, one grouped blur) so a CPU step is not dominated
by per-image Python. Colour tricks (hue, saturation, grayscale conversion) make no sense on one channel and
are absent; horizontal flips are off by default because a flipped Graf image is not a valid Graf image
(the orientation of ilium and femoral head is standardised), but an X-ray pelvis may allow them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    out_size: int = 160
    scale: tuple[float, float] = (0.35, 1.0)  # area share of the random resized crop
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotate_deg: float = 0.0  # alpha is rotation invariant, but plane quality depends on a level ilium
    hflip: bool = False
    jitter_p: float = 0.8
    gain: tuple[float, float] = (0.7, 1.3)
    contrast: tuple[float, float] = (0.7, 1.3)
    gamma: tuple[float, float] = (0.7, 1.4)
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.5)  # pixels of the output view
    noise_std: float = 0.02


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def random_resized_crop(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, out, out): one random crop / aspect / optional rotation / flip per image."""
    n, dev = x.shape[0], x.device
    area = _uniform(n, cfg.scale[0], cfg.scale[1], gen, dev)
    log_ratio = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), gen, dev)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # half-extent in normalised [-1, 1] coordinates
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(n, generator=gen, device=dev) - 1)
    cy = (1 - h) * (2 * torch.rand(n, generator=gen, device=dev) - 1)
    angle = torch.deg2rad(_uniform(n, -cfg.rotate_deg, cfg.rotate_deg, gen, dev))
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx = w
    if cfg.hflip:
        sx = sx * torch.where(torch.rand(n, generator=gen, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.stack(
        [torch.stack([sx * cos, -h * sin, cx], 1), torch.stack([sx * sin, h * cos, cy], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, [n, x.shape[1], cfg.out_size, cfg.out_size], align_corners=False)
    # Border padding: a rotated crop should not show black corners the runtime never sees.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur; x (N, 1, H, W), sigma (N,) in pixels."""
    n = x.shape[0]
    radius = int(math.ceil(3 * float(sigma.max()))) if n else 0
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].clamp(min=1e-3)) ** 2)
    k = k / k.sum(1, keepdim=True)  # (N, K)
    # Images as channels of one sample -> grouped conv applies each image's own kernel.
    y = x.reshape(1, n, *x.shape[2:])
    y = F.pad(y, (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=n)
    y = F.conv2d(y, k[:, None, :, None], groups=n)
    return y.reshape_as(x)


def augment(x01: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """One random view of a batch. Input (N, 1, H, W) gray in [0, 1]; output (N, 1, out, out) in [0, 1]
    (normalise with the bundle's mean/std afterwards)."""
    n, dev = x01.shape[0], x01.device
    x = random_resized_crop(x01, cfg, gen)
    on = (torch.rand(n, generator=gen, device=dev) < cfg.jitter_p).to(x.dtype)[:, None, None, None]
    gain = _uniform(n, *cfg.gain, gen, dev)[:, None, None, None]
    contrast = _uniform(n, *cfg.contrast, gen, dev)[:, None, None, None]
    gamma = _uniform(n, *cfg.gamma, gen, dev)[:, None, None, None]
    mean = x.mean(dim=(2, 3), keepdim=True)
    jittered = ((x * gain - mean) * contrast + mean).clamp(0, 1) ** gamma
    x = on * jittered + (1 - on) * x
    sigma = _uniform(n, *cfg.blur_sigma, gen, dev)
    sigma = torch.where(torch.rand(n, generator=gen, device=dev) < cfg.blur_p, sigma, torch.zeros_like(sigma))
    x = gaussian_blur(x, sigma)
    if cfg.noise_std > 0:
        x = x + cfg.noise_std * torch.randn(x.shape, generator=gen, device=dev, dtype=x.dtype)
    return x.clamp(0, 1)
