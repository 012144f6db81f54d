"""Raster and noise helpers shared by the phantom renderers (numpy + OpenCV only).

Drawing works on float32 tissue maps in pixels of a renderer's internal grid; coordinates are floats,
drawn with OpenCV's fixed-point sub-pixel precision (``SHIFT`` fractional bits). Both ultrasound styles
(``hip_us``'s schematic drawing and ``realistic``) and the task phantoms draw with these, so a change here
changes their pixels: keep it byte-for-byte stable.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

SHIFT = 4  # fractional bits of OpenCV's fixed-point drawing coordinates
ONE = 1 << SHIFT  # one pixel in fixed point


def fx(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates (..., 2) -> fixed-point int32 (k, 1, 2) for OpenCV drawing with ``SHIFT``."""
    return np.round(np.asarray(points, dtype=np.float64) * ONE).astype(np.int32).reshape(-1, 1, 2)


def polyline(img: np.ndarray, pts: np.ndarray, value: float, thickness: float) -> None:
    """Draw the open polyline ``pts`` (k, 2) px into ``img`` at ``value``, ``thickness`` px (at least 1)."""
    cv2.polylines(img, [fx(pts)], False, float(value), max(1, round(thickness)), cv2.LINE_8, SHIFT)


def fill(img: np.ndarray, pts: np.ndarray, value: float) -> None:
    """Fill the polygon ``pts`` (k, 2) px in ``img`` with ``value``."""
    cv2.fillPoly(img, [fx(pts)], float(value), cv2.LINE_8, SHIFT)


def ellipse(img, center, axes, angle_deg, value, thickness=-1, arc=(0.0, 360.0)) -> None:
    """Draw an ellipse into ``img``: ``center`` (x, y) px, half-axes ``axes`` (a, b) px, rotated by
    ``angle_deg``, the part from ``arc[0]`` to ``arc[1]`` degrees; filled when ``thickness`` <= 0."""
    cx, cy = (round(c * ONE) for c in center)
    ax = (max(1, round(axes[0] * ONE)), max(1, round(axes[1] * ONE)))
    cv2.ellipse(img, (cx, cy), ax, float(angle_deg), float(arc[0]), float(arc[1]), float(value),
                int(thickness) if thickness > 0 else -1, cv2.LINE_8, SHIFT)


def arc_points(center: np.ndarray, radius: float, a0: float, a1: float, count: int = 24) -> np.ndarray:
    """``count`` points (count, 2) px on the circle round ``center`` of ``radius`` px, from ``a0`` to ``a1``
    degrees (image axes: y down, so positive angles turn clockwise on screen)."""
    t = np.linspace(math.radians(a0), math.radians(a1), count)
    return np.stack([center[0] + radius * np.cos(t), center[1] + radius * np.sin(t)], axis=1)


def segments(img: np.ndarray, pts: np.ndarray, values, thickness: float) -> None:
    """Polyline ``pts`` (k, 2) px with one value per segment (k - 1 ``values``), ``thickness`` px."""
    fixed = [tuple(p) for p in fx(pts).reshape(-1, 2).tolist()]
    t = max(1, round(thickness))
    line = cv2.line
    for i, value in enumerate(np.asarray(values, dtype=np.float64).tolist()):
        line(img, fixed[i], fixed[i + 1], value, t, cv2.LINE_8, SHIFT)


def resample(pts: np.ndarray, step: float) -> np.ndarray:
    """Polyline (k, 2) resampled at about ``step`` pixel spacing (at least the original end points, at most
    91 points)."""
    seg = np.hypot(*np.diff(pts, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    count = int(np.clip(arc[-1] / max(step, 1e-6), 2, 90)) + 1
    t = np.linspace(0.0, arc[-1], count)
    return np.stack([np.interp(t, arc, pts[:, 0]), np.interp(t, arc, pts[:, 1])], axis=1)


def rotate(v: np.ndarray, deg: float) -> np.ndarray:
    """The 2-D vector ``v`` turned by ``deg`` degrees (image axes: y down)."""
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


@lru_cache(maxsize=16)
def hann_kernel(width: int) -> np.ndarray:
    """Hann window (2 width + 1,) float64 scaled to unit energy (read-only, cached)."""
    kernel = np.hanning(2 * width + 1)
    kernel /= math.sqrt(float((kernel**2).sum()))
    kernel.setflags(write=False)
    return kernel


def smooth_noise(g: np.random.Generator, count: int, width: int) -> np.ndarray:
    """Zero-mean, roughly unit-sd noise (count,) correlated over about ``width`` samples, drawn from ``g``
    (consumes ``count + 2 width`` standard normals)."""
    return np.convolve(g.standard_normal(count + 2 * width), hann_kernel(width), "valid")[:count]


def drawn_window(mask: np.ndarray, reach: int) -> tuple[slice, slice]:
    """(rows, cols) of the box round ``mask``'s non-zero pixels (float32 map), grown by ``reach`` px and
    clipped to the picture; the (blank) top-left pixel if nothing is drawn, so that callers need no special
    case (an empty window would make ``cv2.exp`` return None). Layers drawn per frame on a blank picture are
    added (and blurred) only there."""
    x, y, w, h = cv2.boundingRect((mask.view(np.int32) != 0).view(np.uint8))  # bits: float32 0 is all zero
    if w == 0:
        return slice(0, 1), slice(0, 1)
    return (slice(max(0, y - reach), min(mask.shape[0], y + h + reach)),
            slice(max(0, x - reach), min(mask.shape[1], x + w + reach)))


def blur_local(mask: np.ndarray, sigma: float) -> tuple[slice, slice]:
    """Gaussian-blur the float32 map ``mask`` (sigma px) in place where it is non-zero, grown by the kernel's
    reach, and return that window (rows, cols). Equal to a whole-picture blur up to float rounding (the mask
    is zero elsewhere) for layers that cover part of the picture, at a fraction of the cost."""
    window = drawn_window(mask, math.ceil(4.0 * sigma) + 2)
    mask[window] = cv2.GaussianBlur(mask[window], (0, 0), sigma)
    return window
