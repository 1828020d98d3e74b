"""Named training configurations: the paper's NVNet on BraTS and on the Decathlon, and Chapter 6's.

A recipe is a plain dict of settings that ``python -m mednets.train RECIPE`` resolves
(command-line options override single keys) and stores next to its outputs
(``config.json``) and in every checkpoint, so that a resume can check that it continues
the same run and ``python -m mednets.predict`` can rebuild the network.

Keys:

- ``framework`` (``"torch"``), ``model`` (``"nvnet"``) and its arguments
  (``in_channels``, ``out_channels``, ``init_filters``, ``vae``, ``dropout``);
- ``dataset``: ``"brats"`` (a BraTS folder, 2018-2021 or 2023 naming) or ``"decathlon"``
  (a Decathlon task folder: ``dataset.json``, ``imagesTr/``, ``labelsTr/``);
  ``label_convention`` (None for BraTS: from the file naming; ``"msd"`` for Task01;
  ``"plain"`` for labels that are class indices); ``structures`` (names of labels
  1, 2, ... for plain labels); ``pad_to`` (pad every volume to this size when storing);
- ``target``: ``"regions"`` (WT, TC, ET sigmoid masks, the paper) or ``"labels"``
  (one sigmoid mask per structure);
- training: ``crop`` (the patch, also the sliding window), ``batch_size`` (the
  global batch over all processes), ``epochs``, ``lr``, ``weight_decay``, ``schedule``
  (``"poly"``), ``w_l2``/``w_kl`` (the VAE loss weights), ``amp`` (None, ``"bf16"``,
  ``"fp16"``), ``accumulate``, ``samples_per_epoch`` (None: one patch per training
  case), ``foreground_fraction``, ``augment``, ``num_workers``, ``seed``;
- evaluation: ``split`` (validation and test fractions; the hippocampus uses the book's
  fixed 180/30/50 split when it finds the 260 cases), ``val_every``, ``overlap``,
  ``monitor`` (``"val_dice"``).

This module imports no framework.

Example:
    >>> sorted(RECIPES)
    ['nvnet-brats', 'nvnet-hippocampus', 'nvnet-msd']
    >>> get_recipe("nvnet-brats", epochs=2)["epochs"], get_recipe("nvnet-brats")["crop"]
    (2, [160, 192, 128])
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["RECIPES", "get_recipe", "RUN_KEYS"]

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
        "dataset": "decathlon",
        "modalities": None,
        "label_convention": "plain",
        "structures": ["anterior", "posterior"],
        "in_channels": 1,
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
        ValueError: unknown recipe 'nvnet'; expected one of ['nvnet-brats', 'nvnet-hippocampus', 'nvnet-msd']
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
