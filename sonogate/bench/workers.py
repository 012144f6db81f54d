"""The bench's subprocess worker protocol and its tasks.

Every configuration runs in a fresh interpreter, ``python -m sonogate.bench.workers SPEC.json``, with
``OMP_NUM_THREADS`` & co. set to its thread count, so thread settings (torch.set_num_threads, ORT
intra_op_num_threads, OpenVINO INFERENCE_NUM_THREADS) never leak from one configuration into the next. SPEC
names the task (latency, build, peak, e2e, accuracy), its parameters and ``result_path``, where the worker
writes its result as JSON (``{"error": one line}`` when the task raised).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sonogate.bench.text import one_line

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
              "NUMEXPR_NUM_THREADS")
# backend -> (sonogate.device.compute device, which model file)
BACKENDS = {
    "pytorch-eager": (None, "torch"),
    "onnxruntime": ("ort-cpu", "onnx"),
    "openvino": ("openvino-cpu", "onnx"),
    "openvino-nncf": ("openvino-cpu", "nncf"),
    "openvino-ir": ("openvino-cpu", "ir"),  # the bundle's own OpenVINO IR, at the bundle's size
    "pytorch-eager-cuda": (None, "torch"),
    "onnxruntime-cuda": ("ort-cuda", "onnx"),
    "onnxruntime-tensorrt": (None, "onnx"),
}


# ===================================================================================== parent side
def worker_env(threads: int | None) -> dict[str, str]:
    """This process's environment with the BLAS / OpenMP thread counts set to ``threads`` (None: unchanged)
    and this checkout first on PYTHONPATH, so the worker imports the same sonogate."""
    env = dict(os.environ)
    if threads is not None:
        for key in THREAD_ENV:
            env[key] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("SONOGATE_BENCH_WORKER_RESULT", None)
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def worker_command(spec_path: str | Path) -> list[str]:
    """The command line of one worker process reading ``spec_path``."""
    return [sys.executable, "-m", "sonogate.bench.workers", str(spec_path)]


def run_worker(spec: dict[str, Any], threads: int | None, timeout: float) -> dict[str, Any]:
    """Run one worker task in a fresh interpreter with ``threads`` BLAS / OpenMP threads, for at most
    ``timeout`` seconds. Returns its result dict, or {"error": one line}."""
    with tempfile.TemporaryDirectory(prefix="sonogate-bench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(dict(spec, result_path=str(result_path))))
        try:
            proc = subprocess.run(worker_command(spec_path), env=worker_env(threads), capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:g} s"}
        if result_path.is_file():
            try:
                return json.loads(result_path.read_text())
            except json.JSONDecodeError as exc:
                return {"error": f"unreadable worker result: {exc}"}
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        return {"error": f"worker exited {proc.returncode}: {lines[-1].strip()[:300] if lines else 'no output'}"}


# ===================================================================================== worker side
def main(spec_path: str) -> int:
    """Run the task of the SPEC file and write its result (or its error, as one line) to its result_path."""
    from sonogate.bench.models import build_models

    spec = json.loads(Path(spec_path).read_text())
    tasks: dict[str, Callable[[dict], dict]] = {
        "latency": latency_task, "build": build_models, "peak": peak_task, "accuracy": accuracy_task,
        "e2e": e2e_task,
    }
    try:
        result = tasks[spec["task"]](spec)
    except Exception as exc:  # noqa: BLE001 - reported as one line in the parent
        result = {"error": f"{type(exc).__name__}: {one_line(exc)}"}
    Path(spec["result_path"]).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------- latency
def _torch_runner(spec: dict, x: np.ndarray):
    import torch

    from sonogate.bench.models import build_torch_model

    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    model, arch = build_torch_model(seed=int(spec.get("seed", 0)))
    cuda = spec["backend"] == "pytorch-eager-cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda is not available")
        model = model.cuda()
    model.eval()
    name = f"torch {torch.__version__} {'cuda' if cuda else 'cpu'}, {torch.get_num_threads()} threads"

    def run():
        with torch.inference_mode():
            tensor = torch.from_numpy(x)
            if cuda:
                tensor = tensor.cuda(non_blocking=False)
            outputs = model(tensor)
            return [o.cpu().numpy() for o in outputs]  # .cpu() synchronises on CUDA

    return run, name, f"{arch}, eager float32, inference_mode"


def _runtime_runner(spec: dict, x: np.ndarray):
    from sonogate.device.compute import create_backend

    backend_name = spec["backend"]
    path, threads = Path(spec["model"]), int(spec["threads"])
    if backend_name == "onnxruntime-tensorrt":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        trt = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(Path(spec["cache"]) / "trt")}
        if spec["precision"] == "int8":
            trt["trt_int8_enable"] = "True"
        session = ort.InferenceSession(str(path), options, providers=[("TensorrtExecutionProvider", trt),
                                                                      "CUDAExecutionProvider", "CPUExecutionProvider"])
        if session.get_providers()[0] != "TensorrtExecutionProvider":
            raise RuntimeError(f"TensorRT EP did not load (active: {session.get_providers()})")
        input_name = session.get_inputs()[0].name
        return (lambda: session.run(None, {input_name: x})), "onnxruntime:TensorrtExecutionProvider", "direct ORT session"
    backend, _note = create_backend(path, device=BACKENDS[backend_name][0], threads=threads, warmup=0)
    return (lambda: backend.infer(x)), backend.name, "sonogate.device.compute.create_backend"


def latency_task(spec: dict) -> dict:
    """Time ``spec["frames"]`` batch-1 runs (after ``warmup``) of one backend / precision / size / thread count.
    Returns per-frame times (ms), CPU ms per frame, model load time (s), peak RSS (MB), device name, via."""
    import resource

    size = int(spec["size"])
    x = np.random.default_rng(0).standard_normal((1, 1, size, size), dtype=np.float32)
    t0 = time.perf_counter()
    if spec["backend"].startswith("pytorch"):
        run, device_name, via = _torch_runner(spec, x)
    else:
        run, device_name, via = _runtime_runner(spec, x)
    load_s = time.perf_counter() - t0
    for _ in range(int(spec["warmup"])):
        run()
    frames = int(spec["frames"])
    max_seconds = float(spec.get("max_seconds") or math.inf)
    times = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(frames):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
        if t - wall0 > max_seconds and len(times) >= 10:
            break  # a pathological configuration (e.g. oversubscribed threads): keep what was measured
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    frames = len(times)
    return {
        "times_ms": [round(float(v), 4) for v in times],
        "cpu_ms_per_frame": round(cpu / frames * 1e3, 3),
        "cpu_cores_busy": round(cpu / wall, 3) if wall > 0 else None,
        "load_s": round(load_s, 3),
        "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device_name": device_name,
        "via": via,
    }


# ---------------------------------------------------------------------------- compute peak
def _best_ms(fn: Callable[[], Any], warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def _kernel_runner(engine: str, path: Path, x: np.ndarray, threads: int) -> Callable[[], Any]:
    if engine == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return lambda: sess.run(None, {"x": x})
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    return lambda: req.infer({0: x})


def peak_task(spec: dict) -> dict:
    """The machine's compute peak at ``spec["threads"]``: best-of timings of a numpy float32 GEMM and of the
    one-layer fp32 / INT8 kernel models on ONNX Runtime and OpenVINO. Returns {kernels: [{engine, kernel,
    precision, ms, gflops}], errors}."""
    from sonogate.bench.models import CONV_SHAPES, kernel_model

    threads, short = int(spec["threads"]), bool(spec.get("short"))
    warmup, reps = (2, 12) if short else (3, 25)
    kernels, errors = [], []
    try:  # numpy float32 GEMM through its BLAS, held to `threads`
        try:
            from threadpoolctl import threadpool_limits

            limiter = threadpool_limits(threads)
        except ImportError:
            limiter = None
        n = 512 if short else 1024
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
        c = np.empty((n, n), np.float32)
        ms = _best_ms(lambda: np.matmul(a, b, out=c), warmup, reps)
        kernels.append({"engine": "numpy", "kernel": f"sgemm {n}^3", "precision": "fp32", "ms": round(ms, 4),
                        "gflops": round(2 * n**3 / ms / 1e6, 2)})
        del limiter  # the worker process ends after this task
    except Exception as exc:  # noqa: BLE001
        errors.append(f"numpy: {one_line(exc)}")
    try:
        import onnx
    except ImportError:
        errors.append("onnx not installed: no ORT/OpenVINO kernel models")
        return {"kernels": kernels, "errors": errors}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in (["conv3x3_128x28"] if short else [*CONV_SHAPES, "matmul"]):
            for precision in ("fp32", "int8"):
                model, x, flops = kernel_model(kind, precision)
                path = Path(tmp) / f"{kind}_{precision}.onnx"
                onnx.save(model, str(path))
                for engine in ("onnxruntime", "openvino"):
                    try:
                        ms = _best_ms(_kernel_runner(engine, path, x, threads), warmup, reps)
                        kernels.append({"engine": engine, "kernel": kind, "precision": precision,
                                        "ms": round(ms, 4), "gflops": round(flops / ms / 1e6, 2)})
                    except Exception as exc:  # noqa: BLE001
                        errors.append(f"{engine} {kind} {precision}: {one_line(exc)}")
    return {"kernels": kernels, "errors": errors}


# ---------------------------------------------------------------------------- end to end
def e2e_task(spec: dict) -> dict:
    """What ``sonogate run --headless --events`` runs: a Session and the LivePipeline over a capture source.
    Returns the pipeline's summary, the engine's device note and model variant."""
    from sonogate.runtime.pipeline import LivePipeline, PipelineOptions
    from sonogate.runtime.session import open_session

    session = open_session(spec["bundle"], device=spec["device"], threads=int(spec["threads"]),
                           precision=spec.get("precision", "auto"))
    options = PipelineOptions(source=spec["source"], loop=bool(spec["loop"]), realtime=bool(spec["realtime"]),
                              headless=True, events_path=spec["events"], max_seconds=spec.get("max_seconds"))
    summary = LivePipeline(session, options).run()
    return {"summary": summary, "device_note": getattr(session.engine, "device_note", ""),
            "variant": getattr(session.engine, "variant", None)}


# ---------------------------------------------------------------------------- accuracy
def _nanmae(a: np.ndarray, b: np.ndarray) -> float | None:
    diff = np.abs(np.asarray(a) - np.asarray(b))
    diff = diff[np.isfinite(diff)]
    return round(float(diff.mean()), 4) if diff.size else None


def accuracy_task(spec: dict) -> dict:
    """MAE of every model of the bundle on every CPU engine against the frame labels of the standard-plane
    frames of ``spec["data"]`` (at most ``max_frames``), and each one's mean difference to ORT float."""
    from sonogate.core.bundle import load_bundle
    from sonogate.data.folder import read_labelled_folder
    from sonogate.device.compute import create_backend
    from sonogate.runtime.preprocess import Preprocessor

    bundle = load_bundle(spec["bundle"])
    folder = read_labelled_folder(spec["data"])
    n_max = int(spec.get("max_frames") or len(folder))
    names = list(bundle.measurement_names)
    truth = folder.targets(names)
    keep = np.flatnonzero(folder.standard_plane() & np.isfinite(truth).any(1))[:n_max]
    preprocessor = Preprocessor(bundle.preprocessing)
    tensors = [preprocessor(folder.load_gray(int(i))).copy() for i in keep]
    truth = truth[keep]
    configs = []
    for variant, entry in bundle.models.items():
        path = bundle.model_path(variant)
        engines = ["openvino-cpu"] if path.suffix == ".xml" else ["ort-cpu", "openvino-cpu"]
        precision = str(entry.get("precision", "int8" if "int8" in variant else "fp32"))
        for device in engines:
            configs.append((variant, precision, device, path))
    preds, rows, errors = {}, [], []
    for variant, precision, device, path in configs:
        try:
            backend, _ = create_backend(path, device=device, threads=1, warmup=1)
            if "measurements" not in backend.output_names:
                raise RuntimeError(f"the backend names its outputs {list(backend.output_names)}: no 'measurements' "
                                   "(the runtime would fail on this model too)")
            pred = np.stack([np.asarray(backend.infer(t)["measurements"], np.float64).reshape(-1)[: len(names)]
                             for t in tensors])
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{variant} on {device}: {one_line(exc)}")
            continue
        preds[(variant, device)] = pred
        mae = {name: _nanmae(pred[:, j], truth[:, j]) for j, name in enumerate(names)}
        rows.append({"variant": variant, "precision": precision, "engine": device, "file": path.name,
                     "n": len(tensors), "mae": mae})
    reference = preds.get(("float", "ort-cpu"))
    for row in rows:
        if reference is not None:
            pred = preds[(row["variant"], row["engine"])]
            row["mean_abs_diff_vs_ort_float"] = {name: _nanmae(pred[:, j], reference[:, j])
                                                 for j, name in enumerate(names)}
    return {"rows": rows, "errors": errors, "frames": len(tensors), "data": str(spec["data"]),
            "truth": "frame labels (standard-plane frames)"}


if __name__ == "__main__":
    if len(sys.argv) == 2:
        sys.exit(main(sys.argv[1]))
    print("usage: python -m sonogate.bench.workers SPEC.json (internal); use `sonogate bench`", file=sys.stderr)
    sys.exit(2)
