"""Labelled / unlabelled folders and infant-level splits (torch-free)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from models_fixture import synthetic_folder

from sonogate.data.folder import list_images, load_gray_image, read_labelled_folder, write_labelled_folder
from sonogate.data.splits import split_by_group
from sonogate.errors import DataError

pytestmark = pytest.mark.torchfree


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return synthetic_folder(tmp_path_factory.mktemp("data") / "f", n=24, size=48)


def test_read_columns_types_and_images(folder):
    data = read_labelled_folder(folder)
    assert len(data) == 24 and data.root == folder
    assert data.columns["alpha_deg"].dtype == np.float64
    assert data.columns["standard_plane"].dtype == np.float64
    assert data.columns["patient_id"].dtype == object and data.columns["patient_id"][0] == "P000"
    assert data.columns["defect"].dtype == object  # mixed empty / text stays text
    gray = data.load_gray(3)
    assert gray.dtype == np.uint8 and gray.shape == (48, 48)
    t = data.targets(["alpha_deg", "no_such_column", "patient_id"])
    assert t.shape == (24, 3) and np.isfinite(t[:, 0]).all() and np.isnan(t[:, 1:]).all()
    assert data.landmark_names() == ["a", "b", "c"]
    assert data.landmarks().shape == (24, 3, 2)
    assert data.standard_plane().dtype == bool
    assert set(data.groups()) == {f"P{i:03d}" for i in range(12)}
    sub = data.subset([0, 5])
    assert len(sub) == 2 and sub.columns["alpha_deg"][1] == data.columns["alpha_deg"][5]


def test_bool_words_numeric_ids_and_empty_cells(tmp_path):
    imgs = [np.full((20, 20), v, np.uint8) for v in (0, 128, 255)]
    rows = [
        {"patient_id": 7, "standard_plane": "True", "alpha_deg": 61.5},
        {"patient_id": 7, "standard_plane": "false", "alpha_deg": ""},
        {"patient_id": 8, "standard_plane": "1", "alpha_deg": "nan"},
    ]
    data = read_labelled_folder(write_labelled_folder(tmp_path / "d", imgs, rows))
    assert data.standard_plane().tolist() == [True, False, True]
    assert np.isnan(data.columns["alpha_deg"][1:]).all()
    assert data.text("patient_id").tolist() == ["7", "7", "8"]  # not "7.0"


def test_colour_and_16bit_images_read_as_gray(tmp_path):
    bgr = np.zeros((10, 12, 3), np.uint8)
    bgr[..., 2] = 200  # red
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    cv2.imwrite(str(tmp_path / "w.png"), np.full((10, 12), 65535, np.uint16))
    gray = load_gray_image(tmp_path / "c.png")
    assert gray.shape == (10, 12) and abs(int(gray[0, 0]) - round(0.299 * 200)) <= 1
    assert load_gray_image(tmp_path / "w.png").max() == 255


def test_errors_are_one_line_data_errors(tmp_path, folder):
    with pytest.raises(DataError, match="not found"):
        read_labelled_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no labels.csv"):
        read_labelled_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="'zzz' column"):
        read_labelled_folder(folder, required=["zzz"])
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "labels.csv").write_text("image,alpha_deg\nimages/x.png,60\nimages/y.png,61\n")
    (bad / "images" / "x.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="y.png"):
        read_labelled_folder(bad)
    (bad / "images" / "y.png").write_bytes(b"")
    data = read_labelled_folder(bad)
    with pytest.raises(DataError, match="cannot read image") as err:
        data.load_gray(0)
    assert "\n" not in str(err.value)
    (bad / "labels.csv").write_text("image,alpha_deg\nimages/x.png\n")
    with pytest.raises(DataError, match="line 2"):
        read_labelled_folder(bad)


def test_list_images_for_unlabelled_pretraining(tmp_path, folder):
    assert len(list_images(folder)) == 24  # labels.csv ignored
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no images"):
        list_images(tmp_path / "none")


@pytest.mark.parametrize("seed", range(20))
def test_split_never_puts_one_infant_on_both_sides(seed):
    rng = np.random.default_rng(seed)
    groups = rng.choice([f"infant{i}" for i in range(rng.integers(3, 40))], size=rng.integers(10, 300))
    parts = split_by_group(groups, [0.6, 0.2, 0.2], seed=seed)
    together = np.concatenate(parts)
    assert sorted(together.tolist()) == list(range(len(groups)))  # every row exactly once
    sets = [set(groups[p]) for p in parts]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not sets[i] & sets[j]
    n_groups = len(set(groups))
    if n_groups >= 3:
        assert all(len(p) for p in parts)
    assert abs(len(sets[0]) - 0.6 * n_groups) <= 1.5


def test_split_is_reproducible_and_order_independent():
    groups = np.array([f"g{i % 17}" for i in range(200)])
    a = split_by_group(groups, [0.8, 0.2], seed=3)
    b = split_by_group(groups, [0.8, 0.2], seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    perm = np.random.default_rng(0).permutation(200)
    c = split_by_group(groups[perm], [0.8, 0.2], seed=3)
    assert set(groups[perm][c[1]]) == set(groups[a[1]])  # same infants held out whatever the row order
    assert set(groups[split_by_group(groups, [0.8, 0.2], seed=4)[1]]) != set(groups[a[1]])
    with pytest.raises(DataError):
        split_by_group(groups, [0.0, 0.0], seed=0)
