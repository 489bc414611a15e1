r"""Edge-aware spatial-consistency loss on the predicted lesion probability (``--spatial-weight``).

S^3-Net (Karimijafarbigloo et al., ICCV 2023 workshops; docs/METHOD.md, section 8.4) adds a spatial-consistency term
on its predicted cluster map. In its public code that term is computed from the *argmax* labels, so it carries
no gradient and trains nothing. This is a differentiable version with the same intent: neighbouring pixels of
similar colour should get the same label, while pixels across a colour edge are free to differ (a
bilateral-weighted total-variation term, as in the pairwise part of a dense CRF; Krahenbuhl and Koltun 2011).

It is a regulariser, not an objective of its own: a constant prediction minimises it. The pseudo-mask loss
(and, in S^3-Net, the clustering loss) supplies what the lesion is; this term sharpens the prediction to the
image's edges.
"""
from __future__ import annotations

import torch

__all__ = ["neighbour_weights", "spatial_loss"]


def neighbour_weights(image: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Colour affinities of horizontal and vertical neighbours.

    ``(B, C, H, W) -> ((B, 1, H, W - 1), (B, 1, H - 1, W))`` float32:
    :math:`w_{ij} = \exp(-\lVert I_i - I_j \rVert^2 / (2 \sigma^2))` for ``j`` right of ``i`` and ``j`` below
    ``i``. No gradient flows into the image.
    """
    x = image.detach().float()
    right = (x[..., :, 1:] - x[..., :, :-1]).pow(2).sum(1, keepdim=True)
    down = (x[..., 1:, :] - x[..., :-1, :]).pow(2).sum(1, keepdim=True)
    scale = -1.0 / (2.0 * sigma * sigma)
    return torch.exp(right * scale), torch.exp(down * scale)


def spatial_loss(logits: torch.Tensor, image: torch.Tensor, *, sigma: float = 0.5) -> torch.Tensor:
    r"""Colour-weighted squared difference of the lesion probability between 4-neighbours.

    Parameters
    ----------
    logits : (B, 1, H, W) float
        Decoder logits :math:`z`; :math:`p = \sigma(z)`.
    image : (B, C, H, W) float
        The images the logits are for, at the same size (the ImageNet-normalised views in pretraining).
    sigma : float
        Colour scale :math:`\sigma`, in the image's units. 0.5 in ImageNet-normalised units is about 0.11 of
        the [0, 1] range per channel: skin texture keeps weights near 1, a sharp lesion border (0.3-0.5 per channel)
        drives them to ~0. Lower it if borders are faint, raise it for noisy images.

    Returns
    -------
    Scalar tensor, in [0, 1].

    Notes
    -----
    Over the pairs :math:`i \sim j` of horizontally or vertically adjacent pixels of every image in the batch,

    .. math::

        w_{ij} = \exp\!\Big(-\frac{\lVert I_i - I_j \rVert^2}{2\sigma^2}\Big), \qquad
        L = \frac{\sum_{i \sim j} w_{ij}\,(p_i - p_j)^2}{\max(\sum_{i \sim j} w_{ij}, \delta)}

    The weights are constants (no gradient into the image); the gradient w.r.t. the logits is
    :math:`\partial L / \partial z_i = 2\,p_i (1 - p_i) \sum_{j \sim i} w_{ij} (p_i - p_j) / \sum w`. Squared
    differences of probabilities, not of logits, so that confident, agreeing pixels cost nothing whatever
    their logit values.
    """
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits: expected (B, 1, H, W), got {tuple(logits.shape)}")
    if image.ndim != 4 or image.shape[0] != logits.shape[0] or image.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"image: expected ({logits.shape[0]}, C, {logits.shape[2]}, {logits.shape[3]}) "
                         f"(as the logits), got {tuple(image.shape)}")
    if not sigma > 0:
        raise ValueError(f"sigma: expected > 0, got {sigma}")
    p = torch.sigmoid(logits.float())
    w_right, w_down = neighbour_weights(image, sigma)
    num = (w_right * (p[..., :, 1:] - p[..., :, :-1]).pow(2)).sum() \
        + (w_down * (p[..., 1:, :] - p[..., :-1, :]).pow(2)).sum()
    return num / (w_right.sum() + w_down.sum()).clamp_min(1e-12)
