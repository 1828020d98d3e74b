"""ResNet, DenseNet and Inception-ResNet classifiers for 2D or 3D inputs (Keras).

One builder per family; the dimension comes from ``input_shape`` (channels-last, no
batch axis): ``(H, W, C)`` builds a 2D network, ``(D, H, W, C)`` a 3D one. The
defaults are the configurations of the Chapter 1 seed code, with its bugs fixed.

All three share the same outline::

    stem: conv k^d (stride 1) -> max-pool 3^d, stride s          # size / s
    stages: stage 1 at that size, then each later stage starts by down-sampling by s
    head: global average pooling -> dropout -> dense(num_classes)

so the network's total stride per axis is ``s ** len(stages)``, and every spatial
size must be a multiple of it. Global average pooling (instead of a fixed-size
average pooling) makes the head independent of the input size.

Papers: ResNet https://arxiv.org/abs/1512.03385, DenseNet
https://arxiv.org/abs/1608.06993, Inception-ResNet https://arxiv.org/abs/1602.07261.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from mednets.keras.blocks import (
    dense_block,
    inception_resnet_block,
    reduction_block,
    residual_block,
    transition_layer,
)
from mednets.keras.core import (
    GLOBAL_AVG_POOL,
    MAXPOOL,
    InputCheck,
    as_spatial_tuple,
    check_final_activation,
    check_input_shape,
    check_positive_int,
    check_rate,
    conv_norm_act,
    norm_layer,
    spatial_dims_from_shape,
)

__all__ = [
    "resnet",
    "densenet",
    "inception_resnet",
    "CLASSIFIERS",
    "total_stride",
]


def total_stride(
    num_downsamples: int, down_strides: int | Sequence[int], spatial_dims: int
) -> tuple[int, ...]:
    """Total down-sampling factor per spatial axis after ``num_downsamples`` steps.

    Example:
        >>> total_stride(3, (2, 2, 1), 3)
        (8, 8, 1)
    """
    strides = as_spatial_tuple(down_strides, spatial_dims, "down_strides")
    return tuple(s**num_downsamples for s in strides)


def _check_stages(filters: Sequence[int], blocks: Sequence[int], what_f: str, what_b: str):
    filters, blocks = tuple(filters), tuple(blocks)
    if not filters or len(filters) != len(blocks):
        raise ValueError(
            f"{what_f} and {what_b} must be non-empty and of equal length, got "
            f"{what_f}={filters} ({len(filters)}) and {what_b}={blocks} ({len(blocks)})"
        )
    for f in filters:
        check_positive_int(f, what_f)
    for b in blocks:
        check_positive_int(b, what_b)
    return filters, blocks


def _stem(x, init_filters, stem_kernel, pool_strides, norm, act, name):
    """conv k^d stride 1 -> norm -> act -> max-pool 3^d with stride pool_strides."""
    dims = len(x.shape) - 2
    x = conv_norm_act(x, init_filters, stem_kernel, norm=norm, act=act, name=f"{name}_stem")
    # (B, *S, C0) -> (B, *S / s, C0); "same" padding keeps the border values honest
    return MAXPOOL[dims](pool_size=3, strides=pool_strides, padding="same", name=f"{name}_stem_pool")(x)


def _head(x, num_classes, include_top, pooling, dropout, final_activation, name):
    dims = len(x.shape) - 2
    if include_top or pooling == "avg":
        x = GLOBAL_AVG_POOL[dims](name=f"{name}_gap")(x)  # (B, *S, C) -> (B, C)
    elif pooling is not None:
        raise ValueError(f"pooling must be 'avg' or None, got {pooling!r}")
    if include_top:
        if dropout:
            x = layers.Dropout(dropout, name=f"{name}_head_drop")(x)
        x = layers.Dense(num_classes, activation=final_activation, name=f"{name}_head_dense")(
            x
        )  # (B, C) -> (B, num_classes)
    return x


def _check_common(
    input_shape,
    num_classes,
    init_filters,
    dropout,
    num_downsamples,
    down_strides,
    stem_kernel,
    final_activation,
    name,
):
    """Check the shared arguments; return the input shape, dims and per-axis down strides."""
    input_shape = tuple(input_shape)
    dims = spatial_dims_from_shape(input_shape)
    check_positive_int(num_classes, "num_classes")
    check_final_activation(final_activation, num_classes)
    check_positive_int(init_filters, "init_filters")
    check_positive_int(stem_kernel, "stem_kernel")
    check_rate(dropout)
    stride = total_stride(num_downsamples, down_strides, dims)
    check_input_shape(input_shape, stride, name=name)
    return input_shape, dims, as_spatial_tuple(down_strides, dims, "down_strides")


def _start(
    input_shape,
    num_classes,
    init_filters,
    dropout,
    num_downsamples,
    down_strides,
    stem_kernel,
    final_activation,
    norm,
    act,
    name,
):
    """Check the arguments, then ``keras.Input`` -> :class:`~mednets.keras.core.InputCheck`
    -> stem; return the input, the stem's output and the per-axis down strides."""
    input_shape, _, down = _check_common(
        input_shape,
        num_classes,
        init_filters,
        dropout,
        num_downsamples,
        down_strides,
        stem_kernel,
        final_activation,
        name,
    )
    inputs = keras.Input(input_shape, name=f"{name}_input")
    stride = tuple(s**num_downsamples for s in down)
    x = InputCheck(stride, input_shape[-1], name, name=f"{name}_input_check")(inputs)
    return inputs, _stem(x, init_filters, stem_kernel, down, norm, act, name), down


def resnet(
    input_shape: Sequence[int | None],
    num_classes: int = 2,
    init_filters: int = 32,
    stage_filters: Sequence[int] = (32, 64, 128),
    stage_blocks: Sequence[int] = (4, 8, 16),
    down_strides: int | Sequence[int] = 2,
    stem_kernel: int = 5,
    norm: str | None = "batch",
    act: str = "relu",
    dropout: float = 0.0,
    include_top: bool = True,
    pooling: str | None = "avg",
    final_activation: str | None = "softmax",
    name: str = "resnet",
) -> keras.Model:
    """ResNet classifier built from basic residual blocks, 2D or 3D.

    Stage i has ``stage_blocks[i]`` blocks of ``stage_filters[i]`` channels; every
    stage after the first starts with a strided block (projection shortcut).

    Paper: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
    https://arxiv.org/abs/1512.03385

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``; sizes divisible by
            ``down_strides ** len(stage_filters)``.
        num_classes: Output classes. Defaults to 2.
        init_filters: Channels of the stem convolution. Defaults to 32.
        stage_filters: Channels per stage. Defaults to (32, 64, 128) (the seed's).
        stage_blocks: Residual blocks per stage. Defaults to (4, 8, 16) (the seed's).
        down_strides: Stride of each down-sampling step, int or one per axis, e.g.
            (2, 2, 1) to keep a thin z axis. Defaults to 2.
        stem_kernel: Kernel size of the stem convolution. Defaults to 5.
        norm: Normalisation. Defaults to "batch".
        act: Activation. Defaults to "relu".
        dropout: Dropout before the classifier. Defaults to 0.0.
        include_top: Add the classifier. Defaults to True.
        pooling: Without the top, "avg" returns pooled features (B, C) and None the
            last feature map. Defaults to "avg".
        final_activation: None (logits), "sigmoid" or "softmax". Defaults to "softmax".
        name: Model name and layer-name prefix. Defaults to "resnet".

    Returns:
        A ``keras.Model``: (B, *S, C_in) -> (B, num_classes).

    Example:
        >>> m = resnet((32, 32, 32, 1), stage_filters=(8, 16), stage_blocks=(1, 1))
        >>> m.output_shape
        (None, 2)
    """
    stage_filters, stage_blocks = _check_stages(stage_filters, stage_blocks, "stage_filters", "stage_blocks")
    inputs, x, down = _start(
        input_shape,
        num_classes,
        init_filters,
        dropout,
        len(stage_filters),
        down_strides,
        stem_kernel,
        final_activation,
        norm,
        act,
        name,
    )
    for s, (filters, blocks) in enumerate(zip(stage_filters, stage_blocks), start=1):
        for b in range(1, blocks + 1):
            strides = down if (s > 1 and b == 1) else 1  # halve at the start of a stage
            x = residual_block(
                x, filters, strides=strides, norm=norm, act=act, name=f"{name}_stage{s}_block{b}"
            )
    outputs = _head(x, num_classes, include_top, pooling, dropout, final_activation, name)
    return keras.Model(inputs, outputs, name=name)


def densenet(
    input_shape: Sequence[int | None],
    num_classes: int = 2,
    init_filters: int = 32,
    stage_blocks: Sequence[int] = (6, 12, 18, 12),
    growth_rate: int | Sequence[int] = 32,
    reduction: float = 0.5,
    bottleneck: int = 4,
    down_strides: int | Sequence[int] = 2,
    stem_kernel: int = 5,
    norm: str | None = "batch",
    act: str = "relu",
    dropout: float = 0.0,
    include_top: bool = True,
    pooling: str | None = "avg",
    final_activation: str | None = "softmax",
    name: str = "densenet",
) -> keras.Model:
    """DenseNet-BC classifier (bottleneck layers and compressing transitions), 2D or 3D.

    Dense block i has ``stage_blocks[i]`` layers; a transition layer (compression
    ``reduction``, average pooling) sits between blocks. Normalisation and activation
    close the last block, because DenseNet layers are pre-activated.

    Paper: Huang et al., "Densely Connected Convolutional Networks", CVPR 2017,
    https://arxiv.org/abs/1608.06993

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``; sizes divisible by
            ``down_strides ** len(stage_blocks)``.
        num_classes: Output classes. Defaults to 2.
        init_filters: Channels of the stem convolution. Defaults to 32.
        stage_blocks: Layers per dense block. Defaults to (6, 12, 18, 12) (the seed's).
        growth_rate: k, an int for all blocks or one per block. Defaults to 32.
        reduction: Transition compression theta in (0, 1]. Defaults to 0.5.
        bottleneck: Bottleneck factor of each dense layer (0 for none). Defaults to 4.
        down_strides: Stride of each down-sampling step, int or one per axis.
            Defaults to 2.
        stem_kernel: Kernel size of the stem convolution. Defaults to 5.
        norm: Normalisation. Defaults to "batch".
        act: Activation. Defaults to "relu".
        dropout: Dropout inside dense layers and before the classifier. Defaults to 0.0.
        include_top: Add the classifier. Defaults to True.
        pooling: Without the top, "avg" or None (feature map). Defaults to "avg".
        final_activation: None (logits), "sigmoid" or "softmax". Defaults to "softmax".
        name: Model name and layer-name prefix. Defaults to "densenet".

    Returns:
        A ``keras.Model``: (B, *S, C_in) -> (B, num_classes).

    Example:
        >>> m = densenet((32, 32, 1), stage_blocks=(2, 2), growth_rate=4)
        >>> m.output_shape
        (None, 2)
    """
    stage_blocks = tuple(stage_blocks)
    growth = (growth_rate,) * len(stage_blocks) if isinstance(growth_rate, int) else tuple(growth_rate)
    _check_stages(growth, stage_blocks, "growth_rate", "stage_blocks")
    if not 0.0 < float(reduction) <= 1.0:
        raise ValueError(f"reduction must be in (0, 1], got {reduction!r}")
    inputs, x, down = _start(
        input_shape,
        num_classes,
        init_filters,
        dropout,
        len(stage_blocks),
        down_strides,
        stem_kernel,
        final_activation,
        norm,
        act,
        name,
    )
    for i, (num_layers, k) in enumerate(zip(stage_blocks, growth), start=1):
        if i > 1:
            x = transition_layer(
                x,
                reduction,
                strides=down,
                dropout=dropout,
                norm=norm,
                act=act,
                name=f"{name}_transition{i - 1}",
            )
        x = dense_block(
            x,
            num_layers,
            k,
            bottleneck=bottleneck,
            dropout=dropout,
            norm=norm,
            act=act,
            name=f"{name}_block{i}",
        )
    n = norm_layer(norm, name=f"{name}_final_norm")
    if n is not None:
        x = n(x)
    x = layers.Activation(act, name=f"{name}_final_act")(x)
    outputs = _head(x, num_classes, include_top, pooling, dropout, final_activation, name)
    return keras.Model(inputs, outputs, name=name)


def inception_resnet(
    input_shape: Sequence[int | None],
    num_classes: int = 2,
    init_filters: int = 32,
    stage_filters: Sequence[int] = (64, 128, 256),
    stage_blocks: Sequence[int] = (1, 1, 1),
    scale: float = 1.0,
    down_strides: int | Sequence[int] = 2,
    stem_kernel: int = 5,
    norm: str | None = "batch",
    act: str = "relu",
    dropout: float = 0.0,
    include_top: bool = True,
    pooling: str | None = "avg",
    final_activation: str | None = "softmax",
    name: str = "inception_resnet",
) -> keras.Model:
    """Simplified Inception-ResNet classifier, 2D or 3D.

    Each stage: (from the second stage on) a reduction block, a 1^d convolution to
    ``stage_filters[i]`` channels, then ``stage_blocks[i]`` Inception-ResNet blocks
    whose branches have ``stage_filters[i] // 2`` channels each.

    Paper: Szegedy et al., "Inception-v4, Inception-ResNet and the Impact of Residual
    Connections on Learning", AAAI 2017, https://arxiv.org/abs/1602.07261

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``; sizes divisible by
            ``down_strides ** len(stage_filters)``.
        num_classes: Output classes. Defaults to 2.
        init_filters: Channels of the stem convolution. Defaults to 32.
        stage_filters: Channels per stage. Defaults to (64, 128, 256) (the seed's).
        stage_blocks: Inception-ResNet blocks per stage. Defaults to (1, 1, 1).
        scale: Residual scaling of the blocks. Defaults to 1.0.
        down_strides: Stride of each down-sampling step, int or one per axis.
            Defaults to 2.
        stem_kernel: Kernel size of the stem convolution. Defaults to 5.
        norm: Normalisation. Defaults to "batch".
        act: Activation. Defaults to "relu".
        dropout: Dropout before the classifier. Defaults to 0.0.
        include_top: Add the classifier. Defaults to True.
        pooling: Without the top, "avg" or None (feature map). Defaults to "avg".
        final_activation: None (logits), "sigmoid" or "softmax". Defaults to "softmax".
        name: Model name and layer-name prefix. Defaults to "inception_resnet".

    Returns:
        A ``keras.Model``: (B, *S, C_in) -> (B, num_classes).

    Example:
        >>> m = inception_resnet((16, 16, 16, 1), stage_filters=(8, 16), stage_blocks=(1, 1))
        >>> m.output_shape
        (None, 2)
    """
    stage_filters, stage_blocks = _check_stages(stage_filters, stage_blocks, "stage_filters", "stage_blocks")
    inputs, x, down = _start(
        input_shape,
        num_classes,
        init_filters,
        dropout,
        len(stage_filters),
        down_strides,
        stem_kernel,
        final_activation,
        norm,
        act,
        name,
    )
    for s, (filters, blocks) in enumerate(zip(stage_filters, stage_blocks), start=1):
        if s > 1:
            # (B, *S, C) -> (B, *S / s, C + 2 * filters)
            x = reduction_block(x, filters, strides=down, norm=norm, act=act, name=f"{name}_reduction{s - 1}")
        x = conv_norm_act(x, filters, 1, norm=norm, act=act, name=f"{name}_stage{s}_proj")
        for b in range(1, blocks + 1):
            x = inception_resnet_block(
                x, max(1, filters // 2), scale=scale, norm=norm, act=act, name=f"{name}_stage{s}_block{b}"
            )
    outputs = _head(x, num_classes, include_top, pooling, dropout, final_activation, name)
    return keras.Model(inputs, outputs, name=name)


#: Name -> builder, for loops in tests and in the chapter.
CLASSIFIERS = {"resnet": resnet, "densenet": densenet, "inception_resnet": inception_resnet}
