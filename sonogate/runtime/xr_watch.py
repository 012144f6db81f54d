"""The X-ray bundle beside the live ultrasound session, in the same process (``sonogate run --xr-bundle``).

When the recommendation is "X-ray recommended" and the radiograph is taken, the PACS / modality drops it in a
folder (DICOM CR/DX, or PNG/JPEG from a frame grabber); ``XrayWatcher`` picks up each new file once it has
stopped growing, measures it with the X-ray bundle's model (``create_model``, through
``sonogate.runtime.model_api.load_image_model``; for hip_xr: acetabular index, centre-edge angle and IHDI per hip,
with conformal bounds when the bundle is calibrated) and hands back one event per radiograph. The work runs on a
background thread so the ultrasound frame loop never waits for it.

Inputs: a loaded per-image radiograph model (``analyze``, ``algorithm``: any radiograph task's bundle) and a folder. Output: ``drain()`` -> list of event dicts (``type`` "xray";
docs/events.md), also for files that could not be read (``error`` set, no numbers). The file's base name is
the only thing of the input in the event: no patient data.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sonogate.errors import SonogateError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_radiograph(path: Path):
    """(frame BGR uint8, DicomImage or None) of one radiograph file; SonogateError with one line if unusable."""
    from sonogate.data.dicom import is_dicom_file, read_dicom

    if path.suffix.lower() in IMAGE_SUFFIXES:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise SonogateError(f"{path.name}: not a readable image")
        return frame, None
    if not is_dicom_file(path):
        raise SonogateError(f"{path.name}: neither DICOM nor an image file")
    image = read_dicom(path, load_frames=False)
    if not image.is_radiograph:
        raise SonogateError(f"{path.name}: not a radiograph (Modality {image.modality or 'missing'})")
    return next(iter(image.iter_frames())), image


class XrayWatcher:
    """Polls ``folder`` every ``poll_s`` seconds on a daemon thread; files present at start are skipped unless
    ``include_existing``. ``drain()`` returns the events finished since the last call (oldest first)."""

    def __init__(self, model, folder: str | Path, poll_s: float = 1.0, include_existing: bool = False):
        self.model = model
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SonogateError(f"--xr-watch folder {self.folder} does not exist")
        self.poll_s = poll_s
        self._seen: set[str] = set() if include_existing else {p.name for p in self._candidates()}
        self._sizes: dict[str, int] = {}
        self._events: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sonogate-xray-watch", daemon=True)

    def _candidates(self) -> list[Path]:
        try:
            return sorted(p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))
        except OSError:
            return []

    def start(self) -> XrayWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def drain(self) -> list[dict[str, Any]]:
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events

    def poll_once(self) -> int:
        """One scan of the folder (the thread calls this); returns how many files were measured."""
        done = 0
        for path in self._candidates():
            if path.name in self._seen:
                continue
            try:
                size = path.stat().st_size
            except OSError:
                continue
            # a file still being copied grows between polls: measure it only once its size is stable
            if self._sizes.get(path.name) != size or size == 0:
                self._sizes[path.name] = size
                continue
            self._seen.add(path.name)
            self._sizes.pop(path.name, None)
            event = self.measure_file(path)
            with self._lock:
                self._events.append(event)
            done += 1
        return done

    def measure_file(self, path: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        event: dict[str, Any] = {"type": "xray", "file": path.name, "hips": None, "error": None, "notes": []}
        try:
            frame, image = read_radiograph(path)
            notes: list[str] = []
            # the bundle's per-image analysis, as ``sonogate analyze`` runs it (it notes a missing calibration)
            result = self.model.analyze(np.ascontiguousarray(frame), image, notes)
            event["hips"] = result.get("hips")  # a task measured per hip (hip_xr) says so per hip
            event["decision"] = result.get("recommendation")  # not "recommendation": that key is the live one's
            event["columns"] = result.get("columns")
            event["notes"] = notes
        except SonogateError as exc:
            event["error"] = str(exc)
        except Exception as exc:  # a model fault must not stop the ultrasound session  # noqa: BLE001
            event["error"] = f"X-ray model error: {type(exc).__name__}: {exc}"
        event["latency_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
        event["model"] = self.model.algorithm().to_json()
        return event

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.poll_s)
