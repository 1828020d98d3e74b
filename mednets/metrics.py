"""Segmentation metrics in NumPy: Dice, 95th-percentile Hausdorff distance, BraTS scores.

Conventions for empty masks (they matter on BraTS, where many cases have no enhancing
tumour):

- ``dice``: both empty gives 1.0 (a correct "nothing here"); one empty gives 0.0.
- ``hd95``: both empty gives 0.0; exactly one empty gives ``inf`` (no surface to
  measure against). The BraTS challenge replaces that ``inf`` by a large constant
  (373.13 mm, the diagonal of the volume) when it averages; do so yourself if needed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["dice", "hd95", "brats_scores"]


def _as_bool_pair(pred, target):
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    return pred.astype(bool, copy=False), target.astype(bool, copy=False)


def dice(pred, target) -> float:
    """Dice coefficient ``2 |P & T| / (|P| + |T|)`` of two binary masks.

    Args:
        pred: Predicted mask, any shape (non-zero means foreground).
        target: Reference mask of the same shape.

    Returns:
        A float in [0, 1]; 1.0 when both masks are empty.

    Example:
        >>> dice(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
        0.6666666666666666
    """
    pred, target = _as_bool_pair(pred, target)
    total = int(pred.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, target).sum()) / total


def _surface(mask):
    """Foreground voxels with at least one face-neighbour in the background."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_percentile(from_surface, to_surface, spacing, q):
    # Distance from every voxel to the nearest voxel of ``to_surface`` (scaled by the
    # voxel spacing), read at the voxels of ``from_surface``.
    distance = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return float(np.percentile(distance[from_surface], q))


def hd95(pred, target, spacing=None) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the surfaces of two masks.

    The surface of a mask is its set of foreground voxels that touch the background
    (6-connectivity). For each direction (pred to target and target to pred) the 95th
    percentile of the surface-to-nearest-surface distances is taken, and the larger of
    the two is returned, as MONAI's ``compute_hausdorff_distance(percentile=95)`` does.
    Distances come from :func:`scipy.ndimage.distance_transform_edt`, computed only over
    the bounding box of both masks, which gives the same result faster.

    Args:
        pred: Predicted mask, any number of dimensions.
        target: Reference mask of the same shape.
        spacing: Voxel size per axis (e.g. mm), a number or a sequence with one entry per
            dimension. Defaults to None (1 per axis, distances in voxels).

    Returns:
        The distance in units of ``spacing``; 0.0 if both masks are empty, ``inf`` if
        exactly one is.

    Example:
        >>> a = np.zeros((10, 10), bool); a[2:5, 2:5] = True
        >>> b = np.zeros((10, 10), bool); b[2:5, 4:7] = True
        >>> hd95(a, b), hd95(a, b, spacing=(1.0, 0.5))
        (2.0, 1.0)
    """
    pred, target = _as_bool_pair(pred, target)
    if spacing is None:
        spacing = (1.0,) * pred.ndim
    spacing = np.atleast_1d(np.asarray(spacing, dtype=float))
    if spacing.size == 1:
        spacing = np.full(pred.ndim, spacing[0])
    if spacing.shape != (pred.ndim,):
        raise ValueError(
            f"spacing must have {pred.ndim} entries (one per axis), got {spacing.shape[0]}: {tuple(spacing)}"
        )
    if np.any(spacing <= 0):
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    has_pred, has_target = pred.any(), target.any()
    if not has_pred and not has_target:
        return 0.0
    if not has_pred or not has_target:
        return float("inf")
    # Crop to the joint bounding box, padded by one background voxel so that the
    # surface is the same as in the full array (whose border counts as background).
    coords = np.nonzero(pred | target)
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    pred = np.pad(pred[box], 1)
    target = np.pad(target[box], 1)
    s_pred, s_target = _surface(pred), _surface(target)
    return max(
        _directed_percentile(s_pred, s_target, spacing, 95),
        _directed_percentile(s_target, s_pred, spacing, 95),
    )


def brats_scores(pred_label, true_label, spacing=None) -> dict:
    """Dice and HD95 for the three BraTS regions (whole tumour, tumour core, enhancing).

    Both label maps may use either BraTS convention (enhancing tumour = 3 or 4), even
    different ones.

    Args:
        pred_label: Predicted label map, integer ``(X, Y, Z)``.
        true_label: Reference label map, same shape.
        spacing: Voxel size for HD95. Defaults to None (1 per axis).

    Returns:
        ``{"WT": {"dice": ..., "hd95": ...}, "TC": {...}, "ET": {...}}``.

    Example:
        >>> y = np.zeros((8, 8, 8), np.uint8); y[2:6, 2:6, 2:6] = 2; y[3:5, 3:5, 3:5] = 4
        >>> brats_scores(y, y)["ET"]
        {'dice': 1.0, 'hd95': 0.0}
    """
    from mednets.data.brats import REGION_NAMES, brats_regions

    pred_label = np.asarray(pred_label)
    true_label = np.asarray(true_label)
    if pred_label.shape != true_label.shape:
        raise ValueError(
            f"pred_label and true_label must have the same shape, got {pred_label.shape} and {true_label.shape}"
        )
    pred_regions = brats_regions(pred_label)
    true_regions = brats_regions(true_label)
    return {
        name: {"dice": dice(p, t), "hd95": hd95(p, t, spacing)}
        for name, p, t in zip(REGION_NAMES, pred_regions, true_regions)
    }
