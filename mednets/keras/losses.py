"""Segmentation losses for Keras: focal, MS-SSIM, IoU and the UNet 3+ hybrid loss.

UNet 3+ (Huang et al., ICASSP 2020, https://arxiv.org/abs/2004.08790) trains every
output with a *hybrid* loss that looks at three scales of the problem at once:

* **focal loss** (Lin et al., 2017) works on single pixels and down-weights the easy ones;
* **MS-SSIM loss** (Wang et al., 2003) works on patches and rewards getting the
  local structure, in particular the boundary, right;
* **IoU loss** works on the whole map and rewards the right overall overlap.

All functions take ``y_true`` and ``y_pred`` channels-last, 2D ``(B, H, W, C)`` or
3D ``(B, D, H, W, C)``, and return one value per sample, shape ``(B,)``, so that Keras
can apply sample weights and average over the batch. What they take:

* ``y_true``: binary masks (one channel per class, one-hot for softmax outputs) or
  soft targets, values in ``[0, 1]``. A label map with values 0, 1, 2, ... is refused:
  one-hot encode it first.
* ``y_pred``: **probabilities** in ``[0, 1]``, after the sigmoid or softmax (a
  ``final_activation`` of the models). Logits are refused: build the model with
  ``final_activation="sigmoid"`` or ``"softmax"``.

Values outside ``[0, 1]`` raise a ``ValueError`` naming the range found when the loss
is called eagerly; inside a compiled ``fit`` a TensorFlow assertion stops the step with
the same message. Any real NumPy dtype is accepted (cast to float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import keras
from keras import ops

__all__ = [
    "MSSSIM_WEIGHTS",
    "focal_loss",
    "iou_loss",
    "ms_ssim",
    "ms_ssim_loss",
    "hybrid_loss",
    "foreground_only",
]

#: The five scale weights of Wang et al. (2003), also used by ``tf.image.ssim_multiscale``.
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# Float32 sigmoid/softmax outputs stay in [0, 1]; allow for rounding only.
_TOLERANCE = 1e-4


def _check_range(x, high: float, what: str, hint: str) -> None:
    """Refuse values outside ``[0, high]``: eagerly a ``ValueError``, in a graph an assertion."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly():
            message = f"{what} must lie in [0, {high:g}] ({hint})"
            tf.debugging.assert_greater_equal(x, -_TOLERANCE, message=message)
            tf.debugging.assert_less_equal(x, high + _TOLERANCE, message=message)
            return
    lo, hi = float(ops.min(x)), float(ops.max(x))
    if lo < -_TOLERANCE or hi > high + _TOLERANCE:
        raise ValueError(f"{what} must lie in [0, {high:g}], found values in [{lo:g}, {hi:g}]; {hint}")


def _as_float(x, what: str):
    """Cast an array or tensor of a real dtype to float32; refuse complex, bool and objects."""
    dtype = str(getattr(x, "dtype", "float32"))
    if "complex" in dtype or "bool" in dtype or dtype == "object":
        raise ValueError(f"{what} must hold real numbers, got dtype {dtype}")
    return ops.cast(x, "float32")


def _check_pair(y_true, y_pred, high: float = 1.0, check_values: bool = True):
    """Cast to float32; check that the two tensors have the same rank and shape, and
    (with ``check_values``) that both lie in ``[0, high]``."""
    y_true = _as_float(y_true, "y_true")
    y_pred = _as_float(y_pred, "y_pred")
    rank = len(y_pred.shape)
    if rank not in (4, 5):
        raise ValueError(
            f"expected y_pred of rank 4 (B, H, W, C) or 5 (B, D, H, W, C), got rank {rank} "
            f"with shape {tuple(y_pred.shape)}"
        )
    if len(y_true.shape) != rank or tuple(y_true.shape[1:]) != tuple(y_pred.shape[1:]):
        raise ValueError(
            f"y_true and y_pred must have the same shape, got {tuple(y_true.shape)} and {tuple(y_pred.shape)}"
        )
    if check_values:
        _check_range(
            y_true, high, "y_true", "pass binary masks (one-hot encode a label map), not label values"
        )
        _check_range(y_pred, high, "y_pred", "pass probabilities (sigmoid or softmax outputs), not logits")
    return y_true, y_pred


def _spatial_axes(x):
    return tuple(range(1, len(x.shape) - 1))


def focal_loss(y_true, y_pred, alpha: float = 0.25, gamma: float = 2.0, epsilon: float = 1e-7):
    """Focal loss of Lin et al. (2017), https://arxiv.org/abs/1708.02002.

    ``FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)``, averaged over pixels and channels.
    With one channel it is the binary form (``alpha`` weighs the foreground and
    ``1 - alpha`` the background); with several channels (softmax) it is the
    categorical form with ``alpha`` applied to every class.

    Args:
        y_true: Masks in {0, 1} (one-hot for several channels), ``(B, *spatial, C)``.
        y_pred: Probabilities in [0, 1] (not logits), same shape.
        alpha: Class balance weight. Defaults to 0.25.
        gamma: Focusing parameter; 0 gives (weighted) cross-entropy. Defaults to 2.0.
        epsilon: Probabilities are clipped to ``[epsilon, 1 - epsilon]``. Defaults to 1e-7.

    Returns:
        Tensor ``(B,)``.

    Raises:
        ValueError: different shapes, a rank other than 4 or 5, or values outside [0, 1].

    Example:
        >>> import numpy as np
        >>> y = np.zeros((2, 16, 16, 1), "float32")
        >>> tuple(focal_loss(y, y + 0.5).shape)
        (2,)
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    p = ops.clip(y_pred, epsilon, 1.0 - epsilon)
    if y_pred.shape[-1] == 1:
        p_t = y_true * p + (1.0 - y_true) * (1.0 - p)
        alpha_t = y_true * alpha + (1.0 - y_true) * (1.0 - alpha)
        per_pixel = -alpha_t * ops.power(1.0 - p_t, gamma) * ops.log(p_t)
    else:
        per_pixel = -alpha * y_true * ops.power(1.0 - p, gamma) * ops.log(p)
        per_pixel = ops.sum(per_pixel, axis=-1, keepdims=True)
    return ops.mean(per_pixel, axis=_spatial_axes(y_pred) + (-1,))


def iou_loss(y_true, y_pred, smooth: float = 1.0):
    """Soft IoU (Jaccard) loss, ``1 - (|X n Y| + s) / (|X u Y| + s)`` per sample.

    The smoothing term ``s`` makes the loss 0, with finite gradients, when both masks
    are empty. Several channels are averaged.

    Args:
        y_true: Masks or soft targets in [0, 1], ``(B, *spatial, C)``.
        y_pred: Probabilities in [0, 1] (not logits), same shape.
        smooth: Added to numerator and denominator. Defaults to 1.0.

    Returns:
        Tensor ``(B,)``.

    Raises:
        ValueError: different shapes, a rank other than 4 or 5, or values outside [0, 1].

    Example:
        >>> import numpy as np
        >>> y = np.zeros((1, 8, 8, 1)); y[0, :4] = 1
        >>> round(float(iou_loss(y, y)[0]), 4)
        0.0
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    axes = _spatial_axes(y_pred)
    inter = ops.sum(y_true * y_pred, axis=axes)
    union = ops.sum(y_true + y_pred - y_true * y_pred, axis=axes)
    iou = (inter + smooth) / (union + smooth)  # (B, C)
    return ops.mean(1.0 - iou, axis=-1)


def _gaussian_1d(size, sigma):
    coords = [i - (size - 1) / 2.0 for i in range(size)]
    g = [math.exp(-0.5 * c * c / (sigma * sigma)) for c in coords]
    total = sum(g)
    return [v / total for v in g]


def _filter(x, weights, spatial_dims):
    """Separable Gaussian filter with VALID padding on ``(N, *spatial, 1)``."""
    size = len(weights)
    kernel_1d = ops.convert_to_tensor(weights, dtype="float32")
    for axis in range(spatial_dims):
        shape = [1] * spatial_dims + [1, 1]
        shape[axis] = size
        x = ops.conv(x, ops.reshape(kernel_1d, shape), strides=1, padding="valid")
    return x


def _downsample(x, spatial_dims):
    """2x average pooling; an odd size is first padded by repeating its last element
    (the SYMMETRIC padding ``tf.image.ssim_multiscale`` uses)."""
    for axis in range(1, spatial_dims + 1):
        size = x.shape[axis]
        if size % 2:
            last = ops.take(x, [size - 1], axis=axis)
            x = ops.concatenate([x, last], axis=axis)
    return ops.average_pool(x, pool_size=2, strides=2, padding="valid")


def _safe_pow(x, w):
    """``relu(x) ** w`` with a finite (zero) gradient at and below 0."""
    positive = x > 0.0
    safe = ops.where(positive, x, ops.ones_like(x))
    return ops.where(positive, ops.power(safe, w), ops.zeros_like(x))


def ms_ssim(
    y_true,
    y_pred,
    max_val: float = 1.0,
    power_factors: Sequence[float] = MSSSIM_WEIGHTS,
    filter_size: int = 11,
    filter_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
):
    """Multi-scale structural similarity (Wang et al., 2003), in 2D and 3D.

    At scale ``j`` the images are Gaussian-filtered (VALID padding) to give the
    luminance term ``l_j`` and the contrast-structure term ``cs_j``; then both images
    are 2x average-pooled. The result is

        MS-SSIM = prod_{j < M} cs_j ** w_j  *  (l_M * cs_M) ** w_M

    i.e. ``prod(cs[:-1] ** w[:-1]) * ssim[-1] ** w[-1]``: only the coarsest scale
    contributes its luminance. (A widely copied PyTorch version multiplies the last
    SSIM inside the product, which raises it to ``w_M`` once per scale.) This follows
    ``tf.image.ssim_multiscale`` exactly in 2D, and extends it to 3D with a separable
    3D Gaussian and 2x2x2 pooling. One difference: TensorFlow refuses images smaller
    than the filter at the coarsest scale, where this function shrinks the filter to
    the image size, so that small training crops (e.g. 64 x 64) can use five scales.

    Args:
        y_true: ``(B, *spatial, C)`` with values in ``[0, max_val]`` (images, masks or
            probabilities; values outside are refused).
        y_pred: Same shape and range.
        max_val: Dynamic range of the values. Defaults to 1.0.
        power_factors: Weight of each scale; their number sets the number of scales.
            Defaults to ``MSSSIM_WEIGHTS`` (five scales).
        filter_size: Gaussian window size. Defaults to 11.
        filter_sigma: Gaussian standard deviation. Defaults to 1.5.
        k1: Luminance stabiliser. Defaults to 0.01.
        k2: Contrast stabiliser. Defaults to 0.03.

    Returns:
        Tensor ``(B,)``: MS-SSIM averaged over channels, 1 for identical images.

    Raises:
        ValueError: different shapes, a rank other than 4 or 5, unknown or too small
            spatial sizes, or values outside ``[0, max_val]``.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).random((1, 64, 64, 1)).astype("float32")
        >>> round(float(ms_ssim(x, x)[0]), 4)
        1.0
    """
    y_true, y_pred = _check_pair(y_true, y_pred, high=max_val)
    spatial_dims = len(y_pred.shape) - 2
    channels = y_pred.shape[-1]
    spatial = tuple(y_pred.shape[1:-1])
    if any(s is None for s in spatial):
        raise ValueError(f"ms_ssim needs static spatial sizes, got {spatial}")
    levels = len(power_factors)
    if min(spatial) < 2 ** (levels - 1):
        raise ValueError(
            f"ms_ssim with {levels} scales needs every spatial size >= {2 ** (levels - 1)}, got {spatial}"
        )

    # Each channel is an independent image: move channels into the batch axis.
    # (B, *S, C) -> (B, C, *S) -> (B*C, *S, 1)
    perm = (0, spatial_dims + 1) + tuple(range(1, spatial_dims + 1))
    a = ops.reshape(ops.transpose(y_true, perm), (-1,) + spatial + (1,))
    b = ops.reshape(ops.transpose(y_pred, perm), (-1,) + spatial + (1,))

    c1 = (k1 * max_val) ** 2
    c2 = (k2 * max_val) ** 2
    axes = tuple(range(1, spatial_dims + 2))
    terms = []
    for level in range(levels):
        if level > 0:
            a = _downsample(a, spatial_dims)
            b = _downsample(b, spatial_dims)
        size = min(filter_size, *a.shape[1 : spatial_dims + 1])
        weights = _gaussian_1d(size, filter_sigma)
        mu_a = _filter(a, weights, spatial_dims)
        mu_b = _filter(b, weights, spatial_dims)
        num0 = 2.0 * mu_a * mu_b
        den0 = ops.square(mu_a) + ops.square(mu_b)
        luminance = (num0 + c1) / (den0 + c1)
        num1 = 2.0 * _filter(a * b, weights, spatial_dims)
        den1 = _filter(ops.square(a) + ops.square(b), weights, spatial_dims)
        cs_map = (num1 - num0 + c2) / (den1 - den0 + c2)
        if level < levels - 1:
            terms.append(ops.mean(cs_map, axis=axes))  # cs_j, (B*C,)
        else:
            terms.append(ops.mean(luminance * cs_map, axis=axes))  # ssim_M, (B*C,)

    value = None
    for term, w in zip(terms, power_factors):
        factor = _safe_pow(term, float(w))
        value = factor if value is None else value * factor
    value = ops.reshape(value, (-1, channels))
    return ops.mean(value, axis=-1)


def ms_ssim_loss(y_true, y_pred, **kwargs: float):
    """``1 - ms_ssim(y_true, y_pred, **kwargs)``, shape ``(B,)``; see :func:`ms_ssim`.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).random((1, 32, 32, 1))
        >>> round(float(ms_ssim_loss(x, x, power_factors=(0.5, 0.5))[0]), 4)
        0.0
    """
    return 1.0 - ms_ssim(y_true, y_pred, **kwargs)


def hybrid_loss(
    y_true,
    y_pred,
    focal_kwargs: dict | None = None,
    ms_ssim_kwargs: dict | None = None,
    iou_kwargs: dict | None = None,
):
    """The UNet 3+ hybrid loss: focal + MS-SSIM + IoU (Huang et al., 2020, Eq. 4).

    It is 0 for a perfect prediction and finite, with finite gradients, for empty masks.

    Args:
        y_true: Masks in {0, 1}, ``(B, *spatial, C)``.
        y_pred: Probabilities in [0, 1] (not logits), same shape.
        focal_kwargs: Extra arguments for :func:`focal_loss`. Defaults to None.
        ms_ssim_kwargs: Extra arguments for :func:`ms_ssim`. Defaults to None.
        iou_kwargs: Extra arguments for :func:`iou_loss`. Defaults to None.

    Returns:
        Tensor ``(B,)``.

    Raises:
        ValueError: as :func:`focal_loss`, :func:`ms_ssim` and :func:`iou_loss`.

    Example:
        >>> import numpy as np
        >>> y = np.zeros((2, 32, 32, 1), "float32"); y[:, 8:20, 8:20] = 1
        >>> round(float(hybrid_loss(y, y)[0]), 4)
        0.0
    """
    return (
        focal_loss(y_true, y_pred, **(focal_kwargs or {}))
        + ms_ssim_loss(y_true, y_pred, **(ms_ssim_kwargs or {}))
        + iou_loss(y_true, y_pred, **(iou_kwargs or {}))
    )


def foreground_only(loss_fn: Callable) -> Callable:
    """Wrap a per-sample loss so that samples with an empty target contribute 0.

    This mimics training the segmentation only on samples that contain the target (as
    foreground-oversampling patch samplers nearly do) while another head, such as the
    UNet 3+ CGM, still sees every sample.

    Args:
        loss_fn: ``loss_fn(y_true, y_pred) -> (B,)``.

    Returns:
        A loss with the same signature and name ``"foreground_only_<name>"``.

    Example:
        >>> import numpy as np
        >>> y = np.zeros((2, 32, 32, 1), "float32"); y[0, 4:9, 4:9] = 1
        >>> loss = foreground_only(iou_loss)(y, np.full_like(y, 0.5))
        >>> bool(loss[0] > 0), float(loss[1])
        (True, 0.0)
    """

    def wrapped(y_true, y_pred):
        y_true = _as_float(y_true, "y_true")
        axes = tuple(range(1, len(y_true.shape)))
        present = ops.cast(ops.max(y_true, axis=axes) > 0, "float32")  # (B,)
        return loss_fn(y_true, y_pred) * present

    wrapped.__name__ = f"foreground_only_{getattr(loss_fn, '__name__', 'loss')}"
    return wrapped
