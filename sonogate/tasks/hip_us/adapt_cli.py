"""``sonogate adapt``: bring a new scanner on board (refit the out-of-distribution statistics from the site's
frames; from labelled sweeps the affine correction, optionally a ridge head on the encoder features, and the
per-sweep joint bounds; write a new, signed bundle). The work is in ``sonogate.runtime.adapt`` (torch-free)."""

from __future__ import annotations

import argparse
import shlex
import sys


def _fraction_arg(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return text


def _folds_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0 or value == 1:
        raise argparse.ArgumentTypeError(f"--check-folds must be 0 (no check) or >= 2, got {value}")
    return value


# The scanner's display orientation (sonogate.phantom.hip_us.ORIENTATIONS) -> the transform that turns it back to
# the as-acquired one the models are trained on: Graf's display is the transpose, its mirror a clockwise rotation.
ORIENTATION_TRANSFORMS = {"horizontal": "", "graf": "transpose", "graf_mirrored": "rotate_90_ccw"}


def cmd_adapt(args) -> int:
    from sonogate.calibration.conformal import as_fraction
    from sonogate.calibration.site import SiteOptions
    from sonogate.errors import CalibrationError
    from sonogate.runtime.adapt import run_adapt, summary_json

    try:
        delta = as_fraction(args.delta, "--delta")
    except (TypeError, ValueError) as exc:
        raise CalibrationError(str(exc)) from None
    options = SiteOptions(delta=delta, rule=args.rule, ridge=args.ridge, affine=not args.no_affine,
                          fit_fraction=float(args.fit_fraction), seed=args.seed, check_folds=args.check_folds)
    command = "sonogate " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""
    try:  # hold numpy's BLAS to --threads as well: spinning BLAS threads on a busy 2-core cart cost 10x
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(args.threads)
    except ImportError:  # optional; OPENBLAS_NUM_THREADS=1 in the environment does the same
        limiter = None
    try:
        result = run_adapt(args.bundle, args.data, args.out, options, extra_frames=args.frames, key=args.key,
                           audit=args.audit, device=args.device, threads=args.threads, precision=args.precision,
                           progress=not args.no_progress, command=command,
                           transform=None if args.orientation is None else ORIENTATION_TRANSFORMS[args.orientation])
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
    if args.json:
        print(summary_json(result))
        return 0
    adaptation = result["adaptation"]
    data = result["data"]
    print(f"site data {data['path']}: {data['n_frames']} frames, {data['n_labelled_frames']} labelled, "
          f"{data['n_sweeps']} labelled sweeps of {data['n_infants']} infants (sha256 {data['sha256'][:12]})")
    for kind, stats in adaptation.ood.items():
        if stats is not None:
            print(f"  out-of-distribution {kind} statistics refitted on {stats['n_train']} frames, threshold "
                  f"{stats['threshold']:.2f}")
    cal = adaptation.calibration
    if cal is None:
        print("  no labelled sweeps: no calibration written; the bundle measures on this scanner but never "
              "recommends until labelled sweeps are adapted (sonogate label, then sonogate adapt)")
    else:
        s = adaptation.summary
        head = adaptation.head
        print(f"  head: {'ridge on the features for ' + ', '.join(head.names) if head else 'the model own output'}"
              f"; affine on {s['n_fit_sweeps']} sweeps, bounds on {s['n_cal_sweeps']} sweeps "
              f"(rule {cal.rule}, delta {cal.delta:g}, joint)")
        for name, mc in cal.measurements.items():
            radius = "infinite" if mc.radius is None else f"{mc.radius:.2f}"
            print(f"  {name:<14} a={mc.a:.3f} b={mc.b:+.2f} radius {radius} (n={mc.n}, k={mc.k})")
        check = adaptation.check
        if check and check.get("folds"):
            fr = check["false_reassurance_ci95"]
            cover = check.get("joint_coverage")
            print(f"  held-out check ({check['folds']} folds by infant, {check['n_sweeps']} sweeps): US-only "
                  f"{check['us_only_rate']:.2f}, false reassurance {check['n_false_reassurance']}/{check['n_sweeps']}"
                  f" (95% CI {fr[0]:.3f}-{fr[1]:.3f}), joint coverage "
                  f"{'-' if cover is None else format(cover, '.3f')}, alpha MAE "
                  f"{'-' if check.get('alpha_mae_deg') is None else format(check['alpha_mae_deg'], '.2f')} deg"
                  + (f"; {len(check['refused_folds'])} fold(s) refused" if check.get("refused_folds") else ""))
    print(f"wrote {result['out']} (bundle {result['bundle_sha256'][:12]}"
          f"{', signed' if result['signed'] else ''}) in {result['wall_s']:.0f} s; audit line in {result['audit']}")
    return 0


def register(subparsers) -> None:
    """Add ``adapt`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "adapt", help="adapt a bundle to a new scanner (OOD statistics, affine / ridge head, joint bounds)",
        description="Write a new bundle adapted to one site: the out-of-distribution statistics refitted on the "
                    "site's frames (unlabelled ones suffice); from labelled sweeps the affine correction, "
                    "optionally a ridge head on the encoder features (chosen by cross-validation by infant), "
                    "and the per-sweep joint bounds, with a held-out check. Torch-free.")
    p.add_argument("--bundle", required=True, help="the base bundle (verified before use)")
    p.add_argument("--data", required=True, metavar="SITE_DIR",
                   help="labels.csv + images (or DICOM cines with a frame_index column); without labels.csv: "
                        "unlabelled frames, only the OOD statistics are refitted and no calibration is written")
    p.add_argument("--out", required=True, help="new folder for the adapted bundle")
    p.add_argument("--frames", metavar="DIR", help="more unlabelled site frames for the OOD statistics")
    p.add_argument("--orientation", choices=tuple(ORIENTATION_TRANSFORMS), default=None,
                   help="how this scanner displays the hip: horizontal (as acquired: probe at the top), graf (Graf's "
                        "display: ilium vertical, probe on the left) or graf_mirrored (probe on the right); the "
                        "adapted bundle turns the image back before the model (default: as the base bundle)")
    p.add_argument("--delta", default="0.1", help="guaranteed P(false reassurance) (default 0.1)")
    p.add_argument("--rule", choices=("and", "or", "alpha"), default="and", help="rule family (default and)")
    p.add_argument("--ridge", choices=("auto", "off"), default="auto",
                   help="auto: a ridge head on the features where it beats the model's output in cross-validation")
    p.add_argument("--no-affine", action="store_true",
                   help="no affine correction and no head: every usable sweep calibrates (few sweeps)")
    p.add_argument("--fit-fraction", type=_fraction_arg, default="0.5",
                   help="share of infants fitting the head / affine; the rest calibrate (default 0.5)")
    p.add_argument("--check-folds", type=_folds_arg, default=5, help="folds of the held-out check (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split by infant")
    p.add_argument("--key", metavar="PRIV.pem", help="sign the new bundle's manifest with this Ed25519 key")
    p.add_argument("--audit", metavar="FILE.jsonl", help="audit log to append to (default OUT.audit.jsonl)")
    p.add_argument("--device", default="auto", help="inference device (default auto)")
    p.add_argument("--precision", default="auto", help="model variant (default auto: INT8, as the runtime)")
    p.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON summary line")
    p.set_defaults(func=cmd_adapt)
