"""``sonogate export``: a training run -> a model bundle (sonogate.export.bundle).

Imports without torch, like ``sonogate.models.cli``: the torch-free runtime install builds the same command line,
and only running the command needs the ``train`` extra.
"""

from __future__ import annotations

import argparse
import sys

from sonogate.models.cli import need_torch, positive


def register(subparsers) -> None:
    """Add the ``export`` sub-command to an argparse sub-parser collection."""
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
    e.add_argument("--calib-frames", type=positive(int), default=200, help="frames used for INT8 calibration")
    e.add_argument("--no-int8", action="store_true", help="skip model.int8.onnx")
    e.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO IR")
    e.add_argument(
        "--openvino", action="store_true", help="also write the OpenVINO IR where the task does not by default (X-ray)"
    )
    e.add_argument("--force", action="store_true", help="overwrite a non-empty BUNDLE folder")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=export_handler)


def export_handler(args: argparse.Namespace) -> int:
    need_torch()
    from sonogate.export.bundle import ExportOptions, export_bundle

    # --openvino / --no-openvino override the task's default (the ultrasound task writes the IR, X-ray does not).
    openvino = False if args.no_openvino else (True if args.openvino else None)
    opts = ExportOptions(
        calib_data=args.calib_data,
        parity_data=args.parity_data,
        calib_frames=args.calib_frames,
        int8=not args.no_int8,
        openvino=openvino,
        force=args.force,
        progress=not args.no_progress,
    )
    manifest_hash = export_bundle(args.run, args.out, opts, log=lambda msg: print(msg, file=sys.stderr))
    print(f"wrote bundle {args.out} (manifest sha256 {manifest_hash})")
    return 0
