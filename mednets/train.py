"""Train a recipe at full scale: ``python -m mednets.train RECIPE --data DIR --out DIR``.

One command for one CPU, one GPU, or many under ``torchrun`` (PyTorch recipes) or
``tf.distribute`` (Keras recipes: all the GPUs of the machine, or several machines with
``TF_CONFIG``)::

    python -m mednets.train nvnet-brats --data BraTS2021/ --out runs/nvnet --amp bf16
    torchrun --standalone --nproc_per_node=4 -m mednets.train nvnet-brats --data BraTS2021/ \\
        --out runs/nvnet --batch-size 4
    python -m mednets.train unet3plus-hippocampus --data Task04_Hippocampus/ --out runs/u3p

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

A Keras recipe (``"framework": "keras"``) takes the same steps with the Keras tools:
patches from the same store and the same sampler as
:func:`mednets.keras.data.h5_patch_dataset` (the patches of epoch ``e`` are those of the
PyTorch sampler's epoch ``e``), training with
:func:`mednets.keras.train.fit` (``MirroredStrategy`` or ``MultiWorkerMirroredStrategy``,
the mixed-precision policy of ``--amp``), which writes ``OUT/metrics.jsonl`` and
``OUT/checkpoints/{last,best}.keras``; validation every ``--val-every`` epochs on the
whole validation volumes (stored at ``pad_to``), and the test predictions of the best
checkpoint on each input's grid. ``--resume`` continues from ``OUT/backup/``
(``keras.callbacks.BackupAndRestore``), after checking ``OUT/config.json`` against the
new config in the same way.

This module imports PyTorch, TensorFlow and Keras only inside :func:`main`, so
``import mednets.train`` stays light.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mednets.recipes import FRAMEWORKS, RECIPES, RUN_KEYS, get_recipe

__all__ = [
    "build_parser",
    "resolve_config",
    "check_world_size",
    "find_cases",
    "split_ids",
    "build_model",
    "check_model_options",
    "keras_stride",
    "probabilities_to_label",
    "parse_model_option",
    "load_keras_predictor",
    "keras_segment",
    "KERAS_BUILDERS",
    "main",
]

#: Keras recipe ``model`` -> its builder, ``"module:function"`` (imported when used).
KERAS_BUILDERS = {
    "unet3plus": "mednets.keras.unet3plus:unet3plus",
    "resnet34_unet": "mednets.keras.resnet34_unet:resnet34_unet",
    "unet": "mednets.keras.unet:unet",
}


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mednets.train``.

    Example:
        >>> build_parser().parse_args(["nvnet-brats", "--data", "d", "--out", "o", "--epochs", "2"]).epochs
        2
    """
    p = argparse.ArgumentParser(
        prog="python -m mednets.train",
        description="Train a recipe (a named configuration) on a data folder, on a CPU, one GPU or "
        "several (torchrun for PyTorch recipes, tf.distribute for Keras ones). Recipes: "
        + ", ".join(f"{k} ({v['description']})" for k, v in RECIPES.items()),
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
    p.add_argument(
        "--init-filters", type=int, help="filters of the first level (the paper: 32); PyTorch recipes"
    )
    p.add_argument(
        "--model-option",
        dest="model_options",
        action="append",
        metavar="KEY=VALUE",
        help="Keras recipes: set one keyword argument of the builder (model_options), the value as "
        "JSON or a plain string, e.g. filters=[8,16,32,64] or norm=instance; repeat for more",
    )
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
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoints/last.pt (Keras: OUT/backup/) if it exists",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print config, parameters and memory estimate; train nothing"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def parse_model_option(text: str) -> tuple[str, Any]:
    """One ``--model-option KEY=VALUE``: the value read as JSON, else kept as a string.

    Raises:
        ValueError: Without ``=`` or with an empty key.

    Example:
        >>> parse_model_option("filters=[8, 16, 32, 64]"), parse_model_option("norm=instance")
        (('filters', [8, 16, 32, 64]), ('norm', 'instance'))
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--model-option expects KEY=VALUE (e.g. skip_filters=8), got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw.strip()
    return key, value


def keras_stride(config: dict) -> int:
    """The total stride of a Keras recipe's network: every size of ``crop`` and ``pad_to`` is a multiple.

    Example:
        >>> keras_stride(get_recipe("unet3plus-hippocampus"))
        8
        >>> keras_stride(get_recipe("resnet34-unet-hippocampus"))
        32
    """
    if config["model"] == "resnet34_unet":
        return 2**5
    return 2 ** (len(config["model_options"].get("filters", (64, 128, 256, 512, 1024))) - 1)


def _check_keras_config(config: dict) -> None:
    if config["model"] not in KERAS_BUILDERS:
        raise ValueError(f"unknown Keras model {config['model']!r}; expected one of {sorted(KERAS_BUILDERS)}")
    options = config["model_options"]
    n = len(config["structures"])
    activation = options.get("final_activation", "sigmoid")
    if config["target"] != "labels" or activation != "softmax" or config["out_channels"] != n + 1:
        raise ValueError(
            "a Keras recipe trains a softmax over the background and its structures (Dice + CE): "
            f"expected target 'labels', final_activation 'softmax' and out_channels {n + 1} for "
            f"{config['structures']}, got {config['target']!r}, {activation!r} and {config['out_channels']}"
        )
    if config["loss"] != "dice_ce":
        raise ValueError(f"a Keras recipe's loss must be 'dice_ce', got {config['loss']!r}")
    multi = [k for k in ("deep_supervision", "cgm") if options.get(k)]
    if multi:
        raise ValueError(f"the Keras recipes train a network with one output; {multi} would add outputs")
    if not config["pad_to"]:
        raise ValueError("a Keras recipe predicts whole volumes padded to pad_to; pad_to must be set")
    stride = keras_stride(config)
    for key in ("crop", "pad_to"):
        bad = [s for s in config[key] if s < stride or s % stride]
        if bad:
            raise ValueError(
                f"{key} {config[key]}: every size must be a positive multiple of {stride} "
                f"(the stride of {config['model']}), got {bad}"
            )
    if any(c > p for c, p in zip(config["crop"], config["pad_to"])):
        raise ValueError(f"--crop {config['crop']} must fit in the stored volumes, pad_to {config['pad_to']}")


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe with the command line's overrides.

    Raises:
        ValueError: For an unknown recipe, an option the recipe does not take (e.g.
            ``--no-vae`` for a Keras recipe, ``--model-option`` for a PyTorch one), or a
            crop, batch, epoch count or learning rate out of range.

    Example:
        >>> args = build_parser().parse_args(["nvnet-msd", "--crop", "64", "64", "64", "--amp", "none"])
        >>> c = resolve_config(args); c["crop"], c["amp"]
        ([64, 64, 64], None)
        >>> args = build_parser().parse_args(["unet-hippocampus", "--model-option", "filters=[8,16,32,64]"])
        >>> resolve_config(args)["model_options"]
        {'filters': [8, 16, 32, 64], 'final_activation': 'softmax'}
    """
    overrides = {
        k: getattr(args, k)
        for k in ("epochs", "batch_size", "lr", "init_filters", "vae", "accumulate", "samples_per_epoch")
        + ("val_every", "num_workers", "seed")
    }
    overrides["crop"] = list(args.crop) if args.crop else None
    # Only the options given: a Keras recipe has no init_filters, and refuses --init-filters.
    config = get_recipe(args.recipe, **{k: v for k, v in overrides.items() if v is not None})
    if config["framework"] not in FRAMEWORKS:
        raise ValueError(
            f"recipe {args.recipe!r}: framework must be one of {FRAMEWORKS}, got {config['framework']!r}"
        )
    if args.amp is not None:
        config["amp"] = None if args.amp == "none" else args.amp
    if args.model_options:
        if "model_options" not in config:
            raise ValueError(
                f"--model-option sets the builder options of the Keras recipes; {args.recipe!r} is a "
                f"{config['framework']} recipe (its options: --init-filters, --no-vae, ...)"
            )
        config["model_options"].update(parse_model_option(t) for t in args.model_options)
    for key in ("epochs", "batch_size", "accumulate", "val_every", "init_filters"):
        if key in config and int(config[key]) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {config[key]}")
    if config["lr"] <= 0:
        raise ValueError(f"--lr must be > 0, got {config['lr']}")
    if config["framework"] == "keras":
        _check_keras_config(config)
        return config
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

    The Decathlon hippocampus recipes (``*-hippocampus``) with the 260 cases get the book's
    fixed split (:func:`mednets.data.decathlon.split_cases` with 180/30/50 and its seed),
    the same for every network; otherwise the
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
    if config["recipe"].endswith("-hippocampus") and n == sum(HIPPOCAMPUS_SPLIT_SIZES):
        return split_cases(ids)
    val_frac, test_frac = config["split"]
    n_val = max(1, round(n * val_frac))
    n_test = max(1, round(n * test_frac))
    if n - n_val - n_test < 1:
        n_val, n_test = 1, 1
    return split_cases(ids, sizes=(n - n_val - n_test, n_val, n_test), seed=config["seed"])


def _keras_builder(config: dict):
    import importlib

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    module, name = KERAS_BUILDERS[config["model"]].split(":")
    return getattr(importlib.import_module(module), name)


def check_model_options(config: dict) -> None:
    """Check that a Keras recipe's ``model_options`` are keyword arguments of its builder.

    Imports the builder's module (Keras). ``input_shape`` and ``out_channels`` come from
    the recipe's ``crop``/``pad_to``, ``in_channels`` and ``out_channels``.

    Raises:
        ValueError: Naming the unknown options and the builder's own.

    Example:
        >>> check_model_options(get_recipe("unet-hippocampus", model_options={"width": 8}))
        Traceback (most recent call last):
        ...
        ValueError: model_options ['width'] are not options of mednets.keras.unet.unet; it takes [...]
    """
    import inspect

    fixed = {"input_shape", "out_channels"}
    names = set(inspect.signature(_keras_builder(config)).parameters) - fixed
    bad = sorted(k for k in config["model_options"] if k not in names)
    if bad:
        where = KERAS_BUILDERS[config["model"]].replace(":", ".")
        raise ValueError(f"model_options {bad} are not options of {where}; it takes {sorted(names)}")


def build_model(config: dict, spatial_size: Sequence[int] | None = None):
    """The recipe's network, for a crop of ``spatial_size`` (the config's by default).

    PyTorch recipes give an ``nn.Module``; Keras recipes an uncompiled ``keras.Model``
    ``(B, *spatial_size, in_channels) -> (B, *spatial_size, out_channels)`` from the
    builder of :data:`KERAS_BUILDERS` with the recipe's ``model_options``.

    Example:
        >>> net = build_model(get_recipe("nvnet-hippocampus", init_filters=8), (16, 16, 16))
        >>> type(net).__name__, net.out_channels
        ('NVNet', 2)
        >>> build_model(get_recipe("unet-hippocampus"), (16, 16, 16)).output_shape
        (None, 16, 16, 16, 3)
    """
    if config["framework"] == "keras":
        check_model_options(config)
        size = tuple(spatial_size or config["crop"])
        return _keras_builder(config)(
            input_shape=(*size, config["in_channels"]),
            out_channels=config["out_channels"],
            **config["model_options"],
        )
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
    (:func:`mednets.data.brats.regions_to_label`). Label recipes read ``C`` as
    :func:`mednets.torch.train.label_scores` does: ``C == len(structures)`` sigmoid
    channels (the PyTorch recipes) give 1..C where channel ``c - 1`` is above 0.5 (a
    later channel wins where two overlap); ``C == len(structures) + 1`` softmax channels
    (the Keras recipes: background first) give the argmax.

    Args:
        config: The recipe.
        probs: ``(C, *S)``, a torch tensor or a NumPy array (a Keras output moved to
            channels-first).
        convention: The tumour label convention of region recipes (else unused).

    Raises:
        ValueError: If a label recipe's ``C`` fits neither reading.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.9, 0.1], [0.2, 0.8, 0.1], [0.1, 0.7, 0.1]])
        >>> probabilities_to_label(get_recipe("nvnet-msd"), probs, "msd").tolist()
        [1, 3, 0]
        >>> probabilities_to_label(get_recipe("nvnet-hippocampus"), probs[:2], None).tolist()
        [1, 2, 0]
        >>> soft = [[0.8, 0.1, 0.2], [0.1, 0.7, 0.1], [0.1, 0.2, 0.7]]  # background, anterior, posterior
        >>> probabilities_to_label(get_recipe("unet-hippocampus"), soft, None).tolist()
        [0, 1, 2]
    """
    import numpy as np

    from mednets.data.brats import regions_to_label

    if config["target"] == "regions":
        return regions_to_label(probs, convention)
    probs = probs.detach().cpu().numpy() if hasattr(probs, "detach") else np.asarray(probs)
    k, n = probs.shape[0], len(config["structures"])
    if k == n + 1:
        return probs.argmax(0).astype(np.uint8)
    if k != n:
        raise ValueError(
            f"expected {n} sigmoid or {n + 1} softmax channels for {config['structures']}, got {k}"
        )
    pred = np.zeros(probs.shape[1:], np.uint8)
    for c in range(k):
        pred[probs[c] > 0.5] = c + 1
    return pred


def _print_config(config, data) -> None:
    print(json.dumps(config, indent=2))
    if data is not None:
        cases = find_cases(config, data)
        split = split_ids([_case_id(c) for c in cases], config)
        print(
            f"data: {len(cases)} labelled cases in {data}; split "
            + ", ".join(f"{k} {len(v)}" for k, v in split.items())
        )


def _dry_run_keras(config, data) -> int:
    from mednets.utils import human_bytes

    _print_config(config, data)
    _keras_setup()
    from mednets.keras import count_params
    from mednets.keras.core import model_cost

    net = build_model(config)
    cost = model_cost(net)
    n_params = count_params(net)
    activations = cost["activation_bytes"] * config["batch_size"]
    state = 4 * 4 * n_params  # weights, gradients and Adam's two moments, float32
    crop_txt = "x".join(map(str, config["crop"]))
    print(f"parameters: {n_params:,}")
    print(
        f"memory on one device (estimate): {human_bytes(activations + state)} in float32 = the layer outputs "
        f"kept for the backward pass at {crop_txt}, batch {config['batch_size']} "
        f"({human_bytes(activations)}, mednets.keras.core.model_cost) + weights, gradients and Adam's two "
        f"moments ({human_bytes(state)}); N devices (MirroredStrategy) share the batch; mixed precision "
        "about halves the activations; TensorFlow's own buffers add more"
    )
    print("dry run: nothing trained")
    return 0


def _dry_run(config, data, world) -> int:
    if config["framework"] == "keras":
        return _dry_run_keras(config, data)
    import torch

    from mednets.torch.memory import estimate_step_memory
    from mednets.utils import human_bytes

    _print_config(config, data)
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
    if args.resume and (out / "checkpoints" / "last.pt").is_file():
        _check_resume(out, trained)  # before config.json is rewritten: a refused resume changes nothing
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


# -- Keras recipes --------------------------------------------------------------------------


def _keras_setup() -> None:
    """Import TensorFlow and Keras (quietly, with the TensorFlow backend unless one is set)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import mednets.keras  # noqa: F401  (sets the environment defaults, imports TensorFlow quietly)


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _check_resume(out: Path, trained: dict) -> None:
    """Refuse to resume the run in ``out`` with another config, naming the differing keys.

    The message is that of :func:`mednets.torch.train.load_checkpoint` (whose
    ``config_diff`` lives in a module that imports PyTorch); the saved config is
    ``OUT/config.json``'s, without :data:`~mednets.recipes.RUN_KEYS`.
    """
    record = out / "config.json"
    if not record.is_file():
        return
    saved = {k: v for k, v in json.loads(record.read_text())["config"].items() if k not in RUN_KEYS}
    now = json.loads(json.dumps(trained, default=str))
    diff = sorted(
        k
        for k in set(saved) | set(now)
        if k not in saved or k not in now or _canonical(saved[k]) != _canonical(now[k])
    )
    if diff:
        details = ", ".join(
            f"{k} (checkpoint {saved.get(k, '<missing>')}, now {now.get(k, '<missing>')})" for k in diff
        )
        raise ValueError(
            f"cannot resume from {out}: it was written by another config; differing keys: {details}"
        )


def _metrics_rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tf_task() -> str | None:
    """``"worker1"``-style name of this process under ``TF_CONFIG``, None without it."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    task = json.loads(raw).get("task", {})
    return f"{task.get('type', 'worker')}{task.get('index', 0)}"


def _mean_scores(scored, prefix: str = "") -> dict[str, float]:
    """Means over ``[(scores, shape, spacing)]``; an infinite HD95 counts as the diagonal in mm."""
    import numpy as np

    sums: dict[str, float] = {}
    for scores, shape, spacing in scored:
        diagonal = float(np.linalg.norm(np.asarray(shape) * np.asarray(spacing or 1.0)))
        for k, v in scores.items():
            sums[k] = sums.get(k, 0.0) + (diagonal if k.endswith("hd95") and not math.isfinite(v) else v)
    means = {prefix + k: v / len(scored) for k, v in sorted(sums.items())}
    dices = [v for k, v in means.items() if k.endswith("_dice")]
    if dices:
        means[prefix + "dice"] = float(np.mean(dices))
    return means


def keras_segment(net, config: dict, image, convention: str | None = None):
    """Segment a volume whole with a Keras recipe's network, as training validated it.

    The image is centre-padded (or cropped) to ``pad_to`` as the store did, z-scored in
    the brain, predicted in one pass, turned into labels by
    :func:`probabilities_to_label`, and put back on the image's shape (a cropped margin
    is background).

    Args:
        net: The network at ``pad_to`` (:func:`load_keras_predictor`).
        config: Its recipe.
        image: ``(C, X, Y, Z)`` in RAS+, any size.
        convention: Label convention of region recipes. Defaults to None.

    Returns:
        uint8 label map ``(X, Y, Z)``.

    Example:
        >>> import numpy as np
        >>> config = get_recipe("unet-hippocampus", pad_to=[16, 16, 16])
        >>> config["model_options"]["filters"] = [2, 4]
        >>> image = np.random.default_rng(0).random((1, 13, 17, 9), dtype=np.float32)
        >>> keras_segment(build_model(config, (16, 16, 16)), config, image).shape
        (13, 17, 9)
    """
    import numpy as np

    from mednets.data.crop import crop_or_pad
    from mednets.data.transforms import brain_mask, zscore_normalise

    padded = crop_or_pad(image, config["pad_to"])
    volume = zscore_normalise(padded, brain_mask(padded))
    probs = net.predict(np.moveaxis(volume, 0, -1)[None], verbose=0)[0]  # (*pad_to, K)
    label = probabilities_to_label(config, np.moveaxis(probs, -1, 0), convention)
    return crop_or_pad(label, image.shape[1:])


def load_keras_predictor(config: dict, checkpoint: str | os.PathLike):
    """A Keras recipe's network at ``pad_to`` with the weights of a ``.keras`` checkpoint.

    The network is rebuilt from the config (a fully convolutional network takes the
    weights of its training crop at any size), so a checkpoint of a run trained on
    smaller crops predicts whole volumes.

    Raises:
        ValueError: If the checkpoint's weights do not fit the config's network.

    Example:
        >>> import tempfile
        >>> config = get_recipe("unet-hippocampus", crop=[8, 8, 8], pad_to=[16, 16, 16])
        >>> config["model_options"]["filters"] = [2, 4]
        >>> path = Path(tempfile.mkdtemp()) / "last.keras"
        >>> build_model(config).save(path)  # trained at 8^3
        >>> load_keras_predictor(config, path).input_shape
        (None, 16, 16, 16, 1)
    """
    _keras_setup()
    net = build_model(config, config["pad_to"])
    try:
        net.load_weights(os.fspath(checkpoint))
    except (ValueError, KeyError) as err:
        raise ValueError(
            f"{checkpoint}: its weights do not fit the {config['model']} of the config ({err})"
        ) from err
    return net


def _train_keras(config, args) -> int:
    import shutil
    import warnings

    import numpy as np

    _keras_setup()
    import keras
    import tensorflow as tf

    from mednets.data.h5store import H5Volumes, RandomPatches
    from mednets.data.nifti import save_like
    from mednets.data.transforms import brain_mask, zscore_normalise
    from mednets.keras.train import dice_ce_loss, fit, is_chief
    from mednets.metrics import structure_scores
    from mednets.utils import atomic_write

    cases = find_cases(config, args.data)
    split = split_ids([_case_id(c) for c in cases], config)
    out = args.out
    chief = is_chief()
    trained = {k: v for k, v in config.items() if k not in RUN_KEYS}
    backup, last = out / "backup", out / "checkpoints" / "last.keras"
    epochs = config["epochs"]
    rows = _metrics_rows(out)
    if args.resume and (backup.is_dir() or last.is_file()):
        _check_resume(out, trained)
    if not args.resume:
        shutil.rmtree(backup, ignore_errors=True)  # a fresh run, not the continuation of one
    finished = args.resume and not backup.is_dir() and last.is_file() and rows and rows[-1]["epoch"] >= epochs
    store_path = args.store or out / "data.h5"
    task = _tf_task()
    if not chief:  # each worker of several machines reads its own copy of the store
        store_path = store_path.with_suffix(f".{task}.h5")
    gpus = tf.config.list_logical_devices("GPU")
    out.mkdir(parents=True, exist_ok=True)
    if chief:
        record = {
            "config": config,
            "split": split,
            "command": " ".join(["python -m mednets.train", *sys.argv[1:]]),
            "framework": "keras",
            "world_size": len(sum(json.loads(os.environ["TF_CONFIG"])["cluster"].values(), []))
            if task
            else 1,
            "device": f"{len(gpus)} GPU" if gpus else "cpu",
        }
        with atomic_write(out / "config.json", suffix=".json") as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
    _build_store(config, args.data, cases, set(split["train"]) | set(split["val"]), store_path, args.progress)

    keras.utils.set_random_seed(config["seed"])
    store = H5Volumes(store_path)
    samples = config["samples_per_epoch"] or len(split["train"])
    steps = math.ceil(samples / config["batch_size"])  # per epoch

    # The patches of epoch e are those of the PyTorch sampler's epoch e: the same RandomPatches
    # as mednets.keras.data.h5_patch_dataset, whose epoch the callback below sets before Keras
    # opens the epoch's iterator. (h5_patch_dataset fixes its epoch when built; a chain of one
    # per epoch would keep every epoch's sampler, and its cache, until the end of the run.)
    sampler = RandomPatches(
        store,
        config["crop"],
        samples,
        config["foreground_fraction"],
        normalise=True,
        augment=config["augment"],
        target="classes",
        ids=split["train"],
        seed=config["seed"],
    )
    channels = len(store.modalities)

    def load(index):
        image, label = sampler.get(int(index))  # at sampler.epoch
        return np.moveaxis(image, 0, -1), label.astype(np.int32)  # (X, Y, Z, C), (X, Y, Z)

    def tf_load(index):
        image, label = tf.numpy_function(load, [index], (tf.float32, tf.int32))
        image.set_shape((*config["crop"], channels))
        label.set_shape(tuple(config["crop"]))
        return image, label

    patches = tf.data.Dataset.range(samples).map(tf_load, num_parallel_calls=1, deterministic=True)
    patches = patches.batch(config["batch_size"]).prefetch(2)

    class Epoch(keras.callbacks.Callback):
        """Draw the epoch's patches; log the epoch's learning rate (at its start, as PyTorch's fit)."""

        def on_epoch_begin(self, epoch, logs=None):
            sampler.set_epoch(epoch)
            self.lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["lr"] = self.lr

    val_images, val_cases = [], []
    for sid in split["val"]:
        image, label = store.read(sid)
        meta = store.meta(sid)
        image = zscore_normalise(image, brain_mask(image), meta["mean"], meta["std"])
        val_images.append(np.moveaxis(image, 0, -1))  # (X, Y, Z, C)
        val_cases.append((label.astype(np.int64), tuple(meta["spacing"])))
    shadow = None if list(config["crop"]) == list(config["pad_to"]) else build_model(config, config["pad_to"])
    names = config["structures"]

    class Validation(keras.callbacks.Callback):
        """The scores of the whole validation volumes, added to the epoch's logs (``val_dice``,
        ...) before ``metrics.jsonl`` and ``best.keras`` read them."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is None or ((epoch + 1) % config["val_every"] and epoch + 1 != epochs):
                return
            t0 = time.perf_counter()
            net = self.model
            if shadow is not None:  # the same weights, at the stored volumes' size
                shadow.set_weights(self.model.get_weights())
                net = shadow
            scored = []
            for image, (label, spacing) in zip(val_images, val_cases):
                probs = net.predict(image[None], verbose=0)[0]
                pred = probabilities_to_label(config, np.moveaxis(probs, -1, 0), None)
                scored.append((structure_scores(pred, label, names, spacing), label.shape, spacing))
            logs.update(_mean_scores(scored, prefix="val_"))
            logs["eval_s"] = time.perf_counter() - t0

    def build():
        lr = config["lr"]
        if config["schedule"] == "poly":
            lr = keras.optimizers.schedules.PolynomialDecay(
                lr, epochs * steps, end_learning_rate=0.0, power=0.9
            )
        elif config["schedule"] is not None:
            raise ValueError(f"schedule must be 'poly' or None, got {config['schedule']!r}")
        optimizer = keras.optimizers.Adam(
            learning_rate=lr,
            weight_decay=config["weight_decay"] or None,
            gradient_accumulation_steps=config["accumulate"] if config["accumulate"] > 1 else None,
        )
        model = build_model(config)
        model.compile(optimizer=optimizer, loss=dice_ce_loss)
        return model

    if finished:
        print(f"{out}: the {epochs} epochs are done; predicting the test cases")
    else:
        with warnings.catch_warnings():  # best.keras is only judged on validation epochs
            warnings.filterwarnings("ignore", message="Can save best model only with")
            fit(
                build,
                patches,
                epochs=epochs,
                mixed_precision={"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}.get(config["amp"]),
                out_dir=out,
                monitor=config["monitor"],
                mode="max",
                progress=args.progress,
                callbacks=[Epoch(), Validation()],
                shuffle=False,  # the sampler draws each epoch's patches at random
            )

    if chief:
        best = out / "checkpoints" / "best.keras"
        net = load_keras_predictor(config, best if best.is_file() else last)
        by_id = {_case_id(c): c for c in cases}
        scored, per_case = [], {}
        for sid in split["test"]:
            image, label, meta = _load_full(config, by_id[sid])
            pred = keras_segment(net, config, image, meta["convention"])
            save_like(pred, meta["reference"], out / "predictions" / f"{sid}.nii.gz", dtype=np.uint8)
            if label is not None:
                per_case[sid] = structure_scores(pred, label.astype(np.int64), names, meta["spacing"])
                scored.append((per_case[sid], label.shape, meta["spacing"]))
        summary = {
            "cases": per_case,
            "mean": {
                k: float(np.mean([s[k] for s in per_case.values()]))
                for k in next(iter(per_case.values()), {})
            },
            "epochs": len(_metrics_rows(out)),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with atomic_write(out / "test_scores.json", suffix=".json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"done: {out} (metrics.jsonl, checkpoints/, predictions/, test_scores.json)")
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
        keras_recipe = config["framework"] == "keras"
        world = 1 if keras_recipe else check_world_size(config["batch_size"])
        if not args.dry_run:
            if args.data is None or args.out is None:
                raise ValueError("--data and --out are required (except with --dry-run)")
            find_cases(config, args.data)  # fail early: a folder with no case
        elif args.data is not None:
            find_cases(config, args.data)
        if keras_recipe:
            check_model_options(config)  # imports Keras
    except ValueError as err:
        parser.error(str(err))
    if args.dry_run:
        return _dry_run(config, args.data, world)
    if keras_recipe:
        return _train_keras(config, args)
    return _train(config, args, world)


if __name__ == "__main__":
    sys.exit(main())
