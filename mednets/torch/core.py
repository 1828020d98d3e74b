"""Layer tables keyed by ``spatial_dims``, so one PyTorch block serves 2D and 3D.

``CONV[3]`` is ``nn.Conv3d``, ``CONV[2]`` is ``nn.Conv2d``, and so on: a small version of
MONAI's layer factories.
"""

from __future__ import annotations

from torch import nn

from mednets.utils import check_spatial_dims

__all__ = [
    "CONV",
    "CONV_TRANSPOSE",
    "BATCHNORM",
    "MAXPOOL",
    "AVGPOOL",
    "DROPOUT",
    "ADAPTIVE_AVG_POOL",
    "check_spatial_dims",
    "spatial_dims_of",
]

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
BATCHNORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
AVGPOOL = {2: nn.AvgPool2d, 3: nn.AvgPool3d}
DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}
ADAPTIVE_AVG_POOL = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


def spatial_dims_of(x, in_channels: int | None = None) -> int:
    """Spatial dims of a batched channels-first tensor, checking rank and channels.

    Raises:
        ValueError: if the rank is not 4 or 5, or the channel count is not
            ``in_channels``; the message names the expected and actual shapes.
    """
    if x.ndim not in (4, 5):
        raise ValueError(
            f"expected a batched tensor (B, C, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}"
        )
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(f"expected {in_channels} input channels (axis 1), got shape {tuple(x.shape)}")
    return x.ndim - 2
