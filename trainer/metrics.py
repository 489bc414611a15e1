"""Segmentation metrics as the ISIC 2018 challenge computes them, per image then averaged (macro).

For a prediction P and ground truth G (boolean masks), with TP, FP, FN, TN the pixel counts:

- Jaccard ``TP / (TP + FP + FN)``; Dice = F1 ``2 TP / (2 TP + FP + FN)``; both 1 when P and G are empty;
- thresholded Jaccard: the Jaccard, or 0 when it is below 0.65 (ISIC 2018's ranking metric);
- accuracy ``(TP + TN) / N``; sensitivity ``TP / (TP + FN)`` (1 when G is empty); specificity
  ``TN / (TN + FP)`` (1 when G covers everything).

These are the definitions of the official scorer (PyPI ``isic-challenge-scoring``, ``metrics.py`` and
``segmentation.py``), which binarises 8-bit masks at ``> 128``; a test checks agreement to 1e-6.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.atomic import write_text
from pipeline.datasets import MASK_SUFFIX

log = logging.getLogger(__name__)

THRESHOLD = 0.65
METRIC_NAMES = ("jaccard", "dice", "thresholded_jaccard", "accuracy", "sensitivity", "specificity")


def binary_scores(pred: np.ndarray, truth: np.ndarray, *, threshold: float = THRESHOLD) -> dict[str, float]:
    """All six metrics for one image: ``pred``, ``truth`` ``(H, W)`` bool -> dict of floats."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} differs from truth shape {truth.shape}")
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    tn = pred.size - tp - fp - fn
    union = tp + fp + fn
    jaccard = tp / union if union else 1.0
    return {
        "jaccard": jaccard,
        "dice": 2 * tp / (2 * tp + fp + fn) if union else 1.0,
        "thresholded_jaccard": jaccard if jaccard >= threshold else 0.0,
        "accuracy": (tp + tn) / pred.size,
        "sensitivity": tp / (tp + fn) if tp + fn else 1.0,
        "specificity": tn / (tn + fp) if tn + fp else 1.0,
    }


def read_binary_mask(path: str | Path) -> np.ndarray:
    """A mask file as ``(H, W) bool``: 8-bit masks cut at ``> 128`` (the official rule), 0/1 masks at ``> 0``."""
    mask = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if Path(path).is_file() else None
    if mask is None:
        raise ValueError(f"{path}: not a readable mask image")
    if mask.ndim == 3:
        raise ValueError(f"{path}: mask has {mask.shape[2]} channels; expected a single-channel (grey) PNG")
    return mask > (0 if mask.max() <= 1 else 128)


@dataclass
class EvaluationResult:
    """Per-image rows (``id`` + the six metrics) and their means."""

    rows: list[dict]
    means: dict[str, float]

    def to_dict(self) -> dict:
        return {"mean": self.means, "n": len(self.rows), "per_image": self.rows}


def _ids(folder: Path) -> dict[str, Path]:
    return {p.name[: -len(MASK_SUFFIX)]: p for p in sorted(folder.glob(f"*{MASK_SUFFIX}"))}


def evaluate_folders(pred_dir: str | Path, truth_dir: str | Path) -> EvaluationResult:
    """Score every ``<ID>_segmentation.png`` of ``truth_dir`` against the same file name in ``pred_dir``.

    Raises
    ------
    ValueError
        No truth masks, predictions missing for some ids, or a size mismatch (all named in one message).
        Extra predictions are ignored with a warning.
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    truth, pred = _ids(truth_dir), _ids(pred_dir)
    if not truth:
        raise ValueError(f"{truth_dir}: no *{MASK_SUFFIX} ground-truth masks")
    missing = sorted(set(truth) - set(pred))
    problems = [f"{pred_dir}: no prediction for {len(missing)} id(s): {', '.join(missing[:10])}"
                + (" ..." if len(missing) > 10 else "")] if missing else []
    extra = sorted(set(pred) - set(truth))
    if extra:
        log.warning("%s: %d prediction(s) without ground truth ignored", pred_dir, len(extra))
    rows = []
    for sample_id in sorted(set(truth) & set(pred)):
        t, p = read_binary_mask(truth[sample_id]), read_binary_mask(pred[sample_id])
        if t.shape != p.shape:
            problems.append(f"{pred[sample_id]}: size {p.shape[1]}x{p.shape[0]} differs from the ground truth's "
                            f"{t.shape[1]}x{t.shape[0]}")
            continue
        rows.append({"id": sample_id, **binary_scores(p, t)})
    if problems:
        raise ValueError("\n".join(problems))
    means = {k: float(np.mean([r[k] for r in rows])) for k in METRIC_NAMES}
    return EvaluationResult(rows, means)


def write_metrics_json(result: EvaluationResult, path: str | Path) -> None:
    write_text(path, json.dumps(result.to_dict(), indent=1) + "\n")
