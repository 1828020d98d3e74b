"""Inflate a trained 2D network into a 3D one (the I3D rule).

Paper: Carreira and Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017,
https://arxiv.org/abs/1705.07750 (Section 2.4, "Inflating 2D ConvNets into 3D").

A 2D kernel ``w`` of shape ``(O, I, k, k)`` becomes a 3D kernel of shape
``(O, I, t, k, k)`` by repeating it ``t`` times along depth and dividing by ``t``. On a
"boring" volume, one slice repeated along depth, the 3D conv then sums ``t`` copies of
``w / t`` applied to the same slice: exactly the 2D conv's output, at every depth position
whose ``t`` neighbours are inside the volume (zero padding breaks this near the edges).
Batch-norm parameters and statistics are copied unchanged.

Keys are matched by name: the 3D model must use the 2D model's names, as
:mod:`mednets.torch.resnet3d` does (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer1.0.downsample.0``, ``fc``).

Example:
    >>> import torch
    >>> from mednets.torch.resnet3d import resnet2d, i3d_resnet50
    >>> model_2d = resnet2d(50, init_filters=8)
    >>> model_3d = i3d_resnet50(init_filters=8)
    >>> loaded, skipped = inflate_2d_weights(model_3d, model_2d.state_dict())
    >>> len(loaded), [s.key for s in skipped]
    (318, ['fc.weight', 'fc.bias'])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["SkippedKey", "HEAD_PREFIXES", "inflate_kernel", "inflate_tensor", "inflate_2d_weights"]

#: State-dict prefixes treated as the classification head (never inflated).
HEAD_PREFIXES = ("fc.",)


class SkippedKey(NamedTuple):
    """A key that was not loaded, and why."""

    key: str
    reason: str


def inflate_kernel(weight_2d: torch.Tensor, depth: int) -> torch.Tensor:
    """Repeat a 2D conv kernel ``depth`` times along a new depth axis and divide by ``depth``.

    Args:
        weight_2d: Kernel of shape ``(O, I, kh, kw)``.
        depth: Kernel size along depth, ``t >= 1``.

    Returns:
        Kernel of shape ``(O, I, t, kh, kw)`` whose sum over depth is ``weight_2d``.

    Example:
        >>> w = torch.ones(2, 3, 3, 3)
        >>> inflate_kernel(w, 3).shape, float(inflate_kernel(w, 3).sum(2).mean())
        (torch.Size([2, 3, 3, 3, 3]), 1.0)
    """
    if weight_2d.ndim != 4:
        raise ValueError(f"expected a 2D conv kernel (O, I, kh, kw), got shape {tuple(weight_2d.shape)}")
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    depth = int(depth)
    return weight_2d.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth  # (O, I, t, kh, kw)


def inflate_tensor(value_2d: torch.Tensor, shape_3d: tuple[int, ...]) -> torch.Tensor:
    """Turn one 2D state-dict entry into the 3D entry of shape ``shape_3d``.

    Equal shapes (batch norm, biases, 1-D tensors, the step counter) are copied; a 4-D
    conv kernel becomes a 5-D one by :func:`inflate_kernel` when the output channels,
    input channels and in-plane kernel agree.

    Raises:
        ValueError: If the shapes cannot be matched; the message names both shapes.
    """
    shape_2d, shape_3d = tuple(value_2d.shape), tuple(shape_3d)
    if shape_2d == shape_3d:
        return value_2d.clone()
    if len(shape_2d) == 4 and len(shape_3d) == 5 and shape_3d[:2] + shape_3d[3:] == shape_2d:
        return inflate_kernel(value_2d, shape_3d[2])
    raise ValueError(f"shape mismatch: 2D {shape_2d} cannot be inflated to 3D {shape_3d}")


def inflate_2d_weights(
    model_3d: nn.Module,
    state_dict_2d: Mapping[str, torch.Tensor],
    head_prefixes: tuple[str, ...] = HEAD_PREFIXES,
) -> tuple[list[str], list[SkippedKey]]:
    """Load a 2D network's ``state_dict`` into a 3D network, inflating the conv kernels.

    Every key present in both, with compatible shapes, is loaded into ``model_3d`` (in
    place). Nothing is raised for a single bad entry: it is reported instead.

    Args:
        model_3d: The 3D network, with the 2D network's module names.
        state_dict_2d: The 2D network's ``state_dict()`` (or a checkpoint's).
        head_prefixes: Keys starting with these are the classification head and are
            skipped (a new task needs a new head). Defaults to ``("fc.",)``.

    Returns:
        ``(loaded, skipped)``: the loaded keys, in the 2D state dict's order, and a list
        of :class:`SkippedKey` ``(key, reason)`` for every other key of either side:
        the head, a shape mismatch (naming both shapes), a key missing from the 3D
        model, or a 3D key absent from the 2D state dict (it keeps its initial value).

    Raises:
        ValueError: If ``model_3d`` is not an ``nn.Module`` or ``state_dict_2d`` not a
            mapping of tensors.

    Example:
        >>> conv2d = torch.nn.Conv2d(1, 1, 3, bias=False)
        >>> conv3d = torch.nn.Conv3d(1, 1, 3, bias=False)
        >>> inflate_2d_weights(conv3d, conv2d.state_dict())
        (['weight'], [])
    """
    if not isinstance(model_3d, nn.Module):
        raise ValueError(f"model_3d must be a torch.nn.Module, got {type(model_3d).__name__}")
    if not isinstance(state_dict_2d, Mapping):
        raise ValueError(
            f"state_dict_2d must be a mapping of name -> tensor, got {type(state_dict_2d).__name__}"
        )
    target = model_3d.state_dict()
    new_values, loaded, skipped = {}, [], []
    for key, value in state_dict_2d.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state_dict_2d[{key!r}] must be a tensor, got {type(value).__name__}")
        if key.startswith(tuple(head_prefixes)):
            skipped.append(SkippedKey(key, "classification head: not inflated, train a new one"))
        elif key not in target:
            skipped.append(SkippedKey(key, "not in the 3D model"))
        else:
            try:
                new_values[key] = inflate_tensor(value, tuple(target[key].shape)).to(target[key].dtype)
            except ValueError as err:
                skipped.append(SkippedKey(key, str(err)))
            else:
                loaded.append(key)
    for key in target:
        if key not in state_dict_2d:
            reason = (
                "classification head: not in the 2D state dict"
                if key.startswith(tuple(head_prefixes))
                else "not in the 2D state dict: keeps its initial value"
            )
            skipped.append(SkippedKey(key, reason))
    result = model_3d.load_state_dict(new_values, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # only keys of target were loaded
    return loaded, skipped
