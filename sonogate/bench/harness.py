"""``run_bench(options)``: which configurations run and in which order, each in its own worker process
(``sonogate.bench.workers``), with a progress bar; the report is assembled and written by ``sonogate.bench.report``.

Order: models per size (the bundle's at its own size, else rebuilt into the cache), FLOPs, compute peak per
thread count, latency rows, end to end, accuracy.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sonogate.bench.endtoend import HOW as E2E_HOW
from sonogate.bench.endtoend import cine, e2e_run
from sonogate.bench.flops import count_flops
from sonogate.bench.machine import machine_info, module_available, ort_providers
from sonogate.bench.report import derive, goal_verdicts, latency_stats, row_label, write_outputs
from sonogate.bench.text import one_line
from sonogate.bench.workers import run_worker, worker_env

SCHEMA = 1


class Progress:
    """A tqdm bar over configurations on stderr (nothing when disabled or without tqdm)."""

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


def run_bench(options: dict[str, Any]) -> dict[str, Any]:
    """Run every part of ``options`` (built by ``sonogate.bench.cli.build_options``), write the outputs into
    ``options["out"]`` and return the report (the content of ``latest.json``)."""
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
    torch_ok = module_available("torch") and not options["no_torch"]
    if not torch_ok:
        notes.append("torch not installed: no PyTorch eager rows" if not options["no_torch"]
                     else "--no-torch: no PyTorch eager rows (as a torch-free install)")
    providers = ort_providers()
    report["machine"]["onnxruntime_providers"] = providers
    gpu = "CUDAExecutionProvider" in providers or bool(report["machine"].get("gpus"))
    parts = options["parts"]

    # what will run (for the progress bar)
    phantom_cli = module_available("sonogate.phantom.cli")
    latency_configs = _latency_configs(options, torch_ok, providers, gpu, notes) if "latency" in parts else []
    steps = len(options["sizes"]) + len(latency_configs)
    steps += len(options["threads"]) if "peak" in parts else 0
    e2e_paces = ([30.0] if options["short"] else [30.0, 60.0, None]) if "e2e" in parts else []
    steps += len(e2e_paces) + (1 if "accuracy" in parts else 0)
    progress = Progress(steps, options["progress"])
    phases: dict[str, float] = {}
    report["phase_s"] = phases
    t_phase = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal t_phase
        now = time.perf_counter()
        phases[name] = round(now - t_phase, 2)
        t_phase = now

    samples: dict[str, list[float]] = {}
    try:
        models = _models_per_size(options, torch_ok, phantom_cli, progress, notes)
        report["models"] = {str(s): {k: v for k, v in m.items() if k != "paths"} for s, m in models.items()}
        phase("models")
        report["flops"] = {}
        for size, m in models.items():
            path = m["paths"].get("fp32")
            if path:
                try:
                    report["flops"][str(size)] = count_flops(path)
                except Exception as exc:  # noqa: BLE001 - onnx missing or a graph it cannot infer
                    notes.append(f"FLOPs at {size}: {one_line(exc)}")
        report["peak_gflops"] = _measure_peak(options, progress) if "peak" in parts else {
            "fp32": {}, "int8": {}, "kernels": {}, "errors": []}
        phase("flops_and_peak")
        report["rows"], report["skipped"] = _measure_latency(options, latency_configs, models, progress, samples,
                                                             notes)
        derive(report["rows"], report)
        over = [r for r in report["rows"] if (r.get("ratio_to_peak") or 0) > 1.0]
        if over:
            notes.append(f"{len(over)} row(s) beat the measured peak ({row_label(over[0])} {over[0]['input_size']}px: "
                         f"{over[0]['ratio_to_peak']:.2f}x): the peak was under-measured on a busy machine; "
                         "compare ratios from a quiet full run")
        phase("latency")
        report["end_to_end"] = _end_to_end(options, e2e_paces, progress, notes) if e2e_paces else {
            "runs": [], "note": "not run (--parts)"}
        phase("end_to_end")
        if "accuracy" in parts:
            progress.step("accuracy")
            report["accuracy"] = _accuracy(options, phantom_cli)
            progress.done()
        else:
            report["accuracy"] = {"rows": [], "note": "not run (--parts)"}
        phase("accuracy")
    finally:
        progress.close()

    report["goals"] = goal_verdicts(report, options)
    try:
        report["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    report["duration_s"] = round(time.perf_counter() - t_start, 1)
    write_outputs(report, samples, options)
    return report


# ---------------------------------------------------------------------------- what runs
def _row_key(cfg: dict) -> dict:
    return {"backend": cfg["backend"], "precision": cfg["precision"], "input_size": cfg["size"],
            "threads": cfg["threads"]}


def _latency_configs(options, torch_ok: bool, providers: list[str], gpu: bool, notes: list[str]) -> list[dict]:
    """The latency configurations {backend, precision, size, threads, model_key} that can run here; a note
    for each wanted backend that cannot."""
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
            if module_available("onnxruntime"):
                per_size += [(backend, "fp32", "fp32", True), (backend, "int8", "int8", True)]
            else:
                notes.append("onnxruntime not installed: no ONNX Runtime rows")
        elif backend == "openvino":
            if module_available("openvino"):
                per_size += [(backend, "fp32", "fp32", True), (backend, "int8", "int8", True)]
            else:
                notes.append("openvino not installed: no OpenVINO rows")
        elif backend == "openvino-nncf":
            if module_available("openvino") and module_available("nncf"):
                per_size.append((backend, "int8", "nncf", True))
            elif not options["short"]:
                notes.append("nncf or openvino not installed: no OpenVINO NNCF INT8 rows")
        elif backend == "openvino-ir":
            bundle = options["bundle"]
            entry = (bundle.models.get("openvino") if bundle is not None else None) or {}
            if entry and module_available("openvino"):
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
    configs = []
    for size in options["sizes"]:
        for backend, precision, key, threaded in per_size:
            if key == "ir" and size != options["bundle_size"]:
                continue  # the bundle's IR exists at the bundle's size only
            for threads in (options["threads"] if threaded else [1]):
                configs.append({"backend": backend, "precision": precision, "size": size, "threads": threads,
                                "model_key": key})
    return configs


# ---------------------------------------------------------------------------- phantom data
def _phantom_images(cache: Path, purpose: str, seed: int, n: int, available: bool, timeout: float
                    ) -> tuple[list[str], str]:
    """Images of a phantom labelled folder (``sonogate phantom us``), cached; ([], why) when unavailable."""
    folder = _phantom_folder(cache, purpose, seed, n, available, timeout)
    if isinstance(folder, str):
        return [], folder
    from sonogate.data.folder import list_images

    return [str(p) for p in list_images(folder)][:n], ""


def _phantom_folder(cache: Path, purpose: str, seed: int, n: int, available: bool, timeout: float) -> Path | str:
    """A cached ``sonogate phantom us`` folder of n frames, or why there is none."""
    if not available:
        return "sonogate.phantom is not importable: smooth random images instead of phantom frames"
    folder = cache / f"phantom_{purpose}_seed{seed}_n{n}"
    if (folder / "labels.csv").is_file():
        return folder
    cmd = [sys.executable, "-m", "sonogate.cli", "phantom", "us", "--n", str(n), "--seed", str(seed),
           "--out", str(folder)]
    try:
        proc = subprocess.run(cmd, env=worker_env(1), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"`sonogate phantom us` timed out after {timeout:g} s: smooth random images instead"
    if proc.returncode != 0 or not (folder / "labels.csv").is_file():
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        return (f"`sonogate phantom us` failed ({lines[-1].strip()[:200] if lines else proc.returncode}): "
                "smooth random images instead")
    return folder


# ---------------------------------------------------------------------------- models per size
def _models_per_size(options, torch_ok: bool, phantom_cli: bool, progress: Progress, notes: list[str]) -> dict:
    """size -> model files (see ``_prepare_models``); phantom calibration frames are only made when a size
    must be rebuilt."""
    calib_cache: dict[str, Any] = {}

    def calib_images() -> list[str]:
        if "images" not in calib_cache:
            images, why = _phantom_images(options["cache"], "calib", seed=9001, n=32 if options["short"] else 128,
                                          available=phantom_cli, timeout=options["timeout"])
            calib_cache["images"] = images
            if why:
                notes.append(f"INT8 calibration: {why}")
        return calib_cache["images"]

    models = {}
    for size in options["sizes"]:
        progress.step(f"models {size}px")
        if "latency" in options["parts"]:
            models[size] = _prepare_models(options, size, torch_ok, calib_images, notes)
        progress.done()
    return models


def _prepare_models(options, size: int, torch_ok: bool, calib_images: Callable[[], list[str]],
                    notes: list[str]) -> dict:
    """Model files for one size: the bundle's at its own size, else rebuilt into the cache by the ``build``
    worker. Returns {paths, source, missing (key -> why), and how they were built}."""
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
    want_nncf = "openvino-nncf" in options["backends"] and module_available("nncf")
    if not (needs or want_nncf):
        return {"paths": paths, "source": source, "missing": missing}
    arch_kind = "torch" if torch_ok else "onnx-helper"
    if arch_kind == "onnx-helper" and not module_available("onnx"):
        for key in needs:
            missing[key] = "torch and onnx not installed: cannot rebuild the model at this size"
        return {"paths": paths, "source": source, "missing": missing}
    prep = bundle.preprocessing if bundle is not None else None
    # the full run exports with the shipping exporter (torch.export: about a minute), short mode with TorchScript
    ship = not options["short"]
    from_bundle = not needs and "fp32" in paths  # only NNCF is missing: quantise the bundle's float model
    folder = (f"bundle-{bundle.bundle_hash[:12]}-s{size}" if from_bundle and bundle is not None
              else f"{arch_kind}-{'ship' if ship else 'fast'}-s{size}")
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
        return {"paths": paths, "source": source, "missing": missing}
    meta = result["meta"]
    info = {"arch": meta.get("arch"), "int8": meta.get("int8"), "nncf": meta.get("nncf"), "cache": spec["dir"]}
    rebuilt = f"{meta.get('arch')}" if from_bundle else f"rebuilt ({meta.get('arch')}), seeded random weights"
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


# ---------------------------------------------------------------------------- parts
def _measure_peak(options, progress: Progress) -> dict:
    """{fp32: {threads: GFLOP/s}, int8: {threads: GOP/s}, kernels: {threads: [...]}, errors} per thread count."""
    peak: dict[str, Any] = {"fp32": {}, "int8": {}, "kernels": {}, "errors": []}
    for threads in options["threads"]:
        progress.step(f"peak {threads} thread(s)")
        result = run_worker({"task": "peak", "threads": threads, "short": options["short"]}, threads,
                            options["timeout"])
        if "error" in result:
            peak["errors"].append(f"{threads} threads: {result['error']}")
        else:
            peak["kernels"][str(threads)] = result["kernels"]
            peak["errors"] += [f"{threads} threads: {e}" for e in result["errors"]]
            for precision in ("fp32", "int8"):
                values = [k["gflops"] for k in result["kernels"] if k["precision"] == precision]
                if values:
                    peak[precision][str(threads)] = max(values)
        progress.done()
    return peak


def _measure_latency(options, configs: list[dict], models: dict, progress: Progress,
                     samples: dict[str, list[float]], notes: list[str]) -> tuple[list[dict], list[dict]]:
    """One latency worker per configuration. Returns (rows, skipped); per-frame times at the default size go
    into ``samples``."""
    rows, skipped = [], []
    for cfg in configs:
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
                "warmup": options["warmup"], "cache": str(options["cache"]), "seed": 0,
                "max_seconds": options["max_seconds"]}
        result = run_worker(spec, cfg["threads"], options["timeout"])
        if "error" in result:
            skipped.append({**_row_key(cfg), "reason": result["error"]})
        else:
            row = {**_row_key(cfg), **latency_stats(result["times_ms"])}
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
                samples[row_label(row)] = result["times_ms"]
        progress.done()
    return rows, skipped


def _end_to_end(options, paces: list[float | None], progress: Progress, notes: list[str]) -> dict:
    """One runtime process per source pace (FPS; None: unpaced) on the bundle; {runs, device, threads, how}."""
    bundle = options["bundle"]
    if bundle is None:
        for _ in paces:
            progress.done()
        return {"runs": [], "note": "no bundle (--bundle, or demo/bundle): end-to-end not measured"}
    runs = []
    for pace in paces:
        progress.step(f"end to end {pace or 'unpaced'}")
        seconds = options["e2e_seconds"]
        source, kind = cine(options["cache"], pace or 30.0, seconds, notes)
        run = e2e_run(options, bundle.path, source, pace, seconds)
        run["source_kind"] = kind
        runs.append(run)
        progress.done()
    return {"runs": runs, "device": options["e2e_device"], "threads": 1, "how": E2E_HOW}


def _accuracy(options, phantom_cli: bool) -> dict:
    """The accuracy worker on ``--data`` or a held-out phantom folder (seed 4242)."""
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
