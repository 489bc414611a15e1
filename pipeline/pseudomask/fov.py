"""The dermatoscope's field of view as a circle, and the check that a mask does not run along its edge.

Many dermatoscopes image through a round lens: the photo shows a disc (often cut by the top and bottom of
the frame, and off-centre) with black or dark-grey corners and a rim that darkens towards the edge. A dark
rim is lesion-like to every colour rule, so a mask that grows from a small lesion can run along it. Here
(all ours):

- :func:`fit_circle` fits a circle (algebraic least squares, Kasa 1976) to the inner edge of the dark frame,
  using only edge pixels away from the image border, so partial circles (cut by the frame) fit too;
- :func:`circular_fov` replaces a frame-based field of view by the fitted disc shrunk by a rim margin,
  when the edge is a good circle;
- :func:`edge_band` is the band along the field-of-view edge where a rim can pass for lesion;
- :func:`edge_run` measures how much of a mask's outline lies on the field-of-view edge.

All functions are pure: numpy in, numpy out.

References
----------
I. Kasa, "A circle fitting procedure and its error analysis", IEEE Trans. Instrum. Meas. 25(1), 1976.
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

__all__ = ["Circle", "fit_circle", "circular_fov", "edge_band", "edge_run"]


class Circle(NamedTuple):
    """A fitted circle: centre ``(cy, cx)`` and radius ``r`` in px, ``residual`` = median |d - r| / r, and
    ``coverage`` = the fraction of the circle's circumference that has edge pixels near it (0-1)."""

    cy: float
    cx: float
    r: float
    residual: float
    coverage: float


def _inner_edge(fov: np.ndarray, margin: int) -> np.ndarray:
    """(H, W) bool edge pixels of ``fov`` at least ``margin`` px away from the image border."""
    u8 = fov.astype(np.uint8)
    edge = (u8 - cv2.erode(u8, np.ones((3, 3), np.uint8))) > 0
    edge[:margin] = edge[-margin:] = False
    edge[:, :margin] = edge[:, -margin:] = False
    return edge


def _circle_through(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """``(cy, cx, r)`` of the circle through three points, None when they are (nearly) collinear."""
    d = 2 * (x[0] * (y[1] - y[2]) + x[1] * (y[2] - y[0]) + x[2] * (y[0] - y[1]))
    if abs(d) < 1e-6:
        return None
    s = x * x + y * y
    cx = (s[0] * (y[1] - y[2]) + s[1] * (y[2] - y[0]) + s[2] * (y[0] - y[1])) / d
    cy = (s[0] * (x[2] - x[1]) + s[1] * (x[0] - x[2]) + s[2] * (x[1] - x[0])) / d
    return float(cy), float(cx), float(np.hypot(x[0] - cx, y[0] - cy))


def fit_circle(fov: np.ndarray) -> Circle | None:
    """Least-squares circle through the edge of ``fov`` away from the image border.

    Parameters
    ----------
    fov : (H, W) bool
        A field of view whose edge (where it is not the image border) is the dark frame's inner edge.

    Returns
    -------
    Circle or None
        None when fewer than 20 edge pixels lie away from the border (no frame to fit).

    Notes
    -----
    Kasa's fit solves ``x^2 + y^2 + D x + E y + F = 0`` for (D, E, F) by linear least squares over the edge
    pixels; centre ``(-D/2, -E/2)``, radius ``sqrt(D^2/4 + E^2/4 - F)``. It runs on the inliers (within 1 %
    of the diagonal) of the best of 150 circles through three edge pixels (RANSAC with a fixed generator), as
    a dark lesion touching the frame adds edge pixels off the circle. ``residual`` and ``coverage`` are those
    of the inliers.
    """
    h, w = fov.shape
    ys, xs = np.nonzero(_inner_edge(fov, 2))
    if ys.size < 20:
        return None
    x, y = xs.astype(np.float64), ys.astype(np.float64)
    # RANSAC (fixed generator: deterministic): a dark lesion that joined the frame adds edge pixels off the circle
    rng = np.random.default_rng(0)
    best, keep = -1, np.ones(x.size, bool)
    tol = 0.01 * float(np.hypot(h, w))
    for trio in rng.integers(0, x.size, (150, 3)):
        circle = _circle_through(x[trio], y[trio])
        if circle is None:
            continue
        inliers = np.abs(np.hypot(x - circle[1], y - circle[0]) - circle[2]) <= tol
        if inliers.sum() > best:
            best, keep = int(inliers.sum()), inliers
    if keep.sum() < 20:
        return None
    a = np.stack([x[keep], y[keep], np.ones(int(keep.sum()))], 1)
    sol, *_ = np.linalg.lstsq(a, -(x[keep] ** 2 + y[keep] ** 2), rcond=None)
    cx, cy = -sol[0] / 2, -sol[1] / 2
    r2 = cx * cx + cy * cy - sol[2]
    if not np.isfinite(r2) or r2 <= 0:
        return None
    r = float(np.sqrt(r2))
    x, y = x[keep], y[keep]
    residual = float(np.median(np.abs(np.hypot(x - cx, y - cy) - r)) / r)
    angles = np.arctan2(y - cy, x - cx)
    bins = np.unique(((angles + np.pi) / (2 * np.pi) * 72).astype(int) % 72)
    return Circle(float(cy), float(cx), r, residual, bins.size / 72.0)


def circular_fov(fov: np.ndarray, *, max_residual: float = 0.02, min_coverage: float = 0.15,
                 rim: float = 0.03) -> np.ndarray:
    """The field of view as a disc when its edge is a circle; ``fov`` unchanged otherwise.

    Parameters
    ----------
    fov : (H, W) bool
        Frame-based field of view (dark corners removed).
    max_residual : float
        Largest median distance of the edge pixels from the fitted circle, as a fraction of its radius.
    min_coverage : float
        Smallest fraction of the circumference the edge pixels must span (one short arc is not a circle).
    rim : float
        The disc is shrunk by this fraction of its radius: the darkened rim of the lens is left out.

    Returns
    -------
    (H, W) bool
        The shrunk disc (cut by the image), or ``fov`` itself. Inside the disc every pixel counts, so a dark
        lesion that the frame rule took for frame is given back.
    """
    circle = fit_circle(fov)
    if circle is None or circle.residual > max_residual or circle.coverage < min_coverage:
        return fov
    h, w = fov.shape
    yy, xx = np.ogrid[0:h, 0:w]
    disc = (yy - circle.cy) ** 2 + (xx - circle.cx) ** 2 <= (circle.r * (1 - rim)) ** 2
    return disc if disc.mean() > 0.5 * fov.mean() else fov


def edge_run(mask: np.ndarray, fov: np.ndarray, *, width: int = 3) -> float:
    """Fraction of the outline of ``mask`` that lies within ``width`` px of the field-of-view edge.

    ``(H, W) bool, (H, W) bool -> float`` in [0, 1]. The image border is not the field-of-view edge (a lesion
    may cross the frame); 0 when ``fov`` is the whole image or ``mask`` is empty.
    """
    if not mask.any() or fov.all():
        return 0.0
    u8 = mask.astype(np.uint8)
    outline = (u8 - cv2.erode(u8, np.ones((3, 3), np.uint8))) > 0
    outline[0] = outline[-1] = False
    outline[:, 0] = outline[:, -1] = False
    if not outline.any():
        return 0.0
    outside = np.pad(~fov, 1, constant_values=False).astype(np.uint8)
    near = cv2.dilate(outside, np.ones((2 * width + 1, 2 * width + 1), np.uint8))[1:-1, 1:-1] > 0
    return float((outline & near).sum() / outline.sum())


def edge_band(fov: np.ndarray, width: int) -> np.ndarray:
    """``(H, W) bool`` pixels of ``fov`` within ``width`` px of its edge (the image border excluded).

    All False when ``fov`` is the whole image or ``width < 1``.
    """
    if width < 1 or fov.all():
        return np.zeros(fov.shape, bool)
    outside = np.pad(~fov, 1, constant_values=False).astype(np.uint8)
    k = 2 * width + 1
    near = cv2.dilate(outside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))[1:-1, 1:-1] > 0
    return near & fov
