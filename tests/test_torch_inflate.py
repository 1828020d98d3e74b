"""Tests for mednets.torch.inflate: the I3D rule, the whole-network property, the report."""

import re

import pytest
import torch
from torch import nn

from mednets.torch.inflate import (
    SkippedKey,
    canonical_key,
    inflate_2d_weights,
    inflate_kernel,
    inflate_tensor,
)
from mednets.torch.resnet3d import i3d_resnet50, resnet2d, resnet3d

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _boring(image_2d, depth):
    """(B, C, H, W) -> (B, C, depth, H, W): the same slice repeated along depth."""
    return image_2d.unsqueeze(2).expand(-1, -1, depth, -1, -1).contiguous()


def _slice_errors(y3, y2):
    """Relative max error of every depth slice of y3 against y2 (per slice of axis 2)."""
    return ((y3 - y2.unsqueeze(2)).abs().amax(dim=(0, 1, 3, 4)) / y2.abs().max()).tolist()


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


@pytest.mark.parametrize("t", [1, 3, 5], ids=["t1", "t3", "t5"])
def test_single_conv_inflation_property(t):
    torch.manual_seed(0)
    conv2d = nn.Conv2d(3, 5, 3, padding=1)
    conv3d = nn.Conv3d(3, 5, (t, 3, 3), padding=(t // 2, 1, 1))
    loaded, skipped = inflate_2d_weights(conv3d, conv2d.state_dict())
    assert loaded == ["weight", "bias"] and skipped == []
    x = torch.randn(2, 3, 9, 11)
    depth = 9
    with torch.no_grad():
        err = _slice_errors(conv3d(_boring(x, depth)), conv2d(x))
    interior = err[t // 2 : depth - t // 2]
    assert max(interior) < 1e-5
    if t > 1:  # zero padding: the edge slices see fewer copies of the slice
        assert err[0] > 1e-2 and err[-1] > 1e-2


def test_inflate_kernel_repeats_and_divides():
    w = torch.randn(4, 2, 3, 3)
    w3 = inflate_kernel(w, 5)
    assert w3.shape == (4, 2, 5, 3, 3)
    for k in range(5):
        torch.testing.assert_close(w3[:, :, k], w / 5)
    torch.testing.assert_close(w3.sum(2), w)


@pytest.mark.parametrize(
    "name, depth, interior",
    [("resnet18_all_inflated", 48, range(16, 32)), ("i3d_resnet50", 256, range(10, 22))],
    ids=["resnet18", "i3d_resnet50"],
)
def test_whole_network_inflation_property(name, depth, interior):
    """Eval-mode BN: interior output slices equal the 2D network's output on the slice."""
    torch.manual_seed(0)
    if name == "i3d_resnet50":
        net2, net3 = resnet2d(50, init_filters=8, num_classes=None), i3d_resnet50(init_filters=8)
    else:
        net2 = resnet2d(18, init_filters=8, num_classes=None)
        net3 = resnet3d(18, init_filters=8, with_pool2=False)
    _randomise_bn(net2)
    loaded, skipped = inflate_2d_weights(net3, net2.state_dict())
    assert skipped == [] and len(loaded) == len(net3.state_dict())
    net2.eval(), net3.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y2, y3 = net2(x), net3(_boring(x, depth))
    err = _slice_errors(y3, y2)
    assert max(err[i] for i in interior) < 1e-4
    assert err[0] > 1e-2 and err[-1] > 1e-2  # the edges feel the zero padding
    assert err[0] > err[2] > err[4]  # ... and it fades with the distance from the edge


def test_3x3x3_style_inflation_property():
    """Style 3x3x3 inflates the bottleneck's middle conv instead of its first one."""
    torch.manual_seed(0)
    net2 = resnet2d(50, init_filters=4, num_classes=None)
    net3 = resnet3d(50, init_filters=4, inflate_style="3x3x3", with_pool2=False)
    _randomise_bn(net2, seed=1)
    loaded, skipped = inflate_2d_weights(net3, net2.state_dict())
    assert skipped == [] and net3.layer2[1].conv2.weight.shape[2] == 3
    net2.eval(), net3.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        err = _slice_errors(net3(_boring(x, 64)), net2(x))
    assert max(err[24:40]) < 1e-4 and err[0] > 1e-2


def test_report_lists_head_mismatch_and_missing_keys():
    torch.manual_seed(0)
    net2 = resnet2d(18, init_filters=4, num_classes=7)
    net3 = resnet3d(18, init_filters=4, num_classes=3)
    sd2 = dict(net2.state_dict())
    sd2["layer1.0.conv1.weight"] = torch.randn(4, 4, 5, 5)  # deliberately wrong in-plane size
    sd2["extra.weight"] = torch.zeros(2)
    del sd2["layer4.1.bn2.running_var"]
    before = net3.layer1[0].conv1.weight.detach().clone()
    loaded, skipped = inflate_2d_weights(net3, sd2)
    reasons = dict(skipped)
    assert all(isinstance(s, SkippedKey) for s in skipped)
    assert set(reasons) == {
        "fc.weight",
        "fc.bias",
        "layer1.0.conv1.weight",
        "extra.weight",
        "layer4.1.bn2.running_var",
    }
    assert "head" in reasons["fc.weight"] and "head" in reasons["fc.bias"]
    assert (
        reasons["layer1.0.conv1.weight"]
        == "shape mismatch: 2D (4, 4, 5, 5) cannot be inflated to 3D (4, 4, 3, 3, 3)"
    )
    assert reasons["extra.weight"] == "not in the 3D model"
    assert "not in the 2D state dict" in reasons["layer4.1.bn2.running_var"]
    assert torch.equal(net3.layer1[0].conv1.weight, before)  # a skipped key is left alone
    assert len(loaded) == len(net3.state_dict()) - 4
    # loaded entries: kernels inflated, BN parameters and statistics copied
    torch.testing.assert_close(net3.layer2[0].conv2.weight.sum(2), net2.layer2[0].conv2.weight)
    torch.testing.assert_close(net3.layer2[0].conv2.weight[:, :, 0] * 3, net2.layer2[0].conv2.weight)
    for key in ("bn1.weight", "layer3.0.downsample.1.running_mean", "layer4.1.bn2.bias"):
        assert torch.equal(net3.state_dict()[key], net2.state_dict()[key]), key


def test_inflate_tensor_rejects_other_channel_counts():
    with pytest.raises(ValueError, match=r"2D \(8, 4, 3, 3\) cannot be inflated to 3D \(8, 2, 3, 3, 3\)"):
        inflate_tensor(torch.zeros(8, 4, 3, 3), (8, 2, 3, 3, 3))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: inflate_2d_weights({"a": 1}, {}), "model_3d must be a torch.nn.Module, got dict"),
        (lambda: inflate_2d_weights(nn.Conv3d(1, 1, 1), [1]), "state_dict_2d must be a mapping"),
        (lambda: inflate_2d_weights(nn.Conv3d(1, 1, 1), {"weight": 1.0}), "must be a tensor, got float"),
        (lambda: inflate_kernel(torch.zeros(2, 2, 3), 3), "expected a 2D conv kernel"),
        (
            lambda: inflate_kernel(torch.zeros(2, 2, 3, 3), 0),
            "t \\(the kernel size along depth\\) must be a positive integer, got 0",
        ),
    ],
    ids=["model", "mapping", "tensor", "kernel_rank", "kernel_depth"],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------ loaders that load nothing (issue 13, kind 1)


def _mmaction2_name(key):
    """torchvision's names -> mmaction2's ConvModule names (the inverse of canonical_key)."""
    key = re.sub(r"^conv1\.", "conv1.conv.", key)
    key = re.sub(r"^bn1\.", "conv1.bn.", key)
    key = re.sub(r"^(layer\d+\.\d+)\.conv(\d)\.", r"\1.conv\2.conv.", key)
    key = re.sub(r"^(layer\d+\.\d+)\.bn(\d)\.", r"\1.conv\2.bn.", key)
    key = re.sub(r"\.downsample\.0\.", ".downsample.conv.", key)
    return re.sub(r"\.downsample\.1\.", ".downsample.bn.", key)


@pytest.fixture(scope="module")
def sd18():
    torch.manual_seed(0)
    return resnet2d(18, init_filters=8, num_classes=None).state_dict()


def _assert_loaded_everything(model, sd):
    torch.testing.assert_close(model.conv1.weight.sum(2), sd["conv1.weight"])
    torch.testing.assert_close(
        model.layer3[0].downsample[0].weight.sum(2), sd["layer3.0.downsample.0.weight"]
    )
    for key in ("bn1.running_var", "layer2.1.bn2.weight", "layer4.0.downsample.1.bias"):
        assert torch.equal(model.state_dict()[key], sd[key]), key


@pytest.mark.parametrize(
    "rename",
    [
        lambda k: "module." + k,  # DataParallel: the input (was: 0 loaded, 240 skipped)
        lambda k: "model." + k,
        lambda k: "backbone." + k,
        lambda k: "module.backbone." + k,
        _mmaction2_name,  # conv1.conv.weight, conv1.bn.weight, ...: the second input
        lambda k: "backbone." + _mmaction2_name(k),  # as an mmaction2 recogniser saves it
    ],
    ids=["module", "model", "backbone", "module-backbone", "mmaction2", "backbone-mmaction2"],
)
def test_wrapped_and_mmaction2_checkpoints_load_fully(sd18, rename):
    model = resnet3d(18, init_filters=8)
    wrapped = {rename(k): v for k, v in sd18.items()}
    assert set(wrapped) != set(sd18)
    loaded, skipped = inflate_2d_weights(model, wrapped)
    assert skipped == [] and len(loaded) == len(sd18) == 120
    assert loaded == list(sd18)  # reported in the 3D model's names
    _assert_loaded_everything(model, sd18)


def test_a_checkpoint_dict_with_a_state_dict_entry_is_unwrapped(sd18):
    model = resnet3d(18, init_filters=8)
    loaded, skipped = inflate_2d_weights(model, {"meta": {"epoch": 3}, "state_dict": dict(sd18)})
    assert skipped == [] and len(loaded) == 120
    _assert_loaded_everything(model, sd18)


def test_canonical_key():
    assert canonical_key("module.conv1.weight") == "conv1.weight"
    assert canonical_key("conv1.conv.weight") == "conv1.weight"
    assert canonical_key("conv1.bn.weight") == "bn1.weight"
    assert canonical_key("backbone.layer3.1.conv3.bn.running_mean") == "layer3.1.bn3.running_mean"
    assert canonical_key("layer1.0.downsample.bn.bias") == "layer1.0.downsample.1.bias"
    assert canonical_key("cls_head.fc_cls.weight") == "cls_head.fc_cls.weight"  # left alone


def test_nothing_loads_is_an_error_naming_both_sides_and_leaves_the_model_alone(sd18):
    model = resnet3d(18, init_filters=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    foreign = {"encoder." + k: v for k, v in sd18.items()}
    with pytest.raises(ValueError) as err:
        inflate_2d_weights(model, foreign)
    msg = str(err.value)
    assert "0 of the 3D model's 20 conv weights would load (0 keys in all)" in msg
    assert "first unmatched 2D keys: ['encoder.conv1.weight', 'encoder.bn1.weight'" in msg
    assert "first 3D keys left unloaded: ['conv1.weight', 'bn1.weight'" in msg
    assert "strict=False" in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="0 of the 3D model's 1 conv weights"):
        inflate_2d_weights(nn.Conv3d(1, 1, 3), {})


def test_fewer_than_half_of_the_conv_weights_is_an_error_unless_not_strict(sd18):
    # Keep the batch norms and only the last 9 conv weights (of 20): one short of half.
    convs = [k for k in sd18 if k.endswith("weight") and sd18[k].ndim == 4]
    kept = convs[-9:]
    assert len(convs) == 20 and len(kept) == 9
    partial = {k: v for k, v in sd18.items() if k not in convs or k in kept}
    with pytest.raises(
        ValueError, match=r"9 of the 3D model's 20 conv weights would load \(109 keys in all\)"
    ):
        inflate_2d_weights(resnet3d(18, init_filters=8), partial)
    model = resnet3d(18, init_filters=8)
    loaded, skipped = inflate_2d_weights(model, partial, strict=False)
    assert len(loaded) == 109 and {s.key for s in skipped} == set(convs) - set(kept)
    torch.testing.assert_close(model.layer4[1].conv2.weight.sum(2), sd18["layer4.1.conv2.weight"])
    # exactly half of the conv weights is enough
    half = {k: v for k, v in sd18.items() if k not in convs or k in convs[:10]}
    loaded, _ = inflate_2d_weights(resnet3d(18, init_filters=8), half)
    assert len(loaded) == 110
