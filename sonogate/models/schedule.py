"""Training helpers the from-scratch radiograph recipes share (torch): a warm-up + cosine learning-rate schedule
and an exponential moving average of the weights."""

from __future__ import annotations

import math

import torch


def warmup_cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    """Learning rate at ``step`` of ``total``: linear warm-up over ``warmup`` steps to ``base``, then cosine to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class WeightAverage:
    """Exponential moving average of every floating state entry of a model (parameters and BatchNorm statistics;
    integer entries are copied). ``state`` is a state dict a fresh model of the same shape loads."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(self.decay).add_(v.detach(), alpha=1.0 - self.decay)
            else:
                self.state[k].copy_(v)
