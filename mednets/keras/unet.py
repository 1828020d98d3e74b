"""A plain UNet (Ronneberger et al., MICCAI 2015), 2D or 3D, and the encoder it shares
with UNet 3+.

Paper: https://arxiv.org/abs/1505.04597. Each encoder stage is two 3x3 conv -> norm ->
ReLU units; stages are joined by 2x down-sampling; each decoder stage up-samples with a
2x2 transposed convolution, concatenates the encoder map of the same scale and applies
two conv units. This module exists so that UNet 3+ (:mod:`mednets.keras.unet3plus`) can
be compared with the network it improves on, at the same widths, and so that both
networks share one encoder.
"""

from __future__ import annotations

import keras
from keras import layers

from mednets.keras.core import (
    AVGPOOL,
    CONV,
    CONV_TRANSPOSE,
    MAXPOOL,
    conv_norm_act,
    norm_layer,
    spatial_dims_from_shape,
    spatial_dims_of,
)
from mednets.keras.core import set_batchnorm as _set_batchnorm
from mednets.utils import check_divisible

__all__ = [
    "DOWN_PATTERNS",
    "conv_block",
    "down_layer",
    "encoder",
    "check_input_shape",
    "set_batchnorm",
    "unet",
]

#: The down-sampling patterns between encoder stages (the seed's four options).
DOWN_PATTERNS = ("max", "avg", "conv", "normconv")

_NORMS = ("batch", "layer", "group", "instance", "none", None)


def check_input_shape(input_shape, depth, what="input"):
    """Check a channels-last ``input_shape`` for an encoder with ``depth`` stages.

    Returns the spatial dimensionality (2 or 3). Raises ``ValueError`` for a wrong rank,
    unknown spatial sizes, or sizes not divisible by ``2 ** (depth - 1)`` (naming the
    nearest valid sizes).
    """
    spatial_dims = spatial_dims_from_shape(input_shape)
    spatial = tuple(input_shape)[:-1]
    if any(s is None for s in spatial):
        raise ValueError(f"{what} needs known spatial sizes, got input_shape {tuple(input_shape)}")
    check_divisible(spatial, 2 ** (depth - 1), what=what)
    return spatial_dims


def _check_options(filters, norm, down):
    if len(filters) < 2 or any(int(f) != f or f < 1 for f in filters):
        raise ValueError(f"filters must be at least 2 positive ints, got {tuple(filters)}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    if down not in DOWN_PATTERNS:
        raise ValueError(f"down must be one of {DOWN_PATTERNS}, got {down!r}")


def set_batchnorm(model, momentum=0.9, epsilon=1e-5):
    """PyTorch-style batch norm (``momentum=0.9`` in Keras's convention, ``eps=1e-5``),
    as in the official UNet 3+ code; see :func:`mednets.keras.core.set_batchnorm`.

    Returns:
        The number of layers changed.
    """
    return _set_batchnorm(model, momentum, epsilon)


def conv_block(
    x,
    filters,
    kernel_size=3,
    norm="batch",
    act="relu",
    use_bias=True,
    residual=False,
    double_features=False,
    name="block",
):
    """Two conv -> norm -> act units, optionally residual, in 2D or 3D.

    With ``residual=True`` the second unit's activation moves after the addition of a
    shortcut (the input, or a 1x1 conv -> norm projection when the channel counts
    differ), as in ResNet. With ``double_features=True`` the second conv has
    ``2 * filters`` channels (the 3D U-Net trick against bottlenecks).

    Args:
        x: ``(B, *spatial, C_in)``.
        filters: Channels of the first conv.
        kernel_size: Defaults to 3.
        norm: "batch", "layer", "group", "instance" or None. Defaults to "batch".
        act: Keras activation name. Defaults to "relu".
        use_bias: Bias in the convolutions. Defaults to True (the official UNet 3+ code).
        residual: Add a shortcut. Defaults to False.
        double_features: Double the second conv's channels. Defaults to False.
        name: Layer-name prefix. Defaults to "block".

    Returns:
        ``(B, *spatial, filters)``, or ``2 * filters`` channels with ``double_features``.
    """
    out_filters = 2 * filters if double_features else filters
    y = conv_norm_act(x, filters, kernel_size, norm=norm, act=act, use_bias=use_bias, name=f"{name}_conv1")
    if not residual:
        return conv_norm_act(
            y, out_filters, kernel_size, norm=norm, act=act, use_bias=use_bias, name=f"{name}_conv2"
        )
    y = conv_norm_act(
        y, out_filters, kernel_size, norm=norm, act=None, use_bias=use_bias, name=f"{name}_conv2"
    )
    shortcut = x
    if x.shape[-1] != out_filters:
        shortcut = conv_norm_act(
            x, out_filters, 1, norm=norm, act=None, use_bias=use_bias, name=f"{name}_shortcut"
        )
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation(act, name=f"{name}_act")(y)


def down_layer(x, down="max", norm="batch", use_bias=True, name="down"):
    """Halve every spatial size.

    Args:
        x: ``(B, *spatial, C)``.
        down: "max" (max pooling), "avg" (average pooling), "conv" (2x2 stride-2 conv,
            then norm) or "normconv" (norm, then 2x2 stride-2 conv). The convolutions
            keep ``C`` channels. Defaults to "max".
        norm: Normalisation of the conv patterns. Defaults to "batch".
        use_bias: Bias in the conv patterns. Defaults to True.
        name: Layer-name prefix. Defaults to "down".

    Returns:
        ``(B, *spatial / 2, C)``.
    """
    dims = spatial_dims_of(x)
    if down == "max":
        return MAXPOOL[dims](2, name=f"{name}_maxpool")(x)
    if down == "avg":
        return AVGPOOL[dims](2, name=f"{name}_avgpool")(x)
    if down == "conv":
        return conv_norm_act(x, x.shape[-1], 2, strides=2, norm=norm, act=None, use_bias=use_bias, name=name)
    if down == "normconv":
        n = norm_layer(norm, name=f"{name}_norm")
        if n is not None:
            x = n(x)
        return CONV[dims](
            x.shape[-1],
            2,
            strides=2,
            padding="same",
            use_bias=use_bias,
            kernel_initializer="he_normal",
            name=f"{name}_conv",
        )(x)
    raise ValueError(f"down must be one of {DOWN_PATTERNS}, got {down!r}")


def encoder(
    x,
    filters=(64, 128, 256, 512, 1024),
    kernel_size=3,
    norm="batch",
    act="relu",
    use_bias=True,
    residual=False,
    double_features=False,
    down="max",
    name="enc",
):
    """The UNet encoder: one :func:`conv_block` per width, with :func:`down_layer` between.

    Args:
        x: ``(B, *spatial, C_in)``, spatial sizes divisible by ``2 ** (len(filters) - 1)``.
        filters: Width of each stage. Defaults to ``(64, 128, 256, 512, 1024)``.
        kernel_size, norm, act, use_bias, residual, double_features: See :func:`conv_block`.
        down: See :func:`down_layer`. Defaults to "max".
        name: Layer-name prefix; stage ``i`` (1-based) is ``{name}{i}``. Defaults to "enc".

    Returns:
        List ``[e1, ..., eN]``; ``e_i`` is ``(B, *spatial / 2**(i-1), filters[i-1])``
        (twice that with ``double_features``).
    """
    features = []
    for i, f in enumerate(filters, start=1):
        if i > 1:
            x = down_layer(x, down, norm=norm, use_bias=use_bias, name=f"{name}{i}_down")
        x = conv_block(
            x,
            f,
            kernel_size,
            norm=norm,
            act=act,
            use_bias=use_bias,
            residual=residual,
            double_features=double_features,
            name=f"{name}{i}",
        )
        features.append(x)
    return features


def unet(
    input_shape,
    num_classes=1,
    filters=(64, 128, 256, 512, 1024),
    kernel_size=3,
    norm="batch",
    act="relu",
    use_bias=True,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    name="unet",
):
    """A plain UNet, 2D or 3D (Ronneberger et al., 2015, https://arxiv.org/abs/1505.04597).

    Decoder stage ``i``: 2x2 stride-2 transposed conv to ``filters[i-1]`` channels,
    concatenation with ``e_i``, then :func:`conv_block`. Head: 1x1 conv to
    ``num_classes``, sigmoid for one class and softmax otherwise.

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``, sizes divisible by
            ``2 ** (len(filters) - 1)``.
        num_classes: Output channels. Defaults to 1.
        filters: Stage widths. Defaults to ``(64, 128, 256, 512, 1024)``.
        kernel_size: Defaults to 3.
        norm: Defaults to "batch".
        act: Defaults to "relu".
        use_bias: Defaults to True.
        bn_momentum: Batch-norm momentum (Keras convention). Defaults to 0.9 (PyTorch's
            default); see :func:`set_batchnorm`.
        bn_epsilon: Batch-norm epsilon. Defaults to 1e-5 (PyTorch's default).
        name: Model and layer-name prefix. Defaults to "unet".

    Returns:
        ``keras.Model``: ``(B, *spatial, C)`` -> ``(B, *spatial, num_classes)``.

    Example:
        >>> m = unet((32, 32, 4), filters=(8, 16, 32))
        >>> m.output_shape
        (None, 32, 32, 1)
    """
    _check_options(filters, norm, "max")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    dims = check_input_shape(input_shape, len(filters), what=f"{name} input")
    inputs = keras.Input(input_shape, name=f"{name}_input")
    feats = encoder(inputs, filters, kernel_size, norm=norm, act=act, use_bias=use_bias, name=f"{name}_enc")
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
        x = conv_block(
            x, filters[i - 1], kernel_size, norm=norm, act=act, use_bias=use_bias, name=f"{name}_dec{i}"
        )
    x = CONV[dims](num_classes, 1, name=f"{name}_head_conv")(x)
    x = layers.Activation("sigmoid" if num_classes == 1 else "softmax", name=f"{name}_head")(x)
    model = keras.Model(inputs, x, name=name)
    set_batchnorm(model, bn_momentum, bn_epsilon)
    return model
