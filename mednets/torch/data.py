"""PyTorch ``Dataset`` of random 3D patches read from an HDF5 store.

Example:
    >>> from torch.utils.data import DataLoader
    >>> ds = H5PatchDataset("brats.h5", patch_size=(64, 64, 64), samples_per_epoch=32)  # doctest: +SKIP
    >>> image, target = next(iter(DataLoader(ds, batch_size=2, num_workers=2)))  # doctest: +SKIP
    >>> image.shape, target.shape  # doctest: +SKIP
    (torch.Size([2, 4, 64, 64, 64]), torch.Size([2, 64, 64, 64]))
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from mednets.data.h5store import H5Volumes, RandomPatches

__all__ = ["H5PatchDataset", "worker_init_fn"]


class H5PatchDataset(Dataset):
    """Random patches ``(C, X, Y, Z)`` (channels-first) from an :class:`~mednets.data.H5Volumes`.

    A thin wrapper around :class:`mednets.data.h5store.RandomPatches`: item ``i`` is a
    pure function of ``(seed, epoch, i)``, so runs are reproducible with any number of
    workers. Call :meth:`set_epoch` at the start of each epoch for fresh patches. The
    store opens its HDF5 file lazily, so every ``DataLoader`` worker gets its own handle.

    Args:
        store: An :class:`~mednets.data.H5Volumes` or a path to one.
        patch_size: ``(X, Y, Z)`` in the store's layout. Defaults to ``(64, 64, 64)``.
        samples_per_epoch: Items per epoch. Defaults to None (one per subject).
        foreground_fraction: Share of patches centred on a labelled voxel. Defaults to 0.5.
        normalise: Z-score with the stored brain statistics. Defaults to True.
        augment: Random flips and quarter turns. Defaults to False.
        target: ``"classes"`` (int64 ``(X, Y, Z)``: tumour classes 0..3 mapped from
            the store's label convention, or a plain store's labels as they are) or
            ``"regions"`` (float32 ``(3, X, Y, Z)``, WT/TC/ET). Defaults to
            ``"classes"``.
        ids: Subset of subject ids. Defaults to None (all).
        seed: Base seed. Defaults to 0.
        depth_first: Give ``(C, Z, X, Y)`` items, slice axis first, for networks
            with ``(t, s, s)`` kernels or anisotropic levels. Defaults to False.

    Shapes:
        ``dataset[i]`` -> ``(image float32 (C, X, Y, Z), target)``; with
        ``depth_first``, ``(C, Z, X, Y)``.
    """

    def __init__(
        self,
        store: H5Volumes | str | os.PathLike,
        patch_size: Sequence[int] = (64, 64, 64),
        samples_per_epoch: int | None = None,
        foreground_fraction: float = 0.5,
        normalise: bool = True,
        augment: bool = False,
        target: str = "classes",
        ids: Sequence[str] | None = None,
        seed: int = 0,
        depth_first: bool = False,
    ) -> None:
        self.patches = RandomPatches(
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

    def __len__(self):
        return len(self.patches)

    def set_epoch(self, epoch: int) -> None:
        """Select the patches of ``epoch`` (call before iterating)."""
        self.patches.set_epoch(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.patches.get(index)
        return torch.from_numpy(image), torch.from_numpy(target)


def worker_init_fn(worker_id: int) -> None:
    """Optional ``DataLoader(worker_init_fn=...)``: limit each worker to one thread."""
    torch.set_num_threads(1)
