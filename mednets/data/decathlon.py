"""The Medical Segmentation Decathlon: its layout, its download, and the book's fixed split.

The Decathlon (Simpson et al. 2019, arXiv:1902.09063; Antonelli et al., Nature
Communications 2022) publishes ten segmentation tasks in one layout::

    Task04_Hippocampus/
        dataset.json          # labels, modalities, and the list of cases
        imagesTr/NAME.nii.gz  # training images: 3D (X, Y, Z) or 4D (X, Y, Z, C)
        labelsTr/NAME.nii.gz  # their label maps (X, Y, Z)
        imagesTs/NAME.nii.gz  # test images, no public labels

The publisher's archives also hold macOS ``._NAME.nii.gz`` companion files (a few
hundred bytes of resource fork, not NIfTI); every function here skips them.

This module reads any task in that layout (:func:`decathlon_cases`, :func:`load_case`),
finds or downloads a task (:func:`msd_task_dir`, checking the publisher's MD5 and
extracting atomically), and keeps the one fixed, seeded train / validation / test split
of Task04 that the book's chapter and benchmarks share (:func:`hippocampus_split`).

Volumes follow the rest of :mod:`mednets.data`: images ``(C, X, Y, Z)`` float32 in RAS+
(one channel for a 3D image, four for Task01_BrainTumour), labels ``(X, Y, Z)`` uint8.
The data are under CC BY-SA 4.0; anything derived from them names the source.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mednets.data.nifti import load_nifti
from mednets.data.samples import SampleNotAvailable, cache_dir, download_file, file_digest

__all__ = [
    "DecathlonTask",
    "TASKS",
    "DecathlonNotAvailable",
    "msd_task_dirs",
    "msd_task_dir",
    "DecathlonCase",
    "read_dataset_json",
    "label_names",
    "decathlon_cases",
    "load_case",
    "HIPPOCAMPUS_SPLIT_SEED",
    "HIPPOCAMPUS_SPLIT_SIZES",
    "split_cases",
    "hippocampus_split",
]


class DecathlonTask(NamedTuple):
    """Where a Decathlon task lives: its local folder name, archive URL and MD5."""

    folder: str
    url: str
    md5: str


_BUCKET = "https://msd-for-monai.s3-us-west-2.amazonaws.com"

#: Task name -> :class:`DecathlonTask` (local folder under ``$MEDNETS_DATA`` or the cache,
#: the publisher's ``.tar`` URL, and the MD5 the publisher gives for it).
TASKS: dict[str, DecathlonTask] = {
    "Task04_Hippocampus": DecathlonTask(
        "msd-hippocampus", f"{_BUCKET}/Task04_Hippocampus.tar", "9d24dba78a72977dbd1d2e110310f31b"
    ),
    "Task01_BrainTumour": DecathlonTask(
        "msd-braintumour", f"{_BUCKET}/Task01_BrainTumour.tar", "240a19d752f0d9e9101544901065d872"
    ),
}


class DecathlonNotAvailable(SampleNotAvailable):
    """A Decathlon task is neither on disk nor downloadable (e.g. offline)."""


def _task(task: str) -> DecathlonTask:
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task]


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")  # macOS "._x.nii.gz" companions, ".DS_Store"


def _is_task_dir(directory: Path) -> bool:
    return (directory / "dataset.json").is_file() and (directory / "imagesTr").is_dir()


def msd_task_dirs(task: str = "Task04_Hippocampus") -> list[Path]:
    """Where :func:`msd_task_dir` looks, in order.

    ``$MEDNETS_DATA/<folder>`` (if ``MEDNETS_DATA`` is set), then
    ``cache_dir()/<folder>`` (see :func:`mednets.data.samples.cache_dir`), where
    ``<folder>`` is ``TASKS[task].folder``, e.g. ``msd-hippocampus``.

    Raises:
        ValueError: If ``task`` is not in :data:`TASKS`.

    Example:
        >>> msd_task_dirs("Task01_BrainTumour")[-1].name
        'msd-braintumour'
    """
    folder = _task(task).folder
    dirs = []
    if os.environ.get("MEDNETS_DATA"):
        dirs.append(Path(os.environ["MEDNETS_DATA"]).expanduser() / folder)
    dirs.append(cache_dir() / folder)
    return dirs


def _extract_atomically(archive: Path, target: Path) -> None:
    """Extract a task archive into ``target``: all of it, or nothing.

    The members go to a temporary folder beside ``target`` (same file system), through
    :mod:`tarfile`'s ``data`` filter (no absolute paths, links out of the tree, devices
    or setuid bits). The folder holding ``dataset.json`` is then renamed to ``target``
    in one step. Any failure removes the temporary folder.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        if (tmp / "dataset.json").is_file():
            root = tmp
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp folders are private (0700)
        else:
            found = sorted(p.parent for p in tmp.glob("*/dataset.json") if not _is_hidden(p.parent))
            if not found:
                raise ValueError(
                    f"{archive}: expected a dataset.json at its top or one folder down, found none"
                )
            root = found[0]
        if target.exists():
            if _is_task_dir(target):  # another process finished first
                return
            if any(target.iterdir()):
                raise ValueError(
                    f"{target} exists but is not a complete task (expected dataset.json and imagesTr/); "
                    "remove it and call again"
                )
            target.rmdir()
        os.replace(root, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def msd_task_dir(task: str = "Task04_Hippocampus", *, download: bool = True, opener=None) -> Path:
    """The folder of a Decathlon task, found on disk or downloaded from its publisher.

    Looks in :func:`msd_task_dirs` (``$MEDNETS_DATA/<folder>``, then the cache). A copy
    counts when it has ``dataset.json`` and ``imagesTr/``. Otherwise downloads the
    publisher's ``.tar`` (Task04: about 27 MB; Task01: about 7 GB) into the cache,
    checks its MD5, and extracts it atomically: into a temporary folder beside the
    target, renamed when complete, so an interrupted run leaves no half-extracted task.
    The archive is deleted after a successful extraction; a verified archive left by
    an interrupted extraction is reused by the next call.

    Source: the Medical Segmentation Decathlon (Simpson et al. 2019, arXiv:1902.09063;
    Antonelli et al. 2022), CC BY-SA 4.0; URLs and MD5s in :data:`TASKS`.

    Args:
        task: A key of :data:`TASKS`. Defaults to ``"Task04_Hippocampus"``.
        download: Allow downloading. Defaults to True.
        opener: ``opener(url, timeout=...)`` returning a readable binary response,
            passed to :func:`mednets.data.samples.download_file`. Defaults to None
            (:func:`urllib.request.urlopen`).

    Returns:
        The task folder (holding ``dataset.json``, ``imagesTr/``, ``labelsTr/``).

    Raises:
        ValueError: If ``task`` is unknown, the archive's MD5 differs (the message
            gives both digests; nothing is kept), the archive holds no
            ``dataset.json``, or the cache holds an incomplete copy of the task.
        DecathlonNotAvailable: If there is no copy and it cannot be downloaded; the
            message says where to put the files. A subclass of
            :class:`~mednets.data.samples.SampleNotAvailable`.
        tarfile.TarError: If extraction fails (a truncated archive, or a member the
            ``data`` filter refuses); no task folder is left.

    Example:
        >>> TASKS["Task04_Hippocampus"].folder
        'msd-hippocampus'
        >>> msd_task_dir("Task99_Unknown")
        Traceback (most recent call last):
        ...
        ValueError: task must be one of ['Task01_BrainTumour', 'Task04_Hippocampus'], got 'Task99_Unknown'
    """
    spec = _task(task)
    for directory in msd_task_dirs(task):
        if _is_task_dir(directory):
            return directory
    target = cache_dir() / spec.folder
    where = " or ".join(str(d) for d in msd_task_dirs(task))
    help_text = (
        f"download {spec.url} (MD5 {spec.md5}) and extract it so that {where} holds dataset.json, "
        f"imagesTr/ and labelsTr/ (or set MEDNETS_DATA to a folder holding {spec.folder}/)"
    )
    if not download:
        raise DecathlonNotAvailable(f"{task} is not on disk and download=False: {help_text}")
    if target.exists() and any(target.iterdir()):
        raise ValueError(
            f"{target} exists but is not a complete task (expected dataset.json and imagesTr/); "
            "remove it and call again"
        )
    archive = cache_dir() / f"{task}.tar"
    if archive.is_file() and file_digest(archive, "md5") != spec.md5:
        archive.unlink()  # a stale or corrupt archive: fetch it again
    if not archive.is_file():
        try:
            download_file(spec.url, archive, spec.md5, algorithm="md5", opener=opener)
        except (OSError, urllib.error.URLError) as err:
            raise DecathlonNotAvailable(
                f"could not download {spec.url} ({err}); offline? {help_text}"
            ) from err
    _extract_atomically(archive, target)
    archive.unlink()
    return target


@dataclass(frozen=True)
class DecathlonCase:
    """One case of a Decathlon task.

    Attributes:
        case_id: The file name without ``.nii.gz``, e.g. ``"hippocampus_001"``.
        image_path: Its image, ``imagesTr/`` or ``imagesTs/``.
        label_path: Its label map in ``labelsTr/``, or None for an unlabelled case.
    """

    case_id: str
    image_path: Path
    label_path: Path | None = None


def read_dataset_json(root) -> dict:
    """Read a task's ``dataset.json``.

    Args:
        root: The task folder.

    Returns:
        The parsed JSON: ``name``, ``labels`` (``{"0": "background", ...}``),
        ``modality``, ``training`` (a list of ``{"image": ..., "label": ...}``), ``test``
        (a list of paths) and more.

    Raises:
        ValueError: If the file is missing or is not a JSON object; the message names it.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = (Path(tmp) / "dataset.json").write_text('{"labels": {"0": "background"}}')
        ...     read_dataset_json(tmp)["labels"]
        {'0': 'background'}
    """
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise ValueError(f"expected a Decathlon dataset.json at {path}, found none")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def label_names(root) -> dict[int, str]:
    """The label values of a task and their names, from its ``dataset.json``.

    Args:
        root: The task folder.

    Returns:
        ``{value: name}``, sorted by value, e.g. ``{0: 'background', 1: 'Anterior',
        2: 'Posterior'}`` for Task04.

    Raises:
        ValueError: If ``dataset.json`` is missing or has no ``labels`` mapping.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = (Path(tmp) / "dataset.json").write_text('{"labels": {"1": "a", "0": "bg"}}')
        ...     label_names(tmp)
        {0: 'bg', 1: 'a'}
    """
    labels = read_dataset_json(root).get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{Path(root) / 'dataset.json'}: expected a 'labels' mapping, got {labels!r}")
    return {int(k): str(v) for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))}


_label_names_of = label_names  # load_case's argument of the same name hides it


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def decathlon_cases(root, *, labelled: bool = True) -> list[DecathlonCase]:
    """The cases of a Decathlon task folder, sorted by case id.

    Training cases come from the ``training`` list of ``dataset.json`` (pairs of
    ``"./imagesTr/x.nii.gz"`` and ``"./labelsTr/x.nii.gz"``), or, when it has none,
    from the ``.nii.gz`` files in ``imagesTr/`` with the same names in ``labelsTr/``.
    Unlabelled cases come from its ``test`` list, or from ``imagesTs/``. Files whose
    name starts with a dot (the archives' macOS ``._*`` companions) are skipped.
    Files are not opened: :func:`load_case` checks them.

    Source: the layout of the Decathlon's archives (Simpson et al. 2019,
    arXiv:1902.09063, section 2; Antonelli et al., Nat. Commun. 13:4128, 2022).

    Args:
        root: The task folder (see :func:`msd_task_dir`).
        labelled: True for the training cases (with labels), False for the test
            images (``label_path`` None). Defaults to True.

    Returns:
        A list of :class:`DecathlonCase`.

    Raises:
        ValueError: If ``dataset.json`` is missing or unreadable, or an entry of its
            ``training`` list is not an image/label pair.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     root = Path(tmp)
        ...     _ = (root / "dataset.json").write_text('{"labels": {"0": "background"}}')
        ...     for name in ("imagesTr/b.nii.gz", "imagesTr/a.nii.gz", "imagesTr/._a.nii.gz"):
        ...         (root / name).parent.mkdir(exist_ok=True)
        ...         _ = (root / name).write_bytes(b"")
        ...     [(c.case_id, c.label_path.name) for c in decathlon_cases(root)]
        [('a', 'a.nii.gz'), ('b', 'b.nii.gz')]
    """
    root = Path(root)
    meta = read_dataset_json(root)
    cases = []
    if labelled:
        entries = meta.get("training") or []
        if entries:
            for entry in entries:
                if not (isinstance(entry, dict) and "image" in entry and "label" in entry):
                    raise ValueError(
                        f"{root / 'dataset.json'}: expected training entries like "
                        f"{{'image': ..., 'label': ...}}, got {entry!r}"
                    )
                image, label = root / entry["image"], root / entry["label"]
                if not _is_hidden(image):
                    cases.append(
                        DecathlonCase(
                            _case_id(image), Path(os.path.normpath(image)), Path(os.path.normpath(label))
                        )
                    )
        else:
            for image in sorted((root / "imagesTr").glob("*.nii*")):
                if not _is_hidden(image):
                    cases.append(DecathlonCase(_case_id(image), image, root / "labelsTr" / image.name))
    else:
        entries = meta.get("test") or []
        if entries:
            paths = [root / (e["image"] if isinstance(e, dict) else e) for e in entries]
        else:
            paths = sorted((root / "imagesTs").glob("*.nii*"))
        for image in paths:
            if not _is_hidden(image):
                cases.append(DecathlonCase(_case_id(image), Path(os.path.normpath(image)), None))
    return sorted(cases, key=lambda c: c.case_id)


def load_case(case: DecathlonCase, *, label_names: dict[int, str] | None = None):
    """Load one Decathlon case in RAS+: image ``(C, X, Y, Z)`` float32, label ``(X, Y, Z)`` uint8.

    Images may be stored in any dtype (Task04 mixes float32 and uint8) and as 3D
    ``(X, Y, Z)`` (becomes ``C = 1``) or 4D ``(X, Y, Z, C)`` (Task01's four MRI
    channels become ``(4, X, Y, Z)``). Labels may be stored as integers or as floats
    with whole values (two Task04 labels are float32). Both go through
    :func:`mednets.data.nifti.load_nifti`, so they are reoriented to RAS+ the same way.
    Spacings are in mm; intensities are as stored (no normalisation).

    Source: the Decathlon's file conventions (Simpson et al. 2019, arXiv:1902.09063);
    the dtype mixture is that of the public Task04 training set.

    Args:
        case: A :class:`DecathlonCase` from :func:`decathlon_cases`.
        label_names: The allowed label values ``{value: name}``. Defaults to None:
            read from the ``dataset.json`` two folders above the image, if there is
            one (otherwise values are not checked).

    Returns:
        ``(image, label, meta)``: ``image`` float32 ``(C, X, Y, Z)``; ``label`` uint8
        ``(X, Y, Z)`` or None for an unlabelled case; ``meta`` a dict with
        ``case_id``, ``affine`` (the RAS+ 4x4, mm), ``spacing`` (mm per axis),
        ``orientation`` (axis codes on disk), ``image_dtype`` and ``label_dtype``
        (dtypes on disk), ``image_path``, ``label_path``.

    Raises:
        ValueError: Naming the case and both values, if the image or label file is
            missing, the image and label differ in shape or affine, the label holds a
            value that ``label_names`` does not list, or a float label holds a value
            that is not a whole number. Also for files that are not valid NIfTI.

    Example:
        >>> import tempfile, nibabel as nib
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     root = Path(tmp)
        ...     for sub in ("imagesTr", "labelsTr"):
        ...         (root / sub).mkdir()
        ...     img = np.zeros((4, 5, 6, 2), np.float32)  # a 2-channel image, 4D on disk
        ...     nib.save(nib.Nifti1Image(img, np.eye(4)), root / "imagesTr" / "c1.nii.gz")
        ...     seg = np.ones((4, 5, 6), np.uint8)
        ...     nib.save(nib.Nifti1Image(seg, np.eye(4)), root / "labelsTr" / "c1.nii.gz")
        ...     _ = (root / "dataset.json").write_text('{"labels": {"0": "bg", "1": "fg"}}')
        ...     image, label, meta = load_case(decathlon_cases(root)[0])
        >>> image.shape, str(image.dtype), label.shape, str(label.dtype), meta["case_id"]
        ((2, 4, 5, 6), 'float32', (4, 5, 6), 'uint8', 'c1')
    """
    cid = case.case_id
    image_path = Path(case.image_path)
    if not image_path.is_file():
        raise ValueError(f"case {cid}: expected an image file at {image_path}, found none")
    image, affine, info = load_nifti(image_path, dtype=np.float32, channels=True)
    meta = {
        "case_id": cid,
        "affine": affine,
        "spacing": info["spacing"],
        "orientation": info["orientation"],
        "image_dtype": info["disk_dtype"],
        "label_dtype": None,
        "image_path": image_path,
        "label_path": None,
    }
    if case.label_path is None:
        return image, None, meta
    label_path = Path(case.label_path)
    if not label_path.is_file():
        raise ValueError(
            f"case {cid}: expected a label file at {label_path} (image {image_path}), found none"
        )
    label, label_affine, label_info = load_nifti(label_path, dtype=np.float32)
    if label.shape != image.shape[1:]:
        raise ValueError(
            f"case {cid}: image and label differ in shape (X, Y, Z): "
            f"image {image.shape[1:]}, label {label.shape}"
        )
    if info["orientation"] != label_info["orientation"] or not np.allclose(affine, label_affine, atol=1e-3):
        raise ValueError(
            f"case {cid}: image and label differ in affine: image "
            f"{np.round(affine, 4).tolist()} ({info['orientation']}), label "
            f"{np.round(label_affine, 4).tolist()} ({label_info['orientation']})"
        )
    values = np.unique(label)
    fractional = values[np.mod(values, 1) != 0]
    if fractional.size:
        raise ValueError(
            f"case {cid}: expected whole-number label values in {label_path.name}, "
            f"got {fractional[:5].tolist()} (stored as {label_info['disk_dtype']})"
        )
    if label_names is None:
        dataset_json = image_path.parent.parent / "dataset.json"
        if dataset_json.is_file():
            label_names = _label_names_of(image_path.parent.parent)
    if label_names is not None:
        unknown = sorted(set(values.astype(int).tolist()) - set(label_names))
        if unknown:
            raise ValueError(
                f"case {cid}: label values {unknown} are not listed in dataset.json; "
                f"expected values in {dict(sorted(label_names.items()))}"
            )
    elif values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError(
            f"case {cid}: expected label values in [0, 255], got [{values.min()}, {values.max()}]"
        )
    meta["label_dtype"] = label_info["disk_dtype"]
    meta["label_path"] = label_path
    return image, label.astype(np.uint8), meta


#: The seed of the book's one Task04 split (:func:`hippocampus_split`).
HIPPOCAMPUS_SPLIT_SEED = 0
#: Its sizes: train, validation, test (260 cases).
HIPPOCAMPUS_SPLIT_SIZES = (180, 30, 50)


def split_cases(
    case_ids: Sequence[str],
    sizes: Sequence[int] = HIPPOCAMPUS_SPLIT_SIZES,
    seed: int = HIPPOCAMPUS_SPLIT_SEED,
) -> dict[str, list[str]]:
    """Split case ids into train / validation / test, by case, reproducibly.

    The ids are sorted, permuted with ``numpy.random.default_rng(seed)``, and cut into
    consecutive blocks of ``sizes``; each block is returned sorted. The result depends
    only on the set of ids, ``sizes`` and ``seed``, not on their order or the platform.

    The Decathlon does not say which cases come from the same subject: a split by case
    may put two scans of one person on both sides, which would flatter held-out scores.

    Args:
        case_ids: Unique case ids.
        sizes: ``(train, val, test)`` counts, summing to ``len(case_ids)``. Defaults
            to ``(180, 30, 50)``.
        seed: The permutation's seed. Defaults to 0.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, disjoint lists of ids.

    Raises:
        ValueError: If ``sizes`` does not have three non-negative entries summing to
            the number of cases, or the ids repeat.

    Example:
        >>> split = split_cases([f"case_{i:02d}" for i in range(10)], sizes=(6, 2, 2))
        >>> {k: len(v) for k, v in split.items()}
        {'train': 6, 'val': 2, 'test': 2}
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"expected unique case ids, got repeats {repeated[:5]}")
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != 3 or min(sizes) < 0 or sum(sizes) != len(ids):
        raise ValueError(
            f"expected three non-negative sizes (train, val, test) summing to the {len(ids)} cases, "
            f"got {sizes} (sum {sum(sizes)})"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    cut1, cut2 = sizes[0], sizes[0] + sizes[1]
    return {
        "train": sorted(ids[i] for i in order[:cut1]),
        "val": sorted(ids[i] for i in order[cut1:cut2]),
        "test": sorted(ids[i] for i in order[cut2:]),
    }


def hippocampus_split(root=None) -> dict[str, list[str]]:
    """The book's fixed Task04 split: 180 train / 30 validation / 50 test cases.

    Used by Chapter 6 and ``benchmarks/bench_hippocampus.py``, so all report numbers
    on the same 50 held-out cases. It is :func:`split_cases` of the 260 training case
    ids with :data:`HIPPOCAMPUS_SPLIT_SIZES` and :data:`HIPPOCAMPUS_SPLIT_SEED`.

    Args:
        root: The Task04 folder. Defaults to None (:func:`msd_task_dir`, which may
            download the archive).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, sorted case ids.

    Raises:
        ValueError: If the folder does not hold 260 training cases.
        DecathlonNotAvailable: If ``root`` is None and the task cannot be found or
            downloaded.

    Example:
        >>> HIPPOCAMPUS_SPLIT_SIZES, HIPPOCAMPUS_SPLIT_SEED  # split = hippocampus_split()
        ((180, 30, 50), 0)
    """
    root = msd_task_dir("Task04_Hippocampus") if root is None else Path(root)
    return split_cases([c.case_id for c in decathlon_cases(root)])
