"""Shaft strip of a tibial radiograph (torch-free; the same step runs in training and in ``RustModel``).

Why: the tibial shaft is a tall narrow object (about 20 of 256 columns on the phantom) and the fracture line or
callus per cortex is a few pixels wide; a square letterbox at 160 px spends most pixels on soft tissue and air and
shrinks the line to 1-2 px. The strip keeps the full film height at a higher resolution and only the columns around
the shaft, so the network reads the cortices at about 1.6x the linear resolution with fewer pixels.

``shaft_strip(gray, height, width)``: gray uint8 (H, W) -> (strip uint8 (height, width), x0, x1). The shaft column
is found without labels: the mean grey of each column over the middle 60 % of the rows (columns of a shutter, a
run of flat columns from a film edge, set to 0), smoothed by a box about
the width of a tibia (8 % of the film height), and its arg-max (bone and metal are the brightest columns; a plate or
nail lies on or in the tibia, so the strip holds the tibia either way). The strip is ``width / height`` of the film
height wide, centred on that column (zero-padded at the film edge), resized to (height, width) with INTER_AREA, so
the aspect ratio is kept.
"""

from __future__ import annotations

import numpy as np

SHAFT_SMOOTH = 0.08  # box width (fraction of the film height) ~ a tibia's width on a leg film
SHUTTER_SPREAD = 6.0  # grey levels: a shutter column is flat (std over rows) and level with the film edge


def shaft_column(gray: np.ndarray) -> int:
    """Column (pixel) of the brightest tibia-wide vertical band of a gray uint8 film (H, W)."""
    h, w = gray.shape
    rows = gray[int(0.2 * h) : max(int(0.8 * h), int(0.2 * h) + 1)].astype(np.float32)
    profile, spread = rows.mean(axis=0), rows.std(axis=0)
    # shutters: runs of uniform columns (white unexposed or black electronic) from either film edge are no anatomy
    for order in (range(w), range(w - 1, -1, -1)):
        edge = None
        for i in order:
            if edge is None:
                edge = profile[i]
            if spread[i] > SHUTTER_SPREAD or abs(profile[i] - edge) > SHUTTER_SPREAD:
                break
            profile[i] = 0.0
    k = max(1, round(SHAFT_SMOOTH * h))
    smooth = np.convolve(profile, np.ones(k, dtype=np.float32) / k, mode="same")
    return int(np.argmax(smooth))


def shaft_strip(gray: np.ndarray, height: int, width: int) -> tuple[np.ndarray, int, int]:
    """(strip (height, width) uint8, x0, x1): the film's full height, columns [x0, x1) around ``shaft_column``."""
    import cv2

    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError("shaft_strip needs a 2-D uint8 gray image")
    h, w = gray.shape
    span = max(1, round(h * width / height))
    centre = shaft_column(gray)
    x0 = centre - span // 2
    x1 = x0 + span
    strip = np.zeros((h, span), dtype=np.uint8)
    src0, src1 = max(0, x0), min(w, x1)
    if src1 > src0:
        strip[:, src0 - x0 : src1 - x0] = gray[:, src0:src1]
    if (h, span) != (height, width):
        strip = cv2.resize(strip, (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(strip), x0, x1
