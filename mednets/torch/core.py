"""Layer tables keyed by ``spatial_dims``, so one PyTorch block serves 2D and 3D, and the
input check every network runs when it is called.

``CONV[3]`` is ``nn.Conv3d``, ``CONV[2]`` is ``nn.Conv2d``, and so on: a small version of
MONAI's layer factories.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mednets.utils import check_divisible

__all__ = [
    "CONV",
    "BATCHNORM",
    "MAXPOOL",
    "DROPOUT",
    "ADAPTIVE_AVG_POOL",
    "spatial_dims_of",
    "check_input",
]

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
BATCHNORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}
ADAPTIVE_AVG_POOL = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


def _layout(spatial_dims: int) -> str:
    return "(B, C, D, H, W)" if spatial_dims == 3 else "(B, C, H, W)"


def spatial_dims_of(x: torch.Tensor, in_channels: int | None = None) -> int:
    """Spatial dims of a batched channels-first tensor, checking rank and channels.

    Args:
        x: A tensor ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        in_channels: The expected channel count, or None not to check it. Defaults to None.

    Returns:
        2 or 3.

    Raises:
        ValueError: if the rank is not 4 or 5, or the channel count is not
            ``in_channels``; the message names the expected and actual shapes.

    Example:
        >>> spatial_dims_of(torch.zeros(1, 2, 4, 4, 4), in_channels=2)
        3
    """
    if x.ndim not in (4, 5):
        raise ValueError(
            f"expected a batched tensor (B, C, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}"
        )
    check_input(x, x.ndim - 2, in_channels)
    return x.ndim - 2


def check_input(
    x: torch.Tensor,
    spatial_dims: int,
    in_channels: int | None,
    min_size: int | Sequence[int] = 1,
    divisor: int = 1,
    what: str = "input",
) -> None:
    """Check a network's input when it is called: rank, channels and spatial size.

    A network calls this at the top of ``forward``, so an input it cannot take fails
    with a message that names the input shape and the sizes the network accepts,
    instead of deep inside PyTorch ("Output size is too small", a size mismatch in an
    addition).

    Args:
        x: The input tensor, channels first.
        spatial_dims: 2 (``(B, C, H, W)``) or 3 (``(B, C, D, H, W)``).
        in_channels: Expected channels (axis 1), or None not to check them.
        min_size: The smallest size the network accepts, one int for every spatial
            axis or one per axis. Defaults to 1.
        divisor: Every spatial size must be a multiple of this (the total stride of a
            network whose skips are added or concatenated). Defaults to 1.
        what: The network's name, for the message. Defaults to "input".

    Raises:
        ValueError: If the rank, the channels or a spatial size do not fit; the message
            names the input shape, the smallest sizes and, for ``divisor``, the nearest
            valid sizes per axis.

    Example:
        >>> check_input(torch.zeros(1, 3, 4, 64, 64), 3, 3, min_size=(5, 1, 1), what="I3D")
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: I3D: input shape (1, 3, 4, 64, 64) is too small: axis 2 has 4 < 5; ... is (5, 1, 1)
    """
    shape = tuple(x.shape)
    if x.ndim != spatial_dims + 2:
        raise ValueError(
            f"{what}: expected a batched {spatial_dims}D input {_layout(spatial_dims)} "
            f"with C={in_channels}, got shape {shape} (rank {x.ndim}, expected {spatial_dims + 2})"
        )
    if in_channels is not None and shape[1] != in_channels:
        raise ValueError(
            f"{what}: expected {in_channels} input channels (axis 1) in {_layout(spatial_dims)}, "
            f"got {shape[1]} in shape {shape}"
        )
    spatial = shape[2:]
    mins = (int(min_size),) * spatial_dims if isinstance(min_size, int) else tuple(min_size)
    small = [f"axis {i + 2} has {s} < {m}" for i, (s, m) in enumerate(zip(spatial, mins)) if s < m]
    if small:
        raise ValueError(
            f"{what}: input shape {shape} is too small: {'; '.join(small)}; "
            f"the smallest spatial size it accepts is {mins}"
        )
    if divisor > 1:
        try:
            check_divisible(spatial, divisor, what=what)
        except ValueError as err:
            raise ValueError(f"{err} (input shape {shape})") from None
