"""The pure half of ``sonogate calibrate`` and ``sonogate policy-report``: their arguments, a predictions CSV read
as a table, a table calibrated (or reported on) and the result printed. Never runs a model.

The commands themselves are registered by ``sonogate.runtime.calibrate_cli``, which also runs a bundle over a
labelled folder when ``--bundle`` is given and then hands the table to the functions here (runtime may import
calibration, never the other way round). Handlers return an exit code; user errors are raised as SonogateError
subclasses (the main CLI prints one line, exit 2).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

from sonogate.calibration.aggregate import AggregationRule
from sonogate.calibration.conformal import as_fraction
from sonogate.errors import CalibrationError, DataError, SonogateError
from sonogate.measurements import RULES

# What a calibration fit is for: "sweep_rule" (frames aggregated per sweep, one rule over joint bounds; the
# ultrasound policy) or "per_image" (one-sided bounds per radiograph, the max over its hips; docs/xray.md).
CALIBRATION_KINDS = ("sweep_rule", "per_image")
# The spec's calibration score -> the fit that serves it (sonogate.core.task.CalibrationSpec.score).
KIND_OF_SCORE = {"one_sided_joint_max": "sweep_rule", "one_sided": "per_image"}


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--predictions CSV or --bundle with --data, and the options both commands share."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--predictions",
        metavar="CSV",
        help="predictions CSV: id, group, [subject], [quality], "
        "pred_<m>, true_<m> (m = alpha_deg, beta_deg, coverage_pct, ...)",
    )
    src.add_argument("--bundle", metavar="BUNDLE", help="model bundle folder: run its model over --data")
    parser.add_argument("--data", metavar="DIR", help="labelled image folder (with --bundle)")
    parser.add_argument("--device", default="auto", help="inference device for --bundle (default auto)")
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a rule threshold, e.g. alpha_deg=60 (repeatable)",
    )
    parser.add_argument("--quality-threshold", type=float, help="aggregation: standard-plane probability gate")
    parser.add_argument("--min-frames", type=int, help="aggregation: frames needed per sweep")
    parser.add_argument("--window", type=int, help="aggregation: most recent accepted frames used")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split by subject/group")


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``sonogate calibrate``."""
    add_source_arguments(p)
    p.add_argument("--delta", required=True, help="guaranteed false-reassurance probability, e.g. 0.1")
    p.add_argument("--rule", choices=sorted(RULES), default="and", help="rule family (default and)")
    p.add_argument(
        "--mode",
        choices=("joint", "separate", "bonferroni"),
        default="joint",
        help="joint (max-score, default), separate (the paper's), bonferroni",
    )
    p.add_argument(
        "--guarantee",
        choices=("marginal", "abnormal"),
        default="marginal",
        help="marginal: P(false reassurance) <= delta; abnormal: miss rate among abnormal hips <= delta",
    )
    p.add_argument("--no-affine", action="store_true", help="no affine correction (a=1, b=0), no affine split")
    p.add_argument("--affine-fraction", type=float, default=0.5, help="share of subjects fitting the affine")
    p.add_argument("--pac-gamma", metavar="G", help="training-conditional radius: coverage >= 1-delta w.p. >= 1-G")
    p.add_argument("--out", metavar="FILE.json", help="output (default BUNDLE/calibration.json with --bundle)")
    p.add_argument(
        "--task",
        default=None,
        metavar="ID",
        help="the task whose calibration to fit (id or short name, e.g. hip_xr or xr): default the bundle's task; "
        "a predictions CSV without it gets the per-sweep rule calibration",
    )
    # the former spelling (--modality us|xr): the same short names
    p.add_argument("--modality", dest="task", help=argparse.SUPPRESS)


def add_policy_report_arguments(r: argparse.ArgumentParser) -> None:
    """The arguments of ``sonogate policy-report``."""
    add_source_arguments(r)
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    r.add_argument("--deltas", default="0.05,0.1,0.2,0.3,0.4", help="comma-separated delta grid")
    r.add_argument("--targets", default="0.05,0.1", help="miss levels for the headline")
    r.add_argument("--rules", default="alpha,or,and", help="comma-separated rule families")
    r.add_argument("--splits", type=int, default=20, help="random splits by subject (default 20)")
    r.add_argument("--eval-fraction", type=float, default=0.4)
    r.add_argument("--affine-fraction", type=float, default=0.5)
    r.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")


def save_calibration(cal, out: Path) -> None:
    """Write ``cal`` (a ``CalibrationFile``) to ``out``; an OS error becomes a one-line SonogateError."""
    try:
        cal.save(out)
    except OSError as exc:
        raise SonogateError(f"cannot write {out}: {exc.strerror or exc}") from None


def parse_thresholds(items: list[str]) -> dict[str, float]:
    """``["alpha_deg=60", ...]`` -> {name: value}; SonogateError on an item that is not NAME=NUMBER."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise SonogateError(f"--threshold must look like NAME=VALUE (e.g. alpha_deg=60), got {item!r}") from None
    return out


def aggregation_from_args(args, table) -> AggregationRule:
    """The frame-aggregation rule: the table's default, overridden by --quality-threshold / --min-frames /
    --window."""
    from sonogate.calibration.fit import default_aggregation

    base = default_aggregation(table)
    return AggregationRule(
        quality_threshold=base.quality_threshold if args.quality_threshold is None else args.quality_threshold,
        min_frames=base.min_frames if args.min_frames is None else args.min_frames,
        window=base.window if args.window is None else args.window,
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def predictions_table(args):
    """(table, provenance) of --predictions; DataError when --bundle comes without --data (the bundle path is
    the runtime's: ``sonogate.runtime.calibrate_cli``)."""
    from sonogate.calibration.fit import read_predictions_csv

    if args.predictions:
        if args.data:
            raise SonogateError("--data goes with --bundle, not with --predictions")
        path = Path(args.predictions)
        table = read_predictions_csv(path)
        return table, {"source": "predictions_csv", "path": str(path), "sha256": file_sha256(path)}
    raise DataError("--bundle needs --data DIR (a labelled image folder)")


def fit_options(args) -> dict[str, Any]:
    """delta and PAC gamma of the calibrate arguments as fractions (CalibrationError when they are not)."""
    try:
        delta = as_fraction(args.delta, "--delta")
        gamma = None if args.pac_gamma is None else as_fraction(args.pac_gamma, "--pac-gamma")
    except (TypeError, ValueError) as exc:
        raise CalibrationError(str(exc)) from None
    if args.predictions and not args.out:
        raise SonogateError("--out FILE.json is required with --predictions")
    return {"delta": delta, "pac_gamma": gamma, "thresholds": parse_thresholds(args.threshold)}


def calibrate_table(args, kind: str, options: dict[str, Any], table, provenance: dict, bundle_sha256, out,
                    calibrator=None) -> int:
    """Fit, write and print a calibration of ``table`` (a PredictionTable).

    Inputs: the calibrate arguments, ``kind`` (CALIBRATION_KINDS), ``options`` from ``fit_options``, the table
    and its provenance, the bundle hash to bind to (None for a CSV), the output path and, for "per_image", the
    task's calibrator (its spec's ``parts["calibrator"]``, a ``sonogate.calibration.per_image.PerImageCalibration``).
    """
    if kind == "per_image":
        if calibrator is None:
            raise SonogateError("a per-image calibration needs the task: give --bundle or --task")
        cal = calibrator.fit(
            table, delta=options["delta"], mode=args.mode, affine=not args.no_affine, pac_gamma=options["pac_gamma"],
            seed=args.seed, affine_fraction=args.affine_fraction, bundle_sha256=bundle_sha256, data=provenance,
            thresholds=options["thresholds"], guarantee=args.guarantee,
        )  # fmt: skip
        save_calibration(cal, out)
        for line in calibrator.summary_lines(cal, args.guarantee):
            print(line)
        _print_measurements(cal, width=8)
        requirements = calibrator.requirement_lines(cal)
    else:
        from sonogate.calibration.fit import fit_calibration, requirement_text
        from sonogate.calibration.rules import describe_rule

        cal = fit_calibration(
            table, delta=options["delta"], rule=args.rule, mode=args.mode, affine=not args.no_affine,
            aggregation=aggregation_from_args(args, table), pac_gamma=options["pac_gamma"], seed=args.seed,
            affine_fraction=args.affine_fraction, bundle_sha256=bundle_sha256, data=provenance,
            thresholds=options["thresholds"], guarantee=args.guarantee,
        )  # fmt: skip
        save_calibration(cal, out)
        d = cal.data
        print(
            f"calibrated rule '{cal.rule}' ({describe_rule(cal.rule, cal.thresholds)}), mode {cal.mode}, "
            f"delta {cal.delta:g}, guarantee {args.guarantee}"
        )
        print(
            f"  {d['n_groups_usable']}/{d['n_groups']} groups usable ({d['n_rows']} rows); split by {d['split_by']}: "
            f"{d['n_groups_affine']} affine, {d['n_groups_calibration']} calibration"
            + (f"; {d['n_groups_dropped']} dropped (too few good frames)" if d["n_groups_dropped"] else "")
        )
        _print_measurements(cal, width=14)
        if cal.joint:
            print(
                f"  joint max-score: t={cal.joint['t'] if cal.joint['t'] is None else round(cal.joint['t'], 4)} "
                f"scales " + ", ".join(f"{k}={v:.2f}" for k, v in cal.joint["scales"].items())
            )
        requirements = requirement_text(cal)
    print(f"  guarantee: {cal.guarantee['statement']}")
    for line in requirements:
        print(f"  {line}")
    print(f"wrote {out}" + (f" (bound to bundle {cal.bundle_sha256[:12]})" if cal.bundle_sha256 else ""))
    return 0


def _print_measurements(cal, width: int) -> None:
    for name, mc in cal.measurements.items():
        radius = "infinite" if mc.radius is None else f"{mc.radius:.2f}"
        print(
            f"  {name:<{width}} {mc.side:<5} a={mc.a:.3f} b={mc.b:+.2f}  radius {radius:>8}  n={mc.n} k={mc.k} "
            f"(delta {mc.delta:g})"
        )


def float_list(text: str, flag: str) -> list[float]:
    try:
        values = [float(as_fraction(x.strip())) for x in text.split(",") if x.strip()]
    except (TypeError, ValueError):
        raise SonogateError(f"{flag} must be comma-separated numbers in (0, 1), got {text!r}") from None
    if not values:
        raise SonogateError(f"{flag} is empty")
    return values


def check_policy_report_args(args) -> dict[str, Any]:
    """The policy-report options parsed and checked (deltas, targets, rules, thresholds)."""
    deltas = float_list(args.deltas, "--deltas")
    targets = float_list(args.targets, "--targets")
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    unknown = [r for r in rules if r not in RULES]
    if unknown or not rules:
        raise SonogateError(f"--rules must be among {', '.join(RULES)}, got {args.rules!r}")
    if args.splits < 1:
        raise SonogateError("--splits must be >= 1")
    if not 0 < args.eval_fraction < 1 or not 0 < args.affine_fraction < 1:
        raise SonogateError("--eval-fraction and --affine-fraction must be in (0, 1)")
    return {"deltas": deltas, "targets": targets, "rules": rules, "thresholds": parse_thresholds(args.threshold)}


def policy_report_table(args, options: dict[str, Any], table, provenance: dict) -> int:
    """Write and summarise the policy report of ``table`` (options from ``check_policy_report_args``)."""
    from sonogate.calibration.report import policy_report

    try:
        report = policy_report(
            table,
            args.out,
            deltas=options["deltas"],
            seed=args.seed,
            n_splits=args.splits,
            eval_fraction=args.eval_fraction,
            affine_fraction=args.affine_fraction,
            rules=options["rules"],
            thresholds=options["thresholds"],
            aggregation=aggregation_from_args(args, table),
            targets=options["targets"],
            plots=not args.no_plots,
            source=provenance["path"],
        )
    except ImportError as exc:
        raise SonogateError(f"plots need matplotlib ({exc}); install it or pass --no-plots") from None
    labels = {
        "ours": ("ours, joint per sweep", "P(false reassurance) <= {t} guaranteed"),
        "ours_abnormal": ("ours, abnormal-conditional", "miss rate among abnormal <= {t} guaranteed"),
        "paper_frame": ("paper, separate per frame", "no rule-level guarantee"),
        "paper_cine_any_frame": ("paper, live per sweep", "no guarantee"),
    }
    for row in report["headline"]:
        target = f"{row['target']:g}"
        print(f"target {target}:")
        for method, (label, guarantee) in labels.items():
            s = row.get(method)
            if not s or s["us_only_rate"] is None:
                continue
            miss = "-" if s["miss_rate"] is None else f"{s['miss_rate']:.3f}"
            print(
                f"  {label:<28} US-only {s['us_only_rate']:.2f} (rule {s['rule']}); observed miss rate {miss}, "
                f"P(false reassurance) {s['false_reassurance']:.3f}; {guarantee.format(t=target)}"
            )
    out = Path(args.out)
    print(
        f"wrote {out / 'report.md'}, {out / 'report.json'}"
        + (f" and {len(report['files'])} PNG plots" if report["files"] else "")
    )
    return 0
