"""Dimension-agnostic blocks of the Chapter 1 classifiers (Keras, channels-last).

Every block reads its dimension (2D or 3D) off the input tensor, so the same function
builds ``Conv2D`` layers for ``(B, H, W, C)`` and ``Conv3D`` layers for
``(B, D, H, W, C)``. Layers get deterministic names from the ``name`` argument.

* :func:`residual_block`: the basic two-convolution block of ResNet
  (He et al., 2016, https://arxiv.org/abs/1512.03385), with an identity shortcut or
  a 1x1 projection when the shape changes.
* :func:`dense_block` and :func:`transition_layer`: DenseNet-BC
  (Huang et al., 2017, https://arxiv.org/abs/1608.06993).
* :func:`inception_resnet_block` and :func:`reduction_block`: Inception-ResNet
  (Szegedy et al., 2017, https://arxiv.org/abs/1602.07261), simplified.
"""

from __future__ import annotations

from keras import layers

from mednets.keras.core import (
    AVGPOOL,
    CONV,
    MAXPOOL,
    conv_norm_act,
    norm_layer,
    spatial_dims_of,
)

__all__ = [
    "residual_block",
    "dense_layer",
    "dense_block",
    "transition_layer",
    "inception_resnet_block",
    "reduction_block",
]


def _channels(x) -> int:
    return int(x.shape[-1])


def _as_tuple(value, dims: int, what: str) -> tuple[int, ...]:
    """An int or a length-``dims`` sequence of positive ints, as a tuple."""
    if isinstance(value, int):
        value = (value,) * dims
    value = tuple(int(v) for v in value)
    if len(value) != dims or any(v < 1 for v in value):
        raise ValueError(
            f"{what} must be a positive int or {dims} positive ints for a {dims}D input, got {value}"
        )
    return value


def _check_positive(value, what: str) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")


def _check_rate(rate: float, what: str = "dropout") -> None:
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {rate!r}")


def residual_block(
    x, filters: int, strides=1, norm: str | None = "batch", act: str = "relu", name: str = "res"
):
    """Basic residual block of ResNet: two 3^d convolutions plus a shortcut.

    ``y = act(norm(conv(act(norm(conv(x))))) + shortcut(x))``. Normalisation sits
    after each convolution and *before* the addition, as in the paper; only the
    activation follows the addition. The shortcut is the identity when the shape is
    unchanged, otherwise a strided 1^d convolution with normalisation (the paper's
    "projection shortcut", option B). Down-sampling uses ``padding="same"`` in both
    branches, so the two paths always agree: every size ``n`` becomes ``ceil(n / s)``.

    Paper: https://arxiv.org/abs/1512.03385

    Args:
        x: Input tensor, (B, H, W, C_in) or (B, D, H, W, C_in).
        filters: Output channels C_out.
        strides: Int or one int per spatial axis; 2 halves that axis. Defaults to 1.
        norm: Normalisation, see :func:`mednets.keras.core.norm_layer`.
            Defaults to "batch".
        act: Activation name. Defaults to "relu".
        name: Prefix of the layer names. Defaults to "res".

    Returns:
        Tensor (B, ceil(H/s), ceil(W/s), C_out), or the 3D analogue.

    Example:
        >>> import keras
        >>> x = keras.Input((16, 16, 16, 8))
        >>> residual_block(x, 16, strides=2, name="demo").shape
        (None, 8, 8, 8, 16)
    """
    dims = spatial_dims_of(x)
    _check_positive(filters, "filters")
    strides = _as_tuple(strides, dims, "strides")
    y = conv_norm_act(x, filters, 3, strides=strides, norm=norm, act=act, name=f"{name}_conv1")
    y = conv_norm_act(y, filters, 3, norm=norm, act=None, name=f"{name}_conv2")
    shortcut = x
    if any(s != 1 for s in strides) or _channels(x) != filters:
        # projection shortcut: (B, *S, C_in) -> (B, *ceil(S / s), C_out)
        shortcut = conv_norm_act(x, filters, 1, strides=strides, norm=norm, act=None, name=f"{name}_proj")
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
):
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
    _check_positive(growth_rate, "growth_rate")
    _check_rate(dropout)
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
):
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
    _check_positive(num_layers, "num_layers")
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
    strides=2,
    dropout: float = 0.0,
    norm: str | None = "batch",
    act: str = "relu",
    name: str = "transition",
):
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
    _check_rate(dropout)
    strides = _as_tuple(strides, dims, "strides")
    filters = max(1, int(_channels(x) * reduction))
    y = _pre_act_conv(x, filters, 1, norm, act, f"{name}")
    if dropout:
        y = layers.Dropout(dropout, name=f"{name}_drop")(y)
    if any(s != 1 for s in strides):
        y = AVGPOOL[dims](pool_size=strides, strides=strides, padding="same", name=f"{name}_pool")(y)
    return y


def inception_resnet_block(
    x, filters: int, scale: float = 1.0, norm: str | None = "batch", act: str = "relu", name: str = "incres"
):
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
    _check_positive(filters, "filters")
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
    x, filters: int, strides=2, norm: str | None = "batch", act: str = "relu", name: str = "reduction"
):
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
    _check_positive(filters, "filters")
    strides = _as_tuple(strides, dims, "strides")
    kw = dict(norm=norm, act=act)
    b0 = conv_norm_act(x, filters, 3, strides=strides, name=f"{name}_b0_conv1", **kw)
    b1 = conv_norm_act(x, filters, 1, name=f"{name}_b1_conv1", **kw)
    b1 = conv_norm_act(b1, filters, 3, name=f"{name}_b1_conv2", **kw)
    b1 = conv_norm_act(b1, filters, 3, strides=strides, name=f"{name}_b1_conv3", **kw)
    b2 = MAXPOOL[dims](pool_size=3, strides=strides, padding="same", name=f"{name}_b2_pool")(x)
    return layers.Concatenate(axis=-1, name=f"{name}_concat")([b0, b1, b2])
