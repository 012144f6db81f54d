"""A real (tiny) ONNX model bundle for runtime tests, with outputs a test can steer through the frame.

The graph follows the bundle contract (image -> measurements, plane_logit, features) and runs in real ONNX
Runtime / OpenVINO. Its outputs are simple functions of the normalised image x:
  alpha = 60 + 10 * mean(x), beta = 60 - 5 * mean(x), coverage = 50 + 20 * mean(x)
  plane_logit = 100 * var(x) - 1    (a flat frame is "not a plane", a speckled one is)
so a bright speckled frame measures alpha ~ 71 deg and a dark one ~ 50 deg.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sonogate.calibration.aggregate import AggregationRule
from sonogate.calibration.calfile import CalibrationFile, MeasurementCalibration
from sonogate.core.bundle import Preprocessing, manifest_hash, write_manifest

SIZE = 32


def tiny_model(size: int = SIZE) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])
    outputs = [
        helper.make_tensor_value_info("measurements", TensorProto.FLOAT, ["N", 3]),
        helper.make_tensor_value_info("plane_logit", TensorProto.FLOAT, ["N", 1]),
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 512]),
    ]
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array([[10.0, -5.0, 20.0]], np.float32), "scale3"),
        numpy_helper.from_array(np.array([[60.0, 60.0, 50.0]], np.float32), "offset3"),
        numpy_helper.from_array(np.array([[100.0]], np.float32), "var_gain"),
        numpy_helper.from_array(np.array([[-1.0]], np.float32), "var_offset"),
        numpy_helper.from_array(rng.normal(size=(2, 512)).astype(np.float32), "feature_matrix"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), "shape_n1"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean4", "shape_n1"], ["mean"]),
        helper.make_node("Mul", ["image", "image"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["msq4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["msq4", "shape_n1"], ["msq"]),
        helper.make_node("Mul", ["mean", "mean"], ["mean_sq"]),
        helper.make_node("Sub", ["msq", "mean_sq"], ["var"]),
        helper.make_node("Mul", ["mean", "scale3"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset3"], ["measurements"]),
        helper.make_node("Mul", ["var", "var_gain"], ["var_scaled"]),
        helper.make_node("Add", ["var_scaled", "var_offset"], ["plane_logit"]),
        helper.make_node("Concat", ["mean", "var"], ["stats"], axis=1),
        helper.make_node("MatMul", ["stats", "feature_matrix"], ["features"]),
    ]
    graph = helper.make_graph(nodes, "tiny_sonogate", [x], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_tiny_bundle(folder: Path, *, radius_alpha: float | None = 3.0, radius_cov: float | None = 5.0,
                      rule: str = "and", min_frames: int = 3, calibrate: bool = True) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_model(), str(folder / "model.onnx"))
    manifest = {
        "task": "hip_us",
        "preprocessing": Preprocessing(height=SIZE, width=SIZE).to_json(),
        "outputs": {"measurements": {"names": ["alpha_deg", "beta_deg", "coverage_pct"], "units": ["deg", "deg", "%"]},
                    "plane_logit": {"activation": "sigmoid"}, "features": {"dim": 512}},
        "models": {"float": {"file": "model.onnx", "format": "onnx", "precision": "fp32"}},
        "provenance": {"training_data": "none: analytic test graph", "licence": "Apache-2.0"},
    }
    bundle_hash = write_manifest(folder, manifest)
    assert bundle_hash == manifest_hash(folder)
    if calibrate:
        calibration = CalibrationFile(
            delta=0.1, rule=rule, mode="joint", thresholds={"alpha_deg": 60.0, "coverage_pct": 50.0},
            measurements={
                "alpha_deg": MeasurementCalibration("lower", radius=radius_alpha, n=40, k=37),
                "beta_deg": MeasurementCalibration("upper", radius=4.0, n=40, k=37),
                "coverage_pct": MeasurementCalibration("lower", radius=radius_cov, n=40, k=37),
            },
            bundle_sha256=bundle_hash,
            aggregation=AggregationRule(min_frames=min_frames, window=10).to_json(),
        )
        calibration.save(folder / "calibration.json")
    return folder


def speckled_frame(gray_level: float, rng: np.random.Generator | None = None, size: int = 96,
                   noise: float = 40.0) -> np.ndarray:
    """A BGR frame of mean ``gray_level`` with speckle: the tiny model calls it a usable plane."""
    rng = rng or np.random.default_rng(0)
    image = np.clip(gray_level + rng.normal(0, noise, size=(size, size)), 0, 255).astype(np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2)
