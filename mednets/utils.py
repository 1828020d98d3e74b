"""Small helpers shared by both frameworks' chapters.

Nothing here imports TensorFlow or PyTorch at module level: :func:`seed_everything`
seeds a framework only if it has already been imported.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import random
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "seed_everything",
    "show_source",
    "check_spatial_dims",
    "check_divisible",
    "nearest_valid_sizes",
    "markdown_table",
    "human_bytes",
    "atomic_write",
]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, and PyTorch or TensorFlow when they are imported.

    Frameworks are seeded only if already imported, so calling this never pulls in a
    framework you do not use. Import your framework first, then seed.

    Args:
        seed: Any non-negative integer.

    Example:
        >>> seed_everything(0); a = np.random.rand()
        >>> seed_everything(0); b = np.random.rand()
        >>> a == b
        True
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)
    if "tensorflow" in sys.modules or "keras" in sys.modules:
        import keras

        keras.utils.set_random_seed(seed)


def show_source(obj: object) -> None:
    """Show the source code of a function, class or module of the package.

    In Jupyter (the book, Colab, a local notebook) it renders as highlighted Markdown;
    in a plain Python session it prints. It is how a chapter shows the package's code
    without re-defining it. It returns nothing, so a notebook cell shows the listing
    once (use :func:`inspect.getsource` for the text).

    Args:
        obj: A function, class, method or module.

    Example:
        >>> show_source(check_spatial_dims)  # doctest: +ELLIPSIS
        def check_spatial_dims(spatial_dims: int) -> int:
        ...
    """
    source = textwrap.dedent(inspect.getsource(obj))
    try:
        from IPython import get_ipython
        from IPython.display import Markdown
        from IPython.display import display as ipy_display
    except ImportError:  # pragma: no cover - IPython is not a hard dependency
        print(source)
        return
    if get_ipython() is not None:
        where = inspect.getsourcefile(obj) or ""
        rel = where.split("mednets" + os.sep, 1)[-1] if "mednets" in where else where
        ipy_display(Markdown(f"`mednets/{rel}`\n```python\n{source}```"))
    else:
        print(source)


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is 2 or 3, else raise a ``ValueError``."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def nearest_valid_sizes(size: int, divisor: int) -> tuple[int, int]:
    """The multiples of ``divisor`` just below and just above ``size``.

    Example:
        >>> nearest_valid_sizes(100, 32)
        (96, 128)
    """
    lower = max(divisor, (size // divisor) * divisor)
    upper = max(divisor, -(-size // divisor) * divisor)
    return lower, upper


def check_divisible(spatial_shape: Sequence, divisor: int, what: str = "input") -> None:
    """Raise a ``ValueError`` unless every spatial size is a multiple of ``divisor``.

    The message names the offending shape and, per axis, the nearest valid sizes, so the
    user knows what to crop or pad to.

    Args:
        spatial_shape: Spatial sizes only (no batch or channel axes). ``None`` entries
            (unknown sizes) are accepted.
        divisor: The network's total down-sampling factor, e.g. 2**depth.
        what: What the shape belongs to, for the message. Defaults to "input".
    """
    bad = []
    for axis, size in enumerate(spatial_shape):
        if size is None:
            continue
        if size < divisor or size % divisor:
            lo, hi = nearest_valid_sizes(int(size), divisor)
            near = f"{lo} or {hi}" if lo != hi else f"{hi}"
            bad.append(f"axis {axis}: {size} (nearest valid: {near})")
    if bad:
        raise ValueError(
            f"{what} spatial shape {tuple(spatial_shape)} must be divisible by {divisor}; " + "; ".join(bad)
        )


class _MarkdownTable(str):
    """A string that renders as a Markdown table in Jupyter and prints as text."""

    def _repr_markdown_(self) -> str:
        return str(self)


def markdown_table(rows: Sequence[Sequence], headers: Sequence[str]) -> _MarkdownTable:
    """Format rows as a Markdown table (a ``str`` that renders in notebooks).

    Floats are shown with up to four significant digits; integers with thousands
    separators.

    Example:
        >>> print(markdown_table([("a", 1234)], ["name", "n"]))
        | name | n |
        | --- | --- |
        | a | 1,234 |
    """

    def fmt(v) -> str:
        if isinstance(v, (bool, np.bool_)):
            return str(bool(v))
        if isinstance(v, (int, np.integer)):
            return f"{int(v):,}"
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.4g}"
        return str(v)

    lines = ["| " + " | ".join(map(str, headers)) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, expected {len(headers)}: {row!r}")
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return _MarkdownTable("\n".join(lines))


def human_bytes(n: float) -> str:
    """Format a byte count with binary units.

    Example:
        >>> human_bytes(3 * 1024**2)
        '3.0 MiB'
    """
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Write a file atomically: yield a temporary path next to ``path``, then rename it.

    The caller writes the temporary file (by name: h5py, nibabel and ``open`` all take
    a path). When the ``with`` block ends without an exception, the file gets the
    permissions a plain ``open`` would give it (``mkstemp`` makes it private, 0600) and
    is renamed onto ``path`` with :func:`os.replace`, which is atomic on one file
    system: a reader sees the old file or the new one, never half of one. On any
    exception (including ``KeyboardInterrupt``) the temporary file is removed and
    ``path`` is left untouched. The parent folder is created if needed.

    Args:
        path: The final file.
        suffix: Suffix of the temporary file (e.g. ``".part"`` for downloads, or
            ``".nii.gz"`` where a writer infers the format from the name). Defaults to
            ".tmp".

    Yields:
        The temporary path (a ``Path`` in the same folder, hidden name
        ``.{name}.XXXX{suffix}``). It exists, empty, when the block starts.

    Raises:
        FileNotFoundError: If the block deleted or renamed the temporary file.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_write(folder / "a.txt") as tmp:
        ...     _ = tmp.write_text("done")
        >>> (folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir())
        ('done', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
