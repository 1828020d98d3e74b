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
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from mednets.utils import atomic_write

__all__ = ["orientation", "load_nifti", "save_nifti", "save_like"]


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


def _nifti_suffix(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def save_like(array, reference, path, *, dtype=None) -> Path:
    """Write an array that is on :func:`load_nifti`'s RAS+ grid back on a reference file's grid.

    :func:`load_nifti` flips and permutes the stored axes into RAS+. A prediction made
    on that array is in the same canonical layout; this function undoes the
    reorientation (``io_orientation`` / ``ornt_transform`` / ``apply_orientation`` from
    :mod:`nibabel.orientations`, flips and axis swaps only, no resampling) and writes
    the result with the reference's affine and header, in the reference's on-disk
    axis order, so that it overlays the original scan voxel for voxel in any viewer.
    The file is written atomically (:func:`mednets.utils.atomic_write`).

    Args:
        array: ``(X, Y, Z)`` or ``(C, X, Y, Z)`` in the RAS+ layout that
            ``load_nifti(reference)`` returns (``(X, Y, Z)`` must equal that array's
            shape). Channels are written as a 4th axis, ``(X, Y, Z, C)``, as the
            Decathlon stores them.
        reference: The NIfTI file the array was computed from.
        path: Destination (``.nii`` or ``.nii.gz``).
        dtype: Dtype on disk. Defaults to None: the reference's on-disk dtype and
            scaling (``scl_slope``, ``scl_inter``), so that ``load_nifti`` then
            ``save_like`` gives back the stored bytes whenever ``load_nifti``'s dtype
            holds the stored values exactly (its float32 default does for float32,
            (u)int8 and int16 files; load float64 files with ``dtype=np.float64``).
            Pass ``np.uint8`` to write a label map beside a float image (unscaled).

    Returns:
        The path written, as a ``Path``.

    Raises:
        ValueError: If the array is not 3D or 4D, its spatial shape differs from the
            reference's RAS+ shape (the message gives both), or its values do not fit
            an integer ``dtype`` (fractional or out of range).
        FileNotFoundError: If the reference does not exist.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> lps = np.diag([-2.0, -2.0, 2.0, 1.0])  # stored L, P, S
        >>> ref = save_nifti(np.arange(24, dtype=np.int16).reshape(2, 3, 4), lps, folder / "ref.nii.gz")
        >>> image, affine, info = load_nifti(ref)  # RAS+: the first two axes flipped
        >>> mask = (image > 10).astype(np.uint8)
        >>> out = save_like(mask, ref, folder / "mask.nii.gz", dtype=np.uint8)
        >>> written = nib.load(out)
        >>> orientation(written.affine), np.array_equal(written.affine, nib.load(ref).affine)
        ('LPS', True)
        >>> np.asarray(written.dataobj)[0, 0].tolist()  # the stored voxels line up with ref's
        [0, 0, 0, 0]
    """
    path = Path(path)
    reference = Path(reference)
    if not reference.is_file():
        raise FileNotFoundError(f"reference NIfTI file not found: {reference}")
    ref = nib.load(os.fspath(reference))
    if not isinstance(ref, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{reference}: expected a NIfTI-1/2 reference, got {type(ref).__name__}")
    array = np.asarray(array)
    if array.ndim not in (3, 4):
        raise ValueError(f"expected an array (X, Y, Z) or (C, X, Y, Z), got shape {array.shape}")
    disk_ornt = io_orientation(ref.affine)
    ras_shape = [0, 0, 0]
    for disk_axis, (ras_axis, _) in enumerate(disk_ornt):
        ras_shape[int(ras_axis)] = ref.shape[disk_axis]
    spatial = array.shape[-3:]
    if tuple(spatial) != tuple(ras_shape):
        raise ValueError(
            f"{reference}: expected an array on its RAS+ grid, spatial shape {tuple(ras_shape)}, "
            f"got {tuple(spatial)} (array shape {array.shape})"
        )
    if array.ndim == 4:
        array = np.moveaxis(array, 0, 3)  # (C, X, Y, Z) -> (X, Y, Z, C)
    # RAS+ -> the reference's stored axis order (the inverse of as_closest_canonical).
    disk = apply_orientation(array, ornt_transform(axcodes2ornt("RAS"), disk_ornt))
    # Keep the reference's scaling (scl_slope, scl_inter) when writing in its dtype, so
    # that a round trip stores the same integers; an explicit dtype is written unscaled.
    slope, inter = float(getattr(ref.dataobj, "slope", 1.0)), float(getattr(ref.dataobj, "inter", 0.0))
    scaled = dtype is None and (slope, inter) != (1.0, 0.0)
    dtype = ref.get_data_dtype() if dtype is None else np.dtype(dtype)
    if scaled:
        disk = (np.asarray(disk, dtype=np.float64) - inter) / slope
    if dtype.kind in "iub" and disk.size:
        if disk.dtype.kind == "f":
            whole = np.round(disk)
            if not np.allclose(disk, whole, rtol=0, atol=1e-3 if scaled else 0):
                raise ValueError(f"{path}: expected whole numbers for dtype {dtype}, got fractional values")
            disk = whole
        info = np.iinfo(dtype) if dtype.kind != "b" else np.iinfo(np.uint8)
        lo, hi = disk.min(), disk.max()
        if lo < info.min or hi > info.max:
            raise ValueError(
                f"{path}: values must be in [{info.min}, {info.max}] for dtype {dtype}, got [{lo}, {hi}]"
            )
    header = ref.header.copy()
    header.set_data_dtype(dtype)
    img = type(ref)(np.ascontiguousarray(disk, dtype=dtype), ref.affine, header)
    if scaled:
        img.header.set_slope_inter(slope, inter)
    with atomic_write(path, suffix=_nifti_suffix(path)) as tmp:
        nib.save(img, os.fspath(tmp))
    return path
