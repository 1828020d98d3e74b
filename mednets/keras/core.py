"""Dimension-agnostic building bricks for Keras models (channels-last).

One code path serves 2D and 3D: layers are looked up in small tables keyed by
``spatial_dims``, which is read off the input tensor. The channel axis is always -1
(never the ``bn_axis = 3`` idiom of Keras applications, which is wrong for 5-D tensors).
"""

from __future__ import annotations

import math

import keras
from keras import layers

__all__ = [
    "CONV",
    "CONV_TRANSPOSE",
    "MAXPOOL",
    "AVGPOOL",
    "UPSAMPLE",
    "ZEROPAD",
    "GLOBAL_AVG_POOL",
    "GLOBAL_MAX_POOL",
    "SPATIAL_DROPOUT",
    "spatial_dims_from_shape",
    "spatial_dims_of",
    "norm_layer",
    "conv_norm_act",
    "model_cost",
    "set_batchnorm",
]

CONV = {2: layers.Conv2D, 3: layers.Conv3D}
CONV_TRANSPOSE = {2: layers.Conv2DTranspose, 3: layers.Conv3DTranspose}
MAXPOOL = {2: layers.MaxPooling2D, 3: layers.MaxPooling3D}
AVGPOOL = {2: layers.AveragePooling2D, 3: layers.AveragePooling3D}
UPSAMPLE = {2: layers.UpSampling2D, 3: layers.UpSampling3D}
ZEROPAD = {2: layers.ZeroPadding2D, 3: layers.ZeroPadding3D}
GLOBAL_AVG_POOL = {2: layers.GlobalAveragePooling2D, 3: layers.GlobalAveragePooling3D}
GLOBAL_MAX_POOL = {2: layers.GlobalMaxPooling2D, 3: layers.GlobalMaxPooling3D}
SPATIAL_DROPOUT = {2: layers.SpatialDropout2D, 3: layers.SpatialDropout3D}


def spatial_dims_from_shape(input_shape) -> int:
    """Spatial dimensionality of a channels-last input shape without the batch axis.

    ``(H, W, C)`` gives 2 and ``(D, H, W, C)`` gives 3.

    Raises:
        ValueError: for any other rank, naming the expected and actual shapes.
    """
    rank = len(tuple(input_shape))
    if rank not in (3, 4):
        raise ValueError(
            "input_shape must be (H, W, C) for 2D or (D, H, W, C) for 3D "
            f"(channels-last, no batch axis); got {tuple(input_shape)} of rank {rank}"
        )
    return rank - 1


def spatial_dims_of(x) -> int:
    """Spatial dimensionality of a batched channels-last tensor (rank 4 or 5)."""
    return spatial_dims_from_shape(tuple(x.shape)[1:])


def norm_layer(norm: str | None, name: str | None = None, groups: int = 8):
    """A normalisation layer over the channel axis, or ``None`` for no normalisation.

    Args:
        norm: "batch", "layer", "group", "instance" or None.
        name: Layer name. Defaults to None.
        groups: Number of groups for "group". Defaults to 8.
    """
    if norm is None or norm == "none":
        return None
    if norm == "batch":
        return layers.BatchNormalization(axis=-1, name=name)
    if norm == "layer":
        return layers.LayerNormalization(axis=-1, name=name)
    if norm == "group":
        return layers.GroupNormalization(groups=groups, axis=-1, name=name)
    if norm == "instance":
        return layers.GroupNormalization(groups=-1, axis=-1, name=name)
    raise ValueError(f"norm must be one of 'batch', 'layer', 'group', 'instance' or None, got {norm!r}")


def conv_norm_act(
    x,
    filters: int,
    kernel_size=3,
    strides=1,
    norm: str | None = "batch",
    act: str | None = "relu",
    use_bias: bool | None = None,
    padding: str = "same",
    name: str | None = None,
):
    """Convolution, then normalisation, then activation, in 2D or 3D.

    The dimension is read off ``x``: a rank-4 tensor gives ``Conv2D``, rank 5
    ``Conv3D``. Layers are named ``{name}_conv``, ``{name}_norm`` and ``{name}_act``.

    Args:
        x: Input tensor, (B, H, W, C) or (B, D, H, W, C).
        filters: Output channels.
        kernel_size: Int or tuple. Defaults to 3.
        strides: Int or tuple. Defaults to 1.
        norm: See :func:`norm_layer`. Defaults to "batch".
        act: A Keras activation name, or None. Defaults to "relu".
        use_bias: Defaults to None, meaning a bias only when there is no normalisation
            (a bias before batch norm is cancelled by its mean subtraction).
        padding: "same" or "valid". Defaults to "same".
        name: Prefix for the layer names. Defaults to None (Keras picks names).

    Returns:
        The output tensor, (B, H', W', filters) or (B, D', H', W', filters).
    """
    dims = spatial_dims_of(x)
    if use_bias is None:
        use_bias = norm is None or norm == "none"
    sub = (lambda s: f"{name}_{s}") if name else (lambda s: None)
    x = CONV[dims](
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer="he_normal",
        name=sub("conv"),
    )(x)
    n = norm_layer(norm, name=sub("norm"))
    if n is not None:
        x = n(x)
    if act is not None:
        x = layers.Activation(act, name=sub("act"))(x)
    return x


def _shape_of(t):
    return tuple(t.shape)


def model_cost(model: keras.Model, dtype_bytes: int = 4) -> dict:
    """Parameters, multiply-adds and activation memory of a Keras model, for batch 1.

    Multiply-adds (MACs) count convolutions (including transposed), dense layers and
    the element-wise products of normalisation are ignored: they are small next to the
    convolutions. ``activation_bytes`` is the memory of every layer's output kept for
    the backward pass (the sum of all output sizes), which is what usually runs out
    first in 3D. It needs only the model's static shapes, no forward pass.

    Args:
        model: A built functional ``keras.Model`` with fully known spatial sizes.
        dtype_bytes: Bytes per activation value. Defaults to 4 (float32).

    Returns:
        ``{"params": int, "macs": int, "activation_bytes": int}``.
    """
    macs = 0
    act_elems = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
        for out in outputs:
            shape = _shape_of(out)[1:]
            if any(s is None for s in shape):
                raise ValueError(
                    f"model_cost needs static shapes; layer {layer.name!r} has output shape {_shape_of(out)}"
                )
            act_elems += math.prod(shape)
        if isinstance(layer, (layers.Conv2D, layers.Conv3D, layers.Conv2DTranspose, layers.Conv3DTranspose)):
            in_shape = _shape_of(layer.input)[1:]
            out_shape = _shape_of(layer.output)[1:]
            k = math.prod(layer.kernel_size)
            cin, cout = in_shape[-1], out_shape[-1]
            groups = getattr(layer, "groups", 1) or 1
            if isinstance(layer, (layers.Conv2DTranspose, layers.Conv3DTranspose)):
                macs += math.prod(in_shape[:-1]) * k * cin * cout
            else:
                macs += math.prod(out_shape[:-1]) * k * (cin // groups) * cout
        elif isinstance(layer, layers.Dense):
            in_shape = _shape_of(layer.input)[1:]
            macs += math.prod(in_shape) * layer.units
    from mednets.keras import count_params

    return {
        "params": count_params(model),
        "macs": int(macs),
        "activation_bytes": int(act_elems * dtype_bytes),
    }


def set_batchnorm(model, momentum: float = 0.9, epsilon: float | None = None) -> int:
    """Set the momentum (and optionally epsilon) of every ``BatchNormalization`` layer.

    Keras defaults to ``momentum=0.99, epsilon=1e-3``; PyTorch's ``BatchNorm`` (and so
    much official research code) uses ``momentum=0.1`` in its convention, which is
    ``0.9`` in Keras's, and ``eps=1e-5``. With 0.99 the moving statistics need hundreds
    of steps to forget their initial values, so a short CPU run can predict garbage in
    inference mode although its training loss is low. Call it before training;
    parameter counts do not change.

    Args:
        model: A Keras model or layer, changed in place (nested layers included).
        momentum: Keras-convention momentum in ``[0, 1)``. Defaults to 0.9.
        epsilon: New epsilon, or None to keep each layer's own. Defaults to None.

    Returns:
        The number of batch-norm layers changed.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    bns = [ly for ly in model._flatten_layers() if isinstance(ly, layers.BatchNormalization)]
    for ly in bns:
        ly.momentum = float(momentum)
        if epsilon is not None:
            ly.epsilon = float(epsilon)
    return len(bns)
