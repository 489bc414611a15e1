"""A cheap check that pretrained features carry the lesion: a linear probe of frozen patch tokens.

The frozen backbone embeds ``n`` shard images at the training crop size; each patch token is labelled lesion
when more than half of its pixels are lesion in the pseudo-mask. A logistic regression (scikit-learn's
``StandardScaler`` + ``LogisticRegression(class_weight="balanced")``) is fitted on the
patches of the first half of the images and scored on the patches of the other half:

.. math::  J_{probe} = \\frac{|\\hat y \\wedge y|}{|\\hat y \\vee y|}, \\qquad
    \\mathrm{BA} = \\tfrac12 \\Big(\\frac{|\\hat y \\wedge y|}{|y|}
    + \\frac{|\\neg \\hat y \\wedge \\neg y|}{|\\neg y|}\\Big)

over every scored patch (``y`` the patch labels, ``\\hat y`` the probe's). A collapsed backbone, whose tokens no
longer tell lesion from skin, scores a balanced accuracy near 0.5; the number is written to ``log.jsonl`` at the
start and the end of each pretraining, so a run that made the features worse is caught before any fine-tune.
Seconds on a CPU for 64 images of a ViT-Ti at 96 px.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.data.normalise import normalise
from trainer.models.backbone import forward_tokens, patch_grid

__all__ = ["ProbeResult", "patch_probe"]


@dataclass(frozen=True)
class ProbeResult:
    """Probe scores on the held-out half (NaN when a half holds a single class)."""

    jaccard: float
    balanced_accuracy: float
    n_images: int
    n_patches: int
    lesion_fraction: float   # of the scored patches: the Jaccard of always answering 'lesion'

    def as_dict(self, prefix: str = "probe_") -> dict[str, float]:
        return {prefix + k: v for k, v in asdict(self).items()}


@torch.no_grad()
def _patch_features(backbone: nn.Module, dataset, indices, *, img_size: int, device: torch.device,
                    batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(n, N, D)`` float32 patch tokens and ``(n, N)`` bool patch labels of the samples ``indices``."""
    grid = patch_grid(backbone, img_size)
    feats, labels = [], []
    was_training = backbone.training
    backbone.eval()
    for start in range(0, len(indices), batch):
        items = [dataset[int(i)] for i in indices[start:start + batch]]
        images = torch.stack([it["image"] for it in items]).to(device)
        _, patches = forward_tokens(backbone, normalise(images, img_size))
        feats.append(patches.float().cpu().numpy())
        masks = torch.stack([it["maps"][0] for it in items]).float().div(255.0)[:, None]
        labels.append((F.adaptive_avg_pool2d(masks, grid)[:, 0] > 0.5).flatten(1).numpy())
    backbone.train(was_training)
    return np.concatenate(feats), np.concatenate(labels)


def patch_probe(backbone: nn.Module, dataset, indices, *, img_size: int, device: torch.device | str = "cpu",
                seed: int = 0) -> ProbeResult:
    """Fit a linear probe on the first half of ``indices``' patch tokens and score it on the second half.

    Parameters
    ----------
    backbone : timm ViT
        Frozen (no gradient is taken; its train/eval mode is restored).
    dataset : ShardDataset
        Items with ``image`` (3, S, S) uint8 and ``maps[0]`` the pseudo-mask (0/255).
    indices : sequence of int
        At least 2 samples; the first ``len // 2`` fit the probe, the rest score it.
    img_size : int
        Input size (the pretraining's global crop size).
    """
    from sklearn.linear_model import LogisticRegression  # imported when a probe runs (about a second)
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    indices = list(indices)
    if len(indices) < 2:
        raise ValueError(f"indices: the probe needs at least 2 samples (one to fit, one to score), got {len(indices)}")
    feats, labels = _patch_features(backbone, dataset, indices, img_size=img_size, device=torch.device(device))
    half = len(indices) // 2
    x_fit, y_fit = feats[:half].reshape(-1, feats.shape[-1]), labels[:half].ravel()
    x_test, y_test = feats[half:].reshape(-1, feats.shape[-1]), labels[half:].ravel()
    n_test = int(y_test.size)
    lesion_fraction = float(y_test.mean())
    if y_fit.all() or not y_fit.any() or y_test.all() or not y_test.any():
        return ProbeResult(math.nan, math.nan, len(indices), n_test, lesion_fraction)
    probe = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=500,
                                                               random_state=seed))
    pred = probe.fit(x_fit, y_fit).predict(x_test).astype(bool)
    inter, union = np.sum(pred & y_test), np.sum(pred | y_test)
    balanced = 0.5 * (inter / y_test.sum() + np.sum(~pred & ~y_test) / (~y_test).sum())
    return ProbeResult(jaccard=float(inter / union), balanced_accuracy=float(balanced), n_images=len(indices),
                       n_patches=n_test, lesion_fraction=lesion_fraction)
