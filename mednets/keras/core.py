"""Shared Keras machinery: layer tables, normalisation, the input-shape check, costs.

One code path serves 2D and 3D: layers are looked up in small tables keyed by
``spatial_dims``, which is read off the input tensor. The channel axis is always -1
(never the ``bn_axis = 3`` idiom of Keras applications, which is wrong for 5-D tensors).

Every model of :mod:`mednets.keras` starts with an :class:`InputCheck` layer, so that a
model built with ``None`` spatial sizes still refuses, *when called*, an input that its
strides cannot take, with a ``ValueError`` naming the nearest valid sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from mednets.utils import check_divisible

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
    "NORMS",
    "FINAL_ACTIVATIONS",
    "spatial_dims_from_shape",
    "spatial_dims_of",
    "as_spatial_tuple",
    "check_positive_int",
    "check_rate",
    "check_final_activation",
    "check_input_shape",
    "InputCheck",
    "EncoderFeatures",
    "norm_layer",
    "conv_norm_act",
    "count_params",
    "model_cost",
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

#: Values of the ``norm`` argument ("layer" is an extra of the UNet 3+ chapter).
NORMS = (None, "batch", "instance", "group", "layer")
#: Values of the ``final_activation`` argument (None gives logits).
FINAL_ACTIVATIONS = (None, "sigmoid", "softmax")


def spatial_dims_from_shape(input_shape: Sequence[int | None]) -> int:
    """Spatial dimensionality of a channels-last input shape without the batch axis.

    ``(H, W, C)`` gives 2 and ``(D, H, W, C)`` gives 3.

    Raises:
        ValueError: for any other rank, naming the expected and actual shapes.

    Example:
        >>> spatial_dims_from_shape((16, 32, 32, 4))
        3
    """
    rank = len(tuple(input_shape))
    if rank not in (3, 4):
        raise ValueError(
            "input_shape must be (H, W, C) for 2D or (D, H, W, C) for 3D "
            f"(channels-last, no batch axis); got {tuple(input_shape)} of rank {rank}"
        )
    return rank - 1


def spatial_dims_of(x) -> int:
    """Spatial dimensionality of a batched channels-last tensor (rank 4 or 5).

    Example:
        >>> spatial_dims_of(keras.Input((8, 8, 8, 1)))
        3
    """
    return spatial_dims_from_shape(tuple(x.shape)[1:])


def as_spatial_tuple(value: int | Sequence[int], dims: int, what: str) -> tuple[int, ...]:
    """An int or a length-``dims`` sequence of positive ints, as a tuple.

    Raises:
        ValueError: naming ``what``, the expected length and the value.

    Example:
        >>> as_spatial_tuple(2, 3, "strides")
        (2, 2, 2)
    """
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * dims
    value = tuple(int(v) for v in value)
    if len(value) != dims or any(v < 1 for v in value):
        raise ValueError(
            f"{what} must be a positive int or {dims} positive ints for a {dims}D input, got {value}"
        )
    return value


def check_positive_int(value: int, what: str) -> None:
    """Raise a ``ValueError`` naming ``what`` unless ``value`` is an int >= 1.

    Example:
        >>> check_positive_int(3, "filters")
    """
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")


def check_rate(rate: float, what: str = "dropout") -> None:
    """Raise a ``ValueError`` unless ``0 <= rate < 1``.

    Example:
        >>> check_rate(0.5)
    """
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {rate!r}")


def check_final_activation(final_activation: str | None, out_channels: int) -> None:
    """Check a ``final_activation`` (None, "sigmoid" or "softmax") for ``out_channels``.

    A softmax over one channel is 1 everywhere, whatever the network computes, so it is
    refused.

    Raises:
        ValueError: an unknown activation, or "softmax" with one output channel.

    Example:
        >>> check_final_activation("sigmoid", 1)
    """
    if final_activation not in FINAL_ACTIVATIONS:
        raise ValueError(f"final_activation must be one of {FINAL_ACTIVATIONS}, got {final_activation!r}")
    if final_activation == "softmax" and out_channels == 1:
        raise ValueError(
            "final_activation='softmax' over out_channels=1 is 1 everywhere; use 'sigmoid' "
            "for one channel, or two or more channels for softmax"
        )


def check_input_shape(
    input_shape: Sequence[int | None],
    stride: int | Sequence[int],
    name: str = "model",
    channels: int | None = None,
    need_static: bool = False,
) -> int:
    """Validate a channels-last input shape (no batch axis) against a network's stride.

    The one input-shape check of :mod:`mednets.keras`: builders call it on their
    ``input_shape``, and :class:`InputCheck` calls it on every input the model sees.

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``; ``None`` spatial sizes are
            accepted (and not checked) unless ``need_static``.
        stride: The network's total stride, an int or one int per spatial axis; every
            spatial size must be a positive multiple of it.
        name: Network name for the message. Defaults to "model".
        channels: The expected channel count, or None to only require a positive int.
            Defaults to None.
        need_static: Refuse ``None`` spatial sizes. Defaults to False.

    Returns:
        The number of spatial dimensions, 2 or 3.

    Raises:
        ValueError: a wrong rank, a wrong channel count, an unknown size where one is
            needed, or a size that is not a multiple of the stride; the message names the
            shape, the stride and the nearest valid sizes.

    Example:
        >>> check_input_shape((None, 64, 4), 32)
        2
        >>> check_input_shape((16, 16, 5, 1), (4, 4, 1))
        3
    """
    input_shape = tuple(input_shape)
    dims = spatial_dims_from_shape(input_shape)
    got = input_shape[-1]
    if not isinstance(got, (int, np.integer)) or got < 1:
        raise ValueError(
            f"{name}: the last axis of input_shape {input_shape} must be a positive channel "
            f"count (channels-last), got {got!r}"
        )
    if channels is not None and got != channels:
        raise ValueError(
            f"{name} expects {channels} input channels (channels-last, the last axis), "
            f"got input shape {input_shape}"
        )
    spatial = input_shape[:-1]
    if need_static and any(s is None for s in spatial):
        raise ValueError(f"{name} needs known spatial sizes, got input_shape {input_shape}")
    stride = as_spatial_tuple(stride, dims, "stride")
    for divisor in sorted(set(stride)):
        if divisor == 1:
            continue
        masked = tuple(s if t == divisor else None for s, t in zip(spatial, stride))
        try:
            check_divisible(masked, divisor, what=f"{name} input")
        except ValueError as err:
            raise ValueError(
                f"{err}. Expected input_shape (*spatial, C) with spatial sizes divisible "
                f"by the total stride {stride}; got input_shape {input_shape}"
            ) from None
    return dims


@keras.saving.register_keras_serializable(package="mednets")
class InputCheck(layers.Layer):
    """Identity layer that checks every input against the network's stride and channels.

    Placed right after ``keras.Input``, it makes a model refuse, when called, an input
    whose rank, channel count or spatial sizes the network cannot take, even when the
    model was built with ``None`` spatial sizes. In an eager call and in ``predict``
    (where Keras traces with the batch's static shape) it raises the ``ValueError`` of
    :func:`check_input_shape`. When a size is only known at run time (a ``tf.data``
    pipeline with unknown shapes inside a compiled ``fit``) it adds a TensorFlow
    assertion whose message names the sizes and the stride. It has no weights, so
    parameter counts do not change.

    Args:
        stride: The network's total stride, int or one per spatial axis.
        channels: Expected input channels.
        model_name: Network name for messages. Defaults to "model".

    Example:
        >>> import numpy as np
        >>> inputs = keras.Input((None, None, 1))
        >>> model = keras.Model(inputs, InputCheck(4, 1)(inputs))
        >>> model(np.zeros((1, 6, 8, 1))).shape
        Traceback (most recent call last):
        ...
        ValueError: ... axis 0: 6 (nearest valid: 4 or 8)...
    """

    def __init__(self, stride, channels: int, model_name: str = "model", **kwargs):
        super().__init__(**kwargs)
        self.stride = stride if isinstance(stride, int) else tuple(int(s) for s in stride)
        self.channels = int(channels)
        self.model_name = str(model_name)

    def call(self, x):
        shape = tuple(x.shape)
        rank = len(shape)
        if rank not in (4, 5):
            raise ValueError(
                f"{self.model_name} expects a batch (B, H, W, C) or (B, D, H, W, C), got input "
                f"shape {shape} of rank {rank}"
            )
        check_input_shape(shape[1:], self.stride, self.model_name, channels=self.channels)
        stride = as_spatial_tuple(self.stride, rank - 2, "stride")
        unknown = [i for i, s in enumerate(shape[1:-1]) if s is None]
        if unknown and keras.backend.backend() == "tensorflow" and any(s > 1 for s in stride):
            import tensorflow as tf

            spatial = tf.shape(x)[1:-1]
            stride_t = tf.constant(stride, spatial.dtype)
            fits = tf.reduce_all(
                tf.logical_and(tf.equal(tf.math.floormod(spatial, stride_t), 0), spatial >= stride_t)
            )
            tf.debugging.Assert(
                fits,
                [
                    f"{self.model_name}: every input spatial size must be a positive multiple of "
                    f"the total stride {stride}; got spatial sizes",
                    spatial,
                ],
            )
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "stride": self.stride,
            "channels": self.channels,
            "model_name": self.model_name,
        }


class EncoderFeatures(list):
    """The features of an encoder, finest first, with their channels and reductions.

    The encoder contract of :mod:`mednets.keras` (as in segmentation_models_pytorch):
    an encoder returns its feature maps as a list ordered from the finest (largest)
    to the coarsest, and states each one's channel count and its down-sampling factor
    (reduction) relative to the input, so that any decoder can be put on any encoder.

    Args:
        features: Keras tensors, finest first.
        reductions: Reduction of each feature, an int (all axes) or a per-axis tuple.

    Attributes:
        channels: Channels of each feature, ``tuple[int, ...]``.
        reductions: As given.

    Example:
        >>> x = keras.Input((32, 32, 1))
        >>> f = EncoderFeatures([x, keras.layers.MaxPooling2D()(x)], reductions=(1, 2))
        >>> f.channels, f.reductions
        ((1, 1), (1, 2))
    """

    def __init__(self, features: Sequence, reductions: Sequence):
        super().__init__(features)
        if len(reductions) != len(self):
            raise ValueError(
                f"need one reduction per feature: {len(self)} features, {len(reductions)} reductions"
            )
        self.reductions = tuple(reductions)
        self.channels = tuple(int(f.shape[-1]) for f in self)


def norm_layer(
    norm: str | None,
    name: str | None = None,
    groups: int = 8,
    momentum: float = 0.99,
    epsilon: float = 1e-3,
) -> keras.layers.Layer | None:
    """A normalisation layer over the channel axis, or ``None`` for no normalisation.

    ``momentum`` and ``epsilon`` are set when the layer is built. Keras's defaults are
    ``momentum=0.99, epsilon=1e-3``; PyTorch's ``BatchNorm`` (and so much official
    research code) uses ``momentum=0.1`` in its convention, which is ``0.9`` in Keras's,
    and ``eps=1e-5``. With 0.99 the moving statistics need hundreds of steps to forget
    their initial values, so a short CPU run can predict garbage in inference mode
    although its training loss is low.

    Args:
        norm: "batch", "instance", "group", "layer" or None.
        name: Layer name. Defaults to None.
        groups: Number of groups for "group". Defaults to 8.
        momentum: Batch-norm momentum (Keras convention, in ``[0, 1)``); other norms
            have none. Defaults to 0.99 (Keras's).
        epsilon: Added to the variance, for every norm. Defaults to 1e-3 (Keras's).

    Raises:
        ValueError: an unknown ``norm`` or a momentum outside ``[0, 1)``.

    Example:
        >>> norm_layer("batch", momentum=0.9, epsilon=1e-5).momentum
        0.9
    """
    if norm is None:
        return None
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if norm == "batch":
        return layers.BatchNormalization(axis=-1, momentum=momentum, epsilon=epsilon, name=name)
    if norm == "layer":
        return layers.LayerNormalization(axis=-1, epsilon=epsilon, name=name)
    if norm == "group":
        return layers.GroupNormalization(groups=groups, axis=-1, epsilon=epsilon, name=name)
    if norm == "instance":
        return layers.GroupNormalization(groups=-1, axis=-1, epsilon=epsilon, name=name)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def conv_norm_act(
    x,
    filters: int,
    kernel_size: int | Sequence[int] = 3,
    strides: int | Sequence[int] = 1,
    norm: str | None = "batch",
    act: str | None = "relu",
    use_bias: bool | None = None,
    padding: str = "same",
    name: str | None = None,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
) -> keras.KerasTensor:
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
        bn_momentum: Momentum of batch norm, see :func:`norm_layer`. Defaults to 0.99.
        bn_epsilon: Epsilon of batch norm (the other norms keep Keras's 1e-3).
            Defaults to 1e-3.

    Returns:
        The output tensor, (B, H', W', filters) or (B, D', H', W', filters).

    Example:
        >>> conv_norm_act(keras.Input((8, 8, 8, 2)), 4, strides=2).shape
        (None, 4, 4, 4, 4)
    """
    dims = spatial_dims_of(x)
    if use_bias is None:
        use_bias = norm is None
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
    n = norm_layer(norm, sub("norm"), momentum=bn_momentum, epsilon=bn_epsilon if norm == "batch" else 1e-3)
    if n is not None:
        x = n(x)
    if act is not None:
        x = layers.Activation(act, name=sub("act"))(x)
    return x


def count_params(model: keras.layers.Layer, trainable_only: bool = False) -> int:
    """Number of parameters of a Keras model or layer.

    Keras counts the moving mean and variance of batch normalisation as
    (non-trainable) parameters, so ``count_params(m)`` equals the "Total params" of
    ``m.summary()`` and ``count_params(m, trainable_only=True)`` its "Trainable params".

    Args:
        model: A built ``keras.Model`` or ``keras.layers.Layer``.
        trainable_only: Count only trainable weights. Defaults to False.

    Returns:
        The parameter count as a Python int.

    Raises:
        ValueError: ``model`` is not a Keras layer or model.

    Example:
        >>> count_params(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))
        15
    """
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(f"expected a keras Model or Layer, got {type(model).__name__}")
    weights = model.trainable_weights if trainable_only else model.weights
    return int(sum(int(np.prod(w.shape)) for w in weights))


def model_cost(model: keras.Model, dtype_bytes: int = 4) -> dict:
    """Parameters, multiply-adds and activation memory of a Keras model, for batch 1.

    Multiply-adds (MACs) count convolutions (including transposed), dense layers and
    the element-wise products of normalisation are ignored: they are small next to the
    convolutions. ``activation_bytes`` is the memory of every layer's output kept for
    the backward pass (the sum of all output sizes), which is what usually runs out
    first in 3D. It needs only the model's static shapes, no forward pass. The input
    and the :class:`InputCheck` identity are not counted.

    Args:
        model: A built functional ``keras.Model`` with fully known spatial sizes.
        dtype_bytes: Bytes per activation value. Defaults to 4 (float32).

    Returns:
        ``{"params": int, "macs": int, "activation_bytes": int}``.

    Raises:
        ValueError: a layer output with an unknown size.

    Example:
        >>> inputs = keras.Input((8, 8, 1))
        >>> model_cost(keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(inputs)))
        {'params': 20, 'macs': 1152, 'activation_bytes': 512}
    """
    macs = 0
    act_elems = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.InputLayer, InputCheck)):
            continue
        outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
        for out in outputs:
            shape = tuple(out.shape)[1:]
            if any(s is None for s in shape):
                raise ValueError(
                    f"model_cost needs static shapes; layer {layer.name!r} has output shape "
                    f"{tuple(out.shape)}"
                )
            act_elems += math.prod(shape)
        if isinstance(layer, (layers.Conv2D, layers.Conv3D, layers.Conv2DTranspose, layers.Conv3DTranspose)):
            in_shape = tuple(layer.input.shape)[1:]
            out_shape = tuple(layer.output.shape)[1:]
            k = math.prod(layer.kernel_size)
            cin, cout = in_shape[-1], out_shape[-1]
            groups = getattr(layer, "groups", 1) or 1
            if isinstance(layer, (layers.Conv2DTranspose, layers.Conv3DTranspose)):
                macs += math.prod(in_shape[:-1]) * k * cin * cout
            else:
                macs += math.prod(out_shape[:-1]) * k * (cin // groups) * cout
        elif isinstance(layer, layers.Dense):
            in_shape = tuple(layer.input.shape)[1:]
            macs += math.prod(in_shape) * layer.units
    return {
        "params": count_params(model),
        "macs": int(macs),
        "activation_bytes": int(act_elems * dtype_bytes),
    }
