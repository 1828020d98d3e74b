"""Tests for mednets.keras.data: the tf.data pipeline over the HDF5 store."""

import numpy as np
import pytest

from mednets.data import RandomPatches, convert_to_h5, make_phantom
from mednets.keras.data import h5_patch_dataset


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("loaders") / "p.h5"
    items = [(f"s{i}", *make_phantom((24, 24, 20), seed=i)) for i in range(2)]
    convert_to_h5(items, path, chunks=(12, 12, 12), progress=False)
    return path


def test_tf_dataset_channels_last_matches_the_sampler(store_path):
    ds = h5_patch_dataset(store_path, patch_size=(16, 16, 12), batch_size=2, samples_per_epoch=5, seed=3)
    batches = list(ds)
    assert [tuple(b[0].shape) for b in batches] == [
        (2, 16, 16, 12, 4),
        (2, 16, 16, 12, 4),
        (1, 16, 16, 12, 4),
    ]
    assert batches[0][1].shape == (2, 16, 16, 12) and batches[0][1].dtype.name == "int32"
    assert tuple(ds.element_spec[0].shape) == (None, 16, 16, 12, 4)
    # The same items as the framework-free sampler (and so as the PyTorch loader).
    patches = RandomPatches(store_path, patch_size=(16, 16, 12), samples_per_epoch=5, seed=3)
    first = np.moveaxis(batches[0][0].numpy()[1], -1, 0)  # item 1, back to channels-first
    np.testing.assert_array_equal(first, patches[1][0])
    np.testing.assert_array_equal(batches[0][1].numpy()[1], patches[1][1])
    reg = next(
        iter(h5_patch_dataset(store_path, (8, 8, 8), batch_size=1, samples_per_epoch=1, target="regions"))
    )
    assert tuple(reg[1].shape) == (1, 8, 8, 8, 3)


def test_depth_first_and_one_channel_plain_store(store_path, tmp_path):
    ds = h5_patch_dataset(store_path, (16, 14, 12), batch_size=1, samples_per_epoch=1, depth_first=True)
    image, target = next(iter(ds))
    assert tuple(image.shape) == (1, 12, 16, 14, 4) and tuple(target.shape) == (1, 12, 16, 14)
    label = np.zeros((10, 10, 8), np.uint8)
    label[2:5, 2:8, 2:6], label[5:8, 2:8, 2:6] = 1, 2
    items = [(f"h{i}", np.random.default_rng(i).random((1, 10, 10, 8)) + 1, label) for i in range(2)]
    path = tmp_path / "h.h5"
    convert_to_h5(items, path, modalities=("MRI",), label_convention="plain", progress=False)
    image, target = next(iter(h5_patch_dataset(path, (10, 10, 8), batch_size=2)))
    assert tuple(image.shape) == (2, 10, 10, 8, 1)
    np.testing.assert_array_equal(target.numpy()[0], label)
