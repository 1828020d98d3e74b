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
from torch.nn import functional as F

__all__ = ["sliding_window_inference", "window_starts", "importance_map", "regions_to_label"]


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

    Args:
        model: Callable ``(N, C_in, *patch_size) -> (N, C_out, *patch_size)``.
        volume: ``(B, C_in, *S)`` or unbatched ``(C_in, *S)`` (tensor or array).
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
            ``margin`` too large for the patch, or a model output of the wrong size.
    """
    unbatched = False
    if isinstance(volume, np.ndarray):
        volume = torch.from_numpy(np.ascontiguousarray(volume))
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


def regions_to_label(regions, threshold: float = 0.5, enhancing_label: int = 4) -> np.ndarray:
    """Turn nested region maps (WT, TC, ET) into a BraTS label map.

    The three sigmoid channels overlap by design (ET inside TC inside WT). A voxel gets
    the deepest region it belongs to, keeping the nesting even where the network broke
    it: ET counts only inside TC and WT, TC only inside WT.

    Args:
        regions: Probabilities or masks ``(3, *S)`` in the order (WT, TC, ET), a tensor
            or an array.
        threshold: Probability above which a voxel is in a region. Defaults to 0.5.
        enhancing_label: Label of the enhancing tumour: 4 (BraTS 2018) or 3 (2023).
            Defaults to 4.

    Returns:
        uint8 ``(*S)``: 0 background, 2 oedema (WT only), 1 necrotic core (TC, not ET),
        ``enhancing_label`` enhancing tumour.

    Example:
        >>> regions_to_label(np.array([[0.9, 0.9, 0.9, 0.1], [0.1, 0.8, 0.8, 0.9], [0.1, 0.1, 0.7, 0.9]])).tolist()
        [2, 1, 4, 0]
    """
    if isinstance(regions, torch.Tensor):
        regions = regions.detach().float().cpu().numpy()
    regions = np.asarray(regions)
    if regions.ndim < 2 or regions.shape[0] != 3:
        raise ValueError(
            f"regions_to_label: expected (3, *spatial) in the order WT, TC, ET, got shape {regions.shape}"
        )
    if enhancing_label not in (3, 4):
        raise ValueError(f"regions_to_label: enhancing_label must be 3 or 4, got {enhancing_label}")
    wt = regions[0] > threshold
    tc = wt & (regions[1] > threshold)
    et = tc & (regions[2] > threshold)
    label = np.zeros(regions.shape[1:], dtype=np.uint8)
    label[wt] = 2
    label[tc] = 1
    label[et] = enhancing_label
    return label
