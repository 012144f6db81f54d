"""``sonogate bench``: encoder+heads latency per backend / precision / size / threads, end to end through the
real runtime, accuracy of each precision, FLOPs and the machine's measured compute peak.

    sonogate bench --out benchmarks/results            # full run (make bench), by hand on a quiet machine
    sonogate bench --short --out out/bench-short       # seconds: one size, 1 thread, ~30 frames (CI)

Every latency configuration runs in its own subprocess (``python -m sonogate.bench_cli --worker SPEC``) with
``OMP_NUM_THREADS`` & co. set, so thread settings (torch.set_num_threads, ORT intra_op_num_threads, OpenVINO
INFERENCE_NUM_THREADS) never leak from one configuration into the next. ONNX Runtime and OpenVINO are built
through ``sonogate.device.compute.create_backend`` (the runtime's own settings: no spinning, LATENCY hint, one
stream, f32 precision hint), so these rows measure what ``sonogate run`` runs.

Output in ``--out DIR``: ``latest.json`` (rows, end_to_end, accuracy, flops, peak_gflops, machine, goals),
``results.md`` (tables + goal verdicts), ``latency_vs_size.png`` and ``latency_hist_<size>.png``. When
``DIR/../README.md`` holds the results markers (``benchmarks/README.md``), its results block is refreshed.
This module imports nothing heavy at import time and never needs torch (torch rows are skipped without it).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sonogate.errors import SonogateError

SCHEMA = 1
CACHE_VERSION = 1
DEFAULT_SIZES = (128, 160, 192, 224)
DEFAULT_SIZE = 160
OUTPUT_NAMES = ("measurements", "plane_logit", "features")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
              "NUMEXPR_NUM_THREADS")
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "sve")
README_START = "<!-- bench-results:start -->"
README_END = "<!-- bench-results:end -->"
# backend -> (compute.py device, which model file)
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
GOALS = {
    "speedup": 5.0,  # INT8 (ORT or OpenVINO) at the default size vs PyTorch eager float, best thread count
    "bound": 1.5,  # INT8 latency within 1.5x of FLOPs / measured INT8 peak
    "int8_alpha_mae_delta": 0.5,  # deg
    "e2e_fps": 30.0,
    "e2e_p99_ms": 50.0,
    "rss_mb": 400.0,
    "startup_s": 3.0,
}


# ===================================================================================== command line
def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,160, got {text!r}") from None
    if not sizes or any(s < 32 or s % 32 for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be multiples of 32 and >= 32, got {text!r}")
    return sizes


def _threads(text: str) -> list[str]:
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    for t in items:
        if t != "all" and (not t.isdigit() or int(t) < 1):
            raise argparse.ArgumentTypeError(f"threads must be whole numbers >= 1 or 'all', got {text!r}")
    if not items:
        raise argparse.ArgumentTypeError("no thread count given")
    return items


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark latency, end-to-end rate, accuracy and compute bound (make bench)",
        description="Encoder+heads latency for PyTorch eager, ONNX Runtime and OpenVINO (float and INT8) over input "
                    "sizes and thread counts, each configuration in its own process; end to end through "
                    "`sonogate run`; INT8 vs float accuracy; FLOPs and the measured compute peak. Writes "
                    "DIR/latest.json, DIR/results.md and plots.")
    p.add_argument("--out", default="out/bench", help="output folder (default: out/bench)")
    p.add_argument("--short", action="store_true",
                   help="CI mode: one size, 1 thread, ~30 frames, ORT float + INT8 + one PyTorch row")
    p.add_argument("--bundle", help="model bundle (default: demo/bundle when it exists)")
    p.add_argument("--sizes", type=_sizes, help="input sizes (default 128,160,192,224; short: the bundle's or 160)")
    p.add_argument("--default-size", type=int, default=DEFAULT_SIZE, help="size of the goals and the histogram")
    p.add_argument("--threads", type=_threads, help="thread counts, e.g. 1,2,all (default 1,2,all; short: 1)")
    p.add_argument("--frames", type=int, help="timed frames per configuration (default 300; short 30)")
    p.add_argument("--warmup", type=int, help="untimed frames first (default 20; short 5)")
    p.add_argument("--backends", help="subset of: " + ", ".join(BACKENDS))
    p.add_argument("--parts", default="latency,peak,e2e,accuracy",
                   help="what to run: latency, peak, e2e, accuracy (default: all)")
    p.add_argument("--data", help="labelled folder for the accuracy part (default: a held-out phantom folder)")
    p.add_argument("--e2e-seconds", type=float, help="length of each end-to-end run (default 15; short 3)")
    p.add_argument("--e2e-device", default="auto", help="device for the end-to-end runs (default auto)")
    p.add_argument("--cache", help="where rebuilt models, phantom frames and cines are kept "
                                   "(default: $XDG_CACHE_HOME/sonogate/bench)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch rows, as a torch-free install does")
    p.add_argument("--timeout", type=float, help="seconds allowed per configuration (default 900; short 240)")
    p.add_argument("--max-seconds", type=float, default=240.0,
                   help="stop timing a configuration after this long, keeping the frames so far (default 240)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handler)


def handler(args) -> int:
    options = _options(args)
    report = run_bench(options)
    _print_report(report)
    print(f"wrote {options['out'] / 'latest.json'}, {options['out'] / 'results.md'}"
          + "".join(f", {options['out'] / name}" for name in report.get("plots", [])))
    return 0


def _options(args) -> dict[str, Any]:
    short = bool(args.short)
    parts = [p.strip() for p in str(args.parts).split(",") if p.strip()]
    unknown = [p for p in parts if p not in ("latency", "peak", "e2e", "accuracy")]
    if unknown:
        raise SonogateError(f"unknown --parts {', '.join(unknown)} (valid: latency, peak, e2e, accuracy)")
    bundle = None
    bundle_size = None
    if args.bundle or Path("demo/bundle").is_dir():
        from sonogate.errors import BundleError
        from sonogate.runtime.bundle import load_bundle

        try:
            bundle = load_bundle(Path(args.bundle or "demo/bundle"))
        except BundleError as exc:
            if args.bundle:
                raise  # asked for: one line, exit 2
            print(f"note: demo/bundle not used: {exc}", file=sys.stderr)
    if bundle is not None:
        prep = bundle.preprocessing
        if prep.height == prep.width:
            bundle_size = prep.height
    sizes = args.sizes or ([bundle_size or args.default_size] if short else list(DEFAULT_SIZES))
    n_cpu = _cpu_count()
    thread_items = args.threads or (["1"] if short else ["1", "2", "all"])
    threads = sorted({n_cpu if t == "all" else int(t) for t in thread_items})
    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        bad = [b for b in backends if b not in BACKENDS]
        if bad:
            raise SonogateError(f"unknown backend {', '.join(bad)} (valid: {', '.join(BACKENDS)})")
    else:
        backends = (["pytorch-eager", "onnxruntime"] if short
                    else ["pytorch-eager", "onnxruntime", "openvino", "openvino-nncf", "openvino-ir", "pytorch-eager-cuda",
                          "onnxruntime-cuda", "onnxruntime-tensorrt"])
    frames = args.frames or (30 if short else 300)
    warmup = args.warmup if args.warmup is not None else (5 if short else 20)
    if frames < 1 or warmup < 0:
        raise SonogateError("--frames must be >= 1 and --warmup >= 0")
    if not short and frames < 200:
        print(f"note: --frames {frames} < 200: percentiles of the full run are meant over >= 200 frames",
              file=sys.stderr)
    cache = Path(args.cache) if args.cache else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sonogate" / "bench"
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SonogateError(f"cannot create output folder: {exc}") from None
    if args.data and not Path(args.data).is_dir():
        raise SonogateError(f"--data folder not found: {args.data}")
    return {
        "short": short, "out": out, "cache": cache, "bundle": bundle, "bundle_size": bundle_size,
        "sizes": sizes, "default_size": args.default_size if args.default_size in sizes else sizes[0],
        "threads": threads, "backends": backends, "frames": frames, "warmup": warmup, "parts": parts,
        "data": args.data, "e2e_seconds": args.e2e_seconds or (3.0 if short else 15.0),
        "e2e_device": args.e2e_device, "no_torch": bool(args.no_torch),
        "timeout": args.timeout or (240.0 if short else 900.0), "progress": not args.no_progress,
        "max_seconds": args.max_seconds,
        "command": "sonogate " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"]
        else "sonogate bench " + ("--short " if short else "") + f"--out {shlex.quote(str(out))}",
    }


# ===================================================================================== machine
def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "cpu model") and model in (platform.processor(), platform.machine(), ""):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": model,
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": _cpu_count(),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
        freq = psutil.cpu_freq()
        if freq and freq.max:
            info["cpu_max_mhz"] = round(freq.max)
    except Exception as exc:  # noqa: BLE001 - psutil missing or no frequency on this platform
        info["psutil_error"] = _one_line(exc)
    try:
        info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    versions = {}
    for dist in ("sonogate", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "nncf", "torch",
                 "torchvision", "opencv-python-headless", "opencv-python", "psutil"):
        v = _version(dist)
        if v:
            versions[dist] = v
    info["versions"] = versions
    if Path("/dev/nvidia0").exists():
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
            info["gpus"] = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            info["gpus"] = ["/dev/nvidia0 present, nvidia-smi failed"]
    return info


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort

        return list(ort.get_available_providers())
    except ImportError:
        return []


# ===================================================================================== subprocess workers
def _worker_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        for key in THREAD_ENV:
            env[key] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("SONOGATE_BENCH_WORKER_RESULT", None)
    package_parent = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_worker(spec: dict[str, Any], threads: int | None, timeout: float) -> dict[str, Any]:
    """Run one worker task in a fresh interpreter; returns its result dict, or {"error": one line}."""
    with tempfile.TemporaryDirectory(prefix="sonogate-bench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(dict(spec, result_path=str(result_path))))
        cmd = [sys.executable, "-m", "sonogate.bench_cli", "--worker", str(spec_path)]
        try:
            proc = subprocess.run(cmd, env=_worker_env(threads), capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:g} s"}
        if result_path.is_file():
            try:
                return json.loads(result_path.read_text())
            except json.JSONDecodeError as exc:
                return {"error": f"unreadable worker result: {exc}"}
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        return {"error": f"worker exited {proc.returncode}: {lines[-1].strip()[:300] if lines else 'no output'}"}


def _worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    tasks: dict[str, Callable[[dict], dict]] = {
        "latency": _w_latency, "build": _w_build, "peak": _w_peak, "accuracy": _w_accuracy, "e2e": _w_e2e,
    }
    try:
        result = tasks[spec["task"]](spec)
    except Exception as exc:  # noqa: BLE001 - reported as one line in the parent
        result = {"error": f"{type(exc).__name__}: {_one_line(exc)}"}
    Path(spec["result_path"]).write_text(json.dumps(result))
    return 0


def _one_line(exc: BaseException | str) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text


# ---------------------------------------------------------------------------- worker: latency
def _torch_runner(spec: dict, x: np.ndarray):
    import torch

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
    device = BACKENDS[backend_name][0]
    try:
        from sonogate.device.compute import create_backend
    except ImportError as exc:
        backend = _DirectBackend(path, device, threads)
        via = f"direct ({exc.name or 'sonogate.device.compute'} not importable; same settings as the runtime)"
    else:
        backend, _note = create_backend(path, device=device, threads=threads, warmup=0)
        via = "sonogate.device.compute.create_backend"
    return (lambda: backend.infer(x)), backend.name, via


class _DirectBackend:
    """The runtime's backend settings, for a checkout where sonogate.device.compute does not import."""

    def __init__(self, path: Path, device: str, threads: int) -> None:
        if device.startswith("ort-"):
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.log_severity_level = 3
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            provider = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider"}[device]
            self.session = ort.InferenceSession(str(path), options, providers=[provider])
            self.input = self.session.get_inputs()[0].name
            self.name = f"onnxruntime:{provider}"
            self.infer = lambda batch: self.session.run(None, {self.input: batch})
        else:
            import openvino as ov

            compiled = ov.Core().compile_model(str(path), "CPU", {
                "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                "INFERENCE_PRECISION_HINT": "f32"})
            request = compiled.create_infer_request()
            self.name = "openvino:CPU"
            self.infer = lambda batch: request.infer({0: batch})


def _w_latency(spec: dict) -> dict:
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


# ---------------------------------------------------------------------------- worker: build models per size
def build_torch_model(seed: int = 0):
    """The exported architecture with seeded random weights: sonogate.models HipUSNet(head='mlp') when it
    imports, else torchvision resnet18 with a 1-channel conv1 and 512->128->3 / 512->128->1 heads."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    try:
        from sonogate.models.network import HipUSNet

        return HipUSNet(head="mlp").eval(), "sonogate.models.network.HipUSNet(head='mlp')"
    except ImportError:
        pass
    from torchvision.models import resnet18

    class Fallback(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            net = resnet18(weights=None)
            net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            net.fc = nn.Identity()
            self.encoder = net
            self.measure = nn.Sequential(nn.Linear(512, 128), nn.ReLU(), nn.Linear(128, 3))
            self.plane = nn.Sequential(nn.Linear(512, 128), nn.ReLU(), nn.Linear(128, 1))

        def forward(self, image):
            feats = self.encoder(image)
            return self.measure(feats), self.plane(feats), feats

    return Fallback().eval(), "torchvision resnet18(weights=None), 1-channel conv1, 512->128->3/1 heads"


def export_torch_onnx(path: Path, size: int, seed: int = 0) -> str:
    import warnings

    import torch

    model, arch = build_torch_model(seed)
    dummy = torch.zeros(1, 1, size, size)
    axes = {"image": {0: "N"}, **{name: {0: "N"} for name in OUTPUT_NAMES}}
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (dummy,), str(path), input_names=["image"], output_names=list(OUTPUT_NAMES),
                              dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False)
        except (TypeError, RuntimeError, ValueError):  # a torch without the TorchScript exporter
            import onnx

            torch.onnx.export(model, (dummy,), str(path), input_names=["image"], output_names=list(OUTPUT_NAMES),
                              opset_version=18, dynamo=True)
            onnx.save(onnx.load(str(path)), str(path))  # fold external data back into one file
    return arch


def build_resnet18_onnx(path: Path, size: int, seed: int = 0) -> str:
    """Torch-free: the same layers (1-channel ResNet-18 with BN folded, 512->128->3 / 512->128->1 heads) built
    with onnx.helper and seeded He-normal weights. Used when torch is not installed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = [0]

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def conv(x: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
        count[0] += 1
        i = count[0]
        w = rng.normal(0.0, math.sqrt(2.0 / (cout * k * k)), (cout, cin, k, k))
        nodes.append(helper.make_node("Conv", [x, const(f"conv{i}.w", w), const(f"conv{i}.b", np.zeros(cout))],
                                      [f"conv{i}"], kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4))
        if not relu:
            return f"conv{i}"
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        return f"relu{i}"

    x = conv("image", 1, 64, 7, 2, True)
    nodes.append(helper.make_node("MaxPool", [x], ["pool0"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = "pool0", 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if (stage > 0 and block == 0) else 1
            y = conv(conv(x, cin, cout, 3, stride, True), cout, cout, 3, 1, False)
            shortcut = conv(x, cin, cout, 1, stride, False) if (stride != 1 or cin != cout) else x
            name = f"s{stage}b{block}"
            nodes.append(helper.make_node("Add", [y, shortcut], [name + ".add"]))
            nodes.append(helper.make_node("Relu", [name + ".add"], [name]))
            x, cin = name, cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["features"], axis=1))

    def mlp(prefix: str, out_dim: int, output: str) -> None:
        nodes.append(helper.make_node("Sub", ["features", const(prefix + ".fmean", np.zeros(512))], [prefix + ".c"]))
        nodes.append(helper.make_node("Div", [prefix + ".c", const(prefix + ".fstd", np.ones(512))], [prefix + ".z"]))
        w1 = rng.normal(0, math.sqrt(1 / 512), (128, 512))
        w2 = rng.normal(0, math.sqrt(1 / 128), (out_dim, 128))
        nodes.append(helper.make_node("Gemm", [prefix + ".z", const(prefix + ".w1", w1), const(prefix + ".b1", np.zeros(128))],
                                      [prefix + ".h"], transB=1))
        nodes.append(helper.make_node("Relu", [prefix + ".h"], [prefix + ".r"]))
        nodes.append(helper.make_node("Gemm", [prefix + ".r", const(prefix + ".w2", w2), const(prefix + ".b2", np.zeros(out_dim))],
                                      [output], transB=1))

    mlp("measure", 3, "measure.raw")
    nodes.append(helper.make_node("Mul", ["measure.raw", const("target_std", np.ones(3))], ["measure.scaled"]))
    nodes.append(helper.make_node("Add", ["measure.scaled", const("target_mean", np.zeros(3))], ["measurements"]))
    mlp("plane", 1, "plane_logit")
    graph = helper.make_graph(
        nodes, "sonogate_resnet18_bench",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("measurements", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("plane_logit", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 512])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return "onnx.helper 1-channel ResNet-18 (BN folded) + 512->128->3/1 heads (torch not installed)"


def calibration_tensors(size: int, image_paths: list[str], n: int, mean: float = 0.5, std: float = 0.25,
                        seed: int = 1) -> tuple[list[np.ndarray], str]:
    """Normalised (1, 1, S, S) tensors: phantom images when given, else smooth random images."""
    import cv2

    tensors = []
    for p in image_paths[:n]:
        gray = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            continue
        resized = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
        tensors.append(((resized.astype(np.float32) / 255.0 - mean) / std)[None, None])
    if tensors:
        return tensors, "phantom"
    rng = np.random.default_rng(seed)
    for _ in range(n):
        low = rng.random((6, 6)).astype(np.float32)
        smooth = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
        speckle = rng.rayleigh(0.25, (size, size)).astype(np.float32)
        img = np.clip(smooth * speckle * 2.0, 0.0, 1.0)
        tensors.append(((img - mean) / std)[None, None].astype(np.float32))
    return tensors, "smooth-random"


def quantize_int8(float_path: Path, int8_path: Path, tensors: list[np.ndarray]) -> str:
    """Static INT8, QDQ, per-channel weights (the bundle's recipe): quant_pre_process, then quantize_static."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"image": t} for t in tensors])

        def get_next(self):
            return next(self._it, None)

    float_path, int8_path = Path(float_path), Path(int8_path)
    pre = int8_path.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
        source = pre
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantise the raw graph instead
        source = float_path
    quantize_static(str(source), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["Conv", "Gemm", "MatMul"])
    pre.unlink(missing_ok=True)
    return "onnxruntime.quantization.quantize_static QDQ U8S8 per-channel, MinMax, Conv/Gemm/MatMul"


def quantize_nncf(float_path: Path, xml_path: Path, tensors: list[np.ndarray]) -> str:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(float_path))
    quantized = nncf.quantize(model, nncf.Dataset(tensors), subset_size=len(tensors),
                              preset=nncf.QuantizationPreset.PERFORMANCE)
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return f"nncf {nncf.__version__} quantize (PERFORMANCE preset) -> OpenVINO IR"


def _w_build(spec: dict) -> dict:
    """Float ONNX, static INT8 QDQ and (optionally) NNCF INT8 IR for one size, into a cache folder.

    Prefers the shipping recipe (``sonogate.export.onnx_export.export_onnx``, ``sonogate.export.quantize``)
    when it imports, so the rebuilt sizes are made the way ``sonogate export`` makes a bundle."""
    size, out = int(spec["size"]), Path(spec["dir"])
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("cache_version") != CACHE_VERSION or meta.get("arch_kind") != spec["arch_kind"]:
        meta = {"cache_version": CACHE_VERSION, "size": size, "arch_kind": spec["arch_kind"]}
    float_path, int8_path, nncf_path = out / "model.onnx", out / "model.int8.onnx", out / "nncf" / "model.xml"
    if spec.get("float_source"):  # NNCF from a bundle's float model: read it, never write next to it
        float_path = Path(spec["float_source"])
        meta["arch"] = f"bundle float model {float_path}"
    elif not float_path.is_file() or "arch" not in meta:
        t0 = time.perf_counter()
        if spec["arch_kind"] == "torch":
            try:
                if not spec.get("ship", True):
                    raise ImportError("short mode: the fast exporter")
                from sonogate.export.onnx_export import export_onnx
            except ImportError:
                meta["arch"] = export_torch_onnx(float_path, size, seed=int(spec.get("seed", 0)))
                meta["exporter"] = "torch.onnx.export (TorchScript exporter, opset 17)"
            else:
                model, meta["arch"] = build_torch_model(seed=int(spec.get("seed", 0)))
                export_onnx(model, float_path, size, OUTPUT_NAMES)
                meta["exporter"] = "sonogate.export.onnx_export.export_onnx"
        else:
            meta["arch"] = build_resnet18_onnx(float_path, size, seed=int(spec.get("seed", 0)))
            meta["exporter"] = "onnx.helper"
        meta["export_s"] = round(time.perf_counter() - t0, 2)
        meta.pop("int8", None)
        meta.pop("nncf", None)
    tensors, kind = calibration_tensors(size, spec.get("calib_images") or [], int(spec["calib_frames"]),
                                        spec.get("mean", 0.5), spec.get("std", 0.25))
    if spec.get("int8", True) and not spec.get("float_source") and (
            not int8_path.is_file() or meta.get("int8", {}).get("calibration") != kind):
        t0 = time.perf_counter()
        try:
            if not spec.get("ship", True):
                raise ImportError("short mode: the fast quantiser")
            from sonogate.export.quantize import quantize_int8 as ship_quantize_int8
        except ImportError:
            recipe = quantize_int8(float_path, int8_path, tensors)
        else:
            ship_quantize_int8(float_path, int8_path, np.concatenate(tensors))
            recipe = "sonogate.export.quantize.quantize_int8 (QDQ, per-channel, MinMax)"
        meta["int8"] = {"calibration": kind, "frames": len(tensors), "recipe": recipe,
                        "seconds": round(time.perf_counter() - t0, 2)}
    if spec.get("nncf") and (not nncf_path.is_file() or meta.get("nncf", {}).get("calibration") != kind):
        t0 = time.perf_counter()
        nncf_path.parent.mkdir(exist_ok=True)
        try:
            try:
                from sonogate.export.quantize import export_openvino
            except ImportError:
                recipe = quantize_nncf(float_path, nncf_path, tensors)
            else:
                export_openvino(float_path, nncf_path.parent, calib=np.concatenate(tensors))
                recipe = "sonogate.export.quantize.export_openvino (NNCF INT8 IR)"
            meta["nncf"] = {"calibration": kind, "frames": len(tensors), "recipe": recipe,
                            "seconds": round(time.perf_counter() - t0, 2)}
        except Exception as exc:  # noqa: BLE001 - nncf missing or failing: the row is skipped with the reason
            meta["nncf"] = {"error": f"{type(exc).__name__}: {_one_line(exc)}"}
    meta_path.write_text(json.dumps(meta, indent=1))
    return {"meta": meta, "float": str(float_path), "int8": str(int8_path) if int8_path.is_file() else None,
            "nncf": str(nncf_path) if nncf_path.is_file() and "error" not in meta.get("nncf", {}) else None}


# ---------------------------------------------------------------------------- worker: compute peak
CONV_SHAPES = {"conv3x3_64x56": (64, 56), "conv3x3_128x28": (128, 28), "conv3x3_256x14": (256, 14)}


def _kernel_model(kind: str, precision: str):
    """A one-layer ONNX model: a 3x3 conv C->C at HxW (ResNet-18 stage convs at 224: 64x56, 128x28, 256x14)
    or a 256x1024 @ 1024x1024 MatMul; INT8 as QDQ (uint8 activations, int8 weights) so ORT and OpenVINO
    both run integer kernels. Returns (model, input array, flops per run)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes = [], []
    if kind in CONV_SHAPES:
        c, hw = CONV_SHAPES[kind]
        x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
        w = (rng.standard_normal((c, c, 3, 3)) * 0.05).astype(np.float32)
        flops = 2 * c * c * 9 * hw * hw
        out_shape = [1, c, hw, hw]
    else:
        m, k, n = 256, 1024, 1024
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
        flops = 2 * m * k * n
        out_shape = [m, n]
    op = "Conv" if kind in CONV_SHAPES else "MatMul"
    attrs = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]} if op == "Conv" else {}
    if precision == "fp32":
        inits.append(numpy_helper.from_array(w, "w"))
        nodes.append(helper.make_node(op, ["x", "w"], ["y"], **attrs))
    else:
        per_channel = op == "Conv"
        axis = 0
        absmax = np.abs(w).reshape(w.shape[0], -1).max(1) if per_channel else np.array(np.abs(w).max())
        w_scale = (absmax / 127.0).astype(np.float32)
        scale_b = w_scale.reshape((-1,) + (1,) * (w.ndim - 1)) if per_channel else w_scale
        w_q = np.clip(np.round(w / scale_b), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(w_q, "w_q"), numpy_helper.from_array(w_scale, "w_scale"),
                  numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), "w_zp"),
                  numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
                  numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
                  numpy_helper.from_array(np.array(0.5, np.float32), "y_scale"),
                  numpy_helper.from_array(np.array(128, np.uint8), "y_zp")]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"],
                             **({"axis": axis} if per_channel else {})),
            helper.make_node(op, ["xd", "wd"], ["yf"], **attrs),
            helper.make_node("QuantizeLinear", ["yf", "y_scale", "y_zp"], ["yq"]),
            helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["y"]),
        ]
    graph = helper.make_graph(nodes, f"{kind}_{precision}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, x, flops


def _best_ms(fn: Callable[[], Any], warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def _w_peak(spec: dict) -> dict:
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
        errors.append(f"numpy: {_one_line(exc)}")
    try:
        import onnx
    except ImportError:
        errors.append("onnx not installed: no ORT/OpenVINO kernel models")
        return {"kernels": kernels, "errors": errors}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in (["conv3x3_128x28"] if short else [*CONV_SHAPES, "matmul"]):
            for precision in ("fp32", "int8"):
                model, x, flops = _kernel_model(kind, precision)
                path = Path(tmp) / f"{kind}_{precision}.onnx"
                import onnx

                onnx.save(model, str(path))
                for engine in ("onnxruntime", "openvino"):
                    try:
                        if engine == "onnxruntime":
                            import onnxruntime as ort

                            so = ort.SessionOptions()
                            so.intra_op_num_threads = threads
                            so.inter_op_num_threads = 1
                            so.log_severity_level = 3
                            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                            fn = (lambda s=sess, v=x: s.run(None, {"x": v}))
                        else:
                            import openvino as ov

                            compiled = ov.Core().compile_model(str(path), "CPU", {
                                "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                                "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"})
                            req = compiled.create_infer_request()
                            fn = (lambda r=req, v=x: r.infer({0: v}))
                        ms = _best_ms(fn, warmup, reps)
                        kernels.append({"engine": engine, "kernel": kind, "precision": precision,
                                        "ms": round(ms, 4), "gflops": round(flops / ms / 1e6, 2)})
                    except Exception as exc:  # noqa: BLE001
                        errors.append(f"{engine} {kind} {precision}: {_one_line(exc)}")
    return {"kernels": kernels, "errors": errors}


# ---------------------------------------------------------------------------- worker: end to end
def _w_e2e(spec: dict) -> dict:
    """What ``sonogate run --headless --events`` runs: a Session and the LivePipeline over a capture source."""
    from sonogate.runtime.pipeline import LivePipeline, PipelineOptions
    from sonogate.runtime.session import open_session

    session = open_session(spec["bundle"], device=spec["device"], threads=int(spec["threads"]),
                           precision=spec.get("precision", "auto"))
    options = PipelineOptions(source=spec["source"], loop=bool(spec["loop"]), realtime=bool(spec["realtime"]),
                              headless=True, events_path=spec["events"], max_seconds=spec.get("max_seconds"))
    summary = LivePipeline(session, options).run()
    return {"summary": summary, "device_note": getattr(session.engine, "device_note", ""),
            "variant": getattr(session.engine, "variant", None)}


# ---------------------------------------------------------------------------- worker: accuracy
def _w_accuracy(spec: dict) -> dict:
    from sonogate.data.folder import read_labelled_folder
    from sonogate.device.compute import create_backend
    from sonogate.runtime.bundle import load_bundle
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
            errors.append(f"{variant} on {device}: {_one_line(exc)}")
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


def _nanmae(a: np.ndarray, b: np.ndarray) -> float | None:
    diff = np.abs(np.asarray(a) - np.asarray(b))
    diff = diff[np.isfinite(diff)]
    return round(float(diff.mean()), 4) if diff.size else None


# ===================================================================================== FLOPs
def count_flops(model_path: str | Path) -> dict[str, Any]:
    """2 * MACs of Conv / ConvTranspose / Gemm / MatMul at batch 1, from the graph with shape inference."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(model_path))
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1  # batch
    model = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for value in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(numpy_helper.to_array(attr.t).shape)
    by_op: dict[str, int] = {}
    unknown = 0
    for node in model.graph.node:
        op = node.op_type
        if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        try:
            if op in ("Conv", "ConvTranspose"):
                w = shapes[node.input[1]]
                out = shapes[node.output[0]] if op == "Conv" else shapes[node.input[0]]
                macs = int(np.prod(out)) * int(np.prod(w[1:]))
                if op == "ConvTranspose":
                    macs = int(np.prod(shapes[node.input[0]])) * int(np.prod(w[1:]))
            elif op == "Gemm":
                a = shapes[node.input[0]]
                trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
                k = a[0] if trans_a else a[-1]
                macs = int(np.prod(shapes[node.output[0]])) * int(k)
            else:
                macs = int(np.prod(shapes[node.output[0]])) * int(shapes[node.input[0]][-1])
        except (KeyError, IndexError):
            unknown += 1
            continue
        by_op[op] = by_op.get(op, 0) + macs
    macs = sum(by_op.values())
    return {"macs": macs, "flops": 2 * macs, "gflops": round(2 * macs / 1e9, 4), "macs_by_op": by_op,
            "nodes_without_shape": unknown}


# ===================================================================================== orchestration
class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="bench", unit="cfg", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def step(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label[:60])

    def done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _torch_available() -> bool:
    return _module_available("torch")


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module that hides itself
        return False


def run_bench(options: dict[str, Any]) -> dict[str, Any]:
    t_start = time.perf_counter()
    notes: list[str] = []
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": options["command"],
        "mode": "short" if options["short"] else "full",
        "machine": machine_info(),
        "config": {k: options[k] for k in ("sizes", "default_size", "threads", "backends", "frames", "warmup",
                                           "parts", "e2e_seconds", "e2e_device")},
        "notes": notes,
    }
    bundle = options["bundle"]
    report["config"]["bundle"] = None if bundle is None else str(bundle.path)
    report["config"]["bundle_sha256"] = None if bundle is None else bundle.bundle_hash
    torch_ok = _torch_available() and not options["no_torch"]
    if not torch_ok:
        notes.append("torch not installed: no PyTorch eager rows" if not options["no_torch"]
                     else "--no-torch: no PyTorch eager rows (as a torch-free install)")
    providers = _ort_providers()
    report["machine"]["onnxruntime_providers"] = providers
    gpu = "CUDAExecutionProvider" in providers or bool(report["machine"].get("gpus"))
    parts = options["parts"]
    cache = options["cache"]

    # ---- what will run (for the progress bar)
    phantom_cli = _module_available("sonogate.phantom.cli")
    latency_configs = _latency_configs(options, torch_ok, providers, gpu, notes) if "latency" in parts else []
    steps = len(options["sizes"]) + len(latency_configs)
    steps += len(options["threads"]) if "peak" in parts else 0
    e2e_paces = ([30.0] if options["short"] else [30.0, 60.0, None]) if "e2e" in parts else []
    steps += len(e2e_paces) + (1 if "accuracy" in parts else 0)
    progress = _Progress(steps, options["progress"])
    phases: dict[str, float] = {}
    report["phase_s"] = phases
    t_phase = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal t_phase
        now = time.perf_counter()
        phases[name] = round(now - t_phase, 2)
        t_phase = now

    try:
        # ---- models per size (phantom calibration frames only made when a size must be rebuilt)
        calib_cache: dict[str, Any] = {}

        def calib_images() -> list[str]:
            if "images" not in calib_cache:
                images, why = _phantom_images(cache, "calib", seed=9001, n=32 if options["short"] else 128,
                                              available=phantom_cli, timeout=options["timeout"])
                calib_cache["images"] = images
                if why:
                    notes.append(f"INT8 calibration: {why}")
            return calib_cache["images"]

        models = {}
        for size in options["sizes"]:
            progress.step(f"models {size}px")
            if "latency" in parts:
                models[size] = _prepare_models(options, size, torch_ok, calib_images, notes)
            progress.done()
        report["models"] = {str(s): {k: v for k, v in m.items() if k != "paths"} for s, m in models.items()}
        phase("models")

        # ---- FLOPs
        report["flops"] = {}
        for size, m in models.items():
            path = m["paths"].get("fp32")
            if path:
                try:
                    report["flops"][str(size)] = count_flops(path)
                except Exception as exc:  # noqa: BLE001 - onnx missing or a graph it cannot infer
                    notes.append(f"FLOPs at {size}: {_one_line(exc)}")

        # ---- peak
        report["peak_gflops"] = {"fp32": {}, "int8": {}, "kernels": {}, "errors": []}
        if "peak" in parts:
            for threads in options["threads"]:
                progress.step(f"peak {threads} thread(s)")
                result = run_worker({"task": "peak", "threads": threads, "short": options["short"]}, threads,
                                    options["timeout"])
                if "error" in result:
                    report["peak_gflops"]["errors"].append(f"{threads} threads: {result['error']}")
                else:
                    report["peak_gflops"]["kernels"][str(threads)] = result["kernels"]
                    report["peak_gflops"]["errors"] += [f"{threads} threads: {e}" for e in result["errors"]]
                    for precision in ("fp32", "int8"):
                        values = [k["gflops"] for k in result["kernels"] if k["precision"] == precision]
                        if values:
                            report["peak_gflops"][precision][str(threads)] = max(values)
                progress.done()
        phase("flops_and_peak")

        # ---- latency rows
        rows, skipped, samples = [], [], {}
        for cfg in latency_configs:
            label = f"{cfg['backend']} {cfg['precision']} {cfg['size']}px {cfg['threads']}t"
            progress.step(label)
            path = models.get(cfg["size"], {}).get("paths", {}).get(cfg["model_key"])
            if cfg["model_key"] != "torch" and not path:
                reason = models.get(cfg["size"], {}).get("missing", {}).get(cfg["model_key"], "no model file")
                skipped.append({**_row_key(cfg), "reason": reason})
                progress.done()
                continue
            spec = {"task": "latency", "backend": cfg["backend"], "precision": cfg["precision"],
                    "size": cfg["size"], "threads": cfg["threads"], "model": path, "frames": options["frames"],
                    "warmup": options["warmup"], "cache": str(cache), "seed": 0,
                    "max_seconds": options["max_seconds"]}
            result = run_worker(spec, cfg["threads"], options["timeout"])
            if "error" in result:
                skipped.append({**_row_key(cfg), "reason": result["error"]})
            else:
                row = {**_row_key(cfg), **_stats(result["times_ms"])}
                row.update({k: result[k] for k in ("cpu_ms_per_frame", "cpu_cores_busy", "load_s", "rss_peak_mb",
                                                   "device_name", "via")})
                row["model_source"] = ("rebuilt, seeded random weights" if cfg["model_key"] == "torch"
                                       else models[cfg["size"]]["source"].get(cfg["model_key"], ""))
                if row["n"] < options["frames"]:
                    row["stopped_early"] = f"{row['n']} of {options['frames']} frames (--max-seconds)"
                    notes.append(f"{label}: timing stopped after {row['n']} frames (--max-seconds "
                                 f"{options['max_seconds']:g}): it is that slow")
                rows.append(row)
                if cfg["size"] == options["default_size"]:
                    samples[_label(row)] = result["times_ms"]
            progress.done()
        _derive(rows, report)
        over = [r for r in rows if (r.get("ratio_to_peak") or 0) > 1.0]
        if over:
            notes.append(f"{len(over)} row(s) beat the measured peak ({_label(over[0])} {over[0]['input_size']}px: "
                         f"{over[0]['ratio_to_peak']:.2f}x): the peak was under-measured on a busy machine; "
                         "compare ratios from a quiet full run")
        report["rows"] = rows
        report["skipped"] = skipped
        phase("latency")

        # ---- end to end
        report["end_to_end"] = _end_to_end(options, e2e_paces, progress, notes) if e2e_paces else {
            "runs": [], "note": "not run (--parts)"}
        phase("end_to_end")

        # ---- accuracy
        if "accuracy" in parts:
            progress.step("accuracy")
            report["accuracy"] = _accuracy(options, phantom_cli)
            progress.done()
        else:
            report["accuracy"] = {"rows": [], "note": "not run (--parts)"}
        phase("accuracy")
    finally:
        progress.close()

    report["goals"] = _goals(report, options)
    try:
        report["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    report["duration_s"] = round(time.perf_counter() - t_start, 1)
    _write_outputs(report, samples, options)
    return report


def _row_key(cfg: dict) -> dict:
    return {"backend": cfg["backend"], "precision": cfg["precision"], "input_size": cfg["size"],
            "threads": cfg["threads"]}


def _label(row: dict) -> str:
    return f"{row['backend']} {row['precision']} {row['threads']}t"


def _latency_configs(options, torch_ok: bool, providers: list[str], gpu: bool, notes: list[str]) -> list[dict]:
    wanted = options["backends"]
    per_size: list[tuple[str, str, str, bool]] = []  # backend, precision, model key, threaded
    for backend in wanted:
        if backend.startswith("pytorch") and not torch_ok:
            continue
        if backend == "pytorch-eager":
            per_size.append((backend, "fp32", "torch", True))
        elif backend == "pytorch-eager-cuda":
            if gpu:
                per_size.append((backend, "fp32", "torch", False))
        elif backend == "onnxruntime":
            if _module_available("onnxruntime"):
                per_size += [(backend, "fp32", "fp32", True), (backend, "int8", "int8", True)]
            else:
                notes.append("onnxruntime not installed: no ONNX Runtime rows")
        elif backend == "openvino":
            if _module_available("openvino"):
                per_size += [(backend, "fp32", "fp32", True), (backend, "int8", "int8", True)]
            else:
                notes.append("openvino not installed: no OpenVINO rows")
        elif backend == "openvino-nncf":
            if _module_available("openvino") and _module_available("nncf"):
                per_size.append((backend, "int8", "nncf", True))
            elif not options["short"]:
                notes.append("nncf or openvino not installed: no OpenVINO NNCF INT8 rows")
        elif backend == "openvino-ir":
            bundle = options["bundle"]
            entry = (bundle.models.get("openvino") if bundle is not None else None) or {}
            if entry and _module_available("openvino"):
                precision = "int8" if "int8" in str(entry.get("precision", "")).lower() else "fp32"
                per_size.append((backend, precision, "ir", True))
        elif backend == "onnxruntime-cuda":
            if "CUDAExecutionProvider" in providers:
                per_size += [(backend, "fp32", "fp32", False), (backend, "int8", "int8", False)]
            elif gpu:
                notes.append("GPU present but onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
        elif backend == "onnxruntime-tensorrt" and "TensorrtExecutionProvider" in providers:
                per_size += [(backend, "fp32", "fp32", False), (backend, "int8", "int8", False)]
    if not gpu and any(b.endswith(("cuda", "tensorrt")) for b in wanted) and not options["short"]:
        notes.append("no GPU: no CUDA / TensorRT rows")
    if options["short"] and "pytorch-eager" in wanted and torch_ok:
        pass  # short mode: the one torch row at the one size and 1 thread is what the loops below give
    configs = []
    for size in options["sizes"]:
        for backend, precision, key, threaded in per_size:
            if key == "ir" and size != options["bundle_size"]:
                continue  # the bundle's IR exists at the bundle's size only
            for threads in (options["threads"] if threaded else [1]):
                configs.append({"backend": backend, "precision": precision, "size": size, "threads": threads,
                                "model_key": key})
    return configs


def _phantom_images(cache: Path, purpose: str, seed: int, n: int, available: bool, timeout: float
                    ) -> tuple[list[str], str]:
    """Images of a phantom labelled folder (``sonogate phantom us``), cached; ([], why) when unavailable."""
    folder = _phantom_folder(cache, purpose, seed, n, available, timeout)
    if isinstance(folder, str):
        return [], folder
    from sonogate.data.folder import list_images

    return [str(p) for p in list_images(folder)][:n], ""


def _phantom_folder(cache: Path, purpose: str, seed: int, n: int, available: bool, timeout: float) -> Path | str:
    if not available:
        return "sonogate.phantom is not importable: smooth random images instead of phantom frames"
    folder = cache / f"phantom_{purpose}_seed{seed}_n{n}"
    if (folder / "labels.csv").is_file():
        return folder
    cmd = [sys.executable, "-m", "sonogate.cli", "phantom", "us", "--n", str(n), "--seed", str(seed),
           "--out", str(folder)]
    try:
        proc = subprocess.run(cmd, env=_worker_env(1), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"`sonogate phantom us` timed out after {timeout:g} s: smooth random images instead"
    if proc.returncode != 0 or not (folder / "labels.csv").is_file():
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        return (f"`sonogate phantom us` failed ({lines[-1].strip()[:200] if lines else proc.returncode}): "
                "smooth random images instead")
    return folder


def _prepare_models(options, size: int, torch_ok: bool, calib_images: Callable[[], list[str]],
                    notes: list[str]) -> dict:
    """Model files for one size: the bundle's at its own size, else rebuilt into the cache."""
    paths: dict[str, str] = {}
    source: dict[str, str] = {}
    missing: dict[str, str] = {}
    info: dict[str, Any] = {}
    bundle = options["bundle"]
    if bundle is not None and size == options["bundle_size"]:
        for key, variant in (("fp32", "float"), ("int8", "int8")):
            if variant in bundle.models and bundle.model_path(variant).suffix == ".onnx":
                paths[key] = str(bundle.model_path(variant))
                source[key] = f"bundle {bundle.path} ({bundle.models[variant]['file']})"
        if "openvino" in bundle.models:
            paths["ir"] = str(bundle.model_path("openvino"))
            source["ir"] = f"bundle {bundle.path} ({bundle.models['openvino']['file']})"
    needs = {"fp32", "int8"} - set(paths)
    want_nncf = "openvino-nncf" in options["backends"] and _module_available("nncf")
    if needs or want_nncf:
        arch_kind = "torch" if torch_ok else "onnx-helper"
        if arch_kind == "onnx-helper" and not _module_available("onnx"):
            for key in needs:
                missing[key] = "torch and onnx not installed: cannot rebuild the model at this size"
            return {"paths": paths, "source": source, "missing": missing}
        prep = bundle.preprocessing if bundle is not None else None
        # the full run rebuilds with the shipping recipe (sonogate.export); short mode with the fast local one
        ship = not options["short"] and _module_available("sonogate.export.quantize")
        recipe = "ship" if ship else "local"
        from_bundle = not needs and "fp32" in paths  # only NNCF is missing: quantise the bundle's float model
        folder = (f"bundle-{bundle.bundle_hash[:12]}-s{size}" if from_bundle and bundle is not None
                  else f"{arch_kind}-{recipe}-s{size}")
        spec = {"task": "build", "size": size, "dir": str(options["cache"] / folder),
                "float_source": paths["fp32"] if from_bundle else None,
                "arch_kind": arch_kind, "calib_images": calib_images(), "calib_frames": 16 if options["short"] else 100,
                "nncf": want_nncf, "int8": "int8" in needs or want_nncf, "ship": ship,
                "mean": prep.mean if prep else 0.5, "std": prep.std if prep else 0.25, "seed": 0}
        result = run_worker(spec, 1, max(options["timeout"], 600.0))
        if "error" in result:
            for key in needs | ({"nncf"} if want_nncf else set()):
                missing[key] = f"rebuild at {size} failed: {result['error']}"
            notes.append(f"model rebuild at {size}px failed: {result['error']}")
        else:
            meta = result["meta"]
            info = {"arch": meta.get("arch"), "int8": meta.get("int8"), "nncf": meta.get("nncf"),
                    "cache": spec["dir"]}
            rebuilt = (f"{meta.get('arch')}" if from_bundle
                       else f"rebuilt ({meta.get('arch')}), seeded random weights")
            if "fp32" in needs:
                paths["fp32"], source["fp32"] = result["float"], rebuilt
            if "int8" in needs:
                if result["int8"]:
                    calib = (meta.get("int8") or {}).get("calibration")
                    paths["int8"], source["int8"] = result["int8"], f"{rebuilt}, INT8 calibrated on {calib} frames"
                else:
                    missing["int8"] = "INT8 quantisation failed"
            if want_nncf:
                if result["nncf"]:
                    calib = (meta.get("nncf") or {}).get("calibration")
                    paths["nncf"], source["nncf"] = result["nncf"], f"{rebuilt}, NNCF calibrated on {calib} frames"
                else:
                    missing["nncf"] = (meta.get("nncf") or {}).get("error", "NNCF quantisation failed")
    return {"paths": paths, "source": source, "missing": missing, **info}


def _stats(times_ms: list[float]) -> dict[str, Any]:
    a = np.asarray(times_ms, dtype=np.float64)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p90_ms": round(float(np.percentile(a, 90)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "max_ms": round(float(a.max()), 3),
            "mean_ms": round(float(a.mean()), 3), "min_ms": round(float(a.min()), 3), "n": int(a.size)}


def _derive(rows: list[dict], report: dict) -> None:
    """Speed-up vs the best PyTorch eager row at the same size, achieved GFLOP/s and share of the peak."""
    torch_best: dict[int, dict] = {}
    for row in rows:
        if row["backend"] == "pytorch-eager":
            best = torch_best.get(row["input_size"])
            if best is None or row["p50_ms"] < best["p50_ms"]:
                torch_best[row["input_size"]] = row
    peaks = report.get("peak_gflops", {})
    for row in rows:
        base = torch_best.get(row["input_size"])
        if base is not None:
            row["speedup_vs_torch_p50"] = round(base["p50_ms"] / row["p50_ms"], 3)
            row["speedup_vs_torch_p99"] = round(base["p99_ms"] / row["p99_ms"], 3)
            row["torch_best_threads"] = base["threads"]
        flops = report.get("flops", {}).get(str(row["input_size"]), {}).get("flops")
        if flops:
            achieved = flops / (row["p50_ms"] / 1e3) / 1e9
            row["gflops_achieved"] = round(achieved, 2)
            kind = "int8" if row["precision"].startswith("int8") else "fp32"
            peak = peaks.get(kind, {}).get(str(row["threads"]))
            if peak and not row["backend"].endswith(("cuda", "tensorrt")):
                row["peak_gflops"] = peak
                row["ratio_to_peak"] = round(achieved / peak, 3)
                row["bound_ms"] = round(flops / (peak * 1e9) * 1e3, 3)


# ---------------------------------------------------------------------------- end to end
def _cine(cache: Path, fps: float, seconds: float, notes: list[str]) -> tuple[Path, str]:
    name = f"cine_{fps:g}fps_{seconds:g}s_seed7"
    phantom_path = cache / f"{name}_phantom.mp4"
    synthetic_path = cache / f"{name}_synthetic.mp4"
    if phantom_path.is_file():
        return phantom_path, "phantom"
    try:
        from sonogate.phantom.cine import write_cine
    except ImportError as exc:
        why = f"sonogate.phantom.cine not importable ({exc.name})"
    else:
        try:
            write_cine(phantom_path, seconds=seconds, fps=fps, seed=7)
            return phantom_path, "phantom"
        except Exception as exc:  # noqa: BLE001
            why = f"write_cine failed: {_one_line(exc)}"
    if not synthetic_path.is_file():
        _write_synthetic_cine(synthetic_path, fps, seconds)
    note = f"end to end: {why}; a synthetic speckle video is the source"
    if note not in notes:
        notes.append(note)
    return synthetic_path, "synthetic"


def _write_synthetic_cine(path: Path, fps: float, seconds: float, width: int = 640, height: int = 480) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise SonogateError(f"cannot write video {path}")
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(round(seconds * fps)):
        cx = width / 2 + 80 * math.sin(i / fps * 1.3)
        blob = np.exp(-(((xx - cx) / 90) ** 2 + ((yy - height / 2) / 60) ** 2))
        speckle = rng.rayleigh(40.0, (height, width)).astype(np.float32)
        frame = np.clip(30 + 120 * blob + speckle * (0.4 + blob), 0, 255).astype(np.uint8)
        frame[:40] = 0  # a dark band, like scanner chrome
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()


def _end_to_end(options, paces: list[float | None], progress: _Progress, notes: list[str]) -> dict:
    bundle = options["bundle"]
    if bundle is None:
        for _ in paces:
            progress.done()
        return {"runs": [], "note": "no bundle (--bundle, or demo/bundle): end-to-end not measured"}
    runs = []
    for pace in paces:
        progress.step(f"end to end {pace or 'unpaced'}")
        seconds = options["e2e_seconds"]
        cine, kind = _cine(options["cache"], pace or 30.0, seconds, notes)
        run = _e2e_run(options, bundle.path, cine, pace, seconds)
        run["source_kind"] = kind
        runs.append(run)
        progress.done()
    return {"runs": runs, "device": options["e2e_device"], "threads": 1,
            "how": "Session + LivePipeline with --events (what `sonogate run --headless` runs) in a fresh process, "
                   "OMP_NUM_THREADS=1; CPU and peak RSS (VmHWM) polled by the parent; start-up = process spawn to "
                   "the first non-fault event (interpreter start, imports, bundle verification, model load)"}


def _e2e_run(options, bundle_path: Path, cine: Path, pace: float | None, seconds: float) -> dict:
    import psutil

    with tempfile.TemporaryDirectory(prefix="sonogate-e2e-") as tmp:
        events, spec_path, result_path = Path(tmp) / "events.jsonl", Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec = {"task": "e2e", "bundle": str(bundle_path), "source": str(cine), "device": options["e2e_device"],
                "threads": 1, "events": str(events), "realtime": pace is not None, "loop": pace is None,
                "max_seconds": seconds if pace is None else None, "result_path": str(result_path)}
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "sonogate.bench_cli", "--worker", str(spec_path)]
        run: dict[str, Any] = {"pace_fps": pace, "source": cine.name, "seconds": seconds}
        log_path = Path(tmp) / "stderr.txt"
        log = log_path.open("w")
        t_spawn = time.perf_counter()
        proc = subprocess.Popen(cmd, env=_worker_env(1), stdout=subprocess.DEVNULL, stderr=log)
        ps = psutil.Process(proc.pid)
        rss_peak, cpu, t_first, offset, last_sample = 0.0, 0.0, None, 0, 0.0
        deadline = t_spawn + seconds * 3 + options["timeout"]
        buffered = ""
        while proc.poll() is None:
            now = time.perf_counter()
            if now > deadline:
                proc.kill()
                run["error"] = "timed out"
                break
            if now - last_sample > 0.1:
                last_sample = now
                try:
                    cpu_t = ps.cpu_times()
                    cpu = cpu_t.user + cpu_t.system
                    rss_peak = max(rss_peak, _vm_hwm_mb(proc.pid) or ps.memory_info().rss / 2**20)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            if t_first is None and events.exists():
                with events.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                offset += len(chunk)
                buffered += chunk.decode("utf-8", errors="replace")
                while "\n" in buffered:
                    line, buffered = buffered.split("\n", 1)
                    try:
                        event = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if not event.get("summary") and event.get("fault") is None:
                        t_first = time.perf_counter() - t_spawn
                        break
            time.sleep(0.01)
        wall = time.perf_counter() - t_spawn
        proc.wait()
        log.close()
        stderr = log_path.read_text(errors="replace")
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if "error" in result and "error" not in run:
            run["error"] = result["error"]
        elif proc.returncode != 0 and "error" not in run:
            lines = [ln for ln in stderr.splitlines() if ln.strip()]
            run["error"] = f"runtime exited {proc.returncode}: {lines[-1].strip()[:300] if lines else ''}"
        summary, first_t, last_t = result.get("summary"), None, None
        if events.is_file():
            for line in events.read_text().splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event.get("summary"):
                    summary = summary or event
                elif event.get("t_s") is not None:
                    first_t = event["t_s"] if first_t is None else first_t
                    last_t = event["t_s"]
        run.update({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                    "cpu_percent_of_one_core": round(100 * cpu / wall, 1) if wall > 0 else None,
                    "rss_peak_mb": round(rss_peak, 1) if rss_peak else None,
                    "start_to_first_decision_s": round(t_first, 3) if t_first is not None else None,
                    "device_note": result.get("device_note"), "model_variant": result.get("variant")})
        if summary is not None:
            frames = int(summary.get("frames", 0))
            duration = (last_t - first_t) if (first_t is not None and last_t is not None) else None
            run.update({
                "frames": frames,
                "fps": round((frames - 1) / duration, 2) if duration and frames > 1 else None,
                "dropped_frames": summary.get("dropped_frames"),
                "latency_ms": summary.get("latency_ms"),
                "session_start_to_first_decision_s": summary.get("start_to_first_decision_s"),
                "device": summary.get("device"),
                "faults": summary.get("faults"),
            })
            if pace:
                run["source_frames"] = round(pace * seconds)
        elif "error" not in run:
            run["error"] = "no summary line in the events file"
    return run


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# ---------------------------------------------------------------------------- accuracy
def _accuracy(options, phantom_cli: bool) -> dict:
    bundle = options["bundle"]
    if bundle is None:
        return {"rows": [], "note": "no bundle: accuracy not measured"}
    if options["data"]:
        data = Path(options["data"])
    else:
        folder = _phantom_folder(options["cache"], "heldout", seed=4242, n=48 if options["short"] else 400,
                                 available=phantom_cli, timeout=options["timeout"])
        if isinstance(folder, str):
            return {"rows": [], "note": folder.split(":")[0] + ": accuracy not measured (or pass --data DIR)"}
        data = folder
    result = run_worker({"task": "accuracy", "bundle": str(bundle.path), "data": str(data),
                         "max_frames": 48 if options["short"] else None}, 1, max(options["timeout"], 600.0))
    if "error" in result:
        return {"rows": [], "note": f"accuracy failed: {result['error']}"}
    return result


# ---------------------------------------------------------------------------- goals
def _goals(report: dict, options: dict) -> list[dict]:
    goals = []
    size = options["default_size"]
    rows = [r for r in report.get("rows", []) if r["input_size"] == size]
    torch_rows = [r for r in rows if r["backend"] == "pytorch-eager"]
    int8_rows = [r for r in rows if r["precision"] == "int8" and r["backend"] in ("onnxruntime", "openvino",
                                                                                  "openvino-nncf")]
    best_torch = min(torch_rows, key=lambda r: r["p50_ms"]) if torch_rows else None
    best_int8 = min(int8_rows, key=lambda r: r["p50_ms"]) if int8_rows else None

    def add(name: str, status: str, detail: str) -> None:
        goals.append({"goal": name, "status": status, "detail": detail})

    name = f"INT8 (ORT/OpenVINO) at {size}px >= {GOALS['speedup']:g}x faster than PyTorch eager float (best threads)"
    if best_torch and best_int8:
        ratio = best_torch["p50_ms"] / best_int8["p50_ms"]
        add(name, "pass" if ratio >= GOALS["speedup"] else "fail",
            f"{ratio:.2f}x: {_label(best_int8)} p50 {best_int8['p50_ms']:.2f} ms vs pytorch-eager "
            f"{best_torch['threads']}t p50 {best_torch['p50_ms']:.2f} ms")
    else:
        add(name, "not measured", "needs an INT8 row and a PyTorch eager row at this size"
            + ("" if torch_rows else " (torch not installed or not run)"))
    name = f"INT8 at {size}px within {GOALS['bound']:g}x of the INT8 compute bound"
    if best_int8 and best_int8.get("bound_ms"):
        factor = best_int8["p50_ms"] / best_int8["bound_ms"]
        add(name, "pass" if factor <= GOALS["bound"] else "fail",
            f"{factor:.2f}x the bound: {_label(best_int8)} p50 {best_int8['p50_ms']:.2f} ms, bound "
            f"{best_int8['bound_ms']:.2f} ms ({best_int8['gflops_achieved']:.1f} of {best_int8['peak_gflops']:.1f} "
            f"GOP/s measured INT8 peak at {best_int8['threads']} thread(s))")
    else:
        add(name, "not measured", "needs an INT8 row, the FLOPs of the graph and the INT8 peak")
    name = f"INT8 alpha MAE within {GOALS['int8_alpha_mae_delta']:g} deg of float"
    acc_rows = report.get("accuracy", {}).get("rows", [])
    ref = next((r for r in acc_rows if r["variant"] == "float" and r["engine"] == "ort-cpu"), None)
    int8_acc = [r for r in acc_rows if r["precision"].startswith("int8")]
    alpha = next((k for k in (ref or {}).get("mae", {}) if k.startswith("alpha")), None)
    if ref and int8_acc and alpha and ref["mae"][alpha] is not None:
        worst = max(int8_acc, key=lambda r: abs((r["mae"].get(alpha) or math.inf) - ref["mae"][alpha]))
        delta = (worst["mae"].get(alpha) or math.inf) - ref["mae"][alpha]
        add(name, "pass" if abs(delta) <= GOALS["int8_alpha_mae_delta"] else "fail",
            f"worst INT8 {worst['engine']} alpha MAE {worst['mae'].get(alpha)} vs float {ref['mae'][alpha]} deg "
            f"({delta:+.3f}) on {ref['n']} held-out frames")
    else:
        add(name, "not measured", report.get("accuracy", {}).get("note") or "no INT8 and float accuracy rows")
    runs = report.get("end_to_end", {}).get("runs", [])
    run30 = next((r for r in runs if r.get("pace_fps") == 30.0 and "error" not in r), None)
    why = report.get("end_to_end", {}).get("note") or next((r.get("error") for r in runs if r.get("error")), None) \
        or "no end-to-end run"
    name = (f"runtime sustains a {GOALS['e2e_fps']:g} FPS source with 0 frames dropped and p99 "
            f"capture-to-decision <= {GOALS['e2e_p99_ms']:g} ms")
    if run30 and run30.get("latency_ms"):
        p99, dropped = run30["latency_ms"].get("p99"), run30.get("dropped_frames")
        ok = dropped == 0 and p99 is not None and p99 <= GOALS["e2e_p99_ms"]
        add(name, "pass" if ok else "fail", f"{run30.get('fps')} FPS processed, {dropped} dropped, p99 {p99} ms")
    else:
        add(name, "not measured", why)
    name = f"runtime peak RSS <= {GOALS['rss_mb']:g} MB"
    rss = [r["rss_peak_mb"] for r in runs if r.get("rss_peak_mb") and "error" not in r]
    if rss:
        add(name, "pass" if max(rss) <= GOALS["rss_mb"] else "fail", f"max {max(rss):.0f} MB over {len(rss)} runs")
    else:
        add(name, "not measured", why)
    name = f"start (process spawn) to first decision <= {GOALS['startup_s']:g} s"
    starts = [r["start_to_first_decision_s"] for r in runs if r.get("start_to_first_decision_s") is not None
              and "error" not in r]
    if starts:
        add(name, "pass" if max(starts) <= GOALS["startup_s"] else "fail",
            f"max {max(starts):.2f} s over {len(starts)} runs (includes interpreter start and model load)")
    else:
        add(name, "not measured", why)
    return goals


# ===================================================================================== output
def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# sonogate bench ({report['mode']} mode)", "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        (f"- machine: {m.get('cpu_model')} ({m.get('arch')}), {m.get('usable_cores')} usable / "
         f"{m.get('logical_cores')} logical cores, flags {' '.join(m.get('cpu_flags', [])) or '-'}, "
         f"load average {m.get('load_average_start')} -> {m.get('load_average_end')}"),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
        "", "## Goals", "",
    ]
    if report["mode"] == "short":
        lines[2:2] = [("> Short mode: one size, 1 thread, 30 frames, a harness check. These numbers are not "
                       "results; the full run (`make bench`) on a quiet machine is."), ""]
    for g in report["goals"]:
        lines.append(f"- **{g['status'].upper()}** {g['goal']}: {g['detail']}")
    lines += ["", "## Encoder + heads latency (batch 1, ms)", "",
              ("Speed-up = p50 of the best PyTorch eager row at the same size / p50 of the row (the headline: "
               "absolute times on a shared machine drift). Peak share = achieved GFLOP/s (graph FLOPs / p50) / "
               "measured peak of that precision at that thread count."), "",
              ("| backend | precision | size | threads | p50 | p90 | p99 | max | n | speed-up vs torch | GFLOP/s | "
               "peak share | CPU ms/frame |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(report["rows"], key=lambda r: (r["input_size"], r["threads"], r["backend"], r["precision"])):
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['input_size']} | {r['threads']} | {_fmt(r['p50_ms'])} | "
            f"{_fmt(r['p90_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r['max_ms'])} | {r['n']} | "
            f"{_fmt(r.get('speedup_vs_torch_p50'))}x | {_fmt(r.get('gflops_achieved'), 1)} | "
            f"{_fmt(r.get('ratio_to_peak'))} | {_fmt(r.get('cpu_ms_per_frame'), 1)} |")
    if report.get("skipped"):
        lines += ["", "Skipped:", ""]
        lines += [f"- {s['backend']} {s['precision']} {s['input_size']}px {s['threads']}t: {s['reason']}"
                  for s in report["skipped"]]
    lines += ["", "## FLOPs and measured peak", "", "| size | GFLOP (2 x MACs of Conv/Gemm/MatMul) |", "|---|---|"]
    for size, f in report.get("flops", {}).items():
        lines.append(f"| {size} | {f['gflops']:.3f} |")
    peak = report.get("peak_gflops", {})
    lines += ["", "| threads | fp32 peak GFLOP/s | int8 peak GOP/s | best kernels |", "|---|---|---|---|"]
    for t, kernels in peak.get("kernels", {}).items():
        best = {}
        for k in kernels:
            if k["gflops"] > best.get(k["precision"], {}).get("gflops", 0):
                best[k["precision"]] = k
        kinds = "; ".join(f"{p}: {k['engine']} {k['kernel']}" for p, k in best.items())
        lines.append(f"| {t} | {_fmt(peak['fp32'].get(t), 1)} | {_fmt(peak['int8'].get(t), 1)} | {kinds} |")
    lines += ["", "## End to end (`sonogate run`, 1 thread)", ""]
    e2e = report.get("end_to_end", {})
    if e2e.get("runs"):
        lines += [("| source pace | frames | FPS | dropped | p50 ms | p99 ms | CPU % of a core | peak RSS MB | "
                   "spawn to first decision s | note |"), "|---|---|---|---|---|---|---|---|---|---|"]
        for r in e2e["runs"]:
            lat = r.get("latency_ms") or {}
            lines.append(
                f"| {_fmt(r.get('pace_fps'), 0) if r.get('pace_fps') else 'unpaced'} | {_fmt(r.get('frames'))} | "
                f"{_fmt(r.get('fps'), 1)} | {_fmt(r.get('dropped_frames'))} | {_fmt(lat.get('p50'), 1)} | "
                f"{_fmt(lat.get('p99'), 1)} | {_fmt(r.get('cpu_percent_of_one_core'), 0)} | "
                f"{_fmt(r.get('rss_peak_mb'), 0)} | {_fmt(r.get('start_to_first_decision_s'))} | "
                f"{r.get('error') or r.get('source_kind', '')} |")
    else:
        lines.append(e2e.get("note", "not measured"))
    lines += ["", "## Accuracy of each precision", ""]
    acc = report.get("accuracy", {})
    if acc.get("rows"):
        names = list(acc["rows"][0]["mae"])
        lines += ["| model | engine | n | " + " | ".join(f"{n} MAE" for n in names) + " | alpha mean abs diff to ORT float |",
                  "|---|---|---|" + "---|" * len(names) + "---|"]
        for r in acc["rows"]:
            diff = (r.get("mean_abs_diff_vs_ort_float") or {})
            alpha = next((k for k in names if k.startswith("alpha")), names[0])
            lines.append(f"| {r['variant']} ({r['file']}) | {r['engine']} | {r['n']} | "
                         + " | ".join(_fmt(r["mae"][n], 3) for n in names) + f" | {_fmt(diff.get(alpha), 3)} |")
    else:
        lines.append(acc.get("note", "not measured"))
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _plots(report: dict, samples: dict[str, list[float]], out: Path, default_size: int) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report["notes"].append("matplotlib not installed: no plots")
        return []
    written = []
    rows = report["rows"]
    if rows:
        threads = sorted({r["threads"] for r in rows})
        fig, axes = plt.subplots(1, len(threads), figsize=(5.5 * len(threads), 4.2), squeeze=False, sharey=True)
        for ax, t in zip(axes[0], threads):
            series: dict[str, list[tuple[int, float, float]]] = {}
            for r in rows:
                if r["threads"] == t:
                    series.setdefault(f"{r['backend']} {r['precision']}", []).append(
                        (r["input_size"], r["p50_ms"], r["p99_ms"]))
            for name, pts in sorted(series.items()):
                pts.sort()
                xs = [p[0] for p in pts]
                line, = ax.plot(xs, [p[1] for p in pts], marker="o", label=name)
                ax.fill_between(xs, [p[1] for p in pts], [p[2] for p in pts], alpha=0.15, color=line.get_color())
            ax.set_title(f"{t} thread{'s' if t > 1 else ''} (line p50, band to p99)")
            ax.set_xlabel("input size (px)")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("latency per frame (ms)")
        axes[0][-1].legend(fontsize=8)
        fig.suptitle(f"sonogate encoder+heads latency, batch 1 ({report['mode']} mode)")
        fig.tight_layout()
        fig.savefig(out / "latency_vs_size.png", dpi=110)
        plt.close(fig)
        written.append("latency_vs_size.png")
    if samples:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        all_values = np.concatenate([np.asarray(v) for v in samples.values()])
        bins = np.logspace(np.log10(max(all_values.min() * 0.9, 1e-3)), np.log10(all_values.max() * 1.1), 60)
        for name, values in sorted(samples.items()):
            ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("latency per frame (ms)")
        ax.set_ylabel("frames")
        ax.set_title(f"latency histogram at {default_size}px")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        name = f"latency_hist_{default_size}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def _write_outputs(report: dict, samples: dict, options: dict) -> None:
    out = options["out"]
    report["plots"] = _plots(report, samples, out, options["default_size"])
    report["latency_samples_ms"] = {"input_size": options["default_size"], "by_config": samples}
    (out / "latest.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    markdown = _markdown(report)
    (out / "results.md").write_text(markdown)
    readme = out.resolve().parent / "README.md"
    if readme.is_file():
        text = readme.read_text()
        if README_START in text and README_END in text:
            head, rest = text.split(README_START, 1)
            _, tail = rest.split(README_END, 1)
            body = markdown.replace("\n## ", "\n#### ").replace("# sonogate bench", "### Last run:", 1)
            readme.write_text(f"{head}{README_START}\n{body}\n{README_END}{tail}")


def _print_report(report: dict) -> None:
    m = report["machine"]
    print(f"sonogate bench ({report['mode']}): {m.get('cpu_model')}, {m.get('usable_cores')} cores, "
          f"flags {' '.join(m.get('cpu_flags', []))}, load {m.get('load_average_start')}")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"{'backend':<22}{'prec':<6}{'size':>5}{'thr':>4}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'n':>5}"
          f"{'x torch':>9}{'%peak':>7}")
    for r in sorted(report["rows"], key=lambda r: (r["input_size"], r["threads"], r["backend"], r["precision"])):
        ratio = r.get("ratio_to_peak")
        print(f"{r['backend']:<22}{r['precision']:<6}{r['input_size']:>5}{r['threads']:>4}{r['p50_ms']:>9.2f}"
              f"{r['p90_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['max_ms']:>9.2f}{r['n']:>5}"
              f"{_fmt(r.get('speedup_vs_torch_p50')):>9}{(f'{100 * ratio:.0f}%' if ratio else '-'):>7}")
    for s in report.get("skipped", []):
        print(f"skipped {s['backend']} {s['precision']} {s['input_size']}px {s['threads']}t: {s['reason']}")
    for size, f in report.get("flops", {}).items():
        print(f"flops {size}px: {f['gflops']:.3f} GFLOP")
    peak = report.get("peak_gflops", {})
    for t in sorted(set(peak.get("fp32", {})) | set(peak.get("int8", {})), key=int):
        print(f"peak {t} thread(s): fp32 {_fmt(peak['fp32'].get(t), 1)} GFLOP/s, int8 "
              f"{_fmt(peak['int8'].get(t), 1)} GOP/s")
    for e in peak.get("errors", []):
        print(f"peak: {e}")
    e2e = report.get("end_to_end", {})
    for r in e2e.get("runs", []):
        lat = r.get("latency_ms") or {}
        pace = f"{r['pace_fps']:g} FPS" if r.get("pace_fps") else "unpaced"
        if r.get("error"):
            print(f"end to end {pace}: {r['error']}")
        else:
            print(f"end to end {pace}: {_fmt(r.get('fps'), 1)} FPS, {r.get('dropped_frames')} dropped, p50 "
                  f"{_fmt(lat.get('p50'), 1)} ms, p99 {_fmt(lat.get('p99'), 1)} ms, CPU "
                  f"{_fmt(r.get('cpu_percent_of_one_core'), 0)}% of a core, RSS {_fmt(r.get('rss_peak_mb'), 0)} MB, "
                  f"first decision {_fmt(r.get('start_to_first_decision_s'))} s")
    if e2e.get("note"):
        print(f"end to end: {e2e['note']}")
    acc = report.get("accuracy", {})
    for r in acc.get("rows", []):
        print(f"accuracy {r['variant']} on {r['engine']}: " + ", ".join(
            f"{k} MAE {_fmt(v, 3)}" for k, v in r["mae"].items()))
    if acc.get("note"):
        print(f"accuracy: {acc['note']}")
    for g in report["goals"]:
        print(f"GOAL {g['status'].upper()}: {g['goal']}: {g['detail']}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    print("usage: python -m sonogate.bench_cli --worker SPEC.json (internal); use `sonogate bench`", file=sys.stderr)
    sys.exit(2)
