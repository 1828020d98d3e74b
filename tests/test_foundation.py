"""The foundation: light import, seeding, figures, parameter counts, small helpers."""

import json
import pkgutil
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mednets
from mednets.utils import (
    atomic_write,
    check_divisible,
    check_spatial_dims,
    human_bytes,
    markdown_table,
    nearest_valid_sizes,
    seed_everything,
    show_source,
)
from mednets.viz import plot_confusion_matrix, plot_history, show_slices

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "tensorflow", "keras"}


def _light_modules():
    """Every module of the package outside mednets.keras and mednets.torch."""
    names = ["mednets"]
    for info in pkgutil.walk_packages(mednets.__path__, "mednets."):
        if not info.name.startswith(("mednets.keras", "mednets.torch")):
            names.append(info.name)
    return names


def test_plain_import_is_light():
    modules = _light_modules()
    assert "mednets.viz" in modules and "mednets.utils" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(set({sorted(HEAVY)!r}) & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", f"heavy frameworks imported: {out.stdout}"


def test_framework_packages_import_their_framework():
    code = "import sys, mednets.torch\nprint('torch' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["True", "False"]


def test_seed_everything_numpy_and_random():
    seed_everything(123)
    a = (np.random.rand(3), random.random())
    seed_everything(123)
    b = (np.random.rand(3), random.random())
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    seed_everything(124)
    assert not np.array_equal(np.random.rand(3), a[0])


def test_seed_everything_torch():
    import torch

    seed_everything(7)
    a = torch.randn(4)
    seed_everything(7)
    b = torch.randn(4)
    assert torch.equal(a, b)


def test_seed_everything_keras():
    import keras

    seed_everything(7)
    a = keras.random.normal((4,)).numpy()
    seed_everything(7)
    b = keras.random.normal((4,)).numpy()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [-1, 1.5, "0"])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="non-negative integer"):
        seed_everything(bad)


def test_show_slices_three_axes_and_overlay_legend():
    image = np.random.default_rng(0).random((4, 20, 24, 16)).astype(np.float32)
    label = np.zeros((20, 24, 16), np.uint8)
    label[5:9, 6:10, 4:7] = 2
    label[6:8, 7:9, 5:6] = 4
    fig = show_slices(image, label, channel=1)
    assert len(fig.axes) == 3
    legend_texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert legend_texts == ["oedema", "enhancing tumour"]
    # The default slice is the centre of the foreground, shown in the titles.
    assert fig.axes[2].get_title() == "axial (z = 5)"


def test_show_slices_rejects_mismatched_label():
    with pytest.raises(ValueError, match=r"\(10, 10, 10\).*\(10, 10, 8\)"):
        show_slices(np.zeros((10, 10, 8)), np.zeros((10, 10, 10), np.uint8))


def test_show_slices_rejects_bad_rank_and_channel():
    with pytest.raises(ValueError, match=r"got shape \(10, 10\)"):
        show_slices(np.zeros((10, 10)))
    with pytest.raises(ValueError, match="channel must be in"):
        show_slices(np.zeros((2, 4, 4, 4)), channel=2)


def test_plot_history_pairs_train_and_validation():
    fig = plot_history({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "acc": [0.5, 0.8]})
    assert len(fig.axes) == 2
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["loss", "val_loss"]
    with pytest.raises(ValueError, match="not in history"):
        plot_history({"loss": [1.0]}, keys=["dice"])


def test_plot_confusion_matrix_checks_shape():
    fig = plot_confusion_matrix([[3, 1], [0, 4]], ["a", "b"])
    assert [t.get_text() for t in fig.axes[0].texts] == ["3", "1", "0", "4"]
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        plot_confusion_matrix(np.zeros((2, 3)), ["a", "b"])


def test_count_params_keras_tiny_model():
    import keras

    from mednets.keras import count_params

    inputs = keras.Input((8, 8, 8, 2))
    x = keras.layers.Conv3D(3, 3, name="c")(inputs)  # 3*3*3*2*3 + 3 = 165
    x = keras.layers.BatchNormalization(name="bn")(x)  # 2*3 trainable + 2*3 moving
    model = keras.Model(inputs, x)
    assert count_params(model) == 165 + 12
    assert count_params(model, trainable_only=True) == 165 + 6
    with pytest.raises(ValueError, match="keras Model or Layer"):
        count_params(object())


def test_count_params_torch_tiny_model():
    import torch

    from mednets.torch import count_params

    model = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3), torch.nn.BatchNorm3d(3))
    assert count_params(model) == 165 + 6  # BN buffers are not parameters
    model[0].weight.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 3 + 6
    with pytest.raises(ValueError, match="torch.nn.Module"):
        count_params("model")


def test_keras_conv_norm_act_2d_and_3d_and_model_cost():
    import keras

    from mednets.keras.core import conv_norm_act, model_cost, spatial_dims_from_shape

    for shape in [(16, 12, 2), (8, 16, 12, 2)]:
        inputs = keras.Input(shape)
        x = conv_norm_act(inputs, 4, strides=2, name="stem")
        model = keras.Model(inputs, x)
        assert tuple(x.shape) == (None, *[s // 2 for s in shape[:-1]], 4)
        assert [ly.name for ly in model.layers[1:]] == ["stem_conv", "stem_norm", "stem_act"]
        k = 3 ** (len(shape) - 1)
        cost = model_cost(model)
        out_voxels = int(np.prod([s // 2 for s in shape[:-1]]))
        assert cost["macs"] == out_voxels * k * 2 * 4  # no bias before batch norm
        assert cost["params"] == k * 2 * 4 + 4 * 4
        assert cost["activation_bytes"] == 3 * out_voxels * 4 * 4
    with pytest.raises(ValueError, match=r"got \(4, 4\) of rank 2"):
        spatial_dims_from_shape((4, 4))


def test_torch_spatial_dims_of():
    import torch

    from mednets.torch.core import spatial_dims_of

    assert spatial_dims_of(torch.zeros(1, 2, 4, 4, 4), in_channels=2) == 3
    assert spatial_dims_of(torch.zeros(1, 2, 4, 4)) == 2
    with pytest.raises(ValueError, match=r"expected 4 input channels.*\(1, 2, 4, 4\)"):
        spatial_dims_of(torch.zeros(1, 2, 4, 4), in_channels=4)
    with pytest.raises(ValueError, match=r"got shape \(2, 4\)"):
        spatial_dims_of(torch.zeros(2, 4))


def test_check_divisible_names_size_and_nearest_valid():
    check_divisible((96, 128, 64), 32)
    with pytest.raises(ValueError, match=r"\(100, 96\).*divisible by 32.*100 \(nearest valid: 96 or 128\)"):
        check_divisible((100, 96), 32)
    with pytest.raises(ValueError, match=r"nearest valid: 16"):
        check_divisible((8,), 16)
    assert nearest_valid_sizes(100, 32) == (96, 128)
    assert nearest_valid_sizes(8, 16) == (16, 16)


def test_check_spatial_dims():
    assert check_spatial_dims(3) == 3
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 4"):
        check_spatial_dims(4)


def test_markdown_table_and_human_bytes():
    table = markdown_table([("resnet", 1234567, 0.123456)], ["model", "params", "dice"])
    assert table.splitlines() == [
        "| model | params | dice |",
        "| --- | --- | --- |",
        "| resnet | 1,234,567 | 0.1235 |",
    ]
    assert table._repr_markdown_() == str(table)
    with pytest.raises(ValueError, match="expected 2"):
        markdown_table([(1, 2, 3)], ["a", "b"])
    assert human_bytes(4 * 240 * 240 * 155 * 4) == "136.2 MiB"
    assert human_bytes(10) == "10 B"


def test_show_source_prints_the_code_once_and_returns_nothing(capsys):
    assert show_source(nearest_valid_sizes) is None
    out = capsys.readouterr().out
    assert out.startswith("def nearest_valid_sizes(")
    assert out.count("def nearest_valid_sizes(") == 1


# -- Notebook conventions ------------------------------------------------------------

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _repo_url():
    match = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", (ROOT / "_config.yml").read_text(), re.M)
    assert match, "_config.yml has no repository.url"
    return match.group(1)


def test_there_are_notebooks_and_all_are_in_the_toc():
    assert NOTEBOOKS
    toc = (ROOT / "_toc.yml").read_text()
    for nb in NOTEBOOKS:
        assert f"notebooks/{nb.stem}" in toc, f"{nb.name} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_conventions(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    first, second = "".join(code[0]["source"]), code[1]
    # 1. Colab-only install of mednets from the one repository URL, never torch/TF.
    assert '"google.colab" in sys.modules' in first
    assert f"git+{_repo_url()}" in first
    assert not re.search(r"pip install[^\n]*\b(torch|tensorflow)\b", first)
    # 2. One parameters cell, right after.
    assert "parameters" in second.get("metadata", {}).get("tags", [])
    assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in code) == 1
    # 3. Seeds set; 4. deterministic outputs checked; 5. committed executed, in order.
    sources = ["".join(c["source"]) for c in code]
    assert any("seed_everything(" in s for s in sources)
    assert any(s.lstrip().startswith("# NBVAL_CHECK_OUTPUT") for s in sources)
    counts = [c["execution_count"] for c in code]
    assert None not in counts and counts == sorted(counts)
    # 6. Small: no megabyte images.
    assert path.stat().st_size < 2_000_000


def test_atomic_write_renames_on_success_and_leaves_target_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp != target and tmp.exists()
        tmp.write_bytes(b"new")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() would, not mkstemp's 0600
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target, suffix=".part") as tmp:
            assert tmp.name.endswith(".part")
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def _umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
