"""Batched, on-device multi-crop augmentation for DINO pre-training, with maps that follow the crops exactly.

One call turns a batch of images ``(B, 3, S, S)`` (and optional per-pixel maps ``(B, C, S, S)``: pseudo-mask,
walker probability, hair mask) into ``n_global`` global views, their maps, and ``n_local`` local views, as in the
multi-crop recipe of DINO (Caron et al. 2021): random-resized crops, flips, colour jitter, rare grey-scale,
Gaussian blur and solarisation, then ImageNet normalisation. For dermoscopy (docs/METHOD.md, section 5.2) vertical flips
and 90-degree rotations are added, hue jitter is small and grey-scale rare.

Geometry. Per view and per sample, the crop box ``(x0, y0, w, h)`` (drawn as torchvision's
``RandomResizedCrop.get_params``: up to 10 tries of area scale and log-uniform aspect ratio, centre-crop
fallback, here vectorised and with sub-pixel boxes), a horizontal flip, a vertical flip and a rotation by
``k * 90`` degrees form one affine map from output to input coordinates::

    p_in = c + diag(w / W, h / H) @ R_k @ F @ p_out        (normalised coordinates, align_corners=False)

i.e. resize the crop to the output size, then flip, then rotate. The sampling grid is built directly at the
output size (the cost is proportional to the output, not to the source) and applied with
``F.grid_sample`` to the image (bilinear) and **with the same grid** to the maps (bilinear: a probability stays
a probability). Channels listed in ``binary_channels`` are thresholded at 0.5 after the bilinear resampling,
which puts their edge where the image's (bilinearly resampled) edge is to sub-pixel accuracy; nearest
neighbour would move it by up to half an input pixel. Flips and rotations alone (crop scale (1, 1), aspect 1,
output size = input size) reproduce ``torch.flip`` / ``torch.rot90`` exactly after thresholding.

Photometry, per view, in DINO's order: colour jitter (probability ``jitter_p``) and grey-scale fused into one
per-sample affine colour map, clip to [0, 1], Gaussian blur, solarise, normalise (see :mod:`trainer.data.colour`).

Randomness. Every random number comes from the ``torch.Generator`` passed in, drawn in a fixed order with
shapes that depend only on the batch size and the config, so the same seed gives the same views. Parameters
are drawn on the generator's device: a generator on the input's device keeps a CUDA step free of host syncs;
a CPU generator gives the same crops on any device (the small parameter tensors are then copied over).

Cost. On CPU the batch is processed in chunks of ``cpu_chunk`` samples so the working set stays in cache,
and blur and solarisation run only on the samples drawn for them; on CUDA everything is computed for the whole
batch with a fixed kernel radius and identity parameters for the samples not drawn, so the hot path never
reads a tensor back to the host. See ``bench/bench_multicrop.py``.

References
----------
M. Caron, H. Touvron, I. Misra, H. Jegou, J. Mairal, P. Bojanowski, A. Joulin, "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021 (the multi-crop recipe and its default probabilities).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.data import colour


@dataclass(frozen=True)
class MultiCropConfig:
    """The multi-crop recipe. Defaults: DINO (Caron et al. 2021) adapted to dermoscopy (docs/METHOD.md, section 5.2).

    Per-view probabilities given as tuples apply to the global views in order; a view past the end of the
    tuple uses its last entry. ``MultiCropConfig.dino()`` gives the original DINO values.
    """

    n_global: int = 2
    global_size: int = 224
    global_scale: tuple[float, float] = (0.4, 1.0)
    n_local: int = 8
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    rot90: bool = True
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.02
    grey_p: float = 0.05
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    global_blur_p: tuple[float, ...] = (1.0, 0.1)
    local_blur_p: float = 0.5
    global_solarise_p: tuple[float, ...] = (0.0, 0.2)
    local_solarise_p: float = 0.0
    solarise_threshold: float = 0.5
    normalise: bool = True
    mean: tuple[float, float, float] = colour.IMAGENET_MEAN
    std: tuple[float, float, float] = colour.IMAGENET_STD
    cpu_chunk: int = 16

    def __post_init__(self) -> None:
        for name in ("n_global", "n_local"):
            if getattr(self, name) < 0:
                raise ValueError(f"MultiCropConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("global_size", "local_size", "cpu_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"MultiCropConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("global_scale", "local_scale", "ratio", "blur_sigma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"MultiCropConfig.{name} must satisfy 0 < low <= high, got {(lo, hi)}")
        if self.global_scale[1] > 1 or self.local_scale[1] > 1:
            raise ValueError(
                f"crop scales are fractions of the image area (<= 1), got global_scale={self.global_scale}, "
                f"local_scale={self.local_scale}"
            )
        probs = {
            "hflip_p": self.hflip_p, "vflip_p": self.vflip_p, "jitter_p": self.jitter_p, "grey_p": self.grey_p,
            "local_blur_p": self.local_blur_p, "local_solarise_p": self.local_solarise_p,
        }
        probs.update({f"global_blur_p[{i}]": p for i, p in enumerate(self.global_blur_p)})
        probs.update({f"global_solarise_p[{i}]": p for i, p in enumerate(self.global_solarise_p)})
        for name, p in probs.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"MultiCropConfig.{name} must be a probability in [0, 1], got {p}")
        if not self.global_blur_p or not self.global_solarise_p:
            raise ValueError("MultiCropConfig.global_blur_p and global_solarise_p need at least one entry")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"MultiCropConfig.hue must be in [0, 0.5], got {self.hue}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"MultiCropConfig.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def dino(cls, **overrides) -> MultiCropConfig:
        """The original DINO recipe: horizontal flips only, hue 0.1, grey-scale p=0.2."""
        values = dict(vflip_p=0.0, rot90=False, hue=0.1, grey_p=0.2)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def geometric(cls, **overrides) -> MultiCropConfig:
        """Crops, flips and rotations only: no photometric operation, no normalisation (tests, inspection)."""
        values = dict(
            jitter_p=0.0, grey_p=0.0, global_blur_p=(0.0,), local_blur_p=0.0, global_solarise_p=(0.0,),
            local_solarise_p=0.0, normalise=False,
        )
        values.update(overrides)
        return cls(**values)


@dataclass
class MultiCropOutput:
    """Views of one batch. Images are float32 (normalised if the config says so, else in [0, 1]).

    global_views: ``n_global`` tensors ``(B, 3, g, g)``; global_maps: ``n_global`` tensors ``(B, C, g, g)``
    (empty list without maps); local_views: ``n_local`` tensors ``(B, 3, l, l)``.
    """

    global_views: list[Tensor]
    global_maps: list[Tensor]
    local_views: list[Tensor]


@dataclass
class _ViewParams:
    """Random parameters of one view for the whole batch, every field (B,) or (B, 2, 3)."""

    theta: Tensor  # (B, 2, 3) output -> input affine in normalised coordinates
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    grey: Tensor  # bool
    blur: Tensor  # bool
    sigma: Tensor
    solarise: Tensor  # bool


_N_TRIES = 10  # RandomResizedCrop tries before the centre-crop fallback (torchvision)


def _crop_boxes(u: Tensor, height: int, width: int, scale, ratio) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Vectorised ``RandomResizedCrop.get_params`` with continuous boxes.

    ``u``: (B, 2 * _N_TRIES + 2) uniforms in [0, 1). Returns centre x, centre y, width, height in pixels, (B,).
    """
    area = float(height * width)
    tries = u[:, : 2 * _N_TRIES].view(-1, _N_TRIES, 2)
    target = area * (scale[0] + (scale[1] - scale[0]) * tries[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * tries[..., 1])
    w = torch.sqrt(target * aspect)
    h = torch.sqrt(target / aspect)
    ok = (w <= width) & (h <= height)
    first = torch.argmax(ok.to(torch.uint8), dim=1, keepdim=True)  # first valid try (0 if none)
    any_ok = ok.any(dim=1)
    w = torch.gather(w, 1, first).squeeze(1)
    h = torch.gather(h, 1, first).squeeze(1)
    # Fallback (torchvision): centre crop of the whole image with the aspect ratio clamped to the range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    x0 = u[:, -2] * (width - w)
    y0 = u[:, -1] * (height - h)
    return x0 + 0.5 * w, y0 + 0.5 * h, w, h


def _draw_view(
    n: int, height: int, width: int, scale, *, blur_p: float, solarise_p: float, config: MultiCropConfig,
    generator: torch.Generator, device: torch.device,
) -> _ViewParams:
    """Draw every random parameter of one view for ``n`` samples (one generator call, fixed layout)."""
    n_crop = 2 * _N_TRIES + 2
    u = torch.rand(n, n_crop + 14, generator=generator, device=generator.device)
    cx, cy, w, h = _crop_boxes(u[:, :n_crop], height, width, scale, config.ratio)
    v = u[:, n_crop:]
    fx = torch.where(v[:, 0] < config.hflip_p, -1.0, 1.0)
    fy = torch.where(v[:, 1] < config.vflip_p, -1.0, 1.0)
    k = torch.floor(v[:, 2] * 4).clamp_max(3) if config.rot90 else torch.zeros_like(v[:, 2])
    angle = k * (math.pi / 2)
    cos, sin = torch.round(torch.cos(angle)), torch.round(torch.sin(angle))  # exact 0 / +-1
    # theta = diag(w/W, h/H) @ R_k @ diag(fx, fy), translation = normalised crop centre.
    sx, sy = w / width, h / height
    theta = torch.stack(
        [
            torch.stack([sx * cos * fx, -sx * sin * fy, 2 * cx / width - 1], dim=1),
            torch.stack([sy * sin * fx, sy * cos * fy, 2 * cy / height - 1], dim=1),
        ],
        dim=1,
    )
    jitter = v[:, 3] < config.jitter_p

    def factor(strength: float, r: Tensor) -> Tensor:
        f = max(0.0, 1 - strength) + (1 + strength - max(0.0, 1 - strength)) * r
        return torch.where(jitter, f, torch.ones_like(f))

    lo, hi = config.blur_sigma
    params = _ViewParams(
        theta=theta,
        brightness=factor(config.brightness, v[:, 4]),
        contrast=factor(config.contrast, v[:, 5]),
        saturation=factor(config.saturation, v[:, 6]),
        hue=torch.where(jitter, config.hue * (2 * v[:, 7] - 1), torch.zeros_like(v[:, 7])),
        grey=v[:, 8] < config.grey_p,
        blur=v[:, 9] < blur_p,
        sigma=lo + (hi - lo) * v[:, 10],
        solarise=v[:, 11] < solarise_p,
    )
    if device != generator.device:
        params = _ViewParams(**{k: t.to(device, non_blocking=True) for k, t in vars(params).items()})
    return params


def _sampling_grid(theta: Tensor, size: int) -> Tensor:
    """Sampling grid of an axis-aligned-or-rotated-by-90 affine, ``(B, 2, 3) -> (B, size, size, 2)``.

    Same values as ``F.affine_grid(theta, (B, C, size, size), align_corners=False)``, built with two
    broadcast adds instead of a batched matmul.
    """
    n = theta.shape[0]
    t = (torch.arange(size, device=theta.device, dtype=theta.dtype) * 2 + 1) / size - 1  # pixel centres
    grid = torch.empty(n, size, size, 2, device=theta.device, dtype=theta.dtype)
    for axis in (0, 1):
        row = theta[:, axis, 1, None] * t + theta[:, axis, 2, None]  # (B, size): depends on y_out
        col = theta[:, axis, 0, None] * t  # (B, size): depends on x_out
        torch.add(row[:, :, None], col[:, None, :], out=grid[..., axis])
    return grid


def _photometric(
    x: Tensor, p: _ViewParams, *, scale: float, config: MultiCropConfig, out: Tensor, on_cpu: bool,
) -> None:
    """Jitter + grey -> clip -> blur -> solarise -> normalise of one view chunk, written into ``out``.

    ``x``: (b, 3, s, s) crops (values in [0, 255] if ``scale`` = 1/255); ``out``: (b, 3, s, s) float32.
    Normalisation is folded into the colour matrix (blur is linear with unit gain and solarise gets per-channel
    constants, so both act the same in normalised units), which saves a pass. On CPU (``on_cpu``) blur and
    solarise run only on the samples drawn for them, grouped by kernel radius ``ceil(3 sigma)`` (reads the draws
    on the host); on CUDA they run on every sample with the radius ``ceil(3 * max sigma)`` and identity
    parameters for the samples not drawn, so nothing is read back to the host. The two differ only by the
    truncation of the Gaussian tail beyond 3 sigma (< 0.3 % of its mass).
    """
    mean = config.mean if config.normalise else (0.0, 0.0, 0.0)
    std = config.std if config.normalise else (1.0, 1.0, 1.0)
    a, b = colour.colour_matrix(
        p.brightness, p.contrast, p.saturation, p.hue, p.grey, colour.mean_luma(x, scale=scale)
    )
    a, b = colour.normalise_affine(a, b, mean, std)
    colour.apply_colour_matrix(x, a, b, scale=scale, out=out, low=colour.normalised(0.0, mean, std),
                               high=colour.normalised(1.0, mean, std))
    if on_cpu:
        # Bucket the drawn samples by kernel radius ceil(3 sigma): most kernels are short (conv cost ~ radius).
        radius = torch.where(p.blur, torch.ceil(3.0 * p.sigma).clamp_min(1), 0).to(torch.int64).tolist()
        for r in sorted(set(radius) - {0}):
            drawn = [i for i, ri in enumerate(radius) if ri == r]
            _apply_to(out, drawn, lambda t, idx: colour.gaussian_blur(t, p.sigma[idx], radius=r))
        drawn = [i for i, d in enumerate(p.solarise.tolist()) if d]
        _apply_to(out, drawn, lambda t, idx: colour.solarise_normalised(t, config.solarise_threshold, mean, std))
    else:
        radius = math.ceil(3.0 * config.blur_sigma[1])
        if config.local_blur_p > 0 or max(config.global_blur_p) > 0:
            out.copy_(colour.gaussian_blur(out, torch.where(p.blur, p.sigma, 1e-3), radius=radius))
        if config.local_solarise_p > 0 or max(config.global_solarise_p) > 0:
            thr = torch.where(p.solarise, config.solarise_threshold, 2.0)
            out.copy_(colour.solarise_normalised(out, thr, mean, std))


def _apply_to(x: Tensor, idx: list[int], fn) -> None:
    """``x[idx] = fn(x[idx], idx)`` in place, without a gather/scatter when ``idx`` is every sample."""
    if not idx:
        return
    if len(idx) == x.shape[0]:
        x.copy_(fn(x, slice(None)))
        return
    t = torch.tensor(idx, device=x.device)
    x[t] = fn(x[t], t)


def _host_path(device: torch.device) -> bool:
    """Whether the draws may be read on the host (CPU: yes, free; CUDA: no, it would sync the step)."""
    return device.type == "cpu"


def _check_inputs(images: Tensor, maps: Tensor | None, binary_channels: Sequence[int]) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"images must be uint8 or float, got {images.dtype}")
    if maps is None:
        if binary_channels:
            raise ValueError(f"binary_channels={tuple(binary_channels)} given without maps")
        return
    if maps.ndim != 4 or maps.shape[0] != images.shape[0] or maps.shape[2:] != images.shape[2:]:
        raise ValueError(
            f"maps must be (B, C, H, W) matching images {tuple(images.shape)}, got shape {tuple(maps.shape)}"
        )
    if not maps.is_floating_point():
        raise ValueError(f"maps must be float, got {maps.dtype}")
    if maps.device != images.device:
        raise ValueError(f"maps are on {maps.device} but images on {images.device}")
    bad = [c for c in binary_channels if not 0 <= c < maps.shape[1]]
    if bad:
        raise ValueError(f"binary_channels {bad} out of range for maps with {maps.shape[1]} channels")


def multi_crop(
    images: Tensor,
    maps: Tensor | None = None,
    *,
    config: MultiCropConfig,
    generator: torch.Generator,
    binary_channels: Sequence[int] = (),
) -> MultiCropOutput:
    """Multi-crop views of a batch (DINO, Caron et al. 2021), maps transformed with the global crops.

    Parameters
    ----------
    images : (B, 3, H, W) uint8 (0-255) or float (0-1), any device
        Source images (the shard storage resolution, e.g. 256 x 256).
    maps : (B, C, H, W) float, optional
        Per-pixel maps (pseudo-mask, walker probability, hair mask) aligned with ``images``; resampled with
        each global view's grid, bilinearly. No photometric operation touches them.
    config : MultiCropConfig
    generator : torch.Generator
        The only source of randomness. Put it on the images' device for a sync-free CUDA step.
    binary_channels : sequence of int
        Map channels that are 0/1 masks: thresholded at 0.5 after resampling (output exactly 0 or 1).

    Returns
    -------
    MultiCropOutput
        ``global_views`` n_global x (B, 3, g, g) float32, ``global_maps`` n_global x (B, C, g, g) float32
        (empty without maps), ``local_views`` n_local x (B, 3, l, l) float32, on the images' device.
    """
    _check_inputs(images, maps, binary_channels)
    n, _, height, width = images.shape
    device = images.device
    cfg = config
    scale = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
    specs = [
        (cfg.global_size, cfg.global_scale, cfg.global_blur_p[min(i, len(cfg.global_blur_p) - 1)],
         cfg.global_solarise_p[min(i, len(cfg.global_solarise_p) - 1)], True)
        for i in range(cfg.n_global)
    ] + [(cfg.local_size, cfg.local_scale, cfg.local_blur_p, cfg.local_solarise_p, False)] * cfg.n_local
    params = [
        _draw_view(n, height, width, sc, blur_p=bp, solarise_p=sp, config=cfg, generator=generator, device=device)
        for size, sc, bp, sp, _ in specs
    ]
    outs = [torch.empty(n, 3, size, size, device=device) for size, *_ in specs]
    map_outs = [
        torch.empty(n, maps.shape[1], size, size, device=device, dtype=maps.dtype)
        for size, *_, is_global in specs if is_global and maps is not None
    ]
    on_cpu = _host_path(device)
    chunk = cfg.cpu_chunk if on_cpu else n
    binary = list(binary_channels)
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        src = images[sl].to(torch.float32)  # uint8 -> float once per chunk, shared by all views
        for v, ((size, _, _, _, is_global), p) in enumerate(zip(specs, params)):
            pv = _ViewParams(**{k: t[sl] for k, t in vars(p).items()})
            grid = _sampling_grid(pv.theta, size)
            x = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
            _photometric(x, pv, scale=scale, config=cfg, out=outs[v][sl], on_cpu=on_cpu)
            if is_global and maps is not None:
                m = F.grid_sample(maps[sl], grid, mode="bilinear", padding_mode="border", align_corners=False)
                for c in binary:  # one channel at a time: list indexing would copy an index to the device
                    m[:, c] = (m[:, c] >= 0.5).to(m.dtype)
                map_outs[v][sl] = m
    return MultiCropOutput(
        global_views=outs[: cfg.n_global], global_maps=map_outs, local_views=outs[cfg.n_global:]
    )


class MultiCrop:
    """Callable wrapper: ``MultiCrop(config)(images, maps, generator=g) -> MultiCropOutput``."""

    def __init__(self, config: MultiCropConfig | None = None) -> None:
        self.config = config if config is not None else MultiCropConfig()

    def __call__(
        self, images: Tensor, maps: Tensor | None = None, *, generator: torch.Generator,
        binary_channels: Sequence[int] = (),
    ) -> MultiCropOutput:
        return multi_crop(images, maps, config=self.config, generator=generator, binary_channels=binary_channels)

    def __repr__(self) -> str:
        return f"MultiCrop({self.config!r})"
