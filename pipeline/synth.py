"""Synthetic dermoscopy with known ground truth: the lesion mask, the hair mask and the hair-free image.

The built-in data of ``make demo`` and the tests (nothing can be downloaded at run time), and the only source
of ground truth for hair, which the hair-removal benchmark needs. Each image depends only on ``(seed, index)``
(``np.random.default_rng([seed, index])``), so a dataset does not depend on the number of workers.

What an image holds (every number drawn per image; lengths are given at 512 px width and scale with it):

- skin: a tone from pale pink through beige to tan, low-frequency illumination and redness, a faint reticular
  furrow/capillary mesh, follicle dots and fine sensor noise;
- a lesion: an irregular blob (radial Fourier contour plus a smooth noise displacement, sometimes with a second
  lobe) covering about 3-60 % of the image, sometimes off-centre and cut by the border. Its colour follows
  Beer-Lambert absorption by a pigment density (tan, brown, dark brown or blue-grey), so the skin texture shows
  through pale lesions. Inside: variegated density, an eccentric dark blotch, a pigment-network mesh (dark lines
  at the zero crossings of band-pass noise), dots and globules, sometimes a pale regression patch. The edge is
  sharp or fuzzy; the mask is the 0.5 level of the blend weight;
- hair: on most images dark hairs (a few long ones, a moderate number, or a dense pelt of short ones), on some
  light hairs; thin cubic Bezier strokes 1-4 px wide that taper towards the tip, anti-aliased by supersampling.
  The hair mask is where the strokes cover >= ``HAIR_COVERAGE`` of a pixel and the optics leave it visible;
- optics (after the hair, as in a dermoscope): a dark vignette, a circular frame with black corners, or none;
  then a slight blur and sensor noise, identical in ``image`` and ``clean`` so they differ only by the hair.

Two options make the hard cases of other dermoscopes (off by default; the default images are unchanged):

- ``fov='circle'``: a circular field of view of random radius (it may be cut by the top and bottom of the
  frame) and centre offset, with black or dark-grey corners and a vignette that darkens towards its rim;
  the lesion mask is cut to the field of view;
- ``lesion='large'``: a lesion that fills 60-100 % of the frame or crosses its edge (about half each), with
  a dark core and a broad pale periphery (its density at the contour 15-35 % of the core's).

A third makes one clinic's dermoscope, on which stage 1 takes the whole bright skin for lesion:

- ``fov='vignette'``: light, fairly uniform skin (pale pink, pink, beige), a small tan or brown lesion (about
  4-15 % of the image, placed inside the bright disc, usually off its centre), and a wide, soft, brown-tinted
  dark lens vignette around a disc about as wide as the frame is high (:func:`_lens_vignette`; some discs are
  cut by the frame). No hard edge: the lesion mask is the lesion only. :func:`vignette_case` makes a few.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from common.atomic import write_bytes
from common.drawing import draw_contour

JPEG_QUALITY = 95
PNG_COMPRESSION = 3
HAIR_COVERAGE = 0.3       # a pixel is hair when strokes cover at least this fraction of it
_SUPERSAMPLE = 3          # hair strokes are drawn at this scale and area-averaged down
_MIN_SIZE = 32

# Skin tones (RGB) the background is mixed from: pale pink, pink, beige, tan, reddish.
_SKIN_TONES = np.array([(242, 212, 205), (232, 170, 160), (236, 200, 172), (214, 168, 128), (222, 140, 128)],
                       np.float32)
# Pigment absorption per channel (R, G, B) for Beer-Lambert darkening: epidermal melanin (brown) absorbs blue
# most; dermal melanin (blue-grey, Tyndall effect) absorbs red most.
_PIGMENTS = {
    "tan": (np.array([0.50, 0.85, 1.25], np.float32), (0.30, 0.7)),
    "brown": (np.array([0.70, 1.00, 1.35], np.float32), (0.6, 1.2)),
    "dark": (np.array([0.95, 1.15, 1.25], np.float32), (1.1, 1.9)),
    "bluegrey": (np.array([1.00, 0.85, 0.65], np.float32), (0.5, 1.0)),
}
_PIGMENT_P = {"tan": 0.25, "brown": 0.4, "dark": 0.25, "bluegrey": 0.1}
_LIGHT_SKIN_TONES = _SKIN_TONES[:3]                      # pale pink, pink, beige: the vignette clinic's patients
_VIGNETTE_PIGMENT_P = {"tan": 0.35, "brown": 0.55, "dark": 0.1}
VIGNETTE_LESION_FRACTION = (0.04, 0.15)                   # the lesion's share of the image with fov='vignette'
FOV_OPTIONS = ("auto", "circle", "vignette")
LESION_OPTIONS = ("auto", "large")


@dataclass(frozen=True, eq=False)
class SynthSample:
    """One synthetic image and its ground truth.

    ``image`` and ``clean`` are ``(H, W, 3) uint8`` RGB (with and without hair); ``lesion`` and ``hair`` are
    ``(H, W) bool``. The arrays are read-only.
    """

    image: np.ndarray
    clean: np.ndarray
    lesion: np.ndarray
    hair: np.ndarray
    lesion_fraction: float
    n_dark_hairs: int
    n_light_hairs: int
    optics: str             # 'none', 'vignette', 'frame', 'circle' or 'lens' (fov='vignette')
    pigment: str            # 'tan', 'brown', 'dark' or 'bluegrey'
    edge_width: float       # width of the fuzzy lesion edge in px (0.5 sharp ... 10 very fuzzy)
    touches_border: bool = field(default=False)

    @property
    def has_vignette(self) -> bool:
        """True when the corners are darkened (a vignette or a circular frame)."""
        return self.optics != "none"


# ---------------------------------------------------------------------------------------------- noise fields

def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] of ``shape``: a ``cells``-wide random grid, bicubically upsampled."""
    h, w = shape
    grid = rng.uniform(-1, 1, (max(2, round(cells * h / w)), max(2, cells))).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), -1, 1)


def _band_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Band-pass noise of unit standard deviation with structures about ``2 * scale`` px across."""
    white = rng.standard_normal(shape, dtype=np.float32)
    band = cv2.GaussianBlur(white, (0, 0), scale) - cv2.GaussianBlur(white, (0, 0), 2 * scale)
    return band / (band.std() + 1e-6)


def _mesh(band: np.ndarray, width: float) -> np.ndarray:
    """Thin closed lines (the zero crossings of ``band``) as a weight in [0, 1]."""
    return np.exp(-((band / width) ** 2))


# ----------------------------------------------------------------------------------------------- the scene

def _skin(rng: np.random.Generator, shape: tuple[int, int], px: float,
          tones: np.ndarray = _SKIN_TONES) -> np.ndarray:
    """``(H, W, 3) float32`` skin in 0-255, its tone mixed from two of ``tones`` ``(K, 3)`` RGB."""
    i, j = rng.choice(len(tones), 2, replace=False)
    tone = tones[i] + rng.uniform(0, 1) * (tones[j] - tones[i])
    tone = (tone * rng.uniform(0.92, 1.04) + rng.normal(0, 4, 3)).astype(np.float32)
    image = np.broadcast_to(tone, (*shape, 3)).copy()
    image *= (1 + 0.05 * _smooth_noise(rng, shape, 3))[..., None]                   # uneven illumination
    redness = np.clip(_smooth_noise(rng, shape, 6) + 0.2, 0, 1) * rng.uniform(0, 0.07)
    image[..., 1] *= 1 - redness
    image[..., 2] *= 1 - 0.6 * redness
    # Reticular furrows / capillaries: a faint reddish-dark mesh.
    mesh = _mesh(_band_noise(rng, shape, rng.uniform(2.5, 5) * px), 0.35)
    strength = rng.uniform(0.02, 0.09)
    image *= (1 - strength * mesh[..., None] * np.array([0.4, 1.0, 0.9], np.float32))
    # Fine grain and a few pale follicle openings.
    grain = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), 0.8 * px)
    image += (rng.uniform(2, 5) * grain / (grain.std() + 1e-6))[..., None]
    h, w = shape
    n_dots = int(rng.poisson(h * w / 512 ** 2 * rng.uniform(0, 40)))
    dots = np.zeros(shape, np.float32)
    for y, x in zip(rng.integers(0, h, n_dots), rng.integers(0, w, n_dots)):
        cv2.circle(dots, (int(x), int(y)), max(1, round(rng.uniform(0.8, 2.2) * px)), 1.0, -1, cv2.LINE_AA)
    image += (rng.uniform(8, 25) * cv2.GaussianBlur(dots, (0, 0), 0.7))[..., None]
    return image


def _blob(rng: np.random.Generator, shape: tuple[int, int], centre: tuple[float, float], radius: float,
          px: float) -> np.ndarray:
    """Signed distance in px (> 0 inside) to an irregular closed contour around ``centre`` (x, y)."""
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    r = np.ones_like(theta)
    roughness = rng.uniform(0.08, 0.22)
    for k in range(2, 24):  # large lobes plus a ragged fine border
        r += rng.normal(0, roughness / k ** 1.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = np.clip(r, 0.35, None)
    stretch, tilt = rng.uniform(0.75, 1.3), rng.uniform(0, np.pi)
    x = radius * r * np.cos(theta) * stretch
    y = radius * r * np.sin(theta) / stretch
    pts = np.stack([centre[0] + x * np.cos(tilt) - y * np.sin(tilt),
                    centre[1] + x * np.sin(tilt) + y * np.cos(tilt)], 1)
    inside = np.zeros(shape, np.uint8)
    cv2.fillPoly(inside, [np.round(pts * 4).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=2)
    if not inside.any():
        return np.full(shape, -1e3, np.float32)
    d_in = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    d_out = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)
    return d_in - d_out + rng.uniform(0.5, 4) * px * _smooth_noise(rng, shape, 30)


def _lesion_shape(rng: np.random.Generator, shape: tuple[int, int], px: float) -> np.ndarray:
    """Signed distance (px, > 0 inside) to the lesion: one blob, sometimes with an overlapping second lobe."""
    h, w = shape
    fraction = float(rng.uniform(np.sqrt(0.03), np.sqrt(0.6))) ** 2   # median about 22 %, like ISIC
    radius = np.sqrt(fraction * h * w / np.pi)
    if rng.random() < 0.25:  # off-centre, often through the border
        cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    else:
        cx, cy = w / 2 + rng.normal(0, 0.07) * w, h / 2 + rng.normal(0, 0.07) * h
    signed = _blob(rng, shape, (cx, cy), radius, px)
    if rng.random() < 0.25:
        a = rng.uniform(0, 2 * np.pi)
        off = radius * rng.uniform(0.5, 0.9)
        second = _blob(rng, shape, (cx + off * np.cos(a), cy + off * np.sin(a)), radius * rng.uniform(0.4, 0.7), px)
        signed = np.maximum(signed, second)
    return signed


def _pigment_density(rng: np.random.Generator, signed: np.ndarray, px: float,
                     base: float, pale_rim: float | None = None) -> tuple[np.ndarray, float]:
    """Pigment density ``(H, W) float32`` (0 on skin) and the edge width in px; the mask is ``signed > 0``.

    ``pale_rim``: the density at the contour relative to the core (a broad pale periphery); None: 0.75.
    """
    shape = signed.shape
    edge = float(np.exp(rng.uniform(np.log(0.5), np.log(10.0)))) * px
    alpha = 0.5 * (1 + np.tanh(signed / (2 * edge)))                       # logistic blend, 0.5 on the contour
    depth = np.clip(signed / (0.7 * signed.max() + 1e-6), 0, 1)
    if pale_rim is None:
        density = base * (0.75 + 0.35 * depth)                              # darker core, paler rim
    else:
        density = base * (pale_rim + (1.1 - pale_rim) * np.sqrt(depth))
    density = density * (1 + rng.uniform(0.2, 0.55) * _smooth_noise(rng, shape, int(rng.integers(3, 9)))
                         + rng.uniform(0.1, 0.3) * _smooth_noise(rng, shape, int(rng.integers(12, 24))))
    if rng.random() < 0.5:  # an eccentric dark blotch
        blotch = np.clip(_smooth_noise(rng, shape, 4) * 2 - 0.8, 0, 1)
        density = density + rng.uniform(0.3, 0.9) * base * blotch
    if rng.random() < 0.7:  # pigment network, faded in and out
        net = _mesh(_band_noise(rng, shape, rng.uniform(2.0, 4.0) * px), rng.uniform(0.3, 0.6))
        fade = np.clip(_smooth_noise(rng, shape, 5) + rng.uniform(0.2, 0.8), 0, 1)
        density = density + rng.uniform(0.2, 0.6) * base * net * fade
    grain = _band_noise(rng, shape, rng.uniform(0.7, 1.6) * px)             # granularity
    density = density * (1 + rng.uniform(0.04, 0.15) * np.clip(grain, -2, 3))
    if rng.random() < 0.5:  # dots and globules
        dots = np.clip(_band_noise(rng, shape, rng.uniform(1.2, 2.5) * px) - rng.uniform(2.0, 2.8), 0, None)
        density = density + rng.uniform(0.5, 1.5) * dots * (depth > 0.1)
    if rng.random() < 0.2:  # a pale regression patch
        patch = np.clip(_smooth_noise(rng, shape, 5) * 2 - 1.2, 0, 1) * depth
        density = density * (1 - 0.7 * patch)
    return np.clip(density, 0, None).astype(np.float32) * alpha, edge


def _optics(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Transmission ``(H, W) float32`` in (0, 1] of the dermoscope optics, and its kind."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    half_diag = np.hypot(h, w) / 2
    cx, cy = w / 2 + rng.normal(0, 0.03) * w, h / 2 + rng.normal(0, 0.03) * h
    rr = np.hypot(xx - cx, yy - cy) / half_diag                               # 1 at the corners
    u = rng.random()
    if u < 0.3:
        start, power = rng.uniform(0.45, 0.7), rng.uniform(1.5, 2.5)
        fall = np.clip((rr - start) / (1 - start), 0, None) ** power
        return np.clip(1 - rng.uniform(0.4, 0.85) * fall, 0.05, 1).astype(np.float32), "vignette"
    if u < 0.5:
        radius = rng.uniform(0.72, 0.95)
        soft = rng.uniform(0.005, 0.03)
        frame = 0.5 * (1 + np.tanh((rr - radius) / soft))
        shade = 1 - 0.25 * np.clip((rr - radius + 0.25) / 0.25, 0, 1) ** 2  # darker towards the rim
        return (shade * (1 - rng.uniform(0.96, 0.99) * frame)).astype(np.float32), "frame"
    return np.ones(shape, np.float32), "none"


def _large_lesion_shape(rng: np.random.Generator, shape: tuple[int, int], px: float) -> np.ndarray:
    """Signed distance (px, > 0 inside) to a lesion that fills 60-100 % of the frame or crosses its edge."""
    h, w = shape
    if rng.random() < 0.5:  # fills the frame: centred, clipped by the frame to about 60-100 % of the image
        fraction = rng.uniform(0.8, 1.6)
        cx, cy = w / 2 + rng.normal(0, 0.05) * w, h / 2 + rng.normal(0, 0.05) * h
    else:  # crosses the edge: a large blob whose centre lies near one side
        fraction = rng.uniform(0.3, 0.6)
        side = int(rng.integers(4))
        along = rng.uniform(0.3, 0.7)
        depth = rng.uniform(0.1, 0.3)
        cx, cy = [(along * w, depth * h), (along * w, (1 - depth) * h), (depth * w, along * h),
                  ((1 - depth) * w, along * h)][side]
    radius = np.sqrt(fraction * h * w / np.pi)
    return _blob(rng, shape, (cx, cy), radius, px)


def _circular_fov(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Transmission ``(H, W) float32`` of a circular field of view with black or dark-grey corners, and the
    ``(H, W) bool`` inside of the circle."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    half_diag = np.hypot(h, w) / 2
    cx, cy = w / 2 + rng.uniform(-0.08, 0.08) * w, h / 2 + rng.uniform(-0.08, 0.08) * h
    radius = rng.uniform(0.6, 0.95) * half_diag           # below about 0.6 the circle sits inside the frame
    rr = np.hypot(xx - cx, yy - cy) / radius               # 1 on the rim
    soft = rng.uniform(0.005, 0.03)
    outside = 0.5 * (1 + np.tanh((rr - 1) / soft))
    start, depth = rng.uniform(0.55, 0.8), rng.uniform(0.2, 0.6)
    shade = 1 - depth * np.clip((rr - start) / (1 - start), 0, 1) ** 2       # vignette towards the rim
    corner = rng.uniform(0.0, 0.01) if rng.random() < 0.5 else rng.uniform(0.08, 0.22)  # black or dark grey
    return (shade * (1 - outside) + corner * outside).astype(np.float32), rr < 1


def _lens_disc(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[float, float, float]:
    """Centre ``(x, y)`` and radius (px) of the bright disc of a lens vignette: about the circle inscribed in
    the frame (radius 0.85-1.05 of half the short side, so some discs are cut by the frame), off-centre by
    up to 4 % of the frame."""
    h, w = shape
    cx, cy = w / 2 + rng.uniform(-0.04, 0.04) * w, h / 2 + rng.uniform(-0.04, 0.04) * h
    return float(cx), float(cy), float(rng.uniform(0.85, 1.05) * min(h, w) / 2)


def _lens_vignette(rng: np.random.Generator, shape: tuple[int, int], cx: float, cy: float,
                   radius: float) -> np.ndarray:
    """Transmission ``(H, W, 3) float32`` of a wide dark lens vignette around the disc ``(cx, cy, radius)``.

    With ``r`` the distance from the centre over ``radius``: inside the disc a mild fall-off (5-25 % at
    ``r = 1``); across the rim a soft step ``0.5 * (1 + tanh((r - 1) / soft))``, ``soft`` 0.15-0.3 (its
    10-90 % width is 0.33-0.66 of the radius), down to a floor of 0.15-0.4 that keeps falling,
    ``floor * exp(-(r - 1) / decay)`` with ``decay`` 0.25-0.5, to near black in the far corners. The dark part
    is tinted warm brown: red x (1 + k), blue x (1 - k), k 0.25-0.45. The tint is what makes stage 1 fail:
    stage 1's field-of-view rule takes only grey pixels for the frame, so a brown band is left inside the field
    of view and closes a ring around the bright disc (with k 0-0.2 instead, 3 of 48 images fail, not 22;
    ``bench/bench_vignette.py``).
    """
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    rr = np.hypot(xx - cx, yy - cy) / radius                                  # 1 in the middle of the rim
    outside = 0.5 * (1 + np.tanh((rr - 1) / rng.uniform(0.15, 0.3)))
    dark = rng.uniform(0.15, 0.4) * np.exp(-np.clip(rr - 1, 0, None) / rng.uniform(0.25, 0.5))
    inner = 1 - rng.uniform(0.05, 0.25) * np.clip(rr, 0, 1) ** 2
    warm = rng.uniform(0.25, 0.45)
    tint = np.array([1 + warm, 1 + rng.uniform(-0.05, 0.05), 1 - warm], np.float32)
    t = inner * (1 - outside) + dark * outside
    return (t[..., None] * (1 + outside[..., None] * (tint - 1))).astype(np.float32)


def _small_lesion_shape(rng: np.random.Generator, shape: tuple[int, int], px: float, cx: float, cy: float,
                        radius: float) -> np.ndarray:
    """Signed distance (px, > 0 inside) to a small lesion (about 4-15 % of the image) inside the lens disc
    ``(cx, cy, radius)``, usually away from its centre."""
    h, w = shape
    fraction = rng.uniform(0.055, 0.12)
    r = np.sqrt(fraction * h * w / np.pi)
    a, off = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.45) * max(radius - r, 0.0)
    x = float(np.clip(cx + off * np.cos(a), r, w - r))
    y = float(np.clip(cy + off * np.sin(a), 0.8 * r, h - 0.8 * r))
    return _blob(rng, shape, (x, y), r, px)


def _bezier(p: np.ndarray, n: int) -> np.ndarray:
    """``n`` points of the cubic Bezier curve with control points ``p`` (4, 2)."""
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t ** 2 * p[2] + t ** 3 * p[3]


def _hair_stroke(rng: np.random.Generator, shape: tuple[int, int], length: float,
                 width: float) -> tuple[tuple[int, int], np.ndarray] | None:
    """One tapered curved stroke: the top-left (y, x) of its box and its pixel coverage in [0, 1] there."""
    h, w = shape
    start = rng.uniform([-0.1 * w, -0.1 * h], [1.1 * w, 1.1 * h])
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    ctrl = np.stack([start + f * length * direction + rng.normal(0, 0.15) * length * normal
                     for f in (0, 1 / 3, 2 / 3, 1)])
    ctrl[0] = start
    curve = _bezier(ctrl, max(16, int(length / 2)))
    lo = np.floor(curve.min(0) - width - 2).astype(int)
    hi = np.ceil(curve.max(0) + width + 2).astype(int)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [w, h])
    if (hi <= lo).any():
        return None
    s = _SUPERSAMPLE
    canvas = np.zeros(((hi[1] - lo[1]) * s, (hi[0] - lo[0]) * s), np.uint8)
    pts = np.round((curve - lo) * s * 16).astype(np.int32)                   # 4 fractional bits (shift=4)
    pieces = 6
    bounds = np.linspace(0, len(pts) - 1, pieces + 1).astype(int)
    taper = rng.uniform(0.3, 0.8)                                             # tip width / root width
    for k in range(pieces):
        # At least 1 px wide, so every drawn stroke reaches HAIR_COVERAGE along its centre line.
        thickness = max(s, int(round(width * s * (1 - (1 - taper) * k / (pieces - 1)))))
        cv2.polylines(canvas, [pts[bounds[k]:bounds[k + 1] + 1]], False, 255, thickness, cv2.LINE_AA, shift=4)
    cover = cv2.resize(canvas, (hi[0] - lo[0], hi[1] - lo[1]), interpolation=cv2.INTER_AREA)
    return (int(lo[1]), int(lo[0])), cover.astype(np.float32) / 255.0


def _draw_hairs(rng: np.random.Generator, image: np.ndarray, coverage: np.ndarray, n: int, light: bool,
                skin_tone: np.ndarray, px: float) -> None:
    """Composite ``n`` hairs over ``image`` in place and raise ``coverage`` to their coverage."""
    h, w = coverage.shape
    short = n > 25
    for _ in range(n):
        if short:
            length = rng.uniform(0.04, 0.3) * max(h, w)
        else:
            length = rng.uniform(0.15, 1.0) * max(h, w)
        if light:
            width = rng.uniform(0.9, 2.2) * px
            colour = np.minimum(255, skin_tone + rng.uniform(35, 70)) * rng.uniform(0.95, 1.0, 3)
            opacity = rng.uniform(0.6, 0.9)
        else:
            width = float(np.exp(rng.uniform(np.log(1.0), np.log(4.0)))) * px
            colour = np.array([rng.uniform(22, 70), 0, 0], np.float32)
            colour[1:] = colour[0] * rng.uniform([0.6, 0.5], [0.85, 0.8])
            opacity = rng.uniform(0.8, 1.0)
        stroke = _hair_stroke(rng, (h, w), length, width)
        if stroke is None:
            continue
        (y, x), cover = stroke
        ys, xs = slice(y, y + cover.shape[0]), slice(x, x + cover.shape[1])
        a = (cover * opacity)[..., None]
        under = image[ys, xs]
        # Dark hair is never lighter than 0.6x what it covers (it absorbs), so it stays visible on dark lesions.
        ink = np.minimum(colour.astype(np.float32), 0.6 * under) if not light else colour.astype(np.float32)
        image[ys, xs] = under * (1 - a) + ink * a
        np.maximum(coverage[ys, xs], cover, out=coverage[ys, xs])


def _hair_counts(rng: np.random.Generator) -> tuple[int, int]:
    u = rng.random()
    if u < 0.2:
        n_dark = 0
    elif u < 0.5:
        n_dark = int(rng.integers(1, 6))          # a few stray hairs
    elif u < 0.85:
        n_dark = int(rng.integers(6, 25))         # moderately hairy
    else:
        n_dark = int(rng.integers(26, 70))        # a dense pelt of short hairs
    n_light = int(rng.integers(2, 12)) if rng.random() < 0.3 else 0
    return n_dark, n_light


def generate_sample(seed: int, index: int, *, size: tuple[int, int] = (512, 384), fov: str = "auto",
                    lesion: str = "auto") -> SynthSample:
    """Make synthetic image ``index`` of dataset ``seed``.

    Parameters
    ----------
    seed, index : int
        Non-negative; the sample depends only on ``(seed, index, size)``.
    size : (int, int)
        ``(width, height)`` in px, each at least 32. Lengths (hair width, texture scale) scale with the width.
    fov : {'auto', 'circle', 'vignette'}
        ``'auto'``: the usual mix of optics; ``'circle'``: always a circular field of view (random radius and
        offset, black or dark-grey corners, darker towards the rim); ``'vignette'``: the wide brown lens
        vignette of one clinic's dermoscope, with light skin and a small tan or brown lesion (4-15 %).
    lesion : {'auto', 'large'}
        ``'auto'``: 3-60 % of the image (4-15 % with ``fov='vignette'``); ``'large'``: filling 60-100 % of the
        frame or crossing its edge.

    Returns
    -------
    SynthSample
        ``image``/``clean`` ``(H, W, 3) uint8`` RGB, ``lesion``/``hair`` ``(H, W) bool`` and the drawn parameters.
    """
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    w, h = int(size[0]), int(size[1])
    if w < _MIN_SIZE or h < _MIN_SIZE:
        raise ValueError(f"size must be at least {_MIN_SIZE}x{_MIN_SIZE} (width, height), got {w}x{h}")
    if fov not in FOV_OPTIONS:
        raise ValueError(f"fov must be one of {FOV_OPTIONS}, got {fov!r}")
    if lesion not in LESION_OPTIONS:
        raise ValueError(f"lesion must be one of {LESION_OPTIONS}, got {lesion!r}")
    rng = np.random.default_rng([int(seed), int(index)])
    shape, px = (h, w), w / 512

    disc = _lens_disc(rng, shape) if fov == "vignette" else None
    skin = _skin(rng, shape, px) if disc is None else _skin(rng, shape, px, _LIGHT_SKIN_TONES)
    skin_tone = skin[::8, ::8].reshape(-1, 3).mean(axis=0)
    if lesion == "large":
        signed = _large_lesion_shape(rng, shape, px)
    else:
        signed = _lesion_shape(rng, shape, px) if disc is None else _small_lesion_shape(rng, shape, px, *disc)
    pigment_p = _PIGMENT_P if disc is None else _VIGNETTE_PIGMENT_P
    pigment = str(rng.choice(list(pigment_p), p=list(pigment_p.values())))
    absorb, (lo, hi) = _PIGMENTS[pigment]
    pale_rim = float(rng.uniform(0.15, 0.35)) if lesion == "large" else None
    density, edge = _pigment_density(rng, signed, px, rng.uniform(lo, hi), pale_rim)
    absorb = absorb * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    clean = skin * np.exp(-density[..., None] * absorb)

    n_dark, n_light = _hair_counts(rng)
    image = clean.copy()
    coverage = np.zeros(shape, np.float32)
    _draw_hairs(rng, image, coverage, n_dark, False, skin_tone, px)
    _draw_hairs(rng, image, coverage, n_light, True, skin_tone, px)

    if fov == "circle":
        transmission, inside = _circular_fov(rng, shape)
        optics = "circle"
    elif disc is not None:
        transmission, inside, optics = _lens_vignette(rng, shape, *disc), np.ones(shape, bool), "lens"
    else:
        transmission, optics = _optics(rng, shape)
        inside = transmission > 0.15
    sigma = rng.uniform(0.4, 0.8) * max(px, 0.5)
    noise = rng.standard_normal((*shape, 3), dtype=np.float32) * np.float32(rng.uniform(1.0, 2.5))

    def finish(a: np.ndarray) -> np.ndarray:
        t = transmission[..., None] if transmission.ndim == 2 else transmission
        a = cv2.GaussianBlur(a * t, (0, 0), sigma) + noise
        out = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        out.setflags(write=False)
        return out

    lesion = (signed > 0) & inside
    hair = (coverage >= HAIR_COVERAGE) & inside
    lesion.setflags(write=False)
    hair.setflags(write=False)
    touches = bool(lesion[0].any() or lesion[-1].any() or lesion[:, 0].any() or lesion[:, -1].any())
    return SynthSample(image=finish(image), clean=finish(clean), lesion=lesion, hair=hair,
                       lesion_fraction=float(lesion.mean()), n_dark_hairs=n_dark, n_light_hairs=n_light,
                       optics=optics, pigment=pigment, edge_width=edge, touches_border=touches)


def vignette_case(n: int = 8, *, seed: int = 0, size: tuple[int, int] = (256, 192)) -> list[SynthSample]:
    """The first ``n`` images of dataset ``seed`` with ``fov='vignette'``: the test case of stage 1's vignette
    failure (the bright skin inside a brown lens vignette taken for lesion).

    ``size`` (width, height) defaults to 256 x 192, stage 1's walker resolution: about 0.3 s an image for
    :func:`generate_sample` plus ``make_pseudo_mask``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [generate_sample(seed, i, size=size, fov="vignette") for i in range(n)]


# -------------------------------------------------------------------------------------------------- writing

def sample_id(index: int) -> str:
    """``SYN_0000042`` for index 42."""
    return f"SYN_{index:07d}"


def _encode(array: np.ndarray, ext: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION,
                                                                              PNG_COMPRESSION]
    ok, buf = cv2.imencode(ext, array, params)
    if not ok:
        raise RuntimeError(f"encoding {ext} failed")
    return buf.tobytes()


def _write_one(out_dir: Path, seed: int, index: int, size: tuple[int, int], fov: str = "auto",
               lesion: str = "auto") -> str:
    s = generate_sample(seed, index, size=size, fov=fov, lesion=lesion)
    sid = sample_id(index)
    write_bytes(out_dir / "images" / f"{sid}.jpg", _encode(s.image[:, :, ::-1], ".jpg"))
    write_bytes(out_dir / "clean" / f"{sid}.png", _encode(s.clean[:, :, ::-1], ".png"))
    write_bytes(out_dir / "masks" / f"{sid}_segmentation.png", _encode(s.lesion.astype(np.uint8) * 255, ".png"))
    write_bytes(out_dir / "hair" / f"{sid}_hair.png", _encode(s.hair.astype(np.uint8) * 255, ".png"))
    return sid


def write_synthetic_dataset(out_dir: str | Path, n: int, *, seed: int = 0, size: tuple[int, int] = (512, 384),
                            jobs: int = 1, progress: bool = True, fov: str = "auto",
                            lesion: str = "auto") -> list[str]:
    """Write ``n`` samples under ``out_dir`` and return their ids (``SYN_0000000`` ...).

    Layout: ``images/<ID>.jpg`` (JPEG quality 95), ``masks/<ID>_segmentation.png`` and ``hair/<ID>_hair.png``
    (0/255) and ``clean/<ID>.png`` (the image without hair). Every file is written atomically, and a rerun with
    the same ``seed`` and ``size`` writes byte-identical files whatever ``jobs`` is. ``fov`` and ``lesion`` are
    passed to :func:`generate_sample`.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out_dir = Path(out_dir)
    tasks = (delayed(_write_one)(out_dir, seed, i, size, fov, lesion) for i in range(n))
    bar = tqdm(total=n, desc="synthetic images", unit="img", disable=not progress)
    ids = []
    for sid in Parallel(n_jobs=jobs, return_as="generator")(tasks):
        ids.append(sid)
        bar.update()
    bar.close()
    return ids


def contact_sheet(samples: list[SynthSample], path: str | Path, *, titles: list[str] | None = None,
                  per_row: int = 1, dpi: int = 60) -> Path:
    """Write a PNG grid to ``path``: per sample, image | lesion contour (green) on the image | hair mask.

    ``per_row`` samples share a row of the grid; ``titles`` (one per sample) label the first panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.atomic import save_figure

    if not samples:
        raise ValueError("contact_sheet: samples is empty")
    rows = -(-len(samples) // per_row)
    aspect = samples[0].image.shape[0] / samples[0].image.shape[1]
    fig, axes = plt.subplots(rows, 3 * per_row, figsize=(3 * 3 * per_row, 3 * aspect * rows + 0.3),
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for k, s in enumerate(samples):
        r, c0 = divmod(k, per_row)
        overlay = s.image.copy()
        draw_contour(overlay, s.lesion, (40, 230, 40), max(1, s.image.shape[1] // 256))
        for c, (panel, name) in enumerate(((s.image, "image"), (overlay, "lesion mask"), (s.hair, "hair mask"))):
            ax = axes[r, 3 * c0 + c]
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, interpolation="antialiased")
            if r == 0:
                ax.set_title(name, fontsize=9)
        if titles:
            axes[r, 3 * c0].set_title(titles[k], fontsize=7)
    fig.tight_layout(pad=0.3)
    return save_figure(fig, path, dpi=dpi)
