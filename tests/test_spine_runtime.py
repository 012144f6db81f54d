"""Spine task at run time (issue 22, items 6-7): ``sonogate analyze`` with the shipped bundle on a phantom case,
identical output for identical input, and every bad input refused with one line and no output file.

Real ONNX Runtime (``--device ort-cpu``) and the shipped ``bundles/spine``. The case in ``tests/data/spine_case``
is phantom case 4 of ``sonogate phantom spine --n 300 --seed 22`` (source ``ssm_mean_L4``, a held-out test shape;
us_partial.ply, xray.png, meta.json as written); ``tests/data/spine_xray_ap.png`` is an antero-posterior
projection of the ``ssm_mean_L4`` source shape by ``phantom.render_xray`` (rays along the body's y axis).
The input-check tests need numpy and OpenCV only.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonogate.errors import DataError
from sonogate.tasks.spine import inputs as spine_inputs
from sonogate.tasks.spine.ply import read_ply, write_ply

pytestmark = pytest.mark.torchfree
ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "spine"
CASE = ROOT / "tests" / "data" / "spine_case"
AP_VIEW = ROOT / "tests" / "data" / "spine_xray_ap.png"


def _analyze(cases: list[Path], out: Path) -> list[dict]:
    from sonogate.runtime.analyze import AnalyzeOptions, analyze

    analyze(cases, AnalyzeOptions(bundle=BUNDLE, out=out, device="ort-cpu", progress=False))
    with open(out / "analysis.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _case(tmp_path: Path, name: str, us=None, xray=None, meta_update=None) -> Path:
    """A copy of the fixture case with the ultrasound cloud, the radiograph or meta.json replaced."""
    folder = tmp_path / name
    shutil.copytree(CASE, folder)
    if us is not None:
        points = np.asarray(us, np.float64).reshape(-1, 3)
        if np.all(np.isfinite(points)):
            write_ply(folder / "us_partial.ply", points)
        else:  # write_ply refuses NaN: an ASCII PLY by hand
            rows = "".join(f"{x} {y} {z}\n" for x, y, z in points)
            (folder / "us_partial.ply").write_text(f"ply\nformat ascii 1.0\nelement vertex {len(points)}\n"
                                                   "property float x\nproperty float y\nproperty float z\n"
                                                   f"end_header\n{rows}")
    if xray is not None:
        cv2.imwrite(str(folder / "xray.png"), xray)
    if meta_update is not None:
        meta = json.loads((folder / "meta.json").read_text())
        meta.update(meta_update)
        (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def us_points():
    return read_ply(CASE / "us_partial.ply").points


@pytest.fixture(scope="module")
def xray_grey():
    return cv2.imread(str(CASE / "xray.png"), cv2.IMREAD_GRAYSCALE)


@pytest.fixture(scope="module")
def bundle_ready():
    pytest.importorskip("onnxruntime")
    if not (BUNDLE / "manifest.json").is_file():
        pytest.fail(f"the shipped spine bundle is missing: {BUNDLE}")
    return BUNDLE


# ---------------------------------------------------------------------------------------------- input checks

def test_lateral_and_frontal_views_are_told_apart(xray_grey):
    ranges = _ranges()
    lateral = spine_inputs.check_lateral_view(xray_grey, ranges)
    assert lateral["mirror_iou"] < ranges.mirror_iou_max and 1000 < lateral["area_mm2"] < 5000
    frontal = cv2.imread(str(AP_VIEW), cv2.IMREAD_GRAYSCALE)
    assert spine_inputs.view_features(frontal)["mirror_iou"] > 0.85
    with pytest.raises(DataError, match="not a lateral view"):
        spine_inputs.check_lateral_view(frontal, ranges)


def test_the_ultrasound_must_lie_on_the_silhouette(us_points, xray_grey):
    assert spine_inputs.overlap_fraction(us_points, xray_grey) == 1.0
    one_level_up = us_points + [0.0, 0.0, 38.0]  # a lumbar body and disc: the next vertebra
    assert spine_inputs.overlap_fraction(one_level_up, xray_grey) < 0.5
    with pytest.raises(DataError, match="different vertebrae or levels"):
        spine_inputs.check_overlap(one_level_up, xray_grey, _ranges())


def test_the_xray_cloud_is_made_as_the_phantom_made_it(xray_grey):
    from sonogate.tasks.spine.phantom import xray_cloud

    points, _ = xray_cloud(spine_inputs.xray_grey(cv2.cvtColor(xray_grey, cv2.COLOR_GRAY2BGR)))
    assert np.array_equal(points.astype(np.float32), read_ply(CASE / "xray_points.ply").points.astype(np.float32))


def test_model_points_resample_deterministically(us_points):
    notes: list[str] = []
    assert spine_inputs.model_points(us_points, notes).shape == (2048, 3) and notes == []
    more = np.concatenate([us_points, us_points[:500] + 0.1])
    first, second = spine_inputs.model_points(more, notes), spine_inputs.model_points(more, [])
    assert first.shape == (2048, 3) and np.array_equal(first, second) and "furthest-point" in notes[0]
    fewer = spine_inputs.model_points(us_points[:700], notes)
    assert fewer.shape == (2048, 3) and len(np.unique(fewer, axis=0)) == 700 and "padded" in notes[1]


def _ranges():
    manifest = json.loads((BUNDLE / "manifest.json").read_text())
    return spine_inputs.InputRanges.from_json(manifest["spine"]["input_ranges"])


# ---------------------------------------------------------------------------------------- sonogate analyze

def test_analyze_writes_the_completed_cloud_picture_and_columns(bundle_ready, tmp_path, us_points):
    out = tmp_path / "out"
    rows = _analyze([CASE], out)
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows
    row = rows[0]
    assert row["level"] == "L4" and row["n_points"] == "2048" and 0 < float(row["latency_ms"]) < 10_000
    completed = read_ply(out / "spine_case.ply").points
    truth_like = us_points  # the posterior surface it was completed from
    assert completed.shape == (2048, 3) and np.all(np.isfinite(completed))
    # mm in the input's frame: a vertebra-sized cloud around the ultrasound, extending in front of it (the body)
    assert 40 < np.ptp(completed[:, 1]) < 120 and completed[:, 1].min() < truth_like[:, 1].min() - 15
    assert np.linalg.norm(completed.mean(0)[[0, 2]] - truth_like.mean(0)[[0, 2]]) < 15
    picture = cv2.imread(str(out / "spine_case.png"))
    assert picture is not None and picture.shape[0] == 512 and picture.shape[1] > 1000
    record = json.loads((out / "spine_case.json").read_text())
    assert record["outputs"]["ply"] == "spine_case.ply" and "_arrays" not in record["result"]


def test_same_input_gives_identical_output(bundle_ready, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    _analyze([CASE], first)
    _analyze([CASE], second)
    assert (first / "spine_case.ply").read_bytes() == (second / "spine_case.ply").read_bytes()
    assert (first / "spine_case.png").read_bytes() == (second / "spine_case.png").read_bytes()


def _colour(grey):
    image = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    image[:, :, 2] = np.clip(image[:, :, 2].astype(int) + 60, 0, 255)
    return image


BAD_CASES = {
    # name: (how to spoil the case, words the one-line error must hold)
    "empty": (lambda us, x: {"us": np.zeros((0, 3))}, "empty"),
    "nan": (lambda us, x: {"us": np.where(np.arange(len(us))[:, None] == 7, np.nan, us)}, "NaN"),
    "few_points": (lambda us, x: {"us": us[:100]}, "too few"),
    "metres": (lambda us, x: {"us": us / 1000.0}, "metres"),
    "colour_xray": (lambda us, x: {"xray": _colour(x)}, "colour"),
    "wrong_size_xray": (lambda us, x: {"xray": cv2.resize(x, (512, 400))}, "256 x 256"),
    "frontal_xray": (lambda us, x: {"xray": cv2.imread(str(AP_VIEW), cv2.IMREAD_GRAYSCALE)}, "not a lateral view"),
    "blank_xray": (lambda us, x: {"xray": np.zeros_like(x)}, "not a lateral view"),
    "other_vertebra": (lambda us, x: {"us": us + [0.0, 0.0, 38.0]}, "different vertebrae or levels"),
    "mismatched_levels": (lambda us, x: {"meta_update": {"us_level": "L4", "xray_level": "L3"}},
                          "mismatched levels"),
    "untrained_level": (lambda us, x: {"meta_update": {"level": "T4"}}, "not one the model was trained on"),
    "metres_in_meta": (lambda us, x: {"meta_update": {"units": "m"}}, "millimetres"),
}


def test_bad_inputs_are_refused_with_one_line_and_no_output(bundle_ready, tmp_path, us_points, xray_grey):
    cases = [_case(tmp_path / "cases", name, **spoil(us_points, xray_grey)) for name, (spoil, _) in BAD_CASES.items()]
    out = tmp_path / "out"
    rows = {Path(row["input"]).name: row for row in _analyze(cases, out)}
    for name, (_, words) in BAD_CASES.items():
        row = rows[name]
        assert row["status"] == "error", (name, row)
        assert words in row["error"] and "\n" not in row["error"] and "Traceback" not in row["error"], (name, row)
        assert not (out / f"{name}.ply").exists() and not (out / f"{name}.png").exists(), name


def test_a_case_without_meta_has_an_unknown_level(bundle_ready, tmp_path):
    folder = _case(tmp_path, "no_meta")
    (folder / "meta.json").unlink()
    row = _analyze([folder], tmp_path / "out")[0]
    assert row["status"] == "ok" and row["level"] == "unknown" and "level unknown" in row["warnings"]
