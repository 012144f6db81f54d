"""Cheap image gates that run before the model: inputs the Graf method cannot be applied to are refused.

Inputs: the captured frame (BGR) and the model-sized gray crop. Output: None (pass) or a one-line reason.
The deep-feature OOD check and the standard-plane head judge what passes; these gates catch what those
phantom-trained models cannot be trusted with:

* no content: a flat, black or saturated crop (a dead feed, a frozen grey screen);
* sector geometry: the image is a fan (curved or phased array). Graf's method requires a linear transducer,
  so a sector image (cardiac, abdominal) is never a Graf plane, whatever a model says about it;
* colour: colour Doppler / a colour map covers part of the image; the Graf plane is a B-mode image.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_CONTENT_STD = 6.0  # grey levels: below this the crop is flat (black, grey, a frozen placeholder)
MAX_SATURATED = 0.5  # share of pixels at 250+: a blown-out or white screen
MAX_COLOUR_SHARE = 0.01  # share of strongly coloured pixels inside the image
MIN_TOP_TO_MIDDLE_WIDTH = 0.4  # linear arrays are about as wide at the skin as at depth; a fan is not


def content_refusal(gray_crop: np.ndarray) -> str | None:
    """Flat or blown-out crop -> reason; ``gray_crop`` is the uint8 model-sized image."""
    _, std = cv2.meanStdDev(gray_crop)
    if float(std[0][0]) < MIN_CONTENT_STD:
        return f"no image content (flat crop, grey-level std {float(std[0][0]):.1f})"
    if float(np.count_nonzero(gray_crop >= 250)) / gray_crop.size > MAX_SATURATED:
        return "image saturated"
    return None


def geometry_refusal(frame_bgr: np.ndarray, roi: tuple[int, int, int, int]) -> str | None:
    """Sector (fan) image or colour overlay in/around the ROI -> reason. Runs on a reduced copy."""
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        return None
    height, width = frame_bgr.shape[:2]
    scale = 160.0 / max(height, width)
    small = cv2.resize(frame_bgr, (max(8, round(width * scale)), max(8, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    x, y, w, h = (round(v * scale) for v in roi)
    x, y = max(0, x), max(0, y)
    region = small[y:y + max(1, h), x:x + max(1, w)]
    if region.size == 0:
        return None
    hsv = cv2.cvtColor(region, cv2.COLOR_BGR2HSV)
    coloured = (hsv[..., 1] > 90) & (hsv[..., 2] > 60)
    if float(np.count_nonzero(coloured)) / coloured.size > MAX_COLOUR_SHARE:
        return "colour / Doppler image: the Graf method needs a B-mode image"
    if _is_sector(small):
        return "sector (fan) image: the Graf method needs a linear transducer"
    return None


def _is_sector(small_bgr: np.ndarray) -> bool:
    """Is the largest bright-ish region of the screen a fan: narrow at its top, wide at depth?"""
    gray = cv2.cvtColor(small_bgr, cv2.COLOR_BGR2GRAY)
    mask = (cv2.GaussianBlur(gray, (5, 5), 0) > 12).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return False
    label = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[label][:4])
    if h < 0.3 * gray.shape[0] or w < 0.3 * gray.shape[1]:
        return False
    region = labels[y:y + h, x:x + w] == label
    # extent (first to last pixel of the region) per row: dark chambers inside a fan must not count as narrow
    has = region.any(axis=1)
    first = np.where(has, region.argmax(axis=1), 0)
    last = np.where(has, w - 1 - region[:, ::-1].argmax(axis=1), -1)
    widths = (last - first + 1).astype(float)
    top = float(np.median(widths[: max(1, h // 10)]))
    middle = float(np.median(widths[h // 2 - max(1, h // 20): h // 2 + max(1, h // 20) + 1]))
    return middle > 0 and top / middle < MIN_TOP_TO_MIDDLE_WIDTH
