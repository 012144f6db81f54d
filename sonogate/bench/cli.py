"""``sonogate bench``: its options, and the handler that runs the bench and prints the report.

    sonogate bench --out benchmarks/results            # full run (make bench), by hand on a quiet machine
    sonogate bench --short --out out/bench-short       # seconds: one size, 1 thread, ~30 frames (CI)

Imports nothing heavy at import time (``sonogate`` builds its whole command line from it) and never needs torch.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from sonogate.bench.machine import cpu_count
from sonogate.bench.workers import BACKENDS
from sonogate.errors import SonogateError

DEFAULT_SIZES = (128, 160, 192, 224)
DEFAULT_SIZE = 160
PARTS = ("latency", "peak", "e2e", "accuracy")


def parse_sizes(text: str) -> list[int]:
    """"128,160" -> [128, 160]; sizes must be multiples of 32 and >= 32."""
    try:
        sizes = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,160, got {text!r}") from None
    if not sizes or any(s < 32 or s % 32 for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be multiples of 32 and >= 32, got {text!r}")
    return sizes


def parse_threads(text: str) -> list[str]:
    """"1,2,all" -> ["1", "2", "all"]: whole numbers >= 1 or "all" (resolved to the usable cores later)."""
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    for t in items:
        if t != "all" and (not t.isdigit() or int(t) < 1):
            raise argparse.ArgumentTypeError(f"threads must be whole numbers >= 1 or 'all', got {text!r}")
    if not items:
        raise argparse.ArgumentTypeError("no thread count given")
    return items


def register(subparsers) -> None:
    """Add the ``bench`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "bench", help="benchmark latency, end-to-end rate, accuracy and compute bound (make bench)",
        description="Encoder+heads latency for PyTorch eager, ONNX Runtime and OpenVINO (float and INT8) over input "
                    "sizes and thread counts, each configuration in its own process; end to end through "
                    "`sonogate run`; INT8 vs float accuracy; FLOPs and the measured compute peak. Writes "
                    "DIR/latest.json, DIR/results.md and plots.")
    p.add_argument("--out", default="out/bench", help="output folder (default: out/bench)")
    p.add_argument("--short", action="store_true",
                   help="CI mode: one size, 1 thread, ~30 frames, ORT float + INT8 + one PyTorch row")
    p.add_argument("--bundle", help="model bundle (default: demo/bundle when it exists)")
    p.add_argument("--sizes", type=parse_sizes, help="input sizes (default 128,160,192,224; short: the bundle's or 160)")
    p.add_argument("--default-size", type=int, default=DEFAULT_SIZE, help="size of the goals and the histogram")
    p.add_argument("--threads", type=parse_threads, help="thread counts, e.g. 1,2,all (default 1,2,all; short: 1)")
    p.add_argument("--frames", type=int, help="timed frames per configuration (default 300; short 30)")
    p.add_argument("--warmup", type=int, help="untimed frames first (default 20; short 5)")
    p.add_argument("--backends", help="subset of: " + ", ".join(BACKENDS))
    p.add_argument("--parts", default="latency,peak,e2e,accuracy",
                   help="what to run: latency, peak, e2e, accuracy (default: all)")
    p.add_argument("--data", help="labelled folder for the accuracy part (default: a held-out phantom folder)")
    p.add_argument("--e2e-seconds", type=float, help="length of each end-to-end run (default 15; short 3)")
    p.add_argument("--e2e-device", default="auto", help="device for the end-to-end runs (default auto)")
    p.add_argument("--cache", help="where rebuilt models, phantom frames and cines are kept "
                                   "(default: $XDG_CACHE_HOME/sonogate/bench)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch rows, as a torch-free install does")
    p.add_argument("--timeout", type=float, help="seconds allowed per configuration (default 900; short 240)")
    p.add_argument("--max-seconds", type=float, default=240.0,
                   help="stop timing a configuration after this long, keeping the frames so far (default 240)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handler)


def handler(args) -> int:
    """Run the bench for the parsed ``args``, print the report and what was written; returns 0."""
    from sonogate.bench.harness import run_bench
    from sonogate.bench.report import print_report

    options = build_options(args)
    report = run_bench(options)
    print_report(report)
    print(f"wrote {options['out'] / 'latest.json'}, {options['out'] / 'results.md'}"
          + "".join(f", {options['out'] / name}" for name in report.get("plots", [])))
    return 0


def _load_bundle(path: str | None):
    """The bundle asked for (a bad one raises: one line, exit 2), else demo/bundle when it exists and loads."""
    if not (path or Path("demo/bundle").is_dir()):
        return None
    from sonogate.core.bundle import load_bundle
    from sonogate.errors import BundleError

    try:
        return load_bundle(Path(path or "demo/bundle"))
    except BundleError as exc:
        if path:
            raise
        print(f"note: demo/bundle not used: {exc}", file=sys.stderr)
        return None


def build_options(args) -> dict[str, Any]:
    """The run's options from the parsed arguments, with the short / full defaults filled in; creates the
    output and cache folders. Bad input raises SonogateError with one line."""
    short = bool(args.short)
    parts = [p.strip() for p in str(args.parts).split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SonogateError(f"unknown --parts {', '.join(unknown)} (valid: {', '.join(PARTS)})")
    bundle = _load_bundle(args.bundle)
    bundle_size = None
    if bundle is not None:
        prep = bundle.preprocessing
        if prep.height == prep.width:
            bundle_size = prep.height
    sizes = args.sizes or ([bundle_size or args.default_size] if short else list(DEFAULT_SIZES))
    n_cpu = cpu_count()
    thread_items = args.threads or (["1"] if short else ["1", "2", "all"])
    threads = sorted({n_cpu if t == "all" else int(t) for t in thread_items})
    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        bad = [b for b in backends if b not in BACKENDS]
        if bad:
            raise SonogateError(f"unknown backend {', '.join(bad)} (valid: {', '.join(BACKENDS)})")
    else:
        backends = ["pytorch-eager", "onnxruntime"] if short else list(BACKENDS)
    frames = args.frames or (30 if short else 300)
    warmup = args.warmup if args.warmup is not None else (5 if short else 20)
    if frames < 1 or warmup < 0:
        raise SonogateError("--frames must be >= 1 and --warmup >= 0")
    if not short and frames < 200:
        print(f"note: --frames {frames} < 200: percentiles of the full run are meant over >= 200 frames",
              file=sys.stderr)
    cache = (Path(args.cache) if args.cache
             else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sonogate" / "bench")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SonogateError(f"cannot create output folder: {exc}") from None
    if args.data and not Path(args.data).is_dir():
        raise SonogateError(f"--data folder not found: {args.data}")
    return {
        "short": short, "out": out, "cache": cache, "bundle": bundle, "bundle_size": bundle_size,
        "sizes": sizes, "default_size": args.default_size if args.default_size in sizes else sizes[0],
        "threads": threads, "backends": backends, "frames": frames, "warmup": warmup, "parts": parts,
        "data": args.data, "e2e_seconds": args.e2e_seconds or (3.0 if short else 15.0),
        "e2e_device": args.e2e_device, "no_torch": bool(args.no_torch),
        "timeout": args.timeout or (240.0 if short else 900.0), "progress": not args.no_progress,
        "max_seconds": args.max_seconds,
        "command": "sonogate " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"]
        else "sonogate bench " + ("--short " if short else "") + f"--out {shlex.quote(str(out))}",
    }
