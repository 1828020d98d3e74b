"""mednets.viz: legible figures, labelled axes, whole-number epochs, a legend on every overlay."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.text import Text

from mednets.viz import DPI, MIN_FONT_SIZE, plot_confusion_matrix, plot_history, show_slices


def _volume_and_label(values=(2, 4)):
    image = np.random.default_rng(0).random((20, 24, 16)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    for n, v in enumerate(values):
        label[5 + n : 9, 6 + n : 10, 4 + n : 7] = v
    return image, label


def _legend_texts(fig):
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def _all_texts(fig):
    return [t for t in fig.findobj(Text) if t.get_text() and t.get_visible()]


def _assert_legible(fig):
    small = [(t.get_text(), t.get_fontsize()) for t in _all_texts(fig) if t.get_fontsize() < MIN_FONT_SIZE]
    assert not small, f"text below {MIN_FONT_SIZE} pt: {small}"
    assert fig.get_dpi() == DPI


def _assert_inside_figure(fig):
    """Nothing drawn sticks out of the canvas: no title, label or legend is cut off."""
    fig.canvas.draw()
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # in inches, only what is drawn
    width, height = fig.get_size_inches()
    assert drawn.x0 >= -0.01 and drawn.y0 >= -0.01, drawn
    assert drawn.x1 <= width + 0.01 and drawn.y1 <= height + 0.01, drawn


def test_show_slices_legend_names_every_label_present():
    image, label = _volume_and_label((1, 2, 4))
    fig = show_slices(image, label)
    assert _legend_texts(fig) == ["necrotic core", "oedema", "enhancing tumour"]
    _assert_legible(fig)
    _assert_inside_figure(fig)


def test_show_slices_legend_for_an_all_background_label():
    image, label = _volume_and_label(())
    fig = show_slices(image, label)
    assert _legend_texts(fig) == ["no labelled voxels"]


def test_show_slices_no_legend_without_a_label():
    image, _ = _volume_and_label()
    assert show_slices(image).legends == []


def test_show_slices_explicit_labels_are_all_in_the_legend():
    image, label = _volume_and_label((1,))
    labels = {1: ("hippocampus head", "#1f77b4"), 2: ("hippocampus body", "#ff7f0e")}
    fig = show_slices(image, label, labels=labels)
    assert _legend_texts(fig) == ["hippocampus head", "hippocampus body"]


def test_show_slices_unknown_values_get_named_entries():
    image, label = _volume_and_label((5, 7))
    assert _legend_texts(show_slices(image, label)) == ["label 5", "label 7"]


def test_show_slices_axes_are_labelled_with_ras_directions():
    image, label = _volume_and_label()
    fig = show_slices(image, label)
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes] == [
        ("y \u2192 A", "z \u2192 S"),
        ("x \u2192 R", "z \u2192 S"),
        ("x \u2192 R", "y \u2192 A"),
    ]


@pytest.mark.parametrize("epochs", [2, 3, 7, 12])
def test_plot_history_epoch_ticks_are_whole_numbers(epochs):
    values = list(np.linspace(1.0, 0.2, epochs))
    fig = plot_history({"loss": values, "val_loss": values, "dice": values[::-1]})
    for ax in fig.axes:
        fig.canvas.draw()
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    _assert_legible(fig)
    _assert_inside_figure(fig)


def test_plot_history_axis_labels_and_legend():
    fig = plot_history({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "acc": [0.5, 0.8]})
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes] == [("epoch", "loss"), ("epoch", "acc")]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["loss", "val_loss"]
    # Epochs count from 1.
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 2]


def test_plot_history_reads_a_keras_like_history_object():
    class History:
        history = {"loss": [3.0, 2.0, 1.0]}

    fig = plot_history(History())
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == [3.0, 2.0, 1.0]


def test_plot_history_rejects_empty():
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_history({})


def test_plot_confusion_matrix_labels_and_contrast():
    fig = plot_confusion_matrix([[9, 1], [0, 4]], ["healthy", "tumour"])
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    assert colours["9"] == "white" and colours["0"] == "black"
    _assert_legible(fig)
    _assert_inside_figure(fig)


def test_figures_are_small_as_png(tmp_path):
    image, label = _volume_and_label((1, 2, 4))
    figures = [show_slices(image, label), plot_history({"loss": [1, 0.5, 0.2], "val_loss": [1, 0.6, 0.4]})]
    for n, fig in enumerate(figures):
        path = tmp_path / f"{n}.png"
        fig.savefig(path)
        assert path.stat().st_size < 100_000
        plt.close(fig)
