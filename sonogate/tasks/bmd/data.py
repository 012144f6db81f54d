"""The ``bmd`` phantom folder as arrays for training and evaluation (numpy + OpenCV, no torch).

``read_bmd_folder(DIR)`` reads ``DIR/labels.csv`` (``sonogate phantom bmd``) into one ``BmdFolder`` row per
radiograph: hips in the order right (R), left (L); the landmarks the network learns (``LANDMARK_COLUMNS``:
head centre and neck-box centre per hip) in [0, 1] of the image (pixel-centre convention). ``split_patients``
splits by patient (never one patient on two sides of a split) and puts the held-out devices (E, F) apart.
``load_sources`` reads the radiographs and letterboxes them to 512 px (uint8; ``normalise`` gives the graph input
x = (gray / 255 - mean) / std); a cache file avoids re-reading.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sonogate.errors import DataError

SIDES = ("R", "L")
HELD_OUT_DEVICES = ("E", "F")
MEAN, STD = 0.5, 0.25
FULL_SIZE = 512
SPLITS = ("train", "val", "cal", "test")
SPLIT_FRACTIONS = (0.60, 0.12, 0.13, 0.15)  # of the patients of the training devices


@dataclass
class BmdFolder:
    """One row per radiograph. bmd, t_score, in_field: (N, 2) right, left; landmarks: (N, 4, 2) in [0, 1]
    (right head, right neck box, left head, left neck box); sizes: (N, 2) width, height of the stored image."""

    root: Path
    images: list[str]
    patients: np.ndarray
    devices: np.ndarray
    bmd: np.ndarray
    t_score: np.ndarray
    in_field: np.ndarray
    landmarks: np.ndarray
    sizes: np.ndarray
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def paths(self) -> list[Path]:
        return [self.root / name for name in self.images]

    def subset(self, idx) -> BmdFolder:
        idx = np.asarray(idx, dtype=np.int64)
        return BmdFolder(self.root, [self.images[i] for i in idx], self.patients[idx], self.devices[idx],
                         self.bmd[idx], self.t_score[idx], self.in_field[idx], self.landmarks[idx],
                         self.sizes[idx], {k: v[idx] for k, v in self.extra.items()})


def read_label_rows(root: str | Path, need: Iterable[str], missing_hint: str) -> tuple[Path, list[dict]]:
    """The rows of ``root/labels.csv``; DataError (one line) when it is missing (with ``missing_hint``) or lacks a
    column of ``need``."""
    path = Path(root) / "labels.csv"
    if not path.is_file():
        raise DataError(f"no labels.csv in {root} ({missing_hint})")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    lacking = sorted(set(need) - set(rows[0] if rows else ()))
    if not rows or lacking:
        raise DataError(f"{path} is not a bmd label file: no rows or no column {', '.join(lacking or sorted(need))}")
    return path, rows


def read_bmd_folder(root: str | Path) -> BmdFolder:
    """``root/labels.csv`` -> BmdFolder; DataError when the folder is not a bmd phantom folder."""
    root = Path(root)
    need = {"image", "patient_id", "side", "bmd_g_cm2", "t_score", "in_field", "device", "box_cx", "box_cy",
            "lm_head_center_x", "lm_head_center_y", "age", "sex"}
    path, rows = read_label_rows(root, need, f"write one with: sonogate phantom bmd --out {root}")
    by_image: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_image.setdefault(row["image"], {})[row["side"]] = row
    names = [n for n, hips in by_image.items() if set(hips) == set(SIDES)]
    if not names:
        raise DataError(f"{path} has no radiograph with both hip rows")
    n = len(names)
    bmd = np.zeros((n, 2)); tsc = np.zeros((n, 2)); inf = np.zeros((n, 2), dtype=bool)
    lms = np.zeros((n, 4, 2)); sizes = np.zeros((n, 2)); age = np.zeros(n); female = np.zeros(n, dtype=bool)
    patients, devices = [], []
    for i, name in enumerate(names):
        hips = by_image[name]
        first = hips["R"]
        patients.append(first["patient_id"]); devices.append(first["device"])
        age[i] = float(first["age"]); female[i] = first["sex"] == "F"
        for s, side in enumerate(SIDES):
            row = hips[side]
            bmd[i, s] = float(row["bmd_g_cm2"]); tsc[i, s] = float(row["t_score"]); inf[i, s] = row["in_field"] == "1"
            lms[i, 2 * s] = float(row["lm_head_center_x"]), float(row["lm_head_center_y"])
            lms[i, 2 * s + 1] = float(row["box_cx"]), float(row["box_cy"])
    for i, name in enumerate(names):  # image size from the file header (all images of one folder share it)
        if i == 0 or sizes[0, 0] == 0:
            image = cv2.imread(str(root / name), cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise DataError(f"cannot read {root / name}")
            sizes[0] = image.shape[1], image.shape[0]
    sizes[:] = sizes[0]
    side = sizes.max(1, keepdims=True)[:, None, :]  # letterbox square side
    pad = (side - sizes[:, None, :]) / 2.0
    lms = (lms + 0.5 + pad) / side  # pixel -> [0, 1] of the letterboxed square
    return BmdFolder(root, names, np.array(patients), np.array(devices), bmd, tsc, inf, lms, sizes,
                     {"age": age, "female": female})


def split_patients(folder: BmdFolder, seed: int = 0) -> dict[str, np.ndarray]:
    """Indices per split: "train", "val", "cal", "test" (patients of the training devices, by a seeded hash of the
    patient id, ``SPLIT_FRACTIONS``) and "external" (every radiograph of ``HELD_OUT_DEVICES``)."""
    held = np.isin(folder.devices, HELD_OUT_DEVICES)
    keys = np.array([int(hashlib.sha256(f"{seed}:{p}".encode()).hexdigest()[:8], 16) / 2**32
                     for p in folder.patients])
    edges = np.cumsum(SPLIT_FRACTIONS)
    which = np.searchsorted(edges, keys, side="right").clip(0, len(SPLITS) - 1)
    out = {name: np.flatnonzero(~held & (which == k)) for k, name in enumerate(SPLITS)}
    out["external"] = np.flatnonzero(held)
    return out


def bundle_split_seed(manifest: dict) -> int:
    """The split seed of the run a bundle was exported from (``--split-seed``, else ``--seed``), so calibration
    and evaluation use the patients training did not see."""
    config = (manifest.get("provenance") or {}).get("train_config") or {}
    seed = config.get("split_seed")
    return int(config.get("seed", 0) if seed is None else seed)


def letterbox_gray(image: np.ndarray, size: int = FULL_SIZE) -> np.ndarray:
    """Gray uint8 (H, W) -> (size, size) uint8: padded to a centred square with 0, then INTER_AREA resized (the
    bundle's preprocessing)."""
    h, w = image.shape[:2]
    side = max(h, w)
    if h != w:
        canvas = np.zeros((side, side), dtype=np.uint8)
        canvas[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = image
        image = canvas
    if side != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return image


def to_source(gray512: np.ndarray) -> np.ndarray:
    """(512, 512) uint8 letterboxed radiograph -> the stored training source (the same uint8: the graph input is
    ``normalise(source)``, exact)."""
    return np.ascontiguousarray(gray512, dtype=np.uint8)


def normalise(sources: np.ndarray) -> np.ndarray:
    """uint8 sources (..., 512, 512) -> float32 graph input x = (gray / 255 - mean) / std."""
    return (sources.astype(np.float32) / 255.0 - MEAN) / STD


def load_sources(folder: BmdFolder, cache: str | Path | None = None, progress: bool = True) -> np.ndarray:
    """(N, 512, 512) uint8 letterboxed radiographs of ``folder`` (cached in ``cache`` .npy when given)."""
    from tqdm import tqdm

    if cache is not None and Path(cache).is_file():
        data = np.load(cache, mmap_mode=None)
        if data.shape[0] == len(folder):
            return data
    out = np.zeros((len(folder), FULL_SIZE, FULL_SIZE), dtype=np.uint8)
    for i, path in enumerate(tqdm(folder.paths, desc="load radiographs", disable=not progress, unit="img")):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise DataError(f"cannot read radiograph {path}")
        out[i] = to_source(letterbox_gray(image))
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, out)
    return out
