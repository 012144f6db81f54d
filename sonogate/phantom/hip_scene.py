"""The geometry of one hip ultrasound frame, shared by both rendering styles.

``hip_us`` builds a ``HipScene`` from a hip's parameters and the probe position (Graf geometry, millimetres
in the acquisition frame: x along the array, y depth); ``hip_us`` (schematic style) and ``realistic`` paint
tissue maps from it. ``drape_profile`` is the outline that the soft-tissue layers of both styles follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class HipScene:
    """Everything needed to draw one frame, in mm (x lateral, y depth).

    alpha, beta (deg), coverage (%): this frame's Graf geometry. u: unit vector along the baseline (caudal),
    n: its normal pointing medially (deep). rim, baseline_top, baseline_bottom, lower_limb, labrum,
    head_center: points (2,) mm; head_radius mm. ilium: iliac contour from the rim cranially (k, 2); roof:
    bony roof from the ilium through the rounded rim to the lower limb (k, 2). metaphysis_center /
    metaphysis_radius: femoral neck (greater trochanter) circle; ischium: its centre point. defect: "" or the
    off-plane reason; plane_offset: elevation position of the plane.
    """

    alpha: float
    beta: float
    coverage: float
    u: np.ndarray
    n: np.ndarray
    rim: np.ndarray
    baseline_top: np.ndarray
    baseline_bottom: np.ndarray
    lower_limb: np.ndarray
    labrum: np.ndarray
    head_center: np.ndarray
    head_radius: float
    ilium: np.ndarray  # polyline from the rim corner region cranially, (k, 2)
    roof: np.ndarray  # bony roof polyline from the ilium (through the rounded rim) to the lower limb
    metaphysis_center: np.ndarray
    metaphysis_radius: float
    ischium: np.ndarray
    defect: str
    plane_offset: float


def drape_profile(scene: HipScene, k: float, npx: int) -> np.ndarray:
    """Depth (px) per column (npx,) float64 of the top of the deep structures, smoothed: muscle layers drape
    over it. ``k``: pixels per mm of the internal grid, ``npx``: its side."""
    xs = np.arange(npx, dtype=np.float64)
    c, r = scene.head_center * k, scene.head_radius * k
    top = np.full(npx, scene.rim[1] * k - 0.2 * r)
    # Over the ilium: a little soft tissue above the bone.
    il = scene.ilium * k
    order = np.argsort(il[:, 0])
    il_y = np.interp(xs, il[order, 0], il[order, 1])
    top = np.where(xs < scene.rim[0] * k, il_y - 0.25 * r, top)
    # Over the head (capsule and gluteus minimus hug it).
    inside = np.abs(xs - c[0]) < r
    head_top = c[1] - np.sqrt(np.clip(r * r - (xs - c[0]) ** 2, 0.0, None)) - 0.3 * r
    top = np.where(inside, np.minimum(top, head_top), top)
    # Over the greater trochanter / neck.
    mc, mr = scene.metaphysis_center * k, scene.metaphysis_radius * k
    inside_m = np.abs(xs - mc[0]) < mr
    meta_top = mc[1] - np.sqrt(np.clip(mr * mr - (xs - mc[0]) ** 2, 0.0, None)) - 0.45 * r
    top = np.where(inside_m, np.minimum(top, meta_top), top)
    top = np.where(xs > mc[0], np.minimum(top, mc[1] - mr - 0.45 * r), top)
    sigma = max(2.0, 0.06 * npx)
    smooth = cv2.GaussianBlur(top.astype(np.float32)[None, :], (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)
    return smooth[0].astype(np.float64)
