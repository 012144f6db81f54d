"""Spine completion network (issue 22): shapes, determinism, KL, chamfer, ONNX parity, a tiny training run, and
the numpy metrics against hand-made point sets.

Tests that need torch skip without it (``pytest.importorskip``); the metrics tests are torch-free. The training
test writes 8 phantom cases (needs ../shared/data/vertebra-meshes, scipy and scikit-image; skips otherwise).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sonogate.errors import DataError, SonogateError
from sonogate.tasks.spine.metrics import completion_metrics, nearest_distances, pair_metrics, summarise

MESHES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vertebra-meshes"


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _inputs(torch, batch: int = 1, seed: int = 0):
    """A posterior ultrasound-like cap and a flat (x = 0) X-ray-like cloud in mm, (batch, 2048, 3) each."""
    rng = np.random.default_rng(seed)
    us = rng.normal(0.0, 15.0, (batch, 2048, 3)) + np.array([0.0, 20.0, 0.0])
    xray = rng.normal(0.0, 15.0, (batch, 2048, 3))
    xray[:, :, 0] = 0.0
    return torch.from_numpy(us.astype(np.float32)), torch.from_numpy(xray.astype(np.float32))


# ----------------------------------------------------------------------------------------------- the network

def test_every_mode_gives_2048_points_and_the_same_output_twice(torch):
    from sonogate.tasks.spine.net import MODES, CompletionNet

    us, xray = _inputs(torch)
    for mode in MODES:
        torch.manual_seed(0)
        net = CompletionNet(mode).eval()
        with torch.no_grad():
            torch.manual_seed(1)
            first = net(us, xray)
            torch.manual_seed(2)  # a different random state: inference must not sample
            second = net(us, xray)
        assert first["completed"].shape == (1, 2048, 3) and first["coarse"].shape == (1, 512, 3), mode
        assert torch.equal(first["completed"], second["completed"]), mode
        assert set(first) == {"completed", "coarse"}
        # outputs are mm in the input's frame: near the inputs, not at the normalised scale
        assert float(first["completed"].abs().max()) > 1.0


def test_modes_use_the_inputs_they_name(torch):
    from sonogate.tasks.spine.net import CompletionNet

    us, xray = _inputs(torch)
    moved_xray = xray + torch.tensor([0.0, 5.0, 0.0])
    moved_us = us + torch.tensor([0.0, 0.0, 5.0])
    outputs = {}
    for mode in ("us", "xray", "early+late"):
        torch.manual_seed(0)
        net = CompletionNet(mode, n_coarse=128).eval()  # 512 output points: same graph, quicker
        with torch.no_grad():
            outputs[mode] = [net(*pair)["completed"] for pair in ((us, xray), (us, moved_xray), (moved_us, xray))]
    base, xray_moved, us_moved = outputs["us"]
    assert torch.equal(base, xray_moved) and not torch.equal(base, us_moved)  # "us" ignores the X-ray
    base, xray_moved, _ = outputs["xray"]
    assert not torch.equal(base, xray_moved)
    # "xray" centres on the X-ray cloud: moving the ultrasound cloud changes nothing
    assert torch.equal(outputs["xray"][0], outputs["xray"][2])
    assert not torch.equal(outputs["early+late"][0], outputs["early+late"][1])


def test_kl_term_in_training_only_and_inference_is_the_prior_mean(torch):
    from sonogate.tasks.spine.net import SCALE_MM, CompletionNet, _gaussian, training_loss

    us, xray = _inputs(torch, batch=2)
    complete = us + torch.tensor([0.0, -25.0, 0.0])
    torch.manual_seed(0)
    net = CompletionNet("early+late", n_coarse=128)
    net.train()
    out = net(us, xray, complete)
    assert out["kl"].shape == (2,) and bool(torch.all(out["kl"] > 0)) and bool(torch.isfinite(out["kl"]).all())
    loss, parts = training_loss(out, complete, kl_weight=1.0)
    loss_without_kl, _ = training_loss(out, complete, kl_weight=0.0)
    assert math.isclose(float((loss - loss_without_kl).detach()), parts["kl"], rel_tol=1e-4)
    with pytest.raises(SonogateError, match="complete clouds"):
        net(us, xray)
    net.eval()
    with torch.no_grad():
        result = net(us, xray)
        assert "kl" not in result
        # the same computation by hand, with the prior's mean as the latent
        n_us, n_xray, centre = net.normalise(us, xray)
        feature = net.condition(n_us, n_xray)
        prior_mu, _ = _gaussian(net.prior_head(feature))
        coarse, refine_feature = net.decode_coarse(feature, prior_mu, n_xray, centre)
        by_hand = net.refine(coarse, refine_feature, n_us, n_xray)[0] * SCALE_MM + centre
    assert torch.allclose(result["completed"], by_hand, atol=1e-5)
    with pytest.raises(SonogateError, match="unknown completion mode"):
        CompletionNet("ultrasound")


def test_chamfer_matches_a_brute_force_loop(torch):
    from sonogate.tasks.spine.net import chamfer

    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 40, 3))
    b = rng.normal(size=(2, 55, 3))
    cd_l1, cd_l2 = chamfer(torch.from_numpy(a), torch.from_numpy(b))
    for k in range(2):
        a_to_b = [min(float(np.sum((p - q) ** 2)) for q in b[k]) for p in a[k]]
        b_to_a = [min(float(np.sum((p - q) ** 2)) for p in a[k]) for q in b[k]]
        assert math.isclose(float(cd_l2[k]), np.mean(a_to_b) + np.mean(b_to_a), rel_tol=1e-6)
        assert math.isclose(float(cd_l1[k]), (np.mean(np.sqrt(a_to_b)) + np.mean(np.sqrt(b_to_a))) / 2,
                            rel_tol=1e-5)
        d_ab, d_ba = nearest_distances(a[k], b[k])
        assert np.allclose(d_ab, np.sqrt(a_to_b), atol=1e-9) and np.allclose(d_ba, np.sqrt(b_to_a), atol=1e-9)


def test_onnx_matches_torch_and_repeats_exactly(torch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from sonogate.tasks.spine.net import CompletionNet, export_onnx

    us, xray = _inputs(torch, batch=2, seed=5)
    for mode in ("early+late", "us"):
        torch.manual_seed(0)
        net = CompletionNet(mode).eval()
        path = export_onnx(net, tmp_path / f"{mode}.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["us_points", "xray_points"]  # kept in every mode
        assert [o.name for o in session.get_outputs()] == ["completed", "coarse"]
        feeds = {"us_points": us.numpy(), "xray_points": xray.numpy()}
        completed, coarse = session.run(None, feeds)
        again, _ = session.run(None, feeds)
        with torch.no_grad():
            reference = net(us, xray)
        assert completed.shape == (2, 2048, 3) and coarse.shape == (2, 512, 3)
        assert np.array_equal(completed, again)
        assert np.allclose(completed, reference["completed"].numpy(), atol=1e-4, rtol=0), mode
        assert np.allclose(coarse, reference["coarse"].numpy(), atol=1e-4, rtol=0), mode
        single, _ = session.run(None, {k: v[:1] for k, v in feeds.items()})  # dynamic batch
        assert np.allclose(single[0], completed[0], atol=1e-4)


@pytest.fixture(scope="module")
def phantom_cases(tmp_path_factory):
    if not MESHES.is_dir():
        pytest.skip(f"vertebra meshes not found at {MESHES}")
    pytest.importorskip("scipy", reason="building source shapes needs scipy")
    pytest.importorskip("skimage", reason="marching cubes of the VerSe mask needs scikit-image")
    from sonogate.tasks.spine.phantom import write_spine_phantom

    out = tmp_path_factory.mktemp("spine_net") / "phantom"
    write_spine_phantom(out, 8, 11, progress=False)
    return out


def test_split_keeps_test_and_validation_sources_apart(phantom_cases):
    from sonogate.tasks.spine.train import default_val_sources, load_cases, split_cases

    cases = load_cases(phantom_cases)
    assert len(cases) == 8 and cases.us.shape == (8, 2048, 3)
    val_sources = default_val_sources(cases)
    train, val, test = split_cases(cases, val_sources)
    assert len(train) + len(val) + len(test) == 8 and len(test) == 1  # every fifth case is a test case
    assert not set(test.sources) & (set(train.sources) | set(val.sources))
    assert not set(val.sources) & set(train.sources)
    with pytest.raises(DataError, match="no phantom cases"):
        load_cases(phantom_cases / "case_00000")


def test_a_few_dozen_steps_lower_the_chamfer_distance(torch, phantom_cases):
    from sonogate.tasks.spine.net import CompletionNet
    from sonogate.tasks.spine.train import load_cases, predict, train_steps

    cases = load_cases(phantom_cases)
    torch.manual_seed(0)
    # 128 coarse -> 512 completed points keeps this quick; the architecture is the full one otherwise
    net = CompletionNet("early+late", n_coarse=128)
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)

    def mean_cd_mm():
        return np.mean([pair_metrics(p, t)["cd_l1_mm"]
                        for p, t in zip(predict(net, cases.us, cases.xray), cases.complete)])

    before = mean_cd_mm()
    history = []
    for _ in range(10):  # 10 passes x 2 batches of 4 = 20 steps
        history += train_steps(net, optimiser, cases, rng, batch=4, train_points=256, kl_weight=1.0)
    after = mean_cd_mm()
    assert len(history) == 20 and all(math.isfinite(h["loss"]) for h in history)
    assert after < 0.5 * before, (before, after)
    assert np.mean([h["cd_completed"] for h in history[-4:]]) < np.mean([h["cd_completed"] for h in history[:4]])


def test_training_entry_resumes_and_writes_metrics(torch, phantom_cases, tmp_path, capsys):
    import json

    from sonogate.tasks.spine.train import main

    run = tmp_path / "run"
    common = ["--data", str(phantom_cases), "--out", str(run), "--mode", "us", "--batch", "2", "--max-steps", "1",
              "--train-points", "128", "--no-onnx", "--threads", "1"]
    assert main(common + ["--epochs", "1"]) == 0
    assert (run / "checkpoint.pt").is_file()
    assert main(common + ["--epochs", "2"]) == 0  # continues from the checkpoint: one more epoch, not two
    report = json.loads((run / "metrics.json").read_text())
    entry = report["modes"]["us"]
    assert [h["epoch"] for h in entry["history"]] == [1, 2]
    assert entry["test"]["whole"]["n_cases"] == report["n_test"] == 1
    assert math.isfinite(entry["test"]["arch"]["cd_l2_x1e4"]) and "resuming" in capsys.readouterr().err
    assert main(common + ["--epochs", "2", "--mode", "ultrasound"]) == 2
    assert "unknown mode" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- metrics (numpy only)

def _two_blocks(offset_mm: float = 0.0):
    """Points on a 3 mm grid in two blocks: body at y = -20 mm, arch at y = +20 mm (centroid y = 0)."""
    axis = np.arange(0.0, 30.0, 3.0)
    xx, zz = np.meshgrid(axis, axis)
    plane = np.stack([xx.ravel(), np.zeros(xx.size), zz.ravel()], axis=1)
    return np.concatenate([plane + [0, -20.0, 0], plane + [0, 20.0, 0]]) + [offset_mm, 0, 0]


@pytest.mark.torchfree
def test_pair_metrics_on_shifted_grids():
    truth = _two_blocks()
    half_mm = pair_metrics(truth + [0.5, 0, 0], truth)
    # every nearest distance is 0.5 mm = 0.005 paper units
    assert math.isclose(half_mm["cd_l2_x1e4"], 2 * 0.005 ** 2 * 1e4, rel_tol=1e-9)
    assert math.isclose(half_mm["cd_l1"], 0.005, rel_tol=1e-9) and math.isclose(half_mm["cd_l1_mm"], 0.5)
    assert math.isclose(half_mm["mean_mm"], 0.5) and math.isclose(half_mm["p95_mm"], 0.5)
    assert half_mm["f1"] == 1.0
    beyond = pair_metrics(truth + [0, 0, 1.2], truth)  # 1.2 mm away: outside the 1 mm threshold
    assert beyond["f1"] == 0.0 and math.isclose(beyond["cd_l2_x1e4"], 2 * 0.012 ** 2 * 1e4, rel_tol=1e-9)
    exact = pair_metrics(truth, truth)
    assert exact["cd_l2_x1e4"] == 0.0 and exact["f1"] == 1.0


@pytest.mark.torchfree
def test_body_and_arch_are_split_at_the_truth_centroid_y():
    truth = _two_blocks()
    pred = truth.copy()
    pred[pred[:, 1] < 0] += [1.5, 0, 0]  # only the body is off, by 1.5 mm
    result = completion_metrics(pred, truth)
    assert result["arch"]["cd_l2_x1e4"] == 0.0 and result["arch"]["f1"] == 1.0
    assert math.isclose(result["body"]["cd_l2_x1e4"], 2 * 0.015 ** 2 * 1e4, rel_tol=1e-9)
    assert result["body"]["f1"] == 0.0 and math.isclose(result["body"]["mean_mm"], 1.5)
    assert result["body"]["n_pred"] == result["body"]["n_truth"] == 100
    arch_only = completion_metrics(truth[truth[:, 1] > 0], truth)  # an ultrasound-like cloud: no body
    assert arch_only["body"]["n_pred"] == 0 and math.isnan(arch_only["body"]["cd_l2_x1e4"])
    assert arch_only["body"]["f1"] == 0.0 and arch_only["arch"]["cd_l2_x1e4"] == 0.0
    summary = summarise([result, arch_only])
    assert summary["body"]["n_empty"] == 1 and summary["body"]["n_cases"] == 2
    assert math.isclose(summary["body"]["cd_l2_x1e4"], result["body"]["cd_l2_x1e4"])
    assert summary["arch"]["cd_l2_x1e4"] == 0.0 and summary["arch"]["cd_l2_x1e4_sd"] == 0.0


@pytest.mark.torchfree
def test_metrics_refuse_bad_clouds():
    truth = _two_blocks()
    with pytest.raises(DataError, match="NaN"):
        pair_metrics(np.full((10, 3), np.nan), truth)
    with pytest.raises(DataError, match=r"\(N, 3\)"):
        completion_metrics(truth[:, :2], truth)
    with pytest.raises(DataError, match="empty"):
        completion_metrics(np.zeros((0, 3)), truth)
    with pytest.raises(DataError, match="no cases"):
        summarise([])


def test_xray_centre_takes_y_and_z_from_the_silhouette(torch):
    from sonogate.tasks.spine.net import CompletionNet

    us, xray = _inputs(torch)
    _, _, centre_us = CompletionNet("early+late", n_coarse=128).normalise(us, xray)
    _, _, centre_x = CompletionNet("early+late", n_coarse=128, centre="xray").normalise(us, xray)
    assert torch.allclose(centre_us, us.mean(dim=1, keepdim=True))
    assert torch.allclose(centre_x[..., 0], us[..., 0].mean(dim=1, keepdim=True))
    assert torch.allclose(centre_x[..., 1:], xray[..., 1:].mean(dim=1, keepdim=True))
    with pytest.raises(SonogateError, match="normalisation centre"):
        CompletionNet("early+late", centre="skin")


def test_half_path_embedding_puts_the_seed_at_the_measured_lateral_walls(torch):
    """With the "half_path" embedding the X-ray cloud's x is half the bone path length: the encoders see it as a
    feature, the seed lifts each point to -/+ that distance from the mid-sagittal plane (before its learned
    offset), and the centre is unaffected by it."""
    from sonogate.tasks.spine.net import SCALE_MM, CompletionNet

    us, xray = _inputs(torch)
    half = torch.full_like(xray[..., :1], 12.0)  # 24 mm of bone along every ray
    embedded = torch.cat([half, xray[..., 1:]], dim=2)
    net = CompletionNet("early+late", n_coarse=128, centre="xray", xray_embedding="half_path").eval()
    plane = CompletionNet("early+late", n_coarse=128, centre="xray").eval()
    _, described, centre = net.normalise(us, embedded)
    _, _, centre_plane = plane.normalise(us, xray)
    assert torch.allclose(centre, centre_plane)  # the path lengths do not move the centre
    assert torch.allclose(described[..., :1], half / SCALE_MM)
    points, half_path = net.seed_points(described, centre)
    assert torch.allclose(points[..., 0], -centre[..., 0] / SCALE_MM)  # x = 0 mm: the mid-sagittal plane
    assert torch.allclose(half_path, torch.full_like(half_path, 12.0 / SCALE_MM))
    # with its last layer zeroed the seed's offsets vanish: the copies sit exactly at -/+ the half path
    with torch.no_grad():
        net.xray_seed.mlp[-1].weight.zero_()
        net.xray_seed.mlp[-1].bias.zero_()
        lifted = net.xray_seed(points, torch.zeros(1, 256), half_path).reshape(1, -1, 2, 3)
    walls_mm = lifted[..., 0] * SCALE_MM + centre[..., :1]
    assert torch.allclose(walls_mm[..., 0], torch.full_like(walls_mm[..., 0], -12.0), atol=1e-4)
    assert torch.allclose(walls_mm[..., 1], torch.full_like(walls_mm[..., 1], 12.0), atol=1e-4)
    with torch.no_grad():
        out = net(us, embedded)
    assert out["completed"].shape == (1, 512, 3) and torch.isfinite(out["completed"]).all()
    with pytest.raises(SonogateError, match="X-ray embedding"):
        CompletionNet("early+late", xray_embedding="depth")


def test_embed_xray_writes_half_the_path_length_into_x():
    from sonogate.tasks.spine.phantom import embed_xray

    points = np.array([[0.0, 1.0, 2.0], [0.0, -3.0, 4.0]])
    path = np.array([10.0, 3.0])
    assert np.array_equal(embed_xray(points, path, "plane"), points.astype(np.float32))
    assert np.allclose(embed_xray(points, path, "half_path"), [[5.0, 1.0, 2.0], [1.5, -3.0, 4.0]])
    assert np.array_equal(points[:, 0], [0.0, 0.0])  # the caller's array is not changed
    with pytest.raises(DataError, match="unknown X-ray embedding"):
        embed_xray(points, path, "depth")


def test_seed_copies_spread_each_point_over_its_width(torch):
    """Four copies per seeded point sit at -1, -1/3, +1/3, +1 times the point's half path (offsets zeroed), and
    the decoder makes the rest of the coarse cloud."""
    from sonogate.tasks.spine.net import CompletionNet

    net = CompletionNet("early+late", n_coarse=128, xray_embedding="half_path", seed_share=0.75,
                        seed_copies=4).eval()
    assert net.n_seed == 24 and net.coarse_decoder[-1].out_features == (128 - 96) * 3
    points = torch.zeros(1, 3, 3)
    half_path = torch.tensor([[[0.06], [0.09], [0.12]]])
    with torch.no_grad():
        net.xray_seed.mlp[-1].weight.zero_()
        net.xray_seed.mlp[-1].bias.zero_()
        lifted = net.xray_seed(points, torch.zeros(1, 256), half_path).reshape(1, 3, 4, 3)
    expected = half_path * torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])
    assert torch.allclose(lifted[..., 0], expected, atol=1e-6)
    us, xray = _inputs(torch)
    with torch.no_grad():
        out = net(us, xray)
    assert out["coarse"].shape == (1, 128, 3) and out["completed"].shape == (1, 512, 3)
    with pytest.raises(SonogateError, match="at least 2 copies"):
        CompletionNet("early+late", seed_copies=1)


def test_dual_centre_encodes_the_xray_in_its_own_frame(torch):
    """Centre "dual": the output frame is the ultrasound's, and moving the whole X-ray cloud in (y, z) changes
    the X-ray encoder's input by nothing: only the fusion's shift input moves with it."""
    from sonogate.tasks.spine.net import CompletionNet

    us, xray = _inputs(torch)
    net = CompletionNet("early+late", n_coarse=128, centre="dual", xray_embedding="half_path").eval()
    assert net.fusion[0].in_features == 2 * 256 + 2
    _, _, centre = net.normalise(us, xray)
    assert torch.allclose(centre, us.mean(dim=1, keepdim=True))
    _, n_xray, _ = net.normalise(us, xray)
    moved = xray.clone()
    moved[:, :, 1:] += torch.tensor([5.0, -3.0])
    _, n_moved, _ = net.normalise(us, moved)
    shift, shift_moved = net.xray_frame_shift(n_xray), net.xray_frame_shift(n_moved)
    assert torch.allclose(n_xray - shift, n_moved - shift_moved, atol=1e-6)
    assert torch.allclose((shift_moved - shift)[0, 0], torch.tensor([0.0, 0.05, -0.03]), atol=1e-6)
    with torch.no_grad():
        out = net(us, xray)
    assert out["completed"].shape == (1, 512, 3)


def test_kept_ultrasound_points_replace_the_nearest_refined_ones(torch, tmp_path):
    """``us_kept_share``: every k-th ultrasound point is in the output as given, the refined points nearest to
    them are the ones dropped, the output stays 2,048 points, and ONNX Runtime keeps the same points."""
    ort = pytest.importorskip("onnxruntime")
    from sonogate.tasks.spine.net import CompletionNet, export_onnx, parity

    completed = torch.tensor([[[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.2, 0.1, 0.0]]])
    us = torch.tensor([[[0.1, 0.0, 0.0], [5.0, 5.0, 5.0], [0.0, 9.9, 0.0], [7.0, 7.0, 7.0]]])
    net = CompletionNet("us", n_coarse=1, us_kept_share=0.5)
    assert net.n_us_kept == 2
    merged = net.keep_measured(completed, us)
    # kept: us points 0 and 2 (stride 2); distances of the refined points to them: 0.1, 9.9, 0.1, 0.14, so the
    # two farthest, (10, 0, 0) and (0.2, 0.1, 0), stay
    assert merged.shape == (1, 4, 3)
    assert torch.equal(merged[0, 2:], us[0, ::2])
    stayed = sorted(tuple(round(v, 4) for v in p) for p in merged[0, :2].tolist())
    assert stayed == [(0.2, 0.1, 0.0), (10.0, 0.0, 0.0)]
    assert CompletionNet("xray", us_kept_share=0.2).n_us_kept == 0  # no ultrasound to keep
    with pytest.raises(SonogateError, match="us_kept_share"):
        CompletionNet("us", us_kept_share=0.8)

    us_in, xray_in = _inputs(torch, batch=2, seed=3)
    torch.manual_seed(0)
    net = CompletionNet("early+late", xray_embedding="half_path", centre="xray", seed_share=0.75,
                        us_kept_share=0.2).eval()
    with torch.no_grad():
        reference = net(us_in, xray_in)["completed"]
    assert net.n_us_kept == 410
    kept = us_in[:, ::4][:, :410]  # stride 2048 // 410
    assert reference.shape == (2, 2048, 3)
    assert torch.allclose(reference[:, -410:], kept, atol=1e-4)
    session = ort.InferenceSession(str(export_onnx(net, tmp_path / "kept.onnx")), providers=["CPUExecutionProvider"])
    got = session.run(["completed"], {"us_points": us_in.numpy(), "xray_points": xray_in.numpy()})[0]
    assert parity(got, reference.numpy())["agrees"]


def test_anterior_seed_region_lifts_the_front_half_of_the_silhouette(torch):
    """``seed_region="anterior"``: the seed lifts the most anterior (lowest y) half of twice as many strided X-ray
    points, so every seeded point lies in front of the rest of those candidates."""
    from sonogate.tasks.spine.net import CompletionNet

    us, xray = _inputs(torch, seed=4)
    net = CompletionNet("early+late", n_coarse=128, xray_embedding="half_path", centre="xray", seed_share=0.5,
                        seed_region="anterior").eval()
    _, normalised_xray, centre = net.normalise(us, xray)
    points, half_path = net.seed_points(normalised_xray, centre)
    assert points.shape == (1, net.n_seed, 3) and half_path.shape == (1, net.n_seed, 1)
    candidates = normalised_xray[:, ::2048 // (2 * net.n_seed)][:, :2 * net.n_seed]
    threshold = torch.sort(candidates[0, :, 1]).values[net.n_seed - 1]
    assert bool((points[0, :, 1] <= threshold).all())
    with torch.no_grad():
        assert net(us, xray)["completed"].shape == (1, 512, 3)
    with pytest.raises(SonogateError, match="seed region"):
        CompletionNet("early+late", seed_region="posterior")


def test_second_refinement_step_starts_as_the_identity_and_exports(torch, tmp_path):
    """``refine_steps=2``: a second step moves each completed point once more. It starts as the identity, so a
    one-step network's weights load into it and give the same cloud; once trained it moves points, is supervised
    at both steps, and ONNX Runtime gives what torch gives."""
    ort = pytest.importorskip("onnxruntime")
    from sonogate.tasks.spine.net import CompletionNet, export_onnx, parity, training_loss

    config = {"mode": "early+late", "xray_embedding": "half_path", "centre": "xray", "seed_share": 0.75,
              "us_kept_share": 0.2}
    us, xray = _inputs(torch, batch=2, seed=6)
    torch.manual_seed(0)
    one_step = CompletionNet(**config).eval()
    two_steps = CompletionNet(**config, refine_steps=2).eval()
    loaded = two_steps.load_state_dict(one_step.state_dict(), strict=False)
    assert not loaded.unexpected_keys and all(k.startswith("second_refiner.") for k in loaded.missing_keys)
    with torch.no_grad():
        assert torch.equal(one_step(us, xray)["completed"], two_steps(us, xray)["completed"])
        torch.nn.init.normal_(two_steps.second_refiner.child[-1].weight, std=0.05)  # as if trained
        moved = two_steps(us, xray)["completed"]
        assert float((moved - one_step(us, xray)["completed"]).abs().max()) > 0.1
    assert torch.allclose(moved[:, -410:], us[:, ::4][:, :410], atol=1e-4)  # kept points stay as measured

    two_steps.train()
    outputs = two_steps(us, xray, us)  # any (B, M, 3) cloud serves as a truth here
    assert outputs["first_step"].shape == (2, 2048, 3)
    _, parts = training_loss(outputs, us)
    assert parts["cd_first_step"] > 0 and parts["cd_completed"] > 0
    two_steps.eval()

    session = ort.InferenceSession(str(export_onnx(two_steps, tmp_path / "two.onnx")),
                                   providers=["CPUExecutionProvider"])
    got = session.run(["completed"], {"us_points": us.numpy(), "xray_points": xray.numpy()})[0]
    assert parity(got, moved.numpy())["agrees"]
    with pytest.raises(SonogateError, match="refine_steps"):
        CompletionNet("us", refine_steps=3)


def test_warm_start_takes_an_earlier_runs_weights(torch, phantom_cases, tmp_path, capsys):
    """``--init-from``: a two-step run starts from a one-step run's best weights; a missing run or another mode's
    run is refused with one line."""
    from sonogate.tasks.spine.train import main

    common = ["--data", str(phantom_cases), "--batch", "2", "--max-steps", "1", "--train-points", "128",
              "--no-onnx", "--threads", "1", "--epochs", "1"]
    assert main(common + ["--out", str(tmp_path / "one"), "--mode", "us"]) == 0
    assert main(common + ["--out", str(tmp_path / "two"), "--mode", "us", "--refine-steps", "2",
                          "--init-from", str(tmp_path / "one")]) == 0
    assert "starting from the weights" in capsys.readouterr().err
    state = torch.load(tmp_path / "two" / "checkpoint.pt", map_location="cpu", weights_only=False)["state"]
    assert [(link["run"], link["epochs"]) for link in state["warm_start"]] == [(str(tmp_path / "one"), 1)]
    assert main(common + ["--out", str(tmp_path / "three"), "--mode", "us", "--init-from", str(tmp_path / "none")]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err
    assert main(common + ["--out", str(tmp_path / "four"), "--mode", "late", "--init-from", str(tmp_path / "one")]) == 2
    assert "not a run of this network" in capsys.readouterr().err


def test_ultrasound_mid_plane_makes_the_completion_follow_a_lateral_shift(torch):
    """``mid_plane="us"``: the X-ray's mid-sagittal plane is put at the ultrasound centroid's x, so moving the
    ultrasound cloud sideways (a lateral radiograph cannot see that) moves the completion with it. With "frame"
    (x = 0 of the input frame, the paper's convention) the seeds stay behind at x = 0."""
    from sonogate.tasks.spine.net import CompletionNet

    us, xray = _inputs(torch, seed=7)
    xray[:, :, 0] = xray[:, :, 1].abs() % 12.0  # half path lengths, mm
    shift = torch.tensor([6.0, 0.0, 0.0])
    config = {"mode": "early+late", "n_coarse": 128, "xray_embedding": "half_path", "centre": "xray",
              "seed_share": 0.5}
    torch.manual_seed(0)
    frame = CompletionNet(**config).eval()
    follows = CompletionNet(**config, mid_plane="us").eval()
    follows.load_state_dict(frame.state_dict())
    with torch.no_grad():
        moved = follows(us + shift, xray)["completed"] - shift
        assert torch.allclose(moved, follows(us, xray)["completed"], atol=1e-3)
        left_behind = frame(us + shift, xray)["completed"] - shift
        assert float((left_behind - frame(us, xray)["completed"]).abs().max()) > 1.0
        centred = us - us[:, :, :1].mean(dim=1, keepdim=True) * torch.tensor([1.0, 0.0, 0.0])
        assert torch.allclose(frame(centred, xray)["completed"], follows(centred, xray)["completed"], atol=1e-4)
    with pytest.raises(SonogateError, match="mid-plane"):
        CompletionNet("early+late", mid_plane="probe")


def test_net_config_rebuilds_the_same_network(torch):
    """``train.net_config``: the constructor arguments a checkpoint keeps rebuild a network with the same weights'
    shapes, the session-17 switches (encoder width, refiner width, refinement steps, mid-plane) included."""
    from sonogate.tasks.spine.net import CompletionNet
    from sonogate.tasks.spine.train import net_config

    net = CompletionNet("early+late", n_coarse=128, encoder_width=16, refine_steps=2, mid_plane="us", refiner_scale=2,
                        xray_embedding="half_path", centre="xray", seed_share=0.5, us_kept_share=0.1)
    config = net_config(net)
    assert config["encoder_width"] == 16 and config["refine_steps"] == 2 and config["mid_plane"] == "us"
    assert config["refiner_scale"] == 2 and net.refiner.parent_point.out_channels == 256
    rebuilt = CompletionNet(**config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    assert net.us_encoder.first[0].out_channels == 16
