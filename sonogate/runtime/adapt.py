"""``sonogate adapt``, the half that needs a model and a bundle: run the bundle over a site's frames, fit with
``sonogate.calibration.site`` and write the adapted bundle (torch-free: numpy, OpenCV, ONNX Runtime).

Inputs: a verified base bundle and a site folder, either

* the labelled-folder layout (``labels.csv`` with ``image``, ``patient_id``, ``sweep_id``, ``alpha_deg``,
  ``beta_deg``, ``coverage_pct``, ``standard_plane``; an ``image`` may be a DICOM cine with a ``frame_index``
  column naming its frame, 0-based), or
* unlabelled frames (images and / or DICOM cines, no ``labels.csv``): then only the out-of-distribution
  statistics are refitted and the adapted bundle has no calibration (it measures, never recommends);

plus, optionally, more unlabelled frames (``--frames``) for the out-of-distribution statistics.

Output: a new bundle folder: the base's files (model graphs, parity), a new ``ood.npz``, a ``head.npz`` when a
ridge head on the features won the cross-validation (named in the manifest's ``measurement_head`` block, applied
by ``sonogate.runtime.engine``), a new manifest (version 2) whose ``provenance.site_adaptation`` names the base
bundle and its manifest sha256, the site data's sha256, the sweeps, infants, radii and the held-out check, a
``calibration.json`` bound to the new manifest, ``manifest.sig`` when given a key, and an audit line.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sonogate import __version__
from sonogate.calibration.site import SiteAdaptation, SiteFrames, SiteOptions, adapt_site
from sonogate.core.bundle import CALIBRATION, Bundle, load_bundle, sha256_file
from sonogate.core.derived import seal_derived_bundle
from sonogate.errors import BundleError, DataError, SonogateError

HEAD_FILE = "head.npz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass
class _FrameSource:
    """One frame to run: a file (image, or a DICOM cine with ``frame_index``), its sweep and infant, its row of
    labels (None: unlabelled) and the ROI (None: whole image; "detect": the runtime's detection)."""

    path: Path
    frame_index: int | None
    sweep: str
    subject: str
    row: int | None
    roi: Any = None


def _is_dicom(path: Path) -> bool:
    from sonogate.data.dicom import is_dicom_file

    return path.suffix.lower() in DICOM_SUFFIXES or (path.suffix == "" and is_dicom_file(path))


def _unlabelled_sources(root: Path) -> list[_FrameSource]:
    """Every image and DICOM file under ``root`` (no labels): a DICOM cine is one sweep of its own; images are
    grouped into sweeps by their folder."""
    if not root.is_dir():
        raise DataError(f"site folder not found: {root}")
    sources: list[_FrameSource] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            sweep = path.parent.relative_to(root).as_posix() or root.name
            sources.append(_FrameSource(path, None, sweep, sweep, None, None))
        elif _is_dicom(path):
            sweep = path.relative_to(root).as_posix()
            sources.append(_FrameSource(path, -1, sweep, sweep, None, "detect"))  # -1: every frame
    if not sources:
        raise DataError(f"no images or DICOM files under {root}")
    return sources


class _FrameReader:
    """Gray frames of ``_FrameSource``s; a DICOM cine is decoded once and its ROI tracked as ``analyze`` does."""

    def __init__(self) -> None:
        self._dicom_path: Path | None = None
        self._dicom_frames: list[np.ndarray] = []
        self._dicom_rois: list[Any] = []

    def _load_dicom(self, path: Path) -> None:
        from sonogate.data.dicom import read_dicom
        from sonogate.runtime.roi import RoiTracker

        if self._dicom_path == path:
            return
        image = read_dicom(path)
        tracker = RoiTracker(manual=image.region if image.region is not None and not image.region_clipped else None)
        self._dicom_frames = [np.asarray(frame) for frame in image.iter_frames()]
        self._dicom_rois = [tracker.update(frame) for frame in self._dicom_frames]
        self._dicom_path = path

    def frames(self, source: _FrameSource) -> list[tuple[np.ndarray, Any]]:
        """[(frame, roi)] of one source: one frame, or every frame of a whole DICOM cine (frame_index -1)."""
        from sonogate.data.folder import load_gray_image

        if source.frame_index is None:
            return [(load_gray_image(source.path), source.roi)]
        self._load_dicom(source.path)
        if source.frame_index < 0:
            return list(zip(self._dicom_frames, self._dicom_rois))
        if source.frame_index >= len(self._dicom_frames):
            raise DataError(f"{source.path}: frame_index {source.frame_index} but the cine has "
                            f"{len(self._dicom_frames)} frames")
        return [(self._dicom_frames[source.frame_index], self._dicom_rois[source.frame_index])]


def _labelled_sources(root: Path):
    """(sources, LabelledFolder) of a labelled site folder."""
    from sonogate.data.folder import read_labelled_folder

    folder = read_labelled_folder(root)
    n = len(folder)
    sweeps = folder.text("sweep_id") if folder.has("sweep_id") else None
    patients = folder.text("patient_id") if folder.has("patient_id") else None
    frame_index = folder.targets(["frame_index"])[:, 0] if folder.has("frame_index") else np.full(n, np.nan)
    rois = folder.rois()
    sources = []
    for i, path in enumerate(folder.image_paths):
        sweep = str(sweeps[i]) if sweeps is not None and str(sweeps[i]) else (
            str(patients[i]) if patients is not None and str(patients[i]) else path.parent.name)
        subject = str(patients[i]) if patients is not None and str(patients[i]) else sweep
        if _is_dicom(path):
            index = 0 if not np.isfinite(frame_index[i]) else int(frame_index[i])
            sources.append(_FrameSource(path, index, sweep, subject, i, "detect"))
        else:
            roi = None if rois is None or not np.all(np.isfinite(rois[i])) else tuple(int(v) for v in rois[i])
            sources.append(_FrameSource(path, None, sweep, subject, i, roi))
    return sources, folder


def data_sha256(paths: Sequence[Path], root: Path) -> str:
    """sha256 over (relative path, sha256 of the bytes) of every file, sorted: the site data's identity."""
    digest = hashlib.sha256()
    for path in sorted(set(paths)):
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            rel = path.as_posix()
        digest.update(f"{rel}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def read_site_frames(bundle: Bundle | str | Path, data_dir: str | Path, extra_frames: str | Path | None = None,
                     device: str = "auto", threads: int = 1, precision: str = "auto",
                     progress: bool = True, transform: str | None = None) -> tuple[SiteFrames, dict[str, Any]]:
    """Run ``bundle``'s model over the site's frames. Output: (SiteFrames, data provenance: folder, sha256,
    counts). Labels come from ``data_dir/labels.csv`` when it exists; ``extra_frames`` adds unlabelled frames;
    ``transform`` (one of ``sonogate.core.task.IMAGE_TRANSFORMS``; None: the bundle's own) turns each crop before
    the model, as the adapted bundle will (a scanner that displays the image in another orientation)."""
    from sonogate.runtime.engine import ImageMeasurementModel
    from sonogate.runtime.model_api import create_model

    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"site folder not found: {root}")
    names = tuple(bundle.measurement_names)
    folder = None
    if (root / "labels.csv").is_file():
        sources, folder = _labelled_sources(root)
    else:
        sources = _unlabelled_sources(root)
    hashed = [s.path for s in sources] + ([root / "labels.csv"] if folder is not None else [])
    if extra_frames is not None:
        extra = _unlabelled_sources(Path(extra_frames))
        sources += extra
        hashed += [s.path for s in extra]
    model = create_model(bundle, device=device, threads=threads, precision=precision)
    if not isinstance(model, ImageMeasurementModel) or model.inputs[0].kind != "image":
        raise SonogateError(f"sonogate adapt needs a one-image measurement bundle; {bundle.path} is "
                            f"{type(model).__name__}")
    truth = folder.targets(list(names)) if folder is not None else None
    hip_names = [f"hip_{n}" for n in names]
    hip = folder.targets(hip_names) if folder is not None and all(folder.has(h) for h in hip_names) else None
    standard = folder.standard_plane() if folder is not None else None
    rows: dict[str, list] = {k: [] for k in ("graph", "features", "desc", "plane", "true", "hip", "standard",
                                             "labelled", "sweep", "subject", "source")}
    reader = _FrameReader()
    iterator = sources
    if progress:
        from tqdm import tqdm

        iterator = tqdm(sources, desc="adapt: run model", unit="source")
    preprocessor = model.preprocessor
    if transform is not None and transform != preprocessor.spec.transform:
        import dataclasses

        from sonogate.runtime.preprocess import ImagePreprocessor

        preprocessor = ImagePreprocessor(dataclasses.replace(preprocessor.spec, transform=transform))
    for source in iterator:
        for frame, roi in reader.frames(source):
            roi_box = None if roi is None or roi == "detect" else roi
            record = model.infer_record(preprocessor(frame, roi_box))
            rows["graph"].append(record.graph_measurements)
            rows["features"].append(record.features)
            rows["desc"].append(record.image_descriptor)
            p = record.result.plane_probability
            rows["plane"].append(1.0 if p is None else p)
            labelled = source.row is not None
            rows["labelled"].append(labelled)
            rows["true"].append(truth[source.row] if labelled else np.full(len(names), np.nan))
            rows["hip"].append(hip[source.row] if labelled and hip is not None else np.full(len(names), np.nan))
            rows["standard"].append(bool(standard[source.row]) if labelled else True)
            rows["sweep"].append(source.sweep)
            rows["subject"].append(source.subject)
            rows["source"].append(source.path.as_posix())
    if not rows["graph"]:
        raise DataError(f"no frames in {root}")
    has_features = all(f is not None for f in rows["features"])
    has_desc = all(d is not None for d in rows["desc"])
    frames = SiteFrames(
        names=names, graph=np.array(rows["graph"]), features=np.array(rows["features"]) if has_features else None,
        descriptors=np.array(rows["desc"]) if has_desc else None, plane_probability=np.array(rows["plane"]),
        true=np.array(rows["true"]), hip_true=np.array(rows["hip"]) if hip is not None else None,
        standard_plane=np.array(rows["standard"]), labelled=np.array(rows["labelled"]),
        sweeps=np.array(rows["sweep"]).astype(str), subjects=np.array(rows["subject"]).astype(str),
        sources=np.array(rows["source"]).astype(str))
    labelled = frames.labelled
    provenance = {"source": "site_folder", "path": str(root), "extra_frames": None if extra_frames is None
                  else str(extra_frames), "sha256": data_sha256(hashed, root), "n_frames": len(frames),
                  "n_labelled_frames": int(labelled.sum()),
                  "n_sweeps": len(np.unique(frames.sweeps[labelled])),
                  "n_infants": len(np.unique(frames.subjects[labelled])),
                  "model_variant": model.adapter.variant, "transform": preprocessor.spec.transform}
    return frames, provenance


def _ood_block(base_block: dict[str, Any] | None, ood: dict[str, Any]) -> dict[str, Any]:
    block = dict(base_block or {"file": "ood.npz", "metric": "mahalanobis"})
    features, image = ood.get("features"), ood.get("image")
    if features is not None:
        block.update({"threshold": features["threshold"], "percentile": features["percentile"],
                      "fitted_on": f"site adaptation: {features['fitted_on']}; threshold: "
                                   f"{features['threshold_source']}"})
    if image is not None:
        block.update({"image_threshold": image["threshold"],
                      "image_fitted_on": f"site adaptation: {image['fitted_on']}; threshold: "
                                         f"{image['threshold_source']}"})
    return block


def write_adapted_bundle(base: Bundle, out: str | Path, adaptation: SiteAdaptation, data: dict[str, Any],
                         options: SiteOptions, command: str = "", key: str | Path | None = None,
                         wall_s: float | None = None) -> tuple[str, Path]:
    """Write the adapted bundle into ``out`` (a new or empty folder). Output: (new bundle hash, out path)."""
    from sonogate.calibration.ood import save_ood
    from sonogate.runtime.engine import MEASUREMENT_HEAD_KEY
    from sonogate.runtime.model_api import described_manifest

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SonogateError(f"--out {out} exists and is not empty: choose a new folder for the adapted bundle")
    if out.resolve() == base.path.resolve():
        raise SonogateError("--out must be a new folder, not the base bundle")
    manifest = dict(described_manifest(base))
    ood_entry = manifest.get("ood") or {}
    ood_file = ood_entry.get("file")
    old_head = (manifest.get(MEASUREMENT_HEAD_KEY) or {}).get("file")
    out.mkdir(parents=True, exist_ok=True)
    for rel in base.manifest["files"]:
        if rel in (ood_file, old_head):
            continue
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(base.path / rel, target)
    features, image = adaptation.ood.get("features"), adaptation.ood.get("image")
    if features is not None or image is not None:
        if features is None:  # a bundle with an image check only still needs the feature keys: keep the base's
            with np.load(base.file(ood_file)) as old:
                features = {"mean": old["mean"], "precision": old["precision"], "threshold": float(old["threshold"]),
                            "percentile": float(old["percentile"]), "shrinkage": 0.0, "n_train": 0, "n_heldout": 0}
        name = ood_file or "ood.npz"
        save_ood(out / name, features, image)
        manifest["ood"] = _ood_block(ood_entry, adaptation.ood)
        manifest["ood"]["file"] = name
    transform = data.get("transform") or ""
    inputs = [dict(entry) for entry in manifest.get("inputs") or ()]
    if inputs and transform != (inputs[0].get("transform") or ""):
        # the site's display orientation turned back before the model; older runtimes would ignore it
        inputs[0]["transform"] = transform
        if not transform:
            inputs[0].pop("transform")
        manifest["inputs"] = inputs
        manifest["min_runtime"] = __version__
    manifest.pop(MEASUREMENT_HEAD_KEY, None)
    head = adaptation.head
    if head is not None:
        # a runtime that predates measurement_head would ignore it and apply the site's calibration to the
        # graph's own output: such runtimes must refuse this bundle
        manifest["min_runtime"] = __version__
        np.savez(out / HEAD_FILE, weights=head.weights, bias=head.bias, names=np.array(head.names))
        manifest[MEASUREMENT_HEAD_KEY] = {
            "file": HEAD_FILE, "input": "features", "replaces": list(head.names), "method": "ridge",
            "lambda": head.lambdas, "formula": "value = weights . features + bias (standardisation folded in)",
            "fitted_on": f"labelled standard-plane frames of the site's fit infants ({head.cv.get('n_frames')} "
                         f"frames, {head.cv.get('n_groups')} infants), chosen by {head.cv.get('folds')}-fold "
                         "cross-validation by infant", "model_variant": data.get("model_variant")}
    cal = adaptation.calibration
    provenance = dict(manifest.get("provenance") or {})
    provenance["site_adaptation"] = {
        "base_bundle": str(base.path), "base_manifest_sha256": base.bundle_hash,
        "base_task": base.task, "command": command,
        "data": {k: v for k, v in data.items() if k not in ("model_variant", "transform")},
        "transform": data.get("transform") or None,
        "model_variant": data.get("model_variant"),
        "options": {"delta": float(options.delta), "rule": options.rule, "ridge": options.ridge,
                    "affine": options.affine, "fit_fraction": options.fit_fraction, "seed": options.seed,
                    "check_folds": options.check_folds},
        "n_sweeps": adaptation.summary.get("n_sweeps", 0), "n_infants": data.get("n_infants", 0),
        "n_usable_sweeps": adaptation.summary.get("n_usable_sweeps"),
        "n_fit_sweeps": adaptation.summary.get("n_fit_sweeps"),
        "n_calibration_sweeps": adaptation.summary.get("n_cal_sweeps"),
        "radii": None if cal is None else {n: m.radius for n, m in cal.measurements.items()},
        "affine": None if cal is None else {n: {"a": m.a, "b": m.b} for n, m in cal.measurements.items()},
        "head": None if head is None else {"replaces": list(head.names), "lambda": head.lambdas},
        "head_cross_validation": adaptation.summary.get("head"),
        "ood": {k: None if v is None else {"threshold": v["threshold"], "n": v["n_train"],
                                            "fitted_on": v["fitted_on"]} for k, v in adaptation.ood.items()},
        "held_out_check": adaptation.check,
        "calibration": "none: no labelled sweeps; the bundle measures but never recommends" if cal is None
        else "calibration.json (bound to this manifest)",
        "wall_s": None if wall_s is None else round(wall_s, 1),
    }
    manifest["provenance"] = provenance
    manifest.pop("files", None)
    # no manifest exists until here: a failure above leaves a folder no runtime would load
    return seal_derived_bundle(out, _json_safe(manifest), cal, key), out


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def audit_adaptation(path: str | Path, new_hash: str, calibration_sha256: str | None, adaptation: SiteAdaptation,
                     base: Bundle, data: dict[str, Any], device: str | None) -> str:
    """Append the adaptation to a tamper-evident audit log (session_start, bundle_adapted, session_end lines).
    Output: the log's head sha256."""
    from sonogate.runtime.audit import AuditLog

    cal = adaptation.calibration
    log = AuditLog(path, bundle_sha256=new_hash, calibration_sha256=calibration_sha256,
                   thresholds=None if cal is None else dict(cal.thresholds), delta=None if cal is None else cal.delta,
                   rule=None if cal is None else cal.rule, device=device)
    check = adaptation.check or {}
    log.record_adaptation(base_sha256=base.bundle_hash, data_sha256=data["sha256"],
                          n_sweeps=int(adaptation.summary.get("n_sweeps", 0)), n_infants=int(data.get("n_infants", 0)),
                          radii=None if cal is None else {n: m.radius for n, m in cal.measurements.items()},
                          held_out={k: check.get(k) for k in ("n_sweeps", "us_only_rate", "false_reassurance_rate",
                                                                "joint_coverage")} if check else None)
    log.close("adaptation written")
    return log.head_sha256


def run_adapt(bundle_path: str | Path, data_dir: str | Path, out: str | Path, options: SiteOptions,
              extra_frames: str | Path | None = None, key: str | Path | None = None, audit: str | Path | None = None,
              device: str = "auto", threads: int = 1, precision: str = "auto", progress: bool = True,
              command: str = "", transform: str | None = None) -> dict[str, Any]:
    """The whole ``sonogate adapt``: verify the base, run its model over the site, fit, write, sign, audit.
    Output: a summary dict (new hash, paths, figures). SonogateError subclasses on any refusal."""
    from sonogate.calibration.aggregate import AggregationRule
    from sonogate.calibration.calfile import load_calibration

    start = time.perf_counter()
    base = load_bundle(bundle_path)  # every file's sha256: never adapt a tampered bundle
    score = (base.manifest.get("calibration") or {}).get("score")
    if score is None:
        from sonogate.core.registry import get_task

        spec = get_task(base.task).calibration
        score = None if spec is None else spec.score
    if score != "one_sided_joint_max":
        raise SonogateError(f"sonogate adapt recalibrates per-sweep joint bounds; bundle {base.path} (task "
                            f"{base.task}) calibrates by {score!r}")
    aggregation = AggregationRule()
    if base.calibration_path.is_file():
        try:
            aggregation = AggregationRule.from_json(load_calibration(base.calibration_path).aggregation)
        except (SonogateError, ValueError):
            pass  # a malformed base calibration is replaced anyway: keep the default frame rule
    options = SiteOptions(**{**options.__dict__, "aggregation": aggregation})
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SonogateError(f"--out {out} exists and is not empty: choose a new folder for the adapted bundle")
    frames, data = read_site_frames(base, data_dir, extra_frames, device=device, threads=threads,
                                    precision=precision, progress=progress, transform=transform)
    adaptation = adapt_site(frames, options, data=dict(data))
    new_hash, out = write_adapted_bundle(base, out, adaptation, data, options, command=command, key=key,
                                         wall_s=time.perf_counter() - start)
    cal_path = out / CALIBRATION
    cal_sha = sha256_file(cal_path) if cal_path.is_file() else None
    audit_path = Path(audit) if audit is not None else out.parent / f"{out.name}.audit.jsonl"
    head = audit_adaptation(audit_path, new_hash, cal_sha, adaptation, base, data, device=device)
    return {"bundle_sha256": new_hash, "out": str(out), "audit": str(audit_path), "audit_head": head,
            "adaptation": adaptation, "data": data, "wall_s": time.perf_counter() - start, "signed": key is not None}


def summary_json(result: dict[str, Any]) -> str:
    """A JSON line of ``run_adapt``'s result (for scripts)."""
    adaptation: SiteAdaptation = result["adaptation"]
    cal = adaptation.calibration
    return json.dumps(_json_safe({
        "bundle_sha256": result["bundle_sha256"], "out": result["out"], "audit": result["audit"],
        "wall_s": round(result["wall_s"], 2), "signed": result["signed"],
        "n_sweeps": adaptation.summary.get("n_sweeps"), "n_infants": result["data"].get("n_infants"),
        "radii": None if cal is None else {n: m.radius for n, m in cal.measurements.items()},
        "head": None if adaptation.head is None else list(adaptation.head.names),
        "held_out_check": adaptation.check}))


__all__ = ["HEAD_FILE", "BundleError", "read_site_frames", "run_adapt", "summary_json", "write_adapted_bundle"]
