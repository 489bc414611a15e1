"""Collapse monitor of DINO: entropies of the teacher's targets, student-teacher KL, prototypes in use.

DINO can fall into two trivial solutions (Caron et al. 2021, section 5.3 and fig. 7): **uniform** collapse, where
the teacher (and then the student) outputs the uniform distribution over the :math:`K` prototypes, so the loss
sits at :math:`\\ln K` and teaches nothing; and **one-hot** collapse, where every image lands on the same
prototype. Centring pushes towards the first, sharpening towards the second. With :math:`P_t` the teacher's
targets (after centring or Sinkhorn-Knopp and sharpening) for :math:`N` rows and :math:`\\log P_s` the student's:

.. math::

    \\bar H_t = \\frac{1}{N} \\sum_n H(P_t[n]), \\qquad H(\\bar P_t), \\quad \\bar P_t = \\frac{1}{N} \\sum_n P_t[n],
    \\qquad H(p) = -\\sum_k p_k \\ln p_k

:math:`\\bar H_t \\to \\ln K` is uniform collapse; :math:`H(\\bar P_t) \\to 0` is one-hot collapse. Note
:math:`H(\\bar P_t) \\le \\bar H_t + \\ln N` (mixing bound), so a sharp teacher on a batch of :math:`N` rows cannot
reach an entropy of the mean above about :math:`\\ln N`. The student-teacher KL is the DINO loss minus the teacher's
entropy, averaged over the same view pairs as the loss:
:math:`\\mathrm{KL} = \\frac{1}{|\\mathcal P|} \\sum_{(i, j)} \\frac{1}{B} \\sum_b \\sum_k P_t^{(i)} (\\ln P_t^{(i)} -
\\log P_s^{(j)})`. Prototypes in use: the number of distinct :math:`\\arg\\max_k P_t[n, k]` over the rows.

:func:`collapse_stats` is a pure function of the two distributions; :class:`CollapseDetector` keeps the run length
of each kind of collapse and says when a run has sat in one for more than ``patience`` steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["CollapseStats", "collapse_stats", "CollapseDetector", "entropy"]


@dataclass(frozen=True)
class CollapseStats:
    """The monitor's numbers for one batch (entropies in nats)."""

    teacher_entropy: float      # mean over rows of H(P_t[n])
    entropy_of_mean: float      # H(mean over rows of P_t)
    kl: float                   # student-teacher KL, averaged over the loss's view pairs
    prototypes_used: int        # distinct teacher argmax over the rows
    log_k: float                # ln K

    def as_dict(self) -> dict[str, float]:
        """For ``log.jsonl``: the four numbers plus the entropies as fractions of ``ln K``."""
        return {"teacher_entropy": self.teacher_entropy, "entropy_of_mean": self.entropy_of_mean, "kl": self.kl,
                "prototypes_used": self.prototypes_used, "log_k": self.log_k,
                "teacher_entropy_frac": self.teacher_entropy / self.log_k,
                "entropy_of_mean_frac": self.entropy_of_mean / self.log_k}


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """``(..., K) -> (...)``: ``-sum_k p ln p`` with ``0 ln 0 = 0``."""
    return -torch.special.xlogy(p, p).sum(dim=-1)


def entropy(p: torch.Tensor) -> float:
    """``(K,) -> float``: the entropy of one distribution, e.g. the mean target over a whole epoch, whose
    entropy is not bounded by a batch's ``ln N`` (the issue's target is ``>= 0.9 ln K`` over an epoch)."""
    return float(_entropy(p.float() / p.float().sum()))


@torch.no_grad()
def collapse_stats(teacher_probs: torch.Tensor, student_log_probs: torch.Tensor, *,
                   cross: torch.Tensor | None = None) -> CollapseStats:
    """The collapse monitor's numbers for one batch.

    Parameters
    ----------
    teacher_probs : (G, B, K) tensor
        The teacher's targets :math:`P_t` for its ``G`` views (rows sum to 1).
    student_log_probs : (V, B, K) tensor
        The student's :math:`\\log P_s` for all ``V >= G`` views, the first ``G`` being the teacher's views.
    cross : (G, V) tensor, optional
        ``cross[i, j]``: the mean over the ``B`` images of the cross-entropy :math:`H(P_t^{(i)}, P_s^{(j)})`, when
        the caller has it already (:class:`~trainer.losses.dino.DINOLoss` does); else computed here.

    Returns
    -------
    CollapseStats
        Entropies over the ``N = G B`` teacher rows, the KL over the pairs ``i < G, j < V, i != j`` (the DINO
        loss's pairs), prototypes in use among the ``N`` rows.
    """
    g, b, k = teacher_probs.shape
    v = student_log_probs.shape[0]
    if student_log_probs.shape[1:] != (b, k) or v < g:
        raise ValueError(f"student_log_probs: expected (V >= {g}, {b}, {k}) to match teacher_probs "
                         f"{tuple(teacher_probs.shape)}, got {tuple(student_log_probs.shape)}")
    p = teacher_probs.float()
    rows = p.reshape(g * b, k)
    h_rows = _entropy(p)                                                    # (G, B)
    if cross is None:
        cross = -torch.einsum("ibk,jbk->ij", p, student_log_probs.float()) / b  # (G, V) mean cross-entropy
    elif cross.shape != (g, v):
        raise ValueError(f"cross: expected ({g}, {v}), got {tuple(cross.shape)}")
    pair = torch.ones(g, v, dtype=torch.bool, device=p.device)
    pair[:, :g].fill_diagonal_(False)
    kl = (cross.float() - h_rows.mean(dim=1)[:, None])[pair].mean()
    used = torch.zeros(k, dtype=torch.bool, device=p.device).index_fill_(0, rows.argmax(dim=1), True).sum()
    # one device-to-host copy for the four numbers (a sync per step, not four)
    h_mean, h_of_mean, kl, used = torch.stack([h_rows.mean(), _entropy(rows.mean(dim=0)), kl, used.float()]).tolist()
    return CollapseStats(teacher_entropy=h_mean, entropy_of_mean=h_of_mean, kl=kl, prototypes_used=int(used),
                         log_k=math.log(k))


@dataclass
class CollapseDetector:
    """Say when a run has sat at uniform or one-hot collapse for more than ``patience`` consecutive steps.

    A step is at **uniform** collapse when ``teacher_entropy >= uniform_frac * ln K``, at **one-hot** collapse
    when ``entropy_of_mean <= onehot_frac * ln K``. :meth:`update` returns a warning text the first time a
    stretch of one kind outlasts ``patience`` steps (once per stretch), else None. ``episodes`` lists the
    stretches that outlasted ``patience``: ``[kind, first step, last step]``.

    Parameters
    ----------
    patience : int
        Steps (>= 1) a collapse must last before it is reported. Early in a run the teacher may pass through a
        high-entropy phase; a few dozen steps separate that from a run stuck at ``ln K``.
    uniform_frac, onehot_frac : float
        Thresholds as fractions of ``ln K`` (0.95 and 0.1: a teacher within 5 % of the uniform entropy; a batch
        whose mean target has the entropy of about ``K ** 0.1`` prototypes or fewer).
    """

    patience: int = 50
    uniform_frac: float = 0.95
    onehot_frac: float = 0.1
    runs: dict = field(default_factory=lambda: {"uniform": 0, "one-hot": 0})
    episodes: list = field(default_factory=list)

    def __post_init__(self):
        if self.patience < 1:
            raise ValueError(f"patience: expected >= 1 step, got {self.patience}")
        if not 0 < self.onehot_frac < self.uniform_frac <= 1:
            raise ValueError(f"onehot_frac={self.onehot_frac}, uniform_frac={self.uniform_frac}: expected "
                             "0 < onehot_frac < uniform_frac <= 1")

    def kinds(self, stats: CollapseStats) -> set[str]:
        """The kinds of collapse this batch shows (empty when healthy)."""
        found = set()
        if stats.teacher_entropy >= self.uniform_frac * stats.log_k:
            found.add("uniform")
        if stats.entropy_of_mean <= self.onehot_frac * stats.log_k:
            found.add("one-hot")
        return found

    def update(self, stats: CollapseStats, step: int) -> str | None:
        """Count this step; return the warning text when a collapse has just outlasted ``patience``."""
        now = self.kinds(stats)
        message = None
        for kind in self.runs:
            if kind not in now:
                self.runs[kind] = 0
                continue
            self.runs[kind] += 1
            if self.runs[kind] == self.patience + 1:
                self.episodes.append([kind, step - self.patience, step])
                message = self._message(kind, stats, step)
            elif self.runs[kind] > self.patience + 1:
                last = max(i for i, e in enumerate(self.episodes) if e[0] == kind)
                self.episodes[last][2] = step
        return message

    def _message(self, kind: str, stats: CollapseStats, step: int) -> str:
        if kind == "uniform":
            what = (f"teacher entropy {stats.teacher_entropy:.3f} >= {self.uniform_frac} ln K = "
                    f"{self.uniform_frac * stats.log_k:.3f}")
            fix = ("Lower the teacher temperature (--warmup-teacher-temp and --teacher-temp: the cpu preset's 0.02 "
                   "kept it off ln K where DINO's 0.04 -> 0.07 collapsed; Sinkhorn, KoLeo, K, lr and momenta did not: "
                   "docs/DINO_COLLAPSE.md)")
        else:
            what = (f"entropy of the mean target {stats.entropy_of_mean:.3f} <= {self.onehot_frac} ln K = "
                    f"{self.onehot_frac * stats.log_k:.3f}")
            fix = ("Raise the teacher temperature, keep centring on (--center-momentum below 1), or try "
                   "--centering sinkhorn")
        return (f"DINO {kind} collapse for {self.patience + 1} steps (steps {step - self.patience}-{step}): {what}; "
                f"the distillation teaches nothing. {fix}.")

    @property
    def status(self) -> str:
        """``"healthy"``, or the kinds of collapse the run is in now (past ``patience``), e.g. ``"uniform"``."""
        now = [k for k, n in self.runs.items() if n > self.patience]
        return "+".join(now) if now else "healthy"

    def summary(self) -> dict:
        """For the run summary and the checkpoint: status, episodes and the current run lengths."""
        return {"status": self.status, "episodes": [list(e) for e in self.episodes], "runs": dict(self.runs),
                "patience": self.patience}

    def load(self, summary: dict) -> None:
        """Restore :meth:`summary`'s state (on resume)."""
        self.runs = {k: int(summary.get("runs", {}).get(k, 0)) for k in self.runs}
        self.episodes = [list(e) for e in summary.get("episodes", [])]
