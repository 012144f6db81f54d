"""The rust task's command-line hooks, named in its spec: ``sonogate phantom rust`` (``parts["phantom_cli"]``) and
``sonogate rust train | kfold | search | compare | export | calibrate`` (``parts["cli"]``). Torch is imported only
when a training or export command runs."""

from __future__ import annotations

import json
import sys

from sonogate.cli_types import positive_int
from sonogate.tasks.rust.train_args import add_common_arguments, config_from_args, floats


def add_phantom_parser(subparsers) -> None:
    """Add ``rust`` to the ``sonogate phantom`` subcommands."""
    parser = subparsers.add_parser("rust", help="tibial AP + lateral radiograph pairs + labels.csv (RUST grades)",
                                   description="Write phantom tibial shaft fracture films: DIR/<case>/ap.png, "
                                               "DIR/<case>/lat.png and DIR/labels.csv with exact per-cortex RUST "
                                               "grades; follow-up films of one patient share patient_id.")
    parser.add_argument("--n", type=positive_int, required=True, help="number of cases (AP + lateral pairs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", type=positive_int, default=384, help="image side in pixels (default 384)")
    parser.add_argument("--devices", default=None, help="detector presets, comma separated (default: all, A-E)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from sonogate.tasks.rust.phantom import phantom_main

    return phantom_main(args.out, args.n, args.seed, size=args.size, devices=args.devices)


def add_train_commands(subparsers) -> None:
    """``train``, ``kfold``, ``search``, ``compare`` under a ``sonogate rust`` parser."""
    p = subparsers.add_parser("train", help="train on a phantom folder, pick the epoch on val, test once")
    add_common_arguments(p)
    p.set_defaults(func=lambda a: _print(_train().run_train(config_from_args(a), _log)["test"]))
    p = subparsers.add_parser("kfold", help="k-fold cross-validation by patient (the seed's k = 6)")
    add_common_arguments(p)
    p.add_argument("--folds", type=int, default=6)
    p.set_defaults(func=lambda a: _print(_train().run_kfold(config_from_args(a), a.folds, _log)["summary"]))
    p = subparsers.add_parser("search", help="two-regime search: random (batch size, dropout), grid (lr x eps)")
    add_common_arguments(p)
    p.add_argument("--trials", type=int, default=8, help="regime 1 random trials")
    p.add_argument("--lrs", default="0.0005,0.001,0.002,0.004", help="regime 2 learning rates")
    p.add_argument("--epsilons", default="1e-8,1e-6,1e-4", help="regime 2 Adam epsilons")
    p.set_defaults(func=lambda a: _print(_train().run_search(config_from_args(a), a.trials, floats(a.lrs),
                                                    floats(a.epsilons), _log)["best"]))
    p = subparsers.add_parser("heads", help="ordinal heads vs one-hot refitted on a trained run's frozen features")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--steps", type=int, default=300)
    p.set_defaults(func=lambda a: _print(_train().run_heads(a.run, a.steps, _log)["rows"]))
    p = subparsers.add_parser("compare", help="ordinal heads vs one-hot, with and without class weights")
    add_common_arguments(p)
    p.add_argument("--heads", default="coral,corn,softmax")
    p.add_argument("--weight-kinds", default="none,effective")
    p.set_defaults(func=lambda a: _print(_train().run_compare(config_from_args(a), a.heads.split(","),
                                                     a.weight_kinds.split(","), _log)["rows"]))


def _train():
    from sonogate.models.cli import need_torch

    need_torch()
    from sonogate.tasks.rust import train

    return train


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _print(result) -> int:
    print(json.dumps(result, default=str)[:2000])
    return 0


def add_parser(subparsers) -> None:
    """Add ``sonogate rust`` (train, kfold, search, compare, export, calibrate)."""
    parser = subparsers.add_parser("rust", help="RUST task: train / cross-validate / search / compare / export / "
                                                "calibrate on phantom cases",
                                   description="Train and evaluate the RUST model on a phantom folder (split by "
                                               "patient), export its bundle and calibrate its sets and interval.")
    sub = parser.add_subparsers(dest="rust_command", required=True)
    add_train_commands(sub)
    p = sub.add_parser("export", help="RUN_DIR -> bundle (INT8 ONNX, parity.json, ood.npz, manifest)")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="bundle folder")
    p.add_argument("--keep-float", action="store_true", help="keep model.onnx (fp32) in the bundle")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_export)
    p = sub.add_parser("calibrate", help="class sets per cortex + interval on the total on the run's cal patients")
    p.add_argument("bundle")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="the training run (its cal / test split)")
    p.add_argument("--delta", type=float, default=0.1)
    p.set_defaults(func=_calibrate)


def _export(args) -> int:
    from sonogate.tasks.rust.export import export_rust_bundle

    _train()
    print(export_rust_bundle(args.run_dir, args.out, keep_float=args.keep_float, force=args.force, log=_log))
    return 0


def _calibrate(args) -> int:
    from sonogate.tasks.rust.export import calibrate_rust_bundle

    _print(calibrate_rust_bundle(args.bundle, args.run, args.delta, log=_log))
    return 0
