"""Tests of the benchmark scripts' own logic (benchmarks/bench_hippocampus.py, bench_vae_ablation.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "msd-hippocampus"


def _load(name):
    path = ROOT / "benchmarks" / f"{name}.py"
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


@pytest.fixture(scope="module")
def bh():
    return _load("bench_hippocampus")


def test_paired_bootstrap_covers_the_true_difference(bh):
    rng = np.random.default_rng(0)
    b = rng.uniform(0.7, 0.9, 200)
    a = b + 0.02 + rng.normal(0, 0.01, 200)  # a is better by 0.02 on average
    c = bh.paired_comparison(a, b, n_resamples=2000)
    lo, hi = c["ci95"]
    assert lo < 0.02 < hi
    assert lo > 0  # the interval excludes 0: a real difference
    assert c["wilcoxon_p"] < 1e-6
    assert c["a_better"] + c["b_better"] == 200


def test_paired_bootstrap_of_noise_contains_zero(bh):
    rng = np.random.default_rng(1)
    b = rng.uniform(0.7, 0.9, 50)
    a = b + rng.normal(0, 0.03, 50)
    lo, hi = bh.paired_comparison(a, b, n_resamples=2000)["ci95"]
    assert lo < 0 < hi


def test_paired_comparison_rejects_unpaired_lists(bh):
    with pytest.raises(ValueError, match="same length"):
        bh.paired_comparison([0.1, 0.2, 0.3], [0.1, 0.2])


def test_flips_move_image_and_label_together(bh):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 1, 5, 6, 7)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.uint8)
    fx, fy = bh.flip_batch(x, y, rng)
    assert np.array_equal(fy, (fx[:, 0] > 0).astype(np.uint8))
    assert not np.array_equal(fx, x)  # 6 cases x 3 axes: some flip happened


def test_left_right_flips_leave_the_other_axes_alone(bh):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 1, 4, 5, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.uint8)
    fx, fy = bh.flip_batch(x, y, rng, flip_axes=(0,))
    flipped = [not np.array_equal(fx[i], x[i]) for i in range(16)]
    assert 0 < sum(flipped) < 16  # about half the cases flip
    for i in range(16):
        assert np.array_equal(fx[i], x[i]) or np.array_equal(fx[i], x[i, :, ::-1])  # axis 0 only
    assert np.array_equal(fy, (fx[:, 0] > 0).astype(np.uint8))


def test_the_book_crop_holds_every_training_label(bh):
    from mednets.data.decathlon import decathlon_cases, hippocampus_split, label_names, load_case

    train = set(hippocampus_split(DATA)["train"])
    names = label_names(DATA)
    lost = 0
    for case in decathlon_cases(DATA):
        if case.case_id in train:
            _, label, _ = load_case(case, label_names=names)
            back = bh.crop_or_pad(bh.crop_or_pad(label, bh.BOOK_CROP), label.shape)
            lost += int(((label > 0) & (back == 0)).sum())
    assert lost == 0
    assert all(s % 8 == 0 for s in bh.BOOK_CROP)


def test_poly_schedule_decays_to_zero_over_the_fixed_steps(bh, one_torch_thread):
    spec = {**bh.NETWORKS["monai_unet"], **bh.BOOK_RECIPE}  # a small, fast network with the book's recipe
    runner = bh.TorchRunner("monai_unet", spec, (16, 16, 16), threads=1, steps=3)
    x = np.zeros((2, 1, 16, 16, 16), np.float32)
    y = np.zeros((2, 16, 16, 16), np.uint8)
    lrs = []
    for _ in range(3):
        lrs.append(runner.opt.param_groups[0]["lr"])
        runner.train_batch(x, y)
    assert lrs[0] == pytest.approx(1e-3) and lrs[0] > lrs[1] > lrs[2] > 0
    assert runner.opt.param_groups[0]["lr"] == 0.0
    peer = bh.TorchRunner("monai_unet", bh.NETWORKS["monai_unet"], (16, 16, 16), threads=1, steps=3)
    assert peer.scheduler is None  # the peer keeps its constant rate


def test_scoring_crops_back_to_each_case_grid(bh):
    label = np.zeros((5, 7, 6), np.uint8)
    label[1:3, 1:4, 1:3] = 1
    label[3:5, 4:7, 3:6] = 2
    padded = bh.crop_or_pad(label, (8, 8, 8))[None]
    meta = {"spacing": (1.0, 1.0, 2.0)}
    out = bh.score_cases(padded, [("c1", None, label, meta)], {0: "bg", 1: "A", 2: "P"})
    assert out["dice"] == {"A": [1.0], "P": [1.0]}
    assert out["hd95_mm"] == {"A": [0.0], "P": [0.0]}
    missing = bh.score_cases(np.zeros_like(padded), [("c1", None, label, meta)], {0: "bg", 1: "A", 2: "P"})
    assert missing["dice"]["A"] == [0.0] and missing["hd95_mm"]["A"] == [None]
    assert bh.summarise(missing)["hd95_mm"]["A"] == {"mean": None, "sd": None, "n": 0}


def test_tiny_run_writes_the_keys_the_notebook_reads(bh, tmp_path, one_torch_thread):
    out = tmp_path / "h.json"
    bh.main(
        [
            "--data",
            str(DATA),
            "--nets",
            "nvnet",
            "monai_unet",
            "--train",
            "2",
            "--val",
            "1",
            "--test",
            "3",
            "--steps",
            "nvnet=1",
            "monai_unet=1",
            "--output",
            str(out),
        ]
    )
    r = json.loads(out.read_text())
    assert r["split"] == {"train": 2, "val": 1, "test": 3}
    assert set(r["networks"]) == {"nvnet", "monai_unet"}
    for net in r["networks"].values():
        assert {"params", "steps", "epochs", "seconds_per_epoch", "dice", "hd95_mm", "per_case"} <= set(net)
        assert set(net["dice"]) == {"Anterior", "Posterior"}
        assert len(net["per_case"]["dice"]["Anterior"]) == 3
        assert net["per_case"]["case_ids"] == r["test_ids"]
    assert r["comparison"]["best"] == "nvnet" and r["comparison"]["peer"] == "monai_unet"
    assert (
        r["networks"]["nvnet"]["schedule"] == "poly" and r["networks"]["monai_unet"]["schedule"] == "constant"
    )
    assert set(r["comparison"]["per_structure"]) == {"Anterior", "Posterior", "mean of both"}
    assert {"command", "commit", "versions", "cpu", "seed"} <= set(r["provenance"])


def test_ablation_subsets_are_nested_and_seeded():
    va = _load("bench_vae_ablation")
    ids = [f"case_{i:03d}" for i in range(180)]
    a = va.hippocampus_subsets(ids, (5, 10, 20), seed=0)
    assert [len(a[n]) for n in (5, 10, 20)] == [5, 10, 20]
    assert set(a[5]) <= set(a[10]) <= set(a[20])
    assert a == va.hippocampus_subsets(ids, (5, 10, 20), seed=0)
    assert a[20] != va.hippocampus_subsets(ids, (5, 10, 20), seed=1)[20]
