"""Reading and writing NIfTI volumes with nibabel, always in canonical RAS+ orientation.

A NIfTI file stores a voxel array and an *affine*: a 4x4 matrix that maps voxel indices
``(i, j, k, 1)`` to millimetre coordinates in the scanner's world space. NIfTI's world
space is RAS+: +x points to the patient's Right, +y to Anterior, +z to Superior. The
array axes, though, can point any way (BraTS files are stored L, P, S: index 0 grows
towards the Left). :func:`load_nifti` reorders the array (flips and axis swaps only, no
resampling) so that array axis 0 grows towards R, axis 1 towards A and axis 2 towards S,
and returns the matching affine. Then ``array[i]`` and ``array[i + 1]`` are neighbours
from left to right in every file, whatever its orientation on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["orientation", "load_nifti", "save_nifti"]


def orientation(affine) -> str:
    """The orientation codes of an affine's array axes, e.g. ``"RAS"`` or ``"LPS"``.

    Each letter says where the corresponding array axis points (the direction in which
    its index grows).

    Example:
        >>> orientation(np.diag([-1.0, -1.0, 1.0, 1.0]))
        'LPS'
    """
    return "".join(nib.aff2axcodes(np.asarray(affine)))


def load_nifti(path, *, canonical=True, dtype=np.float32, channels=False):
    """Load a NIfTI file as a NumPy array, by default reoriented to RAS+.

    Args:
        path: A ``.nii`` or ``.nii.gz`` file.
        canonical: Reorient to the closest canonical (RAS+) orientation with
            :func:`nibabel.as_closest_canonical`. Defaults to True.
        dtype: Output dtype, whatever the dtype on disk (BraTS mixes float32 and
            float64). For integer dtypes the values must be whole numbers in range.
            Defaults to ``np.float32``.
        channels: Accept a 4D file ``(X, Y, Z, C)`` (the Decathlon's multi-modal
            images) and return it channels first, ``(C, X, Y, Z)``; a 3D file is then
            returned as ``(1, X, Y, Z)``. Defaults to False (3D only).

    Returns:
        ``(array, affine, info)``: the array in ``dtype``, the (canonical) affine as a
        float64 4x4 array, and a dict with ``orientation`` (codes as stored on disk),
        ``spacing`` (voxel size in mm, per array axis after reorientation),
        ``disk_dtype`` and ``path``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not valid NIfTI, is not 3D (or 4D with ``channels``), or its values do not
            fit an integer ``dtype``; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file not found: {path}")
    try:
        img = nib.load(os.fspath(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ValueError(f"expected a NIfTI-1/2 image, got {type(img).__name__}")
        disk_orientation = orientation(img.affine)
        disk_dtype = str(img.get_data_dtype())
        if canonical:
            img = nib.as_closest_canonical(img)
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise ValueError(f"{path} is not a valid NIfTI file ({type(err).__name__}: {err})") from err
    if channels:
        if data.ndim == 3:
            data = data[..., None]
        if data.ndim != 4:
            raise ValueError(f"{path}: expected a 3D or 4D volume (X, Y, Z[, C]), got shape {data.shape}")
        data = np.moveaxis(data, 3, 0)  # (X, Y, Z, C) -> (C, X, Y, Z)
    else:
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ValueError(f"{path}: expected a 3D volume (X, Y, Z), got shape {data.shape}")
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if data.dtype.kind == "f" and not np.all(np.mod(data, 1) == 0):
            raise ValueError(f"{path}: expected whole-number labels for dtype {dtype}, got fractional values")
        lo, hi = (data.min(), data.max()) if data.size else (0, 0)
        if lo < info.min or hi > info.max:
            raise ValueError(
                f"{path}: values must be in [{info.min}, {info.max}] for dtype {dtype}, got [{lo}, {hi}]"
            )
    array = np.ascontiguousarray(data, dtype=dtype)
    affine = np.asarray(img.affine, dtype=np.float64)
    info = {
        "orientation": disk_orientation,
        "spacing": tuple(float(s) for s in img.header.get_zooms()[:3]),
        "disk_dtype": disk_dtype,
        "path": str(path),
    }
    return array, affine, info


def save_nifti(array, affine, path):
    """Write a 3D array and its affine to ``path`` (``.nii`` or ``.nii.gz``).

    The dtype on disk is the array's dtype; write predictions as ``uint8``.

    Args:
        array: A 3D array ``(X, Y, Z)``.
        affine: Its 4x4 voxel-to-world matrix.
        path: Destination file.

    Returns:
        The path written, as a ``Path``.
    """
    array = np.asarray(array)
    affine = np.asarray(affine, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array (X, Y, Z), got shape {array.shape}")
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    img = nib.Nifti1Image(array, affine)
    img.set_data_dtype(array.dtype)
    path = Path(path)
    nib.save(img, os.fspath(path))
    return path
