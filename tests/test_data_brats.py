"""Tests for BraTS label conventions and regions (mednets.data.brats)."""

import numpy as np
import pytest

from mednets.data import brats_regions, label_convention


@pytest.mark.parametrize("enhancing", [3, 4], ids=["brats2023", "brats2018"])
def test_regions_both_conventions(enhancing):
    label = np.array([[0, 1], [2, enhancing]], dtype=np.uint8)
    regions = brats_regions(label)
    assert regions.shape == (3, 2, 2) and regions.dtype == bool
    np.testing.assert_array_equal(regions[0], [[0, 1], [1, 1]])  # whole tumour
    np.testing.assert_array_equal(regions[1], [[0, 1], [0, 1]])  # tumour core
    np.testing.assert_array_equal(regions[2], [[0, 0], [0, 1]])  # enhancing
    assert label_convention(label) == {3: "brats2023", 4: "brats2018"}[enhancing]


def test_convention_without_enhancing_is_none():
    assert label_convention(np.array([0, 1, 2])) is None
    assert label_convention(np.array([0.0, 2.0])) is None


@pytest.mark.parametrize(
    "values,match",
    [([0, 5], r"unexpected values \[5\]"), ([0, 3, 4], "got both 3 and 4"), ([0, -1, 7], r"\[-1, 7\]")],
    ids=["five", "mixed-3-4", "negative"],
)
def test_regions_bad_values(values, match):
    with pytest.raises(ValueError, match=match):
        brats_regions(np.array(values))


def test_regions_non_integer_float():
    with pytest.raises(ValueError, match="integers, got dtype float64"):
        brats_regions(np.array([0.5, 1.0]))
