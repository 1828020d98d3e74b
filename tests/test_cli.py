"""The command lines: python -m mednets.train (recipes end to end, bad input), python -m mednets.predict.

PyTorch and Keras recipes: each end-to-end test trains two tiny epochs on a synthetic
Decathlon- or BraTS-like folder and checks every output file.
"""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mednets.data.phantoms import make_phantom
from mednets.predict import main as predict_main
from mednets.recipes import RECIPES, get_recipe
from mednets.train import main as train_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # stored L, P, S like BraTS: load_nifti flips it to RAS
TINY = ["--epochs", "2", "--crop", "16", "16", "16", "--init-filters", "8", "--batch-size", "2"]
TINY += ["--workers", "0", "--val-every", "1", "--no-progress"]
# Keras: a two-level UNet 3+ (tracing a deeper 3D graph costs seconds on a busy CPU).
KERAS_TINY = ["--epochs", "2", "--crop", "16", "16", "16", "--batch-size", "2", "--val-every", "1"]
KERAS_TINY += ["--no-progress", "--model-option", "filters=[4, 8]", "--model-option", "skip_filters=4"]


def _brats_folder(root: Path, n: int = 4) -> Path:
    """BraTS 2023-named cases: <id>/<id>-{t2f,t1n,t1c,t2w,seg}.nii.gz, enhancing = 3."""
    for i in range(n):
        sid = f"BraTS-GLI-{i:05d}-000"
        folder = root / sid
        folder.mkdir(parents=True)
        image, label = make_phantom((24, 20, 18), seed=i)
        for c, suffix in enumerate(["t2f", "t1n", "t1c", "t2w"]):
            nib.save(nib.Nifti1Image(image[c], LPS), folder / f"{sid}-{suffix}.nii.gz")
        nib.save(
            nib.Nifti1Image(np.where(label == 4, 3, label).astype(np.uint8), LPS),
            folder / f"{sid}-seg.nii.gz",
        )
    return root


def _decathlon_folder(root: Path, n: int = 3, channels: int = 4) -> Path:
    """A Task01-like (4D, msd labels) or Task04-like (3D, labels 0..2) Decathlon folder."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        image, label = make_phantom((24, 20, 18), seed=10 + i)
        if channels == 4:
            label = np.select([label == 2, label == 1, label == 4], [1, 2, 3], 0)  # BraTS -> msd
            data, labels = (
                np.moveaxis(image, 0, -1),
                {"0": "background", "1": "edema", "2": "non-enhancing", "3": "enh"},
            )
        else:
            label = np.select([label == 2, label > 0], [1, 2], 0)
            data, labels = image[1], {"0": "background", "1": "Anterior", "2": "Posterior"}
        name = f"case_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), LPS), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label.astype(np.uint8), LPS), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    modality = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"} if channels == 4 else {"0": "MRI"}
    (root / "dataset.json").write_text(
        json.dumps({"labels": labels, "modality": modality, "training": training})
    )
    return root


def _check_outputs(out: Path, recipe: str, epochs: int = 2):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert all(np.isfinite(r["loss"]) and 0 <= r["val_dice"] <= 1 for r in rows)
    for name in ("last.pt", "best.pt"):
        state = torch.load(out / "checkpoints" / name, weights_only=True)
        assert state["config"]["recipe"] == recipe
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["recipe"] == recipe and record["config"]["crop"] == [16, 16, 16]
    split = record["split"]
    assert not set(split["train"]) & set(split["test"]) and split["test"]
    scores = json.loads((out / "test_scores.json").read_text())
    assert sorted(scores["cases"]) == split["test"]
    return split


def test_train_brats_end_to_end_then_predict(tmp_path):
    data = _brats_folder(tmp_path / "brats")
    out = tmp_path / "run"
    assert train_main(["nvnet-brats", "--data", str(data), "--out", str(out), *TINY]) == 0
    split = _check_outputs(out, "nvnet-brats")
    (test_id,) = split["test"]
    reference = nib.load(data / test_id / f"{test_id}-t1n.nii.gz")
    written = nib.load(out / "predictions" / f"{test_id}.nii.gz")
    # On the input's grid: same affine (LPS, as stored), same on-disk shape, BraTS 2023 values.
    assert np.array_equal(written.affine, reference.affine) and written.shape == reference.shape
    assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1, 2, 3}
    # The stored HDF5 holds the training and validation cases only.
    import h5py

    with h5py.File(out / "data.h5") as f:
        assert sorted(f["subjects"]) == sorted(split["train"] + split["val"])
    # Predict with the checkpoint: one subject folder to one file, same grid.
    target = tmp_path / "pred.nii.gz"
    assert predict_main([str(out / "checkpoints" / "best.pt"), str(data / test_id), str(target)]) == 0
    again = nib.load(target)
    assert np.array_equal(again.affine, reference.affine)
    np.testing.assert_array_equal(np.asarray(again.dataobj), np.asarray(written.dataobj))


@pytest.mark.parametrize(
    "recipe,channels", [("nvnet-msd", 4), ("nvnet-hippocampus", 1)], ids=["task01", "task04"]
)
def test_train_decathlon_recipes_end_to_end(tmp_path, recipe, channels):
    data = _decathlon_folder(tmp_path / "task", channels=channels)
    out = tmp_path / "run"
    store = tmp_path / "local" / "store.h5"  # e.g. Colab's local disk, beside an --out on Drive
    assert train_main([recipe, "--data", str(data), "--out", str(out), "--store", str(store), *TINY]) == 0
    split = _check_outputs(out, recipe)
    assert store.is_file() and not (out / "data.h5").exists()
    (test_id,) = split["test"]
    written = nib.load(out / "predictions" / f"{test_id}.nii.gz")
    reference = nib.load(data / "imagesTr" / f"{test_id}.nii.gz")
    assert np.array_equal(written.affine, reference.affine) and written.shape == reference.shape[:3]
    # Predict a folder of images into a folder.
    assert (
        predict_main([str(out / "checkpoints" / "last.pt"), str(data / "imagesTr"), str(tmp_path / "p")]) == 0
    )
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(
        p.name for p in (data / "imagesTr").iterdir()
    )


def test_resume_with_another_config_is_refused_naming_the_keys(tmp_path, capsys):
    data = _brats_folder(tmp_path / "brats", n=3)
    out = tmp_path / "run"
    args = ["nvnet-brats", "--data", str(data), "--out", str(out), *TINY]
    train_main(args)
    with pytest.raises(ValueError, match=r"differing keys: lr \(checkpoint 0.0001, now 0.001\)"):
        train_main([*args, "--resume", "--lr", "1e-3"])
    assert json.loads((out / "config.json").read_text())["config"]["lr"] == 1e-4  # nothing changed
    # The same command resumed: nothing left to train, the outputs stay complete.
    assert train_main([*args, "--resume"]) == 0
    _check_outputs(out, "nvnet-brats")


def test_dry_run_prints_and_trains_nothing(tmp_path, capsys):
    data = _brats_folder(tmp_path / "brats", n=3)
    assert train_main(["nvnet-brats", "--dry-run", "--data", str(data), "--out", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert '"recipe": "nvnet-brats"' in text and "parameters: 26,037,847" in text  # the paper's count
    assert "memory per process (estimate" in text and "split train 1, val 1, test 1" in text
    assert "nothing trained" in text and not (tmp_path / "o").exists()


def _error(capsys, argv, monkeypatch=None):
    with pytest.raises(SystemExit) as info:
        train_main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_bad_input_stops_before_anything_starts(tmp_path, capsys, monkeypatch):
    data = _brats_folder(tmp_path / "brats", n=3)
    out = tmp_path / "o"
    err = _error(capsys, ["nvnet-unet", "--data", str(data), "--out", str(out)])
    assert "unknown recipe 'nvnet-unet'" in err and "nvnet-brats" in err
    (tmp_path / "empty").mkdir()
    err = _error(capsys, ["nvnet-brats", "--data", str(tmp_path / "empty"), "--out", str(out)])
    assert "no BraTS subjects found" in err
    err = _error(capsys, ["nvnet-msd", "--data", str(tmp_path / "empty"), "--out", str(out)])
    assert "no cases found" in err and "dataset.json" in err
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc_per_node=2 would set it
    err = _error(capsys, ["nvnet-brats", "--data", str(data), "--out", str(out), "--batch-size", "1"])
    assert "--batch-size 1 is smaller than the number of processes 2" in err
    monkeypatch.delenv("WORLD_SIZE")
    err = _error(capsys, ["nvnet-brats", "--data", str(data), "--out", str(out), "--crop", "24", "16", "16"])
    assert "multiple of 16" in err and "[24]" in err
    err = _error(capsys, ["nvnet-brats", "--out", str(out)])
    assert "--data and --out are required" in err
    assert not out.exists()  # nothing was started


def test_predict_bad_input_and_help_says_not_clinical(tmp_path, capsys):
    with pytest.raises(SystemExit):
        predict_main(["--help"])
    assert " ".join(capsys.readouterr().out.split()).count("not for clinical use") == 1
    with pytest.raises(SystemExit) as info:
        predict_main([str(tmp_path / "missing.pt"), "a.nii.gz", "b.nii.gz"])
    assert info.value.code == 2 and "not found" in capsys.readouterr().err


def test_recipes_are_plain_configs_and_modules_stay_light():
    assert {"nvnet-brats", "nvnet-msd", "nvnet-hippocampus"} <= set(RECIPES)
    keras_recipes = {"unet3plus-hippocampus", "resnet34-unet-hippocampus", "unet-hippocampus"}
    assert {k for k, v in RECIPES.items() if v["framework"] == "keras"} == keras_recipes
    assert get_recipe("nvnet-brats")["crop"] == [160, 192, 128] and get_recipe("nvnet-brats")["epochs"] == 300
    with pytest.raises(ValueError, match="has no keys"):
        get_recipe("nvnet-brats", depth=3)
    # The Keras recipes share nvnet-hippocampus's data keys; the softmax adds the background.
    torch_hip = get_recipe("nvnet-hippocampus")
    for name in keras_recipes:
        c = get_recipe(name)
        for key in ("dataset", "label_convention", "structures", "in_channels", "target", "split"):
            assert c[key] == torch_hip[key], (name, key)
        assert c["out_channels"] == 3 and c["model_options"]["final_activation"] == "softmax"
        assert c["crop"] == c["pad_to"] == ([64] * 3 if "resnet34" in name else [48, 64, 48])
    code = (
        "import sys, mednets.train, mednets.predict, mednets.recipes; "
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_train_keras_recipe_end_to_end_then_predict_and_resume(tmp_path):
    import keras

    data = _decathlon_folder(tmp_path / "task", channels=1)
    out = tmp_path / "run"
    args = ["unet3plus-hippocampus", "--data", str(data), "--out", str(out), *KERAS_TINY]
    assert train_main(args) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:  # the loss and the scores of the whole validation volumes, every epoch
        assert np.isfinite(r["loss"]) and r["epoch_s"] > 0
        assert 0 <= r["val_dice"] <= 1 and r["val_dice"] == pytest.approx(
            (r["val_anterior_dice"] + r["val_posterior_dice"]) / 2
        )
        assert np.isfinite(r["val_anterior_hd95"]) and np.isfinite(r["val_posterior_hd95"])
    record = json.loads((out / "config.json").read_text())
    config, split = record["config"], record["split"]
    assert record["framework"] == "keras" and config["recipe"] == "unet3plus-hippocampus"
    assert config["model_options"] == {"filters": [4, 8], "skip_filters": 4, "final_activation": "softmax"}
    assert config["crop"] == [16, 16, 16] and config["pad_to"] == [48, 64, 48]
    assert not set(split["train"]) & set(split["test"]) and split["test"]
    # Both checkpoints load as Keras models (the loss is registered), at the training crop.
    for name in ("last.keras", "best.keras"):
        model = keras.models.load_model(out / "checkpoints" / name)
        assert model.output_shape == (None, 16, 16, 16, 3) and model.loss.__name__ == "dice_ce_loss"
    assert not (out / "backup").exists()  # a finished run removes its backup
    scores = json.loads((out / "test_scores.json").read_text())
    assert sorted(scores["cases"]) == split["test"] and scores["epochs"] == 2
    (test_id,) = split["test"]
    written = nib.load(out / "predictions" / f"{test_id}.nii.gz")
    reference = nib.load(data / "imagesTr" / f"{test_id}.nii.gz")
    assert np.array_equal(written.affine, reference.affine) and written.shape == reference.shape
    assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1, 2}
    # predict reads the Keras checkpoint with the run's config.json: the same labels.
    target = tmp_path / "pred.nii.gz"
    image = data / "imagesTr" / f"{test_id}.nii.gz"
    assert predict_main([str(out / "checkpoints" / "best.keras"), str(image), str(target)]) == 0
    again = nib.load(target)
    assert np.array_equal(again.affine, reference.affine)
    np.testing.assert_array_equal(np.asarray(again.dataobj), np.asarray(written.dataobj))
    # A resume with another config is refused before anything starts, naming the keys.
    with pytest.raises(ValueError, match=r"differing keys: lr \(checkpoint 0.001, now 0.01\)"):
        train_main([*args, "--resume", "--lr", "1e-2"])
    with pytest.raises(ValueError, match=r"differing keys: model_options \(checkpoint .*skip_filters': 4"):
        train_main([*args, "--resume", "--model-option", "skip_filters=8"])
    # The same command resumed: the epochs are done, the outputs are written again.
    (out / "predictions" / f"{test_id}.nii.gz").unlink()
    assert train_main([*args, "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "predictions" / f"{test_id}.nii.gz").is_file()


def test_keras_dry_run_prints_the_parameter_count_of_the_builder(tmp_path, capsys):
    from mednets.keras import count_params
    from mednets.keras.resnet34_unet import resnet34_unet

    assert train_main(["resnet34-unet-hippocampus", "--dry-run"]) == 0
    text = capsys.readouterr().out
    net = resnet34_unet(
        (64, 64, 64, 1),
        out_channels=3,
        init_filters=16,
        decoder_filters=(128, 64, 32, 16, 16),
        final_activation="softmax",
    )
    assert f"parameters: {count_params(net):,}" in text and "parameters: 5,612,422" in text
    assert '"framework": "keras"' in text and "memory on one device (estimate)" in text
    assert "nothing trained" in text


def test_keras_recipe_bad_input_stops_before_anything_starts(tmp_path, capsys):
    data = _decathlon_folder(tmp_path / "task", channels=1)
    out = tmp_path / "o"
    base = ["unet3plus-hippocampus", "--data", str(data), "--out", str(out)]
    err = _error(capsys, [*base, "--init-filters", "8"])
    assert "has no keys ['init_filters']" in err  # a PyTorch option: Keras recipes use --model-option
    err = _error(
        capsys, ["nvnet-hippocampus", "--data", str(data), "--out", str(out), "--model-option", "a=1"]
    )
    assert "--model-option sets the builder options of the Keras recipes" in err
    err = _error(capsys, [*base, "--model-option", "width=8"])
    assert "model_options ['width'] are not options of mednets.keras.unet3plus.unet3plus" in err
    err = _error(capsys, [*base, "--model-option", "final_activation=sigmoid"])
    assert "final_activation 'softmax'" in err and "'sigmoid'" in err
    err = _error(capsys, [*base, "--crop", "12", "16", "16"])
    assert "multiple of 8" in err and "[12]" in err
    err = _error(
        capsys,
        ["resnet34-unet-hippocampus", "--data", str(data), "--out", str(out), "--crop", "48", "64", "48"],
    )
    assert "multiple of 32" in err and "[48, 48]" in err
    assert not out.exists()


def test_a_resumed_keras_run_keeps_its_best_value(tmp_path):
    from mednets.keras.train import _best_so_far

    rows = [{"epoch": 1, "val_dice": 0.4}, {"epoch": 2, "loss": 1.0}, {"epoch": 3, "val_dice": 0.7}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _best_so_far(tmp_path, "val_dice", "max") is None  # no backup: a fresh run
    (tmp_path / "backup").mkdir()
    assert _best_so_far(tmp_path, "val_dice", "max") == 0.7
    assert _best_so_far(tmp_path, "val_dice", "min") == 0.4
    assert _best_so_far(tmp_path, "val_loss", "min") is None
