"""torch -> ONNX for the fused network, and the check that ONNX Runtime reproduces torch."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from sonogate.errors import SonogateError

INPUT_NAME = "image"
OPSET = 18  # >= 17 per the runtime contract; 18 is the torch.export-based exporter's native opset


def export_onnx(model, path: str | os.PathLike, size: int, output_names: tuple[str, ...]) -> Path:
    """Write ``model`` (eval, CPU) as one self-contained ONNX file.

    Input ``image`` float32 [N, 1, size, size] with a dynamic batch N; outputs named ``output_names`` in the
    order ``model.forward`` returns them. Uses the torch.export-based exporter (the TorchScript one is
    deprecated), weights embedded (no external .data file: the bundle hashes single files).
    """
    import torch

    path = Path(path)
    model = model.eval().cpu()
    example = torch.zeros(2, 1, size, size)
    batch = torch.export.Dim("N", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes={"image": {0: batch}},
            external_data=False,
            verbose=False,
        )
        program.save(str(path), external_data=False)
    _strip_node_metadata(path)
    return path


def _strip_node_metadata(path: Path) -> None:
    """Drop the exporter's per-node metadata (Python stack traces with this machine's file paths, FX
    dumps): it is not needed to run the model and does not belong in a shipped file."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))


def ort_session(path: str | os.PathLike, threads: int = 0):
    """A CPU ONNX Runtime session (``threads`` 0: ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_ort(session, x: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    """Run a session over x (N, 1, S, S) in batches; returns {output name: concatenated array}."""
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list] = {n: [] for n in names}
    for s in range(0, len(x), batch):
        for name, value in zip(names, session.run(names, {INPUT_NAME: x[s : s + batch]})):
            parts[name].append(value)
    return {n: np.concatenate(v) for n, v in parts.items()}


def check_onnx(path: str | os.PathLike, model, x: np.ndarray, atol: float = 1e-3) -> dict[str, float]:
    """onnx.checker plus ORT-vs-torch on ``x``: max |difference| per output. Raises SonogateError when an
    output differs by more than ``atol`` (plus 1e-4 relative, so 60-degree outputs are judged fairly)."""
    import onnx
    import torch

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    with torch.no_grad():
        reference = [t.numpy() for t in model.eval()(torch.from_numpy(x))]
    got = run_ort(ort_session(path), x)
    diffs = {}
    for name, ref in zip(got, reference):
        diff = np.abs(got[name] - ref)
        diffs[name] = float(diff.max())
        if np.any(diff > atol + 1e-4 * np.abs(ref)):
            raise SonogateError(f"ONNX output {name} differs from torch by {diffs[name]:.2e} (> {atol}): {path}")
    return diffs
