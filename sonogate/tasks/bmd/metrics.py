"""Figures of BMD predictions (numpy only): Pearson r, RMSE, MAE, bias, osteoporosis AUC."""

from __future__ import annotations

import numpy as np

OSTEOPOROSIS_BMD = 0.858 - 2.5 * 0.120  # T-score -2.5 on the NHANES III young-female reference (0.558 g/cm2)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (rank statistic, ties halved); nan if one class."""
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    pos, neg = score[positive], score[~positive]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(order.size)
    allv = np.concatenate([pos, neg])[order]
    ranks[order] = np.arange(1, order.size + 1)
    # average ranks over ties
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks[order])
    ranks[order] = (sums / counts)[inv]
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def regression_block(pred: np.ndarray, true: np.ndarray) -> dict:
    """r, RMSE, MAE, bias (g/cm2) and osteoporosis AUC (low predicted BMD -> osteoporotic) of matched hips."""
    pred, true = np.asarray(pred, float).ravel(), np.asarray(true, float).ravel()
    ok = np.isfinite(pred) & np.isfinite(true)
    pred, true = pred[ok], true[ok]
    err = pred - true
    return {"n_hips": int(pred.size), "r": round(pearson(pred, true), 4), "rmse": round(float(np.sqrt(np.mean(err**2))), 4),
            "mae": round(float(np.mean(np.abs(err))), 4), "bias": round(float(err.mean()), 4),
            "osteoporosis_auc": round(auc(-pred, true <= OSTEOPOROSIS_BMD), 4),
            "n_osteoporotic": int((true <= OSTEOPOROSIS_BMD).sum())}
