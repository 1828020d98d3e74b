"""NVNet: the BraTS 2018 winner, a segmentation network regularised by a VAE branch.

Myronenko, "3D MRI brain tumor segmentation using autoencoder regularization",
BrainLes 2018, https://arxiv.org/abs/1810.11654.

The network has three parts that share one encoder:

* :class:`NVNetEncoder`: an initial 3x3x3 convolution (32 filters), spatial dropout 0.2,
  then levels of 1, 2, 2 and 4 residual blocks (:class:`ResBlock`) joined by stride-2
  3x3x3 convolutions that double the channels (32 -> 64 -> 128 -> 256).
* :class:`NVNetDecoder`: per level, a 1x1x1 convolution that halves the channels, x2
  (tri)linear up-sampling, the addition of the encoder's output at that level, and one
  residual block; then a 1x1x1 convolution to the outputs.
* The VAE branch (:class:`VAEBottleneck` followed by a skip-free :class:`NVNetDecoder`)
  compresses the encoder's last output into a 128-dimensional Gaussian, samples it with
  the reparameterisation trick, and reconstructs the input image.

At inference only the encoder and decoder run (:meth:`NVNet.segment`).

NVNet's kernels are isotropic (3x3x3), so it does not care which spatial axis is the
slice axis: a :mod:`mednets.data` volume ``(C, X, Y, Z)`` can be batched as it is.

Example:
    >>> import torch
    >>> net = NVNet(spatial_dims=3, init_filters=8, spatial_size=(32, 32, 32))
    >>> seg, recon, mu, sigma = net(torch.randn(2, 4, 32, 32, 32))
    >>> tuple(seg.shape), tuple(recon.shape), tuple(mu.shape)
    ((2, 3, 32, 32, 32), (2, 4, 32, 32, 32), (2, 128))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mednets.torch.core import CONV, DROPOUT, check_input
from mednets.utils import check_divisible, check_spatial_dims

__all__ = [
    "ResBlock",
    "NVNetEncoder",
    "NVNetDecoder",
    "VAEBottleneck",
    "NVNet",
    "nvnet_paper",
    "reparameterize",
    "upsample",
    "FINAL_ACTIVATIONS",
]

_UPSAMPLE_MODE = {2: "bilinear", 3: "trilinear"}

#: The values of ``final_activation``.
FINAL_ACTIVATIONS = (None, "sigmoid", "softmax")


def _check_groups(channels: int, num_groups: int, what: str) -> None:
    if num_groups < 1 or channels % num_groups:
        raise ValueError(
            f"{what}: GroupNorm needs channels divisible by num_groups; "
            f"got channels={channels}, num_groups={num_groups}"
        )


def upsample(x: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """(Tri)linear up-sampling by ``scale``: ``(B, C, *S) -> (B, C, *(scale * S))``.

    Example:
        >>> upsample(torch.zeros(1, 2, 3, 4, 5)).shape
        torch.Size([1, 2, 6, 8, 10])
    """
    mode = _UPSAMPLE_MODE[x.ndim - 2]
    return F.interpolate(x, scale_factor=scale, mode=mode, align_corners=False)


class ResBlock(nn.Module):
    """Pre-activation residual block: GN-ReLU-conv3-GN-ReLU-conv3, plus the identity.

    The channel count is unchanged (the network changes channels only in its stride-2
    and 1x1x1 convolutions), so the identity needs no projection.
    Shapes: ``(B, C, *S) -> (B, C, *S)``.

    Args:
        spatial_dims: 2 or 3.
        channels: Input and output channels.
        num_groups: GroupNorm groups. Defaults to 8, as in the paper.

    Example:
        >>> ResBlock(3, 16)(torch.zeros(1, 16, 8, 8, 8)).shape
        torch.Size([1, 16, 8, 8, 8])
    """

    def __init__(self, spatial_dims: int, channels: int, num_groups: int = 8):
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
        _check_groups(channels, num_groups, "ResBlock")
        conv = CONV[spatial_dims]
        self.norm1 = nn.GroupNorm(num_groups, channels)
        self.conv1 = conv(channels, channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(num_groups, channels)
        self.conv2 = conv(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No in-place ops: ``x`` is still needed for the identity path.
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        return h + x


class NVNetEncoder(nn.Module):
    """The encoder: initial conv, spatial dropout, and residual levels.

    Level ``i`` works at ``init_filters * 2**i`` channels and ``1 / 2**i`` of the input
    size. ``forward`` returns one feature map per level, finest first, e.g. for the
    paper: ``(B, 32, 160, 192, 128)``, ``(B, 64, 80, 96, 64)``, ``(B, 128, 40, 48, 32)``,
    ``(B, 256, 20, 24, 16)``.

    Args:
        spatial_dims: 2 or 3. Defaults to 3.
        in_channels: Input channels (MRI modalities). Defaults to 4.
        init_filters: Channels of the first level. Defaults to 32.
        stage_blocks: Residual blocks per level. Defaults to (1, 2, 2, 4).
        dropout: Spatial dropout rate after the initial conv (0 or None for none).
            Defaults to 0.2.
        num_groups: GroupNorm groups. Defaults to 8.

    Raises:
        ValueError: At call time, for an input of the wrong rank or channel count.

    Example:
        >>> feats = NVNetEncoder(init_filters=8)(torch.zeros(1, 4, 16, 16, 16))
        >>> [tuple(f.shape[1:]) for f in feats]
        [(8, 16, 16, 16), (16, 8, 8, 8), (32, 4, 4, 4), (64, 2, 2, 2)]
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        init_filters: int = 32,
        stage_blocks: Sequence[int] = (1, 2, 2, 4),
        dropout: float | None = 0.2,
        num_groups: int = 8,
    ):
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
        if in_channels < 1:
            raise ValueError(f"NVNetEncoder: expected in_channels >= 1, got {in_channels}")
        if len(stage_blocks) < 1 or any(int(b) < 1 for b in stage_blocks):
            raise ValueError(
                f"NVNetEncoder: expected >= 1 block per level, got stage_blocks={tuple(stage_blocks)}"
            )
        conv = CONV[spatial_dims]
        self.spatial_dims, self.in_channels = spatial_dims, int(in_channels)
        self.out_channels = [init_filters * 2**i for i in range(len(stage_blocks))]
        self.init_conv = conv(in_channels, init_filters, kernel_size=3, padding=1)
        self.dropout = DROPOUT[spatial_dims](dropout) if dropout else nn.Identity()
        self.downs = nn.ModuleList()
        self.levels = nn.ModuleList()
        for i, (ch, n) in enumerate(zip(self.out_channels, stage_blocks)):
            # Level 0 starts right after the initial conv; deeper levels begin with a
            # stride-2 conv that halves the size and doubles the channels.
            down = nn.Identity() if i == 0 else conv(ch // 2, ch, kernel_size=3, stride=2, padding=1)
            self.downs.append(down)
            self.levels.append(
                nn.Sequential(*[ResBlock(spatial_dims, ch, num_groups) for _ in range(int(n))])
            )

    @property
    def downsampling(self) -> int:
        """The total stride, ``2 ** (levels - 1)`` (8 in the paper)."""
        return 2 ** (len(self.levels) - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C_in, *S)`` -> one feature map per level, finest first."""
        check_input(x, self.spatial_dims, self.in_channels, what="NVNetEncoder")
        h = self.dropout(self.init_conv(x))  # (B, F, *S)
        feats = []
        for down, level in zip(self.downs, self.levels):
            h = level(down(h))  # (B, F * 2**i, *S / 2**i)
            feats.append(h)
        return feats


class NVNetDecoder(nn.Module):
    """The decoder: per level 1x1x1 conv (halve channels), x2 up-sampling, + skip, block.

    The segmentation decoder adds the encoder's features (``skips=True``). The VAE's
    decoder has the same stages without skips (``skips=False``) and reconstructs the
    input channels. Shapes: ``(B, C_bottom, *S) -> (B, out_channels, *(S * 2**levels))``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Channels at the bottom (256 in the paper).
        out_channels: Channels of the final 1x1x1 conv (3 regions, or 4 modalities).
        levels: Number of x2 up-sampling stages. Defaults to 3.
        skips: Add the encoder features of each level. Defaults to True.
        num_groups: GroupNorm groups. Defaults to 8.

    Example:
        >>> dec = NVNetDecoder(3, 64, 3)
        >>> feats = NVNetEncoder(init_filters=8)(torch.zeros(1, 4, 16, 16, 16))
        >>> dec(feats).shape
        torch.Size([1, 3, 16, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        levels: int = 3,
        skips: bool = True,
        num_groups: int = 8,
    ):
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
        if in_channels % 2**levels:
            raise ValueError(
                f"NVNetDecoder: in_channels must be divisible by 2**levels={2**levels}, got {in_channels}"
            )
        conv = CONV[spatial_dims]
        self.skips = skips
        self.reduce = nn.ModuleList()
        self.blocks = nn.ModuleList()
        ch = in_channels
        for _ in range(levels):
            self.reduce.append(conv(ch, ch // 2, kernel_size=1))
            ch //= 2
            self.blocks.append(ResBlock(spatial_dims, ch, num_groups))
        self.final = conv(ch, out_channels, kernel_size=1)

    def forward(self, features: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode. With skips, ``features`` is the encoder's list (finest first);
        without, a single bottom tensor."""
        if self.skips:
            if isinstance(features, torch.Tensor) or len(features) != len(self.blocks) + 1:
                got = "a tensor" if isinstance(features, torch.Tensor) else f"{len(features)} maps"
                raise ValueError(
                    f"NVNetDecoder with skips expects {len(self.blocks) + 1} encoder feature maps, got {got}"
                )
            h, skip_feats = features[-1], list(features[:-1])[::-1]  # deepest skip first
        else:
            h, skip_feats = features, [None] * len(self.blocks)
        for reduce, block, skip in zip(self.reduce, self.blocks, skip_feats):
            h = upsample(reduce(h))  # (B, C/2, 2S)
            if skip is not None:
                if skip.shape != h.shape:
                    raise ValueError(
                        f"NVNetDecoder: an encoder feature map of shape {tuple(skip.shape)} does not match "
                        f"the up-sampled {tuple(h.shape)}; the input's spatial sizes must be divisible by "
                        f"2**{len(self.blocks)}"
                    )
                h = h + skip
            h = block(h)
        return self.final(h)


def reparameterize(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Draw ``z = mu + sigma * eps`` with ``eps ~ N(0, I)``.

    Unlike ``torch.distributions.Normal(mu, sigma).sample()``, which runs under
    ``no_grad``, gradients flow to ``mu`` and ``sigma``; it equals ``Normal.rsample()``.
    """
    return mu + sigma * torch.randn_like(sigma)


class VAEBottleneck(nn.Module):
    """The VAE's bottleneck: features -> (mu, sigma) -> sample -> features again.

    ``GN-ReLU-conv3(16, stride 2)``, flatten, a dense layer to ``2 * latent_dim``
    (means, and standard deviations made positive with softplus), a reparameterised
    sample, a dense layer back to ``16 x S/2``, ReLU, a 1x1x1 conv to ``in_channels``
    and x2 up-sampling. Shapes: ``(B, C, *S) -> (B, C, *S), (B, latent), (B, latent)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Channels of the encoder's last output (256 in the paper).
        bottom_shape: Spatial size ``S`` of that output, each even (20, 24, 16 in the paper).
        latent_dim: Size of the latent Gaussian. Defaults to 128.
        mid_channels: Channels of the stride-2 conv. Defaults to 16.
        num_groups: GroupNorm groups. Defaults to 8.
        min_sigma: Added to the softplus so ``log sigma`` stays finite. Defaults to 1e-6.

    In training mode the latent is sampled; in eval mode ``z = mu`` (the mean
    reconstruction), so evaluation is deterministic.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        bottom_shape: Sequence[int],
        latent_dim: int = 128,
        mid_channels: int = 16,
        num_groups: int = 8,
        min_sigma: float = 1e-6,
    ):
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
        _check_groups(in_channels, num_groups, "VAEBottleneck")
        if len(bottom_shape) != spatial_dims or any(int(s) < 2 or int(s) % 2 for s in bottom_shape):
            raise ValueError(
                f"VAEBottleneck: expected {spatial_dims} even sizes >= 2 for bottom_shape, "
                f"got {tuple(bottom_shape)}"
            )
        conv = CONV[spatial_dims]
        self.latent_dim = latent_dim
        self.mid_channels = mid_channels
        self.reduced_shape = tuple(int(s) // 2 for s in bottom_shape)  # (10, 12, 8) in the paper
        flat = mid_channels * math.prod(self.reduced_shape)  # 15,360 in the paper
        self.min_sigma = min_sigma
        self.norm = nn.GroupNorm(num_groups, in_channels)
        self.conv_down = conv(in_channels, mid_channels, kernel_size=3, stride=2, padding=1)
        self.to_latent = nn.Linear(flat, 2 * latent_dim)  # 128 means + 128 stds
        self.from_latent = nn.Linear(latent_dim, flat)
        self.conv_up = conv(mid_channels, in_channels, kernel_size=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, *S) -> mu, sigma``, each ``(B, latent_dim)`` with ``sigma > 0``.

        Raises:
            ValueError: If ``S`` is not ``bottom_shape`` (the dense layer's size).
        """
        bottom_shape = tuple(2 * s for s in self.reduced_shape)
        check_input(x, len(bottom_shape), self.norm.num_channels, what="VAEBottleneck")
        if tuple(x.shape[2:]) != bottom_shape:
            raise ValueError(
                f"VAEBottleneck: its dense layer is sized for features (B, {self.norm.num_channels}, "
                f"{', '.join(map(str, bottom_shape))}), got shape {tuple(x.shape)}"
            )
        h = self.conv_down(F.relu(self.norm(x)))  # (B, 16, *S/2)
        stats = self.to_latent(h.flatten(1))  # (B, 2 * latent); any batch size
        mu, raw = stats.chunk(2, dim=1)
        sigma = F.softplus(raw) + self.min_sigma  # a standard deviation must be > 0
        return mu, sigma

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent_dim) -> (B, C, *S)``."""
        h = F.relu(self.from_latent(z))
        h = h.view(z.shape[0], self.mid_channels, *self.reduced_shape)  # (B, 16, *S/2)
        return upsample(self.conv_up(h))  # (B, C, *S)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, sigma = self.encode(x)
        z = reparameterize(mu, sigma) if self.training else mu
        return self.decode(z), mu, sigma


class NVNet(nn.Module):
    """Myronenko's BraTS 2018 network: encoder, segmentation decoder and VAE branch.

    Paper: https://arxiv.org/abs/1810.11654. The default arguments give the paper's
    configuration (4 modalities in, 3 nested regions out, 32 initial filters, crops of
    160x192x128).

    ``forward(x)``: ``(B, in_channels, *spatial_size)`` ->

    * with ``vae=True``: ``(seg, recon, mu, sigma)``: ``seg`` ``(B, out_channels, *S)``
      after ``final_activation`` (sigmoid probabilities by default), ``recon``
      ``(B, in_channels, *S)``, ``mu`` and ``sigma`` ``(B, latent_dim)``;
    * with ``vae=False``: ``seg`` only.

    The VAE's dense layers are sized from ``spatial_size``, so with ``vae=True`` the
    input must have exactly that size; with ``vae=False`` any size divisible by 8 works.
    :meth:`segment` runs only the encoder and decoder, for inference at any divisible
    size. Both check the input when called and raise a ``ValueError`` naming its shape
    and the nearest valid sizes.

    Args:
        spatial_dims: 3 (``(B, C, D, H, W)``) or 2 (``(B, C, H, W)``). Defaults to 3.
        in_channels: Input channels (modalities). Defaults to 4.
        out_channels: Output channels (whole tumour, tumour core, enhancing tumour
            here; the paper lists ET, TC, WT). Defaults to 3.
        init_filters: Filters of the first level. Defaults to 32.
        spatial_size: Spatial size of the training crops (no channels), needed by the
            VAE; ``spatial_dims`` entries, each divisible by 16 with the VAE (8
            without). None (only with ``vae=False``) accepts any divisible size.
            Defaults to (160, 192, 128).
        vae: Build the VAE branch. Defaults to True.
        stage_blocks: Residual blocks per encoder level. Defaults to (1, 2, 2, 4).
        dropout: Spatial dropout after the initial conv. Defaults to 0.2.
        num_groups: GroupNorm groups. Defaults to 8.
        latent_dim: VAE latent size. Defaults to 128.
        final_activation: "sigmoid" (the paper: nested regions, one probability per
            channel), "softmax" (over the channels) or None (logits). Defaults to
            "sigmoid".

    Raises:
        ValueError: For a ``spatial_size`` whose length is not ``spatial_dims`` or whose
            sizes are not divisible, ``vae=True`` without ``spatial_size``, an unknown
            ``final_activation``, or ``init_filters`` not divisible by ``num_groups``.

    Example:
        >>> net = NVNet(spatial_dims=3, init_filters=8, spatial_size=None, vae=False)
        >>> net(torch.zeros(1, 4, 48, 40, 32)).shape
        torch.Size([1, 3, 48, 40, 32])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        out_channels: int = 3,
        init_filters: int = 32,
        spatial_size: Sequence[int] | None = (160, 192, 128),
        vae: bool = True,
        stage_blocks: Sequence[int] = (1, 2, 2, 4),
        dropout: float | None = 0.2,
        num_groups: int = 8,
        latent_dim: int = 128,
        final_activation: str | None = "sigmoid",
    ):
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
        if spatial_size is None:
            if vae:
                raise ValueError("NVNet: vae=True needs spatial_size (the training crop size), got None")
        else:
            spatial_size = tuple(int(s) for s in spatial_size)
            if len(spatial_size) != spatial_dims:
                raise ValueError(
                    f"NVNet: spatial_size must have spatial_dims={spatial_dims} sizes, got {spatial_size}"
                )
        if final_activation not in FINAL_ACTIVATIONS:
            raise ValueError(
                f"NVNet: final_activation must be one of {FINAL_ACTIVATIONS}, got {final_activation!r}"
            )
        _check_groups(init_filters, num_groups, "NVNet init_filters")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.spatial_size = spatial_size
        self.spatial_dims = spatial_dims
        self.use_vae = bool(vae)
        self.final_activation = final_activation
        self.encoder = NVNetEncoder(
            spatial_dims, in_channels, init_filters, stage_blocks, dropout, num_groups
        )

        def decoder(channels_out: int, skips: bool) -> NVNetDecoder:
            bottom = self.encoder.out_channels[-1]
            levels = len(stage_blocks) - 1
            return NVNetDecoder(spatial_dims, bottom, channels_out, levels, skips, num_groups)

        self.decoder = decoder(out_channels, skips=True)
        if spatial_size is not None:
            check_divisible(spatial_size, self.divisor, what="NVNet spatial_size")
        if self.use_vae:
            bottom = tuple(s // self.encoder.downsampling for s in spatial_size)
            self.vae_bottleneck = VAEBottleneck(
                spatial_dims,
                self.encoder.out_channels[-1],
                bottom,
                latent_dim=latent_dim,
                num_groups=num_groups,
            )
            self.vae_decoder = decoder(in_channels, skips=False)  # reconstructs the input

    @property
    def divisor(self) -> int:
        """Every input size must be a multiple of this: 8 for the segmentation path,
        16 with the VAE (its extra stride-2 conv)."""
        return self.encoder.downsampling * (2 if self.use_vae else 1)

    def _check_input(self, x: torch.Tensor, exact: bool) -> None:
        if exact and tuple(x.shape[2:]) != self.spatial_size:
            check_input(x, self.spatial_dims, self.in_channels, what="NVNet")  # rank and channels first
            expected = (self.in_channels, *self.spatial_size)
            raise ValueError(
                f"NVNet with vae=True expects input (B, {', '.join(map(str, expected))}) "
                f"because its dense layers are sized for spatial_size={self.spatial_size}; "
                f"got shape {tuple(x.shape)}. Crop to {self.spatial_size}, or use segment() "
                f"/ vae=False for other sizes."
            )
        check_input(x, self.spatial_dims, self.in_channels, divisor=self.encoder.downsampling, what="NVNet")

    def _head(self, logits: torch.Tensor) -> torch.Tensor:
        if self.final_activation == "sigmoid":
            return torch.sigmoid(logits)
        if self.final_activation == "softmax":
            return torch.softmax(logits, dim=1)
        return logits

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder and decoder only: ``(B, C_in, *S) -> (B, C_out, *S)`` for any ``S``
        divisible by 8. This is the network used at inference."""
        self._check_input(x, exact=False)
        return self._head(self.decoder(self.encoder(x)))

    def forward(
        self, x: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, C_in, *S)`` -> ``seg``, or ``(seg, recon, mu, sigma)`` with the VAE."""
        self._check_input(x, exact=self.use_vae)
        feats = self.encoder(x)  # finest first; feats[-1] is (B, 8F, *S/8)
        seg = self._head(self.decoder(feats))
        if not self.use_vae:
            return seg
        h, mu, sigma = self.vae_bottleneck(feats[-1])  # (B, 8F, *S/8), (B, 128), (B, 128)
        recon = self.vae_decoder(h)  # (B, C_in, *S), no skips
        return seg, recon, mu, sigma


def nvnet_paper(**kwargs: Any) -> NVNet:
    """The paper's configuration: 4 -> 3 channels, 32 filters, 160x192x128 crops, VAE on.

    Keyword arguments override the defaults (see :class:`NVNet`). It has 26,037,847
    parameters (pinned in the tests).

    Example:
        >>> with torch.device("meta"):
        ...     net = nvnet_paper(vae=False)
        >>> net.spatial_size, net.final_activation
        ((160, 192, 128), 'sigmoid')
    """
    config = dict(
        spatial_dims=3, in_channels=4, out_channels=3, init_filters=32, spatial_size=(160, 192, 128), vae=True
    )
    config.update(kwargs)
    return NVNet(**config)
