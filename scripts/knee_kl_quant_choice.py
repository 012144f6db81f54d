"""Which layers of the knee_kl model stay float in its INT8 model: grade agreement with the float model on the
826 val radiographs (the choice is made on val), INT8 calibrated on 200 / 400 training radiographs.

    python scripts/knee_kl_quant_choice.py BUNDLE_WITH_FLOAT [--data ../shared/data/knee-oa-kl-xray]
        [--out benchmarks/results/knee_kl_quant_choice.json]

BUNDLE_WITH_FLOAT: a knee_kl bundle exported without --int8-only (its model.onnx is the float model).
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

from sonogate.core.bundle import load_bundle
from sonogate.export.bundle import normalised_inputs, pick_subset
from sonogate.export.onnx_export import ort_session
from sonogate.export.quantize import nodes_with_weights, quantize_int8
from sonogate.tasks.knee_kl.data import load_knee_images, read_knee_split
from sonogate.tasks.knee_kl.export import median_grades

VARIANTS = {
    "all INT8": (),
    "head float": ("net.head.",),
    "head + projection float": ("net.head.", "net.encoder.project."),
    "head + projection + first convolution float": ("net.head.", "net.encoder.project.", "net.encoder.stem.0."),
}


def grades(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort_session(path)
    return median_grades(np.concatenate([sess.run(["kl_logits"], {"image": x[i:i + 32]})[0]
                                         for i in range(0, len(x), 32)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "knee-oa-kl-xray"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "knee_kl_quant_choice.json"))
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    float_path = bundle.path / "model.onnx"
    pre = bundle.preprocessing
    val, train = read_knee_split(args.data, "val"), read_knee_split(args.data, "train")
    x_val = normalised_inputs(load_knee_images(val.paths, pre.height, True, "val"), pre)
    reference = grades(float_path, x_val)
    result = {"bundle_sha256": bundle.bundle_hash, "n_val": len(val.paths), "agreement": {}}
    for n_cal in (200, 400):
        x_cal = normalised_inputs(load_knee_images([train.paths[i] for i in pick_subset(len(train), n_cal, 0)],
                                                   pre.height, True, "calibration"), pre)
        for name, prefixes in VARIANTS.items():
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "int8.onnx"
                quantize_int8(float_path, out, x_cal, exclude_nodes=nodes_with_weights(float_path, prefixes),
                              skip_symbolic_shape=True)
                agreement = float(np.mean(grades(out, x_val) == reference))
            result["agreement"][f"{name}, {n_cal} calibration"] = round(agreement, 4)
            print(f"{name}, {n_cal} calibration radiographs: grade agreement {agreement:.4f}", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
