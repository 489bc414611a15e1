"""The network that pretraining trains: a timm ViT with a DINO head and an auxiliary segmentation decoder.

Student and teacher are two copies of :class:`DINOModel`; the teacher is an EMA of the student (its decoder
too, so the exported teacher backbone and decoder belong together).
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.backbone import create_backbone, forward_tokens, forward_tokens_masked, patch_kwargs
from trainer.models.backbone import patch_size as backbone_patch_size
from trainer.models.decoders import build_decoder
from trainer.models.dino_head import DINOHead
from trainer.models.fkd import FKDProjector


class DINOModel(nn.Module):
    """Backbone + DINO head + segmentation decoder.

    Parameters
    ----------
    arch : str
        timm ViT name.
    img_size : int
        Global crop size (sets the stored position-embedding grid).
    out_dim : int
        DINO head output width K.
    decoder_hidden : int
        Decoder channels after its projection.
    decoder : {'conv', 'ilka'}
        Decoder kind (:func:`trainer.models.decoders.build_decoder`): the light conv decoder or S^3-Net's I-LKA +
        deformable-conv blocks.
    decoder_skip : bool
        Give the decoder its high-resolution edge path (:class:`trainer.models.decoders.EdgePath`).
    patch_size : int, optional
        Patch size in place of the arch's own (e.g. 8 on ``vit_tiny_patch16_224``: four times the tokens).
    weights : str, optional
        Local checkpoint for the backbone.
    drop_path_rate : float
        Stochastic depth of the backbone.
    norm_last_layer : bool
        Keep the DINO head's last-layer weight norm fixed at 1 (DINO's default; False lets it learn, which
        sharpens both outputs as the logits grow).
    fkd_dim : int, optional
        Width ``D_t`` of a frozen foundation model's features: adds ``fkd_proj``, the
        :class:`~trainer.models.fkd.FKDProjector` ``D -> D_t`` on the patch tokens used by ``forward(..., fkd=True)``.
    mask_token : bool
        Add ``mask_token`` (D,), the learned embedding that replaces hidden patches in ``forward(..., masks=...)``
        (the masked-patch objective, :mod:`trainer.losses.masked_patch`; iBOT initialises it to zeros).
    """

    def __init__(self, arch: str, *, img_size: int, out_dim: int, decoder_hidden: int = 128, decoder: str = "conv",
                 weights: str | None = None, drop_path_rate: float = 0.1, head_hidden: int = 2048,
                 bottleneck_dim: int = 256, fkd_dim: int | None = None, decoder_skip: bool = False,
                 patch_size: int | None = None, norm_last_layer: bool = True, mask_token: bool = False):
        super().__init__()
        self.backbone = create_backbone(arch, img_size=img_size, weights=weights, drop_path_rate=drop_path_rate,
                                        **patch_kwargs(patch_size))
        dim = self.backbone.embed_dim
        self.head = DINOHead(dim, out_dim, hidden_dim=head_hidden, bottleneck_dim=bottleneck_dim,
                             norm_last_layer=norm_last_layer)
        self.fkd_proj = FKDProjector(dim, fkd_dim) if fkd_dim else None
        self.mask_token = nn.Parameter(torch.zeros(dim)) if mask_token else None
        self.decoder = build_decoder(decoder, dim, backbone_patch_size(self.backbone), hidden=decoder_hidden,
                                     skip=decoder_skip)

    def forward(self, global_views: list[torch.Tensor], local_views: list[torch.Tensor] = (), *,
                segment: bool = True, project: bool = True, fkd: bool = False, masks: torch.Tensor | None = None,
                return_patches: bool = False) -> tuple[torch.Tensor | None, ...]:
        """Run every view; return ``(head_out, seg_logits)``, or ``(head_out, seg_logits, fkd_feats)`` with ``fkd``.

        ``head_out`` is ``(V * B, K)`` view-major (globals first, then locals), or None when ``project`` is
        False; ``seg_logits`` is ``(G * B, 1, g, g)`` for the global views, or None when ``segment`` is False.
        Views of one size go through the backbone as one batch. ``fkd_feats`` (``fkd=True``, which needs
        ``fkd_dim``) is ``(G * B, N, D_t)``: the global views' patch tokens through ``fkd_proj``. The decoder also
        receives the global views themselves (its edge path draws borders from their pixels).
        ``masks`` ``(G * B, N)`` bool hides those patches of the global views behind ``mask_token`` (every output
        then sees the masked views); ``return_patches`` appends the global views' patch tokens ``(G * B, N, D)``
        to the returned tuple.
        """
        if fkd and self.fkd_proj is None:
            raise ValueError("fkd: this model has no fkd_proj; build it with fkd_dim")
        if masks is not None and self.mask_token is None:
            raise ValueError("masks: this model has no mask_token; build it with mask_token=True")
        globals_ = torch.cat(global_views)
        if masks is None:
            cls_g, patches_g = forward_tokens(self.backbone, globals_)
        else:
            cls_g, patches_g = forward_tokens_masked(self.backbone, globals_, masks, self.mask_token)
        cls = [cls_g]
        if project and local_views:
            cls.append(forward_tokens(self.backbone, torch.cat(list(local_views)))[0])
        head_out = self.head(torch.cat(cls)) if project else None
        seg = None
        if segment:
            size = global_views[0].shape[-2:]
            seg = self.decoder(patches_g, (int(size[0]), int(size[1])), globals_)
        out = (head_out, seg, self.fkd_proj(patches_g)) if fkd else (head_out, seg)
        return (*out, patches_g) if return_patches else out


@torch.no_grad()
def cls_attention(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Attention of the class token to the patch tokens in the last block, averaged over heads.

    ``(B, 3, H, W) -> (B, H // p, W // p)`` float, each map summing to 1. Computed from the last block's
    ``qkv`` projection on its (normed) input, since fused attention kernels do not return weights.
    """
    block = backbone.blocks[-1]
    captured = {}
    handle = block.attn.register_forward_hook(lambda mod, inp, out: captured.__setitem__("x", inp[0]))
    try:
        backbone.forward_features(x)
    finally:
        handle.remove()
    tokens = captured["x"]
    attn = block.attn
    b, n, c = tokens.shape
    qkv = attn.qkv(tokens).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    weights = (q[:, :, :1] * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, 1, N)
    prefix = backbone.num_prefix_tokens
    p = backbone_patch_size(backbone)
    grid = (x.shape[-2] // p, x.shape[-1] // p)
    maps = weights[:, :, 0, prefix:].mean(dim=1)
    maps = maps / maps.sum(dim=-1, keepdim=True)
    return maps.reshape(b, *grid)
