"""Tests for mednets.torch.inference.sliding_window_inference."""

import itertools

import numpy as np
import pytest
import torch

from mednets.torch.inference import (
    as_model_input,
    importance_map,
    model_dtype,
    sliding_window_inference,
    window_starts,
)
from mednets.torch.nvnet import NVNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _conv_model(spatial_dims=3, seed=0):
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d if spatial_dims == 3 else torch.nn.Conv2d
    # receptive-field radius 2: two 3x3(x3) convolutions
    return torch.nn.Sequential(conv(2, 4, 3, padding=1), torch.nn.ReLU(), conv(4, 3, 3, padding=1)).eval()


CASES = list(itertools.product(["gaussian", "constant"], [0.25, 0.5], [1, 4]))


@pytest.mark.parametrize("blend,overlap,sw", CASES, ids=[f"{b}-ov{o}-sw{s}" for b, o, s in CASES])
def test_reproduces_full_volume_output(blend, overlap, sw):
    model = _conv_model()
    v = torch.randn(2, 2, 37, 29, 20)
    with torch.no_grad():
        full = model(v)
    out = sliding_window_inference(
        model, v, (16, 16, 16), overlap=overlap, blend=blend, margin=2, sw_batch_size=sw
    )
    assert out.shape == full.shape
    torch.testing.assert_close(out[..., 2:-2, 2:-2, 2:-2], full[..., 2:-2, 2:-2, 2:-2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-5)


def test_without_margin_the_seams_differ_but_a_pointwise_model_matches():
    model = _conv_model()
    v = torch.randn(1, 2, 40, 24, 24)
    with torch.no_grad():
        full = model(v)
    out = sliding_window_inference(model, v, (16, 16, 16), margin=0)
    assert float((out - full).abs().max()) > 1e-3  # patch borders see zero padding
    pointwise = torch.nn.Conv3d(2, 3, 1).eval()
    with torch.no_grad():
        ref = pointwise(v)
    torch.testing.assert_close(
        sliding_window_inference(pointwise, v, (16, 16, 16)), ref, rtol=1e-5, atol=1e-6
    )


def test_2d_and_unbatched_and_numpy_and_small_axes():
    model2d = _conv_model(2)
    v = torch.randn(2, 30, 21)
    out = sliding_window_inference(model2d, v, (16, 16), margin=2)
    assert out.shape == (3, 30, 21)
    with torch.no_grad():
        full = model2d(v[None])[0]
    torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-5)
    # an axis shorter than the patch is padded and cropped back
    v3 = np.random.default_rng(0).standard_normal((1, 2, 10, 20, 16)).astype(np.float32)
    out3 = sliding_window_inference(_conv_model(), v3, (16, 16, 16), margin=2)
    assert out3.shape == (1, 3, 10, 20, 16)
    with torch.no_grad():
        full3 = _conv_model()(torch.from_numpy(v3))
    # away from the padded end of axis 0, the result is exact
    torch.testing.assert_close(out3[:, :, :7], full3[:, :, :7], rtol=1e-5, atol=1e-5)


def test_runs_nvnet_with_vae_and_keeps_input_size():
    torch.manual_seed(0)
    net = NVNet(init_filters=8, spatial_size=(16, 16, 16)).eval()
    v = torch.randn(1, 4, 28, 16, 16)
    out = sliding_window_inference(net, v, (16, 16, 16), overlap=0.5)
    assert out.shape == (1, 3, 28, 16, 16)
    assert 0 <= float(out.min()) and float(out.max()) <= 1


@pytest.mark.parametrize(
    "size,patch,step", [(40, 16, 8), (37, 16, 6), (16, 16, 8), (100, 32, 32), (33, 32, 1)]
)
def test_window_starts_cover_the_axis(size, patch, step):
    starts = window_starts(size, patch, step)
    assert starts[0] == 0 and starts[-1] + patch == size
    assert all(0 < b - a <= step for a, b in zip(starts, starts[1:]))


def test_importance_map():
    w = importance_map((9, 7, 5))
    assert w.shape == (9, 7, 5)
    assert float(w.max()) == pytest.approx(1.0) and float(w[4, 3, 2]) == pytest.approx(1.0)
    assert float(w.min()) > 0
    assert torch.equal(w, w.flip(0))
    assert float(w[0, 3, 2]) < float(w[2, 3, 2]) < 1
    assert torch.equal(importance_map((4, 4), "constant"), torch.ones(4, 4))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(patch_size=(16, 16)), "2 axes"),
        (dict(overlap=1.0), "overlap"),
        (dict(blend="linear"), "blend"),
        (dict(margin=8), "margin"),
        (dict(sw_batch_size=0), "sw_batch_size"),
    ],
    ids=["patch-rank", "overlap", "blend", "margin", "sw-batch"],
)
def test_value_errors(kwargs, match):
    kwargs.setdefault("patch_size", (16, 16, 16))
    with pytest.raises(ValueError, match=match):
        sliding_window_inference(_conv_model(), torch.zeros(1, 2, 20, 20, 20), **kwargs)


def test_model_changing_size_is_rejected():
    pool = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 1), torch.nn.MaxPool3d(2))
    with pytest.raises(ValueError, match="keep the patch size"):
        sliding_window_inference(pool, torch.zeros(1, 2, 20, 20, 20), (16, 16, 16))


# ------------------------------------------------------- dtypes (issue 13, kind 3)


@pytest.mark.parametrize("dtype", [np.float64, np.int16, np.uint8, np.int32, np.float16, np.float32])
def test_numpy_dtypes_are_cast_to_the_model_dtype(dtype):
    # The input: nn.Conv3d(1, 2, 3, padding=1) on a (1, 20, 20, 20) array.
    torch.manual_seed(0)
    model = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    x = (np.random.default_rng(0).random((1, 20, 20, 20)) * 100).astype(dtype)
    assert sliding_window_inference(model, x, (16, 16, 16)).shape == (2, 20, 20, 20)
    out = sliding_window_inference(model, x, (16, 16, 16), margin=1)  # margin 1: exact
    assert out.dtype == torch.float32
    with torch.no_grad():
        ref = model(torch.from_numpy(x.astype(np.float32))[None])[0]
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def test_float64_model_gets_float64_input_and_tensors_are_cast_too():
    model = torch.nn.Conv3d(1, 2, 1).double().eval()
    seen = []

    def spy(x):
        seen.append(x.dtype)
        return x

    x = torch.arange(8 * 8 * 8, dtype=torch.int16).reshape(1, 8, 8, 8)
    assert sliding_window_inference(model, x, (8, 8, 8)).shape == (2, 8, 8, 8)
    sliding_window_inference(spy, x, (8, 8, 8))
    assert seen == [torch.float32]  # a plain function has no parameters: float32
    assert model_dtype(model) == torch.float64 and model_dtype(model.forward) == torch.float64


def test_bound_method_of_a_module_is_asked_through_its_module():
    torch.manual_seed(0)
    net = NVNet(init_filters=8, spatial_size=(16, 16, 16)).eval()
    x = np.random.default_rng(0).standard_normal((4, 16, 16, 16))  # float64
    assert model_dtype(net.segment) == torch.float32
    out = sliding_window_inference(net.segment, x, (16, 16, 16))
    with torch.no_grad():
        ref = net.segment(torch.from_numpy(x).float()[None])[0]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "x,match",
    [
        (np.zeros((1, 16, 16, 16), bool), "dtype bool"),
        (np.zeros((1, 16, 16, 16), np.complex64), "dtype complex64"),
        (np.zeros((1, 16, 16, 16), object), "dtype object"),
        (torch.zeros(1, 16, 16, 16, dtype=torch.bool), "dtype torch.bool"),
        (torch.zeros(1, 16, 16, 16, dtype=torch.complex64), "dtype torch.complex64"),
        ([[0.0]], "got list"),
    ],
    ids=["bool", "complex", "object", "tensor-bool", "tensor-complex", "list"],
)
def test_dtypes_that_are_not_real_numbers_are_refused(x, match):
    with pytest.raises(ValueError, match=match):
        sliding_window_inference(torch.nn.Conv3d(1, 2, 1), x, (16, 16, 16))


def test_as_model_input_does_not_copy_a_tensor_of_the_right_dtype():
    x = torch.zeros(1, 4, 4)
    assert as_model_input(x, torch.float32) is x
