"""The BMD phantom (task ``bmd``, issue 21): population, exact DXA labels, confounders, labels.csv, bad input.

Torch-free; numpy + OpenCV only. Radiographs are rendered at 256 px to keep the file fast.
"""

from __future__ import annotations

import csv
import math
from dataclasses import replace

import cv2
import numpy as np
import pytest

from sonogate.errors import DataError
from sonogate.tasks.bmd import phantom
from sonogate.tasks.bmd.phantom import (
    DEVICES,
    HELD_OUT_DEVICES,
    LABEL_COLUMNS,
    LANDMARK_NAMES,
    TRAIN_DEVICES,
    YOUNG_FEMALE_MEAN_G_CM2,
    YOUNG_FEMALE_SD_G_CM2,
    dxa_neck_bmd,
    follow_up,
    neck_bmd_g_cm2,
    phantom_main,
    population_bmd,
    render_radiograph,
    sample_subject,
    t_score,
    with_hip_out_of_field,
    write_bmd_phantom,
)

pytestmark = pytest.mark.torchfree

SIZE = 256


def _subjects(n: int, seed: int = 0, device=None):
    rng = np.random.default_rng(seed)
    return [sample_subject(rng, device) for _ in range(n)]


def _hips(subjects):
    return [h for s in subjects for h in s.hips.values()]


def test_same_seed_same_radiograph_and_labels():
    a = render_radiograph(sample_subject(np.random.default_rng(5)), np.random.default_rng(9), SIZE)
    b = render_radiograph(sample_subject(np.random.default_rng(5)), np.random.default_rng(9), SIZE)
    c = render_radiograph(sample_subject(np.random.default_rng(6)), np.random.default_rng(9), SIZE)
    assert a.image.dtype == np.uint8 and a.image.shape == (SIZE, SIZE)
    assert np.array_equal(a.image, b.image)
    assert a.hips == b.hips
    assert not np.array_equal(a.image, c.image)
    assert [h["side"] for h in a.hips] == ["R", "L"]


def test_writer_is_deterministic(tmp_path):
    first = write_bmd_phantom(tmp_path / "a", 3, seed=4, size=128, progress=False)
    second = write_bmd_phantom(tmp_path / "b", 3, seed=4, size=128, progress=False)
    assert (first / "labels.csv").read_text() == (second / "labels.csv").read_text()
    for png in sorted((first / "images").glob("*.png")):
        assert np.array_equal(cv2.imread(str(png)), cv2.imread(str(second / "images" / png.name)))


def test_label_ranges_and_t_score_formula():
    hips = _hips(_subjects(300))
    bmd = np.array([h.bmd_g_cm2 for h in hips])
    assert 0.30 <= bmd.min() and bmd.max() <= 1.50
    assert 0.70 < bmd.mean() < 0.88
    assert t_score(YOUNG_FEMALE_MEAN_G_CM2) == 0.0
    assert t_score(YOUNG_FEMALE_MEAN_G_CM2 - 2.5 * YOUNG_FEMALE_SD_G_CM2) == pytest.approx(-2.5)
    assert (YOUNG_FEMALE_MEAN_G_CM2, YOUNG_FEMALE_SD_G_CM2) == (0.858, 0.120)
    image = render_radiograph(_subjects(1, seed=3)[0], np.random.default_rng(0), SIZE)
    for row in image.hips:
        assert row["t_score"] == pytest.approx((row["bmd_g_cm2"] - 0.858) / 0.120)
        assert row["osteoporosis"] == int(row["t_score"] <= -2.5)
        assert 20.0 <= row["age"] <= 90.0 and row["sex"] in ("F", "M")


def test_population_follows_nhanes_and_hips_are_correlated_not_identical():
    assert population_bmd(25.0, "F") == pytest.approx((0.858, 0.1195), abs=0.002)
    assert population_bmd(25.0, "M")[0] > population_bmd(25.0, "F")[0]
    assert population_bmd(80.0, "F")[0] < population_bmd(50.0, "F")[0] < population_bmd(25.0, "F")[0]
    subjects = _subjects(4000, seed=1)
    old_women = [h.bmd_g_cm2 for s in subjects if s.sex == "F" and s.age >= 65 for h in s.hips.values()]
    share = float(np.mean(t_score(np.array(old_women)) <= -2.5))
    assert 0.12 < share < 0.25
    right = np.array([s.hips["R"].bmd_g_cm2 for s in subjects])
    left = np.array([s.hips["L"].bmd_g_cm2 for s in subjects])
    assert 0.85 < np.corrcoef(right, left)[0, 1] < 0.99
    assert 0.02 < np.std(right - left) < 0.07


def test_areal_density_of_the_rendered_neck_box_equals_the_label():
    """The label is not pasted on: the mineral of the rendered bone model (cortex, medulla, trabecular texture,
    all femur parts) averaged over the bone pixels of the neck box reproduces it at two pixel sizes."""
    for hip in _hips(_subjects(6, seed=2)):
        assert neck_bmd_g_cm2(hip) == pytest.approx(hip.bmd_g_cm2, rel=1e-9)
        assert dxa_neck_bmd(hip, 0.1) == pytest.approx(hip.bmd_g_cm2, rel=0.01)
        assert dxa_neck_bmd(hip, 0.3) == pytest.approx(hip.bmd_g_cm2, rel=0.01)


def test_neck_label_matches_an_independent_voxel_model():
    """Voxelise the neck cross-section (outer ellipse a x b; medullary ellipse shifted superiorly by half the
    cortical difference), sum the mineral along the beam and divide by the projected bone width."""
    for hip in _hips(_subjects(4, seed=3)):
        step = 0.02  # mm
        w = np.arange(-hip.neck_a_mm, hip.neck_a_mm, step) + step / 2  # across the neck, in the image plane
        z = np.arange(-hip.neck_b_mm, hip.neck_b_mm, step) + step / 2  # along the beam
        W, Z = np.meshgrid(w, z)
        outer = (W / hip.neck_a_mm) ** 2 + (Z / hip.neck_b_mm) ** 2 <= 1.0
        a_in = hip.neck_a_mm - (hip.cortex_inferior_mm + hip.cortex_superior_mm) / 2
        b_in = hip.neck_b_mm - hip.cortex_ap_mm
        shift = (hip.cortex_inferior_mm - hip.cortex_superior_mm) / 2
        medulla = ((W - shift) / a_in) ** 2 + (Z / b_in) ** 2 <= 1.0
        density = np.where(medulla, hip.trabecular_g_cm3, np.where(outer, phantom.CORTICAL_DENSITY_G_CM3, 0.0))
        areal = density.sum(axis=0) * step / 10.0  # g/cm2 per column
        bone_columns = outer.any(axis=0)
        assert areal[bone_columns].mean() == pytest.approx(hip.bmd_g_cm2, rel=0.01)


def test_low_bmd_means_thin_cortex_and_sparse_trabeculae():
    hips = _hips(_subjects(400, seed=4))
    bmd = np.array([h.bmd_g_cm2 for h in hips])
    for name in ("cortex_inferior_mm", "cortex_superior_mm", "shaft_cortex_mm", "singh_grade", "trabecular_g_cm3"):
        values = np.array([getattr(h, name) for h in hips])
        assert np.corrcoef(values, bmd)[0, 1] > 0.5, name
    low = [h for h in hips if h.bmd_g_cm2 < 0.55]
    high = [h for h in hips if h.bmd_g_cm2 > 0.95]
    assert np.mean([h.singh_grade for h in low]) < np.mean([h.singh_grade for h in high]) - 2.0


def test_confounders_are_drawn_independently_of_bmd():
    subjects = _subjects(3000, seed=5)
    bmd = np.array([(s.hips["R"].bmd_g_cm2 + s.hips["L"].bmd_g_cm2) / 2 for s in subjects])
    for name in ("soft_tissue_mm", "fat_mm", "mas", "kvp", "fov_mm", "shift_x_mm", "detector_gamma",
                 "detector_gain", "detector_offset", "noise_scale"):
        values = np.array([getattr(s.acquisition, name) for s in subjects])
        assert values.std() > 0, name
        assert abs(np.corrcoef(values, bmd)[0, 1]) < 0.06, name
    rotation = np.array([s.acquisition.internal_rotation_deg["R"] for s in subjects])
    assert abs(np.corrcoef(rotation, [s.hips["R"].bmd_g_cm2 for s in subjects])[0, 1]) < 0.06


def test_hip_rotation_changes_the_projection_not_the_label():
    hip = _subjects(1, seed=6)[0].hips["L"]
    assert dxa_neck_bmd(hip, 0.25, phi_deg=25.0) > 1.03 * dxa_neck_bmd(hip, 0.25, phi_deg=0.0)
    subject = _subjects(1, seed=6)[0]
    turned = replace(subject, acquisition=replace(subject.acquisition, internal_rotation_deg={"R": -15.0, "L": 30.0}))
    a = render_radiograph(subject, np.random.default_rng(0), SIZE).hips
    b = render_radiograph(turned, np.random.default_rng(0), SIZE).hips
    assert [h["bmd_g_cm2"] for h in a] == [h["bmd_g_cm2"] for h in b]
    assert a[0]["box_w"] != pytest.approx(b[0]["box_w"], rel=0.01)


def test_device_pinning_and_held_out_constant():
    assert set(DEVICES) == {"A", "B", "C", "D", "E", "F"}
    assert HELD_OUT_DEVICES == ("E", "F")
    assert set(TRAIN_DEVICES) | set(HELD_OUT_DEVICES) == set(DEVICES)
    assert not set(TRAIN_DEVICES) & set(HELD_OUT_DEVICES)
    assert {s.acquisition.device for s in _subjects(20, seed=7, device="E")} == {"E"}
    assert len({s.acquisition.device for s in _subjects(60, seed=7)}) == 6
    # Same patient, two devices: different images.
    subject = _subjects(1, seed=8)[0]
    images = [render_radiograph(replace(subject, acquisition=replace(subject.acquisition, device=d)),
                                np.random.default_rng(0), SIZE).image for d in ("A", "E")]
    assert np.abs(images[0].astype(int) - images[1].astype(int)).mean() > 5


def test_landmarks_and_box_sit_on_the_femur():
    subject = _subjects(1, seed=9, device="A")[0]
    result = render_radiograph(subject, np.random.default_rng(0), SIZE)
    for row in result.hips:
        assert row["in_field"] == 1
        head = np.array([row["lm_head_center_x"], row["lm_head_center_y"]])
        box = np.array([row["box_cx"], row["box_cy"]])
        gap_px = (subject.hips[row["side"]].head_radius_mm + 8.5) / row["pixel_mm"]
        assert np.hypot(*(box - head)) == pytest.approx(gap_px, rel=0.2)
        assert row["box_w"] == pytest.approx(15.0 / row["pixel_mm"], rel=0.25)
        # The right hip is on the image left, the neck runs lateral (outward) and down from the head.
        lateral = -1 if row["side"] == "R" else 1
        assert lateral * (box[0] - head[0]) > 0 and box[1] > head[1]
        assert lateral * (row["lm_greater_trochanter_x"] - head[0]) > 0
        assert row["lm_shaft_distal_y"] > row["lm_lesser_trochanter_y"] > head[1]
        # Bone in the box is brighter than the soft tissue just outside it.
        mask = np.zeros(result.image.shape, np.uint8)
        rect = ((row["box_cx"], row["box_cy"]), (row["box_w"], row["box_h"] * 0.5), row["box_angle_deg"])
        cv2.fillPoly(mask, [np.round(cv2.boxPoints(rect)).astype(np.int32)], 1)
        far = ((row["box_cx"], row["box_cy"]), (row["box_w"], row["box_h"] * 2.2), row["box_angle_deg"])
        near = ((row["box_cx"], row["box_cy"]), (row["box_w"], row["box_h"] * 1.2), row["box_angle_deg"])
        ring = np.zeros_like(mask)
        cv2.fillPoly(ring, [np.round(cv2.boxPoints(far)).astype(np.int32)], 1)
        cv2.fillPoly(ring, [np.round(cv2.boxPoints(near)).astype(np.int32)], 0)
        assert result.image[mask > 0].mean() > result.image[ring > 0].mean() + 10


def test_one_hip_out_of_field_is_flagged():
    subject = _subjects(1, seed=10)[0]
    for side in ("R", "L"):
        moved = with_hip_out_of_field(subject, side)
        rows = {h["side"]: h for h in render_radiograph(moved, np.random.default_rng(0), SIZE).hips}
        other = "L" if side == "R" else "R"
        assert rows[side]["in_field"] == 0 and rows[other]["in_field"] == 1
        assert rows[side]["bmd_g_cm2"] == subject.hips[side].bmd_g_cm2
        x = rows[side]["lm_head_center_x"]
        assert x < 0 if side == "R" else x > SIZE - 1
    with pytest.raises(DataError):
        with_hip_out_of_field(subject, "left")


def test_follow_up_keeps_the_patient_and_moves_bmd_with_time():
    subject = _subjects(1, seed=11)[0]
    repeat = follow_up(subject, np.random.default_rng(0), 0.0)
    later = follow_up(subject, np.random.default_rng(0), 3.0)
    assert repeat.visit == 1 and later.interval_years == 3.0 and later.age == pytest.approx(subject.age + 3.0)
    for side in ("R", "L"):
        assert repeat.hips[side].bmd_g_cm2 == subject.hips[side].bmd_g_cm2
        assert repeat.hips[side].neck_a_mm == subject.hips[side].neck_a_mm
        assert later.hips[side].texture_seed == subject.hips[side].texture_seed
        assert neck_bmd_g_cm2(later.hips[side]) == pytest.approx(later.hips[side].bmd_g_cm2)
    assert repeat.acquisition.device == subject.acquisition.device


def test_labels_csv_columns_rows_and_patients(tmp_path):
    root = write_bmd_phantom(tmp_path / "ds", 12, seed=3, size=128, progress=False, second_image_fraction=0.5,
                             out_of_field_fraction=0.3)
    with open(root / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    header = list(rows[0].keys())
    assert header[:7] == ["image", "patient_id", "side", "bmd_g_cm2", "t_score", "age", "sex"]
    assert tuple(header) == LABEL_COLUMNS
    for required in ("device", "kvp", "mas", "soft_tissue_mm", "internal_rotation_deg", "in_field", "box_cx",
                     "box_cy", "box_w", "box_h", "box_angle_deg"):
        assert required in header
    for name in LANDMARK_NAMES:
        assert f"lm_{name}_x" in header and f"lm_{name}_y" in header
    images = sorted({r["image"] for r in rows})
    assert len(images) == 12 and len(rows) == 24
    assert all((root / image).is_file() for image in images)
    assert all(sorted(r["side"] for r in rows if r["image"] == image) == ["L", "R"] for image in images)
    patients = {}
    for r in rows:
        patients.setdefault(r["patient_id"], set()).add(r["image"])
    assert any(len(v) == 2 for v in patients.values())  # repeats / follow-ups share patient_id
    assert any(r["in_field"] == "0" for r in rows)
    for r in rows:
        assert float(r["t_score"]) == pytest.approx((float(r["bmd_g_cm2"]) - 0.858) / 0.12, abs=1e-3)
        assert r["device"] in DEVICES and not math.isnan(float(r["box_cx"]))
    image = cv2.imread(str(root / images[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (128, 128) and image.dtype == np.uint8


def test_phantom_main_prints_and_returns_zero(tmp_path, capsys):
    assert phantom_main(tmp_path / "cli", 2, 0, 128, "f") == 0
    assert "device F" in capsys.readouterr().out
    with open(tmp_path / "cli" / "labels.csv", newline="") as handle:
        assert {r["device"] for r in csv.DictReader(handle)} == {"F"}


@pytest.mark.parametrize("call", [
    lambda tmp: write_bmd_phantom(tmp, 0, 1, progress=False),
    lambda tmp: write_bmd_phantom(tmp, 2.5, 1, progress=False),
    lambda tmp: write_bmd_phantom(tmp, 2, -1, progress=False),
    lambda tmp: write_bmd_phantom(tmp, 2, 1, size=32, progress=False),
    lambda tmp: write_bmd_phantom(tmp, 2, 1, device="Z", progress=False),
    lambda tmp: write_bmd_phantom(tmp, 2, 1, second_image_fraction=1.5, progress=False),
    lambda tmp: write_bmd_phantom(tmp / "file.txt" / "x", 2, 1, progress=False),
    lambda tmp: phantom_main(tmp, 0, 1, 128, None),
    lambda tmp: sample_subject(np.random.default_rng(0), device="G"),
    lambda tmp: sample_subject(0),
    lambda tmp: render_radiograph("subject", np.random.default_rng(0)),
    lambda tmp: render_radiograph(sample_subject(np.random.default_rng(0)), np.random.default_rng(0), size=64),
    lambda tmp: population_bmd(50.0, "X"),
    lambda tmp: dxa_neck_bmd(sample_subject(np.random.default_rng(0)).hips["R"], pixel_mm=0.0),
    lambda tmp: follow_up(sample_subject(np.random.default_rng(0)), np.random.default_rng(0), -1.0),
])
def test_bad_arguments_raise_one_line_data_error(tmp_path, call):
    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(DataError) as info:
        call(tmp_path)
    assert "\n" not in str(info.value) and str(info.value)
