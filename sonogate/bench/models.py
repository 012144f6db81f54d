"""The bench's model factory: the timed network at any input size, in float ONNX, static INT8 QDQ and NNCF INT8.

With torch, the network is the one ``sonogate export`` ships (the hip_us spec's ``network`` part, ``HipUSNet(head="mlp")``)
with seeded random weights; without torch, the same layers are built with ``onnx.helper``. INT8 and NNCF go
through ``sonogate.export.quantize``, the bundle's recipe. ``kernel_model`` builds the one-layer models of the
compute-peak measurement.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from sonogate.bench.text import one_line

CACHE_VERSION = 1
# ResNet-18 stage convs at 224 px: name -> (channels, height = width)
CONV_SHAPES = {"conv3x3_64x56": (64, 56), "conv3x3_128x28": (128, 28), "conv3x3_256x14": (256, 14)}
SHIPPING_EXPORTER = "sonogate.export.onnx_export.export_onnx"
FAST_EXPORTER = "torch.onnx.export (TorchScript exporter, opset 17)"


# The timed network is the hip ultrasound task's, found through its spec's parts (never imported by name here).
BENCH_TASK = "hip_us"


def _network_part(role: str):
    from sonogate.core.registry import get_task

    spec = get_task(BENCH_TASK)
    return spec.part(role), spec.parts[role].replace(":", ".")


def build_torch_model(seed: int = 0):
    """The exported architecture with seeded random weights. Returns (model in eval mode, its description)."""
    import torch

    network, name = _network_part("network")
    torch.manual_seed(seed)
    return network(head="mlp").eval(), f"{name}(head='mlp')"


def export_torch_onnx(path: Path, size: int, seed: int = 0, shipping: bool = True) -> tuple[str, str]:
    """Write the seeded torch network as float ONNX, input ``image`` (N, 1, size, size).

    ``shipping``: with ``sonogate.export.onnx_export.export_onnx`` (torch.export based, what a bundle ships);
    else with the TorchScript exporter, seconds instead of a minute (short mode), falling back to the shipping
    exporter on a torch without it. Returns (architecture description, exporter used).
    """
    import warnings

    import torch

    from sonogate.export.onnx_export import export_onnx

    output_names = _network_part("network_outputs")[0]
    model, arch = build_torch_model(seed)
    if not shipping:
        axes = {"image": {0: "N"}, **{name: {0: "N"} for name in output_names}}
        with warnings.catch_warnings(), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(model, (torch.zeros(1, 1, size, size),), str(path), input_names=["image"],
                                  output_names=list(output_names), dynamic_axes=axes, opset_version=17,
                                  do_constant_folding=True, dynamo=False)
                return arch, FAST_EXPORTER
            except (TypeError, RuntimeError, ValueError):  # a torch without the TorchScript exporter
                pass
    export_onnx(model, path, size, output_names)
    return arch, SHIPPING_EXPORTER


def build_resnet18_onnx(path: Path, size: int, seed: int = 0) -> str:
    """Torch-free: the same layers (1-channel ResNet-18 with BN folded, 512->128->3 / 512->128->1 heads) built
    with onnx.helper and seeded He-normal weights, written to ``path``. Used when torch is not installed.
    Returns the architecture description."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = [0]

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def conv(x: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
        count[0] += 1
        i = count[0]
        w = rng.normal(0.0, math.sqrt(2.0 / (cout * k * k)), (cout, cin, k, k))
        nodes.append(helper.make_node("Conv", [x, const(f"conv{i}.w", w), const(f"conv{i}.b", np.zeros(cout))],
                                      [f"conv{i}"], kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4))
        if not relu:
            return f"conv{i}"
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        return f"relu{i}"

    x = conv("image", 1, 64, 7, 2, True)
    nodes.append(helper.make_node("MaxPool", [x], ["pool0"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = "pool0", 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if (stage > 0 and block == 0) else 1
            y = conv(conv(x, cin, cout, 3, stride, True), cout, cout, 3, 1, False)
            shortcut = conv(x, cin, cout, 1, stride, False) if (stride != 1 or cin != cout) else x
            name = f"s{stage}b{block}"
            nodes.append(helper.make_node("Add", [y, shortcut], [name + ".add"]))
            nodes.append(helper.make_node("Relu", [name + ".add"], [name]))
            x, cin = name, cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["features"], axis=1))

    def mlp(prefix: str, out_dim: int, output: str) -> None:
        nodes.append(helper.make_node("Sub", ["features", const(prefix + ".fmean", np.zeros(512))], [prefix + ".c"]))
        nodes.append(helper.make_node("Div", [prefix + ".c", const(prefix + ".fstd", np.ones(512))], [prefix + ".z"]))
        w1 = rng.normal(0, math.sqrt(1 / 512), (128, 512))
        w2 = rng.normal(0, math.sqrt(1 / 128), (out_dim, 128))
        nodes.append(helper.make_node("Gemm", [prefix + ".z", const(prefix + ".w1", w1),
                                               const(prefix + ".b1", np.zeros(128))], [prefix + ".h"], transB=1))
        nodes.append(helper.make_node("Relu", [prefix + ".h"], [prefix + ".r"]))
        nodes.append(helper.make_node("Gemm", [prefix + ".r", const(prefix + ".w2", w2),
                                               const(prefix + ".b2", np.zeros(out_dim))], [output], transB=1))

    mlp("measure", 3, "measure.raw")
    nodes.append(helper.make_node("Mul", ["measure.raw", const("target_std", np.ones(3))], ["measure.scaled"]))
    nodes.append(helper.make_node("Add", ["measure.scaled", const("target_mean", np.zeros(3))], ["measurements"]))
    mlp("plane", 1, "plane_logit")
    graph = helper.make_graph(
        nodes, "sonogate_resnet18_bench",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("measurements", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("plane_logit", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 512])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return "onnx.helper 1-channel ResNet-18 (BN folded) + 512->128->3/1 heads (torch not installed)"


def calibration_tensors(size: int, image_paths: list[str], n: int, mean: float = 0.5, std: float = 0.25,
                        seed: int = 1) -> tuple[list[np.ndarray], str]:
    """Up to ``n`` normalised (1, 1, size, size) float32 tensors: the gray images of ``image_paths`` resized
    when given, else smooth random speckle images. Returns (tensors, "phantom" or "smooth-random")."""
    import cv2

    tensors = []
    for p in image_paths[:n]:
        gray = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            continue
        resized = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
        tensors.append(((resized.astype(np.float32) / 255.0 - mean) / std)[None, None])
    if tensors:
        return tensors, "phantom"
    rng = np.random.default_rng(seed)
    for _ in range(n):
        low = rng.random((6, 6)).astype(np.float32)
        smooth = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
        speckle = rng.rayleigh(0.25, (size, size)).astype(np.float32)
        img = np.clip(smooth * speckle * 2.0, 0.0, 1.0)
        tensors.append(((img - mean) / std)[None, None].astype(np.float32))
    return tensors, "smooth-random"


def build_models(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``build`` worker task: float ONNX, static INT8 QDQ and (optionally) NNCF INT8 IR for one size, kept
    in the cache folder ``spec["dir"]`` with a ``meta.json`` saying how each was made.

    ``spec``: size, dir, arch_kind ("torch" or "onnx-helper"), ship (the shipping exporter; else the fast
    one), int8, nncf, float_source (a bundle's float model to quantise with NNCF instead of rebuilding),
    calib_images, calib_frames, mean, std, seed. Returns {meta, float, int8 (path or None), nncf (path or None)}.
    """
    from sonogate.export.quantize import export_openvino, quantize_int8

    size, out = int(spec["size"]), Path(spec["dir"])
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("cache_version") != CACHE_VERSION or meta.get("arch_kind") != spec["arch_kind"]:
        meta = {"cache_version": CACHE_VERSION, "size": size, "arch_kind": spec["arch_kind"]}
    float_path, int8_path, nncf_path = out / "model.onnx", out / "model.int8.onnx", out / "nncf" / "model.xml"
    seed = int(spec.get("seed", 0))
    if spec.get("float_source"):  # NNCF from a bundle's float model: read it, never write next to it
        float_path = Path(spec["float_source"])
        meta["arch"] = f"bundle float model {float_path}"
    elif not float_path.is_file() or "arch" not in meta:
        t0 = time.perf_counter()
        if spec["arch_kind"] == "torch":
            meta["arch"], meta["exporter"] = export_torch_onnx(float_path, size, seed, shipping=spec.get("ship", True))
        else:
            meta["arch"] = build_resnet18_onnx(float_path, size, seed)
            meta["exporter"] = "onnx.helper"
        meta["export_s"] = round(time.perf_counter() - t0, 2)
        meta.pop("int8", None)
        meta.pop("nncf", None)
    tensors, kind = calibration_tensors(size, spec.get("calib_images") or [], int(spec["calib_frames"]),
                                        spec.get("mean", 0.5), spec.get("std", 0.25))
    if spec.get("int8", True) and not spec.get("float_source") and (
            not int8_path.is_file() or meta.get("int8", {}).get("calibration") != kind):
        t0 = time.perf_counter()
        # ONNX Runtime's symbolic shape inference needs sympy, which comes with torch: a torch-free bench uses
        # plain ONNX shape inference (enough for this static-shape CNN) rather than losing its INT8 rows
        plain_shapes = importlib.util.find_spec("sympy") is None
        quantize_int8(float_path, int8_path, np.concatenate(tensors), skip_symbolic_shape=plain_shapes)
        meta["int8"] = {"calibration": kind, "frames": len(tensors),
                        "recipe": "sonogate.export.quantize.quantize_int8 (QDQ, per-channel, MinMax"
                                  f"{', plain ONNX shape inference' if plain_shapes else ''})",
                        "seconds": round(time.perf_counter() - t0, 2)}
    if spec.get("nncf") and (not nncf_path.is_file() or meta.get("nncf", {}).get("calibration") != kind):
        t0 = time.perf_counter()
        nncf_path.parent.mkdir(exist_ok=True)
        try:
            export_openvino(float_path, nncf_path.parent, calib=np.concatenate(tensors))
            meta["nncf"] = {"calibration": kind, "frames": len(tensors),
                            "recipe": "sonogate.export.quantize.export_openvino (NNCF INT8 IR)",
                            "seconds": round(time.perf_counter() - t0, 2)}
        except Exception as exc:  # noqa: BLE001 - nncf missing or failing: the row is skipped with the reason
            meta["nncf"] = {"error": f"{type(exc).__name__}: {one_line(exc)}"}
    meta_path.write_text(json.dumps(meta, indent=1))
    return {"meta": meta, "float": str(float_path), "int8": str(int8_path) if int8_path.is_file() else None,
            "nncf": str(nncf_path) if nncf_path.is_file() and "error" not in meta.get("nncf", {}) else None}


def kernel_model(kind: str, precision: str):
    """A one-layer ONNX model: a 3x3 conv C->C at HxW (``CONV_SHAPES``) or, for "matmul", a
    256x1024 @ 1024x1024 MatMul; ``precision`` "int8" as QDQ (uint8 activations, int8 weights) so ORT and
    OpenVINO both run integer kernels. Returns (onnx model, input array, FLOPs per run)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes = [], []
    if kind in CONV_SHAPES:
        c, hw = CONV_SHAPES[kind]
        x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
        w = (rng.standard_normal((c, c, 3, 3)) * 0.05).astype(np.float32)
        flops = 2 * c * c * 9 * hw * hw
        out_shape = [1, c, hw, hw]
    else:
        m, k, n = 256, 1024, 1024
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
        flops = 2 * m * k * n
        out_shape = [m, n]
    op = "Conv" if kind in CONV_SHAPES else "MatMul"
    attrs = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]} if op == "Conv" else {}
    if precision == "fp32":
        inits.append(numpy_helper.from_array(w, "w"))
        nodes.append(helper.make_node(op, ["x", "w"], ["y"], **attrs))
    else:
        per_channel = op == "Conv"
        absmax = np.abs(w).reshape(w.shape[0], -1).max(1) if per_channel else np.array(np.abs(w).max())
        w_scale = (absmax / 127.0).astype(np.float32)
        scale_b = w_scale.reshape((-1,) + (1,) * (w.ndim - 1)) if per_channel else w_scale
        w_q = np.clip(np.round(w / scale_b), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(w_q, "w_q"), numpy_helper.from_array(w_scale, "w_scale"),
                  numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), "w_zp"),
                  numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
                  numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
                  numpy_helper.from_array(np.array(0.5, np.float32), "y_scale"),
                  numpy_helper.from_array(np.array(128, np.uint8), "y_zp")]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"],
                             **({"axis": 0} if per_channel else {})),
            helper.make_node(op, ["xd", "wd"], ["yf"], **attrs),
            helper.make_node("QuantizeLinear", ["yf", "y_scale", "y_zp"], ["yq"]),
            helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["y"]),
        ]
    graph = helper.make_graph(nodes, f"{kind}_{precision}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, x, flops
