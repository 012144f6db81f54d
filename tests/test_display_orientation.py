"""A scanner that displays the hip in Graf's orientation (or its mirror): the input's ``transform`` turns the crop
back to the as-acquired orientation before the model, and ``sonogate adapt --orientation`` writes it into the
adapted bundle (issue 23, item 4)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sonogate.core.bundle import load_bundle
from sonogate.core.task import IMAGE_TRANSFORMS, InputSpec
from sonogate.errors import BundleError
from sonogate.phantom.hip_us import ORIENTATIONS, orient_image, render_us_frame, sample_hip_params
from sonogate.runtime.preprocess import ImagePreprocessor, transform_image
from sonogate.tasks.hip_us.adapt_cli import ORIENTATION_TRANSFORMS
from tests.test_adapt import DEMO, _run_cli

pytestmark = pytest.mark.torchfree


def test_each_orientations_transform_undoes_the_display():
    image = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    image[:8, :3] = 255  # not symmetric under any of the transforms
    assert set(ORIENTATION_TRANSFORMS) == set(ORIENTATIONS)
    for orientation, transform in ORIENTATION_TRANSFORMS.items():
        assert transform in IMAGE_TRANSFORMS
        np.testing.assert_array_equal(transform_image(orient_image(image, orientation), transform), image)


def test_the_model_sees_the_same_input_from_a_graf_display_as_from_the_acquired_one():
    spec = InputSpec(name="image", height=96, width=96)
    for orientation in ("graf", "graf_mirrored"):
        acquired = render_us_frame(sample_hip_params(np.random.default_rng(5)), np.random.default_rng(6), size=128,
                                   orientation="horizontal").image
        shown = render_us_frame(sample_hip_params(np.random.default_rng(5)), np.random.default_rng(6), size=128,
                                orientation=orientation).image
        assert not np.array_equal(shown, acquired)
        plain = ImagePreprocessor(spec)(acquired).copy()
        turned = ImagePreprocessor(dataclasses.replace(spec, transform=ORIENTATION_TRANSFORMS[orientation]))(shown)
        np.testing.assert_allclose(turned, plain, atol=1e-5)
    with pytest.raises(BundleError, match="transform"):
        ImagePreprocessor(dataclasses.replace(spec, transform="rotate_45"))


def test_adapt_orientation_writes_the_transform_into_the_adapted_bundle(tmp_path):
    from sonogate.phantom.writer import write_us_dataset
    from sonogate.runtime.model_api import create_model

    site = write_us_dataset(tmp_path / "site", 24, seed=41, devices=("A",), frames_per_sweep=3,
                            standard_fraction=1.0, progress=False, orientations=("graf",))
    out = tmp_path / "B_SITE"
    code = _run_cli(["adapt", "--bundle", str(DEMO), "--data", str(site), "--out", str(out), "--delta", "0.4",
                     "--orientation", "graf", "--ridge", "off", "--no-affine", "--device", "ort-cpu", "--no-progress",
                     "--check-folds", "0"])
    assert code == 0
    bundle = load_bundle(out)
    assert bundle.manifest["inputs"][0]["transform"] == "transpose"
    assert bundle.manifest["min_runtime"] == __import__("sonogate").__version__
    assert bundle.manifest["provenance"]["site_adaptation"]["transform"] == "transpose"
    model = create_model(bundle, device="ort-cpu")
    assert model.preprocessor.spec.transform == "transpose"
    # the adapted model on the Graf-displayed frames equals the base model on the same frames turned back
    base = create_model(load_bundle(DEMO), device="ort-cpu")
    frame = render_us_frame(sample_hip_params(np.random.default_rng(2)), np.random.default_rng(3), size=160,
                            orientation="graf").image
    adapted_raw = model.infer(model.preprocessor(frame)).measurements
    base_raw = base.infer(base.preprocessor(transform_image(frame, "transpose"))).measurements
    head = bundle.manifest.get("measurement_head")
    assert head is None  # --ridge off: the graph's own measurements
    np.testing.assert_allclose(adapted_raw, base_raw, atol=1e-4)


def test_an_unknown_transform_in_a_spec_is_refused():
    from sonogate.core.task import InputSpec as Spec
    from sonogate.core.task import TaskSpec, TaskSpecError

    with pytest.raises(TaskSpecError, match="transform"):
        TaskSpec(id="t", version=1, title="t", modality="US", model_type="m",
                 inputs=(Spec(name="image", height=8, width=8, transform="mirror"),), outputs=())
