"""``sonogate export``: a training run -> a model bundle the torch-free runtime loads.

BUNDLE/model.onnx          float graph, checked against torch (ORT within 1e-3)
BUNDLE/model.int8.onnx     static INT8 QDQ (ONNX Runtime), calibrated on phantom/real frames
BUNDLE/openvino/model.xml  OpenVINO IR (NNCF INT8 when it tracks float and is faster, else fp32)
BUNDLE/ood.npz             feature mean / shrunk inverse covariance / threshold (from training)
BUNDLE/parity.json         INT8 vs float and each model vs ground truth on held-out infants; latency
BUNDLE/manifest.json       via sonogate.core.bundle.write_manifest (sha256 of every file)
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonogate.errors import DataError, SonogateError
from sonogate.export.onnx_export import INPUT_NAME, check_onnx, export_onnx, ort_session, run_ort
from sonogate.export.ood import OOD_FILE, mahalanobis, save_ood
from sonogate.measurements import US_MEASUREMENTS
from sonogate.core.bundle import Preprocessing, write_manifest
from sonogate.runtime.image_stats import DESCRIPTOR_DIM, DESCRIPTOR_VERSION

FLOAT_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
OPENVINO_DIR = "openvino"
PARITY_FILE = "parity.json"
ALPHA_PARITY_GOAL_DEG = 0.5


@dataclass
class ExportOptions:
    calib_data: str | None = None
    parity_data: str | None = None
    calib_frames: int = 200
    parity_frames: int = 400
    int8: bool = True
    openvino: bool = True
    force: bool = False
    progress: bool = True
    latency_runs: int = 30
    seed: int = 0


def _pick(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of at most ``limit`` of ``n`` rows."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _image_source(path: str) -> tuple[list[Path], np.ndarray | None]:
    """Images of a folder and their ultrasound regions: a labelled folder (with ROI columns when it has
    them) or any folder of images (whole images)."""
    from sonogate.data.folder import LABELS_CSV, list_images, read_labelled_folder

    if (Path(path) / LABELS_CSV).is_file():
        folder = read_labelled_folder(path)
        return folder.image_paths, folder.rois()
    return list_images(path), None


def _inputs(images: np.ndarray, pre: Preprocessing) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - pre.mean) / pre.std)[:, None]


def _latency_ms(fn: Callable[[np.ndarray], object], x1: np.ndarray, runs: int) -> dict:
    """Median / p90 wall time of single-frame calls (batch 1, the live-video case) after 3 warm-ups."""
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


def _mae_block(pred: np.ndarray, ref: np.ndarray, names: tuple[str, ...]) -> dict:
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


def _versions() -> dict:
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


BUNDLE_ENTRIES = {FLOAT_FILE, INT8_FILE, OPENVINO_DIR, OOD_FILE, PARITY_FILE, "manifest.json", "calibration.json"}


def _prepare_out_dir(out_dir: Path, force: bool) -> None:
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


def export_bundle(run_dir: str, out: str, opts: ExportOptions | None = None, log: Callable[[str], None] = print) -> str:
    """Export RUN_DIR (from ``sonogate train``) to the bundle folder ``out``. Returns the manifest sha256.

    Calibration frames: ``opts.calib_data`` (any image folder) or the run's training infants. Parity set:
    ``opts.parity_data`` (labelled) or the run's held-out infants (so parity is measured on frames neither
    training nor INT8 calibration saw).
    """
    from sonogate.data.folder import read_labelled_folder
    from sonogate.models.network import OUTPUT_NAMES, US_NAMES
    from sonogate.models.train import build_model, load_checkpoint, load_resized

    opts = opts or ExportOptions()
    ckpt = load_checkpoint(run_dir)
    cfg = ckpt["config"]
    model = build_model(ckpt)
    pre = Preprocessing(height=cfg["size"], width=cfg["size"], mean=cfg["mean"], std=cfg["std"])
    out_dir = Path(out)
    _prepare_out_dir(out_dir, opts.force)

    # Data: calibration frames from training infants (or --calib-data), parity on held-out infants.
    train_data = Path(ckpt["data"]["path"])
    held_groups = set(ckpt["data"]["heldout_groups"])
    parity_folder = read_labelled_folder(opts.parity_data) if opts.parity_data else None
    calib_paths: list[Path] = []
    calib_rois = None
    if train_data.is_dir():
        folder = read_labelled_folder(train_data)
        is_held = np.array([g in held_groups for g in folder.groups()])
        if parity_folder is None:
            parity_folder = folder.subset(np.flatnonzero(is_held))
        train_part = folder.subset(np.flatnonzero(~is_held))
        calib_paths, calib_rois = train_part.image_paths, train_part.rois()
    if opts.calib_data:
        calib_paths, calib_rois = _image_source(opts.calib_data)
    if parity_folder is None or len(parity_folder) == 0:
        raise DataError(
            f"training data {train_data} is not available: pass --parity-data DIR (labelled) and --calib-data DIR"
        )
    if (opts.int8 or opts.openvino) and not calib_paths:
        raise DataError("no calibration frames: pass --calib-data DIR")

    size = pre.height
    parity_folder = parity_folder.subset(_pick(len(parity_folder), opts.parity_frames, opts.seed))
    x_par = _inputs(
        load_resized(parity_folder.image_paths, size, opts.progress, "load parity frames", parity_folder.rois())[0], pre
    )
    x_cal = None
    if calib_paths:
        pick = _pick(len(calib_paths), opts.calib_frames, opts.seed)
        rois = None if calib_rois is None else calib_rois[pick]
        x_cal = _inputs(
            load_resized([calib_paths[i] for i in pick], size, opts.progress, "load calibration frames", rois)[0], pre
        )

    # 1. float ONNX, verified against torch.
    float_path = out_dir / FLOAT_FILE
    log("exporting model.onnx")
    export_onnx(model, float_path, size, OUTPUT_NAMES)
    diffs = check_onnx(float_path, model, x_par[:16])
    log(f"model.onnx matches torch (max abs diff {max(diffs.values()):.2e})")
    sess_float = ort_session(float_path)
    ref = run_ort(sess_float, x_par)
    truth = parity_folder.targets(US_NAMES)
    standard = parity_folder.standard_plane()
    ood = ckpt["ood"]
    ood_mean, ood_prec = ood["mean"].numpy(), ood["precision"].numpy()
    d_float = mahalanobis(ref["features"], ood_mean, ood_prec)

    def compare(outputs: dict[str, np.ndarray]) -> dict:
        """Figures of one model variant against float and against the labels (standard-plane frames)."""
        block = {
            "vs_float_standard_plane": _mae_block(
                outputs["measurements"][standard], ref["measurements"][standard], US_NAMES
            ),
            "vs_float_all_frames": _mae_block(outputs["measurements"], ref["measurements"], US_NAMES),
            "vs_truth_standard_plane": _mae_block(outputs["measurements"][standard], truth[standard], US_NAMES),
            "plane_probability_mae_vs_float": round(
                float(np.abs(_sigmoid(outputs["plane_logit"]) - _sigmoid(ref["plane_logit"])).mean()), 5
            ),
            "plane_decision_agreement": round(
                float(((outputs["plane_logit"] > 0) == (ref["plane_logit"] > 0)).mean()), 4
            ),
            "ood_distance_mae_vs_float": round(
                float(np.abs(mahalanobis(outputs["features"], ood_mean, ood_prec) - d_float).mean()), 4
            ),
        }
        return block

    x1 = x_par[:1]
    parity: dict = {
        "data": {
            "source": str(Path(opts.parity_data).resolve())
            if opts.parity_data
            else f"held-out infants of the training split ({train_data})",
            "n_frames": len(x_par),
            "n_standard_plane": int(standard.sum()),
        },
        "goal": {"alpha_deg_int8_vs_float_mae": ALPHA_PARITY_GOAL_DEG},
        "latency_note": f"batch 1, {cfg['size']} px, CPU ({platform.processor() or platform.machine()}), "
        "ORT / OpenVINO default threads, median of single-frame calls",
        "models": {
            "float": {
                "file": FLOAT_FILE,
                "vs_truth_standard_plane": compare(ref)["vs_truth_standard_plane"],
                "latency": _latency_ms(lambda x: sess_float.run(None, {INPUT_NAME: x}), x1, opts.latency_runs),
            }
        },
    }
    models = {"float": {"file": FLOAT_FILE, "format": "onnx", "precision": "fp32"}}

    # 2. static INT8 with ONNX Runtime.
    if opts.int8:
        from sonogate.export.quantize import quantize_int8

        log(f"quantising model.int8.onnx on {len(x_cal)} calibration frames")
        int8_path = quantize_int8(float_path, out_dir / INT8_FILE, x_cal)
        sess8 = ort_session(int8_path)
        block = compare(run_ort(sess8, x_par))
        block["latency"] = _latency_ms(lambda x: sess8.run(None, {INPUT_NAME: x}), x1, opts.latency_runs)
        alpha = block["vs_float_standard_plane"].get("alpha_deg", {}).get("mae", float("nan"))
        block["meets_goal"] = bool(alpha <= ALPHA_PARITY_GOAL_DEG)
        parity["models"]["int8"] = {"file": INT8_FILE, **block}
        models["int8"] = {
            "file": INT8_FILE,
            "format": "onnx",
            "precision": "int8",
            "quantization": "static QDQ per-channel, ONNX Runtime",
        }
        log(f"int8 alpha MAE vs float {alpha:.3f} deg")

    # 3. OpenVINO IR: fp32, the ORT QDQ model as IR (same INT8 recipe), NNCF INT8. The fastest candidate
    #    whose alpha tracks float within the goal is kept; fp32 when none does.
    if opts.openvino:
        import shutil
        import tempfile

        from sonogate.export.quantize import export_openvino, openvino_runner

        log("converting to OpenVINO IR")
        with tempfile.TemporaryDirectory() as tmp:
            sources = {"fp32": (float_path, None)}
            if opts.int8:
                sources["int8_qdq"] = (out_dir / INT8_FILE, None)
            if x_cal is not None:
                sources["int8_nncf"] = (float_path, x_cal)
            candidates = {}
            for name, (source, calib) in sources.items():
                xml = export_openvino(source, Path(tmp) / name, calib=calib)
                run = openvino_runner(xml)
                block = compare(run(x_par))
                block["latency"] = _latency_ms(run, x1, opts.latency_runs)
                candidates[name] = block
            parity["openvino_candidates"] = candidates

            def tracks(name: str) -> bool:
                alpha = candidates[name].get("vs_float_standard_plane", {}).get("alpha_deg", {}).get("mae", math.inf)
                return name == "fp32" or alpha <= ALPHA_PARITY_GOAL_DEG

            chosen = min((n for n in candidates if tracks(n)), key=lambda n: candidates[n]["latency"]["median_ms"])
            ov_dir = out_dir / OPENVINO_DIR
            shutil.copytree(Path(tmp) / chosen, ov_dir)
        precision = "fp32" if chosen == "fp32" else "int8"
        parity["models"]["openvino"] = {"file": f"{OPENVINO_DIR}/model.xml", "precision": precision, "source": chosen}
        parity["models"]["openvino"].update(candidates[chosen])
        models["openvino"] = {"file": f"{OPENVINO_DIR}/model.xml", "format": "openvino", "precision": precision}
        log(f"openvino: kept {chosen}")

    # 4. OOD statistics (fitted at training time on the float features).
    image_ood = ckpt.get("image_ood")
    if image_ood is not None:
        image_ood = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in image_ood.items()}
    else:
        log("warning: the checkpoint has no image-statistics OOD fit (trained before it existed): the bundle "
            "will only have the feature check")
    save_ood(out_dir / OOD_FILE, {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in ood.items()}, image_ood)
    (out_dir / PARITY_FILE).write_text(json.dumps(parity, indent=2) + "\n")

    manifest = {
        "task": "hip_us",
        "modality": "ultrasound",
        "preprocessing": pre.to_json(),
        "outputs": {
            "measurements": {
                "names": list(US_NAMES),
                "units": [m.unit for m in US_MEASUREMENTS],
                "shape": ["N", len(US_NAMES)],
            },
            "plane_logit": {
                "shape": ["N", 1],
                "activation": "sigmoid",
                "meaning": "probability that the frame is a usable Graf standard plane",
            },
            "features": {"dim": 512, "meaning": "global-average-pooled encoder features (out-of-distribution check)"},
        },
        "models": models,
        "ood": {
            "file": OOD_FILE,
            "metric": "mahalanobis",
            "keys": {"mean": "(512,)", "precision": "(512, 512) inverse Ledoit-Wolf covariance", "threshold": "scalar"},
            "threshold": float(ood["threshold"]),
            "percentile": float(ood["percentile"]),
            "fitted_on": "float-model features of training standard-plane frames; threshold from held-out infants",
            **(
                {
                    "image_descriptor": DESCRIPTOR_VERSION,
                    "image_keys": {"image_mean": f"({DESCRIPTOR_DIM},)", "image_precision": "inverse covariance",
                                   "image_threshold": "scalar"},
                    "image_threshold": float(image_ood["threshold"]),
                    "image_fitted_on": "model-input image statistics of all training frames; threshold from "
                    "held-out infants",
                }
                if image_ood is not None
                else {}
            ),
        },
        "parity": {"file": PARITY_FILE},
        "model": {
            "architecture": "resnet18-1ch",
            "head": ckpt["head"],
            "finetune_last_stage": bool(cfg.get("finetune_last_stage")),
            "landmarks": list(ckpt.get("landmark_names", [])),
        },
        "provenance": provenance(ckpt, "labelled folder", "frames"),
    }
    digest = write_manifest(out_dir, manifest)
    log(f"bundle written: {out_dir} ({', '.join(models)})")
    return digest


def provenance(ckpt: dict, folder_kind: str, unit: str) -> dict:
    """The manifest's provenance block of a training checkpoint (shared by the ultrasound and X-ray export):
    training data and licence, seed, library versions, train and export commands, config, held-out metrics."""
    cfg, data, metrics = ckpt["config"], ckpt["data"], ckpt.get("metrics", {})
    return {
        "training_data": {
            "description": f"{folder_kind} {data['path']} ({data['n_images']} {unit}); "
            f"unlabelled: {data['unlabelled'] or 'none'}",
            "licence": data.get("licence", ""),
        },
        "seed": cfg["seed"],
        "versions": {**ckpt.get("versions", {}), **_versions()},
        "train_command": ckpt.get("command", ""),
        "export_command": " ".join(sys.argv),
        "train_config": cfg,
        "metrics": {k: metrics[k] for k in ("heldout", "val", "split") if k in metrics},
    }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))
