"""Masked-patch self-distillation (iBOT-style): a patch-level objective beside DINO's class-token one.

The student sees some patches of each global view replaced by a learned mask token; at those patches it must
predict the teacher's output for the same, unmasked view. This is iBOT's masked image modelling loss (Zhou et
al., *iBOT: Image BERT Pre-Training with Online Tokenizer*, ICLR 2022, eq. 2):

.. math:: L_{MIM} = -\\frac{1}{|M|} \\sum_{i \\in M} P_t(u_i)^\\top \\log P_s(\\hat u_i)

over the masked patches :math:`M`, with the teacher's patch outputs centred by their own EMA centre and
sharpened by the teacher temperature, the student's softened by :math:`\\tau_s` (as DINO does for the class
token). Here the DINO head serves both the class token and the patch tokens (iBOT's shared-head variant), and
the patches are masked at random rather than in blocks (ours: with 12 x 12 tokens a block is most of a lesion).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.engine.distributed import all_reduce_mean

__all__ = ["MaskedPatchLoss", "random_patch_masks"]


def random_patch_masks(n_images: int, n_patches: int, *, ratio: tuple[float, float] = (0.1, 0.5), prob: float = 0.5,
                       generator: torch.Generator | None = None, device: torch.device | str | None = None
                       ) -> torch.Tensor:
    """Which patches the student sees masked: ``(n_images, n_patches)`` bool.

    Each image is masked with probability ``prob`` (iBOT: 0.5); a masked image hides
    ``round(r * n_patches)`` patches chosen uniformly without replacement, ``r`` drawn uniformly from
    ``ratio`` (iBOT: 0.1-0.5). Drawn from ``generator`` (on its device), so a seeded run masks the same patches.
    """
    lo, hi = ratio
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"ratio: expected 0 <= low <= high <= 1, got {ratio}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob: expected in [0, 1], got {prob}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    chosen = torch.rand(n_images, generator=generator, device=gen_device) < prob
    counts = torch.round((lo + (hi - lo) * torch.rand(n_images, generator=generator, device=gen_device))
                         * n_patches).long() * chosen
    order = torch.rand(n_images, n_patches, generator=generator, device=gen_device).argsort(dim=1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n_patches, device=gen_device).expand(n_images, n_patches))
    masks = ranks < counts[:, None]  # the first counts[i] patches of a random order
    return masks.to(device) if device is not None else masks


class MaskedPatchLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student at the masked patches.

    Parameters
    ----------
    out_dim : int
        Head output width K.
    student_temp : float
        :math:`\\tau_s` (DINO and iBOT: 0.1).
    center_momentum : float
        Momentum of the patch outputs' own EMA centre (iBOT: 0.9).
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, *, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        if not student_temp > 0:
            raise ValueError(f"student_temp: expected > 0, got {student_temp}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum: expected in [0, 1], got {center_momentum}")
        self.out_dim = out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float, *,
                update_center: bool = True) -> torch.Tensor:
        """``(M, K), (M, K) -> ()``: the mean over the M masked patches; then (by default) the centre update.

        With no masked patch (M = 0) the loss is 0 (still connected to ``student_out``) and the centre keeps its
        value; the centre's all-reduce runs on every process either way.
        """
        if student_out.ndim != 2 or student_out.shape[1] != self.out_dim or teacher_out.shape != student_out.shape:
            raise ValueError(f"student_out and teacher_out: expected two (M, {self.out_dim}) tensors, got "
                             f"{tuple(student_out.shape)} and {tuple(teacher_out.shape)}")
        teacher_out = teacher_out.detach().float()
        with torch.autocast(student_out.device.type, enabled=False):
            log_p_s = F.log_softmax(student_out.float() / self.student_temp, dim=-1)
            p_t = F.softmax((teacher_out - self.center) / teacher_temp, dim=-1)
            per_patch = -(p_t * log_p_s).sum(dim=-1)
        loss = per_patch.mean() if len(per_patch) else student_out.sum() * 0.0
        if update_center:
            self.update_center(teacher_out)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """``c <- m c + (1 - m) mean(teacher_out)`` over the masked patches of every process; unchanged when
        there are none anywhere."""
        stats = torch.cat([teacher_out.float().sum(dim=0), teacher_out.new_full((1,), float(len(teacher_out)))])
        stats = all_reduce_mean(stats[None])[0]
        if stats[-1] > 0:
            batch_center = stats[None, :-1] / stats[-1]
            self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
