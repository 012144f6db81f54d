"""Two export choices of the knee_kl bundle, each measured on the 826 val radiographs (the choice is made on val):

* ``quant``: which layers stay float in the INT8 model: grade agreement with the float model, INT8 calibrated on
  200 / 400 training radiographs. BUNDLE must keep its float model (exported without --int8-only).
* ``flip``: average the grade over the image and its left-right mirror? The image alone, its mirror alone, the
  normalised geometric mean (what the export now builds into the graph) and the arithmetic mean of the
  probabilities. BUNDLE must be one exported without the average (before session 11's change).

    python scripts/knee_kl_export_choices.py quant BUNDLE [--data DIR] [--out benchmarks/results/knee_kl_quant_choice.json]
    python scripts/knee_kl_export_choices.py flip BUNDLE [--data DIR] [--out benchmarks/results/knee_kl_flip_choice.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sonogate.calibration.ordinal_metrics import ordinal_report
from sonogate.core.bundle import load_bundle
from sonogate.export.bundle import normalised_inputs, pick_subset
from sonogate.export.onnx_export import ort_session
from sonogate.export.quantize import nodes_with_weights, quantize_int8
from sonogate.tasks.knee_kl.data import KL_GRADES, load_knee_images, read_knee_split
from sonogate.tasks.knee_kl.export import median_grades

FLOAT_LAYERS = {
    "all INT8": (),
    "head float": ("net.head.",),
    "head + projection float": ("net.head.", "net.encoder.project."),
    "head + projection + first convolution float": ("net.head.", "net.encoder.project.", "net.encoder.stem.0."),
}


def log_probs(path: Path, images: np.ndarray) -> np.ndarray:
    sess = ort_session(path)
    return np.concatenate([sess.run(["kl_logits"], {"image": images[i:i + 32]})[0]
                           for i in range(0, len(images), 32)])


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def quant_choice(bundle, x_val: np.ndarray, train) -> dict:
    float_path = bundle.path / "model.onnx"
    reference = median_grades(log_probs(float_path, x_val))
    agreement = {}
    for n_cal in (200, 400):
        pick = pick_subset(len(train), n_cal, 0)
        x_cal = normalised_inputs(load_knee_images([train.paths[i] for i in pick], bundle.preprocessing.height, True,
                                                   "calibration"), bundle.preprocessing)
        for name, prefixes in FLOAT_LAYERS.items():
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "int8.onnx"
                quantize_int8(float_path, out, x_cal, exclude_nodes=nodes_with_weights(float_path, prefixes),
                              skip_symbolic_shape=True)
                value = float(np.mean(median_grades(log_probs(out, x_val)) == reference))
            agreement[f"{name}, {n_cal} calibration"] = round(value, 4)
            print(f"{name}, {n_cal} calibration radiographs: grade agreement {value:.4f}", flush=True)
    return {"agreement": agreement}


def flip_choice(bundle, x_val: np.ndarray, truth: np.ndarray) -> dict:
    model = bundle.model_path("int8" if "int8" in bundle.models else "float")
    image, mirror = log_probs(model, x_val), log_probs(model, np.ascontiguousarray(x_val[..., ::-1]))
    variants = {"image": image, "mirror": mirror, "geometric mean (shipped)": log_softmax((image + mirror) / 2),
                "arithmetic mean": np.log((np.exp(image) + np.exp(mirror)) / 2)}
    result = {"model": model.name, "variants": {}}
    for name, values in variants.items():
        report = ordinal_report(truth, median_grades(values), KL_GRADES)
        result["variants"][name] = {k: report[k] for k in ("accuracy", "mae", "qwk", "per_grade_recall")}
        print(f"{name}: accuracy {report['accuracy']:.4f}, MAE {report['mae']:.4f}, QWK {report['qwk']:.4f}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("choice", choices=("quant", "flip"))
    parser.add_argument("bundle")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "knee-oa-kl-xray"))
    parser.add_argument("--out", default=None, help="default benchmarks/results/knee_kl_<choice>_choice.json")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    val = read_knee_split(args.data, "val")
    x_val = normalised_inputs(load_knee_images(val.paths, bundle.preprocessing.height, True, "val"),
                              bundle.preprocessing)
    result = {"bundle_sha256": bundle.bundle_hash, "n_val": len(val.paths)}
    if args.choice == "quant":
        result.update(quant_choice(bundle, x_val, read_knee_split(args.data, "train")))
    else:
        result.update(flip_choice(bundle, x_val, val.grades))
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"knee_kl_{args.choice}_choice.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
