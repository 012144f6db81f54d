"""Metrics for ordinal grades and scores (numpy only; used by training reports and the torch-free side alike).

Grades here are whatever integers the task uses (KL 0-4, RUST cortex 1-3, RUST total 4-12); functions that need
the list of possible grades take ``grades`` (all of them, in order), so that a grade absent from a sample still
gets its row and column. The seed's one-hot metrics (RUST, seed 001: AUC of the precision-recall curve, precision,
recall over one-hot labels) are here too, so that our figures can be put beside the seed's.
"""

from __future__ import annotations

import numpy as np

from sonogate.errors import DataError


def _as_grades(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if truth.ndim != 1 or truth.shape != pred.shape:
        raise DataError(f"truth and prediction must be 1-D of the same length, got {truth.shape} and {pred.shape}")
    if truth.size == 0:
        raise DataError("no graded units to score")
    for name, values in (("truth", truth), ("prediction", pred)):
        as_float = values.astype(np.float64)
        if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
            raise DataError(f"{name} grades must be integers")
    return truth.astype(np.int64), pred.astype(np.int64)


def _grade_list(truth: np.ndarray, pred: np.ndarray, grades) -> np.ndarray:
    if grades is None:
        return np.unique(np.concatenate([truth, pred]))
    grade_list = np.asarray(grades, dtype=np.int64)
    unknown = np.setdiff1d(np.concatenate([truth, pred]), grade_list)
    if unknown.size:
        raise DataError(f"grades {unknown.tolist()} are not among the task's grades {grade_list.tolist()}")
    return grade_list


def accuracy(y_true, y_pred) -> float:
    """Fraction of exact grade matches. Inputs (n,) integer grades; output in [0, 1]."""
    truth, pred = _as_grades(y_true, y_pred)
    return float(np.mean(truth == pred))


def within_one_accuracy(y_true, y_pred) -> float:
    """Fraction of predictions at most one grade off. Inputs (n,) integer grades; output in [0, 1]."""
    truth, pred = _as_grades(y_true, y_pred)
    return float(np.mean(np.abs(truth - pred) <= 1))


def mean_absolute_error(y_true, y_pred) -> float:
    """Mean |truth - prediction|, in grades. Inputs (n,) numbers (grades or totals); output >= 0."""
    truth = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if truth.shape != pred.shape or truth.size == 0:
        raise DataError(f"truth and prediction must be non-empty and of the same shape, got {truth.shape}, {pred.shape}")
    return float(np.mean(np.abs(truth - pred)))


def confusion_matrix(y_true, y_pred, grades=None) -> np.ndarray:
    """Counts: row = true grade, column = predicted grade, both in the order of ``grades``.

    Inputs: (n,) integer grades, optional ``grades`` (all possible grades; default: those seen). Output (G, G) int64.
    """
    truth, pred = _as_grades(y_true, y_pred)
    grade_list = _grade_list(truth, pred, grades)
    index = {int(g): i for i, g in enumerate(grade_list)}
    rows = np.array([index[int(g)] for g in truth])
    cols = np.array([index[int(g)] for g in pred])
    matrix = np.zeros((grade_list.size, grade_list.size), dtype=np.int64)
    np.add.at(matrix, (rows, cols), 1)
    return matrix


def per_grade_recall(y_true, y_pred, grades=None) -> np.ndarray:
    """Recall (sensitivity) of each grade: correct / true count. Output (G,) in the order of ``grades``; NaN for a
    grade with no true unit."""
    matrix = confusion_matrix(y_true, y_pred, grades)
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / np.maximum(support, 1), np.nan)


def macro_recall(y_true, y_pred, grades=None) -> float:
    """Mean per-grade recall over the grades present in the truth (balanced accuracy). Output in [0, 1]."""
    return float(np.nanmean(per_grade_recall(y_true, y_pred, grades)))


def quadratic_weighted_kappa(y_true, y_pred, grades=None) -> float:
    """Cohen's kappa with quadratic weights (agreement beyond chance, penalising by squared grade distance).

    ``1 - sum(W * O) / sum(W * E)`` with O the observed confusion matrix, E the outer product of its marginals
    divided by n, and ``W_ij = (i - j)^2 / (G - 1)^2`` over the positions of ``grades``. Inputs (n,) integer grades;
    output in [-1, 1] (1 = perfect; NaN when both raters use a single grade). Matches scikit-learn's
    ``cohen_kappa_score(weights="quadratic")`` given the same label list.
    """
    observed = confusion_matrix(y_true, y_pred, grades).astype(np.float64)
    size = observed.shape[0]
    if size < 2:
        return float("nan")
    positions = np.arange(size, dtype=np.float64)
    weights = (positions[:, None] - positions[None, :]) ** 2 / (size - 1) ** 2
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    denominator = float(np.sum(weights * expected))
    if denominator == 0.0:
        return float("nan")
    return float(1.0 - np.sum(weights * observed) / denominator)


def icc_mean_squares(ratings) -> dict[str, float]:
    """Two-way ANOVA mean squares of an (n targets, k raters) table (Shrout & Fleiss 1979).

    Output: ``{"rows": MS between targets, "columns": MS between raters, "error": residual MS, "within": MS within
    targets}``, in the ratings' units squared.
    """
    table = np.asarray(ratings, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 2:
        raise DataError(f"ratings must be an (n >= 2 targets, k >= 2 raters) table, got shape {table.shape}")
    if not np.all(np.isfinite(table)):
        raise DataError("ratings contain NaN or infinite values (drop incomplete targets first)")
    n, k = table.shape
    grand = table.mean()
    row_means = table.mean(axis=1)
    col_means = table.mean(axis=0)
    ss_rows = k * float(np.sum((row_means - grand) ** 2))
    ss_cols = n * float(np.sum((col_means - grand) ** 2))
    ss_total = float(np.sum((table - grand) ** 2))
    ss_error = ss_total - ss_rows - ss_cols
    return {
        "rows": ss_rows / (n - 1),
        "columns": ss_cols / (k - 1),
        "error": ss_error / ((n - 1) * (k - 1)),
        "within": (ss_total - ss_rows) / (n * (k - 1)),
    }


def icc(ratings, kind: str = "2,1") -> float:
    """Intraclass correlation of an (n targets, k raters) table, Shrout & Fleiss forms.

    ``kind`` "2,1": two-way random effects, absolute agreement, single rater (what RUST inter-rater studies report;
    systematic offsets between raters count as disagreement); "3,1": two-way mixed, consistency (offsets ignored);
    "1,1": one-way random. For a model against the truth pass ``np.column_stack([truth, prediction])``.
    Output: unitless, at most 1 (NaN when the denominator is 0).
    """
    ms = icc_mean_squares(ratings)
    n, k = np.asarray(ratings).shape
    if kind == "1,1":
        num, den = ms["rows"] - ms["within"], ms["rows"] + (k - 1) * ms["within"]
    elif kind == "2,1":
        num = ms["rows"] - ms["error"]
        den = ms["rows"] + (k - 1) * ms["error"] + k * (ms["columns"] - ms["error"]) / n
    elif kind == "3,1":
        num, den = ms["rows"] - ms["error"], ms["rows"] + (k - 1) * ms["error"]
    else:
        raise ValueError(f"kind must be '1,1', '2,1' or '3,1', got {kind!r}")
    return float(num / den) if den != 0 else float("nan")


# --------------------------------------------------------------------------------------------------------------
# the seed's one-hot metrics


def one_hot(labels, n_classes: int) -> np.ndarray:
    """(n,) class indexes -> (n, n_classes) 0/1 float64."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"labels must be class indexes in 0..{n_classes - 1}")
    out = np.zeros((labels.size, n_classes))
    out[np.arange(labels.size), labels] = 1.0
    return out


def _check_one_hot(targets, scores) -> tuple[np.ndarray, np.ndarray]:
    targets = np.asarray(targets, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if targets.ndim != 2 or targets.shape != scores.shape:
        raise DataError(f"targets and scores must be (n, C) of the same shape, got {targets.shape}, {scores.shape}")
    if not np.all((targets == 0) | (targets == 1)):
        raise DataError("one-hot targets must be 0 or 1")
    if not np.all(np.isfinite(scores)):
        raise DataError("scores contain NaN or infinite values")
    return targets, scores


def average_precision(targets, scores) -> float:
    """Area under the precision-recall curve of one binary column, as the step sum ``sum_k (R_k - R_{k-1}) P_k``
    over the distinct score thresholds (no interpolation; scikit-learn's ``average_precision_score``).

    Inputs: (n,) 0/1 targets, (n,) scores. Output in [0, 1]; NaN when there is no positive.
    """
    targets = np.asarray(targets, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    positives = targets.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    true_pos = np.cumsum(targets[order])
    # one point per distinct threshold: the last index of each run of equal scores
    last = np.r_[np.nonzero(np.diff(sorted_scores))[0], sorted_scores.size - 1]
    tp = true_pos[last]
    predicted = last + 1.0
    precision = tp / predicted
    recall = tp / positives
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def pr_auc(targets, scores, average: str = "macro") -> float:
    """AUC of the precision-recall curve over one-hot labels (the seed's headline metric).

    Inputs: ``targets`` (n, C) one-hot, ``scores`` (n, C) predicted probabilities. ``average`` "macro": mean of the
    per-column average precision over columns with at least one positive; "micro": all cells pooled as one binary
    problem (what Keras ``AUC(curve="PR")`` does by default, though Keras interpolates over 200 thresholds, so its
    figure differs slightly). Output in [0, 1].
    """
    targets, scores = _check_one_hot(targets, scores)
    if average == "micro":
        return average_precision(targets.ravel(), scores.ravel())
    if average != "macro":
        raise ValueError(f"average must be 'macro' or 'micro', got {average!r}")
    per_column = [average_precision(targets[:, c], scores[:, c]) for c in range(targets.shape[1])]
    return float(np.nanmean(per_column))


def one_hot_precision_recall(targets, scores, threshold: float = 0.5, average: str = "micro") -> tuple[float, float]:
    """Precision and recall of thresholded one-hot outputs (a cell is "predicted" when its score >= ``threshold``).

    The seed's precision 0.880 / recall 0.409 read like Keras ``Precision()`` / ``Recall()`` (threshold 0.5, all
    cells pooled: ``average="micro"``); "macro" averages per column (columns with no positive, or nothing
    predicted, are left out of that column's mean). A softmax over many classes often has no class above 0.5,
    which is why that recall is low. Inputs (n, C) one-hot targets and scores; output ``(precision, recall)``.
    """
    targets, scores = _check_one_hot(targets, scores)
    predicted = scores >= threshold
    hits = predicted & (targets == 1)
    if average == "micro":
        n_pred, n_pos = predicted.sum(), targets.sum()
        precision = hits.sum() / n_pred if n_pred else float("nan")
        recall = hits.sum() / n_pos if n_pos else float("nan")
        return float(precision), float(recall)
    if average != "macro":
        raise ValueError(f"average must be 'macro' or 'micro', got {average!r}")
    n_pred, n_pos, n_hit = predicted.sum(axis=0), targets.sum(axis=0), hits.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, n_hit / np.maximum(n_pred, 1), np.nan)
        recall = np.where(n_pos > 0, n_hit / np.maximum(n_pos, 1), np.nan)
    return float(np.nanmean(precision)), float(np.nanmean(recall))


def ordinal_report(y_true, y_pred, grades) -> dict:
    """The ordinal figures in one dict (JSON-ready): accuracy, within_one, mae, qwk, macro_recall, per_grade_recall
    {grade: recall or None}, confusion (nested lists, rows = truth) and grades. Inputs (n,) integer grades."""
    grade_list = [int(g) for g in grades]
    recall = per_grade_recall(y_true, y_pred, grade_list)
    return {
        "n": int(np.asarray(y_true).size),
        "grades": grade_list,
        "accuracy": accuracy(y_true, y_pred),
        "within_one": within_one_accuracy(y_true, y_pred),
        "mae": mean_absolute_error(y_true, y_pred),
        "qwk": quadratic_weighted_kappa(y_true, y_pred, grade_list),
        "macro_recall": float(np.nanmean(recall)),
        "per_grade_recall": {str(g): (None if np.isnan(r) else float(r)) for g, r in zip(grade_list, recall)},
        "confusion": confusion_matrix(y_true, y_pred, grade_list).tolist(),
    }
