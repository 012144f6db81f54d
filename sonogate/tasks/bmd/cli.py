"""``sonogate phantom bmd`` and ``sonogate bmd ...``: the task's command-line hooks, named in its spec
(``parts["phantom_cli"]``, ``parts["cli"]``).

``sonogate bmd train``      locator + regressor (supervised / self-training / + adaptive triplet) -> RUN/checkpoint.pt
``sonogate bmd ablation``   every method at 5 / 10 / 25 % labelled on the short schedule -> OUT/ablation.{json,md}
``sonogate bmd export``     RUN -> bundle (the generic writer via parts["exporter"]) + calibration.json bound to it
``sonogate bmd calibrate``  (re)write a bundle's calibration.json
``sonogate bmd evaluate``   a bundle on a labelled folder: figures, site recalibration on held-out devices, plots
``sonogate bmd recalibrate`` a bundle for a new device from the site's DEXA-labelled radiographs -> a new bundle
(``sonogate export RUN --out B`` reaches the same exporter; ``sonogate bmd export`` adds the calibration step.)
"""

from __future__ import annotations

from sonogate.cli_types import positive_int


def add_phantom_parser(subparsers) -> None:
    """Add ``bmd`` to the ``sonogate phantom`` subcommands."""
    parser = subparsers.add_parser("bmd", help="adult AP pelvis radiographs + per-hip femoral-neck BMD labels",
                                   description="Write phantom AP pelvis radiographs (DIR/images/*.png) and "
                                               "DIR/labels.csv, one row per hip: femoral-neck areal BMD (g/cm2, "
                                               "as DEXA defines it), T-score, age, sex, the neck box and landmarks, "
                                               "and the confounders drawn independently of BMD.")
    parser.add_argument("--n", type=positive_int, required=True, help="number of radiographs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", type=positive_int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--device", default=None,
                        help="one device preset A-F (default: all; E and F are the held-out sites)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from sonogate.tasks.bmd.phantom import phantom_main

    return phantom_main(args.out, args.n, args.seed, args.size, args.device)


def _fraction(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def add_cli(subparsers) -> None:
    """Add ``sonogate bmd train | ablation | ensemble | export | calibrate | evaluate | recalibrate``."""
    bmd = subparsers.add_parser("bmd", help="bone mineral density from hip radiographs: train, ablation, export, "
                                            "evaluate (issue 21)")
    sub = bmd.add_subparsers(dest="bmd_command", required=True)

    train = sub.add_parser("train", help="train the locator and the BMD regressor on a phantom bmd folder")
    train.add_argument("--data", required=True, help="folder from sonogate phantom bmd")
    train.add_argument("--out", required=True, help="run folder (checkpoint.pt, metrics.json)")
    train.add_argument("--labelled", type=_fraction, default=0.10, help="share of training patients with BMD")
    train.add_argument("--method", default="st_triplet", choices=("supervised", "self_training", "st_triplet"))
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--split-seed", type=int, default=None,
                       help="seed of the patient split and the labelled patients (default: --seed)")
    train.add_argument("--locator", default=None, help="reuse this locator.pt instead of training one")
    train.add_argument("--supervised-steps", type=positive_int, default=None)
    train.add_argument("--rounds", type=int, default=None)
    train.add_argument("--round-steps", type=positive_int, default=None)
    train.add_argument("--locator-epochs", type=positive_int, default=None)
    train.add_argument("--intensity-augment", type=float, default=None, help="ROI intensity augmentation strength")
    train.add_argument("--triplet-weight", type=float, default=None)
    train.add_argument("--context-width", type=positive_int, default=None,
                       help="> 0: the regressor also sees the whole radiograph at 64 px (channels of its encoder)")
    train.add_argument("--threads", type=positive_int, default=1)
    train.set_defaults(func=_train)

    ablation = sub.add_parser("ablation", help="supervised / + self-training / + adaptive triplet at 5, 10, 25 %%")
    ablation.add_argument("--data", required=True)
    ablation.add_argument("--out", required=True)
    ablation.add_argument("--locator", required=True, help="locator.pt of a training run (shared by all runs)")
    ablation.add_argument("--seed", type=int, default=0)
    ablation.add_argument("--fractions", default=None,
                          help="comma-separated labelled shares (default 0.05,0.10,0.25 and the extra rows)")
    for flag in ("--supervised-steps", "--rounds", "--round-steps", "--batch-size"):
        ablation.add_argument(flag, type=positive_int, default=None,
                              help="schedule of every run (default: the short schedule, train.ABLATION_STEPS)")
    ablation.add_argument("--intensity-augment", type=float, default=None, help="ROI intensity augmentation, every run")
    ablation.add_argument("--threads", type=positive_int, default=1)
    ablation.set_defaults(func=_ablation)

    ensemble = sub.add_parser("ensemble", help="one run folder from several runs (or phases) sharing a locator: "
                                               "their regressors averaged in one graph")
    ensemble.add_argument("--member", action="append", required=True, metavar="RUN[@PHASE]",
                          help="a training run (its final regressor) or RUN@round2, RUN@supervised, ... (repeat)")
    ensemble.add_argument("--out", required=True, help="new run folder (checkpoint.pt, metrics.json)")
    ensemble.set_defaults(func=_ensemble)

    export = sub.add_parser("export", help="RUN -> bundle with INT8 ONNX, parity and calibration.json")
    export.add_argument("run", help="training run folder")
    export.add_argument("--out", required=True, help="bundle folder")
    export.add_argument("--force", action="store_true")
    export.add_argument("--delta", type=float, default=0.1, help="miscoverage of the BMD interval per image")
    export.set_defaults(func=_export)

    calibrate = sub.add_parser("calibrate", help="(re)write a bmd bundle's calibration.json from its training folder")
    calibrate.add_argument("--bundle", required=True)
    calibrate.add_argument("--data", default=None, help="labelled folder (default: the training folder)")
    calibrate.add_argument("--extra", default=None,
                           help="another labelled phantom folder whose device A-D radiographs join the conformal set")
    calibrate.add_argument("--delta", type=float, default=0.1)
    calibrate.set_defaults(func=_calibrate)

    evaluate = sub.add_parser("evaluate", help="a bundle on a labelled folder: held-out figures, site "
                                               "recalibration of the held-out devices, plots")
    evaluate.add_argument("--bundle", required=True)
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--out", required=True, help="folder for evaluation.json and the plots")
    evaluate.add_argument("--site-images", type=positive_int, default=20,
                          help="labelled radiographs of a new device used to recalibrate it")
    evaluate.add_argument("--site-osteoporotic", type=positive_int, default=None,
                          help="radiographs of osteoporotic patients added for the site's screening bound "
                               "(default: the minimum the rank needs, 9 at delta 0.1)")
    evaluate.add_argument("--site-data", action="append", default=None,
                          help="labelled folder(s) of the held-out devices (other patients) used for the site study "
                               "instead of the held-out devices of --data (more osteoporotic hips to judge)")
    evaluate.set_defaults(func=_evaluate)

    recal = sub.add_parser("recalibrate", help="calibrate a bmd bundle for a new device from the site's "
                                               "DEXA-labelled radiographs (torch-free) -> a new bundle",
                           description="Half the site's patients refit the affine correction, the other half the "
                                       "interval radius; the screening bound is fitted on the site's osteoporotic "
                                       "hips (add DEXA-confirmed osteoporotic patients with --osteoporotic), else "
                                       "every hip is referred. docs/tasks/bmd.md, 'A new device'.")
    recal.add_argument("--bundle", required=True, help="the base bmd bundle")
    recal.add_argument("--data", required=True,
                       help="site folder: labels.csv (image, patient_id, side R/L, bmd_g_cm2) and the radiographs, "
                            "a random sample of the site's patients")
    recal.add_argument("--osteoporotic", default=None,
                       help="folder in the same layout: radiographs of patients with DEXA-confirmed osteoporosis")
    recal.add_argument("--out", required=True, help="new folder for the site's bundle")
    recal.add_argument("--delta", type=float, default=0.1)
    recal.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    recal.add_argument("--refit", choices=("offset", "affine"), default="offset",
                       help="offset (default): keep the bundle's slope, refit the device's bias; affine: both "
                            "(needs many more radiographs)")
    recal.add_argument("--key", default=None, help="PEM private key: sign the new bundle")
    recal.add_argument("--device", action="append", default=None, metavar="NAME",
                       help="the site's acquisition device, 'Manufacturer ManufacturerModelName' as in its DICOM "
                            "headers (repeat for several); radiographs of other devices are then referred")
    recal.set_defaults(func=_recalibrate)


def _train(args) -> int:
    from dataclasses import replace

    from sonogate.tasks.bmd.train import BmdTrainConfig, run_bmd_training

    cfg = BmdTrainConfig(data=args.data, out=args.out, labelled_fraction=args.labelled, method=args.method,
                         seed=args.seed, split_seed=args.split_seed, locator=args.locator, threads=args.threads)
    for name in ("supervised_steps", "rounds", "round_steps", "locator_epochs", "intensity_augment", "triplet_weight",
                 "context_width"):
        if getattr(args, name) is not None:
            cfg = replace(cfg, **{name: getattr(args, name)})
    run_bmd_training(cfg)
    return 0


def _ablation(args) -> int:
    from sonogate.tasks.bmd.train import ABLATION_FRACTIONS, ABLATION_STEPS, run_ablation

    steps = dict(ABLATION_STEPS)
    for name in ("supervised_steps", "rounds", "round_steps", "batch_size", "intensity_augment"):
        if getattr(args, name) is not None:
            steps[name] = getattr(args, name)
    fractions = ABLATION_FRACTIONS
    if args.fractions:
        fractions = tuple(_fraction(text) for text in args.fractions.split(","))
    result = run_ablation(args.data, args.out, args.locator, fractions=fractions, seed=args.seed, steps=steps,
                          threads=args.threads, with_extra=not args.fractions)
    from sonogate.tasks.bmd.train import ablation_markdown

    print(ablation_markdown(result))
    return 0


def _ensemble(args) -> int:
    from sonogate.tasks.bmd.ensemble import write_ensemble_run

    write_ensemble_run(args.member, args.out)
    return 0


def _export(args) -> int:
    from sonogate.tasks.bmd.export import export_with_calibration

    return export_with_calibration(args.run, args.out, force=args.force, delta=args.delta)


def _calibrate(args) -> int:
    from sonogate.tasks.bmd.calibrate import calibrate_bundle

    calibrate_bundle(args.bundle, args.data, delta=args.delta, extra=args.extra)
    return 0


def _evaluate(args) -> int:
    from sonogate.tasks.bmd.evaluate import evaluate_main

    return evaluate_main(args.bundle, args.data, args.out, args.site_images, osteoporotic=args.site_osteoporotic,
                         site_data=args.site_data)


def _recalibrate(args) -> int:
    import shlex
    import sys

    from sonogate.tasks.bmd.site import recalibrate_site

    recalibrate_site(args.bundle, args.data, args.out, delta=args.delta, osteoporotic=args.osteoporotic,
                     seed=args.seed, key=args.key, refit=args.refit, command=shlex.join(sys.argv),
                     devices=args.device)
    return 0
