"""Find the ultrasound image inside a captured scanner screen.

A capture card sees the whole scanner screen: the B-mode image plus text (patient, presets, MI/TI), depth
rulers with tick marks, logos, icons and black borders. ``detect_roi(frame)`` returns the bounding box
``(x, y, w, h)`` of the image area, or None:

1. work on a copy scaled to at most 320 px (cheap); colourful pixels (logos, coloured icons) are removed
   (unless that leaves nothing: a tinted grey map, sepia or blue, is accepted then);
2. keep pixels that are both non-black and textured (local standard deviation): speckle is, flat UI panels
   are not; a box filter then keeps only places where most neighbours qualify, which removes thin text
   strokes, ruler lines and tick marks;
3. a morphological open drops what is left of text, a close fills dark (anechoic) holes in the image;
4. the largest connected region that is not thin is the image; its box is refined at full resolution.

``RoiTracker`` runs the detector on the first frame and then only every ``redetect_every`` frames, keeps the
locked box while new detections agree with it (so the crop does not jitter), and switches when two detections
in a row agree on a different box (the sonographer changed depth or layout). A manual ROI (``--roi x,y,w,h``,
see ``parse_roi``) bypasses detection. Physical scale is not this module's job: ``sonogate.runtime.scale`` reads
the depth ruler beside the box found here, and ``Session`` prefers a DICOM source's Ultrasound Regions / Pixel
Spacing when there is one (events' ``mm_per_pixel`` and ``scale_source``, docs/events.md).
"""

from __future__ import annotations

import re

import cv2
import numpy as np

from sonogate.errors import SonogateError

Roi = tuple[int, int, int, int]

_WORK_SIDE = 320  # detection resolution (longest side)
_BLACK = 12  # grey level below which a pixel counts as background
_CHROMA = 40  # max(B,G,R) - min(B,G,R) above which a pixel is UI colour, not B-mode grey
_TEXTURE_STD = 3.0  # local standard deviation that speckle exceeds
_MIN_SIDE_FRACTION = 0.12  # the image is at least this fraction of the frame in both directions


def _box_mean(image: np.ndarray, k: int) -> np.ndarray:
    return cv2.boxFilter(image, cv2.CV_32F, (k, k), borderType=cv2.BORDER_CONSTANT)


def _chroma(bgr: np.ndarray) -> np.ndarray:
    b, g, r = cv2.split(bgr)
    return cv2.subtract(cv2.max(cv2.max(b, g), r), cv2.min(cv2.min(b, g), r))


def _grey_content(bgr: np.ndarray, grey_only: bool = True) -> np.ndarray:
    """uint8 0/1: non-black pixels that are grey (B-mode), not UI colour (any colour when not ``grey_only``)."""
    on = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) > _BLACK
    if grey_only:
        on &= _chroma(bgr) < _CHROMA
    return on.astype(np.uint8)


def _candidate_mask(small_bgr: np.ndarray, grey_only: bool | None = None) -> tuple[np.ndarray, bool]:
    """Pixels likely inside the ultrasound image (uint8 0/1) at the working resolution, and whether colourful
    pixels were excluded (``grey_only=None``: yes, unless most textured pixels are colourful, i.e. the
    scanner uses a tinted grey map)."""
    gray = cv2.cvtColor(small_bgr, cv2.COLOR_BGR2GRAY)
    gray_f = gray.astype(np.float32)
    mean = cv2.blur(gray_f, (5, 5))
    var = cv2.blur(gray_f * gray_f, (5, 5)) - mean * mean
    textured = var > _TEXTURE_STD * _TEXTURE_STD
    pixel = (gray > _BLACK) & textured
    grey = _chroma(small_bgr) < _CHROMA
    if grey_only is None:
        total = int(np.count_nonzero(pixel))
        grey_only = total == 0 or np.count_nonzero(pixel & grey) >= 0.5 * total
    if grey_only:
        pixel &= grey
    # keep places where most of a 7x7 neighbourhood qualifies: text strokes and ruler ticks are sparse there
    dense = _box_mean(pixel.astype(np.float32), 7) > 0.5
    mask = cv2.morphologyEx(dense.astype(np.uint8), cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (5, 5)))
    # drop what survives of text lines, rulers and icons (thin or small) before closing, so the close
    # below cannot glue a caption to the image
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    sh, sw = mask.shape
    keep = np.zeros(count, np.uint8)
    for label in range(1, count):
        w, h = int(stats[label, cv2.CC_STAT_WIDTH]), int(stats[label, cv2.CC_STAT_HEIGHT])
        if w >= _MIN_SIDE_FRACTION * sw and h >= _MIN_SIDE_FRACTION * sh:
            keep[label] = 1
    mask = keep[labels]
    # fill dark (anechoic) holes and reconnect image parts split by a dark band
    closed = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15)))
    return closed, grey_only


def _runs(hits: np.ndarray, max_gap: int) -> list[tuple[int, int]]:
    """[start, end) runs of True, joining runs separated by at most ``max_gap`` False values."""
    idx = np.flatnonzero(hits)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > max_gap + 1)
    starts = np.concatenate(([idx[0]], idx[breaks + 1]))
    ends = np.concatenate((idx[breaks], [idx[-1]])) + 1
    return list(zip(starts.tolist(), ends.tolist()))


def _best_run(hits: np.ndarray, lo: int, hi: int) -> tuple[int, int] | None:
    """The run of ``hits`` overlapping [lo, hi) the most: the image, not a ruler or caption beside it."""
    best, best_overlap = None, 0
    for start, end in _runs(hits, max_gap=1):
        overlap = min(end, hi) - max(start, lo)
        if overlap > best_overlap:
            best, best_overlap = (start, end), overlap
    return best


def _hit_level(counts_inside: np.ndarray) -> float:
    """Content count a row / column needs to belong to the image: a tenth of the typical one inside the box.

    Markers drawn against the image edge (a focus triangle, a tick) fill a few pixels of a column; image
    columns are mostly filled, so they stay apart.
    """
    typical = float(np.median(counts_inside)) if counts_inside.size else 0.0
    return max(3.0, 0.1 * typical)


def _refine(frame: np.ndarray, box: Roi, margin: int, grey_only: bool = True) -> Roi:
    """Snap the coarse box to full resolution.

    Around the coarse box (grown by ``margin``), rows and columns with enough grey content form runs; a ruler,
    tick marks or a caption next to the image are separated from it by an (almost) empty gap, so the run
    overlapping the coarse box most is the image. Columns are judged over the current rows and vice versa,
    twice.
    """
    height, width = frame.shape[:2]
    x, y, w, h = box
    x0, y0 = max(0, x - margin), max(0, y - margin)
    x1, y1 = min(width, x + w + margin), min(height, y + h + margin)
    on = _grey_content(frame[y0:y1, x0:x1], grey_only)
    left, right = x - x0, x - x0 + w  # patch coordinates
    top, bottom = y - y0, y - y0 + h
    for _ in range(2):
        cols = cv2.reduce(np.ascontiguousarray(on[top:bottom]), 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
        run = _best_run(cols >= _hit_level(cols[left:right]), left, right)
        if run is None:
            return box
        left, right = run
        rows = cv2.reduce(np.ascontiguousarray(on[:, left:right]), 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
        run = _best_run(rows >= _hit_level(rows[top:bottom]), top, bottom)
        if run is None:
            return box
        top, bottom = run
    return (x0 + left, y0 + top, right - left, bottom - top)


def _largest_region(mask: np.ndarray) -> Roi | None:
    """Bounding box of the largest connected region that is neither thin nor a hollow outline."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    sh, sw = mask.shape
    best, best_area = None, 0
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if w < _MIN_SIDE_FRACTION * sw or h < _MIN_SIDE_FRACTION * sh:
            continue  # text line, ruler, icon
        if area < 0.25 * w * h:
            continue  # a frame-like outline, not an image
        if area > best_area:
            best, best_area = (x, y, w, h), area
    return best


def detect_roi(frame_bgr: np.ndarray) -> Roi | None:
    """Bounding box ``(x, y, w, h)`` of the ultrasound image in a captured screen, or None if none is found."""
    frame = np.asarray(frame_bgr)
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or frame.size == 0:
        return None
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    elif frame.shape[2] != 3:
        return None
    height, width = frame.shape[:2]
    scale = min(1.0, _WORK_SIDE / max(height, width))
    if scale < 1.0:
        small = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    else:
        small = frame
    mask, grey_only = _candidate_mask(small)
    best = _largest_region(mask)
    if best is None and grey_only:  # nothing grey: a tinted map after all? try without the colour rule
        mask, grey_only = _candidate_mask(small, grey_only=False)
        best = _largest_region(mask)
    if best is None:
        return None
    inv = 1.0 / scale
    x, y, w, h = best
    coarse = (round(x * inv), round(y * inv), round(w * inv), round(h * inv))
    refined = _refine(frame, coarse, margin=int(np.ceil(3 * inv)) + 1, grey_only=grey_only)
    if refined[2] < _MIN_SIDE_FRACTION * width or refined[3] < _MIN_SIDE_FRACTION * height:
        return coarse
    return refined


def _close(a: Roi, b: Roi, tol: int) -> bool:
    return all(abs(p - q) <= tol for p, q in zip((a[0], a[1], a[0] + a[2], a[1] + a[3]),
                                                 (b[0], b[1], b[0] + b[2], b[1] + b[3])))


def _contains(outer: Roi, inner: Roi, tol: int) -> bool:
    """``outer`` holds ``inner`` (within ``tol`` px per edge) and is larger than it."""
    ox0, oy0, ox1, oy1 = outer[0], outer[1], outer[0] + outer[2], outer[1] + outer[3]
    ix0, iy0, ix1, iy1 = inner[0], inner[1], inner[0] + inner[2], inner[1] + inner[3]
    inside = ox0 <= ix0 + tol and oy0 <= iy0 + tol and ox1 >= ix1 - tol and oy1 >= iy1 - tol
    return inside and outer[2] * outer[3] > inner[2] * inner[3] and not _close(outer, inner, tol)


def clip_roi(roi: Roi, width: int, height: int) -> Roi:
    """Clip to the frame; raise SonogateError when nothing of the ROI is inside it."""
    x, y, w, h = roi
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise SonogateError(f"ROI {x},{y},{w},{h} lies outside the {width}x{height} frame")
    return (x0, y0, x1 - x0, y1 - y0)


class RoiTracker:
    """Per-frame ROI that is cheap and steady: detect now and then, lock, switch only on agreement.

    ``update(frame) -> (x, y, w, h)``: the manual ROI (clipped to the frame) if one was given; else the locked
    detection; the whole frame until something is detected. ``tolerance`` (pixels, each edge) decides when
    two boxes are "the same".
    """

    def __init__(self, manual: Roi | None = None, redetect_every: int = 30, tolerance: int = 6) -> None:
        if manual is not None:
            manual = tuple(int(v) for v in manual)  # type: ignore[assignment]
            if len(manual) != 4 or manual[2] <= 0 or manual[3] <= 0:
                raise SonogateError(f"ROI must be x,y,w,h with positive width and height, got {manual}")
        self.manual: Roi | None = manual  # type: ignore[assignment]
        self.redetect_every = max(1, int(redetect_every))
        self.tolerance = int(tolerance)
        self.locked: Roi | None = None
        self.detections = 0
        self._pending: Roi | None = None
        self._since_detect = 0
        self._shape: tuple[int, ...] | None = None
        self._manual_clipped: Roi | None = None
        self._motion = _MotionMap()

    def reset(self) -> None:
        self.locked = None
        self._pending = None
        self._since_detect = 0
        self._shape = None
        self._motion = _MotionMap()

    def update(self, frame: np.ndarray) -> Roi:
        height, width = frame.shape[:2]
        if frame.shape != self._shape:  # new resolution or layout: start over
            self.reset()
            self._shape = frame.shape
            self._manual_clipped = None
        if self.manual is not None:
            if self._manual_clipped is None:
                self._manual_clipped = clip_roi(self.manual, width, height)
            return self._manual_clipped
        self._motion.add(frame)
        due = self.locked is None or self._pending is not None or self._since_detect >= self.redetect_every
        if due:
            self._since_detect = 0
            self.detections += 1
            found = detect_roi(frame)
            if found is not None and (self.locked is None or _close(found, self.locked, self.tolerance)
                                      or _contains(self.locked, found, self.tolerance)):
                found = self._motion.extend(found, width, height)
            else:  # the layout may have changed: motion gathered across the change would mislead
                self._motion.forget()
            if found is not None:
                if self.locked is None or _contains(found, self.locked, self.tolerance):
                    # first box, or the same image seen further (a dark far field or a shadow band that the
                    # motion cue recovered): growing never hides image, so it needs no second opinion
                    self.locked, self._pending = found, None
                elif _close(found, self.locked, self.tolerance) or _contains(self.locked, found, self.tolerance):
                    # a box inside the locked one is the same image with a dark part this time (shadow, far
                    # field): never shrink on it. A new layout moves or grows the image; reset() re-detects.
                    self._pending = None
                elif self._pending is not None and _close(found, self._pending, self.tolerance):
                    self.locked, self._pending = found, None  # two detections agree on a new layout
                else:
                    self._pending = found
            else:
                self._pending = None
        self._since_detect += 1
        return self.locked if self.locked is not None else (0, 0, width, height)


def _grow(moving_rows: np.ndarray, start: int, step: int, max_gap: int) -> int:
    """Walk from ``start`` in ``step`` direction over moving rows, bridging still gaps of <= ``max_gap`` rows
    that moving rows follow; returns the first row index past the last moving row reached."""
    last_moving = start - step
    index = start
    while 0 <= index < len(moving_rows):
        if moving_rows[index]:
            last_moving = index
        elif abs(index - last_moving) > max_gap:
            break
        index += step
    return last_moving + step


class _MotionMap:
    """Where the picture changes between frames, at low resolution.

    The scanner's image area changes from frame to frame (speckle, probe motion) while its UI chrome is static,
    so the moving region recovers parts of the image the texture rule misses: a black acoustic shadow band
    across the image, or a dark far field. Cost per frame: one gray conversion and a 160-px resize; the
    buffers are reused. A still image (no motion) leaves the texture box as it is.
    """

    SIDE = 160
    LEVEL = 2  # grey levels of change that count as motion at the reduced size (at least; see extend)
    ROW_SHARE = 0.2  # share of a row's pixels that must move for the row to belong to the image
    MAX_GAP_ROWS = 6  # a still band this thin (an acoustic shadow across the image) is bridged

    def __init__(self) -> None:
        self._previous: np.ndarray | None = None
        self._current: np.ndarray | None = None
        self._diff: np.ndarray | None = None
        self.motion: np.ndarray | None = None
        self.frames = 0

    def add(self, frame: np.ndarray) -> None:
        if frame.ndim != 3 or frame.shape[2] not in (3, 4) or frame.dtype != np.uint8 or min(frame.shape[:2]) < 16:
            return
        height, width = frame.shape[:2]
        scale = self.SIDE / max(height, width)
        size = (max(8, round(width * scale)), max(8, round(height * scale)))
        if self._current is None or self._current.shape != (size[1], size[0]):
            self._previous = None
            self._current = np.empty((size[1], size[0]), np.uint8)
            self._diff = np.empty_like(self._current)
            self.motion = np.zeros_like(self._current)
            self.frames = 0
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY if frame.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
        cv2.resize(gray, size, dst=self._current, interpolation=cv2.INTER_AREA)
        if self._previous is not None:
            cv2.absdiff(self._current, self._previous, dst=self._diff)
            np.maximum(self.motion, self._diff, out=self.motion)
            self._previous, self._current = self._current, self._previous
        else:
            self._previous = self._current.copy()
        self.frames += 1

    def forget(self) -> None:
        if self.motion is not None:
            self.motion[:] = 0
            self.frames = min(self.frames, 1)

    def extend(self, found: Roi | None, width: int, height: int) -> Roi | None:
        """The texture box grown down (and up) through rows that keep moving; motion is then forgotten.

        Inside the box's columns a row counts as image when at least ``ROW_SHARE`` of it changed by
        ``LEVEL`` grey levels over the recent frames (3-row smoothing); static chrome rows do not.
        """
        if found is None or self.motion is None or self.frames < 3:
            return found
        sx = width / self.motion.shape[1]
        c0 = min(self.motion.shape[1] - 1, int(found[0] / sx))
        c1 = max(c0 + 1, int((found[0] + found[2]) / sx))
        # A compressed feed (mp4, RTSP, MJPEG capture) flickers by a few grey levels everywhere, static chrome
        # included (an mp4v phantom cine: 70-100 % of header rows move by 2 levels): motion must stand above
        # the flicker measured beside the image, or the box grows into the header and footer text.
        beside = np.concatenate([self.motion[:, :c0].ravel(), self.motion[:, c1:].ravel()])
        level = self.LEVEL if beside.size < 16 else max(self.LEVEL, int(np.percentile(beside, 90)) + 1)
        moving = self.motion >= level
        np.right_shift(self.motion, 1, out=self.motion)  # fade, not forget: a still moment keeps the far field
        sy = height / moving.shape[0]
        share = moving[:, c0:c1].mean(axis=1)
        share = np.convolve(share, np.ones(3) / 3, mode="same")
        r0 = int(found[1] / sy)
        r1 = min(len(share), int(np.ceil((found[1] + found[3]) / sy)))
        bottom = _grow(share >= self.ROW_SHARE, r1, +1, self.MAX_GAP_ROWS)
        top = _grow(share >= self.ROW_SHARE, r0 - 1, -1, self.MAX_GAP_ROWS) + 1
        y0 = int(top * sy) if top < r0 else found[1]
        y1 = int(np.ceil(bottom * sy)) if bottom > r1 else found[1] + found[3]
        return clip_roi((found[0], y0, found[2], y1 - y0), width, height)


_ROI_TEXT = re.compile(r"^\s*(\d+)\s*[, ]\s*(\d+)\s*[, ]\s*(\d+)\s*[, ]\s*(\d+)\s*$")


def parse_roi(text: str) -> Roi:
    """``"x,y,w,h"`` (pixels of the captured frame) -> tuple; bad text raises SonogateError (one line)."""
    match = _ROI_TEXT.match(str(text))
    if not match:
        raise SonogateError(f"--roi must be x,y,w,h in whole pixels (e.g. 80,60,480,360), got '{text}'")
    x, y, w, h = (int(v) for v in match.groups())
    if w == 0 or h == 0:
        raise SonogateError(f"--roi width and height must be > 0, got '{text}'")
    return (x, y, w, h)
