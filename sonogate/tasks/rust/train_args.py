"""Arguments of the ``sonogate rust`` training commands (torch-free: the command line builds without torch)."""

from __future__ import annotations

import argparse

from sonogate.tasks.rust.config import RustTrainConfig

HEAD_KINDS = ("coral", "corn", "softmax")  # sonogate.models.ordinal (torch) has the same names
WEIGHT_KINDS = ("none", "inverse", "effective")
CROP_KINDS = ("letterbox", "shaft")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    d = RustTrainConfig(data="", out="")
    parser.add_argument("--data", required=True, help="phantom folder (labels.csv + <case>/ap.png, lat.png)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR")
    for name in ("size", "epochs", "batch_size", "seed", "threads", "feature_dim", "max_cases", "strip_width"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "eps", "weight_decay", "beta", "dropout", "ema", "warmup_epochs"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    parser.add_argument("--crop", choices=CROP_KINDS, default=d.crop,
                        help="letterbox: whole film, size x size; shaft: a strip around the tibia, size x strip-width")
    parser.add_argument("--head", choices=HEAD_KINDS, default=d.head)
    parser.add_argument("--weights", choices=WEIGHT_KINDS, default=d.weights, help="class-imbalance loss weights")
    parser.add_argument("--widths", default=",".join(map(str, d.widths)), help="trunk widths, comma separated")
    parser.add_argument("--fractions", default=",".join(map(str, d.fractions)),
                        help="train,val,cal,test shares of patients (train command)")


def config_from_args(args) -> RustTrainConfig:
    return RustTrainConfig(
        data=args.data, out=args.out, size=args.size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        eps=args.eps, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, head=args.head,
        weights=args.weights, beta=args.beta, widths=tuple(int(w) for w in args.widths.split(",")),
        feature_dim=args.feature_dim, dropout=args.dropout, ema=args.ema,
        fractions=tuple(float(f) for f in args.fractions.split(",")), seed=args.seed, threads=args.threads,
        max_cases=args.max_cases, crop=args.crop, strip_width=args.strip_width,
    )  # fmt: skip


def floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t]
