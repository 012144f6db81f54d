"""Reader for the knee KL folder (``../shared/data/knee-oa-kl-xray``: ``labels.csv`` with ``image``, ``split``,
``kl_grade``, ``subject``, ``side``; splits by subject) and the image loading the training and export share.

``read_knee_split(root, split)`` -> ``KneeSplit`` (paths, grades, subjects, sides). ``load_knee_images(paths,
size)`` -> uint8 (N, size, size), each image read as gray and letterboxed exactly as the runtime does.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonogate.errors import DataError

KL_GRADES = (0, 1, 2, 3, 4)
DATA_NAME = "knee-oa-kl-xray"
DATA_ATTRIBUTION = (
    "Knee radiographs and Kellgren-Lawrence grades: Chen, Pingjun (2018), \"Knee Osteoarthritis Severity Grading "
    "Dataset\", Mendeley Data, V1, doi:10.17632/56rmx5bjcr.1, CC BY 4.0 (https://creativecommons.org/licenses/by/"
    "4.0/); images from the Osteoarthritis Initiative (OAI), grades the OAI central readings. Changed: re-encoded "
    "as JPEG quality 90 for the shared data folder; used here to train and evaluate the model (weights derived)."
)


@dataclass(frozen=True)
class KneeSplit:
    """One split of the knee folder: image paths, KL grades (0-4), OAI subject ids and sides, row-aligned."""

    root: Path
    split: str
    paths: list[Path]
    grades: np.ndarray
    subjects: np.ndarray
    sides: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


def read_knee_split(root: str | Path, split: str) -> KneeSplit:
    """Rows of ``root/labels.csv`` whose ``split`` column is ``split`` (train / val / test).

    DataError (one line) when the folder, its labels.csv, a column or the split is missing, or a grade is not 0-4.
    """
    root = Path(root)
    labels = root / "labels.csv"
    if not labels.is_file():
        raise DataError(f"no labels.csv in {root} (expected the knee-oa-kl-xray folder)")
    with labels.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    need = {"image", "split", "kl_grade", "subject"}
    if not rows or not need.issubset(rows[0]):
        raise DataError(f"{labels} needs the columns {', '.join(sorted(need))}")
    rows = [r for r in rows if r["split"] == split]
    if not rows:
        raise DataError(f"{labels} has no rows with split {split!r}")
    try:
        grades = np.array([int(r["kl_grade"]) for r in rows], dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"{labels}: a kl_grade is not an integer ({exc})") from None
    if grades.min() < 0 or grades.max() > 4:
        raise DataError(f"{labels}: kl_grade must be 0-4")
    return KneeSplit(root=root, split=split, paths=[root / r["image"] for r in rows], grades=grades,
                     subjects=np.array([r["subject"] for r in rows]), sides=np.array([r.get("side", "") for r in rows]))


def load_knee_images(paths, size: int, progress: bool = False, desc: str = "load") -> np.ndarray:
    """Images read as gray and letterboxed (area interpolation) to (size, size), as the runtime preprocesses them.

    Output uint8 (N, size, size). DataError when a file cannot be decoded.
    """
    from tqdm import tqdm

    from sonogate.data.folder import load_gray_image
    from sonogate.runtime.preprocess import letterbox

    out = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, path in enumerate(tqdm(paths, desc=desc, disable=not progress, leave=False)):
        out[i], _ = letterbox(load_gray_image(path), size)
    return out
