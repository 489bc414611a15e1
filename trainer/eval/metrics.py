"""Segmentation metrics as the ISIC 2018 challenge computes them: per image, then the plain mean over images.

For a prediction P and ground truth G (boolean masks) with pixel counts TP, FP, FN, TN and N = TP+FP+FN+TN:

- Jaccard ``TP / (TP + FP + FN)``; Dice = F1 ``2 TP / (2 TP + FP + FN)``; both 1 when P and G are both empty;
- thresholded Jaccard: the Jaccard when it is >= 0.65, else 0 (ISIC 2018's ranking metric);
- accuracy ``(TP + TN) / N``; sensitivity ``TP / (TP + FN)``, 1 when G is empty; specificity ``TN / (TN + FP)``,
  1 when G covers the whole image.

These are the definitions of the official scorer, PyPI ``isic-challenge-scoring`` 5.x (``metrics.binary_*`` and
``segmentation.SegmentationScore``): it reads 8-bit single-channel PNGs, keeps a pixel when its value is
``> 128`` (so 128 itself is background), refuses a prediction whose size differs from the truth (no resizing)
and macro-averages the per-image values. ``tests/trainer/eval/test_metrics.py`` checks agreement to 1e-6 on real masks.

One deliberate difference: a mask whose values are all in {0, 1} is read as 0/1 (1 = lesion); the official
scorer would cut it at ``> 128`` and score it as empty.

Expert masks are read by :func:`common.datasets.read_mask` exactly as the data check and ``finetune`` read them
(so a red-on-black colour mask is the same lesion everywhere, and a mask ``finetune`` refuses, such as a grey
0/128 one the scorer's cut would read as empty, is refused here too). Predictions must be in the scorer's own
format, 8-bit single channel, and are cut at ``> 128`` (:func:`read_binary_mask`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common.atomic import write_text
from common.datasets import MASK_SUFFIX, SOFT_CUT, read_mask

log = logging.getLogger(__name__)

THRESHOLD = 0.65          # ISIC 2018: a per-image Jaccard below this counts as 0
BINARY_CUT = SOFT_CUT     # ISIC: a pixel of an 8-bit mask is foreground when its value is > 128
METRIC_NAMES = ("jaccard", "dice", "thresholded_jaccard", "accuracy", "sensitivity", "specificity")
OFFICIAL_NAMES = {"jaccard": "jaccard", "dice": "dice", "thresholded_jaccard": "threshold_jaccard",
                  "accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity"}


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.integer) and mask.size and mask.min() >= 0 and mask.max() <= 1:
        return mask.astype(bool)
    raise ValueError(f"{name} must be a bool (or 0/1 integer) mask, got dtype {mask.dtype} with values in "
                     f"[{mask.min() if mask.size else '-'}, {mask.max() if mask.size else '-'}]; "
                     f"binarise it first (e.g. read_binary_mask, or prob >= 0.5)")


def binary_scores(pred: np.ndarray, truth: np.ndarray, *, threshold: float = THRESHOLD) -> dict[str, float]:
    """The six ISIC metrics of one image.

    Parameters
    ----------
    pred, truth : (H, W) bool
        Predicted and expert masks (0/1 integer arrays are accepted too).
    threshold : float
        Cut of the thresholded Jaccard (0.65 in ISIC 2018).

    Returns
    -------
    dict[str, float]
        ``jaccard``, ``dice``, ``thresholded_jaccard``, ``accuracy``, ``sensitivity``, ``specificity``.
    """
    pred, truth = _as_bool(pred, "pred"), _as_bool(truth, "truth")
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"pred and truth must be (H, W) masks of one shape, got {pred.shape} and {truth.shape}")
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
    """Read a predicted mask file as ``(H, W) bool``, in the format the official scorer accepts.

    8-bit single-channel images are cut at ``> 128`` (the official rule: 0/255, or grey such as a
    probability map * 255); images whose values are all 0 or 1 are read as 0/1 masks. The values are read by
    :func:`common.datasets.read_mask` (``soft='cut'``), after the format check.

    Raises
    ------
    ValueError
        Unreadable file, more than one channel, or not 8-bit.
    """
    path = Path(path)
    mask = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if path.is_file() else None
    if mask is None:
        raise ValueError(f"{path}: not a readable mask image")
    if mask.ndim == 3:
        raise ValueError(f"{path}: mask has {mask.shape[2]} channels; expected a single-channel (grey) PNG")
    if mask.dtype != np.uint8:
        raise ValueError(f"{path}: mask is {mask.dtype}; expected an 8-bit PNG (0/255)")
    return read_mask(path, soft="cut")


@dataclass
class EvaluationResult:
    """Per-image rows (``id`` plus the six metrics, sorted by id) and their means over images."""

    rows: list[dict]
    means: dict[str, float]

    def to_dict(self) -> dict:
        return {"mean": self.means, "n": len(self.rows), "threshold": THRESHOLD, "per_image": self.rows}


def _ids(folder: Path) -> dict[str, Path]:
    return {p.name[: -len(MASK_SUFFIX)]: p for p in sorted(folder.glob(f"*{MASK_SUFFIX}"))}


def _listing(ids: list[str], limit: int = 10) -> str:
    return ", ".join(ids[:limit]) + (f" ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def evaluate_folders(pred_dir: str | Path, truth_dir: str | Path, *, allow_extra: bool = False,
                     threshold: float = THRESHOLD) -> EvaluationResult:
    """Score every ``<ID>_segmentation.png`` of ``truth_dir`` against the same file name in ``pred_dir``.

    Parameters
    ----------
    pred_dir, truth_dir : path-like
        Folders of masks; other files are ignored. Expert masks are read by :func:`common.datasets.read_mask`,
        predictions by :func:`read_binary_mask`.
    allow_extra : bool
        Accept predictions without ground truth (ignored, with a warning). Off by default: an extra id
        usually means the wrong folder.
    threshold : float
        Cut of the thresholded Jaccard.

    Raises
    ------
    ValueError
        No ground truth, predictions missing for some ids, extra predictions, or prediction sizes that differ
        from the ground truth's (the official scorer does not resize either) -- all named in one line; an expert
        mask :func:`common.datasets.read_mask` refuses.
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    for name, folder in (("pred_dir", pred_dir), ("truth_dir", truth_dir)):
        if not folder.is_dir():
            raise ValueError(f"{name} {folder} is not a folder")
    truth, pred = _ids(truth_dir), _ids(pred_dir)
    if not truth:
        raise ValueError(f"{truth_dir}: no *{MASK_SUFFIX} ground-truth masks")
    problems = []
    missing = sorted(set(truth) - set(pred))
    if missing:
        problems.append(f"{pred_dir}: no prediction for {len(missing)} id(s): {_listing(missing)}")
    extra = sorted(set(pred) - set(truth))
    if extra and allow_extra:
        log.warning("%s: %d prediction(s) without ground truth ignored: %s", pred_dir, len(extra), _listing(extra))
    elif extra:
        problems.append(f"{pred_dir}: {len(extra)} prediction(s) without ground truth in {truth_dir}: "
                        f"{_listing(extra)} (pass allow_extra=True to ignore them)")
    rows = []
    for sample_id in sorted(set(truth) & set(pred)):
        t, p = read_mask(truth[sample_id]), read_binary_mask(pred[sample_id])
        if t.shape != p.shape:
            problems.append(f"{pred[sample_id]}: size {p.shape[1]}x{p.shape[0]} differs from the ground truth's "
                            f"{t.shape[1]}x{t.shape[0]}")
            continue
        rows.append({"id": sample_id, **binary_scores(p, t, threshold=threshold)})
    if problems:
        raise ValueError("; ".join(problems))  # one line, every problem named
    means = {k: float(np.mean([r[k] for r in rows])) for k in METRIC_NAMES}
    return EvaluationResult(rows, means)


def write_metrics_json(result: EvaluationResult, path: str | Path) -> None:
    """Write the means and the per-image rows of ``result`` to ``path`` (JSON, atomically)."""
    write_text(path, json.dumps(result.to_dict(), indent=1) + "\n")
