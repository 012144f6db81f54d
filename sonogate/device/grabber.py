"""Latest-frame grabber: a capture thread that never lets latency build up, with a watchdog and reconnect.

The capture thread reads the source as fast as it delivers and keeps only the newest frame (Holoscan's
"drop the oldest" queue policy with a queue of one): a frame that is overwritten before the consumer takes it
counts as dropped, never queued. The consumer calls :meth:`LatestFrameGrabber.get` and always receives the
newest frame, so what it shows is never older than one source period plus its own processing time.

Watchdog (``state``: ``"starting" | "live" | "lost" | "ended"`` with ``last_error``):

* no new frame for ``stale_after_s`` (at least 2.5 source periods) -> ``lost`` (checked on every ``state`` /
  ``get`` call, so a read that blocks inside OpenCV still shows up); a failed read closes the source and
  reopens it with back-off (``reconnect_backoff_s``, the last value repeating); after a stall frames are
  published again once they keep coming for ``recover_after_s`` (the first ones may be a decoder flush);
* the same image (mean absolute difference of a strided ~64x64 sample within ``frozen_tolerance`` grey
  levels) for ``frozen_after_s`` -> ``lost`` ("feed frozen"): the source is closed and reopened with back-off,
  and no frozen frame is published until the picture changes;
* a recording without ``loop`` that reaches its end -> ``ended``.

Buffers: three frame buffers rotate between the capture thread, the "latest" slot and the consumer, and
OpenCV decodes into them in place (``VideoCapture.read(image=buf)``), so the per-frame path allocates nothing
beyond small bookkeeping. The price: ``GrabbedFrame.image`` is valid until the consumer's next ``get()``;
``copy()`` it to keep it longer, or build the grabber with ``reuse_buffers=False``.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sonogate.device.capture import CaptureSource

if TYPE_CHECKING:
    from typing_extensions import Self

try:
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None  # type: ignore[assignment]

STATES = ("starting", "live", "lost", "ended")


@dataclass
class GrabbedFrame:
    index: int  # running number of published frames (gaps = frames dropped in between)
    image: np.ndarray  # BGR uint8 (H, W, 3); valid until the next get() when buffers are reused
    t_capture: float  # time.perf_counter() right after the source returned it
    dropped_total: int  # frames overwritten before anyone took them, since start


class _FrozenDetector:
    """Is the picture the same as ``frozen_after_s`` ago? Compares a strided sample, no per-frame allocation."""

    def __init__(self, after_s: float | None, tolerance: float, side: int = 64) -> None:
        self.after_s = after_s
        self.tolerance = float(tolerance)
        self.side = side
        self._ref: np.ndarray | None = None
        self._cur: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None
        self._size = (1, 1)
        self.since: float | None = None  # when the current reference picture first appeared

    def reset(self) -> None:
        self._ref = None
        self.since = None

    def frozen_for(self, image: np.ndarray, now: float) -> float:
        """Seconds the picture has been unchanged (0 when it just changed or detection is off)."""
        if not self.after_s:
            return 0.0
        if image.shape != self._shape:
            self._shape = image.shape
            stride = max(1, min(image.shape[0], image.shape[1]) // self.side)
            self._size = (max(1, image.shape[1] // stride), max(1, image.shape[0] // stride))  # (w, h)
            self._cur = np.empty((self._size[1], self._size[0], *image.shape[2:]), np.uint8)
            self._ref = None
        # nearest-neighbour resize into a preallocated buffer = a strided sample, without numpy's slow gather
        self._cur = cv2.resize(image, self._size, dst=self._cur, interpolation=cv2.INTER_NEAREST)
        if self._ref is None:
            self._ref = np.empty_like(self._cur)
        else:
            mean_abs = cv2.norm(self._cur, self._ref, cv2.NORM_L1) / self._cur.size
            if mean_abs <= self.tolerance and self.since is not None:
                return now - self.since
        self._ref, self._cur = self._cur, self._ref  # the new picture becomes the reference
        self.since = now
        return 0.0


class LatestFrameGrabber:
    """Capture thread keeping only the newest frame, with stale / frozen watchdog and reconnect.

    ``source_factory`` opens the source (e.g. ``lambda: open_source(spec)``); it is called again to reconnect.
    With ``fail_fast`` (default) the first open happens inside :meth:`start`, so a user error such as a missing
    file raises ``SourceError`` there instead of turning into an endless reconnect loop.
    """

    def __init__(
        self,
        source_factory: Callable[[], CaptureSource],
        *,
        stale_after_s: float = 1.0,
        frozen_after_s: float | None = 2.0,
        reconnect_backoff_s: Sequence[float] = (0.25, 0.5, 1, 2, 4),
        frozen_tolerance: float = 0.5,
        recover_after_s: float = 0.1,
        reuse_buffers: bool = True,
        fail_fast: bool = True,
        name: str = "capture",
    ) -> None:
        if stale_after_s <= 0:
            raise ValueError("stale_after_s must be > 0")
        if not reconnect_backoff_s:
            raise ValueError("reconnect_backoff_s needs at least one delay")
        self._factory = source_factory
        self.stale_after_s = float(stale_after_s)
        self.frozen_after_s = float(frozen_after_s) if frozen_after_s else None
        self.reconnect_backoff_s = tuple(float(s) for s in reconnect_backoff_s)
        self.recover_after_s = float(recover_after_s)
        self.reuse_buffers = reuse_buffers
        self.fail_fast = fail_fast
        self.name = name
        self._frozen = _FrozenDetector(self.frozen_after_s, frozen_tolerance)

        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source: CaptureSource | None = None
        self._state = "starting"
        self._last_error = ""
        self._latest: tuple[int, np.ndarray, float] | None = None
        self._held: np.ndarray | None = None  # buffer the consumer has now
        self._free: list[np.ndarray] = []  # buffers nobody uses
        self._next_index = 0
        self._last_publish_t: float | None = None
        # counters (read without the lock: plain ints, good enough for reporting)
        self.dropped_total = 0
        self.frames_read = 0
        self.frames_published = 0
        self.frames_taken = 0
        self.reconnects = 0
        self.source_name = ""
        self.source_fps = 0.0
        self._read_s = 0.0
        self._overhead_s = 0.0
        self._read_takes_out = False

    # ------------------------------------------------------------------ public API
    def start(self) -> LatestFrameGrabber:
        if self._thread is not None:
            return self
        self._stop.clear()
        with self._cond:
            self._state, self._last_error = "starting", ""
        if self.fail_fast:
            self._adopt(self._factory())  # SourceError propagates to the caller
        self._thread = threading.Thread(target=self._run, name=f"sonogate-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the source. A read blocked in OpenCV returns within its read timeout."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            self._close_source()
        with self._cond:
            self._latest = None  # nothing is served after stop()
            self._held = None
            self._free.clear()
            if self._state != "ended":
                self._state = "ended"
                self._last_error = self._last_error or "stopped"
            self._cond.notify_all()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def state(self) -> str:
        with self._cond:
            self._check_stale(time.perf_counter())
            return self._state

    @property
    def last_error(self) -> str:
        with self._cond:
            return self._last_error

    def get(self, timeout: float | None = None) -> GrabbedFrame | None:
        """The newest frame not returned before; waits up to ``timeout`` s (None: until one comes or the end).

        Returns None on timeout, after the end of a recording, or after stop(). Calling get() hands the
        previous frame's buffer back to the capture thread.
        """
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._cond:
            if self._held is not None:
                self._free.append(self._held)
                self._held = None
            while self._latest is None:
                now = time.perf_counter()
                self._check_stale(now)
                if self._state == "ended" or self._stop.is_set():
                    return None
                if deadline is not None and now >= deadline:
                    return None
                wait = self._stale_s if deadline is None else min(deadline - now, self._stale_s)
                self._cond.wait(max(wait, 0.0))
            index, image, t_capture = self._latest
            self._latest = None
            if self.reuse_buffers:
                self._held = image
            self.frames_taken += 1
            return GrabbedFrame(index, image, t_capture, self.dropped_total)

    def stats(self) -> dict[str, float | int | str]:
        """Counters and per-stage timing (OMZ-style): mean source read time and grabber overhead per frame."""
        n = max(self.frames_read, 1)
        return {
            "state": self.state,
            "last_error": self.last_error,
            "source": self.source_name,
            "source_fps": self.source_fps,
            "frames_read": self.frames_read,
            "frames_published": self.frames_published,
            "frames_taken": self.frames_taken,
            "dropped_total": self.dropped_total,
            "reconnects": self.reconnects,
            "read_ms_mean": 1000.0 * self._read_s / n,
            "overhead_us_mean": 1e6 * self._overhead_s / n,
        }

    # ------------------------------------------------------------------ capture thread
    @property
    def _stale_s(self) -> float:
        # a slow source (a 2 fps cine) is not "stale" between two of its frames
        return max(self.stale_after_s, 2.5 / self.source_fps) if self.source_fps > 0 else self.stale_after_s

    def _check_stale(self, now: float) -> None:
        """Called with the lock held: a live feed without a new frame for stale_after_s is lost."""
        if self._state == "live" and self._last_publish_t is not None:
            gap = now - self._last_publish_t
            if gap > self._stale_s:
                self._state = "lost"
                self._last_error = f"no new frame for {gap:.1f} s from {self.source_name}"

    def _set_state(self, state: str, error: str | None = None) -> None:
        with self._cond:
            if self._stop.is_set():
                return  # stop() has the last word
            self._state = state
            if error is not None:
                self._last_error = error
            self._cond.notify_all()

    def _adopt(self, source: CaptureSource) -> None:
        self._source = source
        self.source_name = str(getattr(source, "name", type(source).__name__))
        self.source_fps = float(source.fps or 0.0)
        try:
            self._read_takes_out = "out" in inspect.signature(source.read).parameters
        except (TypeError, ValueError):
            self._read_takes_out = False

    def _close_source(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            try:
                source.close()
            except Exception:  # noqa: BLE001, S110 - closing a broken source must not kill the thread
                pass

    def _backoff(self, attempt: int) -> float:
        return self.reconnect_backoff_s[min(attempt, len(self.reconnect_backoff_s) - 1)]

    def _take_back_buffer(self) -> np.ndarray | None:
        if not self.reuse_buffers:
            return None
        with self._cond:
            return self._free.pop() if self._free else None

    def _publish(self, image: np.ndarray, t_capture: float) -> np.ndarray | None:
        """Make ``image`` the latest frame; return a buffer for the next read (the overwritten one if any)."""
        with self._cond:
            if self._stop.is_set():
                return None  # a read that finished after stop(): nothing is served any more
            back = None
            if self._latest is not None:
                self.dropped_total += 1
                back = self._latest[1]
            elif self._free:
                back = self._free.pop()
            self._latest = (self._next_index, image, t_capture)
            self._next_index += 1
            self._last_publish_t = t_capture
            self._state = "live"
            self.frames_published += 1
            self._cond.notify_all()
        return back if self.reuse_buffers else None

    def _run(self) -> None:
        attempt = 0  # reconnect attempts since the last published frame
        back: np.ndarray | None = None
        last_ok_t = time.perf_counter()
        recovering_since: float | None = None
        try:
            while not self._stop.is_set():
                if self._source is None:
                    if self._stop.wait(self._backoff(attempt)):
                        break
                    attempt += 1
                    try:
                        self._adopt(self._factory())
                    except Exception as exc:  # noqa: BLE001 - SourceError, or anything OpenCV throws while opening
                        self._set_state("lost", str(exc) or type(exc).__name__)
                        continue
                    self.reconnects += 1
                    last_ok_t = time.perf_counter()
                    recovering_since = None
                source = self._source
                error: str | None = None
                t0 = time.perf_counter()
                try:
                    if self._read_takes_out:
                        ok, image = source.read(out=back)  # type: ignore[call-arg]
                    else:
                        ok, image = source.read()
                except Exception as exc:  # noqa: BLE001 - bad frame format (SourceError) or a decoder error
                    ok, image, error = False, None, str(exc) or type(exc).__name__
                now = time.perf_counter()
                self._read_s += now - t0
                if not ok or image is None:
                    if error is None and getattr(source, "finite", False):
                        self._set_state("ended", f"end of {self.source_name}")
                        break
                    self._set_state("lost", error or f"{self.source_name} returned no frame")
                    self._close_source()
                    continue
                self.frames_read += 1
                if back is not None and image is not back:
                    back = None  # the source allocated (shape changed): drop the old buffer
                gap, last_ok_t = now - last_ok_t, now
                if gap > self._stale_s and self.frames_read > 1:
                    # Frames after a stall may be the decoder flushing old data: only trust the feed again
                    # once frames keep coming for recover_after_s.
                    recovering_since = now
                    self._set_state("lost", f"no new frame for {gap:.1f} s from {self.source_name}")
                frozen_s = self._frozen.frozen_for(image, now)
                if self.frozen_after_s and frozen_s >= self.frozen_after_s:
                    self._set_state("lost", f"feed frozen: the same image for {frozen_s:.1f} s from {self.source_name}")
                    self._close_source()
                    continue
                if recovering_since is not None:
                    if now - recovering_since < self.recover_after_s:
                        continue
                    recovering_since = None
                back = self._publish(image, now)
                if back is None:
                    back = self._take_back_buffer()
                attempt = 0
                self._overhead_s += time.perf_counter() - now
        except BaseException as exc:  # a bug here must still leave a readable state, not a silent dead thread
            with self._cond:
                self._last_error = f"capture thread failed: {type(exc).__name__}: {exc}"
            raise
        finally:
            self._close_source()
            with self._cond:
                if self._state != "ended":
                    self._state = "ended"
                    self._last_error = self._last_error or "stopped"
                self._cond.notify_all()
