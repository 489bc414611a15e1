"""KoLeo spreading term: the Kozachenko-Leonenko differential-entropy estimator as a loss.

Sablayrolles et al., *Spreading vectors for similarity search* (ICLR 2019, eq. 3), used as a regulariser of the
class token by DINOv2 (Oquab et al. 2023, section 4, weight 0.1). For a batch of vectors :math:`x_1..x_n`,
L2-normalised to :math:`\\hat x_i`, with :math:`\\rho_i = \\min_{j \\ne i} \\lVert \\hat x_i - \\hat x_j \\rVert`
the distance to the nearest other vector:

.. math::  L_{KoLeo} = -\\frac{1}{n} \\sum_{i=1}^{n} \\ln(\\rho_i + \\varepsilon)

Minimising it pushes each vector away from its nearest neighbour, so the batch spreads over the sphere; a
representation that maps every image to the same point (the root of DINO's uniform collapse) costs
:math:`-\\ln 2\\varepsilon`. (The distance is taken as :math:`\\sqrt{\\rho_i^2 + \\varepsilon^2}` so its
gradient stays finite when two vectors coincide.) In pretraining (ours) it acts on the student's DINO head output
of each global view, normalised here (the head is a weight-normed linear map of the normalised bottleneck, so
spreading its output spreads the bottleneck): ``koleo_weight * mean over global views of L_KoLeo``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["koleo_loss"]


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(n, D) -> ()``: ``-mean_i ln(sqrt(rho_i^2 + eps^2) + eps)``, ``rho_i`` the distance from ``x_i/|x_i|`` to
    the nearest other normalised row; needs ``n >= 2``."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x: expected (n >= 2, D), got {tuple(x.shape)}")
    z = F.normalize(x.float(), dim=-1, eps=1e-12)
    # squared distances from the Gram matrix; the diagonal is masked out before the minimum
    sq = (2.0 - 2.0 * z @ z.t()).clamp_min(0.0)
    sq = sq + torch.diag(torch.full((z.shape[0],), float("inf"), device=z.device))
    nearest = sq.min(dim=1).values
    return -torch.log(torch.sqrt(nearest + eps * eps) + eps).mean()
