"""The hip ultrasound task's demo recipe (``python -m sonogate.export.demo``; the runner is
``sonogate.export.demo``): phantom (training devices A, B, C; unlabelled frames; held-out device D) ->
``sonogate train`` -> ``sonogate export``.

The work folder keeps the data, the run (checkpoint.pt, metrics.json) and a calibration set for ``sonogate
calibrate``. Recipes: ``cpu`` (default) finishes in about 15 minutes on 2 CPU cores; ``gpu`` is the same code with
more unlabelled frames, longer SimSiam and more augmented head copies (minutes on one GPU, hours on a CPU);
``quick`` is a smoke test; ``cpu_multilook`` is ``cpu`` on twice the labelled frames in both phantom looks (schematic
and realistic, one per infant) and two display orientations (horizontal, Graf's), the base a vendor ships to
sites whose scanners look unlike the phantom (benchmarks/site_shift.py holds Graf's mirrored display out).
``--stage data|train|export`` runs one step, so training can happen on a GPU machine and
export where the bundle is built (the data are regenerated identically from the seed; keep the same ``--work``
path on both).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from sonogate.export.demo import DemoRecipe, TaskDemo


@dataclass(frozen=True)
class HipUsRecipe(DemoRecipe):
    """Sizes of the demo data and training (defaults: the committed demo bundle)."""

    n_val: int = 240
    n_calib: int = 300
    finetune_last_stage: bool = False
    ssl_batch: int = 64
    # the looks and display orientations of every phantom set (None: each device's own convention)
    styles: tuple[str, ...] = ("schematic",)
    orientations: tuple[str, ...] | None = None


QUICK = HipUsRecipe(
    n_train=60, n_unlabelled=0, n_val=20, n_calib=20, size=64, ssl_epochs=1, ssl_size=64, head_epochs=3, head_augment=1
)
# Same labelled set as the CPU recipe (label efficiency is the point); more unlabelled frames, longer SimSiam at
# a larger view size and more scanner-jittered head copies, which the held-out device benefits from.
GPU = HipUsRecipe(
    n_unlabelled=4000, ssl_epochs=30, ssl_size=128, ssl_lr=0.1, ssl_batch=128, head_epochs=60, head_augment=8
)
MULTILOOK = HipUsRecipe(n_train=2000, n_unlabelled=1200, styles=("schematic", "realistic"),
                        orientations=("horizontal", "graf"))
# Longer on the same data: more unlabelled frames and SimSiam epochs, more scanner-jittered head copies (the GPU
# recipe's levers, scaled to about an hour on 2 CPU cores)
MULTILOOK_LONG = replace(MULTILOOK, n_unlabelled=2400, ssl_epochs=8, head_epochs=60, head_augment=6)
RECIPES = {"cpu": HipUsRecipe(), "gpu": GPU, "gpu_ft": replace(GPU, finetune_last_stage=True), "quick": QUICK,
           "cpu_multilook": MULTILOOK, "cpu_multilook_long": MULTILOOK_LONG}
STAGES = ("all", "data", "train", "export")


def make_demo_bundle(out: str, work: str, seed: int = 0, recipe: HipUsRecipe = HipUsRecipe(), progress: bool = True,
                     device: str = "auto", stage: str = "all", run_name: str = "run") -> dict:
    """phantom -> train -> export (``stage`` picks one step). Returns a summary dict (paths, held-out and
    device-D MAE, timings); also written to WORK/demo_summary.json."""
    from sonogate.phantom.devices import HELDOUT_DEVICE, TRAIN_DEVICES
    from sonogate.phantom.writer import write_us_dataset

    work_dir = Path(work)
    run_dir = work_dir / run_name
    summary_path = work_dir / "demo_summary.json"
    summary = json.loads(summary_path.read_text()) if stage == "export" and summary_path.is_file() else {}
    timings = summary.setdefault("timings", {})
    common = {"size": 256, "frames_per_sweep": 1, "standard_fraction": 0.8, "chrome": False, "progress": progress,
              "style": recipe.styles, "orientations": recipe.orientations}
    # Distinct seeds per set: patient ids embed the seed, so no infant is in two sets.
    train, val, calib, unl = (work_dir / n for n in ("train", "val_device_D", "calib", "unlabelled"))
    if stage in ("all", "data"):
        t0 = time.time()
        write_us_dataset(train, recipe.n_train, seed * 10 + 1, devices=TRAIN_DEVICES, **common)
        write_us_dataset(val, recipe.n_val, seed * 10 + 2, devices=(HELDOUT_DEVICE,), **common)
        write_us_dataset(calib, recipe.n_calib, seed * 10 + 3, devices=TRAIN_DEVICES, **common)
        if recipe.n_unlabelled:
            write_us_dataset(unl, recipe.n_unlabelled, seed * 10 + 4, devices=TRAIN_DEVICES, **common)
        timings["phantom_s"] = round(time.time() - t0, 1)
    summary.update({"calibration_data": str(calib), "run": str(run_dir), "recipe": recipe.__dict__})

    if stage in ("all", "train"):
        from sonogate.tasks.hip_us.train import TrainConfig, run_training

        t0 = time.time()
        cfg = TrainConfig(
            data=str(train), out=str(run_dir), unlabelled=[str(unl)] if recipe.n_unlabelled else [],
            val_data=str(val), size=recipe.size, ssl_epochs=recipe.ssl_epochs, ssl_size=recipe.ssl_size,
            ssl_lr=recipe.ssl_lr, batch_size=recipe.ssl_batch, head=recipe.head, head_epochs=recipe.head_epochs,
            head_augment=recipe.head_augment, finetune_last_stage=recipe.finetune_last_stage, seed=seed,
            progress=progress, device=device,
        )  # fmt: skip
        metrics = run_training(cfg, log=lambda m: print(m, file=sys.stderr))
        timings["train_s"] = round(time.time() - t0, 1)
        summary["train_device"] = metrics.get("device")
        summary["heldout_infants_mae"] = {
            k: round(v["mae"], 2) for k, v in metrics["heldout"].get("vs_frame_label", {}).items()
        }
        summary["device_D_mae"] = {
            k: round(v["mae"], 2) for k, v in metrics.get("val", {}).get("vs_frame_label", {}).items()
        }

    if stage in ("all", "export"):
        from sonogate.export.bundle import ExportOptions, export_bundle

        t0 = time.time()
        summary["manifest_sha256"] = export_bundle(
            str(run_dir), out, ExportOptions(force=True, progress=progress, seed=seed),
            log=lambda m: print(m, file=sys.stderr),
        )  # fmt: skip
        summary["bundle"] = str(out)
        timings["export_s"] = round(time.time() - t0, 1)
    work_dir.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# The hip_us task's demo (its spec's parts["demo"]).
DEMO = TaskDemo(task="hip_us", build=make_demo_bundle, recipes=RECIPES, default_out="demo/bundle",
                default_work="out/demo-bundle-work", stages=STAGES, recipe_help="sizes (default cpu: ~15 min)")
