"""Tests for Chapter 1: mednets.keras.blocks, mednets.keras.classifiers3d and
mednets.data.synthetic (ResNet, DenseNet and Inception-ResNet in 2D and 3D)."""

import itertools
import re

import keras  # noqa: E402
import numpy as np
import pytest
import tensorflow as tf  # noqa: E402

from mednets.data.synthetic import make_elongation_dataset, middle_axial_slice, patch_dataset
from mednets.keras import count_params  # sets the Keras backend first
from mednets.keras.blocks import (  # noqa: E402
    dense_block,
    inception_resnet_block,
    reduction_block,
    residual_block,
    transition_layer,
)
from mednets.keras.classifiers3d import (  # noqa: E402
    CLASSIFIERS,
    densenet,
    inception_resnet,
    resnet,
    total_stride,
)
from mednets.keras.core import check_input_shape  # noqa: E402

# Small configurations: two stages, total stride 4.
SMALL = {
    "resnet": dict(init_filters=8, stage_filters=(8, 16), stage_blocks=(1, 1)),
    "densenet": dict(init_filters=8, stage_blocks=(2, 2), growth_rate=4),
    "inception_resnet": dict(init_filters=8, stage_filters=(8, 16), stage_blocks=(1, 1)),
}
# Last-stage channels of the small configurations (features of include_top=False).
# densenet: 8 + 2*4 = 16 -> transition 8 -> 8 + 2*4 = 16.
SMALL_FEATURES = {"resnet": 16, "densenet": 16, "inception_resnet": 16}

# (total, trainable) parameter counts, computed from a build and pinned.
PINNED_SMALL = {
    ("resnet", 2): (5258, 5114),
    ("resnet", 3): (15274, 15130),
    ("densenet", 2): (3882, 3594),
    ("densenet", 3): (9290, 9002),
    ("inception_resnet", 2): (10642, 10306),
    ("inception_resnet", 3): (27282, 26946),
}
# Default (seed) configurations in 3D with one input channel.
PINNED_DEFAULT = {
    "resnet": (15906850, 15895650),
    "densenet": (8547466, 8489346),
    "inception_resnet": (7795682, 7788962),
}
NAMES = list(CLASSIFIERS)
DIMS = (2, 3)
CASES = list(itertools.product(NAMES, DIMS))
IDS = [f"{n}-{d}d" for n, d in CASES]


def _shape(dims, size, channels=1):
    return (size,) * dims + (channels,)


# ---------------------------------------------------------------- blocks


@pytest.mark.parametrize("dims", DIMS, ids=["2d", "3d"])
@pytest.mark.parametrize(
    "c,num_layers,k", [(16, 3, 4), (5, 1, 7), (32, 6, 32)], ids=["c16L3k4", "c5L1k7", "c32L6k32"]
)
def test_dense_block_outputs_c_plus_L_times_k_channels(dims, c, num_layers, k):
    x = keras.Input((6,) * dims + (c,))
    y = dense_block(x, num_layers, k, name="db")
    assert tuple(y.shape) == (None,) + (6,) * dims + (c + num_layers * k,)
    # the input itself is part of the output: the first c channels pass through unchanged
    m = keras.Model(x, y)
    data = np.random.default_rng(0).normal(size=(2,) + (6,) * dims + (c,)).astype("float32")
    out = np.asarray(m(data, training=False))
    np.testing.assert_allclose(out[..., :c], data, rtol=0, atol=0)


@pytest.mark.parametrize("dims", DIMS, ids=["2d", "3d"])
def test_transition_compresses_channels_of_its_input(dims):
    x = keras.Input((8,) * dims + (28,))
    y = transition_layer(x, reduction=0.5, name="t")
    assert tuple(y.shape) == (None,) + (4,) * dims + (14,)
    with pytest.raises(ValueError, match=r"reduction must be in \(0, 1\], got 1.5"):
        transition_layer(x, reduction=1.5, name="t2")


@pytest.mark.parametrize("dims", DIMS, ids=["2d", "3d"])
def test_residual_block_identity_and_projection_shortcuts(dims):
    x = keras.Input((7,) * dims + (8,))
    same = keras.Model(x, residual_block(x, 8, name="a"))
    assert same.output_shape == (None,) + (7,) * dims + (8,)
    assert not any("proj" in layer.name for layer in same.layers)  # identity shortcut
    down = keras.Model(x, residual_block(x, 16, strides=2, name="b"))
    # odd size 7 -> ceil(7 / 2) = 4 in both branches, so the addition works
    assert down.output_shape == (None,) + (4,) * dims + (16,)
    assert any(layer.name == "b_proj_conv" for layer in down.layers)
    # conv 3^d*8*16 + conv 3^d*16*16 + proj 8*16, each followed by batch norm (4 * 16)
    k = 3**dims
    assert count_params(down) == k * 8 * 16 + k * 16 * 16 + 8 * 16 + 3 * 4 * 16
    # batch norm before the addition, activation after it (no norm on the sum)
    names = [layer.name for layer in down.layers]
    assert names.index("b_conv2_norm") < names.index("b_add") < names.index("b_out")


@pytest.mark.parametrize("dims", DIMS, ids=["2d", "3d"])
def test_inception_resnet_block_keeps_input_channels_when_filters_differ(dims):
    x = keras.Input((5,) * dims + (24,))
    y = inception_resnet_block(x, 16, scale=0.2, name="ir")
    assert tuple(y.shape) == tuple(x.shape)
    r = reduction_block(x, 16, name="red")
    # odd size 5 -> 3 in all three branches; channels 2 * 16 + 24
    assert tuple(r.shape) == (None,) + (3,) * dims + (56,)


def test_blocks_reject_bad_arguments():
    x = keras.Input((8, 8, 8, 4))
    with pytest.raises(ValueError, match="strides must be a positive int or 3 positive ints"):
        residual_block(x, 8, strides=(2, 2), name="bad")
    with pytest.raises(ValueError, match="filters must be a positive int, got 0"):
        inception_resnet_block(x, 0, name="bad2")
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        dense_block(x, 2, 4, dropout=1.0, name="bad3")


# ---------------------------------------------------------------- whole networks


@pytest.mark.parametrize("name,dims", CASES, ids=IDS)
def test_small_configs_pinned_param_counts(name, dims):
    model = CLASSIFIERS[name](_shape(dims, 16), **SMALL[name])
    assert (count_params(model), count_params(model, trainable_only=True)) == PINNED_SMALL[(name, dims)]


@pytest.mark.parametrize("name", NAMES)
def test_default_configs_pinned_param_counts(name):
    # build only: the default networks are far too big for a CPU forward pass here
    model = CLASSIFIERS[name]((32, 32, 32, 1))
    assert (count_params(model), count_params(model, trainable_only=True)) == PINNED_DEFAULT[name]
    assert model.output_shape == (None, 2)


def test_paper_layouts_match_reference_counts():
    # DenseNet-121 with the paper's 7x7 stem: exactly keras.applications.DenseNet121.
    d121 = densenet(
        (224, 224, 3), num_classes=1000, init_filters=64, stage_blocks=(6, 12, 24, 16), stem_kernel=7
    )
    assert (count_params(d121), count_params(d121, trainable_only=True)) == (8062504, 7978856)
    # ResNet-18 layout: 11,689,512 trainable parameters, the paper's / torchvision's count.
    r18 = resnet(
        (224, 224, 3),
        num_classes=1000,
        init_filters=64,
        stage_filters=(64, 128, 256, 512),
        stage_blocks=(2, 2, 2, 2),
        stem_kernel=7,
    )
    assert count_params(r18, trainable_only=True) == 11689512


SHAPE_CASES = [
    # (dims, input spatial size, down_strides, expected feature-map size)
    (2, (24, 40), 2, (6, 10)),
    (2, (20, 7), (2, 1), (5, 7)),  # odd width, not down-sampled
    (3, (12, 20, 28), 2, (3, 5, 7)),
    (3, (16, 24, 5), (2, 2, 1), (4, 6, 5)),  # odd depth for thick slices
]


@pytest.mark.parametrize(
    "name,case",
    list(itertools.product(NAMES, SHAPE_CASES)),
    ids=[f"{n}-{'x'.join(map(str, c[1]))}" for n, c in itertools.product(NAMES, SHAPE_CASES)],
)
def test_output_shapes_2d_and_3d_including_odd_sizes(name, case):
    dims, spatial, down, feat = case
    shape = tuple(spatial) + (2,)
    model = CLASSIFIERS[name](shape, num_classes=3, down_strides=down, **SMALL[name])
    assert model.output_shape == (None, 3)
    # the feature map entering global average pooling
    fmap = model.get_layer(f"{name}_gap").input
    assert tuple(fmap.shape) == (None,) + tuple(feat) + (SMALL_FEATURES[name],)
    # a forward pass agrees with the static shape
    x = np.zeros((2,) + shape, dtype="float32")
    assert tuple(model(x, training=False).shape) == (2, 3)


@pytest.mark.parametrize("name", NAMES)
def test_include_top_false_returns_features(name):
    shape = (12, 20, 28, 1)
    pooled = CLASSIFIERS[name](shape, include_top=False, **SMALL[name])
    assert pooled.output_shape == (None, SMALL_FEATURES[name])
    fmap = CLASSIFIERS[name](shape, include_top=False, pooling=None, **SMALL[name])
    assert fmap.output_shape == (None, 3, 5, 7, SMALL_FEATURES[name])
    assert all(layer.name != f"{name}_head_dense" for layer in fmap.layers)


@pytest.mark.parametrize("name", NAMES)
def test_layer_names_are_deterministic(name):
    a = CLASSIFIERS[name]((16, 16, 1), **SMALL[name])
    b = CLASSIFIERS[name]((16, 16, 1), **SMALL[name])
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]
    assert all(layer.name.startswith(name) for layer in a.layers)


@pytest.mark.parametrize(
    "name,bad_shape",
    list(itertools.product(NAMES, [(32, 32), (8, 8, 8, 8, 1), (32,)])),
    ids=[f"{n}-rank{len(s)}" for n, s in itertools.product(NAMES, [(32, 32), (8, 8, 8, 8, 1), (32,)])],
)
def test_wrong_rank_raises(name, bad_shape):
    with pytest.raises(
        ValueError,
        match=r"input_shape must be \(H, W, C\) for 2D or "
        r"\(D, H, W, C\) for 3D.*got " + re.escape(str(bad_shape)),
    ):
        CLASSIFIERS[name](bad_shape, **SMALL[name])


@pytest.mark.parametrize("name,dims", CASES, ids=IDS)
def test_non_divisible_size_raises_naming_shapes(name, dims):
    shape = (18,) + (16,) * (dims - 1) + (1,)
    with pytest.raises(ValueError) as err:
        CLASSIFIERS[name](shape, **SMALL[name])
    msg = str(err.value)
    assert "must be divisible by 4" in msg
    assert "axis 0: 18 (nearest valid: 16 or 20)" in msg
    assert f"total stride {(4,) * dims}" in msg
    assert f"got input_shape {shape}" in msg


@pytest.mark.parametrize("name", NAMES)
def test_other_bad_arguments_raise(name):
    builder = CLASSIFIERS[name]
    with pytest.raises(ValueError, match="channel count"):
        builder((16, 16, 0), **SMALL[name])
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        builder((16, 16, 1), num_classes=0, **SMALL[name])
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        builder((16, 16, 1), dropout=1.5, **SMALL[name])
    with pytest.raises(ValueError, match="down_strides must be a positive int or 2"):
        builder((16, 16, 1), down_strides=(2, 2, 2), **SMALL[name])
    with pytest.raises(ValueError, match="pooling must be 'avg' or None"):
        builder((16, 16, 1), include_top=False, pooling="max", **SMALL[name])


def test_stage_lists_must_match():
    with pytest.raises(
        ValueError,
        match=r"stage_filters=\(8, 16\) \(2\) and "
        r"stage_blocks=\(1,\) \(1\)",
    ):
        resnet((16, 16, 1), stage_filters=(8, 16), stage_blocks=(1,))
    with pytest.raises(ValueError, match=r"growth_rate=\(4,\) \(1\)"):
        densenet((16, 16, 1), stage_blocks=(2, 2), growth_rate=(4,))


def test_total_stride_and_check_input_shape():
    assert total_stride(3, 2, 3) == (8, 8, 8)
    assert total_stride(2, (2, 2, 1), 3) == (4, 4, 1)
    assert check_input_shape((16, 16, 5, 1), (4, 4, 1)) == 3
    with pytest.raises(ValueError, match=r"axis 2: 5 \(nearest valid: 4 or 8\)"):
        check_input_shape((16, 16, 5, 1), 4)


@pytest.mark.parametrize("name", NAMES)
def test_final_activation(name):
    logits = CLASSIFIERS[name]((16, 16, 1), final_activation=None, **SMALL[name])
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype("float32")
    probs = CLASSIFIERS[name]((16, 16, 1), **SMALL[name])
    probs.set_weights(logits.get_weights())
    np.testing.assert_allclose(
        np.asarray(probs(x, training=False)),
        tf.nn.softmax(logits(x, training=False)).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="out_channels=1 is 1 everywhere"):
        CLASSIFIERS[name]((16, 16, 1), num_classes=1, final_activation="softmax", **SMALL[name])
    with pytest.raises(ValueError, match="final_activation must be one of"):
        CLASSIFIERS[name]((16, 16, 1), final_activation="tanh", **SMALL[name])


@pytest.mark.parametrize("name", NAMES)
def test_none_sizes_are_checked_when_called(name):
    model = CLASSIFIERS[name]((None, None, None, 1), **SMALL[name])  # total stride 4
    assert model(np.zeros((1, 8, 12, 16, 1), "int16")).shape == (1, 2)
    with pytest.raises(ValueError, match=r"axis 0: 18 \(nearest valid: 16 or 20\)"):
        model(np.zeros((1, 18, 16, 16, 1), "float32"))
    with pytest.raises(ValueError, match=r"axis 2: 6 \(nearest valid: 4 or 8\)"):
        model.predict(np.zeros((2, 8, 8, 6, 1), "float64"), verbose=0)


def test_per_axis_stride_is_checked_when_called():
    model = inception_resnet((None, None, None, 1), down_strides=(2, 2, 1), **SMALL["inception_resnet"])
    assert model(np.zeros((1, 8, 8, 5, 1), "float32")).shape == (1, 2)  # z not down-sampled
    with pytest.raises(ValueError, match=r"axis 1: 6 \(nearest valid: 4 or 8\).*total stride \(4, 4, 1\)"):
        model(np.zeros((1, 8, 6, 5, 1), "float32"))


@pytest.mark.parametrize("name,dims", CASES, ids=IDS)
def test_one_gradient_step_lowers_the_loss(name, dims):
    keras.utils.set_random_seed(0)
    model = CLASSIFIERS[name](_shape(dims, 8, 2), **SMALL[name])
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(4,) + _shape(dims, 8, 2)).astype("float32"))
    y = tf.constant([0, 1, 0, 1])
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    opt = keras.optimizers.SGD(learning_rate=0.05)
    with tf.GradientTape() as tape:
        before = loss_fn(y, model(x, training=True))
    grads = tape.gradient(before, model.trainable_variables)
    assert all(g is not None for g in grads)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    after = loss_fn(y, model(x, training=True))
    assert float(after) < float(before)


# ---------------------------------------------------------------- synthetic data


def test_elongation_dataset_middle_slice_hides_the_class():
    x, y = make_elongation_dataset(40, shape=(24, 24, 24), seed=3, noise=0.0)
    assert x.shape == (40, 24, 24, 24) and x.dtype == np.float32
    assert y.sum() == 20  # balanced
    obj = x > 0.5
    z_extent = obj.any(axis=(1, 2)).sum(axis=1)
    x_extent = obj.any(axis=(2, 3)).sum(axis=1)
    # spheres are as deep as wide; elongated objects are at least 1.5 times deeper
    assert np.all(np.abs(z_extent[y == 0] - x_extent[y == 0]) <= 1)
    assert np.all(z_extent[y == 1] >= 1.5 * x_extent[y == 1])
    # the middle axial slice holds the widest disc of every object (radius r)
    mid = middle_axial_slice(obj)
    assert mid.shape == (40, 24, 24)
    assert np.array_equal(mid.any(axis=2).sum(axis=1), x_extent)
    # same seed, same data; other seed, other data
    x2, y2 = make_elongation_dataset(40, shape=(24, 24, 24), seed=3, noise=0.0)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(x, make_elongation_dataset(40, (24, 24, 24), seed=4)[0])


def test_elongation_dataset_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        make_elongation_dataset(1)
    with pytest.raises(ValueError, match=r"shape must be \(X, Y, Z\) with every size >= 8"):
        make_elongation_dataset(4, shape=(16, 16))
    with pytest.raises(ValueError, match="elongation must be"):
        make_elongation_dataset(4, elongation=(0.5, 2.0))


def test_patch_dataset_train_and_test_come_from_disjoint_z_ranges():
    shape = (40, 40, 48)
    z = np.broadcast_to(np.arange(1, shape[2] + 1, dtype=np.float32), shape)
    image = np.stack([z, np.ones(shape, np.float32)])  # channel 0 encodes z (never 0)
    label = np.zeros(shape, np.uint8)
    label[10:30, 10:30, 8:40] = 2  # a tumour on both sides of the split
    (xtr, ytr), (xte, yte) = patch_dataset(image, label, patch_size=8, step=1, n_per_class=5, z_split=24)
    assert xtr.shape[1:] == (2, 8, 8, 8) and xtr.dtype == np.float32
    assert set(ytr.tolist()) == {0, 1} and set(yte.tolist()) == {0, 1}
    # z-scoring is increasing in z, so every train value lies below every test value
    assert xtr[:, 0].max() < xte[:, 0].min()
    # no patch straddles the split: train patches span at most z in [0, 24)
    zscore = (np.arange(1, 49) - z.mean()) / z.std()
    assert xtr[:, 0].max() <= zscore[23] + 1e-5 and xte[:, 0].min() >= zscore[24] - 1e-5
    # outside the brain (zeros in channel 0) no patch of either class is taken
    image[:, :20] = 0
    (xtr, ytr), (xte, yte) = patch_dataset(
        image, label, patch_size=8, step=1, n_per_class=50, z_split=24, min_brain=0.7
    )
    for x in (xtr, xte):
        assert (x[:, 0] == 0).mean(axis=(1, 2, 3)).max() <= 0.3
    with pytest.raises(ValueError, match="label has no tumour voxels"):
        patch_dataset(image, np.zeros(shape, np.uint8), patch_size=8, step=1)
    with pytest.raises(ValueError, match="expected image"):
        patch_dataset(image[0], label)
