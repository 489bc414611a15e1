"""The segmenter applied to images: lesion probabilities of a batch (optionally averaged over flips and quarter
turns), of one image file at its original size (optionally fused with stage 1's), and the test-time input size.

``finetune`` (its test split), :func:`trainer.eval.scoring.score_model` (the table) and ``predict`` all go through
:func:`predict_image`, so they give the same probability for the same image and model.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch

from common import datasets
from trainer.data.normalise import normalise
from pipeline.pseudomask import seeds
from trainer.engine.checkpoint import MAX_INPUT_SIZE
from trainer.inference.agreement import mask_agreement
from trainer.inference.choice import (
    DEFAULT_REFERENCE,
    Choice,
    ChoiceConfig,
    PoolReference,
    agreed_reference,
    choose,
    confidence_of,
    image_lab,
    mask_features,
)
from trainer.inference.fusion import FUSE_WEIGHT, fuse_probabilities, walker_cut, walker_probability, walker_view
from trainer.inference.masks import mask_from_probability
from trainer.models.segmenter import SegModel

log = logging.getLogger(__name__)
FUSIONS = ("none", "fixed", "choice")

PREDICT_SCALE = 2.0  # test-time input size / training input size (FinetuneConfig.predict_scale)


@torch.no_grad()
def predict_probability(model: SegModel, images: torch.Tensor, *, size: int, device: torch.device,
                        batch: int = 16, tta: bool = False) -> np.ndarray:
    """``(N, 3, S, S) uint8 -> (N, size, size) float32`` lesion probabilities.

    ``tta``: the mean of the probabilities over the 8 symmetries of the square (4 quarter turns, with and
    without a horizontal flip), each mapped back before averaging.
    """
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalise(images[i:i + batch].to(device), size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if not tta:
                out.append(torch.sigmoid(model(x).float())[:, 0].cpu().numpy())
                continue
            acc = torch.zeros(x.shape[0], 1, size, size, device=device)
            for flip in (False, True):
                xf = x.flip(-1) if flip else x
                for k in range(4):
                    p = torch.sigmoid(model(torch.rot90(xf, k, (-2, -1))).float())
                    p = torch.rot90(p, -k, (-2, -1))
                    acc += p.flip(-1) if flip else p
            out.append((acc / 8)[:, 0].cpu().numpy())
    return np.concatenate(out)


@functools.lru_cache(maxsize=4096)
def _test_input(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A test image squashed to ``size`` and its original (H, W); cached across the cells of a table run."""
    image = cv2.resize(datasets.read_image(path, min_long_side=2 * size), (size, size), interpolation=cv2.INTER_AREA)
    image.flags.writeable = False
    return image, datasets.image_size(Path(path))


def predict_size(train_size: int, scale: float) -> int:
    """The test-time input size for a model trained at ``train_size``: ``scale`` times it, rounded to a multiple
    of 16 (every patch size and the U-Net's four poolings divide it), at least 16, at most
    :data:`~trainer.engine.checkpoint.MAX_INPUT_SIZE` (``ValueError`` above it: no model here needs more)."""
    size = max(16, int(round(train_size * scale / 16)) * 16)
    if size > MAX_INPUT_SIZE:
        raise ValueError(f"predict scale {scale:g} x training size {train_size} px = {size} px test-time input; at "
                         f"most {MAX_INPUT_SIZE} px: lower --predict-scale")
    return size


def predict_image(model: SegModel, path: str | Path, *, size: int, device: torch.device,
                  tta: bool = False, fuse: bool = False, fuse_weight: float = FUSE_WEIGHT,
                  cut_scale: float = 1.0) -> np.ndarray:
    """The lesion probability of one image file at its original size: ``(H, W) float32`` in [0, 1].

    The image is squashed to ``size`` x ``size`` (area interpolation), segmented, and the probability resized
    back bilinearly; cut it at 0.5 for the mask. With ``fuse``, combined with stage 1's walker probability of
    the image (:func:`~trainer.inference.fusion.fuse_probabilities` with ``fuse_weight``, calibrated at stage 1's
    own cut of that image, :func:`~trainer.inference.fusion.walker_cut`). ``finetune`` (test predictions) and
    ``predict`` share it, so both give the same mask for the same image and model.
    """
    image, (height, width) = _test_input(str(path), size)
    prob = predict_probability(model, torch.from_numpy(image.copy()).permute(2, 0, 1)[None], size=size,
                               device=device, tta=tta)[0]
    prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
    if not fuse:
        return prob
    return fuse_probabilities(prob, walker_probability(str(path)), weight=fuse_weight,
                              walker_cut=scaled_cut(walker_cut(str(path)), cut_scale))


@dataclass(frozen=True)
class Fusion:
    """How a model's probability meets stage 1's walker: ``mode`` ``"none"`` (the model alone), ``"fixed"`` (every
    image fused with the model's share ``weight``) or ``"choice"`` (per image, :mod:`trainer.inference.choice`,
    against the images' own pool reference when at least ``choice.min_reference`` of them agree, else
    ``reference``, else :data:`~trainer.inference.choice.DEFAULT_REFERENCE`)."""

    mode: str = "none"
    weight: float = FUSE_WEIGHT
    choice: ChoiceConfig = field(default_factory=ChoiceConfig)
    reference: PoolReference | None = None
    cut_scale: float = 1.0  # every image's walker cut times this (a calibration on labels: trainer.inference.calibrate)

    def __post_init__(self):
        if self.mode not in FUSIONS:
            raise ValueError(f"fusion: expected one of {FUSIONS}, got {self.mode!r}")
        if not 0.1 <= self.cut_scale <= 10:
            raise ValueError(f"cut_scale: expected a factor in [0.1, 10], got {self.cut_scale}")


def fusion_of(mode: str, weight: float, reference: PoolReference | None, calibration=None) -> Fusion:
    """The :class:`Fusion` a fine-tuned model uses: its mode and weight, its pool's reference, and, when its
    labels calibrated them (:class:`trainer.inference.calibrate.Calibration`), their cut scale and choice."""
    if calibration is None:
        return Fusion(mode=mode, weight=weight, reference=reference)
    return Fusion(mode=mode, weight=weight, reference=reference, choice=calibration.choice_config(),
                  cut_scale=calibration.cut_scale)


@dataclass(frozen=True)
class Segmented:
    """One image's result of :func:`segment_images`: its ``prob`` at the original size and the ``choice`` (with
    ``fusion.mode == "choice"``), or the ``error`` that made it unreadable (both others None)."""

    path: Path
    prob: np.ndarray | None
    choice: Choice | None = None
    error: BaseException | None = None


READ_ERRORS = (datasets.ImageReadError, OSError, cv2.error)


def choice_record(image: str | Path, choice: Choice) -> dict:
    """One image's choice in a few numbers: the source chosen, the model's share, the student-walker agreement
    and the confidence (:func:`~trainer.inference.choice.confidence_of`, with stage 1's own confidence)."""
    view = walker_view(image)
    return {"source": choice.source, "model_weight": choice.weight, "agreement": round(choice.agreement, 4),
            "confidence": round(confidence_of(choice, view.confidence if view else float("nan")), 4)}


def segment_images(model: SegModel, paths: Sequence[str | Path], *, size: int, device: torch.device,
                   tta: bool = False, fusion: Fusion = Fusion(), on_image=None) -> Iterator[Segmented]:
    """A :class:`Segmented` for every image of ``paths``, in order.

    With ``fusion.mode`` ``"choice"`` the images are a pool: a first pass segments all of them and runs stage 1
    on each, the pool reference is fitted on those whose two masks agree, then each image is decided
    (:func:`~trainer.inference.choice.choose`) and its probabilities fused with the chosen model share. The
    other modes are :func:`predict_image` per image. ``on_image()`` is called once per image and pass (a
    progress bar). An unreadable image (:data:`READ_ERRORS`) comes back with its ``error``; the others go on.
    """
    if fusion.mode != "choice":
        for path in paths:
            try:
                yield Segmented(Path(path), predict_image(model, path, size=size, device=device, tta=tta,
                                                          fuse=fusion.mode == "fixed", fuse_weight=fusion.weight,
                                                          cut_scale=fusion.cut_scale))
            except READ_ERRORS as exc:
                yield Segmented(Path(path), None, error=exc)
            if on_image:
                on_image()
        return
    views: dict[str, _ChoiceView | BaseException] = {}
    for path in paths:
        try:
            views[str(path)] = _choice_view(model, path, size=size, device=device, tta=tta,
                                            cut_scale=fusion.cut_scale)
        except READ_ERRORS as exc:
            views[str(path)] = exc
        if on_image:
            on_image()
    reference = _images_reference([v for v in views.values() if isinstance(v, _ChoiceView)], fusion)
    for path in paths:
        view = views[str(path)]
        if isinstance(view, BaseException):
            yield Segmented(Path(path), None, error=view)
            continue
        decision = choose(view.agreement, view.features[0], view.features[1], reference, fusion.choice)
        height, width = datasets.image_size(Path(path))
        prob = cv2.resize(view.small_prob, (width, height), interpolation=cv2.INTER_LINEAR)
        prob = fuse_probabilities(prob, walker_probability(str(path)), weight=decision.weight,
                                  walker_cut=scaled_cut(walker_cut(str(path)), fusion.cut_scale))
        yield Segmented(Path(path), prob, decision)


@dataclass(frozen=True)
class _ChoiceView:
    small_prob: np.ndarray                           # (size, size) float32: the model's probability
    agreement: float
    features: tuple[np.ndarray | None, np.ndarray]   # mask_features of the walker's mask (None: none), the student's


def scaled_cut(cut: float, scale: float) -> float:
    """A walker cut times a calibration's ``cut_scale``, kept inside (0, 1)."""
    return float(np.clip(cut * scale, 0.02, 0.95))


def _choice_view(model: SegModel, path: str | Path, *, size: int, device: torch.device, tta: bool,
                 cut_scale: float = 1.0) -> _ChoiceView:
    """The model's probability of one image and what the choice needs, on stage 1's S x S grid."""
    image, _ = _test_input(str(path), size)
    small = predict_probability(model, torch.from_numpy(image.copy()).permute(2, 0, 1)[None], size=size,
                                device=device, tta=tta)[0]
    view = walker_view(path)
    if view is None:  # stage 1 found no lesion: the student decides alone
        return _ChoiceView(small, 0.0, (None, np.zeros(4)))
    grid = view.image.shape[0]
    on_grid = cv2.resize(small, (grid, grid), interpolation=cv2.INTER_LINEAR)
    implausible = seeds.implausible_colour(view.image)
    student = mask_from_probability(on_grid, implausible=implausible)
    walker = view.mask if cut_scale == 1.0 else \
        mask_from_probability((view.prob >= scaled_cut(view.cut, cut_scale)).astype(np.float32), implausible=implausible)
    lab = image_lab(view.image)
    return _ChoiceView(small, mask_agreement(student, walker),
                       (mask_features(walker, lab) if walker.any() else None, mask_features(student, lab)))


def _images_reference(views: list[_ChoiceView], fusion: Fusion) -> PoolReference:
    """The reference the choice measures against: the images' own agreed masks when there are enough."""
    reference = agreed_reference([v.agreement for v in views], [v.features for v in views], fusion.choice)
    if reference is not None:
        return reference
    if views:  # no image, nothing to say
        log.info("choice: fewer than %d of %d image(s) agree: measuring against %s", fusion.choice.min_reference,
                 len(views), "the model's pool" if fusion.reference else "the default reference")
    return fusion.reference or DEFAULT_REFERENCE
