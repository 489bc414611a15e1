"""DINO self-distillation loss (Caron et al., *Emerging Properties in Self-Supervised Vision Transformers*,
ICCV 2021, eq. 1 and section 3.1), with centring and a teacher-temperature warm-up."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.engine.distributed import all_reduce_mean

__all__ = ["DINOLoss", "teacher_temp_schedule"]


def teacher_temp_schedule(
    warmup_teacher_temp: float, teacher_temp: float, warmup_epochs: int, n_epochs: int, steps_per_epoch: int = 1
) -> np.ndarray:
    """Teacher temperature per epoch (``steps_per_epoch=1``) or per step: linear warm-up, then constant.

    ``linspace(warmup_teacher_temp, teacher_temp, warmup_epochs * steps_per_epoch)`` followed by ``teacher_temp``
    up to ``n_epochs * steps_per_epoch`` entries (the facebookresearch/dino schedule, per epoch by default).
    """
    n = n_epochs * steps_per_epoch
    n_warm = min(warmup_epochs * steps_per_epoch, n)
    return np.concatenate(
        [np.linspace(warmup_teacher_temp, teacher_temp, n_warm), np.full(n - n_warm, teacher_temp)]
    ).astype(np.float64)


class DINOLoss(nn.Module):
    r"""Cross-entropy between the centred, sharpened teacher and the student, over every pair of different views.

    With :math:`K` = ``out_dim``, :math:`B` images, :math:`V` = ``n_crops`` student views of which the first
    :math:`G` = ``n_global_crops`` are the global views the teacher also sees:

    .. math::

        P_t^{(i)} = \operatorname{softmax}\big((g_t(x_i) - c) / \tau_t\big), \qquad
        \log P_s^{(j)} = \operatorname{log\_softmax}\big(g_s(x_j) / \tau_s\big)

        L = \frac{1}{|\mathcal{P}|} \sum_{(i, j) \in \mathcal{P}}
            \frac{1}{B} \sum_{b=1}^{B} \sum_{k=1}^{K} -P_t^{(i)}[b, k] \, \log P_s^{(j)}[b, k],
        \qquad \mathcal{P} = \{(i, j) : i < G,\ j < V,\ i \ne j\}

    (eq. 1 of the paper, averaged over the :math:`G (V - 1)` pairs). The centre is an EMA of the teacher's
    batch mean (section 3.1), averaged over processes when distributed, and updated *after* the loss:

    .. math::  c \leftarrow m\,c + (1 - m)\,\frac{1}{G B} \sum_{i, b} g_t(x_i)[b]

    The teacher temperature warms linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over
    ``warmup_teacher_temp_epochs`` (see :func:`teacher_temp_schedule`).

    Parameters
    ----------
    out_dim : int
        :math:`K`, the DINO head's output width.
    n_crops : int
        :math:`V`, all student views (global + local).
    warmup_teacher_temp, teacher_temp : float
        Teacher temperature at the start and after warm-up (DINO: 0.04 -> 0.07; lower it if the loss collapses).
    warmup_teacher_temp_epochs : int
        Length of the warm-up, in epochs.
    n_epochs : int
        Length of the schedule, in epochs; later indices use the last value.
    student_temp : float
        :math:`\tau_s` (0.1).
    center_momentum : float
        :math:`m` (0.9).
    n_global_crops : int
        :math:`G` (2): the first ``G`` chunks of the student output are the teacher's views, in the same order.
    steps_per_epoch : int
        1 (default): the schedule is indexed by epoch, as in DINO. > 1: by global step, with the warm-up
        spread over ``warmup_teacher_temp_epochs * steps_per_epoch`` steps.

    Shapes
    ------
    ``student_out``: ``(V * B, K)``, views concatenated view-major (all images of view 0, then view 1, ...);
    ``teacher_out``: ``(G * B, K)``, same order; returns a scalar.
    """

    center: torch.Tensor

    def __init__(
        self,
        out_dim: int,
        n_crops: int,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        n_epochs: int = 100,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        *,
        n_global_crops: int = 2,
        steps_per_epoch: int = 1,
    ) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim: expected >= 1, got {out_dim}")
        if not 1 <= n_global_crops <= n_crops or n_crops < 2:
            raise ValueError(
                f"n_crops={n_crops}, n_global_crops={n_global_crops}: expected 1 <= n_global_crops <= n_crops "
                "and n_crops >= 2 (a pair of different views is needed)"
            )
        for name, t in (("warmup_teacher_temp", warmup_teacher_temp), ("teacher_temp", teacher_temp),
                        ("student_temp", student_temp)):
            if not t > 0:
                raise ValueError(f"{name}: expected > 0, got {t}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum: expected in [0, 1], got {center_momentum}")
        if n_epochs < 1 or steps_per_epoch < 1 or warmup_teacher_temp_epochs < 0:
            raise ValueError(
                f"n_epochs={n_epochs}, steps_per_epoch={steps_per_epoch}, "
                f"warmup_teacher_temp_epochs={warmup_teacher_temp_epochs}: expected >= 1, >= 1, >= 0"
            )
        self.out_dim = out_dim
        self.n_crops = n_crops
        self.n_global_crops = n_global_crops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, n_epochs, steps_per_epoch
        )

    def teacher_temp_at(self, step: int) -> float:
        """Teacher temperature at schedule index ``step`` (epoch or global step; clamped to the last value)."""
        idx = min(max(int(step), 0), len(self.teacher_temp_schedule) - 1)
        return float(self.teacher_temp_schedule[idx])

    def forward(
        self,
        student_out: torch.Tensor,
        teacher_out: torch.Tensor,
        step: int = 0,
        *,
        teacher_temp: float | None = None,
        update_center: bool = True,
    ) -> torch.Tensor:
        """Loss for one batch; then (by default) update the centre with ``teacher_out``.

        ``step`` indexes the temperature schedule (the epoch unless ``steps_per_epoch > 1``);
        ``teacher_temp`` overrides it.
        """
        v, g, k = self.n_crops, self.n_global_crops, self.out_dim
        if student_out.ndim != 2 or student_out.shape[1] != k or student_out.shape[0] % v:
            raise ValueError(
                f"student_out: expected ({v} * B, {k}) for n_crops={v}, out_dim={k}, got {tuple(student_out.shape)}"
            )
        b = student_out.shape[0] // v
        if teacher_out.shape != (g * b, k):
            raise ValueError(
                f"teacher_out: expected ({g} * {b}, {k}) = {(g * b, k)} to match student_out "
                f"{tuple(student_out.shape)}, got {tuple(teacher_out.shape)}"
            )
        temp = self.teacher_temp_at(step) if teacher_temp is None else float(teacher_temp)
        teacher_out = teacher_out.detach()

        with torch.autocast(student_out.device.type, enabled=False):  # float32 even under mixed precision
            log_p_s = F.log_softmax(student_out.float() / self.student_temp, dim=-1).view(v, b, k)
            p_t = F.softmax((teacher_out.float() - self.center) / temp, dim=-1).view(g, b, k)
            # cross[i, j] = mean over images of the cross-entropy H(P_t^(i), P_s^(j))
            cross = -torch.einsum("ibk,jbk->ij", p_t, log_p_s) / b
        pair = torch.ones(g, v, dtype=torch.bool, device=cross.device)
        pair[:, :g].fill_diagonal_(False)
        loss = cross[pair].mean()

        if update_center:
            self.update_center(teacher_out)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """``c <- m c + (1 - m) mean(teacher_out)``, the mean taken over the batch and all processes."""
        batch_center = all_reduce_mean(teacher_out.detach().float().mean(dim=0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
