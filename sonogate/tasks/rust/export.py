"""Export and calibration of the ``rust`` bundle (two graph inputs, ``ap`` and ``lat``).

The generic writer (``sonogate.export.bundle.export_bundle``) feeds one input named ``image``; a RUST case has two,
so this module does the same steps for two inputs with the same pieces: the torch.export-based ONNX exporter
(opset 18, dynamic batch), an ORT-vs-torch check, static INT8 QDQ (``sonogate.export.quantize.quantize_int8``,
calibrated on training cases), parity (INT8 vs float vs truth on the run's test patients, latency per case),
``ood.npz`` (image statistics per view, case features, an AP / lateral view classifier) and
``sonogate.core.bundle.write_manifest`` (sha256 of every file). The spec names no ``parts["exporter"]``: the
generic ``sonogate export`` would hand it single-input data; ``sonogate rust export`` (the task's ``cli`` part) runs
this module instead.

``calibrate_rust_bundle``: LAC class sets per cortex (per-case max score) and an absolute-score interval on the
total around the sum of the cortex grades, fitted with the bundle's own INT8 model on the run's ``cal`` patients;
coverage, set sizes, interval widths and union calls counted on its ``test`` patients.
"""

from __future__ import annotations

import json
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sonogate.errors import DataError, SonogateError
from sonogate.tasks.rust.spec import CORTICES, TASK

FLOAT_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
OUTPUTS = ("cortex_logits", "features")
AGREEMENT_GOAL = 0.95
UNION_THRESHOLD = float(TASK.measurement("rust_total").threshold)


PREPROCESSING = {
    "letterbox": {"resize": "letterbox", "pad_value": 0,
                  "formula": "gray_uint8 -> pad to a centred square (0) -> resize (INTER_AREA) -> "
                             "x = (gray / 255 - mean) / std, per view"},
    "shaft": {"resize": "stretch", "crop": "shaft", "pad_value": 0,
              "formula": "gray_uint8 -> shaft strip (sonogate.tasks.rust.shaft.shaft_strip: full film height, the "
                         "columns around the brightest tibia-wide band, width / height of the film height wide) -> "
                         "resize to height x width (INTER_AREA, aspect kept) -> x = (gray / 255 - mean) / std, "
                         "per view"},
}


def _load_run(run_dir: str | Path) -> dict:
    import torch

    from sonogate.tasks.rust.train import RUST_CHECKPOINT_FORMAT

    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise DataError(f"no checkpoint.pt in {run_dir} (run sonogate rust train first)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") != RUST_CHECKPOINT_FORMAT:
        raise DataError(f"{path} is not a rust training checkpoint")
    return ckpt


def _model(ckpt: dict):
    from sonogate.tasks.rust.train import RustExport, RustNet

    cfg = ckpt["config"]
    net = RustNet(cfg["head"], tuple(cfg["widths"]), cfg["feature_dim"], cfg["dropout"])
    net.load_state_dict(ckpt["state_dict"])
    return RustExport(net.eval()).eval()


def _split_indexes(ckpt: dict, folder) -> dict[str, np.ndarray]:
    return {name: np.flatnonzero(np.isin(folder.patients, ids)) for name, ids in ckpt["split"].items()}


def _inputs(views: np.ndarray, cfg: dict) -> dict[str, np.ndarray]:
    x = (views.astype(np.float32) / 255.0 - cfg["mean"]) / cfg["std"]
    return {"ap": np.ascontiguousarray(x[:, 0:1]), "lat": np.ascontiguousarray(x[:, 1:2])}


def _run(session, feeds: dict[str, np.ndarray], batch: int = 32) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    n = len(next(iter(feeds.values())))
    parts: dict[str, list] = {k: [] for k in names}
    for s in range(0, n, batch):
        for name, value in zip(names, session.run(names, {k: v[s : s + batch] for k, v in feeds.items()})):
            parts[name].append(value)
    return {k: np.concatenate(v) for k, v in parts.items()}


def export_onnx_two_views(model, path: Path, height: int, width: int | None = None) -> Path:
    """``model(ap, lat)`` -> ONNX with inputs ``ap``, ``lat`` (N, 1, height, width; width defaults to height),
    dynamic N, outputs ``OUTPUTS``."""
    import torch

    width = height if width is None else width
    example = (torch.zeros(2, 1, height, width), torch.zeros(2, 1, height, width))
    batch = torch.export.Dim("N", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, example, input_names=["ap", "lat"], output_names=list(OUTPUTS),
                                    opset_version=18, dynamo=True,
                                    dynamic_shapes={"ap": {0: batch}, "lat": {0: batch}}, external_data=False,
                                    verbose=False)
        program.save(str(path), external_data=False)
    return path


def _grades(logits: np.ndarray) -> np.ndarray:
    from sonogate.tasks.rust.model import median_grades

    return median_grades(np.exp(logits))


def _latency(session, feeds: dict[str, np.ndarray], runs: int = 40) -> dict:
    one = {k: v[:1] for k, v in feeds.items()}
    for _ in range(3):
        session.run(None, one)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, one)
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(float(np.median(times)), 2), "p99_ms": round(float(np.percentile(times, 99)), 2),
            "runs": runs, "threads": 2}


def export_rust_bundle(run_dir: str | Path, out: str | Path, keep_float: bool = False, force: bool = False,
                       log: Callable[[str], None] = print) -> str:
    """RUN_DIR -> bundle folder ``out`` (module docstring). Returns the manifest sha256."""
    import onnx
    import torch

    from sonogate.calibration.ood import fit_ood, save_ood
    from sonogate.core.bundle import write_manifest
    from sonogate.export.bundle import export_versions, prepare_out_dir
    from sonogate.export.onnx_export import ort_session
    from sonogate.export.quantize import quantize_int8
    from sonogate.runtime.image_stats import describe_images
    from sonogate.runtime.radiograph_checks import fit_view_classifier
    from sonogate.tasks.rust.train import load_views, read_rust_folder

    ckpt = _load_run(run_dir)
    cfg = ckpt["config"]
    size, crop = int(cfg["size"]), cfg.get("crop", "letterbox")
    width = size if crop == "letterbox" else int(cfg["strip_width"])
    spec_in = TASK.inputs[0]
    spec_crop = "letterbox" if spec_in.resize == "letterbox" else "shaft"
    if (size, width, crop) != (spec_in.height, spec_in.width, spec_crop):
        raise DataError(f"the run was trained on {crop} views of {size} x {width} px; the rust spec's inputs are "
                        f"{spec_crop} views of {spec_in.height} x {spec_in.width} px")
    folder = read_rust_folder(cfg["data"])
    split = _split_indexes(ckpt, folder)
    out = Path(out)
    prepare_out_dir(out, force)
    model = _model(ckpt)
    views = load_views(folder, size, progress=False, crop=crop, strip_width=width)
    test, train, val = views[split["test"]], views[split["train"]], views[split["val"]]

    float_path = export_onnx_two_views(model, out / FLOAT_FILE, size, width)
    onnx.checker.check_model(onnx.load(str(float_path)), full_check=True)
    feeds = _inputs(test, cfg)
    with torch.no_grad():
        reference = [t.numpy() for t in model(torch.from_numpy(feeds["ap"][:8]), torch.from_numpy(feeds["lat"][:8]))]
    sess_float = ort_session(float_path, threads=2)
    got = _run(sess_float, {k: v[:8] for k, v in feeds.items()})
    diffs = {n: float(np.abs(got[n] - r).max()) for n, r in zip(OUTPUTS, reference)}
    if max(diffs.values()) > 2e-3:
        raise SonogateError(f"ONNX differs from torch by {max(diffs.values()):.2e}")
    log(f"model.onnx matches torch (max abs diff {max(diffs.values()):.2e})")

    rng = np.random.default_rng(0)
    cal_pick = rng.choice(len(train), size=min(160, len(train)), replace=False)
    int8_path = None
    for skip in (False, True):
        try:
            int8_path = quantize_int8(float_path, out / INT8_FILE, _inputs(train[cal_pick], cfg),
                                      skip_symbolic_shape=skip)
            break
        except Exception as exc:  # noqa: BLE001 - a quantiser failure must not lose the float bundle
            log(f"int8 attempt failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})")
    if int8_path is None and not keep_float:
        raise SonogateError("INT8 quantisation failed: rerun with --keep-float")

    truth = folder.grades[split["test"]]
    ref = _run(sess_float, feeds)
    ref_grades = _grades(ref["cortex_logits"])

    def block(outputs: dict) -> dict:
        g = _grades(outputs["cortex_logits"])
        return {"grade_agreement_with_float": round(float(np.mean(g == ref_grades)), 4),
                "cortex_accuracy_vs_truth": round(float(np.mean(g == truth)), 4),
                "total_mae_vs_truth": round(float(np.mean(np.abs(g.sum(1) - truth.sum(1)))), 4)}

    parity = {"data": {"source": f"test patients of the run's split ({cfg['data']})", "n_cases": len(test)},
              "goal": {"int8_grade_agreement_with_float": AGREEMENT_GOAL},
              "latency_note": f"one case (AP + lateral, batch 1), {size} x {width} px, ORT CPU 2 threads "
                              f"({platform.processor() or platform.machine()}), p50 / p99 of 40 calls",
              "models": {"float": {"file": FLOAT_FILE, **block(ref), "latency": _latency(sess_float, feeds)}}}
    models = {}
    if int8_path is not None:
        sess8 = ort_session(int8_path, threads=2)
        b8 = block(_run(sess8, feeds))
        b8["meets_goal"] = b8["grade_agreement_with_float"] >= AGREEMENT_GOAL
        parity["models"]["int8"] = {"file": INT8_FILE, **b8, "latency": _latency(sess8, feeds)}
        models["int8"] = {"file": INT8_FILE, "format": "onnx", "precision": "int8",
                          "quantization": "static QDQ per-channel, ONNX Runtime (heads float)"}
        log(f"int8 grade agreement with float {b8['grade_agreement_with_float']:.3f}")

    # out-of-distribution statistics and the view classifier
    def encode(v: np.ndarray) -> np.ndarray:
        x = _inputs(v, cfg)
        if int8_path is not None:  # the runtime runs the INT8 graph: fit the checks on its features
            return _run(sess8, x)["features"]
        with torch.no_grad():
            return torch.cat([model(torch.from_numpy(x["ap"][s : s + 32]), torch.from_numpy(x["lat"][s : s + 32]))[1]
                              for s in range(0, len(v), 32)]).numpy()

    f_train, f_val = encode(train), encode(val)
    features = fit_ood(f_train, f_val)
    per_view_train = np.concatenate([train[:, 0], train[:, 1]])
    per_view_val = np.concatenate([val[:, 0], val[:, 1]])
    image_stats = fit_ood(describe_images(per_view_train), describe_images(per_view_val))
    from sonogate.runtime.image_stats import ImageStats
    from sonogate.runtime.radiograph_checks import view_descriptor

    stats = ImageStats()

    def descriptors(v: np.ndarray) -> np.ndarray:
        return np.stack([view_descriptor(img, 0.0, 1.0, stats) for img in v.astype(np.float32) / 255.0])

    d_train_ap, d_train_lat = descriptors(train[:, 0]), descriptors(train[:, 1])
    views_fit = fit_view_classifier(d_train_ap, d_train_lat)
    w, b = views_fit["view_weights"], float(views_fit["view_bias"])
    z_ap, z_lat = descriptors(val[:, 0]) @ w + b, descriptors(val[:, 1]) @ w + b
    margin = float(np.percentile(z_ap - z_lat, 99))  # a correct val pair exceeds it 1 % of the time
    swap_detection = float(np.mean(z_lat - z_ap > margin))  # the same pairs, files swapped
    save_ood(out / "ood.npz", features, image_stats)
    with np.load(out / "ood.npz") as data:
        stored = dict(data)
    np.savez(out / "ood.npz", **stored, view_weights=w, view_bias=np.float64(b), view_margin=np.float64(margin),
             view_names=np.array(["ap", "lat"]))
    log(f"ood.npz: feature threshold {features['threshold']:.1f}, image threshold {image_stats['threshold']:.1f}, "
        f"swapped views caught on {swap_detection:.1%} of val pairs at 1 % false refusals")
    parity["view_check"] = {"descriptor": "image statistics + column-profile spectrum (view_descriptor)",
                            "margin": round(margin, 3), "false_refusal_on_val_pairs": 0.01,
                            "swapped_val_pairs_refused": round(swap_detection, 4), "n_val_pairs": len(val)}

    if keep_float or int8_path is None:
        models["float"] = {"file": FLOAT_FILE, "format": "onnx", "precision": "fp32"}
    else:
        float_path.unlink()
    (out / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    manifest = {
        "task": "rust", "modality": "radiograph",
        "preprocessing": PREPROCESSING[crop] | {"inputs": ["ap", "lat"], "height": size, "width": width,
                                                "mean": cfg["mean"], "std": cfg["std"]},
        "outputs": {"cortex_logits": {"shape": ["N", 4, 3], "names": list(CORTICES), "classes": [1, 2, 3],
                                      "activation": "softmax over the last axis (log class probabilities)"},
                    "features": {"dim": int(2 * cfg["feature_dim"]), "meaning": "AP features then lateral features"}},
        "model": {"architecture": f"shared RadiographCNN {list(cfg['widths'])} over both views, trained from "
                                  "scratch on the phantom", "head": cfg["head"], "class_weights": cfg["weights"]},
        "ood": {"file": "ood.npz", "checks": ["image statistics per view", "case features", ("AP / lateral view "
                                              "classifier (logistic, per-view features)")]},
        "provenance": {"training_data": {"description": f"phantom folder {cfg['data']} ({len(folder)} cases)",
                                         "licence": ckpt["data"]["licence"]},
                       "seed": cfg["seed"], "versions": export_versions(), "train_command": ckpt.get("command", ""),
                       "export_command": " ".join(sys.argv), "train_config": cfg,
                       "metrics": ckpt.get("metrics", {})},
        "models": models, "parity": {"file": "parity.json"},
    }
    if "float" not in models:
        manifest["models_left_out"] = {"float": "model.onnx (fp32) is regenerated by sonogate rust export RUN_DIR "
                                                "--keep-float; its parity figures stay in parity.json"}
    digest = write_manifest(out, manifest)
    log(f"bundle written: {out} ({', '.join(models)})")
    return digest


def calibrate_rust_bundle(bundle_dir: str | Path, run_dir: str | Path, delta: float = 0.1,
                          log: Callable[[str], None] = print) -> dict:
    """Fit the sets and the interval on the run's cal patients with the bundle's own model; evaluate on its test
    patients; write calibration.json. Returns the evaluation block."""
    import torch

    from sonogate.calibration.class_sets import (
        ConformalClassSets,
        OrdinalIntervalConformal,
        interval_coverage,
        set_coverage,
    )
    from sonogate.calibration.ordinal_calfile import ordinal_calibration, save_ordinal_calibration
    from sonogate.core.bundle import load_bundle
    from sonogate.runtime.model_api import create_model
    from sonogate.tasks.rust.model import median_grades, union_call
    from sonogate.tasks.rust.train import read_rust_folder

    path = Path(run_dir) / "checkpoint.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    folder = read_rust_folder(ckpt["config"]["data"])
    split = _split_indexes(ckpt, folder)
    bundle = load_bundle(bundle_dir)
    model = create_model(bundle, threads=1)
    from sonogate.data.folder import load_gray_image

    def probabilities(idx: np.ndarray) -> np.ndarray:
        return np.stack([model({"ap": load_gray_image(folder.ap_paths[i]), "lat": load_gray_image(folder.lat_paths[i])}
                               )["probabilities"] for i in idx])

    cal, test = split["cal"], split["test"]
    p_cal, p_test = probabilities(cal), probabilities(test)
    y_cal, y_test = folder.grades[cal] - 1, folder.grades[test] - 1
    sets = ConformalClassSets(delta, "lac", contiguous=True).fit(
        p_cal.reshape(-1, 3), y_cal.reshape(-1), groups=np.repeat(np.arange(len(cal)), 4))
    total_cal = median_grades(p_cal).sum(1).astype(float)
    interval = OrdinalIntervalConformal(delta, side="two-sided", score="absolute", value_range=(4, 12)).fit(
        total_cal, folder.grades[cal].sum(1))
    s_test = sets.predict(p_test.reshape(-1, 3)).reshape(len(test), 4, 3)
    total_test = median_grades(p_test).sum(1)
    lo, hi = interval.predict(total_test.astype(float))
    truth_total = folder.grades[test].sum(1)
    calls = [union_call(int(a), s)[0] for a, s in zip(lo, s_test)]
    united = np.array([c == "united" for c in calls])
    evaluation = {
        "n_cal_cases": len(cal), "n_test_cases": len(test), "target": 1 - delta,
        "case_coverage_all_four_sets": set_coverage(s_test.reshape(-1, 3), y_test.reshape(-1),
                                                    groups=np.repeat(np.arange(len(test)), 4)),
        "cortex_coverage": float(np.mean(np.take_along_axis(s_test, y_test[..., None], axis=2))),
        "mean_set_size": float(s_test.sum(2).mean()),
        "total_interval_coverage": interval_coverage(lo, hi, truth_total),
        "total_interval_mean_width": float(np.mean(hi - lo + 1)),
        "united_calls": int(united.sum()),
        "united_calls_with_true_total_below_10": int(np.sum(united & (truth_total < UNION_THRESHOLD))),
        "true_totals_at_or_above_10": int(np.sum(truth_total >= UNION_THRESHOLD)),
        "model_variant": model.variant,
    }
    calibration = ordinal_calibration(
        "rust", bundle.bundle_hash, (1, 2, 3), sets, unit="case", items_per_unit=4,
        guarantee=f"all four cortex sets of a case hold their true grades with probability >= {1 - delta:.0%}, and "
                  f"the total's interval holds the true total with probability >= {1 - delta:.0%}, for cases "
                  "exchangeable with the calibration patients (phantom: this generator and its devices)",
        data={"source": f"cal patients of the run's split ({ckpt['config']['data']})", "n_cases": len(cal),
              "model_variant": model.variant},
        evaluation=evaluation, interval=interval, interval_prediction="sum of the per-cortex median grades")
    save_ordinal_calibration(Path(bundle_dir) / "calibration.json", calibration)
    log(f"calibration.json: case coverage {evaluation['case_coverage_all_four_sets']:.3f}, interval coverage "
        f"{evaluation['total_interval_coverage']:.3f} (target {1 - delta:.2f}) on {len(test)} test cases")
    return evaluation
