"""Model input normalisation: the one place that turns stored uint8 images into what the backbone sees."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.data.colour import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["normalise"]


def normalise(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 3, S, S) uint8 -> (B, 3, size, size)`` float, ImageNet-normalised."""
    x = F.interpolate(images.float() / 255.0, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
