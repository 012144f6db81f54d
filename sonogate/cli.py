"""The one ``sonogate`` command. Subcommands register themselves per stage; run ``sonogate <cmd> --help``.

Errors the user can act on print one line on stderr and exit with code 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sonogate import __version__
from sonogate.cli_types import positive_int as _positive_int
from sonogate.core.registry import get_task, task_ids
from sonogate.errors import SonogateError


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("input")
    source.add_argument("--source", required=True,
                        help="video file, camera index (0), /dev/videoN, stream URL (rtsp://, udp://, http://), "
                             "DICOM cine (.dcm) or 'phantom[:SEED]'")
    source.add_argument("--loop", action="store_true", help="loop a video file")
    source.add_argument("--no-realtime", dest="realtime", action="store_false",
                        help="read a file as fast as possible instead of at its frame rate")
    source.add_argument("--roi", help="fixed ultrasound region x,y,w,h in the captured frame (default: detect)")
    source.add_argument("--max-frames", type=_positive_int, help="stop after N processed frames")
    source.add_argument("--max-seconds", type=float, help="stop after this many seconds")
    inference = parser.add_argument_group("inference")
    inference.add_argument("--bundle", required=True, help="model bundle folder")
    inference.add_argument("--device", default="auto",
                           help="auto, ort-cpu, ort-cuda, ort-openvino, openvino-cpu, openvino-gpu, openvino-auto")
    inference.add_argument("--threads", type=_positive_int, default=1, help="inference threads (default 1)")
    inference.add_argument("--precision", default="auto", choices=["auto", "int8", "float", "openvino"],
                           help="which model of the bundle (auto: INT8 when present)")
    inference.add_argument("--calibration", help="calibration.json (default: the bundle's)")
    inference.add_argument("--xr-bundle", help="X-ray model bundle loaded in the same process (AI / CE / IHDI per "
                                               "hip of each radiograph that arrives in --xr-watch)")
    source.add_argument("--xr-watch", help="folder where new radiographs (DICOM CR/DX, PNG, JPEG) arrive; each is "
                                           "measured with --xr-bundle and written as a 'xray' event")
    inference.add_argument("--public-key", default=os.environ.get("SONOGATE_PUBLIC_KEY"),
                           help="Ed25519 public key (PEM): refuse a bundle whose manifest.sig does not verify")
    output = parser.add_argument_group("output")
    output.add_argument("--headless", action="store_true", help="no window (embedded use)")
    output.add_argument("--events", help="write one JSON object per frame to this .jsonl file")
    output.add_argument("--record", help="write the annotated stream to this video file (.mp4)")
    output.add_argument("--snapshot", help="write one annotated frame (the first definitive decision) as PNG")
    output.add_argument("--audit", help="append-only, hash-chained audit log (.jsonl) of recommendation changes")


def _session_and_pipeline(args):
    from sonogate.runtime.pipeline import LivePipeline, PipelineOptions
    from sonogate.runtime.roi import parse_roi
    from sonogate.runtime.session import open_session

    roi = parse_roi(args.roi) if args.roi else None
    session = open_session(args.bundle, device=args.device, threads=args.threads, precision=args.precision,
                           roi=roi, calibration=args.calibration,
                           public_key=getattr(args, "public_key", None), audit=getattr(args, "audit", None))
    options = PipelineOptions(source=args.source, loop=args.loop, realtime=args.realtime, headless=args.headless,
                              events_path=args.events, record_path=args.record, snapshot_path=args.snapshot,
                              max_frames=args.max_frames, max_seconds=args.max_seconds,
                              xr_bundle=getattr(args, "xr_bundle", None), xr_watch=getattr(args, "xr_watch", None),
                              device=args.device, threads=args.threads)
    return session, LivePipeline(session, options)


def _print_summary(session, summary: dict) -> None:
    latency = summary.get("latency_ms", {})
    print(f"device: {session.device_name}  bundle: {session.bundle.bundle_hash[:12]}")
    if session.calibration_note:
        print(f"note: {session.calibration_note}")
    print(f"frames processed: {summary['frames']}  dropped: {summary.get('dropped_frames', 0)}")
    if latency:
        print(f"latency capture->decision: median {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms")
    print("recommendation timeline:")
    for change in summary.get("timeline", []):
        print(f"  frame {change['frame']:>5}: {change['recommendation']:<18} {change.get('reason') or ''}")
    print(f"final recommendation: {summary['final_recommendation']} ({summary.get('final_reason') or ''})")
    if summary.get("xray_events"):
        print(f"radiographs measured: {summary['xray_events']} (events of type 'xray')")


def cmd_run(args) -> int:
    session, pipeline = _session_and_pipeline(args)
    note = getattr(session.engine, "device_note", "")
    if note:
        print(f"note: {note}", file=sys.stderr)
    try:
        summary = pipeline.run()
    finally:
        audit = session.audit
        head = audit.head_sha256 if audit is not None else None
        session.close()
    _print_summary(session, summary)
    if head:
        print(f"audit log: {args.audit} (head {head}; check with 'sonogate audit verify {args.audit} --head {head}')")
    return 0


def cmd_demo(args) -> int:
    """Render a phantom cine, run the runtime headless on it, leave events, video and a snapshot."""
    from sonogate.phantom.cine import write_cine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cine = out / "phantom_cine.mp4"
    print(f"rendering phantom cine ({args.seconds:g} s at {args.fps:g} fps) -> {cine}")
    write_cine(cine, seconds=args.seconds, fps=args.fps, seed=args.seed, progress=True)
    run_args = argparse.Namespace(
        source=str(cine), loop=False, realtime=True, roi=None, max_frames=None, max_seconds=None,
        bundle=args.bundle, device=args.device, threads=1, precision="auto", calibration=None, headless=True,
        public_key=None, audit=str(out / "audit.jsonl"),
        events=str(out / "events.jsonl"), record=str(out / "annotated.mp4"), snapshot=str(out / "annotated_frame.png"))
    session, pipeline = _session_and_pipeline(run_args)
    try:
        summary = pipeline.run()
    finally:
        session.close()
    _print_summary(session, summary)
    print(f"wrote {out / 'events.jsonl'}, {out / 'annotated.mp4'}, {out / 'annotated_frame.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sonogate", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sonogate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="live recommendation from a video source",
                         description="Read a scanner feed, measure, bound and recommend in real time.")
    _add_run_arguments(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="render a phantom cine and run the runtime on it (make demo)")
    demo.add_argument("--bundle", default="demo/bundle", help="model bundle (default: demo/bundle)")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--seconds", type=float, default=24.0)
    demo.add_argument("--fps", type=float, default=15.0)
    demo.add_argument("--seed", type=int, default=10)
    demo.add_argument("--device", default="auto")
    demo.set_defaults(func=cmd_demo)

    # each stage registers its own commands; imports there are light (no torch at import time)
    from sonogate.models.cli import register as register_models
    from sonogate.phantom.cli import register as register_phantom

    register_phantom(sub)
    register_models(sub)
    for extra in ("sonogate.export.cli", "sonogate.runtime.calibrate_cli", "sonogate.runtime.analyze_cli",
                  "sonogate.bench.cli", "sonogate.runtime.audit_cli"):
        try:
            module = __import__(extra, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != extra:
                raise
            continue
        module.register(sub)
    # a task may bring commands of its own (``sonogate label`` for hip_us), named in its spec's parts["cli"] and
    # found through the registry, so adding a task does not touch this file
    for task_id in task_ids():
        if "cli" in get_task(task_id).parts:
            get_task(task_id).part("cli")(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SonogateError as exc:
        print(f"sonogate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("SONOGATE_DEBUG"):
            raise
        print(f"sonogate: internal error: {type(exc).__name__}: {exc} (SONOGATE_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
