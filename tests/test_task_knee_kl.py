"""The knee_kl task: the reader, the network's export decoder, and the shipped bundle through the runtime (real
ONNX Runtime / OpenVINO): grades and sets on real radiographs, one-line refusals of what is not a knee radiograph."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonogate.errors import DataError
from sonogate.tasks.knee_kl.data import read_knee_split

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "knee_kl"


def test_reader_reads_a_split_and_refuses_bad_folders(tmp_path):
    (tmp_path / "labels.csv").write_text("image,split,kl_grade,subject,side\na.jpg,train,0,1,L\nb.jpg,val,4,2,R\n"
                                         "c.jpg,train,3,3,R\n")
    train = read_knee_split(tmp_path, "train")
    assert [p.name for p in train.paths] == ["a.jpg", "c.jpg"]
    assert train.grades.tolist() == [0, 3] and train.subjects.tolist() == ["1", "3"]
    with pytest.raises(DataError, match="no rows with split 'test'"):
        read_knee_split(tmp_path, "test")
    (tmp_path / "labels.csv").write_text("image,split,kl_grade,subject\na.jpg,train,7,1\n")
    with pytest.raises(DataError, match="0-4"):
        read_knee_split(tmp_path, "train")
    with pytest.raises(DataError, match="no labels.csv"):
        read_knee_split(tmp_path / "missing", "train")


def test_export_decoder_gives_the_ordinal_probabilities_and_median_grade():
    torch = pytest.importorskip("torch")
    from sonogate.models.ordinal import predict_grade, probabilities
    from sonogate.tasks.knee_kl.export import median_grades
    from sonogate.tasks.knee_kl.net import KneeKLExport, KneeKLNet

    torch.manual_seed(0)
    for head in ("corn", "coral", "softmax"):
        net = KneeKLNet(head, widths=(8, 8, 16), feature_dim=16).eval()
        x = torch.randn(6, 1, 64, 64)
        with torch.no_grad():
            log_probs, feats = KneeKLExport(net)(x)
            logits = net(x)
        assert log_probs.shape == (6, 5) and feats.shape == (6, 16)
        np.testing.assert_allclose(torch.softmax(log_probs, 1).numpy(), probabilities(logits, head).numpy(),
                                   atol=1e-5)
        np.testing.assert_array_equal(median_grades(log_probs.numpy()), predict_grade(logits, head, "median").numpy())
        with torch.no_grad():  # the flip-averaged graph: a normalised geometric mean of the image and its mirror
            averaged, feats_avg = KneeKLExport(net, flip_average=True)(x)
            mirrored = torch.log(probabilities(net(torch.flip(x, dims=(3,))), head).clamp_min(1e-7))
        expected = torch.log_softmax((log_probs + mirrored) / 2, dim=1)
        np.testing.assert_allclose(averaged.numpy(), expected.numpy(), atol=1e-5)
        np.testing.assert_allclose(feats_avg.numpy(), feats.numpy(), atol=1e-6)
        assert np.allclose(torch.exp(averaged).sum(1).numpy(), 1.0, atol=1e-5)
        other = KneeKLNet(head, widths=(8, 8, 16), feature_dim=16).eval()
        with torch.no_grad():  # an ensemble: the normalised geometric mean over both networks and both mirrors
            ensemble, feats_ens = KneeKLExport(net, flip_average=True, members=(other,))(x)
            other_views = [torch.log(probabilities(other(v), head).clamp_min(1e-7)) for v in (x, torch.flip(x, dims=(3,)))]
        expected = torch.log_softmax((log_probs + mirrored + other_views[0] + other_views[1]) / 4, dim=1)
        np.testing.assert_allclose(ensemble.numpy(), expected.numpy(), atol=1e-5)
        np.testing.assert_allclose(feats_ens.numpy(), feats.numpy(), atol=1e-6)


@pytest.fixture(scope="module")
def knee_model():
    if not (BUNDLE / "manifest.json").is_file():
        pytest.skip(f"no shipped knee bundle at {BUNDLE}")
    from sonogate.runtime.model_api import create_model

    return create_model(BUNDLE, device="ort-cpu", threads=1)


def test_shipped_bundle_grades_real_radiographs_with_sets(knee_model, shared_data):
    """Eight val radiographs per grade through the runtime: contiguous sets, probabilities that sum to 1, and grades
    that rise with the expert grade (the shipped model's val QWK is 0.74: docs/tasks/knee_kl.md)."""
    root = shared_data / "knee-oa-kl-xray"
    val = read_knee_split(root, "val")
    mean_grade, covered, sizes = {}, [], []
    for grade in range(5):
        predicted = []
        for i in np.flatnonzero(val.grades == grade)[:8]:
            try:
                result = knee_model.analyze(cv2.imread(str(val.paths[i]), cv2.IMREAD_COLOR), None, [])
            except DataError:  # about 1 % of val radiographs fall outside the OOD thresholds
                continue
            columns = result["columns"]
            members = [int(t) for t in columns["kl_grade_set"].split("|")]
            assert members == list(range(members[0], members[-1] + 1))  # a contiguous grade range
            assert columns["kl_grade"] in range(5)
            assert result["recommendation"] in ("graded", "refer to reader")
            assert abs(sum(result["probabilities"].values()) - 1.0) < 1e-3
            predicted.append(columns["kl_grade"])
            covered.append(grade in members)
            sizes.append(len(members))
        mean_grade[grade] = float(np.mean(predicted))
    assert mean_grade[4] - mean_grade[0] >= 1.5
    assert mean_grade[3] > mean_grade[1]
    assert np.mean(covered) >= 0.75 and np.mean(sizes) < 4.0


def test_shipped_bundle_refuses_what_is_not_a_knee_radiograph(knee_model, shared_data):
    rng = np.random.default_rng(0)
    photo = np.zeros((240, 320, 3), np.uint8)
    photo[:] = (40, 120, 200)
    cv2.circle(photo, (160, 120), 70, (30, 200, 60), -1)
    with pytest.raises(DataError, match="colour"):
        knee_model.analyze(photo, None, [])
    with pytest.raises(DataError, match="blank"):
        knee_model.analyze(np.full((224, 224), 90, np.uint8), None, [])
    ultrasound = min((shared_data / "hip-us-standard-plane").rglob("*.png"))
    with pytest.raises(DataError, match="not a radiograph like|out of the model"):
        knee_model.analyze(cv2.imread(str(ultrasound)), None, [])
    document = np.tile(np.linspace(30, 220, 320), (240, 1)).astype(np.uint8)
    cv2.putText(document, "TEXT", (40, 140), cv2.FONT_HERSHEY_SIMPLEX, 3, 255, 8)
    with pytest.raises(DataError, match="not a radiograph like|out of the model"):
        knee_model.analyze(document, None, [])
    noise = rng.integers(0, 255, (224, 224), dtype=np.uint8)
    with pytest.raises(DataError, match="not a radiograph like|out of the model"):
        knee_model.analyze(noise, None, [])


@pytest.mark.torchfree
def test_shipped_int8_model_keeps_the_first_convolution_projection_and_head_float():
    """The layers the exporter keeps float (chosen on val: grade agreement with float 0.926 -> 0.983) read their
    float weights directly; every other convolution reads a dequantised INT8 weight."""
    import re

    import onnx

    from sonogate.tasks.knee_kl.export import KneeKLExporter

    path = BUNDLE / "model.int8.onnx"
    if not path.is_file():
        pytest.skip(f"no shipped knee bundle at {BUNDLE}")
    graph = onnx.load(str(path)).graph
    initializers = {t.name: t for t in graph.initializer}
    kept_float, quantised = [], []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        weight = node.input[1]
        if weight in initializers and initializers[weight].data_type == onnx.TensorProto.FLOAT:
            # the pre-processing names a folded batch norm's weight, and a copy per use
            kept_float.append(re.sub(r"^ConvBnFusion_W_|_token_\d+$", "", weight))
        else:
            quantised.append(weight)
    exporter = KneeKLExporter()
    exporter.members = len(json.loads((BUNDLE / "manifest.json").read_text())["model"].get("ensemble") or [0]) - 1
    prefixes = exporter.float_weight_prefixes
    # three layers per network (each used twice when the graph averages the image and its mirror)
    assert len(set(kept_float)) == 3 * (1 + exporter.members), kept_float
    assert all(name.startswith(prefixes) for name in kept_float), kept_float
    assert len(quantised) >= 8
