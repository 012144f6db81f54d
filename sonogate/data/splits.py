"""Splits by infant (or any group), never by frame: frames of one infant are strongly correlated, so a
frame-level split leaks and makes held-out errors and conformal coverage look better than they are."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sonogate.errors import DataError


def split_by_group(groups: Sequence, fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """Partition row indices so that every group (e.g. patient_id) lands in exactly one part.

    Inputs: ``groups`` one id per row; ``fractions`` the share of *groups* per part (normalised to sum 1);
    ``seed`` for the shuffle. Output: one sorted int64 index array per fraction. Group counts per part are
    rounded by largest remainder; every part with a positive fraction gets at least one group when there
    are enough groups. The same (groups, fractions, seed) always gives the same split.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or fr.size == 0 or np.any(~np.isfinite(fr)) or np.any(fr < 0) or fr.sum() <= 0:
        raise DataError(f"split fractions must be non-negative and not all zero: {list(fractions)}")
    fr = fr / fr.sum()
    labels = np.asarray([str(g) for g in groups], dtype=object)
    unique = np.array(sorted(set(labels.tolist())), dtype=object)  # sorted: independent of row order
    n_groups = len(unique)
    rng = np.random.default_rng(seed)
    order = unique[rng.permutation(n_groups)]

    counts = np.floor(fr * n_groups).astype(np.int64)
    remainder = fr * n_groups - counts
    for j in np.argsort(-remainder, kind="stable")[: n_groups - counts.sum()]:
        counts[j] += 1
    # Give each wanted part at least one group, taken from the largest part.
    for j in np.flatnonzero((fr > 0) & (counts == 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[j] += 1

    part_of = {}
    start = 0
    for j, c in enumerate(counts):
        for g in order[start : start + c]:
            part_of[g] = j
        start += c
    assignment = np.array([part_of[g] for g in labels], dtype=np.int64)
    return [np.flatnonzero(assignment == j).astype(np.int64) for j in range(len(fr))]
