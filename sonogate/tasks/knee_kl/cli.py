"""``sonogate knee-kl train | export | calibrate``: the knee_kl task's commands, named in its spec
(``parts["cli"]``). Everything heavy is imported in the handlers (the torch-free install builds the parser)."""

from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    """Add ``knee-kl`` with its three sub-commands to the ``sonogate`` command line."""
    parser = subparsers.add_parser("knee-kl", help="knee KL grade task: train, export, calibrate",
                                   description="Train the knee Kellgren-Lawrence grade model on the knee-oa-kl-xray "
                                               "folder (choices on val), export its bundle, calibrate its grade sets.")
    sub = parser.add_subparsers(dest="knee_command", required=True)
    p = sub.add_parser("train", help="train (resumable) on train, evaluate every epoch on val")
    from sonogate.tasks.knee_kl.train_args import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=_train)
    p = sub.add_parser("export", help="RUN_DIR -> bundle (INT8 ONNX, parity.json, ood.npz, manifest)")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="bundle folder")
    p.add_argument("--int8-only", action="store_true", help="drop model.onnx after the parity check (small bundle)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--calib-frames", type=int, default=200)
    p.add_argument("--member", action="append", default=[], metavar="RUN_DIR",
                   help="a further run (same input size) averaged with RUN_DIR in the graph; repeatable")
    p.set_defaults(func=_export)
    p = sub.add_parser("calibrate", help="class sets on val with the bundle's own model -> calibration.json")
    p.add_argument("bundle")
    p.add_argument("--data", required=True, help="the knee-oa-kl-xray folder")
    p.add_argument("--delta", type=float, default=0.1)
    p.set_defaults(func=_calibrate)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _train(args) -> int:
    from sonogate.models.cli import need_torch

    need_torch()
    from sonogate.tasks.knee_kl.train import train_main

    return train_main(args)


def _export(args) -> int:
    from sonogate.models.cli import need_torch

    need_torch()
    from sonogate.tasks.knee_kl.export import export_knee_bundle

    print(export_knee_bundle(args.run_dir, args.out, int8_only=args.int8_only, force=args.force,
                             calib_frames=args.calib_frames, members=tuple(args.member), log=_log))
    return 0


def _calibrate(args) -> int:
    from sonogate.tasks.knee_kl.export import calibrate_bundle

    calibrate_bundle(args.bundle, args.data, args.delta, log=_log)
    return 0
