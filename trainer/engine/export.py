"""The ``export.pt`` format: what ``pretrain`` hands to ``finetune`` (and to FKD as a teacher), and its one reader.

An export holds the pretrained teacher's backbone and segmentation decoder as plain state dicts, with what is
needed to rebuild them (``arch``, ``img_size``, ``decoder_arch``, ``decoder_hidden``, ``decoder_skip``: the
decoder's edge path, absent = False in exports written before it existed) and the resolved pretraining
config. It is written atomically and loads with ``weights_only`` (:func:`trainer.engine.checkpoint.torch_load`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from trainer.engine.checkpoint import check_model_fields, load_checkpoint, require_keys, save_checkpoint, torch_load

__all__ = ["EXPORT", "EXPORT_FORMAT", "export_model", "read_export", "check_export", "export_metadata"]

EXPORT = "export.pt"
EXPORT_FORMAT = "edgedino-export/1"


def export_model(teacher: nn.Module, config: Any, path: str | Path, *, step: int) -> Path:
    """Write ``teacher.backbone`` + ``teacher.decoder`` and what is needed to rebuild them.

    ``config`` is the run's ``PretrainConfig`` (a dataclass with ``arch``, ``img_size``, ``decoder_hidden`` and
    ``decoder``); it is stored whole, as JSON-safe values.
    """
    return save_checkpoint(Path(path), {
        "format": EXPORT_FORMAT, "arch": config.arch, "img_size": config.img_size,
        "decoder_hidden": config.decoder_hidden, "decoder_arch": config.decoder,
        "decoder_skip": bool(getattr(config, "decoder_skip", False)),
        "patch_size": int(teacher.backbone.patch_embed.patch_size[0]), "step": step,
        "backbone": {k: v.detach().cpu() for k, v in teacher.backbone.state_dict().items()},
        "decoder": {k: v.detach().cpu() for k, v in teacher.decoder.state_dict().items()},
        "config": json.loads(json.dumps(dataclasses.asdict(config)))})


def read_export(path: str | Path) -> dict:
    """Load an ``export.pt`` and check its format; the message says what the file is when it is not one."""
    return check_export(load_checkpoint(path), path)


#: What an export must hold (``decoder_arch``, ``decoder_skip``, ``patch_size``: absent in older exports).
EXPORT_KEYS = ("arch", "img_size", "decoder_hidden", "step", "backbone", "decoder")


def check_export(state: Any, path: str | Path) -> dict:
    """``state`` (the loaded contents of ``path``) when it is an export, else the error :func:`read_export` raises.

    Besides the format tag, every key it needs is there and every field that sizes the model is bounds-checked
    (:func:`trainer.engine.checkpoint.check_model_fields`) before anything is built from it.
    """
    if not isinstance(state, Mapping) or state.get("format") != EXPORT_FORMAT:
        found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{path}: not an edgedino export (format {found!r}, expected "
                         f"{EXPORT_FORMAT!r}); pass the export.pt that 'pretrain' writes")
    what = "edgedino export (export.pt)"
    require_keys(state, EXPORT_KEYS, path, what=what)
    checked = check_model_fields(state, path)
    for key in ("backbone", "decoder"):
        if not isinstance(state[key], Mapping):
            raise ValueError(f"{path}: {key} is a {type(state[key]).__name__}, not a dict of weights ({what})")
    return {**dict(state), **checked}


def export_metadata(path: str | Path) -> Mapping[str, Any] | None:
    """``{'arch', 'img_size', 'patch_size'}`` of the edgedino export at ``path`` (``patch_size`` None in exports
    written before it was recorded: the arch's own), or None for any other checkpoint file.

    The file is memory-mapped, so a multi-GB foundation checkpoint is not read just to look at one key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights: no file at {path}")
    if path.suffix == ".safetensors":
        return None
    obj = torch_load(path, mmap=True)
    if isinstance(obj, Mapping) and obj.get("format") == EXPORT_FORMAT:
        export = check_export(obj, path)
        return {"arch": export["arch"], "img_size": export["img_size"], "patch_size": export.get("patch_size")}
    return None
