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

import keras
from keras import layers, ops

from mednets.keras.core import CONV, GLOBAL_MAX_POOL, MAXPOOL, conv_norm_act, spatial_dims_of
from mednets.keras.unet import _check_options, check_input_shape, encoder, set_batchnorm

__all__ = [
    "LinearUpsampling",
    "CGMGate",
    "full_scale_sources",
    "full_scale_branch",
    "decoder_stage",
    "side_output",
    "cgm_head",
    "cgm_gate",
    "cgm_inference_model",
    "unet3plus",
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

    def __init__(self, size, **kwargs):
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


def full_scale_sources(stage, depth=5):
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
        >>> full_scale_sources(3)
        [('e1', 'maxpool', 4), ('e2', 'maxpool', 2), ('e3', 'none', 1), ('d4', 'upsample', 2), ('e5', 'upsample', 4)]
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
    x, resize, factor, filters, kernel_size=3, norm="batch", act="relu", use_bias=True, name="branch"
):
    """One full-scale skip branch: resize (max pool or linear up-sampling), then a conv unit.

    Args:
        x: ``(B, *spatial, C)``.
        resize: "maxpool", "none" or "upsample".
        factor: Resize factor (a power of 2).
        filters: Output channels (``skip_filters``, 64 in the paper).
        kernel_size, norm, act, use_bias: Of the conv unit. Defaults to 3, "batch",
            "relu", True.
        name: Layer-name prefix. Defaults to "branch".

    Returns:
        ``(B, *spatial * factor or / factor, filters)``.
    """
    if resize == "maxpool":
        x = MAXPOOL[spatial_dims_of(x)](factor, name=f"{name}_maxpool")(x)
    elif resize == "upsample":
        x = LinearUpsampling(factor, name=f"{name}_up")(x)
    elif resize != "none":
        raise ValueError(f"resize must be 'maxpool', 'none' or 'upsample', got {resize!r}")
    return conv_norm_act(x, filters, kernel_size, norm=norm, act=act, use_bias=use_bias, name=name)


def decoder_stage(
    maps, stage, skip_filters=64, kernel_size=3, norm="batch", act="relu", use_bias=True, name="dec"
):
    """Decoder stage ``stage`` of UNet 3+: ``depth`` branches, concatenated, then fused.

    Args:
        maps: Dict from source name (``"e1"``, ..., ``"d4"``, ..., ``"e5"``) to tensor, with
            every source that :func:`full_scale_sources` lists for this stage.
        stage: Decoder stage (1 is full resolution).
        skip_filters: Channels per branch. Defaults to 64.
        kernel_size, norm, act, use_bias: Of the conv units. Defaults to 3, "batch",
            "relu", True.
        name: Layer-name prefix; layers are ``{name}{stage}_...``. Defaults to "dec".

    Returns:
        ``(B, *spatial of e{stage}, depth * skip_filters)``.
    """
    depth = sum(1 for k in maps if k.startswith("e"))
    branches = []
    for source, resize, factor in full_scale_sources(stage, depth):
        if source not in maps:
            raise ValueError(f"decoder stage {stage} needs map {source!r}, got {sorted(maps)}")
        branches.append(
            full_scale_branch(
                maps[source],
                resize,
                factor,
                skip_filters,
                kernel_size,
                norm=norm,
                act=act,
                use_bias=use_bias,
                name=f"{name}{stage}_from_{source}",
            )
        )
    x = layers.Concatenate(axis=-1, name=f"{name}{stage}_concat")(branches)
    return conv_norm_act(
        x,
        depth * skip_filters,
        kernel_size,
        norm=norm,
        act=act,
        use_bias=use_bias,
        name=f"{name}{stage}_fuse",
    )


def side_output(x, num_classes, factor, kernel_size=3, name="side"):
    """A deep-supervision side output: conv -> classes, linear up-sampling, activation.

    The up-sampling is bilinear/trilinear as in the official code (the seed used
    nearest neighbour). Sigmoid for one class, softmax otherwise.

    Returns:
        ``(B, *spatial * factor, num_classes)``.
    """
    x = CONV[spatial_dims_of(x)](
        num_classes, kernel_size, padding="same", kernel_initializer="he_normal", name=f"{name}_conv"
    )(x)
    if factor > 1:
        x = LinearUpsampling(factor, name=f"{name}_up")(x)
    return layers.Activation("sigmoid" if num_classes == 1 else "softmax", name=name)(x)


def cgm_head(x, dropout=0.5, name="cls"):
    """The classification-guided module: dropout, 1x1 conv, global max pool, sigmoid.

    Args:
        x: The bottleneck ``(B, *spatial, C)``.
        dropout: Dropout rate. Defaults to 0.5 (official code).
        name: Name of the output layer. Defaults to "cls".

    Returns:
        ``(B, 1)``: the probability that the image contains the target.
    """
    dims = spatial_dims_of(x)
    x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    x = CONV[dims](1, 1, kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = GLOBAL_MAX_POOL[dims](name=f"{name}_pool")(x)  # (B, 1)
    return layers.Activation("sigmoid", name=name)(x)


def cgm_gate(seg, cls_prob, threshold=0.5):
    """Gate segmentation *probabilities* with the CGM's classification.

    An image with ``cls_prob <= threshold`` gets an empty mask: all-zero probabilities
    for a sigmoid output; for a softmax output all foreground channels become 0 and the
    background channel 1. Other images keep their segmentation unchanged. (The official
    code multiplies the *logits* by 0, which after the sigmoid gives 0.5 everywhere.)

    Args:
        seg: Probabilities ``(B, *spatial, K)``.
        cls_prob: Probabilities ``(B,)`` or ``(B, 1)``.
        threshold: Decision threshold. Defaults to 0.5.

    Returns:
        Gated probabilities, same shape as ``seg``.

    Example:
        >>> import numpy as np
        >>> seg = np.full((2, 4, 4, 1), 0.9, "float32")
        >>> cgm_gate(seg, np.array([[0.2], [0.8]], "float32")).numpy().max(axis=(1, 2, 3))
        array([0. , 0.9], dtype=float32)
    """
    seg = ops.convert_to_tensor(seg, dtype="float32")
    keep = ops.cast(ops.reshape(ops.convert_to_tensor(cls_prob), (-1,)) > threshold, seg.dtype)
    keep = ops.reshape(keep, (-1,) + (1,) * (len(seg.shape) - 1))  # (B, 1, ..., 1)
    if seg.shape[-1] == 1:
        return seg * keep
    background = seg[..., :1] * keep + (1.0 - keep)
    return ops.concatenate([background, seg[..., 1:] * keep], axis=-1)


@keras.saving.register_keras_serializable(package="mednets")
class CGMGate(layers.Layer):
    """Keras layer form of :func:`cgm_gate`: ``CGMGate(threshold)([seg, cls_prob])``."""

    def __init__(self, threshold=0.5, **kwargs):
        super().__init__(**kwargs)
        self.threshold = float(threshold)

    def call(self, inputs):
        seg, cls_prob = inputs
        return cgm_gate(seg, cls_prob, self.threshold)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


def cgm_inference_model(model, threshold=0.5):
    """Wrap a UNet 3+ built with ``cgm=True`` into a model that outputs the gated mask.

    Args:
        model: A :func:`unet3plus` model with ``cgm=True`` (dict outputs with keys
            ``"seg"`` and ``"cls"``).
        threshold: CGM decision threshold. Defaults to 0.5.

    Returns:
        ``keras.Model``: ``(B, *spatial, C) -> (B, *spatial, num_classes)``, where images
        classified as empty get an empty mask.
    """
    inputs = keras.Input(model.input_shape[1:], name=f"{model.name}_gated_input")
    outputs = model(inputs, training=False)
    if not isinstance(outputs, dict) or "cls" not in outputs:
        raise ValueError(f"model {model.name!r} has no 'cls' output; build it with cgm=True")
    gated = CGMGate(threshold, name="gated_seg")([outputs["seg"], outputs["cls"]])
    return keras.Model(inputs, gated, name=f"{model.name}_gated")


def unet3plus(
    input_shape,
    num_classes=1,
    filters=(64, 128, 256, 512, 1024),
    skip_filters=None,
    kernel_size=3,
    norm="batch",
    act="relu",
    use_bias=True,
    residual=False,
    down="max",
    double_features=False,
    deep_supervision=False,
    cgm=False,
    cgm_dropout=0.5,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    name="unet3plus",
):
    """UNet 3+ (Huang et al., 2020, https://arxiv.org/abs/2004.08790), 2D or 3D.

    The defaults reproduce the authors' official PyTorch ``UNet_3Plus``: conv (with bias)
    -> batch norm (PyTorch's momentum and epsilon) -> ReLU everywhere, max-pool down-sampling, bilinear up-sampling,
    64-channel branches fused to 320 channels, and a conv 3x3 head. With input
    ``(H, W, 3)`` and one class it has 26,971,777 trainable parameters (the paper's
    26.97 M).

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``; spatial sizes divisible by
            ``2 ** (len(filters) - 1)`` (16 by default).
        num_classes: Output channels; sigmoid for 1, softmax otherwise. Defaults to 1.
        filters: Encoder widths. Defaults to ``(64, 128, 256, 512, 1024)``.
        skip_filters: Channels per full-scale branch. Defaults to None, meaning
            ``filters[0]``.
        kernel_size: Defaults to 3.
        norm: "batch", "layer", "group", "instance" or None. Defaults to "batch".
        act: Defaults to "relu".
        use_bias: Bias in every conv. Defaults to True (official code).
        residual: Residual encoder blocks. Defaults to False.
        down: Encoder down-sampling, "max", "avg", "conv" or "normconv". The full-scale
            branches always max-pool, as in the paper. Defaults to "max".
        double_features: Double the second conv of each encoder block. Defaults to False.
        deep_supervision: Add side outputs. Defaults to False.
        cgm: Add the classification-guided module. Defaults to False.
        cgm_dropout: Dropout rate in the CGM. Defaults to 0.5.
        bn_momentum: Batch-norm momentum (Keras convention). Defaults to 0.9, PyTorch's
            default and so the official code's (Keras's own is 0.99); see
            :func:`mednets.keras.unet.set_batchnorm`.
        bn_epsilon: Batch-norm epsilon. Defaults to 1e-5 (PyTorch's default).
        name: Model and layer-name prefix. Defaults to "unet3plus".

    Returns:
        ``keras.Model``. Without deep supervision or CGM its output is the tensor
        ``(B, *spatial, num_classes)``. Otherwise it is a dict: ``"seg"`` (the full-
        resolution output), ``"side2"`` .. ``"side{N}"`` (deep supervision, all
        ``(B, *spatial, num_classes)``; ``"side{N}"`` comes from the bottleneck) and
        ``"cls"`` (CGM, ``(B, 1)``).

    Example:
        >>> m = unet3plus((64, 64, 4), filters=(8, 16, 32, 64, 128), deep_supervision=True)
        >>> sorted(m.output)
        ['seg', 'side2', 'side3', 'side4', 'side5']
    """
    _check_options(filters, norm, down)
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    depth = len(filters)
    check_input_shape(input_shape, depth, what=f"{name} input")
    skip_filters = filters[0] if skip_filters is None else skip_filters
    opts = dict(kernel_size=kernel_size, norm=norm, act=act, use_bias=use_bias)

    inputs = keras.Input(input_shape, name=f"{name}_input")
    feats = encoder(
        inputs,
        filters,
        residual=residual,
        double_features=double_features,
        down=down,
        name=f"{name}_enc",
        **opts,
    )
    maps = {f"e{j}": e for j, e in enumerate(feats, start=1)}  # e_j: spatial / 2**(j-1)
    for stage in range(depth - 1, 0, -1):
        maps[f"d{stage}"] = decoder_stage(maps, stage, skip_filters, name=f"{name}_dec", **opts)

    # The head (conv 3x3 -> classes, activation) is the full-resolution side output.
    outputs = {"seg": side_output(maps["d1"], num_classes, 1, kernel_size, name=f"{name}_seg")}
    if deep_supervision:
        for j in range(2, depth + 1):
            source = maps[f"d{j}"] if j < depth else maps[f"e{depth}"]
            outputs[f"side{j}"] = side_output(
                source, num_classes, 2 ** (j - 1), kernel_size, name=f"{name}_side{j}"
            )
    if cgm:
        outputs["cls"] = cgm_head(maps[f"e{depth}"], cgm_dropout, name=f"{name}_cls")
    if len(outputs) == 1:
        model = keras.Model(inputs, outputs["seg"], name=name)
    else:
        model = keras.Model(inputs, outputs, name=name)
    set_batchnorm(model, bn_momentum, bn_epsilon)
    return model
