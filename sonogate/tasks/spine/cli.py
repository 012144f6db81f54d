"""``sonogate phantom spine``: the task's command-line hooks, named in its spec (``parts["phantom_cli"]``)."""

from __future__ import annotations

from sonogate.cli_types import positive_int


def add_phantom_parser(subparsers) -> None:
    """Add ``spine`` to the ``sonogate phantom`` subcommands."""
    parser = subparsers.add_parser("spine", help="vertebra cases: ultrasound partial cloud, lateral X-ray, truth",
                                   description="Write phantom vertebra cases from ../shared/data/vertebra-meshes: "
                                               "DIR/<case>/us_partial.ply, xray.png, xray_points.ply, complete.ply "
                                               "and meta.json (2,048 points each, mm); test cases come from source "
                                               "shapes never deformed for training.")
    parser.add_argument("--n", type=positive_int, required=True, help="number of cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from sonogate.tasks.spine.phantom import phantom_main

    return phantom_main(args.out, args.n, args.seed)
