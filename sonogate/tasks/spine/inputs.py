"""Reading and checking one spine case's inputs, numpy (+ OpenCV for the X-ray mask) only: the runtime wrapper
(``model.py``), the exporter (which measures the ranges below on the training cases) and the tests share it.

A case is an ultrasound cloud (``us_partial.ply`` or ``.npy``, (n, 3) mm) and a lateral radiograph (``xray.png``,
256 x 256 grey, 0.5 mm pixels, in the geometry of ``phantom.render_xray``: registered to the ultrasound's frame in
(y, z); a lateral view has no x, and a network with ``mid_plane`` "us" takes its mid-sagittal plane from the
ultrasound, while one with "frame" assumes it at x = 0 of the ultrasound's frame).
The 2.5D X-ray cloud is made from the image by ``phantom.xray_cloud``, the same code that made the training data.

What is checked (``InputRanges`` holds the limits; the exporter writes ranges measured on the training cases into
the bundle's manifest, widened by a margin, and the wrapper reads them from there):

* the ultrasound cloud: not empty, finite, at least ``MIN_US_POINTS`` points, and its extent (bounding-box
  diagonal) within the millimetre range seen in training (a cloud in metres is ~1,000 x smaller);
* the radiograph: grey (a colour image is not a radiograph), 256 x 256, a silhouette whose area, height and
  depth are those of one vertebra seen from the side, and *lateral*: ``mirror_iou``, the overlap of the
  silhouette with its own mirror image about its vertical centre line, is low for a lateral view (the body
  in front, the spinous process behind) and high for an antero-posterior one (left-right symmetric);
* the pair: ``overlap``, the share of ultrasound points whose (y, z) fall inside the silhouette grown by
  ``OVERLAP_MARGIN_MM``: low when the two come from different vertebrae (levels) or are far out of register;
* levels: the levels a case states (``meta.json`` ``level``, ``us_level``, ``xray_level``) must agree and be
  among the levels the model was trained on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sonogate.errors import DataError
from sonogate.tasks.spine.phantom import N_POINTS, XRAY_MU_PER_MM, XRAY_PIXEL_MM, XRAY_SILHOUETTE_MM, XRAY_SIZE_PX
from sonogate.tasks.spine.ply import read_ply
from sonogate.tasks.spine.raster import furthest_point_sample

MIN_US_POINTS = 256  # an eighth of the model's 2,048: fewer is not a sweep of one vertebra's back
OVERLAP_MARGIN_MM = 5.0
GREY_TOLERANCE = 3  # grey levels: a colour channel further than this from the others makes a colour image


@dataclass(frozen=True)
class InputRanges:
    """Accepted ranges of the input features (mm, mm^2 or fractions): (low, high) each; ``mirror_iou_max`` and
    ``overlap_min`` one-sided."""

    us_extent_mm: tuple[float, float]
    silhouette_area_mm2: tuple[float, float]
    silhouette_height_mm: tuple[float, float]
    silhouette_depth_mm: tuple[float, float]
    mirror_iou_max: float
    overlap_min: float

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> InputRanges:
        try:
            return cls(**{k: tuple(float(x) for x in v) if isinstance(v, list) else float(v)
                          for k, v in data.items() if k in cls.__dataclass_fields__})
        except TypeError as exc:
            raise DataError(f"the bundle's input ranges are incomplete: {exc}") from None


# ------------------------------------------------------------------------------------------------ the clouds

def read_cloud(path) -> np.ndarray:
    """(n, 3) float64 points of a .ply (vertex x, y, z) or .npy file; DataError (one line) when unreadable."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            points = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read point cloud {path.name}: {exc}") from None
    else:
        points = read_ply(path).points
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise DataError(f"{path.name}: a point cloud is an (n, 3) array, not shape {points.shape}")
    return points


def extent_mm(points: np.ndarray) -> float:
    """Bounding-box diagonal of an (n, 3) cloud."""
    return float(np.linalg.norm(np.ptp(points, axis=0)))


def check_us_cloud(points: np.ndarray, ranges: InputRanges) -> np.ndarray:
    """The ultrasound cloud if it passes the checks (module docstring), else DataError (one line)."""
    if len(points) == 0:
        raise DataError("the ultrasound point cloud is empty")
    if not np.all(np.isfinite(points)):
        raise DataError("the ultrasound point cloud has NaN or infinite coordinates")
    if len(points) < MIN_US_POINTS:
        raise DataError(f"the ultrasound point cloud has {len(points)} points, too few (at least {MIN_US_POINTS})")
    extent = extent_mm(points)
    low, high = ranges.us_extent_mm
    if extent < low / 100.0:
        raise DataError(f"the ultrasound cloud spans {extent:.3g} units: metres? millimetres are expected "
                        f"({low:.0f}-{high:.0f} mm in training)")
    if not low <= extent <= high:
        raise DataError(f"the ultrasound cloud spans {extent:.1f} mm, outside the {low:.0f}-{high:.0f} mm of one "
                        f"vertebra's posterior surface in training (wrong units or not one vertebra)")
    return points


def model_points(points: np.ndarray, notes: list[str], n_points: int = N_POINTS) -> np.ndarray:
    """``n_points`` of a checked cloud, deterministically: all of them when there are exactly that many; a
    furthest-point sample (as the phantom resamples) when more; every point plus the first ones repeated when
    fewer (repeats change neither nearest distances nor max pools). Adds a note when it resamples."""
    if len(points) > n_points:
        notes.append(f"ultrasound cloud of {len(points)} points furthest-point sampled to {n_points}")
        return points[furthest_point_sample(points, n_points)].astype(np.float32)
    if len(points) < n_points:
        notes.append(f"ultrasound cloud of {len(points)} points padded to {n_points} by repeating points")
        return points[np.arange(n_points) % len(points)].astype(np.float32)
    return points.astype(np.float32)


# --------------------------------------------------------------------------------------------- the radiograph

def xray_grey(frame: np.ndarray) -> np.ndarray:
    """The radiograph as (256, 256) uint8 grey from a BGR / BGRA / grey uint8 frame; DataError otherwise."""
    image = np.asarray(frame)
    if image.dtype != np.uint8:
        raise DataError(f"the X-ray is not an 8-bit image ({image.dtype})")
    if image.ndim == 3:
        colour = image[:, :, :3].astype(np.int16)
        if int(np.abs(colour - colour[:, :, :1]).max()) > GREY_TOLERANCE:
            raise DataError("the X-ray is a colour image, not a radiograph")
        image = image[:, :, 0]
    if image.shape != (XRAY_SIZE_PX, XRAY_SIZE_PX):
        raise DataError(f"the X-ray is {image.shape[1]} x {image.shape[0]} pixels; the model takes a "
                        f"{XRAY_SIZE_PX} x {XRAY_SIZE_PX} lateral view at {XRAY_PIXEL_MM} mm per pixel")
    return np.ascontiguousarray(image)


def silhouette(grey: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels ``phantom.xray_cloud`` counts as bone (path length >= 0.5 mm)."""
    length = -np.log(np.clip(1.0 - grey.astype(np.float64) / 255.0, 1e-6, 1.0)) / XRAY_MU_PER_MM
    return length >= XRAY_SILHOUETTE_MM


def view_features(grey: np.ndarray) -> dict[str, float]:
    """Silhouette area (mm^2), height (z extent, mm), depth (y extent, mm) and ``mirror_iou`` (module docstring)."""
    mask = silhouette(grey)
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return {"area_mm2": 0.0, "height_mm": 0.0, "depth_mm": 0.0, "mirror_iou": 1.0}
    centre = float(cols.mean())
    mirrored = np.rint(2 * centre - cols).astype(np.int64)
    inside = (mirrored >= 0) & (mirrored < mask.shape[1])
    overlap = int(mask[rows[inside], mirrored[inside]].sum())
    return {"area_mm2": float(len(rows) * XRAY_PIXEL_MM ** 2),
            "height_mm": float((np.ptp(rows) + 1) * XRAY_PIXEL_MM),
            "depth_mm": float((np.ptp(cols) + 1) * XRAY_PIXEL_MM),
            "mirror_iou": overlap / float(2 * len(rows) - overlap)}


def check_lateral_view(grey: np.ndarray, ranges: InputRanges) -> dict[str, float]:
    """``view_features`` of a radiograph that looks like one lateral vertebra, else DataError (one line)."""
    features = view_features(grey)
    problems = []
    for key, limits in (("area_mm2", ranges.silhouette_area_mm2), ("height_mm", ranges.silhouette_height_mm),
                        ("depth_mm", ranges.silhouette_depth_mm)):
        if not limits[0] <= features[key] <= limits[1]:
            problems.append(f"silhouette {key.replace('_mm2', ' (mm^2)').replace('_mm', ' (mm)')} "
                            f"{features[key]:.0f} not in {limits[0]:.0f}-{limits[1]:.0f}")
    if features["mirror_iou"] > ranges.mirror_iou_max:
        problems.append(f"front-back symmetric (mirror overlap {features['mirror_iou']:.2f} > "
                        f"{ranges.mirror_iou_max:.2f}), as a frontal view is")
    if problems:
        raise DataError("the X-ray is not a lateral view of one vertebra: " + "; ".join(problems))
    return features


def pixel_of(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) float pixel coordinates of (n, 3) mm points in the radiograph (``phantom.render_xray``)."""
    half = (XRAY_SIZE_PX - 1) / 2 * XRAY_PIXEL_MM
    return (half - points[:, 2]) / XRAY_PIXEL_MM, (points[:, 1] + half) / XRAY_PIXEL_MM


def overlap_fraction(us_points: np.ndarray, grey: np.ndarray) -> float:
    """Share of ultrasound points whose (y, z) lie inside the silhouette grown by ``OVERLAP_MARGIN_MM``."""
    import cv2

    radius = round(OVERLAP_MARGIN_MM / XRAY_PIXEL_MM)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    grown = cv2.dilate(silhouette(grey).astype(np.uint8), kernel) > 0
    rows, cols = pixel_of(us_points)
    r, c = np.rint(rows).astype(np.int64), np.rint(cols).astype(np.int64)
    inside = (r >= 0) & (r < grown.shape[0]) & (c >= 0) & (c < grown.shape[1])
    hit = np.zeros(len(us_points), bool)
    hit[inside] = grown[r[inside], c[inside]]
    return float(hit.mean())


def check_overlap(us_points: np.ndarray, grey: np.ndarray, ranges: InputRanges) -> float:
    fraction = overlap_fraction(us_points, grey)
    if fraction < ranges.overlap_min:
        raise DataError(f"only {fraction:.0%} of the ultrasound points lie on the X-ray silhouette (at least "
                        f"{ranges.overlap_min:.0%} expected): different vertebrae or levels, or not registered")
    return fraction


# ----------------------------------------------------------------------------------------------------- levels

def case_level(folder: Path, trained_levels: tuple[str, ...], notes: list[str]) -> str:
    """The case's vertebral level from ``folder/meta.json`` (``level``, and ``us_level`` / ``xray_level`` when
    the inputs state their own): "unknown" (with a note) when none is stated; DataError when they disagree or
    the level is not one the model was trained on."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        notes.append("no meta.json: level unknown, not checked")
        return "unknown"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable meta.json: {exc}") from None
    if not isinstance(meta, dict):
        raise DataError("meta.json is not a JSON object")
    if meta.get("units") not in (None, "mm"):
        raise DataError(f"meta.json says units {meta.get('units')!r}; the model takes millimetres")
    stated = {key: str(meta[key]).strip().upper() for key in ("level", "us_level", "xray_level")
              if meta.get(key) not in (None, "")}
    if not stated:
        notes.append("meta.json states no level: level unknown, not checked")
        return "unknown"
    if len(set(stated.values())) > 1:
        raise DataError("mismatched levels: " + ", ".join(f"{k} {v}" for k, v in stated.items()))
    level = next(iter(stated.values()))
    if level not in trained_levels:
        raise DataError(f"level {level} is not one the model was trained on ({', '.join(trained_levels)})")
    return level
