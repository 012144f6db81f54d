"""Each task's phantom command comes from its spec (``parts["phantom_cli"]``), reached through the registry: the
phantom stage never imports a task package, and ``sonogate phantom <task>`` still works end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import pytest

from sonogate.cli import main

pytestmark = pytest.mark.torchfree

SHARED_MESHES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vertebra-meshes"


def test_phantom_rust_writes_pairs_and_labels(tmp_path, capsys):
    out = tmp_path / "rust"
    assert main(["phantom", "rust", "--n", "2", "--seed", "3", "--size", "128", "--out", str(out)]) == 0
    assert "wrote 2 phantom RUST cases" in capsys.readouterr().out
    with (out / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for row in rows:
        grades = [int(row[c]) for c in ("ap_medial", "ap_lateral", "lat_anterior", "lat_posterior")]
        assert all(1 <= g <= 3 for g in grades) and int(row["rust_total"]) == sum(grades)
        for view in ("ap", "lat"):
            image = cv2.imread(str(out / row["case"] / f"{view}.png"), cv2.IMREAD_UNCHANGED)
            assert image.shape == (128, 128) and image.std() > 5


def test_phantom_bmd_writes_radiographs_and_a_row_per_hip(tmp_path, capsys):
    out = tmp_path / "bmd"
    assert main(["phantom", "bmd", "--n", "2", "--seed", "1", "--size", "192", "--device", "A", "--out", str(out)]) == 0
    assert "wrote 2 phantom AP pelvis radiographs" in capsys.readouterr().out
    with (out / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 4 and {row["side"] for row in rows} == {"R", "L"} and {row["device"] for row in rows} == {"A"}
    for row in rows:
        assert 0.2 < float(row["bmd_g_cm2"]) < 1.6
        assert abs(float(row["t_score"]) - (float(row["bmd_g_cm2"]) - 0.858) / 0.120) < 0.01
        assert cv2.imread(str(out / row["image"]), cv2.IMREAD_UNCHANGED).shape[:2] == (192, 192)


def test_phantom_spine_writes_the_five_files(tmp_path):
    if not SHARED_MESHES.is_dir():
        pytest.skip(f"{SHARED_MESHES} not found")
    pytest.importorskip("skimage")
    out = tmp_path / "spine"
    assert main(["phantom", "spine", "--n", "1", "--seed", "0", "--out", str(out)]) == 0
    (case,) = [p for p in out.iterdir() if p.is_dir()]
    assert {p.name for p in case.iterdir()} >= {"us_partial.ply", "xray.png", "xray_points.ply", "complete.ply",
                                                "meta.json"}


@pytest.mark.parametrize("argv", [["phantom", "rust", "--n", "0", "--out", "x"], ["phantom", "spine", "--out", "x"]])
def test_bad_phantom_arguments_are_one_line_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert len([line for line in capsys.readouterr().err.splitlines() if "error" in line]) == 1
