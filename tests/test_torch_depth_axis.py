"""The depth-axis rule (issue 15): which axis of a ``mednets.data`` volume the
``(t, s, s)`` kernels of ResNet3d / I3D and inflation treat as depth.

A ``mednets.data`` volume is ``(C, X, Y, Z)`` with the slice axis z last. The networks
take the slice axis as the first spatial axis, ``(B, C, D, H, W)`` with ``D = Z``, so
``mednets.data.depth_first`` moves it there. With hand-set kernels on anisotropic
volumes (varying only across slices, or only in-plane), the tests check that the
temporal ``(3, 1, 1)`` kernels then act across slices and the in-plane ``(1, 3, 3)``
kernels on x and y, and that feeding the array as it is would get both wrong.
"""

import numpy as np
import pytest
import torch
from torch import nn

from mednets.data import depth_first, depth_last
from mednets.torch.inflate import inflate_2d_weights
from mednets.torch.resnet3d import Bottleneck3d, i3d_resnet50

pytestmark = pytest.mark.usefixtures("one_torch_thread")

X, Y, Z = 6, 7, 9
SECOND_DIFFERENCE = torch.tensor([1.0, -2.0, 1.0])
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _volume(along: str) -> np.ndarray:
    """A one-channel ``mednets.data`` volume ``(1, X, Y, Z)`` equal to ``i**2`` along one axis."""
    x, y, z = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij")
    return ({"x": x, "z": z}[along] ** 2).astype(np.float32)[None]


def _block_convs():
    """The temporal and in-plane convs of an inflated I3D bottleneck, with hand-set kernels."""
    block = Bottleneck3d(1, 1, inflate=True, inflate_style="3x1x1")
    temporal, in_plane = block.conv1, block.conv2
    assert temporal.kernel_size == (3, 1, 1) and in_plane.kernel_size == (1, 3, 3)
    with torch.no_grad():
        temporal.weight.copy_(SECOND_DIFFERENCE.reshape(1, 1, 3, 1, 1))
        in_plane.weight.copy_(LAPLACIAN.reshape(1, 1, 1, 3, 3))
    return temporal, in_plane


def _run(conv: nn.Module, array: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return conv(torch.from_numpy(array)[None])[0, 0]  # (B, C, ...) -> the single map


def test_temporal_kernels_act_across_slices_after_depth_first():
    temporal, in_plane = _block_convs()
    varies_in_z = _volume("z")  # (1, X, Y, Z): slices differ, each slice is flat
    batch_layout = depth_first(varies_in_z)
    assert batch_layout.shape == (1, Z, X, Y)

    # The temporal kernel takes the second difference of z**2 across slices: 2 at every
    # slice with two neighbours, over the whole in-plane extent.
    out = _run(temporal, batch_layout)
    torch.testing.assert_close(out[1:-1], torch.full((Z - 2, X, Y), 2.0))
    # The in-plane Laplacian of a flat slice is 0 away from the in-plane zero padding.
    out = _run(in_plane, batch_layout)
    torch.testing.assert_close(out[:, 1:-1, 1:-1], torch.zeros(Z, X - 2, Y - 2))

    # Fed as it is, (1, X, Y, Z), the network takes x for the slice axis: the temporal
    # kernel sees no change (0) and the "in-plane" kernel runs across slices (2).
    torch.testing.assert_close(_run(temporal, varies_in_z)[1:-1], torch.zeros(X - 2, Y, Z))
    torch.testing.assert_close(_run(in_plane, varies_in_z)[:, 1:-1, 1:-1], torch.full((X, Y - 2, Z - 2), 2.0))


def test_in_plane_kernels_act_on_x_and_y_after_depth_first():
    temporal, in_plane = _block_convs()
    batch_layout = depth_first(_volume("x"))  # every slice is the same image x**2
    # No change across slices: the temporal kernel gives 0 wherever it has two neighbours.
    torch.testing.assert_close(_run(temporal, batch_layout)[1:-1], torch.zeros(Z - 2, X, Y))
    # The in-plane Laplacian of x**2 is 2 (along x) + 0 (along y) on every slice.
    torch.testing.assert_close(
        _run(in_plane, batch_layout)[:, 1:-1, 1:-1], torch.full((Z, X - 2, Y - 2), 2.0)
    )


def test_inflated_kernel_sums_the_2d_kernel_over_axial_slices():
    """Inflation: the 2D network's images are the axial slices ``volume[:, :, :, z]``."""
    torch.manual_seed(0)
    conv2d = nn.Conv2d(2, 3, 3, padding=1)
    conv3d = nn.Conv3d(2, 3, (3, 3, 3), padding=1)
    inflate_2d_weights(conv3d, conv2d.state_dict())
    rng = np.random.default_rng(0)
    volume = rng.standard_normal((2, X, Y, Z)).astype(np.float32)
    volume[..., 3:6] = volume[..., 4:5]  # slices 3, 4, 5 equal: "boring" around z = 4
    with torch.no_grad():
        out = depth_last(conv3d(torch.from_numpy(depth_first(volume))[None])[0].numpy())  # (3, X, Y, Z)
        axial = conv2d(torch.from_numpy(volume[..., 4])[None])[0].numpy()  # (3, X, Y)
        sagittal_wrong = conv3d(torch.from_numpy(volume)[None])[0].numpy()  # x taken as depth
    assert out.shape == (3, X, Y, Z)
    np.testing.assert_allclose(out[..., 4], axial, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out[..., 3], axial, atol=1e-2)  # slice 2 differs: z = 3 is not boring
    assert sagittal_wrong.shape == (3, X, Y, Z) and not np.allclose(sagittal_wrong[..., 4], axial, atol=1e-2)


def test_i3d_downsamples_the_slice_axis_by_8_and_the_plane_by_32():
    """In I3D, depth strides (stem conv, stem pool, pool2) land on z after depth_first."""
    volume = np.zeros((3, 64, 96, 16), np.float32)  # (C, X, Y, Z), 16 slices
    with torch.device("meta"):
        model = i3d_resnet50(init_filters=8)
        out = model(torch.empty((1, *depth_first(volume).shape)))
    assert tuple(out.shape) == (1, 256, 16 // 8, 64 // 32, 96 // 32)
