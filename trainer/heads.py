"""The two heads on the backbone: the DINO projection head and the light segmentation decoder."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead", "SegDecoder", "DECODERS", "build_decoder"]


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class DINOHead(nn.Module):
    """DINO projection head (Caron et al. 2021, section 3.1 and appendix; facebookresearch/dino defaults).

    ``nlayers``-layer MLP (``in_dim -> hidden_dim`` with GELU, ..., ``-> bottleneck_dim``) -> L2 normalisation
    -> weight-normalised linear layer ``bottleneck_dim -> out_dim`` without bias.

    Parameters
    ----------
    in_dim : int
        Backbone embedding width (384 for ViT-S).
    out_dim : int
        :math:`K` (65,536 in the paper; 4,096-8,192 for a dataset of this size).
    hidden_dim, bottleneck_dim, nlayers : int
        2048, 256, 3 in DINO. ``nlayers=1`` is a single linear ``in_dim -> bottleneck_dim``.
    norm_last_layer : bool
        Fix the weight-norm magnitude :math:`g` of the last layer to 1 (not trained); DINO's default, which
        stabilises training. ``False`` trains :math:`g` too (better ViT-S results in DINO, less stable).
    use_bn : bool
        BatchNorm after each hidden linear layer (off in DINO for ViTs).

    Shapes: ``(B, in_dim) -> (B, out_dim)``. The last layer is ``self.last_layer`` (its parameters are
    ``last_layer.parametrizations.weight.original0`` = g, ``(out_dim, 1)``, and ``...original1`` = v).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 4096,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        *,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers: expected >= 1, got {nlayers}")
        for name, v in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim),
                        ("bottleneck_dim", bottleneck_dim)):
            if v < 1:
                raise ValueError(f"{name}: expected >= 1, got {v}")
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            dims = [in_dim] + [hidden_dim] * (nlayers - 1)
            for d_in, d_out in zip(dims[:-1], dims[1:]):
                layers.append(nn.Linear(d_in, d_out))
                if use_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(_init_linear)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad_(not norm_last_layer)
        self.in_dim, self.out_dim, self.norm_last_layer = in_dim, out_dim, norm_last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)


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
        self.n_up = max(0, int(math.floor(math.log2(patch_size / out_stride)))) if patch_size > out_stride else 0

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

    Forward: ``(tokens (B, N, D), out_size (H, W)) -> logits (B, 1, H, W)`` with ``N = (H // p) * (W // p)``.
    """

    def __init__(
        self,
        embed_dim: int,
        patch_size: int,
        hidden: int = 128,
        *,
        out_stride: int = 4,
        min_channels: int = 16,
    ) -> None:
        super().__init__(embed_dim, patch_size, hidden, out_stride=out_stride, min_channels=min_channels)
        self.proj = nn.Sequential(
            nn.Conv2d(embed_dim, hidden, kernel_size=1, bias=False), *_norm_act(hidden),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, bias=False), *_norm_act(hidden),
        )
        stages, c = _up_stages(hidden, self.n_up, min_channels)
        self.stages = nn.Sequential(*[m for stage in stages for m in stage],
                                    nn.Conv2d(c, c, kernel_size=3, padding=1, bias=False), *_norm_act(c))
        self.out = nn.Conv2d(c, 1, kernel_size=1)

    def forward(self, tokens: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        return self._to_size(self.out(self.stages(self.proj(self._grid(tokens, out_size)))), out_size)


DECODERS = ("conv", "ilka")


def build_decoder(kind: str, embed_dim: int, patch_size: int, hidden: int = 128) -> nn.Module:
    """The segmentation decoder by name: ``conv`` (:class:`SegDecoder`) or ``ilka`` (S^3-Net blocks,
    :class:`trainer.s3net_blocks.ILKADecoder`). Both map ``(tokens (B, N, D), (H, W)) -> (B, 1, H, W)``."""
    if kind == "conv":
        return SegDecoder(embed_dim, patch_size, hidden=hidden)
    if kind == "ilka":
        from trainer.s3net_blocks import ILKADecoder

        return ILKADecoder(embed_dim, patch_size, hidden=hidden)
    raise ValueError(f"decoder: expected one of {DECODERS}, got {kind!r}")
