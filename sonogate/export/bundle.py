"""``sonogate export``: a training run -> a model bundle the torch-free runtime loads, for any task.

BUNDLE/model.onnx          float graph, checked against torch (ORT within the task's tolerance)
BUNDLE/model.int8.onnx     static INT8 QDQ (ONNX Runtime), calibrated on training frames / images
BUNDLE/openvino/model.xml  OpenVINO IR (the task says whether by default, and whether INT8 candidates compete)
BUNDLE/parity.json         INT8 vs float and each model vs ground truth on held-out subjects; latency
BUNDLE/manifest.json       via sonogate.core.bundle.write_manifest (sha256 of every file)
plus whatever the task adds (the hip ultrasound task: ood.npz).

One writer serves every task: the run's checkpoint names its task, the task's spec names its exporter
(``parts["exporter"]``, a ``TaskExporter`` resolved with importlib) and the exporter supplies what is task-only:
the model, which data are parity and calibration data, the float check, how a variant is compared with float
and truth, the INT8 goal and the manifest's task blocks.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sonogate.core.bundle import Preprocessing, write_manifest
from sonogate.errors import DataError, SonogateError
from sonogate.export.onnx_export import INPUT_NAME, export_onnx, ort_session, run_ort

FLOAT_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
OPENVINO_DIR = "openvino"
PARITY_FILE = "parity.json"
CHECKPOINT = "checkpoint.pt"
BUNDLE_ENTRIES = {FLOAT_FILE, INT8_FILE, OPENVINO_DIR, "ood.npz", PARITY_FILE, "manifest.json", "calibration.json"}


@dataclass
class ExportOptions:
    """calib_data: image folder for INT8 calibration (default: the run's training subjects); parity_data: labelled
    folder for parity.json (default: the run's held-out subjects). ``parity_frames``, ``openvino`` and
    ``latency_runs`` left None take the task exporter's defaults."""

    calib_data: str | None = None
    parity_data: str | None = None
    calib_frames: int = 200
    parity_frames: int | None = None
    int8: bool = True
    openvino: bool | None = None
    force: bool = False
    progress: bool = True
    latency_runs: int | None = None
    seed: int = 0


@dataclass
class ExportData:
    """What a task exporter hands the writer: normalised parity inputs ``x_par`` (N, C, S, S) and INT8 calibration
    inputs ``x_cal`` (or None), parity.json's ``data`` block, and ``context`` (truths, boxes...) for its compare."""

    x_par: np.ndarray
    x_cal: np.ndarray | None
    description: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)


class TaskExporter(ABC):
    """The task-only half of an export. A task subclasses it in ``sonogate/tasks/<id>/export.py`` and names the
    instance in its spec's ``parts["exporter"]``. Words and defaults are attributes; the rest are methods."""

    parity_frames = 400
    latency_runs = 30
    openvino_default = True
    openvino_candidates = True  # fp32, the ORT INT8 model as IR and NNCF INT8 compete (else fp32 only, optional)
    int8_fallback = False  # retry INT8 with plain ONNX shape inference and keep a float-only bundle on failure
    quantization_note = "static QDQ per-channel, ONNX Runtime"
    # weight initializer name prefixes whose Conv / Gemm / MatMul stay float in the INT8 model (None: the heads,
    # ``sonogate.export.quantize.head_nodes``)
    float_weight_prefixes: tuple[str, ...] | None = None
    unit = "frames"  # what one parity / calibration input is called in log lines
    latency_threads = "ORT / OpenVINO default threads, median of single-frame calls"
    float_keys: tuple[str, ...] = ()  # which keys of compare(float outputs) parity.json keeps for the float model
    goal: ClassVar[dict[str, float]] = {}
    check_rows = 16

    @abstractmethod
    def load_model(self, ckpt: dict):
        """The trained torch model (eval mode) of a checkpoint of this task; DataError when it is not one."""

    @abstractmethod
    def output_names(self, model) -> tuple[str, ...]:
        """The graph's output names, in the order the torch model returns them."""

    @abstractmethod
    def load_data(self, ckpt: dict, opts: ExportOptions, pre: Preprocessing, parity_frames: int) -> ExportData:
        """The parity and calibration inputs (and truths) of this task, preprocessed as ``pre`` says."""

    def check_onnx(self, path: Path, model, x: np.ndarray) -> dict[str, float]:
        """ORT vs torch on ``x``: max |difference| per output; SonogateError beyond the task's tolerance."""
        from sonogate.export.onnx_export import check_onnx

        return check_onnx(path, model, x)

    @abstractmethod
    def comparer(self, ckpt: dict, data: ExportData, ref: dict[str, np.ndarray]) -> Callable[[dict], dict]:
        """A function: outputs of one model variant -> its parity block (vs float ``ref`` and vs truth)."""

    @abstractmethod
    def int8_goal(self, block: dict) -> tuple[bool, str]:
        """(meets the INT8 parity goal, the log line saying by how much) of an INT8 parity block."""

    def tracks_float(self, block: dict) -> bool:
        """Whether an OpenVINO INT8 candidate tracks float closely enough to be kept."""
        return self.int8_goal(block)[0]

    def extra_files(self, out_dir: Path, ckpt: dict, log: Callable[[str], None]) -> dict[str, Any]:
        """Write task files beside the models; returns manifest entries describing them."""
        return {}

    @abstractmethod
    def manifest(self, ckpt: dict, pre: Preprocessing, model) -> dict[str, Any]:
        """The manifest's task blocks (task, modality, preprocessing, outputs, model, ...); the writer adds models,
        parity, provenance and whatever ``extra_files`` returned."""


def pick_subset(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of at most ``limit`` of ``n`` rows."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def normalised_inputs(images: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) with x = (g / 255 - mean) / std (the bundle formula)."""
    return ((images.astype(np.float32) / 255.0 - pre.mean) / pre.std)[:, None]


def latency_ms(fn: Callable[[np.ndarray], object], x1: np.ndarray, runs: int) -> dict:
    """Median / p90 wall time of single-input calls (batch 1, the live-video case) after 3 warm-ups."""
    for _ in range(3):
        fn(x1)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x1)
        times.append((time.perf_counter() - t) * 1000)
    return {
        "median_ms": round(float(np.median(times)), 2),
        "p90_ms": round(float(np.percentile(times, 90)), 2),
        "runs": runs,
    }


def mae_block(pred: np.ndarray, ref: np.ndarray, names: tuple[str, ...]) -> dict:
    """Per column name: MAE, max |error| and count of the rows where both are finite (names without any: left out)."""
    out = {}
    for j, name in enumerate(names):
        ok = np.isfinite(ref[:, j]) & np.isfinite(pred[:, j])
        if ok.any():
            err = pred[ok, j] - ref[ok, j]
            out[name] = {
                "mae": round(float(np.abs(err).mean()), 4),
                "max_abs": round(float(np.abs(err).max()), 4),
                "n": int(ok.sum()),
            }
    return out


def export_versions() -> dict:
    """Library versions of the export (provenance)."""
    import onnx
    import onnxruntime
    import torch

    import sonogate

    v = {
        "python": platform.python_version(),
        "sonogate": sonogate.__version__,
        "torch": str(torch.__version__),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    from importlib import metadata

    for dist in ("torchvision", "openvino", "nncf"):
        try:
            v[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # provenance only: an absent optional package is fine
            v[dist] = None
    return v


def prepare_out_dir(out_dir: Path, force: bool) -> None:
    """Create the bundle folder. A non-empty one is replaced only with ``force`` and only when it holds
    nothing but bundle files: --force must never wipe a folder that was not a bundle (a typo such as --out .)."""
    import shutil

    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise SonogateError(f"bundle folder {out_dir} is not empty (use --force to overwrite)")
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in BUNDLE_ENTRIES)
        if foreign:
            raise SonogateError(
                f"refusing to overwrite {out_dir}: it holds non-bundle files ({', '.join(foreign[:3])})"
            )
        for entry in out_dir.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def provenance(ckpt: dict, folder_kind: str, unit: str) -> dict:
    """The manifest's provenance block of a training checkpoint: training data and licence, seed, library
    versions, train and export commands, config, held-out metrics."""
    cfg, data, metrics = ckpt["config"], ckpt["data"], ckpt.get("metrics", {})
    return {
        "training_data": {
            "description": f"{folder_kind} {data['path']} ({data['n_images']} {unit}); "
            f"unlabelled: {data['unlabelled'] or 'none'}",
            "licence": data.get("licence", ""),
        },
        "seed": cfg["seed"],
        "versions": {**ckpt.get("versions", {}), **export_versions()},
        "train_command": ckpt.get("command", ""),
        "export_command": " ".join(sys.argv),
        "train_config": cfg,
        "metrics": {k: metrics[k] for k in ("heldout", "val", "split") if k in metrics},
    }


def read_run_checkpoint(run_dir: str | Path) -> dict:
    """RUN_DIR/checkpoint.pt (or the file itself) read weights-only; DataError when absent or unreadable."""
    path = Path(run_dir) / CHECKPOINT if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise DataError(f"no training checkpoint at {path} (run sonogate train first)")
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:  # corrupt / foreign file
        raise DataError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or not ckpt.get("task"):
        raise DataError(f"{path} is not a sonogate training checkpoint (no task)")
    return ckpt


def exporter_of(ckpt: dict) -> TaskExporter:
    """The exporter the checkpoint's task names (``parts["exporter"]`` of its spec)."""
    from sonogate.core.registry import get_task

    return get_task(str(ckpt["task"])).part("exporter")


def export_bundle(run_dir: str, out: str, opts: ExportOptions | None = None, log: Callable[[str], None] = print) -> str:
    """Export RUN_DIR (from ``sonogate train``, any task) to the bundle folder ``out``. Returns the manifest sha256.

    Calibration inputs: ``opts.calib_data`` (any image folder) or the run's training subjects. Parity set:
    ``opts.parity_data`` (labelled) or the run's held-out subjects (so parity is measured on inputs neither
    training nor INT8 calibration saw).
    """
    opts = opts or ExportOptions()
    ckpt = read_run_checkpoint(run_dir)
    exporter = exporter_of(ckpt)
    model = exporter.load_model(ckpt)
    cfg = ckpt["config"]
    size = int(cfg["size"])
    pre = Preprocessing(height=size, width=size, mean=cfg["mean"], std=cfg["std"])
    out_dir = Path(out)
    prepare_out_dir(out_dir, opts.force)
    parity_frames = exporter.parity_frames if opts.parity_frames is None else opts.parity_frames
    runs = exporter.latency_runs if opts.latency_runs is None else opts.latency_runs
    openvino = exporter.openvino_default if opts.openvino is None else opts.openvino
    data = exporter.load_data(ckpt, opts, pre, parity_frames)
    if (opts.int8 or openvino) and data.x_cal is None:
        raise DataError(f"no calibration {exporter.unit}: pass --calib-data DIR")
    x_par = data.x_par

    # 1. float ONNX, verified against torch.
    float_path = out_dir / FLOAT_FILE
    log("exporting model.onnx")
    export_onnx(model, float_path, size, exporter.output_names(model))
    diffs = exporter.check_onnx(float_path, model, x_par[: exporter.check_rows])
    log(f"model.onnx matches torch (max abs diff {max(diffs.values()):.2e})")
    sess_float = ort_session(float_path)
    ref = run_ort(sess_float, x_par)
    compare = exporter.comparer(ckpt, data, ref)
    x1 = x_par[:1]
    float_block = compare(ref)
    parity: dict = {
        "data": data.description,
        "goal": dict(exporter.goal),
        "latency_note": f"batch 1, {size} px, CPU ({platform.processor() or platform.machine()}), "
        + exporter.latency_threads,
        "models": {
            "float": {
                "file": FLOAT_FILE,
                **{k: float_block[k] for k in exporter.float_keys if k in float_block},
                "latency": latency_ms(lambda x: sess_float.run(None, {INPUT_NAME: x}), x1, runs),
            }
        },
    }
    models = {"float": {"file": FLOAT_FILE, "format": "onnx", "precision": "fp32"}}

    # 2. static INT8 with ONNX Runtime.
    int8_path = None
    if opts.int8:
        log(f"quantising model.int8.onnx on {len(data.x_cal)} calibration {exporter.unit}")
        int8_path = quantize(float_path, out_dir / INT8_FILE, data.x_cal, log, exporter.int8_fallback,
                             exporter.float_weight_prefixes)
        if int8_path is None:
            skipped = "ONNX Runtime quantisation failed on this machine (see the export log)"
            parity["models"]["int8"] = {"skipped": skipped}
    if int8_path is not None:
        sess8 = ort_session(int8_path)
        block = compare(run_ort(sess8, x_par))
        block["latency"] = latency_ms(lambda x: sess8.run(None, {INPUT_NAME: x}), x1, runs)
        block["meets_goal"], line = exporter.int8_goal(block)
        parity["models"]["int8"] = {"file": INT8_FILE, **block}
        models["int8"] = {"file": INT8_FILE, "format": "onnx", "precision": "int8",
                          "quantization": exporter.quantization_note}  # fmt: skip
        log(line)

    # 3. OpenVINO IR.
    if openvino:
        entry = write_openvino(exporter, out_dir, float_path, int8_path, data.x_cal, compare, x_par, runs, parity, log)
        if entry is not None:
            models["openvino"] = entry

    # 4. task files (OOD statistics...), parity.json, manifest.
    extra = exporter.extra_files(out_dir, ckpt, log)
    (out_dir / PARITY_FILE).write_text(json.dumps(parity, indent=2) + "\n")
    manifest = {**exporter.manifest(ckpt, pre, model), **extra, "models": models, "parity": {"file": PARITY_FILE}}
    digest = write_manifest(out_dir, manifest)
    log(f"bundle written: {out_dir} ({', '.join(models)})")
    return digest


def quantize(float_path: Path, int8_path: Path, x_cal: np.ndarray, log: Callable[[str], None], fallback: bool,
             float_weight_prefixes: tuple[str, ...] | None = None):
    """``sonogate.export.quantize.quantize_int8``. With ``fallback``: when ONNX Runtime's symbolic shape inference
    rejects the graph (seen with torch 2.11's exporter and onnxruntime 1.30 on the GPU machines), the same static
    QDQ recipe with plain ONNX shape inference; None (float-only bundle) when that fails too.
    ``float_weight_prefixes``: the nodes whose weights start so stay float (None: the heads)."""
    from sonogate.export.quantize import nodes_with_weights, quantize_int8

    exclude = None if float_weight_prefixes is None else nodes_with_weights(float_path, float_weight_prefixes)
    if not fallback:
        return quantize_int8(float_path, int8_path, x_cal, exclude_nodes=exclude)
    for skip_symbolic_shape in (False, True):
        try:
            return quantize_int8(float_path, int8_path, x_cal, exclude_nodes=exclude,
                                 skip_symbolic_shape=skip_symbolic_shape)
        except Exception as exc:  # noqa: BLE001 - a quantiser failure must not lose the float bundle
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if not skip_symbolic_shape:
                log(f"int8: symbolic shape inference failed ({reason}); retrying with ONNX shape inference")
            else:
                log(f"int8 skipped: {reason}")
    int8_path.unlink(missing_ok=True)
    return None


def write_openvino(exporter: TaskExporter, out_dir: Path, float_path: Path, int8_path: Path | None, x_cal, compare,
                   x_par: np.ndarray, runs: int, parity: dict, log: Callable[[str], None]) -> dict | None:
    """OpenVINO IR into ``out_dir/openvino``; returns the manifest's models entry (None when skipped).

    With ``exporter.openvino_candidates``: fp32, the ORT QDQ model as IR (same INT8 recipe) and NNCF INT8 compete;
    the fastest candidate that tracks float is kept (fp32 when none does). Otherwise the fp32 IR alone, skipped
    when openvino is not installed (the GPU training machines have none: the bundle is complete without it).
    """
    from sonogate.export.quantize import export_openvino, openvino_runner

    if not exporter.openvino_candidates:
        try:
            xml = export_openvino(float_path, out_dir / OPENVINO_DIR)
            run = openvino_runner(xml)
            block = compare(run(x_par))
        except ImportError as exc:
            log(f"openvino IR skipped ({exc})")
            return None
        block["latency"] = latency_ms(run, x_par[:1], runs)
        parity["models"]["openvino"] = {"file": f"{OPENVINO_DIR}/model.xml", "precision": "fp32", **block}
        return {"file": f"{OPENVINO_DIR}/model.xml", "format": "openvino", "precision": "fp32"}
    import shutil
    import tempfile

    log("converting to OpenVINO IR")
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"fp32": (float_path, None)}
        if int8_path is not None:
            sources["int8_qdq"] = (int8_path, None)
        if x_cal is not None:
            sources["int8_nncf"] = (float_path, x_cal)
        candidates = {}
        for name, (source, calib) in sources.items():
            xml = export_openvino(source, Path(tmp) / name, calib=calib)
            run = openvino_runner(xml)
            block = compare(run(x_par))
            block["latency"] = latency_ms(run, x_par[:1], runs)
            candidates[name] = block
        parity["openvino_candidates"] = candidates
        kept = [n for n in candidates if n == "fp32" or exporter.tracks_float(candidates[n])]
        chosen = min(kept, key=lambda n: candidates[n]["latency"]["median_ms"])
        shutil.copytree(Path(tmp) / chosen, out_dir / OPENVINO_DIR)
    precision = "fp32" if chosen == "fp32" else "int8"
    parity["models"]["openvino"] = {"file": f"{OPENVINO_DIR}/model.xml", "precision": precision, "source": chosen}
    parity["models"]["openvino"].update(candidates[chosen])
    log(f"openvino: kept {chosen}")
    return {"file": f"{OPENVINO_DIR}/model.xml", "format": "openvino", "precision": precision}


def held_out_split(folder, keys: np.ndarray, held: set[str]):
    """(held-out part, training part) of a labelled folder whose row keys (subjects) are ``keys``."""
    is_held = np.array([k in held for k in keys])
    return folder.subset(np.flatnonzero(is_held)), folder.subset(np.flatnonzero(~is_held))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))

