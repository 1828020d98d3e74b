"""Tests for mednets.torch.inflate: the I3D rule, the whole-network property, the report."""

import pytest
import torch
from torch import nn

from mednets.torch.inflate import SkippedKey, inflate_2d_weights, inflate_kernel, inflate_tensor
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
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
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
        (lambda: inflate_kernel(torch.zeros(2, 2, 3, 3), 0), "depth must be a positive integer, got 0"),
    ],
    ids=["model", "mapping", "tensor", "kernel_rank", "kernel_depth"],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
