"""Ordinal heads (sonogate.models.ordinal): probabilities, rank consistency, losses, class weights, a short training
run on synthetic ordinal data, and ONNX export of each head checked in ONNX Runtime."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn

from sonogate.calibration.ordinal_metrics import accuracy, macro_recall, mean_absolute_error
from sonogate.errors import DataError
from sonogate.models.ordinal import (
    HEAD_KINDS,
    OrdinalHead,
    OrdinalPredictor,
    class_weights,
    coral_loss,
    corn_loss,
    exceedance_probabilities,
    expected_grade,
    predict_grade,
    probabilities,
    softmax_loss,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # tiny models on a shared 2-core machine: a second intra-op thread only adds contention (30x slower seen)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def scrambled_head(kind, num_tasks=None, seed=0, scale=5.0):
    """A head with large random parameters (raw CORAL gaps included, negative ones too)."""
    torch.manual_seed(seed)
    head = OrdinalHead(6, 5, kind, num_tasks=num_tasks)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(torch.randn_like(parameter) * scale)
    return head.eval()


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.parametrize("num_tasks", [None, 4])
def test_probabilities_sum_to_one_and_are_rank_consistent(kind, num_tasks):
    head = scrambled_head(kind, num_tasks)
    features = torch.randn(256, 6) * 3
    with torch.no_grad():
        logits = head(features)
        probs = head.probabilities(logits)
    expected_shape = (256, 5) if num_tasks is None else (256, 4, 5)
    assert probs.shape == expected_shape
    assert logits.shape[-1] == (5 if kind == "softmax" else 4)
    assert torch.allclose(probs.sum(-1), torch.ones(expected_shape[:-1]), atol=1e-6)
    assert probs.min() >= 0.0
    if kind != "softmax":
        exceed = exceedance_probabilities(logits, kind)
        assert torch.all(exceed[..., 1:] <= exceed[..., :-1]), "P(y > k) must not increase with k"
        # the median grade counts P(y > k) > 0.5; rank consistency makes it the first k with P(y <= k) >= 0.5
        cdf = torch.cumsum(probs, dim=-1)
        first = torch.argmax((cdf >= 0.5).to(torch.int64), dim=-1)
        grade = head.predict_grade(logits)
        agree = (grade == first).float().mean()
        assert agree > 0.99  # equality up to float rounding exactly at 0.5
    grade_mode = head.predict_grade(logits, "mode")
    assert torch.equal(grade_mode, torch.argmax(probs, dim=-1))


def test_coral_biases_stay_ordered_whatever_the_raw_parameters():
    head = scrambled_head("coral", num_tasks=3, scale=20.0)
    biases = head.coral_biases()
    assert biases.shape == (3, 4)
    # softplus of a very negative raw gap underflows against a bias of ~20 in float32: ties, never a crossing
    assert torch.all(biases[:, 1:] <= biases[:, :-1])
    moderate = scrambled_head("coral", num_tasks=3, scale=1.0).coral_biases()
    assert torch.all(moderate[:, 1:] < moderate[:, :-1])


def test_coral_loss_by_hand():
    logits = torch.tensor([[0.5, -1.0]])
    # y = 1: targets 1[y > 0] = 1, 1[y > 1] = 0
    expected = -torch.log(torch.sigmoid(torch.tensor(0.5))) - torch.log(1 - torch.sigmoid(torch.tensor(-1.0)))
    assert coral_loss(logits, torch.tensor([1])).item() == pytest.approx(expected.item(), rel=1e-6)


def test_corn_loss_trains_task_k_only_on_samples_that_passed_k_minus_1():
    torch.manual_seed(0)
    logits = torch.randn(8, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 2, 1])
    corn_loss(logits, labels).backward()
    thresholds = torch.arange(4)
    in_subset = labels[:, None] >= thresholds[None, :]
    assert torch.all(logits.grad[~in_subset] == 0)
    assert torch.all(logits.grad[in_subset] != 0)
    # and the value: mean BCE over the task-sample pairs in the subsets
    targets = (labels[:, None] > thresholds[None, :]).float()
    bce = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert corn_loss(logits, labels).item() == pytest.approx(bce[in_subset].mean().item(), rel=1e-6)


def test_weighted_softmax_loss_matches_torch_cross_entropy():
    torch.manual_seed(1)
    logits = torch.randn(50, 5)
    labels = torch.randint(0, 5, (50,))
    weights = class_weights(labels.numpy(), 5, "inverse")
    reference = nn.functional.cross_entropy(logits, labels, weight=torch.as_tensor(weights))
    assert softmax_loss(logits, labels, weights).item() == pytest.approx(reference.item(), rel=1e-6)


def test_class_weights():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    inverse = class_weights(labels, 4, "inverse")
    counts = np.array([70, 20, 10, 0])
    # inverse frequency: every present class carries the same total weight; the mean sample weight is 1
    np.testing.assert_allclose((inverse * counts)[:3], (inverse * counts)[0], rtol=1e-6)
    assert float(np.sum(inverse * counts) / labels.size) == pytest.approx(1.0)
    assert inverse[3] == 0.0
    np.testing.assert_allclose(class_weights(labels, 3, "none"), 1.0)
    np.testing.assert_allclose(class_weights(labels, 3, "effective", beta=0.0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(class_weights(labels, 3, "effective", beta=1 - 1e-9), inverse[:3], rtol=1e-4)
    effective = class_weights(labels, 3, "effective", beta=0.99)
    assert inverse[0] < effective[0] and effective[2] < inverse[2]  # between "none" and "inverse"
    with pytest.raises(DataError, match="class indexes in 0..2"):
        class_weights(np.array([0, 3]), 3)


def synthetic_ordinal(n, seed, features=10, proportions=(0.45, 0.25, 0.15, 0.10, 0.05), noise=0.3):
    """Features x, a latent w.x + noise, cut into 5 imbalanced grades at the latent's quantiles."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(99).normal(size=features)
    direction /= np.linalg.norm(direction)
    x = rng.normal(size=(n, features)).astype(np.float32)
    latent = x @ direction + noise * rng.normal(size=n)
    cuts = np.quantile(np.random.default_rng(98).normal(size=200_000) * np.sqrt(1 + noise**2),
                       np.cumsum(proportions)[:-1])
    return torch.from_numpy(x), torch.from_numpy(np.searchsorted(cuts, latent).astype(np.int64))


def train_tiny(kind, weights=None, steps=200, seed=0):
    """Full-batch Adam on 1000 synthetic samples (about a second on one core)."""
    x, y = synthetic_ordinal(1000, seed=1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), OrdinalHead(16, 5, kind))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    loss_fn = model[-1].loss
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(model(x), y, weights).backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_tiny_model_learns_synthetic_ordinal_grades(kind):
    model = train_tiny(kind)
    x_test, y_test = synthetic_ordinal(2000, seed=2)
    with torch.no_grad():
        logits = model(x_test)
    truth = y_test.numpy()
    median = predict_grade(logits, kind, "median").numpy()
    mode = predict_grade(logits, kind, "mode").numpy()
    majority = np.bincount(truth).argmax()
    chance_accuracy = accuracy(truth, np.full_like(truth, majority))
    chance_mae = mean_absolute_error(truth, np.full_like(truth, np.median(truth)))
    assert chance_accuracy < 0.5
    assert accuracy(truth, mode) > chance_accuracy + 0.2, accuracy(truth, mode)
    assert mean_absolute_error(truth, median) < 0.5 * chance_mae
    assert mean_absolute_error(truth, median) <= mean_absolute_error(truth, mode) + 0.02
    expected = expected_grade(logits, kind).numpy()
    assert np.corrcoef(expected, truth)[0, 1] > 0.85


def test_class_weights_raise_recall_of_rare_grades():
    x_test, y_test = synthetic_ordinal(2000, seed=2)
    truth = y_test.numpy()
    _, y_train = synthetic_ordinal(1000, seed=1)
    plain = train_tiny("softmax")
    weighted = train_tiny("softmax", class_weights(y_train.numpy(), 5, "inverse"))
    with torch.no_grad():
        plain_pred = predict_grade(plain(x_test), "softmax", "mode").numpy()
        weighted_pred = predict_grade(weighted(x_test), "softmax", "mode").numpy()
    rare = truth == 4
    assert np.mean(weighted_pred[rare] == 4) > np.mean(plain_pred[rare] == 4)
    assert macro_recall(truth, weighted_pred, range(5)) > macro_recall(truth, plain_pred, range(5))


def test_loss_rejects_mismatched_labels():
    with pytest.raises(DataError, match="does not match"):
        coral_loss(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="coral and corn heads, not 'cumulative'"):
        probabilities(torch.zeros(1, 2), "cumulative")
    with pytest.raises(ValueError, match="kind must be one of"):
        OrdinalHead(4, 3, "cumulative")


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_onnx_export_matches_torch(kind, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), OrdinalHead(16, 5, kind, num_tasks=4))
    predictor = OrdinalPredictor(model, kind, "median").eval()
    path = tmp_path / f"{kind}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the exporter a bundle ships with (torch.export based), dynamic batch
        program = torch.onnx.export(
            predictor, (torch.zeros(2, 6),), input_names=["features"], output_names=["probabilities", "grade"],
            opset_version=18, dynamo=True, dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=1024)}},
            external_data=False, verbose=False,
        )
        program.save(str(path), external_data=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    features = np.random.default_rng(4).normal(size=(37, 6)).astype(np.float32) * 3
    onnx_probs, onnx_grade = session.run(["probabilities", "grade"], {"features": features})
    with torch.no_grad():
        torch_probs, torch_grade = predictor(torch.from_numpy(features))
    assert onnx_probs.shape == (37, 4, 5) and onnx_grade.shape == (37, 4)
    np.testing.assert_allclose(onnx_probs, torch_probs.numpy(), atol=1e-5)
    # grades can only differ where P(y > k) sits within float error of 0.5
    assert np.mean(onnx_grade == torch_grade.numpy()) == 1.0


def test_fit_frozen_heads_fits_every_kind_and_weighting_on_separable_features():
    """The head comparison on frozen features: six heads (three kinds x two weightings), each learns an ordinal
    target that is a monotone function of one feature, for one task and for several."""
    import torch

    from sonogate.models.ordinal import HEAD_KINDS, HEAD_WEIGHTINGS, fit_frozen_heads, predict_grade

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(400, 4, generator=generator) * 2.0
    y = torch.bucketize(x[:, 0].contiguous(), torch.tensor([-1.0, 1.0]))
    fitted = list(fit_frozen_heads(x, y, 3, steps=400))
    assert [(k, w) for k, w, _ in fitted] == [(k, w) for k in HEAD_KINDS for w in HEAD_WEIGHTINGS]
    for kind, _, head in fitted:
        with torch.no_grad():
            accuracy = (predict_grade(head(x), kind, "median") == y).float().mean().item()
        assert accuracy > 0.85, kind
    two = torch.stack([y, 2 - y], dim=1)
    for kind, _, head in fit_frozen_heads(x, two, 3, num_tasks=2, steps=400):
        with torch.no_grad():
            accuracy = (predict_grade(head(x), kind, "median") == two).float().mean().item()
        assert accuracy > 0.85, kind
