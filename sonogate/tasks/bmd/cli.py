"""``sonogate phantom bmd``: the task's command-line hooks, named in its spec (``parts["phantom_cli"]``)."""

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
