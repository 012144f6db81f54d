"""``sonogate train`` and ``sonogate export``.

This module imports without torch: the torch-free runtime install builds the same command line, and only
running one of these two commands needs the ``train`` extra. Everything heavy is imported in the handlers.
"""

from __future__ import annotations

import argparse
import sys

from sonogate.errors import SonogateError

TRAIN_EXTRA = "training needs the train extra: pip install .[train]"


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        raise SonogateError(TRAIN_EXTRA) from None


def _positive(kind):
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
    """Add the ``train`` and ``export`` sub-commands to an argparse sub-parser collection."""
    p = subparsers.add_parser(
        "train",
        help="pretrain (SimSiam) and fit the measurement heads on a labelled folder",
        description="Split by infant, SimSiam-pretrain a 1-channel ResNet-18, freeze it, fit the heads, "
        "evaluate on the held-out infants; writes RUN_DIR/checkpoint.pt and RUN_DIR/metrics.json.",
    )
    p.add_argument(
        "--modality",
        choices=("us", "xr"),
        default="us",
        help="us: hip ultrasound (default); xr: whole AP pelvis X-ray (labels.csv with a side column, docs/xray.md)",
    )
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
    p.add_argument("--size", type=_positive(int), help="model input size S (default 160; X-ray 192)")
    p.add_argument("--ssl-epochs", type=_non_negative_int, default=10, help="SimSiam epochs (0: no pretraining)")
    p.add_argument(
        "--ssl-size", type=_positive(int), help="side of the SimSiam views (default: --size; smaller is cheaper)"
    )
    p.add_argument(
        "--ssl-lr", type=_positive(float), default=0.05, help="SimSiam base lr per 256 images (default 0.05)"
    )
    p.add_argument(
        "--head-epochs", type=_positive(int), help="epochs of head fitting on cached features (default 150; X-ray 60)"
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
    p.add_argument("--batch-size", type=_positive(int), default=64)
    p.add_argument("--heldout-fraction", type=float, default=0.2, help="share of infants held out for metrics.json")
    p.add_argument("--init-from", metavar="RUN_DIR", help="start from this run's encoder (skip or extend pretraining)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=train_handler)

    e = subparsers.add_parser(
        "export",
        help="export a trained run to a model bundle (ONNX, INT8, OpenVINO, OOD stats, parity)",
        description="Writes BUNDLE/model.onnx, model.int8.onnx, openvino/, ood.npz, parity.json and manifest.json.",
    )
    e.add_argument("--run", required=True, metavar="RUN_DIR", help="folder written by sonogate train")
    e.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write")
    e.add_argument(
        "--calib-data",
        metavar="DIR",
        help="labelled or plain image folder for INT8 calibration (default: the run's training infants)",
    )
    e.add_argument(
        "--parity-data", metavar="DIR", help="labelled folder for parity.json (default: the run's held-out infants)"
    )
    e.add_argument("--calib-frames", type=_positive(int), default=200, help="frames used for INT8 calibration")
    e.add_argument("--no-int8", action="store_true", help="skip model.int8.onnx")
    e.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO IR")
    e.add_argument("--openvino", action="store_true", help="X-ray runs: also write the OpenVINO IR (off by default)")
    e.add_argument("--force", action="store_true", help="overwrite a non-empty BUNDLE folder")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=export_handler)


def train_handler(args: argparse.Namespace) -> int:
    _need_torch()
    if not 0.0 < args.heldout_fraction < 1.0:
        raise SonogateError(f"--heldout-fraction must be between 0 and 1, not {args.heldout_fraction}")
    if args.modality == "xr":
        return _train_xr(args)
    from sonogate.models.train import TrainConfig, run_training

    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        unlabelled=list(args.unlabelled),
        val_data=args.val_data,
        size=args.size or 160,
        ssl_epochs=args.ssl_epochs,
        ssl_lr=args.ssl_lr,
        ssl_size=args.ssl_size,
        head_epochs=args.head_epochs or 150,
        head=args.head or "mlp",
        finetune_last_stage=args.finetune_last_stage,
        head_augment=args.head_augment if args.head_augment is not None else (3 if args.head == "landmark" else 0),
        batch_size=args.batch_size,
        heldout_fraction=args.heldout_fraction,
        seed=args.seed,
        device=args.device,
        init_from=args.init_from,
        progress=not args.no_progress,
    )
    metrics = run_training(cfg, log=lambda msg: print(msg, file=sys.stderr))
    if metrics:  # empty on non-zero torchrun ranks
        held = metrics["heldout"].get("vs_frame_label", {})
        summary = ", ".join(f"{k} MAE {v['mae']:.2f}" for k, v in held.items())
        print(f"wrote {args.out}/checkpoint.pt; held-out infants: {summary}")
    return 0


def _train_xr(args: argparse.Namespace) -> int:
    """``sonogate train --modality xr`` (sonogate.models.xr_train)."""
    if args.finetune_last_stage:
        raise SonogateError("--finetune-last-stage is not available for --modality xr (frozen encoder)")
    from sonogate.models.xr_train import XrTrainConfig, run_xr_training

    cfg = XrTrainConfig(
        data=args.data, out=args.out, unlabelled=list(args.unlabelled), val_data=args.val_data, size=args.size or 192,
        ssl_epochs=args.ssl_epochs, ssl_lr=args.ssl_lr, ssl_size=args.ssl_size, head=args.head or "landmark",
        head_epochs=args.head_epochs or 60, head_augment=3 if args.head_augment is None else args.head_augment,
        batch_size=args.batch_size, heldout_fraction=args.heldout_fraction, seed=args.seed, device=args.device,
        init_from=args.init_from, progress=not args.no_progress,
    )  # fmt: skip
    metrics = run_xr_training(cfg, log=lambda msg: print(msg, file=sys.stderr))
    held = metrics["heldout"]
    summary = ", ".join(f"{k} MAE {held[k]['mae']:.2f}" for k in ("ai_deg", "ce_deg") if k in held)
    if "ihdi" in held:
        summary += f", IHDI accuracy {held['ihdi']['accuracy']:.2f}"
    print(f"wrote {args.out}/checkpoint.pt; held-out patients: {summary}")
    return 0


def export_handler(args: argparse.Namespace) -> int:
    _need_torch()
    from sonogate.models.xr_train import is_xr_run

    if is_xr_run(args.run):
        from sonogate.export.xr import XrExportOptions, export_xr_bundle

        xr_opts = XrExportOptions(
            calib_data=args.calib_data, parity_data=args.parity_data, calib_frames=args.calib_frames,
            int8=not args.no_int8, openvino=args.openvino and not args.no_openvino, force=args.force,
            progress=not args.no_progress,
        )  # fmt: skip
        digest = export_xr_bundle(args.run, args.out, xr_opts, log=lambda msg: print(msg, file=sys.stderr))
        print(f"wrote X-ray bundle {args.out} (manifest sha256 {digest})")
        return 0
    from sonogate.export.bundle import ExportOptions, export_bundle

    opts = ExportOptions(
        calib_data=args.calib_data,
        parity_data=args.parity_data,
        calib_frames=args.calib_frames,
        int8=not args.no_int8,
        openvino=not args.no_openvino,
        force=args.force,
        progress=not args.no_progress,
    )
    manifest_hash = export_bundle(args.run, args.out, opts, log=lambda msg: print(msg, file=sys.stderr))
    print(f"wrote bundle {args.out} (manifest sha256 {manifest_hash})")
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
