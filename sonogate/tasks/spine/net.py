"""Vertebra completion from an ultrasound cloud and a lateral X-ray (seed 002, US-X Complete), pure PyTorch.

A lean, CPU-sized version of the paper's VRCNet-based two-stage network, exportable to ONNX:

* **Encoders** (``PointEncoder``): PCN-style PointNets (shared per-point MLP, max pool, the pooled feature
  concatenated back to every point, a second shared MLP, max pool) for the ultrasound cloud, the X-ray 2.5D
  cloud and, in training only, the complete cloud.
* **Coarse stage** (probabilistic, VRCNet's two paths): the *prior* head maps the partial-input feature to a
  Gaussian over a 64-d latent; the *posterior* head maps the complete cloud's feature to another. Training
  decodes both (completion path: the prior; reconstruction path: a sample of the posterior) and adds
  the KL terms KL(N(0, I) || posterior) + KL(stop-grad(posterior) || prior). The completion path decodes the
  prior's MEAN in training as at inference (VRCNet samples it in training; a decoder trained on samples and run
  on the mean measured 1.5-2x worse in chamfer here). Inference: no sampling, the same output for the same
  input. **Early fusion**: the ultrasound and X-ray global features are concatenated and mixed by an MLP
  before the prior head, so the coarse decoder (an MLP, 512 points) sees both.
* **X-ray seed** (part of the early fusion, modes with the X-ray at the coarse stage): strided X-ray points, each
  lifted twice (``seed_copies``) out of the mid-sagittal plane (a lateral ray through the bone enters and leaves
  it: two surface points per silhouette pixel) by a per-point MLP of its position and the coarse feature (initial
  lateral offsets -/+ ``SEED_HALF_WIDTH``, or -/+ the half path length); they make ``seed_share`` of the coarse
  cloud (0.5: a quarter of ``n_coarse`` points lifted twice), the decoder the rest. The silhouette's (y, z)
  outline, exactly what the ultrasound never sees of the body, so reaches the coarse cloud point by point instead
  of through one max-pooled global feature.
* **X-ray embedding** (``XRAY_EMBEDDINGS``): "plane" is the paper's (x = 0); "half_path" gives each X-ray point
  x = half the bone path length its ray crossed (the radiograph measures it), which the encoders see as a
  feature and the seed uses as the lift width (-/+ L / 2: the lateral walls of a convex cross-section).
* **Refinement** (deterministic, folding / offset style): every point of the coarse cloud and of the inputs is
  embedded with a one-hot source code (coarse / ultrasound / X-ray: **late fusion**); a global max pool over all
  of them, and for each coarse point local max pools over its 8 nearest ultrasound points (3D) and its 8
  nearest X-ray points (matched in the projection plane (y, z) only: the lateral coordinate is what a lateral
  radiograph loses), summed, give per-point features (one neighbour search over both clouds together let the
  dense X-ray points crowd out the ultrasound ones: in a first short run that trained worse than ultrasound
  alone); each coarse point is unfolded into 4 children by a 2 x 2 grid code and an MLP predicts each child's
  offset: 512 x 4 = 2,048 points.
* **Measured points kept** (``us_kept_share``, optional): a share of the output is the ultrasound input itself
  (every k-th input point: the clouds are furthest-point ordered), and the refined points nearest to those are
  dropped so the output stays 2,048 points (PoinTr and SnowflakeNet keep the partial input the same way). What
  the probe measured (the arch's posterior surface, jitter 0.4 mm) then reaches the output as measured, and the
  network's points go where the probe saw nothing. A top-k on distances: exportable, deterministic.

Ablation switches (``MODES``): "us" (ultrasound only, both stages), "xray" (X-ray only, both stages),
"early" (both at the coarse stage, ultrasound only at refinement), "late" (ultrasound only at the coarse stage,
both at refinement), "early+late" (both at both).

Normalisation (inside the graph, so ONNX users feed and receive mm): both clouds are shifted by the
ultrasound cloud's centroid (the X-ray cloud's in mode "xray", the only input there) and divided by
``SCALE_MM`` = 100 mm, the paper's convention (its VerSe meshes are centred and scaled by 1/100, so 0.01 is
1 mm); outputs are mapped back to mm in the input frame. Losses and ``chamfer`` work in the normalised units.

Chamfer distance is computed with ``torch.cdist`` (matrix ops, no custom kernels; partners found without
gradient, distances to them recomputed: ``nearest_squared``); nearest neighbours for the
local pooling with a matrix-product distance and ``topk``; furthest-point sampling is not used in the graph.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from sonogate.errors import SonogateError

MODES = ("us", "xray", "early", "late", "early+late")
N_POINTS = 2048
N_COARSE = 512
UP_RATIO = N_POINTS // N_COARSE
SCALE_MM = 100.0  # the paper's unit: mm / 100
LATENT_SIZE = 64
FEATURE_SIZE = 256
N_NEIGHBOURS = 8
# how the X-ray cloud's lost lateral coordinate is filled: "plane" x = 0 (the paper's z-embedding),
# "half_path" x = half the bone path length along the ray (mm; Beer-Lambert from the pixel: phantom.xray_cloud)
XRAY_EMBEDDINGS = ("plane", "half_path")
CENTRES = ("us", "xray", "dual")
# which X-ray points the seed lifts: spread over the whole silhouette, or the anterior half only (the body,
# whose convex cross-section the -/+ L / 2 lift fits; the arch is left to the decoder and the ultrasound)
SEED_REGIONS = ("all", "anterior")
# where the X-ray's mid-sagittal plane is put (a lateral radiograph has no x): "frame", at x = 0 of the input frame
# (the paper's convention: its clouds are centred on the vertebra, so x = 0 is the true mid-plane, which a real
# ultrasound frame does not give), or "us", at the ultrasound cloud's centroid x (an estimate from the input alone)
MID_PLANES = ("frame", "us")
SEED_HALF_WIDTH = 0.15  # initial lateral offset of the lifted X-ray seed points: 15 mm, a lumbar body's half width
MAX_US_KEPT_SHARE = 0.5
COMPLETE_ENCODER_POINTS = 512  # the posterior encoder sees a strided subset of the truth (training only)
INPUT_NAMES = ("us_points", "xray_points")
OUTPUT_NAMES = ("completed", "coarse")
OPSET = 17
# source codes (one-hot) of the late fusion
SOURCE_COARSE, SOURCE_US, SOURCE_XRAY = 0, 1, 2


def mode_sources(mode: str) -> dict[str, bool]:
    """Which inputs each stage uses in ``mode``: keys coarse_us, coarse_xray, refine_us, refine_xray."""
    if mode not in MODES:
        raise SonogateError(f"unknown completion mode {mode!r}; expected one of {', '.join(MODES)}")
    coarse_us = mode != "xray"
    coarse_xray = mode in ("xray", "early", "early+late")
    refine_us = mode != "xray"
    refine_xray = mode in ("xray", "late", "early+late")
    return {"coarse_us": coarse_us, "coarse_xray": coarse_xray, "refine_us": refine_us, "refine_xray": refine_xray}


# ------------------------------------------------------------------------------------------------ chamfer

def nearest_squared(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared nearest-neighbour distances both ways: (a -> b (B, Na), b -> a (B, Nb)).

    The nearest partners are found by ``torch.cdist`` without gradient; the distances to them are then
    recomputed from the coordinates, which gives the same values and the same gradient as differentiating
    the min of the full distance matrix (a min passes its gradient to the argmin only), at a fraction of the
    cost on a CPU (no (B, Na, Nb) backward pass).
    """
    with torch.no_grad():
        dist = torch.cdist(a, b, compute_mode="use_mm_for_euclid_dist")  # (B, Na, Nb)
        a_partner, b_partner = dist.argmin(dim=2), dist.argmin(dim=1)
    nearest_b = torch.gather(b, 1, a_partner.unsqueeze(2).expand(-1, -1, b.shape[2]))
    nearest_a = torch.gather(a, 1, b_partner.unsqueeze(2).expand(-1, -1, a.shape[2]))
    return ((a - nearest_b) ** 2).sum(dim=2), ((b - nearest_a) ** 2).sum(dim=2)


def chamfer(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cloud Chamfer distances of (B, Na, 3) and (B, Nb, 3) in their units, VRCNet's convention.

    Returns (cd_l1 (B,) = (mean nearest distance a->b + mean b->a) / 2, cd_l2 (B,) = mean squared nearest
    distance a->b + mean b->a).
    """
    d_ab, d_ba = nearest_squared(a, b)
    cd_l1 = (torch.sqrt(d_ab + 1e-12).mean(dim=1) + torch.sqrt(d_ba + 1e-12).mean(dim=1)) / 2
    cd_l2 = d_ab.mean(dim=1) + d_ba.mean(dim=1)
    return cd_l1, cd_l2


def gaussian_kl(mu_a, std_a, mu_b, std_b) -> torch.Tensor:
    """KL(N(mu_a, std_a) || N(mu_b, std_b)) per element (diagonal Gaussians)."""
    return torch.log(std_b / std_a) + (std_a ** 2 + (mu_a - mu_b) ** 2) / (2 * std_b ** 2) - 0.5


# ------------------------------------------------------------------------------------------------- layers

class PointEncoder(nn.Module):
    """PCN-style PointNet: (B, N, C) points -> (B, out_size) global feature (order-invariant)."""

    def __init__(self, in_channels: int = 3, width: int = 32, out_size: int = FEATURE_SIZE):
        super().__init__()
        self.first = nn.Sequential(nn.Conv1d(in_channels, width, 1), nn.ReLU(), nn.Conv1d(width, width, 1))
        self.second = nn.Sequential(nn.Conv1d(2 * width, 2 * width, 1), nn.ReLU(), nn.Conv1d(2 * width, 4 * width, 1))
        self.out = nn.Linear(4 * width, out_size)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        local = self.first(points.transpose(1, 2))
        pooled = local.max(dim=2, keepdim=True).values
        return self.out(self.second(torch.cat([local, pooled.expand_as(local)], dim=1)).max(dim=2).values)


class LinearResBlock(nn.Module):
    """VRCNet's residual MLP block: in -> in -> out with a linear shortcut."""

    def __init__(self, in_size: int, out_size: int):
        super().__init__()
        self.fc1 = nn.Linear(in_size, in_size)
        self.fc2 = nn.Linear(in_size, out_size)
        self.shortcut = nn.Linear(in_size, out_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(x)))) + self.shortcut(x)


def _gaussian(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu, raw = params.chunk(2, dim=1)
    return mu, nn.functional.softplus(raw) + 1e-4


def pairwise_squared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances (B, Na, Nb) of (B, Na, 3) and (B, Nb, 3) as |a|^2 + |b|^2 - 2 a.b: one MatMul in ONNX.
    For choosing neighbours (an index), not for a loss: rounding can make it slightly negative."""
    return (a ** 2).sum(2, keepdim=True) + (b ** 2).sum(2).unsqueeze(1) - 2 * a @ b.transpose(1, 2)


def _gather_points(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, N, C), index (B, M, K) -> (B, M, K, C) (GatherElements in ONNX)."""
    batch, m_points, k = index.shape
    flat = index.reshape(batch, m_points * k, 1).expand(-1, -1, values.shape[2])
    return torch.gather(values, 1, flat).reshape(batch, m_points, k, values.shape[2])


class Refiner(nn.Module):
    """Late-fusion refinement: coarse (B, 512, 3) + input clouds with source codes -> (B, 4 x 512, 3).

    ``two_sources``: the ultrasound and the X-ray cloud both come in (each gets its own neighbour MLP).
    ``up_ratio``: children per parent point (4: 512 -> 2,048; 1: a second step that moves each point once).
    """

    def __init__(self, feature_size: int = FEATURE_SIZE, embed: int = 32, local: int = 64, hidden: int = 128,
                 two_sources: bool = False, up_ratio: int = UP_RATIO):
        super().__init__()
        if up_ratio not in (1, UP_RATIO):
            raise SonogateError(f"a refinement step makes 1 or {UP_RATIO} children per point, not {up_ratio}")
        self.up_ratio = up_ratio
        self.embed = nn.Sequential(nn.Conv1d(6, embed, 1), nn.ReLU(), nn.Conv1d(embed, embed, 1))
        self.global_mlp = nn.Conv1d(embed, 2 * embed, 1)
        # first layer of the neighbour MLP, split: per input point (features) + per pair (relative position)
        self.local_point = nn.Linear(embed, local)
        self.local_offset = nn.Linear(3, local, bias=False)
        self.local_second = nn.Linear(local, local)
        if two_sources:  # the second input (X-ray) gets its own
            self.local_point_xray = nn.Linear(embed, local)
            self.local_offset_xray = nn.Linear(3, local, bias=False)
            self.local_second_xray = nn.Linear(local, local)
        self.parent_point = nn.Conv1d(embed + local, hidden, 1)
        self.parent_global = nn.Linear(2 * embed + feature_size, hidden)
        self.grid_code = nn.Linear(2, hidden, bias=False)
        self.child = nn.Sequential(nn.ReLU(), nn.Conv1d(hidden, 64, 1), nn.ReLU(), nn.Conv1d(64, 3, 1))
        side = torch.linspace(-0.05, 0.05, 2) if up_ratio > 1 else torch.zeros(1)
        grid = torch.stack(torch.meshgrid(side, side, indexing="ij"), dim=-1).reshape(up_ratio, 2)
        self.register_buffer("grid", grid, persistent=False)

    @staticmethod
    def _with_source(points: torch.Tensor, source: int) -> torch.Tensor:
        code = torch.zeros(points.shape[0], points.shape[1], 3, dtype=points.dtype, device=points.device)
        code[:, :, source] = 1.0
        return torch.cat([points, code], dim=2)

    @staticmethod
    def _local(coarse: torch.Tensor, xyz: torch.Tensor, embedded: torch.Tensor, source: int,
               layers: tuple[nn.Module, nn.Module, nn.Module]) -> torch.Tensor:
        """Max-pooled neighbour feature (B, Nc, L) of each coarse point over its nearest points of one input.

        X-ray points are matched in the projection plane (y, z) and their lateral offset is zeroed: a lateral
        radiograph has no x. Ultrasound points are matched in 3D.
        """
        point_layer, offset_layer, second_layer = layers
        if source == SOURCE_XRAY:
            mask = torch.tensor([0.0, 1.0, 1.0], dtype=xyz.dtype, device=xyz.device)
            coarse_used, xyz_used = coarse * mask, xyz * mask
        else:
            coarse_used, xyz_used = coarse, xyz
        with torch.no_grad():  # which neighbours: an index, no gradient
            # |a|^2 + |b|^2 - 2 a.b: one MatMul. Summing squared coordinate differences instead (a (B, Nc, N, 3)
            # broadcast) took 170 of 210 ms per vertebra in ONNX Runtime on one core and picked the same
            # neighbours up to near-ties (which no formula removes: ``parity``)
            dist2 = pairwise_squared(coarse_used, xyz_used)
            neighbours = torch.topk(dist2, N_NEIGHBOURS, dim=2, largest=False).indices  # (B, Nc, K)
        relative = _gather_points(xyz_used, neighbours) - coarse_used.unsqueeze(2)
        pair = torch.relu(_gather_points(point_layer(embedded), neighbours) + offset_layer(relative / 0.05))
        return second_layer(pair).max(dim=2).values

    def forward(self, coarse: torch.Tensor, inputs: list[tuple[torch.Tensor, int]],
                feature: torch.Tensor) -> torch.Tensor:
        batch, n_coarse, _ = coarse.shape
        tagged = [self._with_source(coarse, SOURCE_COARSE)] + [self._with_source(p, s) for p, s in inputs]
        embedded = self.embed(torch.cat(tagged, dim=1).transpose(1, 2))  # (B, E, Nc + Ni)
        global_late = self.global_mlp(embedded).max(dim=2).values  # (B, 2E): every source, one-hot coded
        local = 0.0
        start = n_coarse
        for index, (points, source) in enumerate(inputs):
            suffix = "" if index == 0 else "_xray"
            layers = (getattr(self, "local_point" + suffix), getattr(self, "local_offset" + suffix),
                      getattr(self, "local_second" + suffix))
            part = embedded[:, :, start:start + points.shape[1]].transpose(1, 2)
            local = local + self._local(coarse, points, part, source, layers)
            start = start + points.shape[1]  # not +=: under ONNX tracing the sizes are tensors, += would alter n_coarse
        parent = (self.parent_point(torch.cat([embedded[:, :, :n_coarse], local.transpose(1, 2)], dim=1))
                  + self.parent_global(torch.cat([global_late, feature], dim=1)).unsqueeze(2))  # (B, H, Nc)
        ratio = self.up_ratio
        children = parent.unsqueeze(3) + self.grid_code(self.grid).transpose(0, 1).reshape(1, -1, 1, ratio)
        offsets = self.child(children.reshape(batch, -1, n_coarse * ratio))  # (B, 3, Nc * R)
        centres = coarse.unsqueeze(2).expand(-1, -1, ratio, -1).reshape(batch, n_coarse * ratio, 3)
        return centres + offsets.transpose(1, 2)


class XraySeed(nn.Module):
    """Lift X-ray silhouette points (B, K, 3), x = 0, into C K coarse surface points (B, C K, 3), normalised units.

    Each point gets ``copies`` (C) copies spread evenly over x = -w .. +w, w = SEED_HALF_WIDTH (or the point's half
    path length with the "half_path" embedding), plus an offset (dx, dy, dz) per copy predicted from the point and
    the coarse feature (B, F). Two copies: the near and far wall a lateral ray crosses; more: points between them
    as well, which the offsets can move onto the end plates (flat surfaces a lateral ray runs along, which the
    two walls alone leave empty).
    """

    def __init__(self, feature_size: int = FEATURE_SIZE, hidden: int = 128, copies: int = 2):
        super().__init__()
        if copies < 2:
            raise SonogateError(f"the X-ray seed needs at least 2 copies per point, got {copies}")
        self.copies = copies
        self.point = nn.Linear(3, hidden)
        self.feature = nn.Linear(feature_size, hidden)
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3 * copies))
        self.register_buffer("fractions", torch.linspace(-1.0, 1.0, copies), persistent=False)

    def forward(self, points: torch.Tensor, feature: torch.Tensor, half_path: torch.Tensor | None = None,
                frame_shift: torch.Tensor | None = None) -> torch.Tensor:
        """``points`` (B, K, 3) at the mid-sagittal plane; ``half_path`` (B, K, 1) normalised, or None: each
        point's half path length through bone (the ``half_path`` embedding), which then sets the copies' lateral
        spread instead of SEED_HALF_WIDTH and is an input of the MLP. ``frame_shift`` (B, 1, 3) or None: the
        MLP sees the points' positions less this (the X-ray's own frame); the copies stay where the points are."""
        batch, k, _ = points.shape
        described = points if frame_shift is None else points - frame_shift
        if half_path is not None:
            described = torch.cat([half_path, described[:, :, 1:]], dim=2)
        offsets = self.mlp(self.point(described) + self.feature(feature).unsqueeze(1)).reshape(batch, k, self.copies, 3)
        width = SEED_HALF_WIDTH if half_path is None else half_path.unsqueeze(3)  # scalar or (B, K, 1, 1)
        lateral = (self.fractions.reshape(1, 1, -1, 1) * width).expand(batch, k, self.copies, 1)
        sides = torch.cat([lateral, torch.zeros_like(lateral), torch.zeros_like(lateral)], dim=3)  # (B, K, C, 3)
        lifted = points.unsqueeze(2) + sides + offsets
        return lifted.reshape(batch, self.copies * k, 3)


class CompletionNet(nn.Module):
    """The two-stage completion network (module docstring). ``forward`` takes and returns mm.

    ``n_coarse`` coarse points give 4 x ``n_coarse`` completed ones (512 -> 2,048; smaller only for quick tests).
    ``centre``: "us" centres the inputs on the ultrasound centroid; "xray" (modes using the X-ray) on
    (ultrasound x, X-ray y and z); mode "xray" always on the X-ray centroid; "dual": the output frame on the
    ultrasound centroid (the arch the probe sees stays in its own frame), while the X-ray encoder and the seed's
    offsets see the X-ray cloud about its own (y, z) centroid (the body it shows stays in its frame), and the
    fusion is told where that centroid sits.
    ``xray_seed``: lift X-ray points into ``seed_share`` of the coarse cloud (``XraySeed``; only where the mode
    uses the X-ray at the coarse stage; False: the decoder makes every coarse point, the first version's network).
    ``xray_embedding``: what the X-ray cloud's x holds (``XRAY_EMBEDDINGS``).
    ``seed_region``: the X-ray points the seed lifts (``SEED_REGIONS``).
    ``us_kept_share``: share of the completed points that are ultrasound input points (``keep_measured``; 0: none;
    only modes that take the ultrasound).
    """

    def __init__(self, mode: str = "early+late", latent_size: int = LATENT_SIZE, feature_size: int = FEATURE_SIZE,
                 encoder_width: int = 32, n_coarse: int = N_COARSE, xray_seed: bool = True, centre: str = "us",
                 xray_embedding: str = "plane", seed_share: float = 0.5, seed_copies: int = 2,
                 us_kept_share: float = 0.0, seed_region: str = "all", refine_steps: int = 1,
                 mid_plane: str = "frame", refiner_scale: int = 1):
        super().__init__()
        if centre not in CENTRES:
            raise SonogateError(f"unknown normalisation centre {centre!r}; expected one of {CENTRES}")
        if xray_embedding not in XRAY_EMBEDDINGS:
            raise SonogateError(f"unknown X-ray embedding {xray_embedding!r}; expected one of {XRAY_EMBEDDINGS}")
        self.mode = mode
        self.encoder_width = int(encoder_width)
        self.centre = centre
        self.xray_embedding = xray_embedding
        self.n_coarse = n_coarse
        self.sources = mode_sources(mode)
        if not 0.0 < seed_share < 1.0:
            raise SonogateError(f"seed_share must be within (0, 1), got {seed_share}")
        self.seed_share = float(seed_share)
        self.seed_copies = int(seed_copies)
        if seed_region not in SEED_REGIONS:
            raise SonogateError(f"unknown seed region {seed_region!r}; expected one of {SEED_REGIONS}")
        self.seed_region = seed_region
        if mid_plane not in MID_PLANES:
            raise SonogateError(f"unknown X-ray mid-plane {mid_plane!r}; expected one of {MID_PLANES}")
        self.mid_plane = mid_plane
        if not 0.0 <= us_kept_share <= MAX_US_KEPT_SHARE:
            raise SonogateError(f"us_kept_share must be within 0..{MAX_US_KEPT_SHARE}, got {us_kept_share}")
        self.us_kept_share = float(us_kept_share) if self.sources["refine_us"] else 0.0
        self.n_us_kept = round(n_coarse * UP_RATIO * self.us_kept_share)
        # X-ray points lifted (seed_copies coarse points each)
        self.n_seed = (round(n_coarse * seed_share / seed_copies)
                       if (xray_seed and self.sources["coarse_xray"]) else 0)
        self.xray_seed = XraySeed(feature_size, copies=seed_copies) if self.n_seed else None
        self.latent_size = latent_size
        self.us_encoder = PointEncoder(3, encoder_width, feature_size) if self.sources["coarse_us"] else None
        self.xray_encoder = PointEncoder(3, encoder_width, feature_size) if self.sources["coarse_xray"] else None
        self.complete_encoder = PointEncoder(3, encoder_width, feature_size)
        both = self.sources["coarse_us"] and self.sources["coarse_xray"]
        # early fusion: the two global features, concatenated, mixed back to one
        # "dual": the X-ray is encoded in its own frame, so the fusion also takes where that frame sits (y, z)
        self.dual_frame = both and centre == "dual"
        self.fusion = nn.Sequential(nn.Linear(2 * feature_size + 2 * self.dual_frame, 2 * feature_size), nn.ReLU(),
                                    nn.Linear(2 * feature_size, feature_size), nn.ReLU()) if both else None
        self.prior_head = nn.Sequential(LinearResBlock(feature_size, feature_size),
                                        LinearResBlock(feature_size, 2 * latent_size))
        self.posterior_head = LinearResBlock(feature_size, 2 * latent_size)
        self.generator = LinearResBlock(latent_size, feature_size)
        self.coarse_decoder = nn.Sequential(nn.Linear(feature_size, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                                            nn.Linear(512, (n_coarse - seed_copies * self.n_seed) * 3))
        two_sources = self.sources["refine_us"] and self.sources["refine_xray"]
        if refiner_scale < 1:
            raise SonogateError(f"refiner_scale must be >= 1, got {refiner_scale}")
        self.refiner_scale = int(refiner_scale)
        self.refiner = Refiner(feature_size, embed=32 * refiner_scale, local=64 * refiner_scale,
                               hidden=128 * refiner_scale, two_sources=two_sources)
        if refine_steps not in (1, 2):
            raise SonogateError(f"refine_steps must be 1 or 2, got {refine_steps}")
        self.refine_steps = refine_steps
        # a second step moves each completed point once more, from its own neighbourhood in the inputs
        self.second_refiner = (Refiner(feature_size, embed=16, local=32, hidden=64, two_sources=two_sources, up_ratio=1)
                               if refine_steps == 2 else None)
        if self.second_refiner is not None:  # it starts as the identity: a one-step network's weights carry over
            nn.init.zeros_(self.second_refiner.child[-1].weight)
            nn.init.zeros_(self.second_refiner.child[-1].bias)

    def split_xray(self, xray_points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(X-ray points at the mid-sagittal plane (B, N, 3) mm, their half path length (B, N, 1) mm or None).

        Embedding "half_path": the input's x is half the bone path length the ray crossed, not a position; the
        points themselves lie at x = 0 (the radiograph's mid-sagittal plane) as in the "plane" embedding."""
        if self.xray_embedding != "half_path":
            return xray_points, None
        half_path = xray_points[:, :, :1]
        return torch.cat([torch.zeros_like(half_path), xray_points[:, :, 1:]], dim=2), half_path

    def normalise(self, us_points: torch.Tensor, xray_points: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(us, xray) mm -> (us, xray) in SCALE_MM units about the centre, and the centre (B, 1, 3) mm.

        With the "half_path" embedding the returned X-ray cloud is (half path / SCALE_MM, y, z) per point: what
        the encoders and the refinement see (the refinement matches X-ray points in (y, z) only); the seed
        puts the points back at the mid-sagittal plane (``seed_points``)."""
        xray_points, half_path = self.split_xray(xray_points)
        if self.mode == "xray":
            centre = xray_points.mean(dim=1, keepdim=True)
        elif self.centre == "xray" and self.mode != "us":
            # lateral (x) from the ultrasound, (y, z) from the silhouette: the whole vertebra's outline, a steadier
            # reference than the centroid of whichever posterior patches the probe happened to see
            centre = torch.cat([us_points[:, :, :1].mean(dim=1, keepdim=True),
                                xray_points[:, :, 1:].mean(dim=1, keepdim=True)], dim=2)
        else:
            centre = us_points.mean(dim=1, keepdim=True)
        xray = (xray_points - centre) / SCALE_MM
        if half_path is not None:
            xray = torch.cat([half_path / SCALE_MM, xray[:, :, 1:]], dim=2)
        return (us_points - centre) / SCALE_MM, xray, centre

    @staticmethod
    def xray_frame_shift(xray: torch.Tensor) -> torch.Tensor:
        """(B, 1, 3): the origin of the X-ray's own frame in the normalised one: (0, centroid y, centroid z)."""
        yz = xray[:, :, 1:].mean(dim=1, keepdim=True)
        return torch.cat([torch.zeros_like(yz[:, :, :1]), yz], dim=2)

    def condition(self, us: torch.Tensor, xray: torch.Tensor) -> torch.Tensor:
        """Global feature (B, F) of the partial inputs the coarse stage uses (early fusion when both). Centre
        "dual": the X-ray encoder sees the cloud about its own (y, z) centroid and the fusion that centroid's
        position in the ultrasound-centred frame."""
        if self.fusion is not None:
            if self.dual_frame:
                shift = self.xray_frame_shift(xray)
                return self.fusion(torch.cat([self.us_encoder(us), self.xray_encoder(xray - shift),
                                              shift[:, 0, 1:]], dim=1))
            return self.fusion(torch.cat([self.us_encoder(us), self.xray_encoder(xray)], dim=1))
        return self.us_encoder(us) if self.us_encoder is not None else self.xray_encoder(xray)

    def seed_points(self, xray: torch.Tensor,
                    centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``n_seed`` X-ray points (B, K, 3) the seed lifts: every (N // K)-th point (the phantom's and the
        runtime's clouds are furthest-point ordered, so a stride spreads them over the silhouette), at the
        mid-sagittal plane, and their half path lengths (B, K, 1) (None with the "plane" embedding).
        ``xray`` as ``normalise`` returns it, ``centre`` (B, 1, 3) mm."""
        if self.seed_region == "anterior":
            # twice as many strided candidates, then the most anterior (lowest y) half of them
            stride = max(1, xray.shape[1] // (2 * self.n_seed))
            candidates = xray[:, ::stride][:, :2 * self.n_seed]
            with torch.no_grad():
                front = torch.topk(candidates[:, :, 1], self.n_seed, dim=1, largest=False).indices
                front = torch.sort(front, dim=1).values
            chosen = torch.gather(candidates, 1, front.unsqueeze(2).expand(-1, -1, 3))
        else:
            stride = max(1, xray.shape[1] // self.n_seed)
            chosen = xray[:, ::stride][:, :self.n_seed]
        if self.xray_embedding != "half_path":
            return chosen, None
        # normalised x = 0 is the centre's x, the ultrasound centroid's in every mode that takes the ultrasound
        mid_plane_x = (torch.zeros_like(centre[:, :, :1]) if self.mid_plane == "us"
                       else -centre[:, :, :1] / SCALE_MM).expand(-1, chosen.shape[1], 1)
        return torch.cat([mid_plane_x, chosen[:, :, 1:]], dim=2), chosen[:, :, :1]

    def decode_coarse(self, feature: torch.Tensor, latent: torch.Tensor, xray: torch.Tensor | None = None,
                      centre: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(coarse (B, n_coarse, 3) normalised, the feature the refinement sees (B, F)). ``xray`` (normalised)
        and ``centre`` (mm, from ``normalise``) are needed when the network has an X-ray seed."""
        feature = feature + self.generator(latent)
        coarse = self.coarse_decoder(feature).reshape(feature.shape[0], -1, 3)
        if self.xray_seed is not None:
            if xray is None or centre is None:
                raise SonogateError("this completion network lifts X-ray points into its coarse cloud: pass xray "
                                    "and centre")
            points, half_path = self.seed_points(xray, centre)
            shift = self.xray_frame_shift(xray) if self.dual_frame else None
            coarse = torch.cat([coarse, self.xray_seed(points, feature, half_path, shift)], dim=1)
        return coarse, feature

    def refine(self, coarse: torch.Tensor, feature: torch.Tensor, us: torch.Tensor,
               xray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(completed cloud (B, 2048, 3), the first step's cloud (B, 2048, 3)), normalised, from the coarse one
        and the inputs this mode refines with. With one step the two are the same points before the measured
        ones are kept."""
        inputs = []
        if self.sources["refine_us"]:
            inputs.append((us, SOURCE_US))
        if self.sources["refine_xray"]:
            inputs.append((xray, SOURCE_XRAY))
        first = self.refiner(coarse, inputs, feature)
        refined = first if self.second_refiner is None else self.second_refiner(first, inputs, feature)
        return self.keep_measured(refined, us), first

    def keep_measured(self, completed: torch.Tensor, us: torch.Tensor) -> torch.Tensor:
        """``completed`` (B, M, 3) with ``n_us_kept`` of its points replaced by ultrasound points (B, N, 3): every
        (N // n)-th input point is kept, and the refined points nearest to any of them are dropped (the M - n
        farthest stay). Same units in and out; unchanged when nothing is kept."""
        if not self.n_us_kept:
            return completed
        stride = max(1, us.shape[1] // self.n_us_kept)
        kept = us[:, ::stride][:, :self.n_us_kept]
        with torch.no_grad():  # which points stay: an index, no gradient
            dist2 = pairwise_squared(completed, kept)
            stay = torch.topk(dist2.min(dim=2).values, completed.shape[1] - kept.shape[1], dim=1).indices
            stay = torch.sort(stay, dim=1).values  # the refined points keep their order: no reshuffle on near-ties
        return torch.cat([torch.gather(completed, 1, stay.unsqueeze(2).expand(-1, -1, 3)), kept], dim=1)

    def forward(self, us_points: torch.Tensor, xray_points: torch.Tensor,
                complete: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """us_points, xray_points (B, N, 3) mm [, complete (B, M, 3) mm, training only].

        Eval mode: {"completed" (B, 2048, 3) mm, "coarse" (B, 512, 3) mm}, from the prior mean.
        Train mode (needs ``complete``): the same (prior mean), plus "coarse_reconstruction"
        (B, 512, 3) mm from a sample of the posterior (the complete cloud's Gaussian) and "kl" (B,): the mean
        over latent dimensions of KL(N(0, I) || posterior) + KL(stop-grad(posterior) || prior).
        The reconstruction path stops at the coarse stage (VRCNet refines it too): it shapes the latent space,
        and skipping its refinement halves the cost of a training step on a CPU.
        """
        us, xray, centre = self.normalise(us_points, xray_points)
        feature = self.condition(us, xray)
        prior_mu, prior_std = _gaussian(self.prior_head(feature))
        if not self.training:
            coarse, refine_feature = self.decode_coarse(feature, prior_mu, xray, centre)
            completed, _ = self.refine(coarse, refine_feature, us, xray)
            return {"completed": completed * SCALE_MM + centre, "coarse": coarse * SCALE_MM + centre}
        if complete is None:
            raise SonogateError("training the completion network needs the complete clouds")
        stride = max(1, complete.shape[1] // COMPLETE_ENCODER_POINTS)
        complete_feature = self.complete_encoder((complete[:, ::stride] - centre) / SCALE_MM)
        post_mu, post_std = _gaussian(self.posterior_head(complete_feature))
        z_post = post_mu + post_std * torch.randn_like(post_std)
        # the completion path decodes the prior MEAN, exactly as inference does: a decoder trained on samples
        # (VRCNet) meets z = mean as an input it never saw, which measured 1.5-2x worse here
        coarse, refine_feature = self.decode_coarse(feature, prior_mu, xray, centre)
        completed, first_step = self.refine(coarse, refine_feature, us, xray)
        coarse_reconstruction, _ = self.decode_coarse(feature, z_post, xray, centre)
        kl = (gaussian_kl(torch.zeros_like(post_mu), torch.ones_like(post_std), post_mu, post_std).mean(dim=1)
              + gaussian_kl(post_mu.detach(), post_std.detach(), prior_mu, prior_std).mean(dim=1))
        extra = {} if self.second_refiner is None else {"first_step": first_step * SCALE_MM + centre}
        return {"completed": completed * SCALE_MM + centre, "coarse": coarse * SCALE_MM + centre,
                "coarse_reconstruction": coarse_reconstruction * SCALE_MM + centre, "kl": kl, **extra}


def training_loss(outputs: dict[str, torch.Tensor], complete: torch.Tensor, kl_weight: float = 1.0,
                  coarse_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of a training forward: CD-L1 (normalised units) of the completed cloud, ``coarse_weight`` x CD-L1 of
    the coarse clouds of both paths, plus ``kl_weight`` x KL. Returns (loss, {"cd_completed", "cd_coarse",
    "cd_reconstruction", "kl"} as floats, CDs in normalised units)."""
    target = complete / SCALE_MM  # chamfer is translation-invariant: no centring needed
    fine_cd, _ = chamfer(outputs["completed"] / SCALE_MM, target)
    coarse_cd, _ = chamfer(outputs["coarse"] / SCALE_MM, target)
    reconstruction_cd, _ = chamfer(outputs["coarse_reconstruction"] / SCALE_MM, target)
    kl = outputs["kl"].mean()
    loss = fine_cd.mean() + coarse_weight * (coarse_cd.mean() + reconstruction_cd.mean()) + kl_weight * kl
    parts = {"cd_completed": fine_cd.mean(), "cd_coarse": coarse_cd.mean(), "cd_reconstruction":
             reconstruction_cd.mean(), "kl": kl}
    if "first_step" in outputs:  # two refinement steps: the first is supervised too (SnowflakeNet's practice)
        first_cd, _ = chamfer(outputs["first_step"] / SCALE_MM, target)
        loss = loss + first_cd.mean()
        parts["cd_first_step"] = first_cd.mean()
    return loss, {k: float(v.detach()) for k, v in parts.items()}


PARITY_ATOL_MM = 1e-3
PARITY_SHARE = 0.99
PARITY_MAX_MM = 2.0


def parity(got, expected) -> dict:
    """How closely two runtimes' completed clouds (..., N, 3) mm agree: {"max_mm", "mean_mm", "share_within"
    (points within PARITY_ATOL_MM), "agrees"}. A few points may differ by more: the 8 nearest neighbours of a
    coarse point can include one of two near-equidistant input points (distances equal to 1e-5 relative occur on
    real clouds), and float rounding that differs between torch and ONNX Runtime then picks the other; "agrees"
    asks for >= PARITY_SHARE of the points within PARITY_ATOL_MM and none beyond PARITY_MAX_MM."""
    import numpy as np

    distance = np.linalg.norm(np.asarray(got, np.float64) - np.asarray(expected, np.float64), axis=-1)
    share = float((distance <= PARITY_ATOL_MM).mean())
    return {"max_mm": float(distance.max()), "mean_mm": float(distance.mean()), "share_within": share,
            "agrees": bool(share >= PARITY_SHARE and distance.max() <= PARITY_MAX_MM)}


class ExportWrapper(nn.Module):
    """Inference graph for ONNX: (us_points, xray_points) mm -> (completed, coarse) mm."""

    def __init__(self, net: CompletionNet):
        super().__init__()
        self.net = net

    def forward(self, us_points: torch.Tensor, xray_points: torch.Tensor):
        out = self.net(us_points, xray_points)
        # an input a mode does not use stays a graph input: ONNX Runtime then accepts the same feeds for every mode
        unused = 0.0 * (us_points[:, :1, :1].sum() + xray_points[:, :1, :1].sum())
        return out["completed"] + unused, out["coarse"] + unused


def export_onnx(net: CompletionNet, path, n_points: int = N_POINTS) -> Path:
    """Write ``net`` (eval, CPU) as ONNX (opset 17, TorchScript exporter): inputs ``us_points`` and
    ``xray_points`` float32 (N, n_points, 3) mm with a dynamic batch N; outputs ``completed`` (N, 2048, 3) and
    ``coarse`` (N, 512, 3) mm. Returns the path."""
    path = Path(path)
    wrapper = ExportWrapper(net.eval().cpu()).eval()
    example = (torch.zeros(1, n_points, 3), torch.zeros(1, n_points, 3))
    axes = {name: {0: "N"} for name in INPUT_NAMES + OUTPUT_NAMES}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, example, str(path), input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), dynamic_axes=axes, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    return path
