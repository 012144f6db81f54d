"""Capture sources: one tiny interface over capture card, camera, file, network stream, DICOM cine and phantom.

Every source has ``read() -> (ok, frame)`` (BGR uint8 ``(H, W, 3)``; ``(False, None)`` at the end or on a
failed read), ``fps`` (nominal source rate, 0 if unknown), ``close()`` and ``name``. ``read`` also takes an
optional ``out`` array: when it has the right shape the frame is decoded into it (OpenCV reuses the buffer),
which is how :class:`sonogate.device.grabber.LatestFrameGrabber` avoids a per-frame allocation. Without
``out`` every frame is a fresh array the caller may keep.

``open_source(spec)`` picks the source from the text the user typed:

====================  =========================================================================
``0``, ``1`` ...      camera / capture card index (V4L2 on Linux)
``/dev/videoN``       V4L2 device: buffer of 1 frame, optional width / height / fps / FOURCC
``rtsp://`` ...       network stream (rtsp, rtsps, rtmp, udp, rtp, srt, tcp, http, https) over
                      FFmpeg with short open / read timeouts, so a dead stream fails in seconds
``*.dcm``             DICOM cine loop (``sonogate.data.dicom.read_dicom_frames``), paced at fps
``phantom[:SEED]``    the synthetic phantom rendered live (``sonogate.phantom.cine.sweep_frames``)
anything else         a video file; ``realtime=True`` paces it at its own fps (a file then behaves
                      like a live feed: a slow reader skips frames), ``loop=True`` rewinds at the end
====================  =========================================================================

Problems the user can act on raise :class:`sonogate.errors.SourceError` with one line
(``cannot open source '...': ...``). This module never imports torch.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from sonogate.errors import SonogateError, SourceError

if TYPE_CHECKING:
    from typing_extensions import Self

# FFmpeg's own log lines ("moov atom not found", ...) would reach the terminal before our one-line SourceError.
# OpenCV reads this once, when its FFmpeg backend first initialises; set OPENCV_FFMPEG_LOGLEVEL=24 to debug.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

try:  # OpenCV is a runtime dependency, but keep `import sonogate.device` cheap and clear without it.
    import cv2
except ImportError:  # pragma: no cover - exercised only in a broken install
    cv2 = None  # type: ignore[assignment]

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp", "http", "https")
DEFAULT_OPEN_TIMEOUT_S = 3.0
DEFAULT_READ_TIMEOUT_S = 2.0
# Low-latency demuxer flags for network streams, used only when the user has not set the variable.
# Format of OPENCV_FFMPEG_CAPTURE_OPTIONS: "key;value|key;value" (FFmpeg AVOptions).
DEFAULT_FFMPEG_CAPTURE_OPTIONS = "fflags;nobuffer|flags;low_delay|overrun_nonfatal;1"
_ENV_LOCK = threading.Lock()


@runtime_checkable
class CaptureSource(Protocol):
    """What the grabber and the runtime need from a frame source."""

    name: str

    def read(self) -> tuple[bool, np.ndarray | None]:
        """Next BGR uint8 frame ``(H, W, 3)``; ``(False, None)`` at the end or on failure."""
        ...

    @property
    def fps(self) -> float:
        """Nominal source frame rate (0 if unknown)."""
        ...

    def close(self) -> None: ...


def _require_cv2() -> Any:
    if cv2 is None:
        raise SourceError("OpenCV is not installed: pip install opencv-python-headless")
    return cv2


class _QuietOpenCV:
    """Silence OpenCV's own warnings while probing a source: the SourceError says it in one line."""

    def __enter__(self) -> None:
        self._level = None
        try:
            self._level = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        except (AttributeError, cv2.error):
            pass

    def __exit__(self, *exc: object) -> None:
        if self._level is not None:
            cv2.utils.logging.setLogLevel(self._level)


def to_bgr(frame: Any, source: str, out: np.ndarray | None = None) -> np.ndarray:
    """Check a decoded frame and return it as BGR uint8 ``(H, W, 3)``.

    Gray ``(H, W)`` / ``(H, W, 1)`` is expanded to BGR (into ``out`` when it fits), BGRA loses its alpha.
    Anything else (float or 16-bit data, 2 or 5 channels, empty) raises a one-line SourceError naming the
    source, instead of crashing somewhere downstream.
    """
    if not isinstance(frame, np.ndarray) or frame.size == 0:
        raise SourceError(f"source '{source}' returned an empty frame")
    if frame.dtype != np.uint8:
        raise SourceError(
            f"source '{source}' returned {frame.dtype} frames of shape {frame.shape}; expected 8-bit (uint8) video"
        )
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (1, 4)):
        code = cv2.COLOR_BGRA2BGR if frame.ndim == 3 and frame.shape[2] == 4 else cv2.COLOR_GRAY2BGR
        if out is not None and out.shape == (*frame.shape[:2], 3) and out.dtype == np.uint8:
            return cv2.cvtColor(frame, code, dst=out)
        return cv2.cvtColor(frame, code)
    raise SourceError(
        f"source '{source}' returned frames of shape {frame.shape}; expected gray (H, W) or colour (H, W, 3)"
    )


class _Pacer:
    """Real-time pacing: frame ``n`` is due at ``t0 + n / fps`` (no burst to catch up after a stall)."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.next_due: float | None = None

    def reset(self) -> None:
        self.next_due = None

    def frames_behind(self) -> int:
        """Frames a live feed would already have replaced (0 when on time)."""
        if not self.period or self.next_due is None:
            return 0
        late = time.perf_counter() - self.next_due
        return int(late / self.period) if late >= self.period else 0

    def skip(self, frames: int) -> None:
        if self.next_due is not None:
            self.next_due += frames * self.period

    def wait(self) -> None:
        if not self.period:
            return
        now = time.perf_counter()
        if self.next_due is None:
            self.next_due = now
        delay = self.next_due - now
        if delay > 0:
            time.sleep(delay)
        elif delay < -self.period:  # fell behind (slow decode): re-anchor instead of bursting
            self.next_due = now
        self.next_due += self.period


class OpenCVSource:
    """A ``cv2.VideoCapture`` behind the CaptureSource interface (camera, V4L2 device, stream, file)."""

    finite = False  # True when read() returning False means "end of the recording", not "feed lost"

    def __init__(self, name: str, capture: Any, *, nominal_fps: float = 0.0) -> None:
        self.name = name
        self._cap = capture
        reported = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = reported if 0 < reported < 1000 else float(nominal_fps or 0.0)
        self.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        try:
            self.backend = str(capture.getBackendName())
        except cv2.error:
            self.backend = "unknown"
        self.frames_read = 0

    @property
    def fps(self) -> float:
        return self._fps

    def _decode(self, out: np.ndarray | None) -> tuple[bool, np.ndarray | None]:
        if self._cap is None:
            return False, None
        ok, frame = self._cap.read(out) if out is not None else self._cap.read()
        if not ok or frame is None:
            return False, None
        self.frames_read += 1
        return True, to_bgr(frame, self.name, out)

    def read(self, out: np.ndarray | None = None) -> tuple[bool, np.ndarray | None]:
        return self._decode(out)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.width}x{self.height} @ {self.fps:g} fps, {self.backend})"


class CameraSource(OpenCVSource):
    """Camera / capture card by index or ``/dev/videoN`` path: newest frame only (buffer size 1)."""


class StreamSource(OpenCVSource):
    """Network stream over FFmpeg (rtsp, udp, http, ...), opened with short open / read timeouts."""


class VideoFileSource(OpenCVSource):
    """A video file; ``realtime`` paces it at its fps like a live feed, ``loop`` rewinds at the end.

    In real time a reader slower than the file's fps skips frames (as a live capture card would) instead of
    drifting behind the wall clock; ``skipped`` counts them. ``realtime=False`` reads as fast as decoding allows.
    """

    def __init__(self, name: str, capture: Any, *, loop: bool, realtime: bool) -> None:
        super().__init__(name, capture)
        self.loop = loop
        self.finite = not loop
        self.realtime = realtime
        self.frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.loops = 0
        self.skipped = 0
        self._pacer = _Pacer(self.fps if realtime else 0.0)

    def _rewind(self) -> bool:
        if self._cap is None or not self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
            return False
        self.loops += 1
        return True

    def read(self, out: np.ndarray | None = None) -> tuple[bool, np.ndarray | None]:
        behind = self._pacer.frames_behind()
        if behind:  # a live feed would have moved on: drop what the reader missed (bounded to 1 s)
            for _ in range(min(behind, max(1, int(self.fps)))):
                if self._cap is None or not self._cap.grab():
                    break
                self.skipped += 1
            self._pacer.skip(behind)
        ok, frame = self._decode(out)
        if not ok and self.loop and self._rewind():
            ok, frame = self._decode(out)  # an empty or unseekable file gives up here instead of spinning
        if ok:
            self._pacer.wait()
        return ok, frame


class ArraySource:
    """Frames from an in-memory ``(F, H, W[, 3])`` array or a frame iterator factory, paced like a file.

    Backs the DICOM cine and phantom sources; handy in tests too.
    """

    def __init__(
        self,
        name: str,
        frames: np.ndarray | Callable[[], Iterator[np.ndarray]],
        fps: float,
        *,
        loop: bool = False,
        realtime: bool = True,
    ) -> None:
        self.name = name
        self._frames = frames
        self._fps = float(fps)
        self.loop = loop
        self.finite = not loop
        self._pacer = _Pacer(self._fps if realtime else 0.0)
        self._iter: Iterator[np.ndarray] | None = None
        self._closed = False
        self.frames_read = 0
        self.loops = 0

    @property
    def fps(self) -> float:
        return self._fps

    def _new_iter(self) -> Iterator[np.ndarray]:
        return iter(self._frames) if isinstance(self._frames, np.ndarray) else iter(self._frames())

    def _next(self) -> np.ndarray | None:
        if self._iter is None:
            self._iter = self._new_iter()
        frame = next(self._iter, None)
        if frame is None and self.loop:
            self._iter = self._new_iter()
            self.loops += 1
            frame = next(self._iter, None)
        return frame

    def read(self, out: np.ndarray | None = None) -> tuple[bool, np.ndarray | None]:
        if self._closed:
            return False, None
        frame = self._next()
        if frame is None:
            return False, None
        frame = np.asarray(frame)
        if frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8:
            if out is not None and out.shape == frame.shape:
                np.copyto(out, frame)
                frame = out
            else:
                frame = frame.copy()  # never hand out a view of the cine the next loop will reuse
        else:
            frame = to_bgr(frame, self.name, out)
        self.frames_read += 1
        self._pacer.wait()
        return True, frame

    def close(self) -> None:
        self._closed = True
        self._iter = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DicomCineSource(ArraySource):
    """A DICOM ultrasound cine (``.dcm``) replayed like a live feed.

    Frames come from ``sonogate.data.dicom``: ``iter_dicom_frames(path)`` (decoded one at a time, bounded
    memory for long cines) when it exists, else ``read_dicom_frames(path) -> (F, H, W, 3)``. The frame rate is
    ``fps`` if given, else ``read_dicom_fps(path)`` (Frame Time / Cine Rate) when the file has one, else 30.
    A file the DICOM reader rejects raises SourceError with its reason. ``mm_per_pixel`` ((x, y) in mm, or None)
    and ``spacing_source`` ("ultrasound_regions", "pixel_spacing" or None) come from the header, as
    ``sonogate.data.dicom.DicomImage`` reads them; the runtime prefers them to the scanner's depth ruler.
    """

    mm_per_pixel: tuple[float, float] | None = None
    spacing_source: str | None = None

    def __init__(self, path: str | os.PathLike, *, loop: bool = False, realtime: bool = True, fps: float | None = None):
        path = Path(path)
        spec = str(path)
        if not path.is_file():
            raise SourceError(f"cannot open source '{spec}': no such file")
        try:
            from sonogate.data import dicom as dicom_io
        except ImportError as exc:
            raise SourceError(f"cannot open source '{spec}': DICOM reading is not available ({exc})") from None
        iter_frames = getattr(dicom_io, "iter_dicom_frames", None)
        read_frames = getattr(dicom_io, "read_dicom_frames", None)
        read_fps = getattr(dicom_io, "read_dicom_fps", None)
        if iter_frames is None and read_frames is None:
            raise SourceError(f"cannot open source '{spec}': sonogate.data.dicom has no read_dicom_frames")
        try:
            rate = float(fps or 0.0) or (float(read_fps(path) or 0.0) if read_fps is not None else 0.0)
            if iter_frames is not None:
                first = next(iter(iter_frames(path)), None)  # header and first frame decode: fail here, not later
                if first is None:
                    raise SourceError(f"cannot open source '{spec}': the DICOM file has no frames")
                frames: np.ndarray | Callable[[], Iterator[np.ndarray]] = partial(iter_frames, path)
            else:
                cine = np.asarray(read_frames(path))
                if cine.ndim == 3:  # (F, H, W) gray cine
                    cine = cine[..., None]
                if cine.ndim != 4 or cine.shape[0] == 0:
                    raise SourceError(
                        f"cannot open source '{spec}': expected a cine of frames, got shape {cine.shape}"
                    )
                frames = cine
        except SourceError:
            raise
        except SonogateError as exc:  # DataError from the reader: corrupt file, no decoder, ...
            raise SourceError(f"cannot open source '{spec}': {exc}") from None
        super().__init__(f"dicom:{path.name}", frames, rate or 30.0, loop=loop, realtime=realtime)
        read_header = getattr(dicom_io, "read_dicom", None)
        try:  # the physical scale is optional: a header it cannot be read from leaves it None
            header = read_header(path, load_frames=False) if read_header is not None else None
        except Exception:  # noqa: BLE001
            header = None
        if header is not None:
            self.mm_per_pixel, self.spacing_source = header.mm_per_pixel, header.spacing_source

    def _next(self) -> np.ndarray | None:
        try:
            return super()._next()
        except SourceError:
            raise
        except SonogateError as exc:  # a frame that does not decode (truncated cine)
            raise SourceError(f"source '{self.name}': {exc}") from None


class PhantomSource(ArraySource):
    """The synthetic hip phantom rendered live (``sonogate.phantom.cine.sweep_frames``), looping forever.

    ``sweep_frames`` yields ``(frame, label)``; the label of the frame last read is kept in ``last_label``
    (ground truth: angles, true ROI, landmarks) for demos and end-to-end tests.
    """

    def __init__(self, seed: int = 0, *, fps: float = 30.0, realtime: bool = True, chunk_seconds: float = 10.0):
        try:
            from sonogate.phantom.cine import sweep_frames
        except ImportError as exc:
            raise SourceError(f"cannot open source 'phantom:{seed}': the phantom is not available ({exc})") from None
        self.last_label: dict[str, Any] | None = None

        def frames() -> Iterator[np.ndarray]:
            for item in sweep_frames(seed, chunk_seconds, fps, chrome=True):
                if isinstance(item, tuple):
                    item, self.last_label = item[0], item[1]
                yield item

        super().__init__(f"phantom:{seed}", frames, fps, loop=True, realtime=realtime)


def _fourcc_code(fourcc: str) -> int:
    if len(fourcc) != 4:
        raise SourceError(f"FOURCC must be 4 characters (e.g. MJPG, YUYV), got '{fourcc}'")
    return cv2.VideoWriter_fourcc(*fourcc)


def _open_camera(spec: str, index_or_path: int | str, width, height, fps, fourcc) -> CameraSource:
    api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
    with _QuietOpenCV():
        cap = cv2.VideoCapture(index_or_path, api)
    if not cap.isOpened():
        cap.release()
        why = "no such device" if isinstance(index_or_path, str) and not os.path.exists(index_or_path) else (
            "the device could not be opened (busy, no permission, or not a video capture device)"
        )
        raise SourceError(f"cannot open source '{spec}': {why}")
    # Order matters for V4L2: pixel format, then size, then rate. The driver may pick the nearest mode.
    if fourcc:
        cap.set(cv2.CAP_PROP_FOURCC, _fourcc_code(fourcc))
    if width:
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(width))
    if height:
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(height))
    if fps:
        cap.set(cv2.CAP_PROP_FPS, float(fps))
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a queue of old ones
    return CameraSource(spec, cap, nominal_fps=fps or 0.0)


_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(spec: str) -> str:
    """The source text without credentials (``rtsp://user:pass@host`` -> ``rtsp://***@host``) for logs and errors."""
    return _CREDENTIALS.sub("***@", str(spec))


def _open_stream(spec: str, open_timeout_s: float, read_timeout_s: float) -> StreamSource:
    # Timeouts only take effect when passed as open parameters (setting them after open is too late).
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000),
    ]
    with _ENV_LOCK:  # OpenCV reads the variable at open time; only fill it in when the user has not.
        set_env = "OPENCV_FFMPEG_CAPTURE_OPTIONS" not in os.environ
        if set_env:
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = DEFAULT_FFMPEG_CAPTURE_OPTIONS
        try:
            with _QuietOpenCV():
                cap = cv2.VideoCapture(spec, cv2.CAP_FFMPEG, params)
        finally:
            if set_env:
                os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
    if not cap.isOpened():
        cap.release()
        raise SourceError(
            f"cannot open source '{redact(spec)}': no stream there within {open_timeout_s:g} s "
            "(sender down or wrong URL?)"
        )
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return StreamSource(redact(spec), cap)


def _open_file(spec: str, loop: bool, realtime: bool) -> VideoFileSource:
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"cannot open source '{spec}': no such file")
    if not path.is_file():
        raise SourceError(f"cannot open source '{spec}': not a file")
    with _QuietOpenCV():
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            cap = cv2.VideoCapture(str(path), cv2.CAP_ANY)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open source '{spec}': not a video OpenCV can decode")
    return VideoFileSource(spec, cap, loop=loop, realtime=realtime)


def open_source(
    spec: str,
    *,
    loop: bool = False,
    realtime: bool = True,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    fourcc: str | None = None,
    open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
) -> CaptureSource:
    """Open the source described by ``spec`` (see the module docstring). Raises SourceError (one line).

    ``width``/``height``/``fps``/``fourcc`` request a capture mode from a camera or capture card (the driver
    may choose the nearest); ``fps`` also sets the replay rate of a DICOM cine or the phantom. ``loop`` and
    ``realtime`` apply to recordings (file, DICOM). ``open_timeout_s``/``read_timeout_s`` bound network streams.
    """
    spec = str(spec).strip()
    if not spec:
        raise SourceError("cannot open source '': empty source (give a camera index, /dev/videoN, file or URL)")
    lower = spec.lower()
    if lower == "phantom" or lower.startswith("phantom:"):
        seed_text = spec.partition(":")[2] or "0"
        try:
            seed = int(seed_text)
        except ValueError:
            raise SourceError(f"cannot open source '{spec}': phantom seed must be an integer (phantom:SEED)") from None
        return PhantomSource(seed, fps=fps or 30.0, realtime=realtime)
    _require_cv2()
    if spec.isdigit():
        return _open_camera(spec, int(spec), width, height, fps, fourcc)
    if lower.startswith("/dev/video"):
        return _open_camera(spec, spec, width, height, fps, fourcc)
    scheme = lower.split("://", 1)[0] if "://" in lower else ""
    if scheme in STREAM_SCHEMES:
        return _open_stream(spec, open_timeout_s, read_timeout_s)
    if scheme == "file":
        spec = spec[len("file://"):]
    if scheme and scheme != "file":
        raise SourceError(f"cannot open source '{redact(spec)}': unsupported scheme '{scheme}://' "
                          f"(supported: {', '.join(s + '://' for s in STREAM_SCHEMES)})")
    if lower.endswith(".dcm"):
        return DicomCineSource(spec, loop=loop, realtime=realtime, fps=fps)
    return _open_file(spec, loop, realtime)
