"""Compute devices: one ``infer(feeds) -> {output name: array}`` over ONNX Runtime and OpenVINO, torch-free.

A model may have any number of named inputs (two radiographs, two point clouds...). ``infer`` takes ``feeds``, a
dict input name -> array; a bare array is accepted for a one-input model. Every backend exposes ``input_names``,
``input_shapes`` (static shape with the batch set to 1, or None when another dimension is dynamic),
``input_dtypes`` and ``output_names``; ``input_name`` / ``input_shape`` / ``input_dtype`` are the first input's.

=================  ==========================================================================
``auto``           OpenVINO CPU when installed (reads .onnx and .xml IR), else ONNX Runtime CPU
``ort-cpu``        ONNX Runtime, CPUExecutionProvider
``ort-cuda``       ONNX Runtime, CUDAExecutionProvider (onnxruntime-gpu and a working CUDA)
``ort-openvino``   ONNX Runtime, OpenVINOExecutionProvider (onnxruntime-openvino)
``openvino-cpu``   OpenVINO runtime on the CPU
``openvino-gpu``   OpenVINO runtime on an Intel GPU
``openvino-auto``  OpenVINO AUTO device selection (latency hint)
=================  ==========================================================================

``threads`` is the number of intra-op threads (ORT ``intra_op_num_threads`` with one inter-op thread and
sequential execution; OpenVINO ``INFERENCE_NUM_THREADS`` with ``PERFORMANCE_HINT=LATENCY`` and one stream).
It defaults to 1: on a small cart CPU shared with capture and display, 2 threads can be many times slower than
one as soon as anything else runs. CPU inference runs in f32 (``INFERENCE_PRECISION_HINT=f32``) so numbers
match the float model the calibration was computed with; pass ``precision=None`` to let OpenVINO choose.

A device that is unknown or absent raises :class:`SonogateError` with one line naming the valid / available
ones. An exception inside ``infer`` is re-raised as ``RuntimeError`` naming the backend.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sonogate.errors import SonogateError

DEVICES = ("auto", "ort-cpu", "ort-cuda", "ort-openvino", "openvino-cpu", "openvino-gpu", "openvino-auto")
_ORT_PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-openvino": "OpenVINOExecutionProvider",
}
_OV_DEVICES = {"openvino-cpu": "CPU", "openvino-gpu": "GPU", "openvino-auto": "AUTO"}
_NP_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


Feeds = Mapping[str, np.ndarray]


@runtime_checkable
class InferenceBackend(Protocol):
    name: str  # e.g. "onnxruntime:CPUExecutionProvider" or "openvino:CPU"
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def infer(self, feeds: Feeds | np.ndarray) -> dict[str, np.ndarray]: ...


def as_feeds(feeds: Feeds | np.ndarray, input_names: tuple[str, ...], backend_name: str) -> dict[str, np.ndarray]:
    """``feeds`` as a dict covering exactly ``input_names``: a bare array is the one input of a one-input model.

    Raises RuntimeError (naming the backend, like any inference failure) for a bare array given to a model with
    several inputs, a missing input or an input the model does not have.
    """
    if isinstance(feeds, Mapping):
        given = set(feeds)
        missing = [n for n in input_names if n not in given]
        unknown = sorted(given - set(input_names))
        if missing or unknown:
            parts = ([f"missing input(s) {', '.join(missing)}"] if missing else []) + (
                [f"unknown input(s) {', '.join(unknown)}"] if unknown else [])
            raise RuntimeError(f"{backend_name}: inference failed: {'; '.join(parts)} "
                               f"(the model takes {', '.join(input_names)})")
        return dict(feeds)
    if len(input_names) != 1:
        raise RuntimeError(f"{backend_name}: inference failed: the model takes {len(input_names)} named inputs "
                           f"({', '.join(input_names)}); pass a dict name -> array")
    return {input_names[0]: feeds}


# --------------------------------------------------------------------------- what is installed
def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return ort


def _import_ov() -> Any:
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov


@lru_cache(maxsize=1)
def _ov_core() -> Any:
    return _import_ov().Core()


@lru_cache(maxsize=1)
def _ov_device_list() -> tuple[str, ...]:
    if _import_ov() is None:
        return ()
    try:
        return tuple(_ov_core().available_devices)
    except Exception:  # noqa: BLE001 - a broken plugin must not break device listing
        return ()


def available_devices() -> list[str]:
    """Device names usable here, in the order of ``DEVICES`` (always starts with ``auto`` when any is)."""
    found: list[str] = []
    ort = _import_ort()
    providers = set(ort.get_available_providers()) if ort is not None else set()
    for device, provider in _ORT_PROVIDERS.items():
        if provider in providers:
            found.append(device)
    ov_devices = _ov_device_list()
    if "CPU" in ov_devices:
        found.append("openvino-cpu")
    if any(d.startswith("GPU") for d in ov_devices):
        found.append("openvino-gpu")
    if ov_devices:
        found.append("openvino-auto")
    return (["auto"] + found) if found else []


def _device_error(device: str) -> SonogateError:
    avail = available_devices()
    return SonogateError(
        f"device '{device}' is not available here (available: {', '.join(avail) if avail else 'none'})"
    )


# --------------------------------------------------------------------------- backends
def _static_shape(dims: list[Any]) -> tuple[int, ...] | None:
    """Dims with a dynamic batch set to 1; None when another dimension is dynamic (cannot warm up)."""
    shape = []
    for i, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif i == 0:
            shape.append(1)
        else:
            return None
    return tuple(shape)


class OrtBackend:
    """ONNX Runtime session for one execution provider."""

    def __init__(self, model_path: Path, provider: str, threads: int) -> None:
        ort = _import_ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; ORT warnings are not the user's business
        # Threads waiting for work spin by default: that steals a shared 2-core CPU from capture and display.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        provider_options: dict[str, str] = {}
        if provider == "OpenVINOExecutionProvider":
            provider_options = {"device_type": "CPU", "num_of_threads": str(threads)}
        providers: list[Any] = [(provider, provider_options)]
        if provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        active = self.session.get_providers()
        if not active or active[0] != provider:  # e.g. CUDA EP installed but libcudnn / driver missing
            raise SonogateError(
                f"device 'ort-{_short_provider(provider)}' is not available here: ONNX Runtime could not "
                f"load {provider} (it fell back to {', '.join(active) or 'nothing'})"
            )
        inputs = self.session.get_inputs()
        self.name = f"onnxruntime:{provider}"
        self.input_names = tuple(i.name for i in inputs)
        self.input_shapes = tuple(_static_shape(list(i.shape)) for i in inputs)
        self.input_dtypes = tuple(np.dtype(_NP_DTYPES.get(i.type, np.float32)) for i in inputs)
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self._output_list = list(self.output_names)

    input_name = property(lambda self: self.input_names[0])
    input_shape = property(lambda self: self.input_shapes[0])
    input_dtype = property(lambda self: self.input_dtypes[0])

    def infer(self, feeds: Feeds | np.ndarray) -> dict[str, np.ndarray]:
        """{output name: array} for ``feeds`` (input name -> array; a bare array for a one-input model)."""
        named = as_feeds(feeds, self.input_names, self.name)
        try:
            values = self.session.run(self._output_list, named)
        except Exception as exc:
            raise RuntimeError(f"{self.name}: inference failed: {_one_line(exc)}") from exc
        return dict(zip(self.output_names, values))


_CONTRACT_OUTPUTS = ("measurements", "plane_logit", "features", "ihdi_logits")


def _output_name(port) -> str:
    """The graph-output name of an OpenVINO port: a bundle-contract name if the tensor carries one, else the
    shortest name that is not an internal '/op_output' name."""
    names = set(port.get_names())
    for name in _CONTRACT_OUTPUTS:
        if name in names:
            return name
    plain = sorted((n for n in names if "/" not in n), key=len)
    return plain[0] if plain else port.get_any_name()


class OpenVINOBackend:
    """OpenVINO compiled model (reads ONNX or IR .xml) with one reusable infer request."""

    def __init__(self, model_path: Path, device: str, threads: int, precision: str | None) -> None:
        core = _ov_core()
        model = core.read_model(str(model_path))
        cpu_config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
        if precision:
            cpu_config["INFERENCE_PRECISION_HINT"] = precision
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if device == "CPU":
            config.update(cpu_config)
        elif device == "AUTO":
            config["DEVICE_PROPERTIES"] = {"CPU": cpu_config}  # applies if AUTO picks (or starts on) the CPU
        elif precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        self.name = f"openvino:{device}"
        if device == "AUTO":
            try:
                chosen = list(self.compiled.get_property("EXECUTION_DEVICES"))
            except RuntimeError:  # a plugin without the property: the plain name will do
                chosen = []
            if chosen:
                self.name += "(" + ",".join(chosen) + ")"
        # inputs by the names of the model as read (an ONNX graph input's name), fed by port index
        self.input_names = tuple(_input_name(port) for port in model.inputs)
        self._input_index = {name: i for i, name in enumerate(self.input_names)}
        self._input_dims: list[list[int | None] | None] = []
        self._input_text: list[str] = []
        shapes, dtypes = [], []
        for port in self.compiled.inputs:
            pshape = port.get_partial_shape()
            self._input_text.append(str(pshape))
            if pshape.rank.is_static:
                dims = [d.get_length() if d.is_static else None for d in pshape]
                self._input_dims.append(dims)
                shapes.append(_static_shape([-1 if d is None else d for d in dims]))
            else:
                self._input_dims.append(None)
                shapes.append(None)
            dtypes.append(np.dtype(port.get_element_type().to_dtype()))
        self.input_shapes, self.input_dtypes = tuple(shapes), tuple(dtypes)
        # names from the model as read, not as compiled: compilation folds no-op ops and can leave an output
        # known only by an internal tensor name ('/Mul_output_0'), which would break outputs["measurements"]
        self.output_names = tuple(_output_name(o) for o in model.outputs)

    input_name = property(lambda self: self.input_names[0])
    input_shape = property(lambda self: self.input_shapes[0])
    input_dtype = property(lambda self: self.input_dtypes[0])

    def _check_shape(self, index: int, shape: tuple[int, ...]) -> None:
        # OpenVINO CPU with INFERENCE_NUM_THREADS set (2026.x) returns empty outputs for a mismatching input
        # shape instead of raising: check here so a wrong tensor is an error, never silently "no result".
        dims = self._input_dims[index]
        if dims is None:
            return
        if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
            where = f" {self.input_names[index]}" if len(self.input_names) > 1 else ""
            raise RuntimeError(
                f"{self.name}: inference failed: input{where} shape {tuple(shape)} does not match "
                f"the model input {self._input_text[index]}"
            )

    def infer(self, feeds: Feeds | np.ndarray) -> dict[str, np.ndarray]:
        """{output name: array} for ``feeds`` (input name -> array; a bare array for a one-input model)."""
        named = as_feeds(feeds, self.input_names, self.name)
        by_index = {}
        for name, value in named.items():
            index = self._input_index[name]
            self._check_shape(index, np.shape(value))
            by_index[index] = value
        try:
            self.request.infer(by_index)
            # Output tensors are reused by the next inference: hand out copies.
            return {name: self.request.get_output_tensor(i).data.copy() for i, name in enumerate(self.output_names)}
        except Exception as exc:
            raise RuntimeError(f"{self.name}: inference failed: {_one_line(exc)}") from exc


def _input_name(port) -> str:
    """The graph-input name of an OpenVINO port: the shortest of its names without '/' (ONNX input names)."""
    plain = sorted((n for n in port.get_names() if "/" not in n), key=len)
    return plain[0] if plain else port.get_any_name()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "") if text else type(exc).__name__


def _short_provider(provider: str) -> str:
    return {"CUDAExecutionProvider": "cuda", "OpenVINOExecutionProvider": "openvino"}.get(provider, "cpu")


def _build(model_path: Path, device: str, threads: int, precision: str | None) -> Any:
    if device in _ORT_PROVIDERS:
        if model_path.suffix.lower() == ".xml":
            raise SonogateError(
                f"device '{device}' runs ONNX models; {model_path.name} is OpenVINO IR (use an openvino-* device)"
            )
        return OrtBackend(model_path, _ORT_PROVIDERS[device], threads)
    return OpenVINOBackend(model_path, _OV_DEVICES[device], threads, precision)


def warm_up(backend: Any, runs: int) -> float | None:
    """Run ``runs`` inferences on zeros; return the last one's time in ms (None if any input shape is dynamic)."""
    shapes = getattr(backend, "input_shapes", None)
    if runs <= 0 or not shapes or any(shape is None for shape in shapes):
        return None
    feeds = {name: np.zeros(shape, dtype)
             for name, shape, dtype in zip(backend.input_names, shapes, backend.input_dtypes)}
    elapsed = 0.0
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.infer(feeds)
        elapsed = time.perf_counter() - t0
    return 1000.0 * elapsed


def create_backend(
    model_path: str | Path,
    device: str = "auto",
    threads: int = 1,
    warmup: int = 3,
    *,
    precision: str | None = "f32",
) -> tuple[InferenceBackend, str]:
    """Load ``model_path`` (.onnx, or .xml IR for OpenVINO) on ``device``; return the backend and a one-line note.

    The note says which device was used and why (e.g. ``auto: OpenVINO CPU not available (openvino is not
    installed), using ONNX Runtime CPU``) and the warm-up latency. Raises SonogateError for an unknown or
    absent device, a missing model file, or a model the runtime cannot load.
    """
    device = str(device).strip().lower()
    if device not in DEVICES:
        raise SonogateError(f"unknown device '{device}' (valid: {', '.join(DEVICES)})")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise SonogateError(f"threads must be a whole number >= 1, got {threads!r}")
    path = Path(model_path)
    if not path.is_file():
        raise SonogateError(f"model file not found: {path}")

    note_prefix = ""
    if device == "auto":
        ov_ok = "openvino-cpu" in available_devices()
        ort_ok = "ort-cpu" in available_devices()
        if ov_ok:
            try:
                backend = _build(path, "openvino-cpu", threads, precision)
                note_prefix = "auto: using OpenVINO CPU"
            except SonogateError:
                raise
            except Exception as exc:  # noqa: BLE001 - any OpenVINO load failure: fall back to ONNX Runtime
                if not ort_ok or path.suffix.lower() == ".xml":
                    raise SonogateError(f"cannot load {path.name} with OpenVINO CPU: {_one_line(exc)}") from None
                backend = _load(path, "ort-cpu", threads, precision)
                note_prefix = (
                    f"auto: OpenVINO CPU could not load the model ({_one_line(exc)[:120]}), using ONNX Runtime CPU"
                )
        elif ort_ok:
            if path.suffix.lower() == ".xml":
                raise SonogateError(f"{path.name} is OpenVINO IR but openvino is not installed (pip install openvino)")
            why = "openvino is not installed" if _import_ov() is None else "no OpenVINO CPU device"
            backend = _load(path, "ort-cpu", threads, precision)
            note_prefix = f"auto: OpenVINO CPU not available ({why}), using ONNX Runtime CPU"
        else:
            raise SonogateError("no inference runtime installed: pip install onnxruntime (or openvino)")
    else:
        if device not in available_devices():
            raise _device_error(device)
        backend = _load(path, device, threads, precision)
        note_prefix = f"{device}: {backend.name}"

    try:
        ms = warm_up(backend, warmup)
    except RuntimeError as exc:
        raise SonogateError(f"model {path.name} failed its warm-up run on {backend.name}: {exc}") from None
    note = f"{note_prefix}, {threads} thread{'s' if threads != 1 else ''}"
    if ms is not None:
        note += f", warm-up {ms:.2f} ms/inference"
    return backend, note


def _load(path: Path, device: str, threads: int, precision: str | None) -> Any:
    try:
        return _build(path, device, threads, precision)
    except SonogateError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt model, unsupported operator, plugin failure
        raise SonogateError(f"cannot load {path.name} on '{device}': {_one_line(exc)}") from None
