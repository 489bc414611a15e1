"""DINO-Mix's foundation knowledge distillation loss (FKD; docs/METHOD.md, section 8.1): cosine feature alignment.

The frozen teacher and the student's projector are in :mod:`trainer.models.fkd`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["fkd_loss"]


def fkd_loss(student: torch.Tensor, teacher: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    r"""Cosine feature distillation between projected student and frozen teacher patch features.

    .. math::

        L_{FKD} = \frac{1}{B N} \sum_{b=1}^{B} \sum_{n=1}^{N}
                  \left(1 - \frac{s_{b,n} \cdot t_{b,n}}{\max(\lVert s_{b,n} \rVert, \epsilon)\,
                  \max(\lVert t_{b,n} \rVert, \epsilon)}\right)

    DINO-Mix aligns the student's projected patch features to a frozen DINOv3's with a feature-distillation
    term whose exact form is not public; this is the natural cosine version. It depends only on directions
    (the teacher's feature norms, which differ widely between foundation models, do not set the loss scale),
    and lies in ``[0, 2]``: 0 when every pair points the same way, 1 for orthogonal, 2 for opposite.

    Parameters
    ----------
    student : Tensor, shape (B, N, D)
        Projected student patch features (:class:`FKDProjector` output); gradients flow into them.
    teacher : Tensor, shape (B, N, D)
        Foundation-model patch features at the same token positions; detached here (no gradient).
    eps : float
        Floor on each feature norm (a zero vector gives cosine 0, loss 1, not NaN).

    Returns
    -------
    Tensor, shape ()
        The mean over the ``B * N`` tokens, computed in float32.

    Raises
    ------
    ValueError
        ``student`` and ``teacher`` differ in shape, or are not 3-D.
    """
    if student.ndim != 3 or student.shape != teacher.shape:
        raise ValueError(f"student, teacher: expected two (B, N, D) tensors of one shape, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    s = F.normalize(student.float(), dim=-1, eps=eps)
    t = F.normalize(teacher.detach().float(), dim=-1, eps=eps)
    return (1.0 - (s * t).sum(dim=-1)).mean()
