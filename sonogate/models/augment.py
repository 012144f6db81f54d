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
    # Scanner variation beyond gain/contrast: resolution (coarser render, larger speckle) and aperture width.
    lowres_p: float = 0.0
    lowres_scale: tuple[float, float] = (0.6, 1.0)
    speckle_p: float = 0.0
    speckle_std: float = 0.15
    band_p: float = 0.0
    band_frac: float = 0.06


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
    theta = torch.stack([torch.stack([sx * cos, -h * sin, cx], 1), torch.stack([sx * sin, h * cos, cy], 1)], 1).to(
        x.dtype
    )
    grid = F.affine_grid(theta, [n, x.shape[1], cfg.out_size, cfg.out_size], align_corners=False)
    # Border padding: a rotated crop should not show black corners the runtime never sees.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur; x (N, 1, H, W), sigma (N,) in pixels."""
    n = x.shape[0]
    radius = math.ceil(3 * float(sigma.max())) if n else 0
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


def _lowres(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Render some images coarser (down- then up-sample), as a scanner with a larger resolution cell does."""
    n, dev = x.shape[0], x.device
    pick = torch.rand(n, generator=gen, device=dev) < cfg.lowres_p
    if not pick.any():
        return x
    out = x.clone()
    scale = float(_uniform(1, *cfg.lowres_scale, gen, dev))  # one factor per call keeps it batched
    small = F.interpolate(x[pick], scale_factor=scale, mode="area")
    out[pick] = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


def _speckle(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Multiplicative low-frequency texture: a different speckle grain than the training scanners'."""
    n, dev = x.shape[0], x.device
    h, w = x.shape[-2:]
    field = torch.randn((n, 1, max(2, h // 4), max(2, w // 4)), generator=gen, device=dev, dtype=x.dtype)
    field = F.interpolate(field, size=(h, w), mode="bilinear", align_corners=False)
    on = (torch.rand(n, generator=gen, device=dev) < cfg.speckle_p).to(x.dtype)[:, None, None, None]
    return x * torch.exp(on * cfg.speckle_std * field)


def _bands(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Black bands at the sides, as a narrower transducer aperture leaves them."""
    n, dev = x.shape[0], x.device
    w = x.shape[-1]
    cols = torch.arange(w, device=dev)[None, :]
    width = (torch.rand(n, generator=gen, device=dev) * cfg.band_frac * w)[:, None]
    width = torch.where(torch.rand(n, generator=gen, device=dev)[:, None] < cfg.band_p, width, torch.zeros_like(width))
    keep = ((cols >= width) & (cols < w - width)).to(x.dtype)
    return x * keep[:, None, None, :]


def photometric(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Gain / contrast / gamma jitter, blur and noise (what differs between scanners); x in [0, 1].
    Optionally (probabilities in ``cfg``) coarser resolution, another speckle grain, side bands."""
    n, dev = x.shape[0], x.device
    if cfg.lowres_p > 0:
        x = _lowres(x, cfg, gen)
    if cfg.speckle_p > 0:
        x = _speckle(x, cfg, gen).clamp(0, 1)
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
    if cfg.band_p > 0:
        x = _bands(x, cfg, gen)
    return x.clamp(0, 1)


def augment(x01: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """One random SimSiam view of a batch. Input (N, 1, H, W) gray in [0, 1]; output (N, 1, out, out) in
    [0, 1] (normalise with the bundle's mean/std afterwards)."""
    return photometric(random_resized_crop(x01, cfg, gen), cfg, gen)


def random_similarity(
    x01: torch.Tensor,
    points: torch.Tensor,
    gen: torch.Generator,
    zoom: tuple[float, float] = (0.7, 1.2),  # depth settings differ between carts and sites
    rotate_deg: float = 8.0,
    shift: float = 0.08,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random zoom / rotation / shift of images together with their landmarks, for the heads' training.

    Graf angles and coverage are invariant under a similarity transform, so labels stay valid; it teaches
    the heads the depth settings (pixel scales) and probe positions that differ between scanners.
    Inputs: x01 (N, 1, S, S) in [0, 1]; points (N, K, 2) (x, y) in [0, 1] of the image. Outputs: warped
    images (outside the field is black, like outside an ultrasound sector) and moved points.
    """
    n, dev = x01.shape[0], x01.device
    s = _uniform(n, *zoom, gen, dev)  # > 1 magnifies the anatomy
    a = torch.deg2rad(_uniform(n, -rotate_deg, rotate_deg, gen, dev))
    t = torch.stack([_uniform(n, -shift, shift, gen, dev), _uniform(n, -shift, shift, gen, dev)], 1) * 2
    # affine_grid maps output coords to input coords (normalised [-1, 1]): p_in = A p_out + t
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    A = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    theta = torch.cat([A, t[:, :, None]], 2).to(x01.dtype)
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    out = F.grid_sample(x01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    p_in = points * 2 - 1
    p_out = torch.linalg.solve(A, (p_in - t[:, None, :]).transpose(1, 2)).transpose(1, 2)
    return out, (p_out + 1) / 2
