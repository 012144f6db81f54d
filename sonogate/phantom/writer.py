"""Write phantom datasets in the labelled-folder layout that ``sonogate.data.folder`` reads for real data.

Layout: ``out_dir/images/<name>.png`` plus ``out_dir/labels.csv`` (column ``image`` = path relative to
``out_dir``). Training code cannot tell synthetic from real data, except by the ``device`` column.

Ultrasound (``write_us_dataset``): one row per frame. Each infant has a right and a left hip; each hip is
one sweep of ``frames_per_sweep`` frames sharing hip-level truth. Frame-level columns are the exact
geometry of the drawn frame; hip-level columns are the hip's standard-plane truth. ``orientation`` is the
display orientation of the image (``orientations`` option: drawn per frame; default: the device's convention).

Other tasks write their own layouts with the public helpers here (``check_dataset_args``, ``write_png``,
``write_csv``, ``progress_bar``): the pelvic X-ray's is ``sonogate.tasks.hip_xr.phantom.write_xr_dataset``.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from sonogate.errors import SonogateError
from sonogate.phantom.chrome import make_chrome
from sonogate.phantom.devices import TRAIN_DEVICES, get_device
from sonogate.phantom.hip_us import (
    ALL_DEFECTS,
    DEFECTS,
    LANDMARK_NAMES,
    PROBE_SIDE,
    check_orientation,
    render_us_frame,
    sample_hip_params,
)
from sonogate.phantom.realistic import check_style

US_COLUMNS = (
    "image", "patient_id", "side", "sweep_id", "frame_index", "alpha_deg", "beta_deg", "coverage_pct",
    "hip_alpha_deg", "hip_beta_deg", "hip_coverage_pct", "standard_plane", "defect", "device", "orientation",
    "plane_offset", "graf_type", "age_weeks", "roi_x", "roi_y", "roi_w", "roi_h",
) + tuple(f"lm_{name}_{axis}" for name in LANDMARK_NAMES for axis in "xy")

def check_dataset_args(out_dir, n: int, size: int) -> Path:
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise SonogateError(f"number of images must be a whole number > 0, got {n!r}")
    if not isinstance(size, (int, np.integer)) or size < 64:
        raise SonogateError(f"image size must be a whole number >= 64, got {size!r}")
    root = Path(out_dir)
    try:
        (root / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SonogateError(f"cannot create output folder {root}: {exc.strerror or exc}") from None
    if not os.access(root / "images", os.W_OK):
        raise SonogateError(f"output folder is not writable: {root}")
    return root


def progress_bar(iterable: Iterable, total: int, desc: str, enabled: bool, unit: str = "img"):
    """``iterable`` with a tqdm bar on stderr when ``enabled`` and stderr is a terminal (every phantom writer's)."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not sys.stderr.isatty())


def write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise SonogateError(f"cannot write image {path}")


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def write_us_dataset(
    out_dir: str | Path,
    n: int,
    seed: int,
    devices: Sequence[str] = TRAIN_DEVICES,
    size: int = 256,
    frames_per_sweep: int = 1,
    standard_fraction: float = 0.8,
    chrome: bool = False,
    progress: bool = True,
    defects: Sequence[str] = DEFECTS,
    style: str | Sequence[str] = "schematic",
    orientations: Sequence[str] | None = None,
) -> Path:
    """Write ``n`` phantom ultrasound frames and their labels.

    Inputs: ``out_dir``; ``n`` frames; ``seed`` (same seed, same dataset); ``devices`` preset names, one
    drawn per infant (both hips on one cart); ``size`` image side; ``frames_per_sweep`` frames per hip
    sweep; ``standard_fraction`` share of standard-plane frames (the rest get a defect from ``defects``,
    uniformly); ``chrome`` save the whole scanner screen (landmarks then in screen pixels, ROI columns give
    the image rectangle) instead of the image alone; ``style`` ``"schematic"`` (default: the look the
    committed bundle was trained on) or ``"realistic"`` (layered soft tissue, thick bone echoes, finer
    speckle; same labels for the same seed; not recorded in labels.csv), or several styles, one drawn per infant
    from its own random stream (a training set mixing looks; a single style keeps the files exactly as before);
    ``orientations`` display orientations
    (``hip_us.ORIENTATIONS``: "horizontal", "graf", "graf_mirrored"), one drawn per frame, uniformly, from its
    own random stream seeded by ``seed``, so every frame is the default dataset's frame shown that way (landmarks
    moved with it; the chrome's depth ruler lies along the displayed depth axis) and the ``orientation``
    column names it; None (default) keeps each device's convention ("horizontal", or "vertical" on device C,
    the same picture as "graf") and the files exactly as before the option existed. Output: ``out_dir``.

    Standard frames are drawn at a plane offset within +-0.3 (alpha moves about +-1 deg, as the plane
    position does on real scans) with sub-millimetre probe jitter; ``patient_id`` is unique per seed, so
    datasets written with different seeds can be pooled.
    """
    styles = (style,) if isinstance(style, str) else tuple(style)
    if not styles:
        raise SonogateError("no phantom style given")
    for name in styles:
        check_style(name)
    root = check_dataset_args(out_dir, n, size)
    if not isinstance(frames_per_sweep, (int, np.integer)) or frames_per_sweep <= 0:
        raise SonogateError(f"frames_per_sweep must be a whole number > 0, got {frames_per_sweep!r}")
    if not (0.0 <= float(standard_fraction) <= 1.0):
        raise SonogateError(f"standard_fraction must be within 0..1, got {standard_fraction}")
    device_names = [get_device(d).name for d in devices]
    if not device_names:
        raise SonogateError("no device given")
    for defect in defects:
        if defect not in ALL_DEFECTS:
            raise SonogateError(f"unknown defect {defect!r}")
    if float(standard_fraction) < 1.0 and not defects:
        raise SonogateError("standard_fraction < 1 needs at least one defect")
    if orientations is not None:
        orientations = tuple(check_orientation(str(name)) for name in orientations)
        if not orientations:
            raise SonogateError("no display orientation given")
    rng = np.random.default_rng(seed)
    # Its own stream, so the frames are those of the default dataset, only shown another way.
    orientation_rng = np.random.default_rng([seed, 23])
    style_rng = np.random.default_rng([seed, 29])

    def rows() -> Iterable[dict]:
        written = 0
        infant = 0
        while written < n:
            patient_id = f"s{seed}-p{infant:05d}"
            device = get_device(device_names[int(rng.integers(len(device_names)))])
            # one look per infant, like one cart per infant
            infant_style = styles[0] if len(styles) == 1 else styles[int(style_rng.integers(len(styles)))]
            for side in ("R", "L"):
                hip = sample_hip_params(rng)
                sweep_id = f"{patient_id}-{side}"
                # One screen layout per sweep: the cart does not move its chrome between frames (only the
                # ruler moves under the image when a frame is shown rotated).
                layouts = {}
                for j in range(frames_per_sweep):
                    if written >= n:
                        return
                    orientation = None
                    if orientations is not None:
                        orientation = orientations[int(orientation_rng.integers(len(orientations)))]
                    probe_side = "top" if orientation is None else PROBE_SIDE[orientation]
                    if chrome and probe_side not in layouts:
                        layouts[probe_side] = make_chrome(
                            np.random.default_rng([seed, infant, 1 if side == "R" else 2]), (size, size),
                            depth_mm=device.depth_mm, side=side, probe_side=probe_side)
                    layout = layouts.get(probe_side)
                    standard = rng.random() < standard_fraction
                    defect = "" if standard else str(defects[int(rng.integers(len(defects)))])
                    offset = float(rng.uniform(-0.3, 0.3)) if defect in ("", "tilt", "no_labrum", "no_lower_limb",
                                                                           "no_chondro_osseous", "poor_capsule") else 0.0
                    shift = (float(rng.normal(0, 0.6)), float(rng.normal(0, 0.4)))
                    frame = render_us_frame(hip, rng, device, size, defect, offset, probe_shift_mm=shift,
                                            probe_rot_deg=float(rng.normal(0, 1.0)), style=infant_style,
                                            orientation=orientation)
                    name = f"{sweep_id}-f{j:03d}.png"
                    landmarks = frame.landmarks
                    roi = (0, 0, size, size)
                    image = frame.image
                    if layout is not None:
                        image, roi = layout.compose(frame.image, time_s=float(j))
                        sx, sy = roi[2] / size, roi[3] / size
                        landmarks = {k: ((x + 0.5) * sx - 0.5 + roi[0], (y + 0.5) * sy - 0.5 + roi[1])
                                     for k, (x, y) in landmarks.items()}
                    write_png(root / "images" / name, image)
                    row = {
                        "image": f"images/{name}", "patient_id": patient_id, "side": side, "sweep_id": sweep_id,
                        "frame_index": j, "alpha_deg": frame.alpha_deg, "beta_deg": frame.beta_deg,
                        "coverage_pct": frame.coverage_pct, "hip_alpha_deg": hip.alpha_deg,
                        "hip_beta_deg": hip.beta_deg, "hip_coverage_pct": hip.coverage_pct,
                        "standard_plane": frame.standard_plane, "defect": frame.defect, "device": device.name,
                        "orientation": frame.orientation, "plane_offset": frame.plane_offset,
                        "graf_type": hip.graf_type(), "age_weeks": hip.age_weeks,
                        "roi_x": roi[0], "roi_y": roi[1], "roi_w": roi[2], "roi_h": roi[3],
                    }
                    for k, (x, y) in landmarks.items():
                        row[f"lm_{k}_x"], row[f"lm_{k}_y"] = x, y
                    written += 1
                    yield row
            infant += 1

    write_csv(root / "labels.csv", US_COLUMNS, progress_bar(rows(), n, "phantom US", progress))
    return root


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    try:
        with open(path, "w", newline="") as handle:
            table = csv.writer(handle)
            table.writerow(columns)
            for row in rows:
                table.writerow([_fmt(row.get(c, "")) for c in columns])
    except OSError as exc:
        raise SonogateError(f"cannot write {path}: {exc.strerror or exc}") from None
