"""Train the vertebra completion network on a spine phantom folder (``write_spine_phantom``), CPU.

``python -m sonogate.tasks.spine.train --data DIR --out RUN --mode early+late --epochs E``

* Data: one phantom folder or several (``--data A,B``: concatenated, case names prefixed by the folder's name).
* Split: the phantom's recorded split (``meta.json`` ``split``): test cases come from held-out source shapes.
  Validation: the training cases of some training source shapes (``--val-sources``; default: one source,
  the first by name whose level another training source also has), so validation is by source as well.
* Inputs per case: ``us_partial.ply``, ``xray_points.ply`` (2,048 points each, mm), truth ``complete.ply``.
  Augmentation: left-right mirror (x -> -x, all three clouds) with probability 0.5. ``--train-points P``
  feeds a random P-point subset of each input cloud during training (cheaper steps; evaluation always uses
  every point).
* Resumable: ``RUN/checkpoint.pt`` (model, optimiser, epoch, best validation state, history) is written after
  every epoch; rerunning the command continues from it up to ``--epochs``. ``--max-minutes`` stops training
  early (after the epoch that crosses it) and still evaluates.
* Output: ``RUN/metrics.json``: per mode, the held-out test and validation figures (``metrics.summarise``:
  body / arch / whole, CD-L2 x 10^4, CD-L1, F1 at 1 mm, mm errors), the same figures for the raw ultrasound
  cloud as a no-completion reference, the training history, time and settings; ``RUN/model.onnx`` (opset 17,
  checked against torch) unless ``--no-onnx``. Several modes (``--mode us,early+late`` or ``all``) train one
  after the other in ``RUN/<mode>/`` and ``RUN/metrics.json`` collects them.
* ``--no-xray-seed``: the network without the lifted X-ray points in its coarse cloud (``net.XraySeed``), the
  first version; the checkpoint records the configuration (``net_config``) and refuses to resume another.
* ``--xray-embedding half_path``: the X-ray cloud's lateral coordinate carries half the bone path length the
  radiograph measured at that pixel (``phantom.embed_xray``) instead of 0 (``plane``, the paper's z-embedding).
* ``--mid-plane us``: the X-ray's mid-sagittal plane at the ultrasound centroid's x instead of x = 0 of the input
  frame (which in the phantom is the true shape's centroid: a privilege no real frame gives).
* ``--refine-steps 2``: a second refinement step that moves each completed point once more (``net.Refiner``).
* ``--init-from RUN``: a warm start from another run's best weights (same mode; a second refinement step that run
  lacks starts as the identity). The chain of such runs is kept in the checkpoint (``warm_start``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sonogate.errors import DataError, SonogateError
from sonogate.tasks.spine import metrics as spine_metrics
from sonogate.tasks.spine.phantom import embed_xray
from sonogate.tasks.spine.ply import read_ply

N_POINTS = 2048


@dataclass
class CaseSet:
    """Stacked phantom cases: us, xray, complete (C, 2048, 3) float32 mm; names, sources, levels, splits."""

    us: np.ndarray
    xray: np.ndarray
    complete: np.ndarray
    names: list[str]
    sources: list[str]
    levels: list[str]
    splits: list[str]
    folders: list[str] = field(default_factory=list)  # each case's folder (for its xray.png)

    def subset(self, mask) -> CaseSet:
        index = np.flatnonzero(np.asarray(mask, bool))
        pick = [self.names, self.sources, self.levels, self.splits, self.folders]
        return CaseSet(self.us[index], self.xray[index], self.complete[index],
                       *[[values[i] for i in index] if values else [] for values in pick])

    def __len__(self) -> int:
        return len(self.names)


def _read_cloud(path: Path, xray_embedding: str | None = None) -> np.ndarray:
    """(N_POINTS, 3) float32 mm; ``xray_embedding``: an X-ray cloud (with its ``path_mm``), embedded so."""
    if not path.is_file():
        raise DataError(f"missing phantom file: {path}")
    cloud = read_ply(path)
    points = cloud.points
    if points.shape != (N_POINTS, 3) or not np.all(np.isfinite(points)):
        raise DataError(f"expected {N_POINTS} finite points in {path}, got shape {points.shape}")
    if xray_embedding is not None:
        if "path_mm" not in cloud.properties:
            raise DataError(f"{path} lacks the per-point path_mm the X-ray embedding needs")
        return embed_xray(points, cloud.properties["path_mm"], xray_embedding)
    return points.astype(np.float32)


def load_cases(data_dir, xray_embedding: str = "plane") -> CaseSet:
    """Every case folder of ``data_dir`` (sorted by name), the X-ray clouds embedded as ``xray_embedding``
    (``phantom.embed_xray``). Raises ``DataError`` if there is none."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"phantom folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if (p / "meta.json").is_file())
    if not folders:
        raise DataError(f"no phantom cases (folders with meta.json) in {root}")
    us, xray, complete, names, sources, levels, splits = [], [], [], [], [], [], []
    for folder in folders:
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"unreadable meta.json in {folder}: {exc}") from None
        if meta.get("split") not in ("train", "test") or "source_id" not in meta:
            raise DataError(f"meta.json in {folder} lacks a train/test split or a source_id")
        us.append(_read_cloud(folder / "us_partial.ply"))
        xray.append(_read_cloud(folder / "xray_points.ply", xray_embedding))
        complete.append(_read_cloud(folder / "complete.ply"))
        names.append(folder.name)
        sources.append(str(meta["source_id"]))
        levels.append(str(meta.get("level", "")))
        splits.append(str(meta["split"]))
    return CaseSet(np.stack(us), np.stack(xray), np.stack(complete), names, sources, levels, splits,
                   [str(folder) for folder in folders])


def load_folders(data_dirs, xray_embedding: str = "plane") -> CaseSet:
    """``load_cases`` of each folder in ``data_dirs`` (a comma-separated string or a list), concatenated; with
    more than one folder each case name is prefixed by its folder's name."""
    folders = [d.strip() for d in data_dirs.split(",") if d.strip()] if isinstance(data_dirs, str) else list(data_dirs)
    if len(folders) == 1:
        return load_cases(folders[0], xray_embedding)
    parts = [load_cases(folder, xray_embedding) for folder in folders]
    return CaseSet(np.concatenate([p.us for p in parts]), np.concatenate([p.xray for p in parts]),
                   np.concatenate([p.complete for p in parts]),
                   [f"{Path(folder).name}/{n}" for folder, p in zip(folders, parts) for n in p.names],
                   *[[v for p in parts for v in getattr(p, key)] for key in ("sources", "levels", "splits",
                                                                             "folders")])


def default_val_sources(cases: CaseSet) -> list[str]:
    """One training source to validate on: the first by name whose level another training source also has."""
    train = sorted({(s, lv) for s, lv, sp in zip(cases.sources, cases.levels, cases.splits) if sp == "train"})
    for source, level in train:
        if sum(1 for _, other in train if other == level) > 1:
            return [source]
    return [train[0][0]] if len(train) > 1 else []


def split_cases(cases: CaseSet, val_sources) -> tuple[CaseSet, CaseSet, CaseSet]:
    """(train, validation, test): test by the recorded split; validation = train cases of ``val_sources``."""
    is_test = np.array([s == "test" for s in cases.splits])
    is_val = np.array([(not t) and src in set(val_sources) for t, src in zip(is_test, cases.sources)])
    train = cases.subset(~is_test & ~is_val)
    if len(train) == 0:
        raise DataError("no training cases left after holding out the test and validation sources")
    return train, cases.subset(is_val), cases.subset(is_test)


def _progress(iterable, **kwargs):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, disable=not sys.stderr.isatty(), **kwargs)


def predict(net, us: np.ndarray, xray: np.ndarray, batch: int = 8) -> np.ndarray:
    """Completed clouds (C, 2048, 3) mm of ``net`` in eval mode (no gradient)."""
    import torch

    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(us), batch):
            result = net(torch.from_numpy(us[start:start + batch]), torch.from_numpy(xray[start:start + batch]))
            out.append(result["completed"].numpy())
    return np.concatenate(out) if out else np.zeros((0, N_POINTS, 3), np.float32)


def evaluate(predicted: np.ndarray, cases: CaseSet) -> dict:
    """``metrics.summarise`` over cases plus per-case body / arch CD-L2 x 1e4 (for paired comparisons)."""
    per_case = [spine_metrics.completion_metrics(p, t) for p, t in zip(predicted, cases.complete)]
    summary = spine_metrics.summarise(per_case)
    summary["per_case"] = {name: {part: round(m[part]["cd_l2_x1e4"], 4) for part in ("body", "arch", "whole")}
                           for name, m in zip(cases.names, per_case)}
    return summary


def _batches(n: int, batch: int, rng: np.random.Generator):
    order = rng.permutation(n)
    return [order[s:s + batch] for s in range(0, n, batch)]


def train_steps(net, optimiser, cases: CaseSet, rng: np.random.Generator, batch: int, train_points: int,
                kl_weight: float, mirror: bool = True, max_steps: int | None = None, desc: str = "") -> list[dict]:
    """One pass over ``cases`` (or ``max_steps`` batches); returns the loss parts of every step."""
    import torch

    from sonogate.tasks.spine.net import training_loss

    net.train()
    history = []
    batches = _batches(len(cases), batch, rng)[:max_steps]
    for index in _progress(batches, desc=desc, unit="step", leave=False):
        us, xray, complete = cases.us[index].copy(), cases.xray[index].copy(), cases.complete[index].copy()
        if mirror:
            flip = rng.random(len(index)) < 0.5
            # not the X-ray cloud: its x is 0 ("plane") or a path length ("half_path"), never a side
            for cloud in (us, complete):
                cloud[flip, :, 0] *= -1.0
        if train_points < N_POINTS:
            us = np.stack([c[rng.choice(N_POINTS, train_points, replace=False)] for c in us])
            xray = np.stack([c[rng.choice(N_POINTS, train_points, replace=False)] for c in xray])
        outputs = net(torch.from_numpy(us), torch.from_numpy(xray), torch.from_numpy(complete))
        loss, parts = training_loss(outputs, torch.from_numpy(complete), kl_weight=kl_weight)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        optimiser.step()
        history.append({**parts, "loss": float(loss.detach())})
    return history


def net_config(net) -> dict:
    """The constructor arguments that rebuild ``net`` (``CompletionNet(**config)``), kept in checkpoints."""
    return {"mode": net.mode, "n_coarse": net.n_coarse, "xray_seed": net.xray_seed is not None,
            "centre": net.centre, "xray_embedding": net.xray_embedding, "seed_share": net.seed_share,
            "seed_copies": net.seed_copies, "us_kept_share": net.us_kept_share,
            "seed_region": net.seed_region, "refine_steps": net.refine_steps, "mid_plane": net.mid_plane,
            "encoder_width": net.encoder_width, "refiner_scale": net.refiner_scale}


def train_mode(mode: str, train: CaseSet, val: CaseSet, run_dir: Path, args) -> tuple[object, dict]:
    """Train (or resume) one mode in ``run_dir``; returns (the best-validation net, its training record)."""
    import torch

    from sonogate.tasks.spine.net import CompletionNet

    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    net = CompletionNet(mode, xray_seed=not args.no_xray_seed, centre=args.centre,
                        xray_embedding=args.xray_embedding, seed_share=args.seed_share,
                        seed_copies=args.seed_copies, us_kept_share=args.us_kept_share,
                        seed_region=args.seed_region, refine_steps=args.refine_steps, mid_plane=args.mid_plane,
                        encoder_width=args.encoder_width, refiner_scale=args.refiner_scale)
    optimiser = torch.optim.Adam(net.parameters(), lr=args.lr)
    checkpoint_path = run_dir / "checkpoint.pt"
    state = {"epoch": 0, "history": [], "best_val": math.inf, "best_state": None, "seconds": 0.0,
             "rng": np.random.default_rng(args.seed).bit_generator.state}
    if checkpoint_path.is_file():
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        # a run from before a switch existed lacks its key: it was trained with the constructor's default
        saved_config = {**net_config(CompletionNet(mode)), **saved.get("net_config", net_config(net))}
        if saved.get("mode") != mode or saved_config != net_config(net):
            raise SonogateError(f"{checkpoint_path} is a {saved.get('mode')!r} run {saved.get('net_config')}, not "
                                 f"{mode!r} {net_config(net)}: use another --out")
        net.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        state = saved["state"]
        print(f"[{mode}] resuming from {checkpoint_path} after epoch {state['epoch']}", file=sys.stderr)
    elif args.init_from:
        # warm start: every weight the earlier run has; a module it lacks (a second refinement step) keeps its own
        # initialisation, which for that step is the identity
        earlier_path = Path(args.init_from) / "checkpoint.pt"
        if not earlier_path.is_file():
            raise SonogateError(f"--init-from {args.init_from}: no checkpoint.pt there")
        earlier = torch.load(earlier_path, map_location="cpu", weights_only=False)
        weights = earlier["state"].get("best_state") or earlier["model"]
        result = net.load_state_dict(weights, strict=False)
        earlier_state = earlier["state"]
        state["warm_start"] = [*earlier_state.get("warm_start", []),
                               {"run": str(args.init_from), "net_config": earlier.get("net_config"),
                                "epochs": earlier_state["epoch"], "best_epoch": earlier_state.get("best_epoch")}]
        if result.unexpected_keys or any(not k.startswith("second_refiner.") for k in result.missing_keys):
            raise SonogateError(f"{args.init_from} is not a run of this network ({earlier.get('net_config')})")
        print(f"[{mode}] starting from the weights of {args.init_from} (epoch {earlier_state.get('best_epoch')})",
              file=sys.stderr)
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    started = time.monotonic()
    budget_s = args.max_minutes * 60 if args.max_minutes else math.inf
    eval_cases = val if len(val) else train
    while state["epoch"] < args.epochs and state["seconds"] + (time.monotonic() - started) < budget_s:
        epoch = state["epoch"] + 1
        for group in optimiser.param_groups:  # cosine decay over the planned epochs
            group["lr"] = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / args.epochs)))
        steps = train_steps(net, optimiser, train, rng, args.batch, args.train_points, args.kl_weight,
                            max_steps=args.max_steps, desc=f"{mode} epoch {epoch}")
        val_cd = float(np.mean([spine_metrics.pair_metrics(p, t)["cd_l1"]
                                for p, t in zip(predict(net, eval_cases.us, eval_cases.xray), eval_cases.complete)]))
        record = {"epoch": epoch, "val_cd_l1": val_cd, "lr": optimiser.param_groups[0]["lr"],
                  **{k: float(np.mean([s[k] for s in steps])) for k in steps[0]}}
        state["history"].append(record)
        if val_cd < state["best_val"]:
            state["best_val"] = val_cd
            state["best_state"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
            state["best_epoch"] = epoch
        state["epoch"] = epoch
        state["rng"] = rng.bit_generator.state
        elapsed = state["seconds"] + time.monotonic() - started
        torch.save({"mode": mode, "net_config": net_config(net), "model": net.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "state": {**state, "seconds": elapsed}}, checkpoint_path)
        print(f"[{mode}] epoch {epoch}: loss {record['loss']:.4f} completed CD-L1 {record['cd_completed'] * 100:.2f} "
              f"mm, validation CD-L1 {val_cd * 100:.2f} mm, {elapsed / 60:.1f} min", file=sys.stderr, flush=True)
    state["seconds"] = state["seconds"] + time.monotonic() - started
    if state["best_state"] is not None:
        net.load_state_dict(state["best_state"])
    net.eval()
    return net, {"epochs": state["epoch"], "best_epoch": state.get("best_epoch"), "train_minutes":
                 round(state["seconds"] / 60, 2), "history": state["history"]}


def check_onnx(net, path: Path, us: np.ndarray, xray: np.ndarray) -> dict:
    """Export ``net`` to ``path`` and compare ONNX Runtime with torch on (us, xray) (``net.parity``); raises if they
    disagree or two ONNX Runtime runs differ."""
    import onnxruntime as ort
    import torch

    from sonogate.tasks.spine.net import export_onnx, parity

    export_onnx(net, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"us_points": us.astype(np.float32), "xray_points": xray.astype(np.float32)}
    first = session.run(["completed"], feeds)[0]
    second = session.run(["completed"], feeds)[0]
    with torch.no_grad():
        reference = net.eval()(torch.from_numpy(feeds["us_points"]), torch.from_numpy(feeds["xray_points"]))
    agreement = parity(first, reference["completed"].numpy())
    if not agreement["agrees"] or not np.array_equal(first, second):
        raise SonogateError(f"ONNX Runtime differs from torch ({agreement}) or between two runs")
    return {"path": path.name, **agreement, "repeat_identical": True}


def run(args) -> dict:
    """Train every requested mode and write RUN/metrics.json; returns its content."""
    import torch

    from sonogate.tasks.spine.net import MODES

    modes = list(MODES) if args.mode == "all" else [m.strip() for m in args.mode.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise SonogateError(f"unknown mode(s) {unknown or args.mode!r}; expected {', '.join(MODES)} or all")
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = load_folders(args.data, args.xray_embedding)
    val_sources = args.val_sources.split(",") if args.val_sources else default_val_sources(cases)
    train, val, test = split_cases(cases, val_sources)
    if len(test) == 0:
        raise DataError(f"no test cases in {args.data} (meta.json split)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    report = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    report.update({"data": str(args.data), "n_train": len(train), "n_val": len(val), "n_test": len(test),
                   "val_sources": sorted(set(val.sources)), "test_sources": sorted(set(test.sources)),
                   "normalisation": "metrics: mm / 100 (paper units); network: centred on the ultrasound "
                                    "centroid, / 100 mm, inside the graph",
                   "reference_us_input": {"test": evaluate(test.us, test)}})
    report.setdefault("modes", {})
    for mode in modes:
        run_dir = out if len(modes) == 1 else out / mode
        net, record = train_mode(mode, train, val, run_dir, args)
        entry = {"test": evaluate(predict(net, test.us, test.xray), test), **record,
                 "net_config": net_config(net),
                 "settings": {k: getattr(args, k) for k in ("epochs", "batch", "lr", "kl_weight", "train_points",
                                                            "seed", "max_minutes", "max_steps", "no_xray_seed",
                                                            "centre")},
                 "torch_threads": torch.get_num_threads()}
        if len(val):
            entry["val"] = evaluate(predict(net, val.us, val.xray), val)
        if not args.no_onnx:
            entry["onnx"] = check_onnx(net, run_dir / "model.onnx", test.us[:2], test.xray[:2])
        report["modes"][mode] = entry
        metrics_path.write_text(json.dumps(report, indent=1))
        body, arch = entry["test"]["body"], entry["test"]["arch"]
        print(f"[{mode}] test: body CD-L2x1e4 {body['cd_l2_x1e4']:.2f}, arch {arch['cd_l2_x1e4']:.2f} "
              f"({len(test)} cases) -> {metrics_path}")
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sonogate.tasks.spine.train", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="phantom folder(s) written by write_spine_phantom (comma list)")
    parser.add_argument("--out", required=True, help="run folder (checkpoint.pt, metrics.json, model.onnx)")
    parser.add_argument("--mode", default="early+late", help="us, xray, early, late, early+late; comma list or all")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--train-points", type=int, default=N_POINTS,
                        help="random subset of each input cloud per training step (<= 2048)")
    parser.add_argument("--val-sources", default="", help="comma list of training source ids to validate on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--max-minutes", type=float, default=0.0, help="stop training after this many minutes")
    parser.add_argument("--max-steps", type=int, default=None, help="at most this many batches per epoch")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export and parity check")
    parser.add_argument("--centre", choices=("us", "xray", "dual"), default="us",
                        help="normalisation centre of the fusion modes (net.CompletionNet)")
    parser.add_argument("--no-xray-seed", action="store_true",
                        help="no lifted X-ray points in the coarse cloud (the first version's network)")
    parser.add_argument("--seed-share", type=float, default=0.5,
                        help="share of the coarse points that are lifted X-ray points (net.XraySeed)")
    parser.add_argument("--seed-copies", type=int, default=2,
                        help="coarse points lifted from each seeded X-ray point, spread over its width (net.XraySeed)")
    parser.add_argument("--seed-region", choices=("all", "anterior"), default="all",
                        help="X-ray points the seed lifts: the whole silhouette or its anterior half (net)")
    parser.add_argument("--us-kept-share", type=float, default=0.0,
                        help="share of the output that is ultrasound input points, kept as measured (net)")
    parser.add_argument("--xray-embedding", choices=("plane", "half_path"), default="plane",
                        help="the X-ray cloud's x: 0 (plane, the paper's) or half the bone path length (half_path)")
    parser.add_argument("--init-from", default=None,
                        help="start from the best weights of an earlier run folder of the same mode (a warm start; a "
                             "second refinement step it lacks starts as the identity)")
    parser.add_argument("--mid-plane", choices=("frame", "us"), default="frame",
                        help="the X-ray's mid-sagittal plane: x = 0 of the input frame (the paper's convention) or the "
                             "ultrasound centroid's x (net)")
    parser.add_argument("--encoder-width", type=int, default=32,
                        help="PointNet encoder width (its global feature is 4x this before the projection) (net)")
    parser.add_argument("--refiner-scale", type=int, default=1,
                        help="widths of the first refinement step x this (1: 32 / 64 / 128) (net)")
    parser.add_argument("--refine-steps", type=int, choices=(1, 2), default=1,
                        help="refinement steps: 1 (512 -> 2,048) or 2 (then each point moved once more) (net)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch < 1 or not 16 <= args.train_points <= N_POINTS:
        parser.error("--epochs and --batch must be >= 1 and --train-points within 16..2048")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except SonogateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
