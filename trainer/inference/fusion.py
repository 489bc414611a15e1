"""Stage 1's label-free walker probability of an image, and its fusion with the segmenter's probability
(``finetune --fuse``, ``predict --fuse``, the table's ``+fuse`` rows)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common import datasets
from pipeline.pseudomask.per_image import PseudoMaskConfig
from pipeline.run import RunConfig, process_sample

FUSE_WEIGHT = 0.15  # the model's share of a fused probability (fuse_probabilities)
WALKER_CUT = PseudoMaskConfig().threshold  # stage 1's fixed cut (0.3); fusion uses each image's own (walker_cut)


@dataclass(frozen=True)
class WalkerView:
    """Stage 1's result for one image at the shard size S (the image squashed to S x S, as ``pseudomasks``
    stores it): ``prob`` (S, S) float32, ``cut`` (its per-image cut), ``mask`` (S, S) bool (its pseudo-mask),
    ``image`` (S, S, 3) uint8 (hair removed) and ``confidence`` (stage 1's own)."""

    prob: np.ndarray
    cut: float
    mask: np.ndarray
    image: np.ndarray
    confidence: float


def walker_view(path: str | Path) -> WalkerView | None:
    """Stage 1 run on the image at ``path`` (default :class:`pipeline.run.RunConfig`); None when it finds no
    lesion. Cached by path: a table run scores the same test images many times. About 0.1 s per full-size
    ISIC image on one core; 0.5 MB a cached image."""
    return _walker_view(str(path))


@functools.lru_cache(maxsize=1024)
def _walker_view(path: str) -> WalkerView | None:
    # the squashed S x S maps, not full-size ones, are cached: up to 50 MB an image otherwise
    record = process_sample(datasets.Sample(id=Path(path).stem, image=Path(path)), RunConfig())
    if record.no_lesion:
        return None
    arrays = (record.prob.astype(np.float32), record.pseudo_mask.astype(bool), record.image)
    for a in arrays:
        a.flags.writeable = False
    return WalkerView(prob=arrays[0], cut=float(record.diagnostics.get("threshold", WALKER_CUT)), mask=arrays[1],
                      image=arrays[2], confidence=float(record.diagnostics.get("confidence", float("nan"))))


def walker_probability(path: str | Path) -> np.ndarray | None:
    """Stage 1's label-free lesion probability of the image at ``path`` (hair removal, seeds, Random Walker with
    the default :class:`pipeline.run.RunConfig`, as ``pseudomasks`` stores it), resized bilinearly to the image's
    original (upright) size: ``(H, W) float32`` in [0, 1]; ``None`` when stage 1 finds no lesion in it.

    About 0.1 s per full-size ISIC image on one core; cached by path across the cells of a table run.
    """
    view = walker_view(path)
    if view is None:
        return None
    height, width = datasets.image_size(Path(path))
    return cv2.resize(view.prob, (width, height), interpolation=cv2.INTER_LINEAR)


def walker_cut(path: str | Path) -> float:
    """Where stage 1 cut the walker probability of the image at ``path`` (its per-image learned cut,
    :mod:`pipeline.pseudomask.cut`); ``WALKER_CUT`` when it found no lesion. Shares :func:`walker_probability`'s
    cache."""
    view = walker_view(path)
    return WALKER_CUT if view is None else view.cut


def fuse_probabilities(model_prob: np.ndarray, walker_prob: np.ndarray | None, *, weight: float = FUSE_WEIGHT,
                       walker_cut: float = WALKER_CUT) -> np.ndarray:
    """The fused lesion probability, ``(H, W) float32``: ``weight * model + (1 - weight) * walker'``, where
    ``walker'`` maps the walker's probability piecewise linearly so that its own cut (``walker_cut``: stage 1's
    cut of the same image, :func:`walker_cut`) lands on 0.5, the cut of every probability here; the model's alone when the
    walker found no lesion (``walker_prob`` None).

    Ours. With the default weight (0.15) the walker's mask is kept where the walker is sure, and the model moves
    its cut pixel by pixel between a walker probability of 0.25 (the model says lesion) and 0.42 (it says skin).
    The weight was chosen on held-out ``isic2017_256`` images, never on ``isic_sample`` (docs/EXPERIMENTS.md,
    "Fusion with the walker"); the per-image choice (:mod:`trainer.inference.choice`) uses it where the model and
    the walker agree.
    """
    if not 0.0 <= weight <= 1.0 or not 0.0 < walker_cut < 1.0:
        raise ValueError(f"weight in [0, 1] and walker_cut in (0, 1) expected, got {weight}, {walker_cut}")
    if walker_prob is None:
        return model_prob
    if walker_prob.shape != model_prob.shape:
        raise ValueError(f"walker probability {walker_prob.shape} and model probability {model_prob.shape} differ")
    walker = walker_prob.astype(np.float32)
    calibrated = np.where(walker < walker_cut, walker * (0.5 / walker_cut),
                          0.5 + (walker - walker_cut) * (0.5 / (1.0 - walker_cut)))
    return (weight * model_prob.astype(np.float32) + (1.0 - weight) * calibrated).astype(np.float32)
