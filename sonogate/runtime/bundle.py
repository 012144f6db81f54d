"""The model bundle: the only thing that crosses from export to runtime.

A bundle is a folder::

    manifest.json      format version, task, preprocessing, outputs, models, sha256 of every file, provenance
    model.onnx         float ONNX graph (image -> measurements, plane_logit, features)
    model.int8.onnx    optional static INT8 (QDQ) graph
    openvino/…         optional OpenVINO IR
    ood.npz            optional feature statistics for the out-of-distribution check
    calibration.json   bound to sha256(manifest.json); replaceable by site recalibration without re-export

``bundle_hash`` is the sha256 of the manifest bytes; since the manifest lists the sha256 of every other
file, it identifies the whole bundle. ``load_bundle`` verifies every listed file and refuses a mismatch.
See docs/bundle.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sonogate.errors import BundleError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CALIBRATION = "calibration.json"
SIGNATURE = "manifest.sig"  # optional Ed25519 signature over manifest.json (sonogate.runtime.signing)


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
    preprocessing: Preprocessing
    measurement_names: tuple[str, ...]
    measurement_units: tuple[str, ...]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return str(self.manifest.get("task", ""))

    def file(self, relative: str) -> Path:
        return self.path / relative

    def model_path(self, variant: str) -> Path:
        if variant not in self.models:
            raise BundleError(f"bundle {self.path} has no '{variant}' model (has: {', '.join(sorted(self.models))})")
        return self.path / self.models[variant]["file"]

    @property
    def calibration_path(self) -> Path:
        return self.path / CALIBRATION


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> str:
    """Fill ``files`` with the sha256 of every file under ``folder`` (except manifest and calibration),
    write ``manifest.json`` and return the bundle hash (sha256 of the manifest bytes)."""
    folder = Path(folder)
    files: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder).as_posix()
        if rel in (MANIFEST, CALIBRATION, SIGNATURE):
            continue
        files[rel] = sha256_file(path)
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["files"] = files
    data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    (folder / MANIFEST).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


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
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"bundle manifest format_version must be {FORMAT_VERSION}: {path}")
    try:
        files = manifest["files"]
        preprocessing = Preprocessing.from_json(manifest["preprocessing"])
        outputs = manifest["outputs"]["measurements"]
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
