"""The pelvic radiograph's calibration: what the generic per-image calibration (``sonogate.calibration.per_image``)
fits for hip_xr, and its labelled-folder prediction. Named in the spec as ``parts["calibrator"]``.

Bounds: acetabular index (AI) gets an **upper** bound (high AI is abnormal), centre-edge angle (CE) a **lower**
bound (low CE is abnormal). The runtime calls a hip "normal within bounds" only when AI upper bound <= 30 deg and
CE lower bound >= 20 deg (``hip_verdict`` in ``sonogate.tasks.hip_xr.model``).

Why per radiograph: the two hips of one pelvis share the patient, the exposure and the model's view of the pelvis,
so their errors are not independent, and a clinician reads both from one image. The unit of exchangeability is
therefore the radiograph (patient), not the hip: each radiograph has one or two hip rows, and its score is the max
over them (docs/xray.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonogate.calibration.fit import PredictionTable
from sonogate.calibration.per_image import PerImageCalibration
from sonogate.errors import SonogateError

XR_RULE = "xr_ai_ce"
XR_NAMES = ("ai_deg", "ce_deg")
XR_SIDES = {"ai_deg": "upper", "ce_deg": "lower"}
# The verdict's thresholds (docs/xray.md): a hip is normal within bounds when AI <= 30 deg and CE >= 20 deg.
XR_THRESHOLDS = {"ai_deg": 30.0, "ce_deg": 20.0}


@dataclass(frozen=True)
class HipXrCalibration(PerImageCalibration):
    """Per-radiograph bounds on AI (upper) and CE (lower), both hips of a radiograph together."""

    def predict_folder(self, bundle_path: str | Path, data_dir: str | Path, device: str = "auto",
                       progress: bool = True, precision: str = "auto", threads: int = 1) -> PredictionTable:
        """Run a whole-pelvis X-ray bundle over a labelled X-ray folder (``sonogate.tasks.hip_xr.data``).

        Output: a PredictionTable with one row per hip (id ``<image>:R`` / ``:L``), ``group`` = radiograph,
        ``subject`` = patient, names ai_deg and ce_deg (raw model outputs and labels). The model variant is the one
        the runtime uses (``precision`` "auto": INT8 when present).
        """
        from sonogate.runtime.model_api import create_model
        from sonogate.tasks.hip_xr.data import read_xr_folder

        predictor = create_model(bundle_path, device=device, threads=threads, precision=precision)
        if not callable(getattr(predictor, "predict", None)):
            raise SonogateError(f"bundle {bundle_path} (task {predictor.task}) is not a whole-pelvis X-ray bundle")
        folder = read_xr_folder(data_dir)
        ids, groups, subjects, pred, true = [], [], [], [], []
        iterator = range(len(folder))
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc="predict", unit="radiograph")
        for i in iterator:
            out = predictor.predict(folder.load_gray(i))
            image = folder.image_paths[i].name
            for side, code in (("right", "R"), ("left", "L")):
                j = 0 if side == "right" else 2
                ids.append(f"{image}:{code}")
                groups.append(folder.image_paths[i].as_posix())
                subjects.append(folder.patients[i])
                pred.append([out.values[f"ai_deg_{side}"], out.values[f"ce_deg_{side}"]])
                true.append(folder.targets[i, j : j + 2])
        return PredictionTable(ids=np.array(ids), groups=np.array(groups), names=XR_NAMES, pred=np.array(pred),
                               true=np.array(true), quality=np.ones(len(ids)), subjects=np.array(subjects))


CALIBRATOR = HipXrCalibration(
    task="hip_xr", rule=XR_RULE, names=XR_NAMES, sides=XR_SIDES, thresholds=XR_THRESHOLDS, image="radiograph",
    row="hip", max_rows_per_image=2,
    event="P(some hip of the radiograph is called normal within bounds while its true AI > T_AI or CE < T_CE",
)


def fit_xr_calibration(table: PredictionTable, **options):
    """Per-radiograph X-ray calibration (``CALIBRATOR.fit``): hip rows and the keywords of
    ``sonogate.calibration.fit.FitOptions`` -> CalibrationFile (task hip_xr, rule xr_ai_ce)."""
    return CALIBRATOR.fit(table, **options)


def predict_xr_folder(bundle_path, data_dir, device: str = "auto", progress: bool = True, precision: str = "auto",
                      threads: int = 1) -> PredictionTable:
    """``CALIBRATOR.predict_folder``: hip rows of a whole-pelvis X-ray bundle run over a labelled X-ray folder."""
    return CALIBRATOR.predict_folder(bundle_path, data_dir, device=device, progress=progress, precision=precision,
                                     threads=threads)
