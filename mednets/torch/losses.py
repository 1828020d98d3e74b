"""Losses of Myronenko's BraTS 2018 network: soft Dice, L2 reconstruction and KL.

Paper: https://arxiv.org/abs/1810.11654 (Section 2.3). The total is

    L = L_dice + 0.1 * L_L2 + 0.1 * L_KL

* ``L_dice``: one minus the soft Dice ``2 sum(p t) / (sum p^2 + sum t^2)``, with
  squared terms in the denominator, per output channel (region);
* ``L_L2``: the squared error between the input image and the VAE reconstruction;
* ``L_KL``: the KL divergence between the latent ``N(mu, sigma^2)`` and ``N(0, I)``.

**What each loss takes.** :func:`soft_dice_loss` (and the Dice term of
:func:`nvnet_loss`) takes *probabilities* in [0, 1] (after the sigmoid, NVNet's default
``final_activation``) and binary *masks* as targets; logits or label maps would give a
silently wrong number, so values outside [0, 1] and non-binary targets raise a
``ValueError``. :func:`l2_loss` takes the image and its reconstruction (any real values);
:func:`kl_loss` takes means and strictly positive standard deviations (not log-variances).

Example:
    >>> import torch
    >>> p = torch.ones(1, 3, 4, 4, 4)
    >>> round(float(soft_dice_loss(p, p)), 6)
    0.0
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["soft_dice_loss", "l2_loss", "kl_loss", "nvnet_loss", "NVNetLoss"]


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{what}: expected prediction and target of the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _check_probabilities_and_masks(pred: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if not pred.is_floating_point():
        raise ValueError(f"{what}: expected floating probabilities in [0, 1], got dtype {pred.dtype}")
    lo, hi = float(pred.detach().min()), float(pred.detach().max())
    if lo < 0 or hi > 1:
        raise ValueError(
            f"{what}: expected probabilities in [0, 1] (after the sigmoid or softmax), got values in "
            f"[{lo:.4g}, {hi:.4g}]; for logits, apply torch.sigmoid first (NVNet: final_activation='sigmoid')"
        )
    if target.dtype != torch.bool:
        values = torch.unique(target.detach())
        if bool(((values != 0) & (values != 1)).any()):
            shown = ", ".join(f"{v:.4g}" for v in values[:6].tolist())
            raise ValueError(
                f"{what}: expected binary masks (0/1) as the target, one channel per region, got values "
                f"[{shown}{', ...' if len(values) > 6 else ''}]; turn a label map into region masks first "
                f"(mednets.data.brats_regions) and threshold soft targets"
            )


def soft_dice_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    smooth: float = 1e-5,
    batch: bool = False,
) -> torch.Tensor:
    """Soft Dice loss with squared terms in the denominator (Milletari et al.; Myronenko).

    ``1 - mean_c (2 sum(p t) + s) / (sum p^2 + sum t^2 + s)``, the sums running over
    the spatial axes (and the batch, with ``batch=True``), the mean over samples and
    channels. The smoothing ``s`` in the numerator too makes an empty target predicted
    as empty score a Dice of 1 (loss 0) rather than 0.

    Args:
        pred: Probabilities ``(B, C, *S)`` in [0, 1] (after the sigmoid), not logits.
        target: Binary masks, same shape (bool, or int or float holding only 0 and 1).
        smooth: The paper's small epsilon. Defaults to 1e-5.
        batch: Sum over the batch before dividing ("batch Dice"); with batch size 1,
            as in the paper, both are the same. Defaults to False.

    Returns:
        A scalar tensor in [0, 1].

    Raises:
        ValueError: If the shapes differ, ``pred`` has fewer than 3 axes, is not floating
            or has values outside [0, 1] (logits), or ``target`` holds values other than
            0 and 1 (a label map, soft labels); the message names the values found.

    Example:
        >>> t = torch.zeros(1, 1, 4, 4); t[..., :2, :] = 1
        >>> round(float(soft_dice_loss(torch.zeros_like(t), t)), 4)
        1.0
    """
    _check_same_shape(pred, target, "soft_dice_loss")
    if pred.ndim < 3:
        raise ValueError(f"soft_dice_loss: expected (B, C, *spatial), got shape {tuple(pred.shape)}")
    _check_probabilities_and_masks(pred, target, "soft_dice_loss")
    target = target.to(pred.dtype)
    dims = tuple(range(2, pred.ndim))
    if batch:
        dims = (0,) + dims
    inter = (pred * target).sum(dims)
    denom = (pred * pred).sum(dims) + (target * target).sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    return 1 - dice.mean()


def l2_loss(recon: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Reconstruction loss: the mean squared error between reconstruction and input.

    The paper writes the squared L2 norm ``||I_input - I_pred||^2``; we divide it by the
    number of elements so that its weight (0.1) does not depend on the crop size.

    Args:
        recon: VAE output ``(B, C, *S)``, any real values.
        image: The network's input, same shape.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: If the shapes differ.

    Example:
        >>> float(l2_loss(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)))
        1.0
    """
    _check_same_shape(recon, image, "l2_loss")
    return F.mse_loss(recon, image)


def kl_loss(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of ``N(mu, sigma^2)`` from ``N(0, I)``, averaged over the latent.

    ``mean(mu^2 + sigma^2 - log sigma^2 - 1) / 2``: the exact KL of one latent
    coordinate, averaged over coordinates and samples (the paper divides the sum by the
    number of image voxels instead; both only rescale the term).

    Args:
        mu: Means ``(B, latent)``.
        sigma: Standard deviations, same shape, strictly positive (not log-variances).

    Returns:
        A scalar tensor, 0 exactly when ``mu = 0`` and ``sigma = 1``.

    Raises:
        ValueError: If the shapes differ or some ``sigma <= 0``.

    Example:
        >>> float(kl_loss(torch.zeros(2, 8), torch.ones(2, 8)))
        0.0
    """
    _check_same_shape(mu, sigma, "kl_loss")
    if bool((sigma <= 0).any()):
        raise ValueError(f"kl_loss: expected sigma > 0 (a standard deviation), got min {float(sigma.min())}")
    var = sigma * sigma
    return 0.5 * (mu * mu + var - torch.log(var) - 1).mean()


def nvnet_loss(
    output: torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor],
    target: torch.Tensor,
    image: torch.Tensor | None = None,
    w_l2: float = 0.1,
    w_kl: float = 0.1,
    smooth: float = 1e-5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The paper's total loss ``dice + 0.1 * L2 + 0.1 * KL``, with its parts for logging.

    Args:
        output: The network's output: ``(seg, recon, mu, sigma)`` from an NVNet with
            the VAE on, or ``seg`` alone (then only the Dice term is used). ``seg``
            holds probabilities (NVNet's default ``final_activation="sigmoid"``).
        target: Binary region masks ``(B, C_out, *S)``.
        image: The input image ``(B, C_in, *S)``, needed with the VAE. Defaults to None.
        w_l2: Weight of the L2 term. Defaults to 0.1.
        w_kl: Weight of the KL term. Defaults to 0.1.
        smooth: Dice smoothing. Defaults to 1e-5.

    Returns:
        ``(loss, {"dice": ..., "l2": ..., "kl": ...})``; the parts are floats (absent
        terms are left out).

    Raises:
        ValueError: If the VAE outputs are given without ``image``, or any part gets
            input it does not take (see :func:`soft_dice_loss`, :func:`kl_loss`).

    Example:
        >>> seg = torch.ones(1, 3, 4, 4, 4)
        >>> loss, parts = nvnet_loss((seg, torch.zeros(1, 4, 4, 4, 4), torch.zeros(1, 8),
        ...                           torch.ones(1, 8)), seg, torch.zeros(1, 4, 4, 4, 4))
        >>> round(float(loss), 6), sorted(parts)
        (0.0, ['dice', 'kl', 'l2'])
    """
    if isinstance(output, (tuple, list)):
        if len(output) != 4:
            raise ValueError(f"nvnet_loss: expected output (seg, recon, mu, sigma), got {len(output)} items")
        seg, recon, mu, sigma = output
        if image is None:
            raise ValueError(
                "nvnet_loss: the VAE outputs need the input image for the L2 term, got image=None"
            )
    else:
        seg, recon, mu, sigma = output, None, None, None
    dice = soft_dice_loss(seg, target, smooth=smooth)
    parts = {"dice": float(dice.detach())}
    total = dice
    if recon is not None:
        l2 = l2_loss(recon, image)
        kl = kl_loss(mu, sigma)
        total = total + w_l2 * l2 + w_kl * kl
        parts.update(l2=float(l2.detach()), kl=float(kl.detach()))
    return total, parts


class NVNetLoss:
    """``nvnet_loss`` in the ``loss_fn(output, target)`` form that :func:`mednets.torch.train.fit` calls.

    The input image travels in the target: each batch is ``(x, (regions, x))``, or just
    ``(x, regions)`` for a network without the VAE.

    Args:
        w_l2: Weight of the L2 term. Defaults to 0.1.
        w_kl: Weight of the KL term. Defaults to 0.1.

    Example:
        >>> seg = torch.ones(1, 3, 4, 4, 4)
        >>> loss, parts = NVNetLoss()(seg, seg)
        >>> float(loss), sorted(parts)
        (0.0, ['dice'])
    """

    def __init__(self, w_l2: float = 0.1, w_kl: float = 0.1):
        self.w_l2 = w_l2
        self.w_kl = w_kl

    def __call__(
        self,
        output: torch.Tensor | tuple[torch.Tensor, ...],
        target: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``nvnet_loss(output, regions, image)`` with ``target = (regions, image)`` or ``regions``."""
        if isinstance(target, (tuple, list)):
            regions, image = target
        else:
            regions, image = target, None
        return nvnet_loss(output, regions, image, w_l2=self.w_l2, w_kl=self.w_kl)
