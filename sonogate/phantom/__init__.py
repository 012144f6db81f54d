"""Synthetic infant-hip phantom with exact ground truth (numpy + OpenCV only, no torch, no scipy).

Modules:
    devices   scanner presets (A, B, C train; D held out; X_extreme_gain out of distribution)
    hip_us    Graf standard-plane ultrasound frames with alpha / beta / coverage and landmarks
    acoustics speckle, PSF, attenuation / TGC, shadows, log compression
    chrome    scanner screen around the image (what a capture card sees) and its ROI
    cine      probe sweeps, hip after hip, with per-frame labels; mp4 + CSV writer
    writer    labelled-folder datasets (images/ + labels.csv) read by ``sonogate.data.folder``
    realistic the opt-in "realistic" rendering style (layered soft tissue, thick bone echoes, finer speckle)
    hip_scene the geometry of one hip ultrasound frame (``HipScene``), shared by both styles
    raster    drawing and correlated-noise helpers shared by the renderers
    cli       ``sonogate phantom us | cine`` (and each task's own phantom command, e.g. ``xr``, from its spec)

Each task's own renderer lives in its task package (the pelvic radiograph: ``sonogate.tasks.hip_xr.phantom``).

How close the frames look to real scans is measured outside the package: ``benchmarks/phantom_realism.py``.
The phantom imports no other stage (only ``sonogate.errors`` and ``sonogate.measurements``).

Names are imported lazily so that ``import sonogate.phantom`` (and the CLI that registers it) stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ScannerDevice": "devices", "DEVICES": "devices", "TRAIN_DEVICES": "devices", "HELDOUT_DEVICE": "devices",
    "OOD_DEVICE": "devices", "get_device": "devices",
    "HipParams": "hip_us", "UsFrame": "hip_us", "sample_hip_params": "hip_us", "render_us_frame": "hip_us",
    "measure_from_landmarks": "hip_us", "DEFECTS": "hip_us", "LANDMARK_NAMES": "hip_us",
    "add_scanner_chrome": "chrome", "sweep_frames": "cine", "write_cine": "cine",
    "write_us_dataset": "writer", "STYLES": "realistic",
    "PairedHip": "paired", "paired_hips": "paired", "iter_paired_patients": "paired", "AiModel": "paired",
}
__all__ = [
    "DEFECTS",
    "DEVICES",
    "HELDOUT_DEVICE",
    "LANDMARK_NAMES",
    "OOD_DEVICE",
    "STYLES",
    "TRAIN_DEVICES",
    "HipParams",
    "ScannerDevice",
    "UsFrame",
    "add_scanner_chrome",
    "get_device",
    "measure_from_landmarks",
    "render_us_frame",
    "sample_hip_params",
    "sweep_frames",
    "write_cine",
    "write_us_dataset",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sonogate.phantom' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sonogate.phantom.{module}"), name)
