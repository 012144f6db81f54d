"""What the bench ran on: CPU model and flags, cores, memory, library versions, load average, GPUs."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from sonogate.bench.text import one_line

CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "sve")
VERSIONED_DISTRIBUTIONS = ("sonogate", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "nncf",
                           "torch", "torchvision", "opencv-python-headless", "opencv-python", "psutil")


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask), else the logical core count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def package_version(dist: str) -> str | None:
    """Installed version of distribution ``dist``, or None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def module_available(name: str) -> bool:
    """Whether module ``name`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module that hides itself
        return False


def ort_providers() -> list[str]:
    """ONNX Runtime's available execution providers ([] without onnxruntime)."""
    try:
        import onnxruntime as ort

        return list(ort.get_available_providers())
    except ImportError:
        return []


def machine_info() -> dict[str, Any]:
    """CPU model, arch, cores, CPU flags of ``CPU_FLAGS``, OS, Python, memory (GB), max MHz, load average at
    start, versions of ``VERSIONED_DISTRIBUTIONS`` and, with /dev/nvidia0, the GPUs of ``nvidia-smi -L``."""
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
        "usable_cores": cpu_count(),
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
        info["psutil_error"] = one_line(exc)
    try:
        info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    versions = {}
    for dist in VERSIONED_DISTRIBUTIONS:
        version = package_version(dist)
        if version:
            versions[dist] = version
    info["versions"] = versions
    if Path("/dev/nvidia0").exists():
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
            info["gpus"] = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            info["gpus"] = ["/dev/nvidia0 present, nvidia-smi failed"]
    return info
