"""Infant hip ultrasound phantom: a Graf coronal plane drawn from geometry, with exact alpha, beta, coverage.

Geometry (native frame as acquired: x along the linear array, cranial on the left; y = depth, skin at the
top, medial deeper down; millimetres until rasterised):

* ``R`` the bony rim (turning point). The baseline runs along the straight lateral contour of the ilium
  through ``R``; ``u`` is its unit vector pointing caudally and ``n`` the unit normal pointing medially
  (deep). Landmarks ``baseline_top`` (cranial) and ``baseline_bottom`` (near the rim) lie on it.
* Bony roof line: from ``R`` to the lower limb of the os ilium ``L = R + l (cos a u + sin a n)``; alpha is
  the angle between the baseline (caudal direction) and ``L - R``.
* Cartilage roof line: from ``R`` through the labrum ``Lab = R + s (cos b u - sin b n)`` (lateral side);
  beta is the angle between the baseline and ``Lab - R``.
* Femoral head: centre ``c = R + a_u u + d n`` with radius ``r``; coverage (Morin / Graf "d/D") is the share
  of the head diameter, measured along ``n``, on the medial side of the baseline: ``(d + r) / 2r``.
  ``head_medial = c + r n`` and ``head_lateral = c - r n`` are returned, so coverage is recomputable.
  ``a_u`` is chosen so the head sits in the acetabulum, just clear of the bony roof line.

Everything else (ilium with its acoustic shadow, the bony roof with a rounded or sharp rim, the lower limb,
the hypoechoic cartilage roof, the echogenic labrum, capsule and perichondrium, the hypoechoic head with
sinusoids and an optional ossific nucleus, the chondro-osseous border of the femoral neck with its shadow,
the ischium, fat and muscle layers draped over the joint) is drawn around that skeleton, then
``acoustics.form_image`` turns the tissue maps into a B-mode picture for a scanner preset.

Off-plane / poor frames (``standard_plane = 0``) mirror the substandard reasons of the real SPJ set:
``tilt`` (probe tilt: curved iliac contour), ``no_labrum`` (poor labrum display), ``no_lower_limb``
(incomplete bony roof / lower limb not shown), ``anterior`` and ``posterior`` (non-middle plane).
Two more reasons of the real set are available on request (``EXTRA_DEFECTS``): ``no_chondro_osseous``
(lack of a chondro-osseous border) and ``poor_capsule`` (poor display of capsule and perichondrium).

Display orientations (``ORIENTATIONS``; ``render_us_frame(orientation=...)``), exact transforms of the
rendered square image and of every landmark, so the labels stay exact:

* ``"horizontal"``: as acquired. Skin and probe at the top, depth downwards; the ilium runs horizontally
  (within the few degrees of ``baseline_tilt_deg``) from the left edge to the bony rim (about a quarter to a
  third of the width in), cranial on the left, caudal on the right; the head lies right of the rim.
* ``"graf"``: Graf's standard display (a right hip as on an AP radiograph): the transpose of the acquired
  image. The ilium is vertical in the upper part, cranial up, caudal down; probe and skin (lateral) on the
  viewer's left, depth (medial) increasing to the right; the head lies below the rim. Device ``C``'s
  ``"vertical"`` preset shows exactly this.
* ``"graf_mirrored"``: its left-right mirror (a left hip shown as it lies, or a probe turned round): the
  acquired image rotated 90 degrees clockwise. Cranial up, probe and skin on the viewer's right, depth
  increasing to the left.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from sonogate.errors import SonogateError
from sonogate.measurements import graf_type as _graf_type
from sonogate.phantom import raster
from sonogate.phantom.acoustics import form_image, internal_size, new_speckle_field
from sonogate.phantom.devices import ScannerDevice, get_device
from sonogate.phantom.hip_scene import HipScene, drape_profile
from sonogate.phantom.realistic import (
    REALISTIC_GRAIN,
    REALISTIC_LOOKS,
    check_style,
    draw_scene,
    real_look,
    realistic_device,
    realistic_view,
    tgc_row_gain,
    vary_anatomy,
)

DEFECTS: tuple[str, ...] = ("tilt", "no_labrum", "no_lower_limb", "anterior", "posterior")
EXTRA_DEFECTS: tuple[str, ...] = ("no_chondro_osseous", "poor_capsule")
ALL_DEFECTS: tuple[str, ...] = DEFECTS + EXTRA_DEFECTS

# |plane_offset| beyond this is a non-middle (anterior < 0 < posterior) plane. Units: 1 = the anterior /
# posterior sections of 3-D studies, where alpha is about 3 deg lower / higher than in the middle plane.
STANDARD_OFFSET_LIMIT = 0.35
PLANE_ALPHA_SLOPE_DEG = 3.5
PLANE_BETA_SLOPE_DEG = -2.5
PLANE_COVERAGE_SLOPE_PCT = 2.0

LANDMARK_NAMES: tuple[str, ...] = (
    "baseline_top", "baseline_bottom", "bony_rim", "lower_limb", "labrum",
    "head_center", "head_medial", "head_lateral", "chondro_osseous", "ischium",
)

# Graf groups used by the sampler, their share of hips, and the alpha range drawn for each.
GRAF_GROUPS: dict[str, tuple[float, tuple[float, float]]] = {
    "I": (0.64, (60.0, 76.0)),
    "II": (0.20, (50.0, 60.0)),
    "IIc/D": (0.09, (43.0, 50.0)),
    "III/IV": (0.07, (35.0, 43.0)),
}


@dataclass
class HipParams:
    """One hip: its Graf measurements in the middle standard plane, plus the anatomy that draws them.

    alpha_deg, beta_deg, coverage_pct: the hip's truth in the standard plane.
    graf_group: "I", "II", "IIc/D" or "III/IV" (sampling group; ``graf_type()`` gives the Graf label).
    head_radius_mm: cartilaginous femoral head radius.
    rim_x_frac: lateral position of the bony rim as a share of the image width (as acquired).
    rim_depth_mm: depth of the bony rim below the skin.
    baseline_tilt_deg: angle of the iliac line against the transducer face (0 = parallel).
    roof_gap: clearance between head and bony roof line, share of the head radius.
    roof_bulge: depth of the bony cup beyond the roof line, share of the head radius.
    rim_rounding: radius of the rounded bony rim, share of the head radius (sharp in I, round in III/IV).
    ossific_nucleus_mm: radius of the ossific nucleus (0 = not yet ossified).
    fat_mm: subcutaneous fat thickness.
    age_weeks: infant age (drives head size and ossification).
    tissue_seed: seed of the per-hip tissue texture (fascia layout, sinusoids), so frames of one hip match.
    """

    alpha_deg: float
    beta_deg: float
    coverage_pct: float
    graf_group: str = "I"
    head_radius_mm: float = 8.0
    rim_x_frac: float = 0.3
    rim_depth_mm: float = 19.0
    baseline_tilt_deg: float = 0.0
    roof_gap: float = 0.06
    roof_bulge: float = 0.15
    rim_rounding: float = 0.06
    ossific_nucleus_mm: float = 0.0
    fat_mm: float = 3.0
    age_weeks: float = 6.0
    tissue_seed: int = 0

    def graf_type(self) -> str:
        """Graf type of the standard-plane truth (IIa/IIb reported as II, as in ``sonogate.measurements``)."""
        return _graf_type(self.alpha_deg, self.beta_deg)

    def to_dict(self) -> dict:
        return asdict(self)


def beta_for_alpha(alpha_deg: float) -> float:
    """Typical beta for a given alpha (beta falls as the bony roof improves); the sampler adds noise."""
    return 142.0 - 1.5 * alpha_deg


def coverage_for_alpha(alpha_deg: float) -> float:
    """Typical femoral-head coverage (%) for a given alpha; the sampler adds noise."""
    return 52.0 + 1.7 * (alpha_deg - 58.0)


def sample_hip_params(rng: np.random.Generator, graf_group: str | None = None) -> HipParams:
    """Draw one hip. Input: a numpy Generator, optionally the Graf group to draw from ("I", "II", "IIc/D",
    "III/IV", or "normal" = alpha 63-72 / "abnormal" = alpha 40-52 for demos). Output: ``HipParams``.

    Mix when ``graf_group`` is None: I 64 %, II 20 %, IIc/D 9 %, III/IV 7 % (about 36 % with alpha < 60,
    enriched against clinical prevalence so that abnormal hips are well represented). Beta and coverage are
    correlated with alpha as in real hips, with noise (sd 5 deg, 6 pp).
    """
    groups = list(GRAF_GROUPS)
    if graf_group is None:
        shares = np.array([GRAF_GROUPS[g][0] for g in groups])
        graf_group = groups[int(rng.choice(len(groups), p=shares / shares.sum()))]
    if graf_group == "normal":
        alpha = float(rng.uniform(63.0, 72.0))
        graf_group = "I"
    elif graf_group == "abnormal":
        alpha = float(rng.uniform(40.0, 52.0))
        graf_group = "II" if alpha >= 50 else ("IIc/D" if alpha >= 43 else "III/IV")
    elif graf_group in GRAF_GROUPS:
        lo, hi = GRAF_GROUPS[graf_group][1]
        # Type I: mode near 64 deg, long tail to mid 70s, as in screening cohorts.
        alpha = float(rng.triangular(lo, 64.0, hi)) if graf_group == "I" else float(rng.uniform(lo, hi))
    else:
        raise SonogateError(f"unknown Graf group {graf_group!r} (use I, II, IIc/D, III/IV, normal, abnormal)")
    beta = float(np.clip(beta_for_alpha(alpha) + rng.normal(0.0, 5.0), 30.0, 98.0))
    coverage = float(np.clip(coverage_for_alpha(alpha) + rng.normal(0.0, 6.0), 10.0, 80.0))
    severity = float(np.clip((64.0 - alpha) / 29.0, 0.0, 1.0))  # 0 = mature roof, 1 = type III/IV
    age = float(rng.uniform(0.0, 20.0))
    nucleus = 0.0
    if age > 8.0 and rng.random() < (age - 8.0) / 14.0:
        nucleus = float(rng.uniform(0.8, 1.2 + 0.12 * (age - 8.0)))
    return HipParams(
        alpha_deg=alpha,
        beta_deg=beta,
        coverage_pct=coverage,
        graf_group=graf_group,
        head_radius_mm=float(np.clip(6.6 + 0.07 * age + rng.normal(0.0, 0.6), 5.5, 10.0)),
        rim_x_frac=float(rng.uniform(0.22, 0.36)),
        rim_depth_mm=float(rng.uniform(16.0, 22.0)),
        baseline_tilt_deg=float(np.clip(rng.normal(0.0, 2.5), -6.0, 6.0)),
        roof_gap=float(rng.uniform(0.03, 0.09) + 0.08 * severity),
        roof_bulge=float(np.clip(rng.uniform(0.03, 0.10) - 0.05 * severity, 0.0, None)),
        rim_rounding=float(rng.uniform(0.03, 0.09) + 0.25 * severity),
        ossific_nucleus_mm=nucleus,
        fat_mm=float(rng.uniform(1.5, 4.5)),
        age_weeks=age,
        tissue_seed=int(rng.integers(0, 2**31 - 1)),
    )


@dataclass
class UsFrame:
    """One rendered ultrasound frame and its exact labels.

    image: (size, size) uint8 grey, the ultrasound image only (no scanner chrome), in its display orientation.
    alpha_deg, beta_deg, coverage_pct: geometry of this drawn frame (the plane position shifts them a little).
    standard_plane: 1 for a usable Graf standard plane, 0 otherwise; defect: "" or the reason.
    device: preset name. landmarks: name -> (x, y) in pixels of ``image`` (pixel centres at integers).
    plane_offset: elevation position of the plane (0 = middle, < 0 anterior, > 0 posterior).
    hip_alpha_deg, hip_beta_deg, hip_coverage_pct: the hip's standard-plane truth.
    orientation: how the image is displayed: one of ``ORIENTATIONS`` when asked for, else the device's
    convention ("horizontal", or "vertical" = the same picture as "graf").
    """

    image: np.ndarray
    alpha_deg: float
    beta_deg: float
    coverage_pct: float
    standard_plane: int
    defect: str
    device: str
    landmarks: dict[str, tuple[float, float]]
    plane_offset: float = 0.0
    hip_alpha_deg: float = float("nan")
    hip_beta_deg: float = float("nan")
    hip_coverage_pct: float = float("nan")
    orientation: str = "horizontal"
    extras: dict = field(default_factory=dict)


def _angle_deg(v1: np.ndarray, v2: np.ndarray) -> float:
    """Unsigned angle between two 2-D vectors in degrees (0..180)."""
    cross = float(v1[0] * v2[1] - v1[1] * v2[0])
    dot = float(v1[0] * v2[0] + v1[1] * v2[1])
    return math.degrees(math.atan2(abs(cross), dot))


def measure_from_landmarks(landmarks: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Recompute Graf alpha, beta and coverage from landmark pixels.

    Input: mapping with baseline_top, baseline_bottom, bony_rim, lower_limb, labrum, head_medial,
    head_lateral (x, y). Output: {"alpha_deg", "beta_deg", "coverage_pct"}.

    alpha = angle between the baseline (top -> bottom, i.e. caudal) and the bony roof line (rim -> lower
    limb); beta = angle between the baseline and the cartilage roof line (rim -> labrum); coverage = share
    of the head diameter (head_lateral -> head_medial, projected on the baseline normal) on the side of the
    baseline where the lower limb lies (medial), clipped to 0..100. Works in either display orientation and
    for mirrored images, since only unsigned angles and a side test are used.
    """
    try:
        p = {k: np.asarray(landmarks[k], dtype=np.float64) for k in (
            "baseline_top", "baseline_bottom", "bony_rim", "lower_limb", "labrum", "head_medial", "head_lateral")}
    except KeyError as exc:
        raise SonogateError(f"landmark {exc.args[0]!r} missing: cannot measure alpha/beta/coverage") from None
    baseline = p["baseline_bottom"] - p["baseline_top"]
    length = float(np.hypot(*baseline))
    if length <= 1e-9:
        raise SonogateError("baseline_top and baseline_bottom coincide: baseline undefined")
    alpha = _angle_deg(baseline, p["lower_limb"] - p["bony_rim"])
    beta = _angle_deg(baseline, p["labrum"] - p["bony_rim"])
    normal = np.array([-baseline[1], baseline[0]]) / length
    if float(np.dot(p["lower_limb"] - p["baseline_top"], normal)) < 0:
        normal = -normal  # orient the normal toward the medial side (where the lower limb is)
    s_medial = float(np.dot(p["head_medial"] - p["baseline_top"], normal))
    s_lateral = float(np.dot(p["head_lateral"] - p["baseline_top"], normal))
    span = s_medial - s_lateral
    coverage = 100.0 * s_medial / span if abs(span) > 1e-9 else float("nan")
    return {"alpha_deg": alpha, "beta_deg": beta, "coverage_pct": float(np.clip(coverage, 0.0, 100.0))}


# ----------------------------------------------------------------------------------------------------------
# Display orientations: exact transforms of the square image (pixel centres at integers) and its points

ORIENTATIONS: tuple[str, ...] = ("horizontal", "graf", "graf_mirrored")
# Where the probe (skin, depth zero) lies in the displayed image, for the scanner chrome's depth ruler.
PROBE_SIDE: dict[str, str] = {"horizontal": "top", "graf": "left", "graf_mirrored": "right"}


def check_orientation(orientation: str) -> str:
    """``orientation`` itself when it is one of ``ORIENTATIONS``; SonogateError (one line) otherwise."""
    if orientation not in ORIENTATIONS:
        raise SonogateError(f"unknown display orientation {orientation!r} (use one of {', '.join(ORIENTATIONS)})")
    return orientation


def parse_orientation_list(text: str) -> tuple[str, ...]:
    """``"horizontal,graf"`` -> ("horizontal", "graf"), checking every name; SonogateError on none or a bad one."""
    names = tuple(part.strip() for part in str(text).split(",") if part.strip())
    if not names:
        raise SonogateError(f"no display orientation named (expected e.g. {','.join(ORIENTATIONS)})")
    return tuple(check_orientation(name) for name in names)


def orient_image(image: np.ndarray, orientation: str) -> np.ndarray:
    """Show an as-acquired image (H, W) or (H, W, C) in ``orientation``: unchanged for "horizontal", transposed
    for "graf", rotated 90 degrees clockwise for "graf_mirrored". Output: a C-contiguous array (W, H[, C])."""
    check_orientation(orientation)
    if orientation == "horizontal":
        return image
    if orientation == "graf":
        return np.ascontiguousarray(np.swapaxes(image, 0, 1))
    return np.ascontiguousarray(np.rot90(image, -1))


def orient_point(point: tuple[float, float], orientation: str, height: int) -> tuple[float, float]:
    """Move a pixel point (x, y) of an as-acquired image ``height`` pixels high (pixel centres at integers)
    to where ``orient_image`` puts that pixel. Output: (x, y) in the displayed image."""
    check_orientation(orientation)
    x, y = float(point[0]), float(point[1])
    if orientation == "horizontal":
        return x, y
    if orientation == "graf":
        return y, x
    return float(height - 1) - y, x


def orient_landmarks(
    landmarks: Mapping[str, tuple[float, float]], orientation: str, height: int
) -> dict[str, tuple[float, float]]:
    """``orient_point`` applied to every landmark (name -> (x, y) pixels of an as-acquired image)."""
    return {name: orient_point(xy, orientation, height) for name, xy in landmarks.items()}


# ----------------------------------------------------------------------------------------------------------
# Geometry of one frame (millimetres, as acquired; the ``HipScene`` is shared with the realistic style)


def _resolve_defect(defect: str, plane_offset: float, rng: np.random.Generator) -> tuple[str, float]:
    """Make defect and plane offset agree: a non-middle defect gets an offset beyond the limit (drawn when
    none is given), and an offset beyond the limit with no defect becomes a non-middle defect."""
    if defect not in ("",) + ALL_DEFECTS:
        raise SonogateError(f"unknown defect {defect!r} (use '' or one of {', '.join(ALL_DEFECTS)})")
    offset = float(plane_offset)
    if defect in ("anterior", "posterior"):
        sign = -1.0 if defect == "anterior" else 1.0
        magnitude = abs(offset) if abs(offset) > STANDARD_OFFSET_LIMIT else float(rng.uniform(0.55, 1.1))
        offset = sign * magnitude
    elif defect == "" and abs(offset) > STANDARD_OFFSET_LIMIT:
        defect = "anterior" if offset < 0 else "posterior"
    return defect, offset


def _build_scene(
    params: HipParams,
    defect: str,
    plane_offset: float,
    depth_mm: float,
    probe_shift_mm: tuple[float, float],
    probe_rot_deg: float,
    rng: np.random.Generator,
    view: tuple[float, float, float],
) -> HipScene:
    """The frame's geometry in mm of the picture: ``view`` = (left, top, width) mm of the imaged field in the
    acquisition frame ((0, 0, ``depth_mm``): the device's whole field)."""
    view_left, view_top, view_width = view
    off = plane_offset
    alpha = params.alpha_deg + PLANE_ALPHA_SLOPE_DEG * off
    beta = params.beta_deg + PLANE_BETA_SLOPE_DEG * off
    coverage = float(np.clip(params.coverage_pct + PLANE_COVERAGE_SLOPE_PCT * off, 2.0, 95.0))
    # An off-centre section through a sphere shows a smaller circle.
    r = params.head_radius_mm * math.sqrt(max(0.35, 1.0 - (0.45 * off) ** 2))

    tilt = params.baseline_tilt_deg + probe_rot_deg
    if defect == "tilt":
        tilt += float(rng.choice([-1.0, 1.0]) * rng.uniform(6.0, 12.0))
    u = np.array([math.cos(math.radians(tilt)), math.sin(math.radians(tilt))])
    n = np.array([-u[1], u[0]])  # +90 deg in image axes (y down): points deep
    rim = np.array([params.rim_x_frac * depth_mm + probe_shift_mm[0] - view_left,
                    params.rim_depth_mm + probe_shift_mm[1] - view_top])

    a_rad, b_rad = math.radians(alpha), math.radians(beta)
    v_roof = math.cos(a_rad) * u + math.sin(a_rad) * n
    m_head = math.sin(a_rad) * u - math.cos(a_rad) * n  # normal of the roof line toward the head
    d = (2.0 * coverage / 100.0 - 1.0) * r
    # Head just clear of the bony roof line: m_head . (c - R) = r (1 + gap).
    a_u = (r * (1.0 + params.roof_gap) + d * math.cos(a_rad)) / max(math.sin(a_rad), 0.2)
    center = rim + a_u * u + d * n
    foot = float(np.dot(center - rim, v_roof))
    roof_len = max(foot + 0.3 * r, 0.6 * r)
    lower_limb = rim + roof_len * v_roof

    # Labrum on the cartilage roof ray, sitting on the head (or at the ray's closest approach to it).
    v_cart = math.cos(b_rad) * u - math.sin(b_rad) * n
    rel = center - rim
    t_close = float(np.dot(rel, v_cart))
    miss2 = float(np.dot(rel, rel)) - t_close**2
    reach = r * 1.12
    if miss2 < reach**2:
        t_lab = t_close - math.sqrt(reach**2 - miss2)
    else:
        t_lab = t_close
    t_lab = max(t_lab, 0.35 * r)
    labrum = rim + t_lab * v_cart

    # Baseline landmarks on the straight iliac contour; keep the top one inside the image.
    room = (rim[0] - 0.04 * view_width) / max(abs(u[0]), 0.3)
    # Off the middle plane only the part of the ilium next to the rim stays straight.
    longest = 2.2 * r if abs(off) <= STANDARD_OFFSET_LIMIT else 1.0 * r
    s_top = float(np.clip(room, 0.6 * r, longest))
    s_bottom = min(0.25 * r, 0.4 * s_top)
    baseline_top = rim - s_top * u
    baseline_bottom = rim - s_bottom * u

    # Iliac contour: straight in the standard plane; bent beyond baseline_top in non-middle planes
    # (anterior: toward the probe, posterior: away, the gluteal fossa); S-curved under probe tilt.
    s = np.linspace(0.0, 1.6 * depth_mm, 28)
    bend = np.zeros_like(s)
    if defect in ("anterior", "posterior") or abs(off) > STANDARD_OFFSET_LIMIT:
        angle = math.radians(min(35.0, 16.0 + 22.0 * max(0.0, abs(off) - STANDARD_OFFSET_LIMIT)))
        beyond = np.clip(s - s_top, 0.0, None)
        soft = beyond**2 / (beyond + 0.6 * r)  # smooth start of the bend
        bend = (-1.0 if off < 0 else 1.0) * math.tan(angle) * soft
    if defect == "tilt":
        kappa = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.9, 1.6)) / (r * r)
        cubic = kappa * s * (s - s_bottom) * (s - s_top)
        limit = 0.5 * r
        bend = limit * np.tanh(cubic / limit)  # saturates smoothly instead of a kink
    ilium = rim[None, :] - s[:, None] * u[None, :] + bend[:, None] * n[None, :]

    # Bony roof: rounded rim (quadratic Bezier around the corner) then a cup bulging away from the head.
    rho = params.rim_rounding * r
    p0, p2 = rim - rho * u, rim + min(rho, 0.4 * roof_len) * v_roof
    tb = np.linspace(0.0, 1.0, 6)[:, None]
    corner = (1 - tb) ** 2 * p0 + 2 * (1 - tb) * tb * rim + tb**2 * p2
    start = min(rho, 0.4 * roof_len) / roof_len
    sr = np.linspace(start, 1.0, 16)
    bulge = params.roof_bulge * r * np.clip(np.sin(math.pi * (sr - start) / (1.0 - start)), 0.0, 1.0) ** 0.8
    cup = rim[None, :] + (sr * roof_len)[:, None] * v_roof[None, :] - bulge[:, None] * m_head[None, :]
    roof = np.vstack([corner, cup[1:]])

    neck_dir = raster.rotate(u, 12.0)  # the neck runs caudally and a little medially
    meta_r = 1.1 * r
    metaphysis_center = center + (r + meta_r - 0.2 * r) * neck_dir
    ischium = center + 0.15 * r * u + 1.45 * r * n
    return HipScene(
        alpha=alpha, beta=beta, coverage=coverage, u=u, n=n, rim=rim, baseline_top=baseline_top,
        baseline_bottom=baseline_bottom, lower_limb=lower_limb, labrum=labrum, head_center=center,
        head_radius=r, ilium=ilium, roof=roof, metaphysis_center=metaphysis_center, metaphysis_radius=meta_r,
        ischium=ischium, defect=defect, plane_offset=off,
    )


# ----------------------------------------------------------------------------------------------------------
# Schematic-style tissue maps (pixels of the internal grid; drawing helpers in ``raster``)


@lru_cache(maxsize=64)
def _structure_field(seed: int, npx: int) -> np.ndarray:
    """Per-hip tissue structure G (npx, npx) float32, a zero-mean unit-sd field elongated
    along the muscle fibres (laterally) -- the streaky look of muscle and fat on real scans. Drawn on a
    coarse grid and upsampled (it is smooth anyway); cached so frames of one hip share it."""
    rng = np.random.default_rng(seed ^ 0x5EED)
    cols = max(8, npx // 8)
    white = rng.random((npx, cols), dtype=np.float32) - np.float32(0.5)
    # Thin (about 2 px at 256) and long (about 30 px) streaks: fibrillar fat septa and perimysium.
    coarse = cv2.GaussianBlur(white, (0, 0), sigmaX=0.05 * cols, sigmaY=0.0035 * npx + 0.3,
                              borderType=cv2.BORDER_REFLECT)
    coarse -= coarse.mean()
    coarse *= np.float32(1.0 / max(float(coarse.std()), 1e-6))
    field = cv2.resize(coarse, (npx, npx), interpolation=cv2.INTER_LINEAR)
    field.setflags(write=False)
    return field


@lru_cache(maxsize=8)
def _identity_map_x(npx: int) -> np.ndarray:
    grid = np.ascontiguousarray(np.broadcast_to(np.arange(npx, dtype=np.float32)[None, :], (npx, npx)))
    grid.setflags(write=False)
    return grid


def _specular_surface(img: np.ndarray, pts: np.ndarray, peak: float, thickness: float, rng: np.random.Generator,
                      floor: float = 0.2, halo: float = 0.0) -> None:
    """Bone or fascia surface whose echo depends on the angle to the (vertical) beams: a surface square
    to the beam is bright, a steep one much dimmer (specular reflection), with a little roughness."""
    d = np.diff(pts, axis=0)
    cos_incidence = np.abs(d[:, 0]) / np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)
    rough = np.exp(0.18 * rng.standard_normal(len(d)))
    values = peak * (floor + (1.0 - floor) * cos_incidence**2) * rough
    if halo > 0:  # beam-width glow around strong reflectors, drawn first so the core stays on top
        raster.segments(img, pts, values * halo, thickness * 3.0)
    raster.segments(img, pts, values, thickness)


@dataclass(frozen=True)
class _Look:
    """Operator / patient variation within a device preset, fixed for a hip (so for a whole cine sweep):
    gain and contrast knobs, lateral vignetting, soft-tissue layer thickness and curvature, and whether a
    near-field reverberation band shows."""

    gain_db: float
    contrast: float
    vignette: float
    fat_scale: float
    curvature: float
    reverb: float  # 0 = none, else the level of the near-field reverberation band


@lru_cache(maxsize=256)
def _sweep_look(seed: int) -> _Look:
    g = np.random.default_rng([seed, 0x100C])
    return _Look(
        gain_db=float(np.clip(g.normal(0.5, 2.5), -4.0, 6.0)),
        contrast=float(g.uniform(0.88, 1.15)),
        vignette=float(g.uniform(0.0, 0.25)),
        fat_scale=float(g.uniform(0.6, 1.7)),
        curvature=float(g.uniform(0.8, 1.5)),
        reverb=float(g.uniform(1.0, 3.0)) if g.random() < 0.35 else 0.0,
    )


@lru_cache(maxsize=64)
def _modulation_field(seed: int, npx: int) -> np.ndarray:
    """Smooth log-normal brightness modulation (npx, npx) float32, mean about 1: bone echoes brighten and
    fade along their contours (a few mm correlation length), as on real scans. Cached per hip."""
    g = np.random.default_rng([seed, 0xB0E])
    coarse = g.standard_normal((14, 14)).astype(np.float32)
    field = cv2.resize(cv2.exp(coarse * np.float32(0.45)), (npx, npx), interpolation=cv2.INTER_LINEAR)
    field.setflags(write=False)
    return field


def _bone_surface(spec: np.ndarray, diffuse: np.ndarray, bone: np.ndarray, pts: np.ndarray, into: np.ndarray,
                  peak: float, k: float, rng: np.random.Generator, floor: float = 0.12,
                  mu: float = 0.0, shadow_at: float = 0.9, tail: float = 1.0) -> None:
    """Bone surface echo: a slightly irregular bright line whose brightness and thickness depend on the
    angle to the (vertical) beams (strong where square to the beam, fading where oblique), with a soft
    leading edge, a speckled reverberation tail into the bone and the attenuating band behind it.
    ``into`` is the unit vector pointing into the bone; ``mu`` the attenuation of the shadow band."""
    pts = raster.resample(pts, max(1.5, 0.5 * k))
    m = len(pts)
    # Roughness: the drawn surface wanders a little (about 0.07 mm) around the exact contour.
    pts = pts + (0.07 * k * raster.smooth_noise(rng, m, 6))[:, None] * into[None, :]
    d = np.diff(pts, axis=0)
    cos_incidence = np.abs(d[:, 0]) / np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)
    along = np.exp(0.25 * raster.smooth_noise(rng, m - 1, 8))
    values = peak * (floor + (1.0 - floor) * cos_incidence**3) * along
    rel = values / peak
    thick = max(1.0, 0.45 * k)
    # Leading edge: a dim, wider echo on the probe side (pulse length, beam width): a blurred onset.
    raster.segments(spec, pts - (0.25 * k) * into, 0.12 * values, 2.6 * thick)
    # Core, thicker where it is bright.
    fixed = [tuple(p) for p in raster.fx(pts).reshape(-1, 2).tolist()]
    for i, (v, w) in enumerate(zip(values.tolist(), (thick * (0.8 + 0.5 * rel)).tolist())):
        cv2.line(spec, fixed[i], fixed[i + 1], v, max(1, round(w)), cv2.LINE_8, raster.SHIFT)
    # Reverberation tail into the bone: fainter echoes and a speckled band (diffuse: it speckles).
    if tail > 0:
        half = pts[::2] if m > 6 else pts
        hv = values[::2][: len(half) - 1] if m > 6 else values
        for depth, level in ((0.4, 0.3), (0.75, 0.12)):
            raster.segments(spec, half + (depth * k) * into, tail * level * hv, max(1.0, 0.3 * k))
        raster.polyline(diffuse, pts + (0.55 * k) * into, 0.9 * tail, max(1.0, 0.7 * k))
    if mu > 0:
        raster.polyline(bone, pts + (shadow_at * k) * into, mu, max(1.0, 0.7 * k))


def _draw_scene(scene: HipScene, params: HipParams, npx: int, depth_mm: float,
                look: _Look | None = None, style: str = "schematic") -> tuple[np.ndarray, ...]:
    """Tissue maps (diffuse, specular, bone) float32 (npx, npx) for ``scene``; ``style="realistic"`` adds
    the layers of ``sonogate.phantom.realistic`` on top (the schematic maps are computed identically)."""
    look = look or _sweep_look(params.tissue_seed)
    if style == "realistic":
        return draw_scene(scene, params, npx, depth_mm, look)
    k = npx / depth_mm  # px per mm
    tex = np.random.default_rng(params.tissue_seed)  # per-hip texture: identical across frames of a hip
    specular = np.zeros((npx, npx), np.float32)
    bone = np.zeros((npx, npx), np.float32)
    mm = lambda v: max(1.0, v * k)

    c = scene.head_center * k
    r = scene.head_radius * k
    u, n = scene.u, scene.n
    xs = np.linspace(-0.05 * npx, 1.05 * npx, 28)
    fat_px = params.fat_mm * look.fat_scale * k
    drape = drape_profile(scene, k, npx)
    mean_drape = float(drape.mean())
    drape = np.minimum(drape, mean_drape + look.curvature * (drape - mean_drape))  # more / less curved layers

    # Soft tissue: streaky structure warped so that it drapes over the joint like the muscle layers do
    # (rows shift by the drape height, fully at the joint, not at all at the skin).
    rows = np.arange(npx, dtype=np.float32)[:, None]
    inv_span = (1.0 / np.maximum(drape - fat_px, 1.0)).astype(np.float32)[None, :]
    share = np.clip((rows - np.float32(fat_px)) * inv_span, 0.0, 1.0)
    share *= (drape - float(drape.mean())).astype(np.float32)[None, :]
    map_y = rows - share
    map_x = _identity_map_x(npx)
    diffuse = cv2.remap(_structure_field(params.tissue_seed, npx), map_x, map_y, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REFLECT)
    # Fibrillar and bright near the skin (fat septa, gluteus maximus), darker and smoother muscle over the
    # joint, darker again in the deep pelvis: amplitude = base(depth) * exp(contrast(depth) * G).
    ys = np.arange(npx, dtype=np.float32)
    depth_share = np.clip((ys - fat_px) / max(1.0, float(drape.mean()) - fat_px), 0, 1.6)
    contrast = np.where(ys < fat_px, 1.7, 1.5 - 0.55 * np.minimum(depth_share, 1.0)).astype(np.float32)
    base = np.where(ys < fat_px, 0.3, 0.26 - 0.17 * np.minimum(depth_share, 1.0) ** 0.6
                    - 0.04 * np.maximum(depth_share - 1.0, 0))
    diffuse *= contrast[:, None]
    diffuse = cv2.exp(diffuse)
    diffuse *= base.astype(np.float32)[:, None]

    # Fat septa: short, thin, slightly oblique bright lines.
    for _ in range(int(tex.integers(4, 9))):
        y0 = tex.uniform(0.2, 1.0) * fat_px
        x0 = tex.uniform(-0.1, 0.9) * npx
        length = tex.uniform(0.15, 0.6) * npx
        slope = tex.normal(0.0, 0.05)
        pts = np.array([[x0, y0], [x0 + 0.5 * length, y0 + (0.5 * slope + tex.normal(0, 0.01)) * length],
                        [x0 + length, y0 + slope * length]])
        raster.polyline(specular, pts, tex.uniform(1.0, 4.0), 1)
    # Muscle: a few strong fasciae and fainter perimysium lines, draped between fat and the deep structures.
    drape_xs = np.clip(xs, 0, npx - 1).astype(int)
    for j in range(int(tex.integers(8, 14))):
        strong = j < int(tex.integers(2, 4))
        f = float(tex.uniform(0.05, 0.95)) if strong else float(tex.uniform(0.0, 1.0) ** 1.5)
        wave = tex.normal(0.0, 0.02 * npx) * np.sin(xs / npx * tex.uniform(2.0, 6.0) + tex.uniform(0, 6.3))
        ys = fat_px + f * (drape[drape_xs] - fat_px) + wave
        if strong:
            a, b = 0, len(xs)
        else:
            a = int(tex.integers(0, len(xs) - 6))
            b = int(min(len(xs), a + tex.integers(5, 16)))
        pts = np.stack([xs[a:b], ys[a:b]], axis=1)
        level = tex.uniform(2.0, 4.5) if strong else tex.uniform(0.7, 2.0)
        if strong:  # brightness varies along a fascia
            noise = np.convolve(tex.standard_normal(len(pts) + 3), [0.25, 0.5, 0.75, 0.5, 0.25], "valid")
            gaps = np.where(raster.smooth_noise(tex, len(pts[::2]) - 1, 2) < -0.7, 0.05, 1.0)  # interrupted
            raster.segments(specular, pts[::2], level * gaps * np.exp(0.9 * noise[: len(pts[::2]) - 1]), mm(0.2))
        else:
            raster.polyline(specular, pts, level, mm(0.15))
        if strong:  # hypoechoic muscle belly just below a fascia
            raster.polyline(diffuse, pts + np.array([0.0, mm(0.8)]), 0.16, mm(1.0))
    # Superficial layers (fat septa, gluteus maximus perimysium): many long, thin, parallel bright streaks.
    for _ in range(int(tex.integers(10, 20))):
        f = float(tex.uniform(-0.6, 0.45))
        a = int(tex.integers(0, len(xs) // 2))
        b = int(min(len(xs), a + tex.integers(len(xs) // 3, len(xs))))
        ys = fat_px + f * (drape[drape_xs[a:b]] - fat_px) + tex.normal(0.0, 0.004 * npx)
        if f < 0:  # inside the fat: follow the skin more than the joint
            ys = fat_px * (1.0 + f) + 0.15 * f * (drape[drape_xs[a:b]] - drape.mean())
        raster.polyline(specular, np.stack([xs[a:b], ys], axis=1), tex.uniform(1.2, 3.2), 1)
    raster.polyline(specular, np.array([[0, 0.3 * k], [npx, 0.3 * k]]), 5.0, mm(0.3))  # skin line
    if look.reverb > 0:  # near-field reverberation: faint copies of the skin line, evenly spaced, decaying
        step = float(tex.uniform(1.2, 2.4)) * k
        for j in range(1, 5):
            raster.polyline(specular, np.array([[0, 0.3 * k + j * step], [npx, 0.3 * k + j * step]]),
                            look.reverb * 0.7**j, mm(0.25))
        raster.polyline(diffuse, np.array([[0, 2.0 * step], [npx, 2.0 * step]]), 0.15 * look.reverb, 4.0 * step)

    # Acetabular cartilage: fills between the bony roof, the head and the cartilage roof line.
    roof_px = scene.roof * k
    lab = scene.labrum * k
    low = scene.lower_limb * k
    ang_lab = math.degrees(math.atan2(lab[1] - c[1], lab[0] - c[0]))
    ang_low = math.degrees(math.atan2(low[1] - c[1], low[0] - c[0]))
    ang_rim = math.degrees(math.atan2(scene.rim[1] * k - c[1], scene.rim[0] * k - c[0]))
    # Walk from the labrum to the lower limb around the side of the head that faces the rim.
    span = (ang_low - ang_lab) % 360.0
    through = (ang_rim - ang_lab) % 360.0
    arc_end = ang_lab + span if through <= span else ang_lab - (360.0 - span)
    head_arc = raster.arc_points(c, r * 1.02, ang_lab, arc_end, 30)
    cart_poly = np.vstack([roof_px[::-1], lab[None, :], head_arc, low[None, :]])
    raster.fill(diffuse, cart_poly, 0.1)
    cx0, cy0 = cart_poly.min(axis=0)
    cx1, cy1 = cart_poly.max(axis=0)
    n_fleck = int(tex.integers(6, 16))  # hypoechoic but textured: a few faint flecks
    fl = np.stack([tex.uniform(cx0, cx1, n_fleck), tex.uniform(cy0, cy1, n_fleck)], axis=1).astype(int)
    inside_cart = np.array([cv2.pointPolygonTest(cart_poly.astype(np.float32), (float(x), float(y)), False) > 0
                            for x, y in fl], dtype=bool) if n_fleck else np.zeros(0, bool)
    fl = np.clip(fl[inside_cart], 0, npx - 1)
    diffuse[fl[:, 1], fl[:, 0]] = tex.uniform(0.25, 0.6, len(fl)).astype(np.float32)

    # Greater-trochanter cartilage and the cartilaginous neck region (hypoechoic).
    mc, mr = scene.metaphysis_center * k, scene.metaphysis_radius * k
    gt_center = c + 1.25 * r * u - 0.35 * r * n
    raster.ellipse(diffuse, gt_center, (1.0 * r, 0.75 * r), math.degrees(math.atan2(u[1], u[0])), 0.08)

    # Femoral head: hypoechoic hyaline cartilage with a few echogenic sinusoids.
    centre_fixed = tuple(round(v * raster.ONE) for v in c)  # OpenCV fixed point (raster.SHIFT bits)
    cv2.circle(diffuse, centre_fixed, round(r * raster.ONE), 0.06, -1, cv2.LINE_8, raster.SHIFT)
    cv2.circle(specular, centre_fixed, round(r * raster.ONE), 0.0, -1, cv2.LINE_8, raster.SHIFT)
    # (Set as 2-3 pixel dashes in one vectorised step: the PSF blur rounds them off.)
    n_dots = int(tex.integers(15, 60))
    rad = r * 0.9 * np.sqrt(tex.random(n_dots))
    th = tex.uniform(0, 2 * math.pi, n_dots)
    dot_x = np.clip((c[0] + rad * np.cos(th)).astype(int), 0, npx - 3)
    dot_y = np.clip((c[1] + rad * np.sin(th)).astype(int), 0, npx - 1)
    dot_v = tex.uniform(0.1, 0.35, n_dots).astype(np.float32)
    for dx in range(int(max(1, round(0.25 * k)))):
        diffuse[dot_y, dot_x + dx] = dot_v
    # "Starry sky": sparse small bright specks (vascular channels) in the unossified head.
    n_star = int(tex.integers(25, 70))
    rad = r * 0.93 * np.sqrt(tex.random(n_star))
    th = tex.uniform(0, 2 * math.pi, n_star)
    star_x = np.clip((c[0] + rad * np.cos(th)).astype(int), 0, npx - 2)
    star_y = np.clip((c[1] + rad * np.sin(th)).astype(int), 0, npx - 1)
    star_v = (tex.uniform(2.0, 4.5, n_star) ** 1.6).astype(np.float32)
    specular[star_y, star_x] = star_v
    specular[star_y, star_x + 1] = 0.5 * star_v
    # Thin echogenic perichondrium around the head.
    cv2.circle(specular, centre_fixed, round(r * 1.01 * raster.ONE), 0.9, 1, cv2.LINE_8, raster.SHIFT)

    # Fat pad in the acetabular fossa, between the head and the lower limb (echogenic).
    toward = (low - c) / max(1e-6, float(np.hypot(*(low - c))))
    pad = c + toward * (r * 1.05 + 0.35 * float(np.hypot(*(low - c)) - r))
    raster.ellipse(diffuse, pad, (0.28 * r, 0.14 * r), math.degrees(math.atan2(toward[1], toward[0])) + 90, 0.4)

    defect = scene.defect
    # Capsule over the head and neck, perichondrium over the cartilage roof (echogenic lines).
    if defect != "poor_capsule":
        # Not concentric with the head: the capsule leaves the labrum, flattens over the head and runs on
        # to the neck (quadratic Bezier through a point above the head top).
        start = lab - 0.15 * r * n
        top = c - (1.28 + 0.1 * tex.random()) * r * n + 0.2 * r * u
        tail_end = np.array([npx * 1.05, mc[1] - mr - 0.25 * r])
        tb = np.linspace(0.0, 1.0, 14)[:, None]
        cap = (1 - tb) ** 2 * start + 2 * (1 - tb) * tb * top + tb**2 * (c + 1.3 * r * u - 0.9 * r * n)
        cap = np.vstack([cap, tail_end])
        raster.polyline(diffuse, cap, 0.35, mm(1.8))  # thick fibrous capsule
        _specular_surface(specular, cap, 4.0, mm(0.4), tex, floor=0.5, halo=0.3)
        rim_px = scene.rim * k
        peri = np.vstack([lab, rim_px - 0.12 * r * n, rim_px - 1.4 * r * u - 0.18 * r * n])
        _specular_surface(specular, peri, 2.6, mm(0.3), tex, floor=0.5)
    else:
        raster.ellipse(diffuse, c - 0.8 * r * n, (1.2 * r, 0.5 * r), 0.0, 0.25)  # smeared, low-contrast region

    # Labrum: echogenic triangle at the tip of the cartilage roof, on the head.
    if defect != "no_labrum":
        radial = (lab - c) / max(1e-6, float(np.hypot(*(lab - c))))
        tangent = np.array([-radial[1], radial[0]])
        if tangent @ u < 0:
            tangent = -tangent  # apex points caudally, along the capsule
        base0 = lab - 0.14 * r * radial - 0.2 * r * tangent
        base1 = lab + 0.18 * r * radial - 0.2 * r * tangent
        apex = lab + 0.05 * r * radial + 0.5 * r * tangent
        tri = np.stack([base0, base1, apex])
        raster.fill(diffuse, tri, 1.1)
        raster.fill(specular, tri, 1.5)
    else:
        raster.ellipse(diffuse, lab, (0.3 * r, 0.2 * r), 0.0, 0.07)

    # Bone. Bright specular surface (plus a fainter echo just below: pulse length and reverberation), then
    # a band of attenuation on the bone side that casts the acoustic shadow.
    bone_mu = 2.6 / mm(0.7)  # about -23 dB through the bone band: shadows keep a faint texture
    # Bone echoes go to their own map first: a smooth per-hip field then brightens and fades them along
    # the contours (and their tails) before they join the other reflectors.
    bspec = np.zeros_like(specular)
    ilium_px = scene.ilium * k
    _bone_surface(bspec, diffuse, bone, ilium_px, n, 34.0, k, tex, floor=0.12, mu=bone_mu, shadow_at=0.9)
    roof_drawn = roof_px
    if defect == "no_lower_limb":
        roof_drawn = roof_px[: max(3, int(len(roof_px) * 0.55))]  # roof stops short, lower limb not shown
    m_away = -(math.sin(math.radians(scene.alpha)) * u - math.cos(math.radians(scene.alpha)) * n)
    _bone_surface(bspec, diffuse, bone, roof_drawn, m_away, 30.0, k, tex, floor=0.25, mu=bone_mu, shadow_at=0.6,
                  tail=0.7)
    if defect != "no_lower_limb":
        raster.ellipse(specular, low, (0.8 * k, 0.55 * k), math.degrees(math.atan2(u[1], u[0])), 22.0)
        raster.ellipse(bone, low + 0.5 * k * n, (0.7 * k, 0.4 * k), 0.0, bone_mu)
        # Beyond the lower limb the bony contour hooks under the head (acetabular fossa, Y-cartilage edge).
        ang_l = math.degrees(math.atan2(low[1] - c[1], low[0] - c[0]))
        toward_below = -1.0 if ((ang_l - math.degrees(math.atan2(n[1], n[0]))) % 360.0) < 180.0 else 1.0
        hook = raster.arc_points(c, float(np.hypot(*(low - c))) * 1.03, ang_l, ang_l + toward_below * 38.0, 8)
        _specular_surface(bspec, hook, 14.0, mm(0.4), tex, floor=0.35, halo=0.2)
        raster.polyline(bone, hook + (0.6 * k) * n, 0.6 * bone_mu, mm(0.6))
    else:
        raster.ellipse(diffuse, low, (0.12 * r, 0.3 * r), 0.0, 0.07)

    # Ischium below the joint: a rounded bony cap, bright on top, with its own shadow.
    isc = scene.ischium * k
    isc_angle = math.degrees(math.atan2(u[1], u[0]))
    raster.ellipse(diffuse, isc, (0.62 * r, 0.4 * r), isc_angle, 0.35)  # glow of the cartilage around it
    dome = raster.arc_points(isc + 0.12 * r * n, 0.42 * r, 180.0 + isc_angle, 360.0 + isc_angle, 12)
    dome[:, 1] = isc[1] + 0.12 * r + (dome[:, 1] - isc[1] - 0.12 * r) * 0.75  # a little flatter than round
    _specular_surface(bspec, dome, 18.0, mm(0.55), tex, floor=0.4, halo=0.25)
    raster.ellipse(bone, isc + 0.2 * r * n, (0.4 * r, 0.2 * r), isc_angle, bone_mu)

    # Chondro-osseous border of the femoral neck: bright arc facing the head and the probe, shadow behind.
    if defect != "no_chondro_osseous":
        facing = math.degrees(math.atan2(c[1] - mc[1], c[0] - mc[0]))
        arc = raster.arc_points(mc, mr, facing - 15.0, facing + 100.0, 18)
        _specular_surface(bspec, arc, 20.0, mm(0.4), tex, floor=0.3, halo=0.15)
        raster.polyline(bone, raster.arc_points(mc, mr - 0.6 * k, facing - 15.0, facing + 100.0, 18), bone_mu, mm(0.7))
    # Ossific nucleus: irregular bright core in the head, partial shadow.
    if params.ossific_nucleus_mm > 0:
        rn = params.ossific_nucleus_mm * k
        pts = raster.arc_points(c + 0.1 * r * n, rn, 0, 360, 14)
        pts += tex.normal(0.0, 0.12 * rn, pts.shape)
        raster.fill(specular, pts, 7.0)
        raster.fill(bone, pts, 0.12)
    specular += cv2.multiply(bspec, _modulation_field(params.tissue_seed, npx))
    return diffuse, specular, bone


def _to_output(point_mm: np.ndarray, k: float, n_int: int, size: int) -> tuple[float, float]:
    """mm (as acquired) -> output pixel (x, y) as acquired, matching cv2.resize's pixel-centre mapping."""
    x, y = float(point_mm[0] * k), float(point_mm[1] * k)
    if n_int != size:
        scale = size / n_int
        x, y = (x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5
    return x, y


def render_us_frame(
    params: HipParams,
    rng: np.random.Generator,
    device: ScannerDevice | str = "A",
    size: int = 256,
    defect: str = "",
    plane_offset: float = 0.0,
    *,
    probe_shift_mm: tuple[float, float] = (0.0, 0.0),
    probe_rot_deg: float = 0.0,
    speckle_field: np.ndarray | None = None,
    style: str = "schematic",
    orientation: str | None = None,
) -> UsFrame:
    """Render one hip ultrasound frame.

    Inputs: ``params`` the hip; ``rng`` for speckle and defect details; ``device`` preset or name; ``size``
    output side in pixels; ``defect`` "" (standard plane) or one of ``ALL_DEFECTS``; ``plane_offset`` the
    elevation position (0 middle, beyond +-0.35 non-middle: anterior < 0 < posterior); keyword-only
    ``probe_shift_mm`` / ``probe_rot_deg`` small probe motion (moves the anatomy in the picture, does not
    change alpha/beta/coverage); ``speckle_field`` a (2, n, n) float32 scatterer field from
    ``acoustics.new_speckle_field`` with n = ``acoustics.internal_size(device, size)`` (cine frames share
    one so speckle moves with tissue instead of flickering; default: drawn from ``rng``); ``style``
    ``"schematic"`` (default: the look the committed model bundle was trained on, unchanged byte for byte) or
    ``"realistic"`` (``sonogate.phantom.realistic``: layered soft tissue, bone surfaces over grey blocks,
    finer speckle, TGC banding, framed closer: ``realistic.realistic_view``). Both styles consume ``rng`` identically, so a
    seed gives the same labels; the realistic landmarks are the same points in its zoomed framing (the
    trochanter and the ischium, drawn per hip by ``realistic.vary_anatomy``, excepted); ``orientation`` the
    display orientation, one of ``ORIENTATIONS`` ("horizontal" as acquired, "graf" Graf's display with the
    ilium vertical, cranial up and the probe on the left, "graf_mirrored" the same with the probe on the right;
    see the module docstring), an exact transform of the image and of every landmark applied after rendering,
    so it changes no label and draws nothing from ``rng``; None (default) shows the device's own convention
    (``"vertical"`` on device C is the same picture as "graf"), byte for byte as before the option existed.
    Output: ``UsFrame`` with the image, exact labels of this frame and the landmark pixels;
    ``UsFrame.orientation`` is the name asked for, or the device's convention when None.
    """
    dev = get_device(device)
    realistic = check_style(style) == "realistic"
    if orientation is None:
        display = "graf" if dev.orientation == "vertical" else "horizontal"
    else:
        display = check_orientation(orientation)
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise SonogateError(f"phantom image size must be an integer >= 32, got {size!r}")
    defect, plane_offset = _resolve_defect(defect, plane_offset, rng)
    n_int = internal_size(dev, int(size))
    # The realistic style frames the joint as sonographers do (zoomed so the head fills about 40 % of the
    # width, the rim a little below mid-depth); the schematic style images the device's whole field.
    view = realistic_view(params, dev.depth_mm) if realistic else (0.0, 0.0, dev.depth_mm)
    scene = _build_scene(params, defect, plane_offset, dev.depth_mm, probe_shift_mm, probe_rot_deg, rng, view)
    if realistic:
        scene = vary_anatomy(scene, params, view[2])
    look = _sweep_look(params.tissue_seed)  # operator / patient variation, fixed for the hip's sweep
    diffuse, specular, bone = _draw_scene(scene, params, n_int, view[2], look, style)
    if speckle_field is None:
        speckle_field = new_speckle_field(rng, n_int)
    elif speckle_field.shape != (2, n_int, n_int):
        raise SonogateError(f"speckle_field must have shape {(2, n_int, n_int)}, got {speckle_field.shape}")
    if realistic:
        real = real_look(params.tissue_seed)
        image = form_image(diffuse, specular, bone, realistic_device(dev), speckle_field, int(size),
                           gain_offset_db=look.gain_db + real.gain_db, contrast=look.contrast,
                           vignette=look.vignette, row_gain=tgc_row_gain(real, n_int),
                           looks=REALISTIC_LOOKS, grain=REALISTIC_GRAIN)
    else:
        image = form_image(diffuse, specular, bone, dev, speckle_field, int(size), gain_offset_db=look.gain_db,
                           contrast=look.contrast, vignette=look.vignette)
    image = orient_image(image, display)

    k = n_int / view[2]
    r = scene.head_radius
    raw = {
        "baseline_top": scene.baseline_top,
        "baseline_bottom": scene.baseline_bottom,
        "bony_rim": scene.rim,
        "lower_limb": scene.lower_limb,
        "labrum": scene.labrum,
        "head_center": scene.head_center,
        "head_medial": scene.head_center + r * scene.n,
        "head_lateral": scene.head_center - r * scene.n,
        "chondro_osseous": scene.metaphysis_center
        + scene.metaphysis_radius * (scene.head_center - scene.metaphysis_center)
        / float(np.hypot(*(scene.head_center - scene.metaphysis_center))),
        "ischium": scene.ischium - 0.3 * r * scene.n,
    }
    landmarks = {name: orient_point(_to_output(raw[name], k, n_int, int(size)), display, int(size))
                 for name in LANDMARK_NAMES}
    return UsFrame(
        image=image,
        alpha_deg=float(scene.alpha),
        beta_deg=float(scene.beta),
        coverage_pct=float(scene.coverage),
        standard_plane=int(defect == ""),
        defect=defect,
        device=dev.name,
        landmarks=landmarks,
        plane_offset=float(plane_offset),
        hip_alpha_deg=float(params.alpha_deg),
        hip_beta_deg=float(params.beta_deg),
        hip_coverage_pct=float(params.coverage_pct),
        orientation=dev.orientation if orientation is None else display,
        extras={"head_radius_px": float(r * k * size / n_int), "graf_type": params.graf_type()},
    )
