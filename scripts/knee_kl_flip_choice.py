"""Average the knee grade over the image and its left-right mirror? Measured on the 826 val radiographs with a
knee_kl bundle exported without the average (e.g. one exported before session 11's change): the image alone, its
mirror alone, the normalised geometric mean of the two (what the export now builds into the graph) and the
arithmetic mean of the probabilities.

    python scripts/knee_kl_flip_choice.py BUNDLE [--data ../shared/data/knee-oa-kl-xray]
        [--out benchmarks/results/knee_kl_flip_choice.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sonogate.calibration.ordinal_metrics import ordinal_report
from sonogate.core.bundle import load_bundle
from sonogate.export.bundle import normalised_inputs
from sonogate.export.onnx_export import ort_session
from sonogate.tasks.knee_kl.data import KL_GRADES, load_knee_images, read_knee_split
from sonogate.tasks.knee_kl.export import median_grades


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "knee-oa-kl-xray"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "knee_kl_flip_choice.json"))
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    model = bundle.model_path("int8" if "int8" in bundle.models else "float")
    sess = ort_session(model)
    val = read_knee_split(args.data, "val")
    x = normalised_inputs(load_knee_images(val.paths, bundle.preprocessing.height, True, "val"), bundle.preprocessing)

    def log_probs(images: np.ndarray) -> np.ndarray:
        return np.concatenate([sess.run(["kl_logits"], {"image": images[i:i + 32]})[0]
                               for i in range(0, len(images), 32)])

    image, mirror = log_probs(x), log_probs(np.ascontiguousarray(x[..., ::-1]))
    variants = {"image": image, "mirror": mirror, "geometric mean (shipped)": log_softmax((image + mirror) / 2),
                "arithmetic mean": np.log((np.exp(image) + np.exp(mirror)) / 2)}
    result = {"bundle_sha256": bundle.bundle_hash, "model": model.name, "n_val": len(val.paths), "variants": {}}
    for name, values in variants.items():
        report = ordinal_report(val.grades, median_grades(values), KL_GRADES)
        result["variants"][name] = {k: report[k] for k in ("accuracy", "mae", "qwk", "per_grade_recall")}
        print(f"{name}: accuracy {report['accuracy']:.4f}, MAE {report['mae']:.4f}, QWK {report['qwk']:.4f}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
