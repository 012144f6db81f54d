"""The declarative task spec: what a task takes in, what it puts out, how it is calibrated and decided.

A task (hip ultrasound policy, pelvic X-ray, RUST, knee KL grade, BMD, spine completion) is one ``TaskSpec`` plus a
few task-only modules in ``sonogate/tasks/<id>/``. The stages (export, runtime, device, calibration) read the spec
(or its copy in a bundle's manifest) and never import a task package. ``TaskSpec.to_manifest()`` is what a v2
bundle manifest carries, so a runtime can build the right model from the bundle alone (docs/bundle.md).

Inputs: the dataclasses below, filled in by each task's ``spec.py``. Output: ``to_manifest()`` (a JSON-ready dict)
and ``spec_sha256`` (the hash of that dict, recorded in every bundle made for the task).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from sonogate.errors import SonogateError

INPUT_KINDS = ("image", "points")
# How an image is turned before it is resized for the model (the inverse of the way the source displays it): a
# scanner that shows the image transposed or rotated is brought back to the orientation the model was trained on.
IMAGE_TRANSFORMS = ("", "transpose", "rotate_90_ccw", "rotate_90_cw", "rotate_180", "flip_horizontal")
OUTPUT_KINDS = ("measurement", "ordinal", "class", "landmarks", "points", "quality", "features")
DECISION_UNITS = ("frame_window", "image", "case")
CALIBRATION_SCORES = ("one_sided_joint_max", "one_sided", "class_set_aps", "class_set_lac", "interval", "none")
SAFE_SIDES = ("above", "below", "none")  # the side of its threshold where a measurement is reassuring


class TaskSpecError(SonogateError):
    """A task spec that contradicts itself (a bad kind, a measurement with no output, a duplicate name)."""


@dataclass(frozen=True)
class InputSpec:
    """One named model input.

    name: the graph input's name. kind: "image" (a radiograph or an ultrasound frame) or "points" (an N x 3 cloud).
    view: what the image shows ("graf_coronal", "ap_pelvis", "ap", "lat", ...) or the cloud's source. For images:
    height, width, channels, color ("gray"), resize ("stretch" or "letterbox"), interpolation ("area", "linear"),
    mean and std of ``x = (uint8 / 255 - mean) / std``; transform: one of IMAGE_TRANSFORMS, applied to the cropped
    image before resizing ("": none; set per site by ``sonogate adapt --orientation``). For points: n_points and
    units ("mm").
    """

    name: str
    kind: str = "image"
    view: str = ""
    height: int = 0
    width: int = 0
    channels: int = 1
    color: str = "gray"
    resize: str = "stretch"
    interpolation: str = "area"
    mean: float = 0.5
    std: float = 0.25
    n_points: int = 0
    units: str = ""
    transform: str = ""


@dataclass(frozen=True)
class OutputSpec:
    """One named graph output. kind: one of OUTPUT_KINDS; axes: its shape by axis name ("N" is the batch);
    units: per element where it has any; names: the element names (measurements, landmarks, classes)."""

    name: str
    kind: str
    axes: tuple[str | int, ...] = ()
    units: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    meaning: str = ""


@dataclass(frozen=True)
class MeasurementSpec:
    """A measurement the task reports and bounds.

    name, unit; threshold: the decision threshold in that unit (None: reported only); safe_side: "above" when values
    above the threshold are the reassuring side (Graf alpha >= 60 deg), "below" when below is (acetabular index),
    "none"; plausible_range: (low, high) outside which a value is a fault, not a finding; dicom_code: (code value,
    coding scheme, meaning) for SR output, empty when the task has no DICOM mapping.
    """

    name: str
    unit: str
    threshold: float | None = None
    safe_side: str = "none"
    plausible_range: tuple[float, float] = (float("-inf"), float("inf"))
    dicom_code: tuple[str, str, str] = ()


@dataclass(frozen=True)
class DecisionSpec:
    """How a decision is made. unit: what one decision is about ("frame_window": a live window of frames,
    "image", "case": several images or views together). rule: the rule's name as the task defines it.
    outcomes: every label it can give; safe_default: the label on any doubt (never the reassuring one)."""

    unit: str
    rule: str
    outcomes: tuple[str, ...]
    safe_default: str
    reassuring: tuple[str, ...] = ()


@dataclass(frozen=True)
class CalibrationSpec:
    """How bounds are calibrated. score: one of CALIBRATION_SCORES; exchangeable_unit: the group that is one
    calibration point (a sweep, an image, a case, a patient), which is the unit the guarantee holds for."""

    score: str
    exchangeable_unit: str
    delta_default: float = 0.1


@dataclass(frozen=True)
class TaskSpec:
    """A task, declared. ``model_type`` names the runtime wrapper that ``create_model`` builds for its bundles
    (``parts["model_wrapper"]`` "module:Class" when the task brings its own); ``analyze_columns`` are the columns
    ``sonogate analyze`` writes per row after ``input``."""

    id: str
    version: int
    title: str
    modality: str
    model_type: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    measurements: tuple[MeasurementSpec, ...] = ()
    decision: DecisionSpec | None = None
    calibration: CalibrationSpec | None = None
    analyze_columns: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    # Task-only code the stages use, by role ("trainer", "exporter", "demo"; "model_wrapper": the runtime's
    # sonogate.runtime.model_api.Model class for model_type, absent: the generic wrapper registered for it) ->
    # "package.module:attribute"; resolved with importlib by ``part(role)``, so no stage imports a task package.
    parts: dict[str, str] = field(default_factory=dict)
    # Short names the command line accepts for the id (``sonogate train --task xr``); like ``parts``, what this
    # installation's commands call the task, not what the task is (left out of the manifest and the hash).
    cli_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.id or not self.id.replace("_", "").isalnum():
            raise TaskSpecError(f"task id {self.id!r} must be letters, digits and underscores")
        if not self.inputs:
            raise TaskSpecError(f"task {self.id}: at least one input")
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise TaskSpecError(f"task {self.id}: input names repeat: {names}")
        for spec in self.inputs:
            if spec.kind not in INPUT_KINDS:
                raise TaskSpecError(f"task {self.id}: input {spec.name} kind {spec.kind!r} not in {INPUT_KINDS}")
            if spec.transform not in IMAGE_TRANSFORMS:
                raise TaskSpecError(f"task {self.id}: input {spec.name} transform {spec.transform!r} not in "
                                    f"{IMAGE_TRANSFORMS}")
        for spec in self.outputs:
            if spec.kind not in OUTPUT_KINDS:
                raise TaskSpecError(f"task {self.id}: output {spec.name} kind {spec.kind!r} not in {OUTPUT_KINDS}")
        for spec in self.measurements:
            if spec.safe_side not in SAFE_SIDES:
                raise TaskSpecError(f"task {self.id}: measurement {spec.name} safe_side {spec.safe_side!r}")
        if self.decision is not None:
            if self.decision.unit not in DECISION_UNITS:
                raise TaskSpecError(f"task {self.id}: decision unit {self.decision.unit!r} not in {DECISION_UNITS}")
            if self.decision.safe_default not in self.decision.outcomes:
                raise TaskSpecError(f"task {self.id}: safe default {self.decision.safe_default!r} is not an outcome")
            if self.decision.safe_default in self.decision.reassuring:
                raise TaskSpecError(f"task {self.id}: the safe default cannot be a reassuring outcome")
        if self.calibration is not None and self.calibration.score not in CALIBRATION_SCORES:
            raise TaskSpecError(f"task {self.id}: calibration score {self.calibration.score!r}")

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise TaskSpecError(f"task {self.id} has no input {name!r} (has: {', '.join(i.name for i in self.inputs)})")

    def measurement(self, name: str) -> MeasurementSpec:
        for spec in self.measurements:
            if spec.name == name:
                return spec
        raise TaskSpecError(f"task {self.id} has no measurement {name!r}")

    def part(self, role: str) -> Any:
        """The object the spec names for ``role`` in ``parts`` (imported now); TaskSpecError when there is none."""
        import importlib

        target = self.parts.get(role)
        if not target or ":" not in target:
            raise TaskSpecError(f"task {self.id} has no {role} (known: {', '.join(sorted(self.parts)) or 'none'})")
        module, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def to_manifest(self) -> dict[str, Any]:
        """The spec as a v2 manifest carries it (JSON-ready: tuples become lists, infinities become None).

        ``parts`` and ``cli_names`` are left out: they say where this installation keeps the task's code and what its
        commands call it, not what the task is, so moving a module changes neither the manifest nor ``spec_sha256``."""
        described = asdict(self)
        described.pop("parts")
        described.pop("cli_names")
        for entry in described["inputs"]:
            if not entry["transform"]:
                entry.pop("transform")  # none: manifests (and spec hashes) as before the field existed
        return _jsonable(described)

    @property
    def spec_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_manifest(), sort_keys=True).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return None
    return value
