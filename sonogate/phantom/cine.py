"""Phantom cine: a probe sweep into and out of the Graf standard plane, hip after hip, with per-frame labels.

One infant, one or two hips (right, then left). Per hip the probe comes in from an anterior section,
dwells around the middle plane (standard frames, alpha varying by a degree or two with the plane
position), rocks out posteriorly and back, has a short tilt, and leaves. Hand jitter moves the anatomy by
fractions of a millimetre; the speckle pattern moves with the tissue and decorrelates as the plane moves
(two scatterer fields blended by the plane position), so frames look like a real cine rather than
independent pictures.

Without ``params`` the infant's first hip is normal (Graf I) and the second abnormal (alpha 40-52), so a
demo shows both recommendations. With ``params`` the whole cine is that one hip.

``orientation`` shows the cine in one display orientation ("horizontal", "graf", "graf_mirrored", see
``sonogate.phantom.hip_us``), with the chrome's depth ruler along the displayed depth axis; without it the
cine is as before (the device's convention, the ruler beside the image) and the labels have no orientation.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sonogate.errors import SonogateError
from sonogate.phantom.acoustics import internal_size, new_speckle_field
from sonogate.phantom.chrome import make_chrome
from sonogate.phantom.devices import get_device
from sonogate.phantom.hip_us import PROBE_SIDE, HipParams, check_orientation, render_us_frame, sample_hip_params
from sonogate.phantom.realistic import check_style

CSV_COLUMNS = ("frame", "time_s", "patient_id", "side", "alpha_deg", "beta_deg", "coverage_pct", "hip_alpha_deg",
               "hip_beta_deg", "hip_coverage_pct", "standard_plane", "defect", "roi_x", "roi_y", "roi_w", "roi_h")
EXTRA_COLUMNS = ("sweep_id", "device", "plane_offset", "graf_type")


@dataclass
class _HipSegment:
    side: str
    params: HipParams
    start: int  # first frame index
    count: int  # number of frames


def _plan(seconds: float, fps: float, rng: np.random.Generator, params: HipParams | None) -> list[_HipSegment]:
    total = round(seconds * fps)
    if params is not None or seconds < 8.0:
        hip = params if params is not None else sample_hip_params(rng, "normal")
        return [_HipSegment("R", hip, 0, total)]
    first = total // 2
    return [
        _HipSegment("R", sample_hip_params(rng, "normal"), 0, first),
        _HipSegment("L", sample_hip_params(rng, "abnormal"), first, total - first),
    ]


def _offset_track(count: int, fps: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Plane offset per frame of one hip segment, and a mask of frames with a probe tilt."""
    # (share of the segment, plane offset): approach from anterior, dwell, rock posterior, dwell, leave.
    keys = np.array([[0.0, -1.6], [0.16, -0.55], [0.24, -0.05], [0.52, 0.12], [0.60, 0.75], [0.66, 0.6],
                     [0.72, 0.05], [0.92, -0.08], [1.0, 1.2]])
    keys[1:-1, 1] += rng.normal(0.0, 0.05, len(keys) - 2)
    t = (np.arange(count) + 0.5) / max(count, 1)
    # Cosine-eased interpolation between key frames (a hand moves smoothly, not linearly).
    idx = np.clip(np.searchsorted(keys[:, 0], t) - 1, 0, len(keys) - 2)
    t0, t1 = keys[idx, 0], keys[idx + 1, 0]
    w = 0.5 - 0.5 * np.cos(math.pi * np.clip((t - t0) / np.maximum(t1 - t0, 1e-9), 0, 1))
    offset = keys[idx, 1] * (1 - w) + keys[idx + 1, 1] * w
    # Hand tremor: smoothed noise of about 0.05 plane units.
    tremor = np.convolve(rng.normal(0.0, 0.06, count + 6), np.ones(7) / 7.0 * 1.6, "same")[:count]
    offset = offset + tremor[:count]
    tilt = np.zeros(count, bool)
    tilt_len = max(1, round(0.4 * fps))
    tilt_start = int(0.36 * count)
    if count > 4 * tilt_len:
        tilt[tilt_start : tilt_start + tilt_len] = True
    return offset, tilt


def sweep_frames(
    seed: int,
    seconds: float,
    fps: float,
    size: int = 256,
    chrome: bool = True,
    device: str = "A",
    params: HipParams | None = None,
    screen_size: tuple[int, int] = (640, 480),
    style: str = "schematic",
    orientation: str | None = None,
) -> Iterator[tuple[np.ndarray, dict]]:
    """Yield (frame, label) for a phantom cine of ``seconds`` at ``fps``.

    frame: BGR uint8, the scanner screen when ``chrome`` (size ``screen_size``), else the (size, size)
    ultrasound image as BGR. label: frame, time_s, patient_id, side, sweep_id, alpha_deg, beta_deg,
    coverage_pct (this frame's geometry), hip_alpha_deg, hip_beta_deg, hip_coverage_pct (the hip's truth),
    standard_plane, defect, plane_offset, device, graf_type, roi_x, roi_y, roi_w, roi_h (the image inside the
    frame) and landmarks (name -> (x, y) in pixels of the frame).
    ``style``: ``"schematic"`` (default, unchanged) or ``"realistic"`` (see ``render_us_frame``); the labels
    do not depend on it. ``orientation``: None (default: the device's convention, labels as before) or one of
    ``hip_us.ORIENTATIONS`` (the same frames shown that way, an exact transform; the chrome's depth ruler runs
    along the displayed depth axis, and the label gets ``orientation``). The same arguments always give the
    same frames.
    """
    if not (seconds > 0 and math.isfinite(seconds)):
        raise SonogateError(f"cine length must be > 0 seconds, got {seconds}")
    if not (fps > 0 and math.isfinite(fps)):
        raise SonogateError(f"cine frame rate must be > 0, got {fps}")
    if round(seconds * fps) < 1:
        raise SonogateError(f"cine of {seconds} s at {fps} fps has no frame")
    dev = get_device(device)
    check_style(style)
    probe_side = "top" if orientation is None else PROBE_SIDE[check_orientation(orientation)]
    rng = np.random.default_rng(seed)
    segments = _plan(float(seconds), float(fps), rng, params)
    patient_id = f"cine{seed}"
    n_int = internal_size(dev, size)
    k = n_int / dev.depth_mm
    layout = make_chrome(np.random.default_rng([seed, 7]), (size, size), screen_size, depth_mm=dev.depth_mm,
                         side=segments[0].side, probe_side=probe_side) if chrome else None
    for seg in segments:
        if layout is not None and seg.side != segments[0].side:
            layout = make_chrome(np.random.default_rng([seed, 7]), (size, size), screen_size,
                                 depth_mm=dev.depth_mm, side=seg.side, probe_side=probe_side)
        roi = layout.roi if layout is not None else (0, 0, size, size)
        offsets, tilts = _offset_track(seg.count, fps, rng)
        # Two scatterer fields per hip; speckle decorrelates as the plane moves (elevation motion).
        pad = math.ceil(2.0 * k)
        fields = [new_speckle_field(rng, n_int + 2 * pad) for _ in range(2)]
        drift = np.cumsum(rng.normal(0.0, 0.04, (seg.count, 3)), axis=0)  # slow hand drift (mm, mm, deg)
        drift -= drift.mean(axis=0)
        for j in range(seg.count):
            index = seg.start + j
            shift = (float(np.clip(drift[j, 0], -1.5, 1.5)), float(np.clip(0.5 * drift[j, 1], -0.8, 0.8)))
            phase = 0.5 * math.pi * float(offsets[j]) / 0.5
            mixed = math.cos(phase) * fields[0] + math.sin(phase) * fields[1]
            dx, dy = round(shift[0] * k), round(shift[1] * k)
            field = np.ascontiguousarray(mixed[:, pad - dy : pad - dy + n_int, pad - dx : pad - dx + n_int])
            defect = "tilt" if tilts[j] else ""
            frame = render_us_frame(seg.params, rng, dev, size, defect, float(offsets[j]), probe_shift_mm=shift,
                                    probe_rot_deg=float(np.clip(drift[j, 2], -1.5, 1.5)), speckle_field=field,
                                    style=style, orientation=orientation)
            time_s = index / fps
            if layout is not None:
                screen, roi = layout.compose(frame.image, time_s)
            else:
                screen = cv2.cvtColor(frame.image, cv2.COLOR_GRAY2BGR)
            sx, sy = roi[2] / size, roi[3] / size
            landmarks = {name: ((x + 0.5) * sx - 0.5 + roi[0], (y + 0.5) * sy - 0.5 + roi[1])
                         for name, (x, y) in frame.landmarks.items()}
            label = {
                "frame": index,
                "time_s": round(time_s, 6),
                "patient_id": patient_id,
                "side": seg.side,
                "sweep_id": f"{patient_id}-{seg.side}",
                "alpha_deg": frame.alpha_deg,
                "beta_deg": frame.beta_deg,
                "coverage_pct": frame.coverage_pct,
                "hip_alpha_deg": seg.params.alpha_deg,
                "hip_beta_deg": seg.params.beta_deg,
                "hip_coverage_pct": seg.params.coverage_pct,
                "standard_plane": frame.standard_plane,
                "defect": frame.defect,
                "plane_offset": frame.plane_offset,
                "device": dev.name,
                "graf_type": seg.params.graf_type(),
                "roi_x": roi[0], "roi_y": roi[1], "roi_w": roi[2], "roi_h": roi[3],
                "landmarks": landmarks,
            }
            if orientation is not None:
                label["orientation"] = frame.orientation
            yield screen, label


def write_cine(
    out_mp4: str | Path,
    seconds: float,
    fps: float,
    seed: int,
    size: int = 256,
    chrome: bool = True,
    device: str = "A",
    progress: bool = False,
    style: str = "schematic",
    orientation: str | None = None,
) -> Path:
    """Write a phantom cine as mp4 (OpenCV, fourcc mp4v) plus ``<out>.csv`` with one row per frame.

    ``style``: ``"schematic"`` (default) or ``"realistic"`` rendering; ``orientation``: None (default, the
    device's convention) or a display orientation (see ``sweep_frames``). CSV columns: ``CSV_COLUMNS`` then
    ``EXTRA_COLUMNS``, then ``orientation`` when one is given. Output: the mp4 path. Raises SonogateError when
    the arguments are invalid or the file cannot be written.
    """
    out = Path(out_mp4)
    if out.suffix.lower() != ".mp4":
        raise SonogateError(f"cine output must be an .mp4 file, got {out}")
    columns = CSV_COLUMNS + EXTRA_COLUMNS + (() if orientation is None else ("orientation",))
    if orientation is not None:
        check_orientation(orientation)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SonogateError(f"cannot create folder for {out}: {exc}") from None
    frames = sweep_frames(seed, seconds, fps, size=size, chrome=chrome, device=device, style=style,
                          orientation=orientation)
    total = round(seconds * fps)
    writer = None
    csv_path = out.with_suffix(".csv")
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="phantom cine", unit="frame", disable=not sys.stderr.isatty())
        except ImportError:
            bar = None
    try:
        with open(csv_path, "w", newline="") as handle:
            table = csv.writer(handle)
            table.writerow(columns)
            for screen, label in frames:
                if writer is None:
                    height, width = screen.shape[:2]
                    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
                    if not writer.isOpened():
                        raise SonogateError(f"cannot write video {out} (OpenCV mp4v writer did not open)")
                writer.write(screen)
                table.writerow([_fmt(label[c]) for c in columns])
                if bar is not None:
                    bar.update(1)
    except OSError as exc:
        raise SonogateError(f"cannot write {csv_path}: {exc}") from None
    finally:
        if writer is not None:
            writer.release()
        if bar is not None:
            bar.close()
    return out


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
