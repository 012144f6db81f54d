"""The vendor-facing Python API: frames in, event dicts out.

    from sonogate.runtime import Session
    with Session("demo/bundle", device="auto") as session:
        event = session.process(frame_bgr)          # one dict per frame, the same as the JSONL events
        print(event["recommendation"], event["measurements"])

Stages per frame (each timed): roi -> preprocess -> infer -> decide. Any failure inside a stage becomes a
"no_recommendation" event with ``fault`` set; ``process`` itself never raises for a bad frame.

Physical scale (events' ``mm_per_pixel`` / ``scale_source``): a capture source's DICOM spacing
(``set_source_scale``; Ultrasound Regions or Pixel Spacing) takes precedence; otherwise the scanner's depth
ruler beside the ROI is measured (``sonogate.runtime.scale``) when the ROI changes, after ``reset`` and every
``RULER_RECHECK_EVERY`` frames, never on every frame. The measurements are angles and ratios and do not use it:
the scale is for display (the overlay's 1 cm bar) and reports.

Scanner status (events' ``scanner_status``): a rolling record of whether the last ``ScannerDomainCheck.WINDOW``
model-evaluated frames failed the bundle's image-statistics out-of-distribution check. When nearly all of them
fail, the images come from a scanner (or a setting) the bundle was not calibrated for: the session is then "not
calibrated for this scanner", refuses every frame with that reason and the instruction to run sonogate adapt,
and never reassures, until the share of failing frames has dropped well below (hysteresis). docs/safety.md says
why the image check and not the feature check decides, and why the measurements are not displayed then.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections import deque
from pathlib import Path
from typing import Any, Self

import numpy as np

from sonogate.calibration.calfile import CalibrationFile, load_calibration
from sonogate.core.bundle import Bundle
from sonogate.core.signing import load_verified_bundle
from sonogate.errors import CalibrationError, SonogateError
from sonogate.runtime.engine import ImageMeasurementModel
from sonogate.runtime.gates import content_refusal, geometry_refusal
from sonogate.runtime.model_api import create_model
from sonogate.runtime.preprocess import FrameError
from sonogate.runtime.recommend import Decision, Recommendation, Recommender, RecommenderConfig
from sonogate.runtime.roi import RoiTracker
from sonogate.runtime.scale import RulerScale, estimate_ruler_scale

# DicomImage.spacing_source (or an event's name for it) -> the event's scale_source
_SCALE_SOURCES = {"ultrasound_regions": "dicom_regions", "dicom_regions": "dicom_regions",
                  "pixel_spacing": "pixel_spacing", "imager_pixel_spacing": "pixel_spacing"}


SCANNER_CALIBRATED = "calibrated"
SCANNER_NOT_CALIBRATED = "not_calibrated"
# The instruction names the two commands a site runs to bring the scanner on board (docs/site.md).
NOT_CALIBRATED_REASON = ("not calibrated for this scanner: images differ from the training/calibration data; "
                         "label sweeps from this scanner (sonogate label) and run 'sonogate adapt' (docs/site.md)")


class ScannerDomainCheck:
    """Whether the image source as a whole is out of the bundle's domain, from per-frame check results.

    Input per model-evaluated frame (``record``): True when the frame failed the image-statistics check.
    Output: ``status`` "calibrated" | "not_calibrated". It turns "not_calibrated" once the last ``window`` frames
    are all recorded and at least ``enter_share`` of them failed, and back to "calibrated" when the share drops
    below ``exit_share``. Defaults: 45 frames (3 s at 15 fps), 90 % in, below 50 % out. Why these: on the demo's
    phantom cine (a scanner the bundle was trained on) the share peaks at 67 % (the first 45 frames, while the
    ROI settles) and is otherwise near 0; on real scanners it is 100 % (docs/safety.md), so 90 % keeps a margin on
    both sides; the wide gap to 50 % keeps the banner from flickering at the edge.
    """

    WINDOW = 45
    ENTER_SHARE = 0.9
    EXIT_SHARE = 0.5

    def __init__(self, window: int = WINDOW, enter_share: float = ENTER_SHARE, exit_share: float = EXIT_SHARE):
        if window < 1 or not (0.0 < exit_share <= enter_share <= 1.0):
            raise SonogateError(f"scanner check needs window >= 1 and 0 < exit_share <= enter_share <= 1, got "
                                f"{window}, {exit_share}, {enter_share}")
        self.window, self.enter_share, self.exit_share = int(window), float(enter_share), float(exit_share)
        self._failed_frames: deque[bool] = deque(maxlen=self.window)
        self._failed_count = 0
        self.calibrated = True

    @property
    def status(self) -> str:
        return SCANNER_CALIBRATED if self.calibrated else SCANNER_NOT_CALIBRATED

    @property
    def seen(self) -> int:
        """Frames in the record (at most ``window``)."""
        return len(self._failed_frames)

    @property
    def failed_share(self) -> float:
        """Share of the recorded frames that failed the check (0 with none recorded)."""
        return self._failed_count / len(self._failed_frames) if self._failed_frames else 0.0

    def record(self, failed: bool) -> str:
        """Add one frame's result; returns the status after it."""
        if len(self._failed_frames) == self.window:
            self._failed_count -= self._failed_frames[0]
        self._failed_frames.append(bool(failed))
        self._failed_count += bool(failed)
        share = self.failed_share
        if self.calibrated and self.seen == self.window and share >= self.enter_share:
            self.calibrated = False
        elif not self.calibrated and share < self.exit_share:
            self.calibrated = True
        return self.status

    def clear(self) -> None:
        self._failed_frames.clear()
        self._failed_count = 0
        self.calibrated = True


def failed_image_check(result) -> bool | None:
    """Whether a FrameResult failed the image-statistics check (NaN fails); None when the bundle has none.

    Only the image statistics decide the scanner status: they describe how the scanner renders tissue. The
    feature check also fails on unusual anatomy of a calibrated scanner (on the demo cine, most frames of the
    dysplastic hip), and a session must not call a dysplastic hip "an uncalibrated scanner" and drop its
    X-ray recommendation.
    """
    if result.image_ood_distance is None or result.image_ood_threshold is None:
        return None
    return not (result.image_ood_distance <= result.image_ood_threshold)


class Session:
    """One hip-scanning session on one bundle.

    Inputs: bundle folder, compute device ("auto", "ort-cpu", "openvino-cpu", ...), threads, precision
    ("auto" = INT8 when the bundle has it), optional fixed ROI (x, y, w, h), optional calibration path (default:
    the bundle's calibration.json). Output of ``process``: the event dict documented in docs/events.md.
    """

    def __init__(self, bundle: str | Path | Bundle, *, device: str = "auto", threads: int = 1,
                 precision: str = "auto", roi: tuple[int, int, int, int] | None = None,
                 calibration: str | Path | None = None, detect_roi: bool = True,
                 config: RecommenderConfig | None = None, public_key: str | Path | None = None,
                 audit: str | Path | None = None):
        self.t_start = time.perf_counter()
        # every file's sha256, plus the vendor's Ed25519 signature on the manifest when a key is given
        self.bundle = load_verified_bundle(bundle, public_key)
        self.calibration_note = ""
        self.calibration, self.calibration_sha256 = self._load_calibration(calibration)
        self.engine = create_model(self.bundle, device=device, threads=threads, precision=precision)
        if (not isinstance(self.engine, ImageMeasurementModel) or len(self.engine.inputs) != 1
                or self.engine.inputs[0].kind != "image" or self.engine.quality_output is None):
            raise SonogateError(f"bundle {self.bundle.path} (task {self.bundle.task}) is not a one-image "
                                f"measurement model with a quality output: a live session cannot run it")
        self.preprocessor = self.engine.preprocessor
        self.recommender = Recommender(self.bundle.measurement_names, self.calibration, config)
        self.roi_tracker = RoiTracker(manual=roi) if (roi is not None or detect_roi) else None
        self.frame_index = 0
        self.last_roi: tuple[int, int, int, int] | None = roi
        # scanner-level domain check; bundles without image statistics never leave "calibrated"
        self.scanner_check = ScannerDomainCheck()
        self._stage_ms = {"roi": 0.0, "preprocess": 0.0, "infer": 0.0, "decide": 0.0}
        self._geometry_refusal: str | None = None
        self._geometry_countdown = 0
        self._geometry_hold = 0
        # physical scale (display / reports only): from the source's DICOM header, else the depth ruler
        self.mm_per_pixel: float | None = None
        self.scale_source: str | None = None
        self.ruler: RulerScale | None = None
        self._source_scale: tuple[float, str] | None = None
        self._scale_roi: tuple[int, int, int, int] | None = None  # the ROI the ruler was last looked for beside
        self._scale_age = 0
        self.audit = None
        if audit is not None:
            from sonogate.runtime.audit import AuditLog

            self.audit = AuditLog.for_session(audit, self)

    # -- set-up ---------------------------------------------------------------------------------------------
    def _load_calibration(self, path) -> tuple[CalibrationFile | None, str | None]:
        path = Path(path) if path else self.bundle.calibration_path
        if not path.exists():
            self.calibration_note = f"no calibration at {path}: measuring only, no recommendation"
            return None, None
        calibration = load_calibration(path, bundle_hash=self.bundle.bundle_hash)  # raises on stale file
        try:
            calibration_hash = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise CalibrationError(f"cannot read calibration {path}: {exc}") from None
        return calibration, calibration_hash

    @property
    def scanner_status(self) -> str:
        """"calibrated" | "not_calibrated" (``ScannerDomainCheck``)."""
        return self.scanner_check.status

    @property
    def device_name(self) -> str:
        return self.engine.device_name

    def make_overlay(self):
        """The renderer the live pipeline draws this session's events with."""
        from sonogate.runtime.overlay import OverlayRenderer

        return OverlayRenderer()

    # -- per frame ------------------------------------------------------------------------------------------
    def process(self, frame: np.ndarray | None, t_capture: float | None = None, *, fault: str | None = None,
                dropped_frames: int = 0) -> dict[str, Any]:
        """Decide on one frame. ``frame=None`` with ``fault`` reports a capture fault (source lost...)."""
        t_capture = time.perf_counter() if t_capture is None else t_capture
        refusal = None
        stages = self._stage_ms
        for key in stages:
            stages[key] = 0.0
        result = None
        fault_reason = None
        if frame is None or fault is not None:
            fault_reason = fault or "no frame"
        else:
            try:
                t0 = time.perf_counter()
                if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3):
                    raise FrameError(f"frame is not a 2-D or 3-D image array ({type(frame).__name__})")
                if self.roi_tracker is not None:
                    self.last_roi = self.roi_tracker.update(frame)
                self._update_scale(frame)
                t1 = time.perf_counter()
                tensor = self.preprocessor(frame, self.last_roi)
                refusal = self._gate(frame)
                t2 = time.perf_counter()
                if refusal is None:
                    result = self.engine.infer(tensor)
                t3 = time.perf_counter()
                stages["roi"], stages["preprocess"], stages["infer"] = (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3
                if refusal is not None:
                    decision = self.recommender.refuse(refusal, t_capture)
                elif not result.finite:
                    fault_reason = "model output not finite"
                else:
                    failed = failed_image_check(result)
                    if failed is not None:
                        self.scanner_check.record(failed)
                    if not self.scanner_check.calibrated:
                        decision = self.recommender.out_of_domain(NOT_CALIBRATED_REASON)
                    else:
                        decision = self.recommender.update(result.measurements, result.plane_probability,
                                                           usable=not result.out_of_distribution, t=t_capture)
                stages["decide"] = (time.perf_counter() - t3) * 1e3
            except FrameError as exc:
                fault_reason = f"unreadable frame: {exc}"
            except Exception as exc:  # a model or backend fault must not stop the cart  # noqa: BLE001
                fault_reason = f"model error: {type(exc).__name__}: {exc}"
        if fault_reason is not None:
            decision = self.recommender.fault(fault_reason)
        elif not self.scanner_check.calibrated:
            if Recommendation.US_SUFFICIENT in (decision.recommendation, decision.candidate):
                # unreachable by construction (out_of_domain and refuse never reassure); kept as a run-time
                # guard that python -O cannot strip: fail safe as a fault rather than reassure
                fault_reason = "internal error: reassurance on a scanner the bundle is not calibrated for"
                decision = self.recommender.fault(fault_reason)
            elif decision.recommendation == Recommendation.INSUFFICIENT_IMAGE and refusal is None:
                # a frame the image gates refused keeps the gate's reason (a sector probe is no matter for adapt)
                decision = dataclasses.replace(decision, reason=NOT_CALIBRATED_REASON)
        event = self._event(decision, result, t_capture, fault_reason, dropped_frames)
        event["refusal"] = refusal if fault_reason is None else None
        if self.audit is not None:
            self.audit.record(event)
        self.frame_index += 1
        return event

    GEOMETRY_EVERY = 5  # frames between sector / colour checks (about 1 ms each)
    GEOMETRY_HOLD = 3  # further checks a refusal is kept for

    def _gate(self, frame: np.ndarray) -> str | None:
        """Image gates before the model (sonogate.runtime.gates): flat crop every frame, geometry now and then."""
        refusal = content_refusal(self.preprocessor.resized)
        if refusal is not None:
            return refusal
        if self._geometry_countdown <= 0:
            roi = self.last_roi or (0, 0, frame.shape[1], frame.shape[0])
            verdict = geometry_refusal(frame if frame.ndim == 3 else np.dstack([frame] * 3), roi)
            # sticky: one sector / colour verdict holds for the next checks, so a fan that looks linear on
            # one frame does not open a window for reassurance
            if verdict is not None:
                self._geometry_refusal, self._geometry_hold = verdict, self.GEOMETRY_HOLD
            elif self._geometry_hold > 0:
                self._geometry_hold -= 1
            else:
                self._geometry_refusal = None
            self._geometry_countdown = self.GEOMETRY_EVERY
        self._geometry_countdown -= 1
        return self._geometry_refusal

    RULER_RECHECK_EVERY = 150  # frames between ruler checks on an unchanged ROI (a depth change may keep the box)

    def set_source_scale(self, mm_per_pixel: float | tuple[float, float] | None, spacing_source: str | None) -> None:
        """Use the capture source's physical scale instead of the depth ruler (None: back to the ruler).

        Inputs: ``mm_per_pixel`` as a DICOM reader gives it (``DicomImage.mm_per_pixel``: a float or (x, y) in mm;
        the vertical, depth, spacing is reported) and ``spacing_source`` ("ultrasound_regions" / "dicom_regions",
        "pixel_spacing", "imager_pixel_spacing"). Events then say ``scale_source`` "dicom_regions" or
        "pixel_spacing". Pixels of the frames must be the DICOM's own (no rescaling between).
        """
        if mm_per_pixel is None:
            self._source_scale = None
            self._scale_roi, self.mm_per_pixel, self.scale_source = None, None, None
            return
        values = [float(v) for v in np.atleast_1d(mm_per_pixel)]
        value = values[-1]  # (x, y): y is the depth axis, which the ruler measures too
        source = _SCALE_SOURCES.get(str(spacing_source))
        if source is None or not (math.isfinite(value) and value > 0):
            raise SonogateError(f"unusable source scale {mm_per_pixel!r} ({spacing_source!r})")
        self._source_scale = (value, source)
        self.ruler = None
        self.mm_per_pixel, self.scale_source = value, source

    def _update_scale(self, frame: np.ndarray) -> None:
        """Measure the depth ruler when the ROI changed (or after ``RULER_RECHECK_EVERY`` frames); cheap otherwise."""
        if self._source_scale is not None or self.last_roi is None:
            return
        self._scale_age += 1
        if self.last_roi == self._scale_roi and self._scale_age < self.RULER_RECHECK_EVERY:
            return
        self._scale_roi, self._scale_age = self.last_roi, 0
        try:
            self.ruler = estimate_ruler_scale(frame, self.last_roi)
        except Exception:  # noqa: BLE001 - the scale is for display: it must never stop the cart
            self.ruler = None
        # not found (a menu over the ruler, a new depth): no scale rather than a stale one
        self.mm_per_pixel = None if self.ruler is None else self.ruler.mm_per_pixel
        self.scale_source = None if self.ruler is None else self.ruler.source

    def reset(self, next_hip: bool = False, roi: tuple[int, int, int, int] | None = None) -> None:
        """Forget the current hip's frames (``next_hip`` switches R/L); ``roi`` fixes a new image region.

        The scanner record starts again too: ``sonogate analyze`` resets between files, which may come from
        different scanners, and a new ROI may have been the cause. Frames failing the checks are still refused
        one by one meanwhile; the status returns after ``ScannerDomainCheck.WINDOW`` frames."""
        self.recommender.reset(next_hip=next_hip)
        self.scanner_check.clear()
        if self.roi_tracker is not None and self.roi_tracker.manual is None:
            self.roi_tracker.reset()  # the scanner layout may have changed between hips
        self._geometry_countdown, self._geometry_hold, self._geometry_refusal = 0, 0, None
        self._scale_roi = None  # look for the ruler again on the next frame
        if roi is not None:
            self.roi_tracker = RoiTracker(manual=roi)
            self.last_roi = roi

    def _event(self, decision: Decision, result, t_capture: float, fault: str | None, dropped: int) -> dict:
        now = time.perf_counter()
        frame_measurements = None
        if result is not None:
            frame_measurements = {name: (round(float(v), 3) if math.isfinite(v) else None)
                                  for name, v in zip(self.bundle.measurement_names, result.measurements)}
        return {
            "frame": self.frame_index,
            "t_s": round(now - self.t_start, 4),
            "latency_ms": round((now - t_capture) * 1e3, 3) if math.isfinite(t_capture) else None,
            "stages_ms": {k: round(v, 3) for k, v in self._stage_ms.items()},
            "recommendation": decision.recommendation.value,
            "candidate": decision.candidate.value,
            "reason": decision.reason,
            "hip": decision.hip,
            "graf_type": decision.graf_type,
            "measurements": None if decision.measurements is None else {
                name: value.to_json() for name, value in decision.measurements.items()},
            "frame_measurements": frame_measurements,
            "plane_probability": None if result is None or not math.isfinite(result.plane_probability)
            else round(result.plane_probability, 4),
            "ood_distance": None if result is None or result.ood_distance is None
            or not math.isfinite(result.ood_distance) else round(result.ood_distance, 3),
            "image_ood_distance": None if result is None or result.image_ood_distance is None
            or not math.isfinite(result.image_ood_distance) else round(result.image_ood_distance, 3),
            "out_of_distribution": None if result is None else bool(result.out_of_distribution),
            "scanner_status": self.scanner_check.status,
            "accepted_frames": decision.accepted_frames,
            "dropped_frames": dropped,
            "roi": None if self.last_roi is None else [int(v) for v in self.last_roi],
            "mm_per_pixel": None if self.mm_per_pixel is None else round(self.mm_per_pixel, 6),
            "scale_source": self.scale_source,
            "fault": fault,
            "device": self.engine.device_name,
            "bundle_sha256": self.bundle.bundle_hash,
            "calibration_sha256": self.calibration_sha256,
        }

    # -- context manager ------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()
            self.audit = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_session(bundle: str | Path, **kwargs):
    """The live session for any image task's bundle, library errors as SonogateError with one line (for the CLI):
    ``Session`` for a task decided over a window of frames (hip ultrasound), ``ImageSession`` for a task decided
    per image (radiograph tasks). A bundle that cannot be read is left to ``Session`` to report."""
    from sonogate.core.bundle import load_bundle
    from sonogate.runtime.model_api import described_manifest

    try:
        manifest = described_manifest(load_bundle(bundle, verify=False))
    except SonogateError:
        manifest = {}
    try:
        if (manifest.get("decision") or {}).get("unit") not in (None, "frame_window"):
            from sonogate.runtime.image_session import ImageSession

            unused = [name for name in ("calibration", "roi") if kwargs.get(name) is not None]
            if unused or kwargs.get("precision", "auto") != "auto":
                raise SonogateError(f"bundle {bundle} (task {manifest['task'].get('id')}) is decided per image: "
                                    f"--{', --'.join(unused or ['precision'])} applies to frame-window tasks only")
            return ImageSession(bundle, device=kwargs.get("device", "auto"), threads=kwargs.get("threads", 1),
                                public_key=kwargs.get("public_key"), audit=kwargs.get("audit"))
        return Session(bundle, **kwargs)
    except SonogateError:
        raise
    except ValueError as exc:
        raise SonogateError(str(exc)) from None
