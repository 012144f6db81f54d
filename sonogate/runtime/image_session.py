"""A live session for a task decided per image (``sonogate run`` with a radiograph task's bundle: hip X-ray, knee
KL grade, BMD...): frames in, event dicts out, the same calling shape as the ultrasound ``Session``.

    from sonogate.runtime.image_session import ImageSession
    with ImageSession("bundles/knee_kl") as session:
        event = session.process(frame_bgr)      # one dict per frame (docs/events.md, "per-image task events")

Input: frames of a video source that shows one image at a time (a viewing station's or a DR console's video
output, a frame grabber, a folder replayed as a video). Per frame: the bundle's per-image model
(``create_model``; its ``analyze(frame, None, notes)``) when the image has changed, else the last result again.
Output: an event with the task's decision (one of the spec's outcomes), its reason, the task's analyze columns,
timings, device and the bundle / calibration hashes.

Why the change test: a radiograph on a screen stays the same for seconds; measuring each of its frames again
spends a CPU for nothing and, with capture noise, could make the answer flicker. A new image (mean absolute
difference of a 64 x 64 grey thumbnail above ``CHANGE_LEVEL`` grey levels) is measured once.

On any doubt the decision is the task's safe default: a fault of the source, an unreadable frame, a model
error, or a frame the wrapper refuses (out of distribution, implausible values: the wrapper's own checks).
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any, Self

import cv2
import numpy as np

from sonogate.core.signing import load_verified_bundle
from sonogate.errors import BundleError, SonogateError
from sonogate.runtime.model_api import load_image_model


class ImageSession:
    """One live session on a per-image task's bundle.

    Inputs: bundle folder, compute device, threads, optional Ed25519 public key, optional audit log path.
    Output of ``process``: an event dict (``recommendation``: the task's outcome, ``reason``, ``columns``,
    ``measured``: whether this frame was measured or repeats the last measured image's result).
    """

    CHANGE_LEVEL = 4.0  # grey levels (0-255) of mean absolute thumbnail difference that make a new image
    THUMBNAIL = 64

    def __init__(self, bundle: str | Path, *, device: str = "auto", threads: int = 1,
                 public_key: str | Path | None = None, audit: str | Path | None = None, **_ignored: Any):
        self.t_start = time.perf_counter()
        self.bundle = load_verified_bundle(bundle, public_key)
        self.engine = load_image_model(self.bundle.path, device=device, threads=threads)
        if len([spec for spec in getattr(self.engine, "inputs", ()) if spec.kind == "image"]) != 1:
            raise BundleError(f"bundle {self.bundle.path} (task {self.bundle.task}) takes several views per case: "
                              f"a live session shows one image at a time; use 'sonogate analyze' on case folders")
        decision = self.engine.manifest.get("decision") or {}
        self.safe_default = str(decision.get("safe_default") or "no recommendation")
        self.reassuring = tuple(str(v) for v in decision.get("reassuring") or ())
        calibration = self.bundle.calibration_path
        self.calibration_sha256 = (hashlib.sha256(calibration.read_bytes()).hexdigest()
                                   if calibration.exists() else None)
        self.calibration_note = "" if calibration.exists() else (
            f"no calibration at {calibration}: values without bounds, decision '{self.safe_default}'")
        self.last_roi: tuple[int, int, int, int] | None = None
        self.frame_index = 0
        self._thumbnail: np.ndarray | None = None
        self._last: dict[str, Any] | None = None
        self.audit = None
        if audit is not None:
            from sonogate.runtime.audit import AuditLog

            self.audit = AuditLog.for_session(audit, self)

    @property
    def device_name(self) -> str:
        return self.engine.device_name

    @property
    def task(self) -> str:
        return self.bundle.task

    def make_overlay(self):
        """The renderer the live pipeline draws this session's events with."""
        from sonogate.runtime.overlay import ResultOverlay

        return ResultOverlay(reassuring=self.reassuring, annotate=self.engine.annotate)

    # -- per frame ----------------------------------------------------------------------------------------------
    def changed(self, frame: np.ndarray) -> bool:
        """Whether ``frame`` shows another image than the last one measured (and remember it when it does)."""
        grey = frame if frame.ndim == 2 else cv2.cvtColor(frame[:, :, :3], cv2.COLOR_BGR2GRAY)
        thumbnail = cv2.resize(grey, (self.THUMBNAIL, self.THUMBNAIL), interpolation=cv2.INTER_AREA).astype(np.float32)
        if self._thumbnail is not None and float(np.abs(thumbnail - self._thumbnail).mean()) < self.CHANGE_LEVEL:
            return False
        self._thumbnail = thumbnail
        return True

    def process(self, frame: np.ndarray | None, t_capture: float | None = None, *, fault: str | None = None,
                dropped_frames: int = 0) -> dict[str, Any]:
        """Decide on one frame; ``frame=None`` with ``fault`` reports a capture fault. Never raises for a bad frame."""
        t_capture = time.perf_counter() if t_capture is None else t_capture
        t0 = time.perf_counter()
        measured, notes = False, []
        fault_reason = fault or (None if frame is not None else "no frame")
        result: dict[str, Any] | None = None
        if fault_reason is None:
            try:
                if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
                    raise SonogateError(f"frame is not a 2-D or 3-D image array ({type(frame).__name__})")
                if self.changed(frame) or self._last is None:
                    result = self.engine.analyze(frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR),
                                                 None, notes)
                    measured = True
                    self._last = {"result": result, "notes": notes}
                else:
                    result, notes = self._last["result"], self._last["notes"]
            except SonogateError as exc:  # the wrapper refused this image (one line): safe default
                result, notes = {"recommendation": self.safe_default, "reason": str(exc), "columns": {}}, []
                self._last = {"result": result, "notes": notes}
                measured = True
            except Exception as exc:  # a model or backend fault must not stop the station  # noqa: BLE001
                fault_reason = f"model error: {type(exc).__name__}: {exc}"
                self._thumbnail, self._last = None, None
        if fault_reason is not None:
            result = {"recommendation": self.safe_default, "reason": fault_reason, "columns": {}}
        recommendation = str(result.get("recommendation") or self.safe_default)
        if recommendation in self.reassuring and (fault_reason is not None or self.calibration_sha256 is None):
            recommendation = self.safe_default  # unreachable by the wrapper's rules; a guard -O cannot strip
        now = time.perf_counter()
        event = {
            "frame": self.frame_index,
            "type": "image_task",
            "task": self.task,
            "t_s": round(now - self.t_start, 4),
            "latency_ms": round((now - t_capture) * 1e3, 3) if math.isfinite(t_capture) else None,
            "stages_ms": {"analyze": round((now - t0) * 1e3, 3)},
            "recommendation": recommendation,
            "reason": result.get("reason"),
            "columns": _plain(result.get("columns") or {}),
            "rows": _plain(result.get("rows")) if result.get("rows") else None,
            # the wrapper's whole result (e.g. hip_xr's per-hip values): what the overlay's annotate step draws
            "result": _plain({k: v for k, v in result.items() if k not in ("recommendation", "reason")}),
            "notes": list(notes),
            "measured": measured,
            "dropped_frames": dropped_frames,
            "fault": fault_reason,
            "device": self.device_name,
            "bundle_sha256": self.bundle.bundle_hash,
            "calibration_sha256": self.calibration_sha256,
        }
        if self.audit is not None:
            self.audit.record(event)
        self.frame_index += 1
        return event

    def reset(self, next_hip: bool = False, roi: tuple[int, int, int, int] | None = None) -> None:
        """Forget the last image: the next frame is measured again (``next_hip`` has no meaning here)."""
        self._thumbnail, self._last = None, None
        if roi is not None:
            self.last_roi = roi

    def set_source_scale(self, mm_per_pixel, spacing_source) -> None:
        """A radiograph task measures in its own units; a capture source's scale is not used."""

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()
            self.audit = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python numbers, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
