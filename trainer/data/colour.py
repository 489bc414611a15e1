"""Vectorised photometric operations on a batch of crops (colour jitter, grey-scale, blur, solarise, normalise).

Every function acts on a whole batch ``(B, 3, H, W)`` float tensor with **per-sample** parameters given as
``(B,)`` tensors, on whatever device the batch lives on, with no host synchronisation and no random state of
its own: the caller draws the parameters (see :mod:`trainer.data.multicrop`).

The four ColorJitter operations of torchvision (brightness, contrast, saturation, hue) and the grey-scale
conversion are all linear maps of the RGB vector (contrast adds a bias that depends on the crop's mean luma), so
they are fused into **one per-sample 3x3 matrix plus a bias**, applied in one pass (``baddbmm``) and clipped
once to [0, 1]. Without intermediate clipping the four operations commute exactly (each fixes the grey axis
and preserves luma, except brightness and contrast, which are scalings about 0 and about the mean), so the random
order that torchvision draws would make no difference and is not drawn. Differences from torchvision, all
deliberate and small at the strengths used for DINO:

* no clipping between the jitter operations (torchvision clips after each);
* hue is a rotation of the chroma plane of YIQ (a linear approximation of the HSV hue shift; the luma is
  kept exactly, the chroma magnitude is kept before clipping). ``hue_factor`` h in [-0.5, 0.5] rotates by
  ``2 pi h`` as in torchvision.

References
----------
Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), ICCV 2021: the photometric
recipe (jitter 0.4/0.4/0.2/0.1 with p=0.8, grey-scale p=0.2, Gaussian blur sigma in [0.1, 2], solarise).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: ITU-R BT.601 luma weights, the grey-scale used by torchvision's ``rgb_to_grayscale``.
LUMA = (0.299, 0.587, 0.114)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# NTSC RGB -> YIQ. The I and Q rows sum to zero, so grey (R = G = B) has no chroma and YIQ^-1 maps (Y, 0, 0)
# back to (Y, Y, Y): hue rotation and saturation scaling in this space both fix the grey axis.
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
    dtype=torch.float64,
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


@functools.lru_cache(maxsize=64)
def _const(values: tuple, device: torch.device) -> Tensor:
    """A float32 constant on ``device``, copied there once (a host-to-device copy in the hot path syncs)."""
    return torch.tensor(values, dtype=torch.float64).to(device=device, dtype=torch.float32)


def _rows(m: Tensor) -> tuple:
    return tuple(tuple(r) for r in m.tolist())


def colour_matrix(
    brightness: Tensor, contrast: Tensor, saturation: Tensor, hue: Tensor, grey: Tensor, mean_luma: Tensor,
) -> tuple[Tensor, Tensor]:
    """Per-sample affine colour map ``x -> A x + b`` equal to jitter followed by optional grey-scale.

    Parameters
    ----------
    brightness, contrast, saturation : (B,) float
        Multiplicative factors as in torchvision (1 = unchanged).
    hue : (B,) float
        Hue factor in [-0.5, 0.5] (0 = unchanged); rotation of the YIQ chroma plane by ``2 pi hue``.
    grey : (B,) bool
        Convert to grey-scale (luma replicated in the three channels) after the jitter.
    mean_luma : (B,) float
        Mean luma of each crop before jitter, the pivot of the contrast blend (torchvision: mean of the
        grey-scale image).

    Returns
    -------
    A : (B, 3, 3) float32, b : (B, 3, 1) float32, on the device of ``brightness``.
    """
    dev = brightness.device
    n = brightness.shape[0]
    yiq = _const(_rows(_RGB_TO_YIQ), dev)
    inv = _const(_rows(_YIQ_TO_RGB), dev)
    # In YIQ: saturation scales (I, Q), hue rotates them; both leave Y alone.
    # Sign chosen so a positive factor moves colours the way torchvision's HSV shift does (R -> G -> B).
    cos, sin = torch.cos(2 * math.pi * hue), -torch.sin(2 * math.pi * hue)
    inner = torch.zeros(n, 3, 3, device=dev, dtype=torch.float32)
    inner[:, 0, 0] = 1.0
    inner[:, 1, 1] = saturation * cos
    inner[:, 1, 2] = -saturation * sin
    inner[:, 2, 1] = saturation * sin
    inner[:, 2, 2] = saturation * cos
    chroma = inv @ inner @ yiq  # (B, 3, 3): saturation and hue
    a = chroma * (brightness * contrast)[:, None, None]
    # Contrast pivots on the mean luma: + (1 - c) * mean * 1 (brightness scales it too).
    b = (brightness * (1.0 - contrast) * mean_luma)[:, None, None].expand(n, 3, 1)
    luma = _const(LUMA, dev)
    to_grey = luma.expand(3, 3)  # every output channel = luma
    a = torch.where(grey[:, None, None], to_grey @ a, a)
    return a, b.contiguous()


def apply_colour_matrix(
    x: Tensor, a: Tensor, b: Tensor, *, scale: float = 1.0, out: Tensor | None = None,
    low: tuple[float, ...] = (0.0, 0.0, 0.0), high: tuple[float, ...] = (1.0, 1.0, 1.0),
) -> Tensor:
    """``clip(A (scale * x) + b, low, high)`` per pixel; ``(B, 3, H, W) -> (B, 3, H, W)`` float32.

    ``scale`` folds the uint8 -> [0, 1] conversion into the matrix (``1/255`` for crops sampled from uint8);
    ``low`` / ``high`` are per-channel clip bounds ([0, 1] unless normalisation is folded into ``A, b``).
    Written into ``out`` (contiguous, same shape) when given.
    """
    n, c, h, w = x.shape
    if scale != 1.0:
        a = a * scale
    if out is None:
        out = torch.empty_like(x, dtype=torch.float32)
    flat = out.view(n, c, h * w)
    torch.bmm(a, x.reshape(n, c, h * w), out=flat)  # baddbmm would first copy the bias into out: a pass more
    for ch in range(c):  # bias and scalar per-channel bounds on each channel while it is in cache
        flat[:, ch].add_(b[:, ch]).clamp_(low[ch], high[ch])
    return out


def normalise_affine(a: Tensor, b: Tensor, mean, std) -> tuple[Tensor, Tensor]:
    """Fold ``(y - mean) / std`` into an affine colour map: ``(A, b) -> (A / std, (b - mean) / std)``."""
    inv = _const(tuple(1.0 / s for s in std), a.device)[:, None]
    m = _const(tuple(mean), a.device)[:, None]
    return a * inv, (b - m) * inv


def normalised(value: float, mean, std) -> tuple[float, ...]:
    """Per-channel ``(value - mean) / std``: where an intensity lands after normalisation."""
    return tuple((value - m) / s for m, s in zip(mean, std))


def solarise_normalised(x: Tensor, threshold: Tensor | float, mean, std) -> Tensor:
    """:func:`solarise` on normalised images: invert ``v >= t`` in intensity units, keep units normalised.

    ``x``: (B, 3, H, W) holding ``(v - mean) / std``; ``threshold``: float or (B,) in intensity units.
    ``1 - v`` in normalised units is ``(1 - 2 mean) / std - x``.
    """
    dev, dt = x.device, x.dtype
    m = _const(tuple(mean), dev).to(dt)[:, None, None]
    s = _const(tuple(std), dev).to(dt)[:, None, None]
    t = torch.as_tensor(threshold, device=dev, dtype=dt)
    t = t[:, None, None, None] if t.ndim else t
    return torch.where(x >= (t - m) / s, (1 - 2 * m) / s - x, x)


def mean_luma(x: Tensor, *, scale: float = 1.0) -> Tensor:
    """Mean BT.601 luma of each image, ``(B, 3, H, W) -> (B,)``; ``scale`` as in :func:`apply_colour_matrix`."""
    luma = _const(LUMA, x.device).to(x.dtype)
    return (x.mean(dim=(2, 3)) @ luma) * scale


def gaussian_kernels(sigma: Tensor, radius: int) -> Tensor:
    """Normalised 1-D Gaussian kernels, ``(B,) sigma -> (B, 2 * radius + 1)`` float32.

    A sigma far below one pixel (e.g. 1e-3) gives the unit impulse exactly, i.e. no blur.
    """
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].clamp_min(1e-3)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, *, radius: int | None = None) -> Tensor:
    """Separable Gaussian blur with a per-sample sigma (pixels), reflect padding.

    ``(B, C, H, W) float, (B,) sigma -> (B, C, H, W)``. The kernel is truncated at ``radius`` pixels
    (default ``ceil(3 * max(sigma))``, which reads ``sigma`` on the host: pass ``radius`` on CUDA to avoid a
    sync). Implemented as two depthwise convolutions (1 x K then K x 1) with one kernel per (sample, channel),
    channels-last on CPU.
    """
    n, c, h, w = x.shape
    if radius is None:
        radius = max(1, math.ceil(3.0 * float(sigma.max())))
    radius = min(radius, h - 1, w - 1)  # reflect padding needs radius < size
    k = gaussian_kernels(sigma, radius).repeat_interleave(c, dim=0)  # (B*C, K)
    size = 2 * radius + 1
    y = x.reshape(1, n * c, h, w)
    if y.device.type == "cpu":  # oneDNN's depthwise convolution is ~3x faster channels-last on CPU
        y = y.contiguous(memory_format=torch.channels_last)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, size), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, size, 1), groups=n * c)
    return y.contiguous().view(n, c, h, w)


def solarise(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert pixels at or above a per-sample threshold: ``x >= t -> 1 - x``; ``(B, C, H, W), (B,) -> same``.

    A threshold above 1 leaves the sample unchanged (used for samples not drawn for solarisation).
    """
    t = threshold.to(x.dtype)[:, None, None, None]
    return torch.where(x >= t, 1.0 - x, x)
