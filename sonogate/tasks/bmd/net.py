"""The ``bmd`` task's network: what ``sonogate export`` turns into ``bundles/bmd/model.onnx`` (torch only).

image (N, 1, 512, 512), the letterboxed AP pelvis, x = (gray / 255 - 0.5) / 0.25
  -> ``Locator`` on the image average-pooled to 128 px: a small U-Net whose heatmaps (32 x 32) give, by soft-argmax,
     4 landmarks (right head centre, right neck-box centre, left head centre, left neck-box centre) in [0, 1] of
     the input (pixel-centre convention: x = (column + 0.5) / width), a per-hip in-field logit and a per-landmark
     heatmap peak (how concentrated the soft-argmax was: a confidence for the runtime's refusal)
  -> ``neck_roi_theta``: per hip an affine ROI (spatial transformer) centred on the neck-box centre, its x axis along
     the neck (head -> box), its side ``ROI_SCALE`` x the head-to-neck distance; the left hip's frame is the mirror
     image of the right one, so both hips reach the regressor in the same orientation
  -> ``grid_sample`` of the full-resolution input -> an 80 x 80 ROI per hip (in the graph: GridSample)
  -> ``Regressor`` (a small CNN, shared by both hips) -> embedding (N * 2, 128) -> BMD (g/cm2); with a context
     width > 0 the regressor also sees the whole input average-pooled to 64 px (``ContextEncoder``): what the ROI
     cannot show about the exposure (body habitus, bone vs soft-tissue contrast of the pelvis, the display window)
outputs: bmd (N, 2) right, left (raw, before calibration); landmarks (N, 4, 2); in_field_logit (N, 2);
         landmark_peak (N, 4); features (N, 2, 128 x members) (the regressor's embedding per hip: OOD statistics)

``RegressorEnsemble`` puts several regressors trained on the same locator behind one ROI: BMD is their mean, the
features their embeddings side by side. Independent training seeds err partly independently, so the mean errs less.

The neck region is found by the model: the locator is trained on landmark positions, the regressor on ROIs cut at
jittered landmark positions; at run time the ROI follows the locator's own landmarks, in the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sonogate.tasks.bmd.spec import ROI_SCALE

INPUT_SIZE = 512
LOCATOR_SIZE = 128  # the locator sees the input average-pooled by 4
ROI_SOURCE_SIZE = 512  # ROIs are sampled from the full-resolution input (cortex and trabeculae are 2-5 px)
HEATMAP_SIZE = 32
ROI_SIZE = 80
EMBED_DIM = 128
CONTEXT_SIZE = 64  # the whole input average-pooled by 8: the context encoder's view
LANDMARKS = ("head_center_r", "neck_box_r", "head_center_l", "neck_box_l")
SIDE_SIGN = (1.0, -1.0)  # right, left: the left hip's ROI frame is mirrored
OUTPUT_NAMES = ("bmd", "landmarks", "in_field_logit", "landmark_peak", "features")


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Locator(nn.Module):
    """(N, 1, 128, 128) -> heatmap logits (N, 4, 32, 32) and in-field logits (N, 2)."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(conv_bn(1, w), conv_bn(w, w, 2))  # 64
        self.down1 = nn.Sequential(conv_bn(w, 2 * w, 2), conv_bn(2 * w, 2 * w))  # 32
        self.down2 = nn.Sequential(conv_bn(2 * w, 4 * w, 2), conv_bn(4 * w, 4 * w))  # 16
        self.down3 = nn.Sequential(conv_bn(4 * w, 8 * w, 2), conv_bn(8 * w, 8 * w))  # 8
        self.up2 = conv_bn(8 * w + 4 * w, 4 * w)  # 16
        self.up1 = conv_bn(4 * w + 2 * w, 4 * w)  # 32
        self.heat = nn.Conv2d(4 * w, len(LANDMARKS), 1)
        self.presence = nn.Linear(8 * w, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)
        d1 = self.down1(s)
        d2 = self.down2(d1)
        d3 = self.down3(d2)
        u2 = self.up2(torch.cat([F.interpolate(d3, scale_factor=2.0, mode="nearest"), d2], 1))
        u1 = self.up1(torch.cat([F.interpolate(u2, scale_factor=2.0, mode="nearest"), d1], 1))
        return self.heat(u1), self.presence(d3.mean(dim=(2, 3)))


def soft_argmax(heat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmap logits (N, K, H, W) -> points (N, K, 2) in [0, 1] (pixel-centre convention) and the peak
    probability (N, K) of the softmax (1: all mass in one cell)."""
    n, k, h, w = heat.shape
    prob = torch.softmax(heat.reshape(n, k, h * w), dim=-1)
    ys = (torch.arange(h, dtype=heat.dtype, device=heat.device) + 0.5) / h
    xs = (torch.arange(w, dtype=heat.dtype, device=heat.device) + 0.5) / w
    gy = ys.repeat_interleave(w)
    gx = xs.repeat(h)
    x = (prob * gx).sum(-1)
    y = (prob * gy).sum(-1)
    return torch.stack([x, y], dim=-1), prob.amax(-1)


def neck_roi_theta(head: torch.Tensor, box: torch.Tensor, side_sign: float, scale: float = ROI_SCALE) -> torch.Tensor:
    """Affine ``theta`` (N, 2, 3) for ``F.affine_grid`` (align_corners False) of one hip's ROI.

    head, box: (N, 2) in [0, 1] of a square image. ROI output (a, b) in [-1, 1]^2 samples the image at
    normalised p = (2 box - 1) + 2 h (a u + b v), u = unit(box - head), v = side_sign * (-u_y, u_x),
    h = scale * |box - head|.
    """
    d = box - head
    dist = torch.sqrt((d * d).sum(-1, keepdim=True) + 1e-12)
    u = d / dist
    v = side_sign * torch.stack([-u[:, 1], u[:, 0]], dim=-1)
    half = 2.0 * scale * dist
    centre = 2.0 * box - 1.0
    row_x = torch.stack([half[:, 0] * u[:, 0], half[:, 0] * v[:, 0], centre[:, 0]], dim=-1)
    row_y = torch.stack([half[:, 0] * u[:, 1], half[:, 0] * v[:, 1], centre[:, 1]], dim=-1)
    return torch.stack([row_x, row_y], dim=1)


def sample_roi(image: torch.Tensor, theta: torch.Tensor, size: int = ROI_SIZE) -> torch.Tensor:
    """(N, 1, S, S) image, (N, 2, 3) theta -> (N, 1, size, size) bilinear ROI (border padding)."""
    grid = F.affine_grid(theta, [theta.shape[0], 1, size, size], align_corners=False)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ContextEncoder(nn.Module):
    """Whole radiograph (M, 1, 64, 64) -> (M, 4 * width): a few global features of the exposure beside the ROI.
    The ROI alone cannot tell a dense neck from a soft exposure, a thin patient or a low kVp."""

    def __init__(self, width: int = 8):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            conv_bn(1, w), nn.MaxPool2d(2),  # 32
            conv_bn(w, 2 * w), nn.MaxPool2d(2),  # 16
            conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),  # 8
            conv_bn(4 * w, 4 * w),
        )
        self.dim = 4 * w

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image).mean(dim=(2, 3))


def context_image(image: torch.Tensor) -> torch.Tensor:
    """(N, 1, 512, 512) normalised input -> (N, 1, 64, 64), the context encoder's input."""
    return F.avg_pool2d(image, image.shape[-1] // CONTEXT_SIZE)


class Regressor(nn.Module):
    """ROI (M, 1, 80, 80) [and, with ``context_width`` > 0, the ROI's whole radiograph (M, 1, 64, 64)] ->
    (BMD g/cm2 (M,), embedding (M, EMBED_DIM)). ``mean``/``std``: the BMD scale the head's output is
    de-standardised with (set from the labelled training hips)."""

    def __init__(self, width: int = 16, context_width: int = 0):
        super().__init__()
        w = width
        self.context = ContextEncoder(context_width) if context_width > 0 else None
        self.body = nn.Sequential(
            conv_bn(1, w), nn.MaxPool2d(2),  # 40
            conv_bn(w, 2 * w), conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),  # 20
            conv_bn(2 * w, 4 * w), conv_bn(4 * w, 4 * w), nn.MaxPool2d(2),  # 10
            conv_bn(4 * w, 8 * w), conv_bn(8 * w, 8 * w),
        )
        extra = self.context.dim if self.context is not None else 0
        self.embed = nn.Sequential(nn.Linear(8 * w + extra, EMBED_DIM), nn.ReLU(inplace=True))
        self.head = nn.Linear(EMBED_DIM, 1)
        self.register_buffer("mean", torch.tensor(0.8))
        self.register_buffer("std", torch.tensor(0.13))

    @property
    def uses_context(self) -> bool:
        return self.context is not None

    @property
    def embed_dim(self) -> int:
        return EMBED_DIM

    def forward(self, roi: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(roi).mean(dim=(2, 3))
        if self.context is not None:
            if context is None:
                raise ValueError("this regressor needs the whole radiograph (context) beside the ROI")
            f = torch.cat([f, self.context(context)], dim=1)
        e = self.embed(f)
        return self.head(e)[:, 0] * self.std + self.mean, e


class RegressorEnsemble(nn.Module):
    """Regressors of one input kind (all with or all without context) -> (mean BMD (M,), embeddings concatenated
    (M, EMBED_DIM x members)): the interface of ``Regressor``."""

    def __init__(self, members: list[Regressor]):
        super().__init__()
        if len(members) < 2 or len({m.uses_context for m in members}) != 1:
            raise ValueError("an ensemble needs two or more regressors, all with or all without context")
        self.members = nn.ModuleList(members)

    @property
    def uses_context(self) -> bool:
        return self.members[0].uses_context

    @property
    def embed_dim(self) -> int:
        return EMBED_DIM * len(self.members)

    def forward(self, roi: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [member(roi, context) for member in self.members]
        bmd = torch.stack([b for b, _ in outputs]).mean(0)
        return bmd, torch.cat([e for _, e in outputs], dim=1)


class BmdNet(nn.Module):
    """The whole graph (module docstring): image (N, 1, 512, 512) -> OUTPUT_NAMES."""

    output_names = OUTPUT_NAMES

    def __init__(self, locator: Locator, regressor: Regressor | RegressorEnsemble):
        super().__init__()
        self.locator = locator
        self.regressor = regressor

    def locate(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        small = F.avg_pool2d(image, INPUT_SIZE // LOCATOR_SIZE)
        heat, presence = self.locator(small)
        points, peak = soft_argmax(heat)
        return points, presence, peak

    def rois(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(N, 1, 512, 512), landmarks (N, 4, 2) -> ROIs (N * 2, 1, 80, 80), right then left per image."""
        source = image if ROI_SOURCE_SIZE == INPUT_SIZE else F.avg_pool2d(image, INPUT_SIZE // ROI_SOURCE_SIZE)
        right = sample_roi(source, neck_roi_theta(points[:, 0], points[:, 1], SIDE_SIGN[0]))
        left = sample_roi(source, neck_roi_theta(points[:, 2], points[:, 3], SIDE_SIGN[1]))
        return torch.stack([right, left], dim=1).reshape(-1, 1, ROI_SIZE, ROI_SIZE)

    def forward(self, image: torch.Tensor):
        points, presence, peak = self.locate(image)
        n = image.shape[0]
        context = None
        if self.regressor.uses_context:
            # one whole-image view per hip, in the ROIs' order (right, left per image)
            small = context_image(image)
            context = small[:, None].expand(n, 2, 1, CONTEXT_SIZE, CONTEXT_SIZE).reshape(-1, 1, CONTEXT_SIZE,
                                                                                       CONTEXT_SIZE)
        bmd, embedding = self.regressor(self.rois(image, points), context)
        return bmd.reshape(n, 2), points, presence, peak, embedding.reshape(n, 2, self.regressor.embed_dim)
