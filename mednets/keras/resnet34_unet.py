"""U-Net with a pre-activation ResNet34 encoder, in 2D and 3D (Keras 3).

The encoder is the ResNet34 of the ``classification_models`` / ``segmentation_models``
Keras libraries (Yakubovskiy, 2019): a batch norm on the raw input, a 7x7 stride-2
convolution and 3x3 max pooling, then four stages of 3, 4, 6 and 3 *pre-activation*
basic blocks (He et al., 2016, https://arxiv.org/abs/1603.05027) and a final BN-ReLU.
The decoder is a U-Net decoder (Ronneberger et al., 2015,
https://arxiv.org/abs/1505.04597) with five x2 up-sampling blocks that concatenate four
encoder skips.

With ``input_shape=(H, W, 3)``, ``out_channels=1`` and the ``"upsampling"`` decoder,
:func:`resnet34_unet` has exactly the parameter count of ``segmentation_models``'
``Unet("resnet34")``: 24,456,154 in total, 24,438,804 trainable.

**The depth axis.** In 3D, ``anisotropic_levels`` treat the *first* spatial axis as
depth (the slice axis): a Keras batch is ``(B, D, H, W, C)`` and the flat levels use
``1 x k x k`` kernels and ``(1, 2, 2)`` strides, which act on ``H`` and ``W`` only. A
:mod:`mednets.data` volume is ``(C, X, Y, Z)`` with the slice axis ``z`` last; move it
first with :func:`mednets.data.depth_first` (``(C, X, Y, Z) -> (C, Z, X, Y)``) and then
channels last (``np.moveaxis(v, 0, -1)``, giving ``(Z, X, Y, C)``). Isotropic models
(``anisotropic_levels=0``) do not care.

Layer names follow the reference library (``conv0``, ``stage2_unit1_relu1``,
``decoder_stage0a``, ...), so the skip points read the same in both.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import h5py
import keras
from keras import layers

from mednets.keras.core import (
    CONV,
    CONV_TRANSPOSE,
    GLOBAL_AVG_POOL,
    MAXPOOL,
    UPSAMPLE,
    ZEROPAD,
    EncoderFeatures,
    InputCheck,
    check_final_activation,
    check_input_shape,
    check_positive_int,
    conv_norm_act,
    norm_layer,
)

__all__ = [
    "RESNET34_STAGE_BLOCKS",
    "FEATURE_NAMES",
    "ENCODER_OUTPUT",
    "DECODER_FILTERS",
    "DECODER_BLOCKS",
    "check_anisotropic",
    "preact_basic_block",
    "resnet_encoder",
    "resnet34_encoder_model",
    "resnet34_classifier",
    "unet_decoder_block",
    "unet_decoder",
    "resnet_unet",
    "resnet34_unet",
    "extract_encoder",
    "freeze_encoder_layers",
    "save_encoder_weights",
    "load_encoder_weights",
]

#: Basic blocks per stage of ResNet34 (He et al., 2016, Table 1).
RESNET34_STAGE_BLOCKS = (3, 4, 6, 3)
#: The encoder's features, finest first: 1/2, 1/4, 1/8, 1/16 and 1/32 of the input size.
#: The first four are the U-Net's skips; the last is the encoder output.
FEATURE_NAMES = ("relu0", "stage2_unit1_relu1", "stage3_unit1_relu1", "stage4_unit1_relu1", "relu1")
#: Name of the encoder's last layer (BN-ReLU after stage 4, 1/32 of the input size).
ENCODER_OUTPUT = "relu1"
#: Filters of the five decoder blocks in ``segmentation_models``' Unet.
DECODER_FILTERS = (256, 128, 64, 32, 16)
#: Decoder block types.
DECODER_BLOCKS = ("upsampling", "transpose")

# ResNet BN epsilon of the reference library (MXNet heritage).
_BN_EPSILON = 2e-5
_CONV = dict(use_bias=False, kernel_initializer="he_uniform", padding="valid")
_N_DOWN = 5  # stride-2 steps in the encoder: conv0, pooling0, stages 2, 3 and 4


def _flat(level: int, anisotropic_levels: int) -> bool:
    """Whether resolution level ``level`` (0 = input, 5 = 1/32) uses in-plane kernels."""
    return anisotropic_levels > 0 and level <= anisotropic_levels


def _kernel(k: int, spatial_dims: int, flat: bool) -> tuple[int, ...]:
    # (k, k) in 2D; (k, k, k) in 3D, or (1, k, k) when the level is anisotropic.
    if spatial_dims == 3 and flat:
        return (1, k, k)
    return (k,) * spatial_dims


def _pad(p: int, spatial_dims: int, flat: bool):
    # Symmetric zero padding, none along depth for in-plane kernels.
    if spatial_dims == 3 and flat:
        return ((0, 0), (p, p), (p, p))
    return p


def _bn(name: str, momentum: float):
    return norm_layer("batch", name=name, momentum=momentum, epsilon=_BN_EPSILON)


def _stride(spatial_dims: int, anisotropic_levels: int) -> tuple[int, ...]:
    """Total stride per axis: 32, or ``2**(5 - n)`` along depth with ``n`` flat levels."""
    if spatial_dims == 3 and anisotropic_levels:
        return (2 ** (_N_DOWN - anisotropic_levels), 2**_N_DOWN, 2**_N_DOWN)
    return (2**_N_DOWN,) * spatial_dims


def check_anisotropic(anisotropic_levels: int, spatial_dims: int) -> None:
    """Check ``anisotropic_levels`` (an int in 0..5, non-zero only in 3D).

    Raises:
        ValueError: naming the value and the dimension.

    Example:
        >>> check_anisotropic(2, 3)
    """
    if not isinstance(anisotropic_levels, int) or not 0 <= anisotropic_levels <= _N_DOWN:
        raise ValueError(f"anisotropic_levels must be an integer in 0..{_N_DOWN}, got {anisotropic_levels!r}")
    if anisotropic_levels and spatial_dims != 3:
        raise ValueError(
            f"anisotropic_levels applies only to 3D inputs; got {anisotropic_levels} "
            f"with spatial_dims={spatial_dims}"
        )


def preact_basic_block(
    x,
    filters: int,
    strides: int,
    projection: bool,
    flat: bool = False,
    bn_momentum: float = 0.99,
    name: str = "block",
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut.

    Paper: https://arxiv.org/abs/1603.05027. The shortcut is the block input (identity)
    or, for ``projection=True``, a 1x1 convolution of the *pre-activated* input with the
    block's stride.

    Args:
        x: ``(B, *spatial, C)``.
        filters: Output channels.
        strides: 1 or 2 (along depth always 1 when ``flat``).
        projection: 1x1 convolution shortcut.
        flat: 3D only: ``1 x 3 x 3`` kernels, in-plane stride. Defaults to False.
        bn_momentum: Batch-norm momentum (Keras convention). Defaults to 0.99.
        name: Layer-name prefix (``{name}bn1``, ``{name}relu1``, ...). Defaults to "block".

    Returns:
        ``(output, preact)``: the block output and the pre-activated input (``relu1``).

    Example:
        >>> y, _ = preact_basic_block(keras.Input((8, 8, 8, 4)), 8, 2, True, name="u_")
        >>> y.shape
        (None, 4, 4, 4, 8)
    """
    dims = len(x.shape) - 2
    conv, pad = CONV[dims], ZEROPAD[dims]
    strides = tuple(1 if (dims == 3 and flat and i == 0) else strides for i in range(dims))
    h = _bn(name + "bn1", bn_momentum)(x)
    h = preact = layers.Activation("relu", name=name + "relu1")(h)
    shortcut = x
    if projection:
        shortcut = conv(filters, 1, strides=strides, name=name + "sc", **_CONV)(h)
    h = pad(_pad(1, dims, flat), name=name + "pad1")(h)
    h = conv(filters, _kernel(3, dims, flat), strides=strides, name=name + "conv1", **_CONV)(h)
    h = _bn(name + "bn2", bn_momentum)(h)
    h = layers.Activation("relu", name=name + "relu2")(h)
    h = pad(_pad(1, dims, flat), name=name + "pad2")(h)
    h = conv(filters, _kernel(3, dims, flat), name=name + "conv2", **_CONV)(h)
    return layers.Add(name=name + "add")([h, shortcut]), preact


def resnet_encoder(
    inputs,
    stage_blocks: Sequence[int] = RESNET34_STAGE_BLOCKS,
    init_filters: int = 64,
    anisotropic_levels: int = 0,
    bn_momentum: float = 0.99,
) -> EncoderFeatures:
    """Pre-activation ResNet encoder; returns its five features, finest first.

    Paper: https://arxiv.org/abs/1603.05027 (pre-activation blocks). Layout of the
    ``classification_models`` ResNet34: ``bn_data`` (no scale) -> 7x7/2 ``conv0`` ->
    ``bn0`` -> ``relu0`` -> 3x3/2 ``pooling0`` -> stages of basic blocks -> ``bn1`` ->
    ``relu1``. The first block of every stage has a projection (1x1 conv) shortcut;
    the other blocks have identity shortcuts. Batch norm has the reference epsilon 2e-5.

    Args:
        inputs: Keras tensor ``(B, H, W, C)`` or ``(B, D, H, W, C)``.
        stage_blocks: Basic blocks per stage (four stages). Defaults to ``(3, 4, 6, 3)``
            (ResNet34).
        init_filters: Filters of the stem and of stage 1; stage ``s`` has
            ``init_filters * 2**(s-1)``. Defaults to 64.
        anisotropic_levels: 3D only. The first ``n`` of the five stride-2 steps
            down-sample in-plane only (stride ``(1, 2, 2)``: the first spatial axis is
            depth), and the convolutions at those resolution levels use ``1 x k x k``
            kernels. Defaults to 0 (isotropic).
        bn_momentum: Batch-norm momentum (Keras convention). Defaults to 0.99 (the
            reference library's).

    Returns:
        :class:`~mednets.keras.core.EncoderFeatures`, the tensors of
        :data:`FEATURE_NAMES` finest first: ``relu0`` (1/2, ``F`` channels), the
        pre-activations at the first unit of stages 2, 3, 4 (1/4, 1/8, 1/16; ``F``,
        ``2F``, ``4F``) and ``relu1`` (1/32, ``8F``), with ``channels`` and per-feature
        ``reductions`` (ints, or per-axis tuples with ``anisotropic_levels``).

    Raises:
        ValueError: bad ``stage_blocks``, ``init_filters`` or ``anisotropic_levels``.

    Example:
        >>> feats = resnet_encoder(keras.Input((64, 64, 3)), init_filters=8)
        >>> feats.channels, feats.reductions, feats[0].shape
        ((8, 8, 16, 32, 64), (2, 4, 8, 16, 32), (None, 32, 32, 8))
    """
    dims = len(inputs.shape) - 2
    check_anisotropic(anisotropic_levels, dims)
    check_positive_int(init_filters, "init_filters")
    if len(stage_blocks) != 4:
        raise ValueError(f"stage_blocks must have 4 stages, got {len(stage_blocks)}: {tuple(stage_blocks)}")
    for b in stage_blocks:
        check_positive_int(b, "stage_blocks entries")
    n = anisotropic_levels
    conv, pad, pool = CONV[dims], ZEROPAD[dims], MAXPOOL[dims]

    def stride(level):  # stride of the step that produces ``level``
        return (1, 2, 2) if (dims == 3 and level <= n) else 2

    feats = {}
    # Stem: normalise the raw input (no learned scale), 7x7/2 conv, BN-ReLU.
    x = layers.BatchNormalization(
        axis=-1, momentum=bn_momentum, epsilon=_BN_EPSILON, scale=False, name="bn_data"
    )(inputs)
    x = pad(_pad(3, dims, _flat(1, n)), name="conv0_pad")(x)
    x = conv(init_filters, _kernel(7, dims, _flat(1, n)), strides=stride(1), name="conv0", **_CONV)(x)
    x = _bn("bn0", bn_momentum)(x)
    x = feats["relu0"] = layers.Activation("relu", name="relu0")(x)  # (B, H/2, W/2, F)
    x = pad(_pad(1, dims, _flat(2, n)), name="pooling0_pad")(x)
    x = pool(_kernel(3, dims, _flat(2, n)), strides=stride(2), name="pooling0")(x)  # 1/4

    for s, reps in enumerate(stage_blocks, start=1):
        level = s + 1  # stage 1 lives at 1/4 (level 2), stage 4 at 1/32 (level 5)
        filters = init_filters * 2 ** (s - 1)
        for u in range(1, reps + 1):
            name = f"stage{s}_unit{u}_"
            strides = 2 if (u == 1 and s > 1) else 1
            # Stride-2 blocks (and their pre-activation) straddle two levels: the
            # kernels follow the level of the block's output.
            x, preact = preact_basic_block(
                x,
                filters,
                strides,
                projection=(u == 1),
                flat=_flat(level, n),
                bn_momentum=bn_momentum,
                name=name,
            )
            if u == 1 and s > 1:
                feats[name + "relu1"] = preact  # BN-ReLU of stage s-1's output
    x = _bn("bn1", bn_momentum)(x)
    feats[ENCODER_OUTPUT] = layers.Activation("relu", name=ENCODER_OUTPUT)(x)  # (B, H/32, W/32, 8F)
    if dims == 3 and n:
        reductions = tuple((2 ** max(0, lv - n), 2**lv, 2**lv) for lv in range(1, _N_DOWN + 1))
    else:
        reductions = tuple(2**lv for lv in range(1, _N_DOWN + 1))
    return EncoderFeatures([feats[k] for k in FEATURE_NAMES], reductions)


def _input(input_shape: Sequence[int | None], anisotropic_levels: int, name: str):
    """Checks the shape (2D/3D, sizes divisible by the encoder's stride): input, checked input."""
    input_shape = tuple(input_shape)
    dims = check_input_shape(input_shape, 2, name=name)  # rank and channels first
    check_anisotropic(anisotropic_levels, dims)
    stride = _stride(dims, anisotropic_levels)
    check_input_shape(input_shape, stride, name=name)
    inputs = keras.Input(input_shape, name="data")
    return inputs, InputCheck(stride, input_shape[-1], name, name="input_check")(inputs)


def resnet34_encoder_model(
    input_shape: Sequence[int | None],
    init_filters: int = 64,
    anisotropic_levels: int = 0,
    bn_momentum: float = 0.99,
    name: str = "resnet34_encoder",
) -> keras.Model:
    """The ResNet34 encoder as a model: input -> its five features, finest first.

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``, channels last; sizes divisible
            by 32 (``None`` for any, checked when called).
        init_filters: see :func:`resnet_encoder`. Defaults to 64.
        anisotropic_levels: see :func:`resnet_encoder`. Defaults to 0.
        bn_momentum: see :func:`resnet_encoder`. Defaults to 0.99.
        name: model name. Defaults to ``"resnet34_encoder"``.

    Returns:
        ``keras.Model`` mapping ``(B, *spatial, C)`` to the list of the five features of
        :data:`FEATURE_NAMES`, the last ``(B, *spatial/32, 8 * init_filters)``.

    Example:
        >>> resnet34_encoder_model((64, 64, 4), init_filters=8).outputs[-1].shape
        (None, 2, 2, 64)
    """
    inputs, x = _input(input_shape, anisotropic_levels, name)
    feats = resnet_encoder(x, RESNET34_STAGE_BLOCKS, init_filters, anisotropic_levels, bn_momentum)
    return keras.Model(inputs, list(feats), name=name)


def resnet34_classifier(
    input_shape: Sequence[int | None],
    num_classes: int = 2,
    init_filters: int = 64,
    anisotropic_levels: int = 0,
    bn_momentum: float = 0.99,
    final_activation: str | None = "softmax",
    name: str = "resnet34_classifier",
) -> keras.Model:
    """ResNet34 classifier: the encoder, global average pooling and a dense layer.

    Its encoder layers have the same names and order as the encoder inside
    :func:`resnet34_unet`, so :func:`save_encoder_weights` on a trained classifier
    writes a file that :func:`load_encoder_weights` (or ``encoder_weights=``) loads
    into a U-Net.

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``, channels last.
        num_classes: number of classes. Defaults to 2.
        init_filters: see :func:`resnet_encoder`. Defaults to 64.
        anisotropic_levels: see :func:`resnet_encoder`. Defaults to 0.
        bn_momentum: see :func:`resnet_encoder`. Defaults to 0.99.
        final_activation: None (logits), "sigmoid" or "softmax". Defaults to "softmax".
        name: model name. Defaults to ``"resnet34_classifier"``.

    Returns:
        ``keras.Model``: ``(B, *spatial, C) -> (B, num_classes)``.

    Raises:
        ValueError: bad arguments or input shape; an input that does not fit when called.

    Example:
        >>> resnet34_classifier((64, 64, 4), num_classes=2, init_filters=8).output.shape
        (None, 2)
    """
    check_positive_int(num_classes, "num_classes")
    check_final_activation(final_activation, num_classes)
    inputs, x = _input(input_shape, anisotropic_levels, name)
    dims = len(inputs.shape) - 2
    feats = resnet_encoder(x, RESNET34_STAGE_BLOCKS, init_filters, anisotropic_levels, bn_momentum)
    x = GLOBAL_AVG_POOL[dims](name="pool1")(feats[-1])  # (B, 8F)
    x = layers.Dense(num_classes, name="fc1")(x)
    x = layers.Activation(final_activation or "linear", name=final_activation or "logits")(x)
    return keras.Model(inputs, x, name=name)


def unet_decoder_block(
    x,
    skip,
    filters: int,
    stage: int,
    block: str = "upsampling",
    up: int | tuple[int, ...] = 2,
    kernel: int | tuple[int, ...] = 3,
    norm: str | None = "batch",
    bn_momentum: float = 0.99,
) -> keras.KerasTensor:
    """One x2 decoder step of ``segmentation_models``' U-Net, then concatenate ``skip``.

    Args:
        x: ``(B, *spatial, C)``.
        skip: ``(B, *spatial * up, C_skip)`` or None.
        filters: Output channels.
        stage: Block index, for the names ``decoder_stage{stage}...``.
        block: ``"upsampling"`` (``UpSampling`` -> concat -> conv-BN-ReLU x2) or
            ``"transpose"`` (4x4/2 transposed conv-BN-ReLU -> concat -> conv-BN-ReLU).
            Defaults to ``"upsampling"``.
        up: Up-sampling factor, int or per axis. Defaults to 2.
        kernel: Kernel of the convolutions. Defaults to 3.
        norm: Normalisation after each conv. Defaults to "batch".
        bn_momentum: Batch-norm momentum (Keras convention). Defaults to 0.99.

    Returns:
        ``(B, *spatial * up, filters)``.

    Example:
        >>> unet_decoder_block(keras.Input((4, 4, 8)), None, 4, 0).shape
        (None, 8, 8, 4)
    """
    dims = len(x.shape) - 2
    base = f"decoder_stage{stage}"
    kw = dict(norm=norm, bn_momentum=bn_momentum)
    if block == "upsampling":
        x = UPSAMPLE[dims](size=up, name=base + "_upsampling")(x)
        if skip is not None:
            x = layers.Concatenate(axis=-1, name=base + "_concat")([x, skip])
        x = conv_norm_act(x, filters, kernel, name=base + "a", **kw)
        return conv_norm_act(x, filters, kernel, name=base + "b", **kw)
    if block != "transpose":
        raise ValueError(f"block must be one of {DECODER_BLOCKS}, got {block!r}")
    tkernel = tuple(1 if u == 1 else 4 for u in up) if isinstance(up, tuple) else 4
    x = CONV_TRANSPOSE[dims](
        filters, tkernel, strides=up, padding="same", use_bias=norm is None, name=base + "a_transpose"
    )(x)
    n = norm_layer(norm, name=base + "a_bn", momentum=bn_momentum)
    if n is not None:
        x = n(x)
    x = layers.Activation("relu", name=base + "a_relu")(x)
    if skip is not None:
        x = layers.Concatenate(axis=-1, name=base + "_concat")([x, skip])
    return conv_norm_act(x, filters, kernel, name=base + "b", **kw)


def unet_decoder(
    features: Sequence,
    decoder_filters: Sequence[int] = DECODER_FILTERS,
    decoder_block: str = "upsampling",
    anisotropic_levels: int = 0,
    norm: str | None = "batch",
    bn_momentum: float = 0.99,
) -> keras.KerasTensor:
    """U-Net decoder of ``segmentation_models``: five x2 blocks on encoder features.

    ``features`` follow the encoder contract (finest first, at 1/2 .. 1/32 of the
    input). Block ``i`` doubles the resolution of its input and concatenates the next
    finer feature (the last block has none). Any encoder with five such features fits.

    Args:
        features: five tensors, finest first (an
            :class:`~mednets.keras.core.EncoderFeatures` from :func:`resnet_encoder`).
        decoder_filters: filters per block. Defaults to ``(256, 128, 64, 32, 16)``.
        decoder_block: ``"upsampling"`` or ``"transpose"``, see
            :func:`unet_decoder_block`. Defaults to ``"upsampling"``.
        anisotropic_levels: mirror of the encoder's option: blocks that undo an
            in-plane step up-sample by ``(1, 2, 2)`` and use ``1 x 3 x 3`` kernels.
            Defaults to 0.
        norm: normalisation after each decoder conv, "batch" or None. Defaults to "batch".
        bn_momentum: Batch-norm momentum (Keras convention). Defaults to 0.99.

    Returns:
        Tensor ``(B, *spatial, decoder_filters[-1])`` at the input resolution.

    Raises:
        ValueError: not five features or five filters, an unknown block, bad
            ``anisotropic_levels``.

    Example:
        >>> feats = resnet_encoder(keras.Input((64, 64, 3)), init_filters=8)
        >>> unet_decoder(feats, (32, 16, 8, 8, 4)).shape
        (None, 64, 64, 4)
    """
    if decoder_block not in DECODER_BLOCKS:
        raise ValueError(f"decoder_block must be one of {DECODER_BLOCKS}, got {decoder_block!r}")
    if len(decoder_filters) != _N_DOWN:
        raise ValueError(
            f"decoder_filters must have {_N_DOWN} entries (one per x2 step of the encoder), "
            f"got {len(decoder_filters)}: {tuple(decoder_filters)}"
        )
    if len(features) != _N_DOWN:
        raise ValueError(
            f"features must be the {_N_DOWN} encoder features (1/2 .. 1/32, finest first), "
            f"got {len(features)}"
        )
    x = features[-1]
    dims = len(x.shape) - 2
    check_anisotropic(anisotropic_levels, dims)
    skips = list(features[-2::-1])  # 1/16, 1/8, 1/4, 1/2
    for i, filters in enumerate(decoder_filters):
        step = _N_DOWN - i  # block i undoes encoder step 5 - i
        in_plane = dims == 3 and step <= anisotropic_levels
        up = (1, 2, 2) if in_plane else 2
        if decoder_block == "transpose" and not in_plane:
            up = (2,) * dims
        kernel = _kernel(3, dims, _flat(step - 1, anisotropic_levels))
        skip = skips[i] if i < len(skips) else None
        x = unet_decoder_block(x, skip, filters, i, decoder_block, up, kernel, norm, bn_momentum)
    return x


def resnet_unet(
    input_shape: Sequence[int | None],
    out_channels: int = 1,
    decoder_block: str = "upsampling",
    freeze_encoder: bool = False,
    encoder_weights: str | None = None,
    stage_blocks: Sequence[int] = RESNET34_STAGE_BLOCKS,
    init_filters: int = 64,
    decoder_filters: Sequence[int] = DECODER_FILTERS,
    anisotropic_levels: int = 0,
    final_activation: str | None = "sigmoid",
    norm: str | None = "batch",
    bn_momentum: float = 0.99,
    name: str = "resnet_unet",
) -> keras.Model:
    """Generic pre-activation-ResNet U-Net; :func:`resnet34_unet` fixes ``stage_blocks``.

    Args: as :func:`resnet34_unet`, plus ``stage_blocks`` (basic blocks per stage).

    Returns:
        ``keras.Model``: ``(B, *spatial, C) -> (B, *spatial, out_channels)``.

    Raises:
        ValueError: as :func:`resnet34_unet`.

    Example:
        >>> m = resnet_unet((32, 32, 1), stage_blocks=(1, 1, 1, 1), init_filters=4,
        ...                 decoder_filters=(8, 8, 4, 4, 4))
        >>> m.output_shape
        (None, 32, 32, 1)
    """
    check_positive_int(out_channels, "out_channels")
    check_final_activation(final_activation, out_channels)
    if decoder_block not in DECODER_BLOCKS:
        raise ValueError(f"decoder_block must be one of {DECODER_BLOCKS}, got {decoder_block!r}")
    if norm not in ("batch", None):
        raise ValueError(f"norm (of the decoder) must be 'batch' or None, got {norm!r}")
    inputs, x = _input(input_shape, anisotropic_levels, name)
    dims = len(inputs.shape) - 2
    feats = resnet_encoder(x, stage_blocks, init_filters, anisotropic_levels, bn_momentum)
    x = unet_decoder(feats, decoder_filters, decoder_block, anisotropic_levels, norm, bn_momentum)
    # Head: 3x3 conv to the output channels (with bias), then the final activation.
    x = CONV[dims](
        out_channels,
        _kernel(3, dims, _flat(0, anisotropic_levels)),
        padding="same",
        use_bias=True,
        name="final_conv",
    )(x)
    outputs = layers.Activation(final_activation or "linear", name=final_activation or "logits")(x)
    model = keras.Model(inputs, outputs, name=name)  # (B, *spatial, out_channels)
    if encoder_weights is not None:
        load_encoder_weights(model, encoder_weights)
    if freeze_encoder:
        freeze_encoder_layers(model)
    return model


def resnet34_unet(
    input_shape: Sequence[int | None],
    out_channels: int = 1,
    decoder_block: str = "upsampling",
    freeze_encoder: bool = False,
    encoder_weights: str | None = None,
    init_filters: int = 64,
    decoder_filters: Sequence[int] = DECODER_FILTERS,
    anisotropic_levels: int = 0,
    final_activation: str | None = "sigmoid",
    norm: str | None = "batch",
    bn_momentum: float = 0.99,
    name: str = "resnet34_unet",
) -> keras.Model:
    """U-Net with a pre-activation ResNet34 encoder, in 2D or 3D.

    Papers: ResNet https://arxiv.org/abs/1512.03385, pre-activation
    https://arxiv.org/abs/1603.05027, U-Net https://arxiv.org/abs/1505.04597.
    The defaults rebuild ``segmentation_models.Unet("resnet34")``
    (https://github.com/qubvel/segmentation_models): for input ``(H, W, 3)`` and one
    output channel, 24,456,154 parameters, 24,438,804 of them trainable.

    Depth axis: with ``anisotropic_levels`` the *first* spatial axis is depth (the
    slice axis). A :mod:`mednets.data` volume ``(C, X, Y, Z)`` goes there with
    :func:`mednets.data.depth_first` and then ``np.moveaxis(v, 0, -1)``: ``(Z, X, Y, C)``.

    Args:
        input_shape: ``(H, W, C)`` (2D) or ``(D, H, W, C)`` (3D), channels last. Sizes
            must be divisible by 32 (``None`` for any size, checked when the model is
            called); in 3D with ``anisotropic_levels=n`` the depth only by ``2**(5-n)``.
        out_channels: output channels. Defaults to 1.
        decoder_block: ``"upsampling"`` or ``"transpose"``. Defaults to ``"upsampling"``.
        freeze_encoder: make every encoder layer (batch norm included) non-trainable.
            Defaults to False.
        encoder_weights: path to a Keras ``.weights.h5`` file written by
            :func:`save_encoder_weights` for an encoder of the same configuration;
            nothing is ever downloaded. Defaults to None (random initialisation).
        init_filters: encoder width (64 in ResNet34). Defaults to 64.
        decoder_filters: filters of the five decoder blocks. Defaults to
            ``(256, 128, 64, 32, 16)``.
        anisotropic_levels: 3D only: number of early x2 steps that are in-plane only
            (along the last two spatial axes), with ``1 x k x k`` kernels at those
            levels. Defaults to 0.
        final_activation: None (logits), "sigmoid" or "softmax". Defaults to "sigmoid".
        norm: normalisation of the decoder, "batch" or None (the encoder is the
            reference ResNet with batch norm). Defaults to "batch".
        bn_momentum: momentum (Keras convention) of every batch norm, set at build
            time. Defaults to 0.99 (the reference library's); short CPU runs want 0.9.
        name: model name. Defaults to ``"resnet34_unet"``.

    Returns:
        ``keras.Model``: ``(B, *spatial, C) -> (B, *spatial, out_channels)``.

    Raises:
        ValueError: a spatial size not divisible by 32 (the message names the nearest
            valid sizes), at build time or when called; a wrong rank or channel count
            when called; an unknown ``decoder_block``; bad ``anisotropic_levels``; an
            encoder weights file that does not match.

    Example:
        >>> model = resnet34_unet((64, 64, 4), init_filters=8, decoder_filters=(32, 16, 8, 8, 4))
        >>> model.output.shape
        (None, 64, 64, 1)
    """
    return resnet_unet(
        input_shape,
        out_channels,
        decoder_block,
        freeze_encoder,
        encoder_weights,
        RESNET34_STAGE_BLOCKS,
        init_filters,
        decoder_filters,
        anisotropic_levels,
        final_activation,
        norm,
        bn_momentum,
        name,
    )


def extract_encoder(model: keras.Model) -> keras.Model:
    """The encoder inside ``model`` (a U-Net or classifier from this module) as a model.

    The returned model *shares* its layers with ``model``: loading weights into it, or
    freezing it, changes ``model``.

    Args:
        model: a model built by this module or by
            :func:`mednets.keras.unet3plus.unet3plus_resnet34` (it has a layer named
            ``"relu1"``).

    Returns:
        ``keras.Model`` from ``model``'s input to its ``relu1`` features.

    Raises:
        ValueError: ``model`` has no ``relu1`` layer.
    """
    try:
        features = model.get_layer(ENCODER_OUTPUT).output
    except ValueError as err:
        raise ValueError(
            f"expected a model with an encoder output layer named {ENCODER_OUTPUT!r}; "
            f"model {model.name!r} has none"
        ) from err
    return keras.Model(model.input, features, name=f"{model.name}_encoder")


def freeze_encoder_layers(model: keras.Model, trainable: bool = False) -> int:
    """Sets ``trainable`` on every encoder layer of ``model``; returns how many changed.

    Batch norm is frozen too: in Keras 3 a frozen ``BatchNormalization`` uses its moving
    statistics, which is what fine-tuning on small batches wants. (The reference
    library leaves batch norm trainable.) Re-compile the model afterwards.
    """
    encoder_layers = [layer for layer in extract_encoder(model).layers if layer.weights]
    for layer in encoder_layers:
        layer.trainable = trainable
    return len(encoder_layers)


def save_encoder_weights(model: keras.Model, path: str) -> None:
    """Writes the encoder weights of ``model`` (U-Net or classifier) to ``path``.

    Args:
        model: a model built by this module.
        path: file name ending in ``.weights.h5`` (Keras 3's weights format).

    Raises:
        ValueError: another file ending, or no encoder in ``model``.
    """
    if not str(path).endswith(".weights.h5"):
        raise ValueError(f"path must end with '.weights.h5', got {str(path)!r}")
    extract_encoder(model).save_weights(path)


def _h5_variables(path: str) -> dict[str, tuple[int, ...]]:
    """``{"layers/<layer>/vars/<i>": shape}`` of a Keras 3 ``.weights.h5`` file."""
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda key, obj: found.update({key: obj.shape}) if isinstance(obj, h5py.Dataset) else None
        )
    return found


def load_encoder_weights(model: keras.Model, path: str) -> None:
    """Loads an encoder weights file (from :func:`save_encoder_weights`) into ``model``.

    The file must come from an encoder of the same configuration (input channels,
    ``init_filters``, ``anisotropic_levels``, dimension); spatial sizes may differ.
    Keras 3 matches weights by layer order, so it would load a file with fewer
    variables, or one from another network whose first layers happen to fit, without a
    word. This function compares every variable of the file with the encoder's (names
    and shapes) first, and loads only when all match.

    Args:
        model: a U-Net or classifier built by this module.
        path: a ``.weights.h5`` file on local disk.

    Raises:
        ValueError: the file is missing, is not a Keras weights file, or does not match
            the encoder; the message names the first unmatched variables on both sides
            and the shapes that differ.
    """
    if not os.path.isfile(str(path)):
        raise ValueError(f"encoder weights file {str(path)!r} does not exist")
    encoder = extract_encoder(model)
    with tempfile.TemporaryDirectory() as tmp:
        reference = os.path.join(tmp, "expected.weights.h5")
        encoder.save_weights(reference)
        expected = _h5_variables(reference)
    try:
        found = _h5_variables(str(path))
    except OSError as err:
        raise ValueError(f"{str(path)!r} is not a Keras .weights.h5 file: {err}") from err
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: file {found[k]} vs model {expected[k]}"
        for k in sorted(expected)
        if k in found and found[k] != expected[k]
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"could not load encoder weights from {str(path)!r} into {model.name!r} "
            f"(an encoder with {encoder.count_params():,} parameters and "
            f"{tuple(encoder.inputs[0].shape)[-1]} input channels): "
            f"{len(missing)} variables missing from the file (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected in the file (first: {unexpected[:3]}), "
            f"{len(shapes)} with other shapes (first: {shapes[:3]})"
        )
    encoder.load_weights(path)
