"""DINOLoss against an independent NumPy reference (plain loops over crop pairs), over a grid of shapes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.losses.dino import DINOLoss, sinkhorn_knopp, teacher_temp_schedule


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - m - math.log(np.exp(x - m).sum())


def reference_dino_loss(student, teacher, center, n_crops, n_global, t_student, t_teacher, momentum):
    """Caron et al. 2021 eq. 1, written out with loops in float64: returns (loss, new_center)."""
    k = student.shape[1]
    b = student.shape[0] // n_crops
    total, n_terms = 0.0, 0
    for i in range(n_global):
        for j in range(n_crops):
            if i == j:
                continue
            pair = 0.0
            for s in range(b):
                q = np.exp(_log_softmax((teacher[i * b + s] - center[0]) / t_teacher))
                log_p = _log_softmax(student[j * b + s] / t_student)
                pair += -sum(q[c] * log_p[c] for c in range(k))
            total += pair / b
            n_terms += 1
    new_center = center * momentum + teacher.mean(axis=0, keepdims=True) * (1 - momentum)
    return total / n_terms, new_center


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("n_crops,n_global", [(2, 2), (4, 2), (6, 2), (3, 1)])
@pytest.mark.parametrize("t_student,t_teacher", [(0.1, 0.04), (0.1, 0.07), (0.5, 0.2)])
@pytest.mark.parametrize("out_dim", [8, 33])
def test_matches_reference(batch, n_crops, n_global, t_student, t_teacher, out_dim):
    rng = np.random.default_rng(batch * 1000 + n_crops * 100 + out_dim)
    student = rng.normal(size=(n_crops * batch, out_dim)) * 3
    teacher = rng.normal(size=(n_global * batch, out_dim)) * 3
    center = rng.normal(size=(1, out_dim)) * 0.5
    loss_fn = DINOLoss(out_dim, n_crops, student_temp=t_student, center_momentum=0.9, n_global_crops=n_global,
                       warmup_teacher_temp_epochs=0, n_epochs=1)
    loss_fn.center.copy_(torch.tensor(center, dtype=torch.float32))
    got = loss_fn(torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32),
                  teacher_temp=t_teacher)
    want, want_center = reference_dino_loss(student, teacher, center, n_crops, n_global, t_student, t_teacher, 0.9)
    assert got.item() == pytest.approx(want, rel=1e-4, abs=1e-4)
    np.testing.assert_allclose(loss_fn.center.numpy(), want_center, rtol=1e-5, atol=1e-6)


def test_gradient_flows_to_student_only():
    loss_fn = DINOLoss(16, 4, warmup_teacher_temp_epochs=0, n_epochs=1)
    student = torch.randn(4 * 2, 16, requires_grad=True)
    teacher = torch.randn(2 * 2, 16, requires_grad=True)
    loss_fn(student, teacher).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_center_moves_towards_teacher_mean_over_steps():
    loss_fn = DINOLoss(5, 2, center_momentum=0.5, warmup_teacher_temp_epochs=0, n_epochs=1)
    teacher = torch.tensor([[1.0, 2, 3, 4, 5], [3.0, 2, 1, 0, -1]])  # mean (2, 2, 2, 2, 2)
    for expected in (1.0, 1.5, 1.75):
        loss_fn(torch.zeros(2, 5), teacher)
        torch.testing.assert_close(loss_fn.center, torch.full((1, 5), expected))
    loss_fn(torch.zeros(2, 5), teacher, update_center=False)
    torch.testing.assert_close(loss_fn.center, torch.full((1, 5), 1.75))


def test_identical_views_give_the_entropy_floor():
    """Student == teacher logits at equal temperatures and zero centre: loss = teacher entropy (KL = 0)."""
    logits = torch.randn(3, 10)
    loss_fn = DINOLoss(10, 2, student_temp=0.1, warmup_teacher_temp_epochs=0, n_epochs=1)
    both = torch.cat([logits, logits])
    got = loss_fn(both, both, teacher_temp=0.1)
    p = torch.softmax(logits / 0.1, -1)
    entropy = -(p * torch.log(p)).sum(-1).mean()
    torch.testing.assert_close(got, entropy, rtol=1e-5, atol=1e-5)


def test_teacher_temperature_schedule():
    sched = teacher_temp_schedule(0.04, 0.07, 30, 100)
    assert sched.shape == (100,) and sched[0] == pytest.approx(0.04) and sched[29] == pytest.approx(0.07)
    assert np.all(np.diff(sched[:30]) > 0) and np.all(sched[30:] == 0.07)
    loss_fn = DINOLoss(8, 2, warmup_teacher_temp_epochs=3, n_epochs=5, steps_per_epoch=10)
    assert len(loss_fn.teacher_temp_schedule) == 50
    assert loss_fn.teacher_temp_at(0) == pytest.approx(0.04)
    assert loss_fn.teacher_temp_at(29) == pytest.approx(0.07)
    assert loss_fn.teacher_temp_at(10_000) == pytest.approx(0.07)  # clamped past the end


def test_schedule_is_used_by_forward():
    student, teacher = torch.randn(4, 8), torch.randn(4, 8)
    a = DINOLoss(8, 2, warmup_teacher_temp_epochs=10, n_epochs=20)
    b = DINOLoss(8, 2, warmup_teacher_temp_epochs=10, n_epochs=20)
    torch.testing.assert_close(a(student, teacher, 5), b(student, teacher, teacher_temp=a.teacher_temp_at(5)))
    assert a(student, teacher, 0).item() != pytest.approx(a(student, teacher, 15).item())


@pytest.mark.parametrize("student_shape,teacher_shape", [((7, 8), (4, 8)), ((8, 8), (6, 8)), ((8, 9), (4, 9))])
def test_shape_errors_name_the_input(student_shape, teacher_shape):
    loss_fn = DINOLoss(8, 4, warmup_teacher_temp_epochs=0, n_epochs=1)
    with pytest.raises(ValueError, match="student_out|teacher_out"):
        loss_fn(torch.randn(*student_shape), torch.randn(*teacher_shape))


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_crops"):
        DINOLoss(8, 1)
    with pytest.raises(ValueError, match="student_temp"):
        DINOLoss(8, 2, student_temp=0)


def reference_sinkhorn(teacher, temp, n_iters):
    """SwAV/DINOv2 Sinkhorn-Knopp on Q = exp(teacher / temp)^T, float64, scaling written with loops."""
    q = np.exp(teacher.astype(np.float64) / temp).T  # (K, N)
    k, n = q.shape
    q /= q.sum()
    for _ in range(n_iters):
        for r in range(k):
            q[r] /= q[r].sum() * k
        for c in range(n):
            q[:, c] /= q[:, c].sum() * n
    return (q * n).T


@pytest.mark.parametrize("n_iters", [1, 3, 10])
@pytest.mark.parametrize("temp", [0.04, 0.1])
def test_sinkhorn_matches_reference(n_iters, temp):
    rng = np.random.default_rng(n_iters)
    teacher = rng.uniform(-1, 1, size=(6, 10))  # cosine-like logits, as the DINO head gives
    got = sinkhorn_knopp(torch.tensor(teacher, dtype=torch.float32), temp, n_iters).double().numpy()
    np.testing.assert_allclose(got, reference_sinkhorn(teacher, temp, n_iters), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_sinkhorn_balances_prototypes_and_survives_tiny_temperatures():
    rng = np.random.default_rng(1)
    teacher = torch.tensor(rng.normal(size=(40, 8)), dtype=torch.float32)
    teacher[:, 0] += 3.0  # every sample prefers prototype 0: a softmax batch would be nearly one-hot
    plain = torch.softmax(teacher / 0.5, -1).mean(0)
    balanced = sinkhorn_knopp(teacher, 0.5, n_iters=200).mean(0)
    assert plain[0] > 0.5
    torch.testing.assert_close(balanced, torch.full((8,), 1 / 8), rtol=1e-3, atol=1e-4)
    tiny = sinkhorn_knopp(teacher / teacher.abs().max(), 0.001)  # exp(1000): overflows outside the log domain
    assert torch.isfinite(tiny).all() and torch.allclose(tiny.sum(1), torch.ones(40))


def test_dino_loss_with_sinkhorn_matches_reference():
    rng = np.random.default_rng(7)
    b, v, g, k = 3, 4, 2, 12
    student = rng.normal(size=(v * b, k)) * 3
    teacher = rng.uniform(-1, 1, size=(g * b, k))
    loss_fn = DINOLoss(k, v, centering="sinkhorn", warmup_teacher_temp_epochs=0, n_epochs=1)
    loss_fn.center.fill_(5.0)  # the centre must not enter the Sinkhorn targets
    got = loss_fn(torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32),
                  teacher_temp=0.07)
    targets = reference_sinkhorn(teacher, 0.07, 3)
    total, n_terms = 0.0, 0
    for i in range(g):
        for j in range(v):
            if i != j:
                total += np.mean([-(targets[i * b + s] * _log_softmax(student[j * b + s] / 0.1)).sum()
                                  for s in range(b)])
                n_terms += 1
    assert got.item() == pytest.approx(total / n_terms, rel=1e-4)
    plain = DINOLoss(k, v, warmup_teacher_temp_epochs=0, n_epochs=1)
    plain.center.fill_(5.0)
    assert plain(torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32),
                 teacher_temp=0.07).item() != pytest.approx(got.item(), rel=1e-3)
    with pytest.raises(ValueError, match="centering"):
        DINOLoss(k, v, centering="sk")
