"""Spine export (issue 22, item 3): an untrained full-size completion network (made in the test) -> a bundle with
two named point-cloud inputs that ``create_model`` loads and ONNX Runtime runs, with parity.json saying which
precision ships and why. The data folder holds copies of the committed phantom case (tests/data/spine_case), two
as training cases and one as the held-out test case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "tests" / "data" / "spine_case"


@pytest.mark.parametrize("embedding", ["plane", "half_path"])
def test_export_writes_a_bundle_the_runtime_runs(tmp_path, embedding):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from sonogate.core.bundle import load_bundle
    from sonogate.runtime.model_api import create_model
    from sonogate.tasks.spine.export import export_spine_bundle
    from sonogate.tasks.spine.net import CompletionNet
    from sonogate.tasks.spine.phantom import embed_xray
    from sonogate.tasks.spine.ply import read_ply
    from sonogate.tasks.spine.train import net_config

    data = tmp_path / "data"
    for name, split in (("case_a", "train"), ("case_b", "train"), ("case_c", "test")):
        shutil.copytree(CASE, data / name)
        meta = json.loads((data / name / "meta.json").read_text())
        meta["split"] = split
        (data / name / "meta.json").write_text(json.dumps(meta))
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    net = CompletionNet("early+late", xray_embedding=embedding)
    torch.save({"mode": "early+late", "net_config": net_config(net), "model": net.state_dict(), "state": {}},
               run / "checkpoint.pt")
    lines: list[str] = []
    export_spine_bundle(run, tmp_path / "bundle", data=str(data), latency_runs=2, log=lines.append)
    parity = json.loads((tmp_path / "bundle" / "parity.json").read_text())
    shipped = parity["shipped"]["variant"]
    assert shipped in ("int8", "float") and "CD-L2" in parity["shipped"]["reason"]
    files = sorted(p.name for p in (tmp_path / "bundle").iterdir())
    assert files == sorted(["manifest.json", "parity.json", "model.int8.onnx" if shipped == "int8" else "model.onnx"])
    bundle = load_bundle(tmp_path / "bundle")  # verifies every sha256
    assert bundle.preprocessing is None and bundle.manifest["task"]["model_type"] == "point_completion"
    assert [i["name"] for i in bundle.manifest["inputs"]] == ["us_points", "xray_points"]
    assert bundle.manifest["spine"]["levels"] == ["L4"]
    model = create_model(bundle, device="ort-cpu")
    assert model.adapter.input_names == ("us_points", "xray_points")
    assert bundle.manifest["spine"]["network"]["xray_embedding"] == embedding
    assert bundle.manifest["spine"]["xray_geometry"]["embedding"] == embedding
    us = read_ply(CASE / "us_partial.ply").points.astype(np.float32)
    cloud = read_ply(CASE / "xray_points.ply")
    xray = embed_xray(cloud.points, cloud.properties["path_mm"], embedding)
    # the wrapper makes the same X-ray input from the radiograph alone, embedded as the bundle says
    grey = cv2.imread(str(CASE / "xray.png"), cv2.IMREAD_GRAYSCALE)
    made = model.case_inputs({"us_partial": CASE / "us_partial.ply", "xray": grey}, [])["xray_points"]
    assert np.allclose(made, xray, atol=1e-3)
    assert (made[:, 0].max() > 5.0) == (embedding == "half_path")  # millimetres of bone, or the plane x = 0
    first, second = model.complete(us, xray), model.complete(us, xray)
    assert first["completed"].shape == (2048, 3) and np.array_equal(first["completed"], second["completed"])
    with torch.no_grad():
        reference = net.eval()(torch.from_numpy(us[None]), torch.from_numpy(xray[None]))["completed"][0].numpy()
    # INT8 moves points by a fraction of a millimetre at most; fp32 matches torch to float rounding
    tolerance = 1e-3 if shipped == "float" else 1.0
    assert np.abs(first["completed"] - reference).mean() < tolerance
    assert any("matches torch" in line for line in lines)
