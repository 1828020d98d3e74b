"""Tests for mednets.data.transforms: z-score in the brain, joint flips and rotations."""

import itertools

import numpy as np
import pytest

from mednets.data.phantoms import make_phantom
from mednets.data.transforms import (
    brain_mask,
    channel_stats,
    depth_first,
    depth_last,
    flip,
    random_flip_rot90,
    rot90,
    zscore_normalise,
)


def test_zscore_inside_brain():
    image, _ = make_phantom((32, 32, 32), seed=0)
    mask = brain_mask(image)
    out = zscore_normalise(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out[:, mask].mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(out[:, mask].std(axis=1), 1.0, atol=1e-4)
    assert np.all(out[:, ~mask] == 0)
    # Statistics computed on the whole volume, applied to a patch, give the same values.
    mean, std = channel_stats(image)
    patch = image[:, 8:20, 8:20, 8:20]
    np.testing.assert_allclose(
        zscore_normalise(patch, mean=mean, std=std), out[:, 8:20, 8:20, 8:20], atol=1e-5
    )


def test_zscore_errors():
    image = np.zeros((2, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="mask is empty"):
        zscore_normalise(image)
    with pytest.raises(ValueError, match=r"\(C, X, Y, Z\), got shape \(4, 4, 4\)"):
        zscore_normalise(image[0])
    with pytest.raises(ValueError, match=r"2 entries \(one per channel\), got \(3,\) and \(3,\)"):
        zscore_normalise(image + 1, mean=np.zeros(3), std=np.ones(3))
    with pytest.raises(ValueError, match="both mean and std"):
        zscore_normalise(image + 1, mean=np.zeros(2))
    with pytest.raises(ValueError, match=r"mask shape \(4, 4\) must equal .* \(4, 4, 4\)"):
        zscore_normalise(image + 1, mask=np.ones((4, 4), bool))


def _pair(shape=(6, 6, 5)):
    label = np.random.default_rng(0).integers(0, 5, size=shape).astype(np.uint8)
    image = np.stack([label * 10.0, label * -1.0]).astype(np.float32)  # channels encode the label
    return image, label


@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 2), (0, 1, 2)], ids=str)
def test_flip_moves_image_and_label_together(axes):
    image, label = _pair()
    fi, fl = flip(image, label, axes)
    np.testing.assert_array_equal(fi[0], fl * 10.0)
    np.testing.assert_array_equal(fl, np.flip(label, axes))
    assert fi.flags.c_contiguous and fl.flags.c_contiguous
    np.testing.assert_array_equal(flip(fi, fl, axes)[1], label)  # a flip is its own inverse


@pytest.mark.parametrize("k,axes", list(itertools.product([1, 2, 3], [(0, 1), (1, 2), (0, 2)])), ids=str)
def test_rot90_moves_image_and_label_together(k, axes):
    image, label = _pair((6, 6, 6))
    ri, rl = rot90(image, label, k, axes)
    np.testing.assert_array_equal(ri[1], rl * -1.0)
    np.testing.assert_array_equal(rl, np.rot90(label, k, axes))
    np.testing.assert_array_equal(rot90(ri, rl, 4 - k, axes)[1], label)


def test_random_flip_rot90_keeps_shape_and_pairing():
    image, label = _pair((6, 6, 5))
    seen = set()
    for seed in range(20):
        ri, rl = random_flip_rot90(image, label, rng=seed)
        assert ri.shape == image.shape and rl.shape == label.shape
        np.testing.assert_array_equal(ri[0], rl * 10.0)
        seen.add(rl.tobytes())
    assert len(seen) > 5, "augmentations should vary with the seed"
    # Same seed, same result.
    np.testing.assert_array_equal(
        random_flip_rot90(image, label, rng=7)[1], random_flip_rot90(image, label, rng=7)[1]
    )


def test_transform_errors():
    image, label = _pair()
    with pytest.raises(ValueError, match=r"spatial axes must be in \(0, 1, 2\), got \(3,\)"):
        flip(image, label, (3,))
    with pytest.raises(ValueError, match=r"two different spatial axes .* got \(1, 1\)"):
        rot90(image, label, 1, (1, 1))
    with pytest.raises(
        ValueError, match=r"label shape \(6, 6\) must equal the image's spatial shape \(6, 6, 5\)"
    ):
        flip(image, label[..., 0])


def test_depth_first_moves_the_slice_axis_and_depth_last_undoes_it():
    rng = np.random.default_rng(0)
    image = rng.random((4, 5, 6, 7))  # (C, X, Y, Z)
    out = depth_first(image)
    assert out.shape == (4, 7, 5, 6) and out.flags.c_contiguous and out.dtype == image.dtype
    # voxel (c, x, y, z) goes to (c, z, x, y)
    assert out[2, 6, 1, 3] == image[2, 1, 3, 6]
    np.testing.assert_array_equal(depth_last(out), image)
    label = rng.integers(0, 4, (5, 6, 7)).astype(np.uint8)
    out = depth_first(label)
    assert out.shape == (7, 5, 6) and out.dtype == np.uint8 and out[4, 0, 2] == label[0, 2, 4]
    np.testing.assert_array_equal(depth_last(out), label)
    # An axial slice (fixed z) of the volume is a slice along the first spatial axis.
    np.testing.assert_array_equal(depth_first(image)[:, 3], image[..., 3])


@pytest.mark.parametrize("fn", [depth_first, depth_last])
@pytest.mark.parametrize("shape", [(5, 6), (1, 4, 5, 6, 7)])
def test_depth_first_and_last_refuse_other_ranks(fn, shape):
    with pytest.raises(ValueError, match=rf"{fn.__name__}.*\(C, X, Y, Z\).*rank {len(shape)}"):
        fn(np.zeros(shape))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16, np.uint8, np.int64])
def test_zscore_takes_the_usual_dtypes(dtype):
    image, _ = make_phantom((16, 16, 16), seed=1)
    image = (image * 100).astype(dtype)
    out = zscore_normalise(image)
    assert out.dtype == np.float32
    reference = zscore_normalise(image.astype(np.float64))
    np.testing.assert_allclose(out, reference, atol=1e-5)
    mask = brain_mask(image)
    np.testing.assert_allclose(out[:, mask].std(axis=1), 1.0, atol=1e-4)


def test_zscore_refuses_complex_and_the_other_normalisers_use_it():
    with pytest.raises(ValueError, match="real numbers .*got dtype complex128"):
        zscore_normalise(np.ones((1, 2, 2, 2), complex))
    # phantom_slices z-scores each subject with zscore_normalise (one function, one epsilon).
    from mednets.data.phantoms import make_phantom_dataset
    from mednets.data.slices import phantom_slices

    x, _ = phantom_slices(1, shape=(32, 32, 32), slices_per_subject=1, empty_fraction=0.0, seed=0)
    images, _ = make_phantom_dataset(1, shape=(32, 32, 32), seed=0)
    normalised = np.moveaxis(zscore_normalise(images[0]), 0, -1)  # (X, Y, Z, C)
    matches = [z for z in range(32) if np.allclose(normalised[:, :, z], x[0], atol=1e-6)]
    assert len(matches) == 1
