"""The fine-tuned segmenter: a ViT backbone and the segmentation decoder, from a pretraining export or not."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from trainer.data.colour import IMAGENET_MEAN, IMAGENET_STD
from trainer.engine.checkpoint import (
    MAX_WIDTH,
    CheckpointError,
    check_model_fields,
    load_checkpoint,
    require_keys,
    save_checkpoint,
)
from trainer.engine.export import EXPORT_FORMAT, check_export
from trainer.models.backbone import create_backbone, forward_tokens, patch_kwargs, patch_size
from trainer.models.decoders import DECODERS, build_decoder, has_edge_path
from trainer.models.unet import UNet

INITS = ("pretrain", "scratch", "weights:PATH")

log = logging.getLogger(__name__)


class SegModel(nn.Module):
    """``(B, 3, H, W) -> (B, 1, H, W)`` lesion logits: backbone patch tokens through the decoder
    (:func:`trainer.models.decoders.build_decoder`: ``SegDecoder`` or ``ILKADecoder``)."""

    def __init__(self, backbone: nn.Module, decoder: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, patches = forward_tokens(self.backbone, x)
        return self.decoder(patches, (x.shape[-2], x.shape[-1]), x)


def build_seg_model(init: str, *, checkpoint: str | Path | None = None, arch: str | None = None,
                    img_size: int | None = None, decoder: str = "aux", decoder_hidden: int = 128,
                    decoder_arch: str = "conv", decoder_skip: bool = True,
                    patch: int | None = None) -> tuple[SegModel, dict]:
    """Build the segmenter to fine-tune.

    Parameters
    ----------
    init : {'pretrain', 'scratch', 'weights:PATH'}
        ``pretrain``: backbone (and decoder) of a pretraining ``export.pt`` (``checkpoint``); ``scratch``:
        random init; ``weights:PATH``: backbone from a local checkpoint (the same init pretraining started
        from), fresh decoder.
    checkpoint : path
        The ``export.pt`` for ``init='pretrain'``, or a ``model.pt`` (:func:`save_seg_model`; e.g. the U-Net
        trained on pseudo-masks), rebuilt as it was saved.
    arch : str, optional
        timm ViT name; with ``pretrain`` it must match the export's (a different one is an error).
    img_size : int, optional
        Input size; defaults to the export's global crop size, else 224.
    decoder : {'aux', 'fresh'}
        With ``pretrain``: start the decoder from the auxiliary head or from scratch.
    decoder_hidden : int
        Decoder width of a fresh decoder without an export (with one, the export's).
    decoder_arch : {'conv', 'ilka'}
        Decoder kind without an export (:func:`trainer.models.decoders.build_decoder`). With ``pretrain`` the export's
        ``decoder_arch`` wins (``conv`` for exports written before it was recorded), with ``aux`` or ``fresh``.
    decoder_skip : bool
        Edge path (:class:`trainer.models.decoders.EdgePath`) of a decoder without an export. With ``pretrain``
        the export's wins: its ``decoder_skip``, or, for exports written before it was recorded, whether its
        decoder weights hold the path (they do not: those build the token-only decoder they were trained as).
    patch : int, optional
        Patch size in place of the arch's own, without an export (with one, the export's).

    Returns
    -------
    (SegModel, dict)
        The model and a description of what was loaded (written to the run's metrics).
    """
    if decoder not in ("aux", "fresh"):
        raise ValueError(f"decoder must be 'aux' or 'fresh', got {decoder!r}")
    if decoder_arch not in DECODERS:
        raise ValueError(f"decoder_arch: expected one of {DECODERS}, got {decoder_arch!r}")
    if init == "pretrain":
        if checkpoint is None:
            raise ValueError("init 'pretrain' needs --checkpoint (the export.pt written by 'pretrain')")
        state = load_checkpoint(checkpoint)  # read once: a model.pt or an export.pt
        if _format(state) == MODEL_FORMAT:  # a saved segmenter (e.g. the U-Net on pseudo-masks)
            model, meta = _from_model_state(state, checkpoint)
            return model.train(), {"init": "pretrain", "checkpoint": str(checkpoint), "decoder": "aux",
                                   **{k: meta[k] for k in ("arch", "img_size", "decoder_arch", "decoder_hidden",
                                                           "decoder_skip")}}
        return _from_export(check_export(state, checkpoint), checkpoint, arch=arch, img_size=img_size,
                            decoder=decoder, decoder_arch=decoder_arch)
    if init == "scratch" or init.startswith("weights:"):
        weights = init.split(":", 1)[1] if init.startswith("weights:") else None
        return _fresh(init, weights=weights, arch=arch, img_size=img_size, decoder_hidden=decoder_hidden,
                      decoder_arch=decoder_arch, decoder_skip=decoder_skip, patch=patch)
    raise ValueError(f"init must be one of {INITS}, got {init!r}")


def _format(state) -> str | None:
    return state.get("format") if isinstance(state, dict) else None


def _from_export(export: dict, checkpoint: str | Path, *, arch: str | None, img_size: int | None, decoder: str,
                 decoder_arch: str) -> tuple[SegModel, dict]:
    """Backbone (and, with ``decoder='aux'``, decoder) of a pretraining export (``export``, the loaded contents
    of ``checkpoint``: :func:`trainer.engine.export.read_export`), loaded strictly."""
    if arch is not None and arch != export["arch"]:
        raise ValueError(f"{checkpoint}: the checkpoint is a {export['arch']!r} backbone, not {arch!r}; "
                         "drop --arch or pass a checkpoint of that architecture")
    size = img_size or int(export["img_size"])
    backbone = create_backbone(export["arch"], img_size=int(export["img_size"]), drop_path_rate=0.1,
                               **patch_kwargs(export.get("patch_size")))
    try:
        backbone.load_state_dict(export["backbone"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{checkpoint}: backbone weights do not fit {export['arch']!r}: {exc}") from None
    kind = export.get("decoder_arch", "conv")
    if kind != decoder_arch:
        log.info("decoder architecture %r from %s (decoder_arch %r applies to runs without an export)",
                 kind, checkpoint, decoder_arch)
    skip = bool(export.get("decoder_skip", has_edge_path(export["decoder"])))
    dec = build_decoder(kind, backbone.embed_dim, patch_size(backbone), hidden=int(export["decoder_hidden"]),
                        skip=skip)
    if decoder == "aux":
        try:
            dec.load_state_dict(export["decoder"], strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{checkpoint}: decoder weights do not fit a {kind!r} decoder: {exc}") from None
    info = {"init": "pretrain", "checkpoint": str(checkpoint), "arch": export["arch"], "img_size": size,
            "decoder": decoder, "decoder_arch": kind, "decoder_skip": skip, "pretrain_step": int(export["step"]),
            "decoder_hidden": int(export["decoder_hidden"])}
    return SegModel(backbone, dec), info


def _fresh(init: str, *, weights: str | None, arch: str | None, img_size: int | None, decoder_hidden: int,
           decoder_arch: str, decoder_skip: bool, patch: int | None) -> tuple[SegModel, dict]:
    """A random-init backbone (or one from local ``weights``) with a fresh decoder."""
    name = arch or "vit_small_patch16_224"
    size = img_size or 224
    backbone = create_backbone(name, img_size=size, weights=weights, drop_path_rate=0.1, **patch_kwargs(patch))
    dec = build_decoder(decoder_arch, backbone.embed_dim, patch_size(backbone), hidden=decoder_hidden,
                        skip=decoder_skip)
    info = {"init": init, "arch": name, "img_size": size, "decoder": "fresh", "decoder_arch": decoder_arch,
            "decoder_skip": decoder_skip, "decoder_hidden": decoder_hidden}
    return SegModel(backbone, dec), info


#: Format tag of ``model.pt``, the fine-tuned segmenter that ``finetune`` writes and ``predict`` reads.
MODEL_FORMAT = "edgedino-model/1"


def save_seg_model(model: SegModel | UNet, info: dict, path: str | Path, *, extra: dict | None = None) -> Path:
    """Write ``model.pt`` atomically: the whole segmenter's weights and everything needed to rebuild it.

    Stored: ``format``, ``arch``, ``img_size`` (the square input the model sees), ``patch_size``,
    ``decoder_arch``, ``decoder_hidden``, ``decoder_skip``, ``normalisation`` (how a picture becomes the input:
    RGB, squashed to ``img_size`` with area interpolation, ``/255``, ImageNet mean and std), ``threshold`` (0.5 on
    the sigmoid), ``state_dict`` and ``extra`` (e.g. the fine-tuning config, the labelled ids). No pretraining run
    is needed to load it (:func:`load_seg_model`). A :class:`~trainer.models.unet.UNet` is stored with ``arch``
    ``'unet'`` and its ``unet_channels`` (no patch size, decoder kind ``'unet'``).
    """
    if isinstance(model, UNet):
        shape = {"arch": "unet", "patch_size": None, "decoder_arch": "unet", "decoder_hidden": 0,
                 "decoder_skip": False, "unet_channels": list(model.channels)}
    else:
        shape = {"arch": info["arch"], "patch_size": int(patch_size(model.backbone)),
                 "decoder_arch": info["decoder_arch"], "decoder_hidden": int(info["decoder_hidden"]),
                 "decoder_skip": model.decoder.edge is not None}
    return save_checkpoint(Path(path), {
        "format": MODEL_FORMAT, "img_size": int(info["img_size"]), **shape,
        "normalisation": {"colour": "RGB", "resize": "squash to img_size x img_size, cv2.INTER_AREA",
                          "scale": 1 / 255, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "threshold": 0.5,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {}})


def load_seg_model(path: str | Path) -> tuple[SegModel, dict]:
    """Rebuild the segmenter of a ``model.pt`` (:func:`save_seg_model`), weights loaded strictly, in eval mode.

    An ``export.pt`` of ``pretrain`` is accepted too: its teacher backbone and auxiliary decoder are the
    segmenter with no label used (the "0 labels" column of the table). Returns ``(model, info)`` with
    ``img_size`` and what the file says about itself.
    """
    state = load_checkpoint(path)
    fmt = _format(state)
    if fmt == EXPORT_FORMAT:
        model, info = _from_export(check_export(state, path), path, arch=None, img_size=None, decoder="aux",
                                   decoder_arch="conv")
        return model.eval(), {**info, "format": fmt}
    if fmt != MODEL_FORMAT:
        raise ValueError(f"{path}: not an edgedino model (format {fmt!r}, expected {MODEL_FORMAT!r}); pass the "
                         "model.pt that 'finetune' writes (or a pretraining export.pt)")
    return _from_model_state(state, path)


#: What a ``model.pt`` must hold (and ``unet_channels`` when its arch is ``'unet'``).
MODEL_KEYS = ("arch", "img_size", "patch_size", "decoder_arch", "decoder_hidden", "decoder_skip", "state_dict")


def check_model_state(state: dict, path: str | Path) -> dict:
    """``state`` (a loaded ``model.pt``) with its fields bounds-checked before anything is built from it: every
    key of :data:`MODEL_KEYS`, the sizes (:func:`trainer.engine.checkpoint.check_model_fields`), a known decoder,
    U-Net widths; ``normalisation``, ``threshold`` and ``extra`` default when absent. Raises
    :class:`~trainer.engine.checkpoint.CheckpointError` naming the file and the field."""
    what = "edgedino model (model.pt)"
    require_keys(state, MODEL_KEYS + (("unet_channels",) if state.get("arch") == "unet" else ()), path, what=what)
    checked = {**dict(state), **check_model_fields(state, path)}
    if checked["arch"] == "unet":
        widths = state["unet_channels"]
        if not isinstance(widths, (list, tuple)) or not 2 <= len(widths) <= 8 or not all(
                isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= MAX_WIDTH for c in widths):
            raise CheckpointError(f"{path}: unet_channels is {widths!r}; expected 2 to 8 widths in [1, {MAX_WIDTH}] "
                                  f"({what})")
    elif checked["decoder_arch"] not in DECODERS:
        raise CheckpointError(f"{path}: decoder_arch is {checked['decoder_arch']!r}; expected one of {DECODERS} "
                              f"({what})")
    if not isinstance(state["state_dict"], dict):
        raise CheckpointError(f"{path}: state_dict is a {type(state['state_dict']).__name__}, not a dict of weights "
                              f"({what})")
    extra = state.get("extra", {})
    return {"normalisation": {}, "threshold": 0.5, **checked, "extra": extra if isinstance(extra, dict) else {}}


def _from_model_state(state: dict, path: str | Path) -> tuple[SegModel | UNet, dict]:
    """The segmenter of a loaded ``model.pt`` (``state``, read from ``path``), in eval mode."""
    state = check_model_state(state, path)
    if state["arch"] == "unet":
        model = UNet(tuple(state["unet_channels"]))
    else:
        backbone = create_backbone(state["arch"], img_size=int(state["img_size"]), drop_path_rate=0.0,
                                   **patch_kwargs(state["patch_size"]))
        dec = build_decoder(state["decoder_arch"], backbone.embed_dim, patch_size(backbone),
                            hidden=int(state["decoder_hidden"]), skip=bool(state["decoder_skip"]))
        model = SegModel(backbone, dec)
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the model it describes: {exc}") from None
    info = {k: state[k] for k in ("arch", "img_size", "patch_size", "decoder_arch", "decoder_hidden",
                                  "decoder_skip", "normalisation", "threshold", "extra")}
    return model.eval(), {**info, "format": MODEL_FORMAT}
