"""Tests for BraTS label conventions and regions (mednets.data.brats)."""

import numpy as np
import pytest

from mednets.data import (
    LABEL_CONVENTIONS,
    brats_regions,
    convention_from_naming,
    regions_to_label,
    resolve_label_convention,
    tumour_classes,
)
from mednets.data.brats import as_label_map, candidate_conventions

# One tumour: oedema around a core that is half necrotic, half enhancing.
TUMOUR = {"oedema": (1, 7), "core": (3, 5), "enhancing": (4, 5)}
#: The label value of each part, per convention.
PARTS = {
    "brats2018": {"oedema": 2, "core": 1, "enhancing": 4},
    "brats2023": {"oedema": 2, "core": 1, "enhancing": 3},
    "msd": {"oedema": 1, "core": 2, "enhancing": 3},
}


def _tumour(convention):
    label = np.zeros((8, 8, 8), np.uint8)
    for part in ("oedema", "core", "enhancing"):
        lo, hi = TUMOUR[part]
        label[lo:hi, lo:hi, lo:hi] = PARTS[convention][part]
    return label


@pytest.mark.parametrize("convention", list(LABEL_CONVENTIONS))
def test_three_conventions_give_the_same_regions_and_classes(convention):
    label = _tumour(convention)
    reference = brats_regions(_tumour("brats2023"), "brats2023")
    regions = brats_regions(label, convention)
    assert regions.shape == (3, 8, 8, 8) and regions.dtype == bool
    np.testing.assert_array_equal(regions, reference)
    # Whole tumour 6^3, core 2^3, enhancing 1 x 1 x 1... checked by hand:
    assert regions.reshape(3, -1).sum(axis=1).tolist() == [6**3, 2**3, 1]
    np.testing.assert_array_equal(tumour_classes(label, convention), _tumour("brats2023"))
    # regions_to_label inverts brats_regions in every convention, from masks or probabilities.
    np.testing.assert_array_equal(regions_to_label(regions, convention), label)
    np.testing.assert_array_equal(regions_to_label(regions.astype(np.float64) * 0.9, convention), label)


def test_the_same_values_mean_different_regions_in_msd_and_brats2023():
    label = _tumour("brats2023")  # {0, 1, 2, 3}
    as_msd = brats_regions(label, "msd")
    as_brats = brats_regions(label, "brats2023")
    assert np.array_equal(as_msd[0], as_brats[0]) and np.array_equal(as_msd[2], as_brats[2])
    assert not np.array_equal(as_msd[1], as_brats[1])  # the tumour core differs
    with pytest.raises(
        ValueError, match=r"values \[0, 1, 2, 3\] fit several .*brats2023, msd.*label_convention="
    ):
        brats_regions(label)


def test_inference_from_values_only_where_unambiguous():
    assert resolve_label_convention(_tumour("brats2018")) == "brats2018"
    assert brats_regions(_tumour("brats2018")).sum() == 6**3 + 2**3 + 1  # no argument needed
    assert resolve_label_convention(np.zeros(4, np.uint8)) is None  # every convention reads it alike
    assert resolve_label_convention(np.array([0, 3])) is None  # enhancing in both brats2023 and msd
    assert candidate_conventions([0, 3]) == ["brats2023", "msd"]
    for values in ([0, 1, 2], [0, 1], [0, 2]):
        with pytest.raises(ValueError, match="pass label_convention="):
            resolve_label_convention(np.array(values))
    # The naming decides before the values.
    assert resolve_label_convention(np.array([0, 1, 2]), naming="brats2023") == "brats2023"
    # An explicit argument wins over the naming.
    assert resolve_label_convention(np.array([0, 1, 2, 3]), "msd", naming="brats2023") == "msd"


def test_value_outside_the_convention_names_where_and_value():
    # BraTS 2024's resection cavity is 4 in the 2023 naming.
    with pytest.raises(
        ValueError, match=r"case-7: label value\(s\) \[4\] are not in the 'brats2023'.*resection cavity"
    ):
        resolve_label_convention(np.array([0, 1, 2, 3, 4]), naming="brats2023", where="case-7")
    with pytest.raises(ValueError, match=r"\[4\] are not in the 'msd' convention \(from label_convention\)"):
        brats_regions(np.array([0, 4]), "msd")
    with pytest.raises(ValueError, match="label_convention must be one of .*got 'brats2021'"):
        brats_regions(np.array([0, 4]), "brats2021")


@pytest.mark.parametrize(
    "values,match",
    [([0, 5], r"unexpected values \[5\]"), ([0, 3, 4], "both 3 and 4"), ([0, -1, 7], r"\[-1, 7\]")],
    ids=["five", "mixed-3-4", "negative"],
)
def test_regions_bad_values(values, match):
    with pytest.raises(ValueError, match=match):
        brats_regions(np.array(values))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.float32, np.float64])
def test_label_dtypes(dtype):
    label = _tumour("brats2018").astype(dtype)
    np.testing.assert_array_equal(brats_regions(label), brats_regions(_tumour("brats2018")))
    assert as_label_map(label).dtype.kind in "iu"


def test_non_integer_labels_are_refused():
    with pytest.raises(
        ValueError, match=r"integers, got dtype float64 with non-integer values such as \[0.5\]"
    ):
        brats_regions(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="nan"):
        as_label_map(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="got dtype <U1"):
        as_label_map(np.array(["a"]))


def test_convention_from_naming():
    assert convention_from_naming(["BraTS-GLI-00000-000-t2f.nii.gz", "BraTS-GLI-00000-000-seg.nii.gz"]) == (
        "brats2023"
    )
    assert convention_from_naming(["Brats18_1_flair.nii", "Brats18_1_seg.nii"]) == "brats2018"
    assert convention_from_naming(["t1.nii.gz", "seg.nii.gz"]) is None
    with pytest.raises(ValueError, match="mix BraTS 2018 and BraTS 2023 naming"):
        convention_from_naming(["a_t1ce.nii.gz", "a-t1c.nii.gz"])


def test_regions_to_label_needs_a_convention_and_keeps_nesting():
    r = np.array([[0.9, 0.2], [0.1, 0.9], [0.9, 0.9]])  # voxel 0: ET without TC; voxel 1: no WT
    assert regions_to_label(r, "brats2023").tolist() == [2, 0]
    with pytest.raises(TypeError):
        regions_to_label(r)  # no silent default
    with pytest.raises(ValueError, match=r"expected \(3, \*spatial\).*got shape \(2, 5\)"):
        regions_to_label(np.zeros((2, 5)), "brats2018")
    with pytest.raises(ValueError, match="got dtype complex128"):
        regions_to_label(np.zeros((3, 2), complex), "brats2018")


# --- finding and loading subjects -------------------------------------------------------

import os  # noqa: E402

from mednets.data import (  # noqa: E402
    Subject,
    find_brats_subjects,
    load_subject,
    sample_brats,
    subject_from_dir,
)
from mednets.data.nifti import save_nifti  # noqa: E402
from mednets.data.samples import SampleNotAvailable  # noqa: E402

SHAPE = (6, 7, 5)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
OLD = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}  # BraTS 2018-2020 suffixes
NEW = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}  # BraTS 2023 suffixes


def _write_subject(directory, sid, suffixes, sep, ext=".nii.gz", seg=True, dtypes=None, seed=0):
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    truth = {}
    for i, (mod, suffix) in enumerate(suffixes.items()):
        data = (rng.random(SHAPE) * 100 + i).astype((dtypes or {}).get(mod, np.float32))
        save_nifti(data, LPS, directory / f"{sid}{sep}{suffix}{ext}")
        truth[mod] = data
    if seg:
        enhancing = 3 if suffixes == NEW else 4  # each release's own convention
        label = rng.choice(np.array([0, 1, 2, enhancing], np.uint8), size=SHAPE)
        save_nifti(label, LPS, directory / f"{sid}{sep}seg{ext}")
        truth["seg"] = label
    return truth


@pytest.mark.parametrize("layout", ["brats2018", "brats2021", "brats2023"])
def test_find_subjects_both_layouts(tmp_path, layout):
    if layout == "brats2018":
        _write_subject(tmp_path / "HGG" / "Brats18_B_1", "Brats18_B_1", OLD, "_", ext=".nii")
        _write_subject(tmp_path / "LGG" / "Brats18_A_2", "Brats18_A_2", OLD, "_")
        expected = ["Brats18_A_2", "Brats18_B_1"]
    elif layout == "brats2021":
        _write_subject(tmp_path / "BraTS2021_00002", "BraTS2021_00002", OLD, "_")
        _write_subject(tmp_path / "BraTS2021_00000", "BraTS2021_00000", OLD, "_")
        expected = ["BraTS2021_00000", "BraTS2021_00002"]
    else:
        _write_subject(tmp_path / "BraTS-GLI-00002-000", "BraTS-GLI-00002-000", NEW, "-")
        _write_subject(tmp_path / "BraTS-GLI-00001-000", "BraTS-GLI-00001-000", NEW, "-", seg=False)
        expected = ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000"]
    # Stray things the seed's glob would have picked up as subjects:
    (tmp_path / "name_mapping.csv").write_text("id\n")
    (tmp_path / "notes").mkdir()
    subjects = find_brats_subjects(tmp_path)
    assert [s.id for s in subjects] == expected
    for s in subjects:
        assert set(s.images) == {"t1", "t1ce", "t2", "flair"}
        assert all(p.is_file() and p.parent.name == s.id for p in s.images.values())
    if layout == "brats2023":
        assert subjects[0].label is None and subjects[1].label.name.endswith("-seg.nii.gz")
        assert subjects[0].images["flair"].name == "BraTS-GLI-00001-000-t2f.nii.gz"


def test_missing_modality_lists_it(tmp_path):
    suffixes = {k: v for k, v in NEW.items() if k != "t2"}
    _write_subject(tmp_path / "S1", "S1", suffixes, "-")
    with pytest.raises(ValueError, match=r"'S1' .* missing modalities \['t2'\]; expected .* found files"):
        find_brats_subjects(tmp_path)
    # Asking only for what exists works.
    (subject,) = find_brats_subjects(tmp_path, modalities=("flair", "t1"))
    assert list(subject.images) == ["flair", "t1"]


def test_find_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not_there"):
        find_brats_subjects(tmp_path / "not_there")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no BraTS subjects found under .*empty"):
        find_brats_subjects(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown modality 'pd'"):
        find_brats_subjects(tmp_path, modalities=("t1", "pd"))


def test_duplicate_modality_file(tmp_path):
    _write_subject(tmp_path / "S1", "S1", OLD, "_", ext=".nii")
    save_nifti(np.zeros(SHAPE, np.float32), LPS, tmp_path / "S1" / "S1_t1.nii.gz")
    with pytest.raises(ValueError, match=r"two files for 't1': S1_t1.nii and S1_t1.nii.gz"):
        find_brats_subjects(tmp_path)


def test_load_subject_shapes_orientation_and_mixed_dtypes(tmp_path):
    truth = _write_subject(tmp_path / "S1", "S1", NEW, "-", dtypes={"t1": np.float64, "t2": np.int16})
    (subject,) = find_brats_subjects(tmp_path)
    image, label, meta = load_subject(subject)
    assert image.shape == (4,) + SHAPE and image.dtype == np.float32
    assert label.shape == SHAPE and label.dtype == np.uint8
    for c, mod in enumerate(("flair", "t1", "t1ce", "t2")):
        np.testing.assert_allclose(image[c], truth[mod][::-1, ::-1, :].astype(np.float32))
    np.testing.assert_array_equal(label, truth["seg"][::-1, ::-1, :])
    assert meta["orientation"] == "LPS" and meta["spacing"] == (1.0, 1.0, 1.0)
    assert meta["modalities"] == ("flair", "t1", "t1ce", "t2")
    assert meta["label_convention"] == "brats2023"  # from the naming
    assert subject.label_convention == "brats2023"
    assert meta["disk_dtypes"]["t1"] == "float64" and meta["disk_dtypes"]["t2"] == "int16"
    assert meta["paths"]["seg"].endswith("S1-seg.nii.gz")
    np.testing.assert_allclose(meta["affine"][:3, :3], np.eye(3))
    # A directory works as well as a Subject; channel order follows `modalities`.
    image2, _, _ = load_subject(tmp_path / "S1", modalities=("t2", "t1ce"))
    np.testing.assert_array_equal(image2, image[[3, 2]])


def test_load_subject_shape_mismatch_names_files_and_shapes(tmp_path):
    _write_subject(tmp_path / "S1", "S1", OLD, "_")
    save_nifti(np.zeros((6, 7, 4), np.float32), LPS, tmp_path / "S1" / "S1_t2.nii.gz")
    with pytest.raises(
        ValueError, match=r"S1_flair.nii.gz has shape \(6, 7, 5\) but .*S1_t2.nii.gz has shape \(6, 7, 4\)"
    ):
        load_subject(subject_from_dir(tmp_path / "S1"))


def test_load_subject_affine_mismatch_names_files_and_affines(tmp_path):
    _write_subject(tmp_path / "S1", "S1", OLD, "_")
    shifted = LPS.copy()
    shifted[0, 3] = 5.0
    save_nifti(np.zeros(SHAPE, np.uint8), shifted, tmp_path / "S1" / "S1_seg.nii.gz")
    with pytest.raises(
        ValueError,
        match=r"(?s)affine mismatch: .*S1_flair.nii.gz has affine.*-5\..*but .*S1_seg.nii.gz has affine",
    ):
        load_subject(subject_from_dir(tmp_path / "S1"))


def test_load_subject_invalid_nifti_and_bad_labels(tmp_path):
    _write_subject(tmp_path / "S1", "S1", OLD, "_")
    (tmp_path / "S1" / "S1_t1ce.nii.gz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"S1_t1ce.nii.gz is not a valid NIfTI file"):
        load_subject(subject_from_dir(tmp_path / "S1"))
    _write_subject(tmp_path / "S2", "S2", OLD, "_")
    save_nifti(np.full(SHAPE, 7, np.uint8), LPS, tmp_path / "S2" / "S2_seg.nii.gz")
    with pytest.raises(
        ValueError, match=r"subject 'S2' \(.*S2_seg.nii.gz\): label value\(s\) \[7\] are not in"
    ):
        load_subject(subject_from_dir(tmp_path / "S2"))
    subject = Subject("x", {"t1": tmp_path / "S2" / "S2_t1.nii.gz"}, None)
    with pytest.raises(ValueError, match=r"has no \['flair'\]"):
        load_subject(subject, modalities=("t1", "flair"))


# --- the real sample (skipped only when MEDNETS_DATA has no copy) -----------------------


@pytest.fixture(scope="module")
def real_sample():
    if not os.environ.get("MEDNETS_DATA"):
        pytest.skip("MEDNETS_DATA is not set: no copy of the real BraTS sample")
    try:
        subject = sample_brats(download=False)
    except SampleNotAvailable as err:
        pytest.skip(f"no copy of the real BraTS sample: {err}")
    return subject, load_subject(subject)


def test_real_sample_loads_in_ras(real_sample):
    subject, (image, label, meta) = real_sample
    assert subject.id == "brats-sample" and subject.label is not None
    assert image.shape == (4, 240, 240, 155) and image.dtype == np.float32
    assert label.shape == (240, 240, 155) and label.dtype == np.uint8
    assert meta["orientation"] == "LPS" and meta["label_convention"] == "brats2023"
    assert meta["disk_dtypes"]["t1ce"] == "float32" and meta["disk_dtypes"]["flair"] == "float64"
    assert np.all(np.diag(meta["affine"])[:3] > 0)  # canonical: every axis grows R, A, S
    assert image.min() == 0.0 and float(image[0].max()) == 509.0  # FLAIR range from the README


def test_real_sample_label_and_region_counts(real_sample):
    _, (_, label, _) = real_sample
    assert np.bincount(label.ravel(), minlength=5).tolist() == [8_783_268, 14_300, 108_566, 21_866, 0]
    regions = brats_regions(label, "brats2023")
    counts = regions.reshape(3, -1).sum(axis=1).tolist()
    assert counts == [14_300 + 108_566 + 21_866, 14_300 + 21_866, 21_866]
    # The 2018 convention (4 = enhancing) gives the same regions.
    relabelled = np.where(label == 3, 4, label)
    np.testing.assert_array_equal(brats_regions(relabelled, "brats2018"), regions)
    with pytest.raises(ValueError, match="pass label_convention="):
        brats_regions(label)  # {0, 1, 2, 3} could also be the Decathlon's


def test_real_sample_hemisphere_after_ras(real_sample):
    # In RAS the first axis grows towards the patient's right. The tumour's centroid must
    # be where it is in world coordinates, whichever orientation the file had.
    subject, (_, label, meta) = real_sample
    import nibabel as nib

    disk = nib.load(str(subject.label))
    disk_centroid = np.argwhere(np.asarray(disk.dataobj) > 0).mean(axis=0)
    world_disk = disk.affine @ np.append(disk_centroid, 1)
    ras_centroid = np.argwhere(label > 0).mean(axis=0)
    world_ras = meta["affine"] @ np.append(ras_centroid, 1)
    np.testing.assert_allclose(world_disk, world_ras, atol=1e-6)


# --- label conventions through the loaders ----------------------------------------------


def test_2023_naming_with_a_4_is_an_error_naming_the_file(tmp_path):
    # The input: BraTS 2023 naming, labels {0, 1, 2, 4}. It used to load as 2018.
    _write_subject(tmp_path / "BraTS-GLI-00007-000", "BraTS-GLI-00007-000", NEW, "-")
    seg = tmp_path / "BraTS-GLI-00007-000" / "BraTS-GLI-00007-000-seg.nii.gz"
    save_nifti(np.random.default_rng(0).choice(np.array([0, 1, 2, 4], np.uint8), SHAPE), LPS, seg)
    (subject,) = find_brats_subjects(tmp_path)
    assert subject.label_convention == "brats2023"
    with pytest.raises(
        ValueError, match=r"'BraTS-GLI-00007-000' \(.*-seg.nii.gz\): label value\(s\) \[4\] .*'brats2023'"
    ):
        load_subject(subject)
    # Saying what the file holds loads it, through every route.
    for route in (
        lambda: load_subject(subject, label_convention="brats2018"),
        lambda: load_subject(tmp_path / "BraTS-GLI-00007-000", label_convention="brats2018"),
        lambda: load_subject(find_brats_subjects(tmp_path, label_convention="brats2018")[0]),
        lambda: load_subject(
            subject_from_dir(tmp_path / "BraTS-GLI-00007-000", label_convention="brats2018")
        ),
    ):
        _, label, meta = route()
        assert meta["label_convention"] == "brats2018" and brats_regions(label, "brats2018")[2].any()


def test_plain_naming_infers_from_values_or_asks(tmp_path):
    plain = {"t1": "t1", "t2": "t2"}  # names that say nothing about the release
    _write_subject(tmp_path / "S1", "S1", plain, "_")  # {0, 1, 2, 4}: only BraTS 2018 has 4
    subject = subject_from_dir(tmp_path / "S1", modalities=("t1", "t2"))
    assert subject.label_convention is None
    assert load_subject(subject, ("t1", "t2"))[2]["label_convention"] == "brats2018"
    save_nifti(_tumour("msd")[:6, :7, :5], LPS, tmp_path / "S1" / "S1_seg.nii.gz")  # {0, 1, 2, 3}
    with pytest.raises(ValueError, match=r"subject 'S1' .* fit several label conventions .*brats2023, msd"):
        load_subject(subject, ("t1", "t2"))
    _, label, meta = load_subject(subject, ("t1", "t2"), label_convention="msd")
    assert meta["label_convention"] == "msd"
