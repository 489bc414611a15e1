"""Clean-up of binary masks, shared by the seeds, the walker and the S^3-Net clustering."""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from scipy import ndimage as ndi

__all__ = ["fill_holes", "main_component", "one_lesion", "without_frame"]


@lru_cache(maxsize=8)
def centre_grids(h: int, w: int, centre_sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(prior, yy, xx)``, each (H, W) float64 and read-only: the Gaussian centre prior (standard deviation
    ``centre_sigma`` times the diagonal, peak 1 at the image centre) and the pixel coordinates."""
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.mgrid[0:h, 0:w]
    sig = centre_sigma * np.hypot(h, w)
    prior = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))
    grids = (prior, yy.astype(np.float64), xx.astype(np.float64))
    for g in grids:
        g.flags.writeable = False
    return grids


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of ``mask``: ``(H, W) bool -> (H, W) bool``.

    A hole is a False region not 4-connected to the image border, as in ``scipy.ndimage.binary_fill_holes``
    with its default structure (the result is the same, pixel for pixel), found here by one flood fill of the
    background from outside the image instead of repeated binary dilations.
    """
    outside = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    cv2.floodFill(outside, None, (0, 0), 2, flags=4)
    return outside[1:-1, 1:-1] != 2


def main_component(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Fill holes and keep the component holding most lesion seeds (``(H, W) bool -> (H, W) bool``)."""
    filled = fill_holes(mask)
    labels, n = ndi.label(filled)
    if n <= 1:
        return filled
    votes = np.bincount(labels[seeds], minlength=n + 1)
    votes[0] = 0
    best = int(np.argmax(votes)) if votes.any() else int(np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    return labels == best


def without_frame(mask: np.ndarray, *, band: float = 1 / 32, max_contact: float = 0.25,
                  max_enclosure: float = 1.5) -> np.ndarray:
    """``mask`` without its frame-like components: ``(H, W) bool -> (H, W) bool``.

    A component is frame-like when it lies along the image border (it covers more than ``max_contact`` of the
    border band, ``band`` of the image side wide), or when it reaches that band and encloses more than
    ``max_enclosure`` times its own area (a ring: the dark rim of a lens vignette, around the bright disc).
    Filling the holes of such a ring would make the whole disc the lesion. When every component is frame-like,
    the mask is returned as it is (a lesion that fills the frame). Ours; the case is ``synth --fov vignette``.
    """
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    h, w = mask.shape
    b = max(1, round(band * min(h, w)))
    border = np.zeros((h, w), bool)
    border[:b] = border[-b:] = True
    border[:, :b] = border[:, -b:] = True
    contact = np.bincount(labels[border], minlength=n + 1)[1:] / border.sum()
    frame = contact > max_contact
    boxes = ndi.find_objects(labels)
    for k in np.flatnonzero((contact > 0) & ~frame):
        component = labels[boxes[k]] == k + 1
        frame[k] = fill_holes(component).sum() > max_enclosure * component.sum()
    if frame.all() or not frame.any():
        return mask
    return mask & ~np.isin(labels, np.flatnonzero(frame) + 1)


def one_lesion(mask: np.ndarray, centre_sigma: float = 0.25, implausible: np.ndarray | None = None) -> np.ndarray:
    """Leave out frame-like components (:func:`without_frame`), fill holes and keep one 8-connected component:
    the one with the most centre-weighted area.

    ``(H, W) bool -> (H, W) bool``. The prior of ISIC-style masks (one lesion per image, no holes, the lesion
    framed near the centre) applied to a predicted mask: each component scores the sum of the Gaussian centre
    prior over its pixels (:func:`centre_grids`, the same ``centre_sigma`` of the diagonal as the seeds'
    :class:`~pipeline.pseudomask.seeds.SeedConfig`), which removes the dark vignette corners and small blobs a
    segmenter takes for lesion without dropping a large lesion away from the centre. Ties go to the lowest label.

    ``implausible`` : (h, w) bool, optional
        Pixels that cannot be lesion (e.g. :func:`pipeline.pseudomask.seeds.implausible_colour`: outside the
        field of view, or coloured like a calibration sticker), on any grid of the same aspect (a 256 px copy
        of the image is enough). Each component's score is then multiplied by the fraction of its pixels,
        sampled on that grid, that are not implausible: a segmenter that also marks a bright orange sticker keeps
        the lesion, not the sticker. A component too small to be sampled keeps its score.
    """
    filled = fill_holes(without_frame(mask))
    labels, n = ndi.label(filled, structure=np.ones((3, 3), bool))
    if n <= 1:
        return filled
    # the prior is separable (exp(-(dy^2 + dx^2) / 2s^2) = gy(y) gx(x)): each component's score is gy @ [its
    # pixels] @ gx over its bounding box, with no image-sized weight array (predictions are at full size)
    h, w = mask.shape
    sig = centre_sigma * np.hypot(h, w)
    gy = np.exp(-((np.arange(h) - (h - 1) / 2.0) ** 2) / (2 * sig**2))
    gx = np.exp(-((np.arange(w) - (w - 1) / 2.0) ** 2) / (2 * sig**2))
    score = np.array([gy[ys] @ (labels[ys, xs] == k) @ gx[xs]
                      for k, (ys, xs) in enumerate(ndi.find_objects(labels), 1)])
    if implausible is not None:
        score = score * _plausible_fraction(labels, n, implausible)
    return labels == int(np.argmax(score)) + 1


def _plausible_fraction(labels: np.ndarray, n: int, implausible: np.ndarray) -> np.ndarray:
    """Per component 1..n of ``labels`` (H, W): the fraction of its pixels, sampled at the centres of the cells
    of the (h, w) grid of ``implausible``, that are not implausible (1 for a component no cell centre hits)."""
    h, w = implausible.shape
    big_h, big_w = labels.shape
    ys = np.minimum(((np.arange(h) + 0.5) * big_h / h).astype(int), big_h - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * big_w / w).astype(int), big_w - 1)
    sampled = labels[np.ix_(ys, xs)]
    total = np.bincount(sampled.ravel(), minlength=n + 1)[1:]
    bad = np.bincount(sampled[implausible], minlength=n + 1)[1:]
    return np.where(total > 0, 1.0 - bad / np.maximum(total, 1), 1.0)
