"""U-Net with a pre-activation ResNet34 encoder, in 2D and 3D (Keras 3).

The encoder is the ResNet34 of the ``classification_models`` / ``segmentation_models``
Keras libraries (Yakubovskiy, 2019): a batch norm on the raw input, a 7x7 stride-2
convolution and 3x3 max pooling, then four stages of 3, 4, 6 and 3 *pre-activation*
basic blocks (He et al., 2016, https://arxiv.org/abs/1603.05027) and a final BN-ReLU.
The decoder is a U-Net decoder (Ronneberger et al., 2015,
https://arxiv.org/abs/1505.04597) with five x2 up-sampling blocks that concatenate four
encoder skips.

With ``input_shape=(H, W, 3)``, ``num_classes=1`` and the ``"upsampling"`` decoder,
:func:`resnet34_unet` has exactly the parameter count of ``segmentation_models``'
``Unet("resnet34")``: 24,456,154 in total, 24,438,804 trainable.

Layer names follow the reference library (``conv0``, ``stage2_unit1_relu1``,
``decoder_stage0a``, ...), so the skip points read the same in both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import keras
from keras import layers

from mednets.keras.core import (
    CONV,
    CONV_TRANSPOSE,
    GLOBAL_AVG_POOL,
    MAXPOOL,
    UPSAMPLE,
    ZEROPAD,
    conv_norm_act,
    set_batchnorm,
    spatial_dims_from_shape,
)
from mednets.utils import check_divisible

__all__ = [
    "RESNET34_REPETITIONS",
    "SKIP_NAMES",
    "ENCODER_OUTPUT",
    "DECODER_FILTERS",
    "DECODER_BLOCKS",
    "resnet_encoder",
    "resnet34_encoder_model",
    "resnet34_classifier",
    "unet_decoder",
    "resnet_unet",
    "resnet34_unet",
    "extract_encoder",
    "freeze_encoder_layers",
    "save_encoder_weights",
    "load_encoder_weights",
    "fit_timed",
    "set_bn_momentum",
]

#: Basic blocks per stage of ResNet34 (He et al., 2016, Table 1).
RESNET34_REPETITIONS = (3, 4, 6, 3)
#: Skip tensors, deepest first: 1/16, 1/8, 1/4 and 1/2 of the input size.
SKIP_NAMES = ("stage4_unit1_relu1", "stage3_unit1_relu1", "stage2_unit1_relu1", "relu0")
#: Name of the encoder's last layer (BN-ReLU after stage 4, 1/32 of the input size).
ENCODER_OUTPUT = "relu1"
#: Filters of the five decoder blocks in ``segmentation_models``' Unet.
DECODER_FILTERS = (256, 128, 64, 32, 16)
#: Decoder block types.
DECODER_BLOCKS = ("upsampling", "transpose")

# ResNet BN settings of the reference library (MXNet heritage): epsilon 2e-5.
_BN = dict(axis=-1, momentum=0.99, epsilon=2e-5)
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


def _check_anisotropic(anisotropic_levels: int, spatial_dims: int) -> None:
    if not isinstance(anisotropic_levels, int) or not 0 <= anisotropic_levels <= _N_DOWN:
        raise ValueError(f"anisotropic_levels must be an integer in 0..{_N_DOWN}, got {anisotropic_levels!r}")
    if anisotropic_levels and spatial_dims != 3:
        raise ValueError(
            f"anisotropic_levels applies only to 3D inputs; got {anisotropic_levels} "
            f"with spatial_dims={spatial_dims}"
        )


def _basic_block(x, filters, strides, projection, flat, name):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut.

    The shortcut is the block input (identity) or, for ``projection=True``, a 1x1
    convolution of the *pre-activated* input with the block's stride. Returns the
    block output and the pre-activated input (``relu1``).
    """
    dims = len(x.shape) - 2
    conv, pad = CONV[dims], ZEROPAD[dims]
    strides = tuple(1 if (dims == 3 and flat and i == 0) else strides for i in range(dims))
    h = layers.BatchNormalization(name=name + "bn1", **_BN)(x)
    h = preact = layers.Activation("relu", name=name + "relu1")(h)
    shortcut = x
    if projection:
        shortcut = conv(filters, 1, strides=strides, name=name + "sc", **_CONV)(h)
    h = pad(_pad(1, dims, flat), name=name + "pad1")(h)
    h = conv(filters, _kernel(3, dims, flat), strides=strides, name=name + "conv1", **_CONV)(h)
    h = layers.BatchNormalization(name=name + "bn2", **_BN)(h)
    h = layers.Activation("relu", name=name + "relu2")(h)
    h = pad(_pad(1, dims, flat), name=name + "pad2")(h)
    h = conv(filters, _kernel(3, dims, flat), name=name + "conv2", **_CONV)(h)
    return layers.Add(name=name + "add")([h, shortcut]), preact


def resnet_encoder(
    inputs,
    repetitions: Sequence[int] = RESNET34_REPETITIONS,
    init_filters: int = 64,
    anisotropic_levels: int = 0,
):
    """Pre-activation ResNet encoder; returns its features and the named skip tensors.

    Paper: https://arxiv.org/abs/1603.05027 (pre-activation blocks). Layout of the
    ``classification_models`` ResNet34: ``bn_data`` (no scale) -> 7x7/2 ``conv0`` ->
    ``bn0`` -> ``relu0`` -> 3x3/2 ``pooling0`` -> stages of basic blocks -> ``bn1`` ->
    ``relu1``. The first block of every stage has a projection (1x1 conv) shortcut;
    the other blocks have identity shortcuts.

    Args:
        inputs: Keras tensor ``(B, H, W, C)`` or ``(B, D, H, W, C)``.
        repetitions: basic blocks per stage. Defaults to ``(3, 4, 6, 3)`` (ResNet34).
        init_filters: filters of the stem and of stage 1; stage ``s`` has
            ``init_filters * 2**(s-1)``. Defaults to 64.
        anisotropic_levels: 3D only. The first ``n`` of the five stride-2 steps
            down-sample in-plane only (stride ``(1, 2, 2)``), and the convolutions at
            those resolution levels use ``1 x k x k`` kernels. Defaults to 0 (isotropic).

    Returns:
        ``(features, skips)``: features ``(B, H/32, W/32, 8 * init_filters)`` (``relu1``)
        and a dict from name (:data:`SKIP_NAMES`, deepest first) to tensor: the
        pre-activations at the first unit of stages 4, 3, 2 (1/16, 1/8, 1/4 of the
        input size) and the stem activation ``relu0`` (1/2).

    Example:
        >>> x = keras.Input((64, 64, 3))
        >>> features, skips = resnet_encoder(x, init_filters=8)
        >>> features.shape, skips["relu0"].shape
        ((None, 2, 2, 64), (None, 32, 32, 8))
    """
    dims = len(inputs.shape) - 2
    _check_anisotropic(anisotropic_levels, dims)
    if len(repetitions) != 4:
        raise ValueError(f"repetitions must have 4 stages, got {len(repetitions)}: {repetitions}")
    n = anisotropic_levels
    conv, pad, pool = CONV[dims], ZEROPAD[dims], MAXPOOL[dims]

    def stride(level):  # stride of the step that produces ``level``
        return (1, 2, 2) if (dims == 3 and level <= n) else 2

    skips = {}
    # Stem: normalise the raw input (no learned scale), 7x7/2 conv, BN-ReLU.
    x = layers.BatchNormalization(name="bn_data", scale=False, **_BN)(inputs)
    x = pad(_pad(3, dims, _flat(1, n)), name="conv0_pad")(x)
    x = conv(init_filters, _kernel(7, dims, _flat(1, n)), strides=stride(1), name="conv0", **_CONV)(x)
    x = layers.BatchNormalization(name="bn0", **_BN)(x)
    x = layers.Activation("relu", name="relu0")(x)  # (B, H/2, W/2, F)
    skips["relu0"] = x
    x = pad(_pad(1, dims, _flat(2, n)), name="pooling0_pad")(x)
    x = pool(_kernel(3, dims, _flat(2, n)), strides=stride(2), name="pooling0")(x)  # 1/4

    for s, reps in enumerate(repetitions, start=1):
        level = s + 1  # stage 1 lives at 1/4 (level 2), stage 4 at 1/32 (level 5)
        filters = init_filters * 2 ** (s - 1)
        for u in range(1, reps + 1):
            name = f"stage{s}_unit{u}_"
            strides = 2 if (u == 1 and s > 1) else 1
            # Stride-2 blocks (and their pre-activation) straddle two levels: the
            # kernels follow the level of the block's output.
            x, preact = _basic_block(
                x, filters, strides, projection=(u == 1), flat=_flat(level, n), name=name
            )
            if u == 1 and s > 1:
                skips[name + "relu1"] = preact  # BN-ReLU of stage s-1's output
    x = layers.BatchNormalization(name="bn1", **_BN)(x)
    x = layers.Activation("relu", name=ENCODER_OUTPUT)(x)  # (B, H/32, W/32, 8F)
    return x, {k: skips[k] for k in SKIP_NAMES}


def resnet34_encoder_model(
    input_shape: Sequence[int | None],
    init_filters: int = 64,
    anisotropic_levels: int = 0,
    name: str = "resnet34_encoder",
) -> keras.Model:
    """The ResNet34 encoder as a model: input -> ``relu1`` features.

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``, channels last.
        init_filters: see :func:`resnet_encoder`. Defaults to 64.
        anisotropic_levels: see :func:`resnet_encoder`. Defaults to 0.
        name: model name. Defaults to ``"resnet34_encoder"``.

    Returns:
        ``keras.Model`` mapping ``(B, *spatial, C)`` to ``(B, *spatial/32, 8 * init_filters)``.

    Example:
        >>> resnet34_encoder_model((64, 64, 4), init_filters=8).output.shape
        (None, 2, 2, 64)
    """
    inputs = _input(input_shape, anisotropic_levels)
    features, _ = resnet_encoder(inputs, RESNET34_REPETITIONS, init_filters, anisotropic_levels)
    return keras.Model(inputs, features, name=name)


def resnet34_classifier(
    input_shape: Sequence[int | None],
    num_classes: int = 2,
    init_filters: int = 64,
    anisotropic_levels: int = 0,
    name: str = "resnet34_classifier",
) -> keras.Model:
    """ResNet34 classifier: the encoder, global average pooling and a softmax layer.

    Its encoder layers have the same names and order as the encoder inside
    :func:`resnet34_unet`, so :func:`save_encoder_weights` on a trained classifier
    writes a file that :func:`load_encoder_weights` (or ``encoder_weights=``) loads
    into a U-Net.

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``, channels last.
        num_classes: number of classes. Defaults to 2.
        init_filters: see :func:`resnet_encoder`. Defaults to 64.
        anisotropic_levels: see :func:`resnet_encoder`. Defaults to 0.
        name: model name. Defaults to ``"resnet34_classifier"``.

    Returns:
        ``keras.Model``: ``(B, *spatial, C) -> (B, num_classes)`` probabilities.

    Example:
        >>> resnet34_classifier((64, 64, 4), num_classes=2, init_filters=8).output.shape
        (None, 2)
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    inputs = _input(input_shape, anisotropic_levels)
    dims = len(inputs.shape) - 2
    features, _ = resnet_encoder(inputs, RESNET34_REPETITIONS, init_filters, anisotropic_levels)
    x = GLOBAL_AVG_POOL[dims](name="pool1")(features)  # (B, 8F)
    x = layers.Dense(num_classes, name="fc1")(x)
    x = layers.Activation("softmax", name="softmax")(x)
    return keras.Model(inputs, x, name=name)


def _decoder_block(x, skip, filters, stage, block, up, kernel, use_batchnorm):
    """One x2 decoder step: ``upsampling`` or ``transpose``, then concatenate ``skip``."""
    dims = len(x.shape) - 2
    norm = "batch" if use_batchnorm else None
    base = f"decoder_stage{stage}"
    if block == "upsampling":
        # up-sample x2, concatenate, two conv-BN-ReLU
        x = UPSAMPLE[dims](size=up, name=base + "_upsampling")(x)
        if skip is not None:
            x = layers.Concatenate(axis=-1, name=base + "_concat")([x, skip])
        x = conv_norm_act(x, filters, kernel, norm=norm, name=base + "a")
        return conv_norm_act(x, filters, kernel, norm=norm, name=base + "b")
    # transpose: 4x4 transposed conv with stride 2 and BN-ReLU, concatenate, one conv-BN-ReLU
    tkernel = tuple(1 if u == 1 else 4 for u in up) if isinstance(up, tuple) else 4
    x = CONV_TRANSPOSE[dims](
        filters,
        tkernel,
        strides=up,
        padding="same",
        use_bias=not use_batchnorm,
        name=base + "a_transpose",
    )(x)
    if use_batchnorm:
        x = layers.BatchNormalization(axis=-1, name=base + "a_bn")(x)
    x = layers.Activation("relu", name=base + "a_relu")(x)
    if skip is not None:
        x = layers.Concatenate(axis=-1, name=base + "_concat")([x, skip])
    return conv_norm_act(x, filters, kernel, norm=norm, name=base + "b")


def unet_decoder(
    features,
    skips: Sequence | Mapping,
    decoder_filters: Sequence[int] = DECODER_FILTERS,
    decoder_block: str = "upsampling",
    anisotropic_levels: int = 0,
    use_batchnorm: bool = True,
):
    """U-Net decoder of ``segmentation_models``: five x2 blocks, skips deepest first.

    Block ``i`` doubles the resolution of its input and concatenates ``skips[i]``
    (blocks past the last skip have none). The decoder never looks at the encoder
    itself: any encoder whose four skips sit at 1/16, 1/8, 1/4 and 1/2 fits.

    Args:
        features: deepest encoder tensor, ``(B, *spatial/32, C)``.
        skips: tensors (or a name -> tensor dict) at 1/16, 1/8, 1/4, 1/2, deepest first.
        decoder_filters: filters per block. Defaults to ``(256, 128, 64, 32, 16)``.
        decoder_block: ``"upsampling"`` (``UpSampling`` -> concat -> conv-BN-ReLU x2) or
            ``"transpose"`` (4x4/2 transposed conv-BN-ReLU -> concat -> conv-BN-ReLU).
            Defaults to ``"upsampling"``.
        anisotropic_levels: mirror of the encoder's option: blocks that undo an
            in-plane step up-sample by ``(1, 2, 2)`` and use ``1 x 3 x 3`` kernels.
            Defaults to 0.
        use_batchnorm: batch norm after each decoder conv. Defaults to True.

    Returns:
        Tensor ``(B, *spatial, decoder_filters[-1])`` at the input resolution.

    Example:
        >>> x = keras.Input((64, 64, 3))
        >>> f, skips = resnet_encoder(x, init_filters=8)
        >>> unet_decoder(f, skips, (32, 16, 8, 8, 4)).shape
        (None, 64, 64, 4)
    """
    if decoder_block not in DECODER_BLOCKS:
        raise ValueError(f"decoder_block must be one of {DECODER_BLOCKS}, got {decoder_block!r}")
    if len(decoder_filters) != _N_DOWN:
        raise ValueError(
            f"decoder_filters must have {_N_DOWN} entries (one per x2 step of the encoder), "
            f"got {len(decoder_filters)}: {tuple(decoder_filters)}"
        )
    dims = len(features.shape) - 2
    _check_anisotropic(anisotropic_levels, dims)
    skips = list(skips.values()) if isinstance(skips, Mapping) else list(skips)
    x = features
    for i, filters in enumerate(decoder_filters):
        step = _N_DOWN - i  # block i undoes encoder step 5 - i
        in_plane = dims == 3 and step <= anisotropic_levels
        up = (1, 2, 2) if in_plane else 2
        if decoder_block == "transpose" and not in_plane:
            up = (2,) * dims
        kernel = _kernel(3, dims, _flat(step - 1, anisotropic_levels))
        skip = skips[i] if i < len(skips) else None
        x = _decoder_block(x, skip, filters, i, decoder_block, up, kernel, use_batchnorm)
    return x


def _input(input_shape, anisotropic_levels):
    """Checks the shape (2D/3D, sizes divisible by the encoder's stride) -> ``keras.Input``."""
    input_shape = tuple(input_shape)
    dims = spatial_dims_from_shape(input_shape)
    _check_anisotropic(anisotropic_levels, dims)
    spatial = input_shape[:-1]
    if dims == 3 and anisotropic_levels:
        # the depth is halved only by the isotropic steps
        check_divisible(spatial[:1], 2 ** (_N_DOWN - anisotropic_levels), what="input depth")
        check_divisible(spatial[1:], 2**_N_DOWN, what="input in-plane")
    else:
        check_divisible(spatial, 2**_N_DOWN, what="input")
    return keras.Input(input_shape, name="data")


def resnet_unet(
    input_shape: Sequence[int | None],
    num_classes: int = 1,
    decoder_block: str = "upsampling",
    freeze_encoder: bool = False,
    encoder_weights: str | None = None,
    repetitions: Sequence[int] = RESNET34_REPETITIONS,
    init_filters: int = 64,
    decoder_filters: Sequence[int] = DECODER_FILTERS,
    anisotropic_levels: int = 0,
    activation: str | None = None,
    use_batchnorm: bool = True,
    name: str = "resnet_unet",
) -> keras.Model:
    """Generic pre-activation-ResNet U-Net; :func:`resnet34_unet` fixes ``repetitions``.

    Args: as :func:`resnet34_unet`, plus ``repetitions`` (blocks per stage).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if decoder_block not in DECODER_BLOCKS:
        raise ValueError(f"decoder_block must be one of {DECODER_BLOCKS}, got {decoder_block!r}")
    inputs = _input(input_shape, anisotropic_levels)
    dims = len(inputs.shape) - 2
    features, skips = resnet_encoder(inputs, repetitions, init_filters, anisotropic_levels)
    x = unet_decoder(features, skips, decoder_filters, decoder_block, anisotropic_levels, use_batchnorm)
    # Head: 3x3 conv to the classes (with bias), then sigmoid or softmax.
    x = CONV[dims](
        num_classes,
        _kernel(3, dims, _flat(0, anisotropic_levels)),
        padding="same",
        use_bias=True,
        name="final_conv",
    )(x)
    if activation is None:
        activation = "sigmoid" if num_classes == 1 else "softmax"
    outputs = layers.Activation(activation, name=activation)(x)  # (B, *spatial, classes)
    model = keras.Model(inputs, outputs, name=name)
    if encoder_weights is not None:
        load_encoder_weights(model, encoder_weights)
    if freeze_encoder:
        freeze_encoder_layers(model)
    return model


def resnet34_unet(
    input_shape: Sequence[int | None],
    num_classes: int = 1,
    decoder_block: str = "upsampling",
    freeze_encoder: bool = False,
    encoder_weights: str | None = None,
    init_filters: int = 64,
    decoder_filters: Sequence[int] = DECODER_FILTERS,
    anisotropic_levels: int = 0,
    activation: str | None = None,
    use_batchnorm: bool = True,
    name: str = "resnet34_unet",
) -> keras.Model:
    """U-Net with a pre-activation ResNet34 encoder, in 2D or 3D.

    Papers: ResNet https://arxiv.org/abs/1512.03385, pre-activation
    https://arxiv.org/abs/1603.05027, U-Net https://arxiv.org/abs/1505.04597.
    The defaults rebuild ``segmentation_models.Unet("resnet34")``
    (https://github.com/qubvel/segmentation_models): for input ``(H, W, 3)`` and one
    class, 24,456,154 parameters, 24,438,804 of them trainable.

    Args:
        input_shape: ``(H, W, C)`` (2D) or ``(D, H, W, C)`` (3D), channels last. Sizes
            must be divisible by 32 (``None`` for any size); in 3D with
            ``anisotropic_levels=n`` the depth only by ``2**(5-n)``.
        num_classes: output channels. Defaults to 1.
        decoder_block: ``"upsampling"`` or ``"transpose"``. Defaults to ``"upsampling"``.
        freeze_encoder: make every encoder layer (batch norm included) non-trainable.
            Defaults to False.
        encoder_weights: path to a Keras ``.weights.h5`` file written by
            :func:`save_encoder_weights` for an encoder of the same configuration;
            nothing is ever downloaded. Defaults to None (random initialisation).
        init_filters: encoder width (64 in ResNet34). Defaults to 64.
        decoder_filters: filters of the five decoder blocks. Defaults to
            ``(256, 128, 64, 32, 16)``.
        anisotropic_levels: 3D only: number of early x2 steps that are in-plane only,
            with ``1 x k x k`` kernels at those levels. Defaults to 0.
        activation: output activation. Defaults to None: sigmoid for one class,
            softmax otherwise.
        use_batchnorm: batch norm in the decoder. Defaults to True.
        name: model name. Defaults to ``"resnet34_unet"``.

    Returns:
        ``keras.Model``: ``(B, *spatial, C) -> (B, *spatial, num_classes)``.

    Raises:
        ValueError: a spatial size not divisible by 32 (the message names the nearest
            valid sizes), an unknown ``decoder_block``, or bad ``anisotropic_levels``.

    Example:
        >>> model = resnet34_unet((64, 64, 4), init_filters=8, decoder_filters=(32, 16, 8, 8, 4))
        >>> model.output.shape
        (None, 64, 64, 1)
    """
    return resnet_unet(
        input_shape,
        num_classes,
        decoder_block,
        freeze_encoder,
        encoder_weights,
        RESNET34_REPETITIONS,
        init_filters,
        decoder_filters,
        anisotropic_levels,
        activation,
        use_batchnorm,
        name,
    )


def extract_encoder(model: keras.Model) -> keras.Model:
    """The encoder inside ``model`` (a U-Net or classifier from this module) as a model.

    The returned model *shares* its layers with ``model``: loading weights into it, or
    freezing it, changes ``model``.

    Args:
        model: a model built by this module (it has a layer named ``"relu1"``).

    Returns:
        ``keras.Model`` from ``model``'s input to its ``relu1`` features.
    """
    try:
        features = model.get_layer(ENCODER_OUTPUT).output
    except ValueError as err:
        raise ValueError(
            f"expected a model with an encoder output layer named {ENCODER_OUTPUT!r}; "
            f"model {model.name!r} has none"
        ) from err
    return keras.Model(model.inputs, features, name=f"{model.name}_encoder")


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
    """
    if not str(path).endswith(".weights.h5"):
        raise ValueError(f"path must end with '.weights.h5', got {str(path)!r}")
    extract_encoder(model).save_weights(path)


def load_encoder_weights(model: keras.Model, path: str) -> None:
    """Loads an encoder weights file (from :func:`save_encoder_weights`) into ``model``.

    The file must come from an encoder of the same configuration (input channels,
    ``init_filters``, ``anisotropic_levels``, dimension); spatial sizes may differ.

    Args:
        model: a U-Net or classifier built by this module.
        path: a ``.weights.h5`` file on local disk.
    """
    encoder = extract_encoder(model)
    try:
        encoder.load_weights(path)
    except (ValueError, KeyError) as err:
        detail = str(err).splitlines()
        detail = " ".join(line for line in detail[:2] if line)[:240]
        raise ValueError(
            f"could not load encoder weights from {str(path)!r} into {model.name!r}: "
            f"expected an encoder with {encoder.count_params():,} parameters and "
            f"{tuple(encoder.inputs[0].shape)[-1]} input channels; Keras says: {detail}"
        ) from err


def fit_timed(
    model: keras.Model,
    x,
    y,
    epochs: int,
    batch_size: int = 16,
    validation_data=None,
    progress: bool = True,
    **fit_kwargs,
) -> dict:
    """``model.fit`` that times the first epoch (graph tracing) apart from the others.

    The first epoch of a compiled Keras model includes tracing the training graph,
    which for a deep network on a CPU can take longer than many epochs. The chapter's
    comparison tables report the steady epoch time.

    Args:
        model: a compiled model.
        x, y: training arrays.
        epochs: total epochs, >= 2 (one to trace, at least one to time).
        batch_size: Defaults to 16.
        validation_data: passed to ``fit``. Defaults to None.
        progress: show a tqdm bar per ``fit`` call. Defaults to True.
        **fit_kwargs: passed to ``fit`` (``shuffle``, ...).

    Returns:
        ``{"history": {metric: [per-epoch values]}, "first_epoch_s": float,
        "epoch_s": float}`` with ``epoch_s`` the mean time of epochs 2..``epochs``.
    """
    if epochs < 2:
        raise ValueError(f"epochs must be >= 2 (one to trace, one to time), got {epochs}")
    callbacks = list(fit_kwargs.pop("callbacks", []))
    if model.optimizer is not None and not model.optimizer.built:
        # Create the optimizer's slots and the metrics' variables eagerly: created inside
        # the first traced step, they make TensorFlow trace it twice (twice the time).
        model.optimizer.build(model.trainable_variables)
        model.compute_metrics(x[:1], y[:1], model(x[:1], training=False))
    if progress:
        from tqdm.keras import TqdmCallback

    def run(initial_epoch, last_epoch):
        cbs = callbacks + ([TqdmCallback(verbose=0)] if progress else [])
        start = time.perf_counter()
        h = model.fit(
            x,
            y,
            batch_size=batch_size,
            epochs=last_epoch,
            initial_epoch=initial_epoch,
            validation_data=validation_data,
            verbose=0,
            callbacks=cbs,
            **fit_kwargs,
        )
        return h.history, time.perf_counter() - start

    first, t_first = run(0, 1)
    rest, t_rest = run(1, epochs)
    history = {k: list(first[k]) + list(rest.get(k, [])) for k in first}
    return {"history": history, "first_epoch_s": t_first, "epoch_s": t_rest / (epochs - 1)}


def set_bn_momentum(model: keras.Model, momentum: float) -> int:
    """Sets the moving-average momentum of every ``BatchNormalization`` in ``model``.

    Keras' default (and the reference library's) momentum 0.99 needs a few hundred
    steps before the moving statistics used at inference resemble the data; a CPU
    demo with a few dozen steps needs a shorter memory, e.g. 0.9. Call it before
    ``compile``/``fit``. Parameter counts do not change.

    Args:
        model: any Keras model.
        momentum: new momentum in ``[0, 1)``.

    Returns:
        The number of batch-norm layers changed.
    """
    return set_batchnorm(model, momentum)
