"""Tests for mednets.data.phantoms: shapes, determinism, anatomy and contrasts."""

import itertools
import time

import numpy as np
import pytest

from mednets.data import brats_regions
from mednets.data.phantoms import PHANTOM_CHANNELS, make_phantom, make_phantom_dataset

SHAPES = [(64, 64, 64), (9, 17, 33), (32, 24, 16)]


@pytest.mark.parametrize(
    "shape,tumour", list(itertools.product(SHAPES, (True, False))), ids=lambda v: str(v).replace(" ", "")
)
def test_shapes_dtypes_and_labels(shape, tumour):
    image, label = make_phantom(shape, seed=2, tumour=tumour)
    assert image.shape == (4,) + shape and image.dtype == np.float32
    assert label.shape == shape and label.dtype == np.uint8
    values = set(np.unique(label).tolist())
    if tumour:
        assert values == {0, 1, 2, 4}
    else:
        assert values == {0}
    brain = image.max(axis=0) > 0
    assert brain.any() and not brain.all()
    assert not np.any(label[~brain]), "tumour labels outside the brain"
    assert np.all(image >= 0) and np.all(np.isfinite(image))


def test_deterministic_by_seed():
    a = make_phantom((24, 24, 24), seed=5)
    b = make_phantom((24, 24, 24), seed=5)
    c = make_phantom((24, 24, 24), seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_tumour_position_varies():
    centres = []
    for seed in range(6):
        _, label = make_phantom((48, 48, 48), seed=seed)
        centres.append(np.argwhere(label > 0).mean(axis=0))
    spread = np.ptp(np.array(centres), axis=0)
    assert np.all(spread > 2), spread


def test_subregions_are_nested():
    _, label = make_phantom((64, 64, 64), seed=0)
    coords = {v: np.argwhere(label == v).mean(axis=0) for v in (1, 2, 4)}
    # The necrotic core sits inside the enhancing rim, which sits inside the oedema:
    # their centroids nearly coincide and their sizes grow outwards.
    assert np.linalg.norm(coords[1] - coords[4]) < 3
    counts = np.bincount(label.ravel(), minlength=5)
    assert counts[1] < counts[1] + counts[4] < counts[1] + counts[2] + counts[4]
    wt, tc, et = brats_regions(label)
    assert tc.sum() > et.sum() > 0 and wt.sum() > tc.sum()


def test_contrasts_differ_between_channels():
    image, label = make_phantom((64, 64, 64), seed=1)
    ch = {name: image[i] for i, name in enumerate(PHANTOM_CHANNELS)}
    brain = image[0] > 0
    healthy = brain & (label == 0)

    def rel(name, mask):  # mean in mask relative to the healthy brain's mean
        return ch[name][mask].mean() / ch[name][healthy].mean()

    assert rel("flair", label == 2) > 1.4  # oedema bright on FLAIR
    assert rel("t1ce", label == 4) > 1.4  # enhancing rim bright after contrast
    assert rel("t1", label == 4) < 1.0  # ... but not before
    assert rel("t1ce", label == 1) < 0.6  # necrotic core dark on T1ce
    assert rel("t2", label == 2) > 1.2
    # Channels have different scales (arbitrary scanner units).
    means = [image[c][brain].mean() for c in range(4)]
    assert max(means) / min(means) > 1.3


def test_fast_enough():
    make_phantom((64, 64, 64), seed=0)
    best = min(_timed(lambda: make_phantom((64, 64, 64), seed=1)) for _ in range(3))
    assert best < 0.25, f"64^3 phantom took {best:.3f} s"


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_dataset_shapes_and_empty_fraction():
    images, labels = make_phantom_dataset(10, (16, 20, 12), seed=3, empty_fraction=0.3)
    assert images.shape == (10, 4, 16, 20, 12) and images.dtype == np.float32
    assert labels.shape == (10, 16, 20, 12) and labels.dtype == np.uint8
    empty = labels.reshape(10, -1).max(axis=1) == 0
    assert empty.sum() == 3
    again = make_phantom_dataset(10, (16, 20, 12), seed=3, empty_fraction=0.3)
    np.testing.assert_array_equal(images, again[0])
    np.testing.assert_array_equal(labels, again[1])
    assert not np.array_equal(images[0], images[1]), "subjects must differ"


@pytest.mark.parametrize(
    "shape,match",
    [((64, 64), "3 entries"), ((64, 4, 64), ">= 8"), (5, "tuple of 3 ints")],
    ids=["2d", "too-small", "not-a-tuple"],
)
def test_bad_shape(shape, match):
    with pytest.raises(ValueError, match=match):
        make_phantom(shape)


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="positive integer, got 0"):
        make_phantom_dataset(0)
    with pytest.raises(ValueError, match=r"\[0, 1\], got 1.5"):
        make_phantom_dataset(2, (8, 8, 8), empty_fraction=1.5)
