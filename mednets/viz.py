"""Figures every chapter uses: orthogonal slices with label overlays, training curves.

All functions return a matplotlib ``Figure`` (and never call ``plt.show``), so a
notebook displays it and a test can inspect it.

Every figure is drawn at :data:`DPI` dots per inch, with no text smaller than
:data:`MIN_FONT_SIZE` points: legible in the rendered book, and small enough (a few tens
of kB as PNG) to keep the committed notebooks small.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

__all__ = ["show_slices", "plot_history", "plot_confusion_matrix", "BRATS_LABELS", "DPI", "MIN_FONT_SIZE"]

#: Resolution of every figure, in dots per inch (the inline backend's default is 72).
DPI = 90
#: The smallest font size, in points, any text of these figures uses.
MIN_FONT_SIZE = 8

#: Default label names and colours (BraTS; 3 and 4 both mean enhancing tumour).
BRATS_LABELS = {
    1: ("necrotic core", "#1f77b4"),
    2: ("oedema", "#2ca02c"),
    3: ("enhancing tumour", "#d62728"),
    4: ("enhancing tumour", "#d62728"),
}
_FALLBACK_COLOURS = ["#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b"]


def _as_volume(image, channel: int | None) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 4:
        c = 0 if channel is None else channel
        if not 0 <= c < image.shape[0]:
            raise ValueError(
                f"channel must be in [0, {image.shape[0]}) for an image of shape "
                f"{image.shape} (C, X, Y, Z), got {channel}"
            )
        image = image[c]
    if image.ndim != 3:
        raise ValueError(f"image must have shape (X, Y, Z) or (C, X, Y, Z), got shape {image.shape}")
    return image


def show_slices(
    image,
    label=None,
    *,
    channel: int | None = None,
    index: Sequence[int] | None = None,
    labels: Mapping[int, tuple[str, str]] | None = None,
    alpha: float = 0.45,
    title: str | None = None,
    figsize: tuple[float, float] = (9, 3.5),
    cmap: str = "gray",
    dpi: float = DPI,
):
    """Draw the three orthogonal slices of a volume, optionally with a label overlay.

    Axes follow the book's convention (see *Conventions*): an array indexed
    ``[x, y, z]`` in RAS+ orientation. The sagittal view is ``x = i``, the coronal
    ``y = j`` and the axial ``z = k``; each is drawn with the patient's superior or
    anterior side up, and each axis is labelled with the array axis it shows and the
    direction it points to (R: right, A: anterior, S: superior).

    Whenever ``label`` is given, the figure has a legend: one entry per label name
    present (3 and 4 share the name "enhancing tumour" in BraTS), every entry of
    ``labels`` when that mapping is given, or "no labelled voxels" when ``label`` is
    all background.

    Args:
        image: Array of shape (X, Y, Z), or (C, X, Y, Z) with ``channel`` selecting one.
        label: Optional integer label map of shape (X, Y, Z); 0 is background.
            Defaults to None.
        channel: Which channel of a 4D image to draw. Defaults to 0.
        index: The (i, j, k) slice indices. Defaults to the centre of the label's
            foreground if there is one, else the centre of the volume.
        labels: Map from label value to (name, colour) for the overlay and legend.
            Defaults to :data:`BRATS_LABELS` when the values fit it.
        alpha: Opacity of the overlay. Defaults to 0.45.
        title: Figure title. Defaults to None.
        figsize: Figure size in inches. Defaults to (9, 3.5).
        cmap: Colour map of the image. Defaults to "gray".
        dpi: Resolution in dots per inch. Defaults to :data:`DPI`.

    Returns:
        The matplotlib Figure, with three axes.

    Raises:
        ValueError: If the image is not 3D or 4D, the channel or the index is out of
            range, or the label's shape differs from the image's.

    Example:
        >>> label = np.zeros((32, 32, 16), np.uint8)
        >>> label[10:20, 10:20, 5:9] = 2
        >>> fig = show_slices(np.random.rand(32, 32, 16), label)
        >>> len(fig.axes), [t.get_text() for t in fig.legends[0].get_texts()]
        (3, ['oedema'])
    """
    vol = _as_volume(image, channel)
    lab = None
    if label is not None:
        lab = np.asarray(label)
        if lab.shape != vol.shape:
            raise ValueError(f"label shape {lab.shape} does not match image shape {vol.shape}")
    if index is None:
        if lab is not None and lab.any():
            index = tuple(int(round(c.mean())) for c in np.nonzero(lab))
        else:
            index = tuple(s // 2 for s in vol.shape)
    if len(index) != 3 or any(not 0 <= i < s for i, s in zip(index, vol.shape)):
        raise ValueError(f"index must be 3 indices inside shape {vol.shape}, got {index}")
    i, j, k = index

    finite = vol[np.isfinite(vol)]
    vmin, vmax = np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0)
    # (name, slice, where, horizontal axis, vertical axis)
    views = [
        ("sagittal", np.s_[i, :, :], f"x = {i}", "y \u2192 A", "z \u2192 S"),
        ("coronal", np.s_[:, j, :], f"y = {j}", "x \u2192 R", "z \u2192 S"),
        ("axial", np.s_[:, :, k], f"z = {k}", "x \u2192 R", "y \u2192 A"),
    ]
    values = [] if lab is None else [int(v) for v in np.unique(lab) if v != 0]
    explicit = labels is not None
    if labels is None:
        labels = (
            BRATS_LABELS
            if set(values) <= set(BRATS_LABELS)
            else {
                v: (f"label {v}", _FALLBACK_COLOURS[n % len(_FALLBACK_COLOURS)]) for n, v in enumerate(values)
            }
        )

    fig, axes = plt.subplots(1, 3, figsize=figsize, dpi=dpi)
    for ax, (name, sl, where, xlabel, ylabel) in zip(axes, views):
        # Transpose so the second index runs vertically; origin="lower" puts
        # superior (or anterior) at the top.
        ax.imshow(vol[sl].T, cmap=cmap, origin="lower", vmin=vmin, vmax=vmax, interpolation="nearest")
        if lab is not None and values:
            overlay = np.zeros(lab[sl].shape + (4,))
            for v in values:
                rgba = matplotlib.colors.to_rgba(labels.get(v, (f"label {v}", "#ff00ff"))[1], alpha)
                overlay[lab[sl] == v] = rgba
            ax.imshow(overlay.transpose(1, 0, 2), origin="lower", interpolation="nearest")
        ax.set_title(f"{name} ({where})", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=MIN_FONT_SIZE, labelpad=2)
        ax.set_ylabel(ylabel, fontsize=MIN_FONT_SIZE, labelpad=2)
        ax.set_xticks([])
        ax.set_yticks([])
    if lab is not None:
        seen: dict[str, str] = {}
        for v in sorted(set(values) | (set(labels) if explicit else set())):
            name, colour = labels.get(v, (f"label {v}", "#ff00ff"))
            seen.setdefault(name, colour)
        handles = [Patch(color=c, alpha=max(alpha, 0.6), label=n) for n, c in seen.items()]
        if not handles:
            handles = [Patch(facecolor="none", edgecolor="0.5", label="no labelled voxels")]
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), 4),
            fontsize=MIN_FONT_SIZE + 1,
            frameon=False,
        )
    if title:
        fig.suptitle(title, fontsize=10)
    rows = 0 if lab is None else -(-len(fig.legends[0].legend_handles) // 4)
    fig.tight_layout(rect=(0, 0.07 * rows, 1, 1))
    return fig


def plot_history(
    history,
    *,
    keys: Sequence[str] | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (6, 3.2),
    dpi: float = DPI,
):
    """Draw training curves from a Keras ``History`` or a dict of lists.

    Keys ``k`` and ``val_k`` share one axis, so training and validation curves of the
    same quantity sit together; each quantity gets its own panel, with "epoch" (whole
    numbers, counted from 1) on the x axis and the quantity's name on the y axis.

    Args:
        history: A ``keras.callbacks.History`` (its ``.history`` is used) or a mapping
            from name to a list of per-epoch values.
        keys: Which quantities to draw (without the ``val_`` prefix). Defaults to all.
        title: Figure title. Defaults to None.
        figsize: Size of one panel in inches. Defaults to (6, 3.2).
        dpi: Resolution in dots per inch. Defaults to :data:`DPI`.

    Returns:
        The matplotlib Figure, one axes per quantity.

    Raises:
        ValueError: If ``history`` is empty or not a mapping, or a key is missing.

    Example:
        >>> fig = plot_history({"loss": [0.9, 0.5, 0.4], "val_loss": [1.0, 0.7, 0.6]})
        >>> ax = fig.axes[0]
        >>> ax.get_xlabel(), ax.get_ylabel(), [line.get_label() for line in ax.get_lines()]
        ('epoch', 'loss', ['loss', 'val_loss'])
    """
    hist = getattr(history, "history", history)
    if not isinstance(hist, Mapping) or not hist:
        raise ValueError(f"history must be a non-empty mapping of lists, got {type(hist)}")
    names = [k for k in hist if not k.startswith("val_")]
    names += [k[4:] for k in hist if k.startswith("val_") and k[4:] not in names]
    if keys is not None:
        missing = [k for k in keys if k not in names]
        if missing:
            raise ValueError(f"keys {missing} not in history; available: {names}")
        names = list(keys)
    fig, axes = plt.subplots(
        1,
        len(names),
        figsize=(figsize[0] * min(len(names), 3) / 1.6 if len(names) > 1 else figsize[0], figsize[1]),
        squeeze=False,
        dpi=dpi,
    )
    for ax, name in zip(axes[0], names):
        for key, style in ((name, "-"), (f"val_{name}", "--")):
            if key in hist:
                values = np.asarray(hist[key], dtype=float)
                ax.plot(np.arange(1, len(values) + 1), values, style, marker=".", label=key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_ylabel(name, fontsize=9)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=MIN_FONT_SIZE)
        ax.legend(fontsize=MIN_FONT_SIZE)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(
    cm,
    class_names: Sequence[str],
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (3.4, 3),
    dpi: float = DPI,
):
    """Draw a confusion matrix (rows: true class, columns: predicted class).

    Args:
        cm: Square array of counts, shape (num_classes, num_classes).
        class_names: One name per class.
        title: Axes title. Defaults to None.
        figsize: Figure size in inches. Defaults to (3.4, 3).
        dpi: Resolution in dots per inch. Defaults to :data:`DPI`.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: If ``cm`` is not square with one row per class name.

    Example:
        >>> fig = plot_confusion_matrix([[5, 1], [2, 4]], ["healthy", "tumour"])
        >>> fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()
        ('predicted', 'true')
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(
            f"cm must be square with one row per class ({len(class_names)}), got shape {cm.shape}"
        )
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    ax.imshow(cm, cmap=ListedColormap(plt.cm.Blues(np.linspace(0.05, 0.8, 256))))
    threshold = (cm.min() + cm.max()) / 2 if cm.size else 0
    for (r, c), v in np.ndenumerate(cm):
        colour = "white" if cm.max() > cm.min() and v > threshold else "black"
        ax.text(c, r, f"{v:g}", ha="center", va="center", fontsize=9, color=colour)
    ax.set_xticks(range(len(class_names)), class_names, fontsize=MIN_FONT_SIZE)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=MIN_FONT_SIZE)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true", fontsize=9)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
