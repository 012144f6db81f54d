"""``sonogate train`` (``sonogate export`` registers itself from ``sonogate.export.cli``).

This module imports without torch: the torch-free runtime install builds the same command line, and only
running the command needs the ``train`` extra. Everything heavy is imported in the handlers.
"""

from __future__ import annotations

import argparse
import sys

from sonogate.errors import SonogateError

TRAIN_EXTRA = "training needs the train extra: pip install .[train]"


def need_torch() -> None:
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        raise SonogateError(TRAIN_EXTRA) from None


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text}")
        return value

    return parse


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def register(subparsers) -> None:
    """Add the ``train`` sub-command to an argparse sub-parser collection."""
    p = subparsers.add_parser(
        "train",
        help="pretrain (SimSiam) and fit the measurement heads on a labelled folder",
        description="Split by infant, SimSiam-pretrain a 1-channel ResNet-18, freeze it, fit the heads, "
        "evaluate on the held-out infants; writes RUN_DIR/checkpoint.pt and RUN_DIR/metrics.json.",
    )
    p.add_argument(
        "--task",
        default="us",
        metavar="ID",
        help="the task to train, by id or short name (its spec names the recipe): us / hip_us, the hip ultrasound "
        "(default); xr / hip_xr, the whole AP pelvis X-ray (labels.csv with a side column, docs/xray.md)",
    )
    # the former spelling (--modality us|xr): the same short names
    p.add_argument("--modality", dest="task", help=argparse.SUPPRESS)
    p.add_argument("--data", required=True, help="labelled folder (labels.csv + images)")
    p.add_argument(
        "--unlabelled",
        action="append",
        default=[],
        metavar="DIR",
        help="extra image folder for pretraining (repeatable)",
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="where checkpoint.pt and metrics.json go")
    p.add_argument("--val-data", metavar="DIR", help="separate labelled folder to evaluate on (e.g. a held-out device)")
    p.add_argument("--size", type=positive(int), help="model input size S (default 160; X-ray 192)")
    p.add_argument("--ssl-epochs", type=_non_negative_int, default=10, help="SimSiam epochs (0: no pretraining)")
    p.add_argument(
        "--ssl-size", type=positive(int), help="side of the SimSiam views (default: --size; smaller is cheaper)"
    )
    p.add_argument(
        "--ssl-lr", type=positive(float), default=0.05, help="SimSiam base lr per 256 images (default 0.05)"
    )
    p.add_argument(
        "--head-epochs", type=positive(int), help="epochs of head fitting on cached features (default 150; X-ray 60)"
    )
    p.add_argument(
        "--head",
        choices=("mlp", "landmark"),
        help="mlp: paper head (ultrasound default); landmark: landmarks + geometry (X-ray default)",
    )
    p.add_argument(
        "--head-augment",
        type=_non_negative_int,
        help="warped + scanner-jittered copies per frame for head fitting (default: 3 for landmark, 0 for mlp)",
    )
    p.add_argument("--finetune-last-stage", action="store_true", help="also train the encoder's layer4 (lower lr)")
    p.add_argument("--batch-size", type=positive(int), default=64)
    p.add_argument("--heldout-fraction", type=float, default=0.2, help="share of infants held out for metrics.json")
    p.add_argument("--init-from", metavar="RUN_DIR", help="start from this run's encoder (skip or extend pretraining)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=train_handler)


def train_handler(args: argparse.Namespace) -> int:
    need_torch()
    if not 0.0 < args.heldout_fraction < 1.0:
        raise SonogateError(f"--heldout-fraction must be between 0 and 1, not {args.heldout_fraction}")
    from sonogate.core.registry import get_task

    # the task's spec names its training recipe (``parts["trainer"]``); TaskSpecError names the known tasks
    trainer = get_task(args.task).part("trainer")
    cfg = trainer.config_from_args(args)
    metrics = trainer.run(cfg, log=lambda msg: print(msg, file=sys.stderr))
    if metrics:  # empty on non-zero torchrun ranks
        print(trainer.summary(metrics, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m sonogate.models.cli train ...``), used by torchrun and tests; the
    package CLI (``sonogate``) mounts the same sub-commands through ``register``."""
    parser = argparse.ArgumentParser(prog="sonogate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SonogateError as err:
        print(f"sonogate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
