"""2D axial slices of synthetic phantoms for whole-tumour segmentation.

The 2D chapters (UNet 3+, ResNet34-UNet) train on CPU in seconds on axial slices cut
from the 3D phantoms of :mod:`mednets.data.phantoms`. The task is *whole tumour*
(every label > 0) against everything else. A realistic share of slices shows brain but
no tumour, as in real scans, so that a model must learn to predict an empty mask.

Arrays are channels-last, ready for Keras: ``x`` is ``(N, H, W, 4)`` float32 with
channels ``(flair, t1, t1ce, t2)``, ``y`` is ``(N, H, W, 1)`` float32 in {0, 1}.
For PyTorch, move the last axis to the front (``np.moveaxis(x, -1, 1)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mednets.data.phantoms import make_phantom_dataset
from mednets.data.transforms import zscore_normalise

__all__ = ["phantom_slices"]


def phantom_slices(
    n_subjects: int,
    shape: Sequence[int] = (64, 64, 64),
    slices_per_subject: int = 8,
    empty_fraction: float = 0.25,
    seed: int = 0,
    min_tumour_pixels: int = 20,
    min_brain_fraction: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Axial slices of phantom subjects, with whole-tumour masks.

    Each subject (all with a tumour, from :func:`make_phantom_dataset`) is z-scored
    per channel over its brain, then ``slices_per_subject`` axial slices (fixed last
    axis Z) are drawn at random without replacement: ``round(slices_per_subject *
    empty_fraction)`` of them among the slices that show brain but no tumour, the rest
    among the slices with at least ``min_tumour_pixels`` tumour pixels.

    Args:
        n_subjects: Number of 3D subjects, >= 1.
        shape: Phantom size ``(X, Y, Z)``; slices are ``X x Y``. Defaults to
            ``(64, 64, 64)``.
        slices_per_subject: Slices drawn per subject, >= 1. Defaults to 8.
        empty_fraction: Fraction of each subject's slices without tumour, in [0, 1].
            Defaults to 0.25.
        seed: Integer seed (subjects and slice choice). Defaults to 0.
        min_tumour_pixels: A tumour slice has at least this many tumour pixels.
            Defaults to 20.
        min_brain_fraction: A tumour-free slice shows brain in at least this fraction
            of its pixels. Defaults to 0.1.

    Returns:
        ``(x, y)``: ``x`` float32 ``(N, X, Y, 4)``, ``y`` float32 ``(N, X, Y, 1)`` in
        {0, 1}, with ``N = n_subjects * slices_per_subject``; slices of one subject are
        consecutive, in increasing Z.

    Example:
        >>> x, y = phantom_slices(2, shape=(32, 32, 32), slices_per_subject=4, empty_fraction=0.5)
        >>> x.shape, y.shape, int((y.reshape(8, -1).max(1) == 0).sum())
        ((8, 32, 32, 4), (8, 32, 32, 1), 4)
    """
    if int(slices_per_subject) != slices_per_subject or slices_per_subject < 1:
        raise ValueError(f"slices_per_subject must be a positive integer, got {slices_per_subject!r}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"empty_fraction must be in [0, 1], got {empty_fraction}")
    slices_per_subject = int(slices_per_subject)
    n_empty = int(round(slices_per_subject * empty_fraction))
    n_tumour = slices_per_subject - n_empty
    images, labels = make_phantom_dataset(n_subjects, shape=shape, seed=seed, empty_fraction=0.0)
    rng = np.random.default_rng([seed, 7919])
    xs, ys = [], []
    for i in range(len(images)):
        image = zscore_normalise(images[i])  # (4, X, Y, Z)
        tumour = labels[i] > 0  # (X, Y, Z)
        brain = np.any(images[i] != 0, axis=0)
        tumour_px = tumour.sum(axis=(0, 1))  # per Z
        brain_frac = brain.mean(axis=(0, 1))
        with_tumour = np.flatnonzero(tumour_px >= min_tumour_pixels)
        without = np.flatnonzero((tumour_px == 0) & (brain_frac >= min_brain_fraction))
        if len(with_tumour) < n_tumour or len(without) < n_empty:
            raise ValueError(
                f"subject {i} has {len(with_tumour)} tumour slices and {len(without)} "
                f"tumour-free brain slices, but {n_tumour} and {n_empty} were requested; "
                "lower slices_per_subject or use a larger shape"
            )
        zs = np.sort(
            np.concatenate(
                [
                    rng.choice(with_tumour, n_tumour, replace=False),
                    rng.choice(without, n_empty, replace=False),
                ]
            )
        )
        xs.append(np.moveaxis(image[..., zs], (0, 3), (3, 0)))  # (4,X,Y,k) -> (k,X,Y,4)
        ys.append(np.moveaxis(tumour[..., zs], -1, 0)[..., None])  # (k, X, Y, 1)
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys).astype(np.float32)
    return x, y
