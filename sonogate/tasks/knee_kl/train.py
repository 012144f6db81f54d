"""Training recipe of the ``knee_kl`` task (torch): a small CNN from scratch with an ordinal head on the real knee
radiographs, every choice on ``val``.

``run_knee_training(cfg, log)``: reads ``cfg.data`` (the knee-oa-kl-xray folder; ``train`` and ``val`` splits by
subject), trains ``KneeKLNet`` (``RadiographCNN`` trunk + CORAL / CORN / softmax head) on ``train`` with
class-imbalance weights, augmentation (rotation, zoom, shift, mirror, contrast / gamma, noise), AdamW with a warm-up
and cosine decay, and an exponential moving average (EMA) of the weights; after each epoch evaluates the EMA
weights on ``val`` (accuracy, MAE, QWK, per-grade recall) and writes ``OUT/last.pt`` (resumable: a rerun with the
same OUT continues; a rerun with a larger ``--epochs`` extends the run, recorded in ``extensions``), ``OUT/best.pt``
(the epoch with the lowest val MAE, ties by QWK) and ``OUT/history.json``.
Torch runs on one thread unless ``cfg.threads`` says otherwise (shared CPU).

CLI: ``sonogate knee-kl train --data DIR --out RUN_DIR`` (the task's ``cli`` part) or
``python -m sonogate.tasks.knee_kl.train``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sonogate.calibration.ordinal_metrics import ordinal_report
from sonogate.errors import DataError, SonogateError
from sonogate.models.ordinal import HEAD_KINDS, WEIGHT_KINDS, class_weights, predict_grade
from sonogate.models.radiograph_cnn import augment_radiographs
from sonogate.models.schedule import WeightAverage, warmup_cosine_lr
from sonogate.tasks.knee_kl.data import KL_GRADES, load_knee_images, read_knee_split
from sonogate.tasks.knee_kl.net import KneeKLNet
from sonogate.tasks.knee_kl.train_args import add_train_arguments

KNEE_CHECKPOINT_FORMAT = "sonogate-knee-kl-run/1"


@dataclass
class KneeTrainConfig:
    """Everything that decides a knee run (saved in every checkpoint)."""

    data: str
    out: str
    size: int = 224
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.3
    head: str = "softmax"
    weights: str = "effective"
    beta: float = 0.999
    widths: tuple[int, ...] = (24, 32, 64, 128, 256)
    feature_dim: int = 256
    dropout: float = 0.2
    ema: float = 0.995
    mean: float = 0.5
    std: float = 0.25
    seed: int = 0
    threads: int = 1
    log_every: int = 20
    augment: str = "light"


# Augmentation strengths (``sonogate.models.radiograph_cnn.augment_radiographs`` arguments). "strong" stalled a
# from-scratch trunk at the class prior for 200+ steps in a 96 px probe where no augmentation learned at once;
# "light" keeps the mirror and small jitters.
AUGMENT = {
    "none": None,
    "light": {"rotate_deg": 5.0, "zoom": (0.95, 1.05), "shift": 0.03, "contrast": 0.1, "brightness": 0.03,
              "gamma": 0.1, "noise_std": 0.01},
    "strong": {},
}


def normalise01(x01: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return (x01 - mean) / std


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray, mean: float, std: float, batch: int = 64) -> torch.Tensor:
    """Head logits of uint8 (N, S, S) images, eval mode, in batches."""
    model.eval()
    outs = []
    for s in range(0, len(images), batch):
        x = torch.from_numpy(images[s : s + batch]).float()[:, None] / 255.0
        outs.append(model(normalise01(x, mean, std)))
    return torch.cat(outs)


def evaluate(logits: torch.Tensor, grades: np.ndarray, kind: str) -> dict:
    """Ordinal report of both grade rules; the "median" rule's figures at the top level."""
    report = {}
    for rule in ("median", "mode"):
        pred = predict_grade(logits, kind, rule).numpy()
        report[rule] = ordinal_report(grades, pred, KL_GRADES)
    top = dict(report["median"])
    top["mode_rule"] = {k: report["mode"][k] for k in ("accuracy", "mae", "qwk", "macro_recall")}
    return top


def _better(metrics: dict, best: dict | None) -> bool:
    if best is None:
        return True
    return (metrics["mae"], -metrics["qwk"]) < (best["mae"], -best["qwk"])


def run_knee_training(cfg: KneeTrainConfig, log=print) -> dict:
    """Train (or resume) one knee run; returns the best epoch's val metrics (see the module docstring)."""
    if cfg.head not in HEAD_KINDS:
        raise SonogateError(f"head must be one of {HEAD_KINDS}")
    if cfg.augment not in AUGMENT:
        raise SonogateError(f"augment must be one of {tuple(AUGMENT)}")
    if cfg.weights not in WEIGHT_KINDS:
        raise SonogateError(f"weights must be one of {WEIGHT_KINDS}")
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train = read_knee_split(cfg.data, "train")
    val = read_knee_split(cfg.data, "val")
    t0 = time.time()
    train_images = load_knee_images(train.paths, cfg.size)
    val_images = load_knee_images(val.paths, cfg.size)
    log(f"loaded {len(train)} train / {len(val)} val images at {cfg.size} px in {time.time() - t0:.0f} s")

    torch.manual_seed(cfg.seed)
    model = KneeKLNet(cfg.head, cfg.widths, cfg.feature_dim, cfg.dropout)
    weights = torch.as_tensor(class_weights(train.grades, len(KL_GRADES), cfg.weights, cfg.beta))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or "bias" in name else decay).append(p)
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    ema = WeightAverage(model, cfg.ema)
    steps_per_epoch = len(train) // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    history: list[dict] = []
    extensions: list[dict] = []
    best = None
    start_epoch = 0
    last_path = out / "last.pt"
    if last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        # a resume may only raise --epochs (the cosine schedule is then recomputed over the new total: a warm
        # restart at a lower learning rate); every other setting must match the checkpoint's
        same = asdict(cfg) | {"out": state["config"]["out"], "epochs": state["config"]["epochs"]}
        if state.get("format") != KNEE_CHECKPOINT_FORMAT or state["config"] != same:
            raise SonogateError(f"{last_path} is from a different configuration; use a new --out")
        if cfg.epochs <= state["epoch"] + 1 and cfg.epochs != state["config"]["epochs"]:
            raise SonogateError(f"{last_path} already has {state['epoch'] + 1} epochs; --epochs must be larger")
        extensions = state.get("extensions", [])
        if cfg.epochs != state["config"]["epochs"]:
            extensions = extensions + [{"after_epoch": state["epoch"] + 1, "epochs_from": state["config"]["epochs"],
                                        "epochs_to": cfg.epochs}]
            log(f"extending the run from {state['config']['epochs']} to {cfg.epochs} epochs")
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        ema.state = state["ema"]
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        torch.set_rng_state(state["torch_rng"])
        log(f"resumed from {last_path} at epoch {start_epoch}")
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * start_epoch)
    rng = np.random.default_rng(cfg.seed + 1000 * start_epoch)

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = rng.permutation(len(train))
        t_epoch, running = time.time(), 0.0
        for b in range(steps_per_epoch):
            step = epoch * steps_per_epoch + b
            for group in optim.param_groups:
                group["lr"] = warmup_cosine_lr(step, total_steps, warmup, cfg.lr)
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x01 = torch.from_numpy(train_images[idx]).float()[:, None] / 255.0
            if AUGMENT[cfg.augment] is not None:
                x01 = augment_radiographs(x01, gen, **AUGMENT[cfg.augment])
            x = normalise01(x01, cfg.mean, cfg.std)
            y = torch.from_numpy(train.grades[idx])
            loss = model.head.loss(model(x), y, weights)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            ema.update(model)
            running += float(loss.detach())
            if (b + 1) % cfg.log_every == 0:
                rate = (b + 1) * cfg.batch_size / (time.time() - t_epoch)
                log(f"epoch {epoch + 1}/{cfg.epochs} step {b + 1}/{steps_per_epoch} loss {running / (b + 1):.4f} "
                    f"{rate:.1f} img/s")
        averaged = KneeKLNet(cfg.head, cfg.widths, cfg.feature_dim, cfg.dropout)
        averaged.load_state_dict(ema.state)
        metrics = evaluate(predict_logits(averaged, val_images, cfg.mean, cfg.std), val.grades, cfg.head)
        entry = {"epoch": epoch + 1, "loss": running / steps_per_epoch, "seconds": round(time.time() - t_epoch, 1),
                 **{k: metrics[k] for k in ("accuracy", "mae", "qwk", "macro_recall", "per_grade_recall")},
                 "mode_rule": metrics["mode_rule"]}
        history.append(entry)
        log(f"epoch {epoch + 1} val (EMA): acc {metrics['accuracy']:.3f} MAE {metrics['mae']:.3f} QWK "
            f"{metrics['qwk']:.3f} recall {[round(v, 2) for v in metrics['per_grade_recall'].values()]} "
            f"({entry['seconds']:.0f} s)")
        payload = {"format": KNEE_CHECKPOINT_FORMAT, "config": asdict(cfg), "epoch": epoch}
        if _better(metrics, best):
            best = {"epoch": epoch + 1, **metrics}
            torch.save({**payload, "model": ema.state, "metrics": metrics}, out / "best.pt")
        torch.save({**payload, "model": model.state_dict(), "optim": optim.state_dict(), "ema": ema.state,
                    "history": history, "best": best, "torch_rng": torch.get_rng_state(), "extensions": extensions},
                   out / "last.pt.tmp")
        (out / "last.pt.tmp").replace(last_path)
        (out / "history.json").write_text(json.dumps({"config": asdict(cfg), "history": history, "best": best,
                                                      "extensions": extensions}, indent=1))
    return best or {}


def load_knee_run(path: str | Path) -> tuple[KneeKLNet, dict]:
    """(model in eval mode, config dict) from a run's best.pt (or a run folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise DataError(f"no knee checkpoint at {path} (run sonogate knee-kl train first)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format") != KNEE_CHECKPOINT_FORMAT:
        raise DataError(f"{path} is not a knee_kl checkpoint")
    cfg = state["config"]
    model = KneeKLNet(cfg["head"], tuple(cfg["widths"]), cfg["feature_dim"], cfg["dropout"])
    model.load_state_dict(state["model"])
    return model.eval(), cfg


def config_from_args(args) -> KneeTrainConfig:
    return KneeTrainConfig(
        data=args.data, out=args.out, size=args.size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, head=args.head, weights=args.weights,
        beta=args.beta, widths=tuple(int(w) for w in args.widths.split(",")), feature_dim=args.feature_dim,
        dropout=args.dropout, ema=args.ema, seed=args.seed, threads=args.threads, augment=args.augment,
    )  # fmt: skip


def train_main(args) -> int:
    best = run_knee_training(config_from_args(args), log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"best val epoch {best.get('epoch')}: accuracy {best.get('accuracy', float('nan')):.3f}, MAE "
          f"{best.get('mae', float('nan')):.3f}, QWK {best.get('qwk', float('nan')):.3f}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="train the knee_kl model")
    add_train_arguments(p)
    sys.exit(train_main(p.parse_args()))
