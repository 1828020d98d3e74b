"""Train a recipe at full scale: ``python -m mednets.train RECIPE --data DIR --out DIR``.

One command for one CPU, one GPU, or many under ``torchrun``::

    python -m mednets.train nvnet-brats --data BraTS2021/ --out runs/nvnet --amp bf16
    torchrun --standalone --nproc_per_node=4 -m mednets.train nvnet-brats --data BraTS2021/ \\
        --out runs/nvnet --batch-size 4

The recipe (:mod:`mednets.recipes`) fixes the network, the data pipeline and the
training settings; options override single keys. The run:

1. finds the cases (a BraTS folder in either naming, or a Decathlon task folder) and
   splits them by case, seeded (the Decathlon hippocampus uses the book's fixed split);
2. stores the training and validation cases once in ``OUT/data.h5``
   (:func:`mednets.data.convert_to_h5`), from which :class:`mednets.torch.data.H5PatchDataset`
   samples random crops;
3. trains with :func:`mednets.torch.train.fit`, writing ``OUT/metrics.jsonl`` and
   ``OUT/checkpoints/{last,best}.pt``, validating every ``--val-every`` epochs with a
   sliding window over whole validation volumes;
4. predicts the held-out test cases with the best checkpoint and writes them as NIfTI
   on each input's grid (``OUT/predictions/<case>.nii.gz``,
   :func:`mednets.data.nifti.save_like`), with their scores in ``OUT/test_scores.json``.

``OUT/config.json`` holds the resolved config, the split and the command. ``--resume``
continues from ``OUT/checkpoints/last.pt`` (a Colab session that ended, say); a
checkpoint of another config is refused. ``--dry-run`` prints the config, the parameter
count and an estimate of the memory per process, and trains nothing.

This module imports PyTorch only inside :func:`main`, so ``import mednets.train`` stays light.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mednets.recipes import RECIPES, RUN_KEYS, get_recipe

__all__ = [
    "build_parser",
    "resolve_config",
    "check_world_size",
    "find_cases",
    "split_ids",
    "build_model",
    "probabilities_to_label",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mednets.train``.

    Example:
        >>> build_parser().parse_args(["nvnet-brats", "--data", "d", "--out", "o", "--epochs", "2"]).epochs
        2
    """
    p = argparse.ArgumentParser(
        prog="python -m mednets.train",
        description="Train a recipe (a named configuration) on a data folder, on a CPU, one GPU or "
        "several (torchrun). Recipes: " + ", ".join(f"{k} ({v['description']})" for k, v in RECIPES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help=f"one of {sorted(RECIPES)}")
    p.add_argument("--data", type=Path, help="the data folder: BraTS subjects, or a Decathlon task folder")
    p.add_argument("--out", type=Path, help="output folder (metrics.jsonl, checkpoints/, predictions/)")
    p.add_argument(
        "--store",
        type=Path,
        help="the HDF5 store of the training cases (default OUT/data.h5; on Colab put it on the local disk)",
    )
    p.add_argument("--epochs", type=int, help="total epochs (the recipe's by default)")
    p.add_argument("--batch-size", type=int, help="global batch over all processes")
    p.add_argument("--lr", type=float, help="initial learning rate")
    p.add_argument("--crop", type=int, nargs=3, metavar=("X", "Y", "Z"), help="training crop (and window)")
    p.add_argument("--init-filters", type=int, help="filters of the first level (the paper: 32)")
    p.add_argument(
        "--no-vae", dest="vae", action="store_false", default=None, help="train without the VAE branch"
    )
    p.add_argument(
        "--amp", choices=["bf16", "fp16", "none"], help="mixed precision (GPU: bf16 on Ampere+, else fp16)"
    )
    p.add_argument("--accumulate", type=int, help="batches per optimiser step")
    p.add_argument("--samples-per-epoch", type=int, help="patches per epoch (default: one per training case)")
    p.add_argument("--val-every", type=int, help="validate every N epochs")
    p.add_argument("--workers", dest="num_workers", type=int, help="DataLoader workers per process")
    p.add_argument("--seed", type=int, help="seed of the split, the initialisation and the patches")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt if it exists")
    p.add_argument(
        "--dry-run", action="store_true", help="print config, parameters and memory estimate; train nothing"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe with the command line's overrides.

    Raises:
        ValueError: For an unknown recipe, or a crop, batch, epoch count or learning
            rate out of range.

    Example:
        >>> args = build_parser().parse_args(["nvnet-msd", "--crop", "64", "64", "64", "--amp", "none"])
        >>> c = resolve_config(args); c["crop"], c["amp"]
        ([64, 64, 64], None)
    """
    overrides = {
        k: getattr(args, k)
        for k in ("epochs", "batch_size", "lr", "init_filters", "vae", "accumulate", "samples_per_epoch")
        + ("val_every", "num_workers", "seed")
    }
    overrides["crop"] = list(args.crop) if args.crop else None
    config = get_recipe(args.recipe, **overrides)
    if args.amp is not None:
        config["amp"] = None if args.amp == "none" else args.amp
    for key in ("epochs", "batch_size", "accumulate", "val_every", "init_filters"):
        if int(config[key]) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {config[key]}")
    if config["lr"] <= 0:
        raise ValueError(f"--lr must be > 0, got {config['lr']}")
    divisor = 16 if config["vae"] else 8
    bad = [s for s in config["crop"] if s < divisor or s % divisor]
    if bad:
        raise ValueError(
            f"--crop {config['crop']}: every size must be a positive multiple of {divisor} "
            f"(NVNet {'with' if config['vae'] else 'without'} the VAE), got {bad}"
        )
    return config


def check_world_size(batch_size: int, environ: dict | None = None) -> int:
    """Check the global batch against the number of processes ``torchrun`` starts.

    Returns:
        The number of processes (``WORLD_SIZE``, 1 without ``torchrun``).

    Raises:
        ValueError: If the batch is smaller than the number of processes, or not a
            multiple of it.

    Example:
        >>> check_world_size(4, {"WORLD_SIZE": "2"})
        2
        >>> check_world_size(1, {"WORLD_SIZE": "2"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --batch-size 1 is smaller than the number of processes 2 (WORLD_SIZE): ...
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("WORLD_SIZE", "1")
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer >= 1, got {raw!r}") from None
    if batch_size < n:
        raise ValueError(
            f"--batch-size {batch_size} is smaller than the number of processes {n} (WORLD_SIZE): "
            f"each process needs at least one sample; pass --batch-size {n} or more, or start fewer processes"
        )
    if batch_size % n:
        raise ValueError(
            f"--batch-size {batch_size} must be a multiple of the number of processes {n} (WORLD_SIZE)"
        )
    return n


def find_cases(config: dict, data: Path) -> list:
    """The labelled cases of the data folder: BraTS ``Subject``s or ``DecathlonCase``s.

    Raises:
        ValueError: If the folder does not exist or holds no case (the message says
            what was expected).

    Example:
        >>> find_cases(get_recipe("nvnet-msd"), Path("/nonexistent"))
        Traceback (most recent call last):
        ...
        ValueError: --data /nonexistent is not a folder
    """
    data = Path(data)
    if not data.is_dir():
        raise ValueError(f"--data {data} is not a folder")
    if config["dataset"] == "brats":
        from mednets.data.brats import find_brats_subjects

        subjects = find_brats_subjects(data, modalities=config["modalities"])
        return [s for s in subjects if s.label is not None] or _no_cases(
            data, "BraTS subjects with a seg file"
        )
    from mednets.data.decathlon import decathlon_cases

    if not (data / "dataset.json").is_file():
        raise ValueError(
            f"no cases found in {data}: a Decathlon task folder has dataset.json, imagesTr/ and labelsTr/"
        )
    return decathlon_cases(data) or _no_cases(data, "cases in imagesTr/ and labelsTr/")


def _no_cases(data, what):
    raise ValueError(f"no cases found in {data}: expected {what}")


def _case_id(case) -> str:
    return getattr(case, "id", None) or case.case_id


def split_ids(ids: Sequence[str], config: dict) -> dict[str, list[str]]:
    """Split case ids into train / val / test, by case, seeded by the config's seed.

    The Decathlon hippocampus with its 260 cases gets the book's fixed split
    (:func:`mednets.data.decathlon.split_cases` with 180/30/50 and its seed); otherwise the
    ``split`` fractions give at least one validation and one test case.

    Raises:
        ValueError: With fewer than 3 cases.

    Example:
        >>> s = split_ids([f"c{i}" for i in range(10)], get_recipe("nvnet-brats"))
        >>> {k: len(v) for k, v in s.items()}
        {'train': 8, 'val': 1, 'test': 1}
    """
    from mednets.data.decathlon import HIPPOCAMPUS_SPLIT_SIZES, split_cases

    n = len(ids)
    if n < 3:
        raise ValueError(f"expected at least 3 labelled cases (train, validation, test), got {n}")
    if config["recipe"] == "nvnet-hippocampus" and n == sum(HIPPOCAMPUS_SPLIT_SIZES):
        return split_cases(ids)
    val_frac, test_frac = config["split"]
    n_val = max(1, round(n * val_frac))
    n_test = max(1, round(n * test_frac))
    if n - n_val - n_test < 1:
        n_val, n_test = 1, 1
    return split_cases(ids, sizes=(n - n_val - n_test, n_val, n_test), seed=config["seed"])


def build_model(config: dict, spatial_size: Sequence[int] | None = None):
    """The recipe's network (PyTorch), for a crop of ``spatial_size`` (the config's by default).

    Example:
        >>> net = build_model(get_recipe("nvnet-hippocampus", init_filters=8), (16, 16, 16))
        >>> type(net).__name__, net.out_channels
        ('NVNet', 2)
    """
    from mednets.torch.nvnet import NVNet

    if config["model"] != "nvnet":
        raise ValueError(f"unknown model {config['model']!r}; expected 'nvnet'")
    return NVNet(
        spatial_dims=3,
        in_channels=config["in_channels"],
        out_channels=config["out_channels"],
        init_filters=config["init_filters"],
        spatial_size=tuple(spatial_size or config["crop"]),
        vae=config["vae"],
        dropout=config["dropout"],
    )


class _LazyCase(tuple):
    """``(id, image, label)`` that loads the image and label only when unpacked.

    ``convert_to_h5`` takes ``(id, image, label)`` tuples and lists its input first;
    loading every Decathlon case up front would hold the whole task (70 GB for Task01) in
    memory. Unpacking this tuple loads one case at a time.
    """

    def __new__(cls, case, label_names, pad_to):
        self = super().__new__(cls, (case.case_id, None, None))
        self.case, self.label_names, self.pad_to = case, label_names, pad_to
        return self

    def __iter__(self):
        from mednets.data.crop import crop_or_pad
        from mednets.data.decathlon import load_case

        image, label, _ = load_case(self.case, label_names=self.label_names)
        if self.pad_to:
            image, label = crop_or_pad(image, self.pad_to), crop_or_pad(label, self.pad_to)
        return iter((self.case.case_id, image, label))


def _modalities(config, data):
    if config["dataset"] == "brats":
        return list(config["modalities"])
    from mednets.data.decathlon import read_dataset_json

    modality = read_dataset_json(data).get("modality") or {}
    names = [str(modality[k]) for k in sorted(modality, key=int)] if modality else None
    return names or [f"channel{i}" for i in range(config["in_channels"])]


def _build_store(config, data, cases, ids, path, progress):
    from mednets.data.h5store import H5Volumes, convert_to_h5

    done = set(H5Volumes(path).ids) if path.is_file() else set()
    todo = [c for c in cases if _case_id(c) in ids and _case_id(c) not in done]
    if not todo:
        return
    if config["dataset"] == "brats":
        items, convention = todo, config["label_convention"]
    else:
        from mednets.data.decathlon import label_names

        names = label_names(data)
        items, convention = [_LazyCase(c, names, config["pad_to"]) for c in todo], config["label_convention"]
    convert_to_h5(
        items,
        path,
        modalities=_modalities(config, data),
        label_convention=convention,
        append=path.is_file(),
        progress=progress,
    )


def _load_full(config, case):
    """A case at full size in RAS+: (image, label or None, meta with 'reference', 'convention', 'spacing')."""
    if config["dataset"] == "brats":
        from mednets.data.brats import convention_from_naming, load_subject

        image, label, meta = load_subject(case, config["modalities"])
        names = [Path(p).name for p in case.images.values()]
        convention = meta["label_convention"] or convention_from_naming(names) or "brats2023"
        reference = case.images[config["modalities"][0]]
        return image, label, {"reference": reference, "convention": convention, "spacing": meta["spacing"]}
    from mednets.data.decathlon import load_case

    image, label, meta = load_case(case)
    return (
        image,
        label,
        {
            "reference": meta["image_path"],
            "convention": config["label_convention"],
            "spacing": meta["spacing"],
        },
    )


def _score_fn(config):
    from functools import partial

    from mednets.torch.train import label_scores, region_scores

    if config["target"] == "regions":
        return region_scores
    return partial(label_scores, names=tuple(config["structures"]))


def _reference(config, label, convention):
    """The reference in the space the score function expects."""
    from mednets.data.brats import tumour_classes

    if config["target"] == "regions":
        return tumour_classes(label, convention)
    return label.astype("int64")


def probabilities_to_label(config: dict, probs, convention: str | None):
    """A network's output ``(C, *S)`` as a label map ``(*S)`` uint8, in the recipe's terms.

    Region recipes (WT, TC, ET sigmoids) give the tumour labels of ``convention``
    (:func:`mednets.data.brats.regions_to_label`); label recipes give 1..C where channel
    ``c - 1`` is above 0.5 (a later channel wins where two overlap).

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.9, 0.1], [0.2, 0.8, 0.1], [0.1, 0.7, 0.1]])
        >>> probabilities_to_label(get_recipe("nvnet-msd"), probs, "msd").tolist()
        [1, 3, 0]
        >>> probabilities_to_label(get_recipe("nvnet-hippocampus"), probs[:2], None).tolist()
        [1, 2, 0]
    """
    import numpy as np

    from mednets.data.brats import regions_to_label

    if config["target"] == "regions":
        return regions_to_label(probs, convention)
    pred = np.zeros(probs.shape[1:], np.uint8)
    for c in range(probs.shape[0]):
        pred[(probs[c] > 0.5).cpu().numpy()] = c + 1
    return pred


def _dry_run(config, data, world) -> int:
    import torch

    from mednets.torch.memory import estimate_step_memory
    from mednets.utils import human_bytes

    print(json.dumps(config, indent=2))
    if data is not None:
        cases = find_cases(config, data)
        split = split_ids([_case_id(c) for c in cases], config)
        print(
            f"data: {len(cases)} labelled cases in {data}; split "
            + ", ".join(f"{k} {len(v)}" for k, v in split.items())
        )
    torch.manual_seed(config["seed"])
    with torch.device("meta"):
        net = build_model(config)
    n_params = sum(p.numel() for p in net.parameters())
    per_process = config["batch_size"] // world
    est = estimate_step_memory(
        lambda s: build_model(config, s), config["in_channels"], config["crop"], per_process
    )
    crop_txt = "x".join(map(str, config["crop"]))
    print(f"parameters: {n_params:,}")
    print(
        f"memory per process (estimate): {human_bytes(est['total_bytes'])} in float32 = one training step at "
        f"{crop_txt}, batch {per_process} (activations and weight gradients, counted on the meta device: "
        f"{human_bytes(est['step_peak_bytes'])}) + weights and Adam's two moments "
        f"({human_bytes(3 * est['param_bytes'])}); mixed precision about halves the activations "
        f"(~{human_bytes(est['total_bytes'] - est['activation_bytes'] / 2)}); the CUDA context and caches "
        "add a few hundred MiB"
    )
    print("dry run: nothing trained")
    return 0


def _train(config, args, world) -> int:
    import numpy as np
    import torch

    from mednets.data.h5store import H5Volumes
    from mednets.data.transforms import brain_mask, zscore_normalise
    from mednets.torch.data import H5PatchDataset
    from mednets.torch.distributed import barrier, cleanup, default_device, init_distributed, is_main_process
    from mednets.torch.inference import sliding_window_inference
    from mednets.torch.losses import NVNetLoss
    from mednets.torch.train import TrainingPairs, fit, load_checkpoint, poly_lr, sliding_window_validation
    from mednets.utils import atomic_write, seed_everything

    cases = find_cases(config, args.data)
    split = split_ids([_case_id(c) for c in cases], config)
    init_distributed()
    main_process = is_main_process()
    device = default_device()
    out = args.out
    store_path = args.store or out / "data.h5"
    trained = {k: v for k, v in config.items() if k not in RUN_KEYS}
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "config": config,
            "split": split,
            "command": " ".join(["python -m mednets.train", *sys.argv[1:]]),
            "world_size": world,
            "device": str(device),
        }
        with atomic_write(out / "config.json", suffix=".json") as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        _build_store(
            config, args.data, cases, set(split["train"]) | set(split["val"]), store_path, args.progress
        )
    barrier()

    seed_everything(config["seed"])
    store = H5Volumes(store_path)
    target = "regions" if config["target"] == "regions" else "classes"
    patches = H5PatchDataset(
        store,
        patch_size=config["crop"],
        samples_per_epoch=config["samples_per_epoch"],
        foreground_fraction=config["foreground_fraction"],
        augment=config["augment"],
        target=target,
        ids=split["train"],
        seed=config["seed"],
    )
    one_hot = None if target == "regions" else len(config["structures"])
    dataset = TrainingPairs(patches, image_in_target=config["vae"], one_hot=one_hot)

    val_cases = []
    for sid in split["val"]:
        image, label = store.read(sid)
        meta = store.meta(sid)
        image = zscore_normalise(image, brain_mask(image), meta["mean"], meta["std"])
        convention = meta["label_convention"] or "brats2023"
        val_cases.append((image, _reference(config, label, convention), tuple(meta["spacing"])))
    eval_fn = sliding_window_validation(
        val_cases, config["crop"], _score_fn(config), overlap=config["overlap"]
    )

    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    scheduler = poly_lr(optimizer, config["epochs"])
    history = fit(
        model,
        dataset,
        NVNetLoss(w_l2=config["w_l2"], w_kl=config["w_kl"]),
        optimizer,
        config["epochs"],
        scheduler=scheduler,
        eval_fn=eval_fn,
        progress=args.progress,
        desc=config["recipe"],
        device=device,
        amp=config["amp"],
        accumulate=config["accumulate"],
        batch_size=config["batch_size"],
        seed=config["seed"],
        num_workers=config["num_workers"],
        eval_every=config["val_every"],
        out_dir=out,
        resume=args.resume or None,
        config=trained,
        monitor=config["monitor"],
        mode="max",
    )

    if main_process:
        best = out / "checkpoints" / "best.pt"
        load_checkpoint(best if best.is_file() else out / "checkpoints" / "last.pt", model)
        model.eval()
        by_id = {_case_id(c): c for c in cases}
        scores = {}
        for sid in split["test"]:
            image, label, meta = _load_full(config, by_id[sid])
            volume = torch.from_numpy(zscore_normalise(image, brain_mask(image))).to(device)
            with torch.no_grad():
                probs = sliding_window_inference(
                    model.segment, volume, config["crop"], overlap=config["overlap"]
                )
            pred = probabilities_to_label(config, probs.cpu(), meta["convention"])
            from mednets.data.nifti import save_like

            save_like(pred, meta["reference"], out / "predictions" / f"{sid}.nii.gz", dtype=np.uint8)
            if label is not None:
                reference = _reference(config, label, meta["convention"])
                scores[sid] = _score_fn(config)(probs.cpu(), reference, meta["spacing"])
        summary = {
            "cases": scores,
            "mean": {
                k: float(np.mean([s[k] for s in scores.values()])) for k in next(iter(scores.values()), {})
            },
            "epochs": len(history["loss"]),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with atomic_write(out / "test_scores.json", suffix=".json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"done: {out} (metrics.jsonl, checkpoints/, predictions/, test_scores.json)")
    barrier()
    cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line. Bad input stops with a clear message before anything starts.

    Returns:
        0 on success (argparse exits with 2 on bad input).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = resolve_config(args)
        world = check_world_size(config["batch_size"])
        if not args.dry_run:
            if args.data is None or args.out is None:
                raise ValueError("--data and --out are required (except with --dry-run)")
            find_cases(config, args.data)  # fail early: a folder with no case
        elif args.data is not None:
            find_cases(config, args.data)
    except ValueError as err:
        parser.error(str(err))
    if args.dry_run:
        return _dry_run(config, args.data, world)
    return _train(config, args, world)


if __name__ == "__main__":
    sys.exit(main())
