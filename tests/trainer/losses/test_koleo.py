"""KoLeo against a loop-written reference (Sablayrolles et al. 2019, eq. 3) and its spreading effect."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.losses.koleo import koleo_loss


def reference_koleo(x, eps=1e-8):
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(z)):
        rho = min(np.linalg.norm(z[i] - z[j]) for j in range(len(z)) if j != i)
        total += -math.log(math.sqrt(rho * rho + eps * eps) + eps)
    return total / len(z)


@pytest.mark.parametrize("n,d", [(2, 3), (5, 4), (16, 32)])
def test_matches_reference(n, d):
    x = np.random.default_rng(n * d).normal(size=(n, d)) * 2.0
    assert koleo_loss(torch.tensor(x, dtype=torch.float32)).item() == pytest.approx(reference_koleo(x), rel=1e-4)


def test_hand_computed_square_and_scale_invariance():
    """Four unit vectors at 90 degrees: every nearest distance is sqrt(2), loss = -ln sqrt(2)."""
    square = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]])
    assert koleo_loss(square).item() == pytest.approx(-0.5 * math.log(2), rel=1e-5)
    assert koleo_loss(square * 7).item() == pytest.approx(koleo_loss(square).item(), rel=1e-6)


def test_collapsed_batch_costs_most_and_the_gradient_spreads_it():
    same = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    assert koleo_loss(same).item() == pytest.approx(-math.log(2e-8), rel=1e-3)
    x = (torch.tensor([[1.0, 0, 0]] * 4) + 0.01 * torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))
    x.requires_grad_(True)
    before = koleo_loss(x).item()
    koleo_loss(x).backward()
    with torch.no_grad():
        x -= 1e-3 * x.grad
    assert torch.isfinite(x.grad).all() and koleo_loss(x).item() < before


def test_needs_two_rows():
    with pytest.raises(ValueError, match="n >= 2"):
        koleo_loss(torch.randn(1, 4))
