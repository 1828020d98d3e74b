"""Tests for mednets.metrics against hand-computed values and brute force."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.distance import cdist

from mednets.data.phantoms import make_phantom
from mednets.metrics import brats_scores, dice, hd95


def test_dice_values():
    a = np.array([1, 1, 1, 0, 0, 0])
    b = np.array([0, 1, 1, 1, 0, 0])
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(a, a) == 1.0
    assert dice(a, 1 - a) == 0.0


def test_dice_empty_cases():
    z = np.zeros((4, 4, 4), bool)
    one = z.copy()
    one[1, 1, 1] = True
    assert dice(z, z) == 1.0
    assert dice(z, one) == 0.0 and dice(one, z) == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"same shape, got \(3, 3\) and \(3, 4\)"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"same shape"):
        hd95(np.zeros((3, 3)), np.zeros((3, 4)))


def test_hd95_points_and_spacing():
    a = np.zeros((8, 8, 8), bool)
    b = np.zeros((8, 8, 8), bool)
    a[0, 0, 0] = True
    b[3, 4, 0] = True
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(a, b, spacing=(2.0, 1.0, 1.0)) == pytest.approx(np.sqrt(36 + 16))
    assert hd95(a, b, spacing=0.5) == pytest.approx(2.5)


def test_hd95_empty_cases_and_identity():
    z = np.zeros((5, 5, 5), bool)
    m = z.copy()
    m[1:4, 1:4, 1:4] = True
    assert hd95(z, z) == 0.0
    assert hd95(m, z) == float("inf") and hd95(z, m) == float("inf")
    assert hd95(m, m) == 0.0


def test_hd95_bad_spacing():
    with pytest.raises(ValueError, match=r"3 entries \(one per axis\), got 2"):
        hd95(np.ones((3, 3, 3)), np.ones((3, 3, 3)), spacing=(1, 1))
    with pytest.raises(ValueError, match="positive"):
        hd95(np.ones((3, 3, 3)), np.ones((3, 3, 3)), spacing=(1, 0, 1))


def _brute_hd95(a, b, spacing):
    def surface(m):
        return np.argwhere(m & ~ndimage.binary_erosion(m, border_value=0)) * np.asarray(spacing)

    d = cdist(surface(a), surface(b))
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    spacing=st.tuples(*[st.sampled_from([0.5, 1.0, 2.0])] * 3),
)
def test_hd95_matches_brute_force(seed, spacing):
    rng = np.random.default_rng(seed)
    a = ndimage.binary_dilation(rng.random((12, 10, 9)) > 0.93)
    b = ndimage.binary_dilation(rng.random((12, 10, 9)) > 0.93)
    a[0, 0, 0] = b[-1, -1, -1] = True  # never empty, and touching the border
    assert hd95(a, b, spacing) == pytest.approx(_brute_hd95(a, b, spacing))


def test_brats_scores_perfect_and_mixed_conventions():
    _, label = make_phantom((32, 32, 32), seed=4)
    label_2023 = np.where(label == 4, 3, label).astype(np.uint8)
    scores = brats_scores(label, label_2023, spacing=(1.0, 1.0, 1.0))
    assert set(scores) == {"WT", "TC", "ET"}
    for region in scores.values():
        assert region == {"dice": 1.0, "hd95": 0.0}


def test_brats_scores_known_error():
    true = np.zeros((10, 10, 10), np.uint8)
    true[2:8, 2:8, 2:8] = 2
    true[4:6, 4:6, 4:6] = 4
    pred = true.copy()
    pred[pred == 4] = 1  # enhancing predicted as necrotic core
    s = brats_scores(pred, true)
    assert s["WT"]["dice"] == 1.0 and s["TC"]["dice"] == 1.0
    assert s["ET"]["dice"] == 0.0 and s["ET"]["hd95"] == float("inf")
    with pytest.raises(ValueError, match=r"same shape"):
        brats_scores(pred[:5], true)
