"""``sonogate analyze``: batch measurement of stored DICOM studies (see sonogate/runtime/analyze.py, docs/dicom.md).

Imports stay light here (argparse only): the heavy modules load when the command runs.
"""

from __future__ import annotations

import sys

from sonogate.cli_types import positive_int as _threads


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="measure stored studies with any task's bundle (ultrasound cines, radiographs): JSON, SR, SC, a CSV",
        description="Batch mode over stored files with any task's bundle, through one code path (the bundle's "
                    "model from create_model). A task decided over a window of frames (the hip ultrasound cine, "
                    "DICOM or video) goes frame by frame through the runtime (reset per file); a task decided per "
                    "image (the pelvic radiograph) is measured per image. Per input: <name>.json, a DICOM "
                    "Structured Report <name>.sr.dcm and a Secondary Capture <name>.sc.dcm of the annotated frame "
                    "(DICOM inputs). One analysis.csv row per input: 'input', then the task's columns as its "
                    "manifest names them. --xr-bundle adds a radiograph model beside an ultrasound bundle (without "
                    "one, radiographs are reported as 'no X-ray model'). A bad file is reported and the batch goes "
                    "on; the exit code is 2 when any input failed.",
    )
    parser.add_argument("inputs", nargs="+", metavar="FILE_OR_FOLDER",
                        help="DICOM file(s) or folder(s) (searched recursively for *.dcm, *.dicom); video "
                             "(.mp4, .avi, ...) or image (.png, .jpg, ...) files given by name")
    parser.add_argument("--bundle", required=True, help="model bundle folder of any task (hip_us, hip_xr, ...)")
    parser.add_argument("--xr-bundle", help="X-ray model bundle folder (AI/CE per hip); without it radiographs "
                                            "are reported as 'no X-ray model'")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", default="auto",
                        help="auto, ort-cpu, ort-cuda, ort-openvino, openvino-cpu, openvino-gpu, openvino-auto")
    parser.add_argument("--threads", type=_threads, default=1, help="inference threads (default 1)")
    parser.add_argument("--no-dicom", dest="write_dicom", action="store_false",
                        help="write JSON and CSV only (no SR / SC)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(func=handler)


def handler(args) -> int:
    from sonogate.runtime.analyze import AnalyzeOptions, analyze

    options = AnalyzeOptions(bundle=args.bundle, out=args.out, xr_bundle=args.xr_bundle, device=args.device,
                             threads=args.threads, progress=args.progress, write_dicom=args.write_dicom)
    summary = analyze(args.inputs, options)
    records = summary.records
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    parts = [f"{counts.get('ok', 0)} ok", f"{counts.get('error', 0)} failed"]
    if counts.get("no_xray_model"):
        parts.append(f"{counts['no_xray_model']} radiograph(s) without an X-ray model")
    print(f"analyzed {len(records)} input(s): {', '.join(parts)} -> {summary.csv_path}")
    for record in records:
        if record["status"] == "ok" and record.get("kind") == "ultrasound":
            result = record["result"]
            print(f"  {record['input']}: {result['recommendation']} ({result.get('reason') or ''}), "
                  f"{record['frames']['usable']}/{record['frames']['total']} usable frames")
    sys.stdout.flush()
    return summary.exit_code
