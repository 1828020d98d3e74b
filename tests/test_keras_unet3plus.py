"""Tests of mednets.keras.unet3plus (and the plain UNet, UNet 3+ on ResNet34, phantom slices)."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from mednets.data.slices import phantom_slices
from mednets.keras import count_params
from mednets.keras.blocks import unet_encoder
from mednets.keras.losses import hybrid_loss
from mednets.keras.resnet34_unet import (
    extract_encoder,
    resnet34_classifier,
    resnet_encoder,
    save_encoder_weights,
)
from mednets.keras.unet import unet
from mednets.keras.unet3plus import (
    CGMGate,
    LinearUpsampling,
    cgm_gate,
    cgm_inference_model,
    full_scale_sources,
    unet3plus,
    unet3plus_decoder,
    unet3plus_resnet34,
)

TINY = (8, 16, 32, 64, 128)


# ---------------------------------------------------------------- pinned counts


@pytest.fixture(scope="module")
def paper_models():
    """Paper widths; parameter counts do not depend on the spatial size, so build small."""
    return {
        "plain": unet3plus((32, 32, 3)),
        "ds_cgm": unet3plus((32, 32, 3), deep_supervision=True, cgm=True),
        "unet": unet((32, 32, 3)),
    }


def test_paper_parameter_count(paper_models):
    # Huang et al. (2020), Table 1: 26.97 M; the official UNet_3Plus gives exactly this.
    assert count_params(paper_models["plain"], trainable_only=True) == 26_971_777


def test_paper_counts_with_heads(paper_models):
    # + 3 side convs 320->1 (3x3) + 1 side conv 1024->1 (3x3) + CGM 1x1 conv 1024->1.
    extra = 3 * (320 * 9 + 1) + (1024 * 9 + 1) + (1024 + 1)
    assert count_params(paper_models["ds_cgm"], trainable_only=True) == 26_971_777 + extra
    assert count_params(paper_models["unet"], trainable_only=True) == 31_043_521


def test_default_layers_follow_official_code(paper_models):
    model = paper_models["plain"]
    convs = [lay for lay in model.layers if isinstance(lay, tf.keras.layers.Conv2D)]
    assert convs and all(c.use_bias for c in convs)  # conv with bias, then BN
    fuse = model.get_layer("unet3plus_dec3_fuse_conv")
    assert fuse.filters == 320 and fuse.kernel_size == (3, 3)
    assert model.get_layer("unet3plus_dec3_from_e1_conv").filters == 64
    assert model.get_layer("unet3plus_seg_conv").kernel_size == (3, 3)
    assert model.get_layer("unet3plus_seg").activation.__name__ == "sigmoid"
    assert model.get_layer("unet3plus_dec3_from_e1_maxpool").pool_size == (4, 4)
    assert model.get_layer("unet3plus_dec3_from_e5_up").size == 4
    bns = [lay for lay in model.layers if isinstance(lay, tf.keras.layers.BatchNormalization)]
    assert len(bns) == 10 + 4 * 6  # 2 per encoder stage, 6 per decoder stage
    assert all(b.momentum == 0.9 and b.epsilon == 1e-5 for b in bns)  # PyTorch defaults


# ---------------------------------------------------------------- shapes


SHAPE_CASES = list(itertools.product([2, 3], [False, True], [False, True]))


@pytest.mark.parametrize(
    "dims,ds,cgm",
    SHAPE_CASES,
    ids=[f"{d}d-ds{int(s)}-cgm{int(c)}" for d, s, c in SHAPE_CASES],
)
def test_output_shapes(dims, ds, cgm):
    spatial = (32,) * dims if dims == 2 else (16,) * dims
    classes = 3 if cgm else 1
    act = "softmax" if classes > 1 else "sigmoid"
    model = unet3plus(
        spatial + (2,), out_channels=classes, filters=TINY, deep_supervision=ds, cgm=cgm, final_activation=act
    )
    x = np.random.default_rng(0).random((2,) + spatial + (2,)).astype("float32")
    out = model(x, training=False)
    if not ds and not cgm:
        assert tuple(out.shape) == (2,) + spatial + (1,)
        return
    expected = {"seg"} | ({"side2", "side3", "side4", "side5"} if ds else set())
    expected |= {"cls"} if cgm else set()
    assert set(out) == expected
    for key in expected - {"cls"}:
        assert tuple(out[key].shape) == (2,) + spatial + (classes,), key
        if classes > 1:  # softmax head
            np.testing.assert_allclose(out[key].numpy().sum(-1), 1.0, rtol=1e-5)
    if cgm:
        assert tuple(out["cls"].shape) == (2, 1)


# Every norm and every down pattern, each at least twice (not the full product, for time).
OPTION_CASES = [
    ("batch", "max"),
    ("layer", "avg"),
    ("group", "conv"),
    (None, "normconv"),
    ("batch", "conv"),
    ("batch", "normconv"),
    (None, "conv"),
    ("group", "avg"),
    ("layer", "max"),
    (None, "max"),
]


@pytest.mark.parametrize("norm,down", OPTION_CASES, ids=[f"{n}-{d}" for n, d in OPTION_CASES])
def test_options_build_and_run(norm, down):
    model = unet3plus(
        (32, 32, 1),
        filters=TINY,
        norm=norm,
        down=down,
        residual=(down == "conv"),
        double_features=(down == "avg"),
    )
    out = model(np.ones((1, 32, 32, 1), "float32"))
    assert tuple(out.shape) == (1, 32, 32, 1)
    names = {lay.name for lay in model.layers}
    has_norm = any(n.endswith("_norm") for n in names)
    assert has_norm == (norm is not None)
    if down in ("conv", "normconv") and norm is not None:
        # The seed dropped this normalisation (conv) or never passed norm_type (normconv).
        assert "unet3plus_enc2_down_norm" in names
    if down == "avg":  # double_features doubles each encoder block's output
        assert model.get_layer("unet3plus_enc5_conv2_conv").filters == 2 * TINY[-1]
    if down == "conv":
        assert "unet3plus_enc2_add" in names


def test_residual_block_is_identity_free_when_widths_match():
    model = unet3plus((32, 32, 8), filters=(8, 16, 32, 64, 128), residual=True)
    names = {lay.name for lay in model.layers}
    assert "unet3plus_enc1_proj_conv" not in names  # 8 -> 8 channels: plain identity
    assert "unet3plus_enc2_proj_conv" in names
    # the same post-activation residual block as the Chapter 1 ResNet: norm before the
    # addition, activation after it
    assert "unet3plus_enc2_add" in names and "unet3plus_enc2_out" in names


# ---------------------------------------------------------------- blocks


def test_full_scale_sources_stage3():
    assert full_scale_sources(3) == [
        ("e1", "maxpool", 4),
        ("e2", "maxpool", 2),
        ("e3", "none", 1),
        ("d4", "upsample", 2),
        ("e5", "upsample", 4),
    ]
    assert [s for s, _, _ in full_scale_sources(1)] == ["e1", "d2", "d3", "d4", "e5"]
    with pytest.raises(ValueError, match="stage must be in 1..4"):
        full_scale_sources(5)


def test_linear_upsampling_matches_torch_bilinear_and_trilinear():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    x2 = rng.random((2, 5, 6, 3)).astype("float32")
    x3 = rng.random((2, 4, 5, 6, 3)).astype("float32")
    for x, mode, factor in ((x2, "bilinear", 4), (x3, "trilinear", 2)):
        ours = LinearUpsampling(factor)(x).numpy()
        ref = F.interpolate(
            torch.from_numpy(np.moveaxis(x, -1, 1)), scale_factor=factor, mode=mode, align_corners=False
        )
        np.testing.assert_allclose(ours, np.moveaxis(ref.numpy(), 1, -1), atol=1e-5)


# ---------------------------------------------------------------- CGM gating


def test_cgm_gate_sigmoid_and_softmax():
    seg = np.random.default_rng(1).random((3, 8, 8, 1)).astype("float32")
    cls = np.array([[0.1], [0.9], [0.5]], "float32")
    gated = cgm_gate(seg, cls).numpy()
    assert np.all(gated[0] == 0) and np.all(gated[2] == 0)  # empty: all-zero mask
    np.testing.assert_array_equal(gated[1], seg[1])

    probs = tf.nn.softmax(np.random.default_rng(2).normal(size=(2, 4, 4, 3))).numpy()
    gated = cgm_gate(probs, np.array([0.2, 0.7], "float32")).numpy()
    assert np.all(np.argmax(gated[0], -1) == 0)  # background everywhere
    np.testing.assert_allclose(gated[0].sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(gated[1], probs[1], rtol=1e-6)


@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
def test_cgm_inference_model_gives_empty_mask_for_empty_images(dims):
    spatial = (32, 32) if dims == 2 else (16, 16, 16)
    model = unet3plus(spatial + (1,), filters=TINY, cgm=True, deep_supervision=True)
    gated = cgm_inference_model(model)
    x = np.random.default_rng(0).random((2,) + spatial + (1,)).astype("float32")
    conv = model.get_layer("unet3plus_cls_conv")
    kernel, bias = conv.get_weights()
    # Force "empty": a huge negative bias makes the CGM probability ~0.
    conv.set_weights([np.zeros_like(kernel), np.full_like(bias, -50.0)])
    out = gated(x, training=False).numpy()
    assert out.shape == (2,) + spatial + (1,)
    assert np.all(out == 0.0)  # not 0.5, as gating the logits would give
    # Force "present": the gated mask is the segmentation itself.
    conv.set_weights([np.zeros_like(kernel), np.full_like(bias, 50.0)])
    seg = model(x, training=False)["seg"].numpy()
    np.testing.assert_allclose(gated(x, training=False).numpy(), seg, rtol=1e-5, atol=1e-6)
    assert seg.max() > 0.0
    assert isinstance(gated.layers[-1], CGMGate)


def test_cgm_inference_model_needs_cgm():
    with pytest.raises(ValueError, match="no 'cls' output"):
        cgm_inference_model(unet3plus((32, 32, 1), filters=TINY, deep_supervision=True))


# ---------------------------------------------------------------- training step


def test_one_training_step_with_hybrid_loss_and_cgm():
    """One eager step: every side head, the CGM and the encoder get finite gradients."""
    model = unet3plus((32, 32, 4), filters=TINY, deep_supervision=True, cgm=True)
    x, y = phantom_slices(1, shape=(32, 32, 32), slices_per_subject=4, empty_fraction=0.5)
    present = (y.reshape(len(y), -1).max(1, keepdims=True) > 0).astype("float32")
    assert present.sum() == 2  # two slices with tumour, two without
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        seg_loss = sum(tf.reduce_mean(hybrid_loss(y, out[k])) for k in out if k != "cls")
        cls_loss = tf.reduce_mean(tf.keras.losses.binary_crossentropy(present, out["cls"]))
        loss = seg_loss + cls_loss
    grads = tape.gradient(loss, model.trainable_weights)
    assert np.isfinite(float(loss))
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    nonzero = {w.path.split("/")[0] for w, g in zip(model.trainable_weights, grads) if np.any(g.numpy() != 0)}
    for layer in (
        "unet3plus_cls_conv",
        "unet3plus_side5_conv",
        "unet3plus_seg_conv",
        "unet3plus_enc1_conv1_conv",
    ):
        assert layer in nonzero, layer


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "shape,msg",
    [
        ((100, 64, 3), r"\(100, 64\).*axis 0: 100 \(nearest valid: 96 or 112\)"),
        ((32, 32, 40, 1), r"axis 2: 40 \(nearest valid: 32 or 48\)"),
        ((8, 32, 1), r"axis 0: 8 \(nearest valid: 16\)"),
        ((32, 1), r"\(H, W, C\) for 2D or \(D, H, W, C\)"),
        ((None, 32, 1), "known spatial sizes"),
    ],
    ids=["2d-100", "3d-40", "2d-8", "rank", "none"],
)
def test_bad_input_shape_raises(shape, msg):
    with pytest.raises(ValueError, match=msg):
        unet3plus(shape, filters=TINY)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(norm="weird"), "norm must be one of"),
        (dict(down="strided"), "down must be one of"),
        (dict(out_channels=0), "out_channels must be a positive int, got 0"),
        (dict(filters=(8,)), "filters must be at least 2"),
        (dict(final_activation="softmax"), "softmax.*out_channels=1 is 1 everywhere"),
        (dict(final_activation="relu"), "final_activation must be one of"),
    ],
    ids=["norm", "down", "channels", "filters", "softmax-1", "activation"],
)
def test_bad_options_raise(kwargs, msg):
    kwargs = {"filters": TINY, **kwargs}
    with pytest.raises(ValueError, match=msg):
        unet3plus((32, 32, 1), **kwargs)


def test_logits_output_and_cgm_needs_probabilities():
    model = unet3plus((32, 32, 1), filters=TINY, cgm=True, final_activation=None)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype("float32")
    assert model.get_layer("unet3plus_seg").activation.__name__ == "linear"
    seg = model(x, training=False)["seg"].numpy()
    assert seg.min() < 0 or seg.max() > 1  # logits, not probabilities
    with pytest.raises(ValueError, match="gates probabilities.*'linear'"):
        cgm_inference_model(model)


# ---------------------------------------------------------------- bad input when called


def test_called_on_wrong_channels_or_rank_raises():
    model = unet3plus((32, 32, 2), filters=TINY)
    # Keras checks a fixed input shape itself; InputCheck checks what Keras lets through.
    expected = r"(expects 2 input channels|expected shape=\(None, 32, 32, 2\))"
    with pytest.raises(ValueError, match=expected + r".*\(1, 32, 32, 3\)"):
        model(np.zeros((1, 32, 32, 3), "float32"))
    with pytest.raises(ValueError, match=expected):
        model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0)
    with pytest.raises(ValueError, match=r"rank|expected shape"):  # no batch axis
        model(np.zeros((32, 32, 2), "float32"))
    free = unet((None, None, 2), filters=(4, 8))
    with pytest.raises(ValueError, match=r"(expects 2 input channels|expected shape).*\(1, 8, 8, 3\)"):
        free(np.zeros((1, 8, 8, 3), "float32"))


def test_unet_with_none_sizes_checks_the_size_when_called():
    model = unet((None, None, 1), filters=(4, 8, 16))  # total stride 4
    assert model(np.zeros((1, 12, 8, 1), "float32")).shape == (1, 12, 8, 1)
    with pytest.raises(ValueError, match=r"axis 0: 10 \(nearest valid: 8 or 12\)"):
        model(np.zeros((1, 10, 8, 1), "float32"))
    with pytest.raises(ValueError, match=r"axis 1: 6 \(nearest valid: 4 or 8\)"):
        model.predict(np.zeros((2, 8, 6, 1), "float32"), verbose=0)


@pytest.mark.parametrize("dtype", ["float64", "int16", "uint8", "float16"])
def test_numpy_dtypes_are_accepted(dtype):
    model = unet((None, None, 1), filters=(4, 8))
    x = (np.random.default_rng(0).random((1, 8, 8, 1)) * 100).astype(dtype)
    want = model(x.astype("float32"), training=False).numpy()
    np.testing.assert_allclose(model(x, training=False).numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)


def test_batch_norm_is_built_with_pytorch_defaults_for_every_norm_layer():
    model = unet3plus((32, 32, 1), filters=TINY, down="normconv", residual=True)
    bns = [lay for lay in model.layers if isinstance(lay, tf.keras.layers.BatchNormalization)]
    assert bns and all(b.momentum == 0.9 and b.epsilon == 1e-5 for b in bns)
    keras_default = unet3plus((32, 32, 1), filters=TINY, bn_momentum=0.99, bn_epsilon=1e-3)
    bns = [lay for lay in keras_default.layers if isinstance(lay, tf.keras.layers.BatchNormalization)]
    assert all(b.momentum == 0.99 and b.epsilon == 1e-3 for b in bns)


# ---------------------------------------------------------------- one encoder contract


@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
def test_encoders_keep_the_contract(dims):
    """Both encoders give their features finest first and state channels and reductions."""
    spatial = (64,) * dims
    x = tf.keras.Input(spatial + (2,))
    unet_feats = unet_encoder(x, (4, 8, 16, 32), name=f"e{dims}")
    assert unet_feats.channels == (4, 8, 16, 32) and unet_feats.reductions == (1, 2, 4, 8)
    resnet_feats = resnet_encoder(x, init_filters=4)
    assert resnet_feats.channels == (4, 4, 8, 16, 32)
    assert resnet_feats.reductions == (2, 4, 8, 16, 32)
    for feats in (unet_feats, resnet_feats):
        for f, c, r in zip(feats, feats.channels, feats.reductions):
            assert tuple(f.shape) == (None,) + tuple(s // r for s in spatial) + (c,)
    maps = unet3plus_decoder(resnet_feats, skip_filters=4, name=f"d{dims}")
    assert tuple(maps["d1"].shape) == (None,) + (32,) * dims + (5 * 4,)
    with pytest.raises(ValueError, match="EncoderFeatures of at least 2 maps"):
        unet3plus_decoder([resnet_feats[0]])


@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
def test_unet3plus_resnet34_shapes_and_gradients(dims):
    spatial = (64, 32) if dims == 2 else (32, 32, 64)
    model = unet3plus_resnet34(
        spatial + (3,),
        out_channels=2,
        init_filters=4,
        skip_filters=4,
        deep_supervision=True,
        cgm=True,
        final_activation="softmax",
    )
    assert sorted(model.output) == ["cls", "seg", "side2", "side3", "side4", "side5"]
    x = np.random.default_rng(0).random((2,) + spatial + (3,)).astype("float32")
    y = np.zeros((2,) + spatial + (2,), "float32")
    y[..., 0] = 1
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = sum(tf.reduce_mean(hybrid_loss(y, out[k])) for k in out if k != "cls")
        loss += tf.reduce_mean(out["cls"])
    for key in ("seg", "side2", "side5"):
        assert tuple(out[key].shape) == (2,) + spatial + (2,), key
    np.testing.assert_allclose(out["seg"].numpy().sum(-1), 1.0, rtol=1e-5)
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None for g in grads)
    # the encoder is ResNet34's: the decoder reads its five features
    assert model.get_layer("stage3_unit6_conv2") is not None
    assert model.get_layer("unet3plus_resnet34_dec1_from_e1_conv").input.shape[1:-1] == tuple(
        s // 2 for s in spatial
    )


def test_unet3plus_resnet34_paper_widths_and_pretrained_encoder(tmp_path):
    # ResNet34 encoder + the UNet 3+ decoder (64-channel branches fused to 320) + head.
    paper = unet3plus_resnet34((64, 64, 3))
    channels = {"e1": 64, "e2": 64, "e3": 128, "e4": 256, "e5": 512}
    decoder = 0
    for stage in (4, 3, 2, 1):
        for source, _, _ in full_scale_sources(stage):
            cin = channels.get(source, 320)  # d_j has 5 * 64 channels
            decoder += 9 * cin * 64 + 64 + 4 * 64  # conv with bias, batch norm (4 per channel)
        decoder += 9 * 320 * 320 + 320 + 4 * 320  # fuse
    head = 9 * 320 + 1
    assert count_params(paper) - count_params(extract_encoder(paper)) == decoder + head
    clf = resnet34_classifier((32, 32, 1), init_filters=4)
    path = tmp_path / "enc.weights.h5"
    save_encoder_weights(clf, str(path))
    model = unet3plus_resnet34((32, 32, 1), init_filters=4, skip_filters=4, encoder_weights=str(path))
    np.testing.assert_array_equal(
        model.get_layer("conv0").get_weights()[0], clf.get_layer("conv0").get_weights()[0]
    )
    with pytest.raises(ValueError, match="could not load encoder weights"):
        unet3plus_resnet34((32, 32, 1), init_filters=8, encoder_weights=str(path))
    with pytest.raises(ValueError, match=r"axis 0: 48 \(nearest valid: 32 or 64\)"):
        unet3plus_resnet34((48, 64, 1), init_filters=4)


# ---------------------------------------------------------------- phantom slices


def test_phantom_slices():
    x, y = phantom_slices(3, shape=(32, 32, 32), slices_per_subject=4, empty_fraction=0.25, seed=1)
    assert x.shape == (12, 32, 32, 4) and x.dtype == np.float32
    assert y.shape == (12, 32, 32, 1) and y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, 1.0}
    per_slice = y.reshape(12, -1).sum(1)
    assert int((per_slice == 0).sum()) == 3  # one tumour-free slice per subject
    assert np.all(per_slice[per_slice > 0] >= 20)
    brain = np.any(x != 0, axis=-1)
    assert np.all(brain.reshape(12, -1).mean(1) >= 0.1)  # empty slices still show brain
    x2, y2 = phantom_slices(3, shape=(32, 32, 32), slices_per_subject=4, empty_fraction=0.25, seed=1)
    np.testing.assert_array_equal(x, x2)  # deterministic
    np.testing.assert_array_equal(y, y2)
    with pytest.raises(ValueError, match="empty_fraction must be in"):
        phantom_slices(1, empty_fraction=1.5)
