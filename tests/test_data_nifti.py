"""Tests for mednets.data.nifti: canonical RAS+ loading, dtypes and error messages."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from mednets.data.nifti import load_nifti, orientation, save_nifti

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def test_orientation_codes():
    assert orientation(np.eye(4)) == "RAS"
    assert orientation(LPS) == "LPS"
    assert orientation(np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1.0]])) == "ARI"


@pytest.mark.parametrize(
    "disk_dtype", [np.float64, np.float32, np.int16, np.uint8], ids=lambda d: np.dtype(d).name
)
def test_lps_file_is_flipped_to_ras(tmp_path, disk_dtype):
    data = np.arange(4 * 5 * 3).reshape(4, 5, 3).astype(disk_dtype)
    path = save_nifti(data, LPS, tmp_path / "x.nii.gz")
    array, affine, info = load_nifti(path)
    assert array.dtype == np.float32 and array.shape == (4, 5, 3)
    # LPS -> RAS reverses the first two axes.
    np.testing.assert_array_equal(array, data[::-1, ::-1, :].astype(np.float32))
    assert orientation(affine) == "RAS"
    assert info["orientation"] == "LPS" and info["disk_dtype"] == np.dtype(disk_dtype).name
    # Voxel (0, 0, 0) of the RAS array is the same world point as voxel (3, 4, 0) on disk.
    np.testing.assert_allclose(affine @ [0, 0, 0, 1], LPS @ [3, 4, 0, 1])


def test_permuted_axes_are_reordered(tmp_path):
    # Disk axes are (A, R, S): canonical order must swap the first two axes.
    affine = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    data = np.random.default_rng(0).random((3, 4, 2))
    array, new_affine, info = load_nifti(save_nifti(data, affine, tmp_path / "p.nii"))
    assert array.shape == (4, 3, 2) and info["orientation"] == "ARS"
    np.testing.assert_allclose(array, data.transpose(1, 0, 2).astype(np.float32))
    assert orientation(new_affine) == "RAS"


def test_no_canonical_keeps_disk_order(tmp_path):
    data = np.arange(24.0).reshape(2, 3, 4)
    array, affine, _ = load_nifti(save_nifti(data, LPS, tmp_path / "x.nii"), canonical=False)
    np.testing.assert_array_equal(array, data)
    np.testing.assert_array_equal(affine, LPS)


def test_label_dtype(tmp_path):
    path = save_nifti(np.array([[[0.0, 1.0], [2.0, 3.0]]]), np.eye(4), tmp_path / "seg.nii.gz")
    label, _, _ = load_nifti(path, dtype=np.uint8)
    assert label.dtype == np.uint8 and label.sum() == 6
    frac = save_nifti(np.array([[[0.0, 1.5]]]), np.eye(4), tmp_path / "frac.nii.gz")
    with pytest.raises(ValueError, match=r"frac\.nii\.gz.*fractional"):
        load_nifti(frac, dtype=np.uint8)
    big = save_nifti(np.array([[[0, 300]]], dtype=np.int16), np.eye(4), tmp_path / "big.nii.gz")
    with pytest.raises(ValueError, match=r"big\.nii\.gz: values must be in \[0, 255\].*got \[0, 300\]"):
        load_nifti(big, dtype=np.uint8)


def test_invalid_file_names_the_file(tmp_path):
    bad = tmp_path / "broken_t1.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a NIfTI header"))
    with pytest.raises(ValueError, match=r"broken_t1\.nii\.gz is not a valid NIfTI file"):
        load_nifti(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.nii\.gz"):
        load_nifti(tmp_path / "missing.nii.gz")


def test_not_3d_raises(tmp_path):
    path = tmp_path / "four_d.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)), str(path))
    with pytest.raises(ValueError, match=r"four_d\.nii: expected a 3D volume .* got shape \(2, 2, 2, 3\)"):
        load_nifti(path)


def test_save_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"3D array .* got shape \(2, 2\)"):
        save_nifti(np.zeros((2, 2)), np.eye(4), tmp_path / "a.nii")
    with pytest.raises(ValueError, match=r"4x4, got shape \(3, 3\)"):
        save_nifti(np.zeros((2, 2, 2)), np.eye(3), tmp_path / "a.nii")
