"""Benchmark: does the VAE branch help when there are few training subjects?

Myronenko (2018) adds the VAE branch as a regulariser "due to a limited training
dataset size". This script trains the same small NVNet twice per seed, VAE on and VAE
off, with the same data, budget (epochs and steps), optimiser and seed, and compares
the held-out Dice of the three BraTS regions.

Usage::

    python benchmarks/bench_vae_ablation.py [--train 4] [--test 4] [--epochs 40] [--lr 1e-3] [--seeds 0 1 2]

Data: synthetic phantoms (``mednets.data.make_phantom_dataset``) of 48^3 voxels; each
training subject contributes one 32^3 crop centred on its tumour, and held-out subjects
are segmented whole with ``sliding_window_inference`` (32^3 windows). Prints a Markdown
table (mean and per-seed Dice) and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from mednets.data import brats_regions, make_phantom_dataset, random_crop, zscore_normalise
from mednets.metrics import brats_scores
from mednets.torch.inference import regions_to_label, sliding_window_inference
from mednets.torch.losses import NVNetLoss
from mednets.torch.nvnet import NVNet
from mednets.torch.train import fit, poly_lr
from mednets.utils import markdown_table, seed_everything

REGIONS = ("WT", "TC", "ET")


def make_data(n_train, n_test, volume=48, patch=32, seed=0):
    """Normalised phantoms; tumour-centred training crops; whole held-out volumes."""
    images, labels = make_phantom_dataset(n_train + n_test, (volume,) * 3, seed=seed, empty_fraction=0.0)
    images = np.stack([zscore_normalise(im) for im in images])
    crops = [
        random_crop(im, lab, (patch,) * 3, rng=i, foreground_fraction=1.0)
        for i, (im, lab) in enumerate(zip(images[:n_train], labels[:n_train]))
    ]
    x = torch.from_numpy(np.stack([c[0] for c in crops]))
    y = torch.from_numpy(np.stack([brats_regions(c[1]) for c in crops]).astype(np.float32))
    return x, y, images[n_train:], labels[n_train:]


def train_once(x, y, vae, epochs, seed, init_filters=8, lr=1e-3, batch_size=2):
    seed_everything(seed)
    patch = tuple(x.shape[2:])
    net = NVNet(in_channels=x.shape[1], out_channels=3, init_filters=init_filters, input_shape=patch, vae=vae)
    batches = [
        (
            x[i : i + batch_size],
            (y[i : i + batch_size], x[i : i + batch_size]) if vae else y[i : i + batch_size],
        )
        for i in range(0, len(x), batch_size)
    ]
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    history = fit(net, batches, NVNetLoss(), opt, epochs, scheduler=poly_lr(opt, epochs), progress=False)
    return net, history


def evaluate(net, images, labels, patch):
    net.eval()
    scores = []
    for image, label in zip(images, labels):
        probs = sliding_window_inference(net, torch.from_numpy(image), patch, overlap=0.5)
        s = brats_scores(regions_to_label(probs), label)
        scores.append([s[r]["dice"] for r in REGIONS])
    return np.mean(scores, axis=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=4)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows, per_seed = [], {True: [], False: []}
    start = time.time()
    for seed in args.seeds:
        x, y, test_images, test_labels = make_data(args.train, args.test, seed=seed)
        for vae in (True, False):
            net, hist = train_once(x, y, vae, args.epochs, seed, lr=args.lr)
            dice = evaluate(net, test_images, test_labels, tuple(x.shape[2:]))
            per_seed[vae].append(dice)
            rows.append((seed, "on" if vae else "off", hist["dice"][-1], *dice))
            print(
                f"seed {seed} vae {'on' if vae else 'off'}: train Dice loss {hist['dice'][-1]:.3f}, "
                f"held-out Dice WT/TC/ET {np.round(dice, 3).tolist()}",
                flush=True,
            )
    print()
    print(
        f"{args.train} training subjects (one 32^3 tumour-centred crop each), {args.test} held-out 48^3 "
        f"phantoms, {args.epochs} epochs, init_filters=8, Adam {args.lr:g} with poly decay, seeds {args.seeds}"
    )
    print()
    print(
        markdown_table(
            rows, ["seed", "VAE", "final train Dice loss", *[f"held-out Dice {r}" for r in REGIONS]]
        )
    )
    print()
    summary = []
    for vae in (True, False):
        arr = np.array(per_seed[vae])
        summary.append(
            ("on" if vae else "off", *[f"{m:.3f} ± {s:.3f}" for m, s in zip(arr.mean(0), arr.std(0))])
        )
    print(markdown_table(summary, ["VAE", *[f"Dice {r} (mean ± sd over seeds)" for r in REGIONS]]))
    print()
    print(
        f"{time.time() - start:.0f} s on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)"
    )


if __name__ == "__main__":
    main()
