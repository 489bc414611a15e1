"""The linear probe: high on features that carry the lesion, chance on collapsed ones, NaN on a single class."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.eval.probe import patch_probe

S = 64


class PatchColour(nn.Module):
    """A stand-in ViT whose patch tokens are the patch's mean colour (or zeros when ``collapsed``)."""

    num_prefix_tokens = 1

    def __init__(self, collapsed: bool = False):
        super().__init__()
        self.patch_embed = SimpleNamespace(patch_size=8)
        self.collapsed = collapsed

    def forward_features(self, x):
        tokens = F.avg_pool2d(x, 8).flatten(2).transpose(1, 2)
        tokens = torch.zeros_like(tokens) if self.collapsed else tokens
        return torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)

    def forward_head(self, feats, pre_logits=True):
        return feats[:, 0]


def _items(n: int, *, lesion: bool = True) -> list[dict]:
    yy, xx = np.mgrid[:S, :S]
    items = []
    for i in range(n):
        rng = np.random.default_rng(i)
        disc = ((yy - 32 - rng.uniform(-8, 8)) ** 2 + (xx - 32 - rng.uniform(-8, 8)) ** 2 < rng.uniform(12, 20) ** 2)
        disc &= lesion
        image = np.where(disc[..., None], [90, 60, 40], [220, 170, 150]) + rng.normal(0, 6, (S, S, 3))
        maps = np.stack([disc * 255, disc * 255, np.zeros_like(disc)]).astype(np.uint8)
        items.append({"image": torch.from_numpy(np.clip(image, 0, 255).astype(np.uint8)).permute(2, 0, 1),
                      "maps": torch.from_numpy(maps)})
    return items


def test_informative_features_score_high_collapsed_ones_chance():
    items = _items(8)
    good = patch_probe(PatchColour(), items, range(8), img_size=S)
    assert good.n_images == 8 and good.n_patches == 4 * 64  # 4 scored images of 8 x 8 patches
    assert good.jaccard > 0.8 and good.balanced_accuracy > 0.9
    assert 0.1 < good.lesion_fraction < 0.6
    flat = patch_probe(PatchColour(collapsed=True), items, range(8), img_size=S)
    assert flat.balanced_accuracy == pytest.approx(0.5)  # one answer for every patch
    assert flat.jaccard in (pytest.approx(0.0), pytest.approx(flat.lesion_fraction))
    assert flat.as_dict()["probe_jaccard"] == flat.jaccard


def test_single_class_gives_nan_and_too_few_samples_an_error():
    res = patch_probe(PatchColour(), _items(4, lesion=False), range(4), img_size=S)
    assert math.isnan(res.jaccard) and res.lesion_fraction == 0.0
    with pytest.raises(ValueError, match="at least 2 samples"):
        patch_probe(PatchColour(), _items(1), [0], img_size=S)
