"""SimSiam self-supervised pretraining of the encoder on unlabelled frames (Chen & He 2021).

Two augmented views, projector + predictor, stop-gradient on the target branch, symmetric negative cosine
loss. No negatives are needed; the stop-gradient and the predictor are what prevent collapse, so we log a
collapse monitor every epoch: the per-dimension std of the l2-normalised projector output, times
sqrt(dim). About 1 means spread-out outputs; near 0 means every image maps to the same vector (collapse).

Runs in one process by default; under ``torchrun`` (RANK / WORLD_SIZE set and a process group
initialised, see ``init_distributed``) the model is wrapped in DistributedDataParallel and each rank sees
its own shard of every epoch's permutation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sonogate.models.augment import AugmentConfig, augment
from sonogate.models.encoder import FEATURE_DIM, Encoder


class SimSiam(nn.Module):
    """encoder -> projector z (dim) -> predictor p (dim). ``forward(x1, x2)`` -> (p1, p2, z1, z2)."""

    def __init__(self, encoder: Encoder, dim: int = 2048, pred_dim: int = 512) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Sequential(
            nn.Linear(FEATURE_DIM, dim, bias=False),
            nn.BatchNorm1d(dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False),
            nn.BatchNorm1d(dim, affine=False),  # as in the paper: BN without affine on the output
        )
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),
            nn.Linear(pred_dim, dim),
        )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        z1 = self.projector(self.encoder(x1))
        z2 = self.projector(self.encoder(x2))
        return self.predictor(z1), self.predictor(z2), z1, z2


def simsiam_loss(p1, p2, z1, z2) -> torch.Tensor:
    """Symmetric negative cosine with stop-gradient on z: in [-1, 1], -1 is perfect agreement."""
    return -0.5 * (
        F.cosine_similarity(p1, z1.detach(), dim=1).mean() + F.cosine_similarity(p2, z2.detach(), dim=1).mean()
    )


def collapse_std(z: torch.Tensor) -> float:
    """Mean per-dimension std of l2-normalised outputs, scaled by sqrt(dim): ~1 healthy, ~0 collapsed."""
    zn = F.normalize(z.detach().float(), dim=1)
    return float(zn.std(dim=0).mean() * math.sqrt(zn.shape[1]))


def init_distributed(device: str) -> tuple[int, int]:
    """Join the torchrun process group when RANK/WORLD_SIZE say so. Returns (rank, world_size);
    (0, 1) when not launched by torchrun. gloo on CPU, nccl on CUDA."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _to_unit_batch(images: torch.Tensor, idx: np.ndarray, device) -> torch.Tensor:
    return images[torch.from_numpy(idx)].to(device, non_blocking=True).float().div_(255.0)[:, None]


def pretrain(
    encoder: Encoder,
    images: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 64,
    base_lr: float = 0.05,
    weight_decay: float = 1e-4,
    aug: AugmentConfig | None = None,
    mean: float = 0.5,
    std: float = 0.25,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Pretrain ``encoder`` in place with SimSiam.

    Inputs: ``images`` uint8 (N, H, W) already resized to the model size; SGD with lr = base_lr * B / 256
    (B the global batch), cosine decay, fixed lr for the predictor (as in the paper). Output: one dict per
    epoch {epoch, loss, collapse_std, lr, world_size}; the loss is averaged over all ranks.
    """
    from tqdm import tqdm

    aug = aug or AugmentConfig(out_size=images.shape[-1])
    rank, world = _distributed()
    model = SimSiam(encoder).to(device)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None
        )
    n = len(images)
    per_rank = max(1, min(batch_size // world, n // world))
    steps = max(1, (n // world) // per_rank)  # drop_last: BN needs > 1 sample and even shards keep DDP in step
    lr = base_lr * per_rank * world / 256
    params = [
        {"params": list(model.encoder.parameters()) + list(model.projector.parameters()), "fix_lr": False},
        {"params": list(model.predictor.parameters()), "fix_lr": True},
    ]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    data = torch.from_numpy(np.ascontiguousarray(images))
    gen = torch.Generator(device=device).manual_seed(seed * 1000 + rank)  # different views per rank
    history: list[dict] = []
    model.train()
    for epoch in range(epochs):
        epoch_lr = lr * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))
        for group in opt.param_groups:
            group["lr"] = lr if group["fix_lr"] else epoch_lr
        order = np.random.default_rng(seed + epoch).permutation(n)  # same on every rank, then sharded
        shard = order[rank::world]
        total = torch.zeros(2, dtype=torch.float64)
        spread = []
        bar = tqdm(range(steps), desc=f"simsiam {epoch + 1}/{epochs}", disable=not progress or rank != 0, leave=False)
        for step in bar:
            x = _to_unit_batch(data, shard[step * per_rank : (step + 1) * per_rank], device)
            v1 = (augment(x, aug, gen) - mean) / std
            v2 = (augment(x, aug, gen) - mean) / std
            p1, p2, z1, z2 = net(v1, v2)
            loss = simsiam_loss(p1, p2, z1, z2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
            spread.append(collapse_std(z1))
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        row = {
            "epoch": epoch + 1,
            "loss": float(total[0] / total[1]),
            "collapse_std": float(np.mean(spread)),
            "lr": epoch_lr,
            "world_size": world,
        }
        history.append(row)
        if log is not None and rank == 0:
            log(f"simsiam epoch {row['epoch']}/{epochs}: loss {row['loss']:.4f} collapse_std {row['collapse_std']:.3f}")
    encoder.eval()
    return history


def params_checksum(module: nn.Module) -> float:
    """Sum of all parameters: equal across ranks iff DDP kept the replicas in step (used by tests/logs)."""
    return float(sum(p.detach().double().sum() for p in module.parameters()))
