"""Calibration I/O, the `calibrate` / `policy-report` commands and the policy report on synthetic predictions."""

from __future__ import annotations

import argparse
import json
import sys
import types

import numpy as np
import pytest

from sonogate.calibration.calfile import load_calibration
from sonogate.calibration.fit import read_predictions_csv
from sonogate.calibration.report import policy_report
from sonogate.calibration.synthetic import synthetic_table
from sonogate.errors import DataError, SonogateError
from sonogate.runtime.calibrate_cli import register

pytestmark = pytest.mark.torchfree


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sonogate")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def synth_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "pred.csv"
    synthetic_table(80, accuracy="good", seed=21).to_csv(path)
    return path


def test_csv_round_trip_and_optional_columns(tmp_path, synth_csv):
    table = read_predictions_csv(synth_csv)
    original = synthetic_table(80, accuracy="good", seed=21)
    assert table.names == original.names and len(table) == len(original)
    assert np.array_equal(table.groups, original.groups) and np.array_equal(table.subjects, original.subjects)
    np.testing.assert_allclose(table.pred, original.pred, rtol=1e-5)
    path = tmp_path / "min.csv"
    path.write_text("id,group,pred_alpha_deg,true_alpha_deg\na,g1,61.5,60\nb,g2,,58\n")
    small = read_predictions_csv(path)
    assert small.subjects is None and np.all(small.quality == 1.0) and np.isnan(small.pred[1, 0])


@pytest.mark.parametrize(
    "text, message",
    [
        ("group,pred_alpha_deg,true_alpha_deg\ng,1,2\n", "no 'id' column"),
        ("id,group,pred_alpha_deg\na,g,1\n", "no true_alpha_deg"),
        ("id,group,true_alpha_deg\na,g,1\n", "no pred_"),
        ("id,group,pred_alpha_deg,true_alpha_deg\na,g,sixty,60\n", ":2: column pred_alpha_deg is not a number"),
        ("id,group,pred_alpha_deg,true_alpha_deg\n", "no rows"),
        ("", "empty"),
    ],
)
def test_csv_user_errors(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_predictions_csv(path)


def test_csv_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_predictions_csv(tmp_path / "nope.csv")


def test_cli_calibrate_from_predictions(tmp_path, synth_csv, capsys):
    out = tmp_path / "cal.json"
    assert (
        _run(["calibrate", "--predictions", str(synth_csv), "--delta", "0.1", "--rule", "or", "--out", str(out)]) == 0
    )
    obj = json.loads(out.read_text())
    assert obj["rule"] == "or" and obj["mode"] == "joint" and obj["delta"] == 0.1 and obj["bundle_sha256"] is None
    assert obj["data"]["source"] == "predictions_csv" and len(obj["data"]["sha256"]) == 64
    for name in ("alpha_deg", "beta_deg", "coverage_pct"):
        assert {"radius", "n", "k"} <= set(obj["measurements"][name])
    printed = capsys.readouterr().out
    assert "us_sufficient needs either of" in printed and "needs a corrected alpha_deg >=" in printed

    out2 = tmp_path / "cal2.json"
    _run(
        [
            "calibrate",
            "--predictions",
            str(synth_csv),
            "--delta",
            "0.45",
            "--rule",
            "alpha",
            "--mode",
            "separate",
            "--no-affine",
            "--pac-gamma",
            "0.1",
            "--threshold",
            "alpha_deg=58",
            "--out",
            str(out2),
        ]
    )
    cal = load_calibration(out2)
    assert cal.thresholds["alpha_deg"] == 58.0 and cal.measurements["alpha_deg"].a == 1.0
    assert cal.guarantee["pac_gamma"] == 0.1


def test_cli_calibrate_user_errors(tmp_path, synth_csv):
    with pytest.raises(SonogateError, match="--out"):
        _run(["calibrate", "--predictions", str(synth_csv), "--delta", "0.1"])
    with pytest.raises(SonogateError, match="delta"):
        _run(["calibrate", "--predictions", str(synth_csv), "--delta", "1.2", "--out", str(tmp_path / "x.json")])
    with pytest.raises(DataError, match="--data"):
        _run(["calibrate", "--bundle", str(tmp_path), "--delta", "0.1"])
    with pytest.raises(SystemExit):  # mutually exclusive sources
        _run(["calibrate", "--predictions", str(synth_csv), "--bundle", str(tmp_path), "--delta", "0.1"])


def test_cli_calibrate_bundle_path_binds_to_bundle_hash(tmp_path, monkeypatch, capsys):
    from sonogate.core.bundle import manifest_hash, write_manifest

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes(b"not a real model")
    write_manifest(
        bundle,
        {
            "task": "hip_us",
            "preprocessing": {"height": 32, "width": 32},
            "outputs": {
                "measurements": {"names": ["alpha_deg", "beta_deg", "coverage_pct"], "units": ["deg", "deg", "%"]}
            },
            "models": {"float": {"file": "model.onnx"}},
        },
    )
    calls = {}

    def fake_predict_folder(bundle_path, data_dir, device="auto", progress=True):
        calls["args"] = (str(bundle_path), str(data_dir), device)
        return synthetic_table(60, accuracy="good", seed=3)

    fake = types.ModuleType("sonogate.runtime.predict")
    fake.predict_folder = fake_predict_folder
    monkeypatch.setitem(sys.modules, "sonogate.runtime.predict", fake)
    assert _run(["calibrate", "--bundle", str(bundle), "--data", str(tmp_path / "imgs"), "--delta", "0.2"]) == 0
    assert calls["args"] == (str(bundle), str(tmp_path / "imgs"), "auto")
    cal = load_calibration(bundle / "calibration.json", bundle_hash=manifest_hash(bundle))
    assert cal.bundle_sha256 == manifest_hash(bundle) and cal.data["source"] == "image_folder"
    assert "bound to bundle" in capsys.readouterr().out


def test_policy_report_synthetic(tmp_path):
    table = synthetic_table(120, accuracy="good", seed=8)
    report = policy_report(table, tmp_path, deltas=(0.1, 0.3), n_splits=3, seed=1, targets=(0.1,), plots=False)
    for name in ("report.md", "report.json"):
        assert (tmp_path / name).is_file()
    md = (tmp_path / "report.md").read_text()
    assert "Table 1" in md and "| Rule | delta | Method |" in md and "US-only rate at a guaranteed miss level" in md
    data = json.loads((tmp_path / "report.json").read_text())
    ours = data["results"]["ours"]["and"]["0.1"]
    paper = data["results"]["paper_frame"]["and"]["0.1"]
    for s in (ours, paper):
        assert 0 <= s["us_only_rate"] <= 1 and 0 <= s["coverage_joint"] <= 1 and s["splits"] == 3
    assert report["headline"][0]["target"] == 0.1 and "ours" in report["headline"][0]
    # ours keeps its guarantee on held-out subjects; the paper's calibration used live per sweep loses coverage
    assert ours["false_reassurance"] <= 0.1
    ours_or = data["results"]["ours"]["or"]["0.1"]
    assert data["results"]["paper_cine_any_frame"]["or"]["0.1"]["coverage_joint"] < ours_or["coverage_joint"] - 0.1
    # decision-curve identity: -lambda P(X) - mu P(miss) = -mu pi + (mu - lambda) NB(lambda / mu)
    c = data["decision_curves"]["policies"]["ours|and|0.1"]
    lam, mu = 0.25, 1.0
    nb = c["tp"] - c["fp"] * (lam / mu) / (1 - lam / mu)
    u = -lam * ours["p_xray"] - mu * ours["false_reassurance"]
    assert u == pytest.approx(-mu * ours["prevalence"] + (mu - lam) * nb)
    heat = data["heatmaps"]["or"]
    assert np.array(heat["us_only_rate"]).shape == (8, 8)


def test_policy_report_flags_infinite_bounds(tmp_path):
    table = synthetic_table(15, accuracy="good", seed=9)  # ~9 calibration sweeps per split: k > n at delta 0.05
    policy_report(table, tmp_path, deltas=(0.05,), targets=(0.05,), n_splits=2, plots=False, rules=("alpha",))
    md = (tmp_path / "report.md").read_text()
    assert "Infinite bounds" in md and "can never say us_sufficient" in md


def test_cli_policy_report_with_plots(tmp_path, synth_csv, capsys):
    out = tmp_path / "rep"
    assert (
        _run(
            [
                "policy-report",
                "--predictions",
                str(synth_csv),
                "--out",
                str(out),
                "--splits",
                "2",
                "--deltas",
                "0.1,0.3",
                "--targets",
                "0.1",
            ]
        )
        == 0
    )
    for name in (
        "coverage.png",
        "tradeoff.png",
        "heatmap_or.png",
        "heatmap_and.png",
        "decision_curves.png",
        "net_benefit.png",
    ):
        assert (out / name).stat().st_size > 1000, name
    assert "ours, joint per sweep" in capsys.readouterr().out
    with pytest.raises(SonogateError, match="--rules"):
        _run(["policy-report", "--predictions", str(synth_csv), "--out", str(out), "--rules", "xor"])


def test_main_cli_exit_code_2_on_user_error(tmp_path):
    try:
        from sonogate.cli import build_parser, main

        build_parser()
    except (ImportError, AttributeError) as exc:  # another stage's CLI not written yet
        pytest.skip(f"main CLI not importable yet: {exc}")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,group,pred_alpha_deg,true_alpha_deg\na,g,x,60\n")
    assert (
        main(
            [
                "calibrate",
                "--predictions",
                str(bad),
                "--delta",
                "0.1",
                "--rule",
                "alpha",
                "--out",
                str(tmp_path / "c.json"),
            ]
        )
        == 2
    )


def test_calibrate_bundle_end_to_end_with_real_predict_folder(tmp_path, capsys):
    """`calibrate --bundle --data` through the runtime's predict_folder on a tiny real ONNX bundle."""
    pytest.importorskip("onnxruntime")
    cv2 = pytest.importorskip("cv2")
    try:
        from tiny_bundle import speckled_frame, write_tiny_bundle

        from sonogate.core.bundle import manifest_hash
        from sonogate.runtime.predict import predict_folder  # noqa: F401
    except ImportError as exc:  # the runtime stage is not importable in this checkout
        pytest.skip(f"runtime not importable: {exc}")
    bundle = write_tiny_bundle(tmp_path / "bundle", calibrate=False)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["image,sweep_id,hip_alpha_deg,hip_beta_deg,hip_coverage_pct"]
    for s in range(24):
        gray = rng.uniform(90, 170)
        x = (gray / 255 - 0.5) / 0.25  # the tiny model: alpha = 60 + 10 x, beta = 60 - 5 x, coverage = 50 + 20 x
        truth = (60 + 10 * x + rng.normal(0, 1.5), 60 - 5 * x, 50 + 20 * x + rng.normal(0, 3))
        for f in range(4):
            name = f"images/s{s:02d}_f{f}.png"
            cv2.imwrite(str(data / name), speckled_frame(gray, rng, size=64)[:, :, 0])
            rows.append(f"{name},sweep{s:02d},{truth[0]:.1f},{truth[1]:.1f},{truth[2]:.1f}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    assert (
        _run(
            [
                "calibrate",
                "--bundle",
                str(bundle),
                "--data",
                str(data),
                "--delta",
                "0.2",
                "--rule",
                "alpha",
                "--no-affine",
                "--device",
                "ort-cpu",
            ]
        )
        == 0
    )
    cal = load_calibration(bundle / "calibration.json", bundle_hash=manifest_hash(bundle))
    mc = cal.measurements["alpha_deg"]
    assert mc.n == 24 and mc.k == 20 and mc.radius is not None and mc.radius < 10
    assert "bound to bundle" in capsys.readouterr().out
