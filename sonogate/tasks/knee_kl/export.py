"""The ``knee_kl`` task's half of the bundle writer (``sonogate.export.bundle``), and its calibration.

``EXPORTER`` (the spec's ``parts["exporter"]``): model.onnx = trunk + ordinal head + decoder to log class
probabilities (``kl_logits`` (N, 5)) and features (N, 256); model.int8.onnx = static INT8 (ONNX Runtime QDQ,
calibrated on 200 training images); parity.json = INT8 and float against each other and against the expert grades
of the ``val`` split; ood.npz = image-statistics and feature Mahalanobis checks (fitted on training images,
thresholds at the 99.5th percentile of ``val``). The fp32 model.onnx is not kept in the shipped bundle
(``sonogate knee-kl export --int8-only``): it is regenerated from the run with the same command.

``calibrate_bundle(bundle, data, delta)``: LAC class sets (contiguous, coverage >= 1 - delta by image) fitted on
the INT8 model's probabilities of ``val``, bound to the manifest hash; coverage and mean set size measured by
repeated 50 / 50 subject splits of ``val`` (calibrate on one half, count on the other).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sonogate.core.bundle import Preprocessing
from sonogate.errors import DataError
from sonogate.export.bundle import ExportData, ExportOptions, TaskExporter, normalised_inputs, pick_subset, provenance
from sonogate.tasks.knee_kl.data import DATA_ATTRIBUTION, KL_GRADES, load_knee_images, read_knee_split

KNEE_CHECK_ATOL = {"kl_logits": 2e-3, "features": 2e-3}
AGREEMENT_GOAL = 0.95


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def median_grades(logits: np.ndarray) -> np.ndarray:
    """(n, 5) log-probabilities -> (n,) ordinal median grades (first grade whose cumulative probability >= 0.5)."""
    return np.argmax(np.cumsum(_softmax(logits), axis=1) >= 0.5 - 1e-9, axis=1)


# the exported graph averages the image and its mirror (KneeKLExport; chosen on val, scripts/knee_kl_export_choices.py flip)
FLIP_AVERAGE = True


class KneeKLExporter(TaskExporter):
    parity_frames = 826
    latency_runs = 50
    openvino_default = False
    openvino_candidates = False
    int8_fallback = True
    # The first convolution (raw intensities in), the feature projection and the ordinal head stay float: chosen on
    # val (826 images, grade agreement INT8 vs float, 200 calibration radiographs): all INT8 0.926, head float 0.930,
    # + projection 0.933, + first convolution 0.983 (scripts/knee_kl_export_choices.py quant).
    FLOAT_LAYERS = ("encoder.stem.0.", "encoder.project.", "head.")
    members = 0  # further networks of the loaded checkpoint (an ensemble), set by load_model

    @property
    def float_weight_prefixes(self) -> tuple[str, ...]:
        owners = ["net."] + [f"members.{i}." for i in range(self.members)]
        return tuple(owner + layer for owner in owners for layer in self.FLOAT_LAYERS)
    quantization_note = ("static QDQ per-channel, ONNX Runtime; the first convolution, the feature projection and "
                         "the head stay float")
    unit = "radiographs"
    latency_threads = "ORT default threads, median of single-image calls"
    float_keys = ("vs_truth",)
    goal: ClassVar[dict[str, float]] = {"int8_grade_agreement_with_float": AGREEMENT_GOAL}
    check_rows = 8

    def load_model(self, ckpt: dict):
        from sonogate.tasks.knee_kl.net import KneeKLExport, KneeKLNet
        from sonogate.tasks.knee_kl.train import KNEE_CHECKPOINT_FORMAT

        if ckpt.get("format") != KNEE_CHECKPOINT_FORMAT:
            raise DataError(f"not a knee_kl training checkpoint ({KNEE_CHECKPOINT_FORMAT})")
        def build(cfg: dict, state_dict: dict) -> KneeKLNet:
            net = KneeKLNet(cfg["head"], tuple(cfg["widths"]), cfg["feature_dim"], cfg["dropout"])
            net.load_state_dict(state_dict)
            return net.eval()

        members = [build(m["config"], m["state_dict"]) for m in ckpt.get("members", [])]
        self.members = len(members)
        return KneeKLExport(build(ckpt["config"], ckpt["state_dict"]), flip_average=FLIP_AVERAGE,
                            members=tuple(members)).eval()

    def output_names(self, model) -> tuple[str, ...]:
        return ("kl_logits", "features")

    def check_onnx(self, path: Path, model, x: np.ndarray) -> dict[str, float]:
        import onnx
        import torch

        from sonogate.errors import SonogateError
        from sonogate.export.onnx_export import ort_session, run_ort

        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        with torch.no_grad():
            reference = [t.numpy() for t in model(torch.from_numpy(x))]
        got = run_ort(ort_session(path), x)
        diffs = {}
        for name, ref in zip(self.output_names(model), reference):
            diffs[name] = float(np.abs(got[name] - ref).max())
            if diffs[name] > KNEE_CHECK_ATOL[name] + 1e-4 * float(np.abs(ref).max()):
                raise SonogateError(f"ONNX output {name} differs from torch by {diffs[name]:.2e}: {path}")
        return diffs

    def load_data(self, ckpt: dict, opts: ExportOptions, pre: Preprocessing, parity_frames: int) -> ExportData:
        root = Path(opts.parity_data or ckpt["data"]["path"])
        val = read_knee_split(root, "val")
        pick = pick_subset(len(val), parity_frames, opts.seed)
        paths = [val.paths[i] for i in pick]
        images = load_knee_images(paths, pre.height, opts.progress, "load val radiographs")
        train = read_knee_split(Path(opts.calib_data or ckpt["data"]["path"]), "train")
        cal_pick = pick_subset(len(train), opts.calib_frames, opts.seed)
        cal = load_knee_images([train.paths[i] for i in cal_pick], pre.height, opts.progress, "load calibration")
        return ExportData(x_par=normalised_inputs(images, pre), x_cal=normalised_inputs(cal, pre),
                          description={"source": f"{root} split val (real knee radiographs, expert KL grades)",
                                       "n_images": len(paths)},
                          context={"truth": val.grades[pick]})

    def comparer(self, ckpt: dict, data: ExportData, ref: dict[str, np.ndarray]) -> Callable[[dict], dict]:
        from sonogate.calibration.ordinal_metrics import ordinal_report

        truth = data.context["truth"]
        ref_grades = median_grades(ref["kl_logits"])

        def compare(outputs: dict) -> dict:
            grades = median_grades(outputs["kl_logits"])
            report = ordinal_report(truth, grades, KL_GRADES)
            return {"grade_agreement_with_float": round(float(np.mean(grades == ref_grades)), 4),
                    "probability_mae_vs_float": round(float(np.abs(_softmax(outputs["kl_logits"])
                                                                   - _softmax(ref["kl_logits"])).mean()), 5),
                    "vs_truth": {k: report[k] for k in ("n", "accuracy", "mae", "qwk", "macro_recall",
                                                        "per_grade_recall")}}

        return compare

    def int8_goal(self, block: dict) -> tuple[bool, str]:
        agreement = block["grade_agreement_with_float"]
        return agreement >= AGREEMENT_GOAL, f"int8 grade agreement with float {agreement:.3f} (goal {AGREEMENT_GOAL})"

    def extra_files(self, out_dir: Path, ckpt: dict, log: Callable[[str], None]) -> dict[str, Any]:
        """ood.npz: image-statistics and feature Mahalanobis checks (train fit, val thresholds)."""
        import torch

        from sonogate.calibration.ood import fit_ood, save_ood
        from sonogate.runtime.image_stats import describe_images

        cfg = ckpt["config"]
        model = self.load_model(ckpt)
        root = Path(ckpt["data"]["path"])
        train, val = read_knee_split(root, "train"), read_knee_split(root, "val")
        pick = pick_subset(len(train), 1500, 1)
        train_images = load_knee_images([train.paths[i] for i in pick], cfg["size"])
        val_images = load_knee_images(val.paths, cfg["size"])

        int8 = out_dir / "model.int8.onnx"
        session = None
        if int8.is_file():  # the runtime runs the INT8 graph: fit the feature check on its features
            from sonogate.export.onnx_export import ort_session, run_ort

            session = ort_session(int8)

        def feats(images: np.ndarray) -> np.ndarray:
            x = (images.astype(np.float32)[:, None] / 255.0 - cfg["mean"]) / cfg["std"]
            if session is not None:
                return run_ort(session, x)["features"]
            with torch.no_grad():
                return torch.cat([model(torch.from_numpy(x[s : s + 64]))[1] for s in range(0, len(x), 64)]).numpy()

        features = fit_ood(feats(train_images), feats(val_images))
        image_stats = fit_ood(describe_images(train_images), describe_images(val_images))
        save_ood(out_dir / "ood.npz", features, image_stats)
        log(f"ood.npz: feature threshold {features['threshold']:.1f}, image-statistics threshold "
            f"{image_stats['threshold']:.1f} (99.5th percentile of val)")
        return {"ood": {"file": "ood.npz", "fit": f"{len(train_images)} training radiographs, features of the "
                                                  f"{'INT8' if session is not None else 'float'} graph",
                        "threshold": "99.5th percentile of the val radiographs",
                        "checks": ["image statistics (sonogate.runtime.image_stats)", "pooled features"]}}

    def manifest(self, ckpt: dict, pre: Preprocessing, model) -> dict[str, Any]:
        cfg = ckpt["config"]
        prov = provenance(ckpt, "knee radiograph folder", "radiographs")
        prov["attribution"] = DATA_ATTRIBUTION
        prov["training_data"]["licence"] = "CC BY 4.0 (attribution required; adaptations allowed)"
        return {
            "task": "knee_kl",
            "modality": "radiograph",
            "preprocessing": {**pre.to_json(), "resize": "letterbox", "pad_value": 0,
                              "formula": "gray_uint8 -> pad to a centred square (0) -> resize (INTER_AREA) -> "
                                         "x = (gray / 255 - mean) / std"},
            "outputs": {
                "kl_logits": {"shape": ["N", 5], "classes": list(KL_GRADES), "activation": "softmax",
                              "grade_rule": "ordinal median: the first grade whose cumulative probability >= 0.5"},
                "features": {"dim": int(cfg["feature_dim"]), "meaning": "trunk features (OOD check)"},
            },
            "model": {"architecture": f"RadiographCNN widths {list(cfg['widths'])}, trained from scratch",
                      "head": cfg["head"], "class_weights": cfg["weights"],
                      "ensemble": [{"run": m["run"], "seed": m["config"]["seed"], "train_command": m["command"],
                                    "val": m["metrics"]["val"], "chosen_epoch": m["metrics"]["chosen_epoch"]}
                                   for m in [ckpt] + list(ckpt.get("members", []))]
                      if ckpt.get("members") else None},
            "provenance": prov,
        }


EXPORTER = KneeKLExporter()


def _run_entry(run_dir: Path) -> dict:
    """The val-chosen EMA weights of one run (its best.pt), its config, val metrics and train command."""
    import torch

    best = run_dir / "best.pt"
    if not best.is_file():
        raise DataError(f"no best.pt in {run_dir} (run sonogate knee-kl train first)")
    state = torch.load(best, map_location="cpu", weights_only=False)
    cfg = dict(state["config"])
    cfg["widths"] = list(cfg["widths"])
    return {"run": str(run_dir), "config": cfg,
            "state_dict": {k: v.detach().cpu() for k, v in state["model"].items()},
            "metrics": {"val": {k: v for k, v in state["metrics"].items() if k != "confusion"},
                        "chosen_epoch": int(state["epoch"]) + 1},
            "command": (f"sonogate knee-kl train --data {cfg['data']} --out {run_dir} --epochs {cfg['epochs']} "
                        f"--size {cfg['size']} --seed {cfg['seed']} --head {cfg['head']} --lr {cfg['lr']:g} "
                        f"--ema {cfg['ema']:g} --warmup-epochs {cfg['warmup_epochs']:g} --weights {cfg['weights']} "
                        f"--augment {cfg.get('augment', 'strong')} --threads {cfg.get('threads', 1)}")}


def write_run_checkpoint(run_dir: str | Path, members: tuple[str | Path, ...] = ()) -> Path:
    """RUN_DIR/checkpoint.pt (what ``sonogate export`` reads) from the run's best.pt: the val-chosen EMA weights,
    the config, the data block with licence and attribution, and the val metrics. ``members``: further runs of the
    same input size and normalisation whose networks join the graph as an ensemble (``net.KneeKLExport``)."""
    import torch

    from sonogate.tasks.knee_kl.train import KNEE_CHECKPOINT_FORMAT

    run_dir = Path(run_dir)
    main = _run_entry(run_dir)
    cfg = main["config"]
    others = [_run_entry(Path(m)) for m in members]
    for other in others:
        if any(other["config"][k] != cfg[k] for k in ("size", "mean", "std")):
            raise DataError(f"ensemble member {other['run']} has another input (size / mean / std) than {run_dir}")
    train = read_knee_split(cfg["data"], "train")
    ckpt = {"format": KNEE_CHECKPOINT_FORMAT, "task": "knee_kl", **main,
            "data": {"path": str(Path(cfg["data"]).resolve()), "n_images": len(train), "unlabelled": [],
                     "licence": "CC BY 4.0", "attribution": DATA_ATTRIBUTION}}
    if others:
        ckpt["members"] = others
    path = run_dir / "checkpoint.pt"
    torch.save(ckpt, path)
    return path


def calibrate_bundle(bundle_dir: str | Path, data: str | Path, delta: float = 0.1, repeats: int = 200,
                     log: Callable[[str], None] = print) -> dict:
    """Fit the class sets on the bundle's own INT8 model over ``val`` and write calibration.json (module docstring).
    Returns the evaluation block (coverage and set size over repeated subject splits)."""
    from sonogate.calibration.class_sets import ConformalClassSets, mean_set_size, set_coverage
    from sonogate.calibration.ordinal_calfile import ordinal_calibration, save_ordinal_calibration
    from sonogate.core.bundle import load_bundle
    from sonogate.data.splits import split_by_group
    from sonogate.runtime.model_api import create_model

    bundle = load_bundle(bundle_dir)
    model = create_model(bundle, threads=1)
    val = read_knee_split(data, "val")
    size = model.inputs[0].height
    images = load_knee_images(val.paths, size)
    probs = np.stack([model(img)["probabilities"] for img in images])
    labels = val.grades - KL_GRADES[0]
    coverage, sizes = [], []
    for r in range(repeats):
        cal_idx, test_idx = split_by_group(val.subjects, [0.5, 0.5], seed=1000 + r)
        sets = ConformalClassSets(delta, "lac", contiguous=True).fit(probs[cal_idx], labels[cal_idx])
        predicted = sets.predict(probs[test_idx])
        coverage.append(set_coverage(predicted, labels[test_idx]))
        sizes.append(mean_set_size(predicted))
    fitted = ConformalClassSets(delta, "lac", contiguous=True).fit(probs, labels)
    final_sets = fitted.predict(probs)
    evaluation = {"method": f"{repeats} random 50/50 subject splits of val: calibrate on one half, count on the "
                            "other", "coverage_mean": float(np.mean(coverage)),
                  "coverage_p05": float(np.percentile(coverage, 5)), "mean_set_size": float(np.mean(sizes)),
                  "target": 1 - delta, "model_variant": model.variant,
                  "set_size_histogram_on_val_full_fit": np.bincount(final_sets.sum(axis=1), minlength=6).tolist()}
    calibration = ordinal_calibration(
        "knee_kl", bundle.bundle_hash, KL_GRADES, fitted, unit="image", items_per_unit=1,
        guarantee=f"the true KL grade is in the set for >= {1 - delta:.0%} of images exchangeable with the val "
                  "radiographs (OAI knees, this acquisition); val also chose the training epoch",
        data={"source": f"{data} split val", "n_images": len(val), "model_variant": model.variant},
        evaluation=evaluation)
    save_ordinal_calibration(Path(bundle_dir) / "calibration.json", calibration)
    log(f"calibration.json: LAC threshold {fitted.threshold_:.3f} on {len(val)} val images; held-out coverage "
        f"{evaluation['coverage_mean']:.3f} (target {1 - delta:.2f}), mean set size {evaluation['mean_set_size']:.2f}")
    return evaluation


def export_knee_bundle(run_dir: str | Path, out: str | Path, int8_only: bool = True, force: bool = False,
                       calib_frames: int = 200, members: tuple[str | Path, ...] = (),
                       log: Callable[[str], None] = print) -> str:
    """RUN_DIR (best.pt, or checkpoint.pt) -> bundle ``out`` with the generic writer; with ``int8_only`` the float
    model is dropped after parity (its figures stay in parity.json) and the manifest rewritten; ``members``: further
    runs averaged in the graph (``write_run_checkpoint``). Returns the hash."""
    import json

    from sonogate.core.bundle import write_manifest
    from sonogate.export.bundle import FLOAT_FILE, export_bundle

    run_dir = Path(run_dir)
    if members or not (run_dir / "checkpoint.pt").is_file():
        write_run_checkpoint(run_dir, tuple(members))
    digest = export_bundle(str(run_dir), str(out), ExportOptions(force=force, calib_frames=calib_frames), log=log)
    if int8_only:
        out = Path(out)
        manifest = json.loads((out / "manifest.json").read_text())
        if "int8" not in manifest["models"]:
            raise DataError("INT8 quantisation failed: keeping the float model (rerun without --int8-only)")
        (out / FLOAT_FILE).unlink()
        manifest["models"].pop("float")
        manifest["models_left_out"] = {"float": "model.onnx (fp32) is regenerated by sonogate knee-kl export "
                                                "RUN_DIR without --int8-only; its parity figures stay in parity.json"}
        manifest.pop("files", None)
        digest = write_manifest(out, manifest)
    return digest
