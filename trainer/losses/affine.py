r"""Rotation (affine) equivariance loss of S^3-Net, as an auxiliary pretraining term (``--affine-weight``).

S^3-Net (Karimijafarbigloo et al., "Self-supervised semantic segmentation: consistency over transformation",
ICCV 2023 workshops; docs/METHOD.md, section 8.4) asks the segmentation of a rotated image to be the rotated
segmentation of the image. A lesion mask has no preferred orientation, so a good segmenter is equivariant to
90-degree rotations; the term needs no label.

How the pretraining step uses it (``trainer.train.objective.train_step``): the student's global views ``x`` (square
crops, ``(B, 3, g, g)``) are rotated by ``k = 1 + step % 3`` quarter turns with :func:`rot90`, the student runs
once more on the rotated views (``segment=True, project=False``: backbone + decoder, no DINO head), and
``affine_loss(f(x), f(rot90(x, k)), k)`` compares the two maps. Both forwards carry gradient.
"""
from __future__ import annotations

import torch

__all__ = ["rot90", "affine_loss"]


def rot90(x: torch.Tensor, k: int) -> torch.Tensor:
    """Rotate ``(..., H, W)`` by ``k`` quarter turns counter-clockwise (``torch.rot90`` on the last two dims).

    The one rotation convention of this module: the step rotates the views with it and :func:`affine_loss`
    rotates the prediction with it, so the two agree.
    """
    return torch.rot90(x, k, dims=(-2, -1))


def affine_loss(logits: torch.Tensor, rotated_logits: torch.Tensor, k: int) -> torch.Tensor:
    r"""Mean squared difference between the prediction on a rotated image and the rotated prediction.

    Parameters
    ----------
    logits : (B, 1, H, W) float
        :math:`f(x)`, decoder logits on the images.
    rotated_logits : (B, 1, H, W) float
        :math:`f(R_k x)`, decoder logits on the images rotated by :func:`rot90` with the same ``k``
        (``H == W`` when ``k`` is odd: square crops).
    k : int
        Quarter turns, in {1, 2, 3} (0 is allowed and compares the two maps unrotated).

    Returns
    -------
    Scalar tensor, in [0, 1].

    Notes
    -----
    With :math:`R_k` the rotation by :math:`k \cdot 90` degrees and :math:`\sigma` the logistic sigmoid:

    .. math::

        L = \frac{1}{B H W} \sum_{b, i} \big(\sigma(f(R_k x))_{b i} - R_k\,\sigma(f(x))_{b i}\big)^2

    A squared error on probabilities rather than a symmetric BCE/KL on logits: it is bounded (a confident
    disagreement costs at most 1, not an unbounded log-loss that could dominate the DINO and pseudo-mask
    terms early in training) and symmetric in the two branches, both of which carry gradient (no stop-gradient:
    neither view is the better-informed one). It is 0 for a rotation-equivariant segmenter, e.g. any
    pointwise map; a ViT with learned position embeddings is not one, which is what the term trains.
    """
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits: expected (B, 1, H, W), got {tuple(logits.shape)}")
    if int(k) != k or not 0 <= k <= 3:
        raise ValueError(f"k: expected a number of quarter turns in {{0, 1, 2, 3}}, got {k!r}")
    k = int(k)
    expected = logits.shape if k % 2 == 0 else (*logits.shape[:2], logits.shape[3], logits.shape[2])
    if tuple(rotated_logits.shape) != tuple(expected):
        raise ValueError(f"rotated_logits: expected {tuple(expected)} (the logits rotated {k} quarter turn(s)), "
                         f"got {tuple(rotated_logits.shape)}")
    target = rot90(torch.sigmoid(logits.float()), k)
    return (torch.sigmoid(rotated_logits.float()) - target).pow(2).mean()
