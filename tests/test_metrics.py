"""Tests for mednets.metrics against hand-computed values and brute force."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.distance import cdist

from mednets.data.phantoms import make_phantom
from mednets.metrics import brats_scores, dice, dice_per_label, hd95, hd95_per_label


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
    with pytest.raises(ValueError, match="fit no label convention: both 3 and 4"):
        brats_scores(label, label_2023)  # inferred together: one map cannot be both
    scores = brats_scores(
        label, label_2023, spacing=(1.0, 1.0, 1.0), label_convention=("brats2018", "brats2023")
    )
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


# --- masks, probabilities and label maps (the inputs) ----------------------------


def _cube_and_probabilities():
    target = np.zeros((32, 32, 32), np.uint8)
    target[11:21, 11:21, 11:21] = 1  # a 10^3 cube
    pred = np.where(target == 1, 0.95, 0.02)  # float64 probabilities
    return pred, target


@pytest.mark.parametrize("metric", [dice, hd95])
def test_probabilities_are_refused_naming_the_values(metric):
    pred, target = _cube_and_probabilities()
    with pytest.raises(
        ValueError, match=r"pred must be a binary mask, got float64 values \[0.02, 0.95\].*threshold"
    ):
        metric(pred, target)
    with pytest.raises(ValueError, match=r"float32 values \[0.02, 0.95\]"):
        metric(pred.astype(np.float32), target)


def test_thresholded_probabilities_score_right():
    pred, target = _cube_and_probabilities()
    assert dice(pred > 0.5, target) == 1.0 and hd95(pred > 0.5, target) == 0.0
    assert dice(pred, target, threshold=0.5) == 1.0 and hd95(pred, target, threshold=0.5) == 0.0
    # The old silent answers, for the record: every non-zero counted as foreground.
    assert dice(pred > 0, target) == pytest.approx(2 * 1000 / (32**3 + 1000))


def test_label_maps_with_several_labels_are_refused():
    label = np.zeros((8, 8, 8), np.uint8)
    label[1:4], label[4:7] = 1, 2
    with pytest.raises(ValueError, match=r"label map with values \[0, 1, 2\].*dice_per_label.*brats_scores"):
        dice(label, label > 0)
    with pytest.raises(ValueError, match=r"target must be a binary mask .*\[0, 1, 2\]"):
        hd95(label > 0, label)
    with pytest.raises(ValueError, match="dtype complex128"):
        dice(np.zeros(3, complex), np.zeros(3))


@pytest.mark.parametrize(
    "dtype", [bool, np.uint8, np.int16, np.int64, np.float32, np.float64], ids=lambda d: np.dtype(d).name
)
def test_masks_of_every_usual_dtype(dtype):
    a = np.array([1, 1, 1, 0, 0, 0]).astype(dtype)
    b = np.array([0, 1, 1, 1, 0, 0]).astype(dtype)
    assert dice(a, b) == pytest.approx(2 / 3)
    assert dice(a * 255 if dtype is np.uint8 else a, b) == pytest.approx(2 / 3)  # {0, 255} is a mask


def test_per_label_metrics():
    target = np.zeros((12, 12, 12), np.int16)
    target[2:6, 2:10, 2:10] = 1  # anterior
    target[6:10, 2:10, 2:10] = 2  # posterior
    pred = target.copy()
    pred[9] = 0  # the posterior part loses one of its four slices
    d = dice_per_label(pred, target.astype(np.float64), (1, 2))
    assert d[1] == 1.0 and d[2] == pytest.approx(2 * 3 / 7)
    h = hd95_per_label(pred, target, (1, 2), spacing=(2.0, 1.0, 1.0))
    assert h[1] == 0.0 and h[2] == pytest.approx(2.0)  # one slice of 2 mm
    assert dice_per_label(pred, target, [3]) == {3: 1.0} and hd95_per_label(pred, target, [3]) == {3: 0.0}
    with pytest.raises(ValueError, match="non-integer values"):
        dice_per_label(target * 0.5, target, (1,))
    with pytest.raises(ValueError, match=r"distinct and not empty, got \[1, 1\]"):
        dice_per_label(pred, target, (1, 1))
    with pytest.raises(ValueError, match="same shape"):
        hd95_per_label(pred[:5], target, (1,))


def test_brats_scores_need_a_convention_when_ambiguous():
    label = np.zeros((8, 8, 8), np.uint8)
    label[1:7, 1:7, 1:7], label[3:5, 3:5, 3:5], label[4, 4, 4] = 2, 1, 3  # {0, 1, 2, 3}
    with pytest.raises(ValueError, match="pass label_convention="):
        brats_scores(label, label)
    as_brats = brats_scores(label, label, label_convention="brats2023")
    assert all(r == {"dice": 1.0, "hd95": 0.0} for r in as_brats.values())
    # The same prediction read as the Decathlon's convention against a BraTS 2023 reference:
    # the core is wrong (1 and 2 swap), the whole tumour and enhancing tumour are right.
    mixed = brats_scores(label, label, label_convention=("msd", "brats2023"))
    assert mixed["WT"]["dice"] == 1.0 and mixed["ET"]["dice"] == 1.0 and mixed["TC"]["dice"] < 0.5
