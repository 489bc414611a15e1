"""Auxiliary segmentation loss: BCE-with-logits + soft Dice against the pseudo-mask, with the walker's
uncertain band ignored or down-weighted and per-sample weights (0 for samples flagged ``no_lesion``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegLoss", "seg_loss", "pixel_weights"]


def _as_bchw(name: str, x: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name}: expected (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
    if like is not None and x.shape != like.shape:
        raise ValueError(f"{name}: expected shape {tuple(like.shape)} (as the logits), got {tuple(x.shape)}")
    return x


def _unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> [0, 1]; bool -> {0, 1}; floats unchanged (as float32)."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x.float()


def pixel_weights(
    prob: torch.Tensor | None,
    shape: torch.Size,
    *,
    band: tuple[float, float] = (0.1, 0.9),
    band_weight: float = 0.0,
    sample_weight: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Per-pixel weights ``(B, 1, H, W)`` float32: ``sample_weight[b] * (band_weight if lo < prob < hi else 1)``."""
    b = shape[0]
    w = torch.ones(shape, device=device, dtype=torch.float32)
    if prob is not None:
        lo, hi = band
        p = _unit_float(prob)
        w = torch.where((p > lo) & (p < hi), torch.full_like(w, float(band_weight)), w)
    if sample_weight is not None:
        sw = torch.as_tensor(sample_weight, device=w.device, dtype=torch.float32).reshape(-1)
        if sw.numel() != b:
            raise ValueError(f"sample_weight: expected {b} values (one per sample), got {sw.numel()}")
        if (sw < 0).any():
            raise ValueError("sample_weight: expected values >= 0")
        w = w * sw.view(b, 1, 1, 1)
    return w


def seg_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    prob: torch.Tensor | None = None,
    *,
    band: tuple[float, float] = (0.1, 0.9),
    band_weight: float = 0.0,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    sample_weight: torch.Tensor | None = None,
    smooth: float = 1.0,
) -> torch.Tensor:
    r"""BCE-with-logits + soft Dice between decoder logits and a pseudo-mask, with per-pixel weights.

    Parameters
    ----------
    logits : (B, 1, H, W) or (B, H, W) float
        Decoder output :math:`z` (before the sigmoid).
    target : same shape, uint8/bool/float in {0, 1}
        Pseudo-mask :math:`y` (uint8 0/1 as stored in the shards; float soft targets in [0, 1] also work).
    prob : same shape, optional
        Walker foreground probability (uint8 ``p * 255`` as stored in the shards, or float in [0, 1]).
        Pixels with ``lo < prob < hi`` (``band``) get weight ``band_weight``.
    band : (float, float)
        The uncertain band (open interval), in probability units.
    band_weight : float
        Weight of uncertain pixels: 0 ignores them (they change nothing), 0 < w < 1 down-weights them.
    bce_weight, dice_weight : float
        :math:`\alpha`, :math:`\beta` below.
    sample_weight : (B,) float, optional
        :math:`s_b \ge 0`; 0 for samples flagged ``no_lesion`` (they then contribute nothing, to value or grad).
    smooth : float
        :math:`\epsilon` of the soft Dice (keeps empty masks finite).

    Returns
    -------
    Scalar tensor.

    Notes
    -----
    With :math:`w_{bp} = s_b \cdot (\text{band\_weight if } lo < prob_{bp} < hi \text{ else } 1)` and
    :math:`\hat y = \sigma(z)`:

    .. math::

        L_{BCE} = \frac{\sum_{b,p} w_{bp}\,\mathrm{bce}(z_{bp}, y_{bp})}{\max(\sum_{b,p} w_{bp}, \delta)},
        \quad \mathrm{bce}(z, y) = \max(z, 0) - z y + \log(1 + e^{-|z|})

        D_b = \frac{2 \sum_p w_{bp} \hat y_{bp} y_{bp} + \epsilon}
                   {\sum_p w_{bp} \hat y_{bp} + \sum_p w_{bp} y_{bp} + \epsilon}, \qquad
        L_{Dice} = \frac{\sum_b s_b (1 - D_b)}{\max(\sum_b s_b, \delta)}

        L = \alpha L_{BCE} + \beta L_{Dice}

    (BCE: a pixel mean over the whole batch; Dice: per image, then a weighted mean over images, the usual
    choice for lesion masks of very different sizes; Milletari et al. 2016, V-Net, for the soft Dice.)
    A batch whose weights are all 0 gives 0 with a zero gradient.
    """
    logits = _as_bchw("logits", logits)
    target = _as_bchw("target", target, logits)
    if target.dtype == torch.uint8 and target.numel() and int(target.max()) > 1:
        raise ValueError(
            f"target: uint8 pseudo-masks are 0/1 (shard contract), found max {int(target.max())}; pass mask > 0"
        )
    target = target.float()
    if prob is not None:
        prob = _as_bchw("prob", prob, logits)
    lo, hi = band
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"band: expected 0 <= lo <= hi <= 1, got {band}")
    if band_weight < 0:
        raise ValueError(f"band_weight: expected >= 0, got {band_weight}")
    w = pixel_weights(prob, logits.shape, band=band, band_weight=band_weight, sample_weight=sample_weight,
                      device=logits.device)
    b = logits.shape[0]
    delta = 1e-12
    z = logits.float()

    bce = F.binary_cross_entropy_with_logits(z, target, reduction="none")
    loss_bce = (w * bce).sum() / w.sum().clamp_min(delta)

    y_hat = torch.sigmoid(z)
    wf = w.view(b, -1)
    inter = (wf * y_hat.view(b, -1) * target.view(b, -1)).sum(1)
    denom = (wf * y_hat.view(b, -1)).sum(1) + (wf * target.view(b, -1)).sum(1)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    if sample_weight is None:
        s = torch.ones(b, device=z.device)
    else:
        s = torch.as_tensor(sample_weight, device=z.device, dtype=torch.float32).reshape(-1)
    loss_dice = (s * (1.0 - dice)).sum() / s.sum().clamp_min(delta)

    return bce_weight * loss_bce + dice_weight * loss_dice


class SegLoss(nn.Module):
    """:func:`seg_loss` with its options fixed at construction (see there for the formula)."""

    def __init__(
        self,
        *,
        band: tuple[float, float] = (0.1, 0.9),
        band_weight: float = 0.0,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        lo, hi = band
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"band: expected 0 <= lo <= hi <= 1, got {band}")
        if band_weight < 0 or bce_weight < 0 or dice_weight < 0:
            raise ValueError(
                f"band_weight={band_weight}, bce_weight={bce_weight}, dice_weight={dice_weight}: expected >= 0"
            )
        self.band = (float(lo), float(hi))
        self.band_weight = float(band_weight)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        prob: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return seg_loss(
            logits, target, prob, band=self.band, band_weight=self.band_weight, bce_weight=self.bce_weight,
            dice_weight=self.dice_weight, sample_weight=sample_weight, smooth=self.smooth,
        )

    def extra_repr(self) -> str:
        return (f"band={self.band}, band_weight={self.band_weight}, bce_weight={self.bce_weight}, "
                f"dice_weight={self.dice_weight}, smooth={self.smooth}")
