"""``sonogate calibrate`` and ``sonogate policy-report``: run a bundle over a labelled folder (or read a
predictions CSV), then calibrate or report with ``sonogate.calibration``.

This is the orchestration that needs a model, so it lives in runtime (which may import calibration); the
calibration package itself only fits, scores and writes. Which fit a bundle gets comes from its task's calibration
score (manifest v2 ``calibration.score``, or the task spec of a v1 bundle): "one_sided_joint_max" -> per-sweep
rule calibration, "one_sided" -> per-radiograph bounds. ``--modality us|xr`` forces one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sonogate.calibration.cli import (
    KIND_OF_SCORE,
    add_calibrate_arguments,
    add_policy_report_arguments,
    calibrate_table,
    check_policy_report_args,
    fit_options,
    policy_report_table,
    predictions_table,
)
from sonogate.calibration.fit import PredictionTable
from sonogate.errors import DataError, SonogateError


def register(subparsers) -> None:
    """Add the ``calibrate`` and ``policy-report`` subcommands (handlers set via ``set_defaults(func=...)``)."""
    p = subparsers.add_parser(
        "calibrate",
        help="fit calibration.json (affine correction + one-sided conformal bounds)",
        description="Fit calibration.json from a predictions CSV, or from a bundle run over a labelled folder "
        "(then written into the bundle, bound to its hash).",
    )
    add_calibrate_arguments(p)
    p.set_defaults(func=cmd_calibrate)
    r = subparsers.add_parser(
        "policy-report",
        help="US-only rate / miss rate / coverage over delta grids, decision curves (PNG, JSON, markdown)",
        description="Repeated random splits by subject: calibrate on some subjects, evaluate on disjoint ones; "
        "our joint per-sweep calibration beside the seed paper's separate per-frame mode.",
    )
    add_policy_report_arguments(r)
    r.set_defaults(func=cmd_policy_report)


def predict_xr_folder(
    bundle_path: str | Path,
    data_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    precision: str = "auto",
    threads: int = 1,
) -> PredictionTable:
    """Run a whole-pelvis X-ray bundle over a labelled X-ray folder (``sonogate.data.xr``).

    Output: a PredictionTable with one row per hip (id ``<image>:R`` / ``:L``), ``group`` = radiograph,
    ``subject`` = patient, names ai_deg and ce_deg (raw model outputs and labels). The model variant is the one
    the runtime uses (``precision`` "auto": INT8 when present).
    """
    from sonogate.calibration.xr import XR_NAMES
    from sonogate.data.xr import read_xr_folder
    from sonogate.runtime.model_api import create_model

    predictor = create_model(bundle_path, device=device, threads=threads, precision=precision)
    if not callable(getattr(predictor, "predict", None)):
        raise SonogateError(f"bundle {bundle_path} (task {predictor.task}) is not a whole-pelvis X-ray bundle")
    folder = read_xr_folder(data_dir)
    ids, groups, subjects, pred, true = [], [], [], [], []
    iterator = range(len(folder))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="predict", unit="radiograph")
    for i in iterator:
        out = predictor.predict(folder.load_gray(i))
        image = folder.image_paths[i].name
        for side, code in (("right", "R"), ("left", "L")):
            j = 0 if side == "right" else 2
            ids.append(f"{image}:{code}")
            groups.append(folder.image_paths[i].as_posix())
            subjects.append(folder.patients[i])
            pred.append([out.values[f"ai_deg_{side}"], out.values[f"ce_deg_{side}"]])
            true.append(folder.targets[i, j : j + 2])
    return PredictionTable(
        ids=np.array(ids),
        groups=np.array(groups),
        names=XR_NAMES,
        pred=np.array(pred),
        true=np.array(true),
        quality=np.ones(len(ids)),
        subjects=np.array(subjects),
    )


def calibration_kind(args) -> str:
    """"per_image" or "sweep_rule": ``--modality`` when given, else the bundle's task calibration score (a
    predictions CSV, or a bundle that does not load, gets the sweep rule: its own path reports the error)."""
    modality = getattr(args, "modality", "auto")
    if modality != "auto":
        return "per_image" if modality == "xr" else "sweep_rule"
    if not getattr(args, "bundle", None):
        return "sweep_rule"
    from sonogate.core.bundle import load_bundle
    from sonogate.core.registry import get_task

    try:
        bundle = load_bundle(args.bundle, verify=False)
        score = (bundle.manifest.get("calibration") or {}).get("score")
        if score is None:  # a v1 manifest: the task's spec says
            spec = get_task(bundle.task).calibration
            score = spec.score if spec is not None else None
    except SonogateError:
        return "sweep_rule"
    return KIND_OF_SCORE.get(score, "sweep_rule")


def _table(args, kind: str):
    """(table, provenance, bundle or None) of --predictions, or of the bundle run over --data."""
    if args.predictions or not args.data:
        if args.bundle and not args.data and kind == "per_image":
            raise DataError("--bundle needs --data DIR (a labelled X-ray folder)")
        table, provenance = predictions_table(args)
        return table, provenance, None
    from sonogate.core.bundle import load_bundle

    bundle = load_bundle(args.bundle)  # verifies every file: never calibrate a tampered bundle
    if kind == "per_image":
        table = predict_xr_folder(args.bundle, args.data, device=args.device, progress=True)
    else:
        from sonogate.runtime.predict import predict_folder

        table = predict_folder(args.bundle, args.data, device=args.device, progress=True)
    return table, {"source": "image_folder", "path": str(args.data), "bundle": str(args.bundle)}, bundle


def cmd_calibrate(args) -> int:
    kind = calibration_kind(args)
    options = fit_options(args)
    table, provenance, bundle = _table(args, kind)
    out = Path(args.out) if args.out else bundle.calibration_path
    return calibrate_table(args, kind, options, table, provenance, None if bundle is None else bundle.bundle_hash, out)


def cmd_policy_report(args) -> int:
    options = check_policy_report_args(args)
    table, provenance, _ = _table(args, "sweep_rule")
    return policy_report_table(args, options, table, provenance)
