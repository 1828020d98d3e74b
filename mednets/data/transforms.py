"""Intensity normalisation and joint spatial augmentation of image and label.

MRI intensities have no physical unit: the same tissue can read 300 in one scan and 900
in the next. The usual fix for brain MRI is a per-subject, per-modality z-score computed
inside the brain only (the zeros outside it would otherwise dominate the statistics).
Spatial augmentations must move the image and its label together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "brain_mask",
    "channel_stats",
    "zscore_normalise",
    "flip",
    "rot90",
    "random_flip_rot90",
    "depth_first",
    "depth_last",
]


def _real_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype.kind not in "biuf":
        raise ValueError(f"image must hold real numbers (any int or float dtype), got dtype {image.dtype}")
    return image


def brain_mask(image: ArrayLike) -> np.ndarray:
    """Voxels where any channel is non-zero: the brain of a skull-stripped ``(C, X, Y, Z)`` image."""
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must have shape (C, X, Y, Z), got shape {image.shape}")
    return np.any(image != 0, axis=0)


def channel_stats(image: ArrayLike, mask: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation inside ``mask``.

    Args:
        image: ``(C, X, Y, Z)``.
        mask: Boolean ``(X, Y, Z)``. Defaults to None (:func:`brain_mask`).

    Returns:
        ``(mean, std)``, two float64 arrays of length C.
    """
    image = _real_image(image)
    mask = brain_mask(image) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} must equal the image's spatial shape {image.shape[1:]}")
    n = int(mask.sum())
    if n == 0:
        raise ValueError("the mask is empty: no voxel to compute statistics from")
    values = image[:, mask].astype(np.float64)  # (C, n)
    return values.mean(axis=1), values.std(axis=1)


def zscore_normalise(
    image: ArrayLike,
    mask: ArrayLike | None = None,
    mean: ArrayLike | None = None,
    std: ArrayLike | None = None,
    eps: float = 1e-8,
) -> np.ndarray:
    """Z-score each channel inside the brain: ``(x - mean) / std``, 0 outside.

    This is the book's one brain z-score: :mod:`mednets.data.slices`,
    :mod:`mednets.data.synthetic` and the HDF5 sampler all call it.

    Args:
        image: ``(C, X, Y, Z)``, any real dtype (float64, int16 and uint8 MRI are
            common); statistics are computed in float64.
        mask: Boolean ``(X, Y, Z)`` region for the statistics and the output.
            Defaults to None (:func:`brain_mask`).
        mean: Per-channel means to use instead of computing them (e.g. whole-volume
            statistics stored in an HDF5 file, applied to a patch). Defaults to None.
        std: Per-channel standard deviations, with ``mean``. Defaults to None.
        eps: Added to ``std``. Defaults to 1e-8.

    Returns:
        float32 array of the image's shape; inside the mask each channel has mean 0 and
        standard deviation 1 (when computed from this image).

    Example:
        >>> x = np.zeros((1, 4, 4, 4), np.float32); x[0, 1:3, 1:3, 1:3] = [[[1, 3]] * 2] * 2
        >>> y = zscore_normalise(x); float(y[0][x[0] > 0].mean()), float(y[0][x[0] > 0].std())
        (0.0, 1.0)

    Raises:
        ValueError: If ``image`` is not ``(C, X, Y, Z)`` of real numbers, the mask is
            empty or of another shape, or ``mean``/``std`` lack one entry per channel.
    """
    image = _real_image(image)
    mask = brain_mask(image) if mask is None else np.asarray(mask, dtype=bool)
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std, or neither")
    if mean is None:
        mean, std = channel_stats(image, mask)
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    if mean.shape != (image.shape[0],) or std.shape != (image.shape[0],):
        raise ValueError(
            f"mean and std must have {image.shape[0]} entries (one per channel), "
            f"got {mean.shape} and {std.shape}"
        )
    if mask.shape != image.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} must equal the image's spatial shape {image.shape[1:]}")
    out = (image - mean[:, None, None, None].astype(np.float32)) / (std[:, None, None, None] + eps).astype(
        np.float32
    )
    out[:, ~mask] = 0.0
    return out.astype(np.float32, copy=False)


def _check_pair(image, label):
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must have shape (C, X, Y, Z), got shape {image.shape}")
    if label is not None and np.shape(label) != image.shape[1:]:
        raise ValueError(
            f"label shape {np.shape(label)} must equal the image's spatial shape {image.shape[1:]}"
        )
    return image


def flip(
    image: ArrayLike, label: ArrayLike | None = None, axes: Sequence[int] = (0,)
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mirror image ``(C, X, Y, Z)`` and label ``(X, Y, Z)`` along spatial ``axes`` (0, 1, 2).

    Returns contiguous copies ``(image, label)`` (PyTorch cannot wrap negative strides).
    """
    image = _check_pair(image, label)
    axes = tuple(int(a) for a in axes)
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"spatial axes must be in (0, 1, 2), got {axes}")
    image = np.ascontiguousarray(np.flip(image, axis=tuple(a + 1 for a in axes)))
    if label is not None:
        label = np.ascontiguousarray(np.flip(label, axis=axes))
    return image, label


def rot90(
    image: ArrayLike, label: ArrayLike | None = None, k: int = 1, axes: Sequence[int] = (0, 1)
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rotate image and label by ``k`` quarter turns in the plane of two spatial axes.

    An odd ``k`` swaps the sizes of the two axes. Returns contiguous copies.
    """
    image = _check_pair(image, label)
    axes = tuple(int(a) for a in axes)
    if len(axes) != 2 or axes[0] == axes[1] or any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"axes must be two different spatial axes in (0, 1, 2), got {axes}")
    image = np.ascontiguousarray(np.rot90(image, k, axes=(axes[0] + 1, axes[1] + 1)))
    if label is not None:
        label = np.ascontiguousarray(np.rot90(label, k, axes=axes))
    return image, label


def random_flip_rot90(
    image: ArrayLike,
    label: ArrayLike | None = None,
    rng: np.random.Generator | int | None = None,
    flip_axes: Sequence[int] = (0, 1, 2),
    rot_axes: Sequence[int] | None = (0, 1),
) -> tuple[np.ndarray, np.ndarray | None]:
    """Random flips (each axis with probability 1/2) and a random quarter-turn rotation.

    The same transform moves the image and the label. A rotation is drawn only when
    the two ``rot_axes`` have the same size, so the output shape always equals the input
    shape (set ``rot_axes=None`` to disable rotations).

    Args:
        image: ``(C, X, Y, Z)``.
        label: ``(X, Y, Z)`` or None. Defaults to None.
        rng: Generator or seed. Defaults to None.
        flip_axes: Spatial axes that may be mirrored. Defaults to all three.
        rot_axes: The rotation plane. Defaults to ``(0, 1)`` (axial for RAS volumes).

    Returns:
        ``(image, label)`` as contiguous arrays.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    image = _check_pair(image, label)
    axes = [a for a in flip_axes if rng.random() < 0.5]
    if axes:
        image, label = flip(image, label, axes)
    if rot_axes is not None and image.shape[rot_axes[0] + 1] == image.shape[rot_axes[1] + 1]:
        k = int(rng.integers(4))
        if k:
            image, label = rot90(image, label, k, rot_axes)
    return np.ascontiguousarray(image), None if label is None else np.ascontiguousarray(label)


def _depth_axes(x, name: str) -> tuple[int, int]:
    """The (slice, first spatial) axes of an image ``(C, ...)`` or a label map."""
    ndim = np.ndim(x)
    if ndim not in (3, 4):
        raise ValueError(
            f"{name} takes an image (C, X, Y, Z) or a label map (X, Y, Z), got shape {np.shape(x)} "
            f"(rank {ndim}); for a batch, apply it per sample or move the axes yourself"
        )
    return ndim - 3, ndim - 1


def depth_first(x: ArrayLike) -> np.ndarray:
    """Move the slice axis z to the first spatial axis: ``(C, X, Y, Z) -> (C, Z, X, Y)``.

    A :mod:`mednets.data` volume is ``(C, X, Y, Z)`` in RAS, with the slice axis z
    last. Networks whose kernels treat one axis specially (I3D / ResNet3d's
    ``(t, s, s)`` kernels, ResNet34-UNet's anisotropic levels) take the slice axis
    as the *first* spatial axis, as mmaction2 and I3D checkpoints do (``t`` = z).
    Isotropic networks do not care. :func:`depth_last` undoes this.

    Args:
        x: An image ``(C, X, Y, Z)`` or a label map ``(X, Y, Z)``, any dtype.

    Returns:
        A contiguous array ``(C, Z, X, Y)`` or ``(Z, X, Y)``, same dtype.

    Raises:
        ValueError: If ``x`` has rank other than 3 or 4.

    Example:
        >>> depth_first(np.zeros((4, 240, 240, 155))).shape
        (4, 155, 240, 240)
        >>> depth_first(np.zeros((240, 240, 155), np.uint8)).shape
        (155, 240, 240)
    """
    first, last = _depth_axes(x, "depth_first")
    return np.ascontiguousarray(np.moveaxis(np.asarray(x), last, first))


def depth_last(x: ArrayLike) -> np.ndarray:
    """Undo :func:`depth_first`: ``(C, Z, X, Y) -> (C, X, Y, Z)`` (labels ``(Z, X, Y) -> (X, Y, Z)``).

    Use it on a network's output (logits ``(C, Z, X, Y)``, a label map ``(Z, X, Y)``)
    to come back to the :mod:`mednets.data` layout, e.g. to save it as NIfTI.

    Args:
        x: An image ``(C, Z, X, Y)`` or a label map ``(Z, X, Y)``, any dtype.

    Returns:
        A contiguous array ``(C, X, Y, Z)`` or ``(X, Y, Z)``, same dtype.

    Raises:
        ValueError: If ``x`` has rank other than 3 or 4.

    Example:
        >>> x = np.random.default_rng(0).random((2, 5, 6, 7))
        >>> depth_last(depth_first(x)).shape, bool((depth_last(depth_first(x)) == x).all())
        ((2, 5, 6, 7), True)
    """
    first, last = _depth_axes(x, "depth_last")
    return np.ascontiguousarray(np.moveaxis(np.asarray(x), first, last))
