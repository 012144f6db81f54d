"""Phantom: labels measured from the drawn geometry, determinism, defects, devices, chrome, cine, writers, CLI.

Kept small (whole file well under 30 s on 2 shared cores): most frames are rendered at 96-128 pixels.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sonogate.errors import SonogateError
from sonogate.phantom import acoustics, chrome, cine, devices, hip_us, writer
from sonogate.phantom.cli import register
from sonogate.tasks.hip_xr import phantom as xray

pytestmark = pytest.mark.torchfree


def _window_mean(image: np.ndarray, point, radius: int = 3) -> float:
    x, y = round(point[0]), round(point[1])
    return float(image[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1].mean())


# ----------------------------------------------------------------------------------------------------------
# Geometry: labels are what the landmarks measure


@pytest.mark.parametrize("style", ["schematic", "realistic"])
def test_landmarks_recompute_labels_on_hundreds_of_random_frames(style):
    rng = np.random.default_rng(2024)
    names = list(devices.DEVICES)
    worst = {"alpha_deg": 0.0, "beta_deg": 0.0, "coverage_pct": 0.0}
    defects_seen = set()
    for i in range(240 if style == "schematic" else 64):
        params = hip_us.sample_hip_params(rng)
        defect = str(rng.choice(("",) * 4 + hip_us.ALL_DEFECTS))
        offset = float(rng.uniform(-1.2, 1.2)) if rng.random() < 0.3 else float(rng.uniform(-0.3, 0.3))
        size = int(rng.choice([64, 96, 128]))
        frame = hip_us.render_us_frame(params, rng, names[i % len(names)], size, defect, offset,
                                       probe_shift_mm=tuple(rng.normal(0, 0.8, 2)), probe_rot_deg=float(rng.normal(0, 2)),
                                       style=style)
        measured = hip_us.measure_from_landmarks(frame.landmarks)
        for key, value in worst.items():
            worst[key] = max(value, abs(measured[key] - getattr(frame, key)))
        defects_seen.add(frame.defect)
        assert frame.standard_plane == int(frame.defect == "")
        assert frame.image.shape == (size, size) and frame.image.dtype == np.uint8
    assert worst["alpha_deg"] < 0.1 and worst["beta_deg"] < 0.1 and worst["coverage_pct"] < 0.1, worst
    assert set(hip_us.ALL_DEFECTS) <= defects_seen


def test_middle_plane_frame_reproduces_hip_truth_and_plane_position_moves_alpha():
    rng = np.random.default_rng(3)
    params = hip_us.sample_hip_params(rng, "I")
    frame = hip_us.render_us_frame(params, rng, "A", 128)
    assert frame.alpha_deg == pytest.approx(params.alpha_deg, abs=1e-9)
    assert frame.beta_deg == pytest.approx(params.beta_deg, abs=1e-9)
    assert frame.coverage_pct == pytest.approx(params.coverage_pct, abs=1e-9)
    assert (frame.hip_alpha_deg, frame.hip_beta_deg, frame.hip_coverage_pct) == (
        params.alpha_deg, params.beta_deg, params.coverage_pct)
    anterior = hip_us.render_us_frame(params, rng, "A", 128, "anterior")
    posterior = hip_us.render_us_frame(params, rng, "A", 128, "posterior")
    # 3-D studies: anterior sections read a lower alpha than posterior ones (about 58 vs 64 deg).
    assert anterior.alpha_deg < params.alpha_deg < posterior.alpha_deg
    assert anterior.plane_offset < -hip_us.STANDARD_OFFSET_LIMIT < hip_us.STANDARD_OFFSET_LIMIT < posterior.plane_offset
    near = hip_us.render_us_frame(params, rng, "A", 128, "", 0.3)
    assert near.standard_plane == 1 and 0 < near.alpha_deg - params.alpha_deg < 2.0
    far = hip_us.render_us_frame(params, rng, "A", 128, "", -0.8)
    assert far.standard_plane == 0 and far.defect == "anterior"


def test_landmarks_lie_inside_the_image_for_standard_frames():
    rng = np.random.default_rng(11)
    for i in range(60):
        frame = hip_us.render_us_frame(hip_us.sample_hip_params(rng), rng, "ABCD"[i % 4], 96)
        for name in ("baseline_top", "baseline_bottom", "bony_rim", "lower_limb", "labrum", "head_center"):
            x, y = frame.landmarks[name]
            assert -0.5 <= x <= 95.5 and -0.5 <= y <= 95.5, (name, x, y, frame.device)


@settings(max_examples=40, deadline=None)
@given(
    angle=st.floats(-180, 180),
    scale=st.floats(0.2, 5.0),
    dx=st.floats(-500, 500),
    dy=st.floats(-500, 500),
    mirror=st.booleans(),
)
def test_measure_from_landmarks_is_invariant_to_similarity_transforms(angle, scale, dx, dy, mirror):
    rng = np.random.default_rng(0)
    frame = hip_us.render_us_frame(hip_us.sample_hip_params(rng), rng, "A", 64)
    ref = hip_us.measure_from_landmarks(frame.landmarks)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    moved = {}
    for name, (x, y) in frame.landmarks.items():
        x = -x if mirror else x
        moved[name] = (scale * (c * x - s * y) + dx, scale * (s * x + c * y) + dy)
    got = hip_us.measure_from_landmarks(moved)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-6)


def test_measure_from_landmarks_errors_are_one_line():
    with pytest.raises(SonogateError, match="baseline_bottom.*missing"):
        hip_us.measure_from_landmarks({"baseline_top": (0, 0)})


# ----------------------------------------------------------------------------------------------------------
# Sampling


def test_hip_sampler_covers_graf_types_with_realistic_correlations():
    rng = np.random.default_rng(5)
    hips = [hip_us.sample_hip_params(rng) for _ in range(3000)]
    alpha = np.array([h.alpha_deg for h in hips])
    beta = np.array([h.beta_deg for h in hips])
    cov = np.array([h.coverage_pct for h in hips])
    assert 35.0 <= alpha.min() and alpha.max() <= 76.0
    assert 10.0 <= cov.min() and cov.max() <= 80.0 and cov.min() < 15 and cov.max() > 75
    assert 0.30 < np.mean(alpha < 60) < 0.42  # enough abnormal hips
    assert np.mean(alpha < 43) > 0.04  # type III/IV present
    assert np.corrcoef(alpha, beta)[0, 1] < -0.75  # beta falls as alpha rises
    assert np.corrcoef(alpha, cov)[0, 1] > 0.75
    residual = beta - np.array([hip_us.beta_for_alpha(a) for a in alpha])
    assert 3.5 < residual.std() < 6.5  # with noise, not a deterministic function
    types = {h.graf_type() for h in hips}
    assert {"Ia", "Ib", "II", "IIc", "D", "III/IV"} <= types
    with pytest.raises(SonogateError):
        hip_us.sample_hip_params(rng, "V")


# ----------------------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_gives_identical_frames_and_labels(tmp_path):
    def one(seed):
        rng = np.random.default_rng(seed)
        params = hip_us.sample_hip_params(rng)
        return hip_us.render_us_frame(params, rng, "B", 96, "tilt")

    a, b, c = one(9), one(9), one(10)
    assert np.array_equal(a.image, b.image) and a.landmarks == b.landmarks and a.alpha_deg == b.alpha_deg
    assert not np.array_equal(a.image, c.image)
    ra = xray.render_xr_frame(xray.sample_xr_params(np.random.default_rng(4)), np.random.default_rng(5), 96)
    rb = xray.render_xr_frame(xray.sample_xr_params(np.random.default_rng(4)), np.random.default_rng(5), 96)
    assert np.array_equal(ra.image, rb.image) and ra.landmarks == rb.landmarks
    for run in ("x", "y"):
        writer.write_us_dataset(tmp_path / run, 6, seed=21, size=64, frames_per_sweep=2, progress=False)
    assert (tmp_path / "x" / "labels.csv").read_text() == (tmp_path / "y" / "labels.csv").read_text()
    for png in (tmp_path / "x" / "images").glob("*.png"):
        assert png.read_bytes() == (tmp_path / "y" / "images" / png.name).read_bytes()
    first = [f for f, _ in zip(cine.sweep_frames(3, 1.0, 4, size=96), range(3))]
    second = [f for f, _ in zip(cine.sweep_frames(3, 1.0, 4, size=96), range(3))]
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(first, second))


# ----------------------------------------------------------------------------------------------------------
# Off-plane / poor frames


def test_defects_change_the_picture_where_they_should():
    rng = np.random.default_rng(8)
    params = hip_us.sample_hip_params(rng, "I")
    n = acoustics.internal_size(devices.DEVICES["A"], 128)
    field = acoustics.new_speckle_field(np.random.default_rng(1), n)
    render = lambda defect, offset=0.0: hip_us.render_us_frame(
        params, np.random.default_rng(2), "A", 128, defect, offset, speckle_field=field)
    standard = render("")
    assert standard.standard_plane == 1 and standard.defect == ""
    for defect in hip_us.ALL_DEFECTS:
        frame = render(defect)
        assert frame.standard_plane == 0 and frame.defect == defect
        diff = np.abs(frame.image.astype(int) - standard.image.astype(int))
        assert (diff > 30).sum() > 15, defect  # the picture changes...
    # ...and in the right place: the echogenic labrum / lower limb are gone.
    assert _window_mean(render("no_labrum").image, standard.landmarks["labrum"]) < \
        _window_mean(standard.image, standard.landmarks["labrum"]) - 15
    assert _window_mean(render("no_lower_limb").image, standard.landmarks["lower_limb"]) < \
        _window_mean(standard.image, standard.landmarks["lower_limb"]) - 15
    # Probe tilt: the iliac contour is no longer a straight line (bright pixels off the baseline).
    tilted = render("tilt")
    assert np.abs(tilted.image.astype(int) - standard.image.astype(int))[:, : int(standard.landmarks["bony_rim"][0])].mean() > 3


def test_standard_and_offplane_frames_differ_in_image_statistics():
    rng = np.random.default_rng(12)
    diffs = []
    for _ in range(12):
        params = hip_us.sample_hip_params(rng)
        n = acoustics.internal_size(devices.DEVICES["A"], 96)
        field = acoustics.new_speckle_field(rng, n)
        a = hip_us.render_us_frame(params, rng, "A", 96, speckle_field=field).image.astype(float)
        b = hip_us.render_us_frame(params, rng, "A", 96, "posterior", speckle_field=field).image.astype(float)
        diffs.append(np.abs(a - b).mean())
    assert min(diffs) > 2.0


# ----------------------------------------------------------------------------------------------------------
# Devices


def test_device_presets_and_orientation():
    assert {"A", "B", "C", "D", "X_extreme_gain"} <= set(devices.DEVICES)
    assert devices.TRAIN_DEVICES == ("A", "B", "C") and devices.HELDOUT_DEVICE == "D"
    assert devices.DEVICES["D"].heldout and devices.DEVICES["X_extreme_gain"].ood
    assert not any(devices.DEVICES[d].heldout for d in devices.TRAIN_DEVICES)
    assert {devices.DEVICES[d].orientation for d in devices.DEVICES} == {"horizontal", "vertical"}
    rng = np.random.default_rng(1)
    params = hip_us.sample_hip_params(rng, "I")
    frames = {d: hip_us.render_us_frame(params, np.random.default_rng(2), d, 128) for d in devices.DEVICES}
    for name, frame in frames.items():
        top, bottom = np.array(frame.landmarks["baseline_top"]), np.array(frame.landmarks["baseline_bottom"])
        dx, dy = np.abs(bottom - top)
        vertical = devices.DEVICES[name].orientation == "vertical"
        assert (dy > dx) == vertical, name
        assert frame.alpha_deg == pytest.approx(params.alpha_deg)  # devices change pixels, not anatomy
    means = {d: float(f.image.mean()) for d, f in frames.items()}
    assert means["X_extreme_gain"] > means["A"] + 40  # washed out
    # Devices differ in look: pairwise image statistics are not all the same.
    assert len({round(means[d]) for d in ("A", "B", "C", "D")}) >= 3
    with pytest.raises(SonogateError):
        devices.get_device("Z")
    assert devices.parse_device_list("A, D") == ("A", "D")


def test_render_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    params = hip_us.sample_hip_params(rng)
    with pytest.raises(SonogateError, match="defect"):
        hip_us.render_us_frame(params, rng, "A", 64, "sideways")
    with pytest.raises(SonogateError, match="size"):
        hip_us.render_us_frame(params, rng, "A", 8)
    with pytest.raises(SonogateError, match="speckle_field"):
        hip_us.render_us_frame(params, rng, "A", 64, speckle_field=np.zeros((2, 5, 5), np.float32))


# ----------------------------------------------------------------------------------------------------------
# Scanner chrome


@pytest.mark.parametrize("screen_size", [(640, 480), (1280, 720), (800, 600), (480, 640)])
def test_chrome_roi_contains_the_image_exactly(screen_size):
    rng = np.random.default_rng(sum(screen_size))
    image = hip_us.render_us_frame(hip_us.sample_hip_params(rng), rng, "A", 128).image
    screen, (x, y, w, h) = chrome.add_scanner_chrome(image, rng, screen_size=screen_size, patient_name="DOE^JANE")
    assert screen.shape == (screen_size[1], screen_size[0], 3) and screen.dtype == np.uint8
    assert x > 0 and y > 0 and x + w < screen_size[0] and y + h <= screen_size[1]
    assert w == pytest.approx(h, abs=1)  # square image keeps its aspect
    expected = cv2.resize(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), (w, h), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(screen[y : y + h, x : x + w], expected)
    outside = screen.copy()
    outside[y : y + h, x : x + w] = 0
    assert (outside.max(axis=2) > 100).sum() > 500  # text, ruler and grey bar are drawn around it
    # The patient banner sits above the image, where the runtime must crop it away.
    assert (screen[:y].max(axis=2) > 100).sum() > 100


def test_chrome_rejects_tiny_screens_and_bad_images():
    rng = np.random.default_rng(0)
    with pytest.raises(SonogateError):
        chrome.add_scanner_chrome(np.zeros((64, 64), np.uint8), rng, screen_size=(100, 80))
    with pytest.raises(SonogateError):
        chrome.add_scanner_chrome(np.zeros((64, 64), np.float32), rng)
    assert "^" in chrome.fake_patient_name(rng)


# ----------------------------------------------------------------------------------------------------------
# Cine


def test_cine_mp4_and_sidecar_csv(tmp_path):
    out = cine.write_cine(tmp_path / "sweep.mp4", seconds=2.0, fps=6.0, seed=4, size=128)
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 12 and frames[0].shape == (480, 640, 3)
    with open(out.with_suffix(".csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and [int(r["frame"]) for r in rows] == list(range(12))
    assert set(cine.CSV_COLUMNS) <= set(rows[0])
    roi = tuple(int(rows[0][k]) for k in ("roi_x", "roi_y", "roi_w", "roi_h"))
    # The decoded frame shows the ultrasound inside the ROI and (mostly) black chrome outside it.
    x, y, w, h = roi
    assert frames[0][y : y + h, x : x + w].mean() > 3 * frames[0][:, : max(1, x - 20)].mean()
    plain = cine.write_cine(tmp_path / "plain.mp4", seconds=1.0, fps=4.0, seed=4, size=96, chrome=False)
    cap = cv2.VideoCapture(str(plain))
    ok, frame = cap.read()
    assert ok and frame.shape == (96, 96, 3) and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    cap.release()
    with pytest.raises(SonogateError):
        cine.write_cine(tmp_path / "x.avi", 1.0, 4.0, 0)
    with pytest.raises(SonogateError):
        next(cine.sweep_frames(0, 0.0, 10))
    with pytest.raises(SonogateError, match="no frame"):
        next(cine.sweep_frames(0, 0.01, 10))


def test_demo_length_cine_has_a_normal_and_an_abnormal_hip_with_per_frame_labels():
    labels = [label for _, label in cine.sweep_frames(7, 20.0, 2.0, size=64, chrome=False)]
    assert len(labels) == 40
    sides = [lab["side"] for lab in labels]
    assert sides[0] == "R" and sides[-1] == "L" and sides == sorted(sides, key=lambda s: s != "R")
    by_side = {s: [lab for lab in labels if lab["side"] == s] for s in "RL"}
    assert by_side["R"][0]["hip_alpha_deg"] >= 60 > by_side["L"][0]["hip_alpha_deg"]
    for side, labs in by_side.items():
        assert len({lab["hip_alpha_deg"] for lab in labs}) == 1 and len({lab["patient_id"] for lab in labs}) == 1
        standard = [lab for lab in labs if lab["standard_plane"] == 1]
        offplane = [lab for lab in labs if lab["standard_plane"] == 0]
        assert len(standard) >= 4 and len(offplane) >= 3, side
        # Standard frames vary slightly around the hip's truth (plane position), never far from it.
        assert all(abs(lab["alpha_deg"] - lab["hip_alpha_deg"]) < 2.0 for lab in standard)
        assert {lab["defect"] for lab in offplane} <= {"anterior", "posterior", "tilt"}


def test_cine_speckle_is_stable_between_neighbouring_frames():
    """Speckle moves with the tissue (shared scatterer field): neighbouring frames of a still probe differ far
    less than two renders of the same hip with fresh speckle."""
    frames = [pair[0][..., 0].astype(np.float32) for pair, _ in
              zip(cine.sweep_frames(5, 4.0, 15.0, size=96, chrome=False), range(32))]
    neighbours = [np.abs(frames[i] - frames[i + 1]).mean() for i in range(14, 30)]
    params = hip_us.sample_hip_params(np.random.default_rng(1))
    one, two = (hip_us.render_us_frame(params, np.random.default_rng(s), "A", 96).image.astype(np.float32)
                for s in (2, 3))
    independent = np.abs(one - two).mean()
    assert min(neighbours) < 0.25 * independent and np.median(neighbours) < 0.5 * independent


# ----------------------------------------------------------------------------------------------------------
# Writers (read back with the real-data reader)


@pytest.mark.parametrize("style", ["schematic", "realistic"])
def test_us_writer_output_reads_back_and_labels_recompute(tmp_path, style):
    from sonogate.data.folder import read_labelled_folder

    root = writer.write_us_dataset(tmp_path / "us", 14, seed=3, devices=("A", "C"), size=64, frames_per_sweep=3,
                                   standard_fraction=0.6, progress=False, style=style)
    data = read_labelled_folder(root, required=("patient_id", "side", "sweep_id", "alpha_deg", "standard_plane"))
    assert len(data) == 14
    assert data.load_gray(0).shape == (64, 64)
    assert set(data.landmark_names()) >= set(hip_us.LANDMARK_NAMES)
    sweeps = data.text("sweep_id")
    patients = data.text("patient_id")
    hip_alpha = data.targets(["hip_alpha_deg"])[:, 0]
    for sweep in set(sweeps):
        rows = sweeps == sweep
        assert rows.sum() <= 3 and len(set(hip_alpha[rows])) == 1 and len(set(patients[rows])) == 1
    assert set(data.text("side")) == {"R", "L"} and len(set(patients)) == 3
    assert set(data.text("device")) <= {"A", "C"}
    lm = data.landmarks()
    names = data.landmark_names()
    frame_targets = data.targets(["alpha_deg", "beta_deg", "coverage_pct"])
    for i in range(len(data)):
        measured = hip_us.measure_from_landmarks({n: tuple(lm[i, j]) for j, n in enumerate(names)})
        assert np.allclose([measured[k] for k in ("alpha_deg", "beta_deg", "coverage_pct")], frame_targets[i], atol=0.01)
    plane = data.standard_plane()
    defects = data.text("defect")
    assert all((d == "") == bool(p) for d, p in zip(defects, plane))


def test_us_writer_with_chrome_stores_screens_and_screen_landmarks(tmp_path):
    root = writer.write_us_dataset(tmp_path / "scr", 4, seed=5, size=64, frames_per_sweep=2, chrome=True,
                                   progress=False)
    with open(root / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    first = cv2.imread(str(root / rows[0]["image"]))
    assert first.shape == (480, 640, 3)
    # One layout per sweep: the image does not jump on the screen between frames of a hip.
    assert rows[0]["roi_x"] == rows[1]["roi_x"] and rows[0]["roi_w"] == rows[1]["roi_w"]
    for row in rows:
        lms = {n: (float(row[f"lm_{n}_x"]), float(row[f"lm_{n}_y"])) for n in hip_us.LANDMARK_NAMES}
        assert hip_us.measure_from_landmarks(lms)["alpha_deg"] == pytest.approx(float(row["alpha_deg"]), abs=0.01)
        x, y, w, h = (int(row[k]) for k in ("roi_x", "roi_y", "roi_w", "roi_h"))
        assert x <= lms["bony_rim"][0] <= x + w and y <= lms["bony_rim"][1] <= y + h


def test_us_writer_rejects_bad_arguments(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for kwargs in ({"n": 0}, {"n": -3}, {"frames_per_sweep": 0}, {"standard_fraction": 1.5},
                   {"devices": ("Q",)}, {"size": 10}):
        args = {"out_dir": tmp_path / "o", "n": 2, "seed": 0, "progress": False, **kwargs}
        with pytest.raises(SonogateError):
            writer.write_us_dataset(**args)
    with pytest.raises(SonogateError, match="cannot create"):
        writer.write_us_dataset(blocker / "sub", 2, 0, progress=False)


# ----------------------------------------------------------------------------------------------------------
# X-ray


def test_xray_landmarks_recompute_ai_ce_and_ihdi():
    rng = np.random.default_rng(31)
    grades, worst = set(), 0.0
    for i in range(200):
        params = xray.sample_xr_params(rng)
        frame = xray.render_xr_frame(params, rng, 64) if i >= 6 else xray.render_xr_frame(params, rng, 256)
        m = xray.measure_xr_from_landmarks(frame.landmarks)
        for side in ("left", "right"):
            worst = max(worst, abs(m[f"ai_deg_{side}"] - getattr(frame, f"ai_deg_{side}")),
                        abs(m[f"ce_deg_{side}"] - getattr(frame, f"ce_deg_{side}")))
            assert m[f"ihdi_{side}"] == getattr(frame, f"ihdi_{side}")
            grades.add(getattr(frame, f"ihdi_{side}"))
            severity = getattr(frame, f"severity_{side}")
            if severity == "normal":
                assert getattr(frame, f"ihdi_{side}") == 1 and getattr(frame, f"ai_deg_{side}") <= 30
            if severity == "dislocated":
                assert getattr(frame, f"ce_deg_{side}") < 0 and getattr(frame, f"ihdi_{side}") >= 3
        # Retuve-style aliases give the same AI (Hilgenreiner line through pel_r_i and pel_l_i).
        alias = {k: frame.landmarks[k] for k in ("pel_r_i", "pel_l_i", "pel_r_o", "pel_l_o")}
        assert xray.measure_xr_from_landmarks(alias)["ai_deg_left"] == pytest.approx(frame.ai_deg_left, abs=1e-9)
        # Radiological convention: the patient's right hip is on the image left.
        assert frame.landmarks["triradiate_r"][0] < frame.landmarks["triradiate_l"][0]
    assert worst < 0.1 and grades == {1, 2, 3, 4}


def test_xray_writer_rows_per_hip(tmp_path):
    from sonogate.data.folder import read_labelled_folder

    root = xray.write_xr_dataset(tmp_path / "xr", 3, seed=2, size=96, progress=False)
    data = read_labelled_folder(root, required=("patient_id", "side", "ai_deg", "ce_deg", "ihdi"))
    assert len(data) == 6 and list(data.text("side")) == ["R", "L"] * 3
    assert len({p.name for p in data.image_paths}) == 3
    lm = data.landmarks()
    names = data.landmark_names()
    for i in range(len(data)):
        m = xray.measure_xr_from_landmarks({n: tuple(lm[i, j]) for j, n in enumerate(names)})
        side = "right" if data.text("side")[i] == "R" else "left"
        assert m[f"ai_deg_{side}"] == pytest.approx(data.targets(["ai_deg"])[i, 0], abs=0.01)
        assert m[f"ihdi_{side}"] == data.targets(["ihdi"])[i, 0]


# ----------------------------------------------------------------------------------------------------------
# CLI and packaging


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="sonogate")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_handlers_write_data_and_raise_user_errors(tmp_path):
    args = _parse(["phantom", "us", "--n", "3", "--seed", "1", "--out", str(tmp_path / "u"), "--devices", "B,D",
                   "--size", "64", "--frames-per-sweep", "2"])
    assert args.func(args) == 0 and (tmp_path / "u" / "labels.csv").is_file()
    args = _parse(["phantom", "xr", "--n", "1", "--seed", "1", "--out", str(tmp_path / "x"), "--size", "64"])
    assert args.func(args) == 0 and len(list((tmp_path / "x" / "images").glob("*.png"))) == 1
    args = _parse(["phantom", "cine", "--seconds", "0.5", "--fps", "4", "--seed", "1",
                   "--out", str(tmp_path / "c.mp4"), "--no-chrome", "--device", "C", "--size", "64"])
    assert args.func(args) == 0 and (tmp_path / "c.csv").is_file()
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    for argv in (["phantom", "us", "--n", "0", "--out", str(tmp_path / "z")],
                 ["phantom", "us", "--n", "2", "--out", str(tmp_path / "z"), "--devices", "A,Q"],
                 ["phantom", "us", "--n", "2", "--out", str(blocker / "sub")],
                 ["phantom", "xr", "--n", "-1", "--out", str(tmp_path / "z")],
                 ["phantom", "cine", "--seconds", "0", "--out", str(tmp_path / "c.mp4")],
                 ["phantom", "cine", "--seconds", "1", "--fps", "4", "--out", str(tmp_path / "c.avi")]):
        args = _parse(argv)
        with pytest.raises(SonogateError):
            args.func(args)


def test_phantom_imports_neither_torch_nor_scipy():
    code = ("import sys; import sonogate.phantom.cine, sonogate.phantom.writer, sonogate.tasks.hip_xr.phantom, "
            "sonogate.phantom.cli, sonogate.phantom.realistic, sonogate.phantom.paired; "
            "bad = [m for m in ('torch', 'scipy') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                            cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stdout + result.stderr
