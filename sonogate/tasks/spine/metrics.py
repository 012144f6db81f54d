"""Completion metrics in the US-X Complete / VRCNet convention, numpy only (the runtime can score without torch).

Normalisation (the paper's): its VerSe meshes are centred and scaled by 1/100, i.e. coordinates are mm / 100
(``PAPER_UNIT_MM``); no per-shape rescaling. Chamfer distances are translation-invariant, so here both clouds
are simply divided by 100 mm (in the phantom's frame, origin at the truth's centroid, that is exactly the
paper's centring too). Then, with d(p, Q) the distance from p to its nearest point of Q:

* ``cd_l2_x1e4``: (mean_p d(p, truth)^2 + mean_q d(q, pred)^2) x 10^4 (VRCNet ``cd_t``); numerically mm^2.
* ``cd_l1``: (mean_p d(p, truth) + mean_q d(q, pred)) / 2 (VRCNet ``cd_p``), in paper units; ``cd_l1_mm`` the same
  in mm.
* ``f1``: F-score at 0.01 (1 mm): precision = share of predicted points within 0.01 of the truth, recall = share
  of truth points within 0.01 of the prediction (strictly closer, as VRCNet's ``fscore``), F1 = 2PR / (P + R).
* ``mean_mm``, ``p95_mm``: mean and 95th percentile of the nearest distances in mm, both directions pooled;
  ``accuracy_mean_mm`` (prediction -> truth) and ``completeness_mean_mm`` (truth -> prediction) separately.

Body and arch (``completion_metrics``): split by the complete shape's centroid y (the mean of its points): the arch
is y above it (the phantom frame's y is posterior), the body y at or below it; the truth and the prediction are
split by the same plane, as in the paper's evaluation. A part with no predicted point gets NaN distances, F1 0
and ``n_pred`` 0 (the summary counts such cases).
"""

from __future__ import annotations

import numpy as np

from sonogate.errors import DataError

PAPER_UNIT_MM = 100.0
F1_THRESHOLD = 0.01  # paper units: 1 mm
PARTS = ("whole", "body", "arch")
_CHUNK = 256


def _cloud(points, name: str) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise DataError(f"{name} must be an (N, 3) point array, got shape {pts.shape}")
    if len(pts) == 0:
        raise DataError(f"{name} is empty")
    if not np.all(np.isfinite(pts)):
        raise DataError(f"{name} contains NaN or infinite coordinates")
    return pts


def nearest_distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour distances both ways (same units as the input): (a -> b (Na,), b -> a (Nb,)).

    All pairwise coordinate differences, a block of rows of ``a`` at a time (no |a|^2 + |b|^2 - 2 a.b
    cancellation: identical points are exactly 0 apart).
    """
    a = _cloud(a, "first cloud")
    b = _cloud(b, "second cloud")
    a_to_b = np.empty(len(a))
    b_to_a = np.full(len(b), np.inf)
    for start in range(0, len(a), _CHUNK):
        block = a[start:start + _CHUNK]
        d2 = np.zeros((len(block), len(b)))
        for axis in range(3):
            d2 += (block[:, axis, None] - b[None, :, axis]) ** 2
        a_to_b[start:start + _CHUNK] = d2.min(axis=1)
        np.minimum(b_to_a, d2.min(axis=0), out=b_to_a)
    return np.sqrt(a_to_b), np.sqrt(b_to_a)


def pair_metrics(pred, truth, unit_mm: float = PAPER_UNIT_MM) -> dict[str, float]:
    """Metrics of a predicted cloud against a truth cloud, both (N, 3) in mm (module docstring)."""
    pred_to_truth, truth_to_pred = nearest_distances(np.asarray(pred, float) / unit_mm,
                                                     np.asarray(truth, float) / unit_mm)
    precision = float((pred_to_truth < F1_THRESHOLD).mean())
    recall = float((truth_to_pred < F1_THRESHOLD).mean())
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    cd_l1 = float((pred_to_truth.mean() + truth_to_pred.mean()) / 2)
    pooled_mm = np.concatenate([pred_to_truth, truth_to_pred]) * unit_mm
    return {"cd_l2_x1e4": float(((pred_to_truth ** 2).mean() + (truth_to_pred ** 2).mean()) * 1e4),
            "cd_l1": cd_l1, "cd_l1_mm": cd_l1 * unit_mm, "f1": f1, "precision": precision, "recall": recall,
            "mean_mm": float(pooled_mm.mean()), "p95_mm": float(np.percentile(pooled_mm, 95)),
            "accuracy_mean_mm": float(pred_to_truth.mean() * unit_mm),
            "completeness_mean_mm": float(truth_to_pred.mean() * unit_mm)}


def _empty_part(n_truth: int) -> dict[str, float]:
    nan = float("nan")
    return {"cd_l2_x1e4": nan, "cd_l1": nan, "cd_l1_mm": nan, "f1": 0.0, "precision": 0.0, "recall": 0.0,
            "mean_mm": nan, "p95_mm": nan, "accuracy_mean_mm": nan, "completeness_mean_mm": nan,
            "n_pred": 0, "n_truth": n_truth}


def completion_metrics(pred, truth) -> dict[str, dict[str, float]]:
    """{"whole", "body", "arch"} -> ``pair_metrics`` (+ ``n_pred``, ``n_truth``) for one case; mm in.

    Body / arch: split at the truth's centroid y (module docstring).
    """
    pred = _cloud(pred, "predicted cloud")
    truth = _cloud(truth, "complete (truth) cloud")
    centre_y = truth[:, 1].mean()
    out = {}
    for part, pred_mask, truth_mask in (
            ("whole", np.ones(len(pred), bool), np.ones(len(truth), bool)),
            ("body", pred[:, 1] <= centre_y, truth[:, 1] <= centre_y),
            ("arch", pred[:, 1] > centre_y, truth[:, 1] > centre_y)):
        if not pred_mask.any() or not truth_mask.any():
            out[part] = _empty_part(int(truth_mask.sum()))
            continue
        out[part] = {**pair_metrics(pred[pred_mask], truth[truth_mask]), "n_pred": int(pred_mask.sum()),
                     "n_truth": int(truth_mask.sum())}
    return out


def summarise(per_case: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean and sd over cases of each metric, per part: {part: {metric: mean, metric + "_sd": sd, ...,
    "n_cases", "n_empty" (cases whose part had no predicted point, left out of the means)}}."""
    if not per_case:
        raise DataError("no cases to summarise")
    out = {}
    for part in PARTS:
        rows = [case[part] for case in per_case]
        kept = [r for r in rows if r["n_pred"] > 0]
        summary: dict[str, float] = {"n_cases": len(rows), "n_empty": len(rows) - len(kept)}
        for key in ("cd_l2_x1e4", "cd_l1", "cd_l1_mm", "f1", "mean_mm", "p95_mm", "accuracy_mean_mm",
                    "completeness_mean_mm"):
            values = np.array([r[key] for r in kept], dtype=np.float64)
            summary[key] = float(values.mean()) if len(values) else float("nan")
            summary[key + "_sd"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        out[part] = summary
    return out
