"""Small classification data sets for Chapter 1 (NumPy only, no framework imports).

* :func:`make_elongation_dataset`: synthetic volumes where the class is decided by the
  extent along z, so that no single axial slice can tell the classes apart.
* :func:`patch_dataset`: tumour versus healthy-tissue patches cut from one labelled
  volume, with train and test patches from disjoint z ranges.

Arrays follow the book's data convention: channels first, axes (C, X, Y, Z), z last
(axial slices are ``volume[..., k]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from mednets.data.transforms import zscore_normalise

__all__ = ["make_elongation_dataset", "middle_axial_slice", "patch_dataset"]

CLASS_NAMES = ("sphere", "elongated")


def make_elongation_dataset(
    n: int,
    shape: Sequence[int] = (24, 24, 24),
    seed: int = 0,
    noise: float = 0.5,
    radius: tuple[float, float] = (2.5, 5.0),
    elongation: tuple[float, float] = (1.8, 2.6),
    jitter: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Spheres against ellipsoids stretched along z, with the same axial cross-section.

    Each volume holds one bright object in Gaussian noise. Class 0 is a sphere of
    radius r; class 1 an ellipsoid with semi-axes (r, r, e*r), e > 1. Both are centred
    on the middle axial slice ``z = Z // 2`` and r is drawn from the same range for
    both classes, so that slice shows a disc of radius r either way: a 2D model that
    sees it is at chance, while a 3D model can measure the extent along z.
    The centre is jittered in x and y only.

    Args:
        n: Number of volumes (classes are balanced: n // 2 and n - n // 2).
        shape: Volume shape (X, Y, Z). Defaults to (24, 24, 24).
        seed: Seed of the NumPy generator. Defaults to 0.
        noise: Standard deviation of the additive Gaussian noise (the object has
            intensity 1). Defaults to 0.5.
        radius: Range (low, high) of the axial radius r in voxels. Defaults to (2.5, 5.0).
        elongation: Range of the z stretch factor e of class 1. Defaults to (1.8, 2.6).
        jitter: Maximum shift of the centre in x and y, in voxels. Defaults to 2.

    Returns:
        ``(volumes, labels)``: float32 (n, X, Y, Z) and int64 (n,) with 0 = sphere,
        1 = elongated.

    Example:
        >>> x, y = make_elongation_dataset(4, shape=(16, 16, 16))
        >>> x.shape, y.tolist()
        ((4, 16, 16, 16), [1, 0, 0, 1])
    """
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an int >= 2 (both classes), got {n!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be (X, Y, Z) with every size >= 8, got {shape}")
    lo, hi = float(radius[0]), float(radius[1])
    e_lo, e_hi = float(elongation[0]), float(elongation[1])
    if not 0 < lo <= hi:
        raise ValueError(f"radius must be (low, high) with 0 < low <= high, got {radius}")
    if not 1 < e_lo <= e_hi:
        raise ValueError(f"elongation must be (low, high) with 1 < low <= high, got {elongation}")
    if hi + jitter >= min(shape[0], shape[1]) / 2:
        raise ValueError(
            f"radius high + jitter ({hi} + {jitter}) must be < half the axial size "
            f"{min(shape[:2]) / 2} of shape {shape}"
        )
    rng = np.random.default_rng(seed)
    labels = np.array([0] * (n // 2) + [1] * (n - n // 2), dtype=np.int64)
    rng.shuffle(labels)
    grid = np.stack(
        np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    )  # (3, X, Y, Z)
    volumes = np.empty((n,) + shape, dtype=np.float32)
    z_half = shape[2] / 2 - 1  # the object must fit along z
    for i, label in enumerate(labels):
        r = rng.uniform(lo, hi)
        centre = np.array(
            [
                shape[0] // 2 + rng.integers(-jitter, jitter + 1),
                shape[1] // 2 + rng.integers(-jitter, jitter + 1),
                shape[2] // 2,
            ],
            dtype=np.float32,
        )
        c = min(r * rng.uniform(e_lo, e_hi), z_half) if label == 1 else r
        d = grid - centre[:, None, None, None]
        inside = (d[0] / r) ** 2 + (d[1] / r) ** 2 + (d[2] / c) ** 2 <= 1.0
        volumes[i] = inside + rng.normal(0.0, noise, size=shape)
    return volumes, labels


def middle_axial_slice(volumes: np.ndarray) -> np.ndarray:
    """The axial slice ``z = Z // 2`` of each volume: (..., X, Y, Z) -> (..., X, Y)."""
    volumes = np.asarray(volumes)
    if volumes.ndim < 3:
        raise ValueError(f"volumes must have shape (..., X, Y, Z), got {volumes.shape}")
    return volumes[..., volumes.shape[-1] // 2]


def patch_dataset(
    image: ArrayLike,
    label: ArrayLike,
    patch_size: int = 16,
    step: int = 2,
    n_per_class: int = 64,
    z_split: int | None = None,
    min_tumour: float = 0.2,
    min_brain: float = 0.7,
    seed: int = 0,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Tumour against healthy-tissue patches, with train and test from disjoint z ranges.

    A patch covers ``patch_size * step`` voxels per axis, sampled every ``step`` voxels
    (``step=2`` halves the resolution). Only patches with at least ``min_brain`` of
    their voxels inside the brain (non-zero in channel 0) are used, so that neither
    class can be recognised by the black background outside the head. A patch is
    "tumour" (1) when at least ``min_tumour`` of its voxels carry a tumour label and
    "healthy" (0) when none does. Train patches lie
    entirely below ``z_split`` and test patches entirely at or above it, so no voxel
    is shared. Channels are z-scored over the brain first.

    Args:
        image: (C, X, Y, Z) array, skull-stripped (zero outside the brain).
        label: (X, Y, Z) integer label map, 0 background.
        patch_size: Output patch size in voxels. Defaults to 16.
        step: Sampling step inside a patch. Defaults to 2.
        n_per_class: Patches per class and per split (fewer if not enough positions
            exist). Defaults to 64.
        z_split: z index that separates train (below) from test. Defaults to the
            middle of the tumour's z extent, so both sides see tumour.
        min_tumour: Minimum tumour fraction of a tumour patch. Defaults to 0.2.
        min_brain: Minimum brain fraction of every patch. Defaults to 0.7.
        seed: Seed of the NumPy generator. Defaults to 0.

    Returns:
        ``((x_train, y_train), (x_test, y_test))`` with x float32
        (N, C, patch_size, patch_size, patch_size) and y int64 (N,).
    """
    image = np.asarray(image)
    label = np.asarray(label)
    if image.ndim != 4 or label.shape != image.shape[1:]:
        raise ValueError(
            f"expected image (C, X, Y, Z) and label (X, Y, Z) of the same spatial shape, "
            f"got {image.shape} and {label.shape}"
        )
    extent = patch_size * step
    if extent > min(image.shape[1:]):
        raise ValueError(
            f"patch extent patch_size * step = {extent} exceeds the image's spatial shape {image.shape[1:]}"
        )
    tumour = label > 0
    if not tumour.any():
        raise ValueError("label has no tumour voxels (all zero)")
    if z_split is None:
        zs = np.nonzero(tumour.any(axis=(0, 1)))[0]
        z_split = int((zs.min() + zs.max() + 1) // 2)
    if not extent <= z_split <= image.shape[3] - extent:
        raise ValueError(
            f"z_split must leave room for one patch (extent {extent}) on each side of "
            f"z in [0, {image.shape[3]}), got {z_split}"
        )
    brain = image[0] != 0
    image = zscore_normalise(image)  # over the brain (non-zero in any channel); 0 outside
    rng = np.random.default_rng(seed)

    def window(a, corner):
        x, y, z = corner
        return a[..., x : x + extent : step, y : y + extent : step, z : z + extent : step]

    def corners(z_lo, z_hi):
        # every corner on a grid of half a patch, inside [z_lo, z_hi)
        stride = max(1, extent // 2)
        xs = range(0, image.shape[1] - extent + 1, stride)
        ys = range(0, image.shape[2] - extent + 1, stride)
        zs = range(z_lo, z_hi - extent + 1, max(1, extent // 4))
        return [(x, y, z) for x in xs for y in ys for z in zs]

    splits = []
    for z_lo, z_hi in ((0, z_split), (z_split, image.shape[3])):
        pos, neg = [], []
        for corner in corners(z_lo, z_hi):
            if window(brain, corner).mean() < min_brain:
                continue
            t = window(tumour, corner).mean()
            if t >= min_tumour:
                pos.append(corner)
            elif t == 0:
                neg.append(corner)
        if not pos or not neg:
            raise ValueError(
                f"no {'tumour' if not pos else 'healthy'} patches in z range "
                f"[{z_lo}, {z_hi}); lower min_tumour/min_brain or change z_split"
            )
        chosen = []
        for cls, cands in ((1, pos), (0, neg)):
            idx = rng.permutation(len(cands))[:n_per_class]
            chosen += [(cls, cands[i]) for i in idx]
        order = rng.permutation(len(chosen))
        x = np.stack([window(image, chosen[i][1]) for i in order]).astype(np.float32)
        y = np.array([chosen[i][0] for i in order], dtype=np.int64)
        splits.append((x, y))
    return splits[0], splits[1]
