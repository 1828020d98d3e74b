"""Tests for mednets.torch.losses: soft Dice, L2, KL and the NVNet total."""

import math

import pytest
import torch

from mednets.torch.losses import NVNetLoss, kl_loss, l2_loss, nvnet_loss, soft_dice_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("fill", ["random", "empty", "full"])
def test_dice_of_identical_masks_is_zero(fill):
    g = torch.Generator().manual_seed(0)
    t = {
        "random": (torch.rand(2, 3, 8, 8, 8, generator=g) > 0.5).float(),
        "empty": torch.zeros(2, 3, 8, 8, 8),
        "full": torch.ones(2, 3, 8, 8, 8),
    }[fill]
    assert float(soft_dice_loss(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_dice_of_disjoint_masks_is_one():
    p = torch.zeros(1, 1, 4, 4, 4)
    t = torch.zeros(1, 1, 4, 4, 4)
    p[..., :2] = 1
    t[..., 2:] = 1
    assert float(soft_dice_loss(p, t)) == pytest.approx(1.0, abs=1e-6)


def test_dice_uses_squared_denominator():
    # p = 0.5 everywhere, target covers half the voxels:
    # 2 * (0.5 * N/2) / (0.25 N + N/2) = 2/3 (a linear denominator would give 1/2).
    p = torch.full((1, 1, 4, 4, 4), 0.5)
    t = torch.zeros(1, 1, 4, 4, 4)
    t[..., :2] = 1
    assert float(soft_dice_loss(p, t)) == pytest.approx(1 - 2 / 3, abs=1e-5)


def test_dice_per_sample_vs_batch():
    # sample 0 perfect, sample 1 completely wrong
    t = torch.zeros(2, 1, 4, 4, 4)
    t[:, :, :2] = 1
    p = t.clone()
    p[1] = 1 - t[1]
    assert float(soft_dice_loss(p, t)) == pytest.approx(0.5, abs=1e-5)
    # batch Dice: 2 * 32 / (64 + 64) = 0.5 as well here; shift sizes to separate them
    p[1] = 0
    p[1, :, :1] = 1  # half of the target of sample 1
    per_sample = 1 - (1 + 2 * 16 / (16 + 32)) / 2
    batch = 1 - 2 * (32 + 16) / ((32 + 16) + (32 + 32))
    assert float(soft_dice_loss(p, t)) == pytest.approx(per_sample, abs=1e-5)
    assert float(soft_dice_loss(p, t, batch=True)) == pytest.approx(batch, abs=1e-5)


def test_l2_known_value():
    a = torch.zeros(1, 4, 2, 2, 2)
    b = torch.full_like(a, 3.0)
    assert float(l2_loss(a, b)) == pytest.approx(9.0)


def test_kl_at_standard_normal_is_zero_and_known_values():
    assert float(kl_loss(torch.zeros(2, 128), torch.ones(2, 128))) == pytest.approx(0.0, abs=1e-7)
    assert float(kl_loss(torch.ones(2, 128), torch.ones(2, 128))) == pytest.approx(0.5)
    e = math.e
    assert float(kl_loss(torch.zeros(1, 4), torch.full((1, 4), e))) == pytest.approx((e**2 - 2 - 1) / 2)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 16, generator=g)
    sigma = torch.rand(3, 16, generator=g) + 0.1
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0.0, 1.0)
    ).mean()
    assert float(kl_loss(mu, sigma)) == pytest.approx(float(ref), rel=1e-5)


def test_nvnet_loss_is_weighted_sum_of_parts():
    g = torch.Generator().manual_seed(0)
    seg = torch.rand(2, 3, 8, 8, 8, generator=g)
    target = (torch.rand(2, 3, 8, 8, 8, generator=g) > 0.5).float()
    image = torch.randn(2, 4, 8, 8, 8, generator=g)
    recon = torch.randn(2, 4, 8, 8, 8, generator=g)
    mu = torch.randn(2, 128, generator=g)
    sigma = torch.rand(2, 128, generator=g) + 0.5
    total, parts = nvnet_loss((seg, recon, mu, sigma), target, image)
    assert set(parts) == {"dice", "l2", "kl"}
    assert parts["dice"] == pytest.approx(float(soft_dice_loss(seg, target)))
    assert parts["l2"] == pytest.approx(float(l2_loss(recon, image)))
    assert parts["kl"] == pytest.approx(float(kl_loss(mu, sigma)))
    assert float(total) == pytest.approx(parts["dice"] + 0.1 * parts["l2"] + 0.1 * parts["kl"], rel=1e-6)
    # the fit() form with the image carried in the target
    total2, parts2 = NVNetLoss()((seg, recon, mu, sigma), (target, image))
    assert float(total2) == pytest.approx(float(total)) and parts2 == parts
    # segmentation only
    total3, parts3 = nvnet_loss(seg, target)
    assert set(parts3) == {"dice"} and float(total3) == pytest.approx(parts["dice"])


def test_loss_value_errors():
    with pytest.raises(ValueError, match=r"\(1, 3, 4, 4\).*\(1, 3, 4, 5\)"):
        soft_dice_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="sigma > 0"):
        kl_loss(torch.zeros(1, 4), torch.tensor([[1.0, -0.5, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="image=None"):
        nvnet_loss(
            (torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, 4), torch.zeros(1, 2), torch.ones(1, 2)),
            torch.zeros(1, 3, 4, 4),
        )
    with pytest.raises(ValueError, match="got 2 items"):
        nvnet_loss((torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, 4)), torch.zeros(1, 3, 4, 4))


# ---------------------------------- logits, probabilities, masks (issue 13, kind 5)


def test_dice_refuses_logits_and_names_the_range():
    t = torch.zeros(1, 1, 4, 4, 4)
    t[..., :2] = 1
    logits = torch.linspace(-3, 3, 64).reshape(1, 1, 4, 4, 4)
    with pytest.raises(
        ValueError, match=r"probabilities in \[0, 1\].*got values in \[-3, 3\].*torch.sigmoid"
    ):
        soft_dice_loss(logits, t)
    assert 0 < float(soft_dice_loss(torch.sigmoid(logits), t)) < 1


@pytest.mark.parametrize(
    "target, match",
    [
        (torch.tensor([0.0, 1.0, 2.0, 4.0]), r"got values \[0, 1, 2, 4\].*brats_regions"),  # a label map
        (torch.tensor([0.0, 0.1, 0.9, 1.0]), r"got values \[0, 0.1, 0.9, 1\]"),  # soft labels
    ],
    ids=["label-map", "soft"],
)
def test_dice_refuses_targets_that_are_not_binary_masks(target, match):
    pred = torch.full((1, 1, 4, 4, 4), 0.5)
    full = target.repeat(16).reshape(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match=match):
        soft_dice_loss(pred, full)


def test_dice_accepts_bool_and_integer_masks_and_refuses_integer_predictions():
    t = torch.zeros(1, 1, 4, 4, 4, dtype=torch.bool)
    t[..., :2] = True
    p = t.float()
    for target in (t, t.to(torch.uint8), t.long()):
        assert float(soft_dice_loss(p, target)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="floating probabilities.*torch.int64"):
        soft_dice_loss(t.long(), t)


def test_nvnet_loss_refuses_an_nvnet_that_returns_logits():
    seg_logits = torch.full((1, 3, 4, 4, 4), -2.0)
    with pytest.raises(ValueError, match="final_activation='sigmoid'"):
        nvnet_loss(seg_logits, torch.zeros(1, 3, 4, 4, 4))
