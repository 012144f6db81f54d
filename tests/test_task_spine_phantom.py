"""Spine task (seed 002): source shapes, smooth deformation, split by source, phantom cases and PLY files.

Shape and phantom tests read ../shared/data/vertebra-meshes and need scipy and scikit-image (the train extra);
they skip with the reason when either is missing. The PLY and argument tests need numpy only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sonogate.errors import DataError, SonogateError
from sonogate.tasks.spine.ply import read_ply, write_ply

pytestmark = pytest.mark.torchfree

MESHES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vertebra-meshes"


@pytest.fixture(scope="module")
def sources():
    if not MESHES.is_dir():
        pytest.skip(f"vertebra meshes not found at {MESHES} (../shared is absent in this checkout)")
    pytest.importorskip("scipy", reason="building source shapes needs scipy (train extra)")
    pytest.importorskip("skimage", reason="marching cubes of the VerSe mask needs scikit-image (train extra)")
    from sonogate.tasks.spine.shapes import source_shapes

    return {s.source_id: s for s in source_shapes()}


@pytest.fixture(scope="module")
def written(sources, tmp_path_factory):
    from sonogate.tasks.spine.phantom import write_spine_phantom

    out = tmp_path_factory.mktemp("spine") / "phantom"
    write_spine_phantom(out, 5, 7, progress=False)
    return out


# ------------------------------------------------------------------------------------------------------ shapes

def test_source_shapes_load_with_levels_in_mm(sources):
    from sonogate.tasks.spine.shapes import PATHOLOGICAL_SOURCES, signed_volume, surface_centroid, template_clouds

    levels = {s.level for s in sources.values()}
    assert levels == {"T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"}
    assert {"verse521_L1", "verse521_L2", "ssm_mean_L2", "ssm_mean_L5", "verse004_T9", "verse004_L5"} <= set(sources)
    assert not set(PATHOLOGICAL_SOURCES) & set(sources)
    for shape in sources.values():
        extent = np.ptp(shape.vertices, axis=0)
        # a vertebra in mm: 45-110 mm wide (transverse processes), 55-95 mm deep, 35-60 mm tall
        assert 45 < extent[0] < 110 and 55 < extent[1] < 95 and 35 < extent[2] < 60, (shape.source_id, extent)
        assert 20e3 < signed_volume(shape.vertices, shape.faces) < 80e3  # closed, outward faces, 20-80 cm^3
        assert np.linalg.norm(surface_centroid(shape.vertices, shape.faces)) < 1e-6
        # the frame: the spinous process is the most posterior part, the body the most anterior
        tip = shape.vertices[np.argmax(shape.vertices[:, 1])]
        assert abs(tip[0]) < 10 and tip[1] > 25
        assert np.allclose(np.linalg.norm(shape.normals, axis=1), 1.0)
    templates = template_clouds(MESHES)
    assert [t.level for t in templates] == ["L1", "L2", "L3", "L4", "L5"]
    assert all(70 < np.ptp(t.points[:, 0]) < 95 for t in templates)  # mm, not the pipeline's mm / 100


def test_deformation_is_smooth_and_shapes_differ(sources):
    from sonogate.tasks.spine.shapes import deform

    source = sources["verse004_L3"]
    first = deform(source, np.random.default_rng(1))
    again = deform(source, np.random.default_rng(1))
    other = deform(source, np.random.default_rng(2))
    assert np.array_equal(first.vertices, again.vertices)
    assert first.level == "L3" and first.source_id == "verse004_L3" and first.deformation["scales"]
    # smooth: along every mesh edge the displacement changes by well under the edge length (no folds)
    displacement = first.vertices - source.vertices
    edges = np.concatenate([source.faces[:, [0, 1]], source.faces[:, [1, 2]], source.faces[:, [2, 0]]])
    change = np.linalg.norm(displacement[edges[:, 0]] - displacement[edges[:, 1]], axis=1)
    length = np.linalg.norm(source.vertices[edges[:, 0]] - source.vertices[edges[:, 1]], axis=1)
    assert np.max(change / length) < 0.5
    assert np.median(change / length) < 0.12
    # distinct: two draws differ by millimetres, not by noise
    assert np.mean(np.linalg.norm(first.vertices - other.vertices, axis=1)) > 1.0
    assert np.mean(np.linalg.norm(first.vertices - source.vertices, axis=1)) > 1.0
    unchanged = deform(source, np.random.default_rng(3), strength=0.0)
    assert np.allclose(unchanged.vertices, source.vertices, atol=1e-9)
    with pytest.raises(DataError):
        deform(source, np.random.default_rng(0), strength=-1.0)
    with pytest.raises(DataError):
        deform(source, 5)


def test_split_by_source_has_no_overlap(sources):
    from sonogate.tasks.spine.shapes import DEFAULT_TEST_SOURCES, deform, split_by_source

    rng = np.random.default_rng(0)
    deformed = [deform(s, rng, strength=0.5) for s in sources.values() for _ in range(2)]
    train, test = split_by_source(deformed)
    assert {s.source_id for s in test} == set(DEFAULT_TEST_SOURCES)
    assert not {s.source_id for s in train} & {s.source_id for s in test}
    assert len(train) + len(test) == len(deformed)
    with pytest.raises(DataError, match="not among"):
        split_by_source(deformed, test_sources=("no_such_vertebra",))
    with pytest.raises(DataError):
        split_by_source(deformed, test_sources=tuple(sources))  # nothing left to train on


# ----------------------------------------------------------------------------------------------------- phantom

@pytest.mark.parametrize("source_id", ["verse004_L5", "ssm_mean_L3", "verse521_L1", "verse004_T11"])
def test_ultrasound_sees_the_posterior_arch_only(sources, source_id):
    from scipy.spatial import cKDTree

    from sonogate.tasks.spine.phantom import N_POINTS, make_case
    from sonogate.tasks.spine.shapes import canal_landmarks, deform

    case = make_case(sources[source_id], 11)
    shape = deform(sources[source_id], np.random.default_rng(11))  # the same vertebra the case was made of
    us = case.us_points
    assert us.shape == (N_POINTS, 3) and np.isfinite(us).all()
    assert len(np.unique(us, axis=0)) == N_POINTS  # resampled from more echoes, not padded
    landmarks = canal_landmarks(shape)
    in_body = (us[:, 1] < landmarks["body_posterior_y"] - 2.0) & (np.abs(us[:, 0]) < landmarks["body_half_width_mm"])
    assert in_body.sum() == 0
    # the paper's body half (y below the truth's centroid) near the midline: nothing either
    assert np.sum((us[:, 1] < case.complete[:, 1].mean() - 3.0) & (np.abs(us[:, 0]) < 15.0)) == 0
    assert us[:, 1].mean() > case.complete[:, 1].mean() + 10.0
    # on the surface (speckle jitter is 0.4 mm sd along the beam) and facing the probe that saw it
    distance, nearest = cKDTree(shape.vertices).query(us)
    assert np.percentile(distance, 99) < 1.6
    beams = np.array([pose["beam_direction"] for pose in case.meta["probe_poses"]])[case.us_pose]
    facing = np.einsum("ij,ij->i", shape.normals[nearest], -beams)
    assert np.mean(facing > 0) > 0.97
    assert set(np.unique(case.us_pose)) <= {0, 1, 2} and len(np.unique(case.us_pose)) >= 2


def test_complete_and_xray_clouds(sources):
    from scipy.spatial import cKDTree

    from sonogate.tasks.spine.phantom import XRAY_SIZE_PX, make_case
    from sonogate.tasks.spine.shapes import deform

    case = make_case(sources["ssm_mean_L4"], 5, registration_sd_mm=0.0, registration_sd_deg=0.0)
    shape = deform(sources["ssm_mean_L4"], np.random.default_rng(5))
    assert case.complete.shape == (2048, 3)
    assert np.percentile(cKDTree(shape.vertices).query(case.complete)[0], 99) < 1.5  # on the surface
    # area-weighted: about as many truth points in front of the centroid as behind it for a vertebra
    assert 0.3 < np.mean(case.complete[:, 1] < 0) < 0.7
    assert case.xray_image.shape == (XRAY_SIZE_PX, XRAY_SIZE_PX) and case.xray_image.dtype == np.uint8
    assert case.xray_image.max() > 150 and case.xray_image[0].max() == 0  # bone bright, border empty
    xp = case.xray_points
    assert xp.shape == (2048, 3) and np.all(xp[:, 0] == 0.0) and np.all(case.xray_path_mm >= 0.5 - 1e-6)
    # with no registration offset the 2.5D points lie on the lateral silhouette of the truth (0.5 mm pixels)
    silhouette_distance = cKDTree(shape.vertices[:, 1:]).query(xp[:, 1:])[0]
    assert np.percentile(silhouette_distance, 99) < 1.5
    covered = cKDTree(xp[:, 1:]).query(case.complete[:, 1:])[0]
    assert np.percentile(covered, 95) < 3.0  # and the silhouette covers the whole truth in projection


def test_registration_offset_moves_the_xray_only(sources):
    from sonogate.tasks.spine.phantom import make_case

    aligned = make_case(sources["verse521_L2"], 3, registration_sd_mm=0.0, registration_sd_deg=0.0)
    offset = make_case(sources["verse521_L2"], 3, registration_sd_mm=3.0, registration_sd_deg=2.0)
    assert np.array_equal(aligned.us_points, offset.us_points)
    assert np.array_equal(aligned.complete, offset.complete)
    translation = np.asarray(offset.meta["registration_offset"]["translation_mm"])
    assert 0 < np.linalg.norm(translation) <= 3.0 * 3.0 * np.sqrt(3)
    shift = offset.xray_points[:, 1:].mean(axis=0) - aligned.xray_points[:, 1:].mean(axis=0)
    assert np.allclose(shift, translation[1:], atol=1.5)  # the projection keeps y and z of the offset


def test_written_case_files_and_meta(written):
    cases = sorted(p.name for p in written.iterdir())
    assert cases == [f"case_{i:05d}" for i in range(5)]
    for name in cases:
        folder = written / name
        assert {p.name for p in folder.iterdir()} == {"us_partial.ply", "xray.png", "xray_points.ply",
                                                      "complete.ply", "meta.json"}
        for cloud in ("us_partial.ply", "xray_points.ply", "complete.ply"):
            assert read_ply(folder / cloud).points.shape == (2048, 3)
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["units"] == "mm" and meta["level"] in {"L1", "L2", "L3", "L4", "L5"}
        assert meta["case"] == name and meta["split"] == ("test" if name.endswith("4") else "train")
        assert len(meta["probe_poses"]) == 3
        for pose in meta["probe_poses"]:
            assert np.isclose(np.linalg.norm(pose["beam_direction"]), 1.0) and pose["beam_direction"][1] < -0.9
        assert np.asarray(meta["registration_offset"]["matrix"]).shape == (4, 4)
        assert isinstance(meta["deformation_seed"], int) and meta["source_id"]
        if meta["split"] == "test":
            assert meta["source_id"] in meta["test_sources"]
        else:
            assert meta["source_id"] not in meta["test_sources"]
    import cv2

    image = cv2.imread(str(written / "case_00000" / "xray.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (256, 256) and image.dtype == np.uint8


def test_phantom_is_deterministic(written, tmp_path):
    from sonogate.tasks.spine.phantom import write_spine_phantom

    again = write_spine_phantom(tmp_path / "again", 2, 7, progress=False)  # the first two of the same 5
    other = write_spine_phantom(tmp_path / "other", 1, 8, progress=False)
    for name in ("us_partial.ply", "xray.png", "xray_points.ply", "complete.ply", "meta.json"):
        for case in ("case_00000", "case_00001"):
            assert (written / case / name).read_bytes() == (again / case / name).read_bytes(), (case, name)
        assert (written / "case_00000" / name).read_bytes() != (other / "case_00000" / name).read_bytes()


# ---------------------------------------------------------------------------------------------- PLY and inputs

@pytest.mark.parametrize("binary", [True, False])
def test_ply_round_trip(tmp_path, binary):
    rng = np.random.default_rng(0)
    points = rng.normal(0, 30, (500, 3))
    pose = rng.integers(0, 3, 500).astype(np.uint8)
    path_mm = rng.random(500).astype(np.float32)
    write_ply(tmp_path / "c.ply", points, {"pose": pose, "path_mm": path_mm}, binary=binary)
    cloud = read_ply(tmp_path / "c.ply")
    assert np.allclose(cloud.points, points, atol=1e-3)  # float32 on disk
    assert np.array_equal(cloud.properties["pose"], pose)
    assert np.allclose(cloud.properties["path_mm"], path_mm, atol=1e-5)


def test_ply_reads_other_writers_and_rejects_bad_files(tmp_path):
    mesh = tmp_path / "mesh.ply"
    mesh.write_text("ply\nformat ascii 1.0\ncomment from another tool\nelement vertex 3\nproperty double x\n"
                    "property double y\nproperty double z\nelement face 1\nproperty list uchar int vertex_indices\n"
                    "end_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    assert np.array_equal(read_ply(mesh).points, [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    big_endian = tmp_path / "be.ply"
    big_endian.write_bytes(b"ply\nformat binary_big_endian 1.0\nelement vertex 2\nproperty float x\n"
                           b"property float y\nproperty float z\nend_header\n"
                           + np.array([[1, 2, 3], [4, 5, 6]], dtype=">f4").tobytes())
    assert np.array_equal(read_ply(big_endian).points, [[1, 2, 3], [4, 5, 6]])
    (tmp_path / "not.ply").write_text("hello")
    truncated = tmp_path / "short.ply"
    truncated.write_bytes(big_endian.read_bytes()[:-4])
    for bad in (tmp_path / "not.ply", truncated, tmp_path / "missing.ply"):
        with pytest.raises(DataError):
            read_ply(bad)
    with pytest.raises(DataError, match="NaN"):
        write_ply(tmp_path / "nan.ply", np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(DataError):
        write_ply(tmp_path / "flat.ply", np.zeros((4, 2)))


@pytest.mark.parametrize("n, seed", [(0, 1), (-3, 1), ("5", 1), (2.5, 1), (True, 1), (3, -1), (3, 1.5)])
def test_bad_arguments_give_one_line_errors(tmp_path, n, seed):
    from sonogate.tasks.spine.phantom import write_spine_phantom

    with pytest.raises(SonogateError) as info:
        write_spine_phantom(tmp_path / "out", n, seed, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_bad_output_and_options(tmp_path):
    from sonogate.tasks.spine.phantom import write_spine_phantom

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        write_spine_phantom(a_file, 1, 0, progress=False)
    with pytest.raises(DataError, match=">= 0"):
        write_spine_phantom(tmp_path / "o", 1, 0, progress=False, registration_sd_mm=-1.0)
    with pytest.raises(DataError, match="vertebra mesh folder not found"):
        write_spine_phantom(tmp_path / "o", 1, 0, progress=False, data_dir=tmp_path / "nowhere")


def test_furthest_point_sampling_is_deterministic_and_spread():
    from sonogate.tasks.spine.raster import furthest_point_sample

    points = np.random.default_rng(0).random((3000, 3))
    first = furthest_point_sample(points, 200)
    assert np.array_equal(first, furthest_point_sample(points, 200)) and len(set(first)) == 200
    chosen = points[first]
    spacing = np.sort(np.linalg.norm(chosen[:, None] - chosen[None], axis=2), axis=1)[:, 1]
    random_pick = points[:200]
    random_spacing = np.sort(np.linalg.norm(random_pick[:, None] - random_pick[None], axis=2), axis=1)[:, 1]
    assert spacing.min() > 2 * random_spacing.min()
    with pytest.raises(ValueError):
        furthest_point_sample(points[:10], 20)
