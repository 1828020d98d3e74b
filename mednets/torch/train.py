"""A small, generic PyTorch training loop and the polynomial learning-rate schedule.

The loop is deliberately plain: it iterates over ``(x, y)`` batches, calls a loss
function, steps an optimiser, and returns a per-epoch history that
:func:`mednets.viz.plot_history` can draw. It is shared by the PyTorch chapters.

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
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["fit", "poly_lr", "train_step", "move_to"]


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
    """
    if device is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(o, device) for o in obj)
    if isinstance(obj, Mapping):
        return {k: move_to(v, device) for k, v in obj.items()}
    return obj


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


def _autocast(bf16: bool, device_type: str):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: Any,
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    bf16: bool = False,
) -> tuple[float, dict[str, float]]:
    """One optimisation step on one batch: forward, loss, backward, step.

    Args:
        model: The network (put in training mode by the caller).
        x: Input batch.
        y: Target batch (anything ``loss_fn`` accepts).
        loss_fn: ``loss_fn(model(x), y)`` -> scalar tensor or ``(scalar, dict_of_parts)``.
        optimizer: The optimiser.
        bf16: Run the forward pass and loss under bfloat16 autocast. Defaults to False.

    Returns:
        ``(loss_value, parts)`` as Python floats.

    Raises:
        ValueError: If the loss is not finite (the step is skipped).
    """
    device_type = x.device.type if isinstance(x, torch.Tensor) else "cpu"
    optimizer.zero_grad(set_to_none=True)
    with _autocast(bf16, device_type):
        output = model(x)
        loss, parts = _split_loss(loss_fn(output, y))
    loss = loss.float()
    if not torch.isfinite(loss):
        raise ValueError(f"train_step: expected a finite loss, got {float(loss.detach())} (parts: {parts})")
    loss.backward()
    optimizer.step()
    return float(loss.detach()), parts


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
) -> dict[str, list[float]]:
    """Train ``model`` for ``epochs`` passes over ``batches`` and return the history.

    Each epoch iterates over ``batches`` (any re-iterable of ``(x, y)``: a
    ``DataLoader`` or a plain list), takes one optimiser step per batch, steps the
    scheduler once, then calls ``eval_fn(model)`` if given (in ``eval`` mode, without
    gradients). A tqdm bar shows the epochs and the latest loss. The model is left in
    ``eval`` mode at the end.

    Args:
        model: The network to train (in place).
        batches: Re-iterable of ``(x, y)`` pairs. A one-shot iterator (a generator)
            is rejected, since it would be empty after the first epoch.
        loss_fn: ``loss_fn(output, target)`` returning a scalar tensor, or
            ``(scalar, dict_of_float_parts)``; each part is logged per epoch.
        optimizer: A ``torch.optim`` optimiser over ``model``'s parameters.
        epochs: Number of epochs (>= 1).
        scheduler: Optional learning-rate scheduler, stepped once per epoch (for
            example :func:`poly_lr`). Defaults to None.
        eval_fn: Optional ``eval_fn(model) -> {name: float}``; its values are appended
            to the history every epoch. Defaults to None.
        bf16: bfloat16 autocast for the forward pass (works on CPU). Defaults to False.
        progress: Show a tqdm progress bar. Defaults to True.
        desc: Label of the progress bar. Defaults to "train".
        device: Move each batch to this device first; None leaves batches as they
            are. Defaults to None.

    Returns:
        ``{"loss": [...], "<part>": [...], "<eval key>": [...], "lr": [...]}``: the
        per-epoch mean of the loss and of each part over the batches, the eval values,
        and the learning rate each epoch was trained with; every list has ``epochs``
        entries.

    Raises:
        ValueError: If ``epochs < 1``, ``batches`` is empty or a one-shot iterator, or
            a loss is not finite.

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
    if isinstance(batches, Iterator):  # a generator would be empty after one epoch
        raise ValueError(
            "fit: expected a re-iterable of (x, y) batches (a list or a DataLoader), "
            f"got a one-shot iterator of type {type(batches).__name__}"
        )
    from tqdm.auto import tqdm

    history: dict[str, list[float]] = defaultdict(list)
    bar = tqdm(range(int(epochs)), desc=desc, disable=not progress)
    for _epoch in bar:
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        sums: dict[str, float] = defaultdict(float)
        n = 0
        for x, y in batches:
            x, y = move_to(x, device), move_to(y, device)
            loss, parts = train_step(model, x, y, loss_fn, optimizer, bf16=bf16)
            sums["loss"] += loss
            for k, v in parts.items():
                sums[k] += v
            n += 1
        if n == 0:
            raise ValueError("fit: expected at least one (x, y) batch per epoch, got 0")
        for k, v in sums.items():
            history[k].append(v / n)
        history["lr"].append(float(lr))
        if scheduler is not None:
            scheduler.step()
        if eval_fn is not None:
            model.eval()
            with torch.no_grad():
                metrics = eval_fn(model)
            for k, v in metrics.items():
                history[k].append(float(v))
        postfix = {"loss": f"{history['loss'][-1]:.4f}"}
        if eval_fn is not None:
            for k in metrics:
                val = history[k][-1]
                postfix[k] = f"{val:.4f}" if math.isfinite(val) else str(val)
        bar.set_postfix(postfix)
    model.eval()
    return dict(history)
