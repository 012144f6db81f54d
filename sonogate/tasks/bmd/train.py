"""Training of the ``bmd`` network (seed 003: semi-supervised BMD regression from hip radiographs), torch.

``sonogate bmd train --data DIR --out RUN [--labelled 0.1] [--method st_triplet]``:

1. **Locator** (``net.Locator``): heatmap soft-argmax landmarks (head centre and neck-box centre per hip) and a
   per-hip in-field logit, trained on every training radiograph's landmark positions (landmark positions are an
   annotation anyone can place; only the DEXA BMD is scarce). Augmentation: scale / shift, intensity (gamma,
   contrast), and shifts that move a hip out of the field (in-field target 0).
2. **Regressor** (``net.Regressor``) on 80 x 80 full-resolution neck ROIs cut (``net.neck_roi_theta``) at jittered true landmarks
   (the jitter matches the locator's error, so the regressor tolerates its own locator), on the labelled share of
   the training patients only (``labelled_fraction``, chosen by patient, seeded):
   * ``supervised``: L1 (smooth) on standardised BMD of the labelled hips;
   * ``self_training`` (the seed's method): after the supervised phase, ``rounds`` rounds in which the current
     model predicts pseudo-BMDs for the unlabelled hips (mean over ``tta`` jittered ROIs), refined iteratively
     as p_r = m p_(r-1) + (1 - m) prediction_r (``refine_momentum``), and the model is trained further on labelled
     + pseudo-labelled hips (pseudo loss weight ``pseudo_weight``, down-weighted where the jittered predictions
     disagree);
   * ``st_triplet``: self-training plus the adaptive triplet loss on the L2-normalised embeddings: for anchor a,
     positive p (nearer in BMD) and negative n of the batch, max(0, d(a, p) - d(a, n) + alpha (|y_a - y_n| -
     |y_a - y_p|) / sd), so the margin grows with the BMD difference and feature distances follow BMD distances.
3. **Evaluation** of the whole graph (locator -> ROI -> regressor, as exported) on validation patients, test
   patients and the held-out devices (E, F): Pearson r, RMSE, MAE (g/cm2), osteoporosis AUC (T <= -2.5).

Hyperparameters are chosen on the validation patients only. The checkpoint (RUN/checkpoint.pt, weights-only
loadable) is what ``sonogate export RUN`` reads; every phase is saved when done, so a killed run resumes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sonogate.errors import DataError
from sonogate.models.trainer import TaskTrainer
from sonogate.tasks.bmd.data import (
    MEAN,
    STD,
    BmdFolder,
    load_sources,
    normalise,
    read_bmd_folder,
    split_patients,
)
from sonogate.tasks.bmd.metrics import regression_block
from sonogate.tasks.bmd.net import (
    INPUT_SIZE,
    ROI_SCALE,
    ROI_SIZE,
    SIDE_SIGN,
    BmdNet,
    Locator,
    Regressor,
    RegressorEnsemble,
    context_image,
    neck_roi_theta,
    sample_roi,
    soft_argmax,
)

BMD_CHECKPOINT_FORMAT = "sonogate-bmd-v1"
TASK_ID = "bmd"
METHODS = ("supervised", "self_training", "st_triplet")


@dataclass
class BmdTrainConfig:
    """Everything a run is decided by (saved in the checkpoint)."""

    data: str
    out: str
    labelled_fraction: float = 0.10
    method: str = "st_triplet"
    seed: int = 0  # weights and batches; also the split and the labelled patients unless split_seed is set
    split_seed: int | None = None  # the patient split and the labelled patients (members of one ensemble share it)
    size: int = INPUT_SIZE
    mean: float = MEAN
    std: float = STD
    width: int = 12
    context_width: int = 0  # > 0: the regressor also sees the whole radiograph at 64 px (net.ContextEncoder)
    locator_width: int = 8
    locator_epochs: int = 6
    locator_lr: float = 2e-3
    batch_size: int = 64
    supervised_batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    supervised_steps: int = 300
    rounds: int = 3
    round_steps: int = 200
    pseudo_weight: float = 0.5
    refine_momentum: float = 0.5
    tta: int = 4
    triplet_weight: float = 0.2
    intensity_augment: float = 0.0  # strength of the ROI gamma / contrast / brightness / noise augmentation
    triplet_alpha: float = 0.5
    jitter: float = 0.006  # SD of the landmark jitter, [0, 1] units of the image (~3 px at 512)
    scale_jitter: float = 0.06
    locator: str | None = None  # a locator checkpoint to reuse (ablations share one)
    threads: int = 1
    progress: bool = True
    max_images: int | None = None


# -- small helpers ---------------------------------------------------------------------------------------------
def labelled_patients(folder: BmdFolder, train_idx: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean over ``train_idx``: radiographs of the labelled patients (a seeded ``fraction`` of the patients)."""
    patients = np.unique(folder.patients[train_idx])
    rng = np.random.default_rng([seed, 3])
    k = max(2, round(fraction * len(patients)))
    chosen = set(rng.choice(patients, k, replace=False).tolist())
    return np.array([p in chosen for p in folder.patients[train_idx]])


# -- locator ---------------------------------------------------------------------------------------------------
def _augment_locator(src: torch.Tensor, pts: torch.Tensor, present: torch.Tensor, gen: torch.Generator):
    """Batch (B, 1, 512, 512) inputs, points (B, 4, 2) in [0, 1], presence (B, 2) -> augmented 128 px images,
    points and presence: random scale 0.9-1.1, shift, a hip pushed out of the field in 25 % of the images, gamma
    and contrast changes."""
    b = src.shape[0]
    scale = 1.0 + (torch.rand(b, generator=gen) * 2 - 1) * 0.1
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * 0.06
    out_of_field = torch.rand(b, generator=gen) < 0.25
    push = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0) * (0.25 + 0.2 * torch.rand(b, generator=gen))
    shift[:, 0] = torch.where(out_of_field, push, shift[:, 0])
    # output p_out (normalised) samples the input at p_in = p_out / scale - 2 shift  => p_out = scale (p_in + 2 shift)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = 1.0 / scale
    theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = -2.0 * shift
    grid = F.affine_grid(theta, [b, 1, 128, 128], align_corners=False)
    small = F.avg_pool2d(src, 4)
    image = F.grid_sample(small, grid, mode="bilinear", padding_mode="border", align_corners=False)
    p_norm = pts * 2 - 1
    p_new = scale[:, None, None] * (p_norm + 2 * shift[:, None, :])
    new_pts = (p_new + 1) / 2
    inside = ((new_pts > 0.01) & (new_pts < 0.99)).all(-1)  # (B, 4)
    new_present = present & inside[:, 0::2] & inside[:, 1::2]
    # intensity: gray = x * std + mean; gamma and contrast on gray, back to x
    gray = (image * STD + MEAN).clamp(0, 1)
    gamma = torch.exp((torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * 0.3)
    contrast = 1.0 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * 0.2
    gray = ((gray**gamma - 0.5) * contrast + 0.5).clamp(0, 1)
    return (gray - MEAN) / STD, new_pts, new_present


def locator_loss(locator: Locator, image, pts, present):
    heat, presence = locator(image)
    points, _ = soft_argmax(heat)
    mask = torch.stack([present[:, 0], present[:, 0], present[:, 1], present[:, 1]], 1).float()
    coord = (torch.abs(points - pts).sum(-1) * mask).sum() / mask.sum().clamp(min=1)
    # a Gaussian target distribution (1 heatmap cell SD) keeps the heatmaps peaked: the peak is a confidence
    n, k, h, w = heat.shape
    ys = (torch.arange(h) + 0.5) / h
    xs = (torch.arange(w) + 0.5) / w
    d2 = (xs[None, None, None, :] - pts[..., 0, None, None]) ** 2 + (ys[None, None, :, None] - pts[..., 1, None, None]) ** 2
    target = torch.softmax((-d2 / (2 * (1.0 / h) ** 2)).reshape(n, k, -1), -1)
    logp = torch.log_softmax(heat.reshape(n, k, -1), -1)
    ce = (-(target * logp).sum(-1) * mask).sum() / mask.sum().clamp(min=1)
    bce = F.binary_cross_entropy_with_logits(presence, present.float())
    return coord * 20 + 0.05 * ce + bce, coord


def train_locator(cfg: BmdTrainConfig, sources: np.ndarray, folder: BmdFolder, train_idx, val_idx,
                  log: Callable[[str], None]) -> tuple[Locator, dict]:
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    locator = Locator(cfg.locator_width)
    opt = torch.optim.AdamW(locator.parameters(), lr=cfg.locator_lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_idx) / 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.locator_lr, total_steps=cfg.locator_epochs * steps_per_epoch)
    pts_all = torch.from_numpy(folder.landmarks.astype(np.float32))
    present_all = torch.from_numpy(folder.in_field)
    for epoch in range(cfg.locator_epochs):
        locator.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        total = 0.0
        for s in tqdm(range(steps_per_epoch), desc=f"locator epoch {epoch + 1}", disable=not cfg.progress,
                      file=sys.stderr, leave=False):
            idx = perm[s * 32:(s + 1) * 32]
            src = torch.from_numpy(normalise(sources[idx]))[:, None]
            image, pts, present = _augment_locator(src, pts_all[idx], present_all[idx], gen)
            loss, _ = locator_loss(locator, image, pts, present)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        err = locator_error(locator, sources, folder, val_idx)
        log(f"locator epoch {epoch + 1}/{cfg.locator_epochs}: loss {total / steps_per_epoch:.4f}, val landmark "
            f"error {err['mean_px512']:.2f} px (512), in-field accuracy {err['in_field_accuracy']:.3f}")
    return locator.eval(), locator_error(locator, sources, folder, val_idx)


@torch.no_grad()
def locate(locator: Locator, sources: np.ndarray, idx: np.ndarray, batch: int = 64):
    """Landmarks (n, 4, 2), in-field probability (n, 2), peak (n, 4) of the radiographs ``idx``."""
    locator.eval()
    pts, pres, peaks = [], [], []
    for s in range(0, len(idx), batch):
        src = torch.from_numpy(normalise(sources[idx[s:s + batch]]))[:, None]
        heat, presence = locator(F.avg_pool2d(src, 4))
        p, peak = soft_argmax(heat)
        pts.append(p.numpy()); pres.append(torch.sigmoid(presence).numpy()); peaks.append(peak.numpy())
    return np.concatenate(pts), np.concatenate(pres), np.concatenate(peaks)


def locator_error(locator: Locator, sources, folder: BmdFolder, idx) -> dict:
    pts, pres, _ = locate(locator, sources, idx)
    err = np.linalg.norm(pts - folder.landmarks[idx], axis=-1) * 512
    return {"mean_px512": float(err.mean()), "p95_px512": float(np.percentile(err, 95)),
            "in_field_accuracy": float(((pres > 0.5) == folder.in_field[idx]).mean())}


# -- regressor -------------------------------------------------------------------------------------------------
def rois_at(sources: np.ndarray, img_idx: np.ndarray, sides: np.ndarray, pts: np.ndarray,
            gen: torch.Generator | None = None, jitter: float = 0.0, scale_jitter: float = 0.0,
            with_context: bool = False):
    """ROIs (M, 1, ROI_SIZE, ROI_SIZE) of hips (radiograph ``img_idx``, side 0 right / 1 left) at landmarks ``pts``
    (M, 4, 2), optionally jittered (SD ``jitter`` of each point, scale factor SD ``scale_jitter``). With
    ``with_context``: (ROIs, each hip's whole radiograph pooled to the context encoder's 64 px)."""
    src = torch.from_numpy(normalise(sources[img_idx]))[:, None]
    p = torch.from_numpy(pts.astype(np.float32))
    side = torch.from_numpy(sides)
    head = torch.where(side[:, None] == 0, p[:, 0], p[:, 2])
    box = torch.where(side[:, None] == 0, p[:, 1], p[:, 3])
    scale = torch.ones(len(img_idx))
    if gen is not None and jitter > 0:
        head = head + torch.randn(head.shape, generator=gen) * jitter
        box = box + torch.randn(box.shape, generator=gen) * jitter
        scale = scale * torch.exp(torch.randn(len(img_idx), generator=gen) * scale_jitter)
    out = torch.empty(len(img_idx), 1, ROI_SIZE, ROI_SIZE)
    for s, sign in enumerate(SIDE_SIGN):
        m = side == s
        if m.any():
            theta = neck_roi_theta(head[m], box[m], sign, ROI_SCALE * scale[m][:, None])
            out[m] = sample_roi(src[m], theta)
    return (out, context_image(src)) if with_context else out


def regressor_inputs(reg: Regressor | RegressorEnsemble, sources: np.ndarray, img_idx: np.ndarray, sides: np.ndarray,
                     pts: np.ndarray, gen: torch.Generator | None = None, jitter: float = 0.0,
                     scale_jitter: float = 0.0):
    """What ``reg`` reads for these hips: (ROIs, their whole radiographs pooled, or None without a context
    encoder)."""
    if not reg.uses_context:
        return rois_at(sources, img_idx, sides, pts, gen, jitter, scale_jitter), None
    return rois_at(sources, img_idx, sides, pts, gen, jitter, scale_jitter, with_context=True)


def augment_intensity(roi: torch.Tensor, gen: torch.Generator, strength: float, context: torch.Tensor | None = None):
    """Per-ROI gamma, contrast, brightness and noise on the gray values (what exposure, kVp, detector response
    and processing change without changing the bone): the regressor learns to read structure, not brightness.
    ``context`` (the hips' whole radiographs, pooled) gets the same gray-value curve (not the pixel noise), so the
    whole image still tells what the curve did; returns (roi, context) then."""
    b = roi.shape[0]
    g = (roi * STD + MEAN).clamp(1e-4, 1.0)
    gamma = torch.exp(torch.randn(b, 1, 1, 1, generator=gen) * 0.25 * strength)
    contrast = torch.exp(torch.randn(b, 1, 1, 1, generator=gen) * 0.15 * strength)
    shift = torch.randn(b, 1, 1, 1, generator=gen) * 0.05 * strength
    g = g**gamma
    m = g.mean(dim=(1, 2, 3), keepdim=True)
    g = (g - m) * contrast + m + shift
    g = g + torch.randn(g.shape, generator=gen) * 0.01 * strength * torch.rand(b, 1, 1, 1, generator=gen)
    if context is None:
        return (g - MEAN) / STD
    c = (context * STD + MEAN).clamp(1e-4, 1.0) ** gamma
    c = (c - m) * contrast + m + shift
    return (g - MEAN) / STD, (c - MEAN) / STD


def adaptive_triplet(embed: torch.Tensor, y: torch.Tensor, alpha: float, gen: torch.Generator) -> torch.Tensor:
    """The adaptive triplet loss (module docstring) over one random (p, n) pair per anchor of the batch; ``y``
    standardised BMD."""
    e = F.normalize(embed, dim=1)
    b = e.shape[0]
    j = torch.randint(0, b, (b,), generator=gen)
    k = torch.randint(0, b, (b,), generator=gen)
    dj, dk = (y - y[j]).abs(), (y - y[k]).abs()
    pos = torch.where(dj <= dk, j, k)
    neg = torch.where(dj <= dk, k, j)
    d_ap = (e - e[pos]).norm(dim=1)
    d_an = (e - e[neg]).norm(dim=1)
    margin = alpha * ((y - y[neg]).abs() - (y - y[pos]).abs())
    valid = (pos != neg) & (margin > 0)
    loss = F.relu(d_ap - d_an + margin)
    return (loss * valid).sum() / valid.sum().clamp(min=1)


@dataclass
class HipSet:
    """Training hips: radiograph index, side (0 right, 1 left), target BMD (g/cm2), loss weight."""

    img: np.ndarray
    side: np.ndarray
    y: np.ndarray
    w: np.ndarray

    def __len__(self) -> int:
        return len(self.img)


def hips_of(folder: BmdFolder, idx: np.ndarray) -> HipSet:
    img = np.repeat(idx, 2)
    side = np.tile(np.array([0, 1]), len(idx))
    keep = folder.in_field[img, side]
    img, side = img[keep], side[keep]
    return HipSet(img, side, folder.bmd[img, side].astype(np.float32), np.ones(len(img), np.float32))


def fit_regressor(reg: Regressor, sources, folder: BmdFolder, sets: list[tuple[HipSet, float]], steps: int,
                  cfg: BmdTrainConfig, gen: torch.Generator, triplet: bool, desc: str, batch_size: int) -> float:
    """``steps`` AdamW steps (cosine-decayed lr) on batches that draw from each (HipSet, share) in proportion."""
    from tqdm import tqdm

    opt = torch.optim.AdamW(reg.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=max(steps, 1), pct_start=0.15)
    mean, sd = float(reg.mean), float(reg.std)
    reg.train()
    total = 0.0
    for _ in tqdm(range(steps), desc=desc, disable=not cfg.progress, file=sys.stderr, leave=False):
        parts = []
        for hips, share in sets:
            if len(hips) == 0 or share <= 0:
                continue
            k = max(1, round(batch_size * share))
            parts.append(torch.randint(0, len(hips), (k,), generator=gen).numpy())
        img = np.concatenate([sets[i][0].img[p] for i, p in enumerate(parts)])
        side = np.concatenate([sets[i][0].side[p] for i, p in enumerate(parts)])
        y = torch.from_numpy(np.concatenate([sets[i][0].y[p] for i, p in enumerate(parts)]))
        w = torch.from_numpy(np.concatenate([sets[i][0].w[p] for i, p in enumerate(parts)]))
        roi, context = regressor_inputs(reg, sources, img, side, folder.landmarks[img], gen, cfg.jitter,
                                        cfg.scale_jitter)
        if cfg.intensity_augment > 0 and context is None:
            roi = augment_intensity(roi, gen, cfg.intensity_augment)
        elif cfg.intensity_augment > 0:
            roi, context = augment_intensity(roi, gen, cfg.intensity_augment, context)
        pred, embed = reg(roi, context)
        ys = (y - mean) / sd
        loss = (F.smooth_l1_loss((pred - mean) / sd, ys, reduction="none", beta=0.5) * w).sum() / w.sum()
        if triplet and cfg.triplet_weight > 0:
            loss = loss + cfg.triplet_weight * adaptive_triplet(embed, ys, cfg.triplet_alpha, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item()
    reg.eval()
    return total / max(steps, 1)


@torch.no_grad()
def predict_hips(reg: Regressor | RegressorEnsemble, sources, img: np.ndarray, side: np.ndarray, pts: np.ndarray,
                 gen: torch.Generator | None = None, jitter: float = 0.0, repeats: int = 1,
                 batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """BMD of hips at landmarks ``pts`` (M, 4, 2): (mean over ``repeats`` jittered ROIs, their SD)."""
    reg.eval()
    runs = []
    for _ in range(repeats):
        out = []
        for s in range(0, len(img), batch):
            roi, context = regressor_inputs(reg, sources, img[s:s + batch], side[s:s + batch], pts[s:s + batch],
                                            gen, jitter)
            out.append(reg(roi, context)[0].numpy())
        runs.append(np.concatenate(out) if out else np.zeros(0))
    runs = np.stack(runs)
    return runs.mean(0), runs.std(0)


def evaluate(reg: Regressor | RegressorEnsemble, locator: Locator, sources, folder: BmdFolder,
             idx: np.ndarray) -> dict:
    """The exported pipeline on radiographs ``idx``: landmarks from the locator, ROIs there, BMD per in-field hip.
    Also the same regressor at the true landmarks (``oracle_roi``: how much the locator costs)."""
    pts, _pres, _ = locate(locator, sources, idx)
    hips = hips_of(folder, idx)
    where = {int(i): k for k, i in enumerate(idx)}
    rows = np.array([where[int(i)] for i in hips.img])
    pred, _ = predict_hips(reg, sources, hips.img, hips.side, pts[rows])
    oracle, _ = predict_hips(reg, sources, hips.img, hips.side, folder.landmarks[hips.img])
    block = regression_block(pred, hips.y)
    block["oracle_roi"] = regression_block(oracle, hips.y)
    block["n_images"] = len(idx)
    return block


def hip_predictions(reg: Regressor | RegressorEnsemble, locator: Locator, sources, folder: BmdFolder,
                    idx: np.ndarray) -> dict:
    """Per in-field hip of radiographs ``idx``: image index, side, true and predicted BMD (the exported pipeline)."""
    pts, _, _ = locate(locator, sources, idx)
    hips = hips_of(folder, idx)
    where = {int(i): k for k, i in enumerate(idx)}
    rows = np.array([where[int(i)] for i in hips.img])
    pred, _ = predict_hips(reg, sources, hips.img, hips.side, pts[rows])
    return {"img": hips.img, "side": hips.side, "true": hips.y, "pred": pred}


def train_regressor(cfg: BmdTrainConfig, sources, folder: BmdFolder, train_idx, labelled_mask, val_idx,
                    locator: Locator, log: Callable[[str], None],
                    save_phase: Callable[[str, Regressor], None] | None = None) -> tuple[Regressor, list[dict]]:
    """The regressor by ``cfg.method`` (module docstring). Returns it and the validation figures per phase;
    ``save_phase(phase, regressor)`` after each phase (so an earlier phase can be chosen on validation later)."""
    if cfg.method not in METHODS:
        raise DataError(f"--method must be one of {', '.join(METHODS)}, not {cfg.method!r}")
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    torch.manual_seed(cfg.seed + 1)
    labelled = hips_of(folder, train_idx[labelled_mask])
    unlabelled = hips_of(folder, train_idx[~labelled_mask])
    reg = Regressor(cfg.width, cfg.context_width)
    reg.mean.fill_(float(labelled.y.mean()))
    reg.std.fill_(float(labelled.y.std() + 1e-6))
    history = []
    loss = fit_regressor(reg, sources, folder, [(labelled, 1.0)], cfg.supervised_steps, cfg, gen,
                         triplet=cfg.method == "st_triplet", desc="supervised", batch_size=cfg.supervised_batch_size)
    val = evaluate(reg, locator, sources, folder, val_idx)
    history.append({"phase": "supervised", "loss": round(loss, 4), "val": val})
    if save_phase:
        save_phase("supervised", reg)
    log(f"supervised ({len(labelled)} labelled hips, {cfg.supervised_steps} steps): val r {val['r']:.3f}, "
        f"RMSE {val['rmse']:.4f}")
    if cfg.method == "supervised" or len(unlabelled) == 0:
        return reg, history
    pseudo = None
    for r in range(cfg.rounds):
        pred, spread = predict_hips(reg, sources, unlabelled.img, unlabelled.side,
                                    folder.landmarks[unlabelled.img], gen, cfg.jitter, cfg.tta)
        pseudo = pred if pseudo is None else cfg.refine_momentum * pseudo + (1 - cfg.refine_momentum) * pred
        # hips whose jittered predictions disagree get less weight (spread in units of the BMD SD)
        weight = cfg.pseudo_weight / (1.0 + (spread / (0.25 * float(reg.std))) ** 2)
        pseudo_set = HipSet(unlabelled.img, unlabelled.side, pseudo.astype(np.float32), weight.astype(np.float32))
        share = len(unlabelled) / (len(unlabelled) + len(labelled))
        loss = fit_regressor(reg, sources, folder, [(labelled, max(0.3, 1 - share)), (pseudo_set, min(0.7, share))],
                             cfg.round_steps, cfg, gen, triplet=cfg.method == "st_triplet",
                             desc=f"self-training round {r + 1}", batch_size=cfg.batch_size)
        val = evaluate(reg, locator, sources, folder, val_idx)
        history.append({"phase": f"round {r + 1}", "loss": round(loss, 4), "val": val})
        if save_phase:
            save_phase(f"round{r + 1}", reg)
        log(f"self-training round {r + 1}/{cfg.rounds} ({len(unlabelled)} pseudo-labelled hips): val r "
            f"{val['r']:.3f}, RMSE {val['rmse']:.4f}")
    return reg, history


# -- the run ---------------------------------------------------------------------------------------------------
def versions() -> dict:
    import platform

    return {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": str(np.__version__)}


def data_seed(cfg: BmdTrainConfig) -> int:
    """The seed of the patient split and of the labelled patients."""
    return cfg.seed if cfg.split_seed is None else cfg.split_seed


def load_run_data(cfg: BmdTrainConfig, progress: bool = True):
    folder = read_bmd_folder(cfg.data)
    if cfg.max_images:
        folder = folder.subset(np.arange(min(cfg.max_images, len(folder))))
    cache = Path(cfg.data) / f"inputs512_{len(folder)}.npy"
    sources = load_sources(folder, cache if cfg.max_images is None else None, progress)
    return folder, sources, split_patients(folder, data_seed(cfg))


def run_bmd_training(cfg: BmdTrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train (locator unless ``cfg.locator`` names one, then the regressor), evaluate, write RUN/checkpoint.pt and
    RUN/metrics.json. Returns the metrics."""
    torch.set_num_threads(max(1, cfg.threads))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    folder, sources, splits = load_run_data(cfg, cfg.progress)
    train_idx = splits["train"]
    if len(train_idx) < 10:
        raise DataError(f"{cfg.data}: only {len(train_idx)} training radiographs (need >= 10)")
    log(f"data: {len(folder)} radiographs; " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    locator_path = Path(cfg.locator) if cfg.locator else out / "locator.pt"
    if locator_path.is_file():
        state = torch.load(locator_path, map_location="cpu", weights_only=True)
        locator = Locator(state["width"])
        locator.load_state_dict(state["state"])
        locator.eval()
        loc_metrics = state["metrics"]
        log(f"locator: reused {locator_path}")
    else:
        locator, loc_metrics = train_locator(cfg, sources, folder, train_idx, splits["val"], log)
        torch.save({"width": cfg.locator_width, "state": locator.state_dict(), "metrics": loc_metrics}, locator_path)
    # the regressor learns ROIs cut at jittered true landmarks: at least as much jitter as the locator's own
    # validation error (mean 2-D error = 1.25 SD per coordinate), so it tolerates the ROI it gets at run time
    jitter = max(cfg.jitter, float(loc_metrics["mean_px512"]) / INPUT_SIZE / 1.25)
    if jitter != cfg.jitter:
        log(f"landmark jitter {cfg.jitter:.4f} -> {jitter:.4f} (the locator's validation error)")
        cfg = replace(cfg, jitter=jitter)
    labelled_mask = labelled_patients(folder, train_idx, cfg.labelled_fraction, data_seed(cfg))
    reg, history = train_regressor(cfg, sources, folder, train_idx, labelled_mask, splits["val"], locator, log,
                                   save_phase=lambda phase, r: torch.save(r.state_dict(), phase_file(out, phase)))
    metrics = {
        "method": cfg.method,
        "labelled_fraction": cfg.labelled_fraction,
        "n_labelled_images": int(labelled_mask.sum()),
        "n_unlabelled_images": int((~labelled_mask).sum()),
        "split": {k: len(v) for k, v in splits.items()},
        "locator": {"val": loc_metrics, "test": locator_error(locator, sources, folder, splits["test"]),
                    "external": locator_error(locator, sources, folder, splits["external"])},
        "history": history,
        "val": evaluate(reg, locator, sources, folder, splits["val"]),
        "heldout": evaluate(reg, locator, sources, folder, splits["test"]),
        "external": evaluate(reg, locator, sources, folder, splits["external"]),
        "train_seconds": round(time.time() - t0, 1),
    }
    ckpt = {
        "task": TASK_ID,
        "format": BMD_CHECKPOINT_FORMAT,
        "config": {**asdict(cfg), "size": INPUT_SIZE, "mean": MEAN, "std": STD},
        "data": {"path": str(Path(cfg.data).resolve()), "n_images": len(folder),
                 "unlabelled": f"{int((~labelled_mask).sum())} training radiographs without BMD (self-training)",
                 "licence": "synthetic phantom (sonogate phantom bmd), no patient data",
                 "heldout_groups": sorted(set(folder.patients[np.concatenate([splits['val'], splits['cal'],
                                                                             splits['test']])].tolist())),
                 "splits_seed": data_seed(cfg)},
        "locator": locator.state_dict(),
        "locator_width": cfg.locator_width,
        "regressor": reg.state_dict(),
        "width": cfg.width,
        "context_width": cfg.context_width,
        "metrics": metrics,
        "versions": versions(),
        "command": " ".join(sys.argv),
    }
    torch.save(ckpt, out / "checkpoint.pt")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log(f"held-out patients: r {metrics['heldout']['r']:.3f}, RMSE {metrics['heldout']['rmse']:.4f}; held-out "
        f"devices: r {metrics['external']['r']:.3f}, RMSE {metrics['external']['rmse']:.4f} ({out})")
    return metrics


def phase_file(run: str | Path, phase: str) -> Path:
    """RUN/regressor_<phase>.pt: the regressor's weights after one training phase (supervised, round1, ...)."""
    return Path(run) / f"regressor_{phase}.pt"


def build_regressor(entry: dict) -> Regressor:
    """A regressor from a checkpoint or an ensemble member entry (``width``, ``context_width``, ``regressor``)."""
    reg = Regressor(int(entry["width"]), int(entry.get("context_width", 0)))
    reg.load_state_dict(entry["regressor"])
    return reg


def build_bmd_model(ckpt: dict) -> BmdNet:
    """The exported graph of a checkpoint (eval mode); with ``members`` (``sonogate bmd ensemble``) the regressors
    of all members behind the one locator."""
    locator = Locator(int(ckpt["locator_width"]))
    locator.load_state_dict(ckpt["locator"])
    regressors = [build_regressor(ckpt)] + [build_regressor(m) for m in ckpt.get("members", [])]
    reg = regressors[0] if len(regressors) == 1 else RegressorEnsemble(regressors)
    return BmdNet(locator, reg).eval()


# -- the ablation ----------------------------------------------------------------------------------------------
ABLATION_FRACTIONS = (0.05, 0.10, 0.25)
# The ablation's short schedule (the shared 2-core CPU): half the main run's supervised steps, two rounds of 100
# steps at batch 32 (the main run: 300 supervised steps, three rounds of 200 at batch 64).
ABLATION_STEPS = {"supervised_steps": 150, "rounds": 2, "round_steps": 100, "batch_size": 32}
# Beyond the grid: the all-labelled supervised reference (the ceiling of this network on this schedule) and the
# full method with ROI intensity augmentation.
ABLATION_EXTRA = (("supervised", 1.0, {}), ("st_triplet", 0.10, {"intensity_augment": 1.0}))


def run_ablation(data: str, out: str, locator: str, fractions=ABLATION_FRACTIONS, methods=METHODS, seed: int = 0,
                 steps: dict | None = None, log: Callable[[str], None] = print, progress: bool = False,
                 extra=ABLATION_EXTRA, with_extra: bool = True, threads: int = 1) -> dict:
    """Every (method, labelled fraction) on the schedule ``steps`` (default the short one) with one shared locator,
    then ``extra`` (method, fraction, config overrides; an override the schedule already sets is not run twice);
    OUT/<method>_<pct>[_<override>]/ per run (a finished run is skipped, so a killed ablation resumes, and processes
    given different ``fractions`` share one folder), OUT/ablation.json and OUT/ablation.md (every finished run
    of the plan)."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    table = []
    steps = steps or ABLATION_STEPS
    extra = [(m, f, o) for m, f, o in extra if any(steps.get(k) != v for k, v in o.items()) or not o]
    plan = [(m, f, {}) for f in fractions for m in methods] + (list(extra) if with_extra else [])
    for method, fraction, overrides in plan:
        suffix = "".join(f"_{k}{v:g}" for k, v in overrides.items())
        run = root / f"{method}_{round(fraction * 100):02d}{suffix}"
        if (run / "metrics.json").is_file():
            metrics = json.loads((run / "metrics.json").read_text())
        else:
            log(f"ablation: {method} at {fraction:.0%} labelled {overrides or ''}")
            cfg = BmdTrainConfig(data=data, out=str(run), labelled_fraction=fraction, method=method, seed=seed,
                                 locator=locator, progress=progress, threads=threads, **{**steps, **overrides})
            metrics = run_bmd_training(cfg, log)
        table.append({"method": method, "labelled_fraction": fraction, "overrides": overrides,
                      "n_labelled_images": metrics["n_labelled_images"],
                      **{k: {m: metrics[k][m] for m in ("r", "rmse", "mae", "osteoporosis_auc", "n_hips")}
                         for k in ("val", "heldout", "external")}})
        result = {"schedule": steps, "seed": seed, "data": str(Path(data).resolve()), "rows": table}
        (root / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
        (root / "ablation.md").write_text(ablation_markdown(result))
    return result


def ablation_markdown(result: dict) -> str:
    names = {"supervised": "supervised only", "self_training": "+ self-training", "st_triplet": "+ adaptive triplet"}
    lines = ["| labelled | method | val r | held-out r | held-out RMSE | held-out AUC | E/F r | E/F RMSE | E/F AUC |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        v, h, e = row["val"], row["heldout"], row["external"]
        label = names.get(row["method"], row["method"]) + (" + intensity augmentation"
                                                            if row.get("overrides", {}).get("intensity_augment") else "")
        lines.append(f"| {row['labelled_fraction']:.0%} ({row['n_labelled_images']} images) | "
                     f"{label} | {v['r']:.3f} | {h['r']:.3f} | {h['rmse']:.3f} | "
                     f"{h['osteoporosis_auc']:.3f} | {e['r']:.3f} | {e['rmse']:.3f} | {e['osteoporosis_auc']:.3f} |")
    return "\n".join(lines) + "\n"


# -- ``sonogate train --task bmd`` -----------------------------------------------------------------------------
def config_from_args(args) -> BmdTrainConfig:
    """The generic ``sonogate train`` flags -> the main recipe's config (10 % labelled, self-training + adaptive
    triplet); ``sonogate bmd train`` has the task's own flags (labelled share, method, schedule)."""
    return BmdTrainConfig(data=args.data, out=args.out, seed=int(getattr(args, "seed", 0) or 0),
                          progress=not getattr(args, "no_progress", False))


def summary(metrics: dict, out: str) -> str:
    h, e = metrics["heldout"], metrics["external"]
    return (f"bmd: held-out patients r {h['r']:.3f}, RMSE {h['rmse']:.4f} g/cm2; held-out devices r {e['r']:.3f}, "
            f"RMSE {e['rmse']:.4f} -> {out}/checkpoint.pt")


TRAINER = TaskTrainer(task=TASK_ID, config_from_args=config_from_args, run=run_bmd_training, summary=summary)
