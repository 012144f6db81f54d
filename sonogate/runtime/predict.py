"""Run a bundle's model over a labelled image folder: the predictions that calibration and reports need.

Input: bundle folder, data folder (images + labels.csv, phantom or real). Output: a ``PredictionTable``
(ids, groups, predictions, truths, quality) — the same table ``sonogate calibrate --predictions`` reads.
The quality of an out-of-distribution frame is 0, exactly as the live runtime treats it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sonogate.calibration.fit import PredictionTable
from sonogate.core.bundle import load_bundle
from sonogate.data.folder import read_labelled_folder
from sonogate.runtime.model_api import create_model


def predict_folder(bundle_path: str | Path, data_dir: str | Path, device: str = "auto", progress: bool = True,
                   precision: str = "auto", threads: int = 1) -> PredictionTable:
    bundle = load_bundle(bundle_path)
    folder = read_labelled_folder(data_dir)
    engine = create_model(bundle, device=device, threads=threads, precision=precision)
    preprocessor = engine.preprocessor
    names = bundle.measurement_names
    n = len(folder)
    pred = np.full((n, len(names)), np.nan)
    quality = np.zeros(n)
    iterator = range(n)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="predict", unit="img")
    for i in iterator:
        result = engine.infer(preprocessor(folder.load_gray(i)))
        pred[i] = result.measurements
        # a model without a quality output rates every in-distribution image usable
        probability = 1.0 if result.plane_probability is None else result.plane_probability
        quality[i] = 0.0 if result.out_of_distribution else probability
    hip_names = [f"hip_{name}" for name in names]
    true = folder.targets(hip_names) if all(h in folder.columns for h in hip_names) else folder.targets(list(names))
    ids = np.asarray([p.name for p in folder.image_paths])
    groups = folder.columns["sweep_id"].astype(str) if "sweep_id" in folder.columns else ids
    # splits for affine / conformal must keep each infant whole
    subjects = folder.columns["patient_id"].astype(str) if "patient_id" in folder.columns else None
    return PredictionTable(ids=ids, groups=groups, names=tuple(names), pred=pred, true=true, quality=quality,
                           subjects=subjects)
