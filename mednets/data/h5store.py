"""An HDF5 store of 3D subjects, chunked for fast random patch reads.

Decompressing four ``.nii.gz`` files costs seconds per subject, and a training loop
wants one random patch from a random subject many times a second. The fix (used by the
seed blog post, after Isensee's 2017 BraTS code) is to convert the data set once into a
single HDF5 file. Done well, the file is *chunked*: the volume is cut into small blocks,
each compressed on its own, so reading a patch decompresses only the blocks it touches.

Layout of a store::

    /                    attrs: format, modalities (channel names, JSON),
                         label_convention ("brats2018", "brats2023", "msd", "plain",
                         or "" when no label tells)
    /subjects/<id>/image float32 (C, X, Y, Z), chunks (C, cx, cy, cz), compressed
    /subjects/<id>/label uint8 (X, Y, Z), chunks (cx, cy, cz)           (if labelled)
    /subjects/<id>/foreground int32 (N, 3) sample of labelled voxels    (if labelled)
    /subjects/<id>       attrs: affine, spacing, orientation, offset, full_shape,
                         mean, std (per channel, inside the brain), label_convention,
                         modalities, paths, disk_dtypes (JSON)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np

from mednets.data.brats import (
    DEFAULT_MODALITIES,
    LABEL_CONVENTIONS,
    Subject,
    as_label_map,
    brats_regions,
    candidate_conventions,
    load_subject,
    normalise_modalities,
    resolve_label_convention,
    tumour_classes,
)
from mednets.data.crop import as_triple, check_patch_inside, foreground_bbox, sample_patch_start
from mednets.data.transforms import brain_mask, channel_stats, random_flip_rot90, zscore_normalise
from mednets.data.transforms import depth_first as to_depth_first
from mednets.utils import atomic_write

__all__ = ["FORMAT", "PLAIN_LABELS", "convert_to_h5", "H5Volumes", "RandomPatches"]

#: Format tag written to the root attributes.
FORMAT = "mednets-h5-v1"

#: ``label_convention`` of a store whose labels are plain class indices with no tumour
#: meaning (e.g. the Decathlon's hippocampus: 0 background, 1 anterior, 2 posterior).
PLAIN_LABELS = "plain"

#: At most this many foreground coordinates are stored per subject for the sampler.
MAX_FOREGROUND_POINTS = 20_000

_COMPRESSION = {"gzip": ("gzip", 4), "lzf": ("lzf", None), None: (None, None), "none": (None, None)}


def _chunk_shape(shape, chunks):
    return tuple(min(int(c), int(s)) for c, s in zip(chunks, shape))


def _item_from(subject, modalities, label_convention, default=None):
    """Load one input item: a Subject, a subject directory, or (id, image, label).

    ``default`` (the existing store's convention) applies to array labels when
    ``label_convention`` is None: arrays have no file naming to go by.
    """
    if isinstance(subject, tuple) and len(subject) == 3:
        sid, image, label = subject
        label_convention = label_convention or default
        where = f"subject {sid!r}"
        image = np.asarray(image)
        if image.dtype.kind not in "biuf":
            raise ValueError(f"{where}: image must hold real numbers, got dtype {image.dtype}")
        image = image.astype(np.float32, copy=False)
        if image.ndim != 4:
            raise ValueError(f"{where}: image must have shape (C, X, Y, Z), got {image.shape}")
        if len(modalities) != image.shape[0]:
            raise ValueError(
                f"{where}: image has {image.shape[0]} channels but {len(modalities)} modalities "
                f"{list(modalities)} were given"
            )
        convention = None
        if label is not None:
            label = as_label_map(label, where)
            if label.shape != image.shape[1:]:
                raise ValueError(
                    f"{where}: label shape {label.shape} must equal image spatial shape {image.shape[1:]}"
                )
            if label.size and (label.min() < 0 or label.max() > 255):
                raise ValueError(
                    f"{where}: label values must lie in 0..255 (stored as uint8), "
                    f"got {int(label.min())}..{int(label.max())}"
                )
            if label_convention != PLAIN_LABELS:
                try:
                    convention = resolve_label_convention(label, label_convention, where=where)
                except ValueError as err:
                    raise ValueError(
                        f"{err}; for class labels with no tumour meaning (e.g. the Decathlon's "
                        f"hippocampus), pass label_convention={PLAIN_LABELS!r}"
                    ) from None
            label = label.astype(np.uint8)
        meta = {
            "id": str(sid),
            "modalities": tuple(modalities),
            "affine": np.eye(4),
            "spacing": (1.0, 1.0, 1.0),
            "orientation": "RAS",
            "paths": {},
            "disk_dtypes": {},
            "label_convention": convention,
        }
        return image, label, meta
    if isinstance(subject, (Subject, str, os.PathLike)):
        if label_convention == PLAIN_LABELS:
            raise ValueError(
                f"label_convention={PLAIN_LABELS!r} takes (id, image, label) tuples; got a BraTS subject "
                f"{_subject_id(subject)!r}, whose labels follow a tumour convention"
            )
        return load_subject(subject, modalities, label_convention)
    raise ValueError(
        f"expected a Subject, a directory or an (id, image, label) tuple, got {type(subject).__name__}"
    )


def _channel_names(modalities, subjects) -> tuple[str, ...]:
    """BraTS modality names for BraTS subjects; any distinct names for array tuples."""
    if not all(isinstance(s, tuple) for s in subjects):
        return tuple(normalise_modalities(modalities))
    names = tuple(modalities)
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"modalities must be distinct non-empty channel names, got {list(names)}")
    return names


class _ConventionCheck:
    """Track the label conventions of the subjects written to one store."""

    def __init__(self, path, stored, explicit):
        self.path = path
        self.convention = stored or (None if explicit == PLAIN_LABELS else explicit)
        self.plain = explicit == PLAIN_LABELS or stored == PLAIN_LABELS
        if stored and explicit and stored != explicit:
            raise ValueError(
                f"cannot append to {path}: it stores label convention {stored!r}, "
                f"got label_convention={explicit!r}"
            )
        self.owners: dict[str, list[str]] = {} if not stored else {stored: ["(the existing store)"]}
        self.loose: dict[str, list[str]] = {}

    def _mixed(self, sid, theirs):
        owners = "; ".join(f"{c}: {ids[:5]}" for c, ids in self.owners.items())
        raise ValueError(
            f"{self.path}: subjects of different label conventions cannot share a store; subject {sid!r} "
            f"is {theirs}, but {owners}. Convert them to one convention first, or use separate stores"
        )

    def add(self, sid: str, label: np.ndarray | None, convention: str | None) -> None:
        if label is None or self.plain:
            return
        if convention is None:
            candidates = candidate_conventions(np.unique(label).tolist())
            if self.convention is not None and self.convention not in candidates:
                self._mixed(sid, f"one of {candidates}")
            self.loose[sid] = candidates
            return
        if self.convention not in (None, convention):
            self._mixed(sid, repr(convention))
        self.convention = convention
        self.owners.setdefault(convention, []).append(sid)
        for other, candidates in self.loose.items():
            if convention not in candidates:
                self.owners.setdefault(f"one of {candidates}", []).append(other)
                self._mixed(sid, repr(convention))

    @property
    def stored(self) -> str:
        return PLAIN_LABELS if self.plain else (self.convention or "")


def _subject_id(subject):
    if isinstance(subject, Subject):
        return subject.id
    if isinstance(subject, tuple) and len(subject) == 3:
        return str(subject[0])
    if isinstance(subject, (str, os.PathLike)):
        return Path(subject).name
    raise ValueError(
        f"expected a Subject, a directory or an (id, image, label) tuple, got {type(subject).__name__}"
    )


def _write_subject(group, image, label, meta, crop_foreground, margin, chunks, compression, level, seed):
    full_shape = image.shape[1:]
    offset = (0, 0, 0)
    mask = brain_mask(image)
    if crop_foreground:
        fg = mask if label is None else (mask | (label > 0))
        start, stop = foreground_bbox(fg, margin=margin)
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        image = image[(slice(None),) + box]
        label = None if label is None else label[box]
        mask = mask[box]
        offset = start
    spatial_chunks = _chunk_shape(image.shape[1:], chunks)
    opts = {"compression": compression, "compression_opts": level} if compression else {}
    group.create_dataset(
        "image", data=image, chunks=(image.shape[0],) + spatial_chunks, shuffle=bool(compression), **opts
    )
    if label is not None:
        group.create_dataset("label", data=label, chunks=spatial_chunks, **opts)
        points = np.argwhere(label > 0).astype(np.int32)
        if len(points) > MAX_FOREGROUND_POINTS:
            keep = np.random.default_rng(seed).choice(len(points), MAX_FOREGROUND_POINTS, replace=False)
            points = points[np.sort(keep)]
        group.create_dataset("foreground", data=points.reshape(-1, 3))
    if mask.any():
        mean, std = channel_stats(image, mask)
    else:
        mean, std = np.zeros(image.shape[0]), np.ones(image.shape[0])
    attrs = group.attrs
    attrs["affine"] = np.asarray(meta["affine"], dtype=np.float64)
    attrs["spacing"] = np.asarray(meta["spacing"], dtype=np.float64)
    attrs["orientation"] = meta["orientation"]
    attrs["offset"] = np.asarray(offset, dtype=np.int64)
    attrs["full_shape"] = np.asarray(full_shape, dtype=np.int64)
    attrs["mean"] = mean
    attrs["std"] = std
    attrs["modalities"] = json.dumps(list(meta["modalities"]))
    attrs["label_convention"] = meta["label_convention"] or ""
    attrs["paths"] = json.dumps(meta["paths"])
    attrs["disk_dtypes"] = json.dumps(meta["disk_dtypes"])


def convert_to_h5(
    subjects: Iterable[Subject | str | os.PathLike | tuple],
    path: str | os.PathLike,
    *,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    label_convention: str | None = None,
    crop_foreground: bool = False,
    margin: int = 2,
    chunks: Sequence[int] = (16, 16, 16),
    compression: str | None = "lzf",
    append: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Convert subjects into one chunked, compressed HDF5 store, atomically.

    The file is written to a temporary name in the same directory and renamed to
    ``path`` only when every subject has been written, so an error (a missing or
    corrupt file, mismatched shapes...) or an interruption never leaves a partial store
    at ``path``. With ``append=True`` the existing store is copied, extended and swapped
    in the same way; subjects already present are skipped.

    Args:
        subjects: Iterable of :class:`~mednets.data.brats.Subject`, subject
            directories, or ``(id, image, label)`` tuples of arrays (image
            ``(C, X, Y, Z)``, label ``(X, Y, Z)`` or None), e.g. phantoms.
        path: Output ``.h5`` file.
        modalities: Channel names, in order. For BraTS subjects, BraTS modality names
            (see :data:`~mednets.data.brats.MODALITY_ALIASES`); for array tuples, any
            distinct names, e.g. ``("MRI",)`` from a Decathlon task's ``dataset.json``.
            Defaults to ``("flair", "t1", "t1ce", "t2")``.
        label_convention: ``"brats2018"``, ``"brats2023"`` or ``"msd"`` for tumour
            labels, :data:`PLAIN_LABELS` (``"plain"``) for class indices with no
            tumour meaning (stored and sampled as they are), or None: each subject's
            file naming, else its values (see
            :func:`~mednets.data.brats.resolve_label_convention`). The store records
            it, and refuses subjects of different conventions. Defaults to None.
        crop_foreground: Crop each subject to the bounding box of its brain (non-zero
            voxels) and label, plus ``margin``; the crop's corner is stored as ``offset``
            so predictions can be pasted back. Defaults to False.
        margin: Voxels kept around the foreground when cropping. Defaults to 2.
        chunks: Spatial chunk shape; each image chunk holds all channels, so a patch
            read touches ``ceil(patch / chunk)`` chunks per axis. Defaults to
            ``(16, 16, 16)`` (64 KiB of float32 for 4 channels); in
            ``benchmarks/bench_h5_vs_nifti.py`` it reads random 64^3 patches faster
            than 32^3 chunks and compresses as well.
        compression: ``"lzf"`` (fast), ``"gzip"`` (smaller, slower) or None.
            Defaults to ``"lzf"``.
        append: Add to an existing store, skipping subjects already in it. Defaults
            to False.
        overwrite: Replace an existing store. Defaults to False.
        progress: Show a tqdm progress bar. Defaults to True.

    Returns:
        A summary dict: ``path``, ``written`` and ``skipped`` (lists of ids),
        ``n_subjects`` (in the store), ``bytes`` (file size) and ``raw_bytes`` (the
        uncompressed size of the arrays written).

    Raises:
        FileExistsError: If ``path`` exists and neither ``append`` nor ``overwrite``.
        ValueError: On bad input (see :func:`~mednets.data.brats.load_subject`; the
            message names the subject), a duplicated id, modalities that differ from
            the existing store's, or subjects of different label conventions (the
            message names them).

    Example:
        >>> import tempfile
        >>> from mednets.data.phantoms import make_phantom
        >>> path = Path(tempfile.mkdtemp()) / "ph.h5"
        >>> image, label = make_phantom((16, 16, 16), seed=0)
        >>> info = convert_to_h5([("ph0", image, label)], path, progress=False)
        >>> info["written"], H5Volumes(path).label_convention
        (['ph0'], 'brats2018')
    """
    from tqdm.auto import tqdm

    path = Path(path)
    subjects = list(subjects)
    modalities = _channel_names(modalities, subjects)
    if label_convention is not None and label_convention != PLAIN_LABELS:
        if label_convention not in LABEL_CONVENTIONS:
            raise ValueError(
                f"label_convention must be one of {[*LABEL_CONVENTIONS, PLAIN_LABELS]} or None, "
                f"got {label_convention!r}"
            )
    if compression not in _COMPRESSION:
        raise ValueError(f"compression must be one of 'gzip', 'lzf' or None, got {compression!r}")
    compression, level = _COMPRESSION[compression]
    chunks = as_triple("chunks", chunks)
    if min(chunks) < 1:
        raise ValueError(f"chunks must be >= 1 on every axis, got {chunks}")
    if append and overwrite:
        raise ValueError("append and overwrite cannot both be True")
    if path.exists() and not (append or overwrite):
        raise FileExistsError(
            f"{path} exists; pass append=True to add subjects or overwrite=True to replace it"
        )
    ids = [_subject_id(s) for s in subjects]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"subject ids must be unique, got duplicates {duplicates}")
    bad_ids = [i for i in ids if not i or "/" in i or i in (".", "..")]
    if bad_ids:
        raise ValueError(
            f"subject ids name HDF5 groups: they must be non-empty, without '/', and not '.' or '..'; "
            f"got {bad_ids[:3]}"
        )

    written, skipped, raw_bytes = [], [], 0
    with atomic_write(path) as tmp:
        if append and path.exists():
            shutil.copyfile(path, tmp)
            mode = "r+"
        else:
            mode = "w"
        with h5py.File(tmp, mode) as f:
            if mode == "w":
                f.attrs["format"] = FORMAT
                f.attrs["modalities"] = json.dumps(list(modalities))
                f.create_group("subjects")
                stored = None
            else:
                stored = f.attrs.get("label_convention") or None
                existing = tuple(json.loads(f.attrs["modalities"]))
                if existing != modalities:
                    raise ValueError(
                        f"cannot append to {path}: it stores modalities {list(existing)}, "
                        f"got {list(modalities)}"
                    )
            conventions = _ConventionCheck(path, stored, label_convention)
            group = f["subjects"]
            bar = tqdm(
                list(zip(ids, subjects)), desc=f"HDF5 {path.name}", unit="subject", disable=not progress
            )
            for i, (sid, subject) in enumerate(bar):
                bar.set_postfix_str(sid)
                if sid in group:
                    skipped.append(sid)
                    continue
                image, label, meta = _item_from(subject, modalities, label_convention, stored)
                conventions.add(sid, label, meta["label_convention"])
                if conventions.plain:
                    meta["label_convention"] = PLAIN_LABELS
                raw_bytes += image.nbytes + (0 if label is None else label.nbytes)
                _write_subject(
                    group.create_group(sid),
                    image,
                    label,
                    meta,
                    crop_foreground,
                    margin,
                    chunks,
                    compression,
                    level,
                    seed=i,
                )
                written.append(sid)
            bar.close()
            f.attrs["label_convention"] = conventions.stored
            n_subjects = len(group)
    return {
        "path": str(path),
        "written": written,
        "skipped": skipped,
        "n_subjects": n_subjects,
        "bytes": path.stat().st_size,
        "raw_bytes": raw_bytes,
    }


class H5Volumes:
    """Read a store written by :func:`convert_to_h5`.

    The file is opened lazily, on the first read, and the handle is dropped when the
    object is pickled: each PyTorch ``DataLoader`` worker then opens its own handle
    (HDF5 handles must not be shared across processes).

    Args:
        path: The ``.h5`` file.

    Attributes:
        modalities: The channel names, e.g. ``("flair", "t1", "t1ce", "t2")`` or
            ``("MRI",)``.
        ids: The subject ids, sorted.
        label_convention: ``"brats2018"``, ``"brats2023"``, ``"msd"``,
            :data:`PLAIN_LABELS`, or None when no stored label tells.

    Example:
        >>> store = H5Volumes("brats.h5")  # doctest: +SKIP
        >>> image, label = store.read_patch(store.ids[0], (10, 20, 30), (64, 64, 64))  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"HDF5 store not found: {self.path}")
        self._file = None
        with self._open() as f:
            if f.attrs.get("format") != FORMAT:
                raise ValueError(
                    f"{self.path} is not a mednets store: format {f.attrs.get('format')!r}, "
                    f"expected {FORMAT!r}"
                )
            self.modalities = tuple(json.loads(f.attrs["modalities"]))
            self.ids = sorted(f["subjects"].keys())
            convention = f.attrs.get("label_convention")
            if convention is None:  # a store written before conventions were recorded
                found = {str(f["subjects"][sid].attrs.get("label_convention", "")) for sid in self.ids}
                convention = next(iter(found - {""}), "") if len(found - {""}) == 1 else ""
            #: The store's label convention: "brats2018", "brats2023", "msd",
            #: ``PLAIN_LABELS``, or None (unknown: no labels, or none that differ).
            self.label_convention = str(convention) or None
            self._shapes = {sid: tuple(f["subjects"][sid]["image"].shape[1:]) for sid in self.ids}
            self._labelled = {sid: "label" in f["subjects"][sid] for sid in self.ids}

    def _open(self):
        return h5py.File(self.path, "r")

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            self._file = self._open()
        return self._file

    def close(self) -> None:
        """Close the file handle (it reopens on the next read)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def __len__(self):
        return len(self.ids)

    def __repr__(self):
        return f"H5Volumes({str(self.path)!r}, {len(self)} subjects, modalities={list(self.modalities)})"

    def _group(self, sid):
        if sid not in self._shapes:
            raise KeyError(
                f"subject {sid!r} not in {self.path}; it has {len(self.ids)} subjects, e.g. {self.ids[:3]}"
            )
        return self.file["subjects"][sid]

    def shape(self, sid: str) -> tuple[int, int, int]:
        """Spatial shape ``(X, Y, Z)`` of a stored subject (after any crop)."""
        self._group(sid)
        return self._shapes[sid]

    def has_label(self, sid: str) -> bool:
        """Whether the subject was stored with a label map."""
        self._group(sid)
        return self._labelled[sid]

    def meta(self, sid: str) -> dict:
        """The subject's metadata (affine, spacing, orientation, offset, statistics...)."""
        attrs = self._group(sid).attrs
        out = {}
        for key, value in attrs.items():
            if key in ("modalities", "paths", "disk_dtypes"):
                value = json.loads(value)
            elif isinstance(value, np.ndarray) and key in ("offset", "full_shape"):
                value = tuple(int(v) for v in value)
            out[key] = value
        out["label_convention"] = out.get("label_convention") or None
        out["shape"] = self._shapes[sid]
        return out

    def foreground(self, sid: str) -> np.ndarray:
        """A sample (up to 20,000) of labelled voxel coordinates, int32 ``(N, 3)``."""
        group = self._group(sid)
        return group["foreground"][()] if "foreground" in group else np.zeros((0, 3), np.int32)

    def read(self, sid: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The whole subject: ``(image float32 (C, X, Y, Z), label uint8 (X, Y, Z) or None)``."""
        group = self._group(sid)
        label = group["label"][()] if "label" in group else None
        return group["image"][()], label

    def read_patch(
        self, sid: str, start: Sequence[int], size: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Read one patch; HDF5 decompresses only the chunks the patch overlaps.

        Args:
            sid: Subject id.
            start: Corner ``(x, y, z)``.
            size: Patch size ``(x, y, z)``.

        Returns:
            ``(image (C, x, y, z) float32, label (x, y, z) uint8 or None)``.

        Raises:
            ValueError: If the patch does not lie inside the stored volume.
        """
        group = self._group(sid)
        start, size = as_triple("start", start), as_triple("size", size)
        try:
            check_patch_inside(start, size, self._shapes[sid])
        except ValueError as err:
            raise ValueError(f"subject {sid!r} in {self.path}: {err}") from None
        box = tuple(slice(s, s + n) for s, n in zip(start, size))
        image = group["image"][(slice(None),) + box]
        label = group["label"][box] if "label" in group else None
        return image, label


class RandomPatches:
    """Random training patches from an :class:`H5Volumes` store (framework-free core).

    Item ``index`` of epoch ``epoch`` is a pure function of ``(seed, epoch, index)``:
    subject ``index % len(ids)``, a patch corner from
    :func:`~mednets.data.crop.sample_patch_start` (foreground-biased), optional z-score
    normalisation with the subject's stored whole-volume statistics, and optional
    random flips and rotations. :mod:`mednets.torch.data` and :mod:`mednets.keras.data`
    wrap it.

    Args:
        store: An :class:`H5Volumes` or a path to one.
        patch_size: ``(x, y, z)``. Defaults to ``(64, 64, 64)``.
        samples_per_epoch: Items per epoch. Defaults to None (one per subject).
        foreground_fraction: Share of patches centred on a tumour voxel. Defaults to 0.5.
        normalise: Z-score each channel with the stored brain statistics. Defaults to True.
        augment: Random flips and axial quarter turns. Defaults to False.
        target: ``"classes"`` gives an int64 ``(x, y, z)`` map. For tumour labels
            these are the classes of :func:`~mednets.data.brats.tumour_classes`
            (0 background, 1 non-enhancing core, 2 oedema, 3 enhancing), mapped from
            the store's label convention (4 -> 3 for BraTS 2018, 1 <-> 2 for the
            Decathlon); a :data:`PLAIN_LABELS` store gives its labels as they are.
            ``"regions"`` gives float32 ``(3, x, y, z)`` WT/TC/ET masks (tumour
            labels only). Defaults to ``"classes"``.
        ids: Subset of subject ids. Defaults to None (all).
        seed: Base seed. Defaults to 0.
        depth_first: Move the slice axis z to the first spatial axis (image
            ``(C, z, x, y)``, target ``(z, x, y)``), as networks with ``(t, s, s)``
            kernels or anisotropic levels expect (see
            :func:`~mednets.data.transforms.depth_first`). Defaults to False.

    Attributes:
        output_size: Spatial size of the items: ``patch_size``, or ``(z, x, y)`` with
            ``depth_first``.
    """

    def __init__(
        self,
        store: H5Volumes | str | os.PathLike,
        patch_size: Sequence[int] = (64, 64, 64),
        samples_per_epoch: int | None = None,
        foreground_fraction: float = 0.5,
        normalise: bool = True,
        augment: bool = False,
        target: str = "classes",
        ids: Sequence[str] | None = None,
        seed: int = 0,
        depth_first: bool = False,
    ) -> None:
        self.store = store if isinstance(store, H5Volumes) else H5Volumes(store)
        self.patch_size = as_triple("patch_size", patch_size)
        self.ids = list(self.store.ids if ids is None else ids)
        missing = [i for i in self.ids if i not in self.store._shapes]
        if missing:
            raise ValueError(f"ids not in {self.store.path}: {missing}")
        if not self.ids:
            raise ValueError(f"no subjects to sample from in {self.store.path}")
        for sid in self.ids:
            shape = self.store._shapes[sid]
            if any(p > s for p, s in zip(self.patch_size, shape)):
                raise ValueError(
                    f"patch size {self.patch_size} is larger than subject {sid!r} of shape {shape}"
                )
        if target not in ("classes", "regions"):
            raise ValueError(f"target must be 'classes' or 'regions', got {target!r}")
        if target == "regions" and self.store.label_convention == PLAIN_LABELS:
            raise ValueError(
                f"target='regions' needs tumour labels, but {self.store.path} stores plain class labels "
                f"(label_convention={PLAIN_LABELS!r}); use target='classes'"
            )
        self.samples_per_epoch = len(self.ids) if samples_per_epoch is None else int(samples_per_epoch)
        self.foreground_fraction = foreground_fraction
        self.normalise = normalise
        self.augment = augment
        self.target = target
        self.seed = seed
        self.depth_first = bool(depth_first)
        x, y, z = self.patch_size
        self.output_size = (z, x, y) if self.depth_first else self.patch_size
        self.epoch = 0
        self._cache = {}

    def __len__(self):
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Draw different patches in each epoch (items stay reproducible per epoch)."""
        self.epoch = int(epoch)

    def _subject_info(self, sid):
        if sid not in self._cache:
            meta = self.store.meta(sid)
            convention = self.store.label_convention or meta["label_convention"]
            self._cache[sid] = (self.store.foreground(sid), meta["mean"], meta["std"], convention)
        return self._cache[sid]

    def get(self, index: int, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index``: ``(image float32 (C, x, y, z), target)`` as NumPy arrays.

        The target is int64 ``(x, y, z)`` classes or float32 ``(3, x, y, z)`` regions
        (spatial axes ``(z, x, y)`` with ``depth_first``).
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, index])
        sid = self.ids[index % len(self.ids)]
        foreground, mean, std, convention = self._subject_info(sid)
        start = sample_patch_start(
            self.store._shapes[sid], self.patch_size, rng, foreground, self.foreground_fraction
        )
        image, label = self.store.read_patch(sid, start, self.patch_size)
        if label is None:
            label = np.zeros(self.patch_size, np.uint8)
        if self.normalise:
            image = zscore_normalise(image, brain_mask(image), mean, std)
        if self.augment:
            image, label = random_flip_rot90(image, label, rng)
        image = image.astype(np.float32, copy=False)
        if self.depth_first:
            image, label = to_depth_first(image), to_depth_first(label)
        if convention == PLAIN_LABELS:
            return image, label.astype(np.int64)
        where = f"subject {sid!r} in {self.store.path}"
        if self.target == "classes":
            return image, tumour_classes(label, convention, where=where)
        return image, brats_regions(label, convention, where=where).astype(np.float32)

    __getitem__ = get
