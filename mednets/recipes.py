"""Named training configurations: the paper's NVNet on BraTS and on the Decathlon, and Chapter 6's.

A recipe is a plain dict of settings that ``python -m mednets.train RECIPE`` resolves
(command-line options override single keys) and stores next to its outputs
(``config.json``) and, for PyTorch, in every checkpoint, so that a resume can check that
it continues the same run and ``python -m mednets.predict`` can rebuild the network.

Keys:

- ``framework``: ``"torch"`` (trained with :func:`mednets.torch.train.fit`) or
  ``"keras"`` (trained with :func:`mednets.keras.train.fit`, ``tf.distribute``);
- PyTorch: ``model`` (``"nvnet"``) and its arguments (``in_channels``,
  ``out_channels``, ``init_filters``, ``vae``, ``dropout``);
- Keras: ``model`` (``"unet3plus"``, ``"resnet34_unet"`` or ``"unet"``: the builders
  :func:`mednets.keras.unet3plus.unet3plus`,
  :func:`mednets.keras.resnet34_unet.resnet34_unet` and :func:`mednets.keras.unet.unet`),
  ``in_channels``, ``out_channels`` and ``model_options`` (more keyword arguments of
  the builder, under their own names, e.g. ``filters``, ``skip_filters``,
  ``init_filters``, ``decoder_filters``, ``final_activation``); ``loss``
  (``"dice_ce"``: :func:`mednets.keras.train.dice_ce_loss`);
- ``dataset``: ``"brats"`` (a BraTS folder, 2018-2021 or 2023 naming) or ``"decathlon"``
  (a Decathlon task folder: ``dataset.json``, ``imagesTr/``, ``labelsTr/``);
  ``label_convention`` (None for BraTS: from the file naming; ``"msd"`` for Task01;
  ``"plain"`` for labels that are class indices); ``structures`` (names of labels
  1, 2, ... for plain labels); ``pad_to`` (pad every volume to this size when storing);
- ``target``: ``"regions"`` (WT, TC, ET sigmoid masks, the paper) or ``"labels"``
  (the structures of a plain label map);
- training: ``crop`` (the patch, also the sliding window), ``batch_size`` (the
  global batch over all processes), ``epochs``, ``lr``, ``weight_decay``, ``schedule``
  (``"poly"``), ``w_l2``/``w_kl`` (the VAE loss weights), ``amp`` (None, ``"bf16"``,
  ``"fp16"``), ``accumulate``, ``samples_per_epoch`` (None: one patch per training
  case), ``foreground_fraction``, ``augment``, ``num_workers``, ``seed``;
- evaluation: ``split`` (validation and test fractions; the hippocampus recipes use the
  book's fixed 180/30/50 split when they find the 260 cases), ``val_every``, ``overlap``,
  ``monitor`` (``"val_dice"``).

The three Keras recipes are Chapter 6's networks on the Decathlon hippocampus, with the
data keys of ``nvnet-hippocampus``. Their output is a **softmax over background and the
structures** (``out_channels = 3``, ``final_activation="softmax"``), trained with Dice
(over the structures) plus cross-entropy; the prediction is the argmax. The PyTorch
hippocampus recipe keeps one sigmoid per structure; :func:`mednets.train.probabilities_to_label`
reads both (K = structures: sigmoids; K = structures + 1: softmax). A Keras run predicts
each whole volume at ``pad_to`` (no sliding window: ``crop == pad_to`` in these
recipes; ResNet34-UNet halves five times, so it takes 64x64x64). Keras's ``weight_decay``
is decoupled from the gradient (``keras.optimizers.Adam``), PyTorch's is an L2 term.
PyTorch-only keys (``init_filters``, ``vae``, ``dropout``, ``w_l2``, ``w_kl``,
``num_workers``, ``overlap``) are not in the Keras recipes, so their command-line
options are refused there; ``--model-option KEY=VALUE`` changes ``model_options``.

This module imports no framework.

Example:
    >>> sorted(RECIPES)  # doctest: +NORMALIZE_WHITESPACE
    ['nvnet-brats', 'nvnet-hippocampus', 'nvnet-msd', 'resnet34-unet-hippocampus',
     'unet-hippocampus', 'unet3plus-hippocampus']
    >>> get_recipe("nvnet-brats", epochs=2)["epochs"], get_recipe("nvnet-brats")["crop"]
    (2, [160, 192, 128])
    >>> get_recipe("unet3plus-hippocampus")["model_options"]
    {'filters': [16, 32, 64, 128], 'skip_filters': 16, 'final_activation': 'softmax'}
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["RECIPES", "get_recipe", "RUN_KEYS", "FRAMEWORKS"]

#: The values of a recipe's ``framework`` key.
FRAMEWORKS = ("torch", "keras")

_PAPER = {
    # Myronenko 2018 (https://arxiv.org/abs/1810.11654), Sections 2.1-2.4.
    "framework": "torch",
    "model": "nvnet",
    "in_channels": 4,
    "out_channels": 3,
    "init_filters": 32,
    "vae": True,
    "dropout": 0.2,
    "target": "regions",
    "crop": [160, 192, 128],
    "batch_size": 1,
    "epochs": 300,
    "lr": 1e-4,
    "weight_decay": 1e-5,
    "schedule": "poly",
    "w_l2": 0.1,
    "w_kl": 0.1,
    "amp": None,
    "accumulate": 1,
    "samples_per_epoch": None,
    "foreground_fraction": 0.0,  # the paper's crops are random
    "augment": True,
    "num_workers": 2,
    "seed": 0,
    "split": [0.1, 0.1],
    "val_every": 5,
    "overlap": 0.5,
    "monitor": "val_dice",
    "pad_to": None,
    "structures": ["WT", "TC", "ET"],
}

#: The data keys of every hippocampus recipe (Chapter 6's task).
_HIPPOCAMPUS_DATA = {
    "dataset": "decathlon",
    "modalities": None,
    "label_convention": "plain",
    "structures": ["anterior", "posterior"],
    "in_channels": 1,
}

#: Recipe name -> config. Use :func:`get_recipe` for a copy with overrides.
RECIPES: dict[str, dict[str, Any]] = {
    "nvnet-brats": {
        **_PAPER,
        "description": "NVNet as in Myronenko 2018 on a BraTS training folder (2018-2021 or 2023 naming)",
        "dataset": "brats",
        "modalities": ["flair", "t1", "t1ce", "t2"],
        "label_convention": None,
    },
    "nvnet-msd": {
        **_PAPER,
        "description": "NVNet as in Myronenko 2018 on the Decathlon's Task01_BrainTumour (4D, msd labels)",
        "dataset": "decathlon",
        "modalities": None,  # from dataset.json: FLAIR, T1w, t1gd, T2w
        "label_convention": "msd",
    },
    "nvnet-hippocampus": {
        **_PAPER,
        "description": "NVNet (VAE on) on the Decathlon's Task04_Hippocampus, Chapter 6's task",
        **_HIPPOCAMPUS_DATA,
        "out_channels": 2,
        "init_filters": 16,
        "target": "labels",
        "pad_to": [48, 64, 48],
        "crop": [48, 64, 48],
        "batch_size": 8,
        "epochs": 100,
        "lr": 1e-3,
        "foreground_fraction": 0.5,
        "val_every": 5,
    },
}

_KERAS_HIPPOCAMPUS = {
    # Chapter 6's Keras networks on the Decathlon's Task04_Hippocampus: the data keys of
    # nvnet-hippocampus, a softmax over background + anterior + posterior, Dice + CE.
    "framework": "keras",
    **_HIPPOCAMPUS_DATA,
    "out_channels": 3,  # background + the two structures (softmax)
    "loss": "dice_ce",
    "target": "labels",
    "pad_to": [48, 64, 48],
    "crop": [48, 64, 48],
    "batch_size": 8,
    "epochs": 100,
    "lr": 1e-3,
    "weight_decay": 1e-5,
    "schedule": "poly",
    "amp": None,
    "accumulate": 1,
    "samples_per_epoch": None,
    "foreground_fraction": 0.5,
    "augment": True,
    "seed": 0,
    "split": [0.1, 0.1],
    "val_every": 5,
    "monitor": "val_dice",
}

RECIPES.update(
    {
        "unet3plus-hippocampus": {
            **_KERAS_HIPPOCAMPUS,
            "description": "UNet 3+ in 3D (Keras) on the Decathlon's Task04_Hippocampus, Chapter 6's network",
            "model": "unet3plus",
            "model_options": {
                "filters": [16, 32, 64, 128],
                "skip_filters": 16,
                "final_activation": "softmax",
            },
        },
        "resnet34-unet-hippocampus": {
            **_KERAS_HIPPOCAMPUS,
            "description": "ResNet34-UNet in 3D (Keras) on the Decathlon's Task04_Hippocampus at 64^3",
            "model": "resnet34_unet",
            "model_options": {
                "init_filters": 16,
                "decoder_filters": [128, 64, 32, 16, 16],
                "final_activation": "softmax",
            },
            "pad_to": [64, 64, 64],  # five halvings: sizes divisible by 32
            "crop": [64, 64, 64],
        },
        "unet-hippocampus": {
            **_KERAS_HIPPOCAMPUS,
            "description": (
                "the plain U-Net in 3D (Keras) on the Decathlon's Task04_Hippocampus, UNet 3+'s baseline"
            ),
            "model": "unet",
            "model_options": {"filters": [16, 32, 64, 128], "final_activation": "softmax"},
        },
    }
)

#: Command-line settings that describe where and how a run happens, not what it trains;
#: they may change between a run and its resume.
RUN_KEYS = ("data", "out", "resume", "dry_run", "progress", "num_workers", "device", "val_every")


def get_recipe(name: str, **overrides: Any) -> dict[str, Any]:
    """A copy of recipe ``name`` with some keys replaced.

    Args:
        name: One of :data:`RECIPES`.
        **overrides: Keys to replace; None values are ignored (an option not given).

    Returns:
        The config dict, with ``"recipe": name``.

    Raises:
        ValueError: For an unknown recipe (the message lists them) or an override of a
            key the recipe does not have.

    Example:
        >>> get_recipe("nvnet-msd")["label_convention"]
        'msd'
        >>> get_recipe("nvnet")
        Traceback (most recent call last):
        ...
        ValueError: unknown recipe 'nvnet'; expected one of ['nvnet-brats', 'nvnet-hippocampus', ...]
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    config = copy.deepcopy(RECIPES[name])
    unknown = sorted(k for k in overrides if k not in config)
    if unknown:
        raise ValueError(f"recipe {name!r} has no keys {unknown}; it has {sorted(config)}")
    config.update({k: copy.deepcopy(v) for k, v in overrides.items() if v is not None})
    config["recipe"] = name
    return config
