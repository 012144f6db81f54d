"""Spine phantom (seed 002, US-X Complete): partial ultrasound cloud, lateral X-ray and complete truth per vertebra.

``write_spine_phantom(out_dir, n, seed)`` writes ``out_dir/<case>/``:

* ``us_partial.ply``: 2,048 points (mm) an ultrasound sweep from the back would see. A few probe poses on the
  skin behind the vertebra (midline and left / right paramedian, tilted medially and cranio-caudally) cast
  parallel beams anteriorly (a linear array swept in elevation). Per beam only the first surface hit counts
  (z-buffer), so the body is in the acoustic shadow of the arch; the vertebra's two neighbours (copies of
  it one level up and down, with a random disc gap and lordotic offset) shadow it as well, as in the whole-spine
  ray casting of the US-X Complete data generation; a screen just behind the posterior wall of the body stands
  in for the discs and canal contents a lone vertebra lacks (``_occluders``); a hit is kept only where the
  surface faces the probe
  (angle of incidence <= 70 degrees: steeper bone surfaces scatter the echo away). Speckle-like jitter along
  the beam (Gaussian, 0.4 mm), sub-pixel position within the beam, and dropout (smooth random patches about
  15 % of the area, plus 10 % of single echoes) follow; the hits are then resampled to 2,048 points by
  furthest-point sampling. Property ``pose``: which probe pose saw the point.
* ``xray.png``: a lateral projection radiograph of the vertebra in the X-ray frame (parallel beams along x):
  per pixel the path length L (mm) through the closed surface, shown as 255 * (1 - exp(-0.04 L)) (bone
  bright). 0.5 mm pixels, 256 x 256, columns anterior -> posterior (+y), rows superior -> inferior (-z),
  pixel (row r, column c) centred at y = -63.75 + 0.5 c, z = 63.75 - 0.5 r mm.
* ``xray_points.ply``: the 2.5D cloud made from the image alone (``xray_cloud``): every silhouette pixel
  (path length >= 0.5 mm, i.e. the X-ray label map) at its (y, z) in mm, with the coordinate the projection
  loses (x, lateral) set to 0, the mid-sagittal plane: the "z-embedding" of US-X Complete, which lifts the 2D
  lateral label map into the 3D frame of the ultrasound by appending a constant depth coordinate. Resampled
  to 2,048 points by furthest-point sampling (the edge comes first, then the inside). Property ``path_mm``.
* ``complete.ply``: the truth, 2,048 points drawn uniformly over the deformed surface (area-weighted).
* ``meta.json``: level, units "mm", source shape id, deformation seed and parameters, split (train / test by
  source shape: ``shapes.split_by_source``), probe poses, registration offset, X-ray geometry, frame.

Frames: the truth, the ultrasound cloud and the probe poses are in the vertebra frame of ``shapes`` (origin at
the truth's surface centroid, x lateral, y posterior, z superior). The X-ray is taken of the vertebra moved by a
small random rigid registration offset (rotation about each axis ~ N(0, 1 deg), translation ~ N(0, 1 mm),
clipped at 3 sd; recorded as ``registration_offset``: p_xray = R p + t), so ``xray_points`` carry the
misregistration that a heuristic ultrasound-X-ray alignment leaves; set the sds to 0 for exact alignment.

Source shapes and their licences: see ``sonogate.tasks.spine.shapes`` (VerSe-derived data: CC BY-SA 4.0,
attribute VerSe: Sekuboyina et al. 2021, Loeffler et al. 2020, Liebl et al. 2021; miruna20 repository MIT;
lumbar shape model MIT (c) 2022 Allison Clouthier).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sonogate.errors import DataError
from sonogate.tasks.spine import shapes as spine_shapes
from sonogate.tasks.spine.ply import write_ply
from sonogate.tasks.spine.raster import first_hits, furthest_point_sample, path_length, rasterize

N_POINTS = 2048
US_PIXEL_MM = 0.5
US_FOOTPRINT_MM = (50.0, 60.0)  # along the array, along the elevation sweep
MAX_INCIDENCE_DEG = 70.0
SPECKLE_SD_MM = 0.4
PATCH_DROPOUT_FRACTION = 0.15
ECHO_DROPOUT_FRACTION = 0.10
XRAY_PIXEL_MM = 0.5
XRAY_SIZE_PX = 256
XRAY_MU_PER_MM = 0.04
XRAY_SILHOUETTE_MM = 0.5
TEST_EVERY = 5  # every fifth case is a test case (from the held-out sources)


@dataclass
class SpineCase:
    """One phantom case: clouds (N, 3) mm, the X-ray image (uint8, H x W) and the meta dict."""

    complete: np.ndarray
    us_points: np.ndarray
    us_pose: np.ndarray
    xray_image: np.ndarray
    xray_points: np.ndarray
    xray_path_mm: np.ndarray
    meta: dict = field(default_factory=dict)


# -------------------------------------------------------------------------------------------------- geometry

def _rotation(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    """R = Rz @ Ry @ Rx for angles in degrees."""
    ax, ay, az = np.radians([rx_deg, ry_deg, rz_deg])
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _body_height(shape: spine_shapes.SourceShape, landmarks: dict) -> float:
    """Height (mm) of the vertebral body: z extent (2nd-98th percentile) of the surface in front of the canal."""
    vertices = shape.vertices
    body = vertices[(vertices[:, 1] < landmarks["body_posterior_y"] - 3.0)
                    & (np.abs(vertices[:, 0]) < 0.8 * landmarks["body_half_width_mm"])]
    if len(body) < 50:
        return float(np.ptp(vertices[:, 2]) * 0.55)
    low, high = np.percentile(body[:, 2], [2, 98])
    return float(high - low)


def _occluders(shape, rng) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """Meshes (vertices, faces) that shadow the vertebra, and how they were placed.

    The two stand-in neighbours (copies one level up and down, random disc gap and lordotic offset) and the
    anterior screen: a plane 1 mm behind the body's posterior rim / pedicle roots (``canal_landmarks``:
    body_posterior_max_y),
    8 mm wider than the body on each side and as tall as the column. It stands in for what a single isolated
    vertebra lacks: the discs, the ligamentum flavum / dura and the narrow interlaminar windows that leave the
    body's posterior wall (the "anterior complex") faint or invisible from the back.
    """
    landmarks = spine_shapes.canal_landmarks(shape)
    height = _body_height(shape, landmarks)
    copies, placements = [], []
    for direction in (+1, -1):
        gap = height * rng.uniform(0.22, 0.35)  # disc height relative to the body
        shift = np.array([rng.normal(0, 1.0), rng.normal(0, 2.0), direction * (height + gap)])
        tilt = _rotation(rng.normal(0, 4.0), 0.0, rng.normal(0, 2.0))
        copies.append((shape.vertices @ tilt.T + shift, shape.faces))
        placements.append({"shift_mm": [round(float(s), 3) for s in shift]})
    screen_y = landmarks["body_posterior_max_y"] + 1.0
    half_width = landmarks["body_half_width_mm"] + 8.0
    screen = np.array([[-half_width, screen_y, -150.0], [half_width, screen_y, -150.0],
                       [half_width, screen_y, 150.0], [-half_width, screen_y, 150.0]])
    copies.append((screen, np.array([[0, 1, 2], [0, 2, 3]])))
    return copies, {"body_height_mm": round(height, 3), "neighbours": placements,
                    "anterior_screen": {"y_mm": round(screen_y, 3), "half_width_mm": round(half_width, 3)},
                    **{k: round(v, 3) for k, v in landmarks.items()}}


def _probe_poses(shape, rng) -> list[dict]:
    """Midline and left / right paramedian probe poses on the skin behind the vertebra (mm, unit vectors)."""
    skin_y = float(shape.vertices[:, 1].max()) + rng.uniform(15.0, 35.0)
    poses = []
    for name, side in (("midline", 0), ("left paramedian", 1), ("right paramedian", -1)):
        offset = rng.normal(0.0, 2.0) if side == 0 else side * rng.uniform(15.0, 25.0)
        medial_deg = 0.0 if side == 0 else rng.uniform(5.0, 15.0)
        cranial_deg = rng.normal(0.0, 6.0)
        centre = np.array([offset, skin_y, rng.normal(0.0, 4.0)])
        # beam: anterior, tilted towards the midline (about z) and cranio-caudally (about x)
        beam = np.array([-side * math.sin(math.radians(medial_deg)), -math.cos(math.radians(medial_deg)), 0.0])
        beam = _rotation(cranial_deg, 0.0, 0.0) @ beam
        beam /= np.linalg.norm(beam)
        array_axis = np.array([1.0, 0.0, 0.0]) - beam[0] * beam
        array_axis /= np.linalg.norm(array_axis)
        poses.append({"name": name, "centre_mm": centre.round(4).tolist(), "beam_direction": beam.round(6).tolist(),
                      "array_axis": array_axis.round(6).tolist(), "medial_tilt_deg": round(medial_deg, 3),
                      "cranial_tilt_deg": round(cranial_deg, 3), "footprint_mm": list(US_FOOTPRINT_MM)})
    return poses


def _dropout_keep(u: np.ndarray, v: np.ndarray, rng) -> np.ndarray:
    """Which echoes survive: smooth random patches (about 15 % of the area) and 10 % of single echoes."""
    centres = np.stack([rng.uniform(-US_FOOTPRINT_MM[0] / 2, US_FOOTPRINT_MM[0] / 2, 8),
                        rng.uniform(-US_FOOTPRINT_MM[1] / 2, US_FOOTPRINT_MM[1] / 2, 8)], axis=1)
    widths = rng.uniform(3.0, 7.0, 8)
    weights = rng.normal(0.0, 1.0, 8)
    field_value = (weights * np.exp(-((u[:, None] - centres[:, 0]) ** 2 + (v[:, None] - centres[:, 1]) ** 2)
                                    / (2 * widths ** 2))).sum(axis=1)
    # the patch threshold sits at the field's upper quantile over the whole footprint, not over the hits
    half_u, half_v = US_FOOTPRINT_MM[0] / 2, US_FOOTPRINT_MM[1] / 2
    grid_u, grid_v = np.meshgrid(np.linspace(-half_u, half_u, 51), np.linspace(-half_v, half_v, 61))
    grid_field = (weights * np.exp(-((grid_u.ravel()[:, None] - centres[:, 0]) ** 2
                                     + (grid_v.ravel()[:, None] - centres[:, 1]) ** 2) / (2 * widths ** 2))).sum(1)
    threshold = np.quantile(grid_field, 1.0 - PATCH_DROPOUT_FRACTION)
    return (field_value < threshold) & (rng.random(len(u)) >= ECHO_DROPOUT_FRACTION)


def simulate_ultrasound(shape, rng, poses: list[dict], occluders) -> tuple[np.ndarray, np.ndarray]:
    """All kept echoes (M, 3) mm of ``shape`` seen from ``poses``, shadowed by ``occluders`` ((vertices, faces)).

    Returns (points, pose index per point) before resampling.
    """
    meshes = [(shape.vertices, shape.faces)] + list(occluders)
    offsets = np.cumsum([0] + [len(v) for v, _ in meshes])
    all_vertices = np.concatenate([v for v, _ in meshes])
    all_faces = np.concatenate([f + offsets[k] for k, (_, f) in enumerate(meshes)])
    face_normals, _ = spine_shapes.face_normals_and_areas(shape.vertices, shape.faces)
    n_u = round(US_FOOTPRINT_MM[0] / US_PIXEL_MM) + 1
    n_v = round(US_FOOTPRINT_MM[1] / US_PIXEL_MM) + 1
    cos_limit = math.cos(math.radians(MAX_INCIDENCE_DEG))
    points, pose_ids = [], []
    for index, pose in enumerate(poses):
        centre = np.asarray(pose["centre_mm"])
        beam = np.asarray(pose["beam_direction"])
        axis_u = np.asarray(pose["array_axis"])
        axis_v = np.cross(beam, axis_u)  # (u, v, beam) right-handed
        rel = all_vertices - centre
        uv = np.stack([rel @ axis_u, rel @ axis_v], axis=1)
        hits = rasterize(uv, rel @ beam, all_faces, origin=(-US_FOOTPRINT_MM[0] / 2, -US_FOOTPRINT_MM[1] / 2),
                         pixel_mm=US_PIXEL_MM, shape=(n_u, n_v))
        first = first_hits(hits)
        face = hits.face[first]
        on_vertebra = face < len(shape.faces)  # echoes from the neighbours are not this vertebra's points
        first, face = first[on_vertebra], face[on_vertebra]
        facing = -(face_normals[face] @ beam) >= cos_limit  # faces the probe, not too oblique
        first = first[facing]
        ii, jj = np.divmod(hits.pixel[first], n_v)
        u = -US_FOOTPRINT_MM[0] / 2 + US_PIXEL_MM * (ii + rng.uniform(-0.5, 0.5, len(ii)))
        v = -US_FOOTPRINT_MM[1] / 2 + US_PIXEL_MM * (jj + rng.uniform(-0.5, 0.5, len(jj)))
        depth = hits.depth[first] + rng.normal(0.0, SPECKLE_SD_MM, len(first))
        keep = _dropout_keep(u, v, rng)
        u, v, depth = u[keep], v[keep], depth[keep]
        points.append(centre + u[:, None] * axis_u + v[:, None] * axis_v + depth[:, None] * beam)
        pose_ids.append(np.full(len(u), index, dtype=np.uint8))
    return np.concatenate(points), np.concatenate(pose_ids)


def resample(points: np.ndarray, n_points: int, rng, max_candidates: int = 8192) -> np.ndarray:
    """Indices of ``n_points`` of ``points`` by furthest-point sampling (random pre-thinning to
    ``max_candidates`` keeps it fast; with fewer than ``n_points`` points, all of them plus random repeats)."""
    if len(points) == 0:
        raise DataError("the ultrasound simulation produced no echoes for this vertebra")
    if len(points) < n_points:
        return np.concatenate([np.arange(len(points)), rng.choice(len(points), n_points - len(points))])
    candidates = np.arange(len(points))
    if len(points) > max_candidates:
        candidates = np.sort(rng.choice(len(points), max_candidates, replace=False))
    return candidates[furthest_point_sample(points[candidates], n_points)]


def _xray_origin() -> tuple[float, float]:
    half = (XRAY_SIZE_PX - 1) / 2 * XRAY_PIXEL_MM
    return -half, -half


def render_xray(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Lateral projection radiograph (uint8, XRAY_SIZE_PX square; geometry in the module docstring)."""
    origin = _xray_origin()
    # rays along +x; pixel grid over (y, z); (y, z, x) is right-handed
    hits = rasterize(vertices[:, [1, 2]], vertices[:, 0], faces, origin=origin, pixel_mm=XRAY_PIXEL_MM,
                     shape=(XRAY_SIZE_PX, XRAY_SIZE_PX))
    length = np.clip(path_length(hits, XRAY_SIZE_PX * XRAY_SIZE_PX), 0.0, None).reshape(XRAY_SIZE_PX, XRAY_SIZE_PX)
    image_yz = np.rint(255.0 * (1.0 - np.exp(-XRAY_MU_PER_MM * length))).astype(np.uint8)
    # array index (y, z) -> image (row = superior to inferior, column = anterior to posterior)
    return np.ascontiguousarray(image_yz.T[::-1, :])


def xray_cloud(image: np.ndarray, n_points: int = N_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """The 2.5D cloud of a lateral radiograph from ``render_xray``: ((n, 3) mm, path length (n,) mm).

    Silhouette pixels (path length >= XRAY_SILHOUETTE_MM) at (x = 0, y, z) mm, furthest-point sampled
    (deterministic: depends on the image only). Raises ``DataError`` if the silhouette has fewer pixels.
    """
    img = np.asarray(image)
    if img.shape != (XRAY_SIZE_PX, XRAY_SIZE_PX) or img.dtype != np.uint8:
        raise DataError(f"expected a {XRAY_SIZE_PX} x {XRAY_SIZE_PX} uint8 lateral radiograph, got {img.shape} "
                        f"{img.dtype}")
    intensity = img.astype(np.float64) / 255.0
    length = -np.log(np.clip(1.0 - intensity, 1e-6, 1.0)) / XRAY_MU_PER_MM
    rows, cols = np.nonzero(length >= XRAY_SILHOUETTE_MM)
    if len(rows) < n_points:
        raise DataError(f"the X-ray silhouette has {len(rows)} pixels, fewer than the {n_points} points needed")
    origin_y, origin_z = _xray_origin()
    y = origin_y + XRAY_PIXEL_MM * cols
    z = -origin_z - XRAY_PIXEL_MM * rows
    points = np.stack([np.zeros_like(y), y, z], axis=1)
    chosen = furthest_point_sample(points, n_points)
    return points[chosen], length[rows[chosen], cols[chosen]]


def embed_xray(points: np.ndarray, path_mm: np.ndarray, embedding: str = "plane") -> np.ndarray:
    """The network's X-ray input (n, 3) float32 mm from ``xray_cloud``'s points and path lengths.

    "plane": the points as they are (x = 0: the paper's z-embedding, the lateral coordinate lost).
    "half_path": x = half the bone path length the lateral ray crossed at that pixel, which the radiograph
    measures (Beer-Lambert): for a convex cross-section like the vertebral body the lateral walls are at
    -/+ that much from the mid-sagittal plane. Needs the radiograph's attenuation (XRAY_MU_PER_MM) to be known.
    """
    points = np.asarray(points, dtype=np.float32).copy()
    if embedding == "half_path":
        points[:, 0] = 0.5 * np.asarray(path_mm, dtype=np.float32)
    elif embedding != "plane":
        raise DataError(f"unknown X-ray embedding {embedding!r}; expected plane or half_path")
    return points


def _registration_offset(rng, sd_mm: float, sd_deg: float) -> dict:
    angles = np.clip(rng.normal(0.0, 1.0, 3), -3, 3) * sd_deg
    translation = np.clip(rng.normal(0.0, 1.0, 3), -3, 3) * sd_mm
    rotation = _rotation(*angles)
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation, translation
    return {"rotation_deg": angles.round(4).tolist(), "translation_mm": translation.round(4).tolist(),
            "matrix": matrix.round(8).tolist(), "maps": "p_xray = R p + t (vertebra/ultrasound frame -> X-ray)",
            "rotation_order": "R = Rz Ry Rx"}


# ---------------------------------------------------------------------------------------------------- a case

def make_case(source: spine_shapes.SourceShape, deformation_seed: int, strength: float = 1.0,
              registration_sd_mm: float = 1.0, registration_sd_deg: float = 1.0) -> SpineCase:
    """One phantom case from a source shape: deform (``np.random.default_rng(deformation_seed)``), then
    simulate ultrasound and X-ray with a second stream seeded from the same number. Deterministic."""
    shape = spine_shapes.deform(source, np.random.default_rng(deformation_seed), strength=strength)
    rng = np.random.default_rng([deformation_seed, 1])
    complete = spine_shapes.sample_surface(shape, N_POINTS, rng)
    occluders, placement = _occluders(shape, rng)
    poses = _probe_poses(shape, rng)
    echoes, echo_pose = simulate_ultrasound(shape, rng, poses, occluders)
    chosen = resample(echoes, N_POINTS, rng)
    offset = _registration_offset(rng, registration_sd_mm, registration_sd_deg)
    matrix = np.asarray(offset["matrix"])
    xray_vertices = shape.vertices @ matrix[:3, :3].T + matrix[:3, 3]
    image = render_xray(xray_vertices, shape.faces)
    xray_points, xray_path = xray_cloud(image)
    meta = {
        "level": shape.level, "units": "mm", "source_id": shape.source_id, "dataset": shape.dataset,
        "licence": shape.licence, "deformation_seed": int(deformation_seed), "deformation": shape.deformation,
        "frame": "vertebra frame: origin at the truth's surface centroid; x lateral, y posterior (+), "
                 "z superior (+); body at y < 0, arch at y > 0",
        "probe_poses": poses,
        "ultrasound": {"n_echoes": len(echoes), "n_points": N_POINTS, "pixel_mm": US_PIXEL_MM,
                       "max_incidence_deg": MAX_INCIDENCE_DEG, "speckle_sd_mm": SPECKLE_SD_MM,
                       "patch_dropout": PATCH_DROPOUT_FRACTION, "echo_dropout": ECHO_DROPOUT_FRACTION,
                       "occluders": placement},
        "xray": {"pixel_mm": XRAY_PIXEL_MM, "size_px": XRAY_SIZE_PX, "mu_per_mm": XRAY_MU_PER_MM,
                 "intensity": "255 * (1 - exp(-mu * path_length_mm))", "projection": "parallel, along x",
                 "columns": "y, anterior -> posterior", "rows": "z, superior -> inferior",
                 "pixel_00_centre_yz_mm": [_xray_origin()[0], -_xray_origin()[1]],
                 "silhouette_path_mm": XRAY_SILHOUETTE_MM,
                 "points": "silhouette pixels at (x = 0, y, z): lateral label map lifted to 3D (z-embedding), "
                           "furthest-point sampled"},
        "registration_offset": offset,
    }
    return SpineCase(complete=complete, us_points=echoes[chosen], us_pose=echo_pose[chosen], xray_image=image,
                     xray_points=xray_points, xray_path_mm=xray_path, meta=meta)


# ------------------------------------------------------------------------------------------------- the writer

def _check_whole(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _check_sd(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value) \
            or value < 0:
        raise DataError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc="spine phantom", unit="case", disable=not sys.stderr.isatty())


def write_spine_phantom(out_dir, n: int, seed: int, progress: bool = True, *, levels=spine_shapes.LUMBAR_LEVELS,
                        test_sources=spine_shapes.DEFAULT_TEST_SOURCES, data_dir=None, strength: float = 1.0,
                        registration_sd_mm: float = 1.0, registration_sd_deg: float = 1.0) -> Path:
    """Write ``n`` cases (``out_dir/case_00000/`` ...) and return ``out_dir``.

    Every fifth case (index 4, 9, ...) is a test case drawn from ``test_sources`` only, the others from the
    remaining sources (``shapes.split_by_source``); per case a level is drawn uniformly among the split's
    levels, then a source of that level. ``levels`` default L1-L5 (the paper's lumbar set; add "T9".."T12" for
    thoracic). Deterministic for ``seed``. Bad arguments raise ``DataError`` (one line).
    """
    n = _check_whole("number of cases", n, 1)
    seed = _check_whole("seed", seed, 0)
    strength = _check_sd("deformation strength", strength)
    registration_sd_mm = _check_sd("registration offset sd (mm)", registration_sd_mm)
    registration_sd_deg = _check_sd("registration offset sd (degrees)", registration_sd_deg)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"output path exists and is not a folder: {root}")
    sources = spine_shapes.source_shapes(data_dir, levels=levels)
    wanted_test = [s for s in test_sources if s in {x.source_id for x in sources}]
    if not wanted_test:
        raise DataError(f"none of the test sources {list(test_sources)} has a level in {list(levels)}")
    train, test = spine_shapes.split_by_source(sources, wanted_test)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create output folder {root}: {exc.strerror or exc}") from None
    if not os.access(root, os.W_OK):
        raise DataError(f"output folder is not writable: {root}")
    import cv2  # the runtime extra has OpenCV; only the writer needs it

    for index in _progress(range(n), n, progress):
        split = "test" if index % TEST_EVERY == TEST_EVERY - 1 else "train"
        pool = test if split == "test" else train
        deformation_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        pick = np.random.default_rng([deformation_seed, 0])
        level = sorted({s.level for s in pool})[int(pick.integers(len({s.level for s in pool})))]
        candidates = [s for s in pool if s.level == level]
        source = candidates[int(pick.integers(len(candidates)))]
        case = make_case(source, deformation_seed, strength, registration_sd_mm, registration_sd_deg)
        case.meta.update({"case": f"case_{index:05d}", "split": split, "seed": seed, "case_index": index,
                          "test_sources": list(wanted_test)})
        folder = root / f"case_{index:05d}"
        folder.mkdir(exist_ok=True)
        write_ply(folder / "complete.ply", case.complete)
        write_ply(folder / "us_partial.ply", case.us_points, {"pose": case.us_pose})
        write_ply(folder / "xray_points.ply", case.xray_points, {"path_mm": case.xray_path_mm.astype(np.float32)})
        if not cv2.imwrite(str(folder / "xray.png"), case.xray_image):
            raise DataError(f"cannot write image {folder / 'xray.png'}")
        (folder / "meta.json").write_text(json.dumps(case.meta, indent=1))
    return root


def phantom_main(out, n, seed) -> int:
    """``sonogate phantom spine --n N --seed S --out DIR``: write the cases, print one summary line, return 0."""
    root = write_spine_phantom(out, n, seed, progress=True)
    n_test = sum(1 for index in range(int(n)) if index % TEST_EVERY == TEST_EVERY - 1)
    print(f"wrote {n} spine phantom cases ({int(n) - n_test} train, {n_test} test by source shape) to {root}")
    return 0
