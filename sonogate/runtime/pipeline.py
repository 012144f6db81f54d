"""The live pipeline: capture thread (latest frame wins) -> session -> overlay / record / display / events.

Input: a capture spec (file, camera index, /dev/videoN, stream URL, DICOM cine, phantom) and a session:
``Session`` (hip ultrasound, decided over frame windows) or ``ImageSession`` (a task decided per image), each
with the overlay it is drawn with (``make_overlay``).
Output: events (JSONL), an optional annotated recording and snapshot, and the summary dict.
Keys in the window: f freeze, r reset, n next hip, q quit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2

from sonogate.device.capture import open_source
from sonogate.device.grabber import LatestFrameGrabber
from sonogate.errors import SonogateError
from sonogate.runtime.events import EventLog
from sonogate.runtime.overlay import OverlayRenderer
from sonogate.runtime.session import Session

DEFINITIVE = ("us_sufficient", "xray_recommended")


@dataclass
class PipelineOptions:
    source: str
    loop: bool = False
    realtime: bool = True
    headless: bool = True
    events_path: str | None = None
    record_path: str | None = None
    snapshot_path: str | None = None
    max_frames: int | None = None
    max_seconds: float | None = None
    stale_after_s: float = 1.0
    frozen_after_s: float = 2.0
    xr_bundle: str | None = None  # X-ray bundle loaded in this process (sonogate.runtime.xr_watch)
    xr_watch: str | None = None  # folder where new radiographs arrive
    device: str = "auto"
    threads: int = 1


class LivePipeline:
    def __init__(self, session: Session, options: PipelineOptions):
        self.session = session
        self.options = options
        self.overlay = session.make_overlay() if hasattr(session, "make_overlay") else OverlayRenderer()
        self._writer = None
        self._snapshot_done = False
        self._last_annotated = None
        self._fps_ema = None
        self._t_last = None
        if not options.headless and not _has_gui():
            raise SonogateError("this OpenCV build has no window support: use --headless, or install opencv-python")
        # open once in the foreground so a bad source is a clear error before any thread starts
        probe = open_source(options.source, loop=options.loop, realtime=options.realtime)
        self.source_fps = probe.fps or 30.0
        if getattr(probe, "mm_per_pixel", None) is not None:  # a DICOM source's spacing beats the depth ruler
            session.set_source_scale(probe.mm_per_pixel, getattr(probe, "spacing_source", None))
        probe.close()
        self.xray_watcher = None
        if options.xr_watch and not options.xr_bundle:
            raise SonogateError("--xr-watch needs --xr-bundle")
        if options.xr_bundle:
            from sonogate.runtime.model_api import load_image_model
            from sonogate.runtime.xr_watch import XrayWatcher

            model = load_image_model(options.xr_bundle, device=options.device, threads=options.threads,
                                     kind="radiograph")
            self.xray_model = model
            if options.xr_watch:
                self.xray_watcher = XrayWatcher(model, options.xr_watch)
        self.xray_events = 0

    def _drain_xray(self, log: EventLog) -> None:
        from sonogate.runtime.overlay import xray_lines

        for event in self.xray_watcher.drain():
            log.write_other(event)
            self.overlay.xray_lines = xray_lines(event)
            self.xray_events += 1

    def _source_factory(self):
        return open_source(self.options.source, loop=self.options.loop, realtime=self.options.realtime)

    def run(self) -> dict:
        """Process the source until it ends, ``max_frames``/``max_seconds``, or ``q``. Returns the summary.

        Paced sources (live feeds, files at their frame rate) go through the capture thread, where the newest
        frame wins and late frames are dropped; an unpaced file (``realtime=False``) is replayed frame by frame
        with nothing dropped, as an offline analysis expects.
        """
        options = self.options
        log = EventLog(options.events_path)
        if options.realtime:
            grabber = LatestFrameGrabber(self._source_factory, stale_after_s=options.stale_after_s,
                                         frozen_after_s=options.frozen_after_s)
        else:
            grabber = _SynchronousReader(self._source_factory())
        frozen = False
        processed = 0
        t_start = time.perf_counter()
        summary = None
        try:
            grabber.start()
            if self.xray_watcher is not None:
                self.xray_watcher.start()
            while True:
                if self.xray_watcher is not None:
                    self._drain_xray(log)
                if options.max_frames is not None and processed >= options.max_frames:
                    break
                if options.max_seconds is not None and time.perf_counter() - t_start > options.max_seconds:
                    break
                grabbed = grabber.get(timeout=0.5)
                if grabbed is None:
                    state = grabber.state
                    if state == "ended":
                        break
                    if state == "lost" or (state == "starting" and time.perf_counter() - t_start > 5.0):
                        event = self.session.process(None, fault=f"source {state}: {grabber.last_error or 'no frame'}",
                                                     dropped_frames=grabber.dropped_total)
                        log.write(event)
                        processed += 1
                    continue
                if frozen:
                    continue
                event = self.session.process(grabbed.image, grabbed.t_capture, dropped_frames=grabbed.dropped_total)
                self._update_fps(event)
                log.write(event)
                processed += 1
                key = self._show_and_record(grabbed.image, event)
                if key == ord("q"):
                    break
                if key == ord("f"):
                    frozen = not frozen
                elif key == ord("r"):
                    self.session.reset()
                elif key == ord("n"):
                    self.session.reset(next_hip=True)
        except KeyboardInterrupt:
            pass
        finally:
            grabber.stop()
            if self.xray_watcher is not None:
                self.xray_watcher.stop()
                for _ in range(2):  # a radiograph that arrived in the last poll interval (seen, then stable)
                    self.xray_watcher.poll_once()
                self._drain_xray(log)
            summary = log.summary(
                xray_events=self.xray_events,
                dropped_frames=grabber.dropped_total,
                device=self.session.device_name,
                bundle_sha256=self.session.bundle.bundle_hash,
                calibration_sha256=self.session.calibration_sha256,
                start_to_first_decision_s=log.first_decision_s,
                source=_safe_source_name(options.source),
            )
            log.close(summary)
            if self._writer is not None:
                self._writer.release()
            if options.snapshot_path and not self._snapshot_done and self._last_annotated is not None:
                cv2.imwrite(options.snapshot_path, self._last_annotated)
            if not options.headless:
                cv2.destroyAllWindows()
        return summary

    def _update_fps(self, event: dict) -> None:
        now = time.perf_counter()
        if self._t_last is not None:
            instant = 1.0 / max(now - self._t_last, 1e-6)
            self._fps_ema = instant if self._fps_ema is None else 0.9 * self._fps_ema + 0.1 * instant
        self._t_last = now
        event["fps"] = None if self._fps_ema is None else round(self._fps_ema, 2)

    def _show_and_record(self, frame, event) -> int:
        options = self.options
        if options.headless and not options.record_path and not options.snapshot_path:
            return -1
        annotated = self.overlay.render(frame, self.session.last_roi, event)
        self._last_annotated = annotated
        if options.record_path:
            if self._writer is None:
                Path(options.record_path).parent.mkdir(parents=True, exist_ok=True)
                height, width = annotated.shape[:2]
                self._writer = cv2.VideoWriter(options.record_path, cv2.VideoWriter_fourcc(*"mp4v"),
                                               float(self.source_fps), (width, height))
                if not self._writer.isOpened():
                    raise SonogateError(f"cannot write video {options.record_path}")
            self._writer.write(annotated)
        if options.snapshot_path and not self._snapshot_done and event["recommendation"] in DEFINITIVE:
            Path(options.snapshot_path).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(options.snapshot_path, annotated)
            self._snapshot_done = True
        if not options.headless:
            cv2.imshow("sonogate", annotated)
            return cv2.waitKey(1) & 0xFF
        return -1


class _SynchronousReader:
    """Grabber-shaped reader for offline replay: every frame, in order, none dropped."""

    dropped_total = 0
    last_error = ""

    def __init__(self, source):
        self.source = source
        self.state = "live"
        self._index = 0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.source.close()

    def get(self, timeout: float = 0.0):
        from sonogate.device.grabber import GrabbedFrame

        ok, image = self.source.read()
        if not ok or image is None:
            self.state = "ended"
            return None
        frame = GrabbedFrame(index=self._index, image=image, t_capture=time.perf_counter(), dropped_total=0)
        self._index += 1
        return frame


def _has_gui() -> bool:
    info = cv2.getBuildInformation()
    gui_section = info.split("GUI:")[1].split("\n\n")[0] if "GUI:" in info else ""
    return "NONE" not in gui_section.split("\n")[0] if gui_section else False


def _safe_source_name(source: str) -> str:
    """Sources can carry credentials (rtsp://user:pass@host): keep them out of events."""
    if "://" in source and "@" in source:
        scheme, rest = source.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return source
