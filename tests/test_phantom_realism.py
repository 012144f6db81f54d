"""The phantom realism benchmark (benchmarks/phantom_realism.py): separability AUC, the blind reader sheet,
and the realistic style's distance to the real SPJ standard planes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from sonogate.phantom import realistic

pytestmark = pytest.mark.torchfree
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import phantom_realism  # benchmarks/ is outside the package


def test_separability_auc_is_chance_for_one_domain_and_one_for_two():
    same_a = phantom_realism.phantom_images(24, 1, ("A", "B"))
    same_b = phantom_realism.phantom_images(24, 2, ("A", "B"))
    auc_same = phantom_realism.separability_auc(same_a, same_b)
    assert 0.2 < auc_same < 0.8, auc_same
    washed = phantom_realism.phantom_images(24, 3, ("X_extreme_gain",))
    assert phantom_realism.separability_auc(same_a, washed) > 0.95


def test_blind_sheet_hides_the_answer_in_a_key():
    real = [np.full((256, 256), 30, np.uint8)] * 8
    phantom = [np.full((256, 256), 200, np.uint8)] * 8
    sheet, key = phantom_realism.blind_sheet(real, phantom, count=10, seed=4, tile=64)
    assert sorted(key) == ["phantom"] * 5 + ["real"] * 5
    assert sheet.shape == (2 * (18 + 64), 5 * 64, 3)
    # Tile j (row-major) shows what the key says: real tiles are the dark ones.
    for j, answer in enumerate(key):
        row, col = divmod(j, 5)
        tile = sheet[18 + row * 82 + 20 : 18 + row * 82 + 60, col * 64 + 10 : col * 64 + 54, 0]
        assert (tile.mean() < 100) == (answer == "real"), (j, answer)


def test_realistic_style_is_closer_to_real_scans_than_the_schematic(shared_data):
    """On the real SPJ standard planes: the realistic style is nearer in the runtime's image statistics
    (median Mahalanobis distance to a fit on the real frames) than the schematic style of the same hips."""
    real = phantom_realism.real_standard_planes(shared_data.parent)
    assert len(real) >= 20
    sets = {style: phantom_realism.phantom_images(24, 5, ("A", "B"), style=style) for style in realistic.STYLES}
    dist = phantom_realism.ood_distances(real, sets)
    assert dist["realistic"]["to_real_median"] < 0.85 * dist["schematic"]["to_real_median"], dist
