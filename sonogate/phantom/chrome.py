"""Scanner user-interface "chrome" around the ultrasound image: what a capture card really sees.

A capture of a cart's video output is a screen: black borders, a patient banner (name, id, date), the
preset panel (probe, frequency, gain, dynamic range), a depth ruler with the focus marker, a grey bar, an
orientation marker and a label under the image. The runtime has to find the ultrasound region inside it,
so the phantom returns the exact rectangle it pasted the image into.

The depth ruler runs along the image's depth axis as displayed: beside the image (vertical) when the probe is at
the top, under it (horizontal, zero at the probe's side) when the image is shown rotated as in Graf's display
(``probe_side`` "left" or "right"); the text stays upright either way.

The patient name is fake (drawn from a list of common given and family names) but looks like a real one,
so de-identification and region-of-interest cropping can be tested on it.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import cv2
import numpy as np

from sonogate.errors import SonogateError

_GIVEN = ("MIA", "NOAH", "EMMA", "LIAM", "AVA", "LUCAS", "SOFIA", "LEO", "ELLA", "FINN", "NORA", "MILO", "ZOE",
          "ARTHUR", "LINA", "OSCAR", "HANNA", "THEO", "IDA", "JONAS")
_FAMILY = ("SMITH", "GARCIA", "MUELLER", "ROSSI", "KOWALSKI", "NGUYEN", "LARSEN", "DUBOIS", "SILVA", "TANAKA",
           "OKAFOR", "JANSEN", "NOVAK", "HUGHES", "SANTOS", "BERG", "MORENO", "KIM", "WEBER", "COSTA")
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT = (225, 225, 225)
_DIM = (150, 150, 150)


def fake_patient_name(rng: np.random.Generator) -> str:
    """A plausible but fake DICOM-style name, e.g. ``"NOVAK^MIA"``."""
    return f"{_FAMILY[int(rng.integers(len(_FAMILY)))]}^{_GIVEN[int(rng.integers(len(_GIVEN)))]}"


def _text(img, text, org, scale=0.42, color=_TEXT, thickness=1) -> None:
    cv2.putText(img, text, (int(org[0]), int(org[1])), _FONT, scale, color, thickness, cv2.LINE_AA)


@dataclass
class ScannerChrome:
    """A fixed screen layout; ``compose`` pastes an ultrasound image into it.

    screen_size: (width, height) of the screen. roi: (x, y, w, h) where the image goes. background: the
    static chrome (BGR uint8). clock_origin: where the running clock is written (or None).
    """

    screen_size: tuple[int, int]
    roi: tuple[int, int, int, int]
    background: np.ndarray
    clock_origin: tuple[int, int] | None = None
    start: _dt.datetime | None = None

    def compose(self, image: np.ndarray, time_s: float | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Screen (H, W, 3) BGR uint8 with ``image`` (grey or BGR) resized (bilinear) into ``roi``."""
        x, y, w, h = self.roi
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        screen = self.background.copy()
        if time_s is not None and self.clock_origin is not None and self.start is not None:
            now = self.start + _dt.timedelta(seconds=float(time_s))
            _text(screen, now.strftime("%H:%M:%S"), self.clock_origin, 0.42, _TEXT)
        screen[y : y + h, x : x + w] = image
        return screen, self.roi


def make_chrome(
    rng: np.random.Generator,
    image_shape: tuple[int, int] = (256, 256),
    screen_size: tuple[int, int] = (640, 480),
    patient_name: str | None = None,
    depth_mm: float = 40.0,
    side: str = "R",
    device_label: str = "L12-5",
    probe_side: str = "top",
) -> ScannerChrome:
    """Draw a random but plausible scanner screen around an image of ``image_shape`` (h, w).

    Inputs: ``rng``; ``screen_size`` (width, height) >= (320, 240); ``patient_name`` (default: a fake name);
    ``depth_mm`` for the ruler; ``side`` "R"/"L" for the label; ``probe_side`` where the probe (depth zero)
    is in the displayed image: "top" (default; the ruler is a vertical column of ticks right of the image, as
    ``sonogate.runtime.scale`` reads it), "left" or "right" (the image shown rotated, depth running
    horizontally: the ruler lies under the image, counting from that side; the bottom margin grows to fit it).
    Output: ``ScannerChrome``. Everything is drawn outside the image rectangle, so the pasted image is left
    exactly as given; with ``probe_side="top"`` the screen is the same as before the option existed.
    """
    width, height = int(screen_size[0]), int(screen_size[1])
    if width < 320 or height < 240:
        raise SonogateError(f"screen size {width}x{height} too small for scanner chrome (min 320x240)")
    if probe_side not in ("top", "left", "right"):
        raise SonogateError(f"probe_side must be 'top', 'left' or 'right', got {probe_side!r}")
    img_h, img_w = int(image_shape[0]), int(image_shape[1])
    top = round(height * rng.uniform(0.08, 0.12))
    bottom = round(height * rng.uniform(0.08, 0.11))
    left = round(width * rng.uniform(0.15, 0.21))
    right = round(width * rng.uniform(0.11, 0.15))
    if probe_side != "top":
        bottom += round(18 * min(1.0, height / 480.0))  # room for a ruler under the image (no rng drawn)
    h = height - top - bottom
    w = round(h * img_w / img_h)
    if w > width - left - right:  # wide screens are height-limited, narrow ones width-limited
        w = width - left - right
        h = round(w * img_h / img_w)
    x = left + int(rng.integers(0, max(1, width - left - right - w + 1)))
    y = top
    screen = np.zeros((height, width, 3), np.uint8)
    screen[:] = int(rng.integers(0, 10))  # some cards do not give pure black

    name = patient_name if patient_name is not None else fake_patient_name(rng)
    start = _dt.datetime(2026, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 365)), seconds=int(rng.integers(28800, 64800)))
    scale = min(1.0, height / 480.0)
    line = round(16 * scale) + 2
    # Banner: institution, patient, id, date / time, acoustic output indices.
    _text(screen, "SONOGATE CHILDRENS HOSP", (8, line), 0.42 * scale, _DIM)
    _text(screen, f"Name: {name}", (8, 2 * line), 0.45 * scale)
    _text(screen, f"ID: {int(rng.integers(10**6, 10**7))}", (x + w // 3, line), 0.42 * scale)
    _text(screen, start.strftime("%Y-%m-%d"), (x + w // 3, 2 * line), 0.42 * scale, _DIM)
    clock_origin = (x + w // 3 + int(110 * scale), 2 * line)
    _text(screen, f"TIB0.{int(rng.integers(0, 3))}  MI 0.{int(rng.integers(4, 9))}", (width - int(150 * scale), line), 0.42 * scale)
    # Preset panel on the left.
    gain = int(rng.integers(55, 85))
    rows = ["Ped Hip", device_label, f"{int(rng.integers(45, 115))}Hz", "RS", "", "2D", f" {gain}%",
            f"Dyn R {int(rng.integers(48, 72))}", "P Low", " Res"]
    for i, text in enumerate(rows):
        if text:
            _text(screen, text, (6, y + 12 + i * line), 0.42 * scale, (235, 235, 235) if i < 3 else _TEXT)
    # Orientation marker next to the image's top-left corner (outside it).
    mx, my = max(8, x - 12), y + 8
    cv2.circle(screen, (mx, my), 6, (200, 200, 200), 1, cv2.LINE_AA)
    _text(screen, "P", (mx - 4, my + 4), 0.35, (200, 200, 200))
    rx = x + w + 6
    if probe_side == "top":
        # Depth ruler with cm ticks and the focus marker, just right of the image.
        cv2.line(screen, (rx, y), (rx, y + h - 1), (230, 230, 230), 1)
        for tick in range(int(depth_mm // 5) + 1):
            ty = y + round(tick * 5.0 / depth_mm * (h - 1))
            length = 7 if tick % 2 == 0 else 4
            cv2.line(screen, (rx, ty), (rx + length, ty), (230, 230, 230), 1)
            if tick % 2 == 0 and tick > 0:
                _text(screen, str(tick // 2), (rx + 10, ty + 4), 0.35 * scale, _DIM)
        fy = y + round(rng.uniform(0.35, 0.6) * h)
        cv2.fillPoly(screen, [np.array([[rx - 1, fy], [rx - 6, fy - 4], [rx - 6, fy + 4]], np.int32)],
                     (200, 200, 200))
        _text(screen, f"{depth_mm / 10:.1f}cm", (rx - 8, min(height - 4, y + h + line)), 0.42 * scale)
        label_y = min(height - 6, y + h + line)
    else:
        # Depth runs horizontally: the ruler lies under the image, zero at the probe's side, ticks pointing down.
        ry = y + h + 4
        cv2.line(screen, (x, ry), (x + w - 1, ry), (230, 230, 230), 1)

        def at_depth(share: float) -> int:
            offset = round(share * (w - 1))
            return x + offset if probe_side == "left" else x + w - 1 - offset

        for tick in range(int(depth_mm // 5) + 1):
            tx = at_depth(tick * 5.0 / depth_mm)
            length = 7 if tick % 2 == 0 else 4
            cv2.line(screen, (tx, ry), (tx, ry + length), (230, 230, 230), 1)
            if tick % 2 == 0 and tick > 0:
                _text(screen, str(tick // 2), (tx - 3, ry + 10 + round(8 * scale)), 0.35 * scale, _DIM)
        fx = at_depth(rng.uniform(0.35, 0.6))
        cv2.fillPoly(screen, [np.array([[fx, ry - 1], [fx - 4, ry - 4], [fx + 4, ry - 4]], np.int32)],
                     (200, 200, 200))
        depth_text = f"{depth_mm / 10:.1f}cm"
        text_x = x + w + 4 if probe_side == "left" else max(0, x - round(44 * scale))
        _text(screen, depth_text, (text_x, ry + 4), 0.42 * scale)
        label_y = min(height - 6, ry + 12 + round(8 * scale) + line)
    # Grey bar (display map) at the far right.
    gx = min(width - 14, rx + 34)
    bar_h = max(40, h // 3)
    ramp = np.linspace(255, 0, bar_h).astype(np.uint8)[:, None].repeat(8, axis=1)
    screen[y + 20 : y + 20 + bar_h, gx : gx + 8] = ramp[:, :, None]
    _text(screen, "M3", (gx - 4, y + 14), 0.35 * scale, _DIM)
    # Label under the image.
    label = f"{'Right' if side.upper().startswith('R') else 'Left'} Hip  Coronal"
    _text(screen, label, (x + w // 6, label_y), 0.5 * scale)
    return ScannerChrome(screen_size=(width, height), roi=(x, y, w, h), background=screen,
                         clock_origin=clock_origin, start=start)


def add_scanner_chrome(
    image: np.ndarray,
    rng: np.random.Generator,
    screen_size: tuple[int, int] = (640, 480),
    patient_name: str | None = None,
    depth_mm: float = 40.0,
    side: str = "R",
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Put ``image`` (grey or BGR uint8) on a scanner screen.

    Output: (screen BGR uint8 of ``screen_size`` = (width, height), roi (x, y, w, h)): the image, resized
    bilinearly to (w, h), occupies exactly ``screen[y:y+h, x:x+w]``.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise SonogateError("add_scanner_chrome needs a grey or BGR uint8 image")
    chrome = make_chrome(rng, image.shape[:2], screen_size, patient_name, depth_mm, side)
    return chrome.compose(image, time_s=0.0)
