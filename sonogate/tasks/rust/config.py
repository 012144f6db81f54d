"""What decides a RUST training run (torch-free: the command line builds from it without torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RustTrainConfig:
    """Everything that decides a RUST run (saved in the checkpoint)."""

    data: str
    out: str
    size: int = 256  # letterbox: the square side; shaft: the strip's height
    crop: str = "shaft"  # "shaft" (sonogate.tasks.rust.shaft strip, the spec's inputs) or "letterbox" (square)
    strip_width: int = 96  # shaft: the strip's width (pixels)
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    eps: float = 1e-8
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    head: str = "softmax"
    weights: str = "effective"
    beta: float = 0.999
    widths: tuple[int, ...] = (16, 24, 48, 96, 192)
    feature_dim: int = 256
    dropout: float = 0.2
    ema: float = 0.99
    mean: float = 0.5
    std: float = 0.25
    fractions: tuple[float, ...] = (0.6, 0.15, 0.1, 0.15)
    seed: int = 0
    threads: int = 1
    max_cases: int = 0  # 0: every case; else the first patients up to this many cases (small runs)
