"""``sonogate label`` (the labelling page for a folder of frames) and ``sonogate label-import`` (COCO keypoints from
CVAT / Label Studio): hip-ultrasound Graf landmarks into the labelled-folder ``labels.csv``."""

from __future__ import annotations

import argparse
import sys

_STANDARD_CHOICES = {"yes": 1, "no": 0, "blank": None}


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {value}")
    return value


def cmd_label(args) -> int:
    from sonogate.tasks.hip_us.label_server import LabelSession, make_server, server_url

    session = LabelSession(args.frames_dir, args.out, patient_id=args.patient_id or "", sweep_id=args.sweep_id or "")
    server = make_server(session, host=args.host, port=args.port, verbose=args.verbose)
    url = server_url(server)
    saved = sum(session.saved_row(i) is not None for i in range(len(session.frames)))
    print(f"labelling {len(session.frames)} frames of {args.frames_dir} into {args.out} "
          f"({saved} saved already; resuming at frame {session.resume_index() + 1})")
    if not args.patient_id:
        print("note: no --patient-id given: the patient_id column stays empty (adapt then counts one infant)")
    print(f"open {url}  (served on 127.0.0.1 only; Ctrl+C to stop)", flush=True)
    if not args.no_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print(f"stopped; labels in {args.out}")
    return 0


def cmd_label_import(args) -> int:
    from sonogate.tasks.hip_us.coco import import_coco, parse_name_map

    result = import_coco(args.coco_json, args.out, images_dir=args.images, mapping=parse_name_map(args.map),
                         patient_id=args.patient_id or "", sweep_id=args.sweep_id or "",
                         standard_plane_default=_STANDARD_CHOICES[args.standard_plane])
    print(f"wrote {result.csv_path}: {result.frames} frames, {result.measured} with alpha/beta/coverage")
    for note in result.notes[:20]:
        print(f"note: {note}", file=sys.stderr)
    if len(result.notes) > 20:
        print(f"note: ... and {len(result.notes) - 20} more frames without measurements (see the 'note' column)",
              file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``label`` and ``label-import`` to an argparse subparsers object."""
    label = subparsers.add_parser(
        "label", help="label hip-ultrasound frames in a local page (Graf landmarks, standard plane)",
        description="Serve a labelling page on 127.0.0.1: click the seven Graf landmarks per frame and mark the "
                    "standard plane; alpha, beta and coverage update as you click. Every saved frame is written "
                    "to --out at once; run the same command again to resume.")
    label.add_argument("frames_dir", metavar="FRAMES_DIR", help="folder of frames (PNG, JPEG, ...; searched recursively)")
    label.add_argument("--out", required=True, help="labels.csv to write (resumed when it exists)")
    label.add_argument("--port", type=_port, default=0, help="port on 127.0.0.1 (default 0: a free one)")
    label.add_argument("--host", default="127.0.0.1", help="only 127.0.0.1 is accepted: the page must not be "
                                                           "reachable from the network")
    label.add_argument("--patient-id", help="patient_id for every frame (default: empty)")
    label.add_argument("--sweep-id", help="sweep_id for every frame (default: the frame's sub-folder, or the "
                                          "folder's name)")
    label.add_argument("--no-browser", action="store_true", help="only print the URL, do not open a browser")
    label.add_argument("--verbose", action="store_true", help="log every request")
    label.set_defaults(func=cmd_label)

    coco = subparsers.add_parser(
        "label-import", help="labels.csv from a COCO-keypoints export (CVAT, Label Studio)",
        description="Convert a COCO-keypoints JSON into the labelled-folder labels.csv; alpha, beta and coverage "
                    "are computed from the landmarks with sonogate's own geometry.")
    coco.add_argument("coco_json", metavar="COCO_JSON", help="the exported JSON")
    coco.add_argument("--out", required=True, help="labels.csv to write (image paths relative to its folder)")
    coco.add_argument("--images", help="folder of the images (default: beside the JSON, or its parent)")
    coco.add_argument("--map", help="their point names to ours: a JSON file or 'their=ours,...'; ours are "
                                    "baseline_top, baseline_bottom, bony_rim, lower_limb, labrum, head_medial, "
                                    "head_lateral (common names are recognised without a map)")
    coco.add_argument("--patient-id", help="patient_id for every frame (an image's own patient_id field wins)")
    coco.add_argument("--sweep-id", help="sweep_id for every frame (default: the image's sub-folder)")
    coco.add_argument("--standard-plane", choices=sorted(_STANDARD_CHOICES), default="yes",
                      help="standard_plane for annotated frames without a standard_plane attribute (default yes: "
                           "a Graf measurement is taken on the standard plane)")
    coco.set_defaults(func=cmd_label_import)
