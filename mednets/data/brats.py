"""BraTS label conventions and tumour regions.

BraTS label maps use 0 background, 1 necrotic (non-enhancing) tumour core, 2 peritumoral
oedema and one value for the enhancing tumour: 4 in BraTS 2018-2021, 3 in BraTS 2023.
The challenge does not score the labels themselves but three nested regions built from
them: whole tumour (WT), tumour core (TC) and enhancing tumour (ET).
"""

from __future__ import annotations

import numpy as np

__all__ = ["REGION_NAMES", "label_convention", "brats_regions"]

#: Short names of the three BraTS regions, in the order :func:`brats_regions` returns.
REGION_NAMES = ("WT", "TC", "ET")


def label_convention(label) -> str | None:
    """Say which BraTS label convention a label map uses.

    Args:
        label: Integer label array of any shape.

    Returns:
        ``"brats2018"`` if the enhancing tumour is labelled 4, ``"brats2023"`` if it is
        labelled 3, or None when there is no enhancing tumour (both read the same).

    Raises:
        ValueError: If the map holds values outside {0, 1, 2, 3, 4}, or both 3 and 4.
    """
    label = np.asarray(label)
    if label.dtype.kind not in "iub":
        if label.dtype.kind == "f" and np.all(np.mod(label, 1) == 0):
            label = label.astype(np.int64)
        else:
            raise ValueError(f"label must hold integers, got dtype {label.dtype}")
    values = set(np.unique(label).tolist())
    bad = sorted(values - {0, 1, 2, 3, 4})
    if bad:
        raise ValueError(
            f"label values must be in {{0, 1, 2, 3, 4}} (BraTS: 0 background, 1 necrotic core, "
            f"2 oedema, 3 or 4 enhancing tumour), got unexpected values {bad}"
        )
    if 3 in values and 4 in values:
        raise ValueError(
            "label mixes both enhancing-tumour conventions: expected either 3 (BraTS 2023) "
            "or 4 (BraTS 2018-2021), got both 3 and 4"
        )
    if 4 in values:
        return "brats2018"
    if 3 in values:
        return "brats2023"
    return None


def brats_regions(label):
    """Turn a BraTS label map into the three nested evaluation regions.

    Both conventions are accepted: enhancing tumour labelled 4 (BraTS 2018-2021) or
    3 (BraTS 2023).

    Args:
        label: Integer array of shape ``(X, Y, Z)`` (any number of dimensions works)
            with values in {0, 1, 2, 3|4}.

    Returns:
        Boolean array of shape ``(3, X, Y, Z)``: whole tumour {1, 2, 3|4},
        tumour core {1, 3|4}, enhancing tumour {3|4}, in this order (see
        :data:`REGION_NAMES`).

    Raises:
        ValueError: If ``label`` holds any other value, or both 3 and 4.

    Example:
        >>> brats_regions(np.array([0, 1, 2, 4])).astype(int).tolist()
        [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]
    """
    label = np.asarray(label)
    label_convention(label)  # validates the values
    enhancing = (label == 3) | (label == 4)
    core = enhancing | (label == 1)
    whole = core | (label == 2)
    return np.stack([whole, core, enhancing])
