"""UNet 3+ (Huang et al., ICASSP 2020), 2D or 3D, with deep supervision and the CGM.

Paper: https://arxiv.org/abs/2004.08790. Official code (PyTorch):
https://github.com/ZJUGiveLab/UNet-Version.

Three ideas on top of a UNet encoder:

* **Full-scale skip connections.** Decoder stage ``i`` sees *every* scale: the
  shallower encoder maps ``e_j`` (``j < i``) max-pooled down, the same-scale map ``e_i``,
  and the deeper maps (decoder ``d_j`` for ``i < j < N``, the bottleneck ``e_N``)
  up-sampled (bilinear or trilinear). Each branch is a conv 3x3 -> norm -> ReLU to
  ``skip_filters`` channels; the ``N`` branches are concatenated and fused by one more
  conv unit to ``N * skip_filters`` channels.
* **Full-scale deep supervision.** Every decoder stage and the bottleneck get a side
  output (conv 3x3 -> classes, up-sampled to full size, activation), each trained with
  the hybrid loss of :mod:`mednets.keras.losses`.
* **The classification-guided module (CGM).** A tiny classifier on the bottleneck
  (dropout, 1x1 conv, global max pooling, sigmoid) predicts whether the image contains
  the organ at all; at inference an image classified as empty gets an empty mask
  (:func:`cgm_gate`), which removes false positives on organ-free images.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

from mednets.keras.blocks import check_encoder_options, unet_encoder
from mednets.keras.core import (
    CONV,
    GLOBAL_MAX_POOL,
    MAXPOOL,
    NORMS,
    EncoderFeatures,
    InputCheck,
    check_final_activation,
    check_input_shape,
    check_positive_int,
    check_rate,
    conv_norm_act,
    spatial_dims_of,
)
from mednets.keras.resnet34_unet import (
    RESNET34_STAGE_BLOCKS,
    check_anisotropic,
    freeze_encoder_layers,
    load_encoder_weights,
    resnet_encoder,
)

__all__ = [
    "LinearUpsampling",
    "CGMGate",
    "full_scale_sources",
    "full_scale_branch",
    "decoder_stage",
    "unet3plus_decoder",
    "side_output",
    "cgm_head",
    "cgm_gate",
    "cgm_inference_model",
    "unet3plus",
    "unet3plus_resnet34",
]


@keras.saving.register_keras_serializable(package="mednets")
class LinearUpsampling(layers.Layer):
    """Up-sample by an integer factor with bilinear (2D) or trilinear (3D) interpolation.

    Uses half-pixel centres, like PyTorch's ``nn.Upsample(mode="bilinear")`` with
    ``align_corners=False`` in the official code. Keras's ``UpSampling3D`` has only
    nearest neighbour, so the 3D case applies 2D bilinear resizing in-plane and then
    along depth (linear interpolation is separable, so this *is* trilinear).

    Args:
        size: Integer factor for every spatial axis.

    Shape:
        ``(B, H, W, C) -> (B, sH, sW, C)`` or ``(B, D, H, W, C) -> (B, sD, sH, sW, C)``.
    """

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        if int(size) != size or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.size = int(size)

    def compute_output_shape(self, input_shape):
        spatial = tuple(None if s is None else s * self.size for s in input_shape[1:-1])
        return (input_shape[0],) + spatial + (input_shape[-1],)

    def call(self, x):
        s = self.size
        if s == 1:
            return x
        if len(x.shape) == 4:
            h, w = x.shape[1:3]
            return ops.image.resize(x, (h * s, w * s), interpolation="bilinear")
        d, h, w, c = x.shape[1:]
        y = ops.reshape(x, (-1, h, w, c))  # (B*D, H, W, C)
        y = ops.image.resize(y, (h * s, w * s), interpolation="bilinear")
        y = ops.reshape(y, (-1, d, h * s * w * s, c))  # (B, D, sH*sW, C)
        y = ops.image.resize(y, (d * s, h * s * w * s), interpolation="bilinear")
        return ops.reshape(y, (-1, d * s, h * s, w * s, c))

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def full_scale_sources(stage: int, depth: int = 5) -> list[tuple[str, str, int]]:
    """Which maps feed decoder stage ``stage`` of a ``depth``-level UNet 3+, and how.

    Args:
        stage: Decoder stage, ``1 <= stage <= depth - 1`` (1 is full resolution).
        depth: Number of encoder levels. Defaults to 5.

    Returns:
        A list of ``(source, resize, factor)`` for levels ``j = 1..depth``: ``source``
        is ``"e{j}"`` (encoder, for ``j <= stage`` and for the bottleneck ``j = depth``)
        or ``"d{j}"`` (decoder); ``resize`` is ``"maxpool"``, ``"none"`` or
        ``"upsample"``; ``factor`` is ``2 ** abs(j - stage)``.

    Example:
        >>> full_scale_sources(3)[:3]
        [('e1', 'maxpool', 4), ('e2', 'maxpool', 2), ('e3', 'none', 1)]
        >>> full_scale_sources(3)[3:]
        [('d4', 'upsample', 2), ('e5', 'upsample', 4)]
    """
    if not 1 <= stage <= depth - 1:
        raise ValueError(f"stage must be in 1..{depth - 1} for depth {depth}, got {stage}")
    plan = []
    for j in range(1, depth + 1):
        source = f"e{j}" if (j <= stage or j == depth) else f"d{j}"
        resize = "maxpool" if j < stage else ("none" if j == stage else "upsample")
        plan.append((source, resize, 2 ** abs(j - stage)))
    return plan


def full_scale_branch(
    x,
    resize: str,
    factor: int,
    filters: int,
    kernel_size: int = 3,
    norm: str | None = "batch",
    act: str = "relu",
    use_bias: bool = True,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    name: str = "branch",
) -> keras.KerasTensor:
    """One full-scale skip branch: resize (max pool or linear up-sampling), then a conv unit.

    Args:
        x: ``(B, *spatial, C)``.
        resize: "maxpool", "none" or "upsample".
        factor: Resize factor (a power of 2).
        filters: Output channels (``skip_filters``, 64 in the paper).
        kernel_size, norm, act, use_bias, bn_momentum, bn_epsilon: Of the conv unit, see
            :func:`mednets.keras.core.conv_norm_act`.
        name: Layer-name prefix. Defaults to "branch".

    Returns:
        ``(B, *spatial * factor or / factor, filters)``.

    Raises:
        ValueError: an unknown ``resize``.

    Example:
        >>> full_scale_branch(keras.Input((8, 8, 3)), "upsample", 2, 4).shape
        (None, 16, 16, 4)
    """
    if resize == "maxpool":
        x = MAXPOOL[spatial_dims_of(x)](factor, name=f"{name}_maxpool")(x)
    elif resize == "upsample":
        x = LinearUpsampling(factor, name=f"{name}_up")(x)
    elif resize != "none":
        raise ValueError(f"resize must be 'maxpool', 'none' or 'upsample', got {resize!r}")
    return conv_norm_act(
        x,
        filters,
        kernel_size,
        norm=norm,
        act=act,
        use_bias=use_bias,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        name=name,
    )


def decoder_stage(
    maps: dict,
    stage: int,
    skip_filters: int = 64,
    kernel_size: int = 3,
    norm: str | None = "batch",
    act: str = "relu",
    use_bias: bool = True,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    name: str = "dec",
) -> keras.KerasTensor:
    """Decoder stage ``stage`` of UNet 3+: ``depth`` branches, concatenated, then fused.

    Args:
        maps: Dict from source name (``"e1"``, ..., ``"d4"``, ..., ``"e5"``) to tensor, with
            every source that :func:`full_scale_sources` lists for this stage.
        stage: Decoder stage (1 is the finest).
        skip_filters: Channels per branch. Defaults to 64.
        kernel_size, norm, act, use_bias, bn_momentum, bn_epsilon: Of the conv units.
        name: Layer-name prefix; layers are ``{name}{stage}_...``. Defaults to "dec".

    Returns:
        ``(B, *spatial of e{stage}, depth * skip_filters)``.

    Raises:
        ValueError: a source the stage needs is missing from ``maps``.
    """
    depth = sum(1 for k in maps if k.startswith("e"))
    opts = dict(
        kernel_size=kernel_size,
        norm=norm,
        act=act,
        use_bias=use_bias,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
    )
    branches = []
    for source, resize, factor in full_scale_sources(stage, depth):
        if source not in maps:
            raise ValueError(f"decoder stage {stage} needs map {source!r}, got {sorted(maps)}")
        branches.append(
            full_scale_branch(
                maps[source], resize, factor, skip_filters, name=f"{name}{stage}_from_{source}", **opts
            )
        )
    x = layers.Concatenate(axis=-1, name=f"{name}{stage}_concat")(branches)
    return conv_norm_act(x, depth * skip_filters, name=f"{name}{stage}_fuse", **opts)


def unet3plus_decoder(
    features: EncoderFeatures,
    skip_filters: int = 64,
    kernel_size: int = 3,
    norm: str | None = "batch",
    act: str = "relu",
    use_bias: bool = True,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    name: str = "dec",
) -> dict:
    """The full-scale UNet 3+ decoder on any encoder that keeps the encoder contract.

    ``features`` (an :class:`~mednets.keras.core.EncoderFeatures`, finest first) become
    ``e1 .. eN``; decoder stages ``d{N-1} .. d1`` are built coarsest first with
    :func:`decoder_stage`. Consecutive features must differ by a factor 2 on every axis
    (the reductions ``r, 2r, 4r, ...``): the U-Net encoder gives ``1, 2, .., 16`` and the
    ResNet34 encoder ``2, 4, .., 32``.

    Args:
        features: Encoder features, finest first, with their ``reductions``.
        skip_filters, kernel_size, norm, act, use_bias, bn_momentum, bn_epsilon: See
            :func:`decoder_stage`.
        name: Layer-name prefix. Defaults to "dec".

    Returns:
        Dict ``{"e1": .., "eN": .., "d1": .., "d{N-1}": ..}``; ``d_i`` has the size of
        ``e_i`` and ``N * skip_filters`` channels.

    Raises:
        ValueError: fewer than two features, or reductions that are not isotropic
            powers of 2 doubling from level to level.

    Example:
        >>> from mednets.keras.blocks import unet_encoder
        >>> feats = unet_encoder(keras.Input((16, 16, 1)), (4, 8, 16))
        >>> maps = unet3plus_decoder(feats, skip_filters=4)
        >>> maps["d1"].shape
        (None, 16, 16, 12)
    """
    reductions = getattr(features, "reductions", None)
    if len(features) < 2 or reductions is None:
        raise ValueError(
            "features must be an EncoderFeatures of at least 2 maps (finest first, with reductions), "
            f"got {type(features).__name__} of length {len(features)}"
        )
    if any(not isinstance(r, int) for r in reductions) or any(
        b != 2 * a for a, b in zip(reductions, reductions[1:])
    ):
        raise ValueError(
            f"the UNet 3+ decoder needs isotropic reductions doubling per level, got {reductions}"
        )
    maps = {f"e{j}": e for j, e in enumerate(features, start=1)}  # e_j: spatial / r_j
    opts = dict(
        kernel_size=kernel_size,
        norm=norm,
        act=act,
        use_bias=use_bias,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
    )
    for stage in range(len(features) - 1, 0, -1):
        maps[f"d{stage}"] = decoder_stage(maps, stage, skip_filters, name=name, **opts)
    return maps


def side_output(
    x,
    out_channels: int,
    factor: int,
    kernel_size: int = 3,
    final_activation: str | None = "sigmoid",
    name: str = "side",
) -> keras.KerasTensor:
    """A deep-supervision side output: conv -> channels, linear up-sampling, activation.

    The up-sampling is bilinear/trilinear as in the official code (the seed used
    nearest neighbour).

    Args:
        x: ``(B, *spatial, C)``.
        out_channels: Output channels.
        factor: Up-sampling factor.
        kernel_size: Of the conv. Defaults to 3.
        final_activation: None (logits; the layer is then linear), "sigmoid" or
            "softmax". Defaults to "sigmoid".
        name: Name of the output layer. Defaults to "side".

    Returns:
        ``(B, *spatial * factor, out_channels)``.

    Example:
        >>> side_output(keras.Input((8, 8, 16)), 1, 4).shape
        (None, 32, 32, 1)
    """
    check_final_activation(final_activation, out_channels)
    x = CONV[spatial_dims_of(x)](
        out_channels, kernel_size, padding="same", kernel_initializer="he_normal", name=f"{name}_conv"
    )(x)
    if factor > 1:
        x = LinearUpsampling(factor, name=f"{name}_up")(x)
    return layers.Activation(final_activation or "linear", name=name)(x)


def cgm_head(x, dropout: float = 0.5, name: str = "cls") -> keras.KerasTensor:
    """The classification-guided module: dropout, 1x1 conv, global max pool, sigmoid.

    Args:
        x: The bottleneck ``(B, *spatial, C)``.
        dropout: Dropout rate. Defaults to 0.5 (official code).
        name: Name of the output layer. Defaults to "cls".

    Returns:
        ``(B, 1)``: the probability that the image contains the target.

    Example:
        >>> cgm_head(keras.Input((4, 4, 4, 32))).shape
        (None, 1)
    """
    check_rate(dropout, "cgm dropout")
    dims = spatial_dims_of(x)
    x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    x = CONV[dims](1, 1, kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = GLOBAL_MAX_POOL[dims](name=f"{name}_pool")(x)  # (B, 1)
    return layers.Activation("sigmoid", name=name)(x)


def cgm_gate(seg, cls_prob, threshold: float = 0.5):
    """Gate segmentation *probabilities* with the CGM's classification.

    An image with ``cls_prob <= threshold`` gets an empty mask: all-zero probabilities
    for a sigmoid output; for a softmax output all foreground channels become 0 and the
    background channel 1. Other images keep their segmentation unchanged. (The official
    code multiplies the *logits* by 0, which after the sigmoid gives 0.5 everywhere.)

    Args:
        seg: Probabilities ``(B, *spatial, K)`` (an array of any real dtype, or a tensor).
        cls_prob: Probabilities ``(B,)`` or ``(B, 1)``.
        threshold: Decision threshold. Defaults to 0.5.

    Returns:
        Gated probabilities, same shape as ``seg``, float32.

    Raises:
        ValueError: ``cls_prob`` does not hold one value per image.

    Example:
        >>> import numpy as np
        >>> seg = np.full((2, 4, 4, 1), 0.9, "float32")
        >>> cgm_gate(seg, np.array([[0.2], [0.8]], "float32")).numpy().max(axis=(1, 2, 3))
        array([0. , 0.9], dtype=float32)
    """
    seg = ops.convert_to_tensor(seg, dtype="float32")
    cls_prob = ops.reshape(ops.convert_to_tensor(cls_prob, dtype="float32"), (-1,))
    if seg.shape[0] is not None and cls_prob.shape[0] is not None and seg.shape[0] != cls_prob.shape[0]:
        raise ValueError(
            f"cls_prob needs one value per image: seg has shape {tuple(seg.shape)}, "
            f"cls_prob {tuple(cls_prob.shape)} values"
        )
    keep = ops.cast(cls_prob > threshold, seg.dtype)
    keep = ops.reshape(keep, (-1,) + (1,) * (len(seg.shape) - 1))  # (B, 1, ..., 1)
    if seg.shape[-1] == 1:
        return seg * keep
    background = seg[..., :1] * keep + (1.0 - keep)
    return ops.concatenate([background, seg[..., 1:] * keep], axis=-1)


@keras.saving.register_keras_serializable(package="mednets")
class CGMGate(layers.Layer):
    """Keras layer form of :func:`cgm_gate`: ``CGMGate(threshold)([seg, cls_prob])``."""

    def __init__(self, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.threshold = float(threshold)

    def call(self, inputs):
        seg, cls_prob = inputs
        return cgm_gate(seg, cls_prob, self.threshold)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


def cgm_inference_model(model: keras.Model, threshold: float = 0.5) -> keras.Model:
    """Wrap a UNet 3+ built with ``cgm=True`` into a model that outputs the gated mask.

    Args:
        model: A :func:`unet3plus` (or :func:`unet3plus_resnet34`) model with
            ``cgm=True`` (dict outputs with keys ``"seg"`` and ``"cls"``) and a sigmoid
            or softmax ``final_activation`` (gating works on probabilities).
        threshold: CGM decision threshold. Defaults to 0.5.

    Returns:
        ``keras.Model``: ``(B, *spatial, C) -> (B, *spatial, out_channels)``, where images
        classified as empty get an empty mask.

    Raises:
        ValueError: the model has no ``"cls"`` output, or its segmentation is logits.
    """
    inputs = keras.Input(model.input_shape[1:], name=f"{model.name}_gated_input")
    outputs = model(inputs, training=False)
    if not isinstance(outputs, dict) or "cls" not in outputs:
        raise ValueError(f"model {model.name!r} has no 'cls' output; build it with cgm=True")
    seg_layer = next((ly for ly in model.layers if ly.name.endswith("_seg")), None)
    activation = getattr(getattr(seg_layer, "activation", None), "__name__", None)
    if activation not in ("sigmoid", "softmax"):
        raise ValueError(
            f"cgm_inference_model gates probabilities, but the 'seg' output of {model.name!r} "
            f"has activation {activation!r}; build it with final_activation='sigmoid' or 'softmax'"
        )
    gated = CGMGate(threshold, name="gated_seg")([outputs["seg"], outputs["cls"]])
    return keras.Model(inputs, gated, name=f"{model.name}_gated")


def _heads(
    maps: dict,
    reductions: tuple,
    out_channels: int,
    kernel_size: int,
    final_activation: str | None,
    deep_supervision: bool,
    cgm: bool,
    cgm_dropout: float,
    name: str,
) -> dict:
    """The full-resolution output, the side outputs and the CGM of a UNet 3+ decoder."""
    depth = len(reductions)
    head = dict(kernel_size=kernel_size, final_activation=final_activation)
    # The head (conv 3x3 -> channels, activation) is the finest side output, brought to
    # the input size (factor 1 on the U-Net encoder, 2 on ResNet34's).
    outputs = {"seg": side_output(maps["d1"], out_channels, reductions[0], name=f"{name}_seg", **head)}
    if deep_supervision:
        for j in range(2, depth + 1):
            source = maps[f"d{j}"] if j < depth else maps[f"e{depth}"]
            outputs[f"side{j}"] = side_output(
                source, out_channels, reductions[j - 1], name=f"{name}_side{j}", **head
            )
    if cgm:
        outputs["cls"] = cgm_head(maps[f"e{depth}"], cgm_dropout, name=f"{name}_cls")
    return outputs


def _check_head_options(norm, out_channels, final_activation, skip_filters):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    check_positive_int(out_channels, "out_channels")
    check_final_activation(final_activation, out_channels)
    if skip_filters is not None:
        check_positive_int(skip_filters, "skip_filters")


def unet3plus(
    input_shape: Sequence[int],
    out_channels: int = 1,
    filters: Sequence[int] = (64, 128, 256, 512, 1024),
    skip_filters: int | None = None,
    kernel_size: int = 3,
    norm: str | None = "batch",
    act: str = "relu",
    use_bias: bool = True,
    residual: bool = False,
    down: str = "max",
    double_features: bool = False,
    deep_supervision: bool = False,
    cgm: bool = False,
    cgm_dropout: float = 0.5,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    final_activation: str | None = "sigmoid",
    name: str = "unet3plus",
) -> keras.Model:
    """UNet 3+ (Huang et al., 2020, https://arxiv.org/abs/2004.08790), 2D or 3D.

    The defaults reproduce the authors' official PyTorch ``UNet_3Plus``: conv (with bias)
    -> batch norm (PyTorch's momentum and epsilon) -> ReLU everywhere, max-pool
    down-sampling, bilinear up-sampling, 64-channel branches fused to 320 channels, and a
    conv 3x3 head. With input ``(H, W, 3)`` and one output channel it has 26,971,777
    trainable parameters (the paper's 26.97 M).

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``; known spatial sizes divisible by
            ``2 ** (len(filters) - 1)`` (16 by default).
        out_channels: Output channels. Defaults to 1.
        filters: Encoder widths; ``len(filters)`` is the depth. Defaults to
            ``(64, 128, 256, 512, 1024)``.
        skip_filters: Channels per full-scale branch. Defaults to None, meaning
            ``filters[0]``.
        kernel_size: Defaults to 3.
        norm: None, "batch", "instance", "group" or "layer". Defaults to "batch".
        act: Defaults to "relu".
        use_bias: Bias in every conv. Defaults to True (official code).
        residual: Residual encoder blocks. Defaults to False.
        down: Encoder down-sampling, "max", "avg", "conv" or "normconv". The full-scale
            branches always max-pool, as in the paper. Defaults to "max".
        double_features: Double the second conv of each encoder block. Defaults to False.
        deep_supervision: Add side outputs. Defaults to False.
        cgm: Add the classification-guided module. Defaults to False.
        cgm_dropout: Dropout rate in the CGM. Defaults to 0.5.
        bn_momentum: Batch-norm momentum (Keras convention), set when the layers are
            built. Defaults to 0.9, PyTorch's default and so the official code's (Keras's
            own is 0.99).
        bn_epsilon: Batch-norm epsilon. Defaults to 1e-5 (PyTorch's default).
        final_activation: Of every segmentation output: None (logits), "sigmoid" or
            "softmax". Defaults to "sigmoid".
        name: Model and layer-name prefix. Defaults to "unet3plus".

    Returns:
        ``keras.Model``. Without deep supervision or CGM its output is the tensor
        ``(B, *spatial, out_channels)``. Otherwise it is a dict: ``"seg"`` (the full-
        resolution output), ``"side2"`` .. ``"side{N}"`` (deep supervision, all
        ``(B, *spatial, out_channels)``; ``"side{N}"`` comes from the bottleneck) and
        ``"cls"`` (CGM, ``(B, 1)``).

    Raises:
        ValueError: a bad option or input shape at build time; an input whose rank,
            channels or sizes do not fit when the model is called.

    Example:
        >>> m = unet3plus((64, 64, 4), filters=(8, 16, 32, 64, 128), deep_supervision=True)
        >>> sorted(m.output)
        ['seg', 'side2', 'side3', 'side4', 'side5']
    """
    check_encoder_options(filters, norm, down)
    _check_head_options(norm, out_channels, final_activation, skip_filters)
    stride = 2 ** (len(filters) - 1)
    check_input_shape(input_shape, stride, name=name, need_static=True)
    skip_filters = filters[0] if skip_filters is None else skip_filters
    opts = dict(
        kernel_size=kernel_size,
        norm=norm,
        act=act,
        use_bias=use_bias,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
    )
    inputs = keras.Input(input_shape, name=f"{name}_input")
    x = InputCheck(stride, input_shape[-1], name, name=f"{name}_input_check")(inputs)
    feats = unet_encoder(
        x,
        filters,
        residual=residual,
        double_features=double_features,
        down=down,
        name=f"{name}_enc",
        **opts,
    )
    maps = unet3plus_decoder(feats, skip_filters, name=f"{name}_dec", **opts)
    outputs = _heads(
        maps,
        feats.reductions,
        out_channels,
        kernel_size,
        final_activation,
        deep_supervision,
        cgm,
        cgm_dropout,
        name,
    )
    return keras.Model(inputs, outputs["seg"] if len(outputs) == 1 else outputs, name=name)


def unet3plus_resnet34(
    input_shape: Sequence[int],
    out_channels: int = 1,
    init_filters: int = 64,
    skip_filters: int | None = None,
    kernel_size: int = 3,
    norm: str | None = "batch",
    act: str = "relu",
    use_bias: bool = True,
    deep_supervision: bool = False,
    cgm: bool = False,
    cgm_dropout: float = 0.5,
    encoder_weights: str | None = None,
    freeze_encoder: bool = False,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    final_activation: str | None = "sigmoid",
    name: str = "unet3plus_resnet34",
) -> keras.Model:
    """UNet 3+ with a ResNet34 encoder, 2D or 3D: the two chapters' networks combined.

    The encoder is :func:`mednets.keras.resnet34_unet.resnet_encoder` (pre-activation
    ResNet34, the layer names of ``segmentation_models``), whose five features sit at
    1/2 .. 1/32 of the input; the decoder is :func:`unet3plus_decoder` on them, and
    every output (the head and the side outputs) is linearly up-sampled to the input
    size, so the finest decoder stage works at 1/2 of the input. Because the encoder's
    layer names are those of :func:`mednets.keras.resnet34_unet.resnet34_unet`,
    :func:`~mednets.keras.resnet34_unet.save_encoder_weights` of a pre-trained
    classifier loads here too (``encoder_weights=``). The encoder keeps its
    reference batch norm (epsilon 2e-5); ``bn_momentum`` applies to every batch norm,
    ``bn_epsilon`` to the decoder's.

    Papers: UNet 3+ https://arxiv.org/abs/2004.08790, ResNet
    https://arxiv.org/abs/1512.03385, pre-activation https://arxiv.org/abs/1603.05027.

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``, known spatial sizes divisible by 32.
        out_channels: Output channels. Defaults to 1.
        init_filters: Encoder width (64 in ResNet34); the features have
            ``(1, 1, 2, 4, 8) * init_filters`` channels. Defaults to 64.
        skip_filters: Channels per full-scale branch. Defaults to None (``init_filters``).
        kernel_size, norm, act, use_bias: Of the decoder's conv units. Defaults to 3,
            "batch", "relu", True.
        deep_supervision: Add side outputs ``side2`` .. ``side5``. Defaults to False.
        cgm: Add the classification-guided module on the deepest feature. Defaults to
            False.
        cgm_dropout: Dropout rate in the CGM. Defaults to 0.5.
        encoder_weights: A ``.weights.h5`` file from
            :func:`~mednets.keras.resnet34_unet.save_encoder_weights`. Defaults to None.
        freeze_encoder: Make the encoder layers non-trainable. Defaults to False.
        bn_momentum: Batch-norm momentum, set at build time. Defaults to 0.9.
        bn_epsilon: Epsilon of the decoder's batch norm. Defaults to 1e-5.
        final_activation: None, "sigmoid" or "softmax". Defaults to "sigmoid".
        name: Model name and prefix of the decoder's layer names. Defaults to
            "unet3plus_resnet34".

    Returns:
        ``keras.Model``, ``(B, *spatial, C) -> (B, *spatial, out_channels)``, or a dict as
        for :func:`unet3plus` with deep supervision or the CGM.

    Raises:
        ValueError: a bad option or input shape; an input that does not fit when called;
            an encoder weights file that does not match.

    Example:
        >>> m = unet3plus_resnet34((64, 64, 4), init_filters=8, skip_filters=4)
        >>> m.output_shape
        (None, 64, 64, 1)
    """
    _check_head_options(norm, out_channels, final_activation, skip_filters)
    check_positive_int(init_filters, "init_filters")
    check_input_shape(input_shape, 32, name=name, need_static=True)
    dims = len(input_shape) - 1
    check_anisotropic(0, dims)
    inputs = keras.Input(input_shape, name="data")
    x = InputCheck(32, input_shape[-1], name, name="input_check")(inputs)
    feats = resnet_encoder(x, RESNET34_STAGE_BLOCKS, init_filters, bn_momentum=bn_momentum)
    opts = dict(
        kernel_size=kernel_size,
        norm=norm,
        act=act,
        use_bias=use_bias,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
    )
    skip_filters = init_filters if skip_filters is None else skip_filters
    maps = unet3plus_decoder(feats, skip_filters, name=f"{name}_dec", **opts)
    outputs = _heads(
        maps,
        feats.reductions,
        out_channels,
        kernel_size,
        final_activation,
        deep_supervision,
        cgm,
        cgm_dropout,
        name,
    )
    model = keras.Model(inputs, outputs["seg"] if len(outputs) == 1 else outputs, name=name)
    if encoder_weights is not None:
        load_encoder_weights(model, encoder_weights)
    if freeze_encoder:
        freeze_encoder_layers(model)
    return model
