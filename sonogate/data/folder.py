"""Labelled and unlabelled image folders (torch-free: numpy + cv2).

A labelled folder is the layout the phantom writes and the one real data is converted to::

    DIR/labels.csv     one row per image; column ``image`` = path relative to DIR
    DIR/images/*.png   (or wherever ``image`` points)

Known columns (all optional except ``image``): patient_id, side, sweep_id, alpha_deg, beta_deg,
coverage_pct, hip_alpha_deg, hip_beta_deg, hip_coverage_pct, standard_plane, defect, device and
landmark pairs ``lm_<name>_x`` / ``lm_<name>_y`` in pixels of the stored image.

An unlabelled folder is any folder of images (no labels.csv needed), used for self-supervised pretraining.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonogate.errors import DataError

LABELS_CSV = "labels.csv"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_TRUE = {"true", "yes"}
_FALSE = {"false", "no"}
_MISSING = {"", "nan", "na", "none", "null"}


def _parse_numeric(values: list[str]) -> np.ndarray | None:
    """float64 array if every cell is a number, a boolean word or empty (-> NaN); else None."""
    out = np.empty(len(values), dtype=np.float64)
    seen_value = False
    for i, raw in enumerate(values):
        cell = raw.strip().lower()
        if cell in _MISSING:
            out[i] = math.nan
            continue
        seen_value = True
        if cell in _TRUE:
            out[i] = 1.0
        elif cell in _FALSE:
            out[i] = 0.0
        else:
            try:
                out[i] = float(cell)
            except ValueError:
                return None
    # An all-empty column stays text: it says nothing about its type.
    return out if seen_value else None


def load_gray_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as gray uint8 (H, W). Colour is converted with the standard luma weights,
    16-bit images are scaled to 8 bits. Raises DataError (one line) when the file cannot be decoded."""
    import cv2  # imported here so that listing a folder does not need OpenCV

    path = Path(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise DataError(f"cannot read image (missing or not a decodable image): {path}")
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(f"unsupported image sample type {image.dtype}: {path}")
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code) if image.shape[2] in (3, 4) else image[..., 0]
    return np.ascontiguousarray(image)


def resize_gray(gray: np.ndarray, height: int, width: int) -> np.ndarray:
    """The bundle's resize step (cv2.INTER_AREA), shared by training and export so both see what the
    runtime feeds the model. Input uint8 (H, W); output uint8 (height, width)."""
    import cv2

    if gray.shape[:2] == (height, width):
        return gray
    return cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)


@dataclass
class LabelledFolder:
    """A labels.csv plus its images.

    ``columns`` maps every CSV column to an array of one value per image: float64 for numeric columns
    (empty cells -> NaN, true/false -> 1/0), str otherwise.
    """

    root: Path
    image_paths: list[Path]
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.image_paths)

    def load_gray(self, i: int) -> np.ndarray:
        """Image ``i`` as gray uint8 (H, W)."""
        return load_gray_image(self.image_paths[i])

    def rois(self) -> np.ndarray | None:
        """(n, 4) float64 ultrasound region x, y, w, h per image from the roi_x/_y/_w/_h columns (a phantom
        written with scanner chrome has them); None when the folder has no such columns (whole image)."""
        names = ("roi_x", "roi_y", "roi_w", "roi_h")
        if not all(n in self.columns and self.columns[n].dtype.kind == "f" for n in names):
            return None
        return self.targets(names)

    def has(self, name: str) -> bool:
        return name in self.columns

    def text(self, name: str, default: str = "") -> np.ndarray:
        """Column ``name`` as str array (``default`` for every row when the column is missing)."""
        if name not in self.columns:
            return np.full(len(self), default, dtype=object)
        col = self.columns[name]
        if col.dtype.kind == "f":
            # Numeric ids such as patient 12 should read "12", not "12.0".
            return np.array(
                [("" if math.isnan(v) else (str(int(v)) if v == int(v) else str(v))) for v in col], dtype=object
            )
        return col.astype(object)

    def targets(self, names: Sequence[str]) -> np.ndarray:
        """(n, len(names)) float64; a missing or non-numeric column gives a NaN column."""
        out = np.full((len(self), len(names)), np.nan, dtype=np.float64)
        for j, name in enumerate(names):
            col = self.columns.get(name)
            if col is not None and col.dtype.kind == "f":
                out[:, j] = col
        return out

    def landmark_names(self) -> list[str]:
        """Names of the landmarks that have both ``lm_<name>_x`` and ``lm_<name>_y`` columns, in CSV order."""
        names = []
        for col in self.columns:
            if col.startswith("lm_") and col.endswith("_x"):
                name = col[3:-2]
                if f"lm_{name}_y" in self.columns:
                    names.append(name)
        return names

    def landmarks(self, names: Sequence[str] | None = None) -> np.ndarray:
        """(n, K, 2) float64 landmark (x, y) in pixels of the stored image; NaN where missing."""
        names = list(self.landmark_names() if names is None else names)
        cols = [c for n in names for c in (f"lm_{n}_x", f"lm_{n}_y")]
        return self.targets(cols).reshape(len(self), len(names), 2)

    def standard_plane(self) -> np.ndarray:
        """bool (n,): frames marked as a usable standard plane; all True when the column is absent."""
        if "standard_plane" not in self.columns:
            return np.ones(len(self), dtype=bool)
        col = self.columns["standard_plane"]
        if col.dtype.kind != "f":
            raise DataError(f"column standard_plane in {self.root / LABELS_CSV} must be 0/1 or true/false")
        return np.nan_to_num(col, nan=0.0) > 0.5

    def groups(self) -> np.ndarray:
        """The unit a split must keep together: patient_id (infant), else sweep_id, else the image itself."""
        for name in ("patient_id", "sweep_id"):
            if name in self.columns:
                return self.text(name)
        return np.array([p.as_posix() for p in self.image_paths], dtype=object)

    def subset(self, indices: Iterable[int]) -> LabelledFolder:
        idx = np.asarray(list(indices), dtype=np.int64)
        return LabelledFolder(
            root=self.root,
            image_paths=[self.image_paths[i] for i in idx],
            columns={k: v[idx] for k, v in self.columns.items()},
        )


def read_labelled_folder(path: str | os.PathLike, required: Sequence[str] = ()) -> LabelledFolder:
    """Read ``path/labels.csv`` and check that every image it names exists.

    Input: the folder, and column names that must be present. Output: a ``LabelledFolder``.
    Raises DataError (one line) on a missing folder, CSV, column or image file.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    csv_path = root / LABELS_CSV
    if not csv_path.is_file():
        raise DataError(f"data folder has no {LABELS_CSV}: {root}")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = [row for row in reader if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {csv_path}: {exc}") from None
    if not header:
        raise DataError(f"{csv_path} is empty")
    header = [h.strip() for h in header]
    for name in ("image", *required):
        if name not in header:
            raise DataError(f"{csv_path} has no '{name}' column (has: {', '.join(header)})")
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{csv_path} line {line} has {len(row)} cells, header has {len(header)}")
    if not rows:
        raise DataError(f"{csv_path} lists no images")
    raw = {name: [row[j] for row in rows] for j, name in enumerate(header)}
    columns: dict[str, np.ndarray] = {}
    for name, values in raw.items():
        numeric = None if name == "image" else _parse_numeric(values)
        columns[name] = numeric if numeric is not None else np.array([v.strip() for v in values], dtype=object)
    image_paths = [root / rel.strip() for rel in raw["image"]]
    missing = [p for p in image_paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"image listed in {csv_path} not found: {missing[0]}{more}")
    return LabelledFolder(root=root, image_paths=image_paths, columns=columns)


def list_images(path: str | os.PathLike) -> list[Path]:
    """Every image file under ``path`` (recursive, sorted), for unlabelled pretraining.

    A labels.csv is not needed and is ignored. Raises DataError when the folder is missing or has no images.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return paths


def write_labelled_folder(
    out_dir: str | os.PathLike, images: Sequence[np.ndarray], rows: Sequence[dict], image_dir: str = "images"
) -> Path:
    """Write gray uint8 images as PNG plus a labels.csv (the layout ``read_labelled_folder`` reads).

    Inputs: ``images`` (H, W) uint8 arrays; ``rows`` one dict of column values per image (the ``image``
    column is filled in). Output: the folder path. Used to convert real data and to build test fixtures.
    """
    import cv2

    if len(images) != len(rows):
        raise DataError(f"{len(images)} images but {len(rows)} label rows")
    root = Path(out_dir)
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    header = ["image"]
    for row in rows:
        header += [k for k in row if k not in header]
    with open(root / LABELS_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        for i, (image, row) in enumerate(zip(images, rows)):
            rel = f"{image_dir}/{i:06d}.png"
            if not cv2.imwrite(str(root / rel), np.asarray(image, dtype=np.uint8)):
                raise DataError(f"cannot write image {root / rel}")
            writer.writerow({**row, "image": rel})
    return root
