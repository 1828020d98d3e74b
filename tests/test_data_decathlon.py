"""Tests for mednets.data.decathlon: the Decathlon layout, its download, and the fixed split.

The shared copy of Task04 (260 real cases) is always present in CI: MEDNETS_DATA points
at it, and a developer checkout sees it at ``../shared/data``. The archive layout, 4D
images, every error and the download are exercised on tiny files made in tmp_path; the
download uses ``file://`` URLs, never the network.
"""

import hashlib
import io
import json
import os
import tarfile
import urllib.error
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mednets.data.decathlon import (
    HIPPOCAMPUS_SPLIT_SEED,
    HIPPOCAMPUS_SPLIT_SIZES,
    TASKS,
    DecathlonCase,
    DecathlonNotAvailable,
    DecathlonTask,
    decathlon_cases,
    hippocampus_split,
    label_names,
    load_case,
    msd_task_dir,
    msd_task_dirs,
    read_dataset_json,
    split_cases,
)
from mednets.data.nifti import orientation
from mednets.data.samples import SampleNotAvailable


def shared_data() -> Path:
    """The shared data folder: $MEDNETS_DATA, else ../shared/data beside the repository."""
    if os.environ.get("MEDNETS_DATA"):
        return Path(os.environ["MEDNETS_DATA"])
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


HIPPO = shared_data() / "msd-hippocampus"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
TUMOUR_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


# --- helpers: a small task in the publisher's archive layout --------------------------------


def _save(array, affine, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.set_data_dtype(np.asarray(array).dtype)
    nib.save(img, str(path))


def make_task(
    root, cases, *, labels=None, test_cases=(), affine=None, label_affines=None, junk=True, listed=True
):
    """Write a task folder as the publisher's archive has it.

    ``cases`` maps case id -> (image, label); ``dataset.json`` lists them as
    ``./imagesTr/x.nii.gz`` pairs (when ``listed``) and ``test`` as a list of paths;
    every folder also gets a macOS ``._*`` companion (not NIfTI) when ``junk``.
    """
    root = Path(root)
    affine = np.eye(4) if affine is None else affine
    label_affines = label_affines or {}
    for cid, (image, label) in cases.items():
        _save(image, affine, root / "imagesTr" / f"{cid}.nii.gz")
        if label is not None:
            _save(label, label_affines.get(cid, affine), root / "labelsTr" / f"{cid}.nii.gz")
    for cid in test_cases:
        _save(np.zeros((3, 4, 5), np.float32), affine, root / "imagesTs" / f"{cid}.nii.gz")
    if junk:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / f"._{sub}_junk.nii.gz").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    meta = {
        "name": "Toy",
        "labels": labels or {"0": "background", "1": "Anterior", "2": "Posterior"},
        "modality": {"0": "MRI"},
        "numTraining": len(cases),
        "numTest": len(test_cases),
    }
    if listed:
        meta["training"] = [
            {"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"} for cid in cases
        ]
        meta["test"] = [f"./imagesTs/{cid}.nii.gz" for cid in test_cases]
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root


def toy_case(shape=(5, 6, 4), seed=0, image_dtype=np.float32, label_dtype=np.uint8):
    rng = np.random.default_rng(seed)
    image = (rng.random(shape) * 200).astype(image_dtype)
    label = rng.integers(0, 3, shape).astype(label_dtype)
    return image, label


# --- the shared copy of Task04 -------------------------------------------------------------


def test_shared_copy_is_found_and_listed(monkeypatch):
    monkeypatch.setenv("MEDNETS_DATA", str(shared_data()))
    assert msd_task_dir(download=False) == HIPPO
    assert msd_task_dirs()[0] == HIPPO
    cases = decathlon_cases(HIPPO)
    assert len(cases) == 260 and len({c.case_id for c in cases}) == 260
    assert cases[0] == DecathlonCase(
        "hippocampus_001",
        HIPPO / "imagesTr/hippocampus_001.nii.gz",
        HIPPO / "labelsTr/hippocampus_001.nii.gz",
    )
    assert all(c.image_path.is_file() and c.label_path.is_file() for c in cases)
    assert label_names(HIPPO) == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert read_dataset_json(HIPPO)["numTraining"] == 260
    assert decathlon_cases(HIPPO, labelled=False) == []  # this copy holds no imagesTs


def test_shared_copy_dtype_census_from_headers():
    cases = decathlon_cases(HIPPO)
    images = Counter(str(nib.load(c.image_path).get_data_dtype()) for c in cases)
    assert images == {"float32": 205, "uint8": 55}
    float_labels = sorted(c.case_id for c in cases if nib.load(c.label_path).get_data_dtype() != np.uint8)
    assert float_labels == ["hippocampus_003", "hippocampus_243"]


@pytest.mark.parametrize(
    "case_id", ["hippocampus_001", "hippocampus_004", "hippocampus_003", "hippocampus_243"]
)
def test_shared_copy_loads_every_dtype(case_id):
    case = next(c for c in decathlon_cases(HIPPO) if c.case_id == case_id)
    image, label, meta = load_case(case)
    raw_image = np.asarray(nib.load(case.image_path).dataobj)
    raw_label = np.asarray(nib.load(case.label_path).dataobj)
    assert image.dtype == np.float32 and image.shape == (1, *raw_image.shape)
    assert label.dtype == np.uint8 and label.shape == raw_image.shape
    # The files are RAS already: the arrays are the stored values.
    assert meta["orientation"] == "RAS" and meta["spacing"] == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(image[0], raw_image.astype(np.float32))
    np.testing.assert_array_equal(label, raw_label.astype(np.uint8))
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    assert meta["image_dtype"] == str(raw_image.dtype) and meta["label_dtype"] == str(raw_label.dtype)
    assert meta["case_id"] == case_id


# --- the split -----------------------------------------------------------------------------


def test_hippocampus_split_is_disjoint_complete_and_stable():
    split = hippocampus_split(HIPPO)
    ids = {c.case_id for c in decathlon_cases(HIPPO)}
    assert [len(split[k]) for k in ("train", "val", "test")] == list(HIPPOCAMPUS_SPLIT_SIZES) == [180, 30, 50]
    train, val, test = (set(split[k]) for k in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    assert train | val | test == ids
    # Pinned: the chapter's and the benchmark's held-out cases must never move.
    assert split["test"][:3] == ["hippocampus_014", "hippocampus_023", "hippocampus_025"]
    assert HIPPOCAMPUS_SPLIT_SEED == 0
    # Same split whatever the order of the ids, and a different one for another seed.
    assert split_cases(sorted(ids, reverse=True)) == split
    assert split_cases(sorted(ids), seed=1)["test"] != split["test"]


def test_split_bad_input():
    ids = [f"c{i}" for i in range(10)]
    with pytest.raises(ValueError, match=r"summing to the 10 cases, got \(6, 2, 1\) \(sum 9\)"):
        split_cases(ids, sizes=(6, 2, 1))
    with pytest.raises(ValueError, match=r"three non-negative sizes"):
        split_cases(ids, sizes=(12, -2, 0))
    with pytest.raises(ValueError, match=r"unique case ids, got repeats \['c1'\]"):
        split_cases([*ids[:9], "c1"], sizes=(6, 2, 2))
    small = split_cases(ids, sizes=(6, 2, 2), seed=3)
    assert sorted(small["train"] + small["val"] + small["test"]) == sorted(ids)


# --- layouts, 4D images, and errors, on tiny files -----------------------------------------


def test_archive_layout_skips_macos_files_and_reads_imagests(tmp_path):
    root = make_task(
        tmp_path / "Task04",
        {"hippocampus_002": toy_case(), "hippocampus_001": toy_case(seed=1)},
        test_cases=["hippocampus_267", "hippocampus_266"],
    )
    cases = decathlon_cases(root)
    assert [c.case_id for c in cases] == ["hippocampus_001", "hippocampus_002"]
    assert cases[1].label_path == root / "labelsTr" / "hippocampus_002.nii.gz"
    unlabelled = decathlon_cases(root, labelled=False)
    assert [(c.case_id, c.label_path) for c in unlabelled] == [
        ("hippocampus_266", None),
        ("hippocampus_267", None),
    ]
    image, label, meta = load_case(unlabelled[0])
    assert image.shape == (1, 3, 4, 5) and label is None and meta["label_path"] is None
    # Without lists in dataset.json the folders are read, still skipping the ._* files.
    bare = make_task(
        tmp_path / "bare", {"b": toy_case(), "a": toy_case(seed=2)}, test_cases=["t"], listed=False
    )
    assert any(p.name.startswith("._") for p in (bare / "imagesTr").iterdir())
    assert [(c.case_id, c.label_path.name) for c in decathlon_cases(bare)] == [
        ("a", "a.nii.gz"),
        ("b", "b.nii.gz"),
    ]
    assert [c.case_id for c in decathlon_cases(bare, labelled=False)] == ["t"]
    image, label, _ = load_case(decathlon_cases(bare)[0])
    np.testing.assert_array_equal(label, toy_case(seed=2)[1])


def test_4d_task01_like_case(tmp_path):
    shape = (5, 6, 3)
    rng = np.random.default_rng(0)
    image = rng.random((*shape, 4)).astype(np.float32)  # (X, Y, Z, C) on disk, like Task01
    label = rng.integers(0, 4, shape).astype(np.uint8)
    root = make_task(tmp_path / "Task01", {"BRATS_001": (image, label)}, labels=TUMOUR_LABELS, affine=LPS)
    array, seg, meta = load_case(decathlon_cases(root)[0])
    assert array.shape == (4, 5, 6, 3) and array.dtype == np.float32
    assert meta["orientation"] == "LPS" and orientation(meta["affine"]) == "RAS"
    for c in range(4):  # LPS -> RAS flips the first two axes of every channel
        np.testing.assert_array_equal(array[c], image[::-1, ::-1, :, c])
    np.testing.assert_array_equal(seg, label[::-1, ::-1, :])
    assert label_names(root) == {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}


def test_float_and_uint8_images_and_whole_float_labels(tmp_path):
    image, label = toy_case(image_dtype=np.uint8, label_dtype=np.float32)
    root = make_task(tmp_path / "t", {"x": (image, label)})
    array, seg, meta = load_case(decathlon_cases(root)[0])
    assert meta["image_dtype"] == "uint8" and meta["label_dtype"] == "float32"
    np.testing.assert_array_equal(array[0], image.astype(np.float32))
    assert seg.dtype == np.uint8
    np.testing.assert_array_equal(seg, label.astype(np.uint8))


def test_missing_files_name_the_case(tmp_path):
    root = make_task(tmp_path / "t", {"case_7": toy_case(), "case_8": toy_case()})
    (root / "labelsTr" / "case_7.nii.gz").unlink()
    (root / "imagesTr" / "case_8.nii.gz").unlink()
    by_id = {c.case_id: c for c in decathlon_cases(root)}
    with pytest.raises(ValueError, match=r"case case_7: expected a label file at .*labelsTr/case_7\.nii\.gz"):
        load_case(by_id["case_7"])
    with pytest.raises(
        ValueError, match=r"case case_8: expected an image file at .*imagesTr/case_8\.nii\.gz"
    ):
        load_case(by_id["case_8"])
    with pytest.raises(ValueError, match=r"expected a Decathlon dataset\.json at .*nowhere/dataset\.json"):
        decathlon_cases(tmp_path / "nowhere")


def test_shape_and_affine_mismatch(tmp_path):
    image, _ = toy_case(shape=(5, 6, 4))
    _, small = toy_case(shape=(5, 6, 3))
    root = make_task(tmp_path / "s", {"case_s": (image, small)})
    with pytest.raises(
        ValueError, match=r"case case_s: .*differ in shape.*image \(5, 6, 4\), label \(5, 6, 3\)"
    ):
        load_case(decathlon_cases(root)[0])
    shifted = np.eye(4)
    shifted[:3, 3] = [0.0, 2.5, 0.0]
    root = make_task(tmp_path / "a", {"case_a": toy_case()}, label_affines={"case_a": shifted})
    with pytest.raises(
        ValueError, match=r"case case_a: .*differ in affine: image .*0\.0, 0\.0, 1\.0, 0\.0.*label .*2\.5"
    ):
        load_case(decathlon_cases(root)[0])
    # Same grid stored in another axis order is still a mismatch of the files' affines.
    root = make_task(tmp_path / "o", {"case_o": toy_case()}, label_affines={"case_o": LPS})
    with pytest.raises(ValueError, match=r"case case_o: .*affine.*\(RAS\).*\(LPS\)"):
        load_case(decathlon_cases(root)[0])


def test_label_values_checked_against_dataset_json(tmp_path):
    image, label = toy_case()
    label[0, 0, 0] = 5
    root = make_task(tmp_path / "t", {"case_5": (image, label)})
    case = decathlon_cases(root)[0]
    with pytest.raises(
        ValueError, match=r"case case_5: label values \[5\] are not listed.*\{0: 'background'"
    ):
        load_case(case)
    # Explicit names win over dataset.json.
    _, seg, _ = load_case(case, label_names={0: "bg", 1: "a", 2: "p", 5: "extra"})
    assert seg[0, 0, 0] == 5
    fractional = label.astype(np.float32)
    fractional[1, 1, 1] = 1.5
    root = make_task(tmp_path / "f", {"case_f": (image, fractional)})
    with pytest.raises(
        ValueError, match=r"case case_f: expected whole-number label values .*got \[1\.5\].*float32"
    ):
        load_case(decathlon_cases(root)[0])


def test_bad_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"expected a JSON object, got list"):
        read_dataset_json(tmp_path)
    (tmp_path / "dataset.json").write_text('{"labels": {}, "training": ["./imagesTr/a.nii.gz"]}')
    with pytest.raises(ValueError, match=r"expected a 'labels' mapping, got \{\}"):
        label_names(tmp_path)
    with pytest.raises(ValueError, match=r"expected training entries like .*got './imagesTr/a.nii.gz'"):
        decathlon_cases(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"dataset\.json is not valid JSON"):
        read_dataset_json(tmp_path)


# --- the download: file:// archives, checksums, atomic extraction ----------------------------


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No MEDNETS_DATA, and an empty cache inside tmp_path."""
    monkeypatch.delenv("MEDNETS_DATA", raising=False)
    monkeypatch.setenv("MEDNETS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def make_archive(tmp_path, name="Task99_Toy", *, big_member=0):
    """A small task .tar as the publisher ships it (one top folder, ._* files); its MD5."""
    src = make_task(
        tmp_path / "src" / name, {"toy_001": toy_case(), "toy_002": toy_case(seed=1)}, test_cases=["toy_900"]
    )
    if big_member:  # a large last member, to cut the archive in the middle of it
        (src / "imagesTr" / "zz_big.bin").write_bytes(np.random.default_rng(0).bytes(big_member))
    archive = tmp_path / f"{name}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname=name)
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def _leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []


def test_download_good_checksum(tmp_path, isolated, monkeypatch):
    archive, md5 = make_archive(tmp_path)
    monkeypatch.setitem(TASKS, "Task99_Toy", DecathlonTask("msd-toy", archive.as_uri(), md5))
    root = msd_task_dir("Task99_Toy")
    assert root == isolated / "msd-toy"
    assert _leftovers(isolated) == ["msd-toy"]  # no archive, no temporary folder
    cases = decathlon_cases(root)
    assert [c.case_id for c in cases] == ["toy_001", "toy_002"]
    image, label, _ = load_case(cases[1])
    np.testing.assert_array_equal(label, toy_case(seed=1)[1])
    assert [c.case_id for c in decathlon_cases(root, labelled=False)] == ["toy_900"]

    def no_network(*args, **kwargs):
        raise AssertionError("must not download again")

    assert msd_task_dir("Task99_Toy", opener=no_network) == root


def test_download_bad_checksum_leaves_nothing(tmp_path, isolated, monkeypatch):
    archive, md5 = make_archive(tmp_path)
    monkeypatch.setitem(TASKS, "Task99_Toy", DecathlonTask("msd-toy", archive.as_uri(), "0" * 32))
    with pytest.raises(
        ValueError, match=rf"MD5 mismatch for file://.*Task99_Toy\.tar: expected 0{{32}}, got {md5}"
    ):
        msd_task_dir("Task99_Toy")
    assert _leftovers(isolated) == []


def test_corrupt_cached_archive_is_fetched_again(tmp_path, isolated, monkeypatch):
    archive, md5 = make_archive(tmp_path)
    monkeypatch.setitem(TASKS, "Task99_Toy", DecathlonTask("msd-toy", archive.as_uri(), md5))
    isolated.mkdir(parents=True)
    (isolated / "Task99_Toy.tar").write_bytes(b"half a download")
    assert decathlon_cases(msd_task_dir("Task99_Toy"))[0].case_id == "toy_001"
    assert _leftovers(isolated) == ["msd-toy"]


def test_truncated_member_leaves_no_task_folder(tmp_path, isolated, monkeypatch):
    archive, _ = make_archive(tmp_path, big_member=300_000)
    data = archive.read_bytes()
    cut = data[: len(data) - 150_000]  # ends half way through the last member
    archive.write_bytes(cut)
    md5 = hashlib.md5(cut).hexdigest()  # the checksum is right: extraction itself fails
    monkeypatch.setitem(TASKS, "Task99_Toy", DecathlonTask("msd-toy", archive.as_uri(), md5))
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        msd_task_dir("Task99_Toy")
    # Only the verified archive is kept (for the next try): no task folder, no partial one.
    assert _leftovers(isolated) == ["Task99_Toy.tar"]
    with pytest.raises(DecathlonNotAvailable):
        msd_task_dir("Task99_Toy", download=False)


def test_interrupted_extraction_leaves_no_task_folder(tmp_path, isolated, monkeypatch):
    archive, md5 = make_archive(tmp_path)
    monkeypatch.setitem(TASKS, "Task99_Toy", DecathlonTask("msd-toy", archive.as_uri(), md5))
    written = []
    original = tarfile.TarFile.makefile

    def interrupted(self, tarinfo, targetpath):
        if len(written) == 3:
            raise KeyboardInterrupt  # Ctrl-C half way through the members
        written.append(targetpath)
        return original(self, tarinfo, targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        msd_task_dir("Task99_Toy")
    assert len(written) == 3 and all(".part" in p for p in written)  # files were written...
    assert _leftovers(isolated) == ["Task99_Toy.tar"]  # ...and removed
    monkeypatch.setattr(tarfile.TarFile, "makefile", original)

    def no_network(*args, **kwargs):
        raise AssertionError("the verified archive is reused")

    assert decathlon_cases(msd_task_dir("Task99_Toy", opener=no_network))[1].case_id == "toy_002"
    assert _leftovers(isolated) == ["msd-toy"]


def test_unsafe_archive_member_is_refused(tmp_path, isolated, monkeypatch):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(TASKS, "Task99_Toy", DecathlonTask("msd-toy", archive.as_uri(), md5))
    with pytest.raises(tarfile.OutsideDestinationError):
        msd_task_dir("Task99_Toy")
    assert not (isolated / "outside.txt").exists() and _leftovers(isolated) == ["Task99_Toy.tar"]


def test_archive_without_dataset_json(tmp_path, isolated, monkeypatch):
    archive = tmp_path / "empty.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("Task99_Toy/readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(TASKS, "Task99_Toy", DecathlonTask("msd-toy", archive.as_uri(), md5))
    with pytest.raises(ValueError, match=r"empty\.tar|Task99_Toy\.tar: expected a dataset\.json"):
        msd_task_dir("Task99_Toy")
    assert _leftovers(isolated) == ["Task99_Toy.tar"]


def test_flat_archive_and_incomplete_cache(tmp_path, isolated, monkeypatch):
    src = make_task(tmp_path / "flat", {"toy_001": toy_case()})
    archive = tmp_path / "flat.tar"
    with tarfile.open(archive, "w") as tar:  # dataset.json at the top, plus a top-level ._ file
        for path in sorted(src.iterdir()):
            tar.add(path, arcname=path.name)
        info = tarfile.TarInfo("._Task99_Toy")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"mac"))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(TASKS, "Task99_Toy", DecathlonTask("msd-toy", archive.as_uri(), md5))
    (isolated / "msd-toy").mkdir(parents=True)
    (isolated / "msd-toy" / "imagesTr").mkdir()  # an incomplete copy: no dataset.json
    with pytest.raises(ValueError, match=r"msd-toy exists but is not a complete task .*remove it"):
        msd_task_dir("Task99_Toy")
    (isolated / "msd-toy" / "imagesTr").rmdir()  # an empty folder is fine
    root = msd_task_dir("Task99_Toy")
    assert [c.case_id for c in decathlon_cases(root)] == ["toy_001"]
    assert {"dataset.json", "imagesTr", "labelsTr"} <= {p.name for p in root.iterdir()}
    umask = os.umask(0)
    os.umask(umask)
    assert root.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    assert _leftovers(isolated) == ["msd-toy"]


def test_offline_error_says_where_to_put_files(tmp_path, isolated, monkeypatch):
    monkeypatch.setenv("MEDNETS_DATA", str(tmp_path / "data"))

    def offline(url, timeout):
        raise urllib.error.URLError("Temporary failure in name resolution")

    with pytest.raises(DecathlonNotAvailable) as info:
        msd_task_dir(opener=offline)
    assert isinstance(info.value, SampleNotAvailable)
    message = str(info.value)
    assert "could not download" in message and "offline?" in message
    assert TASKS["Task04_Hippocampus"].url in message and TASKS["Task04_Hippocampus"].md5 in message
    assert (
        str(tmp_path / "data" / "msd-hippocampus") in message and str(isolated / "msd-hippocampus") in message
    )
    with pytest.raises(DecathlonNotAvailable, match=r"Task01_BrainTumour is not on disk and download=False"):
        msd_task_dir("Task01_BrainTumour", download=False)
    with pytest.raises(ValueError, match=r"task must be one of .*got 'Task05_Prostate'"):
        msd_task_dir("Task05_Prostate")
    assert _leftovers(isolated) == []


def test_task_table_matches_the_data_readme():
    readme = (shared_data() / "README.md").read_text()
    assert set(TASKS) == {"Task04_Hippocampus", "Task01_BrainTumour"}
    assert TASKS["Task04_Hippocampus"].folder == "msd-hippocampus"
    assert TASKS["Task01_BrainTumour"].folder == "msd-braintumour"
    assert TASKS["Task04_Hippocampus"].url in readme  # Task01 is "at the same place"
    for name, spec in TASKS.items():
        assert spec.md5 in readme and f"`{name}.tar`" in readme
        assert spec.url == TASKS["Task04_Hippocampus"].url.replace("Task04_Hippocampus", name)
