"""A ``tf.data`` pipeline of random 3D patches from an HDF5 store, channels-last.

Example:
    >>> ds = h5_patch_dataset("brats.h5", patch_size=(64, 64, 64), batch_size=2,
    ...                       samples_per_epoch=32)  # doctest: +SKIP
    >>> image, target = next(iter(ds))  # doctest: +SKIP
    >>> image.shape, target.shape  # doctest: +SKIP
    (TensorShape([2, 64, 64, 64, 4]), TensorShape([2, 64, 64, 64]))
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from mednets.data.h5store import H5Volumes, RandomPatches

__all__ = ["h5_patch_dataset"]


def h5_patch_dataset(
    store: H5Volumes | str | os.PathLike,
    patch_size: Sequence[int] = (64, 64, 64),
    batch_size: int = 2,
    samples_per_epoch: int | None = None,
    foreground_fraction: float = 0.5,
    normalise: bool = True,
    augment: bool = False,
    target: str = "classes",
    ids: Sequence[str] | None = None,
    seed: int = 0,
    epoch: int = 0,
    prefetch: int = 2,
    depth_first: bool = False,
) -> tf.data.Dataset:
    """Build a ``tf.data.Dataset`` of ``(image, target)`` batches, channels-last.

    Items come from :class:`mednets.data.h5store.RandomPatches` (the same sampler as the
    PyTorch loader), so item ``i`` of epoch ``epoch`` is identical in both frameworks
    up to the channel axis. HDF5 reads happen in Python (``tf.numpy_function``); h5py
    holds a global lock, so parallel calls would not read faster.

    Args:
        store: An :class:`~mednets.data.H5Volumes` or a path to one.
        patch_size: ``(X, Y, Z)`` in the store's layout. Defaults to ``(64, 64, 64)``.
        batch_size: Patches per batch. Defaults to 2.
        samples_per_epoch: Patches per pass over the dataset. Defaults to None (one
            per subject).
        foreground_fraction: Share of patches centred on a labelled voxel. Defaults to 0.5.
        normalise: Z-score with the stored brain statistics. Defaults to True.
        augment: Random flips and quarter turns. Defaults to False.
        target: ``"classes"`` gives int32 ``(B, X, Y, Z)``: tumour classes 0..3
            mapped from the store's label convention, or a plain store's labels as
            they are; ``"regions"`` gives float32 ``(B, X, Y, Z, 3)`` WT/TC/ET.
            Defaults to ``"classes"``.
        ids: Subset of subject ids. Defaults to None (all).
        seed: Base seed. Defaults to 0.
        epoch: Which epoch's patches to draw; build one dataset per epoch, or use
            ``.repeat()`` to replay the same patches. Defaults to 0.
        prefetch: Batches prefetched. Defaults to 2.
        depth_first: Give ``(B, Z, X, Y, C)`` batches, slice axis first, for networks
            with ``(t, s, s)`` kernels or anisotropic levels. Defaults to False.

    Returns:
        A ``tf.data.Dataset`` of ``(image float32 (B, X, Y, Z, C), target)``; with
        ``depth_first``, ``(B, Z, X, Y, C)``.
    """
    patches = RandomPatches(
        store,
        patch_size,
        samples_per_epoch,
        foreground_fraction,
        normalise,
        augment,
        target,
        ids,
        seed,
        depth_first=depth_first,
    )
    channels = len(patches.store.modalities)
    size = patches.output_size

    def load(index):
        image, label = patches.get(int(index), epoch=epoch)
        image = np.moveaxis(image, 0, -1)  # (C, X, Y, Z) -> (X, Y, Z, C)
        if target == "regions":
            return image, np.ascontiguousarray(np.moveaxis(label, 0, -1))
        return image, label.astype(np.int32)

    target_dtype = tf.float32 if target == "regions" else tf.int32
    target_shape = size + (3,) if target == "regions" else size

    def tf_load(index):
        image, label = tf.numpy_function(load, [index], (tf.float32, target_dtype))
        image.set_shape(size + (channels,))
        label.set_shape(target_shape)
        return image, label

    ds = tf.data.Dataset.range(len(patches)).map(tf_load, num_parallel_calls=1, deterministic=True)
    return ds.batch(batch_size).prefetch(prefetch)
