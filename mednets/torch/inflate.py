"""Inflate a trained 2D network into a 3D one (the I3D rule).

Paper: Carreira and Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017,
https://arxiv.org/abs/1705.07750 (Section 2.4, "Inflating 2D ConvNets into 3D").

A 2D kernel ``w`` of shape ``(O, I, k, k)`` becomes a 3D kernel of shape
``(O, I, t, k, k)`` by repeating it ``t`` times along depth and dividing by ``t``. On a
"boring" volume, one slice repeated along depth, the 3D conv then sums ``t`` copies of
``w / t`` applied to the same slice: exactly the 2D conv's output, at every depth position
whose ``t`` neighbours are inside the volume (zero padding breaks this near the edges).
Batch-norm parameters and statistics are copied unchanged.

**Which axis is depth.** The new kernel axis ``t`` is the *first* spatial axis of the
3D model's ``(B, C, D, H, W)`` input, as in mmaction2 and I3D (``(B, C, T, H, W)``), so
their checkpoints keep their ``(t, s, s)`` kernels and the 2D kernel acts on the last
two axes. For a volume, ``t`` must be the slice axis z: then every axial slice is one of
the 2D network's images, and an inflated kernel sums the 2D kernel over neighbouring
slices. A :mod:`mednets.data` volume ``(C, X, Y, Z)`` has z last; move it first with
:func:`mednets.data.depth_first` (``(C, Z, X, Y)``) before the 3D model sees it, and
train the 2D network on the axial slices ``(C, X, Y)`` that this layout stacks.

**Names.** Keys are matched by name: the 3D model must use the 2D model's names, as
:mod:`mednets.torch.resnet3d` does (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer1.0.downsample.0``, ``fc``). :func:`canonical_key` first strips the prefixes
that wrappers add (``module.`` from ``DataParallel``, ``model.``, ``backbone.``) and maps
mmaction2's ``ConvModule`` names (``conv1.conv`` -> ``conv1``, ``conv1.bn`` -> ``bn1``,
``layerN.i.convK.bn`` -> ``layerN.i.bnK``, ``downsample.conv`` / ``.bn`` ->
``downsample.0`` / ``.1``). A checkpoint that still matches too little is refused (see
:func:`inflate_2d_weights`), so a model never stays random without a word.

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

import re
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "SkippedKey",
    "HEAD_PREFIXES",
    "WRAPPER_PREFIXES",
    "canonical_key",
    "inflate_kernel",
    "inflate_tensor",
    "inflate_2d_weights",
]

#: State-dict prefixes treated as the classification head (never inflated).
HEAD_PREFIXES = ("fc.",)

#: Prefixes that wrappers add to every key: ``DataParallel`` / DDP (``module.``), a
#: Lightning module or a model held as an attribute (``model.``), mmaction2 /
#: mmdetection recognisers (``backbone.``).
WRAPPER_PREFIXES = ("module.", "model.", "backbone.")

# mmaction2 wraps each conv and its batch norm in a ConvModule; torchvision's names.
_MMACTION_NAMES = (
    (re.compile(r"^conv1\.conv\."), "conv1."),
    (re.compile(r"^conv1\.bn\."), "bn1."),
    (re.compile(r"^(layer\d+\.\d+)\.conv(\d)\.conv\."), r"\1.conv\2."),
    (re.compile(r"^(layer\d+\.\d+)\.conv(\d)\.bn\."), r"\1.bn\2."),
    (re.compile(r"^(layer\d+\.\d+)\.downsample\.conv\."), r"\1.downsample.0."),
    (re.compile(r"^(layer\d+\.\d+)\.downsample\.bn\."), r"\1.downsample.1."),
)

#: How many unmatched keys of each side an error message names.
_SHOW = 5


class SkippedKey(NamedTuple):
    """A key that was not loaded, and why."""

    key: str
    reason: str


def canonical_key(key: str, prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> str:
    """A checkpoint key in torchvision's (and :mod:`mednets.torch.resnet3d`'s) names.

    Strips the wrapper ``prefixes`` (repeatedly, so ``module.backbone.`` goes too) and
    maps mmaction2's ``ConvModule`` names (``conv1.conv`` -> ``conv1``, ``conv1.bn`` ->
    ``bn1``, ``layerN.i.convK.conv`` -> ``layerN.i.convK``, ``layerN.i.convK.bn`` ->
    ``layerN.i.bnK``, ``layerN.i.downsample.conv`` / ``.bn`` -> ``downsample.0`` /
    ``.1``). Other keys are returned unchanged.

    Args:
        key: A state-dict key.
        prefixes: Wrapper prefixes to strip. Defaults to :data:`WRAPPER_PREFIXES`.

    Returns:
        The key in torchvision's names.

    Example:
        >>> canonical_key("module.layer1.0.bn1.weight"), canonical_key("backbone.conv1.bn.weight")
        ('layer1.0.bn1.weight', 'bn1.weight')
        >>> canonical_key("layer2.0.conv2.bn.running_var"), canonical_key("layer2.0.downsample.conv.weight")
        ('layer2.0.bn2.running_var', 'layer2.0.downsample.0.weight')
    """
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    for pattern, replacement in _MMACTION_NAMES:
        key = pattern.sub(replacement, key)
    return key


def inflate_kernel(weight_2d: torch.Tensor, t: int) -> torch.Tensor:
    """Repeat a 2D conv kernel ``t`` times along a new first axis (depth) and divide by ``t``.

    Args:
        weight_2d: Kernel of shape ``(O, I, kh, kw)``.
        t: Kernel size along depth (the slice axis), ``t >= 1``.

    Returns:
        Kernel of shape ``(O, I, t, kh, kw)`` whose sum over depth is ``weight_2d``.

    Example:
        >>> w = torch.ones(2, 3, 3, 3)
        >>> inflate_kernel(w, 3).shape, float(inflate_kernel(w, 3).sum(2).mean())
        (torch.Size([2, 3, 3, 3, 3]), 1.0)
    """
    if weight_2d.ndim != 4:
        raise ValueError(f"expected a 2D conv kernel (O, I, kh, kw), got shape {tuple(weight_2d.shape)}")
    if int(t) != t or t < 1:
        raise ValueError(f"t (the kernel size along depth) must be a positive integer, got {t!r}")
    t = int(t)
    return weight_2d.unsqueeze(2).repeat(1, 1, t, 1, 1) / t  # (O, I, t, kh, kw)


def inflate_tensor(value_2d: torch.Tensor, shape_3d: tuple[int, ...]) -> torch.Tensor:
    """Turn one 2D state-dict entry into the 3D entry of shape ``shape_3d``.

    Equal shapes (batch norm, biases, 1-D tensors, the step counter) are copied; a 4-D
    conv kernel becomes a 5-D one by :func:`inflate_kernel` when the output channels,
    input channels and in-plane kernel agree.

    Args:
        value_2d: The 2D entry.
        shape_3d: The shape of the 3D model's entry.

    Returns:
        A new tensor of shape ``shape_3d``.

    Raises:
        ValueError: If the shapes cannot be matched; the message names both shapes.

    Example:
        >>> inflate_tensor(torch.ones(4, 2, 3, 3), (4, 2, 5, 3, 3)).shape
        torch.Size([4, 2, 5, 3, 3])
    """
    shape_2d, shape_3d = tuple(value_2d.shape), tuple(shape_3d)
    if shape_2d == shape_3d:
        return value_2d.clone()
    if len(shape_2d) == 4 and len(shape_3d) == 5 and shape_3d[:2] + shape_3d[3:] == shape_2d:
        return inflate_kernel(value_2d, shape_3d[2])
    raise ValueError(f"shape mismatch: 2D {shape_2d} cannot be inflated to 3D {shape_3d}")


def _conv_weight_keys(model: nn.Module) -> list[str]:
    """The ``state_dict`` keys of every convolution's weight in ``model``."""
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [
        f"{name}.weight" if name else "weight" for name, m in model.named_modules() if isinstance(m, convs)
    ]


def inflate_2d_weights(
    model_3d: nn.Module,
    state_dict_2d: Mapping[str, torch.Tensor],
    head_prefixes: tuple[str, ...] = HEAD_PREFIXES,
    strict: bool = True,
) -> tuple[list[str], list[SkippedKey]]:
    """Load a 2D network's ``state_dict`` into a 3D network, inflating the conv kernels.

    Each 2D key is first put in the 3D model's names by :func:`canonical_key` (wrapper
    prefixes ``module.``, ``model.``, ``backbone.`` stripped, mmaction2's names mapped),
    unless it already is one of the 3D model's keys. Every key present in both, with
    compatible shapes, is loaded into ``model_3d`` (in place); a single bad entry is
    reported, not raised. But a checkpoint that would leave the network mostly random
    (no key at all, or fewer than half of the 3D model's convolution weights) is refused
    before anything is loaded, unless ``strict=False``.

    The new kernel axis is the first spatial axis of the 3D input, which must be the
    slice axis of a volume (see the module docstring and :func:`mednets.data.depth_first`).

    Args:
        model_3d: The 3D network, with the 2D network's module names.
        state_dict_2d: The 2D network's ``state_dict()``, or a checkpoint holding one
            under ``"state_dict"`` (as mmaction2 and Lightning save them).
        head_prefixes: Keys starting with these (after :func:`canonical_key`) are the
            classification head and are skipped (a new task needs a new head).
            Defaults to ``("fc.",)``.
        strict: Refuse a checkpoint that matches too little (see above). False loads
            whatever matches and only reports the rest. Defaults to True.

    Returns:
        ``(loaded, skipped)``: the loaded keys (in the 3D model's names, in the 2D state
        dict's order), and a list of :class:`SkippedKey` ``(key, reason)`` for every
        other key of either side (2D keys as given): the head, a shape mismatch (naming
        both shapes), a key missing from the 3D model, or a 3D key absent from the 2D
        state dict (it keeps its initial value).

    Raises:
        ValueError: If ``model_3d`` is not an ``nn.Module`` or ``state_dict_2d`` not a
            mapping of tensors; with ``strict``, if no key would load or fewer than half
            of the 3D model's conv weights would, naming how many and the first
            unmatched keys on both sides.

    Example:
        >>> conv2d = torch.nn.Conv2d(1, 1, 3, bias=False)
        >>> conv3d = torch.nn.Conv3d(1, 1, 3, bias=False)
        >>> inflate_2d_weights(conv3d, {"module.weight": conv2d.weight})
        (['weight'], [])
        >>> inflate_2d_weights(conv3d, {"conv.weight": conv2d.weight})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: inflate_2d_weights: 0 of the 3D model's 1 conv weights would load ...['weight']...
    """
    if not isinstance(model_3d, nn.Module):
        raise ValueError(f"model_3d must be a torch.nn.Module, got {type(model_3d).__name__}")
    if isinstance(state_dict_2d, Mapping) and isinstance(state_dict_2d.get("state_dict"), Mapping):
        state_dict_2d = state_dict_2d["state_dict"]
    if not isinstance(state_dict_2d, Mapping):
        raise ValueError(
            f"state_dict_2d must be a mapping of name -> tensor, got {type(state_dict_2d).__name__}"
        )
    target = model_3d.state_dict()
    head_prefixes = tuple(head_prefixes)
    new_values, loaded, skipped, seen = {}, [], [], set()
    for key, value in state_dict_2d.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state_dict_2d[{key!r}] must be a tensor, got {type(value).__name__}")
        name = key if key in target else canonical_key(key)
        seen.add(name)
        if name.startswith(head_prefixes):
            skipped.append(SkippedKey(key, "classification head: not inflated, train a new one"))
        elif name not in target:
            where = "" if name == key else f" (read as {name!r})"
            skipped.append(SkippedKey(key, f"not in the 3D model{where}"))
        else:
            try:
                new_values[name] = inflate_tensor(value, tuple(target[name].shape)).to(target[name].dtype)
            except ValueError as err:
                skipped.append(SkippedKey(key, str(err)))
            else:
                loaded.append(name)
    for key in target:
        if key not in seen:
            reason = (
                "classification head: not in the 2D state dict"
                if key.startswith(head_prefixes)
                else "not in the 2D state dict: keeps its initial value"
            )
            skipped.append(SkippedKey(key, reason))
    conv_keys = _conv_weight_keys(model_3d)
    conv_loaded = sum(key in new_values for key in conv_keys)
    if strict and (not loaded or 2 * conv_loaded < len(conv_keys)):
        unmatched_2d = [
            key
            for key in state_dict_2d
            if key not in new_values
            and canonical_key(key) not in new_values
            and not canonical_key(key).startswith(head_prefixes)
        ]
        unmatched_3d = [k for k in target if k not in new_values and not k.startswith(head_prefixes)]
        raise ValueError(
            f"inflate_2d_weights: {conv_loaded} of the 3D model's {len(conv_keys)} conv weights would "
            f"load ({len(loaded)} keys in all), fewer than half; first unmatched 2D keys: "
            f"{unmatched_2d[:_SHOW]}; first 3D keys left unloaded: {unmatched_3d[:_SHOW]}. Check the "
            f"names (prefixes {', '.join(WRAPPER_PREFIXES)} and mmaction2's names are handled), or pass "
            f"strict=False to load what matches."
        )
    result = model_3d.load_state_dict(new_values, strict=False)
    if result.unexpected_keys:  # cannot happen: only keys of the model's own state dict are loaded
        raise RuntimeError(f"inflate_2d_weights: unexpected keys {result.unexpected_keys}")
    return loaded, skipped
