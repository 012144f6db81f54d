"""Static INT8 with ONNX Runtime (QDQ, per-channel weights) and the OpenVINO IR (fp32 or NNCF INT8).

Calibration uses real-looking frames (phantom or real, preprocessed exactly like the runtime does); random
noise would calibrate activation ranges the model never sees.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# Only the compute-heavy ops of the encoder go INT8. The heads (a few percent of the compute) and the
# soft-argmax / atan geometry stay float: quantising them cost about 0.8 deg of alpha parity for no speed.
QUANT_OPS = ("Conv", "Gemm", "MatMul")
HEAD_PREFIXES = ("landmark_head.", "plane_head.", "measure_head.")


def nodes_with_weights(onnx_path: str | os.PathLike, prefixes: Iterable[str]) -> list[str]:
    """Names of the Conv / Gemm / MatMul nodes whose weight initializer's name starts with one of ``prefixes``
    (the exporter keeps module paths there, also for convolutions with a batch norm folded in)."""
    import onnx

    prefixes = tuple(prefixes)
    model = onnx.load(str(onnx_path), load_external_data=False)
    return [
        n.name
        for n in model.graph.node
        if n.op_type in QUANT_OPS and len(n.input) > 1 and n.input[1].startswith(prefixes)
    ]


def head_nodes(onnx_path: str | os.PathLike) -> list[str]:
    """Names of the Conv / Gemm / MatMul nodes of the hip heads (``HEAD_PREFIXES``)."""
    return nodes_with_weights(onnx_path, HEAD_PREFIXES)


def quantize_int8(
    float_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calib: np.ndarray | dict[str, np.ndarray],
    batch: int = 8,
    exclude_nodes: Iterable[str] | None = None,
    skip_symbolic_shape: bool = False,
) -> Path:
    """Write a static INT8 QDQ model. Inputs: the float ONNX file, calibration inputs (n, 1, S, S) float32 for the
    one input ``image``, or a dict input name -> (n, ...) float32 for a graph with several inputs.

    quant_pre_process (shape inference + graph optimisation) runs first, as ONNX Runtime recommends;
    activations uint8 asymmetric, weights int8 (7-bit range) symmetric per output channel, MinMax ranges. Excluded
    nodes stay float (default: the heads, see ``head_nodes``). ``skip_symbolic_shape`` uses plain ONNX shape
    inference in the pre-processing (for graphs ONNX Runtime's symbolic inference rejects).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            named = calib if isinstance(calib, dict) else {"image": calib}
            n = len(next(iter(named.values())))
            self._it = iter([{k: v[s : s + batch] for k, v in named.items()} for s in range(0, n, batch)])

        def get_next(self):
            return next(self._it, None)

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=skip_symbolic_shape)
        if exclude_nodes is None:
            exclude_nodes = head_nodes(pre)
        quantize_static(
            str(pre),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # 7-bit weights: on x86 without VNNI (AVX2 / AVX-512F carts, this machine) the u8 x s8 kernels
            # saturate their 16-bit intermediate sums; alpha parity went from 0.74 to 0.48 deg vs float.
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANT_OPS),
            nodes_to_exclude=list(exclude_nodes),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return out_path


def export_openvino(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, calib: np.ndarray | None = None) -> Path:
    """OpenVINO IR (model.xml + model.bin) from an ONNX model (float, or a QDQ INT8 one, which OpenVINO runs
    in INT8 as it is); NNCF post-training INT8 when ``calib`` (n, 1, S, S) is given, with the heads kept
    float as in ``quantize_int8``. Weights are not compressed to fp16 (parity first)."""
    import openvino as ov

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(onnx_path))
    if calib is not None:
        import nncf

        # OpenVINO names a converted ONNX node "<node name>" or "<node name>/<suffix>".
        ignored = nncf.IgnoredScope(patterns=[f"^{name}(/.*)?$" for name in head_nodes(onnx_path)], validate=False)
        dataset = nncf.Dataset([calib[i : i + 1] for i in range(len(calib))])
        model = nncf.quantize(
            model, dataset, subset_size=len(calib), preset=nncf.QuantizationPreset.MIXED, ignored_scope=ignored
        )
    xml = out_dir / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def openvino_runner(xml: str | os.PathLike, threads: int = 0):
    """A callable x (n, 1, S, S) -> {output name: array} running the IR on the CPU."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    names = [o.get_any_name() for o in compiled.outputs]

    def run(x: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
        parts: dict[str, list] = {n: [] for n in names}
        for s in range(0, len(x), batch):
            result = compiled(x[s : s + batch])
            for out, name in zip(compiled.outputs, names):
                parts[name].append(np.asarray(result[out]))
        return {n: np.concatenate(v) for n, v in parts.items()}

    return run
