"""``sonogate spine-export --run RUN --out bundles/spine``: a trained completion network -> a spine bundle.

The generic writer (``sonogate.export.bundle.export_bundle``) exports one image input of a fixed size; this task
has two named point-cloud inputs (``us_points``, ``xray_points``), so its export lives here and uses the same
pieces: ``net.export_onnx`` (checked against torch), ONNX Runtime static INT8 (QDQ), ``parity.json`` and
``sonogate.core.bundle.write_manifest`` (manifest v2, sha256 of every file, the task spec copied in).

Steps:

1. The run's best-validation weights (``RUN/checkpoint.pt`` of ``python -m sonogate.tasks.spine.train``) ->
   float ONNX (opset 17), ORT vs torch on 8 held-out cases (``net.parity``: >= 99 % of the points within
   1e-3 mm, none beyond 2 mm) and two ORT runs identical.
2. INT8: static QDQ, per-channel weights, MinMax ranges from ``--calib-cases`` training cases; only Conv /
   Gemm / MatMul nodes whose second input is a weight are quantised (the neighbour-search MatMul of two point
   sets stays float: quantising it changes which neighbours are picked).
3. Parity on the held-out test cases (source shapes never deformed for training): body / arch CD-L2 x 10^4 of
   fp32 and INT8 against the truth, the INT8 - fp32 point distance, and ORT latency (batch 1, 1 and 2
   threads, p50 / p90). INT8 ships only when its body and arch CD-L2 are within ``INT8_CD_TOLERANCE`` of
   fp32 and, with ``--prefer speed`` (the default), it is faster at 2 threads; with ``--prefer size`` (a
   bundle committed to the repository: a third of the bytes) its accuracy suffices. Otherwise fp32 ships;
   parity.json says which and why. Only the shipped model is kept.
4. ``spine`` manifest block: the input ranges measured on the training cases (``inputs.InputRanges``, widened
   by the margins below), the levels trained on, the network's mode and configuration, the run's test figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from sonogate.errors import DataError, SonogateError
from sonogate.tasks.spine import phantom as spine_phantom
from sonogate.tasks.spine.metrics import nearest_distances

FLOAT_FILE, INT8_FILE, PARITY_FILE = "model.onnx", "model.int8.onnx", "parity.json"
INT8_CD_TOLERANCE = 0.05  # INT8 body and arch CD-L2 at most 5 % above fp32
# input ranges = training range widened: extents and areas x [low, high], one-sided limits + margin
EXTENT_MARGIN = (0.6, 1.5)
AREA_MARGIN = (0.6, 1.5)
LENGTH_MARGIN = (0.7, 1.3)
MIRROR_MARGIN = 0.05
OVERLAP_MIN = 0.8  # every registered training case has 100 %; one level off (38 mm), at most 27 % (seed 22)


def load_run(run_dir) -> tuple[object, dict]:
    """(CompletionNet with the best-validation weights, eval; the checkpoint dict) of a training run folder."""
    import torch

    from sonogate.tasks.spine.net import CompletionNet

    path = Path(run_dir) / "checkpoint.pt" if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise DataError(f"no spine training checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "mode" not in ckpt or "model" not in ckpt:
        raise DataError(f"{path} is not a spine training checkpoint")
    config = ckpt.get("net_config") or {"mode": ckpt["mode"], "xray_seed": False}
    net = CompletionNet(**config)
    state = (ckpt.get("state") or {}).get("best_state") or ckpt["model"]
    net.load_state_dict(state)
    return net.eval(), ckpt


def measure_ranges(cases) -> dict:
    """``InputRanges`` (as JSON) from training cases (``train.CaseSet`` with the folder names), plus the raw
    ranges observed. Reads each case's xray.png."""
    import cv2

    from sonogate.tasks.spine import inputs as spine_inputs

    features, extents = [], []
    for folder, us in zip(cases.folders, cases.us):
        grey = cv2.imread(str(Path(folder) / "xray.png"), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise DataError(f"cannot read {folder}/xray.png")
        features.append(spine_inputs.view_features(grey))
        extents.append(spine_inputs.extent_mm(us))
    observed = {k: [round(float(min(f[k] for f in features)), 3), round(float(max(f[k] for f in features)), 3)]
                for k in features[0]}
    observed["us_extent_mm"] = [round(float(min(extents)), 3), round(float(max(extents)), 3)]

    def widen(key, margin):
        low, high = observed[key]
        return (round(low * margin[0], 1), round(high * margin[1], 1))

    ranges = spine_inputs.InputRanges(
        us_extent_mm=widen("us_extent_mm", EXTENT_MARGIN), silhouette_area_mm2=widen("area_mm2", AREA_MARGIN),
        silhouette_height_mm=widen("height_mm", LENGTH_MARGIN), silhouette_depth_mm=widen("depth_mm", LENGTH_MARGIN),
        mirror_iou_max=round(observed["mirror_iou"][1] + MIRROR_MARGIN, 3), overlap_min=OVERLAP_MIN)
    return {"ranges": ranges.to_json(), "observed_on_training_cases": observed, "n_cases": len(features)}


def is_weight(model, name: str) -> bool:
    return any(init.name == name for init in model.graph.initializer)


def weight_nodes(onnx_path) -> tuple[list[str], list[str]]:
    """(names of Conv / Gemm / MatMul nodes with a weight initializer as second input, all other such nodes)."""
    import onnx

    model = onnx.load(str(onnx_path))
    weights = {init.name for init in model.graph.initializer}
    keep, other = [], []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            (keep if len(node.input) > 1 and node.input[1] in weights else other).append(node.name)
    return keep, other


def quantize_int8(float_path: Path, int8_path: Path, us: np.ndarray, xray: np.ndarray, batch: int = 8) -> dict:
    """Static INT8 QDQ of ``float_path`` calibrated on (us, xray) (C, 2048, 3) mm; returns what was quantised."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"us_points": us[s:s + batch], "xray_points": xray[s:s + batch]}
                             for s in range(0, len(us), batch)])

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
        keep, other = weight_nodes(pre)
        quantize_static(str(pre), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=keep,
                        op_types_to_quantize=["Conv", "Gemm", "MatMul"])
    return {"quantised_nodes": len(keep), "float_nodes_kept": len(other),
            "note": "static QDQ, per-channel 7-bit weights, uint8 activations, MinMax; weight layers only"}


def session(path: Path, threads: int = 0):
    from sonogate.export.onnx_export import ort_session

    return ort_session(path, threads=threads)


def run_session(sess, us: np.ndarray, xray: np.ndarray, batch: int = 8) -> np.ndarray:
    out = [sess.run(["completed"], {"us_points": us[s:s + batch], "xray_points": xray[s:s + batch]})[0]
           for s in range(0, len(us), batch)]
    return np.concatenate(out)


def latency(path: Path, us1: np.ndarray, xray1: np.ndarray, threads: int, runs: int) -> dict:
    """p50 / p90 ms of batch-1 ORT calls after 3 warm-ups, ``threads`` intra-op threads."""
    sess = session(path, threads)
    feeds = {"us_points": us1, "xray_points": xray1}
    for _ in range(3):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    return {"threads": threads, "runs": runs, "p50_ms": round(float(np.median(times)), 2),
            "p90_ms": round(float(np.percentile(times, 90)), 2)}


def body_arch(predicted: np.ndarray, truth: np.ndarray) -> dict:
    from sonogate.tasks.spine import metrics as spine_metrics

    summary = spine_metrics.summarise([spine_metrics.completion_metrics(p, t) for p, t in zip(predicted, truth)])
    return {part: {k: round(summary[part][k], 4) for k in ("cd_l2_x1e4", "cd_l1_mm", "f1", "mean_mm", "p95_mm")}
            for part in ("body", "arch", "whole")}


def export_spine_bundle(run_dir, out, data=None, calib_cases: int = 64, latency_runs: int = 30,
                        force: bool = False, log=print, prefer: str = "speed") -> str:
    """Write the bundle folder ``out`` from the training run ``run_dir`` (module docstring). ``data``: the phantom
    folder(s) (default: the run's metrics.json ``data``). Returns the manifest sha256."""
    import torch

    from sonogate.core.bundle import write_manifest
    from sonogate.tasks.spine.net import export_onnx, parity
    from sonogate.tasks.spine.train import load_folders, split_cases

    net, ckpt = load_run(run_dir)
    run_dir = Path(run_dir)
    report_path = (run_dir if run_dir.is_dir() else run_dir.parent) / "metrics.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    data = data or report.get("data")
    if not data:
        raise DataError("no phantom data: pass --data DIR (the run's metrics.json names none)")
    embedding = (ckpt.get("net_config") or {}).get("xray_embedding", "plane")
    cases = load_folders(data, embedding)
    train, val, test = split_cases(cases, report.get("val_sources") or [])
    if len(test) == 0 or len(train) == 0:
        raise DataError(f"{data} has no held-out test cases or no training cases")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise DataError(f"{out} is not empty (pass --force to replace the bundle)")
    out.mkdir(parents=True, exist_ok=True)
    for name in (FLOAT_FILE, INT8_FILE, PARITY_FILE, "manifest.json"):
        (out / name).unlink(missing_ok=True)

    # 1. float ONNX, checked against torch, repeated exactly
    float_path = export_onnx(net, out / FLOAT_FILE)
    sess = session(float_path)
    check_us, check_xray = test.us[:8], test.xray[:8]
    first, second = run_session(sess, check_us, check_xray), run_session(sess, check_us, check_xray)
    with torch.no_grad():
        reference = net(torch.from_numpy(check_us), torch.from_numpy(check_xray))["completed"].numpy()
    agreement = parity(first, reference)
    if not agreement["agrees"] or not np.array_equal(first, second):
        raise SonogateError(f"model.onnx differs from torch ({agreement}) or between two runs")
    log(f"model.onnx matches torch ({agreement['share_within']:.2%} of points within 1e-3 mm, max "
        f"{agreement['max_mm']:.1e} mm) and repeats exactly")
    float_pred = run_session(sess, test.us, test.xray)
    parity = {"data": {"source": str(data), "n_test_cases": len(test), "test_sources": sorted(set(test.sources)),
                       "note": "held-out source shapes (never deformed for training), synthetic phantom"},
              "goal": {"int8_cd_l2_max_increase": INT8_CD_TOLERANCE},
              "latency_note": f"ONNX Runtime CPU ({platform.processor() or platform.machine()}), batch 1, median "
                              f"and 90th percentile of {latency_runs} calls after 3 warm-ups, shared 2-core machine",
              "models": {"float": {"file": FLOAT_FILE, "vs_truth": body_arch(float_pred, test.complete),
                                   "repeat_identical": True, "vs_torch": agreement,
                                   "latency": [latency(float_path, test.us[:1], test.xray[:1], t, latency_runs)
                                               for t in (1, 2)]}}}

    # 2. INT8 and the choice
    calib = np.random.default_rng(0).choice(len(train), min(calib_cases, len(train)), replace=False)
    quantised = quantize_int8(float_path, out / INT8_FILE, train.us[np.sort(calib)], train.xray[np.sort(calib)])
    int8_pred = run_session(session(out / INT8_FILE), test.us, test.xray)
    int8_block = {"file": INT8_FILE, **quantised, "calibration_cases": len(calib),
                  "vs_truth": body_arch(int8_pred, test.complete),
                  # order-free: with kept ultrasound points, a near-tie in which refined points are dropped shifts
                  # the indices of the points between two such drops, so a per-index shift would not mean anything
                  "vs_float_mean_nearest_mm": round(float(np.mean([np.mean(np.concatenate(nearest_distances(a, b)))
                                                                    for a, b in zip(int8_pred, float_pred)])), 4),
                  "latency": [latency(out / INT8_FILE, test.us[:1], test.xray[:1], t, latency_runs) for t in (1, 2)]}
    fl, q8 = parity["models"]["float"], int8_block
    worse = {part: q8["vs_truth"][part]["cd_l2_x1e4"] / fl["vs_truth"][part]["cd_l2_x1e4"] - 1.0
             for part in ("body", "arch")}
    faster = q8["latency"][1]["p50_ms"] < fl["latency"][1]["p50_ms"]
    meets = all(w <= INT8_CD_TOLERANCE for w in worse.values())
    int8_block["cd_l2_increase_vs_float"] = {k: round(v, 4) for k, v in worse.items()}
    int8_block["meets_goal"] = bool(meets)
    if prefer not in ("speed", "size"):
        raise SonogateError(f"prefer must be speed or size, got {prefer!r}")
    ship_int8 = meets and (faster or prefer == "size")
    reason = (f"INT8 body / arch CD-L2 {worse['body']:+.1%} / {worse['arch']:+.1%} vs fp32 (limit "
              f"+{INT8_CD_TOLERANCE:.0%}); 2-thread p50 {q8['latency'][1]['p50_ms']} vs {fl['latency'][1]['p50_ms']} ms; "
              f"preferring {prefer}")
    parity["models"]["int8"] = int8_block
    parity["shipped"] = {"variant": "int8" if ship_int8 else "float",
                         "reason": reason + (": INT8 kept" if ship_int8 else ": fp32 kept, INT8 not shipped")}
    log(parity["shipped"]["reason"])
    if ship_int8:
        (out / FLOAT_FILE).unlink()  # regenerated by this command; the bundle ships one model
        models = {"int8": {"file": INT8_FILE, "format": "onnx", "precision": "int8",
                           "quantization": quantised["note"]}}
    else:
        (out / INT8_FILE).unlink()
        models = {"float": {"file": FLOAT_FILE, "format": "onnx", "precision": "fp32"}}
    (out / PARITY_FILE).write_text(json.dumps(parity, indent=2) + "\n")

    # 3. manifest
    ranges = measure_ranges(train)
    mode_report = (report.get("modes") or {}).get(ckpt["mode"], {})
    manifest = {
        "task": "spine", "modality": "US",
        "outputs": {"completed": {"shape": ["N", 4 * net.n_coarse, 3], "units": "mm", "frame": "the ultrasound input's frame"},
                    "coarse": {"shape": ["N", net.n_coarse, 3], "units": "mm"}},
        "models": models, "parity": {"file": PARITY_FILE},
        "spine": {"levels": sorted(set(train.levels)), "input_ranges": ranges["ranges"],
                  "input_ranges_observed": ranges["observed_on_training_cases"],
                  "xray_geometry": {"size_px": 256, "pixel_mm": 0.5, "pixel_00_centre_yz_mm": [-63.75, 63.75],
                                    "columns": "y anterior -> posterior", "rows": "z superior -> inferior",
                                    "registered": "to the ultrasound frame (x lateral, y posterior, z superior)",
                                    "mu_per_mm": spine_phantom.XRAY_MU_PER_MM,
                                    "embedding": embedding,
                                    "embedding_note": "xray_points x: 0 (plane) or half the bone path length in mm "
                                                      "(half_path), from grey = 255 (1 - exp(-mu L))"},
                  "network": {**ckpt.get("net_config", {"mode": ckpt["mode"]}), "best_epoch":
                              (ckpt.get("state") or {}).get("best_epoch"), "epochs": (ckpt.get("state") or {}).get("epoch"),
                              # the runs whose weights it started from, oldest first (train --init-from)
                              "warm_start": (ckpt.get("state") or {}).get("warm_start", [])},
                  "run_test_figures": {part: {k: round(v, 4) for k, v in (mode_report.get("test") or {}).get(part, {}).items()
                                              if k in ("cd_l2_x1e4", "cd_l1_mm", "f1", "mean_mm", "p95_mm")}
                                       for part in ("body", "arch", "whole")}},
        "provenance": {
            "data": "synthetic spine phantom (sonogate phantom spine), no patient data",
            "phantom": str(data), "n_train_cases": len(train), "n_val_cases": len(val), "n_test_cases": len(test),
            "source_shapes": sorted(set(train.sources)), "held_out_test_sources": sorted(set(test.sources)),
            "licences": "VerSe-derived vertebra surfaces CC BY-SA 4.0 (Sekuboyina et al. 2021, Loeffler et al. "
                        "2020, Liebl et al. 2021); miruna20 repository MIT; lumbar shape model MIT (c) 2022 "
                        "Allison Clouthier (../shared/data/vertebra-meshes ORIGIN files)",
            "training": "python -m sonogate.tasks.spine.train (docs/tasks/spine.md)",
        },
    }
    digest = write_manifest(out, manifest)
    log(f"bundle written: {out} ({', '.join(models)}), manifest sha256 {digest[:12]}")
    return digest


def add_export_parser(subparsers) -> None:
    """``sonogate spine-export``: the task's own export command (spec ``parts["cli"]``)."""
    parser = subparsers.add_parser("spine-export", help="spine completion run -> bundle (two point-cloud inputs)",
                                   description="A spine completion training run -> a bundle (two named "
                                               "point-cloud inputs, fp32 or INT8 by parity, manifest v2).")
    parser.add_argument("--run", required=True, help="training run folder (checkpoint.pt, metrics.json)")
    parser.add_argument("--out", required=True, help="bundle folder to write")
    parser.add_argument("--data", default=None, help="phantom folder(s), comma list (default: the run's)")
    parser.add_argument("--calib-cases", type=int, default=64)
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--force", action="store_true", help="replace an existing bundle folder's files")
    parser.add_argument("--prefer", choices=("speed", "size"), default="speed",
                        help="INT8 ships when accurate and faster (speed) or accurate (size: for a committed bundle)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    export_spine_bundle(args.run, args.out, args.data, args.calib_cases, args.latency_runs, args.force,
                        prefer=args.prefer)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sonogate.tasks.spine.export")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["spine-export", *(argv if argv is not None else sys.argv[1:])])
    try:
        return args.func(args)
    except SonogateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
