"""``sonogate phantom ...``: write synthetic datasets and cines.

    sonogate phantom us   --n N --seed S --out DIR [--devices A,B,C] [--frames-per-sweep K] [--chrome]
                          [--style schematic|realistic|schematic,realistic] [--orientations horizontal,graf,graf_mirrored]
    sonogate phantom cine --seconds T --fps F --seed S --out FILE.mp4 [--no-chrome] [--device A]
                          [--style schematic|realistic] [--orientation horizontal|graf|graf_mirrored]
    sonogate phantom xr | rust | bmd | spine ...   (each task's own, from its spec's parts["phantom_cli"])

Imports of the phantom modules happen inside the handlers, so registering the command costs nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sonogate.core.registry import get_task, task_ids
from sonogate.errors import SonogateError

# (spelled out, not imported: registering the command must not import the phantom; a test keeps them equal)
_STYLES = ("schematic", "realistic")
_STYLE_HELP = ("rendering style: schematic (default; what the committed bundle was trained on) or realistic "
               "(layered soft tissue, thick bone echoes, finer speckle; same labels)")
_ORIENTATION_HELP = ("horizontal (as acquired: probe at the top, cranial left), graf (Graf's display: ilium vertical, "
                     "cranial up, probe on the left) or graf_mirrored (probe on the right); default: each device's "
                     "own convention")


def _styles_arg(text: str) -> str | tuple[str, ...]:
    """One style name, or several comma separated (a tuple: one drawn per infant)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in _STYLES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown style {', '.join(unknown) or text!r} (use {' or '.join(_STYLES)}, "
                                         "or several comma separated)")
    return names[0] if len(names) == 1 else names


def _int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive(name: str, value) -> None:
    if value is None or not value > 0:
        raise SonogateError(f"--{name} must be > 0, got {value}")


def cmd_us(args: argparse.Namespace) -> int:
    from sonogate.phantom.devices import parse_device_list
    from sonogate.phantom.hip_us import parse_orientation_list
    from sonogate.phantom.writer import write_us_dataset

    _positive("n", args.n)
    _positive("frames-per-sweep", args.frames_per_sweep)
    _positive("size", args.size)
    devices = parse_device_list(args.devices)
    orientations = None if args.orientations is None else parse_orientation_list(args.orientations)
    styles = (args.style,) if isinstance(args.style, str) else args.style
    out = write_us_dataset(args.out, args.n, args.seed, devices=devices, size=args.size,
                           frames_per_sweep=args.frames_per_sweep, standard_fraction=args.standard_fraction,
                           chrome=args.chrome, progress=True, style=args.style, orientations=orientations)
    shown = "" if orientations is None else f", {'/'.join(orientations)}"
    print(f"wrote {args.n} phantom ultrasound frames ({', '.join(devices)}, {'/'.join(styles)}{shown}) to {out}")
    return 0


def cmd_cine(args: argparse.Namespace) -> int:
    from sonogate.phantom.cine import write_cine
    from sonogate.phantom.hip_us import check_orientation

    _positive("seconds", args.seconds)
    _positive("fps", args.fps)
    _positive("size", args.size)
    if args.orientation is not None:
        check_orientation(args.orientation)
    out = write_cine(Path(args.out), args.seconds, args.fps, args.seed, size=args.size, chrome=args.chrome,
                     device=args.device, progress=True, style=args.style, orientation=args.orientation)
    print(f"wrote phantom cine {out} and {out.with_suffix('.csv')}")
    return 0


def register(subparsers) -> None:
    """Add ``phantom`` with ``us``, ``cine`` and each task's own (``xr``, ``rust``, ``spine``, ...) to an argparse
    subparsers object."""
    phantom = subparsers.add_parser("phantom", help="write synthetic labelled data for every task",
                                    description="Synthetic phantoms with exact ground truth, one kind per task.")
    sub = phantom.add_subparsers(dest="phantom_command", metavar="KIND")
    phantom.set_defaults(func=lambda args: (phantom.print_help(), 2)[1])

    us = sub.add_parser("us", help="ultrasound frames + labels.csv",
                        description="Write phantom ultrasound frames in the labelled-folder layout.")
    us.add_argument("--n", type=_int_arg, required=True, help="number of frames")
    us.add_argument("--seed", type=_int_arg, default=0)
    us.add_argument("--out", required=True, help="output folder")
    us.add_argument("--devices", default="A,B,C", help="scanner presets, comma separated (default A,B,C)")
    us.add_argument("--frames-per-sweep", type=_int_arg, default=1, help="frames per hip sweep (default 1)")
    us.add_argument("--standard-fraction", type=_float_arg, default=0.8,
                    help="share of standard-plane frames (default 0.8)")
    us.add_argument("--size", type=_int_arg, default=256, help="image side in pixels (default 256)")
    us.add_argument("--chrome", action="store_true", help="save the whole scanner screen, not just the image")
    us.add_argument("--style", type=_styles_arg, default="schematic", metavar="STYLES",
                    help=_STYLE_HELP + "; several, comma separated, draw one per infant")
    us.add_argument("--orientations", default=None, metavar="NAMES",
                    help="display orientations, comma separated, one drawn per frame: " + _ORIENTATION_HELP)
    us.set_defaults(func=cmd_us)

    cine = sub.add_parser("cine", help="mp4 sweep + per-frame CSV",
                          description="Write a phantom probe sweep (mp4v) and a sidecar CSV, one row per frame.")
    cine.add_argument("--seconds", type=_float_arg, default=20.0)
    cine.add_argument("--fps", type=_float_arg, default=15.0)
    cine.add_argument("--seed", type=_int_arg, default=0)
    cine.add_argument("--out", required=True, help="output .mp4 file")
    cine.add_argument("--no-chrome", dest="chrome", action="store_false", help="image only, no scanner screen")
    cine.add_argument("--device", default="A", help="scanner preset (default A)")
    cine.add_argument("--size", type=_int_arg, default=256, help="ultrasound image side (default 256)")
    cine.add_argument("--style", choices=_STYLES, default="schematic", help=_STYLE_HELP)
    cine.add_argument("--orientation", default=None, metavar="NAME", help="display orientation: " + _ORIENTATION_HELP)
    cine.set_defaults(func=cmd_cine)

    # every task brings its own phantom subcommand, named in its spec (found by the registry, not imported)
    for task_id in task_ids():
        if "phantom_cli" in get_task(task_id).parts:
            get_task(task_id).part("phantom_cli")(sub)
