"""BraTS label conventions and tumour regions.

BraTS label maps use 0 background, 1 necrotic (non-enhancing) tumour core, 2 peritumoral
oedema and one value for the enhancing tumour: 4 in BraTS 2018-2021, 3 in BraTS 2023.
The challenge does not score the labels themselves but three nested regions built from
them: whole tumour (WT), tumour core (TC) and enhancing tumour (ET).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "MODALITIES",
    "DEFAULT_MODALITIES",
    "MODALITY_ALIASES",
    "REGION_NAMES",
    "Subject",
    "subject_from_dir",
    "find_brats_subjects",
    "load_subject",
    "label_convention",
    "brats_regions",
]

#: The book's modality vocabulary.
MODALITIES = ("t1", "t1ce", "t2", "flair")

#: Default channel order of a loaded subject (the same as the phantoms').
DEFAULT_MODALITIES = ("flair", "t1", "t1ce", "t2")

#: File-name suffixes of the BraTS releases, mapped to the book's vocabulary
#: (BraTS 2018-2021: t1, t1ce, t2, flair; BraTS 2023: t1n, t1c, t2w, t2f).
MODALITY_ALIASES = {
    "t1": "t1",
    "t1n": "t1",
    "t1ce": "t1ce",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t2": "t2",
    "t2w": "t2",
    "flair": "flair",
    "t2f": "flair",
    "seg": "seg",
}

_NIFTI = re.compile(r"^(?P<stem>.+?)\.nii(?:\.gz)?$", re.IGNORECASE)

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


@dataclass(frozen=True)
class Subject:
    """One subject's files.

    Attributes:
        id: Subject id, e.g. ``"BraTS-GLI-00000-000"``.
        images: Modality name (``t1``, ``t1ce``, ``t2``, ``flair``) to file path.
        label: Path of the label map, or None (test/validation sets have none).
    """

    id: str
    images: dict = field(hash=False)
    label: Path | None = None


def _modality_of(filename: str, subject_id: str | None) -> str | None:
    """The normalised modality of a file name, or None if it is not a subject file."""
    match = _NIFTI.match(filename)
    if match is None:
        return None
    stem = match.group("stem")
    if subject_id is not None and stem.lower().startswith(subject_id.lower()):
        stem = stem[len(subject_id) :].lstrip("_-")
    return MODALITY_ALIASES.get(stem.lower())


def subject_from_dir(directory, modalities=MODALITIES, subject_id=None) -> Subject:
    """Build a :class:`Subject` from one directory of NIfTI files.

    File names may be ``<id>_<modality>.nii[.gz]`` (BraTS 2018-2020),
    ``<id>-<modality>.nii.gz`` (BraTS 2023) or just ``<modality>.nii.gz``; the
    modality suffix may use either release's vocabulary (see :data:`MODALITY_ALIASES`).

    Args:
        directory: The subject's directory.
        modalities: Modalities that must be present. Defaults to all four.
        subject_id: The id. Defaults to None (the directory's name).

    Raises:
        ValueError: If a required modality is missing (the message lists the missing
            ones and the files found) or present twice.
    """
    directory = Path(directory)
    subject_id = directory.name if subject_id is None else subject_id
    found: dict[str, Path] = {}
    for entry in sorted(directory.iterdir()):
        if not entry.is_file():
            continue
        modality = _modality_of(entry.name, subject_id)
        if modality is None:
            continue
        if modality in found:
            raise ValueError(
                f"subject {subject_id!r} in {directory} has two files for {modality!r}: "
                f"{found[modality].name} and {entry.name}"
            )
        found[modality] = entry
    wanted = tuple(_normalise_modalities(modalities))
    missing = [m for m in wanted if m not in found]
    if missing:
        present = sorted(p.name for p in found.values())
        raise ValueError(
            f"subject {subject_id!r} in {directory} is missing modalities {missing}; "
            f"expected {list(wanted)}, found files {present}"
        )
    images = {m: found[m] for m in wanted}
    return Subject(subject_id, images, found.get("seg"))


def _normalise_modalities(modalities):
    out = []
    for m in modalities:
        name = MODALITY_ALIASES.get(str(m).lower())
        if name is None or name == "seg":
            raise ValueError(
                f"unknown modality {m!r}; expected one of {sorted(k for k in MODALITY_ALIASES if k != 'seg')}"
            )
        if name in out:
            raise ValueError(f"modality {m!r} requested twice (as {name!r}) in {list(modalities)}")
        out.append(name)
    return out


def _is_subject_dir(directory: Path) -> bool:
    return any(
        entry.is_file() and _modality_of(entry.name, directory.name) is not None
        for entry in directory.iterdir()
    )


def find_brats_subjects(root, modalities=MODALITIES):
    """Find every BraTS subject under ``root``, sorted by id.

    Understands both public layouts:

    - BraTS 2018-2020: ``ROOT/[HGG|LGG/]<id>/<id>_{t1,t1ce,t2,flair,seg}.nii[.gz]``
      (BraTS 2021 kept this naming, without the HGG/LGG folders);
    - BraTS 2023: ``ROOT/<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz``.

    A directory is a subject if it directly holds NIfTI files named after it; otherwise
    its sub-directories are searched (one level, for ``HGG``/``LGG``). Files directly
    under ``root`` and unrelated directories are ignored.

    Args:
        root: The data set's top directory.
        modalities: Modalities every subject must have. Defaults to all four.

    Returns:
        A list of :class:`Subject`, sorted by id (not by file-system order).

    Raises:
        FileNotFoundError: If ``root`` is not a directory.
        ValueError: If no subject is found, a subject lacks a modality (the message
            lists what is missing), or two subjects share an id.
    """
    modalities = tuple(_normalise_modalities(modalities))
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BraTS root directory not found: {root}")
    subjects = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        if _is_subject_dir(entry):
            subjects.append(subject_from_dir(entry, modalities))
            continue
        for sub in sorted(entry.iterdir()):
            if sub.is_dir() and _is_subject_dir(sub):
                subjects.append(subject_from_dir(sub, modalities))
    if not subjects:
        raise ValueError(
            f"no BraTS subjects found under {root}; expected ROOT/<id>/<id>_<modality>.nii[.gz] "
            "(BraTS 2018-2020, optionally inside HGG/ and LGG/) or ROOT/<id>/<id>-<modality>.nii.gz "
            "(BraTS 2023)"
        )
    subjects.sort(key=lambda s: s.id)
    ids = [s.id for s in subjects]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"subject ids must be unique, got duplicates {duplicates} under {root}")
    return subjects


def _check_same_grid(ref_path, ref_shape, ref_affine, path, shape, affine, atol=1e-3):
    if shape != ref_shape:
        raise ValueError(f"shape mismatch: {ref_path} has shape {ref_shape} but {path} has shape {shape}")
    if not np.allclose(affine, ref_affine, atol=atol):
        raise ValueError(
            f"affine mismatch: {ref_path} has affine\n{np.array2string(ref_affine, precision=3)}\n"
            f"but {path} has affine\n{np.array2string(affine, precision=3)}"
        )


def load_subject(subject, modalities=DEFAULT_MODALITIES):
    """Load a subject's images and label, in canonical RAS+ orientation.

    Args:
        subject: A :class:`Subject` or a subject directory (see :func:`subject_from_dir`).
        modalities: Channel order of the image. Defaults to ``("flair", "t1", "t1ce", "t2")``.

    Returns:
        ``(image, label, meta)``: ``image`` float32 ``(C, X, Y, Z)``; ``label`` uint8
        ``(X, Y, Z)`` or None; ``meta`` a dict with ``id``, ``modalities``, ``affine``
        (canonical, 4x4), ``spacing`` (mm), ``orientation`` (codes on disk, e.g.
        ``"LPS"``), ``paths`` (modality or ``"seg"`` to path), ``disk_dtypes`` and
        ``label_convention`` (``"brats2018"``, ``"brats2023"`` or None).

    Raises:
        ValueError: If shapes or affines disagree between files (the message names both
            files and both values), a file is not valid NIfTI (the message names it),
            or the label holds values outside the BraTS conventions.

    Example:
        >>> image, label, meta = load_subject(sample_brats())  # doctest: +SKIP
        >>> image.shape, meta["orientation"]  # doctest: +SKIP
        ((4, 240, 240, 155), 'LPS')
    """
    from mednets.data.nifti import load_nifti

    if isinstance(subject, (str, os.PathLike)):
        subject = subject_from_dir(subject, modalities)
    names = _normalise_modalities(modalities)
    missing = [m for m in names if m not in subject.images]
    if missing:
        raise ValueError(f"subject {subject.id!r} has no {missing}; it has {sorted(subject.images)}")
    image = None
    ref = None
    disk_dtypes = {}
    for c, name in enumerate(names):
        path = subject.images[name]
        array, affine, info = load_nifti(path)
        disk_dtypes[name] = info["disk_dtype"]
        if ref is None:
            ref = (path, array.shape, affine, info)
            image = np.empty((len(names),) + array.shape, dtype=np.float32)
        else:
            _check_same_grid(ref[0], ref[1], ref[2], path, array.shape, affine)
        image[c] = array
    label = None
    convention = None
    if subject.label is not None:
        label, affine, info = load_nifti(subject.label, dtype=np.uint8)
        disk_dtypes["seg"] = info["disk_dtype"]
        _check_same_grid(ref[0], ref[1], ref[2], subject.label, label.shape, affine)
        try:
            convention = label_convention(label)
        except ValueError as err:
            raise ValueError(f"{subject.label}: {err}") from None
    paths = {name: str(subject.images[name]) for name in names}
    if subject.label is not None:
        paths["seg"] = str(subject.label)
    meta = {
        "id": subject.id,
        "modalities": tuple(names),
        "affine": ref[2],
        "spacing": ref[3]["spacing"],
        "orientation": ref[3]["orientation"],
        "paths": paths,
        "disk_dtypes": disk_dtypes,
        "label_convention": convention,
    }
    return image, label, meta
