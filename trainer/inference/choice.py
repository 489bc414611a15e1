"""The per-image choice between the student and stage 1's walker, label-free (docs/METHOD.md, section 6.3).

Where the student's mask and the walker's agree (:func:`~trainer.inference.agreement.mask_agreement` at least
``ChoiceConfig.agree_at``), their probabilities are combined with the fixed share ``agree_weight`` of the model
(:func:`~trainer.inference.fusion.fuse_probabilities`). Where they disagree, one of them is wrong, and the mask
that looks more like a lesion wins outright (model share 1 or 0). "Looks like a lesion" is measured against the
pool itself: four label-free measures of a mask on its image (:func:`mask_features`), each oriented so that
higher means more lesion-like, are standardised by the median and spread of the masks the two sources agreed
on in the same pool (:class:`PoolReference`), and summed (:func:`lesion_score`). The orientations are what a
dermoscopy lesion is, not fitted: darker than the skin around it, distinct in colour from it, near the centre of
the photo, and away from the frame. Everything here is pure numpy on a small (about 256 px) copy of the image.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Sequence

import cv2
import numpy as np

from pipeline.pseudomask.seeds import to_lab

__all__ = ["FEATURES", "DEFAULT_REFERENCE", "ChoiceConfig", "PoolReference", "Choice", "mask_features", "lesion_score",
           "fit_reference", "agreed_reference", "choose", "chosen_score", "confidence_of"]

#: The measures of :func:`mask_features`, each oriented so that higher is more lesion-like.
FEATURES = ("contrast", "darkness", "centrality", "away_from_frame")
#: The smallest spread of each feature in a reference (Delta E, L*, image sides, share of the outline): a pool
#: whose masks all keep off the frame must not make the first pixel on it outweigh everything else, nor a
#: lesion a few percent off the centre lose to a mask centred on the photo.
MIN_SCALE = (2.0, 2.0, 0.05, 0.1)
SOURCES = ("walker", "both", "student")


@dataclass(frozen=True)
class ChoiceConfig:
    """How the per-image choice decides (:func:`choose`).

    ``agree_at``: the agreement (Jaccard of the two masks) from which the two are combined rather than one
    chosen; ``agree_weight``: the model's share of the combined probability there (the fixed fusion's 0.15);
    ``confident_at``: masks whose two sources agree at least this much make the pool's reference
    (:func:`fit_reference`); ``min_reference``: below this many such images the reference uses every mask.
    """

    agree_at: float = 0.5
    agree_weight: float = 0.15
    confident_at: float = 0.8
    min_reference: int = 20

    def __post_init__(self):
        for name in ("agree_at", "agree_weight", "confident_at"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1], got {getattr(self, name)}")
        if self.min_reference < 1:
            raise ValueError(f"min_reference: expected >= 1, got {self.min_reference}")


@dataclass(frozen=True)
class PoolReference:
    """Where a pool's agreed masks lie on each of :data:`FEATURES`: ``centre`` (median) and ``scale`` (1.4826 x
    the median absolute deviation, floored), fitted on ``n`` masks. Stored as JSON beside what it was fitted on
    (a round's shards, a model file) so that a later choice on new images measures against the same pool."""

    centre: tuple[float, ...]
    scale: tuple[float, ...]
    n: int
    features: tuple[str, ...] = FEATURES

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "PoolReference":
        names = tuple(d.get("features", ()))
        if names != FEATURES:
            raise ValueError(f"pool reference of features {names}, expected {FEATURES}")
        centre, scale = tuple(float(v) for v in d["centre"]), tuple(float(v) for v in d["scale"])
        if len(centre) != len(FEATURES) or len(scale) != len(FEATURES) or not all(np.isfinite(centre + scale)) \
                or min(scale) <= 0:
            raise ValueError(f"pool reference: expected {len(FEATURES)} finite centres and positive scales, got "
                             f"{centre}, {scale}")
        return cls(centre=centre, scale=scale, n=int(d["n"]))


#: The reference of the ``isic2017_256`` pool (2,597 images without the test ids): both masks of the images
#: whose round-2 student and walker agree >= 0.8 (1,421 images), as ``relabel`` fitted it (docs/RESULTS.md,
#: "Self-training"); used when the images at hand are too few to fit their own.
DEFAULT_REFERENCE = PoolReference(centre=(25.45, 20.04, -0.0541, 0.0), scale=(10.38, 11.11, 0.05, 0.1), n=2842)


@dataclass(frozen=True)
class Choice:
    """One image's decision: ``weight`` is the model's share of the fused probability (1: the student's mask,
    0: the walker's, ``agree_weight``: both), ``source`` one of :data:`SOURCES`, ``agreement`` the Jaccard of the
    two masks, ``scores`` their lesion scores (walker, student; NaN for an empty mask)."""

    weight: float
    source: str
    agreement: float
    scores: tuple[float, float]


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & ~mask


def mask_features(mask: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """The :data:`FEATURES` of one mask on its image: ``(H, W) bool, (H, W, 3) float32 Lab -> (4,) float64``.

    - ``contrast``: the CIE76 colour difference (Delta E) between the mask's mean Lab and that of the ring of
      skin around it (``H / 16`` px wide);
    - ``darkness``: L* of that ring minus L* of the mask (lesions are darker than the skin around them; the
      bright skin inside a lens vignette taken for lesion is lighter than its dark rim);
    - ``centrality``: minus the distance of the mask's centroid from the image centre, in image sides;
    - ``away_from_frame``: minus the share of the mask's outline in the image's border band (``H / 32`` px).

    An empty mask has NaN features.
    """
    mask = np.asarray(mask, bool)
    if mask.shape != lab.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {lab.shape[:2]}: expected the same size")
    if not mask.any():
        return np.full(len(FEATURES), np.nan)
    h, w = mask.shape
    ring = _ring(mask, max(1, h // 16))
    outside = lab[ring] if ring.any() else lab[~mask] if (~mask).any() else lab[mask]
    inside = lab[mask].mean(axis=0)
    around = outside.mean(axis=0)
    contrast = float(np.linalg.norm(inside - around))
    darkness = float(around[0] - inside[0])
    ys, xs = np.nonzero(mask)
    centrality = -float(np.hypot(ys.mean() / h - 0.5, xs.mean() / w - 0.5))
    # pixels on the image border count as outline (outside the image is not lesion): erode with a 0 border
    outline = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                                borderValue=0).astype(bool)
    b = max(1, h // 32)
    band = np.zeros_like(mask)
    band[:b] = band[-b:] = True
    band[:, :b] = band[:, -b:] = True
    away = -float((outline & band).sum() / max(int(outline.sum()), 1))
    return np.array([contrast, darkness, centrality, away])


def fit_reference(features: np.ndarray) -> PoolReference:
    """The :class:`PoolReference` of ``(N, 4)`` features (rows with NaN left out): the median, and 1.4826 x the
    median absolute deviation, at least :data:`MIN_SCALE`."""
    f = np.asarray(features, float)
    f = f[np.isfinite(f).all(axis=1)]
    if len(f) == 0:
        raise ValueError("fit_reference: no mask with finite features (every mask empty)")
    centre = np.median(f, axis=0)
    scale = np.maximum(1.4826 * np.median(np.abs(f - centre), axis=0), MIN_SCALE)
    return PoolReference(centre=tuple(float(v) for v in centre), scale=tuple(float(v) for v in scale), n=len(f))


def agreed_reference(agreements: Sequence[float], features: Sequence[tuple[np.ndarray | None, np.ndarray]],
                     config: ChoiceConfig) -> PoolReference | None:
    """The reference of a pool's agreed masks: both masks of every image whose two masks (walker, student
    ``features``) agree at least ``config.confident_at``; None when fewer than ``config.min_reference`` images
    do (the caller picks the fallback)."""
    agreed = [pair for a, pair in zip(agreements, features) if a >= config.confident_at and pair[0] is not None]
    if len(agreed) < config.min_reference:
        return None
    return fit_reference(np.stack([f for pair in agreed for f in pair]))


#: Each standardised feature counts at most this much either way in :func:`lesion_score`.
TERM_LIMIT = 3.0


def lesion_score(features: np.ndarray, reference: PoolReference) -> np.ndarray:
    """``sum_k clip((f_k - centre_k) / scale_k, -3, 3)``: how much more lesion-like than the pool's agreed masks a
    mask is (no single measure decides alone). ``(..., 4) -> (...)``; NaN for an empty mask."""
    f = np.asarray(features, float)
    z = (f - np.asarray(reference.centre)) / np.asarray(reference.scale)
    return np.clip(z, -TERM_LIMIT, TERM_LIMIT).sum(axis=-1)


def choose(agreement: float, walker_features: np.ndarray | None, student_features: np.ndarray,
           reference: PoolReference, config: ChoiceConfig = ChoiceConfig()) -> Choice:
    """Decide one image: combine the two masks where they agree, else keep the more lesion-like one.

    ``agreement``: :func:`~trainer.inference.agreement.mask_agreement` of the student's and the walker's mask;
    ``walker_features``, ``student_features``: their :func:`mask_features` (``walker_features`` None: stage 1
    found no lesion, and the student decides alone). Ties go to the walker.
    """
    if walker_features is None:
        return Choice(1.0, "student", agreement, (float("nan"), float("nan")))
    scores = (float(lesion_score(walker_features, reference)), float(lesion_score(student_features, reference)))
    if agreement >= config.agree_at:
        return Choice(config.agree_weight, "both", agreement, scores)
    if np.isfinite(scores[1]) and (not np.isfinite(scores[0]) or scores[1] > scores[0]):
        return Choice(1.0, "student", agreement, scores)
    return Choice(0.0, "walker", agreement, scores)


def chosen_score(choice: Choice) -> float:
    """The lesion score of the mask a choice kept (where both were kept, the better of the two); NaN when the
    choice had no score (stage 1 found no lesion)."""
    walker, student = choice.scores
    if choice.source == "walker":
        return walker
    if choice.source == "student":
        return student
    return float(np.nanmax([walker, student])) if np.isfinite([walker, student]).any() else float("nan")


def confidence_of(choice: Choice, walker_confidence: float) -> float:
    """The per-mask confidence, in [0, 1]: ``sqrt(c_1) * (agreement + sigmoid(score / 3)) / 2``.

    ``agreement``: the Jaccard of the student's and the walker's masks (two independent segmentations that agree
    are rarely both wrong); ``score``: the lesion score of the mask kept (:func:`chosen_score`; how lesion-like it
    is next to the pool's agreed masks; 0 when unknown); ``c_1``: stage 1's own confidence
    (:func:`pipeline.pseudomask.per_image.mask_confidence`: the walk's margin and the colour evidence; NaN, as in
    shards older than it, counts as 1). docs/RESULTS.md has how well it ranks masks.
    """
    c1 = 1.0 if not np.isfinite(walker_confidence) else min(max(walker_confidence, 0.0), 1.0)
    score = chosen_score(choice)
    typical = 1.0 / (1.0 + np.exp(-np.clip(score if np.isfinite(score) else 0.0, -60, 60) / 3.0))
    return float(np.sqrt(c1) * (min(max(choice.agreement, 0.0), 1.0) + typical) / 2.0)


def image_lab(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3) uint8 RGB -> (H, W, 3) float32`` CIE Lab, as stage 1 computes it."""
    return to_lab(image)
