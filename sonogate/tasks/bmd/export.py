"""The ``bmd`` task's half of ``sonogate export`` (the writer is ``sonogate.export.bundle``), and
``sonogate bmd export``: the bundle plus its calibration.json.

model.onnx is the whole graph of ``net.BmdNet`` (locator, in-graph neck ROI by GridSample, regressor), checked
against torch per output; model.int8.onnx quantises its convolutions and linear layers (static QDQ, ONNX Runtime),
GridSample and the soft-argmax stay float. ood.npz holds the Mahalanobis statistics of the per-hip embedding
(training hips; threshold the 99.5th percentile of validation hips) and of the generic image statistics of the
model input (``sonogate.runtime.image_stats``, per radiograph). calibration.json (written after the manifest,
bound to its sha256): the affine correction fitted on the validation patients and the conformal radius of the BMD
interval from the calibration patients, one score per radiograph (the larger |error| of its hips), so the interval
holds for both hips of a radiograph with probability >= 1 - delta.

Manifest keys beyond docs/bundle.md: ``outputs`` (bmd names and units, landmarks, in-field logits, landmark peaks,
features); ``runtime_checks`` (thresholds the runtime wrapper refuses a hip by: in-field probability, landmark
peak, head-to-neck distance, image statistics); ``model`` (architecture, method, labelled share).
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
    export_bundle,
    normalised_inputs,
    pick_subset,
    provenance,
)
from sonogate.export.onnx_export import ort_session, run_ort
from sonogate.tasks.bmd.data import letterbox_gray, read_bmd_folder, split_patients

BMD_PARITY_GOAL_G_CM2 = 0.01  # INT8 vs float mean |difference| per hip
CHECK_ATOL = {"bmd": 2e-3, "landmarks": 2e-4, "in_field_logit": 2e-3, "landmark_peak": 1e-3, "features": 2e-3}
PARITY_IMAGES = 120
CALIBRATION_IMAGES = 64
OOD_PERCENTILE = 99.5
# A hip whose weaker landmark heatmap peaks lower than this percentile of validation hips is refused (referred):
# 2 % of in-distribution hips, for the refusal of hip-like images the model cannot read (infant pelves, knees).
PEAK_REFUSAL_PERCENTILE = 2.0


def load_images(paths: list[Path]) -> np.ndarray:
    """(N, 512, 512) uint8 letterboxed radiographs."""
    import cv2

    out = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise DataError(f"cannot read radiograph {path}")
        out.append(letterbox_gray(image))
    return np.stack(out)


def check_bmd_onnx(path: Path, model, x: np.ndarray) -> dict[str, float]:
    """onnx.checker plus ORT vs torch on ``x``: max |difference| per output; SonogateError beyond CHECK_ATOL."""
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


class BmdExporter(TaskExporter):
    parity_frames = PARITY_IMAGES
    latency_runs = 30
    openvino_default = False
    openvino_candidates = False
    int8_fallback = True
    quantization_note = ("static QDQ per-channel, ONNX Runtime (convolutions INT8; GridSample, soft-argmax and the "
                         "three fully connected layers float)")
    # The fully connected layers stay float: quantised, the BMD head's output range was the calibration images'
    # range, and INT8 clipped the tails (raw BMD floored at 0.50 and capped at 1.11 g/cm2, where float reads 0.37
    # to 1.19): exactly the osteoporotic hips. Their cost is a few hundred multiplies.
    FLOAT_LAYERS = ("embed.", "head.")
    members = 0  # regressors of an ensemble checkpoint (``sonogate bmd ensemble``), set by load_model

    @property
    def float_weight_prefixes(self) -> tuple[str, ...]:
        owners = [f"regressor.members.{i}." for i in range(self.members)] or ["regressor."]
        return ("locator.presence.",) + tuple(owner + layer for owner in owners for layer in self.FLOAT_LAYERS)
    unit = "radiographs"
    latency_threads = "ORT default threads, median of single-radiograph calls"
    float_keys = ("vs_truth", "landmarks_px512_vs_truth")
    goal: ClassVar[dict[str, float]] = {"bmd_int8_vs_float_mae_g_cm2": BMD_PARITY_GOAL_G_CM2}
    check_rows = 4

    def load_model(self, ckpt: dict):
        from sonogate.tasks.bmd.train import BMD_CHECKPOINT_FORMAT, build_bmd_model

        if ckpt.get("format") != BMD_CHECKPOINT_FORMAT:
            raise DataError(f"not a sonogate BMD training checkpoint ({BMD_CHECKPOINT_FORMAT})")
        model = build_bmd_model(ckpt)
        self.members = len(ckpt.get("members", [])) + 1 if ckpt.get("members") else 0
        return model

    def output_names(self, model) -> tuple[str, ...]:
        return model.output_names

    def check_onnx(self, path: Path, model, x: np.ndarray) -> dict[str, float]:
        return check_bmd_onnx(path, model, x)

    def load_data(self, ckpt: dict, opts: ExportOptions, pre: Preprocessing, parity_frames: int) -> ExportData:
        root = Path(opts.parity_data or ckpt["data"]["path"])
        folder = read_bmd_folder(root)
        splits = split_patients(folder, int(ckpt["data"].get("splits_seed", 0)))
        test = splits["test"][pick_subset(len(splits["test"]), parity_frames, opts.seed)]
        cal = splits["train"][pick_subset(len(splits["train"]), min(opts.calib_frames, CALIBRATION_IMAGES), opts.seed)]
        par = folder.subset(test)
        x_par = normalised_inputs(load_images(par.paths), pre)
        x_cal = normalised_inputs(load_images(folder.subset(cal).paths), pre)
        return ExportData(
            x_par=x_par, x_cal=x_cal,
            description={"source": f"held-out test patients of {root.resolve()} (devices A-D)",
                         "n_images": len(par)},
            context={"truth": par.bmd, "in_field": par.in_field, "landmarks": par.landmarks},
        )

    def comparer(self, ckpt: dict, data: ExportData, ref: dict[str, np.ndarray]) -> Callable[[dict], dict]:
        """One variant: BMD vs float and vs truth (in-field hips), landmarks vs float and truth (px of 512)."""
        from sonogate.tasks.bmd.train import regression_block

        truth, in_field, lms = data.context["truth"], data.context["in_field"], data.context["landmarks"]

        def compare(outputs: dict) -> dict:
            bmd = outputs["bmd"]
            block = {
                "vs_float": {"bmd_mae_g_cm2": round(float(np.abs(bmd - ref["bmd"]).mean()), 5),
                             "bmd_max_g_cm2": round(float(np.abs(bmd - ref["bmd"]).max()), 5)},
                "vs_truth": regression_block(bmd[in_field], truth[in_field]),
            }
            if "landmarks" in outputs:
                block["landmarks_px512_vs_float"] = round(
                    float(np.linalg.norm(outputs["landmarks"] - ref["landmarks"], axis=-1).mean() * 512), 4)
                block["landmarks_px512_vs_truth"] = round(
                    float(np.linalg.norm(outputs["landmarks"] - lms, axis=-1).mean() * 512), 4)
            return block

        return compare

    def int8_goal(self, block: dict) -> tuple[bool, str]:
        mae = block["vs_float"]["bmd_mae_g_cm2"]
        return bool(mae <= BMD_PARITY_GOAL_G_CM2), f"int8 BMD MAE vs float {mae:.4f} g/cm2"

    def extra_files(self, out_dir: Path, ckpt: dict, log: Callable[[str], None]) -> dict[str, Any]:
        """ood.npz (embedding statistics) and the runtime checks' thresholds, from the float graph on training
        (statistics) and validation (thresholds) radiographs."""
        from sonogate.calibration.ood import OOD_FILE, fit_ood, mahalanobis, save_ood

        folder = read_bmd_folder(ckpt["data"]["path"])
        splits = split_patients(folder, int(ckpt["data"].get("splits_seed", 0)))
        pre = Preprocessing(height=512, width=512, mean=ckpt["config"]["mean"], std=ckpt["config"]["std"])
        session = ort_session(out_dir / "model.onnx")
        from sonogate.runtime.image_stats import describe_images

        outs, descriptors = {}, {}
        for name, count in (("train", 300), ("val", 200)):
            idx = splits[name][pick_subset(len(splits[name]), count, 1)]
            sub = folder.subset(idx)
            images = load_images(sub.paths)
            o = run_ort(session, normalised_inputs(images, pre), batch=16)
            outs[name] = (sub, o)
            descriptors[name] = describe_images(images)
            log(f"ood: {len(idx)} {name} radiographs through the float graph")

        train_sub, train_o = outs["train"]
        val_sub, val_o = outs["val"]
        stats = fit_ood(train_o["features"][train_sub.in_field], val_o["features"][val_sub.in_field], OOD_PERCENTILE)
        image_stats = fit_ood(descriptors["train"], descriptors["val"], OOD_PERCENTILE)
        save_ood(out_dir / OOD_FILE, stats, image_stats)
        # thresholds of the runtime checks, from the validation radiographs (in the field by construction)
        peak = np.minimum(val_o["landmark_peak"][:, 0::2], val_o["landmark_peak"][:, 1::2])  # per hip, as the runtime
        lm = val_o["landmarks"]
        dist = np.concatenate([np.linalg.norm(lm[:, 1] - lm[:, 0], axis=-1), np.linalg.norm(lm[:, 3] - lm[:, 2], axis=-1)])
        in_field_p = 1 / (1 + np.exp(-val_o["in_field_logit"]))
        val_d = mahalanobis(val_o["features"][val_sub.in_field], stats["mean"], stats["precision"])
        checks = {
            "in_field_min_probability": round(0.9 * float(np.percentile(in_field_p, 0.5)), 4),
            "landmark_peak_min": round(float(np.percentile(peak, PEAK_REFUSAL_PERCENTILE)), 5),
            "neck_distance_range": [round(float(dist.min()) * 0.7, 5), round(float(dist.max()) * 1.3, 5)],
            "ood_threshold": round(float(stats["threshold"]), 4),
            "image_std_min": 0.03,  # gray / 255: a blank image has none
            "image_clipped_max": 0.5,  # share of pixels at 0 or 255: saturated
            "image_ood_threshold": round(float(image_stats["threshold"]), 4),
            "note": "thresholds from validation radiographs of the training devices (in-field probability: 0.9 x "
                    "its 0.5th percentile; landmark peak per hip: its 2nd percentile; neck distance: 0.7 x min to 1.3 x "
                    "max; feature and image-statistics distances: 99.5th percentile); a hip failing any is refused, "
                    "a radiograph failing the image statistics is refused whole",
            "validation": {"in_field_probability_min": round(float(in_field_p.min()), 4),
                           "hip_landmark_peak_p50": round(float(np.percentile(peak, 50)), 5),
                           "ood_distance_p50": round(float(np.median(val_d)), 3)},
        }
        log(f"ood.npz: feature threshold {stats['threshold']:.2f} (p{OOD_PERCENTILE} of {len(val_d)} validation hips), "
            f"image-statistics threshold {image_stats['threshold']:.2f}")
        return {"ood": {"file": OOD_FILE, "features": "features", "unit": "hip", "percentile": OOD_PERCENTILE},
                "runtime_checks": checks}

    def manifest(self, ckpt: dict, pre: Preprocessing, model) -> dict[str, Any]:
        from sonogate.tasks.bmd.net import LANDMARKS, ROI_SCALE, ROI_SIZE

        metrics = ckpt.get("metrics", {})
        return {
            "task": "bmd",
            "modality": "radiograph",
            "preprocessing": {
                **pre.to_json(),
                "resize": "letterbox",
                "pad_value": 0,
                "formula": "gray_uint8 -> pad to a centred square (0) -> resize to 512 x 512 (INTER_AREA) -> "
                           "x = (gray / 255 - mean) / std",
            },
            "outputs": {
                "bmd": {"names": ["bmd_g_cm2_right", "bmd_g_cm2_left"], "units": ["g/cm2", "g/cm2"],
                        "shape": ["N", 2], "sides": ["right", "left"],
                        "side_convention": "right = the patient's right hip = the hip on the image's left",
                        "meaning": "raw femoral-neck areal BMD per hip; calibration.json holds the affine "
                                   "correction and the interval radius"},
                "landmarks": {"names": list(LANDMARKS), "shape": ["N", len(LANDMARKS), 2],
                              "units": "(x, y) in [0, 1] of the model input, pixel-centre convention"},
                "in_field_logit": {"shape": ["N", 2], "sides": ["right", "left"]},
                "landmark_peak": {"shape": ["N", len(LANDMARKS)]},
                "features": {"shape": ["N", 2, model.regressor.embed_dim],
                             "meaning": "regressor embedding per hip (OOD statistics); an ensemble's members' side by "
                                        "side"},
            },
            "model": {"architecture": "locator U-Net (128 px) + in-graph neck ROI (GridSample, "
                                      f"{ROI_SIZE} px, {ROI_SCALE} x head-neck distance) + CNN regressor",
                      "method": ckpt["config"]["method"], "labelled_fraction": ckpt["config"]["labelled_fraction"],
                      "regressors": len(ckpt.get("members", [])) + 1, "ensemble": ckpt.get("ensemble"),
                      "heldout": {k: metrics.get(k) for k in ("heldout", "external")}},
            "provenance": provenance(ckpt, "phantom bmd folder", "radiographs"),
        }


EXPORTER = BmdExporter()


def export_with_calibration(run: str, out: str, force: bool = False, delta: float = 0.1,
                            log: Callable[[str], None] = print) -> int:
    """``sonogate bmd export RUN --out B``: the generic bundle writer, then calibration.json bound to it."""
    export_bundle(run, out, ExportOptions(force=force, openvino=False), log)
    from sonogate.tasks.bmd.calibrate import calibrate_bundle

    calibrate_bundle(out, None, delta=delta, log=log)
    return 0
