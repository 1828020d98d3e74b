"""Cropping, padding and patch sampling for 3D volumes.

Every function works on the *last three* axes, so the same call crops an image
``(C, X, Y, Z)`` and its label ``(X, Y, Z)``. Shapes that cannot be satisfied raise a
``ValueError`` naming them; nothing is silently clipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "foreground_bbox",
    "crop_patch",
    "paste_patch",
    "crop_or_pad",
    "random_crop",
    "sample_patch_start",
    "as_triple",
    "check_patch_inside",
]


def as_triple(name: str, value: Sequence[int]) -> tuple[int, int, int]:
    """``value`` as three ints ``(X, Y, Z)``, or a ``ValueError`` naming ``name``.

    Example:
        >>> as_triple("size", [4, 5.0, 6])
        (4, 5, 6)
    """
    try:
        value = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of 3 ints, got {value!r}") from None
    if len(value) != 3:
        raise ValueError(f"{name} must have 3 entries (X, Y, Z), got {len(value)}: {value}")
    return value


def _spatial_shape(array):
    if array.ndim < 3:
        raise ValueError(
            f"expected an array with at least 3 dimensions (..., X, Y, Z), got shape {array.shape}"
        )
    return tuple(array.shape[-3:])


def foreground_bbox(
    mask: ArrayLike, margin: int | Sequence[int] = 0
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The bounding box of the non-zero voxels, grown by ``margin`` and clipped.

    Args:
        mask: Array ``(X, Y, Z)``; for an image ``(C, X, Y, Z)`` pass
            ``image.any(axis=0)`` (BraTS images are exactly 0 outside the brain).
        margin: Voxels added on each side (clipped at the border). Defaults to 0.

    Returns:
        ``(start, stop)``: two tuples of 3 ints, so that
        ``mask[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]`` holds every
        non-zero voxel.

    Raises:
        ValueError: If the mask has no non-zero voxel or is not 3D.

    Example:
        >>> m = np.zeros((5, 6, 7)); m[1, 2:4, 3] = 1
        >>> foreground_bbox(m)
        ((1, 2, 3), (2, 4, 4))
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D (X, Y, Z), got shape {mask.shape}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            raise ValueError(f"mask of shape {mask.shape} has no foreground voxel")
        start.append(max(int(hits[0]) - margin, 0))
        stop.append(min(int(hits[-1]) + 1 + margin, mask.shape[axis]))
    return tuple(start), tuple(stop)


def check_patch_inside(start: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> None:
    """Raise a ``ValueError`` unless the patch ``start:start + size`` lies inside ``shape``."""
    for axis, (s, n, dim) in enumerate(zip(start, size, shape)):
        if n < 1:
            raise ValueError(f"patch size must be >= 1 on every axis, got size {size}")
        if s < 0 or s + n > dim:
            raise ValueError(
                f"patch start {start} with size {size} does not fit in volume of shape {shape} "
                f"(axis {axis}: needs 0 <= start and start + size <= {dim}, got {s} + {n})"
            )


def crop_patch(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Cut the patch ``array[..., start:start + size]`` (last three axes); a view.

    Raises:
        ValueError: If the patch does not lie inside the array.

    Example:
        >>> crop_patch(np.zeros((2, 10, 10, 10)), (1, 2, 3), (4, 4, 4)).shape
        (2, 4, 4, 4)
    """
    array = np.asarray(array)
    shape = _spatial_shape(array)
    start, size = as_triple("start", start), as_triple("size", size)
    check_patch_inside(start, size, shape)
    return array[(...,) + tuple(slice(s, s + n) for s, n in zip(start, size))]


def paste_patch(volume: np.ndarray, patch: ArrayLike, start: Sequence[int]) -> np.ndarray:
    """Write ``patch`` into ``volume`` at ``start`` (in place), the inverse of :func:`crop_patch`.

    Args:
        volume: Destination array ``(..., X, Y, Z)``; modified in place.
        patch: Array ``(..., x, y, z)`` whose leading axes match the volume's.
        start: Corner of the patch in the volume.

    Returns:
        ``volume``.

    Raises:
        ValueError: If the patch does not fit at ``start`` or leading axes differ.

    Example:
        >>> v = np.zeros((4, 4, 4)); float(paste_patch(v, np.ones((2, 2, 2)), (1, 1, 1)).sum())
        8.0
    """
    patch = np.asarray(patch)
    shape = _spatial_shape(volume)
    if patch.shape[:-3] != volume.shape[:-3]:
        raise ValueError(
            f"patch leading axes {patch.shape[:-3]} must match the volume's {volume.shape[:-3]} "
            f"(patch shape {patch.shape}, volume shape {volume.shape})"
        )
    start = as_triple("start", start)
    size = _spatial_shape(patch)
    check_patch_inside(start, size, shape)
    volume[(...,) + tuple(slice(s, s + n) for s, n in zip(start, size))] = patch
    return volume


def crop_or_pad(array: ArrayLike, shape: Sequence[int], pad_value: float = 0) -> np.ndarray:
    """Centre-crop or pad the last three axes to ``shape``.

    Along each axis the array is cropped (if larger) or padded with ``pad_value`` (if
    smaller) symmetrically; an odd difference puts the extra voxel at the end. Cropping
    then padding back to the original shape restores the centre exactly.

    Args:
        array: ``(..., X, Y, Z)``.
        shape: Target ``(X', Y', Z')``, each >= 1.
        pad_value: Fill value. Defaults to 0.

    Returns:
        A new array of shape ``array.shape[:-3] + shape``.

    Example:
        >>> crop_or_pad(np.ones((2, 5, 4, 3)), (3, 6, 3)).shape
        (2, 3, 6, 3)
    """
    array = np.asarray(array)
    in_shape = _spatial_shape(array)
    shape = as_triple("shape", shape)
    if min(shape) < 1:
        raise ValueError(f"target shape must be >= 1 on every axis, got {shape}")
    out = np.full(array.shape[:-3] + shape, pad_value, dtype=array.dtype)
    src, dst = [], []
    for n_in, n_out in zip(in_shape, shape):
        if n_in >= n_out:
            a = (n_in - n_out) // 2
            src.append(slice(a, a + n_out))
            dst.append(slice(0, n_out))
        else:
            a = (n_out - n_in) // 2
            src.append(slice(0, n_in))
            dst.append(slice(a, a + n_in))
    out[(...,) + tuple(dst)] = array[(...,) + tuple(src)]
    return out


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def sample_patch_start(
    shape: Sequence[int],
    size: Sequence[int],
    rng: np.random.Generator | int | None = None,
    foreground: ArrayLike | None = None,
    foreground_fraction: float = 0.5,
) -> tuple[int, int, int]:
    """Pick the corner of a random patch that lies inside the volume.

    With probability ``foreground_fraction`` (and when ``foreground`` has points) the
    patch is centred on a randomly chosen foreground voxel, shifted as little as needed
    to stay inside the volume; otherwise its corner is uniform over all valid corners.
    Tumours fill about 1.5% of a BraTS volume, so uniform patches alone would rarely
    show one (nnU-Net forces a third of its patches onto foreground).

    Args:
        shape: Volume shape ``(X, Y, Z)``.
        size: Patch size ``(x, y, z)``, each between 1 and the volume's size.
        rng: A ``np.random.Generator`` or seed. Defaults to None (fresh entropy).
        foreground: Foreground voxel coordinates, an int array ``(N, 3)``, or a
            label array of shape ``shape`` (its non-zero voxels are used). Defaults to
            None (uniform only).
        foreground_fraction: Probability of a foreground-centred patch, in [0, 1].
            Defaults to 0.5.

    Returns:
        The corner ``start`` as a tuple of 3 ints, with ``0 <= start`` and
        ``start + size <= shape``.

    Raises:
        ValueError: If the patch is larger than the volume.
    """
    shape, size = as_triple("shape", shape), as_triple("size", size)
    if any(n < 1 for n in size) or any(n > d for n, d in zip(size, shape)):
        raise ValueError(f"patch size {size} must be between 1 and the volume shape {shape} on every axis")
    if not 0.0 <= foreground_fraction <= 1.0:
        raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
    rng = _rng(rng)
    high = np.array(shape) - np.array(size)  # largest valid corner, inclusive
    if foreground is not None:
        foreground = np.asarray(foreground)
        if foreground.shape == shape:
            foreground = np.argwhere(foreground)
        elif foreground.ndim != 2 or foreground.shape[1] != 3:
            raise ValueError(
                f"foreground must be coordinates (N, 3) or a mask of shape {shape}, "
                f"got shape {foreground.shape}"
            )
    if foreground is not None and len(foreground) > 0 and rng.random() < foreground_fraction:
        centre = foreground[rng.integers(len(foreground))]
        start = np.clip(centre - np.array(size) // 2, 0, high)
    else:
        start = np.array([rng.integers(0, h + 1) for h in high])
    return tuple(int(s) for s in start)


def random_crop(
    image: ArrayLike,
    label: ArrayLike | None = None,
    size: Sequence[int] = (64, 64, 64),
    rng: np.random.Generator | int | None = None,
    foreground_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int, int]]:
    """Crop the same random patch from an image and (optionally) its label.

    Args:
        image: ``(C, X, Y, Z)`` or ``(X, Y, Z)``.
        label: ``(X, Y, Z)`` or None. Defaults to None.
        size: Patch size. Defaults to ``(64, 64, 64)``.
        rng: Generator or seed. Defaults to None.
        foreground_fraction: Probability of centring on a labelled voxel (needs
            ``label``). Defaults to 0.0 (uniform).

    Returns:
        ``(image_patch, label_patch, start)``; ``label_patch`` is None without a label.
        The patches are copies.
    """
    image = np.asarray(image)
    shape = _spatial_shape(image)
    if label is not None and np.shape(label)[-3:] != shape:
        raise ValueError(f"label shape {np.shape(label)} must match the image's spatial shape {shape}")
    start = sample_patch_start(shape, size, rng, foreground=label, foreground_fraction=foreground_fraction)
    image_patch = crop_patch(image, start, size).copy()
    label_patch = None if label is None else crop_patch(label, start, size).copy()
    return image_patch, label_patch, start
