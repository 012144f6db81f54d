"""`sonogate bench`: the short mode runs and writes the documented JSON; its parts work; bad input is one line.

The short mode is a harness check (seconds of timing on a busy CI machine): the tests check shapes and that
numbers are positive and finite, never how fast anything is.
"""

import importlib.util
import json
import math

import numpy as np
import pytest

from sonogate.bench.flops import count_flops
from sonogate.bench.models import build_resnet18_onnx, kernel_model
from sonogate.bench.report import latency_stats
from sonogate.bench.workers import run_worker
from sonogate.cli import main
from tests.tiny_bundle import speckled_frame, write_tiny_bundle

pytestmark = pytest.mark.torchfree

HAS_TORCH = importlib.util.find_spec("torch") is not None
ROW_KEYS = {"backend", "precision", "input_size", "threads", "p50_ms", "p90_ms", "p99_ms", "max_ms", "n"}
STATUSES = {"pass", "fail", "not measured"}


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_short_mode_writes_rows_flops_peak_goals_and_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no demo/bundle here: latency, FLOPs and peak only
    out = tmp_path / "out"
    assert main(["bench", "--short", "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "latest.json").read_text())

    assert report["mode"] == "short" and report["schema"] == 1
    rows = report["rows"]
    kinds = {(r["backend"], r["precision"]) for r in rows}
    assert {("onnxruntime", "fp32"), ("onnxruntime", "int8")} <= kinds, report.get("skipped")
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert (row["input_size"], row["threads"], row["n"]) == (160, 1, 30)
        for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "gflops_achieved", "cpu_ms_per_frame"):
            assert _positive(row[key]), (key, row)
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
    if HAS_TORCH:
        assert ("pytorch-eager", "fp32") in kinds, report.get("skipped")
        assert all(_positive(r["speedup_vs_torch_p50"]) for r in rows)
    else:
        assert "torch not installed" in printed

    # FLOPs of the 1-channel ResNet-18 + heads at 160 px: about 1.77 GFLOP
    assert 1.6e9 < report["flops"]["160"]["flops"] < 1.95e9
    assert _positive(report["peak_gflops"]["fp32"]["1"]) and _positive(report["peak_gflops"]["int8"]["1"])
    assert report["machine"]["cpu_model"] and isinstance(report["machine"]["cpu_flags"], list)
    assert "numpy" in report["machine"]["versions"]
    assert report["end_to_end"]["runs"] == [] and "no bundle" in report["end_to_end"]["note"]
    assert len(report["goals"]) == 6 and {g["status"] for g in report["goals"]} <= STATUSES
    assert printed.count("GOAL ") == 6
    for name in ("results.md", "latency_vs_size.png", "latency_hist_160.png"):
        assert (out / name).stat().st_size > 0
    assert "| onnxruntime | int8 | 160 | 1 |" in (out / "results.md").read_text()


def test_end_to_end_and_accuracy_parts_on_a_tiny_bundle(tmp_path, monkeypatch):
    from sonogate.data.folder import write_labelled_folder

    monkeypatch.chdir(tmp_path)
    bundle = write_tiny_bundle(tmp_path / "bundle")
    rng = np.random.default_rng(0)
    levels = rng.uniform(60, 200, 12)
    images = [speckled_frame(level, rng, size=64)[:, :, 0] for level in levels]
    # the tiny model's alpha is 60 + 10 * mean(normalised image): label it exactly for a small MAE
    alpha = 60 + 10 * ((levels / 255 - 0.5) / 0.25)
    write_labelled_folder(tmp_path / "data", images, [{"alpha_deg": a, "standard_plane": 1} for a in alpha])
    out = tmp_path / "out"
    assert main(["bench", "--short", "--parts", "e2e,accuracy", "--bundle", str(bundle), "--data",
                 str(tmp_path / "data"), "--out", str(out), "--cache", str(tmp_path / "cache"),
                 "--e2e-seconds", "2", "--no-progress"]) == 0
    report = json.loads((out / "latest.json").read_text())

    (run,) = report["end_to_end"]["runs"]
    assert "error" not in run, run
    assert run["pace_fps"] == 30.0 and run["frames"] > 0 and run["dropped_frames"] >= 0
    for key in ("rss_peak_mb", "start_to_first_decision_s", "cpu_s", "fps"):
        assert _positive(run[key]), (key, run)
    assert _positive(run["latency_ms"]["p99"])
    acc = {(r["variant"], r["engine"]): r for r in report["accuracy"]["rows"]}
    assert ("float", "ort-cpu") in acc, report["accuracy"]
    assert acc[("float", "ort-cpu")]["mae"]["alpha_deg"] < 2.0  # speckle only moves the mean a little
    assert {g["status"] for g in report["goals"]} <= STATUSES and report["rows"] == []
    assert next(g for g in report["goals"] if "RSS" in g["goal"])["status"] != "not measured"


def test_flop_count_matches_the_layer_arithmetic(tmp_path):
    import onnx

    model, _, flops = kernel_model("conv3x3_128x28", "fp32")
    onnx.save(model, str(tmp_path / "conv.onnx"))
    assert count_flops(tmp_path / "conv.onnx")["flops"] == flops == 2 * 128 * 128 * 9 * 28 * 28
    # the torch-free ResNet-18 builder: conv1 alone is 64 * 7 * 7 MACs per output pixel (S/2)^2
    build_resnet18_onnx(tmp_path / "r.onnx", 64)
    counted = count_flops(tmp_path / "r.onnx")
    assert counted["macs_by_op"]["Gemm"] == 512 * 128 * 2 + 128 * 3 + 128 * 1
    assert 1.6e9 * (64 / 160) ** 2 < counted["flops"] < 1.95e9 * (64 / 160) ** 2


def test_percentiles_are_ordered():
    stats = latency_stats(list(np.random.default_rng(0).gamma(2.0, 5.0, 300)))
    assert stats["n"] == 300
    assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]


@pytest.mark.parametrize("argv, message", [
    (["--bundle", "no/such/bundle"], "bundle folder not found"),
    (["--parts", "latency,warp"], "unknown --parts warp"),
    (["--backends", "onnxruntime,tpu"], "unknown backend tpu"),
    (["--data", "no/such/folder"], "--data folder not found"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_sizes_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--sizes", "100,160"])
    assert exc.value.code == 2
    assert "multiples of 32" in capsys.readouterr().err


@pytest.mark.slow
def test_full_recipe_rebuild_with_the_shipping_exporter_and_nncf(tmp_path):
    """The full run rebuilds sizes with sonogate.export (dynamo ONNX, INT8 QDQ) and NNCF: minutes on 2 cores."""
    pytest.importorskip("torch")
    pytest.importorskip("nncf")
    result = run_worker({"task": "build", "size": 64, "dir": str(tmp_path / "m"), "arch_kind": "torch",
                         "calib_images": [], "calib_frames": 8, "nncf": True, "int8": True, "ship": True},
                        1, 900)
    assert "error" not in result, result
    assert result["int8"] and result["nncf"], result["meta"]
    assert result["meta"]["int8"]["calibration"] == "smooth-random"
    latency = run_worker({"task": "latency", "backend": "openvino-nncf", "precision": "int8", "size": 64,
                          "threads": 1, "model": result["nncf"], "frames": 5, "warmup": 1,
                          "cache": str(tmp_path)}, 1, 300)
    assert "error" not in latency and len(latency["times_ms"]) == 5
