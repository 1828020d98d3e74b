"""Tests for mednets.torch.data: the PyTorch Dataset over the HDF5 store."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mednets.data import RandomPatches, convert_to_h5, make_phantom
from mednets.torch.data import H5PatchDataset


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("loaders") / "p.h5"
    items = [(f"s{i}", *make_phantom((24, 24, 20), seed=i)) for i in range(2)]
    convert_to_h5(items, path, chunks=(12, 12, 12), progress=False)
    return path


def test_torch_dataset_and_workers(store_path):
    ds = H5PatchDataset(store_path, patch_size=(16, 16, 12), samples_per_epoch=6, augment=True, seed=3)
    image, target = ds[0]
    assert image.shape == (4, 16, 16, 12) and image.dtype == torch.float32
    assert target.shape == (16, 16, 12) and target.dtype == torch.int64
    serial = torch.stack([ds[i][0] for i in range(6)])
    batches = list(DataLoader(ds, batch_size=3, num_workers=2))
    assert [tuple(b[0].shape) for b in batches] == [(3, 4, 16, 16, 12)] * 2
    # Two worker processes, each with its own HDF5 handle, give the same items.
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), serial)
    regions = H5PatchDataset(store_path, (8, 8, 8), samples_per_epoch=2, target="regions")
    assert regions[1][1].shape == (3, 8, 8, 8)


def test_depth_first_items(store_path):
    plain = RandomPatches(store_path, (16, 14, 12), samples_per_epoch=2, seed=5)
    ds = H5PatchDataset(store_path, (16, 14, 12), samples_per_epoch=2, seed=5, depth_first=True)
    image, target = ds[1]
    assert tuple(image.shape) == (4, 12, 16, 14) and tuple(target.shape) == (12, 16, 14)
    ref_image, ref_target = plain[1]
    np.testing.assert_array_equal(image.numpy(), np.moveaxis(ref_image, -1, 1))
    np.testing.assert_array_equal(target.numpy(), np.moveaxis(ref_target, -1, 0))


def test_one_channel_plain_store(tmp_path):
    label = np.zeros((10, 10, 8), np.uint8)
    label[2:5, 2:8, 2:6], label[5:8, 2:8, 2:6] = 1, 2
    items = [(f"h{i}", np.random.default_rng(i).random((1, 10, 10, 8)) + 1, label) for i in range(2)]
    path = tmp_path / "h.h5"
    convert_to_h5(items, path, modalities=("MRI",), label_convention="plain", progress=False)
    ds = H5PatchDataset(path, (10, 10, 8))
    (image, target), *_ = DataLoader(ds, batch_size=2)
    assert tuple(image.shape) == (2, 1, 10, 10, 8) and target.dtype == torch.int64
    np.testing.assert_array_equal(target[0].numpy(), label)
