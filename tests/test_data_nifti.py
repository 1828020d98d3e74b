"""Tests for mednets.data.nifti: canonical RAS+ loading, dtypes and error messages."""

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mednets.data.nifti import load_nifti, orientation, save_like, save_nifti

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


def test_channels_4d_and_3d(tmp_path):
    data = np.arange(3 * 4 * 2 * 4, dtype=np.float32).reshape(3, 4, 2, 4)  # (X, Y, Z, C) on disk
    path = tmp_path / "multi.nii.gz"
    nib.save(nib.Nifti1Image(data, LPS), str(path))
    array, affine, info = load_nifti(path, channels=True)
    assert array.shape == (4, 3, 4, 2) and info["orientation"] == "LPS"
    for c in range(4):
        np.testing.assert_array_equal(array[c], data[::-1, ::-1, :, c])
    single, _, _ = load_nifti(save_nifti(data[..., 0], LPS, tmp_path / "one.nii"), channels=True)
    assert single.shape == (1, 3, 4, 2)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2, 2), np.float32), np.eye(4)), str(tmp_path / "five.nii"))
    with pytest.raises(
        ValueError, match=r"five\.nii: expected a 3D or 4D volume .*got shape \(2, 2, 2, 2, 2\)"
    ):
        load_nifti(tmp_path / "five.nii", channels=True)


# --- save_like: predictions back on the input's grid -------------------------------------------


def oblique_affine():
    """A rotated, anisotropic, translated grid whose axes are stored roughly (P, I, R)."""

    def rot(axis, degrees):
        a = np.deg2rad(degrees)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
        return r

    pir = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)  # disk axes -> P, I, R
    affine = np.eye(4)
    affine[:3, :3] = rot(2, 20) @ rot(0, -15) @ pir @ np.diag([0.9, 1.2, 2.5])
    affine[:3, 3] = [-30.0, 12.5, 40.0]
    return affine


def _stored(path):
    """The array as the file stores it: on-disk axis order, on-disk dtype, unscaled."""
    return np.asanyarray(nib.load(str(path)).dataobj.get_unscaled())


@pytest.mark.parametrize(
    "name, affine", [("lps", np.diag([-0.8, -0.8, 3.0, 1.0])), ("oblique", oblique_affine())]
)
def test_save_like_lines_up_with_the_reference(tmp_path, name, affine):
    disk = np.random.default_rng(0).integers(0, 1000, (7, 5, 4)).astype(np.int16)
    ref = save_nifti(disk, affine, tmp_path / f"{name}.nii.gz")
    assert orientation(affine) != "RAS"
    image, ras_affine, info = load_nifti(ref)
    assert image.shape != disk.shape or not np.array_equal(image, disk)  # load_nifti did reorient
    prediction = (image > 500).astype(np.uint8)  # a "segmentation" made on the RAS array
    out = save_like(prediction, ref, tmp_path / "pred" / f"{name}_pred.nii.gz", dtype=np.uint8)
    written = nib.load(str(out))
    # The written file has the reference's affine and on-disk axis order ...
    np.testing.assert_array_equal(written.affine, nib.load(str(ref)).affine)
    assert written.shape == disk.shape and written.get_data_dtype() == np.uint8
    # ... and its voxels line up with the reference's: stored voxel (i, j, k) of the
    # prediction is the prediction for stored voxel (i, j, k) of the scan.
    np.testing.assert_array_equal(_stored(out), (disk > 500).astype(np.uint8))
    # The same world point: voxel (1, 2, 3) on disk is where load_nifti put it.
    ijk = np.array([1, 2, 3, 1])
    ras_ijk = np.linalg.solve(ras_affine, affine @ ijk).round().astype(int)[:3]
    assert prediction[tuple(ras_ijk)] == _stored(out)[1, 2, 3]
    # Loading the prediction gives back the RAS array it came from.
    again, again_affine, _ = load_nifti(out, dtype=np.uint8)
    np.testing.assert_array_equal(again, prediction)
    np.testing.assert_allclose(again_affine, ras_affine)
    assert sorted(os.listdir(out.parent)) == [out.name]  # no temporary file left


@pytest.mark.parametrize(
    "disk_dtype", [np.float32, np.float64, np.int16, np.uint8], ids=lambda d: np.dtype(d).name
)
@pytest.mark.parametrize("name, affine", [("lps", LPS), ("oblique", oblique_affine())])
def test_round_trip_gives_back_the_stored_bytes(tmp_path, disk_dtype, name, affine):
    disk = (np.random.default_rng(1).random((6, 5, 3)) * 100).astype(disk_dtype)
    ref = save_nifti(disk, affine, tmp_path / "ref.nii.gz")
    # float32 (the default) holds every float32, uint8 and int16 value; float64 needs float64.
    array, _, _ = load_nifti(ref, dtype=np.float64 if disk_dtype == np.float64 else np.float32)
    out = save_like(array, ref, tmp_path / "copy.nii.gz")
    stored, again = _stored(ref), _stored(out)
    assert again.dtype == stored.dtype == np.dtype(disk_dtype)
    assert again.tobytes() == stored.tobytes()
    assert nib.load(str(out)).header.get_zooms() == nib.load(str(ref)).header.get_zooms()


def shared_hippocampus() -> Path:
    root = Path(os.environ["MEDNETS_DATA"]) if os.environ.get("MEDNETS_DATA") else None
    root = root or Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return root / "msd-hippocampus"


@pytest.mark.parametrize(
    "relpath",
    [
        "imagesTr/hippocampus_001.nii.gz",  # uint8 image
        "imagesTr/hippocampus_004.nii.gz",  # float32 image
        "labelsTr/hippocampus_003.nii.gz",  # float32 label
        "labelsTr/hippocampus_001.nii.gz",  # uint8 label
    ],
)
def test_round_trip_on_real_files(tmp_path, relpath):
    ref = shared_hippocampus() / relpath
    array, _, _ = load_nifti(ref)
    out = save_like(array, ref, tmp_path / "copy.nii.gz")
    assert _stored(out).dtype == _stored(ref).dtype
    assert _stored(out).tobytes() == _stored(ref).tobytes()
    np.testing.assert_array_equal(nib.load(str(out)).affine, nib.load(str(ref)).affine)


def test_round_trip_keeps_the_reference_scaling(tmp_path):
    raw = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    img = nib.Nifti1Image(raw, LPS)
    img.header.set_slope_inter(2.5, -10.0)
    ref = tmp_path / "scaled.nii.gz"
    nib.save(img, str(ref))
    array, _, _ = load_nifti(ref)
    assert array.max() == 59 * 2.5 - 10  # load_nifti applies the scaling
    out = save_like(array, ref, tmp_path / "copy.nii.gz")
    assert _stored(out).dtype == np.int16 and _stored(out).tobytes() == raw.tobytes()
    np.testing.assert_array_equal(load_nifti(out)[0], array)
    # An explicit dtype is written unscaled.
    mask = save_like(array > 0, ref, tmp_path / "mask.nii.gz", dtype=np.uint8)
    np.testing.assert_array_equal(_stored(mask), (raw * 2.5 - 10 > 0).astype(np.uint8))
    assert nib.load(str(mask)).dataobj.slope == 1.0


def test_save_like_channels(tmp_path):
    disk = np.random.default_rng(2).random((4, 3, 2, 4)).astype(np.float32)  # (X, Y, Z, C), LPS
    ref = tmp_path / "multi.nii.gz"
    nib.save(nib.Nifti1Image(disk, LPS), str(ref))
    array, _, _ = load_nifti(ref, channels=True)
    assert array.shape == (4, 4, 3, 2)
    out = save_like(array, ref, tmp_path / "copy.nii.gz")
    assert _stored(out).tobytes() == disk.tobytes()
    label = save_like(array[0] > 0.5, ref, tmp_path / "label.nii", dtype=np.uint8)  # 3D on a 4D reference
    np.testing.assert_array_equal(_stored(label), (disk[..., 0] > 0.5).astype(np.uint8))


def test_save_like_bad_input(tmp_path):
    ref = save_nifti(np.zeros((4, 5, 3), np.float32), LPS, tmp_path / "ref.nii.gz")
    with pytest.raises(
        ValueError, match=r"ref\.nii\.gz: expected .*RAS\+ grid, spatial shape \(4, 5, 3\), got \(5, 4, 3\)"
    ):
        save_like(np.zeros((5, 4, 3)), ref, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match=r"\(X, Y, Z\) or \(C, X, Y, Z\), got shape \(4, 5\)"):
        save_like(np.zeros((4, 5)), ref, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match=r"a\.nii\.gz: expected whole numbers for dtype uint8"):
        save_like(np.full((4, 5, 3), 0.5), ref, tmp_path / "a.nii.gz", dtype=np.uint8)
    with pytest.raises(ValueError, match=r"values must be in \[0, 255\] for dtype uint8, got \[0.0, 300.0\]"):
        save_like(
            np.pad(np.full((1, 1, 1), 300.0), ((0, 3), (0, 4), (0, 2))),
            ref,
            tmp_path / "a.nii.gz",
            dtype=np.uint8,
        )
    with pytest.raises(FileNotFoundError, match=r"missing\.nii\.gz"):
        save_like(np.zeros((4, 5, 3)), tmp_path / "missing.nii.gz", tmp_path / "a.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.nii.gz"]


def test_save_like_is_atomic(tmp_path, monkeypatch):
    ref = save_nifti(np.ones((4, 5, 3), np.float32), LPS, tmp_path / "ref.nii.gz")
    out = tmp_path / "pred.nii.gz"
    out.write_bytes(b"the previous prediction")

    def failing_save(img, filename):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_like(np.zeros((4, 5, 3)), ref, out)
    assert out.read_bytes() == b"the previous prediction"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.nii.gz", "ref.nii.gz"]
