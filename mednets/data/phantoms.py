"""Synthetic BraTS-like subjects ("phantoms") for fast, reproducible CPU training.

One real case cannot teach a network to generalise, and the full BraTS data set is too
large for a CPU. A phantom is a cheap stand-in: a skull-stripped, head-shaped volume with
grey matter, white matter and ventricles, four MRI-like channels with different
contrasts, and (optionally) a tumour made of three nested sub-regions placed at a random
position. Everything is vectorised NumPy and deterministic by ``seed``.

Channel order is ``(flair, t1, t1ce, t2)``; labels follow the BraTS 2018 convention
(0 background, 1 necrotic core, 2 oedema, 4 enhancing tumour): ``label_convention="brats2018"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PHANTOM_CHANNELS", "TISSUE_CONTRAST", "make_phantom", "make_phantom_dataset"]

#: Channel names of a phantom image, in order.
PHANTOM_CHANNELS = ("flair", "t1", "t1ce", "t2")

#: Mean intensity of each tissue in each channel (flair, t1, t1ce, t2), before the
#: per-channel scanner gain. The contrasts follow the textbook appearance: CSF is dark
#: in FLAIR and T1 but bright in T2; oedema is bright in FLAIR and T2; the enhancing rim
#: lights up only after contrast (T1ce); the necrotic core is dark in T1ce.
TISSUE_CONTRAST = {
    "csf": (0.10, 0.20, 0.22, 1.00),
    "grey": (0.55, 0.50, 0.52, 0.60),
    "white": (0.45, 0.75, 0.76, 0.40),
    "oedema": (0.95, 0.42, 0.45, 0.85),
    "enhancing": (0.70, 0.48, 1.00, 0.65),
    "necrotic": (0.35, 0.25, 0.20, 0.90),
}

# Scanner gain of each channel: real MRI intensities have arbitrary, channel-specific
# units, which is why a loader has to normalise them.
_GAIN = np.array([300.0, 500.0, 650.0, 400.0], dtype=np.float32)

_MIN_SIZE = 8


def _check_shape(shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple of 3 ints (X, Y, Z), got {shape!r}") from None
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 entries (X, Y, Z), got {len(shape)}: {shape}")
    if min(shape) < _MIN_SIZE:
        raise ValueError(f"every phantom dimension must be >= {_MIN_SIZE}, got shape {shape}")
    return shape


def _grid(shape):
    """Open grid of normalised coordinates in [-1, 1] along each axis (broadcastable)."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    return np.ix_(*axes)


def _wobble(x, y, z, rng, amplitude):
    """A smooth random perturbation used to make boundaries irregular."""
    f = rng.uniform(1.5, 3.5, size=3).astype(np.float32)
    p = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)
    return amplitude * (np.sin(f[0] * x + p[0]) * np.cos(f[1] * y + p[1]) + np.sin(f[2] * z + p[2])) / 2


def make_phantom(
    shape: Sequence[int] = (64, 64, 64), seed: int = 0, tumour: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Make one synthetic BraTS-like subject.

    Args:
        shape: Spatial size ``(X, Y, Z)``; each entry >= 8. Defaults to ``(64, 64, 64)``.
        seed: Integer seed; the same seed gives the same subject. Defaults to 0.
        tumour: Whether to add a tumour. With ``False`` the label is all zeros.
            Defaults to True.

    Returns:
        ``(image, label)``: ``image`` is float32 of shape ``(4, X, Y, Z)`` with channels
        ``(flair, t1, t1ce, t2)`` and exactly 0 outside the brain; ``label`` is uint8 of
        shape ``(X, Y, Z)`` with values 0 background, 1 necrotic core, 2 oedema,
        4 enhancing tumour (BraTS 2018 convention).

    Example:
        >>> image, label = make_phantom((32, 40, 24), seed=1)
        >>> image.shape, label.shape, sorted(set(label.ravel().tolist()))
        ((4, 32, 40, 24), (32, 40, 24), [0, 1, 2, 4])
    """
    shape = _check_shape(shape)
    rng = np.random.default_rng(seed)
    x, y, z = _grid(shape)

    # Brain: an ellipsoid, a little narrower left-right, flattened at the bottom,
    # with an irregular (gyral-ish) boundary.
    radii = np.array([0.78, 0.9, 0.8], dtype=np.float32) * rng.uniform(0.92, 1.05, 3).astype(np.float32)
    r = np.sqrt((x / radii[0]) ** 2 + (y / radii[1]) ** 2 + ((z + 0.05) / radii[2]) ** 2)
    r = r + _wobble(x, y, z, rng, 0.04)
    brain = (r < 1.0) & (z > -0.75)
    white = r < 0.72
    # Two ventricles either side of the midline.
    vx = 0.13 * rng.uniform(0.8, 1.2)
    ventricles = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        ventricles |= ((x - side * vx) / 0.09) ** 2 + (y / 0.32) ** 2 + ((z - 0.05) / 0.18) ** 2 < 1.0

    tissue = np.zeros(shape, dtype=np.uint8)  # 0 bg, 1 grey, 2 white, 3 csf, 4..6 tumour
    tissue[brain] = 1
    tissue[brain & white] = 2
    tissue[brain & ventricles] = 3

    label = np.zeros(shape, dtype=np.uint8)
    if tumour:
        # Centre somewhere inside the brain, away from its boundary.
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        centre = (direction * rng.uniform(0.1, 0.4) * radii).astype(np.float32)
        size = rng.uniform(0.22, 0.36)
        stretch = rng.uniform(0.8, 1.25, 3).astype(np.float32)
        d = np.sqrt(
            ((x - centre[0]) / (size * stretch[0])) ** 2
            + ((y - centre[1]) / (size * stretch[1])) ** 2
            + ((z - centre[2]) / (size * stretch[2])) ** 2
        )
        d_oedema = d + _wobble(x, y, z, rng, 0.25)
        d_core = d + _wobble(x, y, z, rng, 0.1)
        core_radius = rng.uniform(0.5, 0.65)
        necrotic_radius = core_radius * rng.uniform(0.5, 0.7)
        label[brain & (d_oedema < 1.0)] = 2
        label[brain & (d_core < core_radius)] = 4
        label[brain & (d_core < necrotic_radius)] = 1
        tissue[label == 2] = 4
        tissue[label == 4] = 5
        tissue[label == 1] = 6

    contrast = np.zeros((7, 4), dtype=np.float32)
    for i, name in enumerate(("grey", "white", "csf", "oedema", "enhancing", "necrotic"), start=1):
        contrast[i] = TISSUE_CONTRAST[name]
    image = np.moveaxis(contrast[tissue], -1, 0)  # (X, Y, Z, 4) -> (4, X, Y, Z)

    # Smooth multiplicative bias field per channel, then noise, then scanner gain.
    coef = rng.uniform(-0.1, 0.1, size=(4, 3)).astype(np.float32)
    for c in range(4):
        image[c] *= 1.0 + coef[c, 0] * x + coef[c, 1] * y + coef[c, 2] * z
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(0.04)
    image *= (_GAIN * rng.uniform(0.85, 1.15, 4).astype(np.float32))[:, None, None, None]
    np.maximum(image, 0.0, out=image)
    image[:, ~brain] = 0.0
    return image.astype(np.float32, copy=False), label


def make_phantom_dataset(
    n: int, shape: Sequence[int] = (64, 64, 64), seed: int = 0, empty_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Make ``n`` phantom subjects, a fraction of them without tumour.

    Subject ``i`` is built from a seed derived from ``(seed, i)``; which subjects are
    empty is drawn from ``(seed, n)``.

    Args:
        n: Number of subjects, >= 1.
        shape: Spatial size ``(X, Y, Z)``. Defaults to ``(64, 64, 64)``.
        seed: Integer seed. Defaults to 0.
        empty_fraction: Fraction of subjects without tumour, in [0, 1]; the count is
            ``round(n * empty_fraction)``. Defaults to 0.2.

    Returns:
        ``(images, labels)``: float32 ``(N, 4, X, Y, Z)`` and uint8 ``(N, X, Y, Z)``.

    Example:
        >>> images, labels = make_phantom_dataset(5, (16, 16, 16), seed=0)
        >>> images.shape, labels.shape, int((labels.reshape(5, -1).max(1) == 0).sum())
        ((5, 4, 16, 16, 16), (5, 16, 16, 16), 1)
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"empty_fraction must be in [0, 1], got {empty_fraction}")
    shape = _check_shape(shape)
    n_empty = int(round(n * empty_fraction))
    empty = np.zeros(n, dtype=bool)
    empty[np.random.default_rng([seed, n]).permutation(n)[:n_empty]] = True
    images = np.empty((n, 4) + shape, dtype=np.float32)
    labels = np.empty((n,) + shape, dtype=np.uint8)
    for i in range(n):
        sub_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        images[i], labels[i] = make_phantom(shape, seed=sub_seed, tumour=not empty[i])
    return images, labels
