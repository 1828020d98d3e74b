"""Tests for mednets.torch.nvnet: Myronenko's BraTS 2018 network with its VAE branch."""

import itertools

import pytest
import torch

from mednets.torch import count_params
from mednets.torch.losses import kl_loss, l2_loss, nvnet_loss
from mednets.torch.nvnet import (
    NVNet,
    NVNetDecoder,
    NVNetEncoder,
    ResBlock,
    VAEBottleneck,
    nvnet_paper,
    reparameterize,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# The paper configuration: 4 -> 3 channels, 32 initial filters, crops of 160x192x128.
PAPER_TOTAL = 26_037_847
PAPER_PARTS = {
    "encoder": 17_596_704,
    "decoder": 1_205_891,
    "vae_bottleneck": 6_029_328,
    "vae_decoder": 1_205_924,
}


@pytest.fixture(scope="module")
def paper_net():
    return nvnet_paper()


def _res_block_params(c):
    # two GroupNorms (2c each) + two 3x3x3 convs with bias
    return 2 * 2 * c + 2 * (27 * c * c + c)


def test_paper_parameter_count(paper_net):
    assert count_params(paper_net) == PAPER_TOTAL
    parts = {name: count_params(m) for name, m in paper_net.named_children()}
    assert parts == PAPER_PARTS
    assert sum(parts.values()) == PAPER_TOTAL


def test_paper_count_matches_hand_arithmetic(paper_net):
    conv = lambda cin, cout, k: k**3 * cin * cout + cout  # noqa: E731
    encoder = (
        conv(4, 32, 3)
        + 1 * _res_block_params(32)
        + conv(32, 64, 3)
        + 2 * _res_block_params(64)
        + conv(64, 128, 3)
        + 2 * _res_block_params(128)
        + conv(128, 256, 3)
        + 4 * _res_block_params(256)
    )
    decoder = (
        conv(256, 128, 1)
        + _res_block_params(128)
        + conv(128, 64, 1)
        + _res_block_params(64)
        + conv(64, 32, 1)
        + _res_block_params(32)
        + conv(32, 3, 1)
    )
    flat = 16 * 10 * 12 * 8
    vae_bottleneck = 2 * 256 + conv(256, 16, 3) + (flat * 256 + 256) + (128 * flat + flat) + conv(16, 256, 1)
    vae_decoder = decoder - conv(32, 3, 1) + conv(32, 4, 1)
    assert (encoder, decoder, vae_bottleneck, vae_decoder) == tuple(PAPER_PARTS.values())


def test_paper_vae_dense_sizes(paper_net):
    vb = paper_net.vae_bottleneck
    assert vb.reduced_shape == (10, 12, 8)
    assert (vb.to_latent.in_features, vb.to_latent.out_features) == (16 * 10 * 12 * 8, 256)
    assert (vb.from_latent.in_features, vb.from_latent.out_features) == (128, 16 * 10 * 12 * 8)
    assert paper_net.encoder.out_channels == [32, 64, 128, 256]
    assert [len(level) for level in paper_net.encoder.levels] == [1, 2, 2, 4]
    assert isinstance(paper_net.encoder.dropout, torch.nn.Dropout3d) and paper_net.encoder.dropout.p == 0.2


SHAPE_CASES = list(itertools.product([1, 2], [(32, 32, 32), (32, 48, 16), (32, 48)]))


@pytest.mark.parametrize(
    "batch,shape", SHAPE_CASES, ids=[f"B{b}-{'x'.join(map(str, s))}" for b, s in SHAPE_CASES]
)
def test_output_shapes_with_vae(batch, shape):
    torch.manual_seed(0)
    net = NVNet(spatial_dims=len(shape), init_filters=8, spatial_size=shape)
    seg, recon, mu, sigma = net(torch.randn(batch, 4, *shape))
    assert seg.shape == (batch, 3, *shape)
    assert recon.shape == (batch, 4, *shape)
    assert mu.shape == sigma.shape == (batch, 128)
    assert bool((sigma > 0).all())
    assert 0 <= float(seg.detach().min()) and float(seg.detach().max()) <= 1  # sigmoid outputs


@pytest.mark.parametrize(
    "batch,shape",
    list(itertools.product([1, 2], [(24, 40, 16), (8, 8, 8), (40, 24)])),
    ids=lambda v: str(v) if isinstance(v, int) else "x".join(map(str, v)),
)
def test_output_shapes_without_vae_any_divisible_size(batch, shape):
    net = NVNet(spatial_dims=len(shape), init_filters=8, spatial_size=(16,) * len(shape), vae=False)
    seg = net(torch.randn(batch, 4, *shape))
    assert isinstance(seg, torch.Tensor)
    assert seg.shape == (batch, 3, *shape)
    assert not hasattr(net, "vae_bottleneck")


def test_segment_equals_forward_segmentation_in_eval():
    torch.manual_seed(0)
    net = NVNet(init_filters=8, spatial_size=(16, 16, 16)).eval()
    x = torch.randn(2, 4, 16, 16, 16)
    with torch.no_grad():
        seg, recon, mu, sigma = net(x)
        seg2, recon2, _, _ = net(x)
        assert torch.equal(net.segment(x), seg)
        assert torch.equal(recon, recon2)  # eval mode uses z = mu: deterministic
        # segment() accepts other sizes divisible by 8
        assert net.segment(torch.randn(1, 4, 24, 16, 8)).shape == (1, 3, 24, 16, 8)


def test_batch_items_are_independent():
    """The seed's view(1, ...) mixed up the batch; here each item is its own."""
    torch.manual_seed(0)
    net = NVNet(init_filters=8, spatial_size=(16, 16, 16)).eval()
    x = torch.randn(2, 4, 16, 16, 16)
    with torch.no_grad():
        both = net(x)
        first = net(x[:1])
    for a, b in zip(both, first):
        torch.testing.assert_close(a[:1], b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,shape,match",
    [
        (dict(spatial_size=(32, 32, 32)), (1, 4, 32, 32, 48), r"\(1, 4, 32, 32, 48\).*|.*\(32, 32, 32\)"),
        (dict(spatial_size=(32, 32, 32)), (1, 3, 32, 32, 32), "4 input|B, 4"),
        (dict(spatial_size=(32, 32, 32)), (1, 4, 32, 32), r"rank 4, expected 5"),
        (dict(spatial_size=None, vae=False), (1, 4, 20, 16, 16), "divisible by 8"),
    ],
    ids=["vae-wrong-size", "wrong-channels", "wrong-rank", "not-divisible"],
)
def test_forward_value_errors(kwargs, shape, match):
    net = NVNet(init_filters=8, **kwargs)
    with pytest.raises(ValueError, match=match) as err:
        net(torch.zeros(shape))
    assert str(tuple(shape)) in str(err.value)


def test_wrong_size_message_names_both_shapes():
    net = NVNet(init_filters=8, spatial_size=(32, 32, 32))
    with pytest.raises(ValueError) as err:
        net(torch.zeros(1, 4, 32, 32, 48))
    assert "(1, 4, 32, 32, 48)" in str(err.value) and "(32, 32, 32)" in str(err.value)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(spatial_size=(40, 32, 32)), "divisible by 16"),
        (dict(spatial_size=(36, 32, 32), vae=False), "divisible by 8"),
        (dict(spatial_size=None), "needs spatial_size"),
        (dict(spatial_size=(32, 32, 32, 32)), "spatial_dims=3 sizes"),
        (dict(spatial_size=(32, 32)), "spatial_dims=3 sizes"),
        (dict(spatial_dims=4, spatial_size=None, vae=False), "spatial_dims must be 2 or 3"),
        (dict(final_activation="relu"), "final_activation must be one of"),
        (dict(init_filters=12, spatial_size=(32, 32, 32)), "num_groups"),
    ],
    ids=["not-div-16", "not-div-8", "vae-needs-shape", "4d", "2d-size-3d-dims", "dims-4", "act", "groups"],
)
def test_constructor_value_errors(kwargs, match):
    kwargs.setdefault("init_filters", 8)
    with pytest.raises(ValueError, match=match):
        NVNet(**kwargs)


def test_spatial_dims_is_explicit_not_guessed():
    """NVNet(spatial_size=None, vae=False) is the documented spatial_dims, never a guess."""
    net2d = NVNet(spatial_dims=2, init_filters=8, spatial_size=None, vae=False)
    assert net2d.spatial_dims == 2 and isinstance(net2d.encoder.init_conv, torch.nn.Conv2d)
    assert net2d(torch.zeros(1, 4, 16, 24)).shape == (1, 3, 16, 24)
    net3d = NVNet(init_filters=8, spatial_size=None, vae=False)
    with pytest.raises(ValueError, match=r"3D input \(B, C, D, H, W\).*\(1, 4, 16, 24\)"):
        net3d(torch.zeros(1, 4, 16, 24))


def test_final_activation():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 16, 16, 16)
    nets = {
        act: NVNet(init_filters=8, spatial_size=None, vae=False, final_activation=act).eval()
        for act in (None, "sigmoid", "softmax")
    }
    for net in nets.values():
        net.load_state_dict(nets[None].state_dict())
    with torch.no_grad():
        logits = nets[None](x)
        torch.testing.assert_close(nets["sigmoid"](x), torch.sigmoid(logits))
        torch.testing.assert_close(nets["softmax"](x), torch.softmax(logits, dim=1))
        assert float(logits.min()) < 0  # logits are not squashed
        torch.testing.assert_close(nets["softmax"](x).sum(1), torch.ones(1, 16, 16, 16))


def test_call_time_size_check_names_the_nearest_valid_sizes():
    net = NVNet(init_filters=8, spatial_size=(16, 16, 16)).eval()
    with pytest.raises(ValueError, match=r"axis 0: 20 \(nearest valid: 16 or 24\).*\(1, 4, 20, 16, 16\)"):
        net.segment(torch.zeros(1, 4, 20, 16, 16))
    with pytest.raises(ValueError, match=r"expected 4 input channels.*got 1 in shape \(1, 1, 16, 16, 16\)"):
        net.segment(torch.zeros(1, 1, 16, 16, 16))


def test_encoder_and_decoder_check_their_inputs_when_called():
    enc = NVNetEncoder(init_filters=8)
    with pytest.raises(ValueError, match=r"NVNetEncoder: expected 4 input channels"):
        enc(torch.zeros(1, 3, 16, 16, 16))
    with pytest.raises(ValueError, match=r"NVNetEncoder: expected a batched 3D input"):
        enc(torch.zeros(4, 16, 16, 16))
    feats = enc(torch.zeros(1, 4, 20, 16, 16))  # the encoder alone takes any size ...
    with pytest.raises(ValueError, match=r"does not match the up-sampled.*divisible by 2\*\*3"):
        NVNetDecoder(3, 64, 3)(feats)  # ... but its maps cannot be added back


def test_vae_false_accepts_shape_that_vae_rejects():
    # 40 is divisible by 8 but not 16: fine without the VAE.
    net = NVNet(init_filters=8, spatial_size=(40, 32, 32), vae=False)
    assert net(torch.zeros(1, 4, 40, 32, 32)).shape == (1, 3, 40, 32, 32)


def test_res_block_is_identity_with_zero_convs_and_does_not_modify_input():
    block = ResBlock(3, 16)
    x = torch.randn(2, 16, 4, 4, 4)
    x0 = x.clone()
    y = block(x)
    assert torch.equal(x, x0)  # no in-place ReLU on the residual input
    assert not torch.allclose(y, x)
    torch.nn.init.zeros_(block.conv2.weight)
    torch.nn.init.zeros_(block.conv2.bias)
    assert torch.equal(block(x), x)


def test_decoder_uses_skips_only_when_asked():
    torch.manual_seed(0)
    enc = NVNetEncoder(init_filters=8, dropout=0).eval()
    feats = enc(torch.randn(1, 4, 16, 16, 16))
    dec = NVNetDecoder(3, 64, 3, skips=True).eval()
    out = dec(feats)
    changed = list(feats)
    changed[0] = changed[0] + 1.0
    assert not torch.allclose(dec(changed), out)  # the finest skip reaches the output
    nodec = NVNetDecoder(3, 64, 4, skips=False)
    assert nodec(feats[-1]).shape == (1, 4, 16, 16, 16)
    with pytest.raises(ValueError, match="4 encoder feature maps"):
        dec(feats[-1])


def test_sigma_is_positive_even_for_very_negative_dense_output():
    """The seed used the raw dense output as a scale; negative values crash Normal()."""
    vb = VAEBottleneck(3, 16, (4, 4, 4))
    with torch.no_grad():
        vb.to_latent.bias[128:] = -60.0
        vb.to_latent.weight.zero_()
    _, mu, sigma = vb(torch.randn(2, 16, 4, 4, 4))
    assert bool((sigma > 0).all())
    assert torch.isfinite(kl_loss(mu, sigma))


def test_kl_and_l2_gradients_reach_the_dense_layer_and_encoder():
    torch.manual_seed(0)
    net = NVNet(init_filters=8, spatial_size=(16, 16, 16)).train()
    x = torch.randn(2, 4, 16, 16, 16)
    _, recon, mu, sigma = net(x)
    dense = net.vae_bottleneck.to_latent
    for term in (l2_loss(recon, x), kl_loss(mu, sigma)):
        net.zero_grad()
        term.backward(retain_graph=True)
        assert dense.weight.grad is not None and float(dense.weight.grad.norm()) > 0
        enc_grad = net.encoder.init_conv.weight.grad
        assert enc_grad is not None and float(enc_grad.norm()) > 0
    # the sigma half of the dense layer also gets gradient from L2 through the sample
    net.zero_grad()
    l2_loss(recon, x).backward()
    assert float(dense.weight.grad[128:].norm()) > 0


def test_rsample_passes_gradient_but_sample_does_not():
    mu = torch.zeros(3, 5, requires_grad=True)
    sigma = torch.ones(3, 5, requires_grad=True)
    z = reparameterize(mu, sigma)
    (z**2).sum().backward()
    assert float(mu.grad.norm()) > 0 and float(sigma.grad.norm()) > 0
    z_stop = torch.distributions.Normal(mu, sigma).sample()
    assert not z_stop.requires_grad  # the seed's choice: no gradient can flow


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    net = NVNet(init_filters=8, spatial_size=(16, 16, 16)).train()
    x = torch.randn(2, 4, 16, 16, 16)
    y = (torch.rand(2, 3, 16, 16, 16) > 0.7).float()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def loss_at(seed):
        torch.manual_seed(seed)  # same dropout mask and the same eps each time
        return nvnet_loss(net(x), y, x)[0]

    before = loss_at(1)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_at(1)
    assert float(after) < float(before.detach())


def test_vae_bottleneck_refuses_features_of_another_size():
    vae = VAEBottleneck(3, 16, (4, 4, 4), latent_dim=8)
    assert vae(torch.zeros(2, 16, 4, 4, 4))[0].shape == (2, 16, 4, 4, 4)
    with pytest.raises(
        ValueError, match=r"sized for features \(B, 16, 4, 4, 4\), got shape \(2, 16, 4, 4, 6\)"
    ):
        vae(torch.zeros(2, 16, 4, 4, 6))
