"""``sonogate export`` of an X-ray run: a whole-pelvis XR bundle (task "hip_xr") the torch-free runtime loads.

BUNDLE/model.onnx          float graph (encoder + head + in-graph AI / CE / IHDI geometry), checked against torch
BUNDLE/model.int8.onnx     static INT8 QDQ (ONNX Runtime; encoder only, heads and geometry float)
BUNDLE/openvino/model.xml  OpenVINO IR of the float graph (only with ``openvino=True`` and openvino installed)
BUNDLE/parity.json         INT8 vs float and each model vs ground truth on held-out patients; latency
BUNDLE/manifest.json       via sonogate.core.bundle.write_manifest (sha256 of every file)

Manifest keys beyond docs/bundle.md: ``xr_contract`` "whole_pelvis"; ``preprocessing.resize`` "letterbox" and
``pad_value``; ``outputs.measurements`` with per-side ``names`` (ai_deg_right, ce_deg_right, ai_deg_left,
ce_deg_left) plus ``measures`` and ``sides``; ``outputs.landmarks`` (names, units, the mapping back to image
pixels); ``outputs.ihdi_logits`` (classes, source). ``sonogate.core.bundle.load_bundle`` reads these
manifests unchanged (names and units are free strings). openvino is imported only when asked for.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonogate.errors import DataError, SonogateError
from sonogate.export.bundle import _inputs, _latency_ms, _pick, _prepare_out_dir, provenance
from sonogate.export.onnx_export import INPUT_NAME, export_onnx, ort_session, run_ort
from sonogate.core.bundle import Preprocessing, write_manifest
from sonogate.runtime.xr import IHDI_GRADES, WHOLE_PELVIS, XR_TASK

FLOAT_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
OPENVINO_DIR = "openvino"
PARITY_FILE = "parity.json"
AI_PARITY_GOAL_DEG = 0.5


@dataclass
class XrExportOptions:
    """calib_data: image folder for INT8 calibration (default: the run's training patients); parity_data:
    labelled XR folder for parity.json (default: the run's held-out patients)."""

    calib_data: str | None = None
    parity_data: str | None = None
    calib_frames: int = 200
    parity_frames: int = 300
    int8: bool = True
    openvino: bool = False
    force: bool = False
    progress: bool = True
    latency_runs: int = 20
    seed: int = 0


# ORT vs torch tolerance per output. Angles come out of atan2 of float32 differences of landmarks, so they
# carry ~1e-3 deg of float32 noise (more where vectors are short); landmarks are held to 1e-4 of the image.
CHECK_ATOL = {"measurements": 0.02, "ihdi_logits": 0.05, "landmarks": 1e-4, "features": 1e-3}


def check_xr_onnx(path: Path, model, x: np.ndarray) -> dict[str, float]:
    """onnx.checker plus ORT-vs-torch on ``x``: max |difference| per output; SonogateError beyond CHECK_ATOL."""
    import onnx
    import torch

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    with torch.no_grad():
        reference = [t.numpy() for t in model.eval()(torch.from_numpy(x))]
    got = run_ort(ort_session(path), x)
    diffs = {}
    for name, ref in zip(model.output_names, reference):
        diff = np.abs(got[name] - ref)
        diffs[name] = float(diff.max())
        if np.any(diff > CHECK_ATOL.get(name, 1e-3) + 1e-4 * np.abs(ref)):
            raise SonogateError(f"ONNX output {name} differs from torch by {diffs[name]:.2e}: {path}")
    return diffs


def _quantize(float_path: Path, int8_path: Path, x_cal: np.ndarray, log: Callable[[str], None]) -> Path | None:
    """``sonogate.export.quantize.quantize_int8``; when ONNX Runtime's symbolic shape inference rejects the graph
    (seen with torch 2.11's exporter and onnxruntime 1.30 on the GPU machines), the same static QDQ recipe with
    plain ONNX shape inference; None (float-only bundle) when that fails too."""
    from sonogate.export.quantize import quantize_int8

    log(f"quantising model.int8.onnx on {len(x_cal)} calibration radiographs")
    for skip_symbolic_shape in (False, True):
        try:
            return quantize_int8(float_path, int8_path, x_cal, skip_symbolic_shape=skip_symbolic_shape)
        except Exception as exc:  # noqa: BLE001 - a quantiser failure must not lose the float bundle
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if not skip_symbolic_shape:
                log(f"int8: symbolic shape inference failed ({reason}); retrying with ONNX shape inference")
            else:
                log(f"int8 skipped: {reason}")
    int8_path.unlink(missing_ok=True)
    return None


def _compare(outputs: dict, ref: dict, truth: np.ndarray, truth_px: np.ndarray, boxes: np.ndarray, names) -> dict:
    """Figures of one model variant: measurements vs float and vs truth (MAE per output name), landmarks vs
    float and vs truth (pixels of the stored image), IHDI grade agreement with float."""
    from sonogate.models.xr_train import to_image_units

    def mae(a: np.ndarray, b: np.ndarray) -> dict:
        out = {}
        for j, name in enumerate(names):
            ok = np.isfinite(a[:, j]) & np.isfinite(b[:, j])
            if ok.any():
                err = np.abs(a[ok, j] - b[ok, j])
                out[name] = {
                    "mae": round(float(err.mean()), 4),
                    "max_abs": round(float(err.max()), 4),
                    "n": int(ok.sum()),
                }
        return out

    block = {
        "vs_float": mae(outputs["measurements"], ref["measurements"]),
        "vs_truth": mae(outputs["measurements"], truth),
    }
    if "ihdi_logits" in outputs:
        block["ihdi_agreement_vs_float"] = round(
            float((outputs["ihdi_logits"].argmax(-1) == ref["ihdi_logits"].argmax(-1)).mean()), 4
        )
    if "landmarks" in outputs:
        px, px_ref = to_image_units(outputs["landmarks"], boxes), to_image_units(ref["landmarks"], boxes)
        block["landmarks_px_vs_float"] = round(float(np.linalg.norm(px - px_ref, axis=-1).mean()), 4)
        block["landmarks_px_vs_truth"] = round(float(np.nanmean(np.linalg.norm(px - truth_px, axis=-1))), 4)
    return block


def export_xr_bundle(
    run_dir: str, out: str, opts: XrExportOptions | None = None, log: Callable[[str], None] = print
) -> str:
    """Export an X-ray RUN_DIR (``sonogate train --modality xr``) to the bundle folder ``out``; returns the
    manifest sha256. Raises DataError when the training data is gone and no --parity-data / --calib-data is
    given."""
    from sonogate.data.folder import list_images
    from sonogate.data.xr import read_xr_folder
    from sonogate.models.xr import XR_NAMES
    from sonogate.models.xr_train import build_xr_model, load_letterboxed, load_xr_checkpoint

    opts = opts or XrExportOptions()
    ckpt = load_xr_checkpoint(run_dir)
    cfg = ckpt["config"]
    model = build_xr_model(ckpt)
    size = int(cfg["size"])
    pre = Preprocessing(height=size, width=size, mean=cfg["mean"], std=cfg["std"])
    out_dir = Path(out)
    _prepare_out_dir(out_dir, opts.force)

    train_data = Path(ckpt["data"]["path"])
    held = set(ckpt["data"]["heldout_groups"])
    parity = read_xr_folder(opts.parity_data) if opts.parity_data else None
    calib_paths: list[Path] = []
    if train_data.is_dir():
        folder = read_xr_folder(train_data)
        is_held = np.array([p in held for p in folder.patients])
        if parity is None:
            parity = folder.subset(np.flatnonzero(is_held))
        calib_paths = folder.subset(np.flatnonzero(~is_held)).image_paths
    if opts.calib_data:
        calib_paths = list_images(opts.calib_data)
    if parity is None or len(parity) == 0:
        raise DataError(
            f"training data {train_data} is not available: pass --parity-data DIR (labelled X-ray) and --calib-data DIR"
        )
    if (opts.int8 or opts.openvino) and not calib_paths:
        raise DataError("no calibration images: pass --calib-data DIR")
    parity = parity.subset(_pick(len(parity), opts.parity_frames, opts.seed))
    par_images, par_boxes = load_letterboxed(parity.image_paths, size, opts.progress, "load parity radiographs")
    x_par = _inputs(par_images, pre)
    x_cal = None
    if calib_paths:
        pick = _pick(len(calib_paths), opts.calib_frames, opts.seed)
        x_cal = _inputs(
            load_letterboxed([calib_paths[i] for i in pick], size, opts.progress, "load calibration radiographs")[0],
            pre,
        )

    names = model.output_names
    float_path = out_dir / FLOAT_FILE
    log("exporting model.onnx")
    export_onnx(model, float_path, size, names)
    diffs = check_xr_onnx(float_path, model, x_par[:8])
    log(f"model.onnx matches torch (max abs diff {max(diffs.values()):.2e})")
    sess_float = ort_session(float_path)
    ref = run_ort(sess_float, x_par)
    truth = parity.targets

    def compare(outputs: dict) -> dict:
        return _compare(outputs, ref, truth, parity.landmarks, par_boxes, XR_NAMES)

    x1 = x_par[:1]
    report: dict = {
        "data": {
            "source": str(Path(opts.parity_data).resolve())
            if opts.parity_data
            else f"held-out patients of the training split ({train_data})",
            "n_images": len(x_par),
        },
        "goal": {"ai_deg_int8_vs_float_mae": AI_PARITY_GOAL_DEG},
        "latency_note": f"batch 1, {size} px, CPU ({platform.processor() or platform.machine()}), ORT default "
        "threads, median of single-image calls",
        "models": {
            "float": {
                "file": FLOAT_FILE,
                "vs_truth": compare(ref)["vs_truth"],
                "latency": _latency_ms(lambda x: sess_float.run(None, {INPUT_NAME: x}), x1, opts.latency_runs),
            }
        },
    }
    if "landmarks" in ref:
        report["models"]["float"]["landmarks_px_vs_truth"] = compare(ref)["landmarks_px_vs_truth"]
    models = {"float": {"file": FLOAT_FILE, "format": "onnx", "precision": "fp32"}}

    int8_path = _quantize(float_path, out_dir / INT8_FILE, x_cal, log) if opts.int8 else None
    if int8_path is None and opts.int8:
        report["models"]["int8"] = {"skipped": "ONNX Runtime quantisation failed on this machine (see the export log)"}
    if int8_path is not None:
        sess8 = ort_session(int8_path)
        block = compare(run_ort(sess8, x_par))
        block["latency"] = _latency_ms(lambda x: sess8.run(None, {INPUT_NAME: x}), x1, opts.latency_runs)
        ai = [block["vs_float"][n]["mae"] for n in ("ai_deg_right", "ai_deg_left") if n in block["vs_float"]]
        block["meets_goal"] = bool(ai and max(ai) <= AI_PARITY_GOAL_DEG)
        report["models"]["int8"] = {"file": INT8_FILE, **block}
        models["int8"] = {
            "file": INT8_FILE,
            "format": "onnx",
            "precision": "int8",
            "quantization": "static QDQ per-channel, ONNX Runtime (encoder only)",
        }
        log(f"int8 AI MAE vs float {max(ai) if ai else float('nan'):.3f} deg (worse side)")

    if opts.openvino:
        try:
            from sonogate.export.quantize import export_openvino, openvino_runner

            xml = export_openvino(float_path, out_dir / OPENVINO_DIR)
            run = openvino_runner(xml)
            block = compare(run(x_par))
            block["latency"] = _latency_ms(run, x1, opts.latency_runs)
            report["models"]["openvino"] = {"file": f"{OPENVINO_DIR}/model.xml", "precision": "fp32", **block}
            models["openvino"] = {"file": f"{OPENVINO_DIR}/model.xml", "format": "openvino", "precision": "fp32"}
        except ImportError as exc:  # the GPU training machines have no openvino: the bundle is complete without it
            log(f"openvino IR skipped ({exc})")
    (out_dir / PARITY_FILE).write_text(json.dumps(report, indent=2) + "\n")

    head = ckpt["head"]
    outputs: dict = {
        "measurements": {
            "names": list(XR_NAMES),
            "units": ["deg"] * len(XR_NAMES),
            "shape": ["N", len(XR_NAMES)],
            "measures": ["ai_deg", "ce_deg", "ai_deg", "ce_deg"],
            "sides": ["right", "right", "left", "left"],
            "side_convention": "right = the patient's right hip = the hip on the image's left of the model input "
            "(radiographic convention); mirror the radiograph first when its Patient "
            "Orientation row direction is R",
            "meaning": "raw (uncalibrated) acetabular index and centre-edge angle per hip; calibration.json "
            "holds the affine correction and one-sided radius per measure (ai_deg upper, ce_deg lower)",
        },
        "ihdi_logits": {
            "shape": ["N", 2, len(IHDI_GRADES)],
            "sides": ["right", "left"],
            "classes": list(IHDI_GRADES),
            "activation": "argmax",
            "source": "class_head" if head == "mlp" else "geometry",
            "meaning": "IHDI grade I-IV per hip: the argmax (first index on ties); geometry = signed margins of "
            "the H-point against Hilgenreiner, Perkin and the D-line (x20 / triradiate distance)",
        },
        "features": {"dim": 512, "meaning": "global-average-pooled encoder features"},
    }
    if head == "landmark":
        outputs["landmarks"] = {
            "shape": ["N", len(ckpt["landmark_names"]), 2],
            "names": list(ckpt["landmark_names"]),
            "units": "(x, y) in [0, 1] of the model input, pixel-centre convention",
            "to_image": "x_img = x * side - 0.5 - pad_x, y_img = y * side - 0.5 - pad_y; side = max(H, W), "
            "pad_x = (side - W) // 2, pad_y = (side - H) // 2",
        }
    manifest = {
        "task": XR_TASK,
        "modality": "radiograph",
        "xr_contract": WHOLE_PELVIS,
        "preprocessing": {
            **pre.to_json(),
            "resize": "letterbox",
            "pad_value": 0,
            "formula": "gray_uint8 -> pad to a centred square (pad_value) -> resize to width x height (INTER_AREA) "
            "-> x = (gray / 255 - mean) / std",
        },
        "outputs": outputs,
        "models": models,
        "parity": {"file": PARITY_FILE},
        "model": {
            "architecture": "resnet18-1ch",
            "head": head,
            "landmarks": list(ckpt.get("landmark_names", [])),
            "encoder": "SimSiam-pretrained, frozen",
        },
        "provenance": provenance(ckpt, "labelled X-ray folder", "radiographs"),
    }
    digest = write_manifest(out_dir, manifest)
    log(f"X-ray bundle written: {out_dir} ({', '.join(models)})")
    return digest
