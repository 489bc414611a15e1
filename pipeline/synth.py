"""Synthetic dermoscopy with known ground truth: the lesion mask, the hair mask and the hair-free image.

The built-in data of ``make demo`` and the tests (nothing can be downloaded at run time), and the only source
of ground truth for hair, which the hair-removal benchmark needs. Each image depends only on ``(seed, index)``.

What an image holds (every number drawn per image):

- skin: a tone from pink-beige to tan, low-frequency colour variation and fine texture;
- optics: a dark vignette (some images) or a circular dermoscope frame with black corners (some others);
- a lesion: an irregular blob (radial Fourier contour) covering 3-60 % of the image, sometimes off-centre
  and touching the border; brown, dark brown or blue-grey; internal blotches and a pigment-network-like mesh;
  edges from sharp to fuzzy (the mask is the 0.5 level of the blend);
- hair: on most images dark hairs, on some light hairs — thin curved strokes (quadratic Bezier curves, 1-3 px
  wide at 512 px, anti-aliased by supersampling); the hair mask is where a stroke covers >= 30 % of a pixel.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.atomic import write_bytes

JPEG_QUALITY = 95


@dataclass(frozen=True)
class SynthSample:
    """One synthetic image. Arrays are ``(H, W, 3) uint8`` RGB or ``(H, W) bool``."""

    image: np.ndarray
    clean: np.ndarray
    lesion: np.ndarray
    hair: np.ndarray
    lesion_fraction: float
    n_dark_hairs: int
    n_light_hairs: int
    optics: str  # 'none', 'vignette' or 'frame'


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] of ``shape``: a ``cells``-wide random grid, bicubically upsampled."""
    h, w = shape
    grid = rng.uniform(-1, 1, (max(2, round(cells * h / w)), cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), -1, 1)


def _skin(rng, shape) -> np.ndarray:
    tone = np.array([rng.uniform(205, 240), rng.uniform(160, 205), rng.uniform(140, 190)], np.float32)
    image = np.broadcast_to(tone, (*shape, 3)).copy()
    image *= 1 + 0.05 * _smooth_noise(rng, shape, 4)[..., None]                # uneven illumination
    mottle = np.clip(_smooth_noise(rng, shape, 40), 0, 1) * rng.uniform(0, 0.08)  # reddish mottling
    image[..., 1:] *= (1 - mottle)[..., None]
    image += rng.normal(0, 3.0, (*shape, 3)).astype(np.float32)                # fine texture
    return image


def _lesion_shape(rng, shape) -> tuple[np.ndarray, float]:
    """Signed distance to an irregular lesion contour (> 0 inside), in px, and its target area fraction."""
    h, w = shape
    fraction = float(np.exp(rng.uniform(np.log(0.03), np.log(0.6))))
    radius = np.sqrt(fraction * h * w / np.pi)
    if rng.random() < 0.25:  # off-centre, often through the border
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    else:
        cy, cx = h / 2 + rng.normal(0, 0.06) * h, w / 2 + rng.normal(0, 0.06) * w
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 24):  # large lobes plus a ragged fine border
        r += rng.normal(0, 0.14 / k ** 1.1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    stretch = rng.uniform(0.75, 1.3)
    pts = np.stack([cx + radius * r * np.cos(theta) * stretch, cy + radius * r * np.sin(theta) / stretch], 1)
    inside = np.zeros(shape, np.uint8)
    cv2.fillPoly(inside, [np.round(pts * 4).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=2)
    d_in = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    d_out = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)
    signed = d_in - d_out + rng.uniform(0, 4) * w / 512 * _smooth_noise(rng, shape, 30)
    return signed, fraction


def _lesion_colour(rng, shape, signed: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Lesion RGB (float), blend weight alpha in [0, 1] (0.5 on the contour) and the contrast."""
    kind = rng.choice(["brown", "dark", "bluegrey", "pink"], p=[0.5, 0.3, 0.1, 0.1])
    base = {"brown": (150, 95, 60), "dark": (85, 55, 42), "bluegrey": (110, 95, 125), "pink": (190, 120, 110)}[kind]
    colour = np.array(base, np.float32) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    second = colour * rng.uniform(0.45, 0.75)  # darker brown areas
    contrast = rng.uniform(0.55, 1.0)
    h, w = shape
    mix = np.clip(_smooth_noise(rng, shape, int(rng.integers(4, 10))) * 1.5 + rng.uniform(-0.5, 0.5), 0, 1)
    lesion = colour * (1 - mix[..., None]) + second * mix[..., None]
    # Granular texture: dots and globules at a few pixels' scale.
    grain = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), rng.uniform(0.8, 2.0) * w / 512)
    grain /= grain.std() + 1e-6
    lesion *= (1 - rng.uniform(0.03, 0.12) * np.clip(grain, -1.5, 2.5))[..., None]
    # A pigment-network-like mesh: dark lines where two rotated gratings meet, faded by noise.
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    period = rng.uniform(7, 14) * w / 512
    a = rng.uniform(0, np.pi)
    g1 = np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period)
    g2 = np.sin((-xx * np.sin(a) + yy * np.cos(a)) * 2 * np.pi / period)
    mesh = np.clip(np.maximum(g1, g2) - 0.6, 0, None) * np.clip(_smooth_noise(rng, shape, 5) + 0.3, 0, 1)
    lesion *= 1 - rng.uniform(0.0, 0.6) * mesh[..., None]
    edge = float(np.exp(rng.uniform(np.log(0.6), np.log(8.0)))) * w / 512  # edge width in px
    alpha = 0.5 * (1 + np.tanh(signed / (2 * edge)))  # logistic blend, overflow-free
    core = np.clip(signed / (signed.max() + 1e-6), 0, 1)  # darker core, paler rim
    lesion *= (1 - 0.2 * core)[..., None]
    return lesion, alpha, contrast


def _optics(rng, image: np.ndarray) -> str:
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    rr = np.sqrt(((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2)
    u = rng.random()
    if u < 0.3:
        image *= np.clip(1 - rng.uniform(0.6, 1.2) * np.clip(rr - 0.7, 0, None) ** 1.2, 0.03, 1)[..., None]
        return "vignette"
    if u < 0.5:
        radius = np.hypot(h, w) / 2 * rng.uniform(0.8, 0.95) / (np.hypot(h, w) / 2)
        rc = np.sqrt(((yy - h / 2)) ** 2 + ((xx - w / 2)) ** 2) / (np.hypot(h, w) / 2)
        frame = np.clip((rc - radius) / 0.02, 0, 1)
        image *= (1 - 0.93 * frame)[..., None]
        return "frame"
    return "none"


def _hairs(rng, shape, n: int, scale: int = 3) -> np.ndarray:
    """Coverage in [0, 1] of ``n`` curved strokes, drawn at ``scale`` x and area-averaged down."""
    h, w = shape
    canvas = np.zeros((h * scale, w * scale), np.uint8)
    for _ in range(n):
        p0 = rng.uniform([0, 0], [w, h])
        angle = rng.uniform(0, 2 * np.pi)
        length = (rng.uniform(0.03, 0.12) if rng.random() < 0.3 else rng.uniform(0.25, 1.0)) * max(h, w)
        p2 = p0 + length * np.array([np.cos(angle), np.sin(angle)])
        bend = rng.normal(0, 0.2) * length
        p1 = (p0 + p2) / 2 + bend * np.array([-np.sin(angle), np.cos(angle)])
        t = np.linspace(0, 1, 64)[:, None]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        width = rng.uniform(1.0, 3.0) * w / 512
        thickness = max(1, int(round(width * scale)))
        cv2.polylines(canvas, [np.round(curve * scale).astype(np.int32)], False, 255, thickness, cv2.LINE_AA)
    return cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def generate_sample(seed: int, index: int, *, size: tuple[int, int] = (512, 384)) -> SynthSample:
    """Make synthetic image ``index`` of dataset ``seed``; ``size`` is ``(width, height)``.

    Deterministic: the same ``(seed, index, size)`` always gives the same arrays.
    """
    w, h = int(size[0]), int(size[1])
    if w < 32 or h < 32:
        raise ValueError(f"size must be at least 32x32, got {w}x{h}")
    rng = np.random.default_rng([int(seed), int(index)])
    shape = (h, w)
    skin = _skin(rng, shape)
    signed, _ = _lesion_shape(rng, shape)
    lesion_rgb, alpha, contrast = _lesion_colour(rng, shape, signed)
    clean = skin * (1 - alpha[..., None] * contrast) + lesion_rgb * (alpha[..., None] * contrast)
    optics = _optics(rng, clean)
    clean = cv2.GaussianBlur(clean, (0, 0), 0.6)
    lesion = signed > 0
    n_dark = int(rng.integers(3, 26)) if rng.random() < 0.75 else 0
    n_light = int(rng.integers(2, 10)) if rng.random() < 0.25 else 0
    image = clean.copy()
    hair = np.zeros(shape, bool)
    for n, colour in ((n_dark, (rng.uniform(25, 60), rng.uniform(18, 40), rng.uniform(15, 35))),
                      (n_light, (rng.uniform(215, 240), rng.uniform(205, 230), rng.uniform(195, 220)))):
        if n:
            cover = _hairs(rng, shape, n)
            image = image * (1 - cover[..., None]) + np.array(colour, np.float32) * cover[..., None]
            hair |= cover >= 0.3
    as_u8 = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)  # noqa: E731
    return SynthSample(image=as_u8(image), clean=as_u8(clean), lesion=lesion, hair=hair,
                       lesion_fraction=float(lesion.mean()), n_dark_hairs=n_dark, n_light_hairs=n_light,
                       optics=optics)


def sample_id(index: int) -> str:
    return f"SYN_{index:07d}"


def _encode(array: np.ndarray, ext: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(ext, array, params)
    if not ok:
        raise RuntimeError(f"encoding {ext} failed")
    return buf.tobytes()


def _write_one(out_dir: Path, seed: int, index: int, size: tuple[int, int]) -> str:
    s = generate_sample(seed, index, size=size)
    sid = sample_id(index)
    write_bytes(out_dir / "images" / f"{sid}.jpg", _encode(s.image[:, :, ::-1], ".jpg"))
    write_bytes(out_dir / "clean" / f"{sid}.png", _encode(s.clean[:, :, ::-1], ".png"))
    write_bytes(out_dir / "masks" / f"{sid}_segmentation.png", _encode(s.lesion.astype(np.uint8) * 255, ".png"))
    write_bytes(out_dir / "hair" / f"{sid}_hair.png", _encode(s.hair.astype(np.uint8) * 255, ".png"))
    return sid


def write_synthetic_dataset(out_dir: str | Path, n: int, *, seed: int = 0, size: tuple[int, int] = (512, 384),
                            jobs: int = 1, progress: bool = True) -> list[str]:
    """Write ``n`` samples as ``images/<ID>.jpg``, ``masks/<ID>_segmentation.png``, ``hair/<ID>_hair.png``
    and ``clean/<ID>.png`` under ``out_dir``; byte-identical on a rerun with the same arguments."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out_dir = Path(out_dir)
    tasks = (delayed(_write_one)(out_dir, seed, i, size) for i in range(n))
    bar = tqdm(total=n, desc="synthetic images", unit="img", disable=not progress)
    ids = []
    for sid in Parallel(n_jobs=jobs, return_as="generator")(tasks):
        ids.append(sid)
        bar.update()
    bar.close()
    return ids


def contact_sheet(samples: list[SynthSample], path: str | Path, *, titles: list[str] | None = None) -> Path:
    """PNG grid: image with the lesion contour (green) | hair mask | hair-free image, one row per sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.atomic import atomic_path

    fig, axes = plt.subplots(len(samples), 3, figsize=(9, 2.5 * len(samples)), squeeze=False)
    for r, s in enumerate(samples):
        overlay = s.image.copy()
        contours, _ = cv2.findContours(s.lesion.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, (40, 230, 40), 2)
        for c, (panel, name) in enumerate(((overlay, "image + lesion"), (s.hair, "hair mask"),
                                           (s.clean, "without hair"))):
            ax = axes[r, c]
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
        if titles:
            axes[r, 0].set_ylabel(titles[r], fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=60, format="png")
    plt.close(fig)
    return path
