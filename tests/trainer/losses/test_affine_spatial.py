"""S^3-Net's label-free terms: the rotation-equivariance loss and the edge-aware spatial-consistency loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from trainer.losses.affine import affine_loss, rot90
from trainer.losses.spatial import spatial_loss


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# --- affine (rotation) equivariance -------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 1, 4, 4), (3, 1, 7, 7)])
def test_affine_loss_matches_a_numpy_reference(k, shape):
    rng = np.random.default_rng(k)
    a, b = rng.normal(size=shape), rng.normal(size=shape)
    expected = np.mean([(_sigmoid(b[i, 0]) - np.rot90(_sigmoid(a[i, 0]), k)) ** 2 for i in range(shape[0])])
    got = affine_loss(torch.tensor(a), torch.tensor(b), k)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_rot90_turns_counter_clockwise_over_the_last_two_dims():
    x = torch.arange(6.0).view(1, 1, 2, 3)  # [[0 1 2], [3 4 5]]
    assert rot90(x, 1)[0, 0].tolist() == [[2.0, 5.0], [1.0, 4.0], [0.0, 3.0]]
    assert torch.equal(rot90(rot90(x, 1), 3), x)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_affine_loss_is_zero_for_a_pointwise_segmenter(k):
    torch.manual_seed(0)
    f = nn.Conv2d(3, 1, 1)  # a 1x1 conv commutes with rotations
    x = torch.randn(2, 3, 8, 8)
    loss = affine_loss(f(x), f(rot90(x, k)), k)
    assert loss.item() < 1e-12


@pytest.mark.parametrize("k", [1, 2, 3])
def test_affine_loss_trains_a_segmenter_that_is_not_equivariant(k):
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 1, 3, padding=1))
    position = nn.Parameter(torch.randn(1, 1, 8, 8))  # a learned position map, as a ViT's embeddings
    x = torch.randn(2, 3, 8, 8)
    plain, rotated = f(x) + position, f(rot90(x, k)) + position
    plain.retain_grad()
    rotated.retain_grad()
    loss = affine_loss(plain, rotated, k)
    loss.backward()
    assert loss.item() > 1e-3
    assert plain.grad.abs().sum() > 0 and rotated.grad.abs().sum() > 0  # both branches carry gradient
    assert position.grad.abs().sum() > 0 and all(p.grad.abs().sum() > 0 for p in f.parameters())


def test_affine_loss_checks_its_arguments():
    square = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="k: expected a number of quarter turns"):
        affine_loss(square, square, 4)
    with pytest.raises(ValueError, match=r"rotated_logits: expected \(2, 1, 6, 4\)"):
        affine_loss(torch.zeros(2, 1, 4, 6), torch.zeros(2, 1, 4, 6), 1)
    with pytest.raises(ValueError, match=r"logits: expected \(B, 1, H, W\)"):
        affine_loss(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), 2)
    # a quarter turn of a non-square map is fine when the other map has the turned shape
    assert affine_loss(torch.zeros(1, 1, 4, 6), torch.zeros(1, 1, 6, 4), 1).item() == 0.0


# --- spatial consistency --------------------------------------------------------------------------------------


def _spatial_reference(logits: np.ndarray, image: np.ndarray, sigma: float) -> float:
    """Explicit loops over every pixel and its right and lower neighbour."""
    b, _, h, w = logits.shape
    p = _sigmoid(logits)
    num = den = 0.0
    for n in range(b):
        for y in range(h):
            for x in range(w):
                for dy, dx in ((0, 1), (1, 0)):
                    yy, xx = y + dy, x + dx
                    if yy >= h or xx >= w:
                        continue
                    d2 = float(np.sum((image[n, :, y, x] - image[n, :, yy, xx]) ** 2))
                    wij = math.exp(-d2 / (2 * sigma ** 2))
                    num += wij * (p[n, 0, y, x] - p[n, 0, yy, xx]) ** 2
                    den += wij
    return num / den


@pytest.mark.parametrize("sigma", [0.3, 0.5, 2.0])
@pytest.mark.parametrize("shape", [(1, 3, 3, 4), (2, 3, 5, 2), (2, 1, 4, 4)])
def test_spatial_loss_matches_explicit_loops(sigma, shape):
    rng = np.random.default_rng(int(sigma * 10) + shape[0])
    image = rng.normal(scale=0.5, size=shape)
    logits = rng.normal(scale=2.0, size=(shape[0], 1, *shape[2:]))
    got = spatial_loss(torch.tensor(logits), torch.tensor(image), sigma=sigma)
    assert got.item() == pytest.approx(_spatial_reference(logits, image, sigma), rel=1e-5)


def test_spatial_loss_has_a_gradient_for_the_logits_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 6, 6, requires_grad=True)
    image = torch.randn(2, 3, 6, 6, requires_grad=True)
    spatial_loss(logits, image).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert image.grad is None  # the colour weights are constants


def _two_region_image(rng: np.random.Generator, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A dark disc on light skin (ImageNet-normalised-like units) and its exact mask."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    image = np.where(disc, -1.5, 1.5)[None].repeat(3, 0) + rng.normal(0, 0.05, (3, size, size))
    return torch.tensor(image[None], dtype=torch.float32), torch.tensor(disc[None, None])


def test_spatial_loss_prefers_a_prediction_that_follows_the_image_edges():
    rng = np.random.default_rng(0)
    image, disc = _two_region_image(rng)
    aligned = torch.where(disc, 6.0, -6.0)
    shifted = torch.roll(aligned, shifts=3, dims=-1)  # the same shape, off the edges
    noisy = aligned + torch.tensor(rng.normal(0, 3.0, aligned.shape), dtype=torch.float32)
    l_aligned, l_shifted, l_noisy = (spatial_loss(z, image).item() for z in (aligned, shifted, noisy))
    assert l_aligned < 1e-4  # the label changes only across the edge, where the weights are ~0
    assert l_shifted > 10 * l_aligned and l_noisy > 10 * l_aligned


def test_spatial_loss_on_a_flat_image_is_the_mean_squared_neighbour_difference():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 0.5]]]])
    p = torch.sigmoid(logits)[0, 0]
    pairs = [(p[0, 0], p[0, 1]), (p[1, 0], p[1, 1]), (p[0, 0], p[1, 0]), (p[0, 1], p[1, 1])]
    expected = sum(float((a - b) ** 2) for a, b in pairs) / 4
    assert spatial_loss(logits, torch.zeros(1, 3, 2, 2)).item() == pytest.approx(expected, rel=1e-6)


def test_spatial_loss_checks_its_arguments():
    with pytest.raises(ValueError, match=r"image: expected \(2, C, 4, 4\)"):
        spatial_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="sigma: expected > 0"):
        spatial_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 3, 4, 4), sigma=0.0)
