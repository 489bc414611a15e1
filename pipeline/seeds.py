"""Automatic seeds for the Random Walker: field of view, coarse lesion map, seed labels.

METHOD.md section 3, steps 1-4. All functions are pure: numpy in, numpy out.

Label convention (scikit-image ``random_walker``): ``0`` unlabelled, ``1`` lesion seed, ``2`` background
seed, ``-1`` inactive (outside the field of view; removed from the graph).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "SeedConfig",
    "to_lab",
    "field_of_view",
    "lesion_feature",
    "coarse_lesion_map",
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

    Lengths are fractions of the image diagonal so the same config works at any working resolution.

    Attributes
    ----------
    fov_max_lightness : float
        Pixels with CIE L* below this (0-100) and chroma below ``fov_max_chroma`` are "black frame"
        candidates; candidates connected to an image corner are outside the field of view.
    fov_max_chroma : float
        Chroma sqrt(a*^2 + b*^2) bound of black-frame pixels (lesions are dark but coloured).
    fov_corner_fraction : float
        Side of the square corner patches (fraction of the short side) that a frame component must touch.
    fov_min_fraction : float
        If the field of view would keep less than this fraction of the image, it is taken as the whole image.
    feature : {'skin_distance', 'blue', 'lightness'}
        Lesion-likeness used for the coarse map: Lab distance from the skin colour (estimated on the border
        ring of the field of view, darker-than-skin weighted), the inverted blue channel, or inverted L*.
    dark_weight : float
        In ``'skin_distance'``, extra weight on how much darker than skin a pixel is (L* drop).
    smooth_sigma : float
        Gaussian sigma (fraction of the diagonal) applied to the feature before thresholding.
    border_ring : float
        Width of the border ring (fraction of the short side) used to estimate the skin colour.
    min_separation : float
        Otsu between-class separation (difference of class means divided by the feature's std within the
        field of view) below which the image is declared lesion-free.
    min_contrast : float
        Smallest difference of class means of the feature (Lab units) for a lesion to exist.
    centre_sigma : float
        Width (fraction of the diagonal) of the Gaussian centre prior used to pick the lesion component.
    min_component : float
        Components smaller than this fraction of the field of view are ignored.
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
    """

    fov_max_lightness: float = 22.0
    fov_max_chroma: float = 18.0
    fov_corner_fraction: float = 0.04
    fov_min_fraction: float = 0.2
    feature: str = "skin_distance"
    dark_weight: float = 1.0
    smooth_sigma: float = 0.006
    border_ring: float = 0.06
    min_separation: float = 1.0
    min_contrast: float = 6.0
    centre_sigma: float = 0.35
    min_component: float = 0.002
    fg_erosion: float = 0.45
    fg_min_radius: float = 0.01
    bg_dilation: float = 0.02
    bg_dilation_rel: float = 0.25
    border_frame: float = 0.02

    def __post_init__(self) -> None:
        if self.feature not in ("skin_distance", "blue", "lightness"):
            raise ValueError(
                f"SeedConfig.feature must be 'skin_distance', 'blue' or 'lightness', got {self.feature!r}"
            )
        if not 0.0 <= self.fg_erosion < 1.0:
            raise ValueError(f"SeedConfig.fg_erosion must be in [0, 1), got {self.fg_erosion}")


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


def field_of_view(image: np.ndarray, *, config: SeedConfig = SeedConfig()) -> np.ndarray:
    """Pixels that show skin or lesion, not the black vignette or circular frame of the dermatoscope.

    Parameters
    ----------
    image : (H, W, 3) uint8
        RGB image.
    config : SeedConfig
        Uses ``fov_max_lightness``, ``fov_max_chroma``, ``fov_corner_fraction`` and ``fov_min_fraction``.

    Returns
    -------
    fov : (H, W) bool
        True inside the field of view.

    Notes
    -----
    A pixel is a frame candidate when it is dark (L* < ``fov_max_lightness``) and grey (chroma <
    ``fov_max_chroma``); the frame is the union of candidate components that reach one of the four corner
    patches. The frame is closed and its holes filled towards the corner, so a frame with speckle stays whole.
    A dark lesion touching one border is kept because it is coloured or does not reach a corner.
    """
    _check_rgb(image)
    lab = to_lab(image)
    return _fov_from_lab(lab, config)


def _fov_from_lab(lab: np.ndarray, config: SeedConfig) -> np.ndarray:
    h, w = lab.shape[:2]
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    dark = (lab[..., 0] < config.fov_max_lightness) & (chroma < config.fov_max_chroma)
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
    # keep the largest inside component (the disc of the dermatoscope)
    lab_in, m = ndi.label(fov)
    if m > 1:
        sizes = np.bincount(lab_in.ravel())
        sizes[0] = 0
        fov = lab_in == int(np.argmax(sizes))
    if fov.mean() < config.fov_min_fraction:
        return np.ones((h, w), bool)
    return fov


def lesion_feature(lab: np.ndarray, fov: np.ndarray, *, config: SeedConfig = SeedConfig()) -> np.ndarray:
    """Per-pixel lesion-likeness, higher on lesion.

    Parameters
    ----------
    lab : (H, W, 3) float32
        CIE Lab image (see :func:`to_lab`).
    fov : (H, W) bool
        Field of view.
    config : SeedConfig
        Uses ``feature``, ``dark_weight``, ``border_ring`` and ``smooth_sigma``.

    Returns
    -------
    feature : (H, W) float32
        In Lab units for ``'skin_distance'`` and ``'lightness'``; blue channel units (0-100 scale) for ``'blue'``.

    Notes
    -----
    ``'skin_distance'``: the skin colour s is the per-channel median of the field-of-view pixels in the
    border ring, keeping the lighter half of those (a lesion touching the border is darker than skin).
    The feature is ``||(L, a, b) - s|| + dark_weight * max(s_L - L, 0)``: pigmented lesions differ in colour
    and are darker than the skin around them.
    """
    h, w = lab.shape[:2]
    diag = float(np.hypot(h, w))
    if config.feature == "lightness":
        f = 100.0 - lab[..., 0]
    elif config.feature == "blue":
        # sRGB blue is not kept, so rebuild it from Lab is wasteful; approximate with -(L + b)/2
        f = 100.0 - 0.5 * (lab[..., 0] + lab[..., 2] + 50.0)
    else:
        ring = max(1, int(round(config.border_ring * min(h, w))))
        band = np.zeros((h, w), bool)
        band[:ring] = band[-ring:] = True
        band[:, :ring] = band[:, -ring:] = True
        inner = fov & band
        if inner.sum() < 16:
            # the FOV does not reach the border ring: use its outer rim instead
            er = cv2.erode(fov.astype(np.uint8), np.ones((ring * 2 + 1, ring * 2 + 1), np.uint8)).astype(bool)
            inner = fov & ~er
        if inner.sum() < 16:
            inner = fov
        px = lab[inner]
        light = px[px[:, 0] >= np.median(px[:, 0])]
        skin = np.median(light, axis=0).astype(np.float32)
        d = lab - skin
        f = np.sqrt((d**2).sum(axis=2)) + config.dark_weight * np.maximum(-d[..., 0], 0.0)
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


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    return ndi.binary_fill_holes(mask)


def _pick_component(mask: np.ndarray, fov: np.ndarray, config: SeedConfig) -> np.ndarray:
    h, w = mask.shape
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    idx = np.arange(1, n + 1)
    areas = ndi.sum_labels(np.ones_like(mask, np.float64), labels, idx)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.mgrid[0:h, 0:w]
    sig = config.centre_sigma * np.hypot(h, w)
    prior = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))
    score = ndi.sum_labels(prior, labels, idx)  # centre-weighted area
    score[areas < config.min_component * max(fov.sum(), 1)] = 0
    if score.max() <= 0:
        return np.zeros_like(mask)
    return labels == idx[int(np.argmax(score))]


def coarse_lesion_map(
    lab: np.ndarray, fov: np.ndarray, *, config: SeedConfig = SeedConfig()
) -> tuple[np.ndarray, float]:
    """Otsu on the lesion feature inside the field of view, holes filled, main central component.

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
    """
    if lab.ndim != 3 or lab.shape[2] != 3:
        raise ValueError(f"lab must have shape (H, W, 3), got {lab.shape}")
    if fov.shape != lab.shape[:2]:
        raise ValueError(f"fov must have shape {lab.shape[:2]}, got {fov.shape}")
    f = lesion_feature(lab, fov, config=config)
    vals = f[fov]
    empty = np.zeros(fov.shape, bool)
    if vals.size < 16:
        return empty, 0.0
    t = _otsu(vals)
    hi, lo = vals[vals > t], vals[vals <= t]
    if hi.size == 0 or lo.size == 0:
        return empty, 0.0
    contrast = float(hi.mean() - lo.mean())
    separation = contrast / max(float(vals.std()), 1e-6)
    if contrast < config.min_contrast or separation < config.min_separation:
        return empty, separation
    raw = (f > t) & fov
    k = max(3, int(round(0.01 * float(np.hypot(*fov.shape)))) | 1)
    se = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    raw = cv2.morphologyEx(raw.astype(np.uint8), cv2.MORPH_OPEN, se).astype(bool)
    raw = _fill_holes(raw)
    coarse = _pick_component(raw, fov, config)
    coarse = _fill_holes(coarse)
    return coarse, separation


def seed_labels(
    image: np.ndarray,
    fov: np.ndarray | None = None,
    *,
    config: SeedConfig = SeedConfig(),
    coarse: np.ndarray | None = None,
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
        Coarse lesion map; computed with :func:`coarse_lesion_map` when omitted.

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
    map) plus the border frame outside that dilation; if that leaves nothing, the four corner patches.
    """
    _check_rgb(image)
    h, w = image.shape[:2]
    if fov is None:
        fov = field_of_view(image, config=config)
    elif fov.shape != (h, w) or fov.dtype != bool:
        raise ValueError(f"fov must be a ({h}, {w}) bool array, got {fov.shape} {fov.dtype}")
    if coarse is None:
        coarse, _ = coarse_lesion_map(to_lab(image), fov, config=config)
    return _labels_from_coarse(coarse, fov, config)


def _labels_from_coarse(coarse: np.ndarray, fov: np.ndarray, config: SeedConfig) -> np.ndarray:
    h, w = fov.shape
    diag = float(np.hypot(h, w))
    labels = np.zeros((h, w), np.int8)
    labels[~fov] = INACTIVE
    if not coarse.any():
        return labels
    # foreground: the deep part of the coarse map
    inside = cv2.distanceTransform(np.pad(coarse, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    dmax = float(inside.max())
    fg = inside > config.fg_erosion * dmax
    cy, cx = np.unravel_index(int(np.argmax(inside)), inside.shape)
    r = max(1.0, min(config.fg_min_radius * diag, dmax))
    yy, xx = np.ogrid[0:h, 0:w]
    fg |= ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & coarse
    # background: far from the coarse map
    outside = cv2.distanceTransform((~coarse).astype(np.uint8), cv2.DIST_L2, 5)
    r_eq = np.sqrt(coarse.sum() / np.pi)
    margin = config.bg_dilation * diag + config.bg_dilation_rel * r_eq
    bg = outside > margin
    frame_w = max(1, int(round(config.border_frame * min(h, w))))
    frame = np.zeros((h, w), bool)
    frame[:frame_w] = frame[-frame_w:] = True
    frame[:, :frame_w] = frame[:, -frame_w:] = True
    bg |= frame & (outside > 0.5 * margin)
    bg &= fov
    if not bg.any():
        bg = _corner_mask((h, w), 0.04) & fov & ~coarse
    if not bg.any():
        # the lesion fills the whole field of view: no background to seed, keep a 1-px FOV rim
        rim = fov & ~cv2.erode(fov.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        bg = rim & ~fg
    labels[bg] = BACKGROUND
    labels[fg & fov] = LESION
    return labels
