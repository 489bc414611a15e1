"""The collapse monitor against hand-computed entropies, KL and prototype counts; the detector's patience."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.losses.collapse import CollapseDetector, CollapseStats, collapse_stats, entropy
from trainer.losses.dino import DINOLoss


def test_uniform_teacher_has_entropy_ln_k_and_one_hot_batch_zero():
    k = 8
    uniform = torch.full((2, 3, k), 1.0 / k)
    stats = collapse_stats(uniform, torch.log(uniform))
    assert stats.teacher_entropy == pytest.approx(math.log(8)) and stats.entropy_of_mean == pytest.approx(math.log(8))
    assert stats.kl == pytest.approx(0.0, abs=1e-6) and stats.log_k == pytest.approx(math.log(8))
    one_hot = torch.zeros(2, 3, k)
    one_hot[..., 5] = 1.0
    stats = collapse_stats(one_hot, torch.log(torch.full((2, 3, k), 1.0 / k)))
    assert stats.teacher_entropy == pytest.approx(0.0) and stats.entropy_of_mean == pytest.approx(0.0)
    assert stats.prototypes_used == 1
    assert stats.kl == pytest.approx(math.log(8), rel=1e-6)  # KL(one-hot || uniform) = ln K


def test_hand_computed_two_by_two():
    """G = 1 teacher view, B = 2 images, K = 2; V = 2 student views (one pair: teacher 0 vs student 1)."""
    p = torch.tensor([[[0.5, 0.5], [0.9, 0.1]]])
    s = torch.tensor([[[0.3, 0.7], [0.3, 0.7]], [[0.2, 0.8], [0.6, 0.4]]])
    stats = collapse_stats(p, torch.log(s))
    h1, h2 = math.log(2), -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert stats.teacher_entropy == pytest.approx((h1 + h2) / 2, rel=1e-6)
    assert stats.entropy_of_mean == pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.3)), rel=1e-6)
    kl1 = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)
    kl2 = 0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)
    assert stats.kl == pytest.approx((kl1 + kl2) / 2, rel=1e-6)  # only the pair (0, 1): view 0 is not paired
    assert stats.prototypes_used == 1  # argmax: a tie at 0.5 picks 0, and 0.9 picks 0


def test_dino_loss_leaves_its_stats_and_kl_is_loss_minus_teacher_entropy():
    torch.manual_seed(0)
    loss_fn = DINOLoss(16, 4, warmup_teacher_temp_epochs=0, n_epochs=1)
    student, teacher = torch.randn(4 * 3, 16) * 3, torch.randn(2 * 3, 16) * 0.1
    loss = loss_fn(student, teacher, teacher_temp=0.07)
    stats = loss_fn.last_stats
    assert isinstance(stats, CollapseStats)
    assert stats.kl == pytest.approx(loss.item() - stats.teacher_entropy, rel=1e-4, abs=1e-5)
    p = torch.softmax(teacher / 0.07, -1)
    want = float(-torch.special.xlogy(p, p).sum(-1).mean())  # 0 ln 0 = 0
    assert stats.teacher_entropy == pytest.approx(want, rel=1e-5) and 0.1 < want < math.log(16)
    assert stats.prototypes_used == len(set(p.argmax(1).tolist()))


def _stats(teacher_frac: float, mean_frac: float, k: int = 64) -> CollapseStats:
    return CollapseStats(teacher_entropy=teacher_frac * math.log(k), entropy_of_mean=mean_frac * math.log(k),
                         kl=0.0, prototypes_used=1, log_k=math.log(k))


def test_detector_fires_once_after_patience_and_records_the_episode():
    det = CollapseDetector(patience=3)
    fired = [det.update(_stats(0.99, 0.99), step) for step in range(10)]
    assert [i for i, f in enumerate(fired) if f] == [3]
    assert "uniform collapse for 4 steps (steps 0-3)" in fired[3] and "teacher entropy" in fired[3]
    assert det.status == "uniform" and det.episodes == [["uniform", 0, 9]]
    assert det.update(_stats(0.5, 0.6), 10) is None and det.status == "healthy"
    assert det.summary()["episodes"] == [["uniform", 0, 9]]


def test_detector_one_hot_and_short_spells_stay_silent():
    det = CollapseDetector(patience=4)
    pattern = [0.02] * 4 + [0.5] + [0.02] * 4  # two spells of 4 steps: neither outlasts patience
    assert all(det.update(_stats(0.1, m), s) is None for s, m in enumerate(pattern))
    assert det.episodes == [] and det.status == "healthy"
    msgs = [det.update(_stats(0.1, 0.02), s) for s in range(9, 20)]
    assert sum(m is not None for m in msgs) == 1 and "one-hot collapse" in next(m for m in msgs if m)
    again = CollapseDetector(patience=4)
    again.load(det.summary())
    assert again.runs == det.runs and again.episodes == det.episodes and again.status == "one-hot"


def test_healthy_numbers_never_fire():
    det = CollapseDetector(patience=1)
    rng = np.random.default_rng(0)
    for step in range(50):
        assert det.update(_stats(rng.uniform(0.2, 0.9), rng.uniform(0.3, 0.9)), step) is None


def test_detector_arguments():
    with pytest.raises(ValueError, match="patience"):
        CollapseDetector(patience=0)
    with pytest.raises(ValueError, match="onehot_frac"):
        CollapseDetector(uniform_frac=0.1, onehot_frac=0.5)
    with pytest.raises(ValueError, match="student_log_probs"):
        collapse_stats(torch.full((2, 3, 4), 0.25), torch.zeros(1, 3, 4))


def test_entropy_of_an_epoch_mean():
    assert entropy(torch.full((16,), 3.0)) == pytest.approx(math.log(16))  # normalised first
    assert entropy(torch.tensor([0.0, 1.0, 0.0])) == pytest.approx(0.0)
    assert entropy(torch.tensor([0.25, 0.75])) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
