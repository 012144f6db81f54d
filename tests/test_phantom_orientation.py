"""Display orientations of the ultrasound phantom (issue 23, deliverable 4): "horizontal" (as acquired), "graf" (Graf's
display: ilium vertical, cranial up, probe on the left) and "graf_mirrored" (probe on the right).

The default stays the frames the committed bundle was trained on; each orientation is an exact transform of the image
and of every landmark, so alpha / beta / coverage recomputed from the moved landmarks equal the labels. Small frames
(64-128 px) keep the file to a few seconds on the 2 shared cores.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonogate.cli import main as sonogate_main
from sonogate.errors import SonogateError
from sonogate.phantom import cine, hip_us, writer
from sonogate.phantom.chrome import make_chrome
from sonogate.runtime.scale import estimate_ruler_scale

pytestmark = pytest.mark.torchfree

SCHEMATIC_FRAMES = Path(__file__).resolve().parent / "data" / "schematic_frames"
# The committed reference frames (see tests/test_phantom_realistic.py): seed, device, size, defect -> sha256 of pixels.
SCHEMATIC_SHA256 = {
    (0, "A", 128, ""): "1bc86103f64422a56305840902054752e5280e4edf5343c5db9e0941b21f745a",
    (1, "C", 96, "tilt"): "364181c5b8845da681b0e412f4591c1661c850ae29b950facd24292b63080579",
    (2, "B", 256, ""): "31aee88f3898ba9e950b1056b9d6243b521f30648224e6d8ca9b6782b78ef397",
}


def _frame(seed: int, device: str, size: int, defect: str = "", style: str = "schematic", **kwargs) -> hip_us.UsFrame:
    rng = np.random.default_rng(seed)
    params = hip_us.sample_hip_params(rng)
    return hip_us.render_us_frame(params, rng, device, size, defect, style=style, **kwargs)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _landmarks(row: dict) -> dict[str, tuple[float, float]]:
    return {name: (float(row[f"lm_{name}_x"]), float(row[f"lm_{name}_y"])) for name in hip_us.LANDMARK_NAMES}


@pytest.mark.parametrize("key", list(SCHEMATIC_SHA256))
def test_default_is_unchanged_and_is_the_device_convention(key):
    seed, device, size, defect = key
    reference = cv2.imread(str(SCHEMATIC_FRAMES / f"seed{seed}_{device}_{size}_{defect or 'none'}.png"),
                           cv2.IMREAD_UNCHANGED)
    assert hashlib.sha256(reference.tobytes()).hexdigest() == SCHEMATIC_SHA256[key]
    default = _frame(seed, device, size, defect)
    difference = np.abs(default.image.astype(np.int16) - reference.astype(np.int16))
    assert default.image.shape == reference.shape
    assert difference.mean() <= 0.25 and np.mean(difference > 3) <= 0.002, (difference.mean(), difference.max())
    # Naming the device's own convention changes nothing, byte for byte and label for label; only the name differs.
    convention = "graf" if device == "C" else "horizontal"
    explicit = _frame(seed, device, size, defect, orientation=convention)
    assert np.array_equal(explicit.image, default.image)
    assert explicit.landmarks == default.landmarks
    assert default.orientation == ("vertical" if device == "C" else "horizontal")
    assert explicit.orientation == convention
    for name in ("alpha_deg", "beta_deg", "coverage_pct", "standard_plane", "defect", "plane_offset", "extras"):
        assert getattr(explicit, name) == getattr(default, name)


@pytest.mark.parametrize("style", ["schematic", "realistic"])
def test_each_orientation_is_an_exact_transform_of_the_acquired_frame(style):
    for seed, device, size, defect in ((3, "A", 64, ""), (4, "B", 80, "tilt"), (5, "C", 64, "no_labrum"),
                                       (6, "D", 72, "posterior")):
        acquired = _frame(seed, device, size, defect, style, orientation="horizontal")
        graf = _frame(seed, device, size, defect, style, orientation="graf")
        mirrored = _frame(seed, device, size, defect, style, orientation="graf_mirrored")
        assert np.array_equal(graf.image, acquired.image.T)
        assert np.array_equal(mirrored.image, np.rot90(acquired.image, -1))
        assert np.array_equal(mirrored.image, graf.image[:, ::-1])  # the mirror of Graf's display
        for frame in (graf, mirrored):
            assert frame.image.flags["C_CONTIGUOUS"] and frame.image.dtype == np.uint8
            # Labels do not depend on how the frame is shown.
            for name in ("alpha_deg", "beta_deg", "coverage_pct", "standard_plane", "defect", "plane_offset"):
                assert getattr(frame, name) == getattr(acquired, name)
        for name, (x, y) in acquired.landmarks.items():
            assert graf.landmarks[name] == (y, x)
            assert mirrored.landmarks[name] == pytest.approx((size - 1 - y, x), abs=1e-12)
            # The moved landmark sits on the same pixel content (nearest pixel; landmarks are inside the image).
            if 0 <= round(x) < size and 0 <= round(y) < size:
                gx, gy = mirrored.landmarks[name]
                assert mirrored.image[round(gy), round(gx)] == acquired.image[round(y), round(x)]


def test_graf_display_has_the_ilium_vertical_cranial_up_and_the_probe_left():
    acquired = _frame(7, "A", 96, orientation="horizontal")
    graf = _frame(7, "A", 96, orientation="graf")
    mirrored = _frame(7, "A", 96, orientation="graf_mirrored")

    def baseline_direction(frame):
        top, bottom = (np.array(frame.landmarks[k]) for k in ("baseline_top", "baseline_bottom"))
        return (bottom - top) / np.hypot(*(bottom - top))

    # As acquired the baseline (cranial -> caudal) runs left to right; in both Graf displays top to bottom.
    assert baseline_direction(acquired)[0] > 0.95
    assert baseline_direction(graf)[1] > 0.95 and baseline_direction(mirrored)[1] > 0.95
    # Medial (deep: the lower limb) lies right of the rim in Graf's display, left of it in the mirror.
    assert graf.landmarks["lower_limb"][0] > graf.landmarks["bony_rim"][0]
    assert mirrored.landmarks["lower_limb"][0] < mirrored.landmarks["bony_rim"][0]
    # The top rows as acquired (skin, probe) are the left columns in Graf's display.
    assert np.array_equal(graf.image[:, :5], acquired.image[:5, :].T)


@pytest.mark.parametrize("orientation", hip_us.ORIENTATIONS)
def test_landmarks_measure_the_labels_in_every_orientation(orientation):
    for seed in range(8):
        for style in ("schematic", "realistic"):
            frame = _frame(seed, "ABCD"[seed % 4], 64, ("", "tilt", "anterior", "no_lower_limb")[seed % 4], style,
                           orientation=orientation)
            measured = hip_us.measure_from_landmarks(frame.landmarks)
            assert measured["alpha_deg"] == pytest.approx(frame.alpha_deg, abs=1e-9)
            assert measured["beta_deg"] == pytest.approx(frame.beta_deg, abs=1e-9)
            assert measured["coverage_pct"] == pytest.approx(frame.coverage_pct, abs=1e-9)


def test_transform_helpers_and_bad_names():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)  # not square: the helpers work for any (H, W)
    assert np.array_equal(hip_us.orient_image(image, "horizontal"), image)
    for orientation in ("graf", "graf_mirrored"):
        shown = hip_us.orient_image(image, orientation)
        assert shown.shape == (4, 3)
        for y in range(3):
            for x in range(4):
                sx, sy = hip_us.orient_point((x, y), orientation, height=3)
                assert shown[int(sy), int(sx)] == image[y, x]
    bgr = np.dstack([image, image + 1, image + 2])
    assert np.array_equal(hip_us.orient_image(bgr, "graf")[..., 1], image.T + 1)
    assert hip_us.orient_landmarks({"a": (1.0, 2.0)}, "graf_mirrored", 10) == {"a": (7.0, 1.0)}
    assert hip_us.parse_orientation_list(" graf, horizontal ") == ("graf", "horizontal")
    for bad in ("vertical", "Graf", "upside_down"):
        with pytest.raises(SonogateError, match="unknown display orientation"):
            hip_us.render_us_frame(hip_us.sample_hip_params(np.random.default_rng(0)), np.random.default_rng(0), "A",
                                   64, orientation=bad)
    with pytest.raises(SonogateError, match="no display orientation"):
        hip_us.parse_orientation_list(" , ")


def test_writer_orientations_column_and_frames(tmp_path):
    common = {"n": 10, "seed": 3, "devices": ("A", "C"), "size": 64, "frames_per_sweep": 2, "progress": False}
    default_root = writer.write_us_dataset(tmp_path / "default", **common)
    shown_root = writer.write_us_dataset(tmp_path / "shown", orientations=hip_us.ORIENTATIONS, **common)
    default_rows, shown_rows = _read_csv(default_root / "labels.csv"), _read_csv(shown_root / "labels.csv")
    assert list(shown_rows[0]) == list(writer.US_COLUMNS)
    # Default: the device's convention, as before the option existed.
    assert {(r["device"], r["orientation"]) for r in default_rows} <= {("A", "horizontal"), ("C", "vertical")}
    assert {r["orientation"] for r in shown_rows} == set(hip_us.ORIENTATIONS)  # seed 3 draws all three
    for before, after in zip(default_rows, shown_rows, strict=True):
        # Same frames and labels, only shown another way.
        for column in ("image", "sweep_id", "alpha_deg", "beta_deg", "coverage_pct", "standard_plane", "defect"):
            assert before[column] == after[column]
        acquired = cv2.imread(str(default_root / before["image"]), cv2.IMREAD_UNCHANGED)
        if before["orientation"] == "vertical":
            acquired = acquired.T  # device C's default display is Graf's: back to the acquired frame
        shown = cv2.imread(str(shown_root / after["image"]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(shown, hip_us.orient_image(acquired, after["orientation"]))
        measured = hip_us.measure_from_landmarks(_landmarks(after))
        assert measured["alpha_deg"] == pytest.approx(float(after["alpha_deg"]), abs=0.02)
        assert measured["beta_deg"] == pytest.approx(float(after["beta_deg"]), abs=0.02)
        assert measured["coverage_pct"] == pytest.approx(float(after["coverage_pct"]), abs=0.05)
    only = writer.write_us_dataset(tmp_path / "only", orientations=["horizontal"], **common)
    only_rows = _read_csv(only / "labels.csv")
    assert {r["orientation"] for r in only_rows} == {"horizontal"}  # device C shown as acquired too
    with pytest.raises(SonogateError, match="unknown display orientation"):
        writer.write_us_dataset(tmp_path / "bad", orientations=["sideways"], **common)
    with pytest.raises(SonogateError, match="no display orientation"):
        writer.write_us_dataset(tmp_path / "bad", orientations=[], **common)


def test_writer_chrome_puts_the_ruler_under_a_rotated_image(tmp_path):
    root = writer.write_us_dataset(tmp_path / "c", n=4, seed=1, devices=("B",), size=64, frames_per_sweep=2,
                                   chrome=True, progress=False, orientations=("graf", "graf_mirrored"))
    for row in _read_csv(root / "labels.csv"):
        screen = cv2.imread(str(root / row["image"]))
        x, y, w, h = (int(row[c]) for c in ("roi_x", "roi_y", "roi_w", "roi_h"))
        assert w == h  # the image stays square on screen
        # A ruler line under the image across its width; nothing drawn in the old ruler column beside it.
        assert (screen[y + h + 4, x : x + w].max(axis=1) >= 200).all()
        assert screen[y : y + h, x + w + 6].max() < 60
        measured = hip_us.measure_from_landmarks(_landmarks(row))
        assert measured["alpha_deg"] == pytest.approx(float(row["alpha_deg"]), abs=0.02)


def test_chrome_ruler_follows_the_depth_axis():
    image = np.full((128, 128), 90, np.uint8)
    before = make_chrome(np.random.default_rng(5), (128, 128), depth_mm=40.0)
    top = make_chrome(np.random.default_rng(5), (128, 128), depth_mm=40.0, probe_side="top")
    assert np.array_equal(before.background, top.background) and before.roi == top.roi
    screen, roi = top.compose(image, 0.0)
    scale = estimate_ruler_scale(screen, roi)
    assert scale is not None and scale.side == "right"
    assert scale.mm_per_pixel == pytest.approx(40.0 / (roi[3] - 1), rel=0.01)
    for side in ("left", "right"):
        layout = make_chrome(np.random.default_rng(5), (128, 128), depth_mm=40.0, probe_side=side)
        x, y, w, h = layout.roi
        assert h < top.roi[3]  # room under the image for the ruler
        shown, roi = layout.compose(image, 0.0)
        assert np.array_equal(shown[y : y + h, x : x + w, 0], cv2.resize(image, (w, h)))
        ruler = shown[y + h + 5 : y + h + 12, x : x + w].max(axis=(0, 2))
        ticks = np.flatnonzero(ruler >= 200)
        # Zero depth at the probe's side: a tick on that edge of the image.
        assert (ticks.min() == 0) if side == "left" else (ticks.max() == w - 1)
        # The runtime reads only vertical depth rulers (sonogate.runtime.scale): it finds none and never guesses.
        assert estimate_ruler_scale(shown, roi) is None
    with pytest.raises(SonogateError, match="probe_side"):
        make_chrome(np.random.default_rng(5), (128, 128), probe_side="bottom")


def test_cine_orientation(tmp_path):
    default = list(zip(range(4), cine.sweep_frames(11, 1.0, 6.0, size=64, chrome=False, device="B"), strict=False))
    graf = list(zip(range(4), cine.sweep_frames(11, 1.0, 6.0, size=64, chrome=False, device="B",
                                                 orientation="graf"), strict=False))
    for (_, (frame0, label0)), (_, (frame1, label1)) in zip(default, graf, strict=True):
        assert np.array_equal(frame1, np.swapaxes(frame0, 0, 1))
        assert "orientation" not in label0 and label1["orientation"] == "graf"
        assert {k: v for k, v in label1.items() if k not in ("orientation", "landmarks")} == \
            {k: v for k, v in label0.items() if k != "landmarks"}
        measured = hip_us.measure_from_landmarks(label1["landmarks"])
        assert measured["alpha_deg"] == pytest.approx(label1["alpha_deg"], abs=1e-9)
    screen, label = next(cine.sweep_frames(11, 1.0, 6.0, size=64, device="B", orientation="graf_mirrored"))
    measured = hip_us.measure_from_landmarks(label["landmarks"])
    assert measured["coverage_pct"] == pytest.approx(label["coverage_pct"], abs=1e-9)
    x, y, w, h = (label[c] for c in ("roi_x", "roi_y", "roi_w", "roi_h"))
    assert (screen[y + h + 4, x : x + w].max(axis=1) >= 200).all()  # the depth ruler lies under the image

    plain = cine.write_cine(tmp_path / "plain.mp4", 0.5, 4.0, 2, size=64)
    shown = cine.write_cine(tmp_path / "graf.mp4", 0.5, 4.0, 2, size=64, orientation="graf")
    plain_rows, shown_rows = _read_csv(plain.with_suffix(".csv")), _read_csv(shown.with_suffix(".csv"))
    assert "orientation" not in plain_rows[0]
    assert [r["orientation"] for r in shown_rows] == ["graf"] * 2
    with pytest.raises(SonogateError, match="unknown display orientation"):
        cine.write_cine(tmp_path / "bad.mp4", 0.5, 4.0, 2, size=64, orientation="portrait")
    assert not (tmp_path / "bad.csv").exists()


def test_cli_orientations(tmp_path, capsys):
    out = tmp_path / "us"
    code = sonogate_main(["phantom", "us", "--n", "4", "--seed", "2", "--size", "64", "--out", str(out),
                          "--orientations", "graf,graf_mirrored"])
    assert code == 0
    assert {r["orientation"] for r in _read_csv(out / "labels.csv")} <= {"graf", "graf_mirrored"}
    mp4 = tmp_path / "c.mp4"
    code = sonogate_main(["phantom", "cine", "--seconds", "0.5", "--fps", "4", "--size", "64", "--out", str(mp4),
                          "--orientation", "graf"])
    assert code == 0
    assert [r["orientation"] for r in _read_csv(mp4.with_suffix(".csv"))] == ["graf"] * 2
    capsys.readouterr()
    for argv in (["phantom", "us", "--n", "2", "--size", "64", "--out", str(tmp_path / "bad"),
                  "--orientations", "graf,sideways"],
                 ["phantom", "cine", "--seconds", "0.5", "--fps", "4", "--size", "64",
                  "--out", str(tmp_path / "bad.mp4"), "--orientation", "vertical"]):
        assert sonogate_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "unknown display orientation" in err, err
        assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.csv").exists()
