"""Tests for mednets.keras.resnet34_unet: pinned counts, shapes, skips, weights, errors."""

import itertools

import keras
import numpy as np
import pytest

import mednets.keras  # noqa: F401  (sets the Keras backend first)
from mednets.data import depth_first
from mednets.keras import count_params
from mednets.keras.resnet34_unet import (
    FEATURE_NAMES,
    extract_encoder,
    freeze_encoder_layers,
    load_encoder_weights,
    resnet34_classifier,
    resnet34_encoder_model,
    resnet34_unet,
    save_encoder_weights,
)

# Tiny widths for everything that runs a forward pass.
TINY = dict(init_filters=4, decoder_filters=(16, 8, 8, 4, 4))


@pytest.fixture(scope="module")
def paper_2d():
    """segmentation_models' Unet('resnet34') configuration, built once (no forward pass)."""
    return resnet34_unet((None, None, 3))


def test_paper_2d_counts_match_segmentation_models(paper_2d):
    # segmentation_models.Unet("resnet34", input_shape=(H, W, 3), classes=1).summary()
    assert count_params(paper_2d) == 24_456_154
    assert count_params(paper_2d, trainable_only=True) == 24_438_804


def test_paper_2d_layer_names_and_stem(paper_2d):
    # The reference names of the skip points and the encoder output exist.
    for name in (*FEATURE_NAMES, "conv0", "pooling0", "final_conv", "sigmoid"):
        paper_2d.get_layer(name)
    # bn_data has no learned scale: beta + moving mean + moving variance, 3 channels each.
    assert count_params(paper_2d.get_layer("bn_data")) == 3 * 3
    # The first unit of stage 1 has a projection shortcut (64 -> 64), as in the reference.
    assert paper_2d.get_layer("stage1_unit1_sc").kernel.shape == (1, 1, 64, 64)
    names = {layer.name for layer in paper_2d.layers}
    assert "stage1_unit2_sc" not in names and "stage2_unit1_sc" in names


def test_paper_3d_counts():
    # Our own numbers (a regression pin): the same configuration in 3D, 4 input channels.
    m3 = resnet34_unet((None, None, None, 4))
    assert count_params(m3) == 73_006_397
    assert count_params(m3, trainable_only=True) == 72_989_045


SHAPE_CASES = [
    (d, b, 1 if b == "upsampling" else 3) for d, b in itertools.product((2, 3), ("upsampling", "transpose"))
]


@pytest.mark.parametrize(
    "dims,block,classes", SHAPE_CASES, ids=[f"{d}d-{b}-{c}cls" for d, b, c in SHAPE_CASES]
)
def test_output_shape_and_activation(dims, block, classes):
    spatial = (64, 32) if dims == 2 else (32, 64, 32)
    act = "sigmoid" if classes == 1 else "softmax"
    model = resnet34_unet(
        (*spatial, 5), out_channels=classes, decoder_block=block, final_activation=act, **TINY
    )
    x = np.random.default_rng(0).normal(size=(2, *spatial, 5)).astype("float32")
    y = np.asarray(model(x, training=False))
    assert y.shape == (2, *spatial, classes)
    if classes == 1:
        assert model.layers[-1].name == "sigmoid"
        assert ((y >= 0) & (y <= 1)).all() and 0 < y.mean() < 1
    else:
        np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)


SKIP_CASES = [
    # (input spatial, anisotropic_levels, expected spatial at relu1 then each skip)
    ((64, 96), 0, [(2, 3), (4, 6), (8, 12), (16, 24), (32, 48)]),
    ((32, 64, 96), 0, [(1, 2, 3), (2, 4, 6), (4, 8, 12), (8, 16, 24), (16, 32, 48)]),
    ((8, 64, 64), 2, [(1, 2, 2), (2, 4, 4), (4, 8, 8), (8, 16, 16), (8, 32, 32)]),
    ((2, 64, 64), 4, [(1, 2, 2), (2, 4, 4), (2, 8, 8), (2, 16, 16), (2, 32, 32)]),
]


@pytest.mark.parametrize("spatial,aniso,expected", SKIP_CASES, ids=["2d", "3d", "3d-aniso2", "3d-aniso4"])
def test_skip_shapes(spatial, aniso, expected):
    model = resnet34_unet((*spatial, 2), anisotropic_levels=aniso, **TINY)
    f = TINY["init_filters"]
    channels = [8 * f, 4 * f, 2 * f, f, f]  # relu1, stage4, stage3, stage2 skips, relu0
    for name, shape, c in zip(reversed(FEATURE_NAMES), expected, channels):
        assert tuple(model.get_layer(name).output.shape) == (None, *shape, c), name
    assert tuple(model.output.shape) == (None, *spatial, 1)


def test_anisotropic_kernels_are_in_plane():
    model = resnet34_unet((8, 64, 64, 1), anisotropic_levels=2, **TINY)
    assert model.get_layer("conv0").kernel.shape[:3] == (1, 7, 7)
    assert model.get_layer("pooling0").pool_size == (1, 3, 3)
    assert model.get_layer("stage1_unit1_conv1").kernel.shape[:3] == (1, 3, 3)
    assert model.get_layer("stage2_unit1_conv1").kernel.shape[:3] == (3, 3, 3)
    assert model.get_layer("stage2_unit1_conv1").strides == (2, 2, 2)
    assert model.get_layer("decoder_stage4_upsampling").size == (1, 2, 2)
    assert model.get_layer("decoder_stage2_upsampling").size == (2, 2, 2)


def test_not_divisible_raises_with_nearest_sizes():
    with pytest.raises(ValueError, match=r"100.*96 or 128"):
        resnet34_unet((100, 128, 3), **TINY)
    with pytest.raises(ValueError, match=r"divisible by 32"):
        resnet34_unet((64, 64, 48, 1), **TINY)
    # with two in-plane-only steps the depth needs only a multiple of 8
    resnet34_unet((8, 64, 64, 1), anisotropic_levels=2, **TINY)
    with pytest.raises(ValueError, match=r"axis 0: 12 \(nearest valid: 8 or 16\).*\(8, 32, 32\)"):
        resnet34_unet((12, 64, 64, 1), anisotropic_levels=2, **TINY)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(decoder_block="bilinear"), "decoder_block must be one of"),
        (dict(anisotropic_levels=1), "only to 3D"),
        (dict(decoder_filters=(8, 8, 8)), "5 entries"),
        (dict(out_channels=0), "out_channels must be a positive int, got 0"),
        (dict(final_activation="softmax"), "out_channels=1 is 1 everywhere"),
        (dict(norm="group"), "norm .of the decoder. must be 'batch' or None"),
    ],
    ids=["block", "aniso-2d", "decoder-filters", "channels", "softmax-1", "norm"],
)
def test_bad_arguments_raise(kwargs, match):
    args = {**TINY, **kwargs}
    with pytest.raises(ValueError, match=match):
        resnet34_unet((64, 64, 3), **args)


def test_bad_rank_raises():
    with pytest.raises(ValueError, match="rank"):
        resnet34_unet((64, 3), **TINY)


def test_encoder_weights_round_trip(tmp_path):
    """Train a classifier briefly, save its encoder, load it into a fresh U-Net."""
    shape = (32, 32, 2)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, *shape)).astype("float32")
    y = rng.integers(0, 2, size=8)
    keras.utils.set_random_seed(0)
    clf = resnet34_classifier(shape, num_classes=2, init_filters=4)
    # eager: one step, no graph tracing (fast in a test)
    clf.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", run_eagerly=True)
    clf.fit(x, y, epochs=1, batch_size=8, verbose=0)  # moves weights and BN statistics
    path = tmp_path / "encoder.weights.h5"
    save_encoder_weights(clf, str(path))

    kw = dict(init_filters=4, decoder_filters=(8, 8, 8, 8, 8))
    loaded = resnet34_unet(shape, encoder_weights=str(path), **kw)
    fresh = resnet34_unet(shape, **kw)
    xs = rng.normal(size=(2, *shape)).astype("float32")
    want = np.asarray(extract_encoder(clf)(xs, training=False))
    got = np.asarray(extract_encoder(loaded)(xs, training=False))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(extract_encoder(fresh)(xs, training=False)), want)

    # U-Net -> U-Net works the same way
    path2 = tmp_path / "unet_encoder.weights.h5"
    save_encoder_weights(loaded, str(path2))
    load_encoder_weights(fresh, str(path2))
    got = np.asarray(extract_encoder(fresh)(xs, training=False))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_encoder_weights_mismatch_raises(tmp_path):
    path = tmp_path / "wide.weights.h5"
    wide = resnet34_classifier((32, 32, 2), init_filters=8)
    save_encoder_weights(wide, str(path))
    with pytest.raises(ValueError, match="could not load encoder weights"):
        resnet34_unet((32, 32, 2), encoder_weights=str(path), **TINY)  # init_filters 4 != 8
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        save_encoder_weights(wide, str(tmp_path / "x.h5"))


def test_freeze_encoder_trains_only_the_decoder():
    model = resnet34_unet((32, 32, 1), freeze_encoder=True, **TINY)
    encoder = extract_encoder(model)
    enc_names = {layer.name for layer in encoder.layers}
    decoder_trainable = sum(
        count_params(layer, trainable_only=True) for layer in model.layers if layer.name not in enc_names
    )
    assert count_params(model, trainable_only=True) == decoder_trainable > 0
    assert count_params(encoder, trainable_only=True) == 0
    before = [w.copy() for w in encoder.get_weights()]
    dec_before = model.get_layer("final_conv").get_weights()[0].copy()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy", run_eagerly=True)
    x = np.random.default_rng(2).normal(size=(4, 32, 32, 1)).astype("float32")
    model.fit(x, (x > 0).astype("float32"), epochs=1, batch_size=4, verbose=0)
    for a, b in zip(before, encoder.get_weights()):
        np.testing.assert_array_equal(a, b)  # BN statistics included
    assert not np.allclose(dec_before, model.get_layer("final_conv").get_weights()[0])
    # unfreezing gives the encoder back to the optimiser
    assert freeze_encoder_layers(model, trainable=True) > 0
    assert count_params(model, trainable_only=True) > decoder_trainable


def test_extract_encoder_needs_relu1():
    inp = keras.Input((8, 8, 1))
    other = keras.Model(inp, keras.layers.Conv2D(1, 1, name="c")(inp))
    with pytest.raises(ValueError, match="relu1"):
        extract_encoder(other)


def test_bn_momentum_is_set_when_the_model_is_built():
    reference = resnet34_unet((32, 32, 1), **TINY)
    model = resnet34_unet((32, 32, 1), bn_momentum=0.9, **TINY)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    # stem 2 + (2 per unit, 16 units) + final 1 + decoder 2 per block x 5
    assert len(bns) == 2 + 32 + 1 + 10
    assert {layer.momentum for layer in bns} == {0.9}
    ref = {layer.name: layer for layer in reference.layers}
    assert {ref[b.name].momentum for b in bns} == {0.99}  # the reference library's default
    # epsilons: the encoder's reference 2e-5, the decoder's Keras default
    assert model.get_layer("stage2_unit1_bn1").epsilon == 2e-5
    assert model.get_layer("decoder_stage0a_norm").epsilon == 1e-3
    assert count_params(model) == count_params(reference)


def test_logits_and_no_decoder_norm():
    model = resnet34_unet((32, 32, 1), final_activation=None, norm=None, **TINY)
    assert model.layers[-1].name == "logits"
    names = {layer.name for layer in model.layers}
    assert "decoder_stage0a_norm" not in names and model.get_layer("decoder_stage0a_conv").use_bias


# ---------------------------------------------------------------- the depth axis


def test_anisotropic_levels_act_in_plane_on_a_mednets_data_volume():
    """A mednets.data volume (C, X, Y, Z) with few thick slices along z: after depth_first
    the flat levels' 1 x k x k kernels and (1, 2, 2) strides act on X and Y, never across
    slices, and the slice axis keeps its size at the flat levels."""
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(1, 64, 64, 8)).astype("float32")  # (C, X, Y, Z), 8 thick slices
    x = np.moveaxis(depth_first(volume), 0, -1)[None]  # (1, Z, X, Y, C)
    assert x.shape == (1, 8, 64, 64, 1)
    encoder = resnet34_encoder_model((None, None, None, 1), init_filters=4, anisotropic_levels=2)
    relu0, level2 = encoder(x, training=False)[:2]
    assert tuple(relu0.shape) == (1, 8, 32, 32, 4)  # X and Y halved, Z kept
    assert tuple(level2.shape) == (1, 8, 16, 16, 4)
    # Change slice z = 3 only: the flat-level features change at depth 3 only.
    changed = x.copy()
    changed[:, 3] += 5.0
    relu0_b, level2_b = encoder(changed, training=False)[:2]
    for a, b in ((relu0, relu0_b), (level2, level2_b)):
        diff = np.abs(np.asarray(a) - np.asarray(b)).max(axis=(0, 2, 3, 4))
        assert diff[3] > 0 and np.all(np.delete(diff, 3) == 0)
    # The first isotropic level (1/8 in-plane) mixes neighbouring slices.
    iso, iso_b = (np.asarray(encoder(v, training=False)[2]) for v in (x, changed))
    assert np.count_nonzero(np.abs(iso - iso_b).max(axis=(0, 2, 3, 4))) > 1
    # Without depth_first, X would be taken for depth: the sizes do not fit the strides.
    wrong = np.moveaxis(volume, 0, -1)[None]  # (1, X, Y, Z, C) = (1, 64, 64, 8, 1)
    with pytest.raises(ValueError, match=r"axis 2: 8 \(nearest valid: 32\)"):
        encoder(wrong, training=False)


# ---------------------------------------------------------------- bad input when called


def test_none_sizes_are_checked_when_called():
    model = resnet34_unet((None, None, 1), **TINY)
    assert model(np.zeros((1, 32, 64, 1), "int16")).shape == (1, 32, 64, 1)
    with pytest.raises(ValueError, match=r"axis 0: 48 \(nearest valid: 32 or 64\)"):
        model(np.zeros((1, 48, 64, 1), "float32"))
    with pytest.raises(ValueError, match=r"axis 1: 40 \(nearest valid: 32 or 64\)"):
        model.predict(np.zeros((2, 32, 40, 1), "float64"), verbose=0)
    with pytest.raises(ValueError, match=r"(expects 1 input channels|expected shape)"):
        model(np.zeros((1, 32, 32, 3), "float32"))


def test_load_encoder_weights_refuses_what_it_cannot_load(tmp_path):
    target = resnet34_unet((32, 32, 1), **TINY)
    with pytest.raises(ValueError, match="does not exist"):
        load_encoder_weights(target, str(tmp_path / "missing.weights.h5"))
    # A file with fewer variables: Keras alone would load its first layer and say nothing.
    inputs = keras.Input((32, 32, 1))
    small = keras.Model(inputs, keras.layers.BatchNormalization(scale=False)(inputs))
    path = tmp_path / "small.weights.h5"
    small.save_weights(str(path))
    before = [w.copy() for w in extract_encoder(target).get_weights()]
    with pytest.raises(ValueError, match=r"variables missing from the file \(first: \['layers/"):
        load_encoder_weights(target, str(path))
    for a, b in zip(before, extract_encoder(target).get_weights()):
        np.testing.assert_array_equal(a, b)  # nothing was loaded
    # A whole U-Net's weights are not an encoder file.
    whole = tmp_path / "whole.weights.h5"
    target.save_weights(str(whole))
    with pytest.raises(ValueError, match="unexpected in the file"):
        load_encoder_weights(target, str(whole))
    # Another input channel count: the shapes differ.
    other = tmp_path / "other.weights.h5"
    save_encoder_weights(resnet34_classifier((32, 32, 3), init_filters=4), str(other))
    with pytest.raises(ValueError, match=r"with other shapes \(first: \['layers/.*file \(3,\)"):
        load_encoder_weights(target, str(other))
    not_h5 = tmp_path / "text.weights.h5"
    not_h5.write_text("no")
    with pytest.raises(ValueError, match="not a Keras .weights.h5 file"):
        load_encoder_weights(target, str(not_h5))
