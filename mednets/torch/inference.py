"""Sliding-window inference: run a patch-trained network over a whole volume.

Networks are trained on crops (160x192x128 in Myronenko 2018), and some (like NVNet with
its VAE, whose dense layers are sized for the crop) only accept that size. To segment a
larger volume we slide a window over it, run the network on each patch, and blend the
overlapping predictions with weights that favour patch centres, where the network saw
the most context (a Gaussian, as in nnU-Net).

Example:
    >>> import torch
    >>> model = torch.nn.Conv3d(4, 3, 1)
    >>> sliding_window_inference(model, torch.randn(1, 4, 40, 30, 20), (16, 16, 16)).shape
    torch.Size([1, 3, 40, 30, 20])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["sliding_window_inference", "window_starts", "importance_map", "model_dtype", "as_model_input"]


def window_starts(size: int, patch: int, step: int) -> list[int]:
    """Start indices of windows of length ``patch`` covering ``[0, size)`` with gaps <= ``step``.

    The first window starts at 0, the last ends at ``size``, and the rest are spread
    evenly in between.

    Example:
        >>> window_starts(40, 16, 8)
        [0, 8, 16, 24]
    """
    if size < patch:
        raise ValueError(f"window_starts: size {size} is smaller than the patch {patch}")
    if step < 1:
        raise ValueError(f"window_starts: step must be >= 1, got {step}")
    if size == patch:
        return [0]
    n = math.ceil((size - patch) / step) + 1
    return [int(round(i * (size - patch) / (n - 1))) for i in range(n)]


def importance_map(
    patch_size: Sequence[int], blend: str = "gaussian", sigma_scale: float = 0.125
) -> torch.Tensor:
    """Blending weights of one patch, ``patch_size``-shaped, maximum 1.

    Args:
        patch_size: Spatial patch size.
        blend: "gaussian" (centre-weighted, sigma = ``sigma_scale`` x patch size) or
            "constant" (plain averaging). Defaults to "gaussian".
        sigma_scale: Gaussian width relative to the patch. Defaults to 0.125 (nnU-Net).

    Returns:
        A float32 tensor of shape ``patch_size``, strictly positive.

    Example:
        >>> w = importance_map((5, 5))
        >>> float(w[2, 2]), bool(w[0, 0] < w[2, 2])
        (1.0, True)
    """
    if blend == "constant":
        return torch.ones(tuple(patch_size))
    if blend != "gaussian":
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    w = torch.ones(())
    for p in patch_size:
        x = torch.arange(p, dtype=torch.float64) - (p - 1) / 2
        g = torch.exp(-0.5 * (x / (sigma_scale * p)) ** 2)
        w = w.unsqueeze(-1) * g
    w = w / w.max()
    # Keep every weight positive so a corner voxel covered by one window still counts.
    return w.clamp_min(1e-4).float()


def model_dtype(model: Callable) -> torch.dtype:
    """The floating dtype a model's input should have: that of its first parameter.

    ``model`` may be an ``nn.Module`` or a bound method of one (``net.segment``); a
    callable with no parameters to ask (a plain function, a parameter-free module)
    gets float32.

    Example:
        >>> net = torch.nn.Conv3d(1, 2, 3).double()
        >>> model_dtype(net), model_dtype(net.forward), model_dtype(torch.sigmoid)
        (torch.float64, torch.float64, torch.float32)
    """
    module = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    if isinstance(module, nn.Module):
        for p in module.parameters():
            if p.is_floating_point():
                return p.dtype
    return torch.float32


def as_model_input(volume: torch.Tensor | np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``dtype`` from a NumPy array or a tensor of any real number dtype.

    Floating inputs (float16, float64, ...) and integer inputs (int16 MRI, uint8, ...)
    are cast to ``dtype``; a tensor already of ``dtype`` is returned as it is (no copy).

    Args:
        volume: An array or a tensor.
        dtype: The model's floating dtype (see :func:`model_dtype`).

    Returns:
        A tensor of ``dtype``, on the input tensor's device (CPU for an array).

    Raises:
        ValueError: For a dtype that is not a real number: bool, complex, object or
            strings; the message names the dtype.

    Example:
        >>> as_model_input(np.zeros((1, 4, 4), np.int16), torch.float32).dtype
        torch.float32
    """
    if isinstance(volume, np.ndarray):
        if volume.dtype == np.bool_ or volume.dtype.kind not in "iuf":
            raise ValueError(
                f"expected an array of real numbers (integer or floating), got dtype {volume.dtype}; "
                f"cast it yourself if it is meant as numbers (bool masks: .astype(np.float32))"
            )
        volume = torch.from_numpy(np.ascontiguousarray(volume))
    elif not isinstance(volume, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor or a numpy.ndarray, got {type(volume).__name__}")
    if volume.dtype == torch.bool or volume.is_complex():
        raise ValueError(
            f"expected a tensor of real numbers (integer or floating), got dtype {volume.dtype}; "
            f"cast it yourself if it is meant as numbers"
        )
    return volume.to(dtype)


def sliding_window_inference(
    model: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor | np.ndarray,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    blend: str = "gaussian",
    margin: int = 0,
    sw_batch_size: int = 1,
) -> torch.Tensor:
    """Run ``model`` patch by patch over ``volume`` and blend the outputs.

    Windows of ``patch_size`` step by ``patch * (1 - overlap)`` per axis (the last one
    flush with the end). Each voxel's output is the weighted mean of the windows
    covering it. With ``margin > 0``, voxels within ``margin`` of a window face that is
    not on the volume border get no weight: for a fully convolutional model with a
    receptive-field radius <= ``margin``, the result then equals the full-volume output
    exactly. Axes shorter than the patch are zero-padded and cropped back.

    If the model returns a tuple or list (NVNet with its VAE), its first item (the
    segmentation) is used. The model runs under ``torch.no_grad``; put it in ``eval``
    mode first.

    **Dtypes.** NumPy's default float64 and the integer dtypes of MRI files (int16,
    uint8, ...) are accepted: the volume is cast to the model's parameter dtype
    (:func:`model_dtype`; float32 when the callable has no parameters to ask, such as
    a plain function). A bound method of a module (``net.segment``) is asked through
    its module. Bool, complex and object inputs raise a ``ValueError``.

    Args:
        model: Callable ``(N, C_in, *patch_size) -> (N, C_out, *patch_size)``.
        volume: ``(B, C_in, *S)`` or unbatched ``(C_in, *S)`` (tensor or array) of any
            integer or floating dtype.
        patch_size: Spatial window size, one entry per spatial axis.
        overlap: Fraction of a window shared with its neighbour, in [0, 1).
            Defaults to 0.5.
        blend: "gaussian" or "constant". Defaults to "gaussian".
        margin: Voxels ignored at inner window faces. Defaults to 0.
        sw_batch_size: Windows per model call. Defaults to 1.

    Returns:
        ``(B, C_out, *S)`` float32 (``(C_out, *S)`` for an unbatched input) on the
        volume's device: the input's spatial size.

    Raises:
        ValueError: For a wrong ``patch_size`` length, ``overlap``, ``blend``,
            ``margin`` too large for the patch, a model output of the wrong size, or a
            volume whose dtype is not a real number (bool, complex, object).

    Example:
        >>> x = np.random.default_rng(0).random((1, 20, 20, 20))  # float64, NumPy's default
        >>> sliding_window_inference(torch.nn.Conv3d(1, 2, 3, padding=1), x, (16, 16, 16)).dtype
        torch.float32
    """
    unbatched = False
    volume = as_model_input(volume, model_dtype(model))
    patch_size = tuple(int(p) for p in patch_size)
    n_sp = len(patch_size)
    if volume.ndim == n_sp + 1:
        volume, unbatched = volume.unsqueeze(0), True
    if volume.ndim != n_sp + 2:
        raise ValueError(
            f"sliding_window_inference: patch_size {patch_size} has {n_sp} axes, so the volume must "
            f"be (B, C, {n_sp} sizes) or (C, {n_sp} sizes); got shape {tuple(volume.shape)}"
        )
    if any(p < 1 for p in patch_size):
        raise ValueError(f"sliding_window_inference: patch sizes must be >= 1, got {patch_size}")
    if not 0 <= overlap < 1:
        raise ValueError(f"sliding_window_inference: overlap must be in [0, 1), got {overlap}")
    if margin < 0 or any(p - 2 * margin < 1 for p in patch_size):
        raise ValueError(
            f"sliding_window_inference: margin must be >= 0 and leave a centre in every window "
            f"(2 * margin < patch); got margin={margin}, patch_size={patch_size}"
        )
    if sw_batch_size < 1:
        raise ValueError(f"sliding_window_inference: sw_batch_size must be >= 1, got {sw_batch_size}")
    weight_patch = importance_map(patch_size, blend).to(volume.device)

    spatial = tuple(volume.shape[2:])
    pad = [max(0, p - s) for p, s in zip(patch_size, spatial)]
    if any(pad):
        # F.pad takes (last axis first) pairs; pad at the end of each short axis.
        volume = F.pad(volume, [v for p in reversed(pad) for v in (0, p)])
    padded = tuple(volume.shape[2:])

    steps = [max(1, min(int(p * (1 - overlap)), p - 2 * margin)) for p in patch_size]
    starts = [window_starts(s, p, st) for s, p, st in zip(padded, patch_size, steps)]
    corners = list(itertools.product(*starts))

    out = None
    norm = torch.zeros((1, 1) + padded, device=volume.device)
    with torch.no_grad():
        for i in range(0, len(corners), sw_batch_size):
            group = corners[i : i + sw_batch_size]
            windows = [tuple(slice(c, c + p) for c, p in zip(corner, patch_size)) for corner in group]
            batch = torch.cat([volume[(slice(None), slice(None)) + w] for w in windows])
            pred = model(batch)
            if isinstance(pred, (tuple, list)):
                pred = pred[0]
            expected = (batch.shape[0], None) + patch_size
            if (
                pred.ndim != batch.ndim
                or tuple(pred.shape[2:]) != patch_size
                or pred.shape[0] != batch.shape[0]
            ):
                raise ValueError(
                    f"sliding_window_inference: the model must keep the patch size; expected output "
                    f"{expected} (channels free), got {tuple(pred.shape)}"
                )
            pred = pred.float()
            if out is None:
                out = torch.zeros((volume.shape[0], pred.shape[1]) + padded, device=volume.device)
            for k, (corner, w) in enumerate(zip(group, windows)):
                weight = weight_patch
                if margin:
                    weight = weight.clone()
                    for axis, (c, p, s) in enumerate(zip(corner, patch_size, padded)):
                        idx = [slice(None)] * n_sp
                        if c > 0:  # an inner face at the start of this axis
                            idx[axis] = slice(0, margin)
                            weight[tuple(idx)] = 0
                        if c + p < s:  # an inner face at the end
                            idx[axis] = slice(p - margin, p)
                            weight[tuple(idx)] = 0
                b = volume.shape[0]
                out[(slice(None), slice(None)) + w] += pred[k * b : (k + 1) * b] * weight
                norm[(slice(None), slice(None)) + w] += weight
    out = out / norm
    out = out[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]
    return out[0] if unbatched else out
