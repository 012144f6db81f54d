"""bmd on a new device: the site's own screening bound (``calibrate.fit_site_calibration``, a statistical test of
the screening guarantee) and ``sonogate bmd recalibrate`` on the shipped bundle with real ONNX Runtime (phantom
radiographs of the held-out device E)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sonogate.calibration.calfile import load_calibration
from sonogate.core.bundle import load_bundle
from sonogate.tasks.bmd.calibrate import (
    OSTEOPOROSIS_G_CM2,
    cleared,
    fit_site_calibration,
    minimum_osteoporotic,
    osteoporotic_images,
)

SHIPPED = Path(__file__).resolve().parents[1] / "bundles" / "bmd"
DELTA = 0.1


def _device(rng, n: int, bias: float = 0.04) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A device whose model reads high by ``bias`` and shrinks toward the mean (slope 0.6): its osteoporotic hips
    are overestimated most, the error a screening bound must absorb."""
    true = np.clip(rng.normal(0.72, 0.14, (n, 2)), 0.3, 1.3)
    raw = 0.35 + 0.6 * true + bias + rng.normal(0, 0.05, (n, 2))
    return raw, true, np.ones((n, 2), dtype=bool)


@pytest.mark.torchfree
def test_site_screening_bound_clears_at_most_delta_of_osteoporotic_hips():
    rng = np.random.default_rng(0)
    need = minimum_osteoporotic(DELTA)
    assert need == 9
    shares, kept_base = [], []
    for _ in range(300):
        raw, true, inf = _device(rng, 200)
        osteo = osteoporotic_images(true, inf)
        extra = rng.choice(osteo[osteo >= 20], size=need, replace=False)
        cal = fit_site_calibration(raw, true, inf, np.arange(10), np.arange(10, 20), extra, DELTA)
        assert cal["decision_radius"] is not None and cal["decision_n"] >= need
        # judged on fresh hips of the same device
        raw_t, true_t, inf_t = _device(rng, 400)
        shares.append(cleared(raw_t, true_t, inf_t, cal)["osteoporotic_cleared_share"])
        # the bundle's radius (fitted where the model had no shrinkage), carried over with the site's affine
        carried = dict(cal, decision_radius=0.05)
        kept_base.append(cleared(raw_t, true_t, inf_t, carried)["osteoporotic_cleared_share"])
    # marginal over calibration draws: <= delta (300 draws: a standard error of about 0.01)
    assert np.mean(shares) <= DELTA + 0.02
    assert np.mean(shares) > 0.0  # the bound is used, not infinite
    assert np.mean(kept_base) > 2 * DELTA  # what the site step did before: a radius from elsewhere breaks it


@pytest.mark.torchfree
def test_too_few_osteoporotic_radiographs_refer_every_hip():
    rng = np.random.default_rng(1)
    raw, true, inf = _device(rng, 20)
    true[:, :] = np.maximum(true, OSTEOPOROSIS_G_CM2 + 0.01)  # no osteoporotic hip in the random sample
    cal = fit_site_calibration(raw, true, inf, np.arange(10), np.arange(10, 20), [], DELTA)
    assert cal["decision_radius"] is None and cal["radius"] is not None
    call = cleared(raw, true, inf, cal)
    assert call["referral_rate"] == 1.0


def _cli(argv: list[str]) -> tuple[int, str]:
    from sonogate.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not (SHIPPED / "manifest.json").is_file():
        pytest.skip("bundles/bmd not built (sonogate bmd export)")
    from sonogate.tasks.bmd.phantom import write_bmd_phantom

    root = tmp_path_factory.mktemp("site")
    write_bmd_phantom(root / "sample", 24, seed=5, device="E", progress=False)
    # enough osteoporotic radiographs that one or two refused by the runtime still leave the rank its 9
    pool = write_bmd_phantom(root / "pool", 240, seed=6, device="E", progress=False)
    # the site's DEXA-confirmed osteoporotic patients: the pool's radiographs with an osteoporotic hip
    with open(pool / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    osteo = {r["image"] for r in rows if float(r["t_score"]) <= -2.5 and r["in_field"] == "1"}
    target = root / "osteoporotic"
    (target / "images").mkdir(parents=True)
    with open(target / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["image"] in osteo)
    for name in osteo:
        shutil.copy(pool / name, target / name)
    return root, len(osteo)


@pytest.mark.torchfree
def test_recalibrate_without_osteoporotic_patients_refers_every_hip(site, tmp_path):
    root, _ = site
    out = tmp_path / "bundle_E"
    code, text = _cli(["bmd", "recalibrate", "--bundle", str(SHIPPED), "--data", str(root / "sample"),
                       "--out", str(out)])
    assert code == 0, text
    assert "every hip is referred" in text and "--osteoporotic" in text
    assert "not bound to a device" in text  # no --device: said, not silently inherited
    bundle = load_bundle(out)
    base = load_bundle(SHIPPED)
    provenance = bundle.manifest["provenance"]["site_recalibration"]
    assert provenance["base_manifest_sha256"] == base.bundle_hash and len(provenance["data_sha256"]) == 64
    assert provenance["n_radiographs"] == 24 and provenance["screening_radius_g_cm2"] is None
    cal = load_calibration(bundle.calibration_path, bundle_hash=bundle.bundle_hash)  # bound to the new manifest
    assert cal.measurements["bmd_g_cm2_decision"].radius is None
    assert 0 < cal.measurements["bmd_g_cm2"].radius < 0.5
    from sonogate.runtime.model_api import create_model
    from sonogate.tasks.bmd.model import REFERRAL

    model = create_model(out, device="ort-cpu")
    from sonogate.data.folder import load_gray_image

    for name in sorted((root / "sample" / "images").glob("*.png"))[:4]:
        rows = model.analyze(load_gray_image(name), None, [])["rows"]
        assert all(r["referral"] == REFERRAL for r in rows)
        assert all(r["bmd_lower"] is not None for r in rows if r.get("status") != "error")


@pytest.mark.torchfree
def test_recalibrate_with_osteoporotic_patients_calibrates_the_screening_bound(site, tmp_path):
    root, n_osteo = site
    assert n_osteo >= minimum_osteoporotic(DELTA) + 2
    out = tmp_path / "bundle_E"
    code, text = _cli(["bmd", "recalibrate", "--bundle", str(SHIPPED), "--data", str(root / "sample"),
                       "--osteoporotic", str(root / "osteoporotic"), "--out", str(out),
                       "--device", "sonogate  phantom E"])
    assert code == 0, text
    bundle = load_bundle(out)
    cal = load_calibration(bundle.calibration_path, bundle_hash=bundle.bundle_hash)
    # bound to the site's device (blanks normalised); the base bundle's phantom devices A-D are not carried over
    assert cal.guarantee["devices"] == ["sonogate phantom E"]
    base = load_calibration(load_bundle(SHIPPED).calibration_path)
    assert base.guarantee["devices"] == [f"sonogate phantom {d}" for d in "ABCD"]
    decision = cal.measurements["bmd_g_cm2_decision"]
    assert decision.radius is not None and decision.n >= minimum_osteoporotic(DELTA)
    assert decision.k <= decision.n
    summary = bundle.manifest["provenance"]["site_recalibration"]
    assert summary["n_osteoporotic_radiographs"] == decision.n
    assert json.loads((out / "calibration.json").read_text())["data"]["osteoporotic"].endswith("osteoporotic")


@pytest.mark.torchfree
def test_recalibrate_refuses_too_few_radiographs_and_bad_labels(site, tmp_path):
    root, _ = site
    small = tmp_path / "small"
    (small / "images").mkdir(parents=True)
    with open(root / "sample" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    keep = sorted({r["image"] for r in rows})[:8]
    with open(small / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "patient_id", "side", "bmd_g_cm2"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r for r in rows if r["image"] in keep)
    for name in keep:
        shutil.copy(root / "sample" / name, small / name)
    code, text = _cli(["bmd", "recalibrate", "--bundle", str(SHIPPED), "--data", str(small),
                       "--out", str(tmp_path / "b1")])
    assert code != 0 and "needs at least 18" in text and "Traceback" not in text
    assert not (tmp_path / "b1" / "manifest.json").exists()
    (small / "labels.csv").write_text("image,patient_id,side\nimages/x.png,p1,R\n")
    code, text = _cli(["bmd", "recalibrate", "--bundle", str(SHIPPED), "--data", str(small),
                       "--out", str(tmp_path / "b2")])
    assert code != 0 and "bmd_g_cm2" in text and "Traceback" not in text
