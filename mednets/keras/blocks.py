"""Dimension-agnostic building blocks of the Keras networks (channels-last).

Every block reads its dimension (2D or 3D) off the input tensor, so the same function
builds ``Conv2D`` layers for ``(B, H, W, C)`` and ``Conv3D`` layers for
``(B, D, H, W, C)``. Layers get deterministic names from the ``name`` argument.

* :func:`residual_block`: the basic (post-activation) two-convolution block of ResNet
  (He et al., 2016, https://arxiv.org/abs/1512.03385), with an identity shortcut or
  a 1x1 projection when the shape changes.
* :func:`dense_block` and :func:`transition_layer`: DenseNet-BC
  (Huang et al., 2017, https://arxiv.org/abs/1608.06993).
* :func:`inception_resnet_block` and :func:`reduction_block`: Inception-ResNet
  (Szegedy et al., 2017, https://arxiv.org/abs/1602.07261), simplified.
* :func:`conv_block`, :func:`down_layer` and :func:`unet_encoder`: the U-Net encoder
  (Ronneberger et al., 2015, https://arxiv.org/abs/1505.04597) that the plain U-Net
  and UNet 3+ share.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from mednets.keras.core import (
    AVGPOOL,
    CONV,
    MAXPOOL,
    NORMS,
    EncoderFeatures,
    as_spatial_tuple,
    check_positive_int,
    check_rate,
    conv_norm_act,
    norm_layer,
    spatial_dims_of,
)

__all__ = [
    "DOWN_PATTERNS",
    "residual_block",
    "dense_layer",
    "dense_block",
    "transition_layer",
    "inception_resnet_block",
    "reduction_block",
    "conv_block",
    "down_layer",
    "check_encoder_options",
    "unet_encoder",
]

#: The down-sampling patterns between U-Net encoder stages.
DOWN_PATTERNS = ("max", "avg", "conv", "normconv")


def _channels(x) -> int:
    return int(x.shape[-1])


def residual_block(
    x,
    filters: int,
    strides: int | Sequence[int] = 1,
    norm: str | None = "batch",
    act: str = "relu",
    name: str = "res",
    *,
    kernel_size: int = 3,
    mid_filters: int | None = None,
    use_bias: bool | None = None,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
) -> keras.KerasTensor:
    """Basic (post-activation) residual block of ResNet: two convolutions plus a shortcut.

    ``y = act(norm(conv(act(norm(conv(x))))) + shortcut(x))``. Normalisation sits
    after each convolution and *before* the addition, as in the paper; only the
    activation follows the addition. The shortcut is the identity when the shape is
    unchanged, otherwise a strided 1^d convolution with normalisation (the paper's
    "projection shortcut", option B). Down-sampling uses ``padding="same"`` in both
    branches, so the two paths always agree: every size ``n`` becomes ``ceil(n / s)``.
    The Chapter 1 ResNet and the residual U-Net encoder (``conv_block(residual=True)``)
    both use this block.

    Paper: https://arxiv.org/abs/1512.03385

    Args:
        x: Input tensor, (B, H, W, C_in) or (B, D, H, W, C_in).
        filters: Output channels C_out.
        strides: Int or one int per spatial axis; 2 halves that axis. Defaults to 1.
        norm: Normalisation, see :func:`mednets.keras.core.norm_layer`.
            Defaults to "batch".
        act: Activation name. Defaults to "relu".
        name: Prefix of the layer names (``{name}_conv1``, ``{name}_conv2``,
            ``{name}_proj``, ``{name}_add``, ``{name}_out``). Defaults to "res".
        kernel_size: Kernel of the two convolutions. Defaults to 3.
        mid_filters: Channels of the first convolution. Defaults to None (``filters``).
        use_bias: Bias in the convolutions; None means only without normalisation.
            Defaults to None.
        bn_momentum: Batch-norm momentum (Keras convention). Defaults to 0.99.
        bn_epsilon: Batch-norm epsilon. Defaults to 1e-3.

    Returns:
        Tensor (B, ceil(H/s), ceil(W/s), C_out), or the 3D analogue.

    Raises:
        ValueError: a non-positive ``filters`` or bad ``strides``.

    Example:
        >>> import keras
        >>> x = keras.Input((16, 16, 16, 8))
        >>> residual_block(x, 16, strides=2, name="demo").shape
        (None, 8, 8, 8, 16)
    """
    dims = spatial_dims_of(x)
    check_positive_int(filters, "filters")
    strides = as_spatial_tuple(strides, dims, "strides")
    mid = filters if mid_filters is None else mid_filters
    kw = dict(norm=norm, use_bias=use_bias, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)
    y = conv_norm_act(x, mid, kernel_size, strides=strides, act=act, name=f"{name}_conv1", **kw)
    y = conv_norm_act(y, filters, kernel_size, act=None, name=f"{name}_conv2", **kw)
    shortcut = x
    if any(s != 1 for s in strides) or _channels(x) != filters:
        # projection shortcut: (B, *S, C_in) -> (B, *ceil(S / s), C_out)
        shortcut = conv_norm_act(x, filters, 1, strides=strides, act=None, name=f"{name}_proj", **kw)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation(act, name=f"{name}_out")(y)


def _pre_act_conv(x, filters: int, kernel_size, norm, act, name: str, strides=1):
    """norm -> act -> conv, the pre-activation order DenseNet uses."""
    dims = spatial_dims_of(x)
    n = norm_layer(norm, name=f"{name}_norm")
    if n is not None:
        x = n(x)
    x = layers.Activation(act, name=f"{name}_act")(x)
    return CONV[dims](
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=n is None,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)


def dense_layer(
    x,
    growth_rate: int,
    bottleneck: int = 4,
    dropout: float = 0.0,
    norm: str | None = "batch",
    act: str = "relu",
    name: str = "dense",
) -> keras.KerasTensor:
    """One DenseNet-B layer: norm-act-1^d conv (bottleneck) then norm-act-3^d conv.

    Paper: https://arxiv.org/abs/1608.06993

    Args:
        x: Input tensor, (B, *S, C).
        growth_rate: Channels this layer adds (k).
        bottleneck: The 1^d convolution has ``bottleneck * k`` channels; 0 skips it.
            Defaults to 4.
        dropout: Dropout rate after each convolution. Defaults to 0.0.
        norm: Normalisation. Defaults to "batch".
        act: Activation. Defaults to "relu".
        name: Prefix of the layer names. Defaults to "dense".

    Returns:
        The new features only, (B, *S, k); :func:`dense_block` concatenates them.
    """
    check_positive_int(growth_rate, "growth_rate")
    check_rate(dropout)
    y = x
    if bottleneck:
        y = _pre_act_conv(y, bottleneck * growth_rate, 1, norm, act, f"{name}_conv1")
        if dropout:
            y = layers.Dropout(dropout, name=f"{name}_drop1")(y)
    y = _pre_act_conv(y, growth_rate, 3, norm, act, f"{name}_conv2")
    if dropout:
        y = layers.Dropout(dropout, name=f"{name}_drop2")(y)
    return y


def dense_block(
    x,
    num_layers: int,
    growth_rate: int = 32,
    bottleneck: int = 4,
    dropout: float = 0.0,
    norm: str | None = "batch",
    act: str = "relu",
    name: str = "denseblock",
) -> keras.KerasTensor:
    """Dense block: each layer sees the concatenation of all earlier feature maps.

    With C input channels, L layers and growth rate k the output has C + L*k channels:
    the block returns the running concatenation, not only the last layer's output.

    Paper: https://arxiv.org/abs/1608.06993

    Args:
        x: Input tensor, (B, *S, C).
        num_layers: Number of dense layers L.
        growth_rate: Channels added per layer, k. Defaults to 32.
        bottleneck: Bottleneck width factor of each layer (0 for none). Defaults to 4.
        dropout: Dropout rate inside each layer. Defaults to 0.0.
        norm: Normalisation. Defaults to "batch".
        act: Activation. Defaults to "relu".
        name: Prefix of the layer names. Defaults to "denseblock".

    Returns:
        Tensor (B, *S, C + L*k).

    Example:
        >>> import keras
        >>> x = keras.Input((8, 8, 8, 16))
        >>> dense_block(x, num_layers=3, growth_rate=4, name="demo").shape
        (None, 8, 8, 8, 28)
    """
    check_positive_int(num_layers, "num_layers")
    features = x
    for i in range(1, num_layers + 1):
        new = dense_layer(
            features,
            growth_rate,
            bottleneck=bottleneck,
            dropout=dropout,
            norm=norm,
            act=act,
            name=f"{name}_layer{i}",
        )
        # (B, *S, C + (i-1)k) -> (B, *S, C + ik)
        features = layers.Concatenate(axis=-1, name=f"{name}_layer{i}_concat")([features, new])
    return features


def transition_layer(
    x,
    reduction: float = 0.5,
    strides: int | Sequence[int] = 2,
    dropout: float = 0.0,
    norm: str | None = "batch",
    act: str = "relu",
    name: str = "transition",
) -> keras.KerasTensor:
    """DenseNet transition: norm-act-1^d conv to floor(reduction * C) channels, then
    average pooling with window = stride (halves each size by default).

    The pooling uses ``padding="same"``, so an odd size n becomes ceil(n / 2) instead of
    silently dropping the last row; the classifiers only accept sizes divisible by
    the stride anyway.

    Args:
        x: Input tensor, (B, *S, C).
        reduction: Compression factor theta in (0, 1]. Defaults to 0.5.
        strides: Int or one int per spatial axis. Defaults to 2.
        dropout: Dropout after the convolution. Defaults to 0.0.
        norm: Normalisation. Defaults to "batch".
        act: Activation. Defaults to "relu".
        name: Prefix of the layer names. Defaults to "transition".

    Returns:
        Tensor (B, *ceil(S / strides), floor(reduction * C)).

    Example:
        >>> import keras
        >>> x = keras.Input((8, 8, 8, 28))
        >>> transition_layer(x, name="demo").shape
        (None, 4, 4, 4, 14)
    """
    dims = spatial_dims_of(x)
    if not 0.0 < float(reduction) <= 1.0:
        raise ValueError(f"reduction must be in (0, 1], got {reduction!r}")
    check_rate(dropout)
    strides = as_spatial_tuple(strides, dims, "strides")
    filters = max(1, int(_channels(x) * reduction))
    y = _pre_act_conv(x, filters, 1, norm, act, f"{name}")
    if dropout:
        y = layers.Dropout(dropout, name=f"{name}_drop")(y)
    if any(s != 1 for s in strides):
        y = AVGPOOL[dims](pool_size=strides, strides=strides, padding="same", name=f"{name}_pool")(y)
    return y


def inception_resnet_block(
    x, filters: int, scale: float = 1.0, norm: str | None = "batch", act: str = "relu", name: str = "incres"
) -> keras.KerasTensor:
    """Inception-ResNet block (the "A" block, simplified), for any channel count.

    Three branches see the input: a 1^d convolution; 1^d then 3^d; 1^d then 3^d then
    3^d (two 3^d convolutions cover a 5^d field of view with fewer weights than one
    5^d kernel). Their concatenation goes through a linear 1^d convolution back to the
    *input's* channel count C, is multiplied by ``scale`` and added to the input; the
    activation comes after the addition and no normalisation sits on the sum, as in
    the paper.

    Paper: https://arxiv.org/abs/1602.07261

    Args:
        x: Input tensor, (B, *S, C).
        filters: Channels of each branch.
        scale: Residual scaling (the paper uses 0.1 to 0.3 for very wide blocks).
            Defaults to 1.0.
        norm: Normalisation. Defaults to "batch".
        act: Activation. Defaults to "relu".
        name: Prefix of the layer names. Defaults to "incres".

    Returns:
        Tensor (B, *S, C), the same shape as ``x``.

    Example:
        >>> import keras
        >>> x = keras.Input((8, 8, 8, 24))
        >>> inception_resnet_block(x, 16, name="demo").shape
        (None, 8, 8, 8, 24)
    """
    dims = spatial_dims_of(x)
    check_positive_int(filters, "filters")
    if float(scale) <= 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    kw = dict(norm=norm, act=act)
    b0 = conv_norm_act(x, filters, 1, name=f"{name}_b0_conv1", **kw)
    b1 = conv_norm_act(x, filters, 1, name=f"{name}_b1_conv1", **kw)
    b1 = conv_norm_act(b1, filters, 3, name=f"{name}_b1_conv2", **kw)
    b2 = conv_norm_act(x, filters, 1, name=f"{name}_b2_conv1", **kw)
    b2 = conv_norm_act(b2, filters, 3, name=f"{name}_b2_conv2", **kw)
    b2 = conv_norm_act(b2, filters, 3, name=f"{name}_b2_conv3", **kw)
    mixed = layers.Concatenate(axis=-1, name=f"{name}_concat")([b0, b1, b2])  # (B, *S, 3f)
    # linear projection back to the input's channels: (B, *S, 3f) -> (B, *S, C)
    up = CONV[dims](
        _channels(x), 1, padding="same", use_bias=True, kernel_initializer="he_normal", name=f"{name}_up"
    )(mixed)
    if scale != 1.0:
        up = layers.Rescaling(float(scale), name=f"{name}_scale")(up)
    y = layers.Add(name=f"{name}_add")([x, up])
    return layers.Activation(act, name=f"{name}_out")(y)


def reduction_block(
    x,
    filters: int,
    strides: int | Sequence[int] = 2,
    norm: str | None = "batch",
    act: str = "relu",
    name: str = "reduction",
) -> keras.KerasTensor:
    """Inception-style grid reduction: three parallel down-sampling branches.

    Branches: a strided 3^d convolution; 1^d, 3^d, then a strided 3^d convolution;
    a strided 3^d max-pooling. All use ``padding="same"``, so every branch maps a
    size n to ceil(n / s) and the concatenation works for odd sizes too.

    Paper: https://arxiv.org/abs/1602.07261

    Args:
        x: Input tensor, (B, *S, C).
        filters: Channels of each convolution branch.
        strides: Int or one int per spatial axis. Defaults to 2.
        norm: Normalisation. Defaults to "batch".
        act: Activation. Defaults to "relu".
        name: Prefix of the layer names. Defaults to "reduction".

    Returns:
        Tensor (B, *ceil(S / strides), 2 * filters + C).

    Example:
        >>> import keras
        >>> x = keras.Input((9, 9, 9, 8))
        >>> reduction_block(x, 16, name="demo").shape
        (None, 5, 5, 5, 40)
    """
    dims = spatial_dims_of(x)
    check_positive_int(filters, "filters")
    strides = as_spatial_tuple(strides, dims, "strides")
    kw = dict(norm=norm, act=act)
    b0 = conv_norm_act(x, filters, 3, strides=strides, name=f"{name}_b0_conv1", **kw)
    b1 = conv_norm_act(x, filters, 1, name=f"{name}_b1_conv1", **kw)
    b1 = conv_norm_act(b1, filters, 3, name=f"{name}_b1_conv2", **kw)
    b1 = conv_norm_act(b1, filters, 3, strides=strides, name=f"{name}_b1_conv3", **kw)
    b2 = MAXPOOL[dims](pool_size=3, strides=strides, padding="same", name=f"{name}_b2_pool")(x)
    return layers.Concatenate(axis=-1, name=f"{name}_concat")([b0, b1, b2])


def conv_block(
    x,
    filters: int,
    kernel_size: int = 3,
    norm: str | None = "batch",
    act: str = "relu",
    use_bias: bool = True,
    residual: bool = False,
    double_features: bool = False,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    name: str = "block",
) -> keras.KerasTensor:
    """The U-Net block: two conv -> norm -> act units, optionally residual, in 2D or 3D.

    With ``residual=True`` it is :func:`residual_block` (the second unit's activation
    moves after the addition of a shortcut: the input, or a 1^d conv -> norm projection
    when the channel counts differ). With ``double_features=True`` the second conv has
    ``2 * filters`` channels (the 3D U-Net trick against bottlenecks).

    Paper: https://arxiv.org/abs/1505.04597

    Args:
        x: ``(B, *spatial, C_in)``.
        filters: Channels of the first conv.
        kernel_size: Defaults to 3.
        norm: See :func:`mednets.keras.core.norm_layer`. Defaults to "batch".
        act: Keras activation name. Defaults to "relu".
        use_bias: Bias in the convolutions. Defaults to True (the official UNet 3+ code).
        residual: Add a shortcut. Defaults to False.
        double_features: Double the second conv's channels. Defaults to False.
        bn_momentum: Batch-norm momentum (Keras convention). Defaults to 0.99.
        bn_epsilon: Batch-norm epsilon. Defaults to 1e-3.
        name: Layer-name prefix. Defaults to "block".

    Returns:
        ``(B, *spatial, filters)``, or ``2 * filters`` channels with ``double_features``.

    Example:
        >>> import keras
        >>> conv_block(keras.Input((8, 8, 3)), 4, double_features=True).shape
        (None, 8, 8, 8)
    """
    out_filters = 2 * filters if double_features else filters
    kw = dict(norm=norm, use_bias=use_bias, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)
    if residual:
        return residual_block(
            x, out_filters, act=act, name=name, kernel_size=kernel_size, mid_filters=filters, **kw
        )
    y = conv_norm_act(x, filters, kernel_size, act=act, name=f"{name}_conv1", **kw)
    return conv_norm_act(y, out_filters, kernel_size, act=act, name=f"{name}_conv2", **kw)


def down_layer(
    x,
    down: str = "max",
    norm: str | None = "batch",
    use_bias: bool = True,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    name: str = "down",
) -> keras.KerasTensor:
    """Halve every spatial size (the step between two U-Net encoder stages).

    Args:
        x: ``(B, *spatial, C)``.
        down: "max" (max pooling), "avg" (average pooling), "conv" (2^d stride-2 conv,
            then norm) or "normconv" (norm, then 2^d stride-2 conv). The convolutions
            keep ``C`` channels. Defaults to "max".
        norm: Normalisation of the conv patterns. Defaults to "batch".
        use_bias: Bias in the conv patterns. Defaults to True.
        bn_momentum: Batch-norm momentum (Keras convention). Defaults to 0.99.
        bn_epsilon: Batch-norm epsilon. Defaults to 1e-3.
        name: Layer-name prefix. Defaults to "down".

    Returns:
        ``(B, *spatial / 2, C)``.

    Raises:
        ValueError: an unknown ``down``.

    Example:
        >>> import keras
        >>> down_layer(keras.Input((8, 8, 8, 3)), "conv").shape
        (None, 4, 4, 4, 3)
    """
    dims = spatial_dims_of(x)
    if down == "max":
        return MAXPOOL[dims](2, name=f"{name}_maxpool")(x)
    if down == "avg":
        return AVGPOOL[dims](2, name=f"{name}_avgpool")(x)
    bn_kw = dict(momentum=bn_momentum, epsilon=bn_epsilon if norm == "batch" else 1e-3)
    if down == "conv":
        return conv_norm_act(
            x,
            _channels(x),
            2,
            strides=2,
            norm=norm,
            act=None,
            use_bias=use_bias,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            name=name,
        )
    if down == "normconv":
        n = norm_layer(norm, name=f"{name}_norm", **bn_kw)
        if n is not None:
            x = n(x)
        return CONV[dims](
            _channels(x),
            2,
            strides=2,
            padding="same",
            use_bias=use_bias,
            kernel_initializer="he_normal",
            name=f"{name}_conv",
        )(x)
    raise ValueError(f"down must be one of {DOWN_PATTERNS}, got {down!r}")


def check_encoder_options(filters: Sequence[int], norm: str | None, down: str) -> None:
    """Check the options of :func:`unet_encoder`; raise a ``ValueError`` naming the bad one.

    Example:
        >>> check_encoder_options((8, 16), "batch", "max")
    """
    if len(filters) < 2 or any(int(f) != f or f < 1 for f in filters):
        raise ValueError(f"filters must be at least 2 positive ints, got {tuple(filters)}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if down not in DOWN_PATTERNS:
        raise ValueError(f"down must be one of {DOWN_PATTERNS}, got {down!r}")


def unet_encoder(
    x,
    filters: Sequence[int] = (64, 128, 256, 512, 1024),
    kernel_size: int = 3,
    norm: str | None = "batch",
    act: str = "relu",
    use_bias: bool = True,
    residual: bool = False,
    double_features: bool = False,
    down: str = "max",
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    name: str = "enc",
) -> EncoderFeatures:
    """The U-Net encoder: one :func:`conv_block` per width, with :func:`down_layer` between.

    It keeps the encoder contract of :class:`mednets.keras.core.EncoderFeatures`:
    features finest first, with their channels and reductions ``1, 2, 4, ...``.

    Paper: https://arxiv.org/abs/1505.04597

    Args:
        x: ``(B, *spatial, C_in)``, spatial sizes divisible by ``2 ** (len(filters) - 1)``.
        filters: Width of each stage; ``len(filters)`` is the depth (number of levels).
            Defaults to ``(64, 128, 256, 512, 1024)``.
        kernel_size, norm, act, use_bias, residual, double_features, bn_momentum,
            bn_epsilon: See :func:`conv_block`.
        down: See :func:`down_layer`. Defaults to "max".
        name: Layer-name prefix; stage ``i`` (1-based) is ``{name}{i}``. Defaults to "enc".

    Returns:
        :class:`~mednets.keras.core.EncoderFeatures` ``[e1, ..., eN]``; ``e_i`` is
        ``(B, *spatial / 2**(i-1), filters[i-1])`` (twice that with ``double_features``).

    Raises:
        ValueError: bad ``filters``, ``norm`` or ``down``.

    Example:
        >>> import keras
        >>> feats = unet_encoder(keras.Input((32, 32, 1)), (4, 8, 16))
        >>> feats.channels, feats.reductions, feats[-1].shape
        ((4, 8, 16), (1, 2, 4), (None, 8, 8, 16))
    """
    check_encoder_options(filters, norm, down)
    kw = dict(norm=norm, use_bias=use_bias, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)
    features = []
    for i, f in enumerate(filters, start=1):
        if i > 1:
            x = down_layer(x, down, name=f"{name}{i}_down", **kw)
        x = conv_block(
            x,
            f,
            kernel_size,
            act=act,
            residual=residual,
            double_features=double_features,
            name=f"{name}{i}",
            **kw,
        )
        features.append(x)
    return EncoderFeatures(features, reductions=tuple(2**i for i in range(len(filters))))
