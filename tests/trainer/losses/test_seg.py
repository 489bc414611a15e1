"""seg_loss: values by hand on tiny tensors, the uncertain band, per-sample weights, gradients."""
from __future__ import annotations

import math

import pytest
import torch

from trainer.losses.seg import SegLoss, seg_loss


def _bce(z: float, y: float) -> float:
    return -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z))))


def _sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_values_by_hand_one_image():
    z = [[2.0, -1.0], [0.0, 3.0]]
    y = [[1.0, 0.0], [1.0, 0.0]]
    logits = torch.tensor(z).view(1, 1, 2, 2)
    target = torch.tensor(y, dtype=torch.uint8).view(1, 2, 2)
    flat_z, flat_y = sum(z, []), sum(y, [])
    bce = sum(_bce(a, b) for a, b in zip(flat_z, flat_y)) / 4
    p = [_sig(a) for a in flat_z]
    inter = sum(a * b for a, b in zip(p, flat_y))
    dice = (2 * inter + 1) / (sum(p) + sum(flat_y) + 1)
    assert seg_loss(logits, target).item() == pytest.approx(bce + (1 - dice), rel=1e-5)
    assert seg_loss(logits, target, bce_weight=1, dice_weight=0).item() == pytest.approx(bce, rel=1e-5)
    assert seg_loss(logits, target, bce_weight=0, dice_weight=2).item() == pytest.approx(2 * (1 - dice), rel=1e-5)


def test_dice_is_per_image_then_averaged():
    logits = torch.tensor([[[[4.0, -4.0]]], [[[-4.0, -4.0]]]])  # (2, 1, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])
    dices = []
    for b in range(2):
        p = [_sig(v) for v in logits[b].flatten().tolist()]
        y = target[b].flatten().tolist()
        dices.append((2 * sum(a * c for a, c in zip(p, y)) + 1) / (sum(p) + sum(y) + 1))
    want = sum(1 - d for d in dices) / 2
    assert seg_loss(logits, target, bce_weight=0).item() == pytest.approx(want, rel=1e-5)


def test_band_pixels_are_ignored():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    prob = (torch.rand(2, 1, 8, 8, generator=g) * 255).to(torch.uint8)
    band = (prob.float() / 255 > 0.1) & (prob.float() / 255 < 0.9)
    assert 0 < band.sum() < band.numel()
    base = seg_loss(logits, target, prob)
    # anything inside the band may change: the loss does not
    logits2 = torch.where(band, torch.randn(2, 1, 8, 8, generator=g) * 10, logits)
    target2 = torch.where(band, 1 - target, target)
    torch.testing.assert_close(seg_loss(logits2, target2, prob), base)
    # and it equals the loss on the certain pixels alone, computed another way
    certain = ~band
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[certain], target[certain])
    dices = []
    for b in range(2):
        m = certain[b]
        p, y = torch.sigmoid(logits[b][m]), target[b][m]
        dices.append(1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1))
    torch.testing.assert_close(base, bce + torch.stack(dices).mean())
    # a band weight between 0 and 1 does count them
    assert seg_loss(logits2, target2, prob, band_weight=0.5).item() != pytest.approx(
        seg_loss(logits, target, prob, band_weight=0.5).item())


def test_float_and_uint8_probabilities_agree():
    logits, target = torch.randn(1, 1, 4, 4), (torch.rand(1, 1, 4, 4) > 0.5).float()
    prob_u8 = torch.tensor([0, 20, 30, 128, 200, 230, 240, 255] * 2, dtype=torch.uint8).view(1, 1, 4, 4)
    torch.testing.assert_close(seg_loss(logits, target, prob_u8), seg_loss(logits, target, prob_u8.float() / 255))


def test_zero_weight_samples_contribute_nothing():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 6, 6, generator=g, requires_grad=True)
    target = (torch.rand(3, 1, 6, 6, generator=g) > 0.5).float()
    w = torch.tensor([1.0, 0.0, 1.0])
    loss = seg_loss(logits, target, sample_weight=w)
    keep = [0, 2]
    torch.testing.assert_close(loss, seg_loss(logits[keep], target[keep]))
    loss.backward()
    assert torch.all(logits.grad[1] == 0) and logits.grad[0].abs().sum() > 0
    # every sample flagged: zero loss, zero (finite) gradient
    logits.grad = None
    loss = seg_loss(logits, target, sample_weight=torch.zeros(3))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_gradient_finite_for_extreme_logits_and_empty_masks():
    logits = torch.tensor([[[[80.0, -80.0], [-80.0, 80.0]]], [[[-50.0, -50.0], [-50.0, -50.0]]]],
                          requires_grad=True)
    target = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    loss = seg_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_perfect_prediction_is_near_zero():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    logits = (target * 2 - 1) * 30
    assert seg_loss(logits, target).item() < 1e-6


def test_module_matches_function_and_validates():
    logits, target, prob = torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4).round(), torch.rand(2, 1, 4, 4)
    mod = SegLoss(band=(0.2, 0.8), band_weight=0.3, bce_weight=0.5, dice_weight=2.0)
    torch.testing.assert_close(
        mod(logits, target, prob),
        seg_loss(logits, target, prob, band=(0.2, 0.8), band_weight=0.3, bce_weight=0.5, dice_weight=2.0),
    )
    with pytest.raises(ValueError, match="target"):
        seg_loss(logits, target[:, :, :3])
    with pytest.raises(ValueError, match="band"):
        SegLoss(band=(0.9, 0.1))
    with pytest.raises(ValueError, match="sample_weight"):
        seg_loss(logits, target, sample_weight=torch.ones(3))


def test_uint8_target_must_be_zero_one():
    with pytest.raises(ValueError, match="target"):
        seg_loss(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 255, dtype=torch.uint8))
