"""3D ResNets for volumes (I3D style), and the 2D ResNet they are inflated from.

Papers:
    - He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
      https://arxiv.org/abs/1512.03385 (the blocks and the 18 to 152 layers).
    - Carreira and Zisserman, "Quo Vadis, Action Recognition? A New Model and the
      Kinetics Dataset", CVPR 2017, https://arxiv.org/abs/1705.07750 (inflation, I3D).
    - Hara et al., "Can Spatiotemporal 3D CNNs Retrace the History of 2D CNNs and
      ImageNet?", CVPR 2018, https://arxiv.org/abs/1711.09577 (3D ResNets).

The 3D network follows the ``ResNet3d`` backbone of mmaction2 (kernels, strides,
padding, pooling and the ``inflate`` pattern), written in plain PyTorch without mmcv.

**One code path for 2D and 3D.** Every layer is looked up in the
:mod:`mednets.torch.core` tables by ``spatial_dims``. Kernels, strides and paddings are
written as 3D triples ``(t, s, s)`` (``t`` along depth, ``s`` in-plane); in 2D the depth
entry is dropped. So the 2D network *is* the 3D network with the depth axis removed, and
every setting that acts only along depth (``conv1_kernel[0]``, ``conv1_stride_t``,
``pool1_stride_t``, ``with_pool2``, ``temporal_strides``, ``inflate``,
``inflate_style``) has no effect when ``spatial_dims=2``.

**The depth axis.** Kernels, strides and paddings are written ``(t, s, s)``: ``t`` acts
on the *first* spatial axis of a ``(B, C, D, H, W)`` input, ``s`` on the last two. This
is the layout of mmaction2 and I3D (``(B, C, T, H, W)``, ``T`` = frames), so their
checkpoints keep their ``(t, s, s)`` kernels. For a volume, the axis that plays ``t`` is
the **slice axis z**: the axis of coarse spacing, along which neighbouring slices
differ most, while the in-plane ``(1, 3, 3)`` kernels act on the two in-plane axes x
and y. A :mod:`mednets.data` volume is ``(C, X, Y, Z)`` (RAS, z last), so move z first
with :func:`mednets.data.depth_first` (``(C, X, Y, Z) -> (C, Z, X, Y)``, labels
``(X, Y, Z) -> (Z, X, Y)``) before batching, and come back with
:func:`mednets.data.depth_last`. Fed a ``(C, X, Y, Z)`` array as it is, the network
would take x (left-right) for the slice axis: its in-plane kernels would run across
slices and its temporal kernels along left-right. ``tests/test_torch_depth_axis.py``
checks the rule with hand-set kernels.

**Names.** Modules follow torchvision's ResNet naming, in 2D *and* in 3D: ``conv1``,
``bn1``, ``layer1.0.conv1``, ``layer1.0.bn1``, ``layer1.0.downsample.0`` (conv) and
``.1`` (BN), and ``fc`` for the optional head. A 2D checkpoint therefore has exactly the
keys of the 3D model, and :func:`mednets.torch.inflate.inflate_2d_weights` maps key to
key. mmaction2 (and the seed's printout) wrap each conv and its BN in a ``ConvModule``,
giving ``conv1.conv`` / ``conv1.bn``; the mapping is
``conv1.conv -> conv1``, ``conv1.bn -> bn1``, ``layerN.i.convK.conv -> layerN.i.convK``,
``layerN.i.convK.bn -> layerN.i.bnK``, ``layerN.i.downsample.conv -> downsample.0``,
``layerN.i.downsample.bn -> downsample.1``.

Example:
    >>> import torch
    >>> from mednets.torch.resnet3d import i3d_resnet50
    >>> with torch.device("meta"):  # build and run without allocating memory
    ...     model = i3d_resnet50()
    ...     y = model(torch.empty(1, 3, 32, 224, 224))
    >>> tuple(y.shape)
    (1, 2048, 4, 7, 7)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mednets.torch.core import ADAPTIVE_AVG_POOL, BATCHNORM, CONV, MAXPOOL, check_input
from mednets.utils import check_spatial_dims

__all__ = [
    "ResidualBlock3d",
    "BasicBlock3d",
    "Bottleneck3d",
    "ResNet3d",
    "ARCH_SETTINGS",
    "I3D_INFLATE",
    "INFLATE_STYLES",
    "resnet3d",
    "i3d_resnet50",
    "resnet2d",
]

INFLATE_STYLES = ("3x1x1", "3x3x3")

#: Every batch-norm class the networks use (for ``norm_eval`` and the initialisation).
_BATCHNORMS = tuple(BATCHNORM.values())

#: The per-block inflate pattern of I3D ResNet-50 (1 = the block convolves along depth).
I3D_INFLATE = ((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))


def _dims(triple: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """A 3D ``(t, h, w)`` setting in 3D; its in-plane part ``(h, w)`` in 2D."""
    triple = tuple(int(v) for v in triple)
    return triple if spatial_dims == 3 else triple[1:]


def _check_style(inflate_style: str) -> str:
    if inflate_style not in INFLATE_STYLES:
        raise ValueError(f"inflate_style must be one of {INFLATE_STYLES}, got {inflate_style!r}")
    return inflate_style


def _check_strides(spatial_stride: int, temporal_stride: int, spatial_dims: int) -> None:
    for name, value in (("spatial_stride", spatial_stride), ("temporal_stride", temporal_stride)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if spatial_dims == 2 and temporal_stride != 1:
        raise ValueError(f"temporal_stride must be 1 in 2D (there is no depth axis), got {temporal_stride}")


class ResidualBlock3d(nn.Module):
    """Base of the residual blocks: ``relu(branch(x) + shortcut(x))``, optionally checkpointed.

    Subclasses build ``conv*``/``bn*``, ``relu``, ``downsample`` (or None) and set
    ``with_cp``, and define ``_branch(x)``, the residual branch up to its last batch norm.
    With ``with_cp`` and gradients enabled, the branch and the shortcut run under
    :func:`torch.utils.checkpoint.checkpoint`: only the block input is stored for the
    backward pass, and the inside is recomputed then.
    """

    expansion = 1

    def __init__(
        self,
        spatial_stride: int,
        temporal_stride: int,
        inflate: bool,
        inflate_style: str,
        with_cp: bool,
        spatial_dims: int,
    ):
        """Check the settings the blocks share and keep them as attributes (no modules)."""
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.inflate_style = _check_style(inflate_style)
        _check_strides(spatial_stride, temporal_stride, self.spatial_dims)
        self.inflate, self.with_cp = bool(inflate), bool(with_cp)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:  # implemented by the subclasses
        raise TypeError(f"{type(self).__name__} must define _branch")

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self._branch(x) + identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, D, H, W) -> (B, channels * expansion, D / t, H / s, W / s)``."""
        if self.with_cp and torch.is_grad_enabled():
            # Keep only the block's input; recompute its inside during backward.
            out = checkpoint(self._inner, x, use_reentrant=False)
        else:
            out = self._inner(x)
        return self.relu(out)  # the activation comes after the addition


class BasicBlock3d(ResidualBlock3d):
    """The two-conv residual block of ResNet-18/34, in 3D (or 2D).

    Inflated, both convs are 3x3x3; otherwise 1x3x3 (in-plane only). The strides sit on
    the first conv. Each conv is followed by batch norm; ReLU follows the first BN and
    the residual addition.

    Paper: https://arxiv.org/abs/1512.03385 (Fig. 2), inflated as in
    https://arxiv.org/abs/1705.07750.

    Args:
        in_channels: Input channels.
        channels: Output channels (``channels * expansion``, with ``expansion = 1``).
        spatial_stride: In-plane stride of the first conv. Defaults to 1.
        temporal_stride: Depth stride of the first conv (3D only). Defaults to 1.
        downsample: Shortcut module (conv + BN) when the shape changes, else None
            (identity). Defaults to None.
        inflate: Convolve along depth (3x3x3) or not (1x3x3). Ignored in 2D.
            Defaults to True.
        inflate_style: Accepted for a common signature with :class:`Bottleneck3d`;
            it does not change a basic block. Defaults to "3x1x1".
        with_cp: Activation checkpointing: store only the block input for backward
            and recompute the rest. Defaults to False.
        spatial_dims: 3 (``(B, C, D, H, W)``) or 2 (``(B, C, H, W)``). Defaults to 3.

    Example:
        >>> block = BasicBlock3d(8, 8)
        >>> tuple(block(torch.zeros(1, 8, 4, 16, 16)).shape)
        (1, 8, 4, 16, 16)
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        channels: int,
        spatial_stride: int = 1,
        temporal_stride: int = 1,
        downsample: nn.Module | None = None,
        inflate: bool = True,
        inflate_style: str = "3x1x1",
        with_cp: bool = False,
        spatial_dims: int = 3,
    ):
        super().__init__(spatial_stride, temporal_stride, inflate, inflate_style, with_cp, spatial_dims)
        spatial_dims = self.spatial_dims
        conv, norm = CONV[spatial_dims], BATCHNORM[spatial_dims]
        kt = 3 if inflate else 1  # kernel size along depth
        self.conv1 = conv(
            in_channels,
            channels,
            _dims((kt, 3, 3), spatial_dims),
            stride=_dims((temporal_stride, spatial_stride, spatial_stride), spatial_dims),
            padding=_dims((kt // 2, 1, 1), spatial_dims),
            bias=False,
        )
        self.bn1 = norm(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(
            channels,
            channels * self.expansion,
            _dims((kt, 3, 3), spatial_dims),
            padding=_dims((kt // 2, 1, 1), spatial_dims),
            bias=False,
        )
        self.bn2 = norm(channels * self.expansion)
        self.downsample = downsample

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (B, channels, D / t, H / s, W / s)
        return self.bn2(self.conv2(out))


class Bottleneck3d(ResidualBlock3d):
    """The 1-3-1 bottleneck block of ResNet-50/101/152, in 3D (or 2D).

    The middle conv carries the strides (the "pytorch" style, as in torchvision).
    Temporal kernels by setting:

    ============  ===========  ===========  ======
    inflate       conv1        conv2        conv3
    ============  ===========  ===========  ======
    no            1x1x1        1x3x3        1x1x1
    ``3x1x1``     3x1x1        1x3x3        1x1x1
    ``3x3x3``     1x1x1        3x3x3        1x1x1
    ============  ===========  ===========  ======

    Paper: https://arxiv.org/abs/1512.03385 (Fig. 5), inflated as in
    https://arxiv.org/abs/1705.07750.

    Args:
        in_channels: Input channels.
        channels: Width of the bottleneck; the output has ``channels * 4``.
        spatial_stride: In-plane stride of conv2. Defaults to 1.
        temporal_stride: Depth stride of conv2 (3D only). Defaults to 1.
        downsample: Shortcut module (conv + BN) when the shape changes, else None.
            Defaults to None.
        inflate: Convolve along depth somewhere in the block. Ignored in 2D.
            Defaults to True.
        inflate_style: "3x1x1" (depth on conv1) or "3x3x3" (depth on conv2).
            Defaults to "3x1x1".
        with_cp: Activation checkpointing. Defaults to False.
        spatial_dims: 3 or 2. Defaults to 3.

    Example:
        >>> block = Bottleneck3d(16, 4)
        >>> tuple(block(torch.zeros(1, 16, 4, 8, 8)).shape)
        (1, 16, 4, 8, 8)
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        channels: int,
        spatial_stride: int = 1,
        temporal_stride: int = 1,
        downsample: nn.Module | None = None,
        inflate: bool = True,
        inflate_style: str = "3x1x1",
        with_cp: bool = False,
        spatial_dims: int = 3,
    ):
        super().__init__(spatial_stride, temporal_stride, inflate, inflate_style, with_cp, spatial_dims)
        spatial_dims = self.spatial_dims
        conv, norm = CONV[spatial_dims], BATCHNORM[spatial_dims]
        if not inflate:
            kt1, kt2 = 1, 1
        elif inflate_style == "3x1x1":
            kt1, kt2 = 3, 1
        else:
            kt1, kt2 = 1, 3
        self.conv1 = conv(
            in_channels,
            channels,
            _dims((kt1, 1, 1), spatial_dims),
            padding=_dims((kt1 // 2, 0, 0), spatial_dims),
            bias=False,
        )
        self.bn1 = norm(channels)
        self.conv2 = conv(
            channels,
            channels,
            _dims((kt2, 3, 3), spatial_dims),
            stride=_dims((temporal_stride, spatial_stride, spatial_stride), spatial_dims),
            padding=_dims((kt2 // 2, 1, 1), spatial_dims),
            bias=False,
        )
        self.bn2 = norm(channels)
        self.conv3 = conv(channels, channels * self.expansion, _dims((1, 1, 1), spatial_dims), bias=False)
        self.bn3 = norm(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (B, channels, D, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # (B, channels, D / t, H / s, W / s)
        return self.bn3(self.conv3(out))  # (B, 4 * channels, ...): no activation here


#: num_layers -> (block class, stage_blocks: the number of blocks in each of the four stages)
ARCH_SETTINGS = {
    18: (BasicBlock3d, (2, 2, 2, 2)),
    34: (BasicBlock3d, (3, 4, 6, 3)),
    50: (Bottleneck3d, (3, 4, 6, 3)),
    101: (Bottleneck3d, (3, 4, 23, 3)),
    152: (Bottleneck3d, (3, 8, 36, 3)),
}


def _per_stage(value: int | Sequence, name: str, n_stages: int = 4) -> tuple:
    if isinstance(value, int):
        return (value,) * n_stages
    value = tuple(value)
    if len(value) != n_stages:
        raise ValueError(f"{name} must have one entry per stage ({n_stages}), got {len(value)}: {value}")
    return value


def _inflate_pattern(inflate: int | Sequence, stage_blocks: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Expand ``inflate`` (an int, one int per stage, or one tuple per stage) to one flag per block."""
    per_stage = _per_stage(inflate, "inflate")
    pattern = []
    for i, (flags, n) in enumerate(zip(per_stage, stage_blocks)):
        if isinstance(flags, (int, bool)):
            flags = (int(flags),) * n
        flags = tuple(int(f) for f in flags)
        if len(flags) != n:
            raise ValueError(
                f"inflate pattern of stage {i + 1} must have one flag per block ({n}), "
                f"got {len(flags)}: {flags}"
            )
        if any(f not in (0, 1) for f in flags):
            raise ValueError(f"inflate flags must be 0 or 1, got {flags} in stage {i + 1}")
        pattern.append(flags)
    return tuple(pattern)


class ResNet3d(nn.Module):
    """ResNet backbone for volumes (``spatial_dims=3``) or images (``spatial_dims=2``).

    Stem: conv1 (``conv1_kernel``, stride ``(conv1_stride_t, 2, 2)``) -> BN -> ReLU ->
    max-pool (kernel 1x3x3, stride ``(pool1_stride_t, 2, 2)``). Then four stages of
    residual blocks (``layer1`` .. ``layer4``) with 64, 128, 256, 512 bottleneck widths
    (times ``init_filters / 64``); stages 2 to 4 halve the in-plane size. With
    ``with_pool2``, a (2,1,1) max-pool halves the depth between stage 1 and stage 2.

    Paper: https://arxiv.org/abs/1512.03385 (ResNet), https://arxiv.org/abs/1705.07750
    (I3D), https://arxiv.org/abs/1711.09577 (3D ResNets).

    Args:
        num_layers: 18, 34, 50, 101 or 152 (the blocks and ``stage_blocks`` come from
            :data:`ARCH_SETTINGS`).
        in_channels: Input channels. Defaults to 3.
        init_filters: Channels of the stem (64 in the paper); stage ``i`` has
            ``init_filters * 2**i`` bottleneck channels. Defaults to 64.
        num_classes: If given, add a global average pool and a linear head ``fc``, and
            return logits ``(B, num_classes)``. Defaults to None (backbone only).
        spatial_dims: 3 or 2 (see the module docstring: 2 drops every depth setting).
            Defaults to 3.
        spatial_strides: In-plane stride of the first block of each stage.
            Defaults to (1, 2, 2, 2).
        temporal_strides: Depth stride of the first block of each stage.
            Defaults to (1, 1, 1, 1).
        conv1_kernel: Stem kernel ``(t, h, w)``; each entry odd. Defaults to (3, 7, 7).
        conv1_stride_s: In-plane stride of the stem conv. Defaults to 2.
        conv1_stride_t: Depth stride of the stem conv. Defaults to 1.
        pool1_stride_s: In-plane stride of the stem max-pool. Defaults to 2.
        pool1_stride_t: Depth stride of the stem max-pool (its depth kernel is 1, so a
            stride of 2 keeps every other slice). Defaults to 1.
        with_pool2: (2,1,1) max-pool after stage 1. Defaults to True.
        inflate: Which blocks convolve along depth: an int for all blocks, one int per
            stage, or one tuple of 0/1 per stage with one flag per block.
            Defaults to (1, 1, 1, 1).
        inflate_style: "3x1x1" or "3x3x3" (bottleneck blocks only). Defaults to "3x1x1".
        frozen_stages: Freeze (no gradient, BN in eval mode) the stem when >= 0 and
            stages 1..``frozen_stages``; -1 freezes nothing. Defaults to -1.
        norm_eval: Keep every BN in eval mode (running statistics fixed) even in
            ``train()``; useful for tiny batches. Defaults to False.
        with_cp: Activation checkpointing in every block. Defaults to False.
        return_stages: Return the list of the four stage outputs instead of the last
            one (not with ``num_classes``). Defaults to False.
        zero_init_residual: Start the last BN of every block at zero, so each block
            starts as the identity. Defaults to False.
        dropout: Dropout before ``fc`` (only with ``num_classes``). Defaults to 0.0.

    Shapes:
        ``(B, in_channels, D, H, W) -> (B, 8 * init_filters * e, D', H / 32, W / 32)``
        with ``e = 4`` for 50 layers or more (1 otherwise), or ``(B, num_classes)``.
        ``D`` is the slice axis (see the module docstring). Every in-plane size >= 1 is
        accepted (the strides round up); with ``pool2`` in 3D, the depth must be at least
        ``conv1_stride_t * pool1_stride_t + 1`` (:attr:`min_spatial_size`), so that two
        slices reach ``pool2``. A smaller input, or a wrong rank or channel count, raises
        a ``ValueError`` naming the input shape and the smallest size, when called.
        Stage outputs are taken after each stage; stage 1 before ``pool2``, as the
        seed's printout shows it (mmaction2's own forward returns it after ``pool2``).

    Example:
        >>> model = ResNet3d(18, init_filters=8)
        >>> tuple(model(torch.zeros(1, 3, 8, 64, 64)).shape)  # pool2 halves the depth
        (1, 64, 4, 2, 2)
    """

    def __init__(
        self,
        num_layers: int,
        in_channels: int = 3,
        init_filters: int = 64,
        num_classes: int | None = None,
        spatial_dims: int = 3,
        spatial_strides: Sequence[int] = (1, 2, 2, 2),
        temporal_strides: Sequence[int] = (1, 1, 1, 1),
        conv1_kernel: Sequence[int] = (3, 7, 7),
        conv1_stride_s: int = 2,
        conv1_stride_t: int = 1,
        pool1_stride_s: int = 2,
        pool1_stride_t: int = 1,
        with_pool2: bool = True,
        inflate: int | Sequence = (1, 1, 1, 1),
        inflate_style: str = "3x1x1",
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        return_stages: bool = False,
        zero_init_residual: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if num_layers not in ARCH_SETTINGS:
            raise ValueError(f"num_layers must be one of {sorted(ARCH_SETTINGS)}, got {num_layers!r}")
        spatial_dims = check_spatial_dims(spatial_dims)
        _check_style(inflate_style)
        for name, value in (("in_channels", in_channels), ("init_filters", init_filters)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        conv1_kernel = tuple(int(k) for k in conv1_kernel)
        if len(conv1_kernel) != 3 or any(k < 1 or k % 2 == 0 for k in conv1_kernel):
            raise ValueError(f"conv1_kernel must be 3 odd positive sizes (t, h, w), got {conv1_kernel}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
        if num_classes is not None and (int(num_classes) != num_classes or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
        if num_classes is not None and return_stages:
            raise ValueError("return_stages=True returns features; it cannot be combined with num_classes")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        spatial_strides = _per_stage(spatial_strides, "spatial_strides")
        temporal_strides = _per_stage(temporal_strides, "temporal_strides")
        if spatial_dims == 2:  # the depth axis does not exist in 2D
            temporal_strides, conv1_stride_t, pool1_stride_t, with_pool2 = (1,) * 4, 1, 1, False

        block, stage_blocks = ARCH_SETTINGS[num_layers]
        self.num_layers, self.in_channels, self.spatial_dims = num_layers, int(in_channels), spatial_dims
        self.stage_blocks = stage_blocks
        # The smallest input: every conv and the stem's max-pool are padded, so any size
        # >= 1 goes through them (the output size is ceil(n / stride)); only pool2
        # (kernel 2 along depth, no padding) needs two slices after the stem's depth
        # strides, i.e. n_stem = ceil(ceil(n / conv1_stride_t) / pool1_stride_t) >= 2.
        min_depth = conv1_stride_t * pool1_stride_t + 1 if with_pool2 else 1
        self.min_spatial_size = (min_depth, 1, 1)[3 - spatial_dims :]
        self.inflate = _inflate_pattern(inflate, stage_blocks)
        self.inflate_style, self.frozen_stages, self.norm_eval = inflate_style, frozen_stages, norm_eval
        self.with_cp, self.return_stages, self.num_classes = with_cp, return_stages, num_classes
        conv, norm, pool = CONV[spatial_dims], BATCHNORM[spatial_dims], MAXPOOL[spatial_dims]

        # Stem: (B, C, D, H, W) -> (B, F, D / conv1_stride_t / pool1_stride_t, H / 4, W / 4)
        self.conv1 = conv(
            in_channels,
            init_filters,
            _dims(conv1_kernel, spatial_dims),
            stride=_dims((conv1_stride_t, conv1_stride_s, conv1_stride_s), spatial_dims),
            padding=_dims(tuple(k // 2 for k in conv1_kernel), spatial_dims),
            bias=False,
        )
        self.bn1 = norm(init_filters)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = pool(
            kernel_size=_dims((1, 3, 3), spatial_dims),
            stride=_dims((pool1_stride_t, pool1_stride_s, pool1_stride_s), spatial_dims),
            padding=_dims((0, 1, 1), spatial_dims),
        )
        self.pool2 = nn.MaxPool3d(kernel_size=(2, 1, 1), stride=(2, 1, 1)) if with_pool2 else None

        channels_in = init_filters
        self.out_channels = []
        for i, n_blocks in enumerate(stage_blocks):
            channels = init_filters * 2**i
            layer = self._make_layer(
                block,
                channels_in,
                channels,
                n_blocks,
                spatial_strides[i],
                temporal_strides[i],
                self.inflate[i],
            )
            self.add_module(f"layer{i + 1}", layer)
            channels_in = channels * block.expansion
            self.out_channels.append(channels_in)

        self.avgpool = self.dropout = self.fc = None
        if num_classes is not None:
            self.avgpool = ADAPTIVE_AVG_POOL[spatial_dims](1)
            self.dropout = nn.Dropout(dropout) if dropout > 0 else None
            self.fc = nn.Linear(channels_in, num_classes)

        self._init_weights(zero_init_residual)
        self._freeze_stages()

    def _make_layer(self, block, channels_in, channels, n_blocks, spatial_stride, temporal_stride, inflate):
        channels_out = channels * block.expansion
        downsample = None
        # The shortcut needs a projection whenever the block changes the shape, including
        # a depth-only stride (the seed checked only the in-plane stride and the channels).
        if spatial_stride != 1 or temporal_stride != 1 or channels_in != channels_out:
            downsample = nn.Sequential(
                CONV[self.spatial_dims](
                    channels_in,
                    channels_out,
                    _dims((1, 1, 1), self.spatial_dims),
                    stride=_dims((temporal_stride, spatial_stride, spatial_stride), self.spatial_dims),
                    bias=False,
                ),
                BATCHNORM[self.spatial_dims](channels_out),
            )
        common = dict(inflate_style=self.inflate_style, with_cp=self.with_cp, spatial_dims=self.spatial_dims)
        blocks = [
            block(
                channels_in,
                channels,
                spatial_stride,
                temporal_stride,
                downsample,
                inflate=bool(inflate[0]),
                **common,
            )
        ]
        for j in range(1, n_blocks):
            blocks.append(block(channels_out, channels, inflate=bool(inflate[j]), **common))
        return nn.Sequential(*blocks)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, _BATCHNORMS):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck3d):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock3d):
                    nn.init.zeros_(m.bn2.weight)

    @property
    def stages(self) -> list[nn.Sequential]:
        """The four stages ``[layer1, layer2, layer3, layer4]``."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + self.stages[: self.frozen_stages]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> ResNet3d:
        """Set training mode, keeping frozen stages (and, with ``norm_eval``, every BN) in eval."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BATCHNORMS):
                    m.eval()
        return self

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each of the four stages (stage 1 before ``pool2``).

        Raises:
            ValueError: If the input's rank, channels or size do not fit (see
                :func:`mednets.torch.core.check_input`).
        """
        check_input(
            x,
            self.spatial_dims,
            self.in_channels,
            min_size=self.min_spatial_size,
            what=f"ResNet3d({self.num_layers}, spatial_dims={self.spatial_dims})",
        )
        x = self.relu(self.bn1(self.conv1(x)))  # (B, F, D / ct, H / 2, W / 2)
        x = self.maxpool(x)  # (B, F, D / ct / pt, H / 4, W / 4)
        outs = []
        for i, layer in enumerate(self.stages):
            x = layer(x)
            outs.append(x)
            if i == 0 and self.pool2 is not None:
                x = self.pool2(x)  # depth halved before stage 2
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``(B, C, D, H, W)`` -> last stage features, list of stages, or ``(B, num_classes)``."""
        stages = self.forward_stages(x)
        if self.return_stages:
            return stages
        x = stages[-1]
        if self.fc is None:
            return x
        x = torch.flatten(self.avgpool(x), 1)  # (B, channels)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)  # (B, num_classes)


def resnet3d(num_layers: int, in_channels: int = 3, **kwargs: Any) -> ResNet3d:
    """A 3D ResNet with ``num_layers`` layers and mmaction2's defaults (see :class:`ResNet3d`).

    Input ``(B, C, D, H, W)`` with the slice axis first (:func:`mednets.data.depth_first`).

    Example:
        >>> tuple(resnet3d(18, init_filters=8)(torch.zeros(1, 3, 4, 32, 32)).shape)
        (1, 64, 2, 1, 1)
    """
    return ResNet3d(num_layers, in_channels=in_channels, spatial_dims=3, **kwargs)


def i3d_resnet50(in_channels: int = 3, num_classes: int | None = None, **kwargs: Any) -> ResNet3d:
    """The I3D ResNet-50 backbone of mmaction2 (27,223,872 parameters without a head).

    conv1 (5,7,7) with stride (2,2,2); max-pool (1,3,3) with stride (2,2,2); pool2
    (2,1,1) after stage 1; inflate pattern :data:`I3D_INFLATE`, style ``3x1x1``.
    A ``(B, C, T, H, W)`` input gives ``(B, 2048, T / 8, H / 32, W / 32)``; for a
    volume, ``T`` is the slice axis (:func:`mednets.data.depth_first`). ``T`` must be at
    least 5 (two slices must reach ``pool2``); a shorter input raises a ``ValueError``.

    Paper: https://arxiv.org/abs/1705.07750.

    Args:
        in_channels: Input channels. Defaults to 3.
        num_classes: Add a classification head. Defaults to None.
        **kwargs: Any other :class:`ResNet3d` setting (``init_filters``, ``with_cp``,
            ``frozen_stages``, ...).

    Example:
        >>> m = i3d_resnet50(init_filters=8)
        >>> tuple(m(torch.zeros(1, 3, 16, 64, 64)).shape)
        (1, 256, 2, 2, 2)
    """
    settings = dict(
        conv1_kernel=(5, 7, 7),
        conv1_stride_t=2,
        pool1_stride_t=2,
        with_pool2=True,
        inflate=I3D_INFLATE,
        inflate_style="3x1x1",
    )
    settings.update(kwargs)
    return ResNet3d(50, in_channels=in_channels, num_classes=num_classes, spatial_dims=3, **settings)


def resnet2d(
    num_layers: int, in_channels: int = 3, num_classes: int | None = 1000, **kwargs: Any
) -> ResNet3d:
    """The 2D ResNet of He et al. with torchvision's module and ``state_dict`` names.

    Built by the same code as the 3D network (``spatial_dims=2``), so its keys are those
    of the 3D network and of ``torchvision.models.resnet{num_layers}``: with the default
    1000-class head its parameter count equals torchvision's (11,689,512 for 18 layers,
    25,557,032 for 50) and a torchvision checkpoint loads with ``load_state_dict``.

    Paper: https://arxiv.org/abs/1512.03385.

    Args:
        num_layers: 18, 34, 50, 101 or 152.
        in_channels: Input channels. Defaults to 3.
        num_classes: Classes of the ``fc`` head, or None for the backbone only.
            Defaults to 1000.
        **kwargs: Other :class:`ResNet3d` settings that make sense in 2D
            (``init_filters``, ``frozen_stages``, ``norm_eval``, ``with_cp``, ...).

    Example:
        >>> tuple(resnet2d(18, num_classes=2, init_filters=8)(torch.zeros(1, 3, 64, 64)).shape)
        (1, 2)
    """
    return ResNet3d(num_layers, in_channels=in_channels, num_classes=num_classes, spatial_dims=2, **kwargs)
