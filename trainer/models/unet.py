"""A small U-Net (Ronneberger et al. 2015, "U-Net: Convolutional Networks for Biomedical Image Segmentation"):
the ``unet-pseudo`` baseline of the table, trained on the pseudo-masks alone and then fine-tuned (no DINO, no ViT).

Encoder: ``len(channels)`` levels of two 3x3 conv + GroupNorm + GELU, a 2x2 max-pool between levels; decoder:
bilinear 2x upsampling, concatenation with the encoder level of the same size, two 3x3 conv + GroupNorm +
GELU; a 1x1 conv to one logit at full size. Default 16-32-64-128 channels (about 0.47 M parameters).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(min(8, c_out), c_out),
                         nn.GELU(), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                         nn.GroupNorm(min(8, c_out), c_out), nn.GELU())


class _Encoder(nn.Module):
    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(_block(c_in, c_out) for c_in, c_out in zip((3, *channels[:-1]), channels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for k, level in enumerate(self.levels):
            x = level(x if k == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        return feats


class _Decoder(nn.Module):
    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        rev = channels[::-1]
        self.levels = nn.ModuleList(_block(c_deep + c_skip, c_skip) for c_deep, c_skip in zip(rev[:-1], rev[1:]))
        self.out = nn.Conv2d(channels[0], 1, kernel_size=1)
        self.edge = None  # the U-Net is all pixels: no separate edge path

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for level, skip in zip(self.levels, feats[-2::-1]):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = level(torch.cat([x, skip], dim=1))
        return self.out(x)


class UNet(nn.Module):
    """``(B, 3, H, W)`` normalised images -> ``(B, 1, H, W)`` lesion logits.

    ``backbone`` (the encoder) and ``decoder`` are named like :class:`trainer.models.segmenter.SegModel`'s, so
    fine-tuning gives them the same parameter groups.

    Parameters
    ----------
    channels : tuple of int
        Width of each level, shallow to deep (16, 32, 64, 128); ``H`` and ``W`` need not be multiples of
        ``2 ** (len(channels) - 1)`` (the upsampling follows the skip's size).
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        if len(channels) < 2 or min(channels) < 1:
            raise ValueError(f"channels: expected at least two positive widths, got {channels}")
        self.channels = tuple(int(c) for c in channels)
        self.backbone = _Encoder(self.channels)
        self.decoder = _Decoder(self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone(x))
