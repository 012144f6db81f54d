"""``sonogate phantom rust``: the task's command-line hooks, named in its spec (``parts["phantom_cli"]``)."""

from __future__ import annotations

from sonogate.cli_types import positive_int


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
