"""One contract suite across every network of the book, in both frameworks.

Driven by one registry of builders x spatial dims (as timm and segmentation_models_pytorch
test their zoos), so a new network gets every check by adding one line:

- the forward pass gives the documented output shape, in 2D and in 3D;
- every trainable parameter gets a gradient from one backward pass;
- an input size the network cannot take is refused when the model is *called*, with a
  ``ValueError`` that names the shape;
- the paper configuration has its pinned parameter count.

Widths are tiny so the whole suite runs in well under a minute on a CPU.
"""

import itertools

import numpy as np
import pytest

# --------------------------------------------------------------------------- registry
# name: (framework, builder(spatial_dims) -> model, good spatial size, bad spatial size,
#        output shape(batch, spatial) -> tuple)


def _keras_registry():
    from mednets.keras import classifiers3d, resnet34_unet, unet, unet3plus

    def seg(builder, **kw):
        return lambda dims: builder((None,) * dims + (2,), out_channels=3, final_activation=None, **kw)

    def seg_static(builder, **kw):
        # UNet 3+ resizes by known factors, so it is built for one spatial size: a size it
        # cannot take is refused when it is built, and any other size when it is called.
        def build(dims, size=32):
            return builder((size,) * dims + (2,), out_channels=3, final_activation=None, **kw)

        build.static = True
        return build

    def cls(builder, **kw):
        return lambda dims: builder((None,) * dims + (2,), num_classes=4, final_activation=None, **kw)

    tiny = (4, 8, 8, 16, 16)
    seg_out = lambda b, s: (b, *s, 3)  # noqa: E731
    cls_out = lambda b, s: (b, 4)  # noqa: E731
    return {
        "keras.unet": (seg(unet.unet, filters=tiny), 32, 36, seg_out),
        "keras.unet3plus": (seg_static(unet3plus.unet3plus, filters=tiny, skip_filters=4), 32, 36, seg_out),
        "keras.unet3plus_resnet34": (
            seg_static(unet3plus.unet3plus_resnet34, init_filters=4, skip_filters=4),
            32,
            48,
            seg_out,
        ),
        "keras.resnet34_unet": (
            seg(resnet34_unet.resnet34_unet, init_filters=4, decoder_filters=(8, 8, 4, 4, 4)),
            32,
            48,
            seg_out,
        ),
        "keras.resnet": (
            cls(classifiers3d.resnet, init_filters=4, stage_filters=(4, 8), stage_blocks=(1, 1)),
            16,
            18,
            cls_out,
        ),
        "keras.densenet": (
            cls(classifiers3d.densenet, init_filters=4, stage_blocks=(1, 1), growth_rate=4),
            16,
            18,
            cls_out,
        ),
        "keras.inception_resnet": (
            cls(classifiers3d.inception_resnet, init_filters=4, stage_filters=(4, 8), stage_blocks=(1, 1)),
            16,
            18,
            cls_out,
        ),
        "keras.resnet34_classifier": (
            cls(resnet34_unet.resnet34_classifier, init_filters=4),
            32,
            48,
            cls_out,
        ),
    }


def _torch_registry():
    from mednets.torch.nvnet import NVNet
    from mednets.torch.resnet3d import ResNet3d

    return {
        "torch.resnet3d_18": (
            lambda dims: ResNet3d(18, in_channels=2, init_filters=4, num_classes=4, spatial_dims=dims),
            32,
            1,
            lambda b, s: (b, 4),
        ),
        "torch.nvnet": (
            lambda dims: NVNet(
                spatial_dims=dims, in_channels=2, out_channels=3, init_filters=8, spatial_size=None, vae=False
            ),
            16,
            20,
            lambda b, s: (b, 3, *s),
        ),
        "torch.nvnet_vae": (
            lambda dims: NVNet(
                spatial_dims=dims, in_channels=2, out_channels=3, init_filters=8, spatial_size=(16,) * dims
            ),
            16,
            24,
            lambda b, s: (b, 3, *s),
        ),
    }


KERAS = [
    "keras.unet",
    "keras.unet3plus",
    "keras.unet3plus_resnet34",
    "keras.resnet34_unet",
    "keras.resnet",
    "keras.densenet",
    "keras.inception_resnet",
    "keras.resnet34_classifier",
]
TORCH = ["torch.resnet3d_18", "torch.nvnet", "torch.nvnet_vae"]
CASES = list(itertools.product(KERAS + TORCH, (2, 3)))
IDS = [f"{name}-{dims}d" for name, dims in CASES]


@pytest.fixture(scope="module")
def registry():
    return {**_keras_registry(), **_torch_registry()}


def _keras_forward_and_grads(model, x):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        out = model(x, training=True)
        outs = out if isinstance(out, (list, tuple, dict)) else [out]
        outs = list(outs.values()) if isinstance(outs, dict) else outs
        loss = tf.add_n([tf.reduce_mean(tf.square(o)) for o in outs])
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
    first = outs[0]
    return tuple(first.shape), missing


def _torch_forward_and_grads(model, x):
    import torch

    model.train()
    out = model(torch.as_tensor(x))
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    loss = sum((o.float() ** 2).mean() for o in outs)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    return tuple(outs[0].shape), missing


@pytest.mark.parametrize("name,dims", CASES, ids=IDS)
def test_forward_shape_and_every_parameter_gets_a_gradient(registry, name, dims, one_torch_thread):
    build, good, _, out_shape = registry[name]
    rng = np.random.default_rng(0)
    spatial = (good,) * dims
    model = build(dims)
    if name.startswith("keras"):
        x = rng.standard_normal((2, *spatial, 2)).astype("float32")
        shape, missing = _keras_forward_and_grads(model, x)
    else:
        x = rng.standard_normal((2, 2, *spatial)).astype("float32")
        shape, missing = _torch_forward_and_grads(model, x)
    assert shape == out_shape(2, spatial)
    assert not missing, f"parameters without a gradient: {missing[:5]}"


@pytest.mark.parametrize("name,dims", CASES, ids=IDS)
def test_a_size_the_network_cannot_take_is_refused_when_called(registry, name, dims, one_torch_thread):
    build, _, bad, _ = registry[name]
    if getattr(build, "static", False):
        with pytest.raises(ValueError, match=str(bad)):
            build(dims, bad)
        model = build(dims)
        with pytest.raises(ValueError, match=str(bad)):
            model(np.zeros((1, *(bad,) * dims, 2), "float32"))
        return
    model = build(dims)
    spatial = (bad,) * dims
    if name.startswith("keras"):
        x = np.zeros((1, *spatial, 2), "float32")
    else:
        import torch

        x = torch.zeros(1, 2, *spatial)
    with pytest.raises(ValueError, match=str(bad)):
        model(x)


@pytest.mark.parametrize("name,dims", [c for c in CASES if c[0].startswith("keras")], ids=lambda c: str(c))
def test_keras_wrong_channels_are_refused_when_called(registry, name, dims):
    build, good, _, _ = registry[name]
    model = build(dims)
    with pytest.raises(ValueError, match="3"):
        model(np.zeros((1, *(good,) * dims, 3), "float32"))


@pytest.mark.parametrize("name", TORCH)
def test_torch_wrong_channels_and_rank_are_refused_when_called(registry, name, one_torch_thread):
    import torch

    build, good, _, _ = registry[name]
    model = build(3)
    with pytest.raises(ValueError, match="3"):
        model(torch.zeros(1, 3, good, good, good))
    with pytest.raises(ValueError):
        model(torch.zeros(2, good, good, good))


# ------------------------------------------------------------- paper configurations


def _paper_unet3plus():
    from mednets.keras.unet3plus import unet3plus

    return unet3plus((32, 32, 3)), True


def _paper_resnet34_unet():
    from mednets.keras.resnet34_unet import resnet34_unet

    return resnet34_unet((None, None, 3)), False


def _paper_i3d():
    import torch

    from mednets.torch.resnet3d import i3d_resnet50

    with torch.device("meta"):
        return i3d_resnet50(), False


def _paper_nvnet():
    import torch

    from mednets.torch.nvnet import nvnet_paper

    with torch.device("meta"):
        return nvnet_paper(), False


PAPER = {
    # Huang et al. (2020), Table 1: 26.97 M trainable; the official UNet_3Plus gives exactly this.
    "unet3plus": (_paper_unet3plus, 26_971_777),
    # segmentation_models' Unet("resnet34", classes=1).
    "resnet34_unet": (_paper_resnet34_unet, 24_456_154),
    # mmaction2's I3D ResNet-50 backbone.
    "i3d_resnet50": (_paper_i3d, 27_223_872),
    # Myronenko (2019): 4 -> 3 channels, 32 filters, 160x192x128 crops (hand count in test_torch_nvnet).
    "nvnet_paper": (_paper_nvnet, 26_037_847),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configuration_parameter_count(name):
    build, expected = PAPER[name]
    model, trainable_only = build()
    if name in ("i3d_resnet50", "nvnet_paper"):
        from mednets.torch import count_params
    else:
        from mednets.keras import count_params
    assert count_params(model, trainable_only=trainable_only) == expected
