"""The image-statistics out-of-distribution check (sonogate.runtime.image_stats): what it separates, and that
the runtime refuses with it. Real ONNX Runtime, real phantom and (where present) real images."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonogate.calibration.ood import fit_ood, mahalanobis, save_ood
from sonogate.core.bundle import write_manifest
from sonogate.data.folder import resize_gray
from sonogate.phantom.hip_us import render_us_frame, sample_hip_params
from sonogate.runtime.image_stats import DESCRIPTOR_DIM, DESCRIPTOR_VERSION, ImageStats, describe_images
from tests.tiny_bundle import SIZE, write_tiny_bundle

pytestmark = pytest.mark.torchfree
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
S = 160


def _phantom(devices, n: int, seed: int, size: int = S) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        params = sample_hip_params(rng)
        frames.append(resize_gray(render_us_frame(params, rng, device=devices[i % len(devices)]).image, size, size))
    return np.stack(frames)


def _ui_text(n: int, seed: int, size: int = S) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        screen = np.zeros((240, 320), np.uint8)
        for row in range(8):
            text = "".join(chr(int(c)) for c in rng.integers(65, 90, size=16))
            cv2.putText(screen, text, (5, 25 + row * 28), cv2.FONT_HERSHEY_SIMPLEX, 0.7, 230, 2)
        out.append(resize_gray(screen, size, size))
    return np.stack(out)


@pytest.fixture(scope="module")
def fitted():
    train = describe_images(_phantom("ABC", 240, 1))
    held = describe_images(_phantom("ABC", 60, 2))
    return fit_ood(train, held, percentile=99.5)


def _refused(stats: dict, images: np.ndarray) -> float:
    dist = mahalanobis(describe_images(images), stats["mean"], stats["precision"])
    return float((dist > stats["threshold"]).mean())


def test_descriptor_is_the_same_from_uint8_and_from_the_model_tensor():
    image = _phantom("A", 1, 5)[0]
    stats = ImageStats()
    from_uint8 = stats(image).copy()
    tensor = ((image / 255.0 - 0.5) / 0.25).astype(np.float32)[None, None]
    from_tensor = stats(tensor, 0.5, 0.25).copy()
    assert from_uint8.shape == (DESCRIPTOR_DIM,)
    assert np.all(np.isfinite(from_uint8))
    np.testing.assert_allclose(from_tensor, from_uint8, atol=1e-5)


def test_in_distribution_phantom_passes_and_foreign_images_are_refused(fitted):
    assert _refused(fitted, _phantom("ABC", 60, 3)) <= 0.05
    assert _refused(fitted, _ui_text(10, 4)) == 1.0
    rng = np.random.default_rng(6)
    assert _refused(fitted, rng.integers(0, 256, size=(10, S, S), dtype=np.uint8)) == 1.0
    assert _refused(fitted, _phantom(["X_extreme_gain"], 20, 7)) == 1.0


@pytest.mark.skipif(not (SHARED / "hip-us-standard-plane").is_dir(), reason="../shared/data not present")
def test_real_hip_ultrasound_is_outside_a_phantom_fit(fitted):
    """A phantom-trained bundle has no calibration for real scans: every real plane must be refused."""
    paths = sorted(glob.glob(str(SHARED / "hip-us-standard-plane" / "SPJ_dataset" / "**" / "*.png"), recursive=True))
    images = np.stack([resize_gray(cv2.imread(p, cv2.IMREAD_GRAYSCALE), S, S) for p in paths])
    assert len(images) == 51
    assert _refused(fitted, images) == 1.0


def test_session_refuses_with_the_bundle_image_check(tmp_path):
    """A bundle whose image check was fitted on speckled frames refuses a frame of text (out_of_distribution,
    image distance above threshold), and accepts a frame like its fit."""
    from sonogate.runtime.session import Session
    from tests.tiny_bundle import speckled_frame

    folder = write_tiny_bundle(tmp_path / "bundle", calibrate=False)
    rng = np.random.default_rng(0)
    fit_frames = np.stack([resize_gray(cv2.cvtColor(speckled_frame(150, rng), cv2.COLOR_BGR2GRAY), SIZE, SIZE)
                           for _ in range(80)])
    stats = fit_ood(describe_images(fit_frames[:60]), describe_images(fit_frames[60:]), percentile=100.0)
    stats["threshold"] *= 1.5  # a margin: the frames below are new draws
    features = {"mean": np.zeros(512), "precision": np.eye(512), "threshold": 1e9, "percentile": 100.0,
                "shrinkage": 0.0, "n_train": 1, "n_heldout": 0}
    save_ood(folder / "ood.npz", features, stats)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("files", None)
    manifest["ood"] = {"file": "ood.npz", "metric": "mahalanobis", "threshold": 1e9,
                       "image_descriptor": DESCRIPTOR_VERSION, "image_threshold": float(stats["threshold"])}
    write_manifest(folder, manifest)

    with Session(folder, device="ort-cpu") as session:
        like_fit = session.process(speckled_frame(150, rng))
        assert like_fit["image_ood_distance"] is not None
        assert like_fit["image_ood_distance"] <= stats["threshold"]
        assert like_fit["out_of_distribution"] is False
        text = np.zeros((96, 96, 3), np.uint8)
        for row in range(5):
            cv2.putText(text, "ABCDEFG", (2, 15 + row * 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (230, 230, 230), 1)
        session.reset(roi=(0, 0, 96, 96))
        refused = session.process(text)
        assert refused["image_ood_distance"] > stats["threshold"]
        assert refused["out_of_distribution"] is True
        assert refused["recommendation"] != "us_sufficient"
