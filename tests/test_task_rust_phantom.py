"""The RUST phantom (sonogate.tasks.rust.phantom): exact labels, determinism, follow-up structure, and that the
drawn grades and hardware really show in the pixels."""

from __future__ import annotations

import csv
import dataclasses
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonogate.errors import DataError
from sonogate.tasks.rust.phantom import (
    CORTICES,
    RUST_COLUMNS,
    RustCase,
    RustVisit,
    grade_from_stage,
    phantom_main,
    render_case,
    sample_patient,
    write_rust_phantom,
)

pytestmark = pytest.mark.torchfree

FIRST_COLUMNS = ("case", "patient_id", "ap_medial", "ap_lateral", "lat_anterior", "lat_posterior", "rust_total")
_STAGE_OF_GRADE = {1: 0.2, 2: 0.5, 3: 0.85}


def _read_rows(root: Path) -> list[dict]:
    with open(root / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _with_grades(patient, grades: tuple[int, int, int, int]):
    """The same patient (anatomy, fracture, hardware) with one visit at the given grades."""
    visit = RustVisit(1, 12.0, tuple(_STAGE_OF_GRADE[g] for g in grades), grades)
    return dataclasses.replace(patient, visits=(visit,))


def _patient(seed: int, want) -> object:
    for k in range(200):
        patient = sample_patient(np.random.default_rng([seed, k]), patient_id=f"t{k}")
        if want(patient):
            return patient
    raise AssertionError("no patient of the wanted kind in 200 draws")


def _window(image: np.ndarray, x: float, y: float, radius: int = 2) -> float:
    col, row = round(x), round(y)
    return float(image[row - radius:row + radius + 1, col - radius:col + radius + 1].mean())


def _line_contrast(case: RustCase, cortex: str) -> float:
    """Mean grey on the fracture line at a cortex minus the mean of the same cortex 6 mm proximal (up the image;
    the proximal fragment is the one the landmark sits on, the distal one may be displaced)."""
    view = "ap" if cortex.startswith("ap") else "lat"
    image = case.ap if view == "ap" else case.lat
    step = 6.0 / case.labels[f"mm_per_pixel_{view}"]
    x, y = case.labels[f"{cortex}_x"], case.labels[f"{cortex}_y"]
    return _window(image, x, y) - _window(image, x, y - step)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_rust_phantom(tmp_path_factory.mktemp("rust") / "ds", n=9, seed=3, size=128, progress=False)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = write_rust_phantom(tmp_path / "a", n=3, seed=11, size=96, progress=False)
    second = write_rust_phantom(tmp_path / "b", n=3, seed=11, size=96, progress=False)
    other = write_rust_phantom(tmp_path / "c", n=3, seed=12, size=96, progress=False)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 1 + 2 * 3
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "labels.csv").read_bytes() != (other / "labels.csv").read_bytes()


def test_labels_csv_columns_are_exact(dataset):
    with open(dataset / "labels.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == RUST_COLUMNS
    assert tuple(header[:7]) == FIRST_COLUMNS
    assert len(set(header)) == len(header)
    for name in ("device", "visit", "hardware", "fracture_angle_deg", "gap_mm", "side", "exposure"):
        assert name in header


def test_grades_in_range_and_total_is_their_sum(dataset):
    rows = _read_rows(dataset)
    assert len(rows) == 9
    for row in rows:
        grades = [int(row[c]) for c in CORTICES]
        assert all(g in (1, 2, 3) for g in grades)
        assert int(row["rust_total"]) == sum(grades)
        assert 4 <= int(row["rust_total"]) <= 12
        assert row["hardware"] in ("none", "nail", "plate")
        assert row["side"] in ("L", "R")
        assert 0.0 <= float(row["fracture_angle_deg"]) <= 50.0
        assert float(row["gap_mm"]) > 0


def test_every_case_has_both_views_of_the_requested_size(dataset):
    for row in _read_rows(dataset):
        for view in ("ap", "lat"):
            image = cv2.imread(str(dataset / row["case"] / f"{view}.png"), cv2.IMREAD_UNCHANGED)
            assert image is not None and image.dtype == np.uint8 and image.shape == (128, 128)
    patient = sample_patient(np.random.default_rng(0))
    case = render_case(patient, 1, np.random.default_rng(1), size=200)
    assert case.ap.shape == case.lat.shape == (200, 200)
    assert case.ap.dtype == case.lat.dtype == np.uint8
    assert case.ap.std() > 20 and case.lat.std() > 20  # an image, not a blank


def test_patients_cases_are_grouped_and_share_anatomy(dataset):
    rows = _read_rows(dataset)
    by_patient: dict[str, list[dict]] = {}
    order = []
    for row in rows:
        assert row["case"].startswith(row["patient_id"] + "-v")
        if row["patient_id"] not in by_patient:
            order.append(row["patient_id"])
        by_patient.setdefault(row["patient_id"], []).append(row)
    # one patient's films are written together, visits in order
    assert [r["patient_id"] for r in rows] == [p for p in order for _ in by_patient[p]]
    assert len(by_patient) < len(rows)  # some patient has several follow-ups
    fixed = ("side", "hardware", "plate_side", "cast", "fracture_level_mm", "fracture_angle_deg", "gap_mm", "device")
    for films in by_patient.values():
        assert [int(r["visit"]) for r in films] == list(range(1, len(films) + 1))
        for name in fixed:
            assert len({r[name] for r in films}) == 1, name
        weeks = [float(r["week"]) for r in films]
        assert weeks == sorted(weeks)


def test_grades_never_decrease_over_follow_ups(dataset):
    rows = _read_rows(dataset)
    for pid in {r["patient_id"] for r in rows}:
        films = sorted((r for r in rows if r["patient_id"] == pid), key=lambda r: int(r["visit"]))
        for earlier, later in itertools.pairwise(films):
            assert all(int(later[c]) >= int(earlier[c]) for c in CORTICES)
    rising = 0
    for k in range(300):
        patient = sample_patient(np.random.default_rng([21, k]), n_visits=4)
        for earlier, later in itertools.pairwise(patient.visits):
            assert all(b >= a for a, b in zip(earlier.grades, later.grades))
            assert all(grade_from_stage(s) == g for s, g in zip(later.stages, later.grades))
        rising += patient.visits[-1].total > patient.visits[0].total
    assert rising > 100  # healing is seen, not only flat trajectories


def test_grade_three_fills_the_line_that_grade_one_shows():
    """At each visible cortex's landmark the fracture line is a dark band against the intact cortex above it at
    grade 1 and 2, and gone (filled by bridging bone) at grade 3: same anatomy, same exposure."""
    for seed in (1, 2):
        # a steeply oblique plane is seen edge-on in one view only (as on real films): test moderate ones
        patient = _patient(seed, lambda p: p.hardware.kind != "plate" and p.fracture.angle_deg < 25)
        rendered = {g: render_case(_with_grades(patient, (g,) * 4), 1, np.random.default_rng(5)) for g in (1, 2, 3)}
        for cortex in CORTICES:
            contrast = {g: _line_contrast(case, cortex) for g, case in rendered.items()}
            assert contrast[1] < -10, (cortex, contrast)
            assert contrast[2] < -10, (cortex, contrast)
            assert contrast[3] > contrast[1] + 25, (cortex, contrast)
            assert contrast[3] > -15, (cortex, contrast)


def test_grades_act_per_cortex():
    """Mixed grades in one film pair: against the all-grade-1 film of the same patient, a grade-3 cortex's line
    window brightens (filled, callus) far more than the grade-1 cortex beside it in the same view."""
    for seed in (3, 5):
        patient = _patient(seed, lambda p: p.hardware.kind != "plate" and p.fracture.angle_deg < 25)
        base = render_case(_with_grades(patient, (1, 1, 1, 1)), 1, np.random.default_rng(4))
        for grades in ((3, 1, 1, 3), (1, 3, 3, 1)):
            case = render_case(_with_grades(patient, grades), 1, np.random.default_rng(4))
            gain = {}
            for cortex, grade in zip(CORTICES, grades):
                view = "ap" if cortex.startswith("ap") else "lat"
                x, y = case.labels[f"{cortex}_x"], case.labels[f"{cortex}_y"]
                gain[cortex] = _window(getattr(case, view), x, y) - _window(getattr(base, view), x, y)
            for first, second in (CORTICES[:2], CORTICES[2:]):
                healed, open_ = (first, second) if grades[CORTICES.index(first)] == 3 else (second, first)
                assert gain[healed] > 30, (seed, grades, gain)
                assert gain[healed] > gain[open_] + 20, (seed, grades, gain)


def test_callus_shows_beside_a_grade_two_cortex():
    """Grade 2 adds callus outside the cortex (brighter soft tissue just outside it) that grade 1 lacks."""
    patient = _patient(4, lambda p: p.hardware.kind == "nail")
    one = render_case(_with_grades(patient, (1, 1, 1, 1)), 1, np.random.default_rng(2))
    two = render_case(_with_grades(patient, (2, 2, 2, 2)), 1, np.random.default_rng(2))
    px = one.labels["mm_per_pixel_ap"]
    x_med, y_med = one.labels["ap_medial_x"], one.labels["ap_medial_y"]
    x_lat = one.labels["ap_lateral_x"]
    outward = np.sign(x_med - x_lat)  # the medial cortex's outside
    gains = []
    for dy_mm in (-6.0, 6.0):
        x, y = x_med + outward * 4.0 / px, y_med + dy_mm / px
        gains.append(_window(two.ap, x, y) - _window(one.ap, x, y))
    assert max(gains) > 15, gains


def test_nail_is_bright_in_the_canal_when_labelled():
    nailed = _patient(6, lambda p: p.hardware.kind == "nail" and p.hardware.nail_radius >= 4.0)
    bare = _patient(6, lambda p: p.hardware.kind == "none")
    for patient, expect_metal in ((nailed, True), (bare, False)):
        case = render_case(patient, 1, np.random.default_rng(8))
        assert case.labels["hardware"] == patient.hardware.kind
        px = case.labels["mm_per_pixel_ap"]
        canal_x = 0.5 * (case.labels["ap_medial_x"] + case.labels["ap_lateral_x"])
        canal_y = 0.5 * (case.labels["ap_medial_y"] + case.labels["ap_lateral_y"])
        values = [_window(case.ap, canal_x, canal_y + dy_mm / px, 1) for dy_mm in (-20.0, 20.0)]
        if expect_metal:
            assert min(values) >= 245, values
        else:
            assert max(values) < 235, values


def test_plate_hides_the_cortices_it_covers():
    """A plate on the anteromedial (anterolateral) face covers the medial (lateral) cortex on the AP view; every
    cortex labelled hidden is under saturated metal; a nail in the canal hides no cortex."""
    for seed in (7, 8, 9):
        plated = _patient(seed, lambda p: p.hardware.kind == "plate")
        case = render_case(plated, 1, np.random.default_rng(3))
        hidden = case.labels["hidden"].split("|")
        assert ("ap_medial" if plated.hardware.plate_side == "medial" else "ap_lateral") in hidden
        for cortex in hidden:
            image = case.ap if cortex.startswith("ap") else case.lat
            assert _window(image, case.labels[f"{cortex}_x"], case.labels[f"{cortex}_y"], 0) >= 245, (seed, cortex)
    nailed = _patient(7, lambda p: p.hardware.kind == "nail")
    assert render_case(nailed, 1, np.random.default_rng(3)).labels["hidden"] == ""


@pytest.mark.parametrize("kwargs, words", [
    ({"n": 0}, "number of cases"),
    ({"n": -2}, "number of cases"),
    ({"n": 2.5}, "number of cases"),
    ({"n": 2, "size": 16}, "image size"),
    ({"n": 2, "seed": -1}, "seed"),
    ({"n": 2, "devices": "A,Q"}, "unknown rust phantom device"),
    ({"n": 2, "devices": ""}, "no rust phantom device"),
])
def test_bad_arguments_give_one_line_data_errors(tmp_path, kwargs, words):
    args = {"seed": 0, "size": 96, "progress": False, **kwargs}
    with pytest.raises(DataError) as caught:
        write_rust_phantom(tmp_path / "out", **args)
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out" / "labels.csv").exists()


def test_existing_non_empty_folder_and_bad_visit_are_refused(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not an empty folder"):
        write_rust_phantom(tmp_path / "busy", n=1, seed=0, size=96, progress=False)
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["keep.txt"]
    patient = sample_patient(np.random.default_rng(0), n_visits=2)
    with pytest.raises(DataError, match="visit must be 1..2"):
        render_case(patient, 3, np.random.default_rng(0))
    with pytest.raises(DataError, match="unknown rust phantom device"):
        sample_patient(np.random.default_rng(0), device="Z")


def test_phantom_main_writes_and_returns_zero(tmp_path, capsys):
    assert phantom_main(tmp_path / "cli", 2, 5, 96, "C") == 0
    rows = _read_rows(tmp_path / "cli")
    assert len(rows) == 2 and {r["device"] for r in rows} == {"C"}
    assert "wrote 2 phantom RUST cases" in capsys.readouterr().out
