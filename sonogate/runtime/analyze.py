"""Batch analysis of stored studies, any task's bundle: DICOM (or video / image) files in; JSON, a DICOM SR, a
DICOM SC and one CSV row per case out.

    from sonogate.runtime.analyze import AnalyzeOptions, analyze
    summary = analyze(["studies/"], AnalyzeOptions(bundle="demo/bundle", out="out/analysis"))
    summary.exit_code        # 0, or 2 when any input failed

Per input (``sonogate analyze FILE_OR_FOLDER --bundle B [--xr-bundle XB] --out DIR``), one code path: the bundle's
model comes from ``create_model`` (``sonogate.runtime.model_api``) and the input goes to the model that takes its
kind of image (the task's modality: ultrasound or radiograph); ``--bundle`` may be any task's bundle, and
``--xr-bundle`` adds a radiograph model beside an ultrasound one.

* a task decided over a window of frames (decision unit "frame_window", the ultrasound cine): every frame, in
  order, through one ``Session`` that is reset for each file (state, ROI tracker, frame counter); frames are
  timed at the file's Frame Time (30 fps when it has none; a video's own frame rate), so the result is what the
  live runtime would show at the end of the replayed cine. The per-sweep result is the last event's aggregated
  measurements, bounds, Graf type and recommendation, with the count of usable frames (model ran, in
  distribution, standard-plane probability >= the calibration's quality threshold). The ROI is the file's
  Ultrasound Region when it lies inside the image, else the runtime's detection.
* a task decided per image (e.g. the pelvic radiograph): the model's ``analyze(frame, image, notes)`` gives the
  result (for hip_xr: acetabular index and centre-edge angle per hip with their bounds, IHDI and verdict); its
  ``report_groups`` and ``annotate`` give the SR groups and the SC. A radiograph without a radiograph model is
  reported as "no X-ray model" with no numbers.
* outputs in DIR: ``<name>.json`` (no patient data), ``<name>.sr.dcm`` (TID 1500 measurement report),
  ``<name>.sc.dcm`` (secondary capture of the annotated frame; DICOM inputs only), and ``analysis.csv`` with one
  row per input: ``input`` first, then the tasks' ``analyze_columns`` (manifest v2, or the task spec), bounds and
  decision. When every column of the tasks in use is one of the two original tasks' columns (hip_us, hip_xr) the
  CSV keeps its original layout (``CSV_COLUMNS``). A file that fails is reported on stderr in one line and in the
  CSV with its error; the batch goes on; the exit code is 2 when any input failed.

Privacy: JSON, CSV and messages carry file names, UIDs of the objects, measurements and tag problems - never
patient names, IDs or birth dates (those are copied only into the SR / SC for PACS linkage).
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sonogate import __version__
from sonogate.data.dicom import DicomImage, is_dicom_file, read_dicom
from sonogate.errors import DataError, SonogateError
from sonogate.measurements import US_MEASUREMENTS, XR_MEASUREMENTS
from sonogate.runtime.model_api import IMAGE_KINDS, Model, described_manifest, load_image_model
from sonogate.runtime.session import NOT_CALIBRATED_REASON, SCANNER_NOT_CALIBRATED, ScannerDomainCheck

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# non-image case files (point clouds, arrays): handed to the task's wrapper as paths, which reads them
DATA_SUFFIXES = (".ply", ".npy")
NO_XRAY_MODEL = "no X-ray model"
HIPS = ("right", "left")
_DEFAULT_FRAME_TIME_MS = 1000.0 / 30.0


@dataclass
class AnalyzeOptions:
    bundle: str | Path
    out: str | Path
    xr_bundle: str | Path | None = None
    device: str = "auto"
    threads: int = 1
    progress: bool = True
    write_dicom: bool = True


@dataclass
class AnalyzeSummary:
    records: list[dict[str, Any]] = field(default_factory=list)
    csv_path: Path | None = None

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "error"]

    @property
    def exit_code(self) -> int:
        return 2 if self.failed else 0


# -- inputs ---------------------------------------------------------------------------------------------------
def find_inputs(targets: Iterable[str | Path], exclude: Path | None = None,
                images: bool = False) -> list[tuple[Path, str]]:
    """(path, output stem) per input file: a file as given (DICOM, or a video / image file), or every
    ``*.dcm``/``*.dicom`` file (and suffix-less file with the DICM marker) under a folder, sorted; with ``images``
    (a task decided per image) also every image file (png, jpg, ...) under a folder. Stems are unique: sub-folders
    join with "__". Raises DataError when a target does not exist or a folder holds no input file."""
    found: list[tuple[Path, str]] = []
    used: set[str] = set()
    exclude = exclude.resolve() if exclude is not None else None
    for target in targets:
        target = Path(target)
        if target.is_file():
            suffix = target.suffix.lower()
            stem = target.stem if suffix in VIDEO_SUFFIXES + IMAGE_SUFFIXES else _strip_suffix(target.name)
            candidates = [(target, stem)]
        elif target.is_dir():
            candidates = []
            for path in sorted(p for p in target.rglob("*") if p.is_file()):
                if exclude is not None and (exclude == path.resolve().parent or exclude in path.resolve().parents):
                    continue
                if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
                    continue
                rel = path.relative_to(target)
                if path.suffix.lower() in DICOM_SUFFIXES or (not path.suffix and is_dicom_file(path)):
                    candidates.append((path, "__".join([*rel.parts[:-1], _strip_suffix(rel.name)])))
                elif images and path.suffix.lower() in IMAGE_SUFFIXES:
                    candidates.append((path, "__".join([*rel.parts[:-1], path.stem])))
            if not candidates:
                raise DataError(f"no DICOM files (*.dcm, *.dicom){' or images' if images else ''} found in {target}")
        else:
            raise DataError(f"input not found: {target}")
        for path, stem in candidates:
            unique, n = stem, 2
            while unique in used:
                unique, n = f"{stem}-{n}", n + 1
            used.add(unique)
            found.append((path, unique))
    return found


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in DICOM_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def find_cases(targets: Iterable[str | Path], views: tuple[str, ...],
               exclude: Path | None = None) -> list[tuple[dict[str, Path], str]]:
    """Cases of a task with several image inputs (e.g. a radiograph pair "ap", "lat"): (view -> file, output
    stem) per case folder. A target folder whose files name the views is one case; otherwise each of its
    sub-folders that does is one. A file names a view when its stem (case-insensitive) is the view or ends with
    "_<view>" (``ap.dcm``, ``case7_lat.png``); a case must have exactly one file per view. Raises DataError when a
    target does not exist or holds no complete case."""
    exclude = exclude.resolve() if exclude is not None else None
    wanted = tuple(v.lower() for v in views)

    def view_files(folder: Path) -> dict[str, list[Path]]:
        found: dict[str, list[Path]] = {}
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            suffix = path.suffix.lower()
            if (suffix not in DICOM_SUFFIXES + IMAGE_SUFFIXES + DATA_SUFFIXES
                    and not (not suffix and is_dicom_file(path))):
                continue
            stem = (path.stem if suffix else path.name).lower()
            for view in wanted:
                if stem == view or stem.endswith(f"_{view}"):
                    found.setdefault(view, []).append(path)
        return found

    cases: list[tuple[dict[str, Path], str]] = []
    used: set[str] = set()
    for target in targets:
        target = Path(target)
        if not target.is_dir():
            raise DataError(f"a case of views {', '.join(views)} is a folder; not found: {target}")
        folders = [target] + sorted(p for p in target.rglob("*") if p.is_dir())
        for folder in folders:
            if exclude is not None and (exclude == folder.resolve() or exclude in folder.resolve().parents):
                continue
            found = view_files(folder)
            if not found:
                continue
            doubled = [v for v, paths in found.items() if len(paths) > 1]
            missing = [v for v in wanted if v not in found]
            if doubled or missing:
                raise DataError(f"case folder {folder}: " + "; ".join(
                    ([f"several files for view(s) {', '.join(doubled)}"] if doubled else [])
                    + ([f"no file for view(s) {', '.join(missing)}"] if missing else [])))
            stem = "__".join(folder.relative_to(target).parts) or target.name
            unique, n = stem, 2
            while unique in used:
                unique, n = f"{stem}-{n}", n + 1
            used.add(unique)
            cases.append(({view: found[view.lower()][0] for view in views}, unique))
    if not cases:
        raise DataError(f"no case folder with one file per view ({', '.join(views)}) in "
                        f"{', '.join(str(t) for t in targets)}")
    return cases


def task_manifest(bundle_path: str | Path) -> dict[str, Any]:
    """The bundle's manifest as version 2 describes it, read without verifying the files (which loading the models
    does); {} for a bundle that cannot be read (loading the models reports that)."""
    from sonogate.core.bundle import load_bundle

    try:
        return described_manifest(load_bundle(bundle_path, verify=False))
    except SonogateError:
        return {}


def case_views(bundle_path: str | Path, manifest: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The views (else input names) of a task decided per case with several inputs (images or point clouds);
    () for any other bundle. ``manifest``: ``task_manifest(bundle_path)`` when the caller has it."""
    manifest = task_manifest(bundle_path) if manifest is None else manifest
    if not manifest or (manifest.get("decision") or {}).get("unit") == "frame_window":
        return ()
    inputs = list(manifest.get("inputs") or ())
    if len(inputs) < 2:
        return ()
    return tuple(str(entry.get("view") or entry["name"]) for entry in inputs)


def decided_per_image(bundle_path: str | Path, manifest: dict[str, Any] | None = None) -> bool:
    """Whether the bundle's task decides per image (its folders' image files are inputs, not only DICOM)."""
    manifest = task_manifest(bundle_path) if manifest is None else manifest
    return (manifest.get("decision") or {}).get("unit") == "image"


# -- non-DICOM inputs ---------------------------------------------------------------------------------------------
class VideoStudy:
    """An ultrasound cine stored as a video file, shaped like the ``DicomImage`` fields the analyser reads (no
    Ultrasound Region, laterality or patient data; timed at the video's own frame rate)."""

    kind = "ultrasound"
    region = None
    region_clipped = False
    laterality = None
    patient_orientation = None

    def __init__(self, path: Path, n_frames: int, fps: float):
        self.path = path
        self.name = path.name
        self.n_frames = n_frames
        self.frame_time_ms = 1000.0 / fps if fps > 0 else None
        self.warnings: list[str] = []

    @classmethod
    def open(cls, path: Path) -> VideoStudy:
        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                raise DataError(f"{path.name}: not a readable video")
            n_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        finally:
            capture.release()
        return cls(path, n_frames, fps)

    def iter_frames(self):
        capture = cv2.VideoCapture(str(self.path))
        try:
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    return
                yield frame
        finally:
            capture.release()


class StillImage:
    """One PNG / JPEG / TIFF image (e.g. a radiograph from a frame grabber): one BGR frame, no DICOM header."""

    laterality = None
    patient_orientation = None
    n_frames = 1

    def __init__(self, path: Path, kind: str, frame: np.ndarray):
        self.name, self.kind, self.frame = path.name, kind, frame
        self.warnings: list[str] = []

    @classmethod
    def open(cls, path: Path, kind: str) -> StillImage:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise DataError(f"{path.name}: not a readable image")
        return cls(path, kind, frame)

    def iter_frames(self):
        yield self.frame


# -- models ----------------------------------------------------------------------------------------------------
def XrayModel(bundle_path: str | Path, device: str = "auto", threads: int = 1) -> Model:
    """The radiograph model of an X-ray bundle (the former class name): ``load_image_model(kind="radiograph")``."""
    return load_image_model(bundle_path, device=device, threads=threads, kind="radiograph")


# -- the analyser ---------------------------------------------------------------------------------------------
class Analyzer:
    """The models of a batch, by the kind of image they take: a ``Session`` for a frame-window task (the
    ultrasound cine), a per-image model (``load_image_model``) otherwise; ``analyze_file`` per input.

    ``options.bundle`` may be any task's bundle; ``options.xr_bundle`` adds a radiograph model (when it cannot be
    loaded, radiographs are reported as "no X-ray model" and the batch goes on).
    """

    def __init__(self, options: AnalyzeOptions):
        from sonogate.core.bundle import load_bundle

        self.options = options
        self.out = Path(options.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SonogateError(f"cannot create output folder {self.out}: {exc.strerror or exc}") from None
        self.notes: list[str] = []
        self.session = None
        self.models: dict[str, Model] = {}  # image kind -> per-image model
        self.missing: dict[str, str] = {}  # image kind -> why no model takes it
        manifest = described_manifest(load_bundle(options.bundle))
        kind = IMAGE_KINDS.get(str((manifest.get("task") or {}).get("modality", "")))
        if (manifest.get("decision") or {}).get("unit") == "frame_window":
            from sonogate.runtime.session import open_session

            self.session = open_session(options.bundle, device=options.device, threads=options.threads)
            note = getattr(self.session.engine, "device_note", "")
            if note:
                self.notes.append(note)
            if self.session.calibration_note:
                self.notes.append(self.session.calibration_note)
            kind = kind or "ultrasound"
        else:
            model = load_image_model(options.bundle, device=options.device, threads=options.threads, kind=kind)
            self.models[model.image_kind or "image"] = model
            self.notes.append(model.device_note)
        self.primary_kind = kind
        # what a plain image file is: the per-image bundle's kind, else a radiograph (for --xr-bundle)
        self.still_kind = next(iter(self.models)) if self.models else "radiograph"
        self.task_ids = [str((manifest.get("task") or {}).get("id", ""))]
        self.columns = list(manifest.get("analyze_columns") or ())
        if "radiograph" not in self.models:
            self.missing["radiograph"] = "no --xr-bundle given"
        if options.xr_bundle:
            try:
                model = load_image_model(options.xr_bundle, device=options.device, threads=options.threads,
                                         kind="radiograph")
            except SonogateError as exc:
                self.missing["radiograph"] = f"X-ray bundle not available: {exc}"
                self.notes.append(f"{NO_XRAY_MODEL}: {exc}")
            else:
                self.models["radiograph"] = model
                self.missing.pop("radiograph", None)
                self.task_ids.append(model.task)
                self.columns += [c for c in model.manifest.get("analyze_columns") or () if c not in self.columns]

    @property
    def xray(self) -> Model | None:
        """The radiograph model (None: radiographs are reported as "no X-ray model")."""
        return self.models.get("radiograph")

    @property
    def csv_columns(self) -> list[str]:
        """``CSV_COLUMNS`` when every task column fits the original layout, else ``input``, status columns, the
        tasks' analyze columns in order, then the output-file columns."""
        if self.columns and set(self.columns) <= set(CSV_COLUMNS):
            return list(CSV_COLUMNS)
        return GENERIC_HEAD + self.columns + [c for c in GENERIC_TAIL if c not in self.columns]

    # -- per file -----------------------------------------------------------------------------------------
    def analyze_file(self, path: Path, stem: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        record: dict[str, Any] = {"input": str(path), "status": "error", "error": None, "kind": None,
                                  "sonogate_version": __version__}
        try:
            suffix = path.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                image = VideoStudy.open(path)
            elif suffix in IMAGE_SUFFIXES:
                image = StillImage.open(path, self.still_kind)
            else:
                image = read_dicom(path, load_frames=False)
                record["dicom"] = image.summary()
                record["source_sop_instance_uid"] = image.sop_instance_uid
            record["kind"] = image.kind
            record["warnings"] = image.warnings
            if image.kind == "ultrasound" and self.session is not None:
                self._ultrasound(image, stem, record)
            elif image.kind in self.models:
                self._image_case(self.models[image.kind], image, stem, record)
            elif image.kind == "radiograph":
                record.update({"status": "no_xray_model",
                               "result": {"recommendation": NO_XRAY_MODEL, "reason": self.missing["radiograph"],
                                          "hips": None}})
            elif image.kind == "ultrasound":
                raise DataError(f"{path.name}: an ultrasound, but the bundle's task ({', '.join(self.task_ids)}) "
                                f"does not take ultrasound")
            else:
                modality = getattr(image, "modality", None) or "missing"
                raise DataError(f"{path.name}: neither an ultrasound nor a radiograph (Modality {modality}, "
                                f"SOP class {getattr(image, 'sop_class_name', None)})")
        except SonogateError as exc:
            record["status"] = "error"
            record["error"] = _one_line(str(exc))
        except MemoryError:
            record["status"] = "error"
            record["error"] = f"{path.name}: not enough memory"
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
            record["status"] = "error"
            record["error"] = _one_line(f"{path.name}: internal error: {type(exc).__name__}: {exc}")
        record["seconds"] = round(time.perf_counter() - t0, 3)
        record.setdefault("warnings", [])
        return self._write_record(record, stem)

    def analyze_case(self, files: dict[str, Path], stem: str) -> dict[str, Any]:
        """One case of a task with several image inputs: each view's file read (DICOM or image), the views through
        the per-image model together; the SR / SC refer to the first view's DICOM (when it is one)."""
        t0 = time.perf_counter()
        model = next(iter(self.models.values()))
        first = next(iter(files.values()))
        label = str(first.parent)
        record: dict[str, Any] = {"input": label, "status": "error", "error": None, "kind": "case",
                                  "sonogate_version": __version__, "files": {v: p.name for v, p in files.items()},
                                  "warnings": []}
        try:
            frames, sources = {}, {}
            for view, path in files.items():
                if path.suffix.lower() in DATA_SUFFIXES:
                    sources[view] = frames[view] = path  # the task's wrapper reads its own data files
                    continue
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    sources[view] = StillImage.open(path, self.still_kind)
                else:
                    sources[view] = read_dicom(path, load_frames=False)
                    record["warnings"] += [f"{view}: {w}" for w in sources[view].warnings]
                frames[view] = next(iter(sources[view].iter_frames()))
            notes: list[str] = []
            result = model.analyze(frames, sources, notes)
            record["warnings"] += notes
            self._write_task_outputs(model, stem, result, frames, record)
            algorithm = model.algorithm()
            record.update({"status": "ok", "frames": {"total": len(frames), "processed": len(frames)},
                           "result": result, "model": algorithm.to_json()})
            source = sources[next(iter(files))]
            if self.options.write_dicom and isinstance(source, DicomImage):
                annotated = model.annotate(frames[next(iter(files))], result, source)
                self._write_dicom(source, stem, model.report_groups(result), annotated, algorithm, record)
        except SonogateError as exc:
            record["error"] = _one_line(f"{label}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
            record["error"] = _one_line(f"{label}: internal error: {type(exc).__name__}: {exc}")
        if record["error"]:
            record["status"] = "error"
        record["seconds"] = round(time.perf_counter() - t0, 3)
        return self._write_record(record, stem)

    def _write_record(self, record: dict[str, Any], stem: str) -> dict[str, Any]:
        """Write ``OUT/<stem>.json`` (named in the record's outputs); a write failure makes the record an error."""
        json_path = self.out / f"{stem}.json"
        record.setdefault("outputs", {})["json"] = json_path.name
        try:
            json_path.write_text(json.dumps(_json_safe(record), indent=2) + "\n")
        except OSError as exc:
            record["status"] = "error"
            record["error"] = f"cannot write {json_path}: {exc.strerror or exc}"
        return record

    def _reset_session(self, image: DicomImage) -> tuple[int, int, int, int] | None:
        """Fresh per-file state: recommender, ROI tracker (the file's Ultrasound Region when it fits the image,
        else detection), frame counter."""
        from sonogate.runtime.roi import RoiTracker

        session = self.session
        session.reset()
        roi = image.region if image.region is not None and not image.region_clipped else None
        session.roi_tracker = RoiTracker(manual=roi)
        session.last_roi = roi
        session.frame_index = 0
        return roi

    def _ultrasound(self, image: DicomImage, stem: str, record: dict[str, Any]) -> None:
        from sonogate.runtime.dicom_report import AlgorithmInfo, ReportGroup

        session = self.session
        roi = self._reset_session(image)
        frame_time_ms = image.frame_time_ms or _DEFAULT_FRAME_TIME_MS
        quality_threshold = float(session.recommender.aggregation.quality_threshold)
        counts = {"total": image.n_frames, "processed": 0, "usable": 0, "faulted": 0, "out_of_distribution": 0}
        timeline: list[dict[str, Any]] = []
        event: dict[str, Any] | None = None
        last_frame: np.ndarray | None = None
        t_start = time.perf_counter()
        image_check = session.engine.image_ood
        image_checked = image_failed = 0
        for index, frame in enumerate(image.iter_frames()):
            event = session.process(frame, t_capture=t_start + index * frame_time_ms / 1000.0)
            counts["processed"] += 1
            if image_check is not None and event.get("image_ood_distance") is not None:
                image_checked += 1
                image_failed += not event["image_ood_distance"] <= image_check.threshold
            if event.get("fault"):
                counts["faulted"] += 1
            elif event.get("out_of_distribution"):
                counts["out_of_distribution"] += 1
            elif (event.get("plane_probability") or 0.0) >= quality_threshold:
                counts["usable"] += 1
            if not timeline or timeline[-1]["recommendation"] != event["recommendation"]:
                timeline.append({"frame": index, "recommendation": event["recommendation"],
                                 "reason": event.get("reason")})
            last_frame = frame
        if event is None or last_frame is None:
            raise DataError(f"{image.name}: no frames")
        if not isinstance(image, DicomImage):
            counts["total"] = counts["processed"]  # a video's header frame count is an estimate
        counts["accepted_in_final_window"] = int(event.get("accepted_frames") or 0)
        candidate = event.get("candidate")
        # A stored cine is often shorter than the live session's 45-frame window: judge the whole file by the
        # live rule's share, so a sweep from an unknown scanner says why it was refused, not only "out of
        # distribution" frame by frame
        scanner_status = event.get("scanner_status")
        if image_checked and image_failed / image_checked >= ScannerDomainCheck.ENTER_SHARE:
            scanner_status = SCANNER_NOT_CALIBRATED
            if event["recommendation"] != "no_recommendation":
                event = dict(event, recommendation="insufficient_image", candidate="insufficient_image",
                             reason=NOT_CALIBRATED_REASON, measurements=None, graf_type=None)
                candidate = event["candidate"]
        counts["image_check_failed"] = image_failed
        if candidate and candidate != event["recommendation"]:
            # the displayed state changes only after confirming frames; say why the cine ended where it did
            event = dict(event, reason=f"{candidate} not confirmed by the end of the cine "
                                       f"({event.get('reason') or 'no reason given'})")
        calibration = session.calibration
        record.update({
            "status": "ok",
            "frames": counts,
            "roi": {"box": event.get("roi"), "source": "ultrasound_region" if roi is not None else "detected"},
            "result": {
                "recommendation": event["recommendation"],
                "candidate": candidate,
                "reason": event.get("reason"),
                "graf_type": event.get("graf_type"),
                "measurements": event.get("measurements"),
                "plane_probability_last": event.get("plane_probability"),
                "fault": event.get("fault"),
                "scanner_status": scanner_status,
            },
            "policy": None if calibration is None else {
                "delta": calibration.delta, "rule": calibration.rule, "mode": calibration.mode,
                "thresholds": calibration.thresholds, "aggregation": session.recommender.aggregation.to_json()},
            "timeline": timeline,
            "model": AlgorithmInfo.from_session(session).to_json(),
            "timing": {"frame_time_ms": image.frame_time_ms, "assumed_frame_time_ms": None if image.frame_time_ms
                       else round(_DEFAULT_FRAME_TIME_MS, 3),
                       "analysis_s": round(time.perf_counter() - t_start, 3),
                       "ms_per_frame": round((time.perf_counter() - t_start) * 1e3 / counts["processed"], 2)},
        })
        if self.options.write_dicom and isinstance(image, DicomImage):
            algorithm = AlgorithmInfo.from_session(session)
            group = ReportGroup.from_event(event, laterality=image.laterality,
                                           delta=None if calibration is None else float(calibration.delta))
            annotated = render_sweep(last_frame, session.last_roi, event, image)
            self._write_dicom(image, stem, [group], annotated, algorithm, record)

    def _image_case(self, model: Model, image, stem: str, record: dict[str, Any]) -> None:
        """One image through a per-image model: its ``analyze`` result, SR groups and annotated SC."""
        frame = next(iter(image.iter_frames()))
        notes: list[str] = []
        result = model.analyze(frame, image, notes)
        record["warnings"] = list(record.get("warnings", [])) + notes
        self._write_task_outputs(model, stem, result, frame, record)
        algorithm = model.algorithm()
        record.update({
            "status": "ok",
            "frames": {"total": image.n_frames, "processed": 1},
            "result": result,
            "model": algorithm.to_json(),
        })
        if self.options.write_dicom and isinstance(image, DicomImage):
            groups = model.report_groups(result)
            annotated = model.annotate(frame, result, image)
            self._write_dicom(image, stem, groups, annotated, algorithm, record)

    def _write_task_outputs(self, model: Model, stem: str, result: Any, frames: Any, record: dict[str, Any]) -> None:
        """The files a task writes beside the JSON (e.g. a completed point cloud and its picture): the wrapper's
        ``write_outputs(out_dir, stem, result, frames) -> {kind: file name}``, when it has one."""
        writer = getattr(model, "write_outputs", None)
        if writer is None:
            return
        try:
            written = writer(self.out, stem, result, frames) or {}
        except OSError as exc:
            raise SonogateError(f"cannot write the outputs of {stem} in {self.out}: {exc.strerror or exc}") from None
        record.setdefault("outputs", {}).update({str(k): str(v) for k, v in written.items()})

    def _write_dicom(self, image, stem, groups, annotated, algorithm, record) -> None:
        from sonogate.runtime.dicom_report import write_sc, write_sr

        sr_path, sc_path = self.out / f"{stem}.sr.dcm", self.out / f"{stem}.sc.dcm"
        sr = write_sr(sr_path, image, groups, algorithm)
        sc = write_sc(sc_path, image, annotated, algorithm)
        record.setdefault("outputs", {}).update({"sr": sr_path.name, "sc": sc_path.name})
        record["dicom_outputs"] = {"sr_sop_instance_uid": str(sr.SOPInstanceUID),
                                   "sc_sop_instance_uid": str(sc.SOPInstanceUID)}

    # -- batch --------------------------------------------------------------------------------------------
    def run(self, inputs: list[tuple[Path | dict[str, Path], str]]) -> AnalyzeSummary:
        """Analyse every input (a file, or a case: view -> file) and write analysis.csv, one row each."""
        from tqdm import tqdm

        summary = AnalyzeSummary(csv_path=self.out / "analysis.csv")
        try:
            handle = open(summary.csv_path, "w", newline="")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise SonogateError(f"cannot write {summary.csv_path}: {exc.strerror or exc}") from None
        with handle:
            writer = csv.DictWriter(handle, fieldnames=self.csv_columns, extrasaction="ignore")
            writer.writeheader()
            bar = tqdm(total=len(inputs), unit="file", desc="analyze", disable=not self.options.progress,
                       file=sys.stderr, dynamic_ncols=True)
            with bar:
                for path, stem in inputs:
                    record = (self.analyze_case(path, stem) if isinstance(path, dict)
                              else self.analyze_file(path, stem))
                    summary.records.append(record)
                    writer.writerows(csv_rows(record))
                    handle.flush()
                    if record["status"] == "error":
                        bar.write(f"sonogate: {record['error']}", file=sys.stderr)
                    bar.update(1)
        return summary


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# -- CSV ------------------------------------------------------------------------------------------------------
def _measurement_columns() -> list[str]:
    columns = []
    for spec in US_MEASUREMENTS:
        columns += [spec.name, f"{spec.name}_{spec.bound_side}_bound"]
    for hip in HIPS:
        for spec in XR_MEASUREMENTS:
            columns += [f"{hip}_{spec.name}", f"{hip}_{spec.name}_{spec.bound_side}_bound"]
    for hip in HIPS:
        columns += [f"{hip}_ihdi", f"{hip}_xr_verdict"]
    return columns


CSV_COLUMNS = (["input", "kind", "status", "error", "frames", "usable_frames", "recommendation", "candidate",
                "reason", "graf_type"] + _measurement_columns()
               + ["mm_per_pixel_x", "mm_per_pixel_y", "warnings", "json", "sr", "sc", "seconds"])
# a task whose columns are not all above: input, status, the task's analyze_columns, then the output files
GENERIC_HEAD = ["input", "kind", "status", "error"]
GENERIC_TAIL = ["recommendation", "reason", "warnings", "json", "sr", "sc", "seconds"]


def csv_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The CSV rows of one input: one, or one per entry of the result's ``rows`` (e.g. one per hip), each with
    the input's own columns and that entry's task columns. An entry may set its own ``status`` and ``error`` (a
    hip refused while the other is measured): they replace the input's for that row."""
    base = csv_row(record)
    rows = (record.get("result") or {}).get("rows") if record.get("status") != "error" else None
    if not rows:
        return [base]
    return [{**base, **{name: value if isinstance(value, str) else _fmt(value) for name, value in row.items()}}
            for row in rows]


def csv_row(record: dict[str, Any]) -> dict[str, Any]:
    result = record.get("result") or {}
    frames = record.get("frames") or {}
    dicom = record.get("dicom") or {}
    outputs = record.get("outputs") or {}
    spacing = dicom.get("mm_per_pixel") or [None, None]
    row: dict[str, Any] = {
        "input": record.get("input"), "kind": record.get("kind") or "", "status": record.get("status"),
        "error": record.get("error") or "", "frames": frames.get("total", dicom.get("frames", "")),
        "usable_frames": frames.get("usable", ""), "recommendation": result.get("recommendation") or "",
        "candidate": result.get("candidate") or "",
        "reason": result.get("reason") or "", "graf_type": result.get("graf_type") or "",
        "mm_per_pixel_x": _fmt(spacing[0]), "mm_per_pixel_y": _fmt(spacing[1]),
        "warnings": " | ".join(record.get("warnings") or []), "json": outputs.get("json", ""),
        "sr": outputs.get("sr", ""), "sc": outputs.get("sc", ""), "seconds": record.get("seconds", ""),
    }
    measurements = result.get("measurements") or {}
    for spec in US_MEASUREMENTS:
        values = measurements.get(spec.name) or {}
        row[spec.name] = _fmt(values.get("value"))
        row[f"{spec.name}_{spec.bound_side}_bound"] = _fmt(values.get(f"{spec.bound_side}_bound"))
    hips = result.get("hips") or {}
    for hip in HIPS:
        for spec in XR_MEASUREMENTS:
            values = (hips.get(hip) or {}).get(spec.name) or {}
            row[f"{hip}_{spec.name}"] = _fmt(values.get("value"))
            row[f"{hip}_{spec.name}_{spec.bound_side}_bound"] = _fmt(values.get(f"{spec.bound_side}_bound"))
        row[f"{hip}_ihdi"] = _fmt(((hips.get(hip) or {}).get("ihdi") or {}).get("grade"))
        row[f"{hip}_xr_verdict"] = ((hips.get(hip) or {}).get("verdict") or {}).get("value") or ""
    # a task's own analyze columns (values as the model's result names them)
    for name, value in (result.get("columns") or {}).items():
        row[name] = value if isinstance(value, str) else _fmt(value)
    return row


def _fmt(value) -> str:
    if value is None:
        return ""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{value:.6g}" if math.isfinite(value) else ""


# -- annotation -----------------------------------------------------------------------------------------------
def render_sweep(frame_bgr: np.ndarray, roi, event: dict, image: DicomImage) -> np.ndarray:
    """The live overlay (``OverlayRenderer``) of the sweep's last frame and event, adapted to a stored study:
    the hip side comes from the DICOM laterality (the runtime's default "right" is not shown as a fact), and the
    live-only lines (latency, keys) are replaced."""
    from sonogate.runtime.overlay import OverlayRenderer

    shown = dict(event, latency_ms=None, fps=None, hip=image.laterality or "R")
    canvas = OverlayRenderer().render(frame_bgr, roi, shown)
    width = frame_bgr.shape[1]
    font = cv2.FONT_HERSHEY_SIMPLEX
    side = {"R": "right (DICOM)", "L": "left (DICOM)"}.get(image.laterality or "", "side not recorded")
    canvas[:40, width:] = 24
    cv2.putText(canvas, f"hip: {side}", (width + 12, 28), font, 0.55, (230, 230, 230), 1, cv2.LINE_AA)
    canvas[-28:, width:] = 24
    cv2.putText(canvas, "stored study: algorithm output, unverified", (width + 12,
                canvas.shape[0] - 12), font, 0.36, (150, 150, 150), 1, cv2.LINE_AA)
    return canvas


# -- entry point ----------------------------------------------------------------------------------------------
def analyze(targets: Iterable[str | Path], options: AnalyzeOptions) -> AnalyzeSummary:
    """Run the batch. Raises SonogateError (one line) for problems with the whole run (no inputs, bad bundle,
    unwritable output folder); per-file problems land in the records and the CSV."""
    targets = [Path(t) for t in ([targets] if isinstance(targets, (str, Path)) else targets)]
    manifest = task_manifest(options.bundle)
    views = case_views(options.bundle, manifest)
    if views:
        inputs: list = find_cases(targets, views, exclude=Path(options.out))
    else:
        inputs = find_inputs(targets, exclude=Path(options.out), images=decided_per_image(options.bundle, manifest))
    analyzer = Analyzer(options)
    for note in analyzer.notes:
        print(f"note: {note}", file=sys.stderr)
    return analyzer.run(inputs)
