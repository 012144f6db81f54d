"""Encoder, augmentations, SimSiam, head fitting and ``sonogate train`` on tiny settings (CPU, 1 thread)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models_fixture import synthetic_folder

from sonogate.models.augment import AugmentConfig, augment
from sonogate.models.encoder import Encoder
from sonogate.models.simsiam import collapse_std, pretrain
from sonogate.tasks.hip_us.train import TrainConfig, build_model, load_checkpoint, run_training


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_folder(tmp_path_factory.mktemp("models") / "data", n=48, size=64)


def test_encoder_shapes():
    enc = Encoder().eval()
    x = torch.randn(2, 1, 64, 64)
    f2, f3, f4 = enc.forward_maps(x)
    assert f2.shape == (2, 128, 8, 8) and f3.shape == (2, 256, 4, 4) and f4.shape == (2, 512, 2, 2)
    assert enc(x).shape == (2, 512)


def test_augment_is_identity_with_everything_off_and_keeps_range():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 32, 32)
    off = AugmentConfig(out_size=32, scale=(1, 1), ratio=(1, 1), jitter_p=0, blur_p=0, noise_std=0)
    assert torch.allclose(augment(x, off, gen), x, atol=1e-5)
    y = augment(x, AugmentConfig(out_size=24), gen)
    assert y.shape == (3, 1, 24, 24) and y.min() >= 0 and y.max() <= 1


def test_no_flip_by_default_keeps_left_right_orientation():
    # A bright left half must stay on the left in every view (Graf images are never mirrored).
    x = torch.zeros(16, 1, 32, 32)
    x[..., :16] = 1.0
    y = augment(x, AugmentConfig(out_size=32, jitter_p=0, blur_p=0, noise_std=0), torch.Generator().manual_seed(1))
    assert (y[..., :8].mean((1, 2, 3)) >= y[..., -8:].mean((1, 2, 3))).all()


def test_simsiam_loss_decreases_and_collapse_is_monitored():
    rng = np.random.default_rng(0)
    images = np.clip(rng.gamma(2, 30, size=(32, 32, 32)), 0, 255).astype(np.uint8)
    for i, img in enumerate(images):  # a bar per image so two views share content
        img[:, (i % 8) * 4 : (i % 8) * 4 + 3] = 230
    torch.manual_seed(0)
    enc = Encoder()
    hist = pretrain(
        enc, images, epochs=6, batch_size=16, base_lr=8.0, aug=AugmentConfig(out_size=32), seed=0, progress=False
    )
    losses = [h["loss"] for h in hist]
    assert len(hist) == 6 and all(-1.0 <= v <= 1.0 for v in losses)
    assert np.mean(losses[-2:]) < losses[0] - 0.2, losses
    assert all(np.isfinite(h["collapse_std"]) and h["collapse_std"] > 0 for h in hist)
    assert collapse_std(torch.ones(8, 16)) == pytest.approx(0.0, abs=1e-6)  # identical outputs = collapsed


def test_run_training_writes_checkpoint_and_metrics(data, tmp_path):
    cfg = TrainConfig(
        data=str(data), out=str(tmp_path / "run"), size=64, ssl_epochs=1, head_epochs=3, batch_size=16, progress=False
    )
    metrics = run_training(cfg, log=lambda m: None)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["heldout"]["vs_frame_label"]["alpha_deg"]["mae"] == pytest.approx(
        metrics["heldout"]["vs_frame_label"]["alpha_deg"]["mae"]
    )
    assert set(on_disk["heldout"]["vs_frame_label"]) == {"alpha_deg", "beta_deg", "coverage_pct"}
    assert len(on_disk["ssl"]["history"]) == 1
    ckpt = load_checkpoint(tmp_path / "run")
    held = set(ckpt["data"]["heldout_groups"])
    assert held and len(held) < 12
    assert on_disk["train"]["n_groups"] + on_disk["heldout"]["n_groups"] == 12  # disjoint infants
    model = build_model(ckpt)
    with torch.no_grad():
        meas, plane, feats = model(torch.zeros(2, 1, 64, 64))
    assert meas.shape == (2, 3) and plane.shape == (2, 1) and feats.shape == (2, 512)
    # Outputs are in physical units: the de-standardisation lives inside the network.
    assert 20 < float(meas[:, 0].mean()) < 100


def test_cli_train_and_user_errors(data, tmp_path):
    from sonogate.models.cli import main

    out = tmp_path / "cli_run"
    args = ["--size", "64", "--ssl-epochs", "0", "--head-epochs", "2", "--batch-size", "16", "--no-progress"]
    rc = main(["train", "--data", str(data), "--out", str(out), *args, "--seed", "3"])
    assert rc == 0 and (out / "checkpoint.pt").is_file()
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert main(["train", "--data", str(data), "--out", str(out), "--device", "tpu"]) == 2


def test_cli_module_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "import argparse\n"
        "from sonogate.models.cli import register\n"
        "p = argparse.ArgumentParser(); register(p.add_subparsers())\n"
        "args = p.parse_args(['train', '--data', 'x', '--out', 'y'])\n"
        "from sonogate.errors import SonogateError\n"
        "try:\n    args.func(args)\nexcept SonogateError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "training needs the train extra: pip install .[train]"
