"""BraTS subjects, tumour label conventions and tumour regions.

BraTS label maps use 0 background, 1 necrotic (non-enhancing) tumour core, 2 peritumoral
oedema and one value for the enhancing tumour: 4 in BraTS 2018-2021, 3 in BraTS 2023
(and BraTS 2024 uses 4 for the resection cavity). The Medical Segmentation Decathlon's
brain-tumour task (Task01) numbers them differently: 1 oedema, 2 non-enhancing tumour,
3 enhancing tumour. The same value means different things, so every function that
reads tumour labels takes one ``label_convention`` argument: ``"brats2018"``,
``"brats2023"`` or ``"msd"`` (see :data:`LABEL_CONVENTIONS`). When it is not given, it
comes from the file naming, then from the values where they are unambiguous; otherwise
it is a ``ValueError`` asking for it (:func:`resolve_label_convention`).

The challenge does not score the labels themselves but three nested regions built from
them: whole tumour (WT), tumour core (TC) and enhancing tumour (ET).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "MODALITIES",
    "DEFAULT_MODALITIES",
    "MODALITY_ALIASES",
    "REGION_NAMES",
    "LABEL_CONVENTIONS",
    "Subject",
    "subject_from_dir",
    "find_brats_subjects",
    "load_subject",
    "convention_from_naming",
    "candidate_conventions",
    "resolve_label_convention",
    "tumour_classes",
    "brats_regions",
    "regions_to_label",
    "normalise_modalities",
    "as_label_map",
]

#: The book's modality vocabulary.
MODALITIES = ("t1", "t1ce", "t2", "flair")

#: Default channel order of a loaded subject (the same as the phantoms').
DEFAULT_MODALITIES = ("flair", "t1", "t1ce", "t2")

#: File-name suffixes of the BraTS releases, mapped to the book's vocabulary
#: (BraTS 2018-2021: t1, t1ce, t2, flair; BraTS 2023: t1n, t1c, t2w, t2f).
MODALITY_ALIASES = {
    "t1": "t1",
    "t1w": "t1",
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

#: The label conventions, value to meaning. BraTS 2018-2021 label the enhancing tumour
#: 4, BraTS 2023 label it 3 (BraTS 2024 then uses 4 for the resection cavity, which no
#: convention here has). The Medical Segmentation Decathlon's Task01 (BrainTumour)
#: swaps 1 and 2: 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour.
LABEL_CONVENTIONS: dict[str, dict[int, str]] = {
    "brats2018": {0: "background", 1: "necrotic tumour core", 2: "oedema", 4: "enhancing tumour"},
    "brats2023": {0: "background", 1: "necrotic tumour core", 2: "oedema", 3: "enhancing tumour"},
    "msd": {0: "background", 1: "oedema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
}

#: Label value to tumour class, per convention. The classes are the same in every
#: convention: 0 background, 1 (necrotic or non-enhancing) tumour core, 2 oedema,
#: 3 enhancing tumour (the BraTS 2023 numbering). See :func:`tumour_classes`.
_CLASS_OF = {
    "brats2018": {0: 0, 1: 1, 2: 2, 4: 3},
    "brats2023": {0: 0, 1: 1, 2: 2, 3: 3},
    "msd": {0: 0, 1: 2, 2: 1, 3: 3},
}

#: File-name suffixes that only one BraTS release uses.
_NAMING = {"t1n": "brats2023", "t1c": "brats2023", "t2w": "brats2023", "t2f": "brats2023"}
_NAMING.update({"t1ce": "brats2018", "flair": "brats2018"})


def _where(where: str | os.PathLike | None) -> str:
    return "" if where is None else f"{where}: "


def as_label_map(label: ArrayLike, where: str | os.PathLike | None = None) -> np.ndarray:
    """A label map as an integer array, or a ``ValueError`` naming the values.

    Integer and boolean arrays pass as they are; floats with whole values (a label
    saved as float32 NIfTI) become int64; anything else (0.5, NaN, complex, strings)
    is refused.

    Args:
        label: Array-like label map, any shape.
        where: The file or subject, named in errors. Defaults to None.

    Returns:
        An integer (or boolean) NumPy array of the same shape.

    Raises:
        ValueError: If the values are not whole numbers.

    Example:
        >>> as_label_map(np.array([0.0, 2.0, 4.0])).tolist()
        [0, 2, 4]
    """
    label = np.asarray(label)
    if label.dtype.kind == "f":
        finite = np.isfinite(label)
        fractional = ~finite | (np.mod(np.where(finite, label, 0), 1) != 0)
        if fractional.any():
            found = np.unique(label[fractional])[:5].tolist()
            raise ValueError(
                f"{_where(where)}a label map must hold integers, got dtype {label.dtype} with "
                f"non-integer values such as {found}"
            )
        return label.astype(np.int64)
    if label.dtype.kind not in "iub":
        raise ValueError(f"{_where(where)}a label map must hold integers, got dtype {label.dtype}")
    return label


def _label_values(label, where=None) -> tuple[np.ndarray, list[int]]:
    """The label as an integer array and its sorted values."""
    label = as_label_map(label, where)
    return label, np.unique(label).astype(np.int64).tolist()


def convention_from_naming(names: Iterable[str | os.PathLike]) -> str | None:
    """The BraTS label convention implied by a subject's file names, if any.

    BraTS 2023 names its files ``BraTS-GLI-xxxxx-xxx-{t1n,t1c,t2w,t2f,seg}.nii.gz``;
    BraTS 2018-2021 name them ``<id>_{t1,t1ce,t2,flair,seg}.nii.gz``. Files named only
    ``t1``, ``t2`` and ``seg`` say nothing.

    Args:
        names: File names or paths.

    Returns:
        ``"brats2023"``, ``"brats2018"`` or None.

    Raises:
        ValueError: If the names mix both releases' suffixes.

    Example:
        >>> convention_from_naming(["BraTS-GLI-00000-000-t1c.nii.gz", "BraTS-GLI-00000-000-seg.nii.gz"])
        'brats2023'
        >>> convention_from_naming(["Brats18_2013_2_1_t1ce.nii.gz"]), convention_from_naming(["t1.nii"])
        ('brats2018', None)
    """
    found: dict[str, str] = {}
    for name in names:
        match = _NIFTI.match(Path(name).name)
        stem = Path(name).name if match is None else match.group("stem")
        suffix = re.split(r"[_\-]", stem)[-1].lower()
        if suffix in _NAMING:
            found.setdefault(_NAMING[suffix], Path(name).name)
    if len(found) > 1:
        raise ValueError(
            f"file names mix BraTS 2018 and BraTS 2023 naming: {found['brats2018']} and {found['brats2023']}"
        )
    return next(iter(found), None)


def _check_convention_name(label_convention) -> None:
    if label_convention not in LABEL_CONVENTIONS:
        raise ValueError(
            f"label_convention must be one of {list(LABEL_CONVENTIONS)}, got {label_convention!r}"
        )


def candidate_conventions(values: Iterable[int]) -> list[str]:
    """The label conventions that hold every value in ``values``.

    Example:
        >>> candidate_conventions([0, 1, 2, 4]), candidate_conventions([0, 3])
        (['brats2018'], ['brats2023', 'msd'])
    """
    values = {int(v) for v in values}
    return [name for name, table in LABEL_CONVENTIONS.items() if values <= table.keys()]


def _read_alike(conventions, values) -> bool:
    """Whether every convention gives each value the same tumour class."""
    return len({tuple(_CLASS_OF[c][v] for v in values) for c in conventions}) == 1


def resolve_label_convention(
    label: ArrayLike,
    label_convention: str | None = None,
    *,
    naming: str | None = None,
    where: str | os.PathLike | None = None,
) -> str | None:
    """Decide which label convention a label map uses, and check its values against it.

    The rule, in order:

    1. ``label_convention`` when given (``"brats2018"``, ``"brats2023"`` or ``"msd"``);
    2. otherwise ``naming``, the convention the file names imply (see
       :func:`convention_from_naming`);
    3. otherwise the values, where they are unambiguous: the conventions that hold
       every value must all read them the same way. ``{0, 1, 2, 4}`` is BraTS 2018;
       ``{0, 1, 2, 3}`` could be BraTS 2023 or the Decathlon (whose 1 and 2 mean
       something else), so it is an error asking for ``label_convention``.

    Args:
        label: Integer label map, any shape (whole-valued floats are accepted).
        label_convention: The convention, or None to infer it. Defaults to None.
        naming: The convention implied by the file names, or None. Defaults to None.
        where: The file or subject, named in errors. Defaults to None.

    Returns:
        The convention's name, or None when no convention was stated and the values
        read the same in every convention that holds them (e.g. only 0, or no tumour
        core value), so any of them gives the same regions.

    Raises:
        ValueError: If ``label_convention`` is unknown; if a value is not in the
            convention (the message names ``where`` and the value: e.g. a 4 in the
            BraTS 2023 naming, BraTS 2024's resection cavity); if the values are
            ambiguous and nothing says which convention applies; or if the label is
            not integer.

    Example:
        >>> resolve_label_convention(np.array([0, 1, 2, 4]))
        'brats2018'
        >>> resolve_label_convention(np.array([0, 1, 2, 3]), "msd")
        'msd'
        >>> resolve_label_convention(np.array([0, 1, 2, 3]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: label values [0, 1, 2, 3] fit several label conventions ... (brats2023, msd); ...
    """
    if label_convention is not None:
        _check_convention_name(label_convention)
    if naming is not None:
        _check_convention_name(naming)
    _, values = _label_values(label, where)
    stated = label_convention or naming
    if stated is not None:
        table = LABEL_CONVENTIONS[stated]
        bad = [v for v in values if v not in table]
        if bad:
            how = "label_convention" if label_convention else "the file naming"
            hint = ""
            if stated == "brats2023" and 4 in bad:
                hint = (
                    " (4 is BraTS 2018-2021's enhancing tumour, and BraTS 2024's resection cavity, "
                    "which no convention here has)"
                )
            raise ValueError(
                f"{_where(where)}label value(s) {bad} are not in the {stated!r} convention (from {how}), "
                f"which has {sorted(table)}{hint}"
            )
        return stated
    candidates = candidate_conventions(values)
    if not candidates:
        bad = sorted(set(values) - set().union(*(t.keys() for t in LABEL_CONVENTIONS.values())))
        raise ValueError(
            f"{_where(where)}label values {values} fit no label convention: "
            + (f"unexpected values {bad}; " if bad else "both 3 and 4; ")
            + "expected {0, 1, 2, 4} (brats2018) or {0, 1, 2, 3} (brats2023, msd)"
        )
    if len(candidates) == 1:
        return candidates[0]
    if _read_alike(candidates, values):
        return None
    raise ValueError(
        f"{_where(where)}label values {values} fit several label conventions that read them differently "
        f"({', '.join(candidates)}); pass label_convention="
        + " or ".join(f"{c!r} ({_DESCRIBE[c]})" for c in candidates)
    )


_DESCRIBE = {
    "brats2018": "BraTS 2018-2021: 1 necrotic core, 2 oedema, 4 enhancing",
    "brats2023": "BraTS 2023 naming: 1 necrotic core, 2 oedema, 3 enhancing",
    "msd": "Decathlon Task01: 1 oedema, 2 non-enhancing tumour, 3 enhancing",
}


def tumour_classes(
    label: ArrayLike, label_convention: str | None = None, *, where: str | os.PathLike | None = None
) -> np.ndarray:
    """Map a label map of any convention to four tumour classes, the same in all.

    Classes: 0 background, 1 tumour core that does not enhance (BraTS's necrotic
    core, the Decathlon's non-enhancing tumour), 2 oedema, 3 enhancing tumour (the
    BraTS 2023 numbering). This is what a softmax network predicts.

    Args:
        label: Integer label map, any shape.
        label_convention: See :func:`resolve_label_convention`. Defaults to None (infer).
        where: File or subject named in errors. Defaults to None.

    Returns:
        int64 array of the label's shape with values in {0, 1, 2, 3}.

    Raises:
        ValueError: As :func:`resolve_label_convention`.

    Example:
        >>> tumour_classes(np.array([0, 1, 2, 4])).tolist(), tumour_classes([0, 1, 2, 3], "msd").tolist()
        ([0, 1, 2, 3], [0, 2, 1, 3])
    """
    label, values = _label_values(label, where)
    convention = resolve_label_convention(label, label_convention, where=where)
    if convention is None:
        convention = candidate_conventions(values)[0]  # every candidate reads them alike
    lookup = np.zeros(max(_CLASS_OF[convention]) + 1, np.int64)
    for value, cls in _CLASS_OF[convention].items():
        lookup[value] = cls
    return lookup[label]


def brats_regions(
    label: ArrayLike, label_convention: str | None = None, *, where: str | os.PathLike | None = None
) -> np.ndarray:
    """Turn a tumour label map into the three nested evaluation regions.

    The challenge scores whole tumour (WT: every tumour label), tumour core (TC: the
    enhancing tumour and the necrotic or non-enhancing core, without oedema) and
    enhancing tumour (ET). Which label is which depends on the convention.

    Args:
        label: Integer array of any shape, e.g. ``(X, Y, Z)``.
        label_convention: ``"brats2018"`` (4 = enhancing), ``"brats2023"``
            (3 = enhancing) or ``"msd"`` (1 oedema, 2 non-enhancing, 3 enhancing).
            Defaults to None: inferred from the values where they are unambiguous
            (see :func:`resolve_label_convention`), else a ``ValueError``.
        where: File or subject named in errors. Defaults to None.

    Returns:
        Boolean array of shape ``(3, *label.shape)``: WT, TC, ET in this order (see
        :data:`REGION_NAMES`).

    Raises:
        ValueError: If a value is not in the convention, or the convention cannot be
            inferred (see :func:`resolve_label_convention`).

    Example:
        >>> brats_regions(np.array([0, 1, 2, 4])).astype(int).tolist()
        [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]
        >>> brats_regions(np.array([0, 2, 1, 3]), "msd").astype(int).tolist()
        [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]
    """
    classes = tumour_classes(label, label_convention, where=where)
    enhancing = classes == 3
    core = enhancing | (classes == 1)
    whole = classes > 0
    return np.stack([whole, core, enhancing])


def regions_to_label(regions: ArrayLike, label_convention: str, threshold: float = 0.5) -> np.ndarray:
    """Turn nested region maps (WT, TC, ET) into a label map of the given convention.

    The three sigmoid channels overlap by design (ET inside TC inside WT). A voxel gets
    the deepest region it belongs to, keeping the nesting even where the network broke
    it: ET counts only inside TC and WT, TC only inside WT. The inverse of
    :func:`brats_regions` for the same convention.

    Args:
        regions: Probabilities or masks ``(3, *S)`` in the order (WT, TC, ET): a NumPy
            array of any real dtype, or a tensor (anything with ``.detach()`` is moved
            to the CPU first).
        label_convention: ``"brats2018"``, ``"brats2023"`` or ``"msd"``. There is no
            default: the enhancing label is 4 in one BraTS release and 3 in the other.
        threshold: Probability above which a voxel is in a region. Defaults to 0.5.

    Returns:
        uint8 ``(*S)``: 0 background, then the convention's values for oedema (WT
        only), the non-enhancing core (TC, not ET) and the enhancing tumour (ET).

    Raises:
        ValueError: If ``regions`` is not ``(3, *S)`` or not real-valued, or the
            convention is unknown.

    Example:
        >>> r = np.array([[0.9, 0.9, 0.9, 0.1], [0.1, 0.8, 0.8, 0.9], [0.1, 0.1, 0.7, 0.9]])
        >>> regions_to_label(r, "brats2018").tolist(), regions_to_label(r, "msd").tolist()
        ([2, 1, 4, 0], [1, 2, 3, 0])
    """
    _check_convention_name(label_convention)
    if hasattr(regions, "detach"):  # a PyTorch tensor; no framework import needed
        regions = regions.detach().float().cpu().numpy()
    regions = np.asarray(regions)
    if regions.dtype.kind not in "biuf":
        raise ValueError(
            f"regions_to_label: regions must be real numbers or booleans, got dtype {regions.dtype}"
        )
    if regions.ndim < 2 or regions.shape[0] != 3:
        raise ValueError(
            f"regions_to_label: expected (3, *spatial) in the order WT, TC, ET, got shape {regions.shape}"
        )
    value_of = {cls: value for value, cls in _CLASS_OF[label_convention].items()}
    wt = regions[0] > threshold
    tc = wt & (regions[1] > threshold)
    et = tc & (regions[2] > threshold)
    label = np.zeros(regions.shape[1:], dtype=np.uint8)
    label[wt] = value_of[2]
    label[tc] = value_of[1]
    label[et] = value_of[3]
    return label


@dataclass(frozen=True)
class Subject:
    """One subject's files.

    Attributes:
        id: Subject id, e.g. ``"BraTS-GLI-00000-000"``.
        images: Modality name (``t1``, ``t1ce``, ``t2``, ``flair``) to file path.
        label: Path of the label map, or None (test/validation sets have none).
        label_convention: ``"brats2018"``, ``"brats2023"``, ``"msd"``, or None to
            decide when loading (from the file naming, then the values; see
            :func:`resolve_label_convention`).
    """

    id: str
    images: dict = field(hash=False)
    label: Path | None = None
    label_convention: str | None = None


def _modality_of(filename: str, subject_id: str | None) -> str | None:
    """The normalised modality of a file name, or None if it is not a subject file."""
    match = _NIFTI.match(filename)
    if match is None:
        return None
    stem = match.group("stem")
    if subject_id is not None and stem.lower().startswith(subject_id.lower()):
        stem = stem[len(subject_id) :].lstrip("_-")
    return MODALITY_ALIASES.get(stem.lower())


def subject_from_dir(
    directory: str | os.PathLike,
    modalities: Sequence[str] = MODALITIES,
    subject_id: str | None = None,
    label_convention: str | None = None,
) -> Subject:
    """Build a :class:`Subject` from one directory of NIfTI files.

    File names may be ``<id>_<modality>.nii[.gz]`` (BraTS 2018-2020),
    ``<id>-<modality>.nii.gz`` (BraTS 2023) or just ``<modality>.nii.gz``; the
    modality suffix may use either release's vocabulary (see :data:`MODALITY_ALIASES`).

    Args:
        directory: The subject's directory.
        modalities: Modalities that must be present. Defaults to all four.
        subject_id: The id. Defaults to None (the directory's name).
        label_convention: The label convention (see :data:`LABEL_CONVENTIONS`).
            Defaults to None: the file naming's (``t1n``/``t1c``/``t2w``/``t2f`` is
            BraTS 2023, ``t1ce``/``flair`` BraTS 2018), else decided from the values
            when the subject is loaded.

    Returns:
        A :class:`Subject` whose ``label_convention`` is the argument or the naming's.

    Raises:
        ValueError: If a required modality is missing (the message lists the missing
            ones and the files found) or present twice, if the file names mix both
            releases' naming, or ``label_convention`` is unknown.

    Example:
        >>> subject = subject_from_dir(sample_brats())  # doctest: +SKIP
        >>> subject.label_convention  # doctest: +SKIP
        'brats2023'
    """
    if label_convention is not None:
        _check_convention_name(label_convention)
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
    wanted = tuple(normalise_modalities(modalities))
    missing = [m for m in wanted if m not in found]
    if missing:
        present = sorted(p.name for p in found.values())
        raise ValueError(
            f"subject {subject_id!r} in {directory} is missing modalities {missing}; "
            f"expected {list(wanted)}, found files {present}"
        )
    images = {m: found[m] for m in wanted}
    try:
        naming = convention_from_naming(p.name for p in found.values())
    except ValueError as err:
        raise ValueError(f"subject {subject_id!r} in {directory}: {err}") from None
    return Subject(subject_id, images, found.get("seg"), label_convention or naming)


def normalise_modalities(modalities: Iterable[str]) -> list[str]:
    """Map modality names of any BraTS release to the book's vocabulary.

    Args:
        modalities: Names such as ``"t1c"``, ``"T2w"`` or ``"flair"`` (see
            :data:`MODALITY_ALIASES`).

    Returns:
        The names in the book's vocabulary (``t1``, ``t1ce``, ``t2``, ``flair``).

    Raises:
        ValueError: For an unknown name or one requested twice.

    Example:
        >>> normalise_modalities(["t2f", "T1c"])
        ['flair', 't1ce']
    """
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


def find_brats_subjects(
    root: str | os.PathLike, modalities: Sequence[str] = MODALITIES, label_convention: str | None = None
) -> list[Subject]:
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
        label_convention: Given to every subject (see :func:`subject_from_dir`).
            Defaults to None (each subject's file naming, else its values on loading).

    Returns:
        A list of :class:`Subject`, sorted by id (not by file-system order).

    Raises:
        FileNotFoundError: If ``root`` is not a directory.
        ValueError: If no subject is found, a subject lacks a modality (the message
            lists what is missing), or two subjects share an id.
    """
    modalities = tuple(normalise_modalities(modalities))
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BraTS root directory not found: {root}")
    subjects = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        if _is_subject_dir(entry):
            subjects.append(subject_from_dir(entry, modalities, label_convention=label_convention))
            continue
        for sub in sorted(entry.iterdir()):
            if sub.is_dir() and _is_subject_dir(sub):
                subjects.append(subject_from_dir(sub, modalities, label_convention=label_convention))
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


def load_subject(
    subject: Subject | str | os.PathLike,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    label_convention: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Load a subject's images and label, in canonical RAS+ orientation.

    Args:
        subject: A :class:`Subject` or a subject directory (see :func:`subject_from_dir`).
        modalities: Channel order of the image. Defaults to ``("flair", "t1", "t1ce", "t2")``.
        label_convention: ``"brats2018"``, ``"brats2023"`` or ``"msd"``. Defaults to
            None: the subject's (:attr:`Subject.label_convention`), else the file
            naming's, else the label values' where they are unambiguous (see
            :func:`resolve_label_convention`).

    Returns:
        ``(image, label, meta)``: ``image`` float32 ``(C, X, Y, Z)``; ``label`` uint8
        ``(X, Y, Z)`` or None; ``meta`` a dict with ``id``, ``modalities``, ``affine``
        (canonical, 4x4), ``spacing`` (mm), ``orientation`` (codes on disk, e.g.
        ``"LPS"``), ``paths`` (modality or ``"seg"`` to path), ``disk_dtypes`` and
        ``label_convention`` (``"brats2018"``, ``"brats2023"``, ``"msd"``, or None
        when there is no label or its values read the same in every convention).

    Raises:
        ValueError: If shapes or affines disagree between files (the message names both
            files and both values), a file is not valid NIfTI (the message names it),
            the label holds a value its convention does not have (the message names
            the file and the value, e.g. BraTS 2024's resection cavity, 4, in the 2023
            naming), or no convention is given and the values are ambiguous.

    Example:
        >>> image, label, meta = load_subject(sample_brats())  # doctest: +SKIP
        >>> image.shape, meta["orientation"]  # doctest: +SKIP
        ((4, 240, 240, 155), 'LPS')
    """
    from mednets.data.nifti import load_nifti

    if isinstance(subject, (str, os.PathLike)):
        subject = subject_from_dir(subject, modalities, label_convention=label_convention)
    names = normalise_modalities(modalities)
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
        files = [*subject.images.values(), subject.label]
        try:
            naming = subject.label_convention or convention_from_naming(files)
        except ValueError as err:
            raise ValueError(f"subject {subject.id!r}: {err}") from None
        convention = resolve_label_convention(
            label, label_convention, naming=naming, where=f"subject {subject.id!r} ({subject.label})"
        )
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
