"""Labelled pelvic X-ray folders, one entry per radiograph (torch-free: numpy only).

The phantom writer (``write_xr_dataset``) and converted real data use the labelled-folder layout with **two
rows per image**, one per hip (``side`` R / L): ``ai_deg``, ``ce_deg``, ``ihdi`` per row and every landmark of
the pelvis (``lm_<name>_x`` / ``lm_<name>_y``, pixels of the stored image) on each row. A whole-pelvis model
needs one entry per radiograph with both hips, so ``read_xr_folder`` pivots the rows:

    folder = read_xr_folder("data/xr")
    folder.targets        # (n, 4) ai_deg right, ce_deg right, ai_deg left, ce_deg left (NaN = missing)
    folder.ihdi           # (n, 2) IHDI grade 1..4 right, left (NaN = missing)
    folder.landmarks      # (n, 8, 2) XR_LANDMARK_NAMES in pixels of the stored image (NaN = missing)
    folder.patients       # (n,) patient id: the unit every split keeps whole
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonogate.data.folder import load_gray_image, read_labelled_folder
from sonogate.errors import DataError
from sonogate.tasks.hip_xr.phantom import RETUVE_ALIASES, XR_LANDMARK_NAMES

SIDES = ("right", "left")
XR_TARGETS = ("ai_deg_right", "ce_deg_right", "ai_deg_left", "ce_deg_left")
_SIDE_WORDS = {"r": 0, "right": 0, "l": 1, "left": 1}


@dataclass
class XrFolder:
    """One entry per radiograph. ``image_paths`` (n,); ``patients`` (n,) str; ``targets`` (n, 4) in
    ``XR_TARGETS`` order; ``ihdi`` (n, 2); ``landmarks`` (n, 8, 2) ordered as ``XR_LANDMARK_NAMES``;
    ``severity`` (n, 2) str ("" when unknown)."""

    root: Path
    image_paths: list[Path]
    patients: np.ndarray
    targets: np.ndarray
    ihdi: np.ndarray
    landmarks: np.ndarray
    severity: np.ndarray

    def __len__(self) -> int:
        return len(self.image_paths)

    def load_gray(self, i: int) -> np.ndarray:
        return load_gray_image(self.image_paths[i])

    def subset(self, indices: Iterable[int]) -> XrFolder:
        idx = np.asarray(list(indices), dtype=np.int64)
        return XrFolder(
            self.root,
            [self.image_paths[i] for i in idx],
            self.patients[idx],
            self.targets[idx],
            self.ihdi[idx],
            self.landmarks[idx],
            self.severity[idx],
        )


def read_xr_folder(path: str | os.PathLike) -> XrFolder:
    """Read a labelled X-ray folder (labels.csv with a ``side`` column, one row per hip) as one entry per image.

    Input: the folder. Output: ``XrFolder`` (images in first-appearance order). Landmarks may use the Retuve
    names (``lm_pel_r_i_x`` ...) too. Raises DataError (one line) on a missing folder / column / image, an
    unknown side, a hip listed twice, or rows of one image that name different patients.
    """
    folder = read_labelled_folder(path, required=("side",))
    sides = folder.text("side")
    images = [p.as_posix() for p in folder.image_paths]
    patients = folder.text("patient_id") if folder.has("patient_id") else np.array(images, dtype=object)
    order: dict[str, int] = {}
    for name in images:
        order.setdefault(name, len(order))
    n = len(order)
    targets = np.full((n, 4), np.nan)
    ihdi = np.full((n, 2), np.nan)
    landmarks = np.full((n, len(XR_LANDMARK_NAMES), 2), np.nan)
    severity = np.full((n, 2), "", dtype=object)
    patient_of = np.full(n, "", dtype=object)
    seen = np.zeros((n, 2), dtype=bool)
    aliases = {canonical: alias for alias, canonical in RETUVE_ALIASES.items()}
    columns = []
    for name in XR_LANDMARK_NAMES:
        key = name if f"lm_{name}_x" in folder.columns else aliases.get(name, name)
        columns += [f"lm_{key}_x", f"lm_{key}_y"]
    rows_lm = folder.targets(columns).reshape(len(folder), len(XR_LANDMARK_NAMES), 2)
    values = folder.targets(["ai_deg", "ce_deg", "ihdi"])
    sev = folder.text("severity")
    for row, name in enumerate(images):
        i = order[name]
        side = _SIDE_WORDS.get(str(sides[row]).strip().lower())
        if side is None:
            raise DataError(f"{folder.root / 'labels.csv'} line {row + 2}: side must be R or L, not {sides[row]!r}")
        if seen[i, side]:
            raise DataError(f"{folder.root / 'labels.csv'}: hip {SIDES[side]} of {name} is listed twice")
        seen[i, side] = True
        if patient_of[i] and patient_of[i] != patients[row]:
            raise DataError(f"{folder.root / 'labels.csv'}: rows of {name} name different patients")
        patient_of[i] = patients[row]
        targets[i, 2 * side : 2 * side + 2] = values[row, :2]
        ihdi[i, side] = values[row, 2]
        severity[i, side] = sev[row]
        fill = ~np.isfinite(landmarks[i]) & np.isfinite(rows_lm[row])
        landmarks[i][fill] = rows_lm[row][fill]
    paths = [Path(name) for name in order]
    return XrFolder(folder.root, paths, patient_of.astype(str), targets, ihdi, landmarks, severity)


@dataclass
class RetuveReference:
    """Reference geometry from one Retuve landmark JSON (``{"landmark_list": [{pel_l_o, pel_l_i, pel_r_o,
    pel_r_i, fem_l, fem_r}]}``, (x, y) pixels of the image).

    ``landmarks``: canonical name -> (x, y) for triradiate_r/l and acetabular_edge_r/l, with sides assigned by
    image position (the pair on the image's left is the patient's right: radiographic convention), because the
    JSONs' own l / r does not follow the patient (in the shared files it flips between images). ``ai_deg``:
    side -> AI from ``measure_xr_from_landmarks``. ``ce_deg``: side -> CE only where ``fem_*`` is a point of
    its own (not identical to its ``pel_*_i``), else None. ``fem_is_inner``: side -> fem_* == pel_*_i.
    """

    landmarks: dict[str, tuple[float, float]]
    ai_deg: dict[str, float]
    ce_deg: dict[str, float | None]
    fem_is_inner: dict[str, bool]
    json_sides_follow_image: bool


def retuve_reference(obj: dict, same_point_px: float = 1.0) -> RetuveReference:
    """Reference AI (and CE where possible) from a parsed Retuve X-ray landmark JSON; DataError when the six
    points are not all there."""
    from sonogate.tasks.hip_xr.phantom import measure_xr_from_landmarks

    try:
        points = {k: tuple(float(v) for v in xy) for k, xy in obj["landmark_list"][0].items()}
        pairs = {s: (points[f"pel_{s}_i"], points[f"pel_{s}_o"], points[f"fem_{s}"]) for s in ("l", "r")}
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DataError(f"not a Retuve X-ray landmark JSON (missing {exc})") from None
    # The pair whose inner point lies further left in the image is the patient's right.
    image_left = min(pairs, key=lambda s: pairs[s][0][0])
    json_sides_follow_image = image_left == "r"
    by_side = {"right": pairs[image_left], "left": pairs["l" if image_left == "r" else "r"]}
    landmarks, fem_is_inner, centres = {}, {}, {}
    for side, (inner, outer, fem) in by_side.items():
        s = side[0]
        landmarks[f"triradiate_{s}"], landmarks[f"acetabular_edge_{s}"] = inner, outer
        fem_is_inner[side] = bool(np.hypot(fem[0] - inner[0], fem[1] - inner[1]) <= same_point_px)
        centres[side] = fem
    measured = measure_xr_from_landmarks(landmarks)
    ce: dict[str, float | None] = {}
    for side in SIDES:
        if fem_is_inner[side]:
            ce[side] = None
        else:
            with_centre = dict(landmarks, **{f"head_center_{side[0]}": centres[side]})
            ce[side] = measure_xr_from_landmarks(with_centre).get(f"ce_deg_{side}")
    return RetuveReference(
        landmarks=landmarks,
        ai_deg={s: measured[f"ai_deg_{s}"] for s in SIDES},
        ce_deg=ce,
        fem_is_inner=fem_is_inner,
        json_sides_follow_image=json_sides_follow_image,
    )
