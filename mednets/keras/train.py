"""Training helpers for the Keras networks: a distributed ``fit`` and a timed fit.

:func:`fit` is the Keras counterpart of :func:`mednets.torch.train.fit`: the same call
runs on a CPU, on one GPU, on several GPUs of one machine
(``tf.distribute.MirroredStrategy``) and on several machines
(``tf.distribute.MultiWorkerMirroredStrategy``, configured by the ``TF_CONFIG``
environment variable), with an optional mixed-precision policy, ``metrics.jsonl``, the
last and the best model (``keras.callbacks.ModelCheckpoint``) and a resume after an
interruption (``keras.callbacks.BackupAndRestore``). Nothing here re-implements what
``tf.distribute`` and Keras do; it chooses and wires them.

:func:`fit_timed` times the first (tracing) epoch apart from the steady ones, as the
chapters' comparison tables need. :func:`dice_ce_loss` is the loss of the Keras recipes
of ``python -m mednets.train``; it is registered with Keras, so that their checkpoints
load with ``keras.models.load_model`` once this module is imported.

Example:
    >>> import numpy as np
    >>> def build():
    ...     model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    ...     model.compile(optimizer="sgd", loss="mse")
    ...     return model
    >>> model, history = fit(build, np.ones((8, 3)), np.zeros((8, 1)), epochs=2, batch_size=4, progress=False)
    >>> len(history["loss"])
    2
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras

__all__ = ["fit", "fit_timed", "choose_strategy", "is_chief", "dice_ce_loss"]

_POLICIES = ("mixed_float16", "mixed_bfloat16")


def is_chief(tf_config: str | None = None) -> bool:
    """True for the worker that writes files: the only one, the ``chief``, or worker 0 without a chief.

    Args:
        tf_config: The ``TF_CONFIG`` JSON. Defaults to None (the environment's).

    Example:
        >>> is_chief('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}')
        False
    """
    raw = os.environ.get("TF_CONFIG") if tf_config is None else tf_config
    if not raw:
        return True
    config = json.loads(raw)
    task = config.get("task", {})
    kind, index = task.get("type"), int(task.get("index", 0))
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in config.get("cluster", {})


def choose_strategy(strategy=None):
    """The ``tf.distribute`` strategy for this process.

    ``TF_CONFIG`` set: ``MultiWorkerMirroredStrategy`` (one or more GPUs per machine,
    several machines); several visible GPUs: ``MirroredStrategy``; otherwise TensorFlow's
    default strategy (one device).

    Args:
        strategy: A ``tf.distribute.Strategy`` to use as it is, or None to choose.
            Defaults to None.

    Returns:
        A ``tf.distribute.Strategy``.

    Example:
        >>> type(choose_strategy()).__name__ in ("_DefaultDistributionStrategy", "MirroredStrategy")
        True
    """
    import tensorflow as tf

    if strategy is not None:
        return strategy
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@keras.saving.register_keras_serializable(package="mednets")
def dice_ce_loss(y_true, y_pred, smooth: float = 1e-5):
    """Soft Dice over the foreground classes plus cross-entropy, for a softmax output.

    The loss of nnU-Net (Isensee et al., 2021, https://doi.org/10.1038/s41592-020-01008-z):
    ``1 - mean_c Dice_c`` over the classes ``c = 1 .. K-1`` (Dice computed over the
    batch and the voxels together, so a patch without a structure does not count as a
    failure), plus the voxel-wise cross-entropy of all ``K`` classes.

    Args:
        y_true: Class indices ``(B, *spatial)`` or ``(B, *spatial, 1)``, values 0..K-1.
        y_pred: Softmax probabilities ``(B, *spatial, K)``, K >= 2 (any float dtype;
            computed in float32).
        smooth: Added to the Dice numerator and denominator. Defaults to 1e-5.

    Returns:
        Tensor ``(B,)``: each sample's cross-entropy plus the batch's Dice loss.

    Raises:
        ValueError: If ``y_pred`` has fewer than 2 channels or ``y_true`` another
            spatial shape.

    Example:
        >>> import numpy as np
        >>> y = np.zeros((2, 4, 4, 4), "int32"); y[:, 1:3] = 1
        >>> perfect = np.eye(2, dtype="float32")[y] * 0.998 + 0.001
        >>> [round(float(v), 3) for v in dice_ce_loss(y, perfect)]
        [0.003, 0.003]
        >>> bool(dice_ce_loss(y, 1 - perfect)[0] > 1)
        True
    """
    from keras import ops

    k = y_pred.shape[-1]
    if k is None or k < 2:
        raise ValueError(f"dice_ce_loss: expected a softmax over K >= 2 channels, got y_pred {y_pred.shape}")
    if len(y_true.shape) == len(y_pred.shape):  # (B, *spatial, 1)
        y_true = ops.squeeze(y_true, axis=-1)
    if tuple(y_true.shape[1:]) != tuple(y_pred.shape[1:-1]):
        raise ValueError(
            f"dice_ce_loss: y_true {tuple(y_true.shape)} must be y_pred {tuple(y_pred.shape)} without its "
            "channel axis"
        )
    y_pred = ops.cast(y_pred, "float32")
    onehot = ops.one_hot(ops.cast(y_true, "int32"), k)  # (B, *spatial, K)
    spatial = tuple(range(1, len(y_pred.shape) - 1))
    ce = ops.mean(keras.losses.categorical_crossentropy(onehot, y_pred), axis=spatial)  # (B,)
    axes = (0, *spatial)
    intersection = ops.sum(onehot * y_pred, axis=axes)  # (K,)
    total = ops.sum(onehot, axis=axes) + ops.sum(y_pred, axis=axes)
    dice = (2.0 * intersection + smooth) / (total + smooth)
    return ce + (1.0 - ops.mean(dice[1:]))


class _MetricsJsonl(keras.callbacks.Callback):
    """Append one JSON line per epoch (the logs, the epoch number and its seconds)."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        row["epoch_s"] = time.perf_counter() - self.start
        rows = []
        if self.path.is_file():  # keep the lines of earlier epochs (a resumed run)
            rows = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r["epoch"] <= epoch] + [row]
        from mednets.utils import atomic_write

        with atomic_write(self.path, suffix=".jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _best_so_far(out: Path, monitor: str, mode: str) -> float | None:
    """The best ``monitor`` value in ``metrics.jsonl`` when a backup will be restored, else None.

    A resumed run must not replace ``best.keras`` with a worse model: its
    ``ModelCheckpoint`` starts from the best value of the epochs already done.
    """
    if not (out / "backup").is_dir() or not (out / "metrics.jsonl").is_file():
        return None
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    values = [float(r[monitor]) for r in rows if isinstance(r.get(monitor), (int, float))]
    values = [v for v in values if v == v and abs(v) != float("inf")]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def fit(
    build: Callable[[], keras.Model],
    x,
    y=None,
    *,
    epochs: int,
    batch_size: int | None = None,
    validation_data=None,
    strategy=None,
    mixed_precision: str | None = None,
    out_dir: str | os.PathLike | None = None,
    monitor: str = "val_loss",
    mode: str = "min",
    progress: bool = True,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    **fit_kwargs,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Build a compiled model under a distribution strategy and train it.

    The model must be created inside the strategy's scope, so ``fit`` takes a builder:
    ``build()`` returns a compiled ``keras.Model``. ``fit`` sets the mixed-precision
    policy (if any), builds the model in ``strategy.scope()`` and calls
    ``model.fit``; Keras splits each global batch over the replicas and averages the
    gradients. With ``out_dir`` the chief writes ``metrics.jsonl``,
    ``checkpoints/last.keras`` every epoch and ``checkpoints/best.keras`` when
    ``monitor`` improves; every worker keeps a ``backup/`` (``BackupAndRestore``), so a
    run that was interrupted continues from its last finished epoch when the same call
    is made again (a finished run removes its backup). A resumed run keeps the best
    value of ``metrics.jsonl`` as the one to beat, so ``best.keras`` only gets better.

    Args:
        build: ``build() -> compiled keras.Model`` (called inside the strategy scope).
        x: Inputs (arrays or a ``tf.data.Dataset``), as ``model.fit`` takes them.
        y: Targets. Defaults to None.
        epochs: Total epochs.
        batch_size: The global batch (all replicas together) for array inputs.
            Defaults to None (Keras' 32).
        validation_data: As ``model.fit``. Defaults to None.
        strategy: A ``tf.distribute.Strategy``, or None for :func:`choose_strategy`.
            Defaults to None.
        mixed_precision: None, ``"mixed_float16"`` (Keras adds loss scaling) or
            ``"mixed_bfloat16"``. Set as the global policy while the model is built,
            then restored. Defaults to None.
        out_dir: Folder for ``metrics.jsonl``, ``checkpoints/`` and ``backup/``.
            Defaults to None (nothing written).
        monitor: Log key for ``best.keras``. Defaults to "val_loss".
        mode: ``"min"`` or ``"max"`` for ``monitor``. Defaults to "min".
        progress: A tqdm bar (chief only). Defaults to True.
        callbacks: More callbacks. Defaults to ().
        **fit_kwargs: Passed to ``model.fit`` (``shuffle``, ...).

    Returns:
        ``(model, history)`` with ``history`` ``{key: [per-epoch values]}`` (the epochs
        of this call).

    Raises:
        ValueError: If ``epochs < 1``, ``mixed_precision`` or ``mode`` is unknown, or
            ``build`` does not return a compiled model.
    """
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"fit: expected epochs to be an integer >= 1, got {epochs!r}")
    if mixed_precision not in (None, *_POLICIES):
        raise ValueError(f"fit: mixed_precision must be None or one of {_POLICIES}, got {mixed_precision!r}")
    if mode not in ("min", "max"):
        raise ValueError(f"fit: mode must be 'min' or 'max', got {mode!r}")
    strategy = choose_strategy(strategy)
    previous = keras.mixed_precision.global_policy()
    try:
        if mixed_precision:
            keras.mixed_precision.set_global_policy(mixed_precision)
        with strategy.scope():
            model = build()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    if not isinstance(model, keras.Model) or getattr(model, "optimizer", None) is None:
        raise ValueError(f"fit: build() must return a compiled keras.Model, got {type(model).__name__}")
    chief = is_chief()
    cbs = list(callbacks)
    if out_dir is not None:
        out = Path(out_dir)
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        cbs.append(keras.callbacks.BackupAndRestore(str(out / "backup")))
        if chief:
            cbs += [
                _MetricsJsonl(out / "metrics.jsonl"),
                keras.callbacks.ModelCheckpoint(str(out / "checkpoints" / "last.keras")),
                keras.callbacks.ModelCheckpoint(
                    str(out / "checkpoints" / "best.keras"),
                    monitor=monitor,
                    mode=mode,
                    save_best_only=True,
                    initial_value_threshold=_best_so_far(out, monitor, mode),
                ),
            ]
    if progress and chief:
        from tqdm.keras import TqdmCallback

        cbs.append(TqdmCallback(verbose=0))
    history = model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=int(epochs),
        validation_data=validation_data,
        verbose=0,
        callbacks=cbs,
        **fit_kwargs,
    )
    return model, {k: [float(v) for v in vs] for k, vs in history.history.items()}


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

    Raises:
        ValueError: If ``epochs < 2``.

    Example:
        >>> import numpy as np
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> out = fit_timed(model, np.ones((8, 3)), np.zeros((8, 1)), epochs=2, batch_size=4, progress=False)
        >>> len(out["history"]["loss"]), out["epoch_s"] > 0
        (2, True)
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
