"""The ViT backbone: timm creation (random init), local weight loading with a strict key report, token access.

Global (224 px) and local (96 px) crops go through one model: timm's ``dynamic_img_size=True`` interpolates the
position embeddings to each input's token grid.
"""
from __future__ import annotations

import difflib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from torch import nn

from trainer.engine.checkpoint import torch_load

log = logging.getLogger(__name__)

__all__ = [
    "LoadReport",
    "create_backbone",
    "load_weights",
    "extract_state_dict",
    "forward_tokens",
    "forward_tokens_masked",
    "patch_tokens",
    "patch_size",
    "patch_grid",
    "patch_kwargs",
]

#: Checkpoint containers tried in this order when the file is a dict of dicts (DINO: 'teacher', timm/DeiT:
#: 'model', Lightning: 'state_dict').
CHECKPOINT_KEYS = ("teacher", "model", "state_dict", "student", "backbone")
#: Wrapper prefixes removed from every key (DDP, torch.compile).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: Keys under these prefixes may be present in a checkpoint and absent from the backbone (projection heads).
HEAD_PREFIXES = ("head.", "head_dist.", "heads.")


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_weights` did: ``n_loaded`` tensors copied, ``ignored`` checkpoint keys not used."""

    path: str
    n_loaded: int
    ignored: tuple[str, ...] = ()
    source_key: str | None = None
    notes: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        src = f"['{self.source_key}']" if self.source_key else ""
        ign = f", ignored {len(self.ignored)} keys: {_short(self.ignored)}" if self.ignored else ""
        return f"loaded {self.n_loaded} tensors from {self.path}{src}{ign}"


def _short(keys, n: int = 12) -> str:
    keys = list(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def create_backbone(
    arch: str = "vit_small_patch16_224",
    *,
    img_size: int = 224,
    weights: str | Path | None = None,
    drop_path_rate: float = 0.1,
    **timm_kwargs: Any,
) -> nn.Module:
    """A timm ViT with no classifier (``num_classes=0``) and ``dynamic_img_size=True``, randomly initialised.

    Parameters
    ----------
    arch : str
        Any timm ViT name (``timm.list_models('vit_*')``); ``vit_small_patch16_224`` (ViT-S/16) by default.
    img_size : int
        The global-crop size; it sets the stored position-embedding grid (other sizes are interpolated).
    weights : path, optional
        A local checkpoint to initialise from (see :func:`load_weights`); nothing is ever downloaded.
    drop_path_rate : float
        Stochastic depth (DINO: 0.1).
    **timm_kwargs
        Passed to ``timm.create_model`` (e.g. ``patch_size``, ``reg_tokens``).

    Returns
    -------
    nn.Module
        ``forward_features(x)`` gives ``(B, num_prefix_tokens + N, D)`` tokens; ``model.embed_dim`` is ``D``.

    Raises
    ------
    ValueError
        Unknown ``arch`` (the message lists similar names), or a model without patch tokens.
    """
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=8, cutoff=0.6)
        hint = f"; similar names: {', '.join(close)}" if close else "; see timm.list_models('vit_*')"
        raise ValueError(f"arch: unknown timm model {arch!r}{hint}")
    model = timm.create_model(
        arch,
        pretrained=False,
        num_classes=0,
        dynamic_img_size=True,
        img_size=img_size,
        drop_path_rate=drop_path_rate,
        **timm_kwargs,
    )
    if not hasattr(model, "patch_embed") or not hasattr(model, "forward_features"):
        raise ValueError(f"arch: {arch!r} is not a ViT with patch tokens (no patch_embed); use a timm ViT")
    if weights is not None:
        report = load_weights(model, weights)
        log.info("%s", report)
    return model


def patch_kwargs(patch: int | None) -> dict[str, Any]:
    """``create_backbone`` keyword arguments for a patch size in place of the arch's own (None: the arch's)."""
    if patch is None:
        return {}
    if int(patch) < 1:
        raise ValueError(f"patch_size: expected a positive integer or None, got {patch}")
    return {"patch_size": int(patch)}


def extract_state_dict(obj: Any, *, key: str | None = None) -> tuple[dict[str, torch.Tensor], str | None, list[str]]:
    """The backbone state dict inside a loaded checkpoint.

    Picks ``obj[key]`` (or the first of ``'teacher'``, ``'model'``, ``'state_dict'``, ``'student'``, ``'backbone'``
    (an edgedino export.pt) present),
    strips ``module.``/``_orig_mod.`` prefixes, and when keys live under ``backbone.`` keeps only those
    (stripped); the others are returned as ignored.

    Returns ``(state_dict, source_key, ignored_keys)``.
    """
    source = None
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint: expected a dict, got {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise ValueError(f"checkpoint: no entry {key!r}; top-level keys: {_short(obj.keys())}")
        obj, source = obj[key], key
    elif not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for k in CHECKPOINT_KEYS:
            if isinstance(obj.get(k), Mapping):
                obj, source = obj[k], k
                break
        else:
            raise ValueError(
                f"checkpoint: no tensors at the top level and none of {CHECKPOINT_KEYS} present; "
                f"top-level keys: {_short(obj.keys())}"
            )
    sd: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        changed = True
        while changed:
            changed = False
            for p in WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        sd[k] = v
    ignored: list[str] = []
    if any(k.startswith("backbone.") for k in sd):
        ignored = sorted(k for k in sd if not k.startswith("backbone."))
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd, source, ignored


def load_weights(model: nn.Module, path: str | Path, *, key: str | None = None,
                 ignore_prefixes: tuple[str, ...] = HEAD_PREFIXES) -> LoadReport:
    """Load a local checkpoint into a timm ViT with strict key checking.

    Accepts a plain state dict or a dict holding one (``'teacher'``, ``'model'``, ``'state_dict'``; or ``key``),
    ``.pth``/``.pt``/``.safetensors``; DINO, DINOv2 (converted by timm's ``checkpoint_filter_fn``), timm and
    this project's own exports. Prefixes ``module.``, ``_orig_mod.`` and ``backbone.`` are stripped; position
    embeddings are resized to the model's grid by timm's helper.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Any model key missing from the checkpoint, any checkpoint key unknown to the model (other than under
        ``ignore_prefixes``: projection heads), or any shape mismatch; the message names the keys.

    Returns
    -------
    LoadReport
        Number of tensors loaded and the checkpoint keys ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights: no file at {path}")
    sd, source, ignored = extract_state_dict(torch_load(path), key=key)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        sd = filter_fn(sd, model)
    model_sd = model.state_dict()
    missing = sorted(set(model_sd) - set(sd))
    unexpected = sorted(set(sd) - set(model_sd))
    head_keys = [k for k in unexpected if k.startswith(tuple(ignore_prefixes))]
    unexpected = [k for k in unexpected if k not in head_keys]
    missing_head = [k for k in missing if k.startswith(tuple(ignore_prefixes))]  # a classifier left at init
    missing = [k for k in missing if k not in missing_head]
    mismatched = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
        for k in set(sd) & set(model_sd) if sd[k].shape != model_sd[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_short(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_short(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches: {_short(mismatched, 6)}")
        raise ValueError(
            f"weights {path}{f'[{source!r}]' if source else ''} do not match {type(model).__name__} "
            f"({getattr(model, 'default_cfg', {}).get('architecture', '?')}): " + "; ".join(parts)
        )
    to_load = {k: sd[k] for k in model_sd if k in sd}
    result = model.load_state_dict(to_load, strict=False)
    if result.unexpected_keys or set(result.missing_keys) != set(missing_head):  # cannot happen after the checks
        raise RuntimeError(f"weights {path}: load_state_dict disagreed with the key check: {result}")
    notes = (f"not in checkpoint, left at init: {_short(missing_head)}",) if missing_head else ()
    return LoadReport(path=str(path), n_loaded=len(to_load), ignored=tuple(sorted(ignored + head_keys)),
                      source_key=source, notes=notes)


def forward_tokens(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One backbone pass: ``(B, 3, H, W) -> (cls (B, D), patches (B, N, D))``, N = (H // p) * (W // p).

    ``cls`` is timm's pooled pre-logits embedding (the final-normed class token for class-token ViTs);
    ``patches`` are the final-normed patch tokens, class and register tokens removed.
    """
    feats = model.forward_features(x)
    return model.forward_head(feats, pre_logits=True), feats[:, model.num_prefix_tokens:]


def forward_tokens_masked(model: nn.Module, x: torch.Tensor, masks: torch.Tensor, mask_token: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`forward_tokens` with some patches hidden: ``(B, 3, H, W), (B, N) bool, (D,) -> (cls, patches)``.

    The patch embeddings where ``masks`` is True are replaced by ``mask_token`` before the position embedding is
    added (iBOT), then the ViT runs as timm's ``forward_features`` does (position embedding, patch dropout,
    pre-norm, blocks, final norm). With no patch masked the result equals :func:`forward_tokens`.
    """
    tokens = model.patch_embed(x)  # (B, h, w, D) with dynamic_img_size, else (B, N, D)
    b, d = tokens.shape[0], tokens.shape[-1]
    n = tokens[0, ..., 0].numel()
    if masks.shape != (b, n):
        raise ValueError(f"masks: expected ({b}, {n}) for {tuple(x.shape)} inputs, got {tuple(masks.shape)}")
    hidden = masks.reshape(*tokens.shape[:-1], 1)
    tokens = torch.where(hidden, mask_token.to(tokens.dtype).reshape(*([1] * (tokens.ndim - 1)), d), tokens)
    feats = model.norm(model.blocks(model.norm_pre(model.patch_drop(model._pos_embed(tokens)))))
    return model.forward_head(feats, pre_logits=True), feats[:, model.num_prefix_tokens:]


def patch_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W) -> (B, N, D)`` final-normed patch tokens (prefix tokens removed)."""
    return model.forward_features(x)[:, model.num_prefix_tokens:]


def patch_size(model: nn.Module) -> int:
    """The (square) patch size of the backbone."""
    p = model.patch_embed.patch_size
    p = p if isinstance(p, int) else p[0]
    return int(p)


def patch_grid(model: nn.Module, img_size: int | tuple[int, int]) -> tuple[int, int]:
    """Token grid ``(H // p, W // p)`` for an input of ``img_size``."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    p = model.patch_embed.patch_size
    ph, pw = (p, p) if isinstance(p, int) else p
    return h // ph, w // pw
