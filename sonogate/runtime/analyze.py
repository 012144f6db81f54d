"""Batch analysis of stored studies: DICOM files in; JSON, a DICOM SR, a DICOM SC and one CSV row per input out.

    from sonogate.runtime.analyze import AnalyzeOptions, analyze
    summary = analyze(["studies/"], AnalyzeOptions(bundle="demo/bundle", out="out/analysis"))
    summary.exit_code        # 0, or 2 when any input failed

Per input (``sonogate analyze FILE_OR_FOLDER --bundle B [--xr-bundle XB] --out DIR``):

* ultrasound (single frame or cine): every frame, in order, through one ``Session`` that is reset for each
  file (state, ROI tracker, frame counter); frames are timed at the file's Frame Time (30 fps when it has
  none), so the result is what the live runtime would show at the end of the replayed cine. The per-sweep
  result is the last event's aggregated measurements, bounds, Graf type and recommendation, with the count of
  usable frames (model ran, in distribution, standard-plane probability >= the calibration's quality threshold).
  The ROI is the file's Ultrasound Region when it lies inside the image, else the runtime's detection.
* radiograph (CR/DX): with ``--xr-bundle``, acetabular index and centre-edge angle per hip with their bounds
  (``XrayModel``); without one, or when it cannot be loaded, the output says "no X-ray model" and carries no
  numbers.
* outputs in DIR: ``<name>.json`` (no patient data), ``<name>.sr.dcm`` (TID 1500 measurement report),
  ``<name>.sc.dcm`` (secondary capture of the annotated frame), and ``analysis.csv`` with one row per input.
  A file that fails is reported on stderr in one line and in the CSV with its error; the batch goes on; the
  exit code is 2 when any input failed.

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

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
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
def find_inputs(targets: Iterable[str | Path], exclude: Path | None = None) -> list[tuple[Path, str]]:
    """(path, output stem) per DICOM file: a file as given, or every ``*.dcm``/``*.dicom`` file (and suffix-less
    file with the DICM marker) under a folder, sorted. Stems are unique: sub-folders join with "__".
    Raises DataError when a target does not exist or a folder holds no DICOM file."""
    found: list[tuple[Path, str]] = []
    used: set[str] = set()
    exclude = exclude.resolve() if exclude is not None else None
    for target in targets:
        target = Path(target)
        if target.is_file():
            candidates = [(target, _strip_suffix(target.name))]
        elif target.is_dir():
            candidates = []
            for path in sorted(p for p in target.rglob("*") if p.is_file()):
                if exclude is not None and (exclude == path.resolve().parent or exclude in path.resolve().parents):
                    continue
                if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
                    continue
                if path.suffix.lower() in DICOM_SUFFIXES or (not path.suffix and is_dicom_file(path)):
                    rel = path.relative_to(target)
                    candidates.append((path, "__".join([*rel.parts[:-1], _strip_suffix(rel.name)])))
            if not candidates:
                raise DataError(f"no DICOM files (*.dcm, *.dicom) found in {target}")
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


# -- X-ray model ----------------------------------------------------------------------------------------------
class XrayModel:
    """The X-ray bundle with its optional calibration.json (``ai_deg`` side "upper", ``ce_deg`` side "lower")
    bound to it.

    Two bundle contracts (docs/xray.md):

    * whole pelvis (``xr_contract`` "whole_pelvis", what ``sonogate export`` writes for an X-ray run): the whole
      radiograph is letterboxed into the model, which measures both hips at once (Hilgenreiner's line through
      both triradiate cartilages) and also returns IHDI scores and 8 landmarks. When Patient Orientation's row
      direction is "R" (the patient's right on the image's right) the whole image is mirrored first and the
      landmarks are mapped back.
    * one hip (older bundles whose ``measurements`` are ``ai_deg``, ``ce_deg``): the radiograph is split at the
      vertical midline; each half, the patient's left one mirrored, goes through the model.

    Which side is the patient's right comes from Patient Orientation (row direction "L" or absent: radiographic
    convention, the patient's right on the image's left; "R": swapped). ``measure`` returns per hip
    ``ai_deg`` / ``ce_deg`` {value, lower_bound, upper_bound} (calibrated), ``verdict`` {value, reason} and, for
    whole-pelvis bundles, ``raw`` (model output before calibration), ``ihdi`` {grade, source} and ``landmarks``
    (name -> [x, y] pixels of the given image; landmark head only).
    """

    def __init__(self, bundle_path: str | Path, device: str = "auto", threads: int = 1):
        from sonogate.calibration.calfile import load_calibration
        from sonogate.errors import BundleError
        from sonogate.core.bundle import load_bundle, sha256_file
        from sonogate.runtime.xr import XR_THRESHOLDS, XrPredictor, is_whole_pelvis

        self.bundle = load_bundle(bundle_path)
        names = self.bundle.measurement_names
        self.whole_pelvis = is_whole_pelvis(self.bundle)
        if self.whole_pelvis:
            self.predictor = XrPredictor(self.bundle, device=device, threads=threads)
            self.backend, self.device_note = self.predictor.backend, self.predictor.device_note
            source = self.bundle.manifest.get("outputs", {}).get("ihdi_logits", {}).get("source")
            self.ihdi_source = source if source in ("geometry", "class_head") else "model"
        else:
            from sonogate.device.compute import create_backend
            from sonogate.runtime.engine import choose_variant
            from sonogate.runtime.preprocess import Preprocessor

            if not {"ai_deg", "ce_deg"} <= set(names):
                raise BundleError(f"X-ray bundle {bundle_path} outputs {', '.join(names)}, not ai_deg and ce_deg")
            self.backend, self.device_note = create_backend(
                self.bundle.model_path(choose_variant(self.bundle, "auto")), device=device, threads=threads)
            self.preprocessor = Preprocessor(self.bundle.preprocessing)
            self.ihdi_source = None
        self.names = names
        path = self.bundle.calibration_path
        self.calibration = load_calibration(path, bundle_hash=self.bundle.bundle_hash) if path.exists() else None
        self.calibration_sha256 = sha256_file(path) if self.calibration is not None else None
        self.thresholds = dict(XR_THRESHOLDS)
        if self.calibration is not None:
            self.thresholds.update({k: float(v) for k, v in self.calibration.thresholds.items() if k in XR_THRESHOLDS})

    @property
    def device_name(self) -> str:
        return self.backend.name

    def algorithm(self):
        from sonogate.runtime.dicom_report import AlgorithmInfo

        return AlgorithmInfo(bundle_sha256=self.bundle.bundle_hash, calibration_sha256=self.calibration_sha256,
                             device=self.device_name, task=self.bundle.task or "hip_xr",
                             delta=None if self.calibration is None else float(self.calibration.delta))

    def _bounded(self, name: str, value: float) -> dict[str, float | None]:
        """{value, lower_bound, upper_bound} of one raw prediction after the calibration (None = absent)."""
        entry: dict[str, float | None] = {"value": None, "lower_bound": None, "upper_bound": None}
        if math.isfinite(value):
            cal = None if self.calibration is None else self.calibration.measurements.get(name)
            if cal is None:
                entry["value"] = _round(value)
            else:
                entry["value"] = _round(cal.corrected(value))
                entry["lower_bound" if cal.side == "lower" else "upper_bound"] = _round(cal.bound(value))
        return entry

    def measure_hip(self, crop_bgr: np.ndarray) -> dict[str, dict[str, float | None]]:
        """One-hip bundles: AI and CE of one (right-facing) hip crop."""
        tensor = self.preprocessor(crop_bgr, None)
        outputs = self.backend.infer(tensor)
        raw = np.asarray(outputs["measurements"], dtype=np.float64).reshape(-1)
        return {name: self._bounded(name, float(value)) for name, value in zip(self.names, raw)
                if name in ("ai_deg", "ce_deg")}

    def _verdict(self, hip: dict) -> None:
        from sonogate.runtime.xr import hip_verdict

        ai = (hip.get("ai_deg") or {}).get("upper_bound")
        ce = (hip.get("ce_deg") or {}).get("lower_bound")
        values = {m: (hip.get(m) or {}).get("value") for m in ("ai_deg", "ce_deg")}
        value, reason = hip_verdict(ai, ce, (hip.get("ihdi") or {}).get("grade"), self.thresholds, values)
        hip["verdict"] = {"value": value, "reason": reason}

    def measure(self, frame_bgr: np.ndarray, image: DicomImage | None, notes: list[str]) -> dict[str, dict]:
        row_direction = ((image.patient_orientation if image is not None else None) or ("",))[0][:1]
        swapped = row_direction == "R"  # rows run toward the patient's right: the image's left is the patient's left
        if not swapped and row_direction != "L":
            notes.append("no Patient Orientation: assumed the radiographic convention (patient's right on the "
                         "image's left)")
        if not self.whole_pelvis:
            width = frame_bgr.shape[1]
            half = width // 2
            left_half, right_half = frame_bgr[:, :half], frame_bgr[:, width - half:]
            patient_right, patient_left = (right_half, left_half) if swapped else (left_half, right_half)
            hips = {"right": self.measure_hip(np.ascontiguousarray(patient_right)),
                    "left": self.measure_hip(np.ascontiguousarray(patient_left[:, ::-1]))}
        else:
            from sonogate.runtime.xr import mirror_points

            view = np.ascontiguousarray(frame_bgr[:, ::-1]) if swapped else frame_bgr
            pred = self.predictor.predict(view)
            hips = {}
            for side in HIPS:
                hips[side] = {m: self._bounded(m, pred.values[f"{m}_{side}"]) for m in ("ai_deg", "ce_deg")}
                hips[side]["raw"] = {m: _round(pred.values[f"{m}_{side}"]) for m in ("ai_deg", "ce_deg")}
                hips[side]["ihdi"] = {"grade": pred.ihdi_grade(side), "source": self.ihdi_source}
                if pred.landmarks:
                    suffix = f"_{side[0]}"
                    points = {n[: -len(suffix)]: p for n, p in pred.landmarks.items() if n.endswith(suffix)}
                    xy = np.array(list(points.values()), dtype=np.float64).reshape(-1, 2)
                    if swapped:
                        xy = mirror_points(xy, frame_bgr.shape[1])
                    hips[side]["landmarks"] = {n: [round(float(x), 2), round(float(y), 2)]
                                               for n, (x, y) in zip(points, xy)}
        for hip in hips.values():
            self._verdict(hip)
        return hips


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 3)


# -- the analyser ---------------------------------------------------------------------------------------------
class Analyzer:
    """Holds one ultrasound Session (and the optional X-ray model) for a batch; ``analyze_file`` per input."""

    def __init__(self, options: AnalyzeOptions):
        from sonogate.runtime.session import open_session

        self.options = options
        self.out = Path(options.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SonogateError(f"cannot create output folder {self.out}: {exc.strerror or exc}") from None
        self.session = open_session(options.bundle, device=options.device, threads=options.threads)
        self.notes: list[str] = []
        note = getattr(self.session.engine, "device_note", "")
        if note:
            self.notes.append(note)
        if self.session.calibration_note:
            self.notes.append(self.session.calibration_note)
        self.xray: XrayModel | None = None
        self.xray_reason = "no --xr-bundle given"
        if options.xr_bundle:
            try:
                self.xray = XrayModel(options.xr_bundle, device=options.device, threads=options.threads)
            except SonogateError as exc:
                self.xray_reason = f"X-ray bundle not available: {exc}"
                self.notes.append(f"{NO_XRAY_MODEL}: {exc}")

    # -- per file -----------------------------------------------------------------------------------------
    def analyze_file(self, path: Path, stem: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        record: dict[str, Any] = {"input": str(path.name), "status": "error", "error": None, "kind": None,
                                  "sonogate_version": __version__}
        try:
            image = read_dicom(path, load_frames=False)
            record["kind"] = image.kind
            record["dicom"] = image.summary()
            record["source_sop_instance_uid"] = image.sop_instance_uid
            record["warnings"] = image.warnings
            if image.kind == "ultrasound":
                self._ultrasound(image, stem, record)
            elif image.kind == "radiograph":
                self._radiograph(image, stem, record)
            else:
                modality = image.modality or "missing"
                raise DataError(f"{path.name}: neither an ultrasound nor a radiograph (Modality {modality}, "
                                f"SOP class {image.sop_class_name})")
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
        for index, frame in enumerate(image.iter_frames()):
            event = session.process(frame, t_capture=t_start + index * frame_time_ms / 1000.0)
            counts["processed"] += 1
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
        counts["accepted_in_final_window"] = int(event.get("accepted_frames") or 0)
        candidate = event.get("candidate")
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
        if self.options.write_dicom:
            algorithm = AlgorithmInfo.from_session(session)
            group = ReportGroup.from_event(event, laterality=image.laterality,
                                           delta=None if calibration is None else float(calibration.delta))
            annotated = render_sweep(last_frame, session.last_roi, event, image)
            self._write_dicom(image, stem, [group], annotated, algorithm, record)

    def _radiograph(self, image: DicomImage, stem: str, record: dict[str, Any]) -> None:
        if self.xray is None:
            record.update({"status": "no_xray_model",
                           "result": {"recommendation": NO_XRAY_MODEL, "reason": self.xray_reason,
                                      "hips": None}})
            return
        from sonogate.runtime.dicom_report import ReportGroup

        frame = next(iter(image.iter_frames()))
        notes: list[str] = []
        hips = self.xray.measure(frame, image, notes)
        record["warnings"] = list(record.get("warnings", [])) + notes
        algorithm = self.xray.algorithm()
        record.update({
            "status": "ok",
            "frames": {"total": image.n_frames, "processed": 1},
            "result": {"recommendation": None, "reason": "X-ray measurements per hip", "hips": hips},
            "model": algorithm.to_json(),
        })
        if self.xray.calibration is None:
            record["warnings"].append("X-ray bundle has no calibration: values without bounds")
        if self.options.write_dicom:
            delta = None if self.xray.calibration is None else float(self.xray.calibration.delta)
            names = [spec.name for spec in XR_MEASUREMENTS]
            groups = [ReportGroup(label=f"{hip} hip", measurements={n: hips[hip][n] for n in names if n in hips[hip]},
                                  reason=_verdict_text(hips[hip]), laterality=hip[0].upper(), delta=delta)
                      for hip in HIPS]
            annotated = render_radiograph(frame, hips, image)
            self._write_dicom(image, stem, groups, annotated, algorithm, record)

    def _write_dicom(self, image, stem, groups, annotated, algorithm, record) -> None:
        from sonogate.runtime.dicom_report import write_sc, write_sr

        sr_path, sc_path = self.out / f"{stem}.sr.dcm", self.out / f"{stem}.sc.dcm"
        sr = write_sr(sr_path, image, groups, algorithm)
        sc = write_sc(sc_path, image, annotated, algorithm)
        record.setdefault("outputs", {}).update({"sr": sr_path.name, "sc": sc_path.name})
        record["dicom_outputs"] = {"sr_sop_instance_uid": str(sr.SOPInstanceUID),
                                   "sc_sop_instance_uid": str(sc.SOPInstanceUID)}

    # -- batch --------------------------------------------------------------------------------------------
    def run(self, inputs: list[tuple[Path, str]]) -> AnalyzeSummary:
        from tqdm import tqdm

        summary = AnalyzeSummary(csv_path=self.out / "analysis.csv")
        try:
            handle = open(summary.csv_path, "w", newline="")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise SonogateError(f"cannot write {summary.csv_path}: {exc.strerror or exc}") from None
        with handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            bar = tqdm(total=len(inputs), unit="file", desc="analyze", disable=not self.options.progress,
                       file=sys.stderr, dynamic_ncols=True)
            with bar:
                for path, stem in inputs:
                    record = self.analyze_file(path, stem)
                    summary.records.append(record)
                    writer.writerow(csv_row(record))
                    handle.flush()
                    if record["status"] == "error":
                        bar.write(f"sonogate: {record['error']}", file=sys.stderr)
                    bar.update(1)
        return summary


def _verdict_text(hip: dict) -> str | None:
    verdict = hip.get("verdict") or {}
    return f"{verdict['value']}: {verdict.get('reason', '')}" if verdict.get("value") else None


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


# -- X-ray annotation -------------------------------------------------------------------------------------
def render_radiograph(frame_bgr: np.ndarray, hips: dict[str, dict], image: DicomImage) -> np.ndarray:
    """The radiograph with side labels and a panel of AI / CE (with bounds), IHDI and the verdict per hip.

    Whole-pelvis models: Hilgenreiner's line, the acetabular roof lines and the landmarks are drawn where the
    model put them; one-hip models: the midline the image was split at."""
    height, width = frame_bgr.shape[:2]
    panel = 300
    canvas = np.full((max(height, 300), width + panel, 3), 24, dtype=np.uint8)
    canvas[:height, :width] = frame_bgr
    landmarks = {hip: (hips.get(hip) or {}).get("landmarks") for hip in HIPS}
    thick = max(1, round(max(height, width) / 400))
    if all(landmarks.values()):

        def pt(hip: str, name: str):
            x, y = landmarks[hip].get(name, (math.nan, math.nan))
            return (round(x), round(y)) if math.isfinite(x) and math.isfinite(y) else None

        tri_r, tri_l = pt("right", "triradiate"), pt("left", "triradiate")
        if tri_r and tri_l:
            cv2.line(canvas, tri_r, tri_l, (0, 200, 255), thick, cv2.LINE_AA)  # Hilgenreiner
        for hip, colour in (("right", (80, 220, 80)), ("left", (80, 160, 255))):
            tri, edge = pt(hip, "triradiate"), pt(hip, "acetabular_edge")
            if tri and edge:
                cv2.line(canvas, tri, edge, colour, thick, cv2.LINE_AA)
            for name in ("triradiate", "acetabular_edge", "head_center", "h_point"):
                p = pt(hip, name)
                if p:
                    cv2.circle(canvas, p, 2 * thick + 1, colour, -1, cv2.LINE_AA)
    else:
        x_mid = width // 2
        for y in range(0, height, 12):
            cv2.line(canvas, (x_mid, y), (x_mid, min(height - 1, y + 6)), (0, 200, 255), 1)
    swapped = (image.patient_orientation or ("",))[0][:1] == "R"
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(canvas, "L" if swapped else "R", (6, 20), font, 0.6, (0, 200, 255), 2, cv2.LINE_AA)
    cv2.putText(canvas, "R" if swapped else "L", (width - 20, 20), font, 0.6, (0, 200, 255), 2, cv2.LINE_AA)
    x0, y = width + 12, 26
    cv2.putText(canvas, "X-ray measurements", (x0, y), font, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    y += 28
    for hip in HIPS:
        entry = hips.get(hip) or {}
        cv2.putText(canvas, f"{hip} hip", (x0, y), font, 0.55, (230, 230, 230), 1, cv2.LINE_AA)
        y += 22
        for spec in XR_MEASUREMENTS:
            values = entry.get(spec.name) or {}
            label = "AI" if spec.name == "ai_deg" else "CE"
            value = values.get("value")
            bound = values.get(f"{spec.bound_side}_bound")
            text = f"{label}: --" if value is None else f"{label}: {value:.1f} deg"
            if value is not None:
                text += f" ({'<=' if spec.bound_side == 'upper' else '>='} {bound:.1f})" if bound is not None \
                    else " (no bound)"
            cv2.putText(canvas, text, (x0 + 10, y), font, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            y += 20
        grade = (entry.get("ihdi") or {}).get("grade")
        if grade:
            cv2.putText(canvas, f"IHDI: {('I', 'II', 'III', 'IV')[int(grade) - 1]}", (x0 + 10, y), font, 0.5,
                        (255, 255, 255), 1, cv2.LINE_AA)
            y += 20
        verdict = (entry.get("verdict") or {}).get("value")
        if verdict:
            colour = (80, 220, 80) if verdict.startswith("normal") else (60, 160, 255)
            cv2.putText(canvas, verdict, (x0 + 10, y), font, 0.5, colour, 1, cv2.LINE_AA)
            y += 20
        y += 10
    cv2.putText(canvas, "algorithm output, unverified", (x0, canvas.shape[0] - 12), font, 0.4, (150, 150, 150), 1,
                cv2.LINE_AA)
    return canvas


# -- entry point ----------------------------------------------------------------------------------------------
def analyze(targets: Iterable[str | Path], options: AnalyzeOptions) -> AnalyzeSummary:
    """Run the batch. Raises SonogateError (one line) for problems with the whole run (no inputs, bad bundle,
    unwritable output folder); per-file problems land in the records and the CSV."""
    targets = [Path(t) for t in ([targets] if isinstance(targets, (str, Path)) else targets)]
    inputs = find_inputs(targets, exclude=Path(options.out))
    analyzer = Analyzer(options)
    for note in analyzer.notes:
        print(f"note: {note}", file=sys.stderr)
    return analyzer.run(inputs)
