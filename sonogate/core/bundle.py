"""The model bundle: the only thing that crosses from export to runtime.

A bundle is a folder::

    manifest.json      format version 2: the task (id, version, spec hash, model type), inputs, preprocessing,
                       outputs, measurements, decision, calibration score and unit, models, sha256 of every file,
                       provenance, min_runtime
    model.onnx         float ONNX graph (image -> measurements, plane_logit, features)
    model.int8.onnx    optional static INT8 (QDQ) graph
    openvino/…         optional OpenVINO IR
    ood.npz            optional feature statistics for the out-of-distribution check
    calibration.json   bound to sha256(manifest.json); replaceable by site recalibration without re-export

``bundle_hash`` is the sha256 of the manifest bytes; since the manifest lists the sha256 of every other
file, it identifies the whole bundle. ``load_bundle`` verifies every listed file and refuses a mismatch.
``write_manifest`` always writes version 2: the task's spec (from the registry) is copied into the manifest, so a
runtime builds the right model from the bundle alone. Version-1 bundles (no task block) still load;
``upgrade_manifest`` rewrites one as version 2 (``sonogate bundle upgrade``). See docs/bundle.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sonogate import __version__
from sonogate.core.registry import get_task
from sonogate.core.task import TaskSpec, TaskSpecError
from sonogate.errors import BundleError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
CALIBRATION = "calibration.json"
SIGNATURE = "manifest.sig"  # optional Ed25519 signature over manifest.json (sonogate.core.signing)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Preprocessing:
    """How a cropped ultrasound (or X-ray) image becomes the model input tensor.

    gray uint8 image (ROI already cropped) -> resize to (height, width) with ``interpolation``
    -> float32 -> (x / 255 - mean) / std -> NCHW with ``channels`` channels.
    """

    height: int
    width: int
    channels: int = 1
    mean: float = 0.5
    std: float = 0.25
    interpolation: str = "area"  # cv2.INTER_AREA
    input_name: str = "image"

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Preprocessing:
        return cls(
            height=int(obj["height"]),
            width=int(obj["width"]),
            channels=int(obj.get("channels", 1)),
            mean=float(obj.get("mean", 0.5)),
            std=float(obj.get("std", 0.25)),
            interpolation=str(obj.get("interpolation", "area")),
            input_name=str(obj.get("input_name", "image")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "input_name": self.input_name,
            "layout": "NCHW",
            "dtype": "float32",
            "color": "gray",
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
            "formula": "x = (gray_uint8 / 255 - mean) / std after resize",
        }


@dataclass
class Bundle:
    """A verified bundle on disk. ``models`` maps a variant ("float", "int8", "openvino", ...) to its entry."""

    path: Path
    manifest: dict[str, Any]
    bundle_hash: str
    preprocessing: Preprocessing | None  # None: a v2 bundle without image inputs
    measurement_names: tuple[str, ...]
    measurement_units: tuple[str, ...]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def task(self) -> str:
        """The task id (a v1 manifest stores the id as a string, a v2 manifest a block with the id in it)."""
        return task_id_of(self.manifest)

    @property
    def format_version(self) -> int:
        return int(self.manifest["format_version"])

    def file(self, relative: str) -> Path:
        return self.path / relative

    def model_path(self, variant: str) -> Path:
        if variant not in self.models:
            raise BundleError(f"bundle {self.path} has no '{variant}' model (has: {', '.join(sorted(self.models))})")
        return self.path / self.models[variant]["file"]

    @property
    def calibration_path(self) -> Path:
        return self.path / CALIBRATION


def task_id_of(manifest: dict[str, Any]) -> str:
    task = manifest.get("task", "")
    return str(task.get("id", "")) if isinstance(task, dict) else str(task)


def describe_task(manifest: dict[str, Any], spec: TaskSpec) -> dict[str, Any]:
    """``manifest`` with the v2 blocks that make it self-describing, from ``spec``.

    What the bundle already states wins over the spec's defaults: the input size and normalisation come from the
    manifest's ``preprocessing``, output names and units from its ``outputs``; the spec adds each output's kind and
    axes, the measurements (unit, threshold, safe side, plausible range, DICOM code), the decision, the calibration
    score and exchangeable unit, and the task block (id, version, spec hash, model type).
    """
    manifest = dict(manifest)
    manifest["task"] = {"id": spec.id, "version": spec.version, "spec_sha256": spec.spec_sha256,
                        "model_type": spec.model_type, "title": spec.title, "modality": spec.modality}
    described = spec.to_manifest()
    preprocessing = manifest.get("preprocessing") or {}
    # a transform the bundle states for an input (a site's display orientation, sonogate adapt) stays
    stated = {e.get("name"): e.get("transform") for e in manifest.get("inputs") or () if isinstance(e, dict)}
    inputs = []
    for entry in described["inputs"]:
        if entry["kind"] == "image" and len(described["inputs"]) == 1 and preprocessing:
            entry = dict(entry)
            for key in ("height", "width", "channels", "mean", "std", "interpolation", "resize", "color"):
                if key in preprocessing:
                    entry[key] = preprocessing[key]
            entry["name"] = preprocessing.get("input_name", entry["name"])
        if stated.get(entry["name"]):
            entry = dict(entry, transform=stated[entry["name"]])
        inputs.append(entry)
    manifest["inputs"] = inputs
    outputs = {name: dict(value) for name, value in (manifest.get("outputs") or {}).items()}
    for entry in described["outputs"]:
        present = outputs.setdefault(entry["name"], {})
        present.setdefault("kind", entry["kind"])
        present.setdefault("axes", entry["axes"])
        if entry["names"]:
            present.setdefault("names", entry["names"])
        if entry["units"]:
            present.setdefault("units", entry["units"])
        if entry["meaning"]:
            present.setdefault("meaning", entry["meaning"])
    manifest["outputs"] = outputs
    manifest["measurements"] = described["measurements"]
    manifest["decision"] = described["decision"]
    manifest["calibration"] = dict(described["calibration"] or {}, file=CALIBRATION)
    manifest["analyze_columns"] = described["analyze_columns"]
    manifest.setdefault("min_runtime", __version__)
    return manifest


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> str:
    """Fill ``files`` with the sha256 of every file under ``folder`` (except manifest and calibration), add the
    task's spec (``manifest["task"]`` names it), write ``manifest.json`` (version 2) and return the bundle hash
    (sha256 of the manifest bytes)."""
    folder = Path(folder)
    files: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder).as_posix()
        if rel in (MANIFEST, CALIBRATION, SIGNATURE):
            continue
        files[rel] = sha256_file(path)
    try:
        spec = get_task(task_id_of(manifest))
    except TaskSpecError as exc:
        raise BundleError(f"cannot write a bundle manifest: {exc}") from None
    manifest = describe_task(manifest, spec)
    manifest["format_version"] = FORMAT_VERSION
    manifest["files"] = files
    return _write_manifest_bytes(folder, manifest)


def _write_manifest_bytes(folder: Path, manifest: dict[str, Any]) -> str:
    data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    (folder / MANIFEST).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def upgrade_manifest(folder: str | os.PathLike) -> tuple[str, str]:
    """Rewrite a verified version-1 bundle's manifest as version 2 in place (the model files are not touched).

    Output: (old bundle hash, new bundle hash). The caller re-binds calibration.json and re-signs: both are bound
    to the manifest's hash. A bundle already at version 2 is an error (nothing to do), as is an unknown task.
    """
    bundle = load_bundle(folder)
    if bundle.format_version == FORMAT_VERSION:
        raise BundleError(f"bundle {bundle.path} is already at manifest version {FORMAT_VERSION}")
    try:
        spec = get_task(bundle.task)
    except TaskSpecError as exc:
        raise BundleError(f"cannot upgrade bundle {bundle.path}: {exc}") from None
    manifest = describe_task(bundle.manifest, spec)
    manifest["format_version"] = FORMAT_VERSION
    manifest.setdefault("provenance", {})
    manifest["provenance"] = dict(manifest["provenance"], upgraded_from={"format_version": 1,
                                                                          "bundle_sha256": bundle.bundle_hash})
    return bundle.bundle_hash, _write_manifest_bytes(bundle.path, manifest)


def manifest_hash(folder: str | os.PathLike) -> str:
    path = Path(folder) / MANIFEST
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise BundleError(f"cannot read bundle manifest {path}: {exc.strerror or exc}") from None


def load_bundle(folder: str | os.PathLike, verify: bool = True) -> Bundle:
    """Read and verify a bundle. Raises BundleError (one line) on any problem.

    Input: the bundle folder. Output: a ``Bundle`` whose files all matched their recorded sha256.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"bundle folder not found: {folder}")
    path = folder / MANIFEST
    try:
        raw = path.read_bytes()
    except OSError:
        raise BundleError(f"bundle has no readable {MANIFEST}: {folder}") from None
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle manifest is not valid JSON ({exc}): {path}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") not in READABLE_VERSIONS:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise BundleError(f"bundle manifest format_version {version!r} is not one this runtime reads "
                          f"({', '.join(map(str, READABLE_VERSIONS))}): {path}")
    if _version_tuple(str(manifest.get("min_runtime", "0"))) > _version_tuple(__version__):
        raise BundleError(f"bundle {folder} needs sonogate >= {manifest['min_runtime']} (this is {__version__})")
    # a v2 bundle whose inputs are all point clouds has no image preprocessing, and one without a
    # "measurements" output (e.g. a completed point cloud) no measurement names
    no_image = manifest.get("format_version") == FORMAT_VERSION and isinstance(manifest.get("inputs"), list) \
        and not any(isinstance(e, dict) and e.get("kind") == "image" for e in manifest["inputs"])
    try:
        files = manifest["files"]
        preprocessing = (None if no_image and "preprocessing" not in manifest
                         else Preprocessing.from_json(manifest["preprocessing"]))
        outputs = manifest["outputs"].get("measurements", {"names": [], "units": []}) \
            if manifest.get("format_version") == FORMAT_VERSION else manifest["outputs"]["measurements"]
        names = tuple(str(n) for n in outputs["names"])
        units = tuple(str(u) for u in outputs["units"])
        models = dict(manifest["models"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"bundle manifest is missing a field ({exc}): {path}") from None
    if verify:
        for rel, expected in files.items():
            file_path = folder / rel
            if not file_path.is_file():
                raise BundleError(f"bundle file listed in manifest is missing: {rel}")
            actual = sha256_file(file_path)
            if actual != expected:
                raise BundleError(f"bundle file {rel} does not match its sha256 in the manifest (changed or corrupt)")
        for variant, entry in models.items():
            if entry.get("file") not in files:
                raise BundleError(f"bundle model '{variant}' file {entry.get('file')} is not listed in the manifest")
    return Bundle(
        path=folder,
        manifest=manifest,
        bundle_hash=hashlib.sha256(raw).hexdigest(),
        preprocessing=preprocessing,
        measurement_names=names,
        measurement_units=units,
        models=models,
    )


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
