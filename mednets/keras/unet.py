"""A plain UNet (Ronneberger et al., MICCAI 2015), 2D or 3D.

Paper: https://arxiv.org/abs/1505.04597. Each encoder stage is two 3x3 conv -> norm ->
ReLU units; stages are joined by 2x down-sampling; each decoder stage up-samples with a
2x2 transposed convolution, concatenates the encoder map of the same scale and applies
two conv units. This module exists so that UNet 3+ (:mod:`mednets.keras.unet3plus`) can
be compared with the network it improves on, at the same widths; both use the encoder
of :mod:`mednets.keras.blocks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from mednets.keras.blocks import check_encoder_options, conv_block, unet_encoder
from mednets.keras.core import (
    CONV,
    CONV_TRANSPOSE,
    InputCheck,
    check_final_activation,
    check_input_shape,
    check_positive_int,
)

__all__ = ["unet"]


def unet(
    input_shape: Sequence[int | None],
    out_channels: int = 1,
    filters: Sequence[int] = (64, 128, 256, 512, 1024),
    kernel_size: int = 3,
    norm: str | None = "batch",
    act: str = "relu",
    use_bias: bool = True,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    final_activation: str | None = "sigmoid",
    name: str = "unet",
) -> keras.Model:
    """A plain UNet, 2D or 3D (Ronneberger et al., 2015, https://arxiv.org/abs/1505.04597).

    Decoder stage ``i``: 2x2 stride-2 transposed conv to ``filters[i-1]`` channels,
    concatenation with ``e_i``, then :func:`~mednets.keras.blocks.conv_block`. Head: 1x1
    conv to ``out_channels``, then ``final_activation``.

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``, sizes divisible by
            ``2 ** (len(filters) - 1)`` (``None`` for any such size, checked when called).
        out_channels: Output channels. Defaults to 1.
        filters: Stage widths; ``len(filters)`` is the depth. Defaults to
            ``(64, 128, 256, 512, 1024)``.
        kernel_size: Defaults to 3.
        norm: None, "batch", "instance", "group" or "layer". Defaults to "batch".
        act: Defaults to "relu".
        use_bias: Defaults to True.
        bn_momentum: Batch-norm momentum (Keras convention), set when the layers are
            built. Defaults to 0.9 (PyTorch's default; Keras's is 0.99).
        bn_epsilon: Batch-norm epsilon. Defaults to 1e-5 (PyTorch's default).
        final_activation: None (logits), "sigmoid" or "softmax". Defaults to "sigmoid".
        name: Model and layer-name prefix. Defaults to "unet".

    Returns:
        ``keras.Model``: ``(B, *spatial, C) -> (B, *spatial, out_channels)``.

    Raises:
        ValueError: a bad shape or option at build time; an input whose rank, channels
            or sizes do not fit when the model is called (naming the nearest sizes).

    Example:
        >>> m = unet((32, 32, 4), filters=(8, 16, 32))
        >>> m.output_shape
        (None, 32, 32, 1)
    """
    check_encoder_options(filters, norm, "max")
    check_positive_int(out_channels, "out_channels")
    check_final_activation(final_activation, out_channels)
    stride = 2 ** (len(filters) - 1)
    dims = check_input_shape(input_shape, stride, name=name)
    inputs = keras.Input(input_shape, name=f"{name}_input")
    x = InputCheck(stride, input_shape[-1], name, name=f"{name}_input_check")(inputs)
    opts = dict(norm=norm, use_bias=use_bias, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)
    feats = unet_encoder(x, filters, kernel_size, act=act, name=f"{name}_enc", **opts)
    x = feats[-1]
    for i in range(len(filters) - 1, 0, -1):
        x = CONV_TRANSPOSE[dims](
            filters[i - 1],
            2,
            strides=2,
            use_bias=True,
            kernel_initializer="he_normal",
            name=f"{name}_dec{i}_up",
        )(x)
        x = layers.Concatenate(axis=-1, name=f"{name}_dec{i}_concat")([feats[i - 1], x])
        x = conv_block(x, filters[i - 1], kernel_size, act=act, name=f"{name}_dec{i}", **opts)
    x = CONV[dims](out_channels, 1, name=f"{name}_head_conv")(x)
    x = layers.Activation(final_activation or "linear", name=f"{name}_head")(x)
    return keras.Model(inputs, x, name=name)
