"""Segmentation decoders on the backbone's patch tokens: ``conv`` (:class:`SegDecoder`) and ``ilka``
(:class:`ILKADecoder`, S^3-Net blocks), with the helpers they share; :func:`build_decoder` picks one by name.

Either decoder may carry an :class:`EdgePath` (``skip=True``): a light high-resolution path from the input crop
itself, fused with the upsampled token features by skip connections, so that borders come from pixels and
meaning from tokens. Without it (``skip=False``, the layout of exports written before it existed) the
decoder sees tokens only and its mask is drawn on the token grid.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from common.s3net_layers import ILKA, DeformConv2d

__all__ = ["EdgePath", "SegDecoder", "ILKADecoder", "DECODERS", "build_decoder", "has_edge_path"]


def _groups(c: int) -> int:
    for g in (8, 4, 2):
        if c % g == 0:
            return g
    return 1


def _norm_act(c: int) -> list[nn.Module]:
    return [nn.GroupNorm(_groups(c), c), nn.GELU()]


def _up_stages(channels: int, n_up: int, min_channels: int) -> tuple[list[list[nn.Module]], int]:
    """``n_up`` stages of 2x transposed conv (kernel 2, stride 2) + GroupNorm + GELU, halving the channels (not
    below ``min_channels``); returns the stages' modules and the channels they end with."""
    stages, c = [], channels
    for _ in range(n_up):
        c_out = max(c // 2, min(min_channels, c))
        stages.append([nn.ConvTranspose2d(c, c_out, kernel_size=2, stride=2, bias=False), *_norm_act(c_out)])
        c = c_out
    return stages, c


class EdgePath(nn.Module):
    """The high-resolution path of an edge-aware decoder (ours; U-Net-style skips on the input crop).

    Pixels: ``(B, 3, H, W)`` normalised crop -> 3x3 conv stride 2 (``c2`` channels, 1/2) -> 3x3 conv stride 2
    (``c4`` channels, 1/4). Fusion: the token features ``(B, C, h, w)`` (any stride, resized bilinearly to 1/4
    when they are not there) are concatenated with the 1/4 pixel features -> 3x3 conv (``c4``) -> bilinear 2x ->
    concatenated with the 1/2 pixel features -> 3x3 conv (``c2``) -> 1x1 conv to one logit at 1/2; every conv
    but the last is followed by GroupNorm + GELU. Cost at a 96 px crop with ``c2=16, c4=32`` and 16 token
    channels: about 28 MMACs per image (ViT-Ti on 144 tokens: about 0.8 GMACs); ``bench/bench_edge_decoder.py``
    measures the step time.

    Forward: ``(features (B, C, h, w), image (B, 3, H, W)) -> logits (B, 1, ceil(H / 2), ceil(W / 2))``.
    """

    def __init__(self, in_channels: int, *, c2: int = 16, c4: int = 32) -> None:
        super().__init__()
        self.pix2 = nn.Sequential(nn.Conv2d(3, c2, 3, stride=2, padding=1, bias=False), *_norm_act(c2))
        self.pix4 = nn.Sequential(nn.Conv2d(c2, c4, 3, stride=2, padding=1, bias=False), *_norm_act(c4))
        self.fuse4 = nn.Sequential(nn.Conv2d(in_channels + c4, c4, 3, padding=1, bias=False), *_norm_act(c4))
        self.fuse2 = nn.Sequential(nn.Conv2d(c4 + c2, c2, 3, padding=1, bias=False), *_norm_act(c2))
        self.out = nn.Conv2d(c2, 1, kernel_size=1)

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        p2 = self.pix2(image)
        p4 = self.pix4(p2)
        if features.shape[-2:] != p4.shape[-2:]:
            features = F.interpolate(features, size=p4.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse4(torch.cat([features, p4], dim=1))
        x = F.interpolate(x, size=p2.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.fuse2(torch.cat([x, p2], dim=1)))


def has_edge_path(state_dict) -> bool:
    """Whether a decoder state dict holds an :class:`EdgePath` (keys ``edge.*``); exports older than it do not."""
    return any(k.startswith("edge.") for k in state_dict)


class _TokenDecoder(nn.Module):
    """What every decoder on ViT patch tokens shares: argument checks, the number of 2x upsamplings
    ``n_up = floor(log2(patch_size / out_stride))``, tokens -> grid, and the final resize of the logits."""

    def __init__(self, embed_dim: int, patch_size: int, hidden: int, *, out_stride: int, min_channels: int) -> None:
        super().__init__()
        if patch_size < 1 or embed_dim < 1 or hidden < 1 or min_channels < 1:
            raise ValueError(
                f"embed_dim={embed_dim}, patch_size={patch_size}, hidden={hidden}, min_channels={min_channels}: "
                "expected positive integers"
            )
        if out_stride < 1:
            raise ValueError(f"out_stride: expected >= 1, got {out_stride}")
        self.embed_dim, self.patch_size, self.out_stride = embed_dim, patch_size, out_stride
        self.edge: EdgePath | None = None
        self.n_up = max(0, int(math.floor(math.log2(patch_size / out_stride)))) if patch_size > out_stride else 0

    def _make_head(self, channels: int, skip: bool) -> None:
        """The last layer on ``channels`` token features: the :class:`EdgePath` (``edge.*``) with ``skip``, else the
        token-only 1x1 conv to one logit (``out.*``). Called by subclasses after their own layers."""
        if skip:
            self.edge = EdgePath(channels)
        else:
            self.out = nn.Conv2d(channels, 1, kernel_size=1)

    def _grid(self, tokens: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """``(B, N, D)`` patch tokens of an ``out_size`` crop -> ``(B, D, H // p, W // p)``."""
        if tokens.ndim != 3 or tokens.shape[2] != self.embed_dim:
            raise ValueError(f"tokens: expected (B, N, {self.embed_dim}), got {tuple(tokens.shape)}")
        h_img, w_img = int(out_size[0]), int(out_size[1])
        h, w = h_img // self.patch_size, w_img // self.patch_size
        b, n, d = tokens.shape
        if n != h * w:
            raise ValueError(
                f"tokens: {n} patch tokens do not form the {h} x {w} grid of a {h_img} x {w_img} crop with "
                f"patch size {self.patch_size} (pass patch tokens only, without class/register tokens)"
            )
        return tokens.transpose(1, 2).reshape(b, d, h, w)

    def _head(self, features: torch.Tensor, image: torch.Tensor | None, out_size: tuple[int, int]) -> torch.Tensor:
        """Token features at the output stride -> logits at ``out_size``: through the :class:`EdgePath` when the
        decoder has one (``image`` required), else the token-only 1x1 ``out`` conv."""
        if self.edge is None:
            return self._to_size(self.out(features), out_size)
        if image is None:
            raise ValueError("this decoder has an edge path (skip=True): pass the input crop as `image`")
        if tuple(image.shape[-2:]) != (int(out_size[0]), int(out_size[1])):
            raise ValueError(f"image: expected a {tuple(out_size)} crop, got {tuple(image.shape[-2:])}")
        return self._to_size(self.edge(features, image), out_size)

    @staticmethod
    def _to_size(logits: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        size = (int(out_size[0]), int(out_size[1]))
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


class SegDecoder(_TokenDecoder):
    """Light segmentation decoder on ViT patch tokens (the auxiliary head; ours).

    ``(B, N, D)`` patch tokens -> ``(B, D, h, w)`` grid -> 1x1 conv to ``hidden`` channels and a 3x3 conv (mixing
    neighbouring tokens) -> ``n_up`` stages of 2x transposed conv (kernel 2, stride 2), halving the channels
    (not below ``min_channels``) -> 3x3 conv -> 1x1 conv to one channel at stride ``out_stride`` -> bilinear
    resize of the logits to the crop size (as SegFormer and DeepLabv3+ predict at stride 4 and upsample).
    Every conv is followed by GroupNorm + GELU except the last. ``n_up = floor(log2(patch_size / out_stride))``
    (2 for /16 at stride 4; for /14 the final resize covers the rest).

    Cost for ViT-S/16 at 224 px (``hidden=128``, stride 4): about 0.08 GMACs per image, ~2 % of the
    backbone's ~4.3 GMACs; all wide feature maps stay at stride >= 4, so the memory-bound ops stay small too.

    Parameters
    ----------
    embed_dim : int
        Backbone token width ``D``.
    patch_size : int
        Backbone patch size (the token grid is ``H // patch_size`` x ``W // patch_size``).
    hidden : int
        Channels after the projection (128).
    out_stride : int
        Resolution of the predicted logits before the final bilinear resize (4; 1 = predict at full size).
    min_channels : int
        Floor of the channel halving (16).
    skip : bool
        Add the :class:`EdgePath` (high-resolution path from the input crop, fused at 1/4 and 1/2); the 1x1
        ``out`` conv is then replaced by the path's. False: tokens only (the layout of older exports).

    Forward: ``(tokens (B, N, D), out_size (H, W), image (B, 3, H, W) or None) -> logits (B, 1, H, W)`` with
    ``N = (H // p) * (W // p)``; ``image`` (the normalised crop the tokens came from) is needed with ``skip``.
    """

    def __init__(
        self,
        embed_dim: int,
        patch_size: int,
        hidden: int = 128,
        *,
        out_stride: int = 4,
        min_channels: int = 16,
        skip: bool = False,
    ) -> None:
        super().__init__(embed_dim, patch_size, hidden, out_stride=out_stride, min_channels=min_channels)
        self.proj = nn.Sequential(
            nn.Conv2d(embed_dim, hidden, kernel_size=1, bias=False), *_norm_act(hidden),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, bias=False), *_norm_act(hidden),
        )
        stages, c = _up_stages(hidden, self.n_up, min_channels)
        self.stages = nn.Sequential(*[m for stage in stages for m in stage],
                                    nn.Conv2d(c, c, kernel_size=3, padding=1, bias=False), *_norm_act(c))
        self._make_head(c, skip)

    def forward(self, tokens: torch.Tensor, out_size: tuple[int, int],
                image: torch.Tensor | None = None) -> torch.Tensor:
        return self._head(self.stages(self.proj(self._grid(tokens, out_size))), image, out_size)


class ILKADecoder(_TokenDecoder):
    """Segmentation decoder of S^3-Net blocks, a drop-in for :class:`SegDecoder` (``--decoder ilka``).

    ``(B, N, D)`` patch tokens -> grid -> 1x1 conv to ``hidden`` -> residual I-LKA at the token grid -> 2x
    transposed-conv stages down to stride ``out_stride`` (channels halved, not below ``min_channels``), with a
    residual deformable 3x3 conv after the first of them (lesion borders bend; the sampling positions can follow
    them) -> 1x1 conv to one channel -> bilinear resize to the crop. Every conv but the last is followed by
    GroupNorm + GELU. The deformable conv sits at stride ``patch_size / 2`` rather than at the output stride
    because its CPU backward costs about the same per pixel whatever the channels (0.25 s vs 0.53 s for 32
    maps of 96 px on 2 cores).

    With ``skip`` the :class:`EdgePath` replaces the final 1x1 conv, as in ``SegDecoder``.

    Forward: ``(tokens (B, N, D), out_size (H, W), image=None) -> logits (B, 1, H, W)``, as ``SegDecoder``.
    """

    def __init__(self, embed_dim: int, patch_size: int, hidden: int = 128, *, out_stride: int = 4,
                 min_channels: int = 16, skip: bool = False) -> None:
        super().__init__(embed_dim, patch_size, hidden, out_stride=out_stride, min_channels=min_channels)
        self.proj = nn.Sequential(nn.Conv2d(embed_dim, hidden, 1, bias=False), *_norm_act(hidden))
        self.ilka = ILKA(hidden)
        self.ilka_norm = nn.Sequential(*_norm_act(hidden))
        stages, c = _up_stages(hidden, self.n_up, min_channels)
        stages = [nn.Sequential(*stage) for stage in stages]
        self.first = stages[0] if stages else nn.Identity()
        self.rest = nn.Sequential(*stages[1:])
        c_deform = stages[0][0].out_channels if stages else hidden
        self.deform = DeformConv2d(c_deform, c_deform)
        self.deform_norm = nn.Sequential(*_norm_act(c_deform))
        self._make_head(c, skip)

    def forward(self, tokens: torch.Tensor, out_size: tuple[int, int],
                image: torch.Tensor | None = None) -> torch.Tensor:
        x = self.proj(self._grid(tokens, out_size))
        x = self.ilka_norm(x + self.ilka(x))
        x = self.first(x)
        x = self.deform_norm(x + self.deform(x))
        return self._head(self.rest(x), image, out_size)


DECODERS = ("conv", "ilka")


def build_decoder(kind: str, embed_dim: int, patch_size: int, hidden: int = 128, *, skip: bool = False) -> nn.Module:
    """The segmentation decoder by name: ``conv`` (:class:`SegDecoder`) or ``ilka`` (S^3-Net blocks,
    :class:`ILKADecoder`), with the :class:`EdgePath` when ``skip``. Both map
    ``(tokens (B, N, D), (H, W), image (B, 3, H, W) or None) -> (B, 1, H, W)``."""
    if kind == "conv":
        return SegDecoder(embed_dim, patch_size, hidden=hidden, skip=skip)
    if kind == "ilka":
        return ILKADecoder(embed_dim, patch_size, hidden=hidden, skip=skip)
    raise ValueError(f"decoder: expected one of {DECODERS}, got {kind!r}")
