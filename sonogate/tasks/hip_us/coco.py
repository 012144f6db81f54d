"""Graf landmark labels for hip ultrasound: the labels.csv rows, and import from COCO-keypoints JSON.

Two ways to label a site's frames end here: the labelling page (``label_server``) and the COCO-keypoints JSON
that CVAT and Label Studio export. Both give the seven Graf landmarks per frame, in pixels of the stored image
(pixel centres at integers, as ``sonogate.phantom`` writes them), and both measure alpha, beta and coverage with
the project's one geometry, ``sonogate.phantom.hip_us.measure_from_landmarks``.

The rows are the labelled-folder layout of ``sonogate.data.folder`` (``labels.csv``): image (relative to the
CSV's folder), patient_id, sweep_id, alpha_deg, beta_deg, coverage_pct, standard_plane, ``lm_<name>_x/_y`` for
the seven landmarks, and ``note`` (why a frame has no measurements; empty otherwise).

COCO keypoints: ``images`` ({id, file_name, width, height}), ``annotations`` ({image_id, category_id,
keypoints: [x, y, v] * K}), ``categories`` ({id, keypoints: [K names]}). ``v`` = 0: not labelled (the point is
missing); 1 (labelled, not visible) and 2 (visible) give a position. COCO coordinates are continuous (the
top-left pixel covers 0..1), so 0.5 is subtracted to put pixel centres at integers; angles and coverage do not
change with that shift. Several annotations of one image are merged (a landmark given twice is an error).
CVAT exports one category per skeleton with the point names; Label Studio merges its KeyPointLabels into one
category ("default") ordered by the labels' model_index, and rounds coordinates to whole pixels (about 0.5 px).
The standard plane comes from an annotation attribute ``standard_plane`` (CVAT exports attributes) or, where
there is none, from the caller's default (a Graf measurement is only taken on a standard plane).
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sonogate.errors import DataError, SonogateError
from sonogate.phantom.hip_us import measure_from_landmarks

# The seven landmarks measure_from_landmarks needs, in the order a sonographer clicks them.
GRAF_LANDMARKS: tuple[str, ...] = (
    "baseline_top", "baseline_bottom", "bony_rim", "lower_limb", "labrum", "head_medial", "head_lateral",
)
LANDMARK_TITLES: dict[str, str] = {
    "baseline_top": "baseline, cranial end (ilium)",
    "baseline_bottom": "baseline, caudal end (near the rim)",
    "bony_rim": "bony rim (turning point)",
    "lower_limb": "lower limb of the os ilium",
    "labrum": "labrum",
    "head_medial": "femoral head, medial edge (far from the probe)",
    "head_lateral": "femoral head, lateral edge (near the probe)",
}
# Which landmarks each measurement needs (so the page can show alpha as soon as its four points are placed).
MEASUREMENT_NEEDS: dict[str, tuple[str, ...]] = {
    "alpha_deg": ("baseline_top", "baseline_bottom", "bony_rim", "lower_limb"),
    "beta_deg": ("baseline_top", "baseline_bottom", "bony_rim", "labrum"),
    "coverage_pct": ("baseline_top", "baseline_bottom", "lower_limb", "head_medial", "head_lateral"),
}
MEASUREMENTS: tuple[str, ...] = ("alpha_deg", "beta_deg", "coverage_pct")
LABEL_COLUMNS: tuple[str, ...] = (
    "image", "patient_id", "sweep_id", *MEASUREMENTS, "standard_plane",
    *(f"lm_{name}_{axis}" for name in GRAF_LANDMARKS for axis in "xy"), "note",
)

# Point names other tools' label configs commonly use (lower case, spaces and hyphens as underscores).
DEFAULT_NAME_MAP: dict[str, str] = {
    **{name: name for name in GRAF_LANDMARKS},
    "baseline_1": "baseline_top", "baseline_start": "baseline_top", "baseline_cranial": "baseline_top",
    "baseline_upper": "baseline_top", "ilium_top": "baseline_top", "iliac_top": "baseline_top",
    "baseline_2": "baseline_bottom", "baseline_end": "baseline_bottom", "baseline_caudal": "baseline_bottom",
    "baseline_lower": "baseline_bottom", "ilium_bottom": "baseline_bottom", "iliac_bottom": "baseline_bottom",
    "rim": "bony_rim", "turning_point": "bony_rim", "acetabular_rim": "bony_rim", "bony_roof_rim": "bony_rim",
    "osseous_rim": "bony_rim", "bony_edge": "bony_rim",
    "lowerlimb": "lower_limb", "lower_limb_os_ilium": "lower_limb", "os_ilium_lower_limb": "lower_limb",
    "ilium_lower_limb": "lower_limb", "lower_limb_ilium": "lower_limb", "unterrand": "lower_limb",
    "labrum_tip": "labrum", "acetabular_labrum": "labrum", "labrum_acetabulare": "labrum",
    "femoral_head_medial": "head_medial", "head_inner": "head_medial", "head_deep": "head_medial",
    "femoral_head_lateral": "head_lateral", "head_outer": "head_lateral", "head_superficial": "head_lateral",
}

_YES = {"1", "true", "yes", "y"}
_NO = {"0", "false", "no", "n"}


def normalise_point_name(name: str) -> str:
    """'Bony Rim' / 'bony-rim' -> 'bony_rim'."""
    return "_".join(str(name).strip().lower().replace("-", " ").split())


def parse_name_map(text: str | os.PathLike | None) -> dict[str, str]:
    """A user mapping from their point names to ours: a JSON file ({"their name": "our name"}) or "a=b,c=d".

    Output: {normalised their name: our name}. Raises DataError on a malformed mapping or a target that is not
    one of ``GRAF_LANDMARKS``.
    """
    if text is None or str(text).strip() == "":
        return {}
    raw: dict
    path = Path(str(text))
    if str(text).lower().endswith(".json") or (path.suffix and path.is_file()):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read the point-name mapping {path}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"point-name mapping {path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise DataError(f"point-name mapping {path} must be a JSON object of names: {{\"their\": \"ours\"}}")
    else:
        raw = {}
        for pair in str(text).split(","):
            if not pair.strip():
                continue
            if pair.count("=") != 1:
                raise DataError(f"point-name mapping entry {pair.strip()!r} is not 'their=ours'")
            theirs, ours = (part.strip() for part in pair.split("="))
            if not theirs or not ours:
                raise DataError(f"point-name mapping entry {pair.strip()!r} is not 'their=ours'")
            raw[theirs] = ours
    mapping = {}
    for theirs, ours in raw.items():
        target = normalise_point_name(ours)
        if target not in GRAF_LANDMARKS:
            raise DataError(f"point-name mapping {theirs!r} -> {ours!r}: our landmarks are {', '.join(GRAF_LANDMARKS)}")
        mapping[normalise_point_name(theirs)] = target
    return mapping


def measure_graf(points: Mapping[str, Sequence[float]]) -> dict[str, float | None]:
    """Alpha, beta and coverage from the landmarks placed so far, with the project's geometry.

    Input: {landmark name: (x, y) pixels}, any subset of ``GRAF_LANDMARKS``. Output: {"alpha_deg", "beta_deg",
    "coverage_pct"}: degrees / percent, None where a landmark it needs is missing (``MEASUREMENT_NEEDS``) or
    the value is undefined (the head's two edges at the same depth give no coverage). Raises SonogateError when
    the baseline's two ends coincide (no baseline) or a coordinate is not a finite number.
    """
    placed = {}
    for name in GRAF_LANDMARKS:
        if name in points and points[name] is not None:
            try:
                x, y = (float(v) for v in points[name])
            except (TypeError, ValueError):
                raise SonogateError(f"landmark {name} must be two numbers (x, y), got {points[name]!r}") from None
            if not (math.isfinite(x) and math.isfinite(y)):
                raise SonogateError(f"landmark {name} is not a finite position: ({x}, {y})")
            placed[name] = (x, y)
    out: dict[str, float | None] = {name: None for name in MEASUREMENTS}
    if "baseline_top" not in placed or "baseline_bottom" not in placed:
        return out
    # measure_from_landmarks wants all seven: stand-ins (the baseline's top) fill the missing ones and every
    # measurement that depends on a stand-in is dropped below, so only placed points shape a shown value.
    filled = {name: placed.get(name, placed["baseline_top"]) for name in GRAF_LANDMARKS}
    values = measure_from_landmarks(filled)
    for name in MEASUREMENTS:
        value = values[name]
        if all(need in placed for need in MEASUREMENT_NEEDS[name]) and math.isfinite(value):
            out[name] = float(value)
    return out


def missing_note(points: Mapping[str, object]) -> str:
    """'' when all seven landmarks are placed, else 'missing landmarks: a, b (no measurements)'."""
    missing = [name for name in GRAF_LANDMARKS if points.get(name) is None]
    return f"missing landmarks: {', '.join(missing)} (no measurements)" if missing else ""


def label_row(image: str, points: Mapping[str, Sequence[float] | None], standard_plane: int | None,
              patient_id: str = "", sweep_id: str = "", where: str = "") -> dict[str, str]:
    """One labels.csv row (str cells, ``LABEL_COLUMNS``) for a frame.

    Inputs: ``image`` path relative to the CSV's folder; ``points`` {landmark: (x, y) pixels or None};
    ``standard_plane`` 1 / 0 / None (empty cell); ids; ``where`` names the frame in errors (default ``image``).
    Measurements are written only when all seven landmarks are placed (else empty, and ``note`` says which are
    missing). Raises DataError naming the frame when the landmarks give no geometry (zero-length baseline, the
    head's edges at one depth).
    """
    where = where or image
    points = {name: points.get(name) for name in GRAF_LANDMARKS}
    row = {column: "" for column in LABEL_COLUMNS}
    row.update(image=image, patient_id=patient_id, sweep_id=sweep_id)
    row["standard_plane"] = "" if standard_plane is None else str(int(bool(standard_plane)))
    try:
        values = measure_graf(points)
    except SonogateError as exc:
        raise DataError(f"{where}: {exc}") from None
    for name, point in points.items():
        if point is not None:
            row[f"lm_{name}_x"], row[f"lm_{name}_y"] = (f"{float(v):.4f}" for v in point)
    note = missing_note(points)
    if not note:
        undefined = [name for name in MEASUREMENTS if values[name] is None]
        if undefined:
            raise DataError(f"{where}: landmarks give no {', '.join(undefined)} "
                            "(head_medial and head_lateral at the same distance from the baseline)")
        for name in MEASUREMENTS:
            row[name] = f"{values[name]:.4f}"
    row["note"] = note
    return row


def read_labels_csv(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """An existing labels.csv as (header, rows of str cells); ([], []) when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{k.strip(): (v or "") for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if header and "image" not in header:
        raise DataError(f"{path} has no 'image' column: not a labels.csv (has: {', '.join(header)})")
    return header, rows


def write_labels_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, str]], header: Sequence[str] = ()) -> Path:
    """Write rows atomically (a temporary file in the same folder, then renamed over ``path``), so a crash or a
    power cut never leaves half a labels.csv. Columns: ``header`` then any of ``LABEL_COLUMNS`` it lacks."""
    path = Path(path)
    columns = list(header) + [c for c in LABEL_COLUMNS if c not in header]
    rows = list(rows)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", newline="", encoding="utf-8", dir=path.parent,
                                         prefix=f".{path.name}.", suffix=".tmp", delete=False) as handle:
            temporary = handle.name
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({c: row.get(c, "") for c in columns})
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp's 0600 would make the CSV unreadable to the rest of the team: keep the old mode, else 0644
        os.chmod(temporary, (path.stat().st_mode & 0o777) if path.exists() else 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


# ----------------------------------------------------------------------------------------------------------
# COCO keypoints


@dataclass
class CocoImport:
    """What ``import_coco`` wrote: the CSV, frame counts and one note per frame without measurements."""

    csv_path: Path
    frames: int
    measured: int
    notes: list[str]


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"COCO file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read COCO file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"COCO file {path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"COCO file {path} has no 'images' list: not a COCO export")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise DataError(f"COCO file {path}: '{key}' must be a list")
    return data


def _category_landmarks(category: dict, mapping: Mapping[str, str], path: Path) -> list[str | None]:
    """Our landmark name (or None: not one of ours) for each keypoint of a category."""
    names = category.get("keypoints")
    label = category.get("name", category.get("id"))
    if not isinstance(names, list) or not names:
        raise DataError(f"COCO file {path}: category {label!r} has no keypoint names")
    ours: list[str | None] = []
    for name in names:
        key = normalise_point_name(name)
        ours.append(mapping.get(key, DEFAULT_NAME_MAP.get(key)))
    doubled = sorted({o for o in ours if o is not None and ours.count(o) > 1})
    if doubled:
        raise DataError(f"COCO file {path}: category {label!r} maps several points to {', '.join(doubled)} "
                        f"(its points: {', '.join(map(str, names))}); fix the mapping (--map)")
    missing = [name for name in GRAF_LANDMARKS if name not in ours]
    if missing:
        raise DataError(f"COCO file {path}: category {label!r} has no point for {', '.join(missing)} "
                        f"(its points: {', '.join(map(str, names))}); map them with --map 'their=ours,...'")
    return ours


def _standard_plane_attribute(annotation: dict, where: str) -> int | None:
    attributes = annotation.get("attributes")
    if not isinstance(attributes, dict):
        return None
    for key, value in attributes.items():
        if normalise_point_name(key) in ("standard_plane", "standard", "graf_standard_plane"):
            text = str(value).strip().lower()
            if text in _YES:
                return 1
            if text in _NO:
                return 0
            raise DataError(f"{where}: attribute {key}={value!r} is not yes/no")
    return None


def _find_image(file_name: str, images_dir: Path) -> Path | None:
    """The image file for a COCO file_name: as given under images_dir, under images_dir/images, or its base name."""
    relative = Path(file_name.replace("\\", "/"))
    candidates = [images_dir / relative, images_dir / "images" / relative, images_dir / relative.name,
                  images_dir / "images" / relative.name]
    if relative.is_absolute():
        candidates.insert(0, relative)
    return next((c for c in candidates if c.is_file()), None)


def import_coco(coco_json: str | os.PathLike, out_csv: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                mapping: Mapping[str, str] | None = None, patient_id: str = "", sweep_id: str = "",
                standard_plane_default: int | None = 1) -> CocoImport:
    """Convert a COCO-keypoints export into a labels.csv.

    Inputs: ``coco_json`` the export; ``out_csv`` the labels.csv to write (image paths relative to its folder);
    ``images_dir`` where the images are (default: the JSON's folder, then its parent, each also with
    ``images/``); ``mapping`` {their point name: ours} over ``DEFAULT_NAME_MAP``; ``patient_id`` / ``sweep_id``
    for every row (an image entry's own ``patient_id`` / ``sweep_id`` field wins; default sweep: the image's
    sub-folder); ``standard_plane_default`` 1 / 0 / None (empty) for annotations without a standard_plane
    attribute. Images without any annotation get no measurements and an empty standard_plane.
    Output: ``CocoImport``. Raises DataError (one line) on a malformed file, an unmapped landmark, a missing
    image, or a frame whose landmarks give no geometry (naming the image).
    """
    path = Path(coco_json)
    data = _load_json(path)
    user_map = {normalise_point_name(k): v for k, v in (mapping or {}).items()}
    out_csv = Path(out_csv)
    search_dirs = [Path(images_dir)] if images_dir is not None else [path.parent, path.parent.parent]
    if images_dir is not None and not search_dirs[0].is_dir():
        raise DataError(f"image folder not found: {search_dirs[0]}")

    categories: dict = {}
    for category in data.get("categories", []):
        if isinstance(category, dict) and isinstance(category.get("keypoints"), list):
            categories[category.get("id")] = category
    landmark_order: dict = {}

    images: dict = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
            raise DataError(f"COCO file {path}: every image needs an 'id' and a 'file_name' (got {entry!r:.80})")
        if entry["id"] in images:
            raise DataError(f"COCO file {path}: image id {entry['id']!r} appears twice")
        images[entry["id"]] = entry
    if not images:
        raise DataError(f"COCO file {path} lists no images")

    points: dict = {image_id: {} for image_id in images}
    plane: dict = {image_id: None for image_id in images}
    annotated: set = set()
    for annotation in data.get("annotations", []):
        if not isinstance(annotation, dict) or "keypoints" not in annotation:
            continue  # boxes / polygons of the same export carry no landmarks
        image_id = annotation.get("image_id")
        if image_id not in images:
            raise DataError(f"COCO file {path}: an annotation names image id {image_id!r}, which is not in 'images'")
        where = images[image_id]["file_name"]
        category_id = annotation.get("category_id")
        if category_id not in categories:
            raise DataError(f"{where}: annotation category {category_id!r} has no keypoint names in 'categories'")
        if category_id not in landmark_order:
            landmark_order[category_id] = _category_landmarks(categories[category_id], user_map, path)
        ours = landmark_order[category_id]
        flat = annotation["keypoints"]
        if not isinstance(flat, list) or len(flat) != 3 * len(ours):
            raise DataError(f"{where}: keypoints must be {3 * len(ours)} numbers (x, y, v for each of "
                            f"{len(ours)} points), got {len(flat) if isinstance(flat, list) else type(flat).__name__}")
        annotated.add(image_id)
        for k, name in enumerate(ours):
            try:
                x, y, v = (float(c) for c in flat[3 * k: 3 * k + 3])
            except (TypeError, ValueError):
                raise DataError(f"{where}: keypoint {k} is not three numbers: {flat[3 * k: 3 * k + 3]!r}") from None
            if name is None or v <= 0:
                continue  # v = 0: not labelled
            if name in points[image_id]:
                raise DataError(f"{where}: landmark {name} is given by two annotations")
            # COCO coordinates are continuous (pixel 0 spans 0..1): shift so pixel centres sit at integers.
            points[image_id][name] = (x - 0.5, y - 0.5)
        attribute = _standard_plane_attribute(annotation, where)
        if attribute is not None:
            plane[image_id] = attribute

    rows, notes, measured = [], [], 0
    missing_images = []
    for image_id, entry in images.items():
        file_name = entry["file_name"]
        found = next((f for f in (_find_image(file_name, d) for d in search_dirs) if f is not None), None)
        if found is None:
            missing_images.append(file_name)
            continue
        relative = Path(os.path.relpath(found.resolve(), out_csv.resolve().parent)).as_posix()
        default_sweep = Path(file_name.replace("\\", "/")).parent.as_posix()
        row_sweep = str(entry.get("sweep_id", sweep_id or ("" if default_sweep == "." else default_sweep)))
        row_patient = str(entry.get("patient_id", patient_id))
        if image_id in annotated:
            standard = plane[image_id] if plane[image_id] is not None else standard_plane_default
        else:
            standard = None
        row = label_row(relative, points[image_id], standard, row_patient, row_sweep, where=file_name)
        if image_id not in annotated:
            row["note"] = "no keypoint annotation (no measurements)"
        if row["note"]:
            notes.append(f"{file_name}: {row['note']}")
        else:
            measured += 1
        rows.append(row)
    if missing_images:
        more = f" (and {len(missing_images) - 1} more)" if len(missing_images) > 1 else ""
        where = ", ".join(str(d) for d in search_dirs)
        raise DataError(f"image {missing_images[0]} of {path.name} not found under {where}{more}; pass --images DIR")
    write_labels_csv(out_csv, rows)
    return CocoImport(csv_path=out_csv, frames=len(rows), measured=measured, notes=notes)
