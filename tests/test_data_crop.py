"""Tests for mednets.data.crop: properties (hypothesis) and error messages."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mednets.data.crop import (
    crop_or_pad,
    crop_patch,
    foreground_bbox,
    paste_patch,
    random_crop,
    sample_patch_start,
)


@st.composite
def volume_and_patch(draw):
    shape = tuple(draw(st.integers(1, 12)) for _ in range(3))
    size = tuple(draw(st.integers(1, n)) for n in shape)
    start = tuple(draw(st.integers(0, n - s)) for n, s in zip(shape, size))
    channels = draw(st.sampled_from([None, 1, 3]))
    return shape, size, start, channels


@settings(max_examples=80, deadline=None)
@given(case=volume_and_patch(), seed=st.integers(0, 2**16))
def test_crop_then_paste_is_identity(case, seed):
    shape, size, start, channels = case
    full = shape if channels is None else (channels,) + shape
    volume = np.random.default_rng(seed).random(full)
    patch = crop_patch(volume, start, size).copy()
    assert patch.shape == full[:-3] + size
    # Pasting the crop back into a copy restores the volume exactly ...
    restored = paste_patch(np.zeros_like(volume), patch, start)
    box = (...,) + tuple(slice(a, a + n) for a, n in zip(start, size))
    np.testing.assert_array_equal(restored[box], volume[box])
    np.testing.assert_array_equal(paste_patch(volume.copy(), patch, start), volume)
    # ... and cropping what was pasted gives the patch back.
    np.testing.assert_array_equal(crop_patch(restored, start, size), patch)


@settings(max_examples=80, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 40)] * 3),
    data=st.data(),
    fraction=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_patches_always_inside_the_volume(shape, data, fraction, seed):
    size = tuple(data.draw(st.integers(1, n)) for n in shape)
    rng = np.random.default_rng(seed)
    n_fg = data.draw(st.integers(0, 5))
    foreground = np.stack([rng.integers(0, n, n_fg) for n in shape], axis=1)
    for _ in range(5):
        start = sample_patch_start(shape, size, rng, foreground, fraction)
        assert all(0 <= s and s + p <= n for s, p, n in zip(start, size, shape)), (start, size, shape)


@settings(max_examples=50, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 9)] * 3),
    target=st.tuples(*[st.integers(1, 9)] * 3),
    seed=st.integers(0, 100),
)
def test_crop_or_pad_round_trip(shape, target, seed):
    x = np.random.default_rng(seed).random((2,) + shape)
    y = crop_or_pad(x, target)
    assert y.shape == (2,) + target
    # Padding to the larger shape and cropping back is exact.
    big = tuple(max(a, b) for a, b in zip(shape, target))
    np.testing.assert_array_equal(crop_or_pad(crop_or_pad(x, big), shape), x)


def test_crop_or_pad_is_centred():
    x = np.arange(5).reshape(5, 1, 1) + 1
    assert crop_or_pad(x, (3, 1, 1)).ravel().tolist() == [2, 3, 4]
    assert crop_or_pad(x, (8, 1, 1), pad_value=-1).ravel().tolist() == [-1, 1, 2, 3, 4, 5, -1, -1]


def test_foreground_centred_patches_contain_foreground():
    label = np.zeros((60, 60, 60), np.uint8)
    label[50:54, 5:8, 30:33] = 1
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(50):
        start = sample_patch_start(label.shape, (16, 16, 16), rng, label, foreground_fraction=1.0)
        hits += crop_patch(label, start, (16, 16, 16)).any()
    assert hits == 50
    # Uniform patches rarely see this small tumour.
    uniform = sum(
        crop_patch(label, sample_patch_start(label.shape, (16, 16, 16), rng), (16, 16, 16)).any()
        for _ in range(50)
    )
    assert uniform < 25


def test_random_crop_image_and_label_agree():
    image = np.random.default_rng(1).random((2, 20, 18, 16)).astype(np.float32)
    label = (image[0] > 0.9).astype(np.uint8)
    a, b, start = random_crop(image, label, (8, 8, 8), rng=3, foreground_fraction=0.5)
    assert a.shape == (2, 8, 8, 8) and b.shape == (8, 8, 8)
    np.testing.assert_array_equal(b, (a[0] > 0.9).astype(np.uint8))
    np.testing.assert_array_equal(a, crop_patch(image, start, (8, 8, 8)))
    again = random_crop(image, label, (8, 8, 8), rng=3, foreground_fraction=0.5)
    assert again[2] == start
    with pytest.raises(ValueError, match=r"label shape \(20, 18, 15\) must match .* \(20, 18, 16\)"):
        random_crop(image, label[..., :15], (8, 8, 8))


def test_foreground_bbox():
    m = np.zeros((10, 10, 10), bool)
    m[2:5, 3, 7:9] = True
    assert foreground_bbox(m) == ((2, 3, 7), (5, 4, 9))
    assert foreground_bbox(m, margin=2) == ((0, 1, 5), (7, 6, 10))
    cropped = m[2:5, 3:4, 7:9]
    assert cropped.sum() == m.sum()


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: crop_patch(np.zeros((5, 5, 5)), (3, 0, 0), (3, 2, 2)),
            r"start \(3, 0, 0\) with size \(3, 2, 2\) does not fit in volume of shape \(5, 5, 5\) \(axis 0",
        ),
        (lambda: crop_patch(np.zeros((5, 5, 5)), (-1, 0, 0), (2, 2, 2)), r"axis 0: needs 0 <= start"),
        (
            lambda: crop_patch(np.zeros((5, 5)), (0, 0, 0), (2, 2, 2)),
            r"at least 3 dimensions .* got shape \(5, 5\)",
        ),
        (lambda: crop_patch(np.zeros((5, 5, 5)), (0, 0), (2, 2, 2)), r"start must have 3 entries .* got 2"),
        (lambda: paste_patch(np.zeros((5, 5, 5)), np.ones((2, 2, 6)), (0, 0, 0)), r"axis 2: .* got 0 \+ 6"),
        (
            lambda: paste_patch(np.zeros((2, 5, 5, 5)), np.ones((3, 2, 2, 2)), (0, 0, 0)),
            r"leading axes \(3,\) must match the volume's \(2,\)",
        ),
        (
            lambda: crop_or_pad(np.zeros((3, 3, 3)), (0, 3, 3)),
            r"target shape must be >= 1 .* got \(0, 3, 3\)",
        ),
        (
            lambda: sample_patch_start((10, 10, 10), (11, 4, 4)),
            r"patch size \(11, 4, 4\) must be between 1 and the volume shape \(10, 10, 10\)",
        ),
        (
            lambda: sample_patch_start((10, 10, 10), (4, 4, 4), foreground=np.zeros((5, 2))),
            r"coordinates \(N, 3\) or a mask of shape \(10, 10, 10\), got shape \(5, 2\)",
        ),
        (lambda: sample_patch_start((10, 10, 10), (4, 4, 4), foreground_fraction=2), r"\[0, 1\], got 2"),
        (lambda: foreground_bbox(np.zeros((4, 4, 4))), r"shape \(4, 4, 4\) has no foreground voxel"),
        (lambda: foreground_bbox(np.zeros((4, 4))), r"3D \(X, Y, Z\), got shape \(4, 4\)"),
    ],
    ids=[
        "past-end",
        "negative",
        "2d",
        "start-len",
        "paste-outside",
        "paste-channels",
        "pad-zero",
        "patch-too-big",
        "fg-shape",
        "fraction",
        "bbox-empty",
        "bbox-2d",
    ],
)
def test_errors_name_the_shapes(call, match):
    with pytest.raises(ValueError, match=match):
        call()
