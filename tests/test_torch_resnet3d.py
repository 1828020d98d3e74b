"""Tests for mednets.torch.resnet3d: blocks, the 3D/2D ResNets, I3D and the seed's model.

Big configurations are built on the ``meta`` device: parameters and shapes exist, but no
memory is allocated and no arithmetic runs, so pinning counts and stage sizes is free.
"""

import copy
import itertools
import re

import pytest
import torch
from torch import nn

from mednets.torch import count_params
from mednets.torch.resnet3d import (
    ARCH_SETTINGS,
    I3D_INFLATE,
    BasicBlock3d,
    Bottleneck3d,
    ResNet3d,
    i3d_resnet50,
    resnet2d,
    resnet3d,
)

LAYER_COUNTS = sorted(ARCH_SETTINGS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


BLOCKS = [BasicBlock3d, Bottleneck3d]

# torchvision.models.resnetN(): parameter count and number of state_dict entries.
TORCHVISION = {
    18: (11_689_512, 122),
    34: (21_797_672, 218),
    50: (25_557_032, 320),
    101: (44_549_160, 626),
    152: (60_192_808, 932),
}


def _meta(builder, *args, **kwargs):
    with torch.device("meta"):
        return builder(*args, **kwargs)


# ---------------------------------------------------------------- pinned numbers


def test_i3d_resnet50_parameter_count_is_pinned():
    assert count_params(_meta(i3d_resnet50)) == 27_223_872


def test_i3d_resnet50_output_shape_real_forward():
    torch.manual_seed(0)
    model = i3d_resnet50().eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 32, 224, 224))
    assert tuple(y.shape) == (1, 2048, 4, 7, 7)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("num_layers", LAYER_COUNTS, ids=[f"resnet{d}" for d in LAYER_COUNTS])
def test_resnet2d_matches_torchvision_counts_and_keys(num_layers):
    model = _meta(resnet2d, num_layers)
    n_params, n_keys = TORCHVISION[num_layers]
    assert count_params(model) == n_params
    keys = list(model.state_dict())
    assert len(keys) == n_keys
    assert keys[:6] == [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ]
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert "layer2.0.downsample.0.weight" in keys and "layer2.0.downsample.1.running_var" in keys
    assert ("layer1.0.downsample.0.weight" in keys) == (num_layers >= 50)  # basic blocks keep 64 channels
    assert ("layer1.0.conv3.weight" in keys) == (num_layers >= 50)
    assert model.pool2 is None and model.conv1.kernel_size == (7, 7)  # depth settings dropped in 2D


@pytest.mark.parametrize("num_layers", LAYER_COUNTS, ids=[f"resnet{d}" for d in LAYER_COUNTS])
def test_uninflated_3d_network_has_the_2d_keys_and_counts(num_layers):
    """With no depth extent anywhere, the 3D net is the 2D net with a unit depth axis."""
    net3 = _meta(resnet3d, num_layers, conv1_kernel=(1, 7, 7), inflate=0, init_filters=16)
    net2 = _meta(resnet2d, num_layers, num_classes=None, init_filters=16)
    sd3, sd2 = net3.state_dict(), net2.state_dict()
    assert list(sd3) == list(sd2)
    for key, value in sd2.items():
        expected = value.shape[:2] + (1,) + value.shape[2:] if value.ndim == 4 else value.shape
        assert sd3[key].shape == expected, key
    assert count_params(net3) == count_params(net2)


def test_i3d_count_equals_2d_backbone_plus_inflated_taps():
    """27,223,872 = ResNet-50 backbone + the extra depth taps, counted by hand."""
    backbone_2d = TORCHVISION[50][0] - (2048 * 1000 + 1000)
    extra = 3 * 64 * (5 - 1) * 49  # conv1 5x7x7 instead of 7x7
    # conv1 of an inflated bottleneck is 3x1x1: two extra taps of in_channels * width.
    for (in_first, width, out), flags in zip(
        ((64, 64, 256), (256, 128, 512), (512, 256, 1024), (1024, 512, 2048)), I3D_INFLATE
    ):
        for j, flag in enumerate(flags):
            extra += flag * 2 * (in_first if j == 0 else out) * width
    assert backbone_2d + extra == 27_223_872 == count_params(_meta(i3d_resnet50))


# ------------------------------------------------------ the seed's printed model

SEED_STEM = [
    "Conv3d(3, 64, kernel_size=(5, 7, 7), stride=(2, 2, 2), padding=(2, 3, 3), bias=False)",
    "MaxPool3d(kernel_size=(1, 3, 3), stride=(2, 2, 2), padding=(0, 1, 1), dilation=1, ceil_mode=False)",
    "MaxPool3d(kernel_size=(2, 1, 1), stride=(2, 1, 1), padding=0, dilation=1, ceil_mode=False)",
]
# Read off the seed's printout: (input channels of block 0, width, output channels,
# number of blocks, in-plane stride of block 0) for layer1..layer4.
SEED_STAGES = [(64, 64, 256, 3, 1), (256, 128, 512, 4, 2), (512, 256, 1024, 6, 2), (1024, 512, 2048, 3, 2)]


def _seed_convs():
    """Every Conv3d line of the seed's printout, in order (stem excluded)."""
    lines = []
    for in_first, width, out, n_blocks, stride in SEED_STAGES:
        for j in range(n_blocks):
            cin, s = (in_first, stride) if j == 0 else (out, 1)
            lines += [
                f"Conv3d({cin}, {width}, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), "
                "bias=False)",
                f"Conv3d({width}, {width}, kernel_size=(1, 3, 3), stride=(1, {s}, {s}), padding=(0, 1, 1), "
                "bias=False)",
                f"Conv3d({width}, {out}, kernel_size=(1, 1, 1), stride=(1, 1, 1), bias=False)",
            ]
            if j == 0:
                lines.append(
                    f"Conv3d({in_first}, {out}, kernel_size=(1, 1, 1), stride=(1, {s}, {s}), bias=False)"
                )
    return lines


def _seed_model(**kwargs):
    return _meta(ResNet3d, 50, conv1_kernel=(5, 7, 7), conv1_stride_t=2, pool1_stride_t=2, **kwargs)


def test_structure_matches_the_seed_printout_module_for_module():
    model = _seed_model()
    assert [repr(model.conv1), repr(model.maxpool), repr(model.pool2)] == SEED_STEM
    convs = [repr(m) for name, m in model.named_modules() if isinstance(m, nn.Conv3d) and name != "conv1"]
    assert convs == _seed_convs()
    assert len(convs) == 52
    # every conv is followed by its BN with the conv's output channels (eps 1e-5, momentum 0.1)
    pairs = (
        [(m.conv1, m.bn1) for m in [model]]
        + [
            (getattr(b, f"conv{k}"), getattr(b, f"bn{k}"))
            for layer in model.stages
            for b in layer
            for k in (1, 2, 3)
        ]
        + [
            (b.downsample[0], b.downsample[1])
            for layer in model.stages
            for b in layer
            if b.downsample is not None
        ]
    )
    for conv, bn in pairs:
        assert (bn.num_features, bn.eps, bn.momentum) == (conv.out_channels, 1e-5, 0.1)


@pytest.mark.parametrize(
    "with_pool2, expected",
    [
        (False, [(256, 4, 80, 64), (512, 4, 40, 32), (1024, 4, 20, 16), (2048, 4, 10, 8)]),
        (True, [(256, 4, 80, 64), (512, 2, 40, 32), (1024, 2, 20, 16), (2048, 2, 10, 8)]),
    ],
    ids=["without_pool2", "with_pool2"],
)
def test_stage_sizes_match_the_seed(with_pool2, expected):
    model = _seed_model(with_pool2=with_pool2, return_stages=True)
    with torch.device("meta"):
        x = torch.empty(1, 3, 16, 320, 256)
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        stages = model(x)
    assert tuple(stem.shape) == (1, 64, 4, 80, 64)
    assert [tuple(s.shape) for s in stages] == [(1,) + e for e in expected]
    assert model.out_channels == [256, 512, 1024, 2048]


# ------------------------------------------------------------------- blocks

BLOCK_CASES = list(itertools.product(BLOCKS, (2, 3), (False, True), ("3x1x1", "3x3x3"), (1, 2)))


@pytest.mark.parametrize(
    "block, spatial_dims, inflate, style, stride",
    BLOCK_CASES,
    ids=[f"{b.__name__}-{d}d-{'infl' if i else 'flat'}-{s}-stride{st}" for b, d, i, s, st in BLOCK_CASES],
)
def test_block_shapes(block, spatial_dims, inflate, style, stride):
    torch.manual_seed(0)
    cin, width = 6, 4
    cout = width * block.expansion
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    bn = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
    ones = (1,) * spatial_dims
    down = nn.Sequential(
        conv(cin, cout, ones, stride=(1,) * (spatial_dims - 2) + (stride, stride), bias=False), bn(cout)
    )
    m = block(
        cin,
        width,
        spatial_stride=stride,
        downsample=down,
        inflate=inflate,
        inflate_style=style,
        spatial_dims=spatial_dims,
    )
    size = (5, 9, 11)[3 - spatial_dims :]  # odd sizes
    y = m(torch.randn((2, cin) + size))
    expected = size[:-2] + tuple(-(-s // stride) for s in size[-2:])
    assert tuple(y.shape) == (2, cout) + expected
    assert (y >= 0).all()  # ReLU after the addition


@pytest.mark.parametrize(
    "inflate, style, k1, k2",
    [
        (False, "3x1x1", (1, 1, 1), (1, 3, 3)),
        (True, "3x1x1", (3, 1, 1), (1, 3, 3)),
        (True, "3x3x3", (1, 1, 1), (3, 3, 3)),
    ],
    ids=["flat", "3x1x1", "3x3x3"],
)
def test_bottleneck_kernels_follow_the_inflate_style(inflate, style, k1, k2):
    m = Bottleneck3d(8, 4, spatial_stride=2, temporal_stride=2, inflate=inflate, inflate_style=style)
    assert (m.conv1.kernel_size, m.conv2.kernel_size, m.conv3.kernel_size) == (k1, k2, (1, 1, 1))
    assert m.conv1.padding == tuple(k // 2 for k in k1) and m.conv2.padding == tuple(k // 2 for k in k2)
    assert m.conv2.stride == (2, 2, 2) and m.conv1.stride == (1, 1, 1)  # stride on the 3x3 conv


@pytest.mark.parametrize("inflate, kt", [(False, 1), (True, 3)], ids=["flat", "inflated"])
def test_basic_block_kernels(inflate, kt):
    m = BasicBlock3d(8, 8, spatial_stride=2, inflate=inflate)
    assert m.conv1.kernel_size == m.conv2.kernel_size == (kt, 3, 3)
    assert m.conv1.stride == (1, 2, 2) and m.conv2.stride == (1, 1, 1)


@pytest.mark.parametrize("num_layers", [18, 50], ids=["basic", "bottleneck"])
def test_temporal_stride_alone_gets_a_projection_shortcut(num_layers):
    """Erratum: the seed's condition missed a depth-only stride, so the add would fail."""
    model = resnet3d(
        num_layers,
        init_filters=4,
        spatial_strides=(1, 1, 1, 1),
        temporal_strides=(2, 1, 1, 1),
        with_pool2=False,
    )
    assert model.layer1[0].downsample is not None
    assert model.layer1[0].downsample[0].stride == (2, 1, 1)
    y = model(torch.randn(1, 3, 8, 16, 16))
    assert y.shape[2] == 4  # the stem keeps 8 slices; stage 1 halves them


def test_inflate_pattern_is_applied_per_block():
    model = _meta(i3d_resnet50)
    got = tuple(tuple(int(b.conv1.kernel_size[0] == 3) for b in layer) for layer in model.stages)
    assert got == I3D_INFLATE
    assert model.conv1.kernel_size == (5, 7, 7) and model.conv1.stride == (2, 2, 2)
    assert model.maxpool.stride == (2, 2, 2) and model.pool2.kernel_size == (2, 1, 1)


def test_3x3x3_style_network():
    model = _meta(resnet3d, 50, inflate_style="3x3x3")
    assert model.layer3[2].conv2.kernel_size == (3, 3, 3)
    assert model.layer3[2].conv1.kernel_size == (1, 1, 1)


# ----------------------------------------------------- outputs, heads, stages


@pytest.mark.parametrize("spatial_dims", [2, 3], ids=["2d", "3d"])
def test_return_stages_and_head(spatial_dims):
    torch.manual_seed(0)
    size = (8, 32, 32)[3 - spatial_dims :]
    x = torch.randn((2, 1) + size)
    kwargs = dict(in_channels=1, init_filters=4, spatial_dims=spatial_dims)
    stages = ResNet3d(18, return_stages=True, **kwargs)(x)
    assert [s.shape[1] for s in stages] == [4, 8, 16, 32]
    assert [s.shape[-1] for s in stages] == [8, 4, 2, 1]
    logits = ResNet3d(18, num_classes=3, dropout=0.2, **kwargs)(x)
    assert tuple(logits.shape) == (2, 3)


# ------------------------------------------------- freezing, norm_eval, with_cp


def _bn_stats(module):
    return [b.clone() for b in module.buffers()]


def test_frozen_stages_do_not_change():
    torch.manual_seed(0)
    model = resnet3d(18, init_filters=4, frozen_stages=1).train()
    assert not model.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert not model.bn1.training and not model.layer1[0].bn1.training and model.layer2[0].bn1.training
    before = copy.deepcopy(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(2, 3, 4, 32, 32)).mean().backward()
    opt.step()
    for name in ("conv1.weight", "bn1.running_mean", "layer1.1.conv2.weight", "layer1.0.bn1.running_var"):
        assert torch.equal(model.state_dict()[name], before.state_dict()[name]), name
    assert not torch.equal(model.layer2[0].conv1.weight, before.layer2[0].conv1.weight)


def test_norm_eval_keeps_running_statistics():
    torch.manual_seed(0)
    model = resnet3d(18, init_filters=4, norm_eval=True).train()
    assert model.training
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm3d))
    stats = _bn_stats(model)
    model(torch.randn(2, 3, 4, 32, 32))
    assert all(torch.equal(a, b) for a, b in zip(stats, _bn_stats(model)))
    assert resnet3d(18, init_filters=4).train().layer1[0].bn1.training  # default: BN trains


def _saved_tensor_count(model, x):
    count = [0]

    def pack(t):
        count[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    return y, count[0]


@pytest.mark.parametrize("num_layers", [18, 50], ids=["basic", "bottleneck"])
def test_with_cp_gives_same_outputs_and_gradients(num_layers):
    torch.manual_seed(0)
    plain = resnet3d(num_layers, init_filters=4)
    cp = copy.deepcopy(plain)
    for m in cp.modules():
        if isinstance(m, (BasicBlock3d, Bottleneck3d)):
            m.with_cp = True
    x = torch.randn(2, 3, 4, 32, 32)
    y1, n1 = _saved_tensor_count(plain, x)
    y2, n2 = _saved_tensor_count(cp, x)
    assert n2 < n1 / 2  # checkpointing really is on: far fewer tensors kept for backward
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    y1.square().mean().backward()
    y2.square().mean().backward()
    for (name, p1), p2 in zip(plain.named_parameters(), cp.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_with_cp_constructor_flag_reaches_every_block():
    model = _meta(i3d_resnet50, with_cp=True)
    blocks = [b for layer in model.stages for b in layer]
    assert len(blocks) == 16 and all(b.with_cp for b in blocks)


# ------------------------------------------------------------------ bad input

BAD = [
    ("num_layers", lambda: ResNet3d(20), "num_layers must be one of"),
    ("spatial_dims", lambda: ResNet3d(18, spatial_dims=4), "spatial_dims must be 2 or 3, got 4"),
    ("style", lambda: ResNet3d(18, inflate_style="2x2x2"), "inflate_style must be one of"),
    ("pattern_stages", lambda: ResNet3d(18, inflate=(1, 1, 1)), "one entry per stage \\(4\\), got 3"),
    ("pattern_blocks", lambda: ResNet3d(50, inflate=((1, 1), 1, 1, 1)), "one flag per block \\(3\\), got 2"),
    ("frozen", lambda: ResNet3d(18, frozen_stages=5), "frozen_stages must be in \\[-1, 4\\], got 5"),
    ("conv1_kernel", lambda: ResNet3d(18, conv1_kernel=(4, 7, 7)), "odd positive sizes"),
    ("stages_and_head", lambda: ResNet3d(18, num_classes=2, return_stages=True), "cannot be combined"),
    (
        "temporal_2d",
        lambda: BasicBlock3d(4, 4, temporal_stride=2, spatial_dims=2),
        "temporal_stride must be 1 in 2D",
    ),
    (
        "channels",
        lambda: ResNet3d(18, init_filters=4)(torch.zeros(1, 1, 4, 16, 16)),
        "expected 3 input channels .* got 1 in shape \\(1, 1, 4, 16, 16\\)",
    ),
    (
        "rank",
        lambda: ResNet3d(18, init_filters=4)(torch.zeros(1, 3, 16, 16)),
        "expected a batched 3D input \\(B, C, D, H, W\\).*got shape \\(1, 3, 16, 16\\)",
    ),
    (
        "rank_2d",
        lambda: resnet2d(18, init_filters=4)(torch.zeros(1, 3, 4, 16, 16)),
        "expected a batched 2D input \\(B, C, H, W\\).*got shape \\(1, 3, 4, 16, 16\\)",
    ),
]


@pytest.mark.parametrize("make, match", [(b[1], b[2]) for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ------------------------------------------ input size checked at call time (issue 13, kind 2)


def test_i3d_too_few_slices_is_a_clear_value_error():
    """The issue's input: PyTorch said "Output size is too small" deep inside pool2."""
    model = i3d_resnet50(init_filters=8).eval()
    msg = (
        r"input shape \(1, 3, 4, 64, 64\) is too small: axis 2 has 4 < 5; "
        r"the smallest spatial size it accepts is \(5, 1, 1\)"
    )
    with pytest.raises(ValueError, match=msg):
        model(torch.zeros(1, 3, 4, 64, 64))
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 5, 64, 64)).shape == (1, 256, 1, 2, 2)  # 5 is enough


SIZE_CASES = [
    # spatial_dims, settings, smallest size
    (3, dict(with_pool2=True), (2, 1, 1)),
    (3, dict(with_pool2=False), (1, 1, 1)),
    (3, dict(with_pool2=True, conv1_stride_t=2, pool1_stride_t=3), (7, 1, 1)),
    (2, dict(with_pool2=True), (1, 1)),  # pool2 and every depth setting are dropped in 2D
    (2, dict(with_pool2=False), (1, 1)),
]


@pytest.mark.parametrize(
    "spatial_dims, settings, smallest",
    SIZE_CASES,
    ids=["3d-pool2", "3d-no-pool2", "3d-pool2-strided-stem", "2d-pool2", "2d-no-pool2"],
)
def test_smallest_input_runs_and_one_less_raises(spatial_dims, settings, smallest):
    model = ResNet3d(18, init_filters=4, spatial_dims=spatial_dims, **settings).eval()
    assert model.min_spatial_size == smallest
    with torch.no_grad():
        out = model(torch.zeros(1, 3, *smallest))  # the real forward agrees with the rule
    assert out.shape[2:] == (1,) * spatial_dims
    for axis in range(spatial_dims):
        small = list(smallest)
        small[axis] -= 1
        msg = (
            re.escape(f"input shape {(1, 3, *small)} is too small")
            + ".*"
            + re.escape(f"accepts is {smallest}")
        )
        with pytest.raises(ValueError, match=msg):
            model(torch.zeros(1, 3, *small))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("with_pool2", [True, False])
def test_forward_stages_checks_too(spatial_dims, with_pool2):
    model = ResNet3d(18, init_filters=4, spatial_dims=spatial_dims, with_pool2=with_pool2, return_stages=True)
    with pytest.raises(ValueError, match=r"expected 3 input channels"):
        model.forward_stages(torch.zeros(1, 2, *(8,) * spatial_dims))
    with pytest.raises(ValueError, match=rf"batched {spatial_dims}D input"):
        model(torch.zeros(1, 3, *(8,) * (5 - spatial_dims)))
