"""Draw what the sonographer sees: recommendation banner, measurements with bounds, Graf type, quality, speed,
and a 1 cm scale bar in the image when the event carries ``mm_per_pixel``.

On a scanner the bundle is not calibrated for (event ``scanner_status`` "not_calibrated", no fault) the banner
says so in its own colour, with the instruction on a second line, and the panel shows no numbers: alpha, beta,
coverage, Graf type and the plane bar come from a model outside its domain (docs/safety.md says why).

Input: the captured BGR frame, the ROI, and the event dict of that frame. Output: an annotated BGR image
(the frame is copied into a reused canvas; the capture buffer is never written to).
"""

from __future__ import annotations

import cv2
import numpy as np

from sonogate.runtime.recommend import DISPLAY_TEXT, Recommendation

COLOURS = {  # BGR
    Recommendation.US_SUFFICIENT.value: (60, 170, 40),
    Recommendation.XRAY_RECOMMENDED.value: (30, 30, 220),
    Recommendation.INSUFFICIENT_IMAGE.value: (0, 170, 230),
    Recommendation.NO_RECOMMENDATION.value: (110, 110, 110),
}
UNITS = {"alpha_deg": "deg", "beta_deg": "deg", "coverage_pct": "%"}
LABELS = {"alpha_deg": "alpha", "beta_deg": "beta", "coverage_pct": "coverage"}
FONT = cv2.FONT_HERSHEY_SIMPLEX
NOT_CALIBRATED_COLOUR = (150, 40, 150)  # BGR purple: none of the recommendation colours
NOT_CALIBRATED_BANNER = ("NOT CALIBRATED FOR THIS SCANNER", "run sonogate adapt (docs/site.md)")
NOT_CALIBRATED_PANEL = ("measurements hidden: the model is", "outside its calibrated domain.",
                        "Label sweeps from this scanner", "(sonogate label), then run", "sonogate adapt (docs/site.md)")


class OverlayRenderer:
    """Reuses one canvas per frame size."""

    PANEL_WIDTH = 300

    def __init__(self):
        self._canvas: np.ndarray | None = None
        self.xray_lines: list[str] = []  # the latest radiograph's result (sonogate run --xr-bundle)
        self.banner_lines: tuple[str, ...] = ()  # what the last ``render`` put in the banner
        self.drawn_text: list[str] = []  # every text the last ``render`` drew, in order (for reports and tests)

    def _text(self, canvas: np.ndarray, text: str, org, scale: float, colour, thickness: int = 1) -> None:
        self.drawn_text.append(text)
        cv2.putText(canvas, text, org, FONT, scale, colour, thickness, cv2.LINE_AA)

    def render(self, frame: np.ndarray, roi, event: dict) -> np.ndarray:
        height, width = frame.shape[:2]
        panel = self.PANEL_WIDTH
        shape = (max(height, 360), width + panel, 3)
        if self._canvas is None or self._canvas.shape != shape:
            self._canvas = np.empty(shape, dtype=np.uint8)
        canvas = self._canvas
        self.drawn_text = []
        canvas[:] = 24
        canvas[:height, :width] = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        recommendation = event["recommendation"]
        not_calibrated = event.get("scanner_status") == "not_calibrated" and not event.get("fault")
        colour = NOT_CALIBRATED_COLOUR if not_calibrated else COLOURS.get(recommendation, (110, 110, 110))
        if roi is not None:
            x, y, w, h = (int(v) for v in roi)
            cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), colour, 2)
        _scale_bar(canvas, roi if roi is not None else (0, 0, width, height), event.get("mm_per_pixel"))

        if not_calibrated:
            self._not_calibrated_banner(canvas, width, colour)
        else:
            # banner across the image: the recommendation in large type
            text = DISPLAY_TEXT.get(Recommendation(recommendation), recommendation)
            cv2.rectangle(canvas, (0, 0), (width - 1, 44), colour, -1)
            scale = 0.9 if len(text) < 24 else 0.6
            self._text(canvas, text, (10, 31), scale, (255, 255, 255), 2)
            self.banner_lines = (text,)

        x0, y = width + 12, 28
        hip = event.get("hip", "R")
        self._text(canvas, f"hip: {'right' if hip == 'R' else 'left'}", (x0, y), 0.55, (230, 230, 230))
        y += 28
        if not_calibrated:
            # no numbers from a model outside its domain (the event keeps them for the log)
            for line in NOT_CALIBRATED_PANEL:
                self._text(canvas, line, (x0, y), 0.45, (255, 255, 255))
                y += 20
            y += 10
            if event.get("refusal"):  # this frame was also refused by an image gate: its reason
                for chunk in _wrap(str(event.get("reason") or ""), 34)[:3]:
                    self._text(canvas, chunk, (x0, y), 0.42, (200, 200, 200))
                    y += 17
                y += 10
        else:
            y = self._measurements(canvas, event, x0, y)
        y = self._footer(canvas, event, x0, y, shape, show_reason=not not_calibrated)
        return canvas

    def _not_calibrated_banner(self, canvas: np.ndarray, width: int, colour) -> None:
        """Two lines over the image, each scaled down to fit its width (never below a readable minimum)."""
        cv2.rectangle(canvas, (0, 0), (width - 1, 64), colour, -1)
        for (text, largest, thickness), baseline in zip(((NOT_CALIBRATED_BANNER[0], 0.8, 2),
                                                         (NOT_CALIBRATED_BANNER[1], 0.55, 1)), (28, 54)):
            scale = largest
            while scale > 0.35 and cv2.getTextSize(text, FONT, scale, thickness)[0][0] > width - 20:
                scale -= 0.05
            self._text(canvas, text, (10, baseline), scale, (255, 255, 255), thickness)
        self.banner_lines = NOT_CALIBRATED_BANNER

    def _measurements(self, canvas: np.ndarray, event: dict, x0: int, y: int) -> int:
        """Values with bounds, Graf type and the standard-plane bar; returns the next free row."""
        measurements = event.get("measurements")
        for name in ("alpha_deg", "beta_deg", "coverage_pct"):
            label = LABELS[name]
            value = None if measurements is None else measurements.get(name)
            if value is None or value.get("value") is None:
                line = f"{label}: --"
                bound_line = ""
            else:
                line = f"{label}: {value['value']:.1f} {UNITS[name]}"
                if value.get("lower_bound") is not None:
                    bound_line = f"  >= {value['lower_bound']:.1f} (lower bound)"
                elif value.get("upper_bound") is not None:
                    bound_line = f"  <= {value['upper_bound']:.1f} (upper bound)"
                else:
                    bound_line = "  no finite bound"
            self._text(canvas, line, (x0, y), 0.6, (255, 255, 255))
            y += 20
            if bound_line:
                self._text(canvas, bound_line, (x0, y), 0.45, (190, 190, 190))
            y += 22
        graf = event.get("graf_type")
        self._text(canvas, f"Graf type: {graf or '--'}", (x0, y), 0.6, (255, 255, 255))
        y += 30

        quality = event.get("plane_probability")
        self._text(canvas, "standard plane", (x0, y), 0.5, (230, 230, 230))
        y += 8
        cv2.rectangle(canvas, (x0, y), (x0 + 200, y + 12), (80, 80, 80), 1)
        if quality is not None:
            fill = int(200 * max(0.0, min(1.0, quality)))
            bar_colour = (60, 170, 40) if quality >= 0.5 else (0, 170, 230)
            cv2.rectangle(canvas, (x0, y), (x0 + fill, y + 12), bar_colour, -1)
        return y + 32

    def _footer(self, canvas: np.ndarray, event: dict, x0: int, y: int, shape, show_reason: bool) -> int:
        """Reason, speed, dropped frames, the latest radiograph and the keys."""
        if show_reason:
            reason = str(event.get("reason") or "")
            for chunk in _wrap(reason, 34)[:3]:
                self._text(canvas, chunk, (x0, y), 0.42, (200, 200, 200))
                y += 17
            y += 10
        latency = event.get("latency_ms")
        fps = event.get("fps")
        speed = f"latency {latency:.0f} ms" if latency is not None else "latency --"
        if fps:
            speed += f"  {fps:.0f} fps"
        self._text(canvas, speed, (x0, y), 0.45, (200, 200, 200))
        y += 18
        self._text(canvas, f"dropped {event.get('dropped_frames', 0)}", (x0, y), 0.45, (200, 200, 200))
        for line in self.xray_lines[:4]:
            y += 18
            self._text(canvas, line, (x0, y), 0.42, (230, 210, 120))
        self._text(canvas, "keys: f freeze  r reset  n next hip  q quit", (x0, shape[0] - 12), 0.38,
                   (150, 150, 150))
        return y


def _scale_bar(canvas: np.ndarray, roi, mm_per_pixel: float | None) -> None:
    """A vertical 1 cm bar with end caps in the ROI's lower left corner, when the scale is known and the bar fits.

    Vertical because the scale is measured along the depth axis (the ruler, or the DICOM row spacing).
    """
    if not mm_per_pixel or mm_per_pixel <= 0:
        return
    x, y, w, h = (int(v) for v in roi)
    length = round(10.0 / mm_per_pixel)
    if length < 6 or length > 0.8 * h or w < 40:
        return
    x0, y1 = x + 12, y + h - 12
    y0 = y1 - length
    for thickness, shade in ((4, (0, 0, 0)), (2, (255, 255, 255))):  # dark outline, white bar: readable on any echo
        cv2.line(canvas, (x0, y0), (x0, y1), shade, thickness)
        cv2.line(canvas, (x0 - 4, y0), (x0 + 4, y0), shade, thickness)
        cv2.line(canvas, (x0 - 4, y1), (x0 + 4, y1), shade, thickness)
    cv2.putText(canvas, "1 cm", (x0 + 8, y1 - length // 2 + 5), FONT, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(canvas, "1 cm", (x0 + 8, y1 - length // 2 + 5), FONT, 0.45, (255, 255, 255), 1, cv2.LINE_AA)


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return lines


def xray_lines(event: dict) -> list[str]:
    """Short panel lines for an X-ray event of ``sonogate.runtime.xr_watch`` (one per hip, bounds first)."""
    if event.get("error"):
        return [f"X-ray {event.get('file', '')[:18]}: not measured"]
    lines = [f"X-ray {event.get('file', '')[:24]}"]
    if not event.get("hips"):  # a task measured per image, not per hip: its decision and first columns
        columns = [f" {k}: {v}" for k, v in (event.get("columns") or {}).items() if k != "decision"]
        return lines + [f" {event.get('decision') or ''}"] + columns[:2]
    for side in ("right", "left"):
        hip = (event.get("hips") or {}).get(side) or {}
        ai, ce = hip.get("ai_deg") or {}, hip.get("ce_deg") or {}
        ai_text = f"AI<={ai['upper_bound']:.0f}" if ai.get("upper_bound") is not None else (
            f"AI {ai['value']:.0f}" if ai.get("value") is not None else "AI --")
        ce_text = f"CE>={ce['lower_bound']:.0f}" if ce.get("lower_bound") is not None else (
            f"CE {ce['value']:.0f}" if ce.get("value") is not None else "CE --")
        lines.append(f" {side[0].upper()}: {ai_text} {ce_text} {hip.get('verdict', '') or ''}".rstrip())
    return lines


class ResultOverlay:
    """What a per-image task's live session shows (``ImageSession``): the task wrapper's own picture of the
    result (its ``annotate(frame, result, image)``, the same drawing as the DICOM SC of ``sonogate analyze``) under
    a banner with the decision (green only for the task's reassuring outcomes, red for every other decision, grey
    on a fault or a refused image). Input: frame, ROI (unused), event. Output: an annotated BGR image."""

    REASSURING_COLOUR = (60, 170, 40)
    OTHER_COLOUR = (30, 30, 220)
    FAULT_COLOUR = (110, 110, 110)

    def __init__(self, reassuring: tuple[str, ...] = (), annotate=None):
        self.reassuring = tuple(reassuring)
        self.annotate = annotate
        self.xray_lines: list[str] = []
        self.banner_lines: tuple[str, ...] = ()

    def render(self, frame: np.ndarray, roi, event: dict) -> np.ndarray:
        bgr = frame[:, :, :3] if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        result = event.get("result") or {}
        canvas = None
        if self.annotate is not None and result and not event.get("fault"):
            try:
                canvas = np.ascontiguousarray(self.annotate(bgr, result, None))
            except Exception:  # noqa: BLE001 - a drawing problem must not hide the decision: plain frame below
                canvas = None
        if canvas is None:
            canvas = np.full((max(bgr.shape[0], 200), bgr.shape[1] + 300, 3), 24, dtype=np.uint8)
            canvas[: bgr.shape[0], : bgr.shape[1]] = bgr
        recommendation = str(event.get("recommendation") or "")
        colour = (self.FAULT_COLOUR if event.get("fault") else
                  self.REASSURING_COLOUR if recommendation in self.reassuring else self.OTHER_COLOUR)
        width = bgr.shape[1]
        cv2.rectangle(canvas, (0, 0), (width - 1, 44), colour, -1)
        banner = recommendation.upper().replace("_", " ")
        cv2.putText(canvas, banner, (10, 31), FONT, 0.9 if len(banner) < 24 else 0.6, (255, 255, 255), 2,
                    cv2.LINE_AA)
        reason = _wrap(str(event.get("reason") or ""), max(20, width // 9))[:1]
        if reason:
            cv2.putText(canvas, reason[0], (10, 62), FONT, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        self.banner_lines = (banner, *reason)
        return canvas


def text_panel(frame: np.ndarray, lines: list[str], panel_width: int, min_height: int, scale: float = 0.45,
               first_baseline: int = 26, line_step: int = 22) -> np.ndarray:
    """``frame`` (gray or BGR) with a dark panel ``panel_width`` px wide on its right holding ``lines``, one per
    ``line_step`` px: the DICOM SC picture of a task decided per image. Output: a new BGR image, at least
    ``min_height`` tall."""
    bgr = frame[:, :, :3] if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    height, width = bgr.shape[:2]
    canvas = np.full((max(height, min_height), width + panel_width, 3), 24, dtype=np.uint8)
    canvas[:height, :width] = bgr
    for i, text in enumerate(lines):
        cv2.putText(canvas, text, (width + 12, first_baseline + line_step * i), FONT, scale, (230, 230, 230), 1,
                    cv2.LINE_AA)
    return canvas

