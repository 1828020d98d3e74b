"""The PyTorch training loop: one process or many, checkpoints, resume, validation.

:func:`fit` iterates over ``(x, y)`` batches, calls a loss function, steps an
optimiser, and returns a per-epoch history that :func:`mednets.viz.plot_history` can
draw. The same call runs

- on a CPU or one GPU (``device=default_device()``), and
- under ``torchrun --nproc_per_node=N`` (and ``--nnodes``): the process group is
  started from the environment (:mod:`mednets.torch.distributed`), the model is wrapped
  in ``DistributedDataParallel``, a ``Dataset`` is sharded with a ``DistributedSampler``
  (``set_epoch`` each epoch), logged values are averaged over the processes, and only
  rank 0 shows the progress bar and writes files.

Mixed precision is ``torch.autocast`` (``amp="bf16"``, or ``"fp16"`` with a gradient
scaler for GPUs without bfloat16), with optional gradient accumulation. With
``out_dir`` it writes ``metrics.jsonl`` (one JSON line per epoch) and checkpoints
(``checkpoints/last.pt`` every epoch, ``checkpoints/best.pt`` for the best validation
value) atomically, and ``resume=`` continues a run exactly where it stopped.

Example:
    >>> import torch
    >>> from mednets.torch.train import fit, poly_lr
    >>> model = torch.nn.Linear(3, 1)
    >>> x = torch.randn(16, 3); y = x.sum(1, keepdim=True)
    >>> opt = torch.optim.Adam(model.parameters(), lr=0.1)
    >>> hist = fit(model, [(x, y)], torch.nn.functional.mse_loss, opt, epochs=5,
    ...            scheduler=poly_lr(opt, 5), progress=False)
    >>> len(hist["loss"])
    5
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mednets.torch.distributed import (
    all_reduce_mean,
    barrier,
    init_distributed,
    is_distributed,
    is_main_process,
    rank,
    world_size,
)
from mednets.utils import atomic_write

__all__ = [
    "fit",
    "poly_lr",
    "train_step",
    "move_to",
    "unwrap",
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "config_diff",
    "sliding_window_validation",
    "region_scores",
    "label_scores",
    "TrainingPairs",
]

#: Tag stored in every checkpoint written by :func:`save_checkpoint`.
CHECKPOINT_FORMAT = "mednets-checkpoint-v1"

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def poly_lr(optimizer: torch.optim.Optimizer, epochs: int, power: float = 0.9):
    """The polynomial decay used by Myronenko (2018): ``lr_e = lr_0 * (1 - e / N) ** power``.

    Paper: https://arxiv.org/abs/1810.11654 (Section 2.4, "Optimization").
    Call ``scheduler.step()`` once per epoch (``fit`` does), so epoch ``e`` (counted
    from 0) trains with ``lr_0 * (1 - e / epochs) ** power``.

    Args:
        optimizer: The optimiser whose learning rate(s) to decay.
        epochs: Total number of epochs ``N`` (>= 1).
        power: The exponent. Defaults to 0.9, as in the paper.

    Returns:
        A ``torch.optim.lr_scheduler.LambdaLR``.

    Raises:
        ValueError: If ``epochs < 1`` or ``power < 0``.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = poly_lr(opt, epochs=10)
        >>> round(opt.param_groups[0]["lr"], 4)
        1.0
    """
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"poly_lr: expected epochs to be an integer >= 1, got {epochs!r}")
    if power < 0:
        raise ValueError(f"poly_lr: expected power >= 0, got {power!r}")
    epochs = int(epochs)

    def factor(epoch: int) -> float:
        # Clamp at zero so stepping past the end never gives a negative or complex rate.
        return max(0.0, 1.0 - epoch / epochs) ** power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def move_to(obj: Any, device: torch.device | str | None):
    """Move a tensor, or tensors nested in tuples/lists/dicts, to ``device``.

    Args:
        obj: A tensor, a (nested) tuple/list/dict of tensors, or anything else
            (returned unchanged).
        device: Target device; ``None`` leaves ``obj`` where it is.

    Returns:
        The same structure on ``device``.

    Example:
        >>> move_to((torch.zeros(1), [torch.ones(1)]), "cpu")[1][0].device.type
        'cpu'
    """
    if device is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(o, device) for o in obj)
    if isinstance(obj, Mapping):
        return {k: move_to(v, device) for k, v in obj.items()}
    return obj


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper.

    Example:
        >>> net = torch.nn.Linear(1, 1)
        >>> unwrap(net) is net
        True
    """
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _split_loss(result) -> tuple[torch.Tensor, dict[str, float]]:
    """Accept a scalar loss or ``(scalar, {name: value})`` and return both parts."""
    if isinstance(result, tuple):
        if len(result) != 2 or not isinstance(result[1], Mapping):
            raise ValueError(
                "loss_fn must return a scalar tensor or (scalar, dict_of_parts); "
                f"got a tuple of length {len(result)} with types "
                f"{[type(r).__name__ for r in result]}"
            )
        loss, parts = result
    else:
        loss, parts = result, {}
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor (shape ()), got {shape}")
    parts = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in parts.items()}
    return loss, parts


def _check_amp(amp: str | None, bf16: bool) -> str | None:
    if bf16:
        if amp not in (None, "bf16"):
            raise ValueError(f"bf16=True conflicts with amp={amp!r}; pass one of them")
        amp = "bf16"
    if amp not in (None, "bf16", "fp16"):
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    return amp


def _autocast(amp: str | None, device_type: str):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=_AMP_DTYPES[amp])


def _forward_loss(model, x, y, loss_fn, amp):
    device_type = x.device.type if isinstance(x, torch.Tensor) else "cpu"
    with _autocast(amp, device_type):
        output = model(x)
        loss, parts = _split_loss(loss_fn(output, y))
    loss = loss.float()
    if not torch.isfinite(loss):
        raise ValueError(f"train_step: expected a finite loss, got {float(loss.detach())} (parts: {parts})")
    return loss, parts


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: Any,
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    bf16: bool = False,
    amp: str | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, dict[str, float]]:
    """One optimisation step on one batch: forward, loss, backward, step.

    Args:
        model: The network (put in training mode by the caller).
        x: Input batch.
        y: Target batch (anything ``loss_fn`` accepts).
        loss_fn: ``loss_fn(model(x), y)`` -> scalar tensor or ``(scalar, dict_of_parts)``.
        optimizer: The optimiser.
        bf16: Same as ``amp="bf16"``. Defaults to False.
        amp: ``"bf16"`` or ``"fp16"``: the forward pass and loss under
            ``torch.autocast``. Defaults to None (float32).
        scaler: A ``torch.amp.GradScaler`` for fp16 (scales the loss, unscales and
            skips steps with inf/NaN gradients). Defaults to None.

    Returns:
        ``(loss_value, parts)`` as Python floats.

    Raises:
        ValueError: If the loss is not finite (the step is skipped), or ``amp`` is
            unknown.

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> mse = torch.nn.functional.mse_loss
        >>> loss, parts = train_step(net, torch.ones(4, 2), torch.zeros(4, 1), mse, opt)
        >>> loss >= 0, parts
        (True, {})
    """
    amp = _check_amp(amp, bf16)
    optimizer.zero_grad(set_to_none=True)
    loss, parts = _forward_loss(model, x, y, loss_fn, amp)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach()), parts


# -- Checkpoints ---------------------------------------------------------------------


def _canonical(value):
    """A JSON-comparable form of a config value (tuples and lists read alike)."""
    return json.dumps(value, sort_keys=True, default=str)


def config_diff(a: Mapping | None, b: Mapping | None) -> list[str]:
    """The keys whose values differ between two configs (tuples equal lists).

    Args:
        a: A config dict (or None, read as empty).
        b: Another.

    Returns:
        Sorted keys present in only one, or with different values.

    Example:
        >>> config_diff({"lr": 1e-4, "crop": (64, 64)}, {"lr": 1e-3, "crop": [64, 64], "seed": 0})
        ['lr', 'seed']
    """
    a, b = dict(a or {}), dict(b or {})
    return sorted(
        k for k in set(a) | set(b) if k not in a or k not in b or _canonical(a[k]) != _canonical(b[k])
    )


def _rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }


def _set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    epoch: int = 0,
    config: Mapping | None = None,
    history: Mapping | None = None,
    best: Mapping | None = None,
    scaler: torch.amp.GradScaler | None = None,
    rng: Sequence[Mapping] | None = None,
) -> Path:
    """Write a training checkpoint atomically (a reader never sees half a file).

    It holds the model's weights (unwrapped from DDP, so a single process can load
    them), the optimiser, scheduler and gradient-scaler states, the number of completed
    epochs, the history so far, the best validation value, the random-number
    generators' states (``rng``: one per process; by default this process's) and the
    config, all in types that ``torch.load(..., weights_only=True)`` accepts.

    Args:
        path: Destination ``.pt`` file (its folder is created).
        model: The network (a DDP wrapper is unwrapped).
        optimizer: Defaults to None.
        scheduler: A learning-rate scheduler. Defaults to None.
        epoch: Completed epochs. Defaults to 0.
        config: JSON-like dict describing the run; a resume compares it. Defaults to None.
        history: ``{name: [per-epoch values]}``. Defaults to None.
        best: ``{"value": float, "epoch": int, "monitor": str}``. Defaults to None.
        scaler: The fp16 ``GradScaler``. Defaults to None.
        rng: RNG states per rank. Defaults to None (this process's states).

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> p = save_checkpoint(Path(tempfile.mkdtemp()) / "c.pt", torch.nn.Linear(2, 1), epoch=3)
        >>> torch.load(p, weights_only=True)["epoch"]
        3
    """
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": unwrap(model).state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "epoch": int(epoch),
        "history": {k: [float(v) for v in vs] for k, vs in (history or {}).items()},
        "best": dict(best) if best else None,
        "rng": list(rng) if rng is not None else [_rng_state()],
        "config": json.loads(json.dumps(dict(config or {}), default=str)),
        "torch_version": str(torch.__version__),
    }
    path = Path(path)
    with atomic_write(path, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    scaler: torch.amp.GradScaler | None = None,
    config: Mapping | None = None,
    ignore: Iterable[str] = (),
    restore_rng: bool = False,
) -> dict:
    """Read a checkpoint with ``weights_only=True`` and load it into the given objects.

    Args:
        path: A file written by :func:`save_checkpoint`.
        model: Load the weights into it (unwrapped from DDP). Defaults to None.
        optimizer: Load its state. Defaults to None.
        scheduler: Load its state. Defaults to None.
        scaler: Load the fp16 gradient scaler's state. Defaults to None.
        config: When given, refuse a checkpoint whose config differs (for a resume).
            Defaults to None (no check).
        ignore: Config keys left out of that comparison. Defaults to ().
        restore_rng: Restore this process's RNG states (rank ``r`` takes the ``r``-th
            saved state, or the first). Defaults to False.

    Returns:
        The checkpoint dict (``epoch``, ``history``, ``best``, ``config``, ...).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a mednets checkpoint, its config differs from
            ``config`` (the message names the differing keys and both values), or its
            weights do not fit ``model``: none of its keys match ("loads nothing"),
            some are missing or unexpected, or shapes differ (named).

    Example:
        >>> import tempfile
        >>> p = save_checkpoint(Path(tempfile.mkdtemp()) / "c.pt", torch.nn.Linear(2, 1), config={"lr": 1})
        >>> load_checkpoint(p, torch.nn.Linear(2, 1), config={"lr": 2})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: cannot resume from ... differing keys: lr (checkpoint 1, now 2)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: pickle and zip raise many types
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{path} is not a mednets checkpoint: format {got!r}, expected {CHECKPOINT_FORMAT!r}"
        )
    if config is not None:
        skip = set(ignore)
        saved = {k: v for k, v in (state.get("config") or {}).items() if k not in skip}
        now = {k: v for k, v in json.loads(json.dumps(dict(config), default=str)).items() if k not in skip}
        diff = config_diff(saved, now)
        if diff:
            details = ", ".join(
                f"{k} (checkpoint {saved.get(k, '<missing>')}, now {now.get(k, '<missing>')})" for k in diff
            )
            raise ValueError(
                f"cannot resume from {path}: it was written by another config; differing keys: {details}"
            )
    if model is not None:
        target = unwrap(model)
        weights = state.get("model") or {}
        own = target.state_dict()
        matching = [k for k in weights if k in own]
        if not matching:
            raise ValueError(
                f"{path}: the checkpoint loads nothing into {type(target).__name__}: none of its "
                f"{len(weights)} weights (e.g. {list(weights)[:3]}) match the model's (e.g. {list(own)[:3]})"
            )
        missing = [k for k in own if k not in weights]
        unexpected = [k for k in weights if k not in own]
        shapes = [
            f"{k}: checkpoint {tuple(weights[k].shape)}, model {tuple(own[k].shape)}"
            for k in matching
            if tuple(weights[k].shape) != tuple(own[k].shape)
        ]
        if missing or unexpected or shapes:
            raise ValueError(
                f"{path}: the weights do not fit {type(target).__name__}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}"
            )
        target.load_state_dict(weights)
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if restore_rng and state.get("rng"):
        states = state["rng"]
        _set_rng_state(states[rank()] if len(states) == world_size() else states[0])
    return state


def _gather_rng() -> list[dict]:
    mine = _rng_state()
    if not is_distributed():
        return [mine]
    import torch.distributed as dist

    states: list = [None] * world_size()
    dist.all_gather_object(states, mine)
    return states


# -- The loop ----------------------------------------------------------------------------


def _is_dataset(batches) -> bool:
    return isinstance(batches, torch.utils.data.Dataset) and not isinstance(
        batches, torch.utils.data.IterableDataset
    )


def _make_loader(dataset, batch_size, shuffle, seed, num_workers, device):
    n = world_size()
    if batch_size is None:
        raise ValueError("fit: a Dataset needs batch_size= (the global batch over all processes), got None")
    if batch_size < n:
        raise ValueError(
            f"fit: batch_size {batch_size} is smaller than the number of processes {n}; "
            "each process needs at least one sample per step"
        )
    if batch_size % n:
        raise ValueError(f"fit: batch_size {batch_size} must be divisible by the number of processes {n}")
    # A DistributedSampler also for one process: its order depends only on (seed, epoch),
    # which is what an exact resume needs.
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=n, rank=rank(), shuffle=shuffle, seed=seed
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size // n,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device is not None and torch.device(device).type == "cuda",
        persistent_workers=False,  # workers see set_epoch only when re-created each epoch
    )


def _set_epoch(loader, epoch):
    for obj in (
        getattr(loader, "sampler", None),
        getattr(loader, "batch_sampler", None),
        getattr(loader, "dataset", None),
    ):
        set_epoch = getattr(obj, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
    if hasattr(loader, "set_epoch") and callable(loader.set_epoch):
        loader.set_epoch(epoch)


def _resume_path(resume, out_dir) -> Path | None:
    if resume is None or resume is False:
        return None
    if resume is True:
        if out_dir is None:
            raise ValueError("fit: resume=True reads out_dir/checkpoints/last.pt, but out_dir is None")
        last = Path(out_dir) / "checkpoints" / "last.pt"
        return last if last.is_file() else None
    return Path(resume)


def _write_metrics(path: Path, rows: list[dict]) -> None:
    with atomic_write(path, suffix=".jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fit(
    model: nn.Module,
    batches: Iterable,
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    scheduler=None,
    eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
    bf16: bool = False,
    progress: bool = True,
    desc: str = "train",
    device: torch.device | str | None = None,
    *,
    amp: str | None = None,
    accumulate: int = 1,
    batch_size: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    eval_every: int = 1,
    out_dir: str | Path | None = None,
    resume: str | Path | bool | None = None,
    config: Mapping | None = None,
    monitor: str | None = None,
    mode: str = "max",
    cudnn_benchmark: bool = True,
) -> dict[str, list[float]]:
    """Train ``model`` for ``epochs`` passes over ``batches`` and return the history.

    Each epoch iterates over ``batches``, takes one optimiser step per batch (or per
    ``accumulate`` batches), steps the scheduler once, then, every ``eval_every``
    epochs and after the last, calls ``eval_fn`` on the unwrapped model in ``eval``
    mode without gradients. A tqdm bar (rank 0 only) shows the epochs and the latest
    loss. The model is left in ``eval`` mode at the end.

    **Data.** ``batches`` is either a re-iterable of ``(x, y)`` batches (a list, a
    ``DataLoader``), used as it is by every process, or a map-style ``Dataset``: then
    ``fit`` builds the ``DataLoader`` itself with a ``DistributedSampler`` (seeded by
    ``seed``, ``set_epoch`` each epoch, also for a single process) and a per-process
    batch of ``batch_size / world_size``. A ``set_epoch`` method of the loader's
    sampler or dataset (``H5PatchDataset``'s) is called at the start of every epoch.

    **Several processes.** Under ``torchrun`` the process group is started from the
    environment (``nccl`` on GPUs, ``gloo`` on CPUs), the model is wrapped in
    ``DistributedDataParallel`` (gradients averaged over the processes), logged
    values are averaged over the processes, and only rank 0 writes files.

    **Checkpoints and resume.** With ``out_dir``, rank 0 appends one JSON line per
    epoch to ``out_dir/metrics.jsonl`` and writes ``out_dir/checkpoints/last.pt``
    every epoch and ``best.pt`` when ``monitor`` improves, each atomically (see
    :func:`save_checkpoint`). ``resume=`` a checkpoint path (or True: ``last.pt`` in
    ``out_dir`` if it exists) restores the model, optimiser, scheduler, scaler, history
    and RNG states and continues with the next epoch, so that an interrupted run
    resumed equals an uninterrupted one (bit for bit on a CPU; on a GPU, cuDNN's
    algorithm choice with ``cudnn_benchmark`` and atomic adds make runs differ in the
    last bits, resumed or not). A checkpoint written with another ``config`` is
    refused, naming the differing keys.

    Args:
        model: The network to train (in place; moved to ``device`` if given).
        batches: Re-iterable of ``(x, y)`` pairs, or a map-style ``Dataset``. A
            one-shot iterator (a generator) is rejected, since it would be empty after
            the first epoch.
        loss_fn: ``loss_fn(output, target)`` returning a scalar tensor, or
            ``(scalar, dict_of_float_parts)``; each part is logged per epoch.
        optimizer: A ``torch.optim`` optimiser over ``model``'s parameters.
        epochs: Total number of epochs (>= 1), including any already done before a
            resume.
        scheduler: Optional learning-rate scheduler, stepped once per epoch (for
            example :func:`poly_lr`). Defaults to None.
        eval_fn: Optional ``eval_fn(model) -> {name: float}`` (e.g.
            :func:`sliding_window_validation`). Defaults to None.
        bf16: Same as ``amp="bf16"`` (kept for the chapters). Defaults to False.
        progress: Show a tqdm progress bar (rank 0). Defaults to True.
        desc: Label of the progress bar. Defaults to "train".
        device: Move the model and each batch to this device (e.g.
            :func:`~mednets.torch.distributed.default_device`); None leaves both
            where they are. Defaults to None.
        amp: ``"bf16"`` or ``"fp16"`` autocast; fp16 adds a ``GradScaler``. Defaults
            to None (float32).
        accumulate: Batches per optimiser step; the loss is divided accordingly, and
            DDP synchronises only on the last batch of each group. Defaults to 1.
        batch_size: Global batch for a ``Dataset`` (>= and divisible by the number of
            processes). Defaults to None.
        shuffle: Shuffle a ``Dataset`` each epoch. Defaults to True.
        seed: Seed of that shuffle. Defaults to 0.
        num_workers: ``DataLoader`` workers for a ``Dataset``. Defaults to 0.
        eval_every: Run ``eval_fn`` every this many epochs (and after the last).
            Defaults to 1.
        out_dir: Folder for ``metrics.jsonl`` and ``checkpoints/``. Defaults to None
            (nothing written).
        resume: A checkpoint path, or True for ``out_dir/checkpoints/last.pt`` when
            it exists. Defaults to None.
        config: JSON-like description of the run, stored in checkpoints and compared
            on resume. Defaults to None.
        monitor: The ``eval_fn`` key that picks ``best.pt`` (e.g. ``"val_dice"``).
            Defaults to None (no best checkpoint).
        mode: ``"max"`` or ``"min"`` for ``monitor``. Defaults to "max".
        cudnn_benchmark: Let cuDNN pick the fastest convolution algorithms on a GPU
            (the crops have one fixed size). Defaults to True.

    Returns:
        ``{"loss": [...], "<part>": [...], "<eval key>": [...], "lr": [...]}``: the
        per-epoch mean of the loss and of each part over the batches (and the
        processes), the eval values (NaN in epochs without evaluation), and the
        learning rate each epoch was trained with; every list has ``epochs`` entries.

    Raises:
        ValueError: If ``epochs < 1``, ``batches`` is empty or a one-shot iterator, a
            loss is not finite, ``amp``, ``accumulate``, ``eval_every`` or ``mode`` is
            invalid, ``batch_size`` does not fit the processes, or a resume is refused
            (see :func:`load_checkpoint`).

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> data = [(torch.ones(4, 2), torch.zeros(4, 1))]
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> h = fit(model, data, torch.nn.functional.mse_loss, opt, epochs=3, progress=False)
        >>> sorted(h)
        ['loss', 'lr']
    """
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"fit: expected epochs to be an integer >= 1, got {epochs!r}")
    epochs = int(epochs)
    if isinstance(batches, Iterator):  # a generator would be empty after one epoch
        raise ValueError(
            "fit: expected a re-iterable of (x, y) batches (a list or a DataLoader), "
            f"got a one-shot iterator of type {type(batches).__name__}"
        )
    amp = _check_amp(amp, bf16)
    if int(accumulate) != accumulate or accumulate < 1:
        raise ValueError(f"fit: accumulate must be an integer >= 1, got {accumulate!r}")
    if int(eval_every) != eval_every or eval_every < 1:
        raise ValueError(f"fit: eval_every must be an integer >= 1, got {eval_every!r}")
    if mode not in ("max", "min"):
        raise ValueError(f"fit: mode must be 'max' or 'min', got {mode!r}")
    from tqdm.auto import tqdm

    init_distributed()
    main = is_main_process()
    if device is not None:
        device = torch.device(device)
        model.to(device)
        if device.type == "cuda" and cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
    loader = (
        _make_loader(batches, batch_size, shuffle, seed, num_workers, device)
        if _is_dataset(batches)
        else batches
    )
    try:
        n_batches = len(loader)
    except TypeError:
        n_batches = None
    if accumulate > 1 and n_batches is None:
        raise ValueError("fit: accumulate > 1 needs batches with a len() (a list or a DataLoader)")
    net = model
    if is_distributed() and not isinstance(model, nn.parallel.DistributedDataParallel):
        ids = [device.index] if device is not None and device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    inner = unwrap(net)
    device_type = device.type if device is not None else "cpu"
    scaler = torch.amp.GradScaler(device_type) if amp == "fp16" else None

    out = Path(out_dir) if out_dir is not None else None
    metrics_path = out / "metrics.jsonl" if out is not None else None
    history: dict[str, list[float]] = defaultdict(list)
    best = None
    start = 0
    checkpoint = _resume_path(resume, out_dir)
    if checkpoint is not None:
        state = load_checkpoint(
            checkpoint, inner, optimizer, scheduler, scaler, config=config, restore_rng=True
        )
        start = int(state["epoch"])
        for k, v in state["history"].items():
            history[k] = list(v)
        best = state.get("best")
        if start > epochs:
            raise ValueError(
                f"fit: the checkpoint {checkpoint} has {start} epochs done, more than epochs={epochs}"
            )
    if main and metrics_path is not None:
        # Keep the lines of the epochs the checkpoint holds; drop any written after it.
        rows = [r for r in _read_metrics(metrics_path) if r.get("epoch", 0) <= start] if start else []
        _write_metrics(metrics_path, rows)
    barrier()

    bar = tqdm(range(start, epochs), desc=desc, disable=not (progress and main), initial=start, total=epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        net.train()
        _set_epoch(loader, epoch)
        lr = optimizer.param_groups[0]["lr"]
        sums: dict[str, float] = defaultdict(float)
        n = 0
        optimizer.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(loader):
            x, y = move_to(x, device), move_to(y, device)
            group_start = (i // accumulate) * accumulate
            group = accumulate if n_batches is None else min(accumulate, n_batches - group_start)
            last_in_group = (i - group_start + 1) == group
            sync = contextlib.nullcontext()
            if isinstance(net, nn.parallel.DistributedDataParallel) and not last_in_group:
                sync = net.no_sync()
            with sync:
                loss, parts = _forward_loss(net, x, y, loss_fn, amp)
                scaled = loss / group
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            if last_in_group:
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            sums["loss"] += float(loss.detach())
            for k, v in parts.items():
                sums[k] += v
            n += 1
        if n == 0:
            raise ValueError("fit: expected at least one (x, y) batch per epoch, got 0")
        means = all_reduce_mean({k: v / n for k, v in sums.items()}, weight=n)
        for k, v in means.items():
            history[k].append(v)
        history["lr"].append(float(lr))
        if scheduler is not None:
            scheduler.step()
        row = {"epoch": epoch + 1, **means, "lr": float(lr)}
        do_eval = eval_fn is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs)
        if do_eval:
            inner.eval()
            t_eval = time.perf_counter()
            with torch.no_grad():
                metrics = {k: float(v) for k, v in eval_fn(inner).items()}
            row.update(metrics)
            row["eval_s"] = time.perf_counter() - t_eval
            for k, v in metrics.items():
                h = history[k]
                h.extend([math.nan] * (epoch - len(h)))  # a key first seen now
                h.append(v)
        for h in history.values():  # NaN for values not measured this epoch
            h.extend([math.nan] * (epoch + 1 - len(h)))
        row["epoch_s"] = time.perf_counter() - t0
        improved = False
        if do_eval and monitor is not None:
            if monitor not in metrics:
                raise ValueError(f"fit: monitor {monitor!r} is not among the eval_fn keys {sorted(metrics)}")
            value = metrics[monitor]
            if best is None or (value > best["value"] if mode == "max" else value < best["value"]):
                best = {"value": value, "epoch": epoch + 1, "monitor": monitor}
                improved = True
        if out is not None:
            rng = _gather_rng()
            if main:
                _write_metrics(metrics_path, _read_metrics(metrics_path) + [row])
                args = (net, optimizer, scheduler, epoch + 1, config, history, best, scaler, rng)
                if improved:
                    save_checkpoint(out / "checkpoints" / "best.pt", *args)
                save_checkpoint(out / "checkpoints" / "last.pt", *args)
            barrier()
        postfix = {"loss": f"{history['loss'][-1]:.4f}"}
        if do_eval:
            for k in metrics:
                val = metrics[k]
                postfix[k] = f"{val:.4f}" if math.isfinite(val) else str(val)
        bar.set_postfix(postfix)
    bar.close()
    model.eval()
    return dict(history)


# -- Validation ------------------------------------------------------------------------------


def region_scores(probs: torch.Tensor, classes: np.ndarray, spacing=None) -> dict[str, float]:
    """Dice and HD95 of the BraTS regions from sigmoid outputs ``(3, *S)`` (WT, TC, ET).

    Args:
        probs: Region probabilities ``(3, *S)``.
        classes: The reference as tumour classes ``(*S)`` (0 background, 1 core, 2
            oedema, 3 enhancing: :func:`mednets.data.brats.tumour_classes`).
        spacing: Voxel size in mm. Defaults to None (voxels).

    Returns:
        ``{"WT_dice", "WT_hd95", "TC_dice", ..., "ET_hd95"}``.

    Example:
        >>> y = np.zeros((8, 8, 8), np.int64); y[2:6, 2:6, 2:6] = 2; y[3:5, 3:5, 3:5] = 3
        >>> from mednets.data.brats import brats_regions
        >>> s = region_scores(torch.from_numpy(brats_regions(y, "brats2023").astype(np.float32)), y)
        >>> s["ET_dice"], s["WT_hd95"]
        (1.0, 0.0)
    """
    from mednets.data.brats import regions_to_label
    from mednets.metrics import brats_scores

    pred = regions_to_label(probs, "brats2023")
    scores = brats_scores(pred, np.asarray(classes), spacing, label_convention="brats2023")
    return {f"{r}_{m}": float(v) for r, s in scores.items() for m, v in s.items()}


def label_scores(
    probs: torch.Tensor, label: np.ndarray, spacing=None, *, names: Sequence[str]
) -> dict[str, float]:
    """Per-structure Dice and HD95 from a network's output ``(K, *S)``.

    With ``K == len(names)`` the channels are independent sigmoid masks of labels
    1..K; with ``K == len(names) + 1`` they are softmax classes 0..K-1 (argmax).

    Args:
        probs: Network output ``(K, *S)``.
        label: Reference label map ``(*S)`` with values 0..len(names).
        spacing: Voxel size in mm. Defaults to None (voxels).
        names: Structure names for labels 1, 2, ... (e.g. ``("anterior", "posterior")``).

    Returns:
        ``{"<name>_dice": ..., "<name>_hd95": ...}``.

    Raises:
        ValueError: If ``K`` fits neither reading.

    Example:
        >>> y = np.zeros((6, 6, 6), np.int64); y[1:3] = 1; y[3:5] = 2
        >>> p = torch.from_numpy(np.stack([y == 1, y == 2]).astype(np.float32))
        >>> label_scores(p, y, names=("a", "b"))["b_dice"]
        1.0
    """
    from mednets.metrics import structure_scores

    k = probs.shape[0]
    if k == len(names):
        pred = np.zeros(probs.shape[1:], np.int64)
        for c in range(k):  # later channels win where masks overlap
            pred[(probs[c] > 0.5).cpu().numpy()] = c + 1
    elif k == len(names) + 1:
        pred = probs.argmax(0).cpu().numpy()
    else:
        raise ValueError(
            f"label_scores: expected {len(names)} sigmoid or {len(names) + 1} softmax channels for "
            f"{list(names)}, got {k}"
        )
    return structure_scores(pred, np.asarray(label), names, spacing)


def sliding_window_validation(
    cases: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float] | None]],
    patch_size: Sequence[int],
    score_fn: Callable[[torch.Tensor, np.ndarray, Any], Mapping[str, float]],
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    prefix: str = "val_",
) -> Callable[[nn.Module], dict[str, float]]:
    """An ``eval_fn`` for :func:`fit`: sliding-window inference on whole volumes, then scores.

    Each case is run through :func:`mednets.torch.inference.sliding_window_inference`
    (with the model's ``segment`` method when it has one, as NVNet does, so the VAE
    branch is skipped) on the model's device, and scored with ``score_fn``. The
    values are averaged over the cases; an infinite HD95 (a structure predicted where
    there is none, or missed) counts as the volume's diagonal in mm, as the BraTS
    challenge does. Under several processes each process scores every N-th case and
    the means are combined over the processes.

    Args:
        cases: ``(image (C, *S) float32, reference (*S), spacing or None)`` per case,
            the image normalised as in training.
        patch_size: The window, usually the training crop.
        score_fn: ``score_fn(probs (C_out, *S), reference, spacing) -> {name: value}``,
            e.g. :func:`region_scores` or ``functools.partial(label_scores, names=...)``.
        overlap: Window overlap. Defaults to 0.5.
        sw_batch_size: Windows per forward pass. Defaults to 1.
        prefix: Prefix of the returned names. Defaults to "val_".

    Returns:
        ``eval_fn(model) -> {prefix + name: mean, prefix + "dice": mean of every
        "*_dice"}``.

    Raises:
        ValueError: If ``cases`` is empty.

    Example:
        >>> y = np.zeros((8, 8, 8), np.int64); y[2:6] = 1
        >>> cases = [(y[None].astype(np.float32), y, None)]
        >>> ev = sliding_window_validation(cases, (8, 8, 8), lambda p, t, s: {"x_dice": float(p.mean())})
        >>> ev(torch.nn.Identity())
        {'val_x_dice': 0.5, 'val_dice': 0.5}
    """
    from mednets.torch.inference import sliding_window_inference

    cases = list(cases)
    if not cases:
        raise ValueError("sliding_window_validation: expected at least one validation case, got 0")

    def eval_fn(model: nn.Module) -> dict[str, float]:
        params = list(model.parameters())
        dev = params[0].device if params else torch.device("cpu")
        predict = getattr(model, "segment", model)
        sums: dict[str, float] = defaultdict(float)
        mine = cases[rank() :: world_size()]
        for image, reference, spacing in mine:
            volume = torch.as_tensor(np.ascontiguousarray(image)).to(dev)
            probs = sliding_window_inference(
                predict, volume, patch_size, overlap=overlap, sw_batch_size=sw_batch_size
            )
            scores = dict(score_fn(probs.float().cpu(), reference, spacing))
            diagonal = float(np.linalg.norm(np.asarray(reference.shape) * np.asarray(spacing or 1.0)))
            for k, v in scores.items():
                sums[k] += diagonal if (k.endswith("hd95") and not math.isfinite(v)) else v
        names = sorted(sums) if sums else []
        if is_distributed():  # every rank needs the same names, even with no case
            import torch.distributed as dist

            gathered: list = [None] * world_size()
            dist.all_gather_object(gathered, names)
            names = sorted({k for g in gathered for k in g})
        means = all_reduce_mean({k: sums.get(k, 0.0) / max(len(mine), 1) for k in names}, weight=len(mine))
        out = {prefix + k: v for k, v in means.items()}
        dices = [v for k, v in means.items() if k.endswith("_dice")]
        if dices:
            out[prefix + "dice"] = float(np.mean(dices))
        return out

    return eval_fn


class TrainingPairs(torch.utils.data.Dataset):
    """Shape the items of a patch dataset for the loss: ``(x, y)`` -> ``(x, target)``.

    NVNet's loss (:class:`mednets.torch.losses.NVNetLoss`) needs the input image for
    the VAE's reconstruction term, so with ``image_in_target`` the target becomes
    ``(y, x)``. With ``one_hot=K``, an integer label map ``y`` ``(*S)`` (values 0..K)
    becomes ``K`` float masks ``(K, *S)``, one per label 1..K, for sigmoid outputs.
    ``set_epoch`` is passed on to the wrapped dataset.

    Args:
        dataset: A map-style dataset of ``(x, y)`` tensors (e.g.
            :class:`mednets.torch.data.H5PatchDataset`).
        image_in_target: Return ``(x, (y, x))``. Defaults to False.
        one_hot: Number of foreground labels to turn into masks, or None. Defaults
            to None.

    Example:
        >>> base = [(torch.zeros(1, 2, 2, 2), torch.tensor([[[0, 1], [2, 0]], [[0, 0], [0, 0]]]))]
        >>> x, (y, image) = TrainingPairs(base, image_in_target=True, one_hot=2)[0]
        >>> y.shape, y.dtype, image.shape
        (torch.Size([2, 2, 2, 2]), torch.float32, torch.Size([1, 2, 2, 2]))
    """

    def __init__(self, dataset, image_in_target: bool = False, one_hot: int | None = None):
        self.dataset = dataset
        self.image_in_target = bool(image_in_target)
        self.one_hot = one_hot

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on (fresh patches each epoch)."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        if self.one_hot is not None:
            y = torch.stack([y == k for k in range(1, self.one_hot + 1)]).float()
        return (x, (y, x)) if self.image_in_target else (x, y)
