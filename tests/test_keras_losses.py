"""Tests of mednets.keras.losses: focal, MS-SSIM (against TensorFlow), IoU and hybrid."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from mednets.keras.losses import (
    MSSSIM_WEIGHTS,
    focal_loss,
    hybrid_loss,
    iou_loss,
    ms_ssim,
    ms_ssim_loss,
)

RNG = np.random.default_rng(0)


def _pair(shape, noise=0.2, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random(shape).astype("float32")
    b = np.clip(a + noise * rng.standard_normal(shape), 0, 1).astype("float32")
    return a, b


# Sizes where TensorFlow's filter fits at the coarsest scale; odd sizes exercise the
# symmetric padding before pooling.
MSSSIM_CASES = [
    ((2, 176, 176, 1), MSSSIM_WEIGHTS),
    ((1, 181, 195, 3), MSSSIM_WEIGHTS),
    ((3, 48, 53, 2), (0.3, 0.3, 0.4)),
]


@pytest.mark.parametrize("shape,weights", MSSSIM_CASES, ids=[str(c[0]) for c in MSSSIM_CASES])
def test_ms_ssim_matches_tensorflow_2d(shape, weights):
    a, b = _pair(shape)
    ours = ms_ssim(a, b, power_factors=weights).numpy()
    ref = tf.image.ssim_multiscale(a, b, max_val=1.0, power_factors=weights).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    assert ours.shape == (shape[0],)
    assert np.all(ours < 0.99)  # the noise is visible, so this is not the trivial 1


def test_ms_ssim_is_not_the_wrong_product():
    """Ours is prod(cs[:-1] ** w[:-1]) * ssim[-1] ** w[-1]; the widely copied
    prod(cs[:-1] ** w[:-1] * ssim[-1] ** w[-1]) gives a different number."""
    a, b = _pair((1, 176, 176, 1), noise=0.4)
    ours = float(ms_ssim(a, b)[0])
    cs = []
    for level in range(5):
        if level:
            a, b = (tf.nn.avg_pool2d(x, 2, 2, "VALID").numpy() for x in (a, b))
        # Weights (1, 0) keep only this scale's cs; one weight 1 gives its SSIM.
        cs.append(float(ms_ssim(a, b, power_factors=(1.0, 0.0))[0]))
        ssim = float(ms_ssim(a, b, power_factors=(1.0,))[0])
    w = np.array(MSSSIM_WEIGHTS)
    right = np.prod(np.array(cs[:-1]) ** w[:-1]) * ssim ** w[-1]
    wrong = np.prod(np.array(cs[:-1]) ** w[:-1] * ssim ** w[-1])
    assert ours == pytest.approx(right, rel=1e-4)
    assert abs(ours - wrong) > 1e-2


def test_ms_ssim_3d_reduces_to_2d_for_depth_constant_volumes():
    """A volume made of one repeated slice has the 3D MS-SSIM of its 2D slice."""
    a, b = _pair((2, 64, 64, 1))
    a3 = np.repeat(a[:, None], 64, axis=1)  # (B, D, H, W, C)
    b3 = np.repeat(b[:, None], 64, axis=1)
    np.testing.assert_allclose(ms_ssim(a3, b3).numpy(), ms_ssim(a, b).numpy(), rtol=1e-4)
    assert np.all(ms_ssim(a3, a3).numpy() == pytest.approx(1.0, abs=1e-5))


@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
def test_hybrid_loss_is_zero_at_a_perfect_prediction(dims):
    y = np.zeros((2,) + (32,) * dims + (1,), "float32")
    y[(0,) + (slice(8, 20),) * dims] = 1.0
    for fn in (hybrid_loss, focal_loss, iou_loss, ms_ssim_loss):
        np.testing.assert_allclose(fn(y, y).numpy(), 0.0, atol=1e-5, err_msg=fn.__name__)
    # ... and clearly positive for a wrong one.
    assert np.all(hybrid_loss(y, 1.0 - y).numpy() > 0.5)


@pytest.mark.parametrize(
    "dims,pred",
    list(itertools.product([2, 3], ["zero", "small"])),
    ids=[f"{d}d-{p}" for d, p in itertools.product([2, 3], ["zero", "small"])],
)
def test_losses_finite_with_finite_gradients_on_empty_masks(dims, pred):
    shape = (2,) + (32,) * dims + (1,)
    y = np.zeros(shape, "float32")
    z = tf.Variable(np.zeros(shape, "float32"))
    with tf.GradientTape() as tape:
        p = z * 0.0 if pred == "zero" else tf.sigmoid(z - 4.0)
        loss = tf.reduce_sum(hybrid_loss(y, p))
    grad = tape.gradient(loss, z)
    assert np.isfinite(loss.numpy())
    assert np.all(np.isfinite(grad.numpy()))
    if pred == "zero":
        assert loss.numpy() == pytest.approx(0.0, abs=1e-5)


def test_focal_loss_values():
    y = np.array([1.0, 0.0, 1.0, 0.0], "float32").reshape(1, 2, 2, 1)
    p = np.array([0.9, 0.2, 0.3, 0.6], "float32").reshape(1, 2, 2, 1)
    # Hand computation of -alpha_t (1 - p_t)^gamma log p_t.
    p_t = np.where(y == 1, p, 1 - p)
    alpha_t = np.where(y == 1, 0.25, 0.75)
    expected = np.mean(-alpha_t * (1 - p_t) ** 2 * np.log(p_t))
    assert float(focal_loss(y, p)[0]) == pytest.approx(expected, rel=1e-5)
    # gamma = 0, alpha = 0.5 is half the binary cross-entropy.
    bce = np.mean(-np.log(p_t))
    assert float(focal_loss(y, p, alpha=0.5, gamma=0.0)[0]) == pytest.approx(bce / 2, rel=1e-5)


def test_focal_loss_categorical():
    y = np.zeros((1, 2, 2, 3), "float32")
    y[0, :, :, 1] = 1.0
    p = np.full((1, 2, 2, 3), 0.25, "float32")
    p[..., 1] = 0.5
    expected = -0.25 * 0.5**2 * np.log(0.5)
    assert float(focal_loss(y, p)[0]) == pytest.approx(expected, rel=1e-5)


def test_iou_loss_value():
    y = np.zeros((1, 4, 4, 1), "float32")
    y[0, :2, :2] = 1.0  # 4 pixels
    p = np.zeros_like(y)
    p[0, :1, :2] = 1.0  # 2 pixels, both inside
    assert float(iou_loss(y, p, smooth=0.0)[0]) == pytest.approx(0.5)


@pytest.mark.parametrize("fn", [focal_loss, iou_loss, ms_ssim, hybrid_loss], ids=lambda f: f.__name__)
def test_bad_shapes_raise(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(np.zeros((1, 32, 32, 1), "float32"), np.zeros((1, 32, 16, 1), "float32"))
    with pytest.raises(ValueError, match="rank"):
        fn(np.zeros((32, 32, 1), "float32"), np.zeros((32, 32, 1), "float32"))


def test_ms_ssim_too_small_raises():
    with pytest.raises(ValueError, match=r">= 16, got \(8, 32\)"):
        ms_ssim(np.zeros((1, 8, 32, 1), "float32"), np.zeros((1, 8, 32, 1), "float32"))


def test_foreground_only_zeroes_empty_samples():
    from mednets.keras.losses import foreground_only

    y = np.zeros((3, 32, 32, 1), "float32")
    y[0, 4:12, 4:12] = 1.0
    y[2, 20:30, 2:9] = 1.0
    p = np.full_like(y, 0.3)
    wrapped = foreground_only(hybrid_loss)(y, p).numpy()
    plain = hybrid_loss(y, p).numpy()
    assert wrapped[1] == 0.0 and plain[1] > 0.1  # the empty sample is ignored
    np.testing.assert_allclose(wrapped[[0, 2]], plain[[0, 2]], rtol=1e-6)
    assert foreground_only(hybrid_loss).__name__ == "foreground_only_hybrid_loss"


# ---------------------------------------------------------------- what the losses take


@pytest.mark.parametrize("fn", [focal_loss, iou_loss, ms_ssim_loss, hybrid_loss], ids=lambda f: f.__name__)
def test_logits_and_label_maps_are_refused(fn):
    y = np.zeros((2, 32, 32, 1), "float32")
    y[:, 8:20, 8:20] = 1
    logits = np.where(y > 0, 4.0, -4.0).astype("float32")  # would give a silent wrong number
    with pytest.raises(ValueError, match=r"y_pred must lie in \[0, 1\], found values in \[-4, 4\].*logits"):
        fn(y, logits)
    labels = y * 2  # a label map {0, 2}, not a mask
    with pytest.raises(ValueError, match=r"y_true must lie in \[0, 1\], found values in \[0, 2\].*one-hot"):
        fn(labels, y)


def test_losses_refuse_logits_inside_a_compiled_graph():
    y = np.zeros((1, 32, 32, 1), "float32")

    @tf.function
    def step(p):
        return hybrid_loss(y, p)

    np.testing.assert_allclose(step(tf.constant(y)).numpy(), 0.0, atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"y_pred must lie in \[0, 1\]"):
        step(tf.constant(y - 3.0))


@pytest.mark.parametrize("dtype", ["float64", "uint8", "int16", "float16"])
def test_numpy_dtypes_are_accepted(dtype):
    y = np.zeros((1, 32, 32, 1))
    y[0, 4:12, 4:12] = 1
    p = np.full_like(y, 0.5) if dtype.startswith("float") else y
    want = hybrid_loss(y.astype("float32"), p.astype("float32")).numpy()
    np.testing.assert_allclose(hybrid_loss(y.astype(dtype), p.astype(dtype)).numpy(), want, rtol=1e-5)
    with pytest.raises(ValueError, match="real numbers, got dtype bool"):
        iou_loss(y.astype(bool), p)
