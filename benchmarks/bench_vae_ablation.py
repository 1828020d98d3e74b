"""Benchmark: does NVNet's VAE branch help when there are few training subjects?

Myronenko (2018) adds the VAE branch as a regulariser "due to a limited training
dataset size". This script trains the same small NVNet twice per seed and training-set
size, VAE on and VAE off, with the same data, number of optimiser steps, optimiser and
seed, and compares held-out Dice.

Two data sets:

* ``--data hippocampus`` (the default): real MRI, Decathlon Task04. Training subsets of
  5, 10 and 20 cases drawn (per seed, nested) from the book's fixed training split
  (``mednets.data.decathlon.hippocampus_split``), trained on whole volumes at half
  resolution (2 mm, padded to 32^3, the VAE's input size) to fit the CPU; every run is
  tested on the same held-out test cases, its logits up-sampled to 1 mm and cropped
  back to each case's grid before scoring. Loss:
  Dice + cross-entropy over background / anterior / posterior (softmax), plus
  ``0.1 L2 + 0.1 KL`` with the VAE on, as in the paper. The width (``--init-filters``,
  4 by default, GroupNorm with as many groups) is what fits a 2-core CPU shared with
  other jobs. Writes ``benchmarks/results/vae_ablation_hippocampus.json``.
* ``--data phantoms``: the synthetic phantoms of Chapter 5 (48^3 voxels, one 32^3
  tumour-centred crop per training subject, held-out phantoms segmented with a sliding
  window, the three BraTS regions). Writes
  ``benchmarks/results/vae_ablation_phantoms.json``; runs at another ``--lr`` are
  kept in the file, so Chapter 5 can show both learning rates.

Usage::

    python benchmarks/bench_vae_ablation.py                      # hippocampus, about 35 min on 2 cores
    python benchmarks/bench_vae_ablation.py --quick              # hippocampus, a few minutes
    python benchmarks/bench_vae_ablation.py --data phantoms --lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_hippocampus as bh  # noqa: E402  (the sibling benchmark: data, runner, scoring, provenance)

from mednets.data import (  # noqa: E402
    brats_regions,
    crop_or_pad,
    make_phantom_dataset,
    random_crop,
    regions_to_label,
    zscore_normalise,
)
from mednets.metrics import brats_scores  # noqa: E402
from mednets.torch.inference import sliding_window_inference  # noqa: E402
from mednets.torch.losses import NVNetLoss  # noqa: E402
from mednets.torch.nvnet import NVNet  # noqa: E402
from mednets.torch.train import fit, poly_lr  # noqa: E402
from mednets.utils import markdown_table, seed_everything  # noqa: E402

REGIONS = ("WT", "TC", "ET")


# ----------------------------------------------------------------------------- hippocampus
def hippocampus_subsets(train_ids, sizes, seed):
    """Nested training subsets: the first ``n`` cases of one seeded permutation, per size."""
    order = np.random.default_rng(seed).permutation(len(train_ids))
    return {n: sorted(train_ids[i] for i in order[:n]) for n in sizes}


HALF_GRID = (24, 32, 24)  # bh.PAD_SHAPE halved
NET_GRID = (32, 32, 32)  # HALF_GRID padded to a size the VAE (x16) divides


def half_resolution(cases):
    """Images ``(N, 1, 32, 32, 32)`` and labels ``(N, 32, 32, 32)`` at 2 mm: padded to 48x64x48,
    halved (linear interpolation for images, every second voxel for labels), padded to 32^3."""
    xs, ys = [], []
    for _, image, label, _ in cases:
        image = crop_or_pad(bh.normalise(image), bh.PAD_SHAPE)
        label = crop_or_pad(label, bh.PAD_SHAPE)
        xs.append(crop_or_pad(ndimage.zoom(image[0], 0.5, order=1)[None], NET_GRID))
        ys.append(crop_or_pad(label[::2, ::2, ::2], NET_GRID))
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.uint8)


def predict_full_resolution(runner, x, batch_size=10):
    """Segment at 2 mm, then up-sample the logits (trilinear) to the padded 1 mm grid and take the argmax."""
    net = runner.net
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = net.segment(torch.from_numpy(x[i : i + batch_size])).numpy()
            logits = torch.from_numpy(crop_or_pad(logits, HALF_GRID))
            up = torch.nn.functional.interpolate(
                logits, size=bh.PAD_SHAPE, mode="trilinear", align_corners=False
            )
            out.append(up.argmax(1).numpy().astype(np.uint8))
    return np.concatenate(out)


def run_hippocampus(args, argv):
    root = Path(args.root) if args.root else bh.msd_task_dir("Task04_Hippocampus")
    names = bh.label_names(root)
    data = bh.load_split(root, n_val=0, n_test=args.test)
    by_id = {c[0]: c for c in data["train"]}
    train_ids = sorted(by_id)
    xt, _ = half_resolution(data["test"])
    runs = []
    if args.merge and Path(args.output).exists():
        previous = json.loads(Path(args.output).read_text())
        if previous["test_ids"] != [c[0] for c in data["test"]]:
            raise ValueError(f"--merge: {args.output} was measured on other test cases; run without --merge")
        runs = [r for r in previous["runs"] if r["seed"] not in args.seeds]
        args.merged_provenance = previous.get("provenance_of_merged", []) + [previous["provenance"]]
        args.seeds = sorted({r["seed"] for r in runs} | set(args.seeds))  # what the file will hold
    start_all = time.perf_counter()
    for seed in [s for s in args.seeds if s not in {r["seed"] for r in runs}]:
        subsets = hippocampus_subsets(train_ids, args.subjects, seed)
        for n, ids in subsets.items():
            x, y = half_resolution([by_id[i] for i in ids])
            for vae in (True, False):
                spec = dict(
                    framework="torch",
                    builder="mednets.torch.nvnet.NVNet",
                    config=dict(
                        init_filters=args.init_filters, num_groups=min(8, args.init_filters), vae=vae
                    ),
                )
                seed_everything(seed)
                runner = bh.TorchRunner("nvnet", spec, NET_GRID, args.threads, lr=args.lr)
                start = time.perf_counter()
                losses = train_steps(runner, x, y, args.steps, args.batch_size, np.random.default_rng(seed))
                train_s = time.perf_counter() - start
                per_case = bh.score_cases(predict_full_resolution(runner, xt), data["test"], names)
                summary = bh.summarise(per_case)
                runs.append(
                    {
                        "seed": seed,
                        "n_train": n,
                        "vae": vae,
                        "train_ids": ids,
                        "steps": args.steps,
                        "final_loss": float(np.mean(losses[-5:])),
                        "train_seconds": train_s,
                        "params": runner.params(),
                        "dice": {s: v["mean"] for s, v in summary["dice"].items()},
                        "per_case_dice": per_case["dice"],
                    }
                )
                print(
                    f"seed {seed}, {n:2d} subjects, VAE {'on ' if vae else 'off'}: "
                    f"loss {runs[-1]['final_loss']:.3f}, test Dice "
                    + ", ".join(f"{s} {d:.3f}" for s, d in runs[-1]["dice"].items())
                    + f" ({train_s:.0f} s)",
                    flush=True,
                )
                results = hippocampus_results(runs, data, args, argv, time.perf_counter() - start_all)
                bh.write_json(results, args.output)
    print_hippocampus(results)
    return results


def train_steps(runner, x, y, steps, batch_size, rng):
    """``steps`` optimiser steps over seeded shuffled passes of ``(x, y)`` with random flips.

    Fewer cases than ``batch_size`` make smaller batches: every step sees each case at most once.
    """
    losses = []
    while len(losses) < steps:
        for xb, yb in bh.epoch_batches(x, y, batch_size, rng):
            losses.append(runner.train_batch(xb, yb))
            if len(losses) == steps:
                break
    return losses


def hippocampus_results(runs, data, args, argv, seconds):
    """The JSON: every run, and per training-set size the VAE-on minus VAE-off comparison."""
    summary = {}
    for n in args.subjects:
        on = [r for r in runs if r["n_train"] == n and r["vae"]]
        off = [r for r in runs if r["n_train"] == n and not r["vae"]]
        paired = [(a, b) for a in on for b in off if a["seed"] == b["seed"]]
        if not paired:
            continue
        entry = {"seeds": [a["seed"] for a, _ in paired]}
        for structure in on[0]["dice"]:
            d_on = [a["dice"][structure] for a, _ in paired]
            d_off = [b["dice"][structure] for _, b in paired]
            entry[structure] = {
                "vae_on": {
                    "mean": float(np.mean(d_on)),
                    "sd": float(np.std(d_on, ddof=1)) if len(d_on) > 1 else None,
                },
                "vae_off": {
                    "mean": float(np.mean(d_off)),
                    "sd": float(np.std(d_off, ddof=1)) if len(d_off) > 1 else None,
                },
                "diff_per_seed": [a - b for a, b in zip(d_on, d_off)],
                # Case by case, each case's Dice averaged over the seeds: on minus off.
                "paired_cases": bh.paired_comparison(
                    np.mean([a["per_case_dice"][structure] for a, _ in paired], 0),
                    np.mean([b["per_case_dice"][structure] for _, b in paired], 0),
                ),
            }
        summary[str(n)] = entry
    return {
        "task": "Task04_Hippocampus",
        "licence": bh.LICENCE,
        "question": "Does NVNet's VAE branch raise held-out Dice when training subjects are few?",
        "protocol": (
            f"NVNet init_filters={args.init_filters} (GroupNorm {min(8, args.init_filters)} groups) at 2 mm: "
            "per-case z-score, zero-padded to 48x64x48, halved, padded to 32^3; "
            f"{args.steps} Adam {args.lr:g} steps of batch {args.batch_size} over whole volumes with random "
            "flips, for every training-set size; softmax Dice + CE (+ 0.1 L2 + 0.1 KL with the VAE); "
            "nested training subsets per seed from the book's training split; the same test cases for "
            "every run, logits up-sampled to 1 mm and cropped back to each case's grid before scoring"
        ),
        "subjects": list(args.subjects),
        "seeds": list(args.seeds),
        "test_ids": [c[0] for c in data["test"]],
        "summary": summary,
        "runs": runs,
        "seconds": seconds,
        "provenance": bh.provenance(["bench_vae_ablation.py", *argv], args.seeds, args.threads)
        | {"command": "python benchmarks/bench_vae_ablation.py " + " ".join(argv)},
        "provenance_of_merged": getattr(args, "merged_provenance", []),
        # One command that runs every seed in the file (the file may come from --merge runs).
        "equivalent_command": (
            "python benchmarks/bench_vae_ablation.py --seeds "
            + " ".join(map(str, args.seeds))
            + " --subjects "
            + " ".join(map(str, args.subjects))
            + f" --steps {args.steps} --batch-size {args.batch_size} --init-filters {args.init_filters}"
            + f" --lr {args.lr:g}"
            + (f" --test {args.test}" if args.test else "")
        ),
    }


def print_hippocampus(results):
    rows = []
    for n, entry in results["summary"].items():
        for structure, s in entry.items():
            if structure == "seeds":
                continue
            p = s["paired_cases"]
            rows.append(
                (
                    n,
                    structure,
                    f"{s['vae_on']['mean']:.3f} ± {s['vae_on']['sd'] or 0:.3f}",
                    f"{s['vae_off']['mean']:.3f} ± {s['vae_off']['sd'] or 0:.3f}",
                    f"{p['mean_diff']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]",
                )
            )
    print(
        markdown_table(
            rows, ["subjects", "structure", "VAE on", "VAE off", "on - off (95% CI over test cases)"]
        )
    )


# ----------------------------------------------------------------------------- phantoms
def make_data(n_train, n_test, volume=48, patch=32, seed=0):
    """Normalised phantoms; tumour-centred training crops; whole held-out volumes."""
    images, labels = make_phantom_dataset(n_train + n_test, (volume,) * 3, seed=seed, empty_fraction=0.0)
    images = np.stack([zscore_normalise(im) for im in images])
    crops = [
        random_crop(im, lab, (patch,) * 3, rng=i, foreground_fraction=1.0)
        for i, (im, lab) in enumerate(zip(images[:n_train], labels[:n_train]))
    ]
    x = torch.from_numpy(np.stack([c[0] for c in crops]))
    y = torch.from_numpy(np.stack([brats_regions(c[1], "brats2018") for c in crops]).astype(np.float32))
    return x, y, images[n_train:], labels[n_train:]


def train_once(x, y, vae, epochs, seed, init_filters=8, lr=1e-3, batch_size=2):
    seed_everything(seed)
    patch = tuple(x.shape[2:])
    net = NVNet(
        spatial_dims=3,
        in_channels=x.shape[1],
        out_channels=3,
        init_filters=init_filters,
        spatial_size=patch,
        vae=vae,
    )
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
        probs = sliding_window_inference(net.segment, torch.from_numpy(image), patch, overlap=0.5)
        s = brats_scores(regions_to_label(probs, "brats2018"), label, label_convention="brats2018")
        scores.append([s[r]["dice"] for r in REGIONS])
    return np.mean(scores, axis=0)


def run_phantoms(args, argv):
    rows, per_seed, runs = [], {True: [], False: []}, []
    start = time.perf_counter()
    for seed in args.seeds:
        x, y, test_images, test_labels = make_data(args.train, args.test or 4, seed=seed)
        for vae in (True, False):
            net, hist = train_once(x, y, vae, args.epochs, seed, lr=args.lr)
            dice = evaluate(net, test_images, test_labels, tuple(x.shape[2:]))
            per_seed[vae].append(dice)
            rows.append((seed, "on" if vae else "off", hist["dice"][-1], *dice))
            runs.append(
                {
                    "lr": args.lr,
                    "seed": seed,
                    "vae": vae,
                    "final_train_dice_loss": float(hist["dice"][-1]),
                    "dice": dict(zip(REGIONS, map(float, dice))),
                }
            )
            print(
                f"seed {seed} vae {'on' if vae else 'off'}: train Dice loss {hist['dice'][-1]:.3f}, "
                f"held-out Dice WT/TC/ET {np.round(dice, 3).tolist()}",
                flush=True,
            )
    print(
        markdown_table(
            rows, ["seed", "VAE", "final train Dice loss", *[f"held-out Dice {r}" for r in REGIONS]]
        )
    )
    output = Path(args.output)
    previous = json.loads(output.read_text()).get("runs", []) if output.exists() else []
    results = {
        "data": "synthetic phantoms (mednets.data.make_phantom_dataset), 48^3",
        "protocol": (
            f"{args.train} training phantoms (one 32^3 tumour-centred crop each), {args.test or 4} held-out "
            f"48^3 phantoms (sliding window), {args.epochs} epochs, init_filters=8, Adam with poly decay, "
            "NVNetLoss (Dice + 0.1 L2 + 0.1 KL), sigmoid regions WT/TC/ET"
        ),
        # Runs at other learning rates stay in the file (Chapter 5 shows two).
        "runs": [r for r in previous if r["lr"] != args.lr] + runs,
        "provenance": bh.provenance(["bench_vae_ablation.py", *argv], args.seeds, args.threads)
        | {"command": "python benchmarks/bench_vae_ablation.py " + " ".join(argv)},
        "seconds": time.perf_counter() - start,
    }
    bh.write_json(results, output)
    return results


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=("hippocampus", "phantoms"), default="hippocampus")
    parser.add_argument("--root", default=None, help="Task04 folder (default: found by msd_task_dir)")
    parser.add_argument(
        "--subjects", type=int, nargs="+", default=[5, 10, 20], help="hippocampus: training sizes"
    )
    parser.add_argument("--steps", type=int, default=40, help="hippocampus: optimiser steps per run")
    parser.add_argument("--batch-size", type=int, default=4, help="hippocampus: batch size")
    parser.add_argument("--init-filters", type=int, default=4, help="hippocampus; phantoms use 8")
    parser.add_argument("--train", type=int, default=4, help="phantoms: training subjects")
    parser.add_argument("--test", type=int, default=None, help="held-out cases (hippocampus: all 50)")
    parser.add_argument("--epochs", type=int, default=40, help="phantoms: epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--lr", type=float, default=None, help="learning rate (hippocampus 3e-3, phantoms 1e-3)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="hippocampus: 1 seed, sizes 2 and 4, 3 steps, 6 test cases"
    )
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--merge", action="store_true", help="hippocampus: keep the other seeds' runs in --output"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.lr is None:
        args.lr = 1e-3 if args.data == "phantoms" else 3e-3
    if args.quick:
        args.seeds, args.subjects, args.steps, args.test = [0], [2, 4], 3, args.test or 6
    name = "vae_ablation_phantoms.json" if args.data == "phantoms" else "vae_ablation_hippocampus.json"
    if args.quick:
        name = name.replace(".json", "_quick.json")
    args.output = Path(args.output or bh.RESULTS / name)
    if args.data == "phantoms":
        return run_phantoms(args, argv)
    return run_hippocampus(args, argv)


if __name__ == "__main__":
    main()
