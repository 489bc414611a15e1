"""Automatic seeds for the Random Walker: field of view, coarse lesion map, seed labels.

docs/METHOD.md, sections 3.1 (field of view) and 3.2 (coarse map, seeds). All functions are pure: numpy in, numpy
out.

Label convention (scikit-image ``random_walker``): ``0`` unlabelled, ``1`` lesion seed, ``2`` background
seed, ``-1`` inactive (outside the field of view; removed from the graph).

What real dermoscopy throws at a label-free lesion finder, and the answer here (all ours):

- black or grey vignette corners and circular frames: :func:`field_of_view` removes dark, grey regions
  connected to the corners, dark relative to the skin, not only absolutely black; when their inner edge is
  a circle (:mod:`pipeline.pseudomask.fov`, partial circles too) the field of view is the fitted disc less a rim, and the
  band along its edge is kept out of the coarse map (a dark lens rim would close a ring around everything);
- colour-calibration stickers, ink and specular flash: :func:`lesion_feature` scores how much darker than the
  skin a pixel is, plus how far its colour is from the skin colour, and zeroes pixels that are brighter than
  the skin or strongly saturated / green / cyan (no pigmented lesion has those colours);
- several candidate regions: :func:`coarse_lesion_map` picks the component with the highest centre-weighted
  contrast, penalising components that run along the image border far from the centre;
- a skin estimate polluted by a large lesion: a second pass re-estimates the skin colour on the field of
  view outside the (dilated) first coarse map.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
from scipy import ndimage as ndi

from pipeline.pseudomask.cleanup import centre_grids, fill_holes
from pipeline.pseudomask.fov import circular_fov, edge_band

__all__ = [
    "SeedConfig",
    "to_lab",
    "field_of_view",
    "implausible_colour",
    "skin_colour",
    "lesion_feature",
    "coarse_lesion_map",
    "CoarseMap",
    "coarse_lesion_evidence",
    "seed_labels",
    "INACTIVE",
    "UNLABELLED",
    "LESION",
    "BACKGROUND",
]

INACTIVE, UNLABELLED, LESION, BACKGROUND = -1, 0, 1, 2


@dataclass(frozen=True)
class SeedConfig:
    """Parameters of the field of view, the coarse lesion map and the seeds (all ours).

    Lengths are fractions of the image diagonal (or short side, where said) so the same config works at any
    working resolution. Colours are CIE Lab units (L* 0-100).

    Attributes
    ----------
    fov_max_lightness : float
        Pixels with L* below this and chroma below ``fov_max_chroma`` are "black frame" candidates.
    fov_rel_lightness : float
        Pixels darker than this fraction of the bright-skin L* (90th percentile of L* in the central region)
        and greyer than ``fov_max_chroma`` are frame candidates too (grey vignette corners). 0 disables it.
    fov_max_chroma : float
        Chroma sqrt(a*^2 + b*^2) bound of frame pixels (lesions are dark but coloured).
    fov_corner_fraction : float
        Side of the square corner patches (fraction of the short side) that a frame component must touch.
    fov_min_fraction : float
        If the field of view would keep less than this fraction of the image, it is taken as the whole image.
    fov_circle : bool
        When the frame's inner edge is a circle (:func:`pipeline.pseudomask.fov.circular_fov`), the field of view is the
        fitted disc, shrunk by ``fov_rim`` of its radius (the lens rim darkens: lesion-like to every colour
        rule).
    fov_rim : float
        Rim margin of a circular field of view, as a fraction of its radius.
    fov_edge_band : float
        Width (fraction of the diagonal) of the band along the field-of-view edge (not the image border)
        that the coarse map leaves out before filling holes: a dark lens rim there would otherwise close a
        ring around the whole field of view. The walker still decides those pixels.
    feature : {'skin_distance', 'blue', 'lightness'}
        Lesion-likeness used for the coarse map: darkness and colour distance from the skin with artefacts
        suppressed (see :func:`lesion_feature`), the inverted blue channel, or inverted L*.
    dark_weight : float
        In ``'skin_distance'``, weight of the L* drop below the skin.
    colour_weight : float
        In ``'skin_distance'``, weight of the a*b* distance from the skin.
    bright_margin : float
        Pixels brighter than the skin by more than this (L* units) are not lesion (flash, stickers, gel).
    max_chroma_excess : float
        Pixels whose chroma exceeds the skin's by more than this are not lesion (stickers, ink).
    min_a, min_b : float
        Pixels with a* below ``min_a`` (green) or b* below ``min_b`` (cyan, blue ink) are not lesion.
    second_pass : bool
        Re-estimate the skin colour outside the dilated first coarse map and redo the map.
    smooth_sigma : float
        Gaussian sigma (fraction of the diagonal) applied to the feature before thresholding.
    border_ring : float
        Width of the border ring (fraction of the short side) used to estimate the skin colour.
    skin_quantile : float
        First skin estimate: the median of the border-ring pixels lighter than this L* percentile (50: the
        lighter half). Higher values keep the estimate on skin when a large lesion covers much of the ring.
    ring_split : float
        When the border-ring pixels form two colour clusters (2-means in Lab) more than this many Lab units
        apart, the ring is part lesion (a lesion that fills or crosses the frame): the skin is estimated from
        the lighter cluster only. 0 disables it.
    otsu_shift : float
        The threshold is ``lo + otsu_shift * (t - lo)`` with t Otsu's threshold and lo the mean of the skin
        class: below 1 it grows the coarse map towards the pale lesion periphery. 0.8, with ``centre_sigma``
        0.25 and ``border_penalty`` 32, chosen by 5-fold selection on isic2017_256 outside isic_sample
        (docs/EXPERIMENTS.md, "Seeds, threshold and walker").
    min_separation : float
        Otsu between-class separation (difference of class means divided by the feature's std within the
        field of view) below which the image is declared lesion-free.
    min_contrast : float
        Smallest difference of class means of the feature (Lab units) for a lesion to exist.
    centre_sigma : float
        Width (fraction of the diagonal) of the Gaussian centre prior used to pick the lesion component.
    border_penalty : float
        Component score factor ``exp(-border_penalty * touch * offset)``: ``touch`` is the fraction of the
        image border the component runs along, ``offset`` the distance of its centroid from the image centre
        over half the diagonal. Corners and stickers hug the border far from the centre; lesions do not.
    min_component : float
        Components smaller than this fraction of the field of view are ignored.
    area_power : float
        The component score is divided by ``area ** (1 - area_power)``: 1 sums the weighted excess (large
        faint regions can win), 0.5 favours a compact, contrasted component over a large faint one.
    fg_erosion : float
        Foreground seeds: pixels of the coarse map deeper than this fraction of its largest inscribed
        radius (distance transform maximum).
    fg_min_radius : float
        Foreground seeds always include a disc of this radius (fraction of the diagonal) at the deepest point.
    bg_dilation : float
        Background seeds: pixels farther than this fraction of the diagonal from the coarse map, plus a
        margin proportional to the coarse map's equivalent radius (``bg_dilation_rel``).
    bg_dilation_rel : float
        Extra dilation, as a fraction of the coarse map's equivalent radius.
    border_frame : float
        Width (fraction of the short side) of the image border frame added to the background seeds where
        the coarse map does not reach it.
    bg_skin_level : float
        Background seeds must look like skin: lesion feature at most ``lo + bg_skin_level * (t - lo)`` with
        ``t`` the coarse map's threshold and ``lo`` the mean feature of the skin class. Pale lesion periphery
        and lesion that crosses the frame are then left to the walker instead of being forced to background.
        ``inf`` disables the check (distance alone decides).
    """

    fov_max_lightness: float = 22.0
    fov_rel_lightness: float = 0.6
    fov_max_chroma: float = 18.0
    fov_corner_fraction: float = 0.04
    fov_min_fraction: float = 0.2
    fov_circle: bool = True
    fov_rim: float = 0.03
    fov_edge_band: float = 0.03
    feature: str = "skin_distance"
    dark_weight: float = 1.0
    colour_weight: float = 1.0
    bright_margin: float = 5.0
    max_chroma_excess: float = 30.0
    min_a: float = -8.0
    min_b: float = -12.0
    second_pass: bool = True
    smooth_sigma: float = 0.006
    border_ring: float = 0.06
    skin_quantile: float = 50.0
    ring_split: float = 0.0
    otsu_shift: float = 0.8
    min_separation: float = 1.0
    min_contrast: float = 6.0
    centre_sigma: float = 0.25
    border_penalty: float = 32.0
    min_component: float = 0.002
    area_power: float = 1.0
    fg_erosion: float = 0.3
    fg_min_radius: float = 0.01
    bg_dilation: float = 0.02
    bg_dilation_rel: float = 0.1
    border_frame: float = 0.02
    bg_skin_level: float = float("inf")

    def __post_init__(self) -> None:
        if self.feature not in ("skin_distance", "blue", "lightness"):
            raise ValueError(
                f"SeedConfig.feature must be 'skin_distance', 'blue' or 'lightness', got {self.feature!r}"
            )
        if not 0.0 <= self.fg_erosion < 1.0:
            raise ValueError(f"SeedConfig.fg_erosion must be in [0, 1), got {self.fg_erosion}")
        if not 0.0 < self.otsu_shift <= 1.5:
            raise ValueError(f"SeedConfig.otsu_shift must be in (0, 1.5], got {self.otsu_shift}")


def _check_rgb(image: np.ndarray, name: str = "image") -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB, got dtype {image.dtype}")


def to_lab(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 sRGB -> (H, W, 3) float32 CIE Lab (L* in [0, 100], a*, b* roughly [-128, 127])."""
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _corner_mask(shape: tuple[int, int], fraction: float) -> np.ndarray:
    h, w = shape
    c = max(1, int(round(fraction * min(h, w))))
    m = np.zeros((h, w), bool)
    m[:c, :c] = m[:c, -c:] = m[-c:, :c] = m[-c:, -c:] = True
    return m


def _border_band(shape: tuple[int, int], width: int) -> np.ndarray:
    band = np.zeros(shape, bool)
    band[:width] = band[-width:] = True
    band[:, :width] = band[:, -width:] = True
    return band


def field_of_view(image: np.ndarray, *, config: SeedConfig = SeedConfig(), lab: np.ndarray | None = None
                  ) -> np.ndarray:
    """Pixels that show skin or lesion, not the vignette or circular frame of the dermatoscope.

    Parameters
    ----------
    image : (H, W, 3) uint8
        RGB image.
    config : SeedConfig
        Uses the ``fov_*`` fields.
    lab : (H, W, 3) float32, optional
        ``to_lab(image)`` when the caller has it already.

    Returns
    -------
    fov : (H, W) bool
        True inside the field of view.

    Notes
    -----
    A pixel is a frame candidate when it is grey (chroma < ``fov_max_chroma``) and dark: L* below
    ``fov_max_lightness`` (black frame) or below ``fov_rel_lightness`` times the bright-skin L* (grey
    vignette). The frame is the union of candidate components that reach one of the four corner patches,
    slightly dilated; the field of view is the largest remaining component. A dark lesion touching one border
    is kept because it is coloured or does not reach a corner.
    """
    _check_rgb(image)
    return _fov_from_lab(to_lab(image) if lab is None else lab, config)


def _fov_from_lab(lab: np.ndarray, config: SeedConfig) -> np.ndarray:
    h, w = lab.shape[:2]
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    limit = config.fov_max_lightness
    if config.fov_rel_lightness > 0:
        ch, cw = h // 4, w // 4
        bright = float(np.percentile(lab[ch:h - ch, cw:w - cw, 0], 90))
        limit = max(limit, config.fov_rel_lightness * bright)
    dark = (lab[..., 0] < limit) & (chroma < config.fov_max_chroma)
    if not dark.any():
        return np.ones((h, w), bool)
    dark = cv2.morphologyEx(dark.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
    labels, n = ndi.label(dark)
    if n == 0:
        return np.ones((h, w), bool)
    corner_ids = np.unique(labels[_corner_mask((h, w), config.fov_corner_fraction)])
    corner_ids = corner_ids[corner_ids > 0]
    if corner_ids.size == 0:
        return np.ones((h, w), bool)
    frame = np.isin(labels, corner_ids)
    # smooth the frame's inner edge a little (the vignette fades gradually)
    k = max(3, int(round(0.01 * min(h, w))) | 1)
    frame = cv2.dilate(frame.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(bool)
    fov = ~frame
    lab_in, m = ndi.label(fov)
    if m > 1:
        sizes = np.bincount(lab_in.ravel())
        sizes[0] = 0
        fov = lab_in == int(np.argmax(sizes))
    if fov.mean() < config.fov_min_fraction:
        return np.ones((h, w), bool)
    if config.fov_circle:
        fov = circular_fov(fov, rim=config.fov_rim)
    return fov


def _artefact(lab: np.ndarray, skin: np.ndarray, config: SeedConfig) -> np.ndarray:
    """(H, W) bool: brighter than skin, over-saturated, green or cyan: not a pigmented lesion."""
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    skin_chroma = float(np.hypot(skin[1], skin[2]))
    return ((lab[..., 0] > skin[0] + config.bright_margin)
            | (chroma > skin_chroma + config.max_chroma_excess)
            | (lab[..., 1] < config.min_a) | (lab[..., 2] < config.min_b))


def implausible_colour(image: np.ndarray, *, config: SeedConfig = SeedConfig()) -> np.ndarray:
    """Pixels no pigmented lesion shows: ``(H, W, 3) uint8 RGB -> (H, W) bool``.

    Outside the field of view (:func:`field_of_view`), or, against the skin colour (:func:`skin_colour`),
    brighter than the skin, over-saturated, green or cyan: the artefact rule of :func:`lesion_feature`
    (calibration stickers, ink, specular flash). Meant for a small copy of the image (about 256 px).
    """
    _check_rgb(image)
    lab = to_lab(image)
    fov = _fov_from_lab(lab, config)
    skin = skin_colour(lab, fov, config=config)
    return _artefact(lab, skin, config) | ~fov


def skin_colour(lab: np.ndarray, fov: np.ndarray, *, config: SeedConfig = SeedConfig(),
                exclude: np.ndarray | None = None) -> np.ndarray:
    """Robust skin colour: (H, W, 3) float32 Lab, (H, W) bool -> (3,) float32 Lab.

    Without ``exclude``: the per-channel median of the lighter half of the field-of-view pixels in the border
    ring (a lesion touching the border is darker than skin). With ``exclude`` (e.g. the dilated first coarse
    map): the median of the lighter three quarters of the field-of-view pixels outside it. Pixels that are
    artefacts against a first estimate (:func:`_artefact`) are left out.
    """
    h, w = lab.shape[:2]
    if exclude is None:
        ring = max(1, int(round(config.border_ring * min(h, w))))
        inner = fov & _border_band((h, w), ring)
        if inner.sum() < 16:
            er = cv2.erode(fov.astype(np.uint8), np.ones((ring * 2 + 1, ring * 2 + 1), np.uint8)).astype(bool)
            inner = fov & ~er
        keep_quantile = config.skin_quantile
    else:
        inner = fov & ~exclude
        keep_quantile = 25.0
    if inner.sum() < 16:
        inner = fov if fov.sum() >= 16 else np.ones((h, w), bool)
    px = lab[inner]
    if exclude is None and config.ring_split > 0:
        px = _lighter_cluster(px, config.ring_split)
    first = np.median(px[px[:, 0] >= np.percentile(px[:, 0], keep_quantile)], axis=0)
    clean = px[~_artefact(px[:, None, :], first, config)[:, 0]]
    if len(clean) >= 16:
        px = clean
    light = px[px[:, 0] >= np.percentile(px[:, 0], keep_quantile)]
    return np.median(light, axis=0).astype(np.float32)


def _lighter_cluster(px: np.ndarray, split: float) -> np.ndarray:
    """(N, 3) Lab -> the pixels of the lighter of two k-means clusters when they lie more than ``split``
    Lab units apart and it holds at least 5 % of them; ``px`` otherwise (the border ring is one colour)."""
    lo, hi = np.percentile(px[:, 0], [10, 90])
    centres = np.stack([np.median(px[px[:, 0] <= lo], 0), np.median(px[px[:, 0] >= hi], 0)])
    for _ in range(6):
        near = np.linalg.norm(px[:, None, :] - centres[None], axis=2).argmin(1)
        if near.min() == near.max():
            return px
        centres = np.stack([px[near == 0].mean(0), px[near == 1].mean(0)])
    light = int(np.argmax(centres[:, 0]))
    if np.linalg.norm(centres[0] - centres[1]) <= split or (near == light).mean() < 0.05:
        return px
    return px[near == light]


def lesion_feature(lab: np.ndarray, fov: np.ndarray, *, config: SeedConfig = SeedConfig(),
                   skin: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel lesion-likeness, higher on lesion.

    Parameters
    ----------
    lab : (H, W, 3) float32
        CIE Lab image (see :func:`to_lab`).
    fov : (H, W) bool
        Field of view.
    config : SeedConfig
        Uses ``feature``, the weights, the artefact bounds, ``border_ring`` and ``smooth_sigma``.
    skin : (3,) float, optional
        Skin colour in Lab; estimated with :func:`skin_colour` when omitted (``'skin_distance'`` only).

    Returns
    -------
    feature : (H, W) float32
        In Lab units for ``'skin_distance'`` and ``'lightness'``; blue channel units (0-100 scale) for ``'blue'``.

    Notes
    -----
    ``'skin_distance'``, with s the skin colour and d = (L, a, b) - s:
    ``f = dark_weight * max(-d_L, 0) + colour_weight * sqrt(d_a^2 + d_b^2)``, set to 0 on artefacts
    (brighter than skin by ``bright_margin``, chroma above the skin's by ``max_chroma_excess``, a* <
    ``min_a`` or b* < ``min_b``): pigmented lesions are darker than the skin and brown, red or blue-grey.
    """
    h, w = lab.shape[:2]
    diag = float(np.hypot(h, w))
    if config.feature == "lightness":
        f = 100.0 - lab[..., 0]
    elif config.feature == "blue":
        f = 100.0 - 0.5 * (lab[..., 0] + lab[..., 2] + 50.0)
    else:
        if skin is None:
            skin = skin_colour(lab, fov, config=config)
        d = lab - skin
        f = config.dark_weight * np.maximum(-d[..., 0], 0.0) + config.colour_weight * np.hypot(d[..., 1], d[..., 2])
        f[_artefact(lab, skin, config)] = 0.0
    sigma = config.smooth_sigma * diag
    if sigma > 0.3:
        f = cv2.GaussianBlur(f.astype(np.float32), (0, 0), sigma)
    return f.astype(np.float32)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    hist = hist.astype(np.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _pick_component(mask: np.ndarray, fov: np.ndarray, excess: np.ndarray, config: SeedConfig) -> np.ndarray:
    """The component with the highest centre-weighted feature excess, border huggers penalised."""
    h, w = mask.shape
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    flat = labels.ravel()

    def per_label(values: np.ndarray) -> np.ndarray:  # sums over each component (as ndi.sum_labels adds them)
        return np.bincount(flat, weights=values.ravel(), minlength=n + 1)[1:]

    idx = np.arange(1, n + 1)
    areas = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    prior, yy, xx = centre_grids(h, w, config.centre_sigma)
    score = per_label(prior * np.maximum(excess, 0.0) if config.border_penalty > 0 else prior)
    score = score * np.maximum(areas, 1.0) ** (config.area_power - 1.0)
    if config.border_penalty > 0:
        band = _border_band((h, w), 2)
        touch = per_label(band.astype(np.float64)) / max(band.sum(), 1)
        my = per_label(yy) / areas
        mx = per_label(xx) / areas
        offset = np.hypot(my - cy, mx - cx) / (0.5 * np.hypot(h, w))
        score = score * np.exp(-config.border_penalty * touch * offset)
    score[areas < config.min_component * max(fov.sum(), 1)] = 0
    if score.max() <= 0:
        return np.zeros_like(mask)
    return labels == idx[int(np.argmax(score))]


class CoarseMap(NamedTuple):
    """The coarse lesion and the evidence behind it (see :func:`coarse_lesion_evidence`).

    ``coarse`` (H, W) bool; ``separation`` float; ``feature`` (H, W) float32 lesion feature; ``skin_level``
    float: feature values at most this look like skin (``inf`` when no lesion stands out).
    """

    coarse: np.ndarray
    separation: float
    feature: np.ndarray
    skin_level: float


def _coarse_once(lab: np.ndarray, fov: np.ndarray, config: SeedConfig, skin: np.ndarray | None) -> CoarseMap:
    f = lesion_feature(lab, fov, config=config, skin=skin)
    vals = f[fov]
    empty = np.zeros(fov.shape, bool)
    if vals.size < 16:
        return CoarseMap(empty, 0.0, f, float("inf"))
    t = _otsu(vals)
    hi, lo = vals[vals > t], vals[vals <= t]
    if hi.size == 0 or lo.size == 0:
        return CoarseMap(empty, 0.0, f, float("inf"))
    contrast = float(hi.mean() - lo.mean())
    separation = contrast / max(float(vals.std()), 1e-6)
    if contrast < config.min_contrast or separation < config.min_separation:
        return CoarseMap(empty, separation, f, float("inf"))
    skin_level = float(lo.mean()) + config.bg_skin_level * (t - float(lo.mean()))
    t = float(lo.mean()) + config.otsu_shift * (t - float(lo.mean()))
    raw = (f > t) & fov & ~edge_band(fov, int(round(config.fov_edge_band * float(np.hypot(*fov.shape)))))
    k = max(3, int(round(0.01 * float(np.hypot(*fov.shape)))) | 1)
    se = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    raw = cv2.morphologyEx(raw.astype(np.uint8), cv2.MORPH_OPEN, se).astype(bool)
    raw = fill_holes(raw)
    coarse = _pick_component(raw, fov, f - t, config)
    return CoarseMap(fill_holes(coarse), separation, f, skin_level)


def coarse_lesion_map(
    lab: np.ndarray, fov: np.ndarray, *, config: SeedConfig = SeedConfig()
) -> tuple[np.ndarray, float]:
    """Otsu on the lesion feature inside the field of view, holes filled, the most lesion-like component.

    Parameters
    ----------
    lab : (H, W, 3) float32
        CIE Lab image (see :func:`to_lab`).
    fov : (H, W) bool
        Field of view (see :func:`field_of_view`).
    config : SeedConfig

    Returns
    -------
    coarse : (H, W) bool
        The coarse lesion; all False when no lesion stands out.
    separation : float
        Between-class separation (difference of the class means over the feature's std in the FOV); small
        values mean a uniform image.

    Notes
    -----
    The threshold is Otsu's, moved towards the skin class mean by ``otsu_shift``. A morphological opening
    removes specks, holes are filled, and one component is kept: the largest
    ``sum(centre_prior * (f - t)) * exp(-border_penalty * touch * offset)`` (see :class:`SeedConfig`). With
    ``second_pass`` the skin colour is re-estimated outside the first map dilated by a quarter of its
    equivalent radius, and the map recomputed; the first map is kept if the second finds nothing.
    """
    found = coarse_lesion_evidence(lab, fov, config=config)
    return found.coarse, found.separation


def coarse_lesion_evidence(lab: np.ndarray, fov: np.ndarray, *, config: SeedConfig = SeedConfig()) -> CoarseMap:
    """:func:`coarse_lesion_map` with its evidence: the lesion feature and the level below which it is skin.

    ``(H, W, 3) float32 Lab, (H, W) bool -> CoarseMap`` (see :class:`CoarseMap`).
    """
    if lab.ndim != 3 or lab.shape[2] != 3:
        raise ValueError(f"lab must have shape (H, W, 3), got {lab.shape}")
    if fov.shape != lab.shape[:2]:
        raise ValueError(f"fov must have shape {lab.shape[:2]}, got {fov.shape}")
    first = _coarse_once(lab, fov, config, None)
    if not config.second_pass or not first.coarse.any() or config.feature != "skin_distance":
        return first
    coarse = first.coarse
    r = max(1, int(round(0.25 * np.sqrt(coarse.sum() / np.pi))))
    grown = cv2.dilate(coarse.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2)) > 0
    skin = skin_colour(lab, fov, config=config, exclude=grown)
    second = _coarse_once(lab, fov, config, skin)
    if not second.coarse.any():
        return first
    return second


def seed_labels(
    image: np.ndarray,
    fov: np.ndarray | None = None,
    *,
    config: SeedConfig = SeedConfig(),
    coarse: np.ndarray | None = None,
    skin_like: np.ndarray | None = None,
) -> np.ndarray:
    """Seeds for the Random Walker from an image (or a precomputed coarse lesion map).

    Parameters
    ----------
    image : (H, W, 3) uint8
        RGB image (hair already removed).
    fov : (H, W) bool, optional
        Field of view; computed with :func:`field_of_view` when omitted.
    config : SeedConfig
    coarse : (H, W) bool, optional
        Coarse lesion map; computed with :func:`coarse_lesion_evidence` when omitted.
    skin_like : (H, W) bool, optional
        Pixels whose colour says skin (``feature <= skin_level`` of :func:`coarse_lesion_evidence`); background
        seeds are taken only there. Computed with the coarse map when both are omitted; None with a given
        ``coarse`` means no colour check.

    Returns
    -------
    labels : (H, W) int8
        0 unlabelled, 1 lesion seed, 2 background seed, -1 inactive (outside the field of view). When no lesion
        stands out, no pixel is labelled 1.

    Notes
    -----
    Foreground seeds are the pixels of the coarse map whose distance to its edge exceeds ``fg_erosion`` times
    the largest such distance (so thin and thick lesions both keep a core), plus a disc of radius
    ``fg_min_radius`` at the deepest point. Background seeds are the field-of-view pixels farther from the
    coarse map than ``bg_dilation * diag + bg_dilation_rel * r_eq`` (r_eq = equivalent radius of the coarse
    map) plus the border frame outside half that margin, kept only where ``skin_like`` (when it leaves any);
    if that leaves nothing, the four corner patches.
    """
    _check_rgb(image)
    h, w = image.shape[:2]
    if fov is None:
        fov = field_of_view(image, config=config)
    elif fov.shape != (h, w) or fov.dtype != bool:
        raise ValueError(f"fov must be a ({h}, {w}) bool array, got {fov.shape} {fov.dtype}")
    if coarse is None:
        found = coarse_lesion_evidence(to_lab(image), fov, config=config)
        coarse, skin_like = found.coarse, found.feature <= found.skin_level
    return _labels_from_coarse(coarse, fov, config, skin_like)


def _labels_from_coarse(coarse: np.ndarray, fov: np.ndarray, config: SeedConfig,
                        skin_like: np.ndarray | None = None) -> np.ndarray:
    h, w = fov.shape
    diag = float(np.hypot(h, w))
    labels = np.zeros((h, w), np.int8)
    labels[~fov] = INACTIVE
    if not coarse.any():
        return labels
    inside = cv2.distanceTransform(np.pad(coarse, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    dmax = float(inside.max())
    fg = inside > config.fg_erosion * dmax
    cy, cx = np.unravel_index(int(np.argmax(inside)), inside.shape)
    r = max(1.0, min(config.fg_min_radius * diag, dmax))
    yy, xx = np.ogrid[0:h, 0:w]
    fg |= ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & coarse
    outside = cv2.distanceTransform((~coarse).astype(np.uint8), cv2.DIST_L2, 5)
    r_eq = np.sqrt(coarse.sum() / np.pi)
    margin = config.bg_dilation * diag + config.bg_dilation_rel * r_eq
    bg = outside > margin
    frame_w = max(1, int(round(config.border_frame * min(h, w))))
    bg |= _border_band((h, w), frame_w) & (outside > 0.5 * margin)
    bg &= fov
    if skin_like is not None and (bg & skin_like).any():
        bg &= skin_like
    if not bg.any():
        bg = _corner_mask((h, w), 0.04) & fov & ~coarse
    if not bg.any():
        rim = fov & ~cv2.erode(fov.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        bg = rim & ~fg
    labels[bg] = BACKGROUND
    labels[fg & fov] = LESION
    return labels
