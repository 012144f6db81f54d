"""Tiny labelled folders for the model / export tests (seconds to write, a few dozen images).

``synthetic_folder`` draws its own images (speckle + a bright tilted "bony roof" whose angle is the alpha
label) and needs nothing but numpy and OpenCV (torch-free data tests); ``phantom_folder`` uses the phantom
writer, so model tests train on the images the product is trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sonogate.data.folder import write_labelled_folder

LANDMARKS = ("a", "b", "c")


def synthetic_folder(out: Path, n: int = 48, size: int = 64, seed: int = 0, infants: int = 12) -> Path:
    """``n`` gray PNGs + labels.csv with every column the phantom writes (landmarks a, b, c)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    images, rows = [], []
    for i in range(n):
        alpha = rng.uniform(40, 75)
        standard = rng.random() < 0.75
        img = rng.gamma(2.0, 30.0, size=(size, size))
        cx, cy = size * rng.uniform(0.4, 0.6), size * rng.uniform(0.4, 0.6)
        t = np.deg2rad(alpha)
        dist = np.abs((xx - cx) * np.sin(t) - (yy - cy) * np.cos(t))
        img += 150 * np.exp(-(dist**2) / 4.0) * (1.0 if standard else 0.3)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        infant = i % infants
        row = {
            "patient_id": f"P{infant:03d}",
            "side": "L" if i % 2 else "R",
            "sweep_id": f"P{infant:03d}-{i % 2}",
            "alpha_deg": round(alpha, 3),
            "beta_deg": round(80 - 0.5 * alpha + rng.normal(0, 2), 3),
            "coverage_pct": round(alpha - 5 + rng.normal(0, 3), 3),
            "hip_alpha_deg": round(alpha, 3),
            "hip_beta_deg": round(80 - 0.5 * alpha, 3),
            "hip_coverage_pct": round(alpha - 5, 3),
            "standard_plane": int(standard),
            "defect": "" if standard else "tilted",
            "device": "ABC"[i % 3],
        }
        for k, name in enumerate(LANDMARKS):
            row[f"lm_{name}_x"] = round(cx + 5 * (k - 1) * np.cos(t), 3)
            row[f"lm_{name}_y"] = round(cy + 5 * (k - 1) * np.sin(t), 3)
        rows.append(row)
    return write_labelled_folder(out, images, rows)


def phantom_folder(out: Path, n: int = 40, size: int = 64, seed: int = 0, devices=("A", "B", "C")) -> Path:
    """A small labelled folder written by the phantom's own writer (size >= 64)."""
    from sonogate.phantom.writer import write_us_dataset

    kw = {"frames_per_sweep": 1, "standard_fraction": 0.8, "chrome": False, "progress": False}
    return write_us_dataset(out, n, seed, devices=tuple(devices), size=size, **kw)
