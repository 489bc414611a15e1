"""Progressive imbalance-aware CutMix (PIC, after DINO-Mix) for a binary lesion / skin segmentation batch.

DINO-Mix (Liu & Sun 2026; docs/METHOD.md, section 8.2) mixes samples with CutMix whose source regions at first favour
the minority class and anneal to uniform. The exact form is not public; ours:

- each sample ``i`` of the batch receives a box cut from a partner ``j = perm[i]`` (a random permutation), pasted
  at the same place (CutMix, Yun et al. 2019); the masks follow the images exactly, pixel for pixel;
- the minority class is the one with fewer pixels in the batch (lesion on small lesions, skin on large ones);
- the box centre is drawn from the partner's minority-class pixels with probability ``bias`` and uniformly over
  the image otherwise, so the sampling density is ``bias * U(minority of j) + (1 - bias) * U(image)``;
- ``bias`` follows :func:`pic_bias`: 1 at the start of training, falling linearly to 0 (uniform CutMix) at
  ``anneal`` of the run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["PICConfig", "pic_bias", "minority_class", "pic_cutmix"]


@dataclass(frozen=True)
class PICConfig:
    """PIC options.

    Attributes
    ----------
    prob : float
        Chance that a batch is mixed at all (the rest stay as they are).
    area : (float, float)
        Range of the box area as a fraction of the image (uniform), before clipping at the border.
    anneal : float
        Fraction of the run over which the minority bias falls from 1 to 0.
    """

    prob: float = 0.5
    area: tuple[float, float] = (0.1, 0.5)
    anneal: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob: expected a value in [0, 1], got {self.prob}")
        lo, hi = self.area
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"area: expected 0 < low <= high <= 1, got {self.area}")
        if not 0.0 < self.anneal <= 1.0:
            raise ValueError(f"anneal: expected a value in (0, 1], got {self.anneal}")


def pic_bias(progress: float, anneal: float) -> float:
    """Minority bias at ``progress`` in [0, 1] of the run: ``max(0, 1 - progress / anneal)``."""
    if anneal <= 0:
        raise ValueError(f"anneal: expected > 0, got {anneal}")
    return max(0.0, 1.0 - float(progress) / anneal)


def minority_class(masks: torch.Tensor) -> int:
    """1 when lesion pixels are fewer than skin pixels in the batch ``masks`` (values in {0, 1}), else 0."""
    return 1 if float(masks.float().mean()) < 0.5 else 0


def _box(height: int, width: int, cy: int, cx: int, area: float, aspect: float) -> tuple[int, int, int, int]:
    h = min(height, max(1, round(math.sqrt(area * height * width / aspect))))
    w = min(width, max(1, round(math.sqrt(area * height * width * aspect))))
    y0, x0 = max(0, cy - h // 2), max(0, cx - w // 2)
    return y0, min(height, y0 + h), x0, min(width, x0 + w)


def pic_cutmix(images: torch.Tensor, masks: torch.Tensor, *, bias: float, generator: torch.Generator,
               area: tuple[float, float] = (0.1, 0.5)) -> tuple[torch.Tensor, torch.Tensor, list[tuple]]:
    """Mix a batch with imbalance-aware CutMix.

    Parameters
    ----------
    images : (B, C, H, W) float
        The batch (any normalisation).
    masks : (B, 1, H, W) float
        Lesion masks in {0, 1}.
    bias : float in [0, 1]
        Probability that a box centre is drawn from the partner's minority-class pixels (:func:`pic_bias`).
    generator : torch.Generator
        Source of all randomness (partners, centres, box sizes); on the batch's device.
    area : (float, float)
        Box area range as a fraction of the image.

    Returns
    -------
    (mixed_images, mixed_masks, boxes)
        Same shapes and dtypes as the inputs; ``boxes[i] = (j, y0, y1, x0, x1, cy, cx, from_minority)``: the
        partner, the pasted rows/columns (half-open) of sample ``i``, the drawn centre (inside the box) and
        whether it was drawn from the minority class.
    """
    if images.ndim != 4 or masks.ndim != 4 or masks.shape[1] != 1 or images.shape[0] != masks.shape[0] \
            or images.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"images (B, C, H, W) and masks (B, 1, H, W) of one batch and size expected, got "
                         f"{tuple(images.shape)} and {tuple(masks.shape)}")
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias: expected a value in [0, 1], got {bias}")
    b, _, height, width = images.shape
    device = images.device
    perm = torch.randperm(b, generator=generator, device=device).tolist()
    minority = minority_class(masks)
    uniforms = torch.rand(b, 4, generator=generator, device=device).tolist()
    mixed_images, mixed_masks = images.clone(), masks.clone()
    boxes = []
    for i, j in enumerate(perm):
        u_bias, u_area, u_aspect, u_pos = uniforms[i]
        region = (masks[j, 0] >= 0.5) == bool(minority)
        from_minority = u_bias < bias and bool(region.any())
        if from_minority:
            flat = region.reshape(-1).float()
            index = int(torch.multinomial(flat, 1, generator=generator))
        else:
            index = min(int(u_pos * height * width), height * width - 1)
        cy, cx = divmod(index, width)
        frac = area[0] + (area[1] - area[0]) * u_area
        aspect = math.exp(math.log(0.5) + math.log(4.0) * u_aspect)  # 1:2 .. 2:1
        y0, y1, x0, x1 = _box(height, width, cy, cx, frac, aspect)
        mixed_images[i, :, y0:y1, x0:x1] = images[j, :, y0:y1, x0:x1]
        mixed_masks[i, :, y0:y1, x0:x1] = masks[j, :, y0:y1, x0:x1]
        boxes.append((j, y0, y1, x0, x1, cy, cx, from_minority))
    return mixed_images, mixed_masks, boxes
