"""Command-line arguments of ``sonogate knee-kl train`` (torch-free, so the parser builds without torch)."""

from __future__ import annotations

import argparse

HEAD_KINDS = ("coral", "corn", "softmax")
WEIGHT_KINDS = ("none", "inverse", "effective")
# the recipe of the shipped bundle (docs/tasks/knee_kl.md); KneeTrainConfig in train.py has the same defaults
DEFAULTS = {"size": 224, "epochs": 20, "batch_size": 32, "seed": 0, "threads": 1, "feature_dim": 256, "lr": 1e-3,
            "weight_decay": 5e-4, "beta": 0.999, "dropout": 0.2, "ema": 0.995, "warmup_epochs": 0.3, "head": "softmax",
            "weights": "effective", "widths": (24, 32, 64, 128, 256)}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="the knee-oa-kl-xray folder (labels.csv with train / val)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="where last.pt, best.pt, history.json go")
    for name in ("size", "epochs", "batch_size", "seed", "threads", "feature_dim"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=DEFAULTS[name])
    for name in ("lr", "weight_decay", "beta", "dropout", "ema", "warmup_epochs"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=DEFAULTS[name])
    parser.add_argument("--head", choices=HEAD_KINDS, default=DEFAULTS["head"])
    parser.add_argument("--weights", choices=WEIGHT_KINDS, default=DEFAULTS["weights"], help="class-imbalance loss weights")
    parser.add_argument("--widths", default=",".join(map(str, DEFAULTS["widths"])), help="trunk widths, comma separated")
    parser.add_argument("--augment", choices=("none", "light", "strong"), default="light",
                        help="augmentation strength (default light)")
