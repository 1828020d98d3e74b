"""Keras 3 (TensorFlow backend) models of the book. Arrays are channels-last.

Importing this package imports Keras. It sets two environment defaults first, without
overriding yours: ``KERAS_BACKEND=tensorflow`` and ``TF_CPP_MIN_LOG_LEVEL=2`` (keeps
TensorFlow's C++ start-up log lines out of notebooks). Sub-modules (``core``,
``blocks``, ``classifiers3d``, ``unet``, ``unet3plus``, ``resnet34_unet``, ``losses``,
``data``, ``train``) are imported on demand; :func:`count_params` is
:func:`mednets.keras.core.count_params`.
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
    import keras  # noqa: F401  (imported here, quietly, before anything else)
    import tensorflow as tf

    tf.config.list_physical_devices()  # CUDA probing happens here, quietly

from mednets.keras.core import count_params  # noqa: E402  (the one function, re-exported)

__all__ = ["count_params"]
