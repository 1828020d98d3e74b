"""Segmentation metrics in NumPy: Dice, 95th-percentile Hausdorff distance, BraTS scores.

What each metric takes:

- :func:`dice`, :func:`hd95`: two **binary masks** (bool, or numbers with one
  non-zero value). Probabilities (0.95, 0.02...) and label maps with several labels
  are refused with a ``ValueError``: "non-zero" is not "foreground" for them, and
  scoring them as masks gives a silent wrong number (0.059 instead of 1.0). Threshold
  probabilities first (``pred > 0.5``) or pass ``threshold=``.
- :func:`dice_per_label`, :func:`hd95_per_label`: two integer **label maps** and the
  labels to score, one mask per label.
- :func:`brats_scores`: two tumour **label maps** in a label convention (see
  :func:`mednets.data.brats.brats_regions`), scored on the three nested regions.

No metric takes logits.

Conventions for empty masks (they matter on BraTS, where many cases have no enhancing
tumour):

- ``dice``: both empty gives 1.0 (a correct "nothing here"); one empty gives 0.0.
- ``hd95``: both empty gives 0.0; exactly one empty gives ``inf`` (no surface to
  measure against). The BraTS challenge replaces that ``inf`` by a large constant
  (373.13 mm, the diagonal of the volume) when it averages; do so yourself if needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

__all__ = ["dice", "hd95", "dice_per_label", "hd95_per_label", "structure_scores", "brats_scores"]


def _few_values(x: np.ndarray, n: int = 6) -> str:
    values = np.unique(x)
    shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values[:n].tolist())
    return f"[{shown}{', ...' if len(values) > n else ''}] ({len(values)} distinct)"


def _as_mask(x, name: str = "mask", threshold: float | None = None, what: str = "dice") -> np.ndarray:
    """Check that ``x`` is a binary mask and return it as a boolean array.

    Accepted: booleans, and integer or float arrays with at most one non-zero value
    (``{0, 1}``, ``{0, 255}``, ``{0.0, 1.0}``). With ``threshold``, ``x > threshold``
    is used instead, for any real dtype.

    Args:
        x: Array-like.
        name: The argument's name, for messages. Defaults to "mask".
        threshold: Threshold probabilities at this value. Defaults to None (``x``
            must already be a mask).
        what: The calling function, for messages. Defaults to "dice".

    Returns:
        A boolean array of ``x``'s shape.

    Raises:
        ValueError: For probabilities or other non-binary floats (the message names
            the values found and points to thresholding), for integer maps with more
            than one non-zero value (it points to the per-label functions), or for a
            dtype that is not a real number or a boolean.

    Example:
        >>> _as_mask(np.array([0, 255, 0], np.uint8)).tolist()
        [False, True, False]
        >>> _as_mask(np.array([0.1, 0.7]), threshold=0.5).tolist()
        [False, True]
    """
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{what}: {name} must be a boolean or numeric mask, got dtype {x.dtype}")
    if threshold is not None:
        return x > threshold
    if x.dtype.kind == "b":
        return x
    nonzero = x[x != 0]
    if x.dtype.kind == "f" and (not np.all(np.isfinite(nonzero)) or np.any(np.mod(nonzero, 1) != 0)):
        raise ValueError(
            f"{what}: {name} must be a binary mask, got {x.dtype} values {_few_values(x)}; these look like "
            f"probabilities: threshold them first ({name} > 0.5) or pass threshold=0.5"
        )
    if nonzero.size and np.any(nonzero != nonzero.flat[0]):
        raise ValueError(
            f"{what}: {name} must be a binary mask (0 and one other value), got a label map with values "
            f"{_few_values(x)}; score each label with dice_per_label / hd95_per_label, or BraTS regions "
            f"with brats_scores"
        )
    return x != 0


def _as_bool_pair(pred, target, threshold, what):
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    return _as_mask(pred, "pred", threshold, what), _as_mask(target, "target", None, what)


def dice(pred: ArrayLike, target: ArrayLike, *, threshold: float | None = None) -> float:
    """Dice coefficient ``2 |P & T| / (|P| + |T|)`` of two binary masks.

    Args:
        pred: Predicted **mask**, any shape: booleans, or numbers with one non-zero
            value. Probabilities are refused unless ``threshold`` is given.
        target: Reference mask of the same shape.
        threshold: Use ``pred > threshold`` (for probabilities). Defaults to None.

    Returns:
        A float in [0, 1]; 1.0 when both masks are empty.

    Raises:
        ValueError: If the shapes differ, ``pred`` holds probabilities and no
            ``threshold`` is given, or either holds several labels (see
            :func:`_as_mask`).

    Example:
        >>> dice(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
        0.6666666666666666
        >>> dice(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 0, 0, 0]), threshold=0.5)
        0.6666666666666666
    """
    pred, target = _as_bool_pair(pred, target, threshold, "dice")
    total = int(pred.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, target).sum()) / total


def _check_spacing(spacing, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    spacing = np.atleast_1d(np.asarray(spacing, dtype=float))
    if spacing.size == 1:
        spacing = np.full(ndim, spacing[0])
    if spacing.shape != (ndim,):
        raise ValueError(
            f"spacing must have {ndim} entries (one per axis), got {spacing.shape[0]}: {tuple(spacing)}"
        )
    if np.any(spacing <= 0):
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    return spacing


def _surface(mask):
    """Foreground voxels with at least one face-neighbour in the background."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_percentile(from_surface, to_surface, spacing, q):
    # Distance from every voxel to the nearest voxel of ``to_surface`` (scaled by the
    # voxel spacing), read at the voxels of ``from_surface``.
    distance = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return float(np.percentile(distance[from_surface], q))


def hd95(
    pred: ArrayLike,
    target: ArrayLike,
    spacing: float | Sequence[float] | None = None,
    *,
    threshold: float | None = None,
) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the surfaces of two masks.

    The surface of a mask is its set of foreground voxels that touch the background
    (6-connectivity). For each direction (pred to target and target to pred) the 95th
    percentile of the surface-to-nearest-surface distances is taken, and the larger of
    the two is returned, as MONAI's ``compute_hausdorff_distance(percentile=95)`` does.
    Distances come from :func:`scipy.ndimage.distance_transform_edt`, computed only over
    the bounding box of both masks, which gives the same result faster.

    Args:
        pred: Predicted **mask**, any number of dimensions: booleans, or numbers with
            one non-zero value. Probabilities are refused unless ``threshold`` is given.
        target: Reference mask of the same shape.
        spacing: Voxel size per axis (e.g. mm), a number or a sequence with one entry per
            dimension. Defaults to None (1 per axis, distances in voxels).
        threshold: Use ``pred > threshold`` (for probabilities). Defaults to None.

    Returns:
        The distance in units of ``spacing``; 0.0 if both masks are empty, ``inf`` if
        exactly one is.

    Raises:
        ValueError: If the shapes differ, ``spacing`` has the wrong length or a
            non-positive entry, ``pred`` holds probabilities and no ``threshold`` is
            given, or either holds several labels.

    Example:
        >>> a = np.zeros((10, 10), bool); a[2:5, 2:5] = True
        >>> b = np.zeros((10, 10), bool); b[2:5, 4:7] = True
        >>> hd95(a, b), hd95(a, b, spacing=(1.0, 0.5))
        (2.0, 1.0)
    """
    pred, target = _as_bool_pair(pred, target, threshold, "hd95")
    spacing = _check_spacing(spacing, pred.ndim)
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


def _label_pair(pred, target, labels, what):
    from mednets.data.brats import as_label_map

    pred = as_label_map(pred, f"{what}: pred")
    target = as_label_map(target, f"{what}: target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    try:
        labels = [int(v) for v in labels]
    except TypeError:
        raise ValueError(f"{what}: labels must be a sequence of ints, got {labels!r}") from None
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"{what}: labels must be distinct and not empty, got {labels}")
    return pred, target, labels


def dice_per_label(pred: ArrayLike, target: ArrayLike, labels: Sequence[int]) -> dict[int, float]:
    """Dice of each label of two integer **label maps**: ``dice(pred == l, target == l)``.

    Args:
        pred: Predicted label map, any shape, integer (or whole-valued float).
        target: Reference label map of the same shape.
        labels: The labels to score, e.g. ``(1, 2)`` for the Decathlon hippocampus
            (anterior, posterior). Leave out the background.

    Returns:
        ``{label: dice}``, in the order of ``labels``; 1.0 for a label absent from both.

    Raises:
        ValueError: If the shapes differ, a map is not integer, or ``labels`` is empty
            or repeats a label.

    Example:
        >>> dice_per_label(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), (1, 2))
        {1: 0.6666666666666666, 2: 0.6666666666666666}
    """
    pred, target, labels = _label_pair(pred, target, labels, "dice_per_label")
    return {label: dice(pred == label, target == label) for label in labels}


def hd95_per_label(
    pred: ArrayLike,
    target: ArrayLike,
    labels: Sequence[int],
    spacing: float | Sequence[float] | None = None,
) -> dict[int, float]:
    """HD95 of each label of two integer **label maps**: ``hd95(pred == l, target == l)``.

    Args:
        pred: Predicted label map, any shape, integer (or whole-valued float).
        target: Reference label map of the same shape.
        labels: The labels to score. Leave out the background.
        spacing: Voxel size per axis in mm (e.g. ``meta["spacing"]`` from
            :func:`~mednets.data.nifti.load_nifti`), for distances in mm. Defaults to
            None (distances in voxels).

    Returns:
        ``{label: hd95}`` in units of ``spacing``; 0.0 for a label absent from both,
        ``inf`` for a label absent from one.

    Raises:
        ValueError: As :func:`dice_per_label`, or a bad ``spacing``.

    Example:
        >>> p = np.zeros((6, 6), int); p[1:3, 1:3] = 1; p[3:5, 3:5] = 2
        >>> hd95_per_label(p, np.roll(p, 1, axis=0), (1, 2), spacing=(2.0, 1.0))
        {1: 2.0, 2: 2.0}
    """
    pred, target, labels = _label_pair(pred, target, labels, "hd95_per_label")
    spacing = _check_spacing(spacing, pred.ndim)
    return {label: hd95(pred == label, target == label, spacing) for label in labels}


def structure_scores(pred, label, names, spacing=None) -> dict[str, float]:
    """Dice and HD95 of each named structure of two label maps.

    Args:
        pred: Predicted label map ``(*S)``, integer values 0..len(names).
        label: Reference label map ``(*S)``, same values.
        names: Structure names of labels 1, 2, ... (e.g. ``("anterior", "posterior")``).
        spacing: Voxel size in mm. Defaults to None (voxels).

    Returns:
        ``{"<name>_dice": ..., "<name>_hd95": ...}`` (HD95 in mm, inf where a structure is
        missing from one map), as :func:`dice_per_label` and :func:`hd95_per_label`.

    Raises:
        ValueError: As :func:`dice_per_label` and :func:`hd95_per_label` (shapes, dtypes).

    Example:
        >>> y = np.zeros((6, 6, 6), np.int64); y[1:3] = 1; y[3:5] = 2
        >>> structure_scores(y, y, ("a", "b"))["b_dice"]
        1.0
    """
    labels = list(range(1, len(names) + 1))
    d = dice_per_label(pred, label, labels)
    h = hd95_per_label(pred, label, labels, spacing)
    out = {}
    for lab, name in zip(labels, names):
        out[f"{name}_dice"] = float(d[lab])
        out[f"{name}_hd95"] = float(h[lab])
    return out


def brats_scores(
    pred_label: ArrayLike,
    true_label: ArrayLike,
    spacing: float | Sequence[float] | None = None,
    label_convention: str | tuple[str | None, str | None] | None = None,
) -> dict[str, dict[str, float]]:
    """Dice and HD95 for the three BraTS regions (whole tumour, tumour core, enhancing).

    Args:
        pred_label: Predicted tumour **label map**, integer ``(X, Y, Z)``.
        true_label: Reference label map, same shape.
        spacing: Voxel size for HD95 (mm). Defaults to None (1 per axis).
        label_convention: ``"brats2018"``, ``"brats2023"`` or ``"msd"`` for both maps,
            a pair ``(pred's, true's)`` for maps in different conventions, or None:
            inferred from the values of both maps together, where they are
            unambiguous (see :func:`mednets.data.brats.resolve_label_convention`).
            Defaults to None.

    Returns:
        ``{"WT": {"dice": ..., "hd95": ...}, "TC": {...}, "ET": {...}}``.

    Raises:
        ValueError: If the shapes differ, a value is not in the convention, or the
            convention cannot be inferred (the message asks for ``label_convention``).

    Example:
        >>> y = np.zeros((8, 8, 8), np.uint8); y[2:6, 2:6, 2:6] = 2; y[3:5, 3:5, 3:5] = 4
        >>> brats_scores(y, y)["ET"]
        {'dice': 1.0, 'hd95': 0.0}
        >>> brats_scores(np.where(y == 4, 3, y), y, label_convention=("brats2023", "brats2018"))["TC"]
        {'dice': 1.0, 'hd95': 0.0}
    """
    from mednets.data.brats import REGION_NAMES, as_label_map, brats_regions, resolve_label_convention

    pred_label = as_label_map(pred_label, "brats_scores: pred_label")
    true_label = as_label_map(true_label, "brats_scores: true_label")
    if pred_label.shape != true_label.shape:
        raise ValueError(
            f"pred_label and true_label must have the same shape, got {pred_label.shape} and "
            f"{true_label.shape}"
        )
    if isinstance(label_convention, (tuple, list)):
        pred_convention, true_convention = label_convention
    else:
        if label_convention is None:
            both = np.union1d(np.unique(pred_label), np.unique(true_label))
            label_convention = resolve_label_convention(both, where="brats_scores (both label maps)")
        pred_convention = true_convention = label_convention
    pred_regions = brats_regions(pred_label, pred_convention, where="brats_scores: pred_label")
    true_regions = brats_regions(true_label, true_convention, where="brats_scores: true_label")
    return {
        name: {"dice": dice(p, t), "hd95": hd95(p, t, spacing)}
        for name, p, t in zip(REGION_NAMES, pred_regions, true_regions)
    }
