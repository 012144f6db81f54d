"""``sonogate calibrate`` and ``sonogate policy-report``: run a bundle over a labelled folder (or read a
predictions CSV), then calibrate or report with ``sonogate.calibration``.

This is the orchestration that needs a model, so it lives in runtime (which may import calibration); the
calibration package itself only fits, scores and writes. Which fit a bundle gets comes from its task's calibration
score (the task spec of the bundle's task, or of ``--task``): "one_sided_joint_max" -> per-sweep rule calibration,
"one_sided" -> per-image bounds fitted by the task's calibrator (its spec's ``parts["calibrator"]``).
"""

from __future__ import annotations

from pathlib import Path

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


def calibration_task(args):
    """The TaskSpec whose calibration ``sonogate calibrate`` fits: ``--task`` (id or short name) when given, else
    the bundle's task; None for a predictions CSV without ``--task`` or a bundle that does not load (the per-sweep
    rule calibration then, whose own path reports the error)."""
    from sonogate.core.registry import get_task

    if getattr(args, "task", None):
        return get_task(args.task)  # TaskSpecError (one line, naming the known tasks) when unknown
    if not getattr(args, "bundle", None):
        return None
    from sonogate.core.bundle import load_bundle

    try:
        return get_task(load_bundle(args.bundle, verify=False).task)
    except SonogateError:
        return None


def calibration_kind(spec) -> str:
    """"per_image" or "sweep_rule", from the task's calibration score ("one_sided" -> per image)."""
    score = None if spec is None or spec.calibration is None else spec.calibration.score
    return KIND_OF_SCORE.get(score, "sweep_rule")


def _table(args, kind: str, calibrator=None):
    """(table, provenance, bundle or None) of --predictions, or of the bundle run over --data."""
    if args.predictions or not args.data:
        if args.bundle and not args.data and kind == "per_image":
            raise DataError("--bundle needs --data DIR (the task's labelled folder)")
        table, provenance = predictions_table(args)
        return table, provenance, None
    from sonogate.core.bundle import load_bundle

    bundle = load_bundle(args.bundle)  # verifies every file: never calibrate a tampered bundle
    if kind == "per_image":
        table = calibrator.predict_folder(args.bundle, args.data, device=args.device, progress=True)
    else:
        from sonogate.runtime.predict import predict_folder

        table = predict_folder(args.bundle, args.data, device=args.device, progress=True)
    return table, {"source": "image_folder", "path": str(args.data), "bundle": str(args.bundle)}, bundle


def cmd_calibrate(args) -> int:
    spec = calibration_task(args)
    kind = calibration_kind(spec)
    calibrator = spec.part("calibrator") if kind == "per_image" else None
    options = fit_options(args)
    table, provenance, bundle = _table(args, kind, calibrator)
    out = Path(args.out) if args.out else bundle.calibration_path
    return calibrate_table(args, kind, options, table, provenance, None if bundle is None else bundle.bundle_hash, out,
                           calibrator=calibrator)


def cmd_policy_report(args) -> int:
    options = check_policy_report_args(args)
    table, provenance, _ = _table(args, "sweep_rule")
    return policy_report_table(args, options, table, provenance)
