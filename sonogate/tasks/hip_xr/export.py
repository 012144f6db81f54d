"""The pelvic X-ray task's half of ``sonogate export`` (the writer is ``sonogate.export.bundle``): a whole-pelvis
bundle (task "hip_xr") the torch-free runtime loads.

model.onnx is the encoder + head + in-graph AI / CE / IHDI geometry, checked against torch per output; the INT8
model quantises the encoder only (heads and geometry stay float); the OpenVINO IR is the float graph, written only
when asked for (and openvino installed).

Manifest keys beyond docs/bundle.md: ``xr_contract`` "whole_pelvis"; ``preprocessing.resize`` "letterbox" and
``pad_value``; ``outputs.measurements`` with per-side ``names`` (ai_deg_right, ce_deg_right, ai_deg_left,
ce_deg_left) plus ``measures`` and ``sides``; ``outputs.landmarks`` (names, units, the mapping back to image
pixels); ``outputs.ihdi_logits`` (classes, source). ``sonogate.core.bundle.load_bundle`` reads these
manifests unchanged (names and units are free strings).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sonogate.core.bundle import Preprocessing
from sonogate.errors import DataError, SonogateError
from sonogate.export.bundle import (
    ExportData,
    ExportOptions,
    TaskExporter,
    held_out_split,
    mae_block,
    normalised_inputs,
    pick_subset,
    provenance,
)
from sonogate.export.onnx_export import ort_session, run_ort
from sonogate.tasks.hip_xr.model import IHDI_GRADES, WHOLE_PELVIS, XR_TASK
from sonogate.tasks.hip_xr.net import XR_NAMES

AI_PARITY_GOAL_DEG = 0.5
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


class HipXrExporter(TaskExporter):
    parity_frames = 300
    latency_runs = 20
    openvino_default = False
    openvino_candidates = False
    int8_fallback = True
    quantization_note = "static QDQ per-channel, ONNX Runtime (encoder only)"
    unit = "radiographs"
    latency_threads = "ORT default threads, median of single-image calls"
    float_keys = ("vs_truth", "landmarks_px_vs_truth")
    goal: ClassVar[dict[str, float]] = {"ai_deg_int8_vs_float_mae": AI_PARITY_GOAL_DEG}
    check_rows = 8

    def load_model(self, ckpt: dict):
        from sonogate.tasks.hip_xr.train import XR_CHECKPOINT_FORMAT, build_xr_model

        if ckpt.get("format") != XR_CHECKPOINT_FORMAT:
            raise DataError(f"not a sonogate X-ray training checkpoint ({XR_CHECKPOINT_FORMAT})")
        return build_xr_model(ckpt)

    def output_names(self, model) -> tuple[str, ...]:
        return model.output_names

    def check_onnx(self, path: Path, model, x: np.ndarray) -> dict[str, float]:
        return check_xr_onnx(path, model, x)

    def load_data(self, ckpt: dict, opts: ExportOptions, pre: Preprocessing, parity_frames: int) -> ExportData:
        from sonogate.data.folder import list_images
        from sonogate.tasks.hip_xr.data import read_xr_folder
        from sonogate.tasks.hip_xr.train import load_letterboxed

        train_data = Path(ckpt["data"]["path"])
        parity = read_xr_folder(opts.parity_data) if opts.parity_data else None
        calib_paths: list[Path] = []
        if train_data.is_dir():
            folder = read_xr_folder(train_data)
            held, train_part = held_out_split(folder, folder.patients, set(ckpt["data"]["heldout_groups"]))
            parity = held if parity is None else parity
            calib_paths = train_part.image_paths
        if opts.calib_data:
            calib_paths = list_images(opts.calib_data)
        if parity is None or len(parity) == 0:
            raise DataError(
                f"training data {train_data} is not available: pass --parity-data DIR (labelled X-ray) and "
                "--calib-data DIR"
            )
        size = pre.height
        parity = parity.subset(pick_subset(len(parity), parity_frames, opts.seed))
        par_images, par_boxes = load_letterboxed(parity.image_paths, size, opts.progress, "load parity radiographs")
        x_cal = None
        if calib_paths:
            pick = pick_subset(len(calib_paths), opts.calib_frames, opts.seed)
            paths = [calib_paths[i] for i in pick]
            cal_images = load_letterboxed(paths, size, opts.progress, "load calibration radiographs")[0]
            x_cal = normalised_inputs(cal_images, pre)
        source = (
            str(Path(opts.parity_data).resolve())
            if opts.parity_data
            else f"held-out patients of the training split ({train_data})"
        )
        return ExportData(
            x_par=normalised_inputs(par_images, pre),
            x_cal=x_cal,
            description={"source": source, "n_images": len(par_images)},
            context={"truth": parity.targets, "truth_px": parity.landmarks, "boxes": par_boxes},
        )

    def comparer(self, ckpt: dict, data: ExportData, ref: dict[str, np.ndarray]) -> Callable[[dict], dict]:
        """Figures of one model variant: measurements vs float and vs truth (MAE per output name), landmarks vs
        float and vs truth (pixels of the stored image), IHDI grade agreement with float."""
        from sonogate.tasks.hip_xr.train import to_image_units

        truth, truth_px, boxes = data.context["truth"], data.context["truth_px"], data.context["boxes"]

        def compare(outputs: dict) -> dict:
            block = {
                "vs_float": mae_block(outputs["measurements"], ref["measurements"], XR_NAMES),
                "vs_truth": mae_block(outputs["measurements"], truth, XR_NAMES),
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

        return compare

    def int8_goal(self, block: dict) -> tuple[bool, str]:
        ai = [block["vs_float"][n]["mae"] for n in ("ai_deg_right", "ai_deg_left") if n in block["vs_float"]]
        meets = bool(ai and max(ai) <= AI_PARITY_GOAL_DEG)
        return meets, f"int8 AI MAE vs float {max(ai) if ai else float('nan'):.3f} deg (worse side)"

    def manifest(self, ckpt: dict, pre: Preprocessing, model) -> dict[str, Any]:
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
        return {
            "task": XR_TASK,
            "modality": "radiograph",
            "xr_contract": WHOLE_PELVIS,
            "preprocessing": {
                **pre.to_json(),
                "resize": "letterbox",
                "pad_value": 0,
                "formula": "gray_uint8 -> pad to a centred square (pad_value) -> resize to width x height "
                "(INTER_AREA) -> x = (gray / 255 - mean) / std",
            },
            "outputs": outputs,
            "model": {
                "architecture": "resnet18-1ch",
                "head": head,
                "landmarks": list(ckpt.get("landmark_names", [])),
                "encoder": "SimSiam-pretrained, frozen",
            },
            "provenance": provenance(ckpt, "labelled X-ray folder", "radiographs"),
        }


EXPORTER = HipXrExporter()
