"""FLOPs of an ONNX graph: 2 x MACs of its Conv / ConvTranspose / Gemm / MatMul nodes at batch 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def count_flops(model_path: str | Path) -> dict[str, Any]:
    """2 * MACs of Conv / ConvTranspose / Gemm / MatMul at batch 1, from the graph with shape inference.

    Input: an ONNX file (dynamic dimensions are set to 1). Output: ``{macs, flops, gflops, macs_by_op,
    nodes_without_shape}`` (``nodes_without_shape``: counted nodes whose shapes inference could not give).
    """
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(model_path))
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1  # batch
    model = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for value in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(numpy_helper.to_array(attr.t).shape)
    by_op: dict[str, int] = {}
    unknown = 0
    for node in model.graph.node:
        op = node.op_type
        if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        try:
            if op in ("Conv", "ConvTranspose"):
                w = shapes[node.input[1]]
                out = shapes[node.output[0]] if op == "Conv" else shapes[node.input[0]]
                macs = int(np.prod(out)) * int(np.prod(w[1:]))
                if op == "ConvTranspose":
                    macs = int(np.prod(shapes[node.input[0]])) * int(np.prod(w[1:]))
            elif op == "Gemm":
                a = shapes[node.input[0]]
                trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
                k = a[0] if trans_a else a[-1]
                macs = int(np.prod(shapes[node.output[0]])) * int(k)
            else:
                macs = int(np.prod(shapes[node.output[0]])) * int(shapes[node.input[0]][-1])
        except (KeyError, IndexError):
            unknown += 1
            continue
        by_op[op] = by_op.get(op, 0) + macs
    macs = sum(by_op.values())
    return {"macs": macs, "flops": 2 * macs, "gflops": round(2 * macs / 1e9, 4), "macs_by_op": by_op,
            "nodes_without_shape": unknown}
