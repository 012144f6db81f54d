"""Landmark head and the in-graph Graf geometry (beyond the paper: --head landmark)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models_fixture import phantom_folder

from sonogate.models.heads import LandmarkHead
from sonogate.tasks.hip_us.geometry import GRAF_LANDMARKS, GrafGeometry
from sonogate.tasks.hip_us.train import TrainConfig, run_training

hip_us = pytest.importorskip("sonogate.phantom.hip_us")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _torch_measure(points: dict) -> np.ndarray:
    coords = torch.tensor(np.array([[points[n] for n in GRAF_LANDMARKS]]), dtype=torch.float64)
    return GrafGeometry(GRAF_LANDMARKS)(coords)[0].numpy()


def test_geometry_matches_phantom_measure_on_random_configurations():
    rng = np.random.default_rng(0)
    for _ in range(300):
        points = {n: tuple(rng.uniform(0, 256, 2)) for n in GRAF_LANDMARKS}
        ref = hip_us.measure_from_landmarks(points)
        got = _torch_measure(points)
        np.testing.assert_allclose(got, [ref["alpha_deg"], ref["beta_deg"], ref["coverage_pct"]], atol=1e-6)


@pytest.mark.parametrize("device", ["A", "C", "D"])  # C is displayed vertically (Graf convention)
def test_geometry_reproduces_phantom_labels(device):
    rng = np.random.default_rng(1)
    for _ in range(5):
        frame = hip_us.render_us_frame(hip_us.sample_hip_params(rng), rng, device=device, size=96)
        got = _torch_measure(frame.landmarks)
        np.testing.assert_allclose(got[:2], [frame.alpha_deg, frame.beta_deg], atol=0.05)
        assert abs(got[2] - frame.coverage_pct) < 0.5
        # Angles do not depend on the unit: [0, 1] model coordinates give the same numbers.
        scaled = {k: ((x + 0.5) / 96, (y + 0.5) / 96) for k, (x, y) in frame.landmarks.items()}
        np.testing.assert_allclose(_torch_measure(scaled), got, atol=1e-6)


def test_soft_argmax_decodes_a_peaked_heatmap():
    head = LandmarkHead(2).eval()
    f2, f3, f4 = torch.zeros(1, 128, 8, 8), torch.zeros(1, 256, 4, 4), torch.zeros(1, 512, 2, 2)
    logits = torch.full((1, 2, 8, 8), -50.0)
    logits[0, 0, 2, 5] = 50.0  # row 2, column 5
    logits[0, 1, 7, 0] = 50.0
    head.heatmap_logits = lambda a, b, c: logits
    with torch.no_grad():
        xy = head(f2, f3, f4)[0]
    np.testing.assert_allclose(xy.numpy(), [[5.5 / 8, 2.5 / 8], [0.5 / 8, 7.5 / 8]], atol=1e-5)


def test_landmark_training_and_finetuning_run(tmp_path):
    data = phantom_folder(tmp_path / "ph", n=30, size=64, seed=2)
    for finetune in (False, True):
        out = tmp_path / f"run{int(finetune)}"
        cfg = TrainConfig(data=str(data), out=str(out), size=64, ssl_epochs=0, head_epochs=2, head="landmark",
                          finetune_last_stage=finetune, batch_size=8, progress=False)  # fmt: skip
        metrics = run_training(cfg, log=lambda m: None)
        block = json.loads((out / "metrics.json").read_text())["heldout"]["vs_frame_label"]
        assert set(block) == {"alpha_deg", "beta_deg", "coverage_pct"}
        assert all(np.isfinite(v["mae"]) for v in block.values())
        assert metrics["finetune_last_stage"] is finetune


def test_line_aware_error_discounts_sliding_along_the_line():
    from sonogate.tasks.hip_us.geometry import line_aware_error

    rng = np.random.default_rng(3)
    frame = hip_us.render_us_frame(hip_us.sample_hip_params(rng), rng, device="A", size=96)
    true = torch.tensor([[frame.landmarks[n] for n in GRAF_LANDMARKS]], dtype=torch.float64)
    u = true[0, 1] - true[0, 0]
    u = u / u.norm()
    slide, across = true.clone(), true.clone()
    slide[0, 0] += 3 * u  # baseline_top moved along the baseline: no measurement changes
    across[0, 0] += 3 * torch.stack([-u[1], u[0]])  # moved across it: alpha and beta change
    geo = GrafGeometry(GRAF_LANDMARKS)
    assert torch.allclose(geo(slide), geo(true), atol=1e-9)
    e_slide = line_aware_error(slide, true, GRAF_LANDMARKS).abs().sum()
    e_across = line_aware_error(across, true, GRAF_LANDMARKS).abs().sum()
    assert e_slide == pytest.approx(0.2 * 3, rel=1e-6) and e_across == pytest.approx(3, rel=1e-6)
