"""Benchmark: the book's 3D segmentation networks side by side on real MRI (Decathlon Task04).

Trains, on the book's fixed split of the 260 labelled hippocampus cases
(``mednets.data.decathlon.hippocampus_split``: 180 train / 30 validation / 50 test),

* UNet 3+ 3D, ResNet34-UNet 3D and a plain 3D U-Net (Keras, ``mednets.keras``);
* NVNet with and without its VAE branch (PyTorch, ``mednets.torch.nvnet``);
* MONAI's ``UNet`` as the peer (channels 16..128, strides 2, 2 residual units), MONAI
  being a benchmark-only dependency (``benchmarks/requirements.txt``).

Every network gets the same protocol: per-case z-score of the whole crop, zero padding
to a size its depth divides (48x64x48; 64x64x64 for ResNet34-UNet, whose encoder
halves the size five times), softmax over background / anterior / posterior, Dice +
cross-entropy, Adam 1e-3, batch 8, random flips along the three axes, the same seeded
order of cases, and a fixed number of epochs per network (chosen so that each network
trains for about the same wall time on the machine the results were measured on; fixed
epochs, not a wall-clock stop, so a rerun reproduces the numbers). Predictions are
cropped back to each case's own grid (the inverse of the padding) before they are
scored: Dice and HD95 in mm per structure, per case.

The best book network is then compared with the MONAI peer case by case: a bootstrap
95% interval of the mean paired Dice difference and a Wilcoxon signed-rank test.

Writes ``benchmarks/results/hippocampus.json`` atomically (after each network, so a
partial run keeps what it measured).

Usage::

    python benchmarks/bench_hippocampus.py            # the full table (about 60 min on a 2-core CPU)
    python benchmarks/bench_hippocampus.py --quick    # a few minutes: few cases, 1 epoch each
    python benchmarks/bench_hippocampus.py --nets nvnet monai_unet --epochs nvnet=3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from mednets.data import crop_or_pad, zscore_normalise
from mednets.data.decathlon import (
    HIPPOCAMPUS_SPLIT_SEED,
    decathlon_cases,
    hippocampus_split,
    label_names,
    load_case,
    msd_task_dir,
)
from mednets.metrics import dice_per_label, hd95_per_label
from mednets.utils import atomic_write, seed_everything

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAD_SHAPE = (48, 64, 48)  # the peer's padding; divisible by 16
LABELS = (1, 2)
LICENCE = "CC BY-SA 4.0 (data: Medical Segmentation Decathlon, Vanderbilt University Medical Center)"

#: Crop of the book's networks: every labelled voxel of the 180 training cases (and of
#: all 260) lies inside the centred 40x56x40 box, which three halvings divide; it has
#: 61% of the voxels of the peer's 48x64x48 padding, so each step costs less.
BOOK_CROP = (40, 56, 40)

#: The book's recipe, shared by its networks: batch 2, Adam 1e-3 with the poly decay of
#: Myronenko (2018) over the run's steps, flips along the left-right axis only (a flip
#: along the long axis would put the head of the hippocampus where its tail belongs,
#: and the labels are "anterior" and "posterior").
BOOK_RECIPE = dict(batch_size=2, lr=1e-3, schedule="poly", flip_axes=(0,))

#: Each network: its framework, builder configuration, padded (or cropped) size and
#: training recipe. Widths are chosen near the peer's 1.2 M parameters where the
#: architecture allows it. The peers keep the protocol they were measured with in the
#: issue that set the targets: batch 8, constant Adam 1e-3, flips on 3 axes, 48x64x48.
NETWORKS = {
    "unet3plus": dict(
        framework="keras",
        builder="mednets.keras.unet3plus.unet3plus",
        config=dict(filters=(16, 32, 64, 128), skip_filters=16),
        pad_shape=BOOK_CROP,
        **BOOK_RECIPE,
    ),
    "resnet34_unet": dict(
        framework="keras",
        builder="mednets.keras.resnet34_unet.resnet34_unet",
        config=dict(init_filters=16, decoder_filters=(128, 64, 32, 16, 16)),
        pad_shape=(64, 64, 64),  # five x2 down-samplings: sizes divisible by 32
        # TensorFlow on this CPU took 3 times longer per step at batch 2 than at batch 8.
        **{**BOOK_RECIPE, "batch_size": 8},
    ),
    "unet": dict(
        framework="keras",
        builder="mednets.keras.unet.unet",
        config=dict(filters=(16, 32, 64, 128)),
        pad_shape=BOOK_CROP,
        **BOOK_RECIPE,
    ),
    "nvnet": dict(
        framework="torch",
        builder="mednets.torch.nvnet.NVNet",
        config=dict(init_filters=8, vae=False),
        pad_shape=BOOK_CROP,
        **BOOK_RECIPE,
    ),
    "nvnet_vae": dict(
        framework="torch",
        builder="mednets.torch.nvnet.NVNet",
        config=dict(init_filters=8, vae=True),
        pad_shape=PAD_SHAPE,  # the VAE branch halves a fourth time: sizes divisible by 16
        **BOOK_RECIPE,
    ),
    "monai_unet": dict(
        framework="torch",
        builder="monai.networks.nets.UNet",
        config=dict(channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2),
        pad_shape=PAD_SHAPE,
    ),
    # The issue's small reference for Chapter 6's live run: 151 k parameters, 2 minutes.
    "monai_unet_small": dict(
        framework="torch",
        builder="monai.networks.nets.UNet",
        config=dict(channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1),
        pad_shape=PAD_SHAPE,
        budget_fraction=0.25,
    ),
}
PEER = "monai_unet"
#: Peers and references: not the book's networks, never "best".
OTHERS = ("monai_unet", "monai_unet_small")

#: Networks only timed, not trained, by default (``--time-only NAME ...`` times others):
#: none, every network is trained and scored.
TIME_ONLY = ()

#: Optimiser steps of the committed run (each network's own batch size), from 3 timed
#: steps per network on the idle 2-core CPU (``--calibrate 480``): as many steps as fill
#: about 8 minutes (2 minutes for the small reference). With these fixed steps a rerun
#: reproduces the training whatever the machine; ``--budget SECONDS`` recomputes them.
STEPS = {
    "monai_unet": 476,
    "nvnet": 920,
    "monai_unet_small": 231,
    "nvnet_vae": 537,
    "unet": 121,
    "unet3plus": 25,
    "resnet34_unet": 21,
}


# ----------------------------------------------------------------------------- data
def load_split(root, n_train=None, n_val=None, n_test=None):
    """Load the book's split: ``{"train"|"val"|"test": [(case_id, image, label, meta)]}``."""
    split = hippocampus_split(root)
    names = label_names(root)
    by_id = {c.case_id: c for c in decathlon_cases(root)}
    limits = {"train": n_train, "val": n_val, "test": n_test}
    out = {}
    for part, ids in split.items():
        ids = ids[: limits[part]] if limits[part] is not None else ids
        out[part] = []
        for cid in ids:
            image, label, meta = load_case(by_id[cid], label_names=names)
            out[part].append((cid, image, label, meta))
    return out


def normalise(image):
    """Per-case z-score of the whole crop (every voxel counts: these are crops, not heads)."""
    return zscore_normalise(image, mask=np.ones(image.shape[1:], bool))


def stack_padded(cases, pad_shape):
    """``(N, 1, *pad_shape)`` float32 images and ``(N, *pad_shape)`` uint8 labels."""
    x = np.stack([crop_or_pad(normalise(im), pad_shape) for _, im, _, _ in cases]).astype(np.float32)
    y = np.stack([crop_or_pad(lab, pad_shape) for _, _, lab, _ in cases]).astype(np.uint8)
    return x, y


def flip_batch(x, y, rng, flip_axes=(0, 1, 2)):
    """Random flips of a batch, each of ``flip_axes`` with probability 1/2, same for image and label.

    A random number is drawn for every spatial axis, flipped or not, so the stream of
    random numbers (and so the order of cases) is the same whatever ``flip_axes`` is.
    """
    x, y = x.copy(), y.copy()
    for i in range(len(x)):
        axes = tuple(a for a in range(3) if rng.random() < 0.5 and a in flip_axes)
        if axes:
            x[i] = np.flip(x[i], axis=tuple(a + 1 for a in axes))
            y[i] = np.flip(y[i], axis=axes)
    return x, y


def epoch_batches(x, y, batch_size, rng, flip_axes=(0, 1, 2)):
    order = rng.permutation(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        yield flip_batch(x[idx], y[idx], rng, flip_axes)


# ----------------------------------------------------------------------------- models
class TorchRunner:
    """Builds a torch network and trains it with Dice + CE (plus the VAE terms for NVNet)."""

    def __init__(self, name, spec, pad_shape, threads, steps=None):
        import torch
        from monai.losses import DiceCELoss

        from mednets.torch.train import poly_lr

        torch.set_num_threads(threads)
        self.torch = torch
        if spec["builder"].startswith("monai"):
            from monai.networks.nets import UNet

            self.net = UNet(spatial_dims=3, in_channels=1, out_channels=3, **spec["config"])
        else:
            from mednets.torch.nvnet import NVNet

            self.net = NVNet(
                spatial_dims=3,
                in_channels=1,
                out_channels=3,
                spatial_size=pad_shape,
                final_activation=None,
                **spec["config"],
            )
        # Channels-last 3D tensors take oneDNN's faster convolution paths on a CPU
        # (about 15% per step here); the numbers are the same up to rounding.
        self.net = self.net.to(memory_format=torch.channels_last_3d)
        self.vae = bool(spec["config"].get("vae", False))
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=spec.get("lr", 1e-3))
        # The poly schedule decays per optimiser step over the run's fixed number of steps.
        self.scheduler = poly_lr(self.opt, steps) if spec.get("schedule") == "poly" and steps else None

    def params(self):
        from mednets.torch import count_params

        return count_params(self.net)

    def train_batch(self, x, y):
        from mednets.torch.losses import kl_loss, l2_loss

        torch = self.torch
        self.net.train()
        x = torch.from_numpy(x).contiguous(memory_format=torch.channels_last_3d)
        y = torch.from_numpy(y[:, None].astype(np.int64))
        self.opt.zero_grad()
        out = self.net(x)
        if self.vae:
            seg, recon, mu, sigma = out
            loss = self.loss(seg, y) + 0.1 * l2_loss(recon, x) + 0.1 * kl_loss(mu, sigma)
        else:
            loss = self.loss(out, y)
        loss.backward()
        self.opt.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return float(loss.detach())

    def predict(self, x, batch_size=10):
        """``(N, 1, *S)`` -> label maps ``(N, *S)``."""
        torch = self.torch
        self.net.eval()
        seg = self.net.segment if hasattr(self.net, "segment") else self.net
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb = torch.from_numpy(x[i : i + batch_size]).contiguous(memory_format=torch.channels_last_3d)
                out.append(seg(xb).argmax(1).numpy().astype(np.uint8))
        return np.concatenate(out)


def keras_dice_ce(y_true, y_pred):
    """Soft Dice (per case and class, as MONAI's ``DiceLoss``) plus categorical cross-entropy."""
    import keras

    dice = keras.losses.dice(y_true, y_pred, axis=(1, 2, 3))  # (B, C)
    ce = keras.losses.categorical_crossentropy(y_true, y_pred)  # (B, *S)
    return keras.ops.mean(dice) + keras.ops.mean(ce)


class KerasRunner:
    """Builds a Keras network (channels last, softmax head) and trains it with Dice + CE."""

    def __init__(self, name, spec, pad_shape, threads, steps=None):
        import importlib

        import keras

        module, fn = spec["builder"].rsplit(".", 1)
        builder = getattr(importlib.import_module(module), fn)
        self.keras = keras
        self.net = builder(
            (*pad_shape, 1), out_channels=3, final_activation="softmax", name=name, **spec["config"]
        )
        lr = spec.get("lr", 1e-3)
        if spec.get("schedule") == "poly" and steps:  # the same decay as torch's poly_lr, per step
            lr = keras.optimizers.schedules.PolynomialDecay(lr, steps, end_learning_rate=0.0, power=0.9)
        self.net.compile(optimizer=keras.optimizers.Adam(lr), loss=keras_dice_ce)

    def params(self):
        from mednets.keras import count_params

        return count_params(self.net)

    def train_batch(self, x, y):
        x = np.moveaxis(x, 1, -1)  # (B, 1, *S) -> (B, *S, 1)
        y = np.eye(3, dtype=np.float32)[y]  # one-hot (B, *S, 3)
        return float(self.net.train_on_batch(x, y))

    def predict(self, x, batch_size=10):
        out = self.net.predict(np.moveaxis(x, 1, -1), batch_size=batch_size, verbose=0)
        return out.argmax(-1).astype(np.uint8)


def make_runner(name, spec, threads, steps=None):
    cls = TorchRunner if spec["framework"] == "torch" else KerasRunner
    return cls(name, spec, tuple(spec["pad_shape"]), threads, steps)


# ----------------------------------------------------------------------------- scoring
def score_cases(pred_padded, cases, names):
    """Crop each padded prediction back to its case's grid and score it per structure.

    Returns ``{"case_ids": [...], "dice": {name: [...]}, "hd95_mm": {name: [... or None]}}``
    (None where a structure is missing from the prediction: HD95 is undefined).
    """
    out = {"case_ids": [], "dice": {names[v]: [] for v in LABELS}, "hd95_mm": {names[v]: [] for v in LABELS}}
    for pred, (cid, _, label, meta) in zip(pred_padded, cases):
        pred = crop_or_pad(pred, label.shape)  # paste-back: the inverse of the padding
        d = dice_per_label(pred, label, LABELS)
        h = hd95_per_label(pred, label, LABELS, spacing=meta["spacing"])
        out["case_ids"].append(cid)
        for v in LABELS:
            out["dice"][names[v]].append(float(d[v]))
            out["hd95_mm"][names[v]].append(float(h[v]) if np.isfinite(h[v]) else None)
    return out


def summarise(per_case):
    """Mean and SD (ddof=1) per structure; HD95 over the cases where it is defined."""
    summary = {}
    for metric, values in per_case.items():
        if metric == "case_ids":
            continue
        summary[metric] = {}
        for structure, v in values.items():
            finite = np.array([a for a in v if a is not None], dtype=float)
            summary[metric][structure] = {
                "mean": float(finite.mean()) if finite.size else None,
                "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
                "n": int(finite.size),
            }
    return summary


def paired_comparison(a, b, n_resamples=10000, seed=0):
    """Case-by-case comparison of two methods scored on the same cases.

    Args:
        a, b: Per-case scores of the two methods, same cases in the same order.
        n_resamples: Bootstrap resamples. Defaults to 10000.
        seed: Seed of the bootstrap. Defaults to 0.

    Returns:
        ``{"mean_diff", "ci95": [lo, hi], "wilcoxon_p", "n", "a_better", "b_better"}``:
        the mean of ``a - b``, its bootstrap 95% interval (percentile method,
        ``scipy.stats.bootstrap``), the two-sided Wilcoxon signed-rank p-value, and the
        number of cases where each method is higher.

    Raises:
        ValueError: If ``a`` and ``b`` differ in length or hold fewer than 2 cases.
    """
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"expected two 1-D score lists of the same length >= 2, got {a.shape} and {b.shape}")
    d = a - b
    boot = stats.bootstrap(
        (d,), np.mean, n_resamples=n_resamples, confidence_level=0.95, method="percentile", random_state=seed
    )
    p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {
        "mean_diff": float(d.mean()),
        "ci95": [float(boot.confidence_interval.low), float(boot.confidence_interval.high)],
        "wilcoxon_p": p,
        "n": int(d.size),
        "a_better": int((d > 0).sum()),
        "b_better": int((d < 0).sum()),
    }


def compare_best_with_peer(results, peer=PEER):
    """Pick the book network with the best mean Dice (both structures) and compare it with the peer."""
    nets = results["networks"]
    book = [n for n in nets if n not in OTHERS]
    if peer not in nets or not book:
        return None

    def mean_dice(n):
        return float(np.mean([s["mean"] for s in nets[n]["dice"].values()]))

    best = max(book, key=mean_dice)
    out = {
        "best": best,
        "peer": peer,
        "metric": "dice",
        "difference": f"{best} - {peer}",
        "per_structure": {},
    }
    a_all, b_all = [], []
    for structure in nets[best]["per_case"]["dice"]:
        a = nets[best]["per_case"]["dice"][structure]
        b = nets[peer]["per_case"]["dice"][structure]
        out["per_structure"][structure] = paired_comparison(a, b)
        a_all.append(a)
        b_all.append(b)
    out["per_structure"]["mean of both"] = paired_comparison(np.mean(a_all, 0), np.mean(b_all, 0))
    return out


# ----------------------------------------------------------------------------- provenance
def provenance(argv, seed, threads):
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return None

    versions = {}
    for pkg in ("mednets", "numpy", "scipy", "nibabel", "torch", "monai", "tensorflow", "keras"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "command": "python benchmarks/bench_hippocampus.py " + " ".join(argv),
        "seed": seed,
        "split_seed": HIPPOCAMPUS_SPLIT_SEED,
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no", "mednets")),
        "versions": versions,
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "load_average_at_start": list(os.getloadavg()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(results, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")


# ----------------------------------------------------------------------------- main
def train_steps(runner, x, y, steps, batch_size, rng, log=None, name="", flip_axes=(0, 1, 2)):
    """``steps`` optimiser steps over seeded, shuffled epochs of ``(x, y)`` with random flips.

    Returns the per-step losses and seconds.
    """
    losses, seconds = [], []
    while len(losses) < steps:
        for xb, yb in epoch_batches(x, y, batch_size, rng, flip_axes):
            start = time.perf_counter()
            losses.append(runner.train_batch(xb, yb))
            seconds.append(time.perf_counter() - start)
            if log and (len(losses) % 10 == 0 or len(losses) == steps):
                recent = np.mean(losses[-10:])
                log(f"{name}: step {len(losses)}/{steps} loss {recent:.4f} ({seconds[-1]:.1f} s/step)")
            if len(losses) == steps:
                break
    return losses, seconds


def train_and_score(name, spec, steps, data, names, seed, threads, batch_size=None, log=print):
    """Build, train for ``steps`` steps and score one network; the JSON entry."""
    batch_size = batch_size or spec.get("batch_size", 8)
    pad = tuple(spec["pad_shape"])
    x, y = stack_padded(data["train"], pad)
    xv, _ = stack_padded(data["val"], pad)
    xt, _ = stack_padded(data["test"], pad)
    if spec["framework"] == "keras":
        import keras  # noqa: F401  (imported before seeding, so seed_everything seeds it)
    else:
        import torch  # noqa: F401
    seed_everything(seed)
    runner = make_runner(name, spec, threads, steps)
    rng = np.random.default_rng(seed)  # the same case order and flips for every network
    flip_axes = tuple(spec.get("flip_axes", (0, 1, 2)))
    losses, seconds = train_steps(
        runner, x, y, steps, batch_size, rng, log=log, name=name, flip_axes=flip_axes
    )
    val_dice = score_dice_only(runner.predict(xv), data["val"]) if len(xv) else None
    start = time.perf_counter()
    per_case = score_cases(runner.predict(xt), data["test"], names)
    test_s = time.perf_counter() - start
    # The first step includes graph tracing (Keras) and warm-up: the steady rate leaves it out.
    per_step = float(np.median(seconds[1:] if len(seconds) > 1 else seconds))
    steps_per_epoch = int(np.ceil(len(x) / batch_size))
    return {
        "framework": spec["framework"],
        "builder": spec["builder"],
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in spec["config"].items()},
        "pad_shape": list(pad),
        "params": int(runner.params()),
        "steps": steps,
        "batch_size": batch_size,
        "lr": spec.get("lr", 1e-3),
        "schedule": spec.get("schedule") or "constant",
        "flip_axes": list(flip_axes),
        "epochs": steps / steps_per_epoch,
        "train_seconds": float(sum(seconds)),
        "seconds_per_step": per_step,
        "seconds_per_epoch": per_step * steps_per_epoch,
        "test_seconds": test_s,
        "loss_per_step": [float(v) for v in losses],
        "val_dice_final": val_dice,
        **summarise(per_case),
        "per_case": per_case,
    }


def budget_steps(name, data, threads, budget_s, batch_size=None, n_steps=3):
    """The number of steps of ``name`` that takes about ``budget_s`` seconds (3 timed steps)."""
    spec = NETWORKS[name]
    batch_size = batch_size or spec.get("batch_size", 8)
    x, y = stack_padded(data["train"][: batch_size * n_steps], tuple(spec["pad_shape"]))
    runner = make_runner(name, spec, threads)
    _, seconds = train_steps(runner, x, y, n_steps, batch_size, np.random.default_rng(0))
    budget_s *= spec.get("budget_fraction", 1.0)
    return max(1, int(round(budget_s / float(np.median(seconds[1:])))))


def time_only(name, data, threads, budget_s, batch_size=None, n_steps=2):
    """Time ``n_steps`` training steps of ``name`` without training it further or scoring it.

    For networks whose steps are so slow on the machine that the budget would buy only a
    handful of them: the results file then says so with the measured times instead of
    scoring an untrained network.
    """
    spec = NETWORKS[name]
    batch_size = batch_size or spec.get("batch_size", 8)
    x, y = stack_padded(data["train"][: batch_size * n_steps], tuple(spec["pad_shape"]))
    seed_everything(0)
    runner = make_runner(name, spec, threads)
    _, seconds = train_steps(runner, x, y, n_steps, batch_size, np.random.default_rng(0))
    per_step = float(np.median(seconds[1:]))
    return {
        "framework": spec["framework"],
        "builder": spec["builder"],
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in spec["config"].items()},
        "pad_shape": list(spec["pad_shape"]),
        "params": int(runner.params()),
        "batch_size": batch_size,
        "first_step_seconds": float(seconds[0]),
        "seconds_per_step": per_step,
        "budget_seconds": budget_s,
        "steps_in_budget": int(budget_s // per_step),
    }


def calibrate(nets, data, threads, budget_s, n_steps=3):
    """Time ``n_steps`` steps of each network; print the steps that fill ``budget_s``."""
    for name in nets:
        spec = NETWORKS[name]
        batch_size = spec.get("batch_size", 8)
        x, y = stack_padded(data["train"][: batch_size * n_steps], tuple(spec["pad_shape"]))
        runner = make_runner(name, spec, threads)
        _, seconds = train_steps(runner, x, y, n_steps, batch_size, np.random.default_rng(0))
        per_step = float(np.median(seconds[1:]))
        budget = budget_s * spec.get("budget_fraction", 1.0)
        print(
            f"{name}: {per_step:.2f} s/step (first {seconds[0]:.1f} s) -> {int(budget // per_step)} steps "
            f"for {budget:.0f} s",
            flush=True,
        )


def score_dice_only(pred_padded, cases):
    """Mean Dice over cases and both structures (the validation curve)."""
    scores = []
    for pred, (_, _, label, _) in zip(pred_padded, cases):
        d = dice_per_label(crop_or_pad(pred, label.shape), label, LABELS)
        scores.append(np.mean(list(d.values())))
    return float(np.mean(scores))


def fmt(value, digits=3):
    """A number for the log, or "n/a" (an SD of one case, an HD95 with no predicted structure)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def parse_steps(items, default):
    steps = dict(default)
    for item in items or []:
        name, _, n = item.partition("=")
        if name not in NETWORKS or not n.isdigit() or int(n) < 1:
            raise ValueError(
                f"--steps expects NAME=N with NAME in {sorted(NETWORKS)} and N >= 1, got {item!r}"
            )
        steps[name] = int(n)
    return steps


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="Task04 folder (default: found by msd_task_dir)")
    parser.add_argument("--nets", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--steps", nargs="*", help="per-network overrides of STEPS, NAME=N")
    parser.add_argument("--quick", action="store_true", help="16/4/8 cases, 3 steps each (a few minutes)")
    parser.add_argument("--train", type=int, default=None, help="use only the first N training cases")
    parser.add_argument("--val", type=int, default=None)
    parser.add_argument("--test", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="threads per framework (1 is fastest on a busy 2-core CPU)"
    )
    parser.add_argument(
        "--calibrate", type=float, default=None, metavar="SECONDS", help="time 3 steps per net"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="set the steps of each network from 3 timed steps so that it trains for about SECONDS "
        "(the chosen steps are stored; rerun with --steps to reproduce)",
    )
    parser.add_argument(
        "--time-only",
        nargs="*",
        default=list(TIME_ONLY),
        choices=list(NETWORKS),
        help="networks to time (2 steps) instead of training, stored under 'timed_only' "
        f"(default: {' '.join(TIME_ONLY)}; pass --time-only with no name to train them all)",
    )
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--merge", action="store_true", help="keep the other networks already in --output (same split)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.val, args.test = args.train or 16, args.val or 4, args.test or 8
    steps = parse_steps(args.steps, {n: 3 for n in NETWORKS} if args.quick else STEPS)
    output = Path(args.output or RESULTS / ("hippocampus_quick.json" if args.quick else "hippocampus.json"))
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import torch

    torch.set_num_threads(args.threads)
    if any(NETWORKS[n]["framework"] == "keras" for n in args.nets):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    root = Path(args.data) if args.data else msd_task_dir("Task04_Hippocampus")
    names = label_names(root)
    data = load_split(root, args.train, args.val, args.test)
    if args.calibrate:
        calibrate(args.nets, data, args.threads, args.calibrate)
        return None
    results = {
        "task": "Task04_Hippocampus",
        "licence": LICENCE,
        "split": {part: len(cases) for part, cases in data.items()},
        "test_ids": [c[0] for c in data["test"]],
        "labels": {str(v): names[v] for v in LABELS},
        "protocol": (
            "per-case z-score; zero padding to pad_shape; softmax, Dice + CE; Adam 1e-3; batch 8; "
            "random flips on 3 axes; a fixed number of steps per network; "
            "prediction cropped back to the case grid; "
            "Dice and HD95 (mm) per structure on the test cases"
        ),
        "provenance": provenance(argv, args.seed, args.threads),
        "networks": {},
        "timed_only": {},
        "comparison": None,
    }
    if args.merge and output.exists():
        previous = json.loads(output.read_text())
        if previous["test_ids"] != results["test_ids"]:
            raise ValueError(f"--merge: {output} was measured on other test cases; run without --merge")
        results["networks"] = {k: v for k, v in previous["networks"].items() if k not in args.nets}
        results["timed_only"] = {
            k: v for k, v in previous.get("timed_only", {}).items() if k not in args.time_only
        }
        # Each run's provenance is kept with the networks it trained.
        results["provenance_of_merged"] = previous.get("provenance_of_merged", []) + [previous["provenance"]]
    print(f"data: {results['split']} from {root}; steps {steps}", flush=True)
    for name in [n for n in args.time_only if n in args.nets]:
        r = time_only(name, data, args.threads, args.budget or 330.0)
        r["run"] = {
            k: results["provenance"][k] for k in ("command", "commit", "date", "load_average_at_start")
        }
        results["timed_only"][name] = r
        print(
            f"{name}: {r['params']:,} params, first step {r['first_step_seconds']:.0f} s, then "
            f"{r['seconds_per_step']:.1f} s/step: {r['steps_in_budget']} steps in "
            f"{r['budget_seconds']:.0f} s",
            flush=True,
        )
        write_json(results, output)
    for name in [n for n in args.nets if n not in args.time_only]:
        start = time.perf_counter()
        if args.budget:
            steps[name] = budget_steps(name, data, args.threads, args.budget)
            print(f"{name}: {steps[name]} steps fill about {args.budget:.0f} s", flush=True)
        results["networks"][name] = train_and_score(
            name,
            NETWORKS[name],
            steps[name],
            data,
            names,
            args.seed,
            args.threads,
            log=lambda s: print(s, flush=True),
        )
        r = results["networks"][name]
        r["run"] = {
            k: results["provenance"][k] for k in ("command", "commit", "date", "load_average_at_start")
        }
        print(
            f"{name}: {r['params']:,} params, {r['steps']} steps x {r['seconds_per_step']:.1f} s, "
            + ", ".join(
                f"{s} Dice {fmt(r['dice'][s]['mean'])} ± {fmt(r['dice'][s]['sd'])}, "
                f"HD95 {fmt(r['hd95_mm'][s]['mean'], 2)} mm"
                for s in r["dice"]
            )
            + f" ({time.perf_counter() - start:.0f} s in all)",
            flush=True,
        )
        results["comparison"] = compare_best_with_peer(results)
        write_json(results, output)
    results["comparison"] = compare_best_with_peer(results)  # also after a --merge that trained nothing
    write_json(results, output)
    if results["comparison"]:
        c = results["comparison"]
        for structure, s in c["per_structure"].items():
            print(
                f"{c['best']} - {PEER}, {structure}: mean Dice difference {s['mean_diff']:+.4f}, "
                f"95% CI [{s['ci95'][0]:+.4f}, {s['ci95'][1]:+.4f}], Wilcoxon p = {s['wilcoxon_p']:.3g}"
            )
    print(f"wrote {output}")
    return results


if __name__ == "__main__":
    main()
