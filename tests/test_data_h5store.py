"""Tests for the HDF5 store: exact round trip, chunked patch reads, atomic writes, CLI."""

import io
import os
import pickle

import h5py
import numpy as np
import pytest

from mednets.data import H5Volumes, RandomPatches, convert_to_h5, make_phantom, subject_from_dir
from mednets.data.convert import main as convert_main
from mednets.data.nifti import save_nifti

SHAPE = (40, 36, 28)


@pytest.fixture(scope="module")
def phantoms():
    items = []
    for i in range(3):
        image, label = make_phantom(SHAPE, seed=i, tumour=i != 2)
        items.append((f"ph{i}", image, label))
    return items


@pytest.fixture(scope="module")
def store_path(phantoms, tmp_path_factory):
    path = tmp_path_factory.mktemp("h5") / "phantoms.h5"
    convert_to_h5(phantoms, path, chunks=(16, 16, 16), progress=False)
    return path


@pytest.mark.parametrize("compression", ["lzf", "gzip", None], ids=str)
def test_round_trip_is_exact(phantoms, tmp_path, compression):
    path = tmp_path / "s.h5"
    summary = convert_to_h5(phantoms, path, compression=compression, progress=False)
    assert summary["written"] == ["ph0", "ph1", "ph2"] and summary["n_subjects"] == 3
    store = H5Volumes(path)
    assert len(store) == 3 and store.ids == ["ph0", "ph1", "ph2"]
    for sid, image, label in phantoms:
        got_image, got_label = store.read(sid)
        assert got_image.dtype == np.float32 and got_label.dtype == np.uint8
        np.testing.assert_array_equal(got_image, image)
        np.testing.assert_array_equal(got_label, label)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of a temporary file
    with h5py.File(path) as f:
        ds = f["subjects/ph0/image"]
        assert ds.chunks == (4, 16, 16, 16) and ds.compression == compression


def test_metadata_and_foreground(store_path, phantoms):
    store = H5Volumes(store_path)
    meta = store.meta("ph0")
    assert meta["modalities"] == ["flair", "t1", "t1ce", "t2"]
    assert meta["offset"] == (0, 0, 0) and meta["full_shape"] == SHAPE and meta["shape"] == SHAPE
    assert meta["label_convention"] == "brats2018" and store.meta("ph2")["label_convention"] is None
    image, label = phantoms[0][1], phantoms[0][2]
    brain = image.any(axis=0)
    np.testing.assert_allclose(meta["mean"], image[:, brain].mean(axis=1), rtol=1e-5)
    fg = store.foreground("ph0")
    assert fg.shape == (int((label > 0).sum()), 3)
    assert np.all(label[tuple(fg.T)] > 0)
    assert store.foreground("ph2").shape == (0, 3)


def test_crop_foreground_stores_offset(phantoms, tmp_path):
    path = tmp_path / "c.h5"
    convert_to_h5(phantoms[:1], path, crop_foreground=True, margin=1, progress=False)
    store = H5Volumes(path)
    meta = store.meta("ph0")
    image, label = store.read("ph0")
    start = meta["offset"]
    box = tuple(slice(s, s + n) for s, n in zip(start, image.shape[1:]))
    np.testing.assert_array_equal(image, phantoms[0][1][(slice(None),) + box])
    np.testing.assert_array_equal(label, phantoms[0][2][box])
    assert image.shape[1:] != SHAPE and meta["full_shape"] == SHAPE
    # Nothing but background was cut away.
    assert phantoms[0][1].any(axis=0).sum() == image.any(axis=0).sum()


def test_read_patch_equals_numpy_slice(store_path, phantoms):
    store = H5Volumes(store_path)
    image, label = store.read_patch("ph1", (5, 7, 3), (16, 20, 9))
    np.testing.assert_array_equal(image, phantoms[1][1][:, 5:21, 7:27, 3:12])
    np.testing.assert_array_equal(label, phantoms[1][2][5:21, 7:27, 3:12])
    with pytest.raises(
        ValueError,
        match=r"start \(30, 0, 0\) with size \(16, 16, 16\) does not fit in volume of shape \(40, 36, 28\)",
    ):
        store.read_patch("ph1", (30, 0, 0), (16, 16, 16))
    with pytest.raises(KeyError, match="'nope' not in"):
        store.read("nope")


class _CountingFile(io.FileIO):
    """A file that counts the bytes read through it."""

    bytes_read = 0

    def readinto(self, b):
        n = super().readinto(b)
        _CountingFile.bytes_read += n or 0
        return n


def test_read_patch_reads_only_needed_chunks(phantoms, tmp_path):
    path = tmp_path / "big.h5"
    image, label = make_phantom((64, 64, 64), seed=0)
    convert_to_h5([("a", image, label)], path, chunks=(16, 16, 16), compression=None, progress=False)

    class CountingStore(H5Volumes):
        def _open(self):
            return h5py.File(_CountingFile(self.path, "r"), "r")

    store = CountingStore(path)
    store.read_patch("a", (0, 0, 0), (8, 8, 8))  # warm up: metadata
    _CountingFile.bytes_read = 0
    patch, _ = store.read_patch("a", (16, 16, 16), (16, 16, 16))  # exactly one chunk
    one_chunk = 4 * 16**3 * 4 + 16**3
    assert one_chunk <= _CountingFile.bytes_read < 1.5 * one_chunk, _CountingFile.bytes_read
    np.testing.assert_array_equal(patch, image[:, 16:32, 16:32, 16:32])
    _CountingFile.bytes_read = 0
    store.read("a")
    assert _CountingFile.bytes_read >= 64 * one_chunk


def test_pickle_drops_the_handle(store_path):
    store = H5Volumes(store_path)
    store.read_patch("ph0", (0, 0, 0), (4, 4, 4))
    assert store._file is not None
    clone = pickle.loads(pickle.dumps(store))
    assert clone._file is None and clone.ids == store.ids
    np.testing.assert_array_equal(clone.read("ph0")[0], store.read("ph0")[0])
    store.close()
    assert store._file is None


def test_append_skips_present_subjects(phantoms, tmp_path):
    path = tmp_path / "a.h5"
    convert_to_h5(phantoms[:2], path, progress=False)
    with pytest.raises(FileExistsError, match="append=True"):
        convert_to_h5(phantoms, path, progress=False)
    modified = [(sid, image + 1, label) for sid, image, label in phantoms]
    summary = convert_to_h5(modified, path, append=True, progress=False)
    assert (
        summary["written"] == ["ph2"] and summary["skipped"] == ["ph0", "ph1"] and summary["n_subjects"] == 3
    )
    store = H5Volumes(path)
    np.testing.assert_array_equal(store.read("ph0")[0], phantoms[0][1])  # untouched
    np.testing.assert_array_equal(store.read("ph2")[0], phantoms[2][1] + 1)
    with pytest.raises(
        ValueError, match=r"stores modalities \['flair', 't1', 't1ce', 't2'\], got \['t1', 't2'\]"
    ):
        convert_to_h5(
            [("x", phantoms[0][1][:2], None)], path, modalities=("t1", "t2"), append=True, progress=False
        )
    summary = convert_to_h5(phantoms[:1], path, overwrite=True, progress=False)
    assert H5Volumes(path).ids == ["ph0"]


def _nifti_subject(directory, sid, shape=(8, 8, 8), seg_shape=None):
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for mod in ("t1", "t1ce", "t2", "flair"):
        save_nifti(rng.random(shape).astype(np.float32) + 1, np.eye(4), directory / f"{sid}_{mod}.nii.gz")
    save_nifti(np.zeros(seg_shape or shape, np.uint8), np.eye(4), directory / f"{sid}_seg.nii.gz")
    return subject_from_dir(directory)


def test_bad_subject_leaves_no_file(phantoms, tmp_path):
    good = _nifti_subject(tmp_path / "data" / "A", "A")
    bad = _nifti_subject(tmp_path / "data" / "B", "B", seg_shape=(8, 8, 7))
    out = tmp_path / "out" / "store.h5"
    with pytest.raises(
        ValueError, match=r"B_flair.nii.gz has shape \(8, 8, 8\) but .*B_seg.nii.gz has shape \(8, 8, 7\)"
    ):
        convert_to_h5([good, bad], out, progress=False)
    assert not out.exists()
    assert list(out.parent.iterdir()) == [], "temporary file left behind"
    # An interrupted append leaves the previous store unchanged.
    convert_to_h5([good], out, progress=False)
    before = out.read_bytes()
    with pytest.raises(ValueError):
        convert_to_h5([bad], out, append=True, progress=False)
    assert out.read_bytes() == before and len(list(out.parent.iterdir())) == 1


def test_convert_argument_errors(phantoms, tmp_path):
    with pytest.raises(ValueError, match=r"duplicates \['ph0'\]"):
        convert_to_h5([phantoms[0], phantoms[0]], tmp_path / "d.h5", progress=False)
    with pytest.raises(ValueError, match=r"without '/'.*got \['imagesTr/case_1'\]"):
        convert_to_h5([("imagesTr/case_1", *phantoms[0][1:])], tmp_path / "d.h5", progress=False)
    with pytest.raises(ValueError, match="compression must be one of .* got 'zip'"):
        convert_to_h5(phantoms, tmp_path / "d.h5", compression="zip", progress=False)
    with pytest.raises(ValueError, match=r"image has 4 channels but 2 modalities"):
        convert_to_h5(phantoms, tmp_path / "d.h5", modalities=("t1", "t2"), progress=False)
    with pytest.raises(
        ValueError, match=r"expected a Subject, a directory or an \(id, image, label\) tuple, got int"
    ):
        convert_to_h5([3], tmp_path / "d.h5", progress=False)
    assert not list(tmp_path.iterdir())


def test_not_a_store(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(
        ValueError, match=r"not a mednets store: format 'something-else', expected 'mednets-h5-v1'"
    ):
        H5Volumes(tmp_path / "other.h5")
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        H5Volumes(tmp_path / "missing.h5")


def test_cli(tmp_path, capsys):
    _nifti_subject(tmp_path / "data" / "HGG" / "S2", "S2")
    _nifti_subject(tmp_path / "data" / "LGG" / "S1", "S1")
    out = tmp_path / "out.h5"
    assert convert_main([str(tmp_path / "data"), str(out), "--crop-foreground", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "found 2 subjects" in text and "wrote 2 subjects, skipped 0" in text and "MiB" in text
    assert H5Volumes(out).ids == ["S1", "S2"]
    assert convert_main([str(tmp_path / "data"), str(out), "--append", "--quiet"]) == 0
    assert "wrote 0 subjects, skipped 2" in capsys.readouterr().out
    # Bad input: a clear message and no file.
    (tmp_path / "data" / "LGG" / "S1" / "S1_t2.nii.gz").unlink()
    assert convert_main([str(tmp_path / "data"), str(tmp_path / "new.h5"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "missing modalities ['t2']" in err and "no file was written" in err
    assert not (tmp_path / "new.h5").exists()


def test_random_patches(store_path):
    patches = RandomPatches(store_path, (16, 16, 16), samples_per_epoch=9, foreground_fraction=1.0, seed=1)
    assert len(patches) == 9
    image, target = patches[0]
    assert image.shape == (4, 16, 16, 16) and image.dtype == np.float32
    assert target.shape == (16, 16, 16) and target.dtype == np.int64
    assert set(np.unique(target).tolist()) <= {0, 1, 2, 3}
    # Every tumour subject's patch is centred on tumour when foreground_fraction=1.
    for i in (0, 1, 3, 4):
        assert patches[i][1].any()
    np.testing.assert_array_equal(patches.get(4)[0], patches.get(4)[0])  # reproducible
    patches.set_epoch(1)
    assert not np.array_equal(patches.get(4)[0], patches.get(4, epoch=0)[0])
    regions = RandomPatches(
        store_path, (16, 16, 16), samples_per_epoch=3, target="regions", foreground_fraction=1.0
    )
    img, reg = regions[0]
    assert reg.shape == (3, 16, 16, 16) and reg.dtype == np.float32
    assert np.all(reg[2] <= reg[1]) and np.all(reg[1] <= reg[0])  # ET inside TC inside WT
    with pytest.raises(
        ValueError, match=r"patch size \(64, 16, 16\) is larger than subject 'ph0' of shape \(40, 36, 28\)"
    ):
        RandomPatches(store_path, (64, 16, 16))
    with pytest.raises(ValueError, match="target must be 'classes' or 'regions', got 'onehot'"):
        RandomPatches(store_path, (8, 8, 8), target="onehot")
    with pytest.raises(IndexError, match="index 9 out of range for 9"):
        patches.get(9)


# --- label conventions and non-BraTS stores ---------------------------------------------


def _labelled_dir(directory, sid, suffixes, label):
    """A subject folder with one-voxel-per-value images and the given label map."""
    directory.mkdir(parents=True)
    for i, suffix in enumerate(suffixes):
        save_nifti(np.full(label.shape, i + 1.0, np.float32), np.eye(4), directory / f"{sid}{suffix}.nii.gz")
    save_nifti(label.astype(np.uint8), np.eye(4), directory / f"{sid}{suffixes[-1][0]}seg.nii.gz")


def _tumour(values):
    """Oedema (6^3) around a core (2^3) with one enhancing voxel; values = (oedema, core, enhancing)."""
    label = np.zeros((8, 8, 8), np.uint8)
    label[1:7, 1:7, 1:7], label[3:5, 3:5, 3:5], label[4, 4, 4] = values
    return label


def test_store_records_the_convention_and_the_sampler_follows_it(tmp_path):
    image = np.ones((4, 8, 8, 8), np.float32)
    expected = _tumour((2, 1, 3))  # the classes: 1 core, 2 oedema, 3 enhancing
    for convention, values in (("brats2018", (2, 1, 4)), ("brats2023", (2, 1, 3)), ("msd", (1, 2, 3))):
        path = tmp_path / f"{convention}.h5"
        convert_to_h5([("t", image, _tumour(values))], path, label_convention=convention, progress=False)
        store = H5Volumes(path)
        assert store.label_convention == convention and store.meta("t")["label_convention"] == convention
        np.testing.assert_array_equal(store.read("t")[1], _tumour(values))  # stored as on disk
        patches = RandomPatches(store, (8, 8, 8), normalise=False)
        np.testing.assert_array_equal(patches[0][1], expected)
        regions = RandomPatches(store, (8, 8, 8), normalise=False, target="regions")[0][1]
        assert regions.reshape(3, -1).sum(axis=1).tolist() == [6**3, 2**3, 1]


def test_store_refuses_mixed_conventions_naming_the_subjects(tmp_path):
    label = _tumour((2, 1, 4))
    _labelled_dir(tmp_path / "old" / "A", "A", ("_t1", "_t1ce", "_t2", "_flair"), label)
    _labelled_dir(tmp_path / "new" / "B", "B", ("-t1n", "-t1c", "-t2w", "-t2f"), _tumour((2, 1, 3)))
    subjects = [subject_from_dir(tmp_path / "old" / "A"), subject_from_dir(tmp_path / "new" / "B")]
    out = tmp_path / "mixed.h5"
    with pytest.raises(
        ValueError, match=r"different label conventions .*subject 'B' is 'brats2023'.*brats2018: \['A'\]"
    ):
        convert_to_h5(subjects, out, progress=False)
    assert not out.exists()
    # Arrays: {0, 3} can only be brats2023 or msd, not the 2018 store's convention.
    image = np.ones((4, 8, 8, 8), np.float32)
    only_et = np.zeros((8, 8, 8), np.uint8)
    only_et[4, 4, 4] = 3
    with pytest.raises(
        ValueError, match=r"subject 'b' is one of \['brats2023', 'msd'\], but brats2018: \['a'\]"
    ):
        convert_to_h5([("a", image, label), ("b", image, only_et)], out, progress=False)
    convert_to_h5([("a", image, label)], out, progress=False)
    with pytest.raises(ValueError, match="stores label convention 'brats2018', got label_convention='msd'"):
        convert_to_h5([("c", image, label)], out, append=True, label_convention="msd", progress=False)


def test_array_route_names_the_subject(tmp_path):
    image = np.ones((4, 8, 8, 8), np.float32)
    for label, match in (
        (_tumour((2, 1, 3)), r"subject 'x': label values \[0, 1, 2, 3\] fit several"),
        (_tumour((2, 1, 7)), r"subject 'x': label values \[0, 1, 2, 7\] fit no label convention"),
        (_tumour((2, 1, 4)) * 0.5, r"subject 'x': a label map must hold integers.*\[0.5\]"),
    ):
        with pytest.raises(ValueError, match=match):
            convert_to_h5([("x", image, label)], tmp_path / "x.h5", progress=False)
    with pytest.raises(ValueError, match=r"subject 'x': label values must lie in 0..255.*0..300"):
        convert_to_h5([("x", image, np.full((8, 8, 8), 300))], tmp_path / "x.h5", label_convention="plain")
    with pytest.raises(ValueError, match=r"subject 'x': image must hold real numbers, got dtype complex128"):
        convert_to_h5([("x", image.astype(complex), None)], tmp_path / "x.h5", progress=False)
    assert not list(tmp_path.iterdir())


def test_one_channel_store_with_plain_labels(tmp_path):
    # A Decathlon-like task: one channel named in dataset.json, labels 0 background,
    # 1 anterior, 2 posterior hippocampus (no tumour convention).
    rng = np.random.default_rng(0)
    items = []
    for i in range(3):
        image = rng.random((1, 12, 14, 10)).astype(np.float64) * 100 + 1  # float64, as NumPy makes it
        label = np.zeros((12, 14, 10), np.int16)  # int16, as some NIfTI files store it
        label[3:7, 4:9, 2:6] = 1
        label[7:10, 4:9, 2:6] = 2
        items.append((f"hippocampus_{i:03d}", image, label))
    path = tmp_path / "hippo.h5"
    convert_to_h5(items, path, modalities=("MRI",), label_convention="plain", progress=False)
    store = H5Volumes(path)
    assert store.modalities == ("MRI",) and store.label_convention == "plain"
    np.testing.assert_array_equal(store.read("hippocampus_001")[1], items[1][2])
    patches = RandomPatches(store, (12, 14, 10), foreground_fraction=1.0)
    image, target = patches[1]
    assert image.shape == (1, 12, 14, 10) and target.dtype == np.int64
    np.testing.assert_array_equal(target, items[1][2])  # labels as they are: 2 stays 2
    small = RandomPatches(store, (4, 4, 4), samples_per_epoch=6, foreground_fraction=1.0, augment=True)
    assert all(set(np.unique(small[i][1]).tolist()) <= {0, 1, 2} and small[i][1].any() for i in range(6))
    with pytest.raises(ValueError, match="target='regions' needs tumour labels.*plain"):
        RandomPatches(store, (4, 4, 4), target="regions")
    # Without saying "plain", {0, 1, 2} reads as a tumour and is ambiguous: an error, not a guess.
    with pytest.raises(ValueError, match="subject 'hippocampus_000'.*pass label_convention=.*'plain'"):
        convert_to_h5(items, tmp_path / "h2.h5", modalities=("MRI",), progress=False)
    # Appending to a plain store keeps it plain; channel names must match.
    convert_to_h5([("extra", *items[0][1:])], path, modalities=("MRI",), append=True, progress=False)
    assert H5Volumes(path).label_convention == "plain"
    with pytest.raises(ValueError, match=r"it stores modalities \['MRI'\], got \['CT'\]"):
        convert_to_h5([("more", *items[0][1:])], path, modalities=("CT",), append=True, progress=False)
    with pytest.raises(ValueError, match="distinct non-empty channel names"):
        convert_to_h5(items, tmp_path / "h3.h5", modalities=("MRI", "MRI"), label_convention="plain")


def test_mednets_data_imports_no_framework():
    import subprocess
    import sys

    code = (
        "import sys, mednets, mednets.data, mednets.metrics, mednets.data.convert\n"
        "bad = [m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_label_convention(tmp_path, capsys):
    # 2023 naming, but the labels hold 4: the converter refuses, unless told.
    folder = tmp_path / "data" / "BraTS-GLI-00001-000"
    _labelled_dir(folder, "BraTS-GLI-00001-000", ("-t1n", "-t1c", "-t2w", "-t2f"), _tumour((2, 1, 4)))
    out = tmp_path / "out.h5"
    assert convert_main([str(tmp_path / "data"), str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "'BraTS-GLI-00001-000'" in err and "[4] are not in the 'brats2023' convention" in err
    assert not out.exists()
    assert convert_main([str(tmp_path / "data"), str(out), "--quiet", "--label-convention", "brats2018"]) == 0
    assert H5Volumes(out).label_convention == "brats2018"


def test_read_patch_outside_names_the_subject(store_path):
    with pytest.raises(ValueError, match=r"subject 'ph1' in .*phantoms.h5: patch start \(30, 0, 0\)"):
        H5Volumes(store_path).read_patch("ph1", (30, 0, 0), (16, 16, 16))
