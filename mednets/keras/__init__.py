"""Keras 3 (TensorFlow backend) models of the book. Arrays are channels-last.

Importing this package imports Keras. It sets two environment defaults first, without
overriding yours: ``KERAS_BACKEND=tensorflow`` and ``TF_CPP_MIN_LOG_LEVEL=2`` (keeps
TensorFlow's C++ start-up log lines out of notebooks). Sub-modules (``core``,
``blocks``, ``classifiers3d``, ``unet3plus``, ``resnet34_unet``, ``losses``) are
imported on demand.
"""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence what C++ libraries write to file descriptor 2 (TensorFlow's start-up
    lines about missing CUDA drivers ignore ``TF_CPP_MIN_LOG_LEVEL``). Python errors
    raised inside still propagate, and are printed after the descriptor is restored."""
    fd = 2  # the C-level stderr, whatever Python's sys.stderr is (e.g. in Jupyter)
    try:
        saved = os.dup(fd)
    except OSError:  # pragma: no cover - no usable descriptor: do nothing
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


with _quiet_native_stderr():
    import keras
    import tensorflow as tf

    tf.config.list_physical_devices()  # CUDA probing happens here, quietly

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
