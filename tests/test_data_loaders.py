"""Tests for the framework loaders: a PyTorch Dataset and a tf.data pipeline, same patches."""

import subprocess
import sys

import numpy as np
import pytest

from mednets.data import convert_to_h5, make_phantom


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("loaders") / "p.h5"
    items = [(f"s{i}", *make_phantom((24, 24, 20), seed=i)) for i in range(2)]
    convert_to_h5(items, path, chunks=(12, 12, 12), progress=False)
    return path


def test_mednets_data_imports_no_framework():
    code = (
        "import sys, mednets, mednets.data, mednets.metrics, mednets.data.convert\n"
        "bad = [m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_torch_dataset_and_workers(store_path):
    import torch
    from torch.utils.data import DataLoader

    from mednets.torch.data import H5PatchDataset

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


def test_tf_dataset_channels_last_matches_torch(store_path):
    from mednets.keras.data import h5_patch_dataset
    from mednets.torch.data import H5PatchDataset

    ds = h5_patch_dataset(store_path, patch_size=(16, 16, 12), batch_size=2, samples_per_epoch=5, seed=3)
    batches = list(ds)
    assert [tuple(b[0].shape) for b in batches] == [
        (2, 16, 16, 12, 4),
        (2, 16, 16, 12, 4),
        (1, 16, 16, 12, 4),
    ]
    assert batches[0][1].shape == (2, 16, 16, 12) and batches[0][1].dtype.name == "int32"
    assert tuple(ds.element_spec[0].shape) == (None, 16, 16, 12, 4)
    torch_ds = H5PatchDataset(store_path, patch_size=(16, 16, 12), samples_per_epoch=5, seed=3)
    first = np.moveaxis(batches[0][0].numpy()[1], -1, 0)  # item 1, back to channels-first
    np.testing.assert_array_equal(first, torch_ds[1][0].numpy())
    np.testing.assert_array_equal(batches[0][1].numpy()[1], torch_ds[1][1].numpy())
    reg = next(
        iter(h5_patch_dataset(store_path, (8, 8, 8), batch_size=1, samples_per_epoch=1, target="regions"))
    )
    assert tuple(reg[1].shape) == (1, 8, 8, 8, 3)
