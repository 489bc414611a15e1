"""The DINO projection head (Caron et al., "Emerging properties in self-supervised vision transformers", 2021)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead"]


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
