"""``sonogate bmd ensemble``: one run folder from several ``sonogate bmd train`` runs (or phases of them) that share
a locator and a data folder, so ``sonogate bmd export`` puts all their regressors in one graph (torch only).

Input: member specs ``RUN`` (its final regressor) or ``RUN@PHASE`` (``supervised``, ``round1``, ... : the weights
that run saved after that phase, ``train.phase_file``). Output: OUT/checkpoint.pt (the first member's checkpoint,
its regressor replaced by the chosen phase's, the others under ``members``) and OUT/metrics.json (validation,
held-out and held-out-device figures of the ensemble, from the same code as a training run's).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from sonogate.errors import DataError
from sonogate.export.bundle import read_run_checkpoint
from sonogate.tasks.bmd.train import (
    BMD_CHECKPOINT_FORMAT,
    BmdTrainConfig,
    build_bmd_model,
    evaluate,
    load_run_data,
    phase_file,
)


def parse_member(spec: str) -> tuple[Path, str | None]:
    """``RUN`` or ``RUN@PHASE`` -> (run folder, phase or None)."""
    run, _, phase = spec.partition("@")
    return Path(run), (phase or None)


def load_member(spec: str) -> dict:
    """The checkpoint of ``spec``, its regressor replaced by the named phase's; ``member`` says where it came from."""
    run, phase = parse_member(spec)
    ckpt = read_run_checkpoint(run)
    if ckpt.get("format") != BMD_CHECKPOINT_FORMAT:
        raise DataError(f"{run} is not a sonogate BMD training run ({BMD_CHECKPOINT_FORMAT})")
    if ckpt.get("members"):
        raise DataError(f"{run} is already an ensemble: name its member runs instead")
    if phase is not None:
        state = phase_file(run, phase)
        if not state.is_file():
            saved = sorted(p.stem.removeprefix("regressor_") for p in run.glob("regressor_*.pt"))
            raise DataError(f"{run} has no saved phase {phase!r} (saved: {', '.join(saved) or 'none'})")
        ckpt["regressor"] = torch.load(state, map_location="cpu", weights_only=True)
    ckpt["member"] = {"run": str(run.resolve()), "phase": phase or "final", "command": ckpt.get("command", "")}
    return ckpt


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def combine(specs: list[str]) -> tuple[dict, list[dict]]:
    """One checkpoint of the members ``specs`` (one spec: that phase as a run) and the members' own checkpoints.
    Members must share the locator weights, the data folder and its split."""
    if not specs:
        raise DataError("name at least one --member RUN[@PHASE]")
    members = [load_member(spec) for spec in specs]
    first = members[0]
    for spec, other in zip(specs[1:], members[1:]):
        if other["data"]["path"] != first["data"]["path"] or other["data"].get("splits_seed") != first["data"].get(
                "splits_seed"):
            raise DataError(f"{spec} was trained on another data folder or split than {specs[0]}")
        if not same_tensors(other["locator"], first["locator"]):
            raise DataError(f"{spec} has another locator than {specs[0]}: train members with the same --locator")
        if other.get("context_width", 0) != first.get("context_width", 0):
            raise DataError(f"{spec} reads other inputs (context width) than {specs[0]}")
    ckpt = dict(first)
    ckpt["members"] = [{"regressor": m["regressor"], "width": m["width"], "context_width": m.get("context_width", 0),
                        "member": m["member"]} for m in members[1:]]
    ckpt["ensemble"] = [m["member"] for m in members]
    return ckpt, members


def write_ensemble_run(specs: list[str], out: str | Path, log: Callable[[str], None] = print) -> dict:
    """OUT/checkpoint.pt and OUT/metrics.json of the ensemble of ``specs`` (``combine``); returns the metrics."""
    ckpt, members = combine(specs)
    first = members[0]
    net = build_bmd_model(ckpt)
    cfg = first["config"]
    known = BmdTrainConfig.__dataclass_fields__
    run_cfg = BmdTrainConfig(**{k: v for k, v in cfg.items() if k in known})
    folder, sources, splits = load_run_data(run_cfg)
    log(f"ensemble of {len(members)}: scoring validation, held-out and held-out-device radiographs")
    with torch.no_grad():
        metrics = {
            "ensemble": ckpt["ensemble"],
            "method": cfg["method"],
            "labelled_fraction": cfg["labelled_fraction"],
            "n_labelled_images": first["metrics"]["n_labelled_images"],
            "n_unlabelled_images": first["metrics"]["n_unlabelled_images"],
            "split": {k: len(v) for k, v in splits.items()},
            "locator": first["metrics"]["locator"],
            "val": evaluate(net.regressor, net.locator, sources, folder, splits["val"]),
            "heldout": evaluate(net.regressor, net.locator, sources, folder, splits["test"]),
            "external": evaluate(net.regressor, net.locator, sources, folder, splits["external"]),
            "members_val_r": [round(float(m["metrics"]["val"]["r"]), 4) if m["member"]["phase"] == "final" else None
                              for m in members],
        }
    ckpt["metrics"] = metrics
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, root / "checkpoint.pt")
    (root / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log(f"validation r {metrics['val']['r']:.3f}, RMSE {metrics['val']['rmse']:.4f} ({root})")
    return metrics

