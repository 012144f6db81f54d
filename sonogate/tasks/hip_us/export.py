"""The hip ultrasound task's half of ``sonogate export`` (the writer is ``sonogate.export.bundle``).

Parity on the run's held-out infants (standard-plane frames for the measurement figures), INT8 calibration on its
training infants' frames (cropped to their ultrasound region when the folder has ROI columns); the INT8 goal is
alpha within 0.5 deg MAE of float; OpenVINO candidates compete; the feature and image-statistics OOD fits of the
checkpoint go to ``ood.npz``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sonogate.calibration.ood import OOD_FILE, mahalanobis, save_ood
from sonogate.core.bundle import Preprocessing
from sonogate.errors import DataError
from sonogate.export.bundle import (
    ExportData,
    ExportOptions,
    TaskExporter,
    held_out_split,
    mae_block,
    normalised_inputs,
    pick_subset,
    provenance,
    sigmoid,
)
from sonogate.measurements import US_MEASUREMENTS
from sonogate.runtime.image_stats import DESCRIPTOR_DIM, DESCRIPTOR_VERSION

ALPHA_PARITY_GOAL_DEG = 0.5


def image_source(path: str) -> tuple[list[Path], np.ndarray | None]:
    """Images of a folder and their ultrasound regions: a labelled folder (with ROI columns when it has
    them) or any folder of images (whole images)."""
    from sonogate.data.folder import LABELS_CSV, list_images, read_labelled_folder

    if (Path(path) / LABELS_CSV).is_file():
        folder = read_labelled_folder(path)
        return folder.image_paths, folder.rois()
    return list_images(path), None


class HipUsExporter(TaskExporter):
    parity_frames = 400
    latency_runs = 30
    unit = "frames"
    float_keys = ("vs_truth_standard_plane",)
    goal: ClassVar[dict[str, float]] = {"alpha_deg_int8_vs_float_mae": ALPHA_PARITY_GOAL_DEG}

    def load_model(self, ckpt: dict):
        from sonogate.tasks.hip_us.train import CHECKPOINT_FORMAT, build_model

        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise DataError(f"not a sonogate training checkpoint ({CHECKPOINT_FORMAT})")
        return build_model(ckpt)

    def output_names(self, model) -> tuple[str, ...]:
        from sonogate.tasks.hip_us.net import OUTPUT_NAMES

        return OUTPUT_NAMES

    def load_data(self, ckpt: dict, opts: ExportOptions, pre: Preprocessing, parity_frames: int) -> ExportData:
        from sonogate.data.folder import read_labelled_folder
        from sonogate.tasks.hip_us.net import US_NAMES
        from sonogate.tasks.hip_us.train import load_resized

        train_data = Path(ckpt["data"]["path"])
        parity_folder = read_labelled_folder(opts.parity_data) if opts.parity_data else None
        calib_paths: list[Path] = []
        calib_rois = None
        if train_data.is_dir():
            folder = read_labelled_folder(train_data)
            held, train_part = held_out_split(folder, folder.groups(), set(ckpt["data"]["heldout_groups"]))
            parity_folder = held if parity_folder is None else parity_folder
            calib_paths, calib_rois = train_part.image_paths, train_part.rois()
        if opts.calib_data:
            calib_paths, calib_rois = image_source(opts.calib_data)
        if parity_folder is None or len(parity_folder) == 0:
            raise DataError(
                f"training data {train_data} is not available: pass --parity-data DIR (labelled) and --calib-data DIR"
            )
        size = pre.height
        parity_folder = parity_folder.subset(pick_subset(len(parity_folder), parity_frames, opts.seed))
        rois = parity_folder.rois()
        x_par = normalised_inputs(load_resized(parity_folder.image_paths, size, opts.progress, "load parity frames",
                                               rois)[0], pre)  # fmt: skip
        x_cal = None
        if calib_paths:
            pick = pick_subset(len(calib_paths), opts.calib_frames, opts.seed)
            rois = None if calib_rois is None else calib_rois[pick]
            paths = [calib_paths[i] for i in pick]
            x_cal = normalised_inputs(load_resized(paths, size, opts.progress, "load calibration frames", rois)[0], pre)
        standard = parity_folder.standard_plane()
        source = (
            str(Path(opts.parity_data).resolve())
            if opts.parity_data
            else f"held-out infants of the training split ({train_data})"
        )
        return ExportData(
            x_par=x_par,
            x_cal=x_cal,
            description={"source": source, "n_frames": len(x_par), "n_standard_plane": int(standard.sum())},
            context={"truth": parity_folder.targets(US_NAMES), "standard": standard},
        )

    def comparer(self, ckpt: dict, data: ExportData, ref: dict[str, np.ndarray]) -> Callable[[dict], dict]:
        from sonogate.tasks.hip_us.net import US_NAMES

        truth, standard = data.context["truth"], data.context["standard"]
        ood_mean, ood_prec = ckpt["ood"]["mean"].numpy(), ckpt["ood"]["precision"].numpy()
        d_float = mahalanobis(ref["features"], ood_mean, ood_prec)

        def compare(outputs: dict[str, np.ndarray]) -> dict:
            """Figures of one model variant against float and against the labels (standard-plane frames)."""
            meas, ref_meas = outputs["measurements"], ref["measurements"]
            return {
                "vs_float_standard_plane": mae_block(meas[standard], ref_meas[standard], US_NAMES),
                "vs_float_all_frames": mae_block(meas, ref_meas, US_NAMES),
                "vs_truth_standard_plane": mae_block(meas[standard], truth[standard], US_NAMES),
                "plane_probability_mae_vs_float": round(
                    float(np.abs(sigmoid(outputs["plane_logit"]) - sigmoid(ref["plane_logit"])).mean()), 5
                ),
                "plane_decision_agreement": round(
                    float(((outputs["plane_logit"] > 0) == (ref["plane_logit"] > 0)).mean()), 4
                ),
                "ood_distance_mae_vs_float": round(
                    float(np.abs(mahalanobis(outputs["features"], ood_mean, ood_prec) - d_float).mean()), 4
                ),
            }

        return compare

    def int8_goal(self, block: dict) -> tuple[bool, str]:
        alpha = block["vs_float_standard_plane"].get("alpha_deg", {}).get("mae", float("nan"))
        return bool(alpha <= ALPHA_PARITY_GOAL_DEG), f"int8 alpha MAE vs float {alpha:.3f} deg"

    def tracks_float(self, block: dict) -> bool:
        alpha = block.get("vs_float_standard_plane", {}).get("alpha_deg", {}).get("mae", float("inf"))
        return alpha <= ALPHA_PARITY_GOAL_DEG

    def extra_files(self, out_dir: Path, ckpt: dict, log: Callable[[str], None]) -> dict[str, Any]:
        """ood.npz: the OOD statistics fitted at training time on the float features (and image statistics)."""
        ood = ckpt["ood"]
        image_ood = ckpt.get("image_ood")
        if image_ood is not None:
            image_ood = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in image_ood.items()}
        else:
            log("warning: the checkpoint has no image-statistics OOD fit (trained before it existed): the bundle "
                "will only have the feature check")
        save_ood(out_dir / OOD_FILE, {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in ood.items()}, image_ood)
        block = {
            "file": OOD_FILE,
            "metric": "mahalanobis",
            "keys": {"mean": "(512,)", "precision": "(512, 512) inverse Ledoit-Wolf covariance", "threshold": "scalar"},
            "threshold": float(ood["threshold"]),
            "percentile": float(ood["percentile"]),
            "fitted_on": "float-model features of training standard-plane frames; threshold from held-out infants",
        }
        if image_ood is not None:
            block.update({
                "image_descriptor": DESCRIPTOR_VERSION,
                "image_keys": {"image_mean": f"({DESCRIPTOR_DIM},)", "image_precision": "inverse covariance",
                               "image_threshold": "scalar"},
                "image_threshold": float(image_ood["threshold"]),
                "image_fitted_on": "model-input image statistics of all training frames; threshold from "
                "held-out infants",
            })  # fmt: skip
        return {"ood": block}

    def manifest(self, ckpt: dict, pre: Preprocessing, model) -> dict[str, Any]:
        from sonogate.tasks.hip_us.net import US_NAMES

        cfg = ckpt["config"]
        return {
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
                "features": {
                    "dim": 512,
                    "meaning": "global-average-pooled encoder features (out-of-distribution check)",
                },
            },
            "model": {
                "architecture": "resnet18-1ch",
                "head": ckpt["head"],
                "finetune_last_stage": bool(cfg.get("finetune_last_stage")),
                "landmarks": list(ckpt.get("landmark_names", [])),
            },
            "provenance": provenance(ckpt, "labelled folder", "frames"),
        }


EXPORTER = HipUsExporter()
