"""The book's one real BraTS-format case, found locally or downloaded and verified.

The case comes from the public BrainLesion/BraTS repository (Apache-2.0): four
co-registered MRI modalities (240 x 240 x 155, 1 mm, BraTS 2023 naming) and a label map.
**The label map is the output of a BraTS-challenge segmentation algorithm, not a manual
annotation**: treat it as a good reference, not as ground truth.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from mednets.data.brats import Subject, subject_from_dir
from mednets.utils import atomic_write

__all__ = [
    "SAMPLE_FILES",
    "CHECKSUMS",
    "SampleNotAvailable",
    "cache_dir",
    "sample_dirs",
    "file_digest",
    "download_file",
    "sample_brats",
]

_BASE = "https://raw.githubusercontent.com/BrainLesion/BraTS/528ab54e0599e30b831c759fa001eb95c2b053d9"

#: File name in the sample directory -> (download URL, SHA-256).
SAMPLE_FILES = {
    "t1c.nii.gz": (
        f"{_BASE}/data/preprocessed_case/t1c.nii.gz",
        "398ef610a2070826ffb93092e646216adf63c0c0ad896d6c9d778433e57966b3",
    ),
    "t1n.nii.gz": (
        f"{_BASE}/data/preprocessed_case/t1n.nii.gz",
        "ba2f57ea39b7b14347af44c925b760d99ba22c70f4303d5aa5435b5986a33079",
    ),
    "t2f.nii.gz": (
        f"{_BASE}/data/preprocessed_case/t2f.nii.gz",
        "6e72edf9e6bc87277df733e2e72c9acddc139b0dbc35399452afdccf051884e9",
    ),
    "t2w.nii.gz": (
        f"{_BASE}/data/preprocessed_case/t2w.nii.gz",
        "a32356a8afe56285355897602451d5f815fc20cf12216bd12a8986fbe8dc6f5f",
    ),
    "seg.nii.gz": (
        f"{_BASE}/outputs/segmentation.nii.gz",
        "2729f0947180454ffbe04ff77372feb66ff9afbbb81e026e8f67d8fa23206506",
    ),
}

SAMPLE_NAME = "brats-sample"


class SampleNotAvailable(RuntimeError):
    """The sample is neither on disk nor downloadable (e.g. offline)."""


def cache_dir() -> Path:
    """The user cache directory: ``$MEDNETS_CACHE``, else ``$XDG_CACHE_HOME/mednets``,
    else ``~/.cache/mednets``."""
    if os.environ.get("MEDNETS_CACHE"):
        return Path(os.environ["MEDNETS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mednets"


def sample_dirs() -> list[Path]:
    """Where :func:`sample_brats` looks, in order: ``$MEDNETS_DATA/brats-sample`` (if
    ``MEDNETS_DATA`` is set), then ``cache_dir()/brats-sample``."""
    dirs = []
    if os.environ.get("MEDNETS_DATA"):
        dirs.append(Path(os.environ["MEDNETS_DATA"]).expanduser() / SAMPLE_NAME)
    dirs.append(cache_dir() / SAMPLE_NAME)
    return dirs


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in SAMPLE_FILES)


#: Checksum algorithms :func:`download_file` accepts, with the names its messages use.
CHECKSUMS = {"sha256": "SHA-256", "md5": "MD5"}


def file_digest(path, algorithm: str = "sha256") -> str:
    """The hex digest of a file, read in 1 MiB blocks.

    Args:
        path: The file.
        algorithm: ``"sha256"`` or ``"md5"`` (any :func:`hashlib.new` name works).
            Defaults to ``"sha256"``.

    Returns:
        The lower-case hex digest.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = (Path(tmp) / "a.txt").write_bytes(b"abc")
        ...     file_digest(Path(tmp) / "a.txt", "md5")
        '900150983cd24fb0d6963f7d28e17f72'
    """
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_file(url, dest, sha256, *, algorithm="sha256", opener=None, timeout=60):
    """Download ``url`` to ``dest`` atomically and check its checksum.

    The bytes go to a temporary file next to ``dest`` (:func:`mednets.utils.atomic_write`),
    which is renamed to ``dest`` only when the checksum matches; on any failure the
    temporary file is removed and ``dest`` is left untouched.

    Args:
        url: Source URL (``https://`` or ``file://``).
        dest: Destination path.
        sha256: Expected hex digest (of the algorithm named by ``algorithm``; the
            argument keeps its historical name).
        algorithm: ``"sha256"`` or ``"md5"`` (the Decathlon publishes MD5 sums).
            Defaults to ``"sha256"``.
        opener: A function ``opener(url, timeout=...)`` returning a readable binary
            response. Defaults to None (:func:`urllib.request.urlopen`).
        timeout: Seconds. Defaults to 60.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        ValueError: If the checksum differs (the message gives both digests), or
            ``algorithm`` is unknown.
        OSError: If the download fails (``urllib.error.URLError`` is an ``OSError``).
    """
    if algorithm not in CHECKSUMS:
        raise ValueError(f"algorithm must be one of {sorted(CHECKSUMS)}, got {algorithm!r}")
    opener = urllib.request.urlopen if opener is None else opener
    dest = Path(dest)
    digest = hashlib.new(algorithm)
    with atomic_write(dest, suffix=".part") as tmp:
        with open(tmp, "wb") as out, opener(url, timeout=timeout) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != sha256:
            raise ValueError(
                f"{CHECKSUMS[algorithm]} mismatch for {url}: expected {sha256}, got {digest.hexdigest()}"
            )
    return dest


def sample_brats(*, download=True, verify=False, opener=None, missing_ok=False) -> Subject | None:
    """Return the real BraTS-format sample case as a :class:`~mednets.data.brats.Subject`.

    Looks in ``$MEDNETS_DATA/brats-sample``, then in the user cache directory (see
    :func:`cache_dir`); otherwise downloads the five files (about 7 MB) into the cache,
    checking each SHA-256. It prints nothing when it finds or downloads the case.

    A chapter (on a laptop, in CI, or on Colab) calls ``sample_brats(missing_ok=True)``:
    the local copy first, then the checked download, and only when both fail a
    one-line notice on stdout and None, so the chapter can skip its real-data cells::

        subject = sample_brats(missing_ok=True)
        if subject is not None:
            image, label, meta = load_subject(subject)

    The label map is an algorithm's output (BraTS 2023 convention, 3 = enhancing
    tumour), not a manual annotation.

    Args:
        download: Allow downloading. Defaults to True.
        verify: Check the SHA-256 of a copy found on disk too. Defaults to False
            (downloads are always checked).
        opener: Passed to :func:`download_file` (tests use it). Defaults to None.
        missing_ok: When the case is not on disk and cannot be downloaded (offline,
            or a download whose checksum does not match), print a notice saying why
            and where to put the files, and return None instead of raising. Defaults
            to False.

    Returns:
        The subject, with modalities ``t1``, ``t1ce``, ``t2``, ``flair`` and a label;
        None only with ``missing_ok=True`` when both the local copy and the download fail.

    Raises:
        SampleNotAvailable: If no copy exists and it cannot be downloaded; the message
            says where to put the files (not with ``missing_ok=True``).
        ValueError: If a checksum does not match (a download's, not with
            ``missing_ok=True``; a local copy's with ``verify=True``, always).

    Example:
        >>> import tempfile
        >>> saved = {k: os.environ.pop(k, None) for k in ("MEDNETS_DATA", "MEDNETS_CACHE")}
        >>> os.environ["MEDNETS_CACHE"] = tempfile.mkdtemp()  # an empty cache
        >>> sample_brats(download=False, missing_ok=True)  # nothing on disk, no download
        BraTS sample not available: the BraTS sample is not on disk and download=False: ...
        >>> del os.environ["MEDNETS_CACHE"]
        >>> os.environ.update({k: v for k, v in saved.items() if v is not None})
    """
    found = _local_sample(verify)
    if found is not None:
        return found
    try:
        return _download_sample(download, opener)
    except (SampleNotAvailable, ValueError) as err:
        if not missing_ok:
            raise
        print(f"BraTS sample not available: {err}")
        return None


def _local_sample(verify: bool) -> Subject | None:
    for directory in sample_dirs():
        if _complete(directory):
            if verify:
                for name, (_, sha) in SAMPLE_FILES.items():
                    actual = file_digest(directory / name)
                    if actual != sha:
                        raise ValueError(
                            f"SHA-256 mismatch for {directory / name}: expected {sha}, got {actual}"
                        )
            return subject_from_dir(directory, subject_id=SAMPLE_NAME)
    return None


def _download_sample(download: bool, opener) -> Subject:
    target = cache_dir() / SAMPLE_NAME
    where = " or ".join(str(d) for d in sample_dirs())
    help_text = (
        f"put the files {sorted(SAMPLE_FILES)} in {where} (or set MEDNETS_DATA to a folder "
        f"holding {SAMPLE_NAME}/); their URLs and SHA-256 sums are in mednets.data.samples.SAMPLE_FILES"
    )
    if not download:
        raise SampleNotAvailable(f"the BraTS sample is not on disk and download=False: {help_text}")
    for name, (url, sha) in SAMPLE_FILES.items():
        if (target / name).is_file():
            continue
        try:
            download_file(url, target / name, sha, opener=opener)
        except (OSError, urllib.error.URLError) as err:
            raise SampleNotAvailable(f"could not download {url} ({err}); offline? {help_text}") from err
    return subject_from_dir(target, subject_id=SAMPLE_NAME)
