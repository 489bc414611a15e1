"""Segment a folder of new images with a saved model: ``<ID>_segmentation.png`` at each image's original size.

The model is a ``model.pt`` written by ``finetune`` (:func:`trainer.models.segmenter.save_seg_model`), or a
pretraining ``export.pt`` (its auxiliary decoder used directly: no label at all). Each image goes through exactly
what ``finetune`` does to its test images (:func:`trainer.inference.segment.predict_image`), so a prediction here
equals the one ``finetune --test-data`` wrote for the same image. A bad image is named and skipped; the rest are
written.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from common import datasets
from common.atomic import atomic_batch, save_figure, write_text
from common.drawing import draw_contour
from common.guard import bounded_number, check_out_dir, claim_file, output_folder
from common.png import encode_png
from trainer.engine.distributed import resolve_device
from trainer.inference.choice import PoolReference
from trainer.inference.fusion import FUSE_WEIGHT
from trainer.inference.masks import implausible_map, mask_from_probability
from trainer.inference.calibrate import Calibration
from trainer.inference.segment import PREDICT_SCALE, Fusion, choice_record, fusion_of, predict_size, segment_images
from trainer.models.segmenter import load_seg_model

log = logging.getLogger(__name__)

#: At most this many images on the overlay contact sheet (the first ones by id).
OVERLAY_MAX = 24
#: Predictions are published (synced, renamed) in batches of this many images.
BATCH_FILES = 64
#: With ``--probabilities`` and the per-image choice: one line per image (source, share, agreement, confidence).
CONFIDENCE_CSV = "confidence.csv"


@dataclass
class PredictResult:
    """``written``: ids segmented; ``failed``: ``(image path, reason)`` of each image skipped."""

    out_dir: Path
    written: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    overlay: Path | None = None


def predict_folder(model_path: str | Path, data: Sequence[str | Path] | str | Path, out_dir: str | Path, *,
                   probabilities: bool = False, overlay: str | Path | None = None, device: str = "auto",
                   progress: bool = True, one_lesion: bool | None = None, predict_scale: float | None = None,
                   fuse: bool | None = None, fusion: str | None = None) -> PredictResult:
    """Segment every image of ``data`` (any layout :func:`common.datasets.open_dataset` reads; masks unused).

    Writes ``out_dir/<ID>_segmentation.png`` (0/255, the image's original size) and, with ``probabilities``,
    ``out_dir/<ID>_probability.png`` (the lesion probability x 255, 8 bits); with ``overlay``, a contact sheet
    of the first :data:`OVERLAY_MAX` images with the predicted contour. An image that cannot be read is skipped
    and listed in ``failed`` with its reason. ``out_dir`` follows the writer rule
    (:func:`common.guard.output_folder`): not a data folder, one run at a time, and no file replaced that no
    earlier run wrote (e.g. another data set's expert masks: such a folder is refused before anything is
    written). ``one_lesion`` (fill holes, keep one component:
    :func:`trainer.inference.masks.mask_from_probability`) defaults to what ``finetune`` did for the model's test
    predictions: on, except for a ``model.pt`` written before the option existed (off, as it was made).
    ``predict_scale`` (the test-time input size over the training size:
    :func:`trainer.inference.segment.predict_size`) likewise: the model's ``finetune`` setting, 1 for a ``model.pt``
    older than it, the default (2) for an ``export.pt``. ``fuse`` (combine with stage 1's walker probability:
    :func:`trainer.inference.fusion.fuse_probabilities`) likewise: the model's ``finetune`` setting, off for an
    ``export.pt`` and older models. ``fusion`` (how: ``"choice"``, the per-image choice between the model and the
    walker over the images of ``data`` as a pool, :func:`trainer.inference.segment.segment_images`; ``"fixed"``,
    the model's ``fuse_weight`` for every image) likewise: the model's setting, ``"fixed"`` for a model older than
    the choice, ``"choice"`` for an ``export.pt``. With ``probabilities`` and the choice, ``confidence.csv``
    lists per image the source chosen, the model's share, the student-walker agreement and the confidence.
    """
    data = [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
    out_dir = check_out_dir(out_dir, data)
    if overlay is not None:
        check_out_dir(Path(overlay).parent, data, option="--overlay folder")
    dataset = datasets.open_dataset(data)
    model, info = load_seg_model(model_path)
    made_by = finetune_settings(info, model_path)  # finetune's settings (None for a pretraining export.pt)
    if predict_scale is None:  # as finetune (or the table's 0-labels column, for an export) predicted
        predict_scale = PREDICT_SCALE if made_by is None else made_by["predict_scale"]
    size = predict_size(int(info["img_size"]), predict_scale)
    tta = bool((made_by or {}).get("tta", False))  # as finetune predicted its test set
    if fuse is None:
        fuse = bool((made_by or {}).get("fuse", False))
    fuse_weight = float((made_by or {}).get("fuse_weight", FUSE_WEIGHT))
    if fusion is None:
        fusion = "choice" if made_by is None else made_by["fusion"]
    mixing = fusion_of(fusion if fuse else "none", fuse_weight, model_reference(info, model_path),
                       model_calibration(info, model_path))
    if one_lesion is None:  # as finetune (or the table's 0-labels column, for an export) made its masks
        one_lesion = True if made_by is None else made_by["one_lesion"]
    suffixes = ("_segmentation.png", "_probability.png") if probabilities else ("_segmentation.png",)
    names = [f"{s.id}{suffix}" for s in dataset.samples for suffix in suffixes]
    if probabilities and mixing.mode == "choice":
        names.append(CONFIDENCE_CSV)
    if overlay is not None:  # refused (someone's picture) before --out is touched
        claim_file(overlay, option="--overlay")
    with output_folder(out_dir, command="predict", names=names, inputs=data):
        dev = resolve_device(device)
        model.to(dev)
        return _predict_all(model, dataset, out_dir, size=size, device=dev, tta=tta, fusion=mixing,
                            one_lesion=one_lesion, probabilities=probabilities, overlay=overlay, progress=progress)


def finetune_settings(info: dict, path: str | Path) -> dict | None:
    """How ``finetune`` made the test masks of a ``model.pt`` (``predict_scale``, ``tta``, ``fuse``,
    ``fuse_weight``, ``fusion``, ``one_lesion``; a model older than one of them gets the value it was made with), each
    checked before use (a number out of range would size the test-time input); None for a pretraining
    ``export.pt``."""
    made_by = info.get("extra", {}).get("config")
    if made_by is None:
        return None
    what = "finetune's settings in the model file"
    if not isinstance(made_by, dict):
        raise ValueError(f"{path}: extra.config is a {type(made_by).__name__}, not a dict ({what})")
    settings = {
        "predict_scale": bounded_number(made_by.get("predict_scale", 1.0), lo=1 / 64, hi=16, integer=False,
                                        what="predict_scale", source=path),
        "fuse_weight": bounded_number(made_by.get("fuse_weight", FUSE_WEIGHT), lo=0, hi=1, integer=False,
                                      what="fuse_weight", source=path)}
    for key in ("tta", "fuse", "one_lesion"):
        value = made_by.get(key, False)
        if not isinstance(value, bool):
            raise ValueError(f"{path}: {key} is {value!r}; expected true or false ({what})")
        settings[key] = value
    fusion = made_by.get("fusion", "fixed")  # models older than the per-image choice fused with a fixed weight
    if fusion not in ("fixed", "choice"):
        raise ValueError(f"{path}: fusion is {fusion!r}; expected 'fixed' or 'choice' ({what})")
    settings["fusion"] = fusion
    return settings


def model_calibration(info: dict, path: str | Path) -> Calibration | None:
    """The calibration a ``model.pt`` carries (its labels refitted the walker cut and the choice), or None."""
    return _model_extra(info, path, "calibration", Calibration.from_dict)


def model_reference(info: dict, path: str | Path) -> PoolReference | None:
    """The pool reference a ``model.pt`` carries (its fine-tuning pool's, when it was relabelled), or None."""
    return _model_extra(info, path, "choice_reference", PoolReference.from_dict)


def _model_extra(info: dict, path: str | Path, key: str, parse):
    """``parse`` of the model file's ``extra[key]``; None when absent; one line naming the file when unusable."""
    found = info.get("extra", {}).get(key)
    if found is None:
        return None
    try:
        return parse(found)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: its {key} is not usable ({exc})") from None


def _predict_all(model, dataset: datasets.Dataset, out_dir: Path, *, size: int, device, tta: bool, fusion: Fusion,
                 one_lesion: bool, probabilities: bool, overlay: str | Path | None, progress: bool) -> PredictResult:
    """:func:`predict_folder`'s loop, once ``out_dir`` is checked, locked and claimed."""
    result = PredictResult(out_dir)
    sheet, rows = [], []
    samples = {str(s.image): s for s in dataset.samples}
    bar = tqdm(total=len(samples), desc="predict", unit="img", disable=not progress)
    found = segment_images(model, list(samples), size=size, device=device, tta=tta, fusion=fusion,
                           on_image=bar.update)
    for chunk in iter(lambda: list(itertools.islice(found, BATCH_FILES)), []):
        with atomic_batch(out_dir) as batch:  # one sync per BATCH_FILES images
            for item in chunk:
                s = samples[str(item.path)]
                if item.error is not None:
                    reason = str(item.error).removeprefix(f"{s.image}: ")  # the caller names the file once
                    log.debug("skipped %s: %s", s.image, reason)
                    result.failed.append((str(s.image), reason))
                    continue
                prob = item.prob
                mask = mask_from_probability(prob, one_lesion=one_lesion,
                                             implausible=implausible_map(str(s.image)) if one_lesion else None)
                name = f"{s.id}_segmentation.png"
                batch.write_bytes(name, encode_png(mask.astype(np.uint8) * 255, name))
                if probabilities:
                    name = f"{s.id}_probability.png"
                    batch.write_bytes(name, encode_png(np.round(prob * 255).astype(np.uint8), name))
                if item.choice is not None:
                    rows.append({"id": s.id, **choice_record(s.image, item.choice)})
                result.written.append(s.id)
                if overlay is not None and len(sheet) < OVERLAY_MAX:
                    sheet.append((s, mask))
    bar.close()
    if probabilities and fusion.mode == "choice":
        write_text(out_dir / CONFIDENCE_CSV, choice_table(rows))
    if overlay is not None and sheet:
        result.overlay = _overlay_sheet(sheet, Path(overlay))
    return result


def choice_table(rows: list[dict]) -> str:
    """``confidence.csv``: one line per image, least confident first."""
    head = "id,source,model_weight,agreement,confidence"
    ranked = sorted(rows, key=lambda r: (r["confidence"], r["id"]))
    return "\n".join([head] + [f"{r['id']},{r['source']},{r['model_weight']:g},{r['agreement']:.4f},"
                               f"{r['confidence']:.4f}" for r in ranked]) + "\n"


def _overlay_sheet(items: list, path: Path, *, cols: int = 6) -> Path:
    """The images with the predicted contour (red), ``cols`` per row, titled with their ids."""
    import matplotlib  # imported when a picture is drawn, not at start-up (it costs about a second)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (s, mask) in enumerate(items):
        image = cv2.resize(datasets.read_image(s.image, min_long_side=512), (288, 216))
        small = cv2.resize(mask.astype(np.uint8), (288, 216), interpolation=cv2.INTER_NEAREST)
        draw_contour(image, small, (255, 40, 40), 2)
        ax = axes[k // cols, k % cols]
        ax.imshow(image)
        ax.set_title(s.id, fontsize=7)
    fig.suptitle("predicted lesion border (red)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=72)
