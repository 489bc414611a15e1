"""S^3-Net's two layers: Inception Large Kernel Attention and a modulated deformable convolution.

Used by the label-free S^3-Net clustering (:mod:`pipeline.pseudomask.s3net`) and by the trainer's ILKA decoder
(:class:`trainer.models.decoders.ILKADecoder`, ``--decoder ilka``); they live in ``common`` because both stages
use them and stage 1 must not import stage 2.

S^3-Net (Karimijafarbigloo et al., "Self-supervised semantic segmentation: consistency over transformation",
ICCV 2023 workshops; docs/METHOD.md, section 8.3) builds on Large Kernel Attention (Guo et al., "Visual Attention
Network", 2022: depthwise 5x5, depthwise dilated 7x7, 1x1, multiplied with the input). Its *inception* variant
runs parallel dilated depthwise branches of kernel 3, 5 and 7 after the 5x5, concatenates them and mixes them
with a 1x1 conv. The deformable convolution is torchvision's ``deform_conv2d`` (Dai et al. 2017; modulated as
in DCNv2, Zhu et al. 2019) with offsets and modulation predicted by a 3x3 conv from the input.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import deform_conv2d

__all__ = ["ILKA", "DeformConv2d"]


class ILKA(nn.Module):
    r"""Inception Large Kernel Attention: ``x * A(x)``, shapes ``(B, C, H, W) -> (B, C, H, W)``.

    .. math::
        a = \mathrm{DW}_{5\times5}(x),\qquad
        A(x) = \mathrm{Conv}_{1\times1}\big([\mathrm{DWD}_{3}(a), \mathrm{DWD}_{5}(a), \mathrm{DWD}_{7}(a)]\big)

    where :math:`\mathrm{DWD}_k` is a depthwise ``k x k`` conv with dilation ``dilation`` (3: the 7x7 branch then
    spans 19 px, plus 4 from the 5x5).

    Parameters
    ----------
    channels : int
        ``C``.
    dilation : int
        Dilation of the three parallel branches.
    """

    def __init__(self, channels: int, *, dilation: int = 3) -> None:
        super().__init__()
        if channels < 1 or dilation < 1:
            raise ValueError(f"channels={channels}, dilation={dilation}: expected positive integers")
        c = channels
        self.local = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.branches = nn.ModuleList(
            nn.Conv2d(c, c, k, padding=dilation * (k - 1) // 2, dilation=dilation, groups=c) for k in (3, 5, 7))
        self.mix = nn.Conv2d(3 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.local(x)
        return x * self.mix(torch.cat([branch(a) for branch in self.branches], dim=1))


class DeformConv2d(nn.Module):
    """Modulated deformable ``k x k`` convolution (DCNv2) with offsets predicted from the input.

    A 3x3 conv predicts ``2 k^2`` offsets and ``k^2`` modulation logits per output pixel; they start at zero, so
    at initialisation the layer is a plain convolution (modulation ``2 * sigmoid(0) = 1``). Shapes
    ``(B, C_in, H, W) -> (B, C_out, H, W)`` (stride 1, "same" padding).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, bias: bool = False) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd positive integer, got {kernel_size}")
        k = kernel_size
        self.kernel_size = k
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, k, k))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.offset = nn.Conv2d(in_channels, 3 * k * k, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kk = self.kernel_size ** 2
        pred = self.offset(x)
        offset, modulation = pred[:, :2 * kk], 2.0 * torch.sigmoid(pred[:, 2 * kk:])
        pad = self.kernel_size // 2
        weight = self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return deform_conv2d(x, offset.to(x.dtype), weight, bias, padding=(pad, pad), mask=modulation.to(x.dtype))
