"""The labelling page's server: a stdlib HTTP server on 127.0.0.1 that serves a folder's frames, the page and a
small JSON API, and keeps a labels.csv (the labelled-folder layout) up to date after every saved frame.

API (JSON in and out; POST bodies must be ``application/json``, which a page of another origin cannot send
without a CORS preflight this server never grants):

* ``GET /api/state``: landmarks (names, titles, what each measurement needs), frames ([{index, image, saved}]),
  ``resume_index`` (the first frame the CSV has no row for), the CSV path, ids.
* ``GET /api/frame/<i>``: frame i: image path, width, height, saved points, standard_plane, measurements, note.
* ``GET /frames/<i>``: the image of frame i (PNG / JPEG as stored; other formats re-encoded as PNG).
* ``POST /api/measure`` {points: {name: [x, y]}}: alpha/beta/coverage (None where not yet defined).
* ``POST /api/save/<i>`` {points, standard_plane}: writes frame i's row (atomically) and answers the row's values.

Points are in pixels of the stored image with pixel centres at integers (the project's landmark convention).
Measurements come from ``coco.measure_graf``, i.e. the project's one geometry; the page computes none itself.
"""

from __future__ import annotations

import json
import math
import mimetypes
import os
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sonogate.data.folder import list_images
from sonogate.errors import DataError, SonogateError
from sonogate.measurements import graf_type
from sonogate.tasks.hip_us.coco import (
    GRAF_LANDMARKS,
    LANDMARK_TITLES,
    MEASUREMENT_NEEDS,
    MEASUREMENTS,
    label_row,
    measure_graf,
    read_labels_csv,
    write_labels_csv,
)

LOCALHOST = "127.0.0.1"
PAGE_DIR = Path(__file__).with_name("label_page")
PAGE_FILES = {"/": "index.html", "/index.html": "index.html", "/label.js": "label.js", "/label.css": "label.css"}
MAX_BODY_BYTES = 1 << 20
_BROWSER_FORMATS = {".png", ".jpg", ".jpeg"}


def _float_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class LabelSession:
    """The frames of a folder and the labels.csv they are labelled into; thread-safe.

    Inputs: ``frames_dir`` (images, searched recursively; the CSV itself is ignored), ``out_csv`` (created or
    resumed: rows already there are kept, with any other columns they have), ``patient_id``, ``sweep_id``
    (default: the frame's sub-folder, or the folder's name for frames at its top).
    """

    def __init__(self, frames_dir: str | os.PathLike, out_csv: str | os.PathLike, patient_id: str = "",
                 sweep_id: str = ""):
        self.frames_dir = Path(frames_dir)
        self.frames = list_images(self.frames_dir)
        self.out_csv = Path(out_csv)
        if self.out_csv.is_dir():
            raise DataError(f"--out must be a CSV file, not a folder: {self.out_csv}")
        self.patient_id = patient_id
        self.sweep_id = sweep_id
        self._lock = threading.Lock()
        self.header, self.rows = read_labels_csv(self.out_csv)
        self._row_of = {self._normal(row.get("image", "")): k for k, row in enumerate(self.rows)}

    @staticmethod
    def _normal(relative: str) -> str:
        return Path(os.path.normpath(relative.strip().replace("\\", "/"))).as_posix()

    def relative(self, i: int) -> str:
        """Frame i's path relative to the CSV's folder (the ``image`` column)."""
        return Path(os.path.relpath(self.frames[i].resolve(), self.out_csv.resolve().parent)).as_posix()

    def _frame_sweep(self, i: int) -> str:
        if self.sweep_id:
            return self.sweep_id
        parent = self.frames[i].parent.relative_to(self.frames_dir)
        return parent.as_posix() if parent.parts else self.frames_dir.resolve().name

    def saved_row(self, i: int) -> dict | None:
        k = self._row_of.get(self._normal(self.relative(i)))
        return None if k is None else self.rows[k]

    def resume_index(self) -> int:
        """The first frame without a row in the CSV (the last frame when every one has one)."""
        for i in range(len(self.frames)):
            if self.saved_row(i) is None:
                return i
        return len(self.frames) - 1

    def state(self) -> dict:
        with self._lock:
            return {
                "landmarks": [{"name": n, "title": LANDMARK_TITLES[n]} for n in GRAF_LANDMARKS],
                "measurement_needs": {k: list(v) for k, v in MEASUREMENT_NEEDS.items()},
                "frames": [{"index": i, "image": self.relative(i), "saved": self.saved_row(i) is not None}
                           for i in range(len(self.frames))],
                "resume_index": self.resume_index(),
                "out_csv": str(self.out_csv),
                "patient_id": self.patient_id,
            }

    def _check_index(self, i: int) -> None:
        if not 0 <= i < len(self.frames):
            raise DataError(f"frame {i} does not exist (the folder has {len(self.frames)})")

    def frame(self, i: int) -> dict:
        """Frame i with what the CSV holds for it (points, standard_plane, measurements, note)."""
        from sonogate.data.folder import load_gray_image

        self._check_index(i)
        height, width = load_gray_image(self.frames[i]).shape[:2]
        with self._lock:
            row = self.saved_row(i)
            points, plane, note, measures = {}, None, "", {name: None for name in MEASUREMENTS}
            if row is not None:
                for name in GRAF_LANDMARKS:
                    x, y = (_float_or_none(row.get(f"lm_{name}_{axis}", "")) for axis in "xy")
                    if x is not None and y is not None:
                        points[name] = [x, y]
                plane_value = _float_or_none(row.get("standard_plane", ""))
                plane = None if plane_value is None else int(plane_value > 0.5)
                note = row.get("note", "")
                measures = {name: _float_or_none(row.get(name, "")) for name in MEASUREMENTS}
            return {"index": i, "image": self.relative(i), "url": f"/frames/{i}", "width": width, "height": height,
                    "saved": row is not None, "points": points, "standard_plane": plane, "note": note,
                    "measures": measures, "count": len(self.frames)}

    def image_bytes(self, i: int) -> tuple[bytes, str]:
        """(encoded image, content type) of frame i."""
        self._check_index(i)
        path = self.frames[i]
        if path.suffix.lower() in _BROWSER_FORMATS:
            return path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        import cv2

        from sonogate.data.folder import load_gray_image

        ok, encoded = cv2.imencode(".png", load_gray_image(path))
        if not ok:
            raise DataError(f"cannot encode {path} as PNG")
        return encoded.tobytes(), "image/png"

    def save(self, i: int, points: dict, standard_plane: int | None) -> dict:
        """Write frame i's row into the CSV (atomic rewrite of the whole file) and return the row."""
        self._check_index(i)
        unknown = sorted(set(points) - set(GRAF_LANDMARKS))
        if unknown:
            raise DataError(f"unknown landmark(s): {', '.join(unknown)}")
        with self._lock:
            relative = self.relative(i)
            new = label_row(relative, points, standard_plane, self.patient_id, self._frame_sweep(i), where=relative)
            k = self._row_of.get(self._normal(relative))
            if k is None:
                self._row_of[self._normal(relative)] = len(self.rows)
                self.rows.append(new)
            else:
                # Columns this page does not own (e.g. a device column) stay as they were.
                self.rows[k] = {**self.rows[k], **new}
            write_labels_csv(self.out_csv, self.rows, self.header)
            return new


def _parse_points(value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError("'points' must be an object {landmark: [x, y]}")
    return {str(k): v for k, v in value.items() if v is not None}


class _Handler(BaseHTTPRequestHandler):
    server_version = "sonogate-label"
    session: LabelSession  # set on the subclass made by make_server

    def log_message(self, format, *args):
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json")

    def _host_ok(self) -> bool:
        # A page of another site that resolves its own name to 127.0.0.1 (DNS rebinding) still sends its Host.
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        return host in (LOCALHOST, "localhost")

    def do_GET(self):
        if not self._host_ok():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "this server answers only on 127.0.0.1"})
        path = self.path.split("?", 1)[0]
        try:
            if path in PAGE_FILES:
                name = PAGE_FILES[path]
                content_type = {"html": "text/html", "js": "text/javascript", "css": "text/css"}[name.rsplit(".")[-1]]
                return self._send(HTTPStatus.OK, (PAGE_DIR / name).read_bytes(), f"{content_type}; charset=utf-8")
            if path == "/api/state":
                return self._json(HTTPStatus.OK, self.session.state())
            match = re.fullmatch(r"/api/frame/(\d+)", path)
            if match:
                return self._json(HTTPStatus.OK, self.session.frame(int(match.group(1))))
            match = re.fullmatch(r"/frames/(\d+)", path)
            if match:
                body, content_type = self.session.image_bytes(int(match.group(1)))
                return self._send(HTTPStatus.OK, body, content_type)
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"not found: {path}"})
        except SonogateError as exc:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})

    def do_POST(self):
        if not self._host_ok():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "this server answers only on 127.0.0.1"})
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            return self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send application/json"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"})
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "the body is not JSON"})
        if not isinstance(body, dict):
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "the body must be a JSON object"})
        path = self.path.split("?", 1)[0]
        try:
            if path == "/api/measure":
                measures = measure_graf(_parse_points(body.get("points")))
                kind = "" if measures["alpha_deg"] is None else graf_type(measures["alpha_deg"], measures["beta_deg"])
                return self._json(HTTPStatus.OK, {"measures": measures, "graf_type": kind})
            match = re.fullmatch(r"/api/save/(\d+)", path)
            if match:
                plane = body.get("standard_plane")
                if plane not in (None, 0, 1, True, False):
                    raise DataError("standard_plane must be 0, 1 or null")
                row = self.session.save(int(match.group(1)), _parse_points(body.get("points")),
                                        None if plane is None else int(plane))
                measures = {name: _float_or_none(row[name]) for name in MEASUREMENTS}
                return self._json(HTTPStatus.OK, {"saved": True, "measures": measures, "note": row["note"],
                                                  "out_csv": str(self.session.out_csv)})
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"not found: {path}"})
        except SonogateError as exc:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})


def make_server(session: LabelSession, host: str = LOCALHOST, port: int = 0, verbose: bool = False) -> ThreadingHTTPServer:
    """An HTTP server for ``session`` bound to 127.0.0.1:``port`` (0: a free port). Any other host is refused:
    the page writes files and shows patient images, so it must not be reachable from the network."""
    if host != LOCALHOST:
        raise SonogateError(f"the labelling page is served on {LOCALHOST} only (asked for {host!r})")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise SonogateError(f"port must be 0..65535, got {port!r}")
    handler = type("LabelHandler", (_Handler,), {"session": session})
    try:
        server = ThreadingHTTPServer((LOCALHOST, port), handler)
    except OSError as exc:
        raise SonogateError(f"cannot listen on {LOCALHOST}:{port}: {exc.strerror or exc}") from None
    server.daemon_threads = True
    server.verbose = verbose
    return server


def server_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"
