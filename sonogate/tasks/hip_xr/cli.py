"""``sonogate phantom xr``: the pelvic X-ray task's command-line hook, named in its spec (``parts["phantom_cli"]``)."""

from __future__ import annotations


def add_phantom_parser(subparsers) -> None:
    """Add ``xr`` to the ``sonogate phantom`` subcommands."""
    parser = subparsers.add_parser("xr", help="pelvic radiographs + labels.csv",
                                   description="Write phantom pelvic AP radiographs in the labelled-folder layout.")
    parser.add_argument("--n", type=int, required=True, help="number of radiographs (two hip rows each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from sonogate.tasks.hip_xr.phantom import write_xr_dataset

    # write_xr_dataset refuses n <= 0 and size < 64 with one line (SonogateError)
    out = write_xr_dataset(args.out, args.n, args.seed, size=args.size, progress=True)
    print(f"wrote {args.n} phantom pelvic radiographs ({2 * args.n} hip rows) to {out}")
    return 0
