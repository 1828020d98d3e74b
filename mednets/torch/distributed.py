"""One process or many: the device, the process group and rank-aware helpers.

``torchrun`` starts one process per GPU (or per CPU worker) and tells each who it is
through environment variables: ``RANK`` (0..N-1 over all machines), ``LOCAL_RANK``
(0..n-1 on this machine), ``WORLD_SIZE`` (N), ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`init_distributed` reads them and starts :mod:`torch.distributed` with the
``nccl`` backend on GPUs and ``gloo`` on CPUs; without them (a plain ``python`` run)
nothing is started and the helpers below answer as for a single process. Nothing here
re-implements what :mod:`torch.distributed` does; these are thin, named shortcuts that
the training loop and the chapters share.

Example:
    >>> import torch
    >>> world_size(), rank(), is_main_process()
    (1, 0, True)
    >>> default_device().type in ("cpu", "cuda", "mps")
    True
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.distributed as dist

__all__ = [
    "default_device",
    "env_world_size",
    "init_distributed",
    "is_distributed",
    "world_size",
    "rank",
    "is_main_process",
    "all_reduce_mean",
    "barrier",
    "cleanup",
]


def env_world_size() -> int:
    """The number of processes ``torchrun`` asked for (``WORLD_SIZE``), 1 without it.

    It can be read before any process group exists, so a launcher can check its
    arguments (a batch too small for the processes, say) before anything starts.

    Raises:
        ValueError: If ``WORLD_SIZE`` is set but is not an integer >= 1.

    Example:
        >>> env_world_size() >= 1
        True
    """
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"WORLD_SIZE must be an integer >= 1, got {value!r}")
    return n


def default_device() -> torch.device:
    """The device this process should use: its GPU, else Apple's MPS, else the CPU.

    Under ``torchrun`` each process on a machine takes the GPU numbered by its
    ``LOCAL_RANK``; a single process takes ``cuda:0``. Move models and batches there
    (``model.to(default_device())``). Thread limits (``torch.set_num_threads``) only
    matter on the CPU.

    Returns:
        A ``torch.device``: ``cuda:<LOCAL_RANK>``, ``mps`` or ``cpu``.

    Example:
        >>> str(default_device()) in ("cpu", "mps") or str(default_device()).startswith("cuda")
        True
    """
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local % torch.cuda.device_count())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available() and env_world_size() == 1:
        return torch.device("mps")
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> bool:
    """Start the process group from ``torchrun``'s environment, if there is one.

    Does nothing for a single process (no ``WORLD_SIZE``, or 1) or when a group
    already exists. The backend is ``nccl`` when CUDA is available and ``gloo``
    otherwise; on a GPU the process's device is set to its ``LOCAL_RANK``.

    Args:
        backend: Force a backend (``"gloo"``, ``"nccl"``). Defaults to None (chosen
            as above).

    Returns:
        True if this process is part of a group of more than one process.

    Raises:
        ValueError: If ``WORLD_SIZE`` > 1 but ``RANK`` or ``MASTER_ADDR`` is missing
            (the script was not started by ``torchrun``).

    Example:
        >>> init_distributed()  # a plain python run: nothing to start
        False
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    n = env_world_size()
    if n == 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={n} but {missing} are not set; start the script with "
            "torchrun --nproc_per_node=N (it sets RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(default_device())
    dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    """True inside a process group of more than one process.

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of processes in the group (1 without one).

    Example:
        >>> world_size()
        1
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's global rank (0 without a group).

    Example:
        >>> rank()
        0
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0, the one process that shows progress bars and writes files.

    Example:
        >>> is_main_process()
        True
    """
    return rank() == 0


def all_reduce_mean(values: Mapping[str, float], weight: float = 1.0) -> dict[str, float]:
    """The weighted mean of each value over all processes (the values themselves alone).

    Each process contributes ``value * weight`` and ``weight``; the result is
    ``sum(value * weight) / sum(weight)``, the same on every rank. Pass the number of
    samples a process saw as ``weight`` so that uneven shards average correctly.

    Args:
        values: ``{name: float}``, the same names on every rank.
        weight: This process's weight (e.g. its sample count). Defaults to 1.0.

    Returns:
        ``{name: mean}`` as Python floats.

    Example:
        >>> all_reduce_mean({"loss": 0.5}, weight=4)
        {'loss': 0.5}
    """
    if not is_distributed():
        return {k: float(v) for k, v in values.items()}
    names = sorted(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(values[k]) * weight for k in names] + [float(weight)], dtype=torch.float64)
    t = t.to(device)
    dist.all_reduce(t)
    t = t.cpu()
    return {k: float(t[i] / t[-1]) for i, k in enumerate(names)}


def barrier() -> None:
    """Wait for every process (no-op for a single process).

    Example:
        >>> barrier()
    """
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Destroy the process group, if one was started.

    Example:
        >>> cleanup()
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
