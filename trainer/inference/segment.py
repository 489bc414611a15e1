"""The segmenter applied to images: lesion probabilities of a batch (optionally averaged over flips and quarter
turns), of one image file at its original size (optionally fused with stage 1's), and the test-time input size.

``finetune`` (its test split), :func:`trainer.eval.scoring.score_model` (the table) and ``predict`` all go through
:func:`predict_image`, so they give the same probability for the same image and model.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import torch

from common import datasets
from trainer.data.normalise import normalise
from trainer.engine.checkpoint import MAX_INPUT_SIZE
from trainer.inference.fusion import FUSE_WEIGHT, fuse_probabilities, walker_cut, walker_probability
from trainer.models.segmenter import SegModel

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
                  tta: bool = False, fuse: bool = False, fuse_weight: float = FUSE_WEIGHT) -> np.ndarray:
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
    return fuse_probabilities(prob, walker_probability(str(path)), weight=fuse_weight, walker_cut=walker_cut(str(path)))
