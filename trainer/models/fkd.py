"""Foundation knowledge distillation (FKD, from DINO-Mix): align the student's patch features to a frozen model's.

docs/METHOD.md, section 8.1. A frozen *foundation* ViT (DINOv2/DINOv3 in DINO-Mix; here any local timm checkpoint, or
an earlier edgedino ``export.pt``) sees the student's global views; a small projector on the student's patch
tokens maps them to the foundation model's width, and :func:`fkd_loss` pulls each projected token towards the
foundation token at the same place. The foundation model is an external teacher: it is never trained, never
EMA-updated and never checkpointed with the run (the run records its name; pass the same file to resume).

Three pieces, used by ``trainer.train.pretrain`` when ``fkd_weight > 0`` (the first two here):

- :class:`FoundationTeacher`: the frozen ViT; it resizes the views so that its patch grid equals the student's,
  so a patch-14 teacher (DINOv2) and a patch-16 student line up token for token;
- :class:`FKDProjector`: the student-side head ``D_s -> D_t`` (on ``DINOModel.fkd_proj``, trained with it);
- :func:`trainer.losses.fkd.fkd_loss`: ``mean(1 - cos)`` between projected student and teacher tokens.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainer.engine.export import export_metadata
from trainer.models.backbone import create_backbone, patch_kwargs, patch_size, patch_tokens

log = logging.getLogger(__name__)

__all__ = ["FoundationTeacher", "FKDProjector"]


class FKDProjector(nn.Module):
    """Student-side FKD head: ``(B, N, D_s) -> (B, N, D_t)``, ``Linear(D_s, H) -> GELU -> Linear(H, D_t)``.

    A two-layer MLP (hidden width ``H = D_t`` by default) rather than a single linear map: the non-linear
    projector absorbs the difference between the two feature spaces, so the distillation guides the backbone
    without forcing its tokens (which the DINO head and the segmentation decoder also read) to be a linear
    image of the foundation model's. Its input is the backbone's final-normed patch tokens, so it needs no
    normalisation of its own. It lives on ``DINOModel.fkd_proj``: trained, checkpointed and DDP-wrapped with
    the student, and not part of ``export.pt``.
    """

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int | None = None):
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"in_dim, out_dim: expected >= 1, got {in_dim}, {out_dim}")
        hidden_dim = hidden_dim or out_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(tokens)


class FoundationTeacher(nn.Module):
    """A frozen timm ViT whose patch features the student is distilled towards.

    Parameters
    ----------
    name : str, optional
        timm ViT name of the checkpoint (e.g. ``vit_small_patch14_dinov2``, ``vit_base_patch16_224``). May be
        None when ``weights`` is an edgedino ``export.pt``: its arch is used.
    weights : path, optional
        A local checkpoint, loaded with strict key checks (:func:`trainer.models.backbone.load_weights`: DINO, DINOv2,
        timm files, or an edgedino ``export.pt``); nothing is downloaded. None keeps the random init, which is
        only meaningful for tests and benchmarks (a warning says so).
    img_size : int, optional
        Size of the stored position-embedding grid (inputs of other sizes are interpolated); defaults to the
        export's crop size, else 224.

    Notes
    -----
    Every parameter has ``requires_grad=False`` and the module stays in eval mode (``train()`` cannot switch
    it), so dropout/drop-path are off and it keeps no autograd graph. It expects the student's normalised
    views (ImageNet mean/std, which DINO, DINOv2 and timm ViTs expect too).
    """

    def __init__(self, name: str | None = None, *, weights: str | Path | None = None, img_size: int | None = None):
        super().__init__()
        export = export_metadata(weights) if weights is not None else None
        if export is not None:
            if name is not None and name != export["arch"]:
                raise ValueError(f"name: {weights} is an edgedino export of a {export['arch']!r} backbone, "
                                 f"not {name!r}; pass that name or none")
            name, img_size = export["arch"], img_size or int(export["img_size"])
        if name is None:
            raise ValueError("name: a timm ViT name is needed (e.g. 'vit_small_patch14_dinov2') unless weights "
                             "is an edgedino export.pt, whose arch is used"
                             + (f"; {weights} is not one" if weights is not None else ""))
        self.model = create_backbone(name, img_size=img_size or 224, weights=weights, drop_path_rate=0.0,
                                     **patch_kwargs(export["patch_size"] if export is not None else None))
        if weights is None:
            log.warning("FKD teacher %s has random weights (no fkd_weights): only meaningful for tests and "
                        "benchmarks; give a foundation checkpoint for real runs", name)
        self.arch = name
        self.weights = None if weights is None else str(weights)
        self.embed_dim = int(self.model.embed_dim)
        self.patch_size = patch_size(self.model)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FoundationTeacher":
        """Stays in eval mode whatever ``mode`` is (a frozen model's dropout and drop-path must stay off)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, views: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised views, student token grid ``(h, w)`` -> ``(B, h * w, D_t)`` patch features.

        The views are resized (bilinear, antialiased) to ``(h * p_t, w * p_t)``, ``p_t`` the teacher's patch
        size, so that its token ``(i, j)`` covers the same image region as the student's token ``(i, j)``.
        """
        h, w = int(grid[0]), int(grid[1])
        if views.ndim != 4 or h < 1 or w < 1:
            raise ValueError(f"views, grid: expected (B, 3, H, W) and a positive (h, w), got "
                             f"{tuple(views.shape)} and {grid}")
        size = (h * self.patch_size, w * self.patch_size)
        if tuple(views.shape[-2:]) != size:
            views = F.interpolate(views, size=size, mode="bilinear", align_corners=False, antialias=True)
        return patch_tokens(self.model, views)
