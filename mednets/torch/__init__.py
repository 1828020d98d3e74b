"""PyTorch models of the book. Tensors are channels-first: (B, C, D, H, W) in 3D.

Importing this package imports PyTorch. Sub-modules (``core``, ``resnet3d``,
``inflate``, ``nvnet``, ``losses``, ``inference``, ``train``, ``data``, ...) are imported
on demand. Every network checks its input's rank, channels and spatial size when it is
called (:func:`mednets.torch.core.check_input`). Networks whose kernels treat one axis
specially (``resnet3d``) take the slice axis first: see :func:`mednets.data.depth_first`.
"""

from __future__ import annotations

import torch

__all__ = ["count_params"]


def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of a PyTorch module (buffers such as BN statistics excluded).

    Args:
        module: Any ``torch.nn.Module``.
        trainable_only: Count only parameters with ``requires_grad``. Defaults to False.

    Returns:
        The parameter count as a Python int.

    Raises:
        ValueError: If ``module`` is not a ``torch.nn.Module``.

    Example:
        >>> count_params(torch.nn.Linear(3, 2))
        8
    """
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(module).__name__}")
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))
