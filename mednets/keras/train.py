"""Training helpers for the Keras networks: timed fits and a distributed ``fit``.

:func:`fit_timed` times the first (tracing) epoch apart from the steady ones, as the
chapters' comparison tables need.
"""

from __future__ import annotations

import time

import keras

__all__ = ["fit_timed"]


def fit_timed(
    model: keras.Model,
    x,
    y,
    epochs: int,
    batch_size: int = 16,
    validation_data=None,
    progress: bool = True,
    **fit_kwargs,
) -> dict:
    """``model.fit`` that times the first epoch (graph tracing) apart from the others.

    The first epoch of a compiled Keras model includes tracing the training graph,
    which for a deep network on a CPU can take longer than many epochs. The chapter's
    comparison tables report the steady epoch time.

    Args:
        model: a compiled model.
        x, y: training arrays.
        epochs: total epochs, >= 2 (one to trace, at least one to time).
        batch_size: Defaults to 16.
        validation_data: passed to ``fit``. Defaults to None.
        progress: show a tqdm bar per ``fit`` call. Defaults to True.
        **fit_kwargs: passed to ``fit`` (``shuffle``, ...).

    Returns:
        ``{"history": {metric: [per-epoch values]}, "first_epoch_s": float,
        "epoch_s": float}`` with ``epoch_s`` the mean time of epochs 2..``epochs``.
    """
    if epochs < 2:
        raise ValueError(f"epochs must be >= 2 (one to trace, one to time), got {epochs}")
    callbacks = list(fit_kwargs.pop("callbacks", []))
    if model.optimizer is not None and not model.optimizer.built:
        # Create the optimizer's slots and the metrics' variables eagerly: created inside
        # the first traced step, they make TensorFlow trace it twice (twice the time).
        model.optimizer.build(model.trainable_variables)
        model.compute_metrics(x[:1], y[:1], model(x[:1], training=False))
    if progress:
        from tqdm.keras import TqdmCallback

    def run(initial_epoch, last_epoch):
        cbs = callbacks + ([TqdmCallback(verbose=0)] if progress else [])
        start = time.perf_counter()
        h = model.fit(
            x,
            y,
            batch_size=batch_size,
            epochs=last_epoch,
            initial_epoch=initial_epoch,
            validation_data=validation_data,
            verbose=0,
            callbacks=cbs,
            **fit_kwargs,
        )
        return h.history, time.perf_counter() - start

    first, t_first = run(0, 1)
    rest, t_rest = run(1, epochs)
    history = {k: list(first[k]) + list(rest.get(k, [])) for k in first}
    return {"history": history, "first_epoch_s": t_first, "epoch_s": t_rest / (epochs - 1)}
