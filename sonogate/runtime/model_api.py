"""One runtime for every task's bundle, in the manner of Open Model Zoo's ``model_api``.

* ``InferenceAdapter`` runs one bundle graph with named inputs (``infer_sync(feeds)`` -> {output name: array}) on
  a compute device (``sonogate.device.compute``: ONNX Runtime or OpenVINO).
* ``Model`` wraps an adapter with the task's data handling: ``preprocess(inputs) -> (feeds, meta)`` and
  ``postprocess(outputs, meta) -> result``; calling the model runs the three. ``InputModel`` preprocesses each
  input as the bundle says (``ImagePreprocessor``: stretch or letterbox, interpolation, mean / std, layout;
  ``PointCloudPreprocessor``: an (n, 3) cloud of the spec's n_points).
* ``create_model(bundle, device=..., threads=..., precision=...)`` picks the wrapper from the model type the
  bundle stores (``manifest["task"]["model_type"]`` in a v2 manifest; for a v1 bundle the registry's spec of its
  task). The class is the spec's ``parts["model_wrapper"]`` ("module:Class", imported by name at run time, so the
  runtime never imports a task package) or, without one, a generic wrapper registered here for the model type.

Version-1 bundles are read through ``describe_task`` (the same function ``sonogate bundle upgrade`` writes v2
with), so a v1 bundle and its upgraded copy build the same model. This module never imports torch.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sonogate.core.bundle import Bundle, describe_task, load_bundle
from sonogate.core.registry import get_task
from sonogate.core.task import InputSpec, TaskSpec, TaskSpecError
from sonogate.errors import BundleError, SonogateError
from sonogate.runtime.preprocess import ImagePreprocessor

# DICOM image kind (sonogate.data.dicom) of a task's modality
IMAGE_KINDS = {"US": "ultrasound", "DX": "radiograph", "CR": "radiograph"}
_INPUT_FIELDS = tuple(InputSpec.__dataclass_fields__)


def choose_variant(bundle: Bundle, precision: str) -> str:
    """Pick the bundle model for a precision request: 'int8' | 'float' | 'openvino' | 'auto' (int8 if present)."""
    if precision == "auto":
        for variant in ("int8", "float"):
            if variant in bundle.models:
                return variant
        return next(iter(bundle.models))
    if precision not in bundle.models:
        raise BundleError(f"bundle has no '{precision}' model (has: {', '.join(sorted(bundle.models))})")
    return precision


class InferenceAdapter:
    """One bundle graph on one compute device.

    Inputs: a verified ``Bundle``, device name, threads, precision ("auto": INT8 when the bundle has it).
    ``infer_sync(feeds)``: feeds is input name -> array (a bare array for a one-input graph); output: output
    name -> array. A backend failure raises RuntimeError naming the backend.
    """

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int = 1, precision: str = "auto"):
        from sonogate.device.compute import create_backend

        self.variant = choose_variant(bundle, precision)
        self.backend, self.device_note = create_backend(bundle.model_path(self.variant), device=device,
                                                        threads=threads)

    @property
    def device_name(self) -> str:
        return self.backend.name

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.backend.input_names)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.backend.output_names)

    def infer_sync(self, feeds: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        return self.backend.infer(feeds)


def described_manifest(bundle: Bundle) -> dict[str, Any]:
    """The bundle's manifest as version 2 states it (a v1 manifest is described from its task's spec)."""
    if isinstance(bundle.manifest.get("task"), dict):
        return bundle.manifest
    try:
        return describe_task(bundle.manifest, get_task(bundle.task))
    except TaskSpecError as exc:
        raise BundleError(f"bundle {bundle.path}: {exc}") from None


def input_specs(manifest: Mapping[str, Any]) -> tuple[InputSpec, ...]:
    """The ``InputSpec`` of every model input of a (described) manifest, in order."""
    specs = []
    for entry in manifest.get("inputs") or ():
        known = {key: value for key, value in entry.items() if key in _INPUT_FIELDS}
        try:
            specs.append(InputSpec(**known))
        except TypeError as exc:
            raise BundleError(f"bundle manifest input {entry.get('name')!r} is not usable: {exc}") from None
    if not specs:
        raise BundleError("bundle manifest declares no model inputs")
    return tuple(specs)


class Model(ABC):
    """A bundle's model: ``preprocess(inputs) -> (feeds, meta)``, the adapter, ``postprocess(outputs, meta)``.

    Subclasses implement the two steps and name the model type they were written for in ``model_type`` (for
    messages: ``create_model`` finds a class through the spec's ``parts["model_wrapper"]`` or ``register_wrapper``,
    never by scanning subclasses). Attributes:
    ``bundle``, ``manifest`` (as version 2 describes it), ``inputs`` (``InputSpec`` per graph input), ``outputs``
    (the manifest's output entries by name), ``task`` (id), ``modality`` ("US", "DX", ...), ``decision_unit``.
    """

    model_type: ClassVar[str] = ""

    def __init__(self, bundle: Bundle, adapter: InferenceAdapter):
        self.bundle = bundle
        self.adapter = adapter
        self.manifest = described_manifest(bundle)
        self.inputs = input_specs(self.manifest)
        if len(self.inputs) == 1 and len(adapter.input_names) == 1 and self.inputs[0].name != adapter.input_names[0]:
            # one input: the graph's own name is the only one to feed (bundles before v2 never checked the name)
            self.inputs = (replace(self.inputs[0], name=adapter.input_names[0]),)
        self.outputs: dict[str, dict[str, Any]] = dict(self.manifest.get("outputs") or {})
        task = self.manifest.get("task") or {}
        self.task = str(task.get("id", bundle.task))
        self.modality = str(task.get("modality", ""))
        self.decision_unit = str((self.manifest.get("decision") or {}).get("unit", ""))
        graph_inputs = set(adapter.input_names)
        missing = [spec.name for spec in self.inputs if spec.name not in graph_inputs]
        if missing:
            raise BundleError(f"bundle {bundle.path}: the model graph has no input {', '.join(missing)} "
                              f"(it has {', '.join(adapter.input_names)})")

    # -- what the adapter knows ------------------------------------------------------------------------------
    @property
    def device_name(self) -> str:
        return self.adapter.device_name

    @property
    def device_note(self) -> str:
        return self.adapter.device_note

    @property
    def variant(self) -> str:
        return self.adapter.variant

    @property
    def backend(self):
        return self.adapter.backend

    @property
    def image_kind(self) -> str | None:
        """"ultrasound" or "radiograph": the DICOM images this model takes (None: not a DICOM image task)."""
        return IMAGE_KINDS.get(self.modality)

    # -- the three steps ---------------------------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, inputs: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Inputs as the caller has them -> (graph feeds by input name, meta for postprocess)."""

    @abstractmethod
    def postprocess(self, outputs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Any:
        """Graph outputs by name and the meta of preprocess -> the task's result."""

    def __call__(self, inputs: Any) -> Any:
        feeds, meta = self.preprocess(inputs)
        return self.postprocess(self.adapter.infer_sync(feeds), meta)


class PointCloudPreprocessor:
    """One point-cloud input: an (n, 3) array of (x, y, z) in the spec's units -> a (1, n_points, 3) float32
    tensor. The cloud must have exactly the spec's ``n_points`` (0: any number): a cloud is never silently
    resampled, since which points a model sees changes what it measures."""

    def __init__(self, spec: InputSpec):
        if spec.kind != "points":
            raise BundleError(f"input {spec.name} is {spec.kind!r}, not a point cloud")
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    def with_meta(self, points: np.ndarray) -> tuple[np.ndarray, None]:
        cloud = np.asarray(points, dtype=np.float32)
        if cloud.ndim != 2 or cloud.shape[1] != 3:
            raise SonogateError(f"input {self.spec.name}: a point cloud is an (n, 3) array, not {cloud.shape}")
        if self.spec.n_points and cloud.shape[0] != self.spec.n_points:
            raise SonogateError(f"input {self.spec.name}: the model takes {self.spec.n_points} points, "
                                f"not {cloud.shape[0]}")
        if not np.all(np.isfinite(cloud)):
            raise SonogateError(f"input {self.spec.name}: the point cloud has non-finite coordinates")
        return np.ascontiguousarray(cloud[None]), None

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return self.with_meta(points)[0]


class InputModel(Model):
    """A model whose inputs are preprocessed as the bundle's input specs say: an ``ImagePreprocessor`` per image
    input (stretch or letterbox, interpolation, mean / std, layout), a ``PointCloudPreprocessor`` per point cloud.

    ``preprocess(inputs)``: ``inputs`` is one image / cloud (a one-input model) or a dict input name (or view) ->
    image / cloud; an image is a BGR / BGRA / gray uint8 array. ``meta``: ``letterbox`` (input name ->
    ``Letterbox`` or None), ``tensors`` (the feeds) and ``shapes`` (input name -> the given array's shape).
    """

    def __init__(self, bundle: Bundle, adapter: InferenceAdapter):
        super().__init__(bundle, adapter)
        preprocessing = self.manifest.get("preprocessing") or {}
        layout = str(preprocessing.get("layout", "NCHW"))
        pad_value = int(preprocessing.get("pad_value", 0))
        self.preprocessors: dict[str, ImagePreprocessor | PointCloudPreprocessor] = {}
        for spec in self.inputs:
            if spec.kind == "image":
                self.preprocessors[spec.name] = ImagePreprocessor(self.image_input(spec), pad_value=pad_value,
                                                                  layout=layout)
            elif spec.kind == "points":
                self.preprocessors[spec.name] = PointCloudPreprocessor(spec)
            else:
                raise BundleError(f"bundle {bundle.path}: input {spec.name} of kind {spec.kind!r} has no "
                                  f"preprocessor")
        self._by_view = {spec.view: spec.name for spec in self.inputs if spec.view}

    def image_input(self, spec: InputSpec) -> InputSpec:
        """The spec an image input is preprocessed with (a wrapper may adjust what the manifest says)."""
        return spec

    @property
    def preprocessor(self) -> ImagePreprocessor | PointCloudPreprocessor:
        """The preprocessor of a one-input model."""
        if len(self.preprocessors) != 1:
            raise BundleError(f"the model of {self.bundle.path} has {len(self.preprocessors)} inputs")
        return next(iter(self.preprocessors.values()))

    def _named(self, inputs: Any) -> dict[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            named = {self._by_view.get(key, key): value for key, value in inputs.items()}
            missing = [name for name in self.preprocessors if name not in named]
            if missing:
                views = {name: view for view, name in self._by_view.items()}
                wanted = ", ".join(f"{n} ({views[n]})" if n in views else n for n in missing)
                raise SonogateError(f"the model of task {self.task} needs input(s) {wanted}")
            return {name: named[name] for name in self.preprocessors}
        if len(self.preprocessors) != 1:
            raise SonogateError(f"the model of task {self.task} takes {len(self.preprocessors)} inputs "
                                f"({', '.join(self.preprocessors)}): give a dict name -> array")
        return {next(iter(self.preprocessors)): inputs}

    def preprocess(self, inputs: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        feeds: dict[str, np.ndarray] = {}
        boxes, shapes = {}, {}
        for name, value in self._named(inputs).items():
            feeds[name], boxes[name] = self.preprocessors[name].with_meta(value)
            shapes[name] = tuple(np.shape(value))
        return feeds, {"letterbox": boxes, "tensors": feeds, "shapes": shapes}


# -- create_model ----------------------------------------------------------------------------------------------
# model type -> "module:Class" of the generic wrapper (imported by name when first needed, like a spec's wrapper)
_WRAPPERS: dict[str, str] = {"image_measurement": "sonogate.runtime.engine:ImageMeasurementModel"}


def register_wrapper(model_type: str, dotted: str) -> None:
    """Make the class named by ``dotted`` ("package.module:Class") the generic wrapper of ``model_type``."""
    _WRAPPERS[model_type] = dotted


def resolve(dotted: str) -> Any:
    """The object named by "package.module:attribute", imported at run time."""
    module_name, _, attribute = dotted.partition(":")
    if not module_name or not attribute:
        raise BundleError(f"model wrapper {dotted!r} is not 'module:Class'")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise BundleError(f"model wrapper {dotted!r} cannot be loaded: {exc}") from None


def model_type_of(bundle: Bundle) -> str:
    """The model type a bundle stores (v2), else the one its task's spec declares (v1)."""
    task = bundle.manifest.get("task")
    if isinstance(task, dict) and task.get("model_type"):
        return str(task["model_type"])
    return _spec_of(bundle).model_type


def _spec_of(bundle: Bundle) -> TaskSpec:
    try:
        return get_task(bundle.task)
    except TaskSpecError as exc:
        raise BundleError(f"bundle {bundle.path}: {exc}") from None


def wrapper_class(bundle: Bundle) -> type[Model]:
    """The Model class for ``bundle``: its task spec's ``parts["model_wrapper"]`` when the spec's model type is
    the bundle's, else the generic wrapper registered for the model type."""
    model_type = model_type_of(bundle)
    try:
        spec: TaskSpec | None = get_task(bundle.task)
    except TaskSpecError:
        spec = None  # a v2 bundle of a task this runtime has no spec of: a generic wrapper may still run it
    if spec is not None and spec.model_type == model_type and spec.parts.get("model_wrapper"):
        wrapper = resolve(spec.parts["model_wrapper"])
    else:
        found = _WRAPPERS.get(model_type)
        if found is None:
            raise BundleError(f"bundle {bundle.path}: no runtime wrapper for model type {model_type!r} (known: "
                              f"{', '.join(sorted(_WRAPPERS)) or 'none'}; a task spec names its own in "
                              f"parts['model_wrapper'])")
        wrapper = resolve(found)
    if not (isinstance(wrapper, type) and issubclass(wrapper, Model)):
        raise BundleError(f"model wrapper for {model_type!r} is not a sonogate Model class")
    return wrapper


def create_model(bundle: Bundle | str | Path, device: str = "auto", threads: int = 1,
                 precision: str = "auto") -> Model:
    """The wrapped model of any task's bundle (a ``Bundle`` or its folder, verified on load).

    ``precision`` picks the bundle's model file ("auto": INT8 when present, "float", "int8", "openvino").
    Raises BundleError / SonogateError (one line) for a bundle no wrapper can run or a device that is absent.
    """
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    wrapper = wrapper_class(bundle)
    adapter = InferenceAdapter(bundle, device=device, threads=threads, precision=precision)
    return wrapper(bundle, adapter)


def load_image_model(bundle_path: str | Path, device: str = "auto", threads: int = 1,
                     kind: str | None = None) -> Model:
    """The per-image model of a bundle (``create_model``): what ``sonogate analyze`` runs per image and the live
    pipeline runs on each radiograph that arrives (``sonogate run --xr-bundle``).

    ``kind`` ("radiograph", "ultrasound") is the DICOM image kind the model must take. Raises BundleError (one
    line) when the bundle's task is decided over frame windows (a live session runs it), takes another kind, or
    its wrapper has no ``analyze`` step.
    """
    model = create_model(bundle_path, device=device, threads=threads)
    if kind is not None and model.image_kind != kind:
        raise BundleError(f"bundle {bundle_path} (task {model.task}, modality {model.modality or 'unknown'}) does "
                          f"not take {kind}s")
    if model.decision_unit == "frame_window" or not callable(getattr(model, "analyze", None)):
        raise BundleError(f"bundle {bundle_path} (task {model.task}) has no per-image analysis")
    return model
