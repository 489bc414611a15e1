"""Where to cut the walker's probability, per image: a learned choice among a ladder of thresholds.

One Random Walker gives a probability map; a fixed cut (0.3) is right for most images but leaks on small faint
lesions and cuts large ones short. Every threshold of ``CUT_LADDER`` gives a candidate mask (the component
holding the lesion seeds, holes filled); ten label-free measures of each candidate (:data:`FEATURES`: seven of
the candidate itself, three against the image's best candidate on the same measure) are scored by a small
quadratic model, and the best-scoring candidate is kept.

The model (``cut_model.json`` beside this file) is a degree-2 polynomial ridge regression of each candidate's
Jaccard against the expert mask, fitted by ``bench/fit_cut_model.py`` on the labelled ``isic2017_256`` images
outside ``isic_sample`` (docs/EXPERIMENTS.md, "The learned per-image cut"). It is evaluated here with numpy from
the fitted scikit-learn parameters; :func:`model_from_sklearn` converts a fitted pipeline. All ours
(docs/METHOD.md, section 3.4).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from pipeline.pseudomask.cleanup import main_component

__all__ = ["CUT_LADDER", "FEATURES", "CutModel", "candidate_cuts", "choose_cut", "load_cut_model",
           "model_from_sklearn", "relative_measures"]

CUT_LADDER = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
FEATURES = ("threshold", "log_area", "within_variance", "ring_contrast", "contour_gradient", "separation",
            "coarse_fraction", "within_variance_over_min", "ring_contrast_under_max", "contour_gradient_under_max")
MODEL_PATH = Path(__file__).with_name("cut_model.json")
_RELATIVE = tuple((FEATURES.index(measure), FEATURES.index(relative), best) for measure, relative, best in (
    ("within_variance", "within_variance_over_min", np.min), ("ring_contrast", "ring_contrast_under_max", np.max),
    ("contour_gradient", "contour_gradient_under_max", np.max)))
_RING = np.ones((5, 5), np.uint8)


@dataclass(frozen=True)
class CutModel:
    """A fitted ``StandardScaler -> PolynomialFeatures(2) -> StandardScaler -> Ridge`` pipeline, as arrays.

    ``score(X)`` = ``((P(z) - mean2) / scale2) @ coef + intercept`` with ``z = (X - mean1) / scale1`` and
    ``P(z)[k] = prod_j z_j ** powers[k, j]``: scikit-learn's ``predict`` of the same pipeline.
    """

    name: str
    features: tuple[str, ...]
    mean1: np.ndarray
    scale1: np.ndarray
    powers: np.ndarray
    mean2: np.ndarray
    scale2: np.ndarray
    coef: np.ndarray
    intercept: float

    def score(self, x: np.ndarray) -> np.ndarray:
        """``(n, len(features)) -> (n,)``: the predicted Jaccard of each candidate (only the order is used)."""
        z = (np.asarray(x, np.float64) - self.mean1) / self.scale1
        poly = np.prod(z[:, None, :] ** self.powers[None], axis=2)
        return ((poly - self.mean2) / self.scale2) @ self.coef + self.intercept

    def to_json(self) -> dict:
        return {"name": self.name, "features": list(self.features), "mean1": self.mean1.tolist(),
                "scale1": self.scale1.tolist(), "powers": self.powers.tolist(), "mean2": self.mean2.tolist(),
                "scale2": self.scale2.tolist(), "coef": self.coef.tolist(), "intercept": self.intercept}

    @classmethod
    def from_json(cls, d: dict) -> CutModel:
        arr = {k: np.asarray(d[k], np.float64) for k in ("mean1", "scale1", "mean2", "scale2", "coef")}
        model = cls(name=str(d["name"]), features=tuple(d["features"]), powers=np.asarray(d["powers"], np.int64),
                    intercept=float(d["intercept"]), **arr)
        n, k = len(model.features), model.powers.shape[0]
        if model.features != FEATURES or model.powers.shape != (k, n) or any(
                a.shape != (n,) for a in (model.mean1, model.scale1)) or any(
                a.shape != (k,) for a in (model.mean2, model.scale2, model.coef)):
            raise ValueError(f"cut model {model.name!r}: features or array shapes do not match {FEATURES}")
        return model


def model_from_sklearn(pipeline, name: str) -> CutModel:
    """A :class:`CutModel` from a fitted scikit-learn ``make_pipeline(StandardScaler(), PolynomialFeatures(2),
    StandardScaler(), Ridge())``."""
    s1, poly, s2, ridge = (step for _, step in pipeline.steps)
    return CutModel(name=name, features=FEATURES, mean1=np.asarray(s1.mean_, np.float64),
                    scale1=np.asarray(s1.scale_, np.float64), powers=np.asarray(poly.powers_, np.int64),
                    mean2=np.asarray(s2.mean_, np.float64), scale2=np.asarray(s2.scale_, np.float64),
                    coef=np.asarray(ridge.coef_, np.float64), intercept=float(ridge.intercept_))


@lru_cache(maxsize=4)
def load_cut_model(name: str, path: str | None = None) -> CutModel:
    """The bundled cut model (``cut_model.json``), checked to be the one named ``name`` (the name is part of
    :class:`~pipeline.pseudomask.per_image.PseudoMaskConfig`, so a refitted model gets a new config hash)."""
    file = Path(path) if path else MODEL_PATH
    try:
        model = CutModel.from_json(json.loads(file.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{file}: cannot read the cut model ({exc})") from None
    if model.name != name:
        raise ValueError(f"{file}: holds cut model {model.name!r}, the config asks for {name!r}")
    return model


def candidate_cuts(prob: np.ndarray, fg: np.ndarray, fov: np.ndarray, lab: np.ndarray, *, separation: float,
                   coarse_fraction: float, ladder: tuple[float, ...] = CUT_LADDER
                   ) -> tuple[list[float], list[np.ndarray], np.ndarray]:
    """The candidate masks of the threshold ladder and their features.

    Parameters
    ----------
    prob : (H, W) float32
        Walker probability.
    fg : (H, W) bool
        Lesion seeds (each candidate is the component of ``prob > t`` holding most of them, holes filled).
    fov : (H, W) bool
        Field of view.
    lab : (H, W, 3) float32
        CIE Lab of the hair-free image.
    separation, coarse_fraction : float
        The coarse map's Otsu separation and its share of the image (same for every candidate).

    Returns
    -------
    (thresholds, masks, X)
        The thresholds whose candidate is usable (at least 5 pixels inside and 5 field-of-view pixels
        outside), their masks, and ``X`` (n, 10) float64 in the order of :data:`FEATURES`:
        the threshold; log of the mask's share of the field of view; the within-class Lab variance of the
        two-region split of the field of view over the total (a Chan-Vese energy, lower = better split); the
        Lab distance between the means of 2-px rings just inside and just outside the outline; the mean Lab
        gradient magnitude on those rings; ``separation``; ``coarse_fraction``; then the third, fourth and
        fifth measures against the image's best candidate: within-variance minus the smallest among the
        candidates (>= 0), contrast and gradient minus the largest (<= 0). These three let one global model
        compare candidates within an image (docs/EXPERIMENTS.md, "The learned per-image cut").
    """
    smooth = cv2.GaussianBlur(lab, (0, 0), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    grad = np.sqrt((gx * gx + gy * gy).sum(-1))
    n_fov = int(fov.sum())
    kept, masks = [], []
    for t in ladder:
        mask = main_component(prob > t, fg)
        area = int(mask.sum())
        if area >= 5 and n_fov - int((mask & fov).sum()) >= 5 and (mask & fov).any():
            kept.append(t)
            masks.append(mask)
    if not kept:
        return [], [], np.zeros((0, len(FEATURES)))
    # every per-candidate sum as one matrix product: (candidates x pixels) @ (pixels x values)
    flat = smooth.reshape(-1, 3).astype(np.float64)
    values = np.concatenate([flat, flat * flat, grad.reshape(-1, 1).astype(np.float64),
                             np.ones((flat.shape[0], 1))], axis=1)  # L a b, L^2 a^2 b^2, gradient, count
    fov_flat = fov.ravel()
    regions = []
    for mask in masks:
        m8 = mask.astype(np.uint8)
        ring_out = cv2.dilate(m8, _RING).astype(bool) & ~mask & fov
        ring_in = mask & ~cv2.erode(m8, _RING).astype(bool)
        regions += [(mask.ravel() & fov_flat), ring_in.ravel(), ring_out.ravel()]
    sums = np.stack(regions).astype(np.float64) @ values  # (3 n, 8)
    total = fov_flat.astype(np.float64) @ values
    inside, ring_in, ring_out = sums[0::3], sums[1::3], sums[2::3]
    outside = total[None] - inside

    def squares(s: np.ndarray) -> np.ndarray:  # within-region sum of squared deviations, summed over L a b
        return (s[:, 3:6] - s[:, 0:3] ** 2 / np.maximum(s[:, 7:8], 1)).sum(1)

    within = (squares(inside) + squares(outside)) / (float(squares(total[None])[0]) + 1e-6)
    both = (ring_in[:, 7] > 0) & (ring_out[:, 7] > 0)
    mean_in = ring_in[:, 0:3] / np.maximum(ring_in[:, 7:8], 1)
    mean_out = ring_out[:, 0:3] / np.maximum(ring_out[:, 7:8], 1)
    contrast = np.where(both, np.linalg.norm(mean_in - mean_out, axis=1), 0.0)
    gradient = (ring_in[:, 6] + ring_out[:, 6]) / np.maximum(ring_in[:, 7] + ring_out[:, 7], 1)
    areas = np.array([m.sum() for m in masks], np.float64)
    x = np.column_stack([np.asarray(kept, np.float64), np.log(areas / max(n_fov, 1)), within, contrast, gradient,
                         np.full(len(kept), float(separation)), np.full(len(kept), float(coarse_fraction)),
                         np.zeros((len(kept), 3))])
    return kept, masks, relative_measures(x)


def relative_measures(x: np.ndarray) -> np.ndarray:
    """Fill the last three columns of ``x`` (n candidates of one image, :data:`FEATURES` order) in place from the
    image's best candidate: within-variance minus the smallest, ring contrast and contour gradient minus the
    largest; returns ``x``. Also for candidates pooled from several ladders of one image."""
    for measure, relative, best in _RELATIVE:
        x[:, relative] = x[:, measure] - best(x[:, measure])
    return x


def choose_cut(prob: np.ndarray, fg: np.ndarray, fov: np.ndarray, lab: np.ndarray, *, separation: float,
               coarse_fraction: float, model: CutModel, ladder: tuple[float, ...] = CUT_LADDER
               ) -> tuple[float, np.ndarray] | None:
    """``(threshold, mask)`` of the best-scoring candidate of :func:`candidate_cuts`; None when no candidate
    is usable (the caller keeps its fixed cut). Ties go to the lower threshold."""
    kept, masks, x = candidate_cuts(prob, fg, fov, lab, separation=separation, coarse_fraction=coarse_fraction,
                                    ladder=ladder)
    if not kept:
        return None
    best = int(np.argmax(model.score(x)))
    return kept[best], masks[best]
