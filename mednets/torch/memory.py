"""Peak memory of a training step, measured on a CPU or a GPU, and an estimate for big crops.

On a GPU, PyTorch's caching allocator keeps statistics:
``torch.cuda.max_memory_allocated()`` is the peak of tensor memory since the last
``reset_peak_memory_stats()``. The CPU allocator keeps none, and the process's resident
memory is blurred by the allocator's caching. :class:`PeakMemory` (built in Chapter 4)
counts bytes itself: it is a ``TorchDispatchMode`` that sees every tensor a PyTorch
operation creates, adds its storage size when it appears and subtracts it when the last
tensor on that storage is freed, and records the peak. Tensors that existed before the
meter started (the weights, the input) are not counted; gradients of the weights are.

:func:`step_memory` measures one forward + backward pass with whichever applies, and
:func:`estimate_step_memory` counts the pass at the full training crop on PyTorch's
``meta`` device (shapes without data), where it costs no memory and almost no time.

Example:
    >>> import torch
    >>> with PeakMemory() as meter:
    ...     y = torch.ones(1000) * 2   # two float32 tensors of 4,000 bytes live at once
    >>> meter.peak
    8000
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["PeakMemory", "step_memory", "estimate_step_memory", "param_bytes"]


class PeakMemory(TorchDispatchMode):
    """Peak bytes of tensor storage created by PyTorch operations while active.

    Attributes:
        live: Bytes of storage created inside the block and still alive.
        peak: The largest ``live`` seen.

    Example:
        >>> with PeakMemory() as meter:
        ...     a = torch.zeros(256)   # 1 KiB
        ...     b = torch.zeros(256)   # 2 KiB live
        ...     del a, b
        ...     c = torch.zeros(128)   # 0.5 KiB live
        >>> meter.peak, meter.live
        (2048, 512)
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.users = {}  # storage -> [live tensors using it, bytes]

    def _release(self, key):
        entry = self.users.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:  # the last tensor on this storage is gone
            self.live -= entry[1]
            del self.users[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                # The storage's C++ address: shared by views, unique per allocation, and
                # defined on the "meta" device too (where data_ptr() is always 0).
                key = storage._cdata
                if key not in self.users:  # a new allocation, not a view
                    self.users[key] = [0, storage.nbytes()]
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                self.users[key][0] += 1
                weakref.finalize(t, self._release, key)
        return out


def param_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters (one copy; gradients and Adam add three more).

    Example:
        >>> param_bytes(torch.nn.Linear(10, 10))  # 110 float32 values
        440
    """
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _default_loss(output) -> torch.Tensor:
    if isinstance(output, (tuple, list)):
        return sum(o.float().square().mean() for o in output)
    return output.float().square().mean()


def step_memory(
    model: torch.nn.Module,
    x: torch.Tensor,
    loss_fn: Callable | None = None,
    amp: str | None = None,
) -> dict[str, int]:
    """Peak tensor memory of one forward + backward pass of ``model`` on ``x``.

    On a CUDA device it reads ``torch.cuda.max_memory_allocated`` (minus what was
    allocated before); elsewhere it uses :class:`PeakMemory`. The model's gradients are
    cleared first and left set afterwards.

    Args:
        model: The network, on ``x``'s device (in training mode for a training
            estimate).
        x: One input batch ``(B, C, *S)``.
        loss_fn: ``loss_fn(output) -> scalar``. Defaults to None (the mean square of
            every output, which has the same backward graph as a real loss).
        amp: ``"bf16"`` or ``"fp16"`` to run the forward under ``torch.autocast``.
            Defaults to None (float32).

    Returns:
        ``{"peak_bytes": ..., "param_bytes": ..., "method": "cuda" | "dispatch"}``:
        ``peak_bytes`` counts activations, temporaries and the weight gradients, not
        the weights or the input.

    Example:
        >>> net = torch.nn.Conv3d(1, 4, 3, padding=1)
        >>> m = step_memory(net, torch.zeros(1, 1, 8, 8, 8))
        >>> m["peak_bytes"] >= 4 * 8**3 * 4, m["method"]
        (True, 'dispatch')
    """
    loss_fn = loss_fn or _default_loss
    model.zero_grad(set_to_none=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[amp]
    device_type = x.device.type

    def run():
        if dtype is None:
            out = model(x)
        else:
            with torch.autocast(device_type=device_type, dtype=dtype):
                out = model(x)
        loss_fn(out).backward()

    if device_type == "cuda":
        torch.cuda.synchronize(x.device)
        before = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        run()
        torch.cuda.synchronize(x.device)
        peak = torch.cuda.max_memory_allocated(x.device) - before
        method = "cuda"
    else:
        with PeakMemory() as meter:
            run()
        peak = meter.peak
        method = "dispatch"
    return {"peak_bytes": int(peak), "param_bytes": param_bytes(model), "method": method}


def estimate_step_memory(
    build: Callable[[Sequence[int]], torch.nn.Module],
    in_channels: int,
    crop: Sequence[int],
    batch_size: int,
    optimizer_states: int = 2,
) -> dict[str, float]:
    """Training memory of one process at the full crop, counted on the ``meta`` device.

    On the ``meta`` device tensors have shapes and dtypes but no data, and operations
    compute nothing, so a forward + backward pass at the paper's 160x192x128 costs
    seconds and no memory. :class:`PeakMemory` counts what that pass would allocate
    (it gives the same peak on the CPU, where it can be checked). Added to it: the
    weights and ``optimizer_states`` copies of them (Adam keeps two); the weight
    gradients are in the pass's peak. The count is float32: mixed precision stores most
    activations in 16 bits, about halving that part (``torch.autocast`` does not act on
    the meta device). The CUDA context, the allocator's cache and cuDNN's workspaces
    (a few hundred MiB) are not included.

    Args:
        build: ``build(spatial_size) -> model`` (a model whose size may depend on the
            crop, like NVNet's VAE); called under ``torch.device("meta")``.
        in_channels: Input channels.
        crop: The training crop.
        batch_size: Samples per process.
        optimizer_states: Parameter-sized buffers the optimiser keeps. Defaults to 2.

    Returns:
        ``{"total_bytes", "step_peak_bytes", "activation_bytes", "param_bytes", "params"}``:
        ``step_peak_bytes`` is the pass's peak (activations, temporaries and weight
        gradients), ``activation_bytes`` that peak less one copy of the weights.

    Example:
        >>> est = estimate_step_memory(lambda s: torch.nn.Conv3d(1, 2, 3, padding=1), 1,
        ...                            crop=(16, 16, 16), batch_size=2)
        >>> est["params"], est["step_peak_bytes"] >= 2 * 2 * 16**3 * 4  # the output, float32
        (56, True)
    """
    crop = tuple(int(s) for s in crop)
    with torch.device("meta"):
        model = build(crop).train()
        x = torch.empty(int(batch_size), int(in_channels), *crop)
    with PeakMemory() as meter:
        _default_loss(model(x)).backward()
    pbytes = param_bytes(model)
    return {
        "total_bytes": float(meter.peak + pbytes * (1 + optimizer_states)),
        "step_peak_bytes": float(meter.peak),
        "activation_bytes": float(max(0, meter.peak - pbytes)),
        "param_bytes": float(pbytes),
        "params": int(sum(p.numel() for p in model.parameters())),
    }
