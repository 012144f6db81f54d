"""The hip_xr task's demo recipe (``python -m sonogate.export.demo --task hip_xr``; the runner is
``sonogate.export.demo``): a whole-pelvis X-ray demo bundle from phantom
radiographs in one seeded command.

phantom (labelled training radiographs, unlabelled radiographs, a calibration set and a test set, all distinct
patients) -> ``sonogate train --task xr`` -> ``sonogate export`` -> ``sonogate calibrate`` (per radiograph,
bound to the bundle) -> the calibrated verdict on the test set. Sized to finish in about 10-15 minutes on 2 CPU
cores; ``quick`` is a smoke test (a couple of minutes, numbers meaningless).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sonogate.export.demo import DemoRecipe, TaskDemo


@dataclass(frozen=True)
class XrDemoRecipe(DemoRecipe):
    """Sizes of the demo data, training and calibration (defaults: the demo X-ray bundle)."""

    n_train: int = 500
    n_unlabelled: int = 200
    size: int = 192
    head_epochs: int = 30
    head_augment: int = 2
    n_calib: int = 300
    n_test: int = 200
    phantom_size: int = 256
    delta: float = 0.1
    calib_mode: str = "joint"


QUICK = XrDemoRecipe(
    n_train=40, n_unlabelled=0, n_calib=24, n_test=12, phantom_size=128, size=64, ssl_epochs=1, ssl_size=64,
    head_epochs=3, head_augment=1, delta=0.2,
)  # fmt: skip
# More labelled and unlabelled radiographs, longer SimSiam, a larger input and more augmented head copies:
# minutes on one GPU (``--device cuda``), far too long for the 2-core CPU.
GPU = XrDemoRecipe(
    n_train=1000, n_unlabelled=1500, size=224, ssl_epochs=15, ssl_size=128, head_epochs=40, head_augment=4
)
RECIPES = {"cpu": XrDemoRecipe(), "gpu": GPU, "quick": QUICK}


def verdict_on(cal, table, thresholds: dict) -> dict:
    """Calibrated verdict on a labelled test table (hip rows): per-radiograph coverage of all four bounds,
    share of truly normal hips called normal within bounds, false reassurances (called normal, truly not)."""
    from sonogate.calibration.fit import group_rows

    ai_cal, ce_cal = cal.measurements["ai_deg"], cal.measurements["ce_deg"]
    pred, true = table.pred, table.true
    ai_ub = np.array([ai_cal.bound(v) for v in pred[:, 0]])
    ce_lb = np.array([ce_cal.bound(v) for v in pred[:, 1]])
    normal_call = (ai_ub <= thresholds["ai_deg"]) & (ce_lb >= thresholds["ce_deg"])
    truly_normal = (true[:, 0] <= thresholds["ai_deg"]) & (true[:, 1] >= thresholds["ce_deg"])
    valid = (true[:, 0] <= ai_ub) & (true[:, 1] >= ce_lb)
    _, rows = group_rows(table.groups)
    return {
        "n_radiographs": len(rows),
        "n_hips": len(pred),
        "radiograph_coverage_all_bounds": round(float(np.mean([valid[r].all() for r in rows])), 4),
        "normal_within_bounds_rate_among_truly_normal_hips": round(float(normal_call[truly_normal].mean()), 4)
        if truly_normal.any()
        else None,
        "false_reassurance_hips": int((normal_call & ~truly_normal).sum()),
        "radiographs_with_a_false_reassurance": int(sum((normal_call[r] & ~truly_normal[r]).any() for r in rows)),
        "ai_mae_after_affine": round(float(np.mean(np.abs(ai_cal.a * pred[:, 0] + ai_cal.b - true[:, 0]))), 3),
        "ce_mae_after_affine": round(float(np.mean(np.abs(ce_cal.a * pred[:, 1] + ce_cal.b - true[:, 1]))), 3),
    }


def make_xr_demo_bundle(out: str, work: str, seed: int = 0, recipe: XrDemoRecipe = XrDemoRecipe(),
                        progress: bool = True, device: str = "auto", stage: str = "all", run_name: str = "run") -> dict:
    """phantom -> train -> export -> calibrate -> test. Returns the summary (also in WORK/demo_xr_summary.json).
    The X-ray demo runs as a whole (``stage`` "all"); ``run_name`` is the run folder inside ``work``."""
    from sonogate.core.bundle import load_bundle
    from sonogate.export.bundle import ExportOptions, export_bundle
    from sonogate.tasks.hip_xr.calibrate import fit_xr_calibration, predict_xr_folder
    from sonogate.tasks.hip_xr.phantom import write_xr_dataset
    from sonogate.tasks.hip_xr.train import XrTrainConfig, run_xr_training

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    work_dir = Path(work)
    timings = {}
    t0 = time.time()
    common = {"size": recipe.phantom_size, "progress": progress}
    # Distinct seeds per set: patient ids embed the seed, so no patient is in two sets.
    train = write_xr_dataset(work_dir / "train", recipe.n_train, seed * 10 + 1, **common)
    calib = write_xr_dataset(work_dir / "calib", recipe.n_calib, seed * 10 + 3, **common)
    test = write_xr_dataset(work_dir / "test", recipe.n_test, seed * 10 + 5, **common)
    unlabelled = []
    if recipe.n_unlabelled:
        unlabelled = [str(write_xr_dataset(work_dir / "unlabelled", recipe.n_unlabelled, seed * 10 + 4, **common))]
    timings["phantom_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    cfg = XrTrainConfig(
        data=str(train), out=str(work_dir / run_name), unlabelled=unlabelled, size=recipe.size,
        ssl_epochs=recipe.ssl_epochs, ssl_size=recipe.ssl_size, ssl_lr=recipe.ssl_lr, head=recipe.head,
        head_epochs=recipe.head_epochs, head_augment=recipe.head_augment, seed=seed, device=device,
        progress=progress,
    )  # fmt: skip
    metrics = run_xr_training(cfg, log=log)
    timings["train_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    digest = export_bundle(cfg.out, out, ExportOptions(force=True, progress=progress, seed=seed), log=log)
    timings["export_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    bundle = load_bundle(out)
    table = predict_xr_folder(out, calib, device="auto", progress=progress)  # as sonogate analyze runs it
    cal = fit_xr_calibration(
        table,
        delta=recipe.delta,
        mode=recipe.calib_mode,
        seed=seed,
        bundle_sha256=bundle.bundle_hash,
        data={"source": "image_folder", "path": str(calib), "bundle": str(out)},
    )
    cal.save(bundle.calibration_path)
    test_table = predict_xr_folder(out, test, device="auto", progress=progress)
    timings["calibrate_and_test_s"] = round(time.time() - t0, 1)

    held = metrics["heldout"]
    summary = {
        "bundle": str(out),
        "manifest_sha256": digest,
        "run": cfg.out,
        "recipe": asdict(recipe),
        "heldout_patients": {
            "ai_deg_mae": held.get("ai_deg", {}).get("mae"),
            "ce_deg_mae": held.get("ce_deg", {}).get("mae"),
            "ce_deg_mae_not_dislocated": held.get("ce_deg_not_dislocated", {}).get("mae"),
            "ihdi_accuracy": held.get("ihdi", {}).get("accuracy"),
            "landmark_error_px": held.get("landmark_error_px", {}).get("mean"),
            "n_radiographs": held.get("n_images"),
        },
        "calibration": {
            name: {"radius": m.radius, "a": round(m.a, 4), "b": round(m.b, 3), "n": m.n, "k": m.k}
            for name, m in cal.measurements.items()
        },
        "calibration_delta": cal.delta,
        "test_set_runtime_model": verdict_on(cal, test_table, cal.thresholds),
        "timings": timings,
    }
    (work_dir / "demo_xr_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# The hip_xr task's demo (its spec's parts["demo"]).
DEMO = TaskDemo(task="hip_xr", build=make_xr_demo_bundle, recipes=RECIPES, default_out="out/xr_bundle",
                default_work="out/demo-xr-work")
