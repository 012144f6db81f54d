"""Infant pelvic AP radiograph phantom with exact acetabular index, centre-edge angle and IHDI grade per hip.

Conventions (radiological: the patient's right hip is on the image left; pixel y grows downward):

* Hilgenreiner's line H passes through both triradiate cartilages ``triradiate_r`` and ``triradiate_l``
  (also named ``pel_r_i`` / ``pel_l_i`` as in the Retuve landmark JSONs of the shared data).
* Acetabular index (AI) per side: angle between H and the line triradiate -> lateral acetabular edge
  (``acetabular_edge_r/l`` = ``pel_r_o`` / ``pel_l_o``).
* Centre-edge angle (CE): angle at the femoral-head centre ``head_center_r/l`` between the perpendicular to
  H (pointing cranially) and the line to the lateral acetabular edge; positive when the edge lies lateral of
  the perpendicular. Very negative values mean a dislocated head.
* Perkin's line P: perpendicular to H through the lateral acetabular edge.
* IHDI grade from the H-point ``h_point_r/l`` (middle of the top of the proximal femoral metaphysis):
  I medial to P; II lateral to P and at or medial to the D-line (45 deg down-lateral from the H/P corner);
  III lateral to the D-line, at or below H; IV above H.

The drawing (soft-tissue silhouette, iliac wings with cortical rims, sacrum and lumbar spine, obturator
rings, triradiate gap, acetabular roofs, proximal femora with metaphyses, ossific nuclei, bowel gas,
quantum noise and blur) is built around those landmarks, so every label is recomputable from them
(``measure_xr_from_landmarks``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sonogate.errors import SonogateError
from sonogate.phantom.raster import ONE, SHIFT, fx
from sonogate.phantom.writer import check_dataset_args, progress_bar, write_csv, write_png

SEVERITIES = ("normal", "dysplastic", "subluxated", "dislocated")
XR_LANDMARK_NAMES = (
    "triradiate_r", "triradiate_l", "acetabular_edge_r", "acetabular_edge_l",
    "head_center_r", "head_center_l", "h_point_r", "h_point_l",
)
# Aliases in the naming of the shared real X-ray landmark JSONs (Retuve): pel_*_i triradiate, pel_*_o edge.
RETUVE_ALIASES = {
    "pel_r_i": "triradiate_r", "pel_l_i": "triradiate_l", "pel_r_o": "acetabular_edge_r",
    "pel_l_o": "acetabular_edge_l", "fem_r": "head_center_r", "fem_l": "head_center_l",
}


@dataclass
class XrHip:
    """One hip on the radiograph, in units of the image side (so the geometry scales with the size).

    severity: one of SEVERITIES. ai_deg, ce_deg: construction angles (the labels). roof_len: triradiate ->
    edge distance. head_radius: cartilaginous head radius. head_dist: head centre -> acetabular edge distance.
    nucleus: ossific-nucleus radius (0 = none).
    """

    severity: str
    ai_deg: float
    ce_deg: float
    roof_len: float
    head_radius: float
    head_dist: float
    nucleus: float


@dataclass
class XrParams:
    """One pelvis: both hips, pose and exposure.

    right, left: ``XrHip``. tilt_deg: obliquity of Hilgenreiner's line. center_x, line_y: midpoint of the
    triradiate points (image units). half_width: half the triradiate distance. age_months. exposure: film
    contrast, noise and blur settings. texture_seed: bowel gas and trabecular texture.
    """

    right: XrHip
    left: XrHip
    tilt_deg: float = 0.0
    center_x: float = 0.5
    line_y: float = 0.54
    half_width: float = 0.21
    age_months: float = 4.0
    exposure: dict = field(default_factory=dict)
    texture_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class XrFrame:
    """A rendered pelvic radiograph with per-hip labels (exact geometry of the drawing).

    image: (size, size) uint8. ai_deg_*, ce_deg_*: degrees. ihdi_*: 1..4. landmarks: name -> (x, y) pixels,
    including the Retuve aliases pel_r_i, pel_l_i, pel_r_o, pel_l_o, fem_r, fem_l.
    """

    image: np.ndarray
    ai_deg_left: float
    ai_deg_right: float
    ce_deg_left: float
    ce_deg_right: float
    ihdi_left: int
    ihdi_right: int
    landmarks: dict[str, tuple[float, float]]
    severity_left: str = "normal"
    severity_right: str = "normal"


def _sample_hip(rng: np.random.Generator, severity: str, age_months: float) -> XrHip:
    if severity == "normal":
        ai, ce, dist = np.clip(rng.normal(22, 4), 12, 29), np.clip(rng.normal(26, 6), 15, 40), rng.uniform(0.95, 1.15)
    elif severity == "dysplastic":
        ai, ce, dist = np.clip(rng.normal(33, 3.5), 28, 42), rng.uniform(5, 18), rng.uniform(1.0, 1.25)
    elif severity == "subluxated":
        ai, ce, dist = np.clip(rng.normal(36, 4), 30, 46), rng.uniform(-25, 4), rng.uniform(1.2, 1.6)
    elif severity == "dislocated":
        ai, ce, dist = np.clip(rng.normal(40, 4), 33, 50), rng.uniform(-125, -45), rng.uniform(1.5, 2.3)
    else:
        raise SonogateError(f"unknown hip severity {severity!r} (use {', '.join(SEVERITIES)})")
    radius = rng.uniform(0.040, 0.050) + 0.0008 * age_months
    # Ossific nucleus appears at 4-6 months, later on a dysplastic side.
    delay = 0.0 if severity == "normal" else 2.0
    nucleus = 0.0
    if age_months - delay > 3.5 and rng.random() < min(1.0, (age_months - delay - 3.5) / 4.0):
        nucleus = radius * min(0.6, 0.15 + 0.05 * (age_months - delay - 3.5))
    return XrHip(severity=severity, ai_deg=float(ai), ce_deg=float(ce), roof_len=float(rng.uniform(0.085, 0.11)),
                 head_radius=float(radius), head_dist=float(dist * radius), nucleus=float(nucleus))


def sample_xr_params(rng: np.random.Generator) -> XrParams:
    """Draw one pelvis. About half the pelves are normal on both sides; the rest have one (left more often)
    or both hips abnormal, with severities dysplastic 45 %, subluxated 25 %, dislocated 30 %."""
    age = float(rng.uniform(1.0, 12.0))

    def abnormal() -> str:
        return str(rng.choice(SEVERITIES[1:], p=[0.45, 0.25, 0.30]))

    pattern = rng.random()
    right, left = "normal", "normal"
    if pattern < 0.30:
        if rng.random() < 0.6:
            left = abnormal()
        else:
            right = abnormal()
    elif pattern < 0.45:
        right, left = abnormal(), abnormal()
    exposure = {
        "contrast": float(rng.uniform(0.8, 1.25)),
        "brightness": float(rng.uniform(-0.08, 0.08)),
        "noise": float(rng.uniform(2.0, 6.0)),
        "blur": float(rng.uniform(0.6, 1.4)),
        "gamma": float(rng.uniform(0.85, 1.2)),
    }
    return XrParams(
        right=_sample_hip(rng, right, age),
        left=_sample_hip(rng, left, age),
        tilt_deg=float(np.clip(rng.normal(0.0, 2.0), -6, 6)),
        center_x=float(0.5 + rng.normal(0.0, 0.015)),
        line_y=float(rng.uniform(0.50, 0.58)),
        half_width=float(rng.uniform(0.19, 0.235)),
        age_months=age,
        exposure=exposure,
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


# ----------------------------------------------------------------------------------------------------------
# Geometry and measurement


def _xr_geometry(params: XrParams, size: int) -> dict[str, np.ndarray]:
    """Landmarks in pixels (float) from the parameters."""
    t = math.radians(params.tilt_deg)
    h = np.array([math.cos(t), math.sin(t)])  # along Hilgenreiner, toward the image right (patient's left)
    up = np.array([math.sin(t), -math.cos(t)])  # perpendicular, cranial
    mid = np.array([params.center_x, params.line_y]) * size
    out: dict[str, np.ndarray] = {}
    for side, hip, lat in (("r", params.right, -h), ("l", params.left, h)):
        tri = mid + lat * params.half_width * size
        a = math.radians(hip.ai_deg)
        edge = tri + hip.roof_len * size * (math.cos(a) * lat + math.sin(a) * up)
        c = math.radians(hip.ce_deg)
        center = edge - hip.head_dist * size * (math.cos(c) * up + math.sin(c) * lat)
        # The metaphysis lies below the cartilaginous head; its top-centre is the H-point.
        hpoint = center - 1.05 * hip.head_radius * size * up
        out[f"triradiate_{side}"] = tri
        out[f"acetabular_edge_{side}"] = edge
        out[f"head_center_{side}"] = center
        out[f"h_point_{side}"] = hpoint
    return out


def _signed_angle(reference: np.ndarray, vector: np.ndarray, positive: np.ndarray) -> float:
    """Angle (deg) from ``reference`` to ``vector``, positive when ``vector`` leans toward ``positive``."""
    return math.degrees(math.atan2(float(np.dot(vector, positive)), float(np.dot(vector, reference))))


def ihdi_grade(h_point, edge, tri, lateral, up) -> int:
    """IHDI grade 1..4 of an H-point given the acetabular edge, the triradiate point and unit vectors."""
    corner = tri + float(np.dot(edge - tri, lateral)) * lateral  # H/P intersection below the edge
    v = np.asarray(h_point, float) - corner
    if float(np.dot(v, up)) > 0.0:
        return 4
    lat, down = float(np.dot(v, lateral)), -float(np.dot(v, up))
    if lat <= 0.0:
        return 1
    return 2 if lat <= down else 3


def measure_xr_from_landmarks(landmarks: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Recompute AI, CE and IHDI for both hips from landmark pixels.

    Input: triradiate_r/l, acetabular_edge_r/l, head_center_r/l, h_point_r/l (or the pel_* / fem_* aliases for
    the first three; IHDI needs the H-points). Output: ai_deg_right/left, ce_deg_right/left and, when
    H-points are given, ihdi_right/left.
    """
    def get(name: str):
        if name in landmarks:
            return np.asarray(landmarks[name], float)
        for alias, canonical in RETUVE_ALIASES.items():
            if canonical == name and alias in landmarks:
                return np.asarray(landmarks[alias], float)
        return None

    tri_r, tri_l = get("triradiate_r"), get("triradiate_l")
    if tri_r is None or tri_l is None:
        raise SonogateError("landmarks need both triradiate points (triradiate_r/l or pel_r_i/pel_l_i)")
    axis = tri_l - tri_r
    length = float(np.hypot(*axis))
    if length < 1e-9:
        raise SonogateError("triradiate points coincide: Hilgenreiner's line undefined")
    h = axis / length
    out: dict[str, float] = {}
    for side, tri, lateral in (("right", tri_r, -h), ("left", tri_l, h)):
        s = side[0]
        edge = get(f"acetabular_edge_{s}")
        if edge is None:
            continue
        up = np.array([-h[1], h[0]])
        if float(np.dot(edge - tri, up)) < 0:
            up = -up  # cranial = the side the acetabular edge is on
        out[f"ai_deg_{side}"] = _signed_angle(lateral, edge - tri, up)
        center = get(f"head_center_{s}")
        if center is not None:
            out[f"ce_deg_{side}"] = _signed_angle(up, edge - center, lateral)
        hp = get(f"h_point_{s}")
        if hp is not None:
            out[f"ihdi_{side}"] = float(ihdi_grade(hp, edge, tri, lateral, up))
    return out


# ----------------------------------------------------------------------------------------------------------
# Drawing

def _smooth_closed(points: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Chaikin corner cutting: rounded outline from a coarse polygon."""
    pts = np.asarray(points, float)
    for _ in range(iterations):
        nxt = np.roll(pts, -1, axis=0)
        pts = np.stack([0.75 * pts + 0.25 * nxt, 0.25 * pts + 0.75 * nxt], axis=1).reshape(-1, 2)
    return pts


def _add_shape(density: np.ndarray, pts: np.ndarray, fill: float, rim: float, rim_px: float, scratch: np.ndarray) -> None:
    """Add a filled bony outline (trabecular fill plus a denser cortical rim) to ``density``."""
    scratch[:] = 0
    cv2.fillPoly(scratch, [fx(pts)], float(fill), cv2.LINE_8, SHIFT)
    if rim > 0:
        cv2.polylines(scratch, [fx(pts)], True, float(fill + rim), max(1, round(rim_px)), cv2.LINE_8, SHIFT)
    density += scratch


def render_xr_frame(params: XrParams, rng: np.random.Generator, size: int = 256) -> XrFrame:
    """Render a pelvic AP radiograph. Inputs: ``params`` (``sample_xr_params``), ``rng`` for noise, ``size``.
    Output: ``XrFrame`` with exact AI / CE / IHDI per hip and the landmarks that recompute them."""
    if not isinstance(size, (int, np.integer)) or size < 64:
        raise SonogateError(f"X-ray phantom size must be an integer >= 64, got {size!r}")
    S = float(size)
    geo = _xr_geometry(params, size)
    tex = np.random.default_rng(params.texture_seed)
    t = math.radians(params.tilt_deg)
    h = np.array([math.cos(t), math.sin(t)])
    up = np.array([math.sin(t), -math.cos(t)])
    mid = np.array([params.center_x, params.line_y]) * S
    density = np.zeros((size, size), np.float32)
    scratch = np.zeros_like(density)

    # Soft tissue: trunk and thighs (water), slightly denser toward the middle.
    trunk = [mid + up * 0.62 * S + h * x for x in (-0.46 * S, 0.46 * S)]
    hips_w = 0.47 * S
    body = np.array([trunk[0], trunk[1], mid + h * hips_w + up * 0.05 * S, mid + h * 0.44 * S - up * 0.55 * S,
                     mid + h * 0.03 * S - up * 0.55 * S, mid - h * 0.03 * S - up * 0.55 * S,
                     mid - h * 0.44 * S - up * 0.55 * S, mid - h * hips_w + up * 0.05 * S])
    _add_shape(density, _smooth_closed(body, 2), 0.45, 0.0, 1, scratch)
    density[:] = cv2.GaussianBlur(density, (0, 0), 0.03 * S)

    bone = np.zeros_like(density)
    scale = params.half_width / 0.21  # pelvis size relative to the reference layout below

    def at(a: float, b: float, lat: np.ndarray) -> np.ndarray:
        """Point ``a`` lateral and ``b`` cranial of the midpoint, in image units of the reference pelvis."""
        return mid + lat * a * scale * S + up * b * scale * S

    for side, lat in (("r", -h), ("l", h)):
        tri, edge = geo[f"triradiate_{side}"], geo[f"acetabular_edge_{side}"]
        hip = params.right if side == "r" else params.left
        # Iliac wing: a fan from the acetabular roof to the crest, medially to the sacro-iliac joint.
        wing = np.array([tri + up * 0.008 * S, edge, at(0.40, 0.12, lat), at(0.43, 0.22, lat),
                         at(0.40, 0.33, lat), at(0.30, 0.39, lat), at(0.18, 0.37, lat), at(0.095, 0.27, lat),
                         at(0.11, 0.13, lat), at(0.16, 0.045, lat)])
        _add_shape(bone, _smooth_closed(wing, 2), 0.16, 0.1, 0.008 * S, scratch)
        # The ilium thickens toward the acetabulum (the "teardrop" region is denser than the wing).
        scratch[:] = 0
        body_c = (tri + edge) / 2 + up * 0.06 * S
        cv2.ellipse(scratch, tuple(round(v * ONE) for v in body_c), (int(0.07 * S * ONE), int(0.05 * S * ONE)),
                    0, 0, 360, 0.14, -1, cv2.LINE_8, SHIFT)
        bone += cv2.GaussianBlur(scratch, (0, 0), 0.02 * S)
        # Acetabular roof (sourcil): dense line triradiate -> edge, slightly concave.
        roof = np.array([tri + up * 0.004 * S, (tri + edge) / 2 + up * 0.01 * S, edge])
        cv2.polylines(bone, [fx(roof)], False, 0.55, max(1, round(0.01 * S)), cv2.LINE_8, SHIFT)
        # Ischium and pubis around the obturator foramen; the gap at the triradiate point is cartilage.
        isch = np.array([tri - up * 0.018 * S + lat * 0.02 * S, at(0.27, -0.06, lat), at(0.25, -0.17, lat),
                         at(0.2, -0.22, lat), at(0.13, -0.215, lat), at(0.035, -0.17, lat), at(0.02, -0.13, lat),
                         at(0.03, -0.085, lat), tri - up * 0.022 * S - lat * 0.03 * S])
        _add_shape(bone, _smooth_closed(isch, 2), 0.28, 0.16, 0.009 * S, scratch)
        foramen = at(0.135, -0.135, lat)
        scratch[:] = 0
        cv2.ellipse(scratch, tuple(round(v * ONE) for v in foramen),
                    (int(0.062 * scale * S * ONE), int(0.045 * scale * S * ONE)),
                    math.degrees(math.atan2(lat[1], lat[0])) + float(tex.normal(0, 8)), 0, 360, 0.28, -1,
                    cv2.LINE_8, SHIFT)
        bone -= scratch
        # Proximal femur: flat-topped metaphysis at the H-point, shaft down toward the knee (slightly medial).
        hp = geo[f"h_point_{side}"]
        half = 1.05 * hip.head_radius * S
        knee = hp - up * 0.8 * S - lat * 0.06 * S
        shaft_half = 0.032 * S
        femur = np.array([hp - lat * half * 0.85, hp + lat * half * 1.1, hp + lat * half * 1.0 - up * 0.05 * S,
                          hp + lat * shaft_half * 1.2 - up * 0.17 * S, knee + lat * shaft_half,
                          knee - lat * shaft_half, hp - lat * shaft_half - up * 0.17 * S,
                          hp - lat * half * 0.75 - up * 0.05 * S])
        _add_shape(bone, _smooth_closed(femur, 1), 0.26, 0.26, 0.012 * S, scratch)
        if hip.nucleus > 0:
            cv2.circle(bone, tuple(round(v * ONE) for v in geo[f"head_center_{side}"]),
                       round(hip.nucleus * S * ONE), 0.45, -1, cv2.LINE_8, SHIFT)
    # Sacrum (with darker foramina) and the lowest lumbar vertebrae in the midline.
    sacrum = np.array([at(-0.1, 0.33, h), at(0.1, 0.33, h), at(0.035, 0.09, h), at(-0.035, 0.09, h)])
    _add_shape(bone, _smooth_closed(sacrum, 2), 0.3, 0.08, 0.006 * S, scratch)
    for i in range(4):
        for sgn in (-1, 1):
            centre = at(sgn * (0.05 - 0.008 * i), 0.29 - 0.055 * i, h)
            cv2.circle(bone, tuple(round(v * ONE) for v in centre), int(0.011 * S * ONE), 0.1, -1,
                       cv2.LINE_8, SHIFT)
    for i in range(3):
        b0 = 0.36 + 0.105 * i
        vertebra = np.array([at(-0.075, b0, h), at(0.075, b0, h), at(0.08, b0 + 0.08, h), at(-0.08, b0 + 0.08, h)])
        _add_shape(bone, _smooth_closed(vertebra, 1), 0.32, 0.18, 0.007 * S, scratch)
        for sgn in (-1, 1):  # pedicles
            cv2.ellipse(bone, tuple(round(v * ONE) for v in at(sgn * 0.05, b0 + 0.05, h)),
                        (int(0.012 * S * ONE), int(0.018 * S * ONE)), 0, 0, 360, 0.15, -1, cv2.LINE_8, SHIFT)
    # Trabecular texture on bone, then a little unsharpness of the bony edges.
    grain = cv2.GaussianBlur(tex.random((size, size), dtype=np.float32) - 0.5, (0, 0), 0.005 * S + 0.6)
    bone *= 1.0 + 3.0 * grain
    density += cv2.GaussianBlur(bone, (0, 0), 0.8)
    # Bowel gas: low-density blobs over the upper pelvis and the pelvic inlet.
    scratch[:] = 0
    for _ in range(int(tex.integers(15, 45))):  # mottled: many small bubbles, a few larger loops
        centre = mid + up * tex.uniform(0.0, 0.55) * S + h * tex.normal(0, 0.13) * S
        big = tex.random() < 0.15
        scale_b = 2.5 if big else 1.0
        axes = (int(tex.uniform(0.008, 0.02) * scale_b * S * ONE), int(tex.uniform(0.006, 0.016) * scale_b * S * ONE))
        cv2.ellipse(scratch, tuple(round(v * ONE) for v in centre), axes, float(tex.uniform(0, 180)), 0, 360,
                    float(tex.uniform(0.04, 0.1)), -1, cv2.LINE_8, SHIFT)
    density -= cv2.GaussianBlur(scratch, (0, 0), 0.005 * S + 0.5)
    # Soft-tissue variation: the perineum between the thighs and the flanks are thinner.
    relx = ((np.arange(size, dtype=np.float32) + 0.5) / np.float32(S) - params.center_x) / 0.5
    density *= (1.0 - 0.18 * relx**2).astype(np.float32)[None, :]

    ex = params.exposure or {}
    # Film response: optical density -> brightness (bone white), with contrast, gamma, blur and quantum noise.
    film = 0.1 + 0.75 * (1.0 - np.exp(-1.1 * float(ex.get("contrast", 1.0)) * np.clip(density, 0, None)))
    film = np.clip(film + float(ex.get("brightness", 0.0)), 0, 1) ** float(ex.get("gamma", 1.0))
    film = cv2.GaussianBlur(film.astype(np.float32), (0, 0), float(ex.get("blur", 1.0)) * S / 256.0)
    image = film * 250.0 + rng.normal(0.0, float(ex.get("noise", 3.0)), film.shape).astype(np.float32)
    image = np.clip(image + 8.0, 0, 255).astype(np.uint8)

    lms = {name: (float(geo[name][0]), float(geo[name][1])) for name in XR_LANDMARK_NAMES}
    for alias, canonical in RETUVE_ALIASES.items():
        lms[alias] = lms[canonical]
    measured = measure_xr_from_landmarks(lms)
    return XrFrame(
        image=image,
        ai_deg_left=float(params.left.ai_deg), ai_deg_right=float(params.right.ai_deg),
        ce_deg_left=float(params.left.ce_deg), ce_deg_right=float(params.right.ce_deg),
        ihdi_left=int(measured["ihdi_left"]), ihdi_right=int(measured["ihdi_right"]),
        landmarks=lms, severity_left=params.left.severity, severity_right=params.right.severity,
    )


XR_COLUMNS = (
    "image", "patient_id", "side", "ai_deg", "ce_deg", "ihdi", "severity", "age_months",
) + tuple(f"lm_{name}_{axis}" for name in XR_LANDMARK_NAMES for axis in "xy")


def write_xr_dataset(out_dir: str | Path, n: int, seed: int, size: int = 256, progress: bool = True) -> Path:
    """Write ``n`` phantom pelvic radiographs (one per infant) and two label rows per image (R and L hip).

    Columns: image, patient_id, side, ai_deg, ce_deg, ihdi, severity, age_months and ``lm_<name>_x/_y`` for
    every landmark of the pelvis (both sides, so Hilgenreiner and Perkin lines are recomputable from any
    row). Output: ``out_dir``.
    """
    root = check_dataset_args(out_dir, n, size)
    rng = np.random.default_rng(seed)

    def rows() -> Iterable[dict]:
        for i in range(n):
            params = sample_xr_params(rng)
            frame = render_xr_frame(params, rng, size)
            patient_id = f"s{seed}-x{i:05d}"
            name = f"{patient_id}.png"
            write_png(root / "images" / name, frame.image)
            landmark_cols = {}
            for k in XR_LANDMARK_NAMES:
                landmark_cols[f"lm_{k}_x"], landmark_cols[f"lm_{k}_y"] = frame.landmarks[k]
            for side, ai, ce, grade, severity in (
                ("R", frame.ai_deg_right, frame.ce_deg_right, frame.ihdi_right, frame.severity_right),
                ("L", frame.ai_deg_left, frame.ce_deg_left, frame.ihdi_left, frame.severity_left),
            ):
                yield {"image": f"images/{name}", "patient_id": patient_id, "side": side, "ai_deg": ai,
                       "ce_deg": ce, "ihdi": grade, "severity": severity, "age_months": params.age_months,
                       **landmark_cols}

    write_csv(root / "labels.csv", XR_COLUMNS, progress_bar(rows(), 2 * n, "phantom XR", progress))
    return root
