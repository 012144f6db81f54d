"""The generic trainer every task's training recipe is built from (torch).

The recipe of the seed paper, whatever the task: split by subject, SimSiam-pretrain a 1-channel ResNet-18 on the
training subjects' images (labels unused) plus any unlabelled folders, freeze it, fit small heads on cached
encoder outputs with 15 % of the training subjects picking the epoch that is kept, evaluate on the held-out
subjects, write ``RUN_DIR/checkpoint.pt`` and ``RUN_DIR/metrics.json``.

What is task-only (targets, augmentation, losses, metrics, the network's head) stays with the task, in
``sonogate/tasks/<id>/train.py``; ``sonogate train`` finds a task's recipe through its spec (``parts["trainer"]``,
a ``TaskTrainer``); each task's network and in-graph geometry live in its package too (the hip ultrasound's:
``sonogate.tasks.hip_us.net`` and ``sonogate.tasks.hip_us.geometry``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sonogate.errors import DataError, SonogateError

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"


@dataclass
class TrainConfigBase:
    """What every task's run is decided by (saved in the checkpoint; the seed makes it reproducible on one
    device). A task's config extends it with its own options and defaults."""

    data: str
    out: str
    unlabelled: list[str] = field(default_factory=list)
    val_data: str | None = None
    size: int = 160
    mean: float = 0.5
    std: float = 0.25
    ssl_epochs: int = 10
    ssl_lr: float = 0.05
    ssl_size: int | None = None  # side of the SimSiam views (default: size); smaller is cheaper on a CPU
    ssl_crop_scale: float = 0.35
    batch_size: int = 64
    head: str = "mlp"
    head_epochs: int = 150
    head_lr: float = 1e-3
    head_batch_size: int = 32
    head_weight_decay: float = 0.05
    head_augment: int = 0  # warped + jittered copies per training image for the heads (cached, frozen encoder)
    # Landmark heads: weight of a loss on the measurements computed from the landmarks (0: landmarks only).
    geometry_weight: float = 0.0
    heldout_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    init_from: str | None = None
    progress: bool = True
    data_licence: str = ""


@dataclass(frozen=True)
class TaskTrainer:
    """A task's training recipe as ``sonogate train`` sees it.

    ``config_from_args(args)`` -> the task's config (its defaults for the flags left unset); ``run(cfg, log)`` ->
    metrics (empty on non-zero torchrun ranks); ``summary(metrics, out)`` -> the one line printed at the end.
    """

    task: str
    config_from_args: Callable[[Any], Any]
    run: Callable[..., dict]
    summary: Callable[[dict, str], str]


def resolve_device(name: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; an explicit "cuda" without a GPU is a user error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SonogateError("--device cuda requested but no CUDA GPU is visible to torch")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise SonogateError(f"--device must be cpu, cuda or auto, not {name!r}")
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def normalise(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) with x = (g / 255 - mean) / std (the bundle formula)."""
    return ((torch.from_numpy(images).float() / 255.0 - mean) / std)[:, None]


@torch.no_grad()
def encode(model_part: Callable, images: np.ndarray, cfg, device: str, batch: int = 64) -> list:
    """Run ``model_part`` over images in batches (normalised with ``cfg.mean`` / ``cfg.std``); returns the list of
    per-batch outputs moved to CPU."""
    outs = []
    for s in range(0, len(images), batch):
        x = normalise(images[s : s + batch], cfg.mean, cfg.std).to(device)
        out = model_part(x)
        outs.append(tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu())
    return outs


def cat_outputs(outs: list) -> tuple[torch.Tensor, ...]:
    """Per-batch outputs of ``encode`` concatenated: one tensor per output."""
    if isinstance(outs[0], tuple):
        return tuple(torch.cat([o[i] for o in outs]) for i in range(len(outs[0])))
    return (torch.cat(outs),)


def library_versions() -> dict:
    """Python, torch, torchvision and sonogate versions (checkpoint provenance)."""
    import sonogate

    v = {"python": platform.python_version(), "torch": str(torch.__version__), "sonogate": sonogate.__version__}
    try:
        import torchvision

        v["torchvision"] = str(torchvision.__version__)
    except ImportError:  # pragma: no cover
        pass
    return v


def unlabelled_paths(folders: Iterable[str], labelled: Sequence[Path]) -> list[Path]:
    """Images of the unlabelled folders that are not already labelled images (each once, in folder order)."""
    from sonogate.data.folder import list_images

    known = {p.resolve() for p in labelled}
    return [p for p in dict.fromkeys(q for d in folders for q in list_images(d)) if p.resolve() not in known]


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT if Path(run_dir).is_dir() else Path(run_dir)


def read_checkpoint(path: Path) -> Any:
    """torch.load with weights-only loading; DataError on a corrupt or foreign file."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:  # corrupt / foreign file
        raise DataError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None


def load_run_checkpoint(run_dir: str | os.PathLike, checkpoint_format: str, missing_hint: str) -> dict:
    """RUN_DIR/checkpoint.pt of the given format; DataError when absent (``missing_hint`` says what to run) or of
    another format."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise DataError(f"no training checkpoint at {path} ({missing_hint})")
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != checkpoint_format:
        kind = "X-ray " if "xr" in checkpoint_format else ""
        raise DataError(f"{path} is not a sonogate {kind}training checkpoint ({checkpoint_format})")
    return ckpt


def encoder_state(run_dir: str | os.PathLike) -> dict:
    """Encoder weights of any sonogate run (every task stores them under ``encoder.``)."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise DataError(f"no training checkpoint at {path}")
    state = read_checkpoint(path)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise DataError(f"{path} is not a sonogate training checkpoint")
    return {k[len("encoder.") :]: v for k, v in state["state_dict"].items() if k.startswith("encoder.")}


def pretrained_encoder(cfg, ssl_images: np.ndarray, device: str, progress: bool, log: Callable[[str], None],
                       hflip: bool = False, world: int = 1):
    """The encoder (``cfg.init_from``'s weights when given), SimSiam-pretrained for ``cfg.ssl_epochs`` on
    ``ssl_images`` with crop, intensity, blur and noise views (and flips with ``hflip``). Returns (encoder on the
    CPU, per-epoch history)."""
    from sonogate.models.augment import AugmentConfig
    from sonogate.models.encoder import Encoder
    from sonogate.models.simsiam import pretrain

    encoder = Encoder()
    if cfg.init_from:
        encoder.load_state_dict(encoder_state(cfg.init_from))
        log(f"encoder initialised from {cfg.init_from}")
    history: list[dict] = []
    if cfg.ssl_epochs > 0:
        if len(ssl_images) < 2 * world:
            raise DataError(f"SimSiam needs at least {2 * world} images; have {len(ssl_images)}")
        aug = AugmentConfig(out_size=cfg.ssl_size or cfg.size, scale=(cfg.ssl_crop_scale, 1.0), hflip=hflip)
        history = pretrain(
            encoder, ssl_images, epochs=cfg.ssl_epochs, batch_size=cfg.batch_size, base_lr=cfg.ssl_lr, aug=aug,
            mean=cfg.mean, std=cfg.std, device=device, seed=cfg.seed, progress=progress, log=log,
        )  # fmt: skip
    encoder.to("cpu")
    return encoder, history


def inner_split(groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, inner-validation rows): 15 % of the training subjects pick the head epoch (none below 5)."""
    from sonogate.data.splits import split_by_group

    if len(set(groups)) >= 5:
        return split_by_group(groups, [0.85, 0.15], seed + 11)
    return np.arange(len(groups)), np.array([], dtype=np.int64)


def cached_head_data(model, images: np.ndarray, targets, groups: np.ndarray, cfg, device: str, augment: Callable,
                     make_cache: Callable, log: Callable[[str], None], what: str, unit: str):
    """The data a head is fitted on: the inner split by subject (``inner_split``), the fitting part with
    ``cfg.head_augment`` augmented copies (``augment(images, targets, cfg)``), each part's encoder outputs cached
    (``make_cache(images)``, model moved to ``device`` first). ``targets`` has ``take(rows)``; ``what`` (the
    head) and ``unit`` (one image) word the log line. Output: (fit cache, fit targets, validation cache or None,
    validation targets, validation rows)."""
    fit_idx, val_idx = inner_split(groups, cfg.seed)
    fit_images, fit_t = images[fit_idx], targets.take(fit_idx)
    if cfg.head_augment > 0:
        fit_images, fit_t = augment(fit_images, fit_t, cfg)
        log(f"{what}: {cfg.head_augment} augmented copies per {unit} ({len(fit_images)} cached samples)")
    model.to(device)
    cache = make_cache(fit_images)
    val_cache = make_cache(images[val_idx]) if len(val_idx) else None
    return cache, fit_t, val_cache, targets.take(val_idx), val_idx


def fit_head_epochs(
    model: torch.nn.Module,
    param_groups: list[dict],
    cfg,
    n: int,
    batch_losses: Callable[[torch.Tensor], tuple[torch.Tensor, list[float]]],
    loss_names: Sequence[str],
    *,
    desc: str,
    train_mode: Callable[[], None],
    validate: Callable[[], tuple[float, dict]] | None = None,
    postfix: Callable[[dict], dict] = lambda row: {},
) -> tuple[list[dict], int | None]:
    """The head-fitting loop: AdamW (``cfg.head_weight_decay``) with cosine decay over ``cfg.head_epochs``,
    seeded shuffles of the ``n`` cached samples in batches of ``cfg.head_batch_size`` (a last batch of one is
    skipped), the state of the epoch with the lowest ``validate()`` score restored at the end.

    ``batch_losses(idx)`` -> (loss to minimise, the ``loss_names`` values to log); ``validate()`` -> (score, row
    entries). Output: (per-epoch history rows, the epoch kept or None without validation).
    """
    from tqdm import tqdm

    opt = torch.optim.AdamW(param_groups, weight_decay=cfg.head_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.head_epochs))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    bs = max(2, min(cfg.head_batch_size, n))
    history: list[dict] = []
    best: tuple[float, dict | None, int] = (math.inf, None, 0)
    bar = tqdm(range(cfg.head_epochs), desc=desc, disable=not cfg.progress, leave=False)
    for epoch in bar:
        train_mode()
        perm = torch.randperm(n, generator=gen)
        sums, steps = np.zeros(len(loss_names)), 0
        for s in range(0, n - 1, bs):
            idx = perm[s : s + bs]
            if len(idx) < 2:
                continue
            loss, values = batch_losses(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += values
            steps += 1
        sched.step()
        row = {"epoch": epoch + 1, **{name: sums[i] / max(1, steps) for i, name in enumerate(loss_names)}}
        if validate is not None:
            model.eval()
            with torch.no_grad():
                score, extra = validate()
            row.update(extra)
            if score < best[0]:
                best = (score, {k: v.detach().clone() for k, v in model.state_dict().items()}, epoch + 1)
        history.append(row)
        bar.set_postfix(**postfix(row))
    if best[1] is not None:
        model.load_state_dict(best[1])
    return history, (best[2] if best[1] is not None else None)


def run_data(cfg, n_images: int, heldout_groups: list[str]) -> dict:
    """The checkpoint's ``data`` block: training folder, unlabelled folders, size, held-out subjects, licence."""
    return {
        "path": str(Path(cfg.data).resolve()),
        "unlabelled": [str(Path(d).resolve()) for d in cfg.unlabelled],
        "n_images": n_images,
        "heldout_groups": heldout_groups,
        "licence": cfg.data_licence,
    }


def save_run(out: Path, checkpoint: dict, metrics: dict) -> None:
    """Write RUN_DIR/checkpoint.pt (with library versions, the command and the metrics) and RUN_DIR/metrics.json."""
    checkpoint = {**checkpoint, "metrics": json.loads(json.dumps(metrics)), "versions": library_versions(),
                  "command": " ".join(sys.argv)}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out / CHECKPOINT)
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
