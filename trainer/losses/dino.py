"""DINO self-distillation loss (Caron et al., *Emerging Properties in Self-Supervised Vision Transformers*,
ICCV 2021, eq. 1 and section 3.1), with centring and a teacher-temperature warm-up, or Sinkhorn-Knopp
centring (as in DINOv2) instead of the centre; each call leaves the collapse monitor's numbers in ``last_stats``."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.engine.distributed import all_reduce_mean
from trainer.losses.collapse import CollapseStats, collapse_stats

__all__ = ["DINOLoss", "teacher_temp_schedule", "sinkhorn_knopp", "CENTERINGS"]

CENTERINGS = ("centre", "sinkhorn")


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


@torch.no_grad()
def sinkhorn_knopp(teacher_out: torch.Tensor, temp: float, n_iters: int = 3) -> torch.Tensor:
    r"""Teacher targets by Sinkhorn-Knopp: rows of ``exp(teacher_out / temp)`` scaled towards equal prototype use.

    Cuturi 2013 (*Sinkhorn distances*), as used for self-distillation targets by SwAV (Caron et al. 2020,
    section 3.1) and DINOv2 (Oquab et al. 2023, section 4). With :math:`Q = \exp(g_t / \tau_t)^\top` of shape
    ``(K, N)``, each iteration divides every prototype row by its sum and by :math:`K`, then every sample column
    by its sum and by :math:`N`; finally columns are scaled to sum to 1:

    .. math::  Q \leftarrow \frac{Q}{K\, Q \mathbf 1_N}, \quad Q \leftarrow \frac{Q}{N\, \mathbf 1_K^\top Q},
        \qquad P_t = N\, Q^\top

    so each target is a distribution and, as ``n_iters`` grows, the batch uses every prototype equally
    (mean target :math:`1/K`), which rules out one-hot collapse and gives a uniform teacher no fixed point.
    The scaling runs in the log domain (``logsumexp`` in place of the sums), so no temperature overflows or
    leaves an empty row; when distributed, each prototype's sum is taken over the global batch.

    ``(N, K) -> (N, K)``, rows summing to 1.
    """
    if n_iters < 1:
        raise ValueError(f"n_iters: expected >= 1, got {n_iters}")
    log_q = (teacher_out.float() / temp).t()  # (K, N)
    k, n = log_q.shape
    for _ in range(n_iters):
        log_q = log_q - _global_row_logsumexp(log_q) - math.log(k)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(n)
    return torch.softmax(log_q, dim=0).t()


def _global_row_logsumexp(log_q: torch.Tensor) -> torch.Tensor:
    """``(K, N) -> (K, 1)``: log of each row's sum over this process's columns and, when distributed, all others'.

    Across processes the per-process values ``l_r`` are combined as ``c + log(mean_r exp(l_r - c))`` with ``c`` their
    mean (a constant ``log(world_size)`` short of the sum, which the column step removes).
    """
    local = torch.logsumexp(log_q, dim=1, keepdim=True)
    centre = all_reduce_mean(local)
    if centre is local:  # a single process
        return local
    return centre + torch.log(all_reduce_mean(torch.exp(local - centre)))


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
    ``warmup_teacher_temp_epochs`` (see :func:`teacher_temp_schedule`). With ``centering="sinkhorn"`` the
    teacher targets are :func:`sinkhorn_knopp` of the raw teacher output at the same temperature, in place of
    the centred softmax (DINOv2); the centre is still tracked but not used.

    After each call, ``last_stats`` holds the collapse monitor's numbers
    (:func:`trainer.losses.collapse.collapse_stats` of :math:`P_t` and :math:`\log P_s`) and
    ``last_mean_target`` the batch's mean target :math:`\bar P_t` ``(K,)``.

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
    centering : {'centre', 'sinkhorn'}
        How the teacher's targets are balanced: the EMA centre (DINO) or Sinkhorn-Knopp (DINOv2).
    sinkhorn_iters : int
        Sinkhorn-Knopp iterations (DINOv2: 3).

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
        centering: str = "centre",
        sinkhorn_iters: int = 3,
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
        if centering not in CENTERINGS:
            raise ValueError(f"centering: expected one of {CENTERINGS}, got {centering!r}")
        if sinkhorn_iters < 1:
            raise ValueError(f"sinkhorn_iters: expected >= 1, got {sinkhorn_iters}")
        self.centering = centering
        self.sinkhorn_iters = sinkhorn_iters
        self.last_stats: CollapseStats | None = None
        self.last_mean_target: torch.Tensor | None = None
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
            if self.centering == "sinkhorn":
                p_t = sinkhorn_knopp(teacher_out, temp, self.sinkhorn_iters).view(g, b, k)
            else:
                p_t = F.softmax((teacher_out.float() - self.center) / temp, dim=-1).view(g, b, k)
            # cross[i, j] = mean over images of the cross-entropy H(P_t^(i), P_s^(j))
            cross = -torch.einsum("ibk,jbk->ij", p_t, log_p_s) / b
        pair = torch.ones(g, v, dtype=torch.bool, device=cross.device)
        pair[:, :g].fill_diagonal_(False)
        loss = cross[pair].mean()
        self.last_stats = collapse_stats(p_t, log_p_s.detach(), cross=cross.detach())  # the loss's cross-entropies
        self.last_mean_target = p_t.detach().float().mean(dim=(0, 1))  # (K,): for the epoch's entropy of the mean

        if update_center:
            self.update_center(teacher_out)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """``c <- m c + (1 - m) mean(teacher_out)``, the mean taken over the batch and all processes."""
        batch_center = all_reduce_mean(teacher_out.detach().float().mean(dim=0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
