"""Keras 3 (TensorFlow backend) models of the book. Arrays are channels-last.

Importing this package imports Keras. It sets two environment defaults first, without
overriding yours: ``KERAS_BACKEND=tensorflow`` and ``TF_CPP_MIN_LOG_LEVEL=2`` (keeps
TensorFlow's C++ start-up log lines out of notebooks). Sub-modules (``core``,
``blocks``, ``classifiers3d``, ``unet3plus``, ``resnet34_unet``, ``losses``) are
imported on demand.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["count_params"]


def count_params(model, trainable_only: bool = False) -> int:
    """Number of parameters of a Keras model or layer.

    Keras counts the moving mean and variance of batch normalisation as
    (non-trainable) parameters, so ``count_params(m)`` equals the "Total params" of
    ``m.summary()`` and ``count_params(m, trainable_only=True)`` its "Trainable params".

    Args:
        model: A built ``keras.Model`` or ``keras.layers.Layer``.
        trainable_only: Count only trainable weights. Defaults to False.

    Returns:
        The parameter count as a Python int.
    """
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(f"expected a keras Model or Layer, got {type(model).__name__}")
    weights = model.trainable_weights if trainable_only else model.weights
    return int(sum(int(np.prod(w.shape)) for w in weights))
