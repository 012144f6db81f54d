"""Ordinal heads, their losses and decoders (torch): CORAL, CORN and the one-hot softmax baseline.

A grade with K ordered levels (KL 0-4: K = 5; a RUST cortex 1-3: K = 3) is predicted as class *indexes* 0..K-1
(grade - lowest grade). Heads take a feature vector (N, F) and return logits:

* ``coral`` (Cao, Mirjalili & Raschka 2020): one shared weight vector and K-1 biases; logit k is
  ``w.x + b_k`` and ``sigmoid(logit_k) = P(y > k)``. The paper shows the biases end up ordered at the optimum;
  here they are ordered by construction (``b_{k+1} = b_k - softplus(raw_k)``), so the cumulative probabilities
  never cross and the class probabilities are never negative, during training too.
* ``corn`` (Shi, Cao & Raschka 2023): K-1 independent logits, ``sigmoid(logit_k) = P(y > k | y > k-1)``, trained
  on the conditional subsets; ``P(y > k)`` is their running product, rank-consistent by construction.
* ``softmax``: K logits, cross-entropy; the seed's one-hot encoding.

With ``num_tasks=T`` a head predicts T grades at once (RUST: four cortices) and logits get a task axis: (N, T, L).
Decoders (``probabilities``, ``predict_grade``) only use tensor ops (sigmoid, cumsum, exp, comparisons, sums,
argmax), no Python control flow on tensor values, so ``OrdinalPredictor`` exports to ONNX as is. The grade rule
"median" (CORAL/CORN standard: the number of ``P(y > k) > 0.5``) minimises the expected absolute error; "mode"
(argmax of the class probabilities) maximises the expected accuracy.

Class imbalance: ``class_weights(labels, num_classes, kind)`` gives inverse-frequency or effective-number (Cui et
al. 2019) weights; every loss takes them as per-sample weights ``w[y]`` and averages by their sum.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sonogate.errors import DataError

HEAD_KINDS = ("coral", "corn", "softmax")
GRADE_RULES = ("median", "mode")
WEIGHT_KINDS = ("none", "inverse", "effective")


def class_weights(labels, num_classes: int, kind: str = "inverse", beta: float = 0.999) -> np.ndarray:
    """Per-class loss weights against class imbalance.

    Inputs: ``labels`` (n,) training class indexes 0..K-1, ``num_classes`` K, ``kind`` "none" (all 1), "inverse"
    (``1 / n_c``) or "effective" (``(1 - beta) / (1 - beta^n_c)``, the inverse effective number of samples of Cui et
    al. 2019; beta -> 1 tends to "inverse", beta = 0 to "none"). Output (K,) float32, scaled so that the mean
    weight over the training samples is 1 (the loss keeps its scale); 0 for a class with no training sample.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or labels.size == 0:
        raise DataError("class weights need a non-empty 1-D array of training labels")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"labels must be class indexes in 0..{num_classes - 1}")
    if kind not in WEIGHT_KINDS:
        raise ValueError(f"kind must be one of {WEIGHT_KINDS}, got {kind!r}")
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    raw = np.zeros(num_classes)
    if kind == "none":
        raw[present] = 1.0
    elif kind == "inverse":
        raw[present] = 1.0 / counts[present]
    else:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        raw[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
    raw *= labels.size / float(np.sum(raw * counts))
    return raw.astype(np.float32)


def _sample_weights(labels: torch.Tensor, weights, reference: torch.Tensor) -> torch.Tensor:
    """w[y] per sample (ones without weights), on ``reference``'s device and dtype."""
    if weights is None:
        return torch.ones(labels.shape, dtype=reference.dtype, device=reference.device)
    table = torch.as_tensor(np.asarray(weights, dtype=np.float32) if not torch.is_tensor(weights) else weights)
    return table.to(device=reference.device, dtype=reference.dtype)[labels]


def _flatten(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, [T,] L) logits and (N[, T]) labels -> (M, L) and (M,)."""
    labels = torch.as_tensor(labels, device=logits.device).long()
    if labels.shape != logits.shape[:-1]:
        raise DataError(f"labels shape {tuple(labels.shape)} does not match logits {tuple(logits.shape)}")
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)


def ordinal_levels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Extended binary targets: (M,) class indexes -> (M, K-1) float, column k = 1[y > k]."""
    thresholds = torch.arange(num_classes - 1, device=labels.device)
    return (labels[:, None] > thresholds[None, :]).float()


def coral_loss(logits: torch.Tensor, labels, weights=None) -> torch.Tensor:
    """CORAL loss: binary cross-entropy of ``sigmoid(logit_k)`` against ``1[y > k]``, summed over the K-1 tasks and
    averaged over samples (weighted by ``weights[y]``). Inputs (N, [T,] K-1) logits, (N[, T]) class indexes."""
    flat, y = _flatten(logits, labels)
    targets = ordinal_levels(y, flat.shape[-1] + 1)
    per_sample = F.binary_cross_entropy_with_logits(flat, targets, reduction="none").sum(dim=1)
    w = _sample_weights(y, weights, flat)
    return (per_sample * w).sum() / w.sum().clamp_min(1e-12)


def corn_loss(logits: torch.Tensor, labels, weights=None) -> torch.Tensor:
    """CORN loss: task k is trained only on samples with ``y >= k`` (those that passed threshold k-1), target
    ``1[y > k]``; the summed binary cross-entropies are divided by the (weighted) number of task-sample pairs.
    Inputs (N, [T,] K-1) logits, (N[, T]) class indexes."""
    flat, y = _flatten(logits, labels)
    num_tasks = flat.shape[-1]
    thresholds = torch.arange(num_tasks, device=flat.device)
    in_subset = (y[:, None] >= thresholds[None, :]).to(flat.dtype)
    targets = (y[:, None] > thresholds[None, :]).to(flat.dtype)
    bce = F.binary_cross_entropy_with_logits(flat, targets, reduction="none")
    w = _sample_weights(y, weights, flat)[:, None] * in_subset
    return (bce * w).sum() / w.sum().clamp_min(1e-12)


def softmax_loss(logits: torch.Tensor, labels, weights=None) -> torch.Tensor:
    """Weighted cross-entropy of the one-hot baseline. Inputs (N, [T,] K) logits, (N[, T]) class indexes."""
    flat, y = _flatten(logits, labels)
    per_sample = F.cross_entropy(flat, y, reduction="none")
    w = _sample_weights(y, weights, flat)
    return (per_sample * w).sum() / w.sum().clamp_min(1e-12)


def exceedance_probabilities(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """P(y > k) for k = 0..K-2 from CORAL or CORN logits (..., K-1); non-increasing along the last axis."""
    if kind == "coral":
        return torch.sigmoid(logits)
    if kind == "corn":
        # running product of conditional probabilities, as exp(cumsum(log sigmoid)): ONNX has CumSum, not CumProd
        return torch.exp(torch.cumsum(F.logsigmoid(logits), dim=-1))
    raise ValueError(f"exceedance probabilities exist for coral and corn heads, not {kind!r}")


def probabilities(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Class probabilities (..., K) from head logits; rows sum to 1.

    coral / corn: ``p_0 = 1 - P(y > 0)``, ``p_k = P(y > k-1) - P(y > k)``, ``p_{K-1} = P(y > K-2)``.
    softmax: the softmax.
    """
    if kind == "softmax":
        return torch.softmax(logits, dim=-1)
    exceed = exceedance_probabilities(logits, kind)
    ones = torch.ones_like(exceed[..., :1])
    upper = torch.cat([ones, exceed], dim=-1)
    lower = torch.cat([exceed, torch.zeros_like(ones)], dim=-1)
    return upper - lower


def predict_grade(logits: torch.Tensor, kind: str, rule: str = "median") -> torch.Tensor:
    """Predicted class index (..., ) int64 from head logits.

    ``rule`` "median": the number of thresholds with ``P(y > k) > 0.5`` (for softmax: the first class whose
    cumulative probability reaches 0.5); "mode": the argmax of the class probabilities.
    """
    if rule not in GRADE_RULES:
        raise ValueError(f"rule must be one of {GRADE_RULES}, got {rule!r}")
    if rule == "mode":
        return torch.argmax(probabilities(logits, kind), dim=-1)
    if kind == "softmax":
        exceed = 1.0 - torch.cumsum(torch.softmax(logits, dim=-1), dim=-1)[..., :-1]
    else:
        exceed = exceedance_probabilities(logits, kind)
    return (exceed > 0.5).to(torch.int64).sum(dim=-1)


def expected_grade(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Expected class index (...,) float: sum_k k p_k (add the lowest grade for the grade itself)."""
    probs = probabilities(logits, kind)
    index = torch.arange(probs.shape[-1], dtype=probs.dtype, device=probs.device)
    return (probs * index).sum(dim=-1)


class OrdinalHead(nn.Module):
    """Linear ordinal head on an (N, F) feature.

    Inputs: ``in_features`` F, ``num_classes`` K, ``kind`` one of ``HEAD_KINDS``, ``num_tasks`` T (None: a single
    grade), ``hidden`` (optional width of a ReLU layer in front), ``dropout`` (before the last layer).
    ``forward(features)`` -> logits (N, L) or (N, T, L) with L = K - 1 (coral, corn) or K (softmax).
    ``loss(logits, labels, weights)``, ``probabilities(logits)``, ``predict_grade(logits, rule)`` dispatch on kind.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        kind: str = "coral",
        num_tasks: int | None = None,
        hidden: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"kind must be one of {HEAD_KINDS}, got {kind!r}")
        if num_classes < 2:
            raise ValueError(f"an ordinal head needs >= 2 classes, got {num_classes}")
        self.kind = kind
        self.num_classes = num_classes
        self.num_tasks = num_tasks
        tasks = num_tasks or 1
        trunk: list[nn.Module] = []
        width = in_features
        if hidden:
            trunk += [nn.Linear(in_features, hidden), nn.ReLU(inplace=True)]
            width = hidden
        if dropout:
            trunk.append(nn.Dropout(dropout))
        self.trunk = nn.Sequential(*trunk)
        if kind == "coral":
            self.weight = nn.Linear(width, tasks, bias=False)  # one shared weight vector per task
            # first bias and K-2 positive gaps; init spreads the thresholds around 0
            self.first_bias = nn.Parameter(torch.full((tasks, 1), (num_classes - 2) / 2.0))
            self.raw_gaps = nn.Parameter(torch.full((tasks, num_classes - 2), 0.5413))  # softplus(0.5413) = 1
            self.linear = None
        else:
            outputs = num_classes - 1 if kind == "corn" else num_classes
            self.linear = nn.Linear(width, tasks * outputs)
        self.outputs = num_classes - 1 if kind != "softmax" else num_classes

    def coral_biases(self) -> torch.Tensor:
        """(T, K-1) strictly decreasing CORAL biases."""
        gaps = F.softplus(self.raw_gaps)
        return torch.cat([self.first_bias, self.first_bias - torch.cumsum(gaps, dim=1)], dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.trunk(features)
        if self.kind == "coral":
            logits = self.weight(hidden)[:, :, None] + self.coral_biases()[None, :, :]  # (N, T, K-1)
        else:
            logits = self.linear(hidden).reshape(hidden.shape[0], -1, self.outputs)
        return logits if self.num_tasks else logits[:, 0, :]

    def loss(self, logits: torch.Tensor, labels, weights=None) -> torch.Tensor:
        """The head's loss (coral_loss, corn_loss or softmax_loss), weights (K,) per class or None."""
        return LOSSES[self.kind](logits, labels, weights)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return probabilities(logits, self.kind)

    def predict_grade(self, logits: torch.Tensor, rule: str = "median") -> torch.Tensor:
        return predict_grade(logits, self.kind, rule)


LOSSES = {"coral": coral_loss, "corn": corn_loss, "softmax": softmax_loss}


class OrdinalPredictor(nn.Module):
    """Export wrapper: ``model`` (anything returning head logits) -> (class probabilities, predicted class index).

    ``forward(x)`` returns ``(probabilities (N, [T,] K) float32, grade (N[, T]) int64)``; add the lowest grade to
    the index to get the grade. ONNX-exportable (tensor ops only).
    """

    def __init__(self, model: nn.Module, kind: str, rule: str = "median"):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"kind must be one of {HEAD_KINDS}, got {kind!r}")
        if rule not in GRADE_RULES:
            raise ValueError(f"rule must be one of {GRADE_RULES}, got {rule!r}")
        self.model = model
        self.kind = kind
        self.rule = rule

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return probabilities(logits, self.kind), predict_grade(logits, self.kind, self.rule)


HEAD_KINDS = ("coral", "corn", "softmax")
HEAD_WEIGHTINGS = ("none", "effective")


def fit_frozen_heads(features: torch.Tensor, targets: torch.Tensor, num_classes: int, num_tasks: int | None = None,
                     steps: int = 300, lr: float = 1e-2):
    """The ordinal-vs-one-hot comparison on a trained trunk: every head kind (CORAL, CORN, one-hot softmax) with and
    without class weighting, each fitted by AdamW on the frozen ``features`` (n, d) against ``targets`` (n,) or
    (n, num_tasks) class indices (``num_tasks`` None: one task). Yields (kind, weighting, head) in a fixed order,
    seeded alike."""
    for kind in HEAD_KINDS:
        for weighting in HEAD_WEIGHTINGS:
            torch.manual_seed(0)
            head = OrdinalHead(features.shape[1], num_classes, kind=kind, num_tasks=num_tasks)
            weights = torch.as_tensor(class_weights(targets.numpy().ravel(), num_classes, weighting))
            optim = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
            for _ in range(steps):
                loss = head.loss(head(features), targets, weights)
                optim.zero_grad()
                loss.backward()
                optim.step()
            yield kind, weighting, head
