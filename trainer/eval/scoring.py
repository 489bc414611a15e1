"""A segmenter scored on a test split: masks predicted at each test image's original size and written, the ISIC
metrics per image and their means, and a picture of the best and worst images.

Used by ``finetune`` (its test split, after training) and by the table (:func:`score_model`: a saved model as it
is, the 0-labels column and the ``+fuse`` rows).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from common import datasets
from common.atomic import save_figure, write_text
from common.drawing import draw_contour
from common.guard import output_folder
from common.png import write_mask_png
from trainer.data.splits import Splits
from trainer.engine.distributed import resolve_device
from trainer.eval.metrics import binary_scores
from trainer.inference.fusion import FUSE_WEIGHT
from trainer.inference.masks import implausible_map, mask_from_probability
from trainer.inference.predict import model_calibration, model_reference
from trainer.inference.segment import PREDICT_SCALE, Fusion, choice_record, fusion_of, predict_size, segment_images
from trainer.models.segmenter import load_seg_model

#: What a scored test split leaves in its folder: the metrics, the picture, the predicted masks' folder.
METRICS, SHEET, PREDICTIONS = "metrics.json", "best_worst.png", "predictions"


def score_outputs(splits: Splits) -> list[str]:
    """The files :func:`score_model` (and a fine-tuning run's scoring) writes into its folder, relative to it."""
    return [METRICS, SHEET] + [f"{PREDICTIONS}/{s.id}_segmentation.png" for s in splits.test]


def score_model(model_path: str | Path, splits: Splits, out_dir: str | Path, *, device: str = "auto",
                progress: bool = True, one_lesion: bool = True, predict_scale: float = PREDICT_SCALE,
                fuse: bool = False, fuse_weight: float = FUSE_WEIGHT, fusion: str = "choice") -> dict[str, float]:
    """Score a saved segmenter as it is (no training) on ``splits.test``: the 0-labels column of the table.

    ``model_path`` is a ``model.pt`` or a pretraining ``export.pt`` (its auxiliary decoder). Writes
    ``predictions/``, ``metrics.json`` (``n_labelled`` 0) and ``best_worst.png`` into ``out_dir``; returns the means.
    ``one_lesion``, ``predict_scale``, ``fuse`` and ``fusion``: as in :class:`trainer.train.finetune.FinetuneConfig`
    (the table scores every row the same way; its ``+fuse`` rows rescore a fine-tuned cell's ``model.pt`` with
    ``fuse``).
    """
    out_dir = Path(out_dir)
    dev = resolve_device(device)
    model, info = load_seg_model(model_path)
    model.to(dev)
    test_size = predict_size(int(info["img_size"]), predict_scale)
    # the writer rule (common.guard.output_folder): one run per folder, no file replaced that no run wrote
    with output_folder(out_dir, command="score", names=score_outputs(splits), inputs=[model_path]):
        mixing = fusion_of(fusion if fuse else "none", fuse_weight, model_reference(info, model_path),
                           model_calibration(info, model_path))
        means, rows = predict_test(model, splits, out_dir, size=test_size, device=dev, progress=progress,
                                   one_lesion=one_lesion, fusion=mixing)
        _write_scores(means, rows, info, model_path, out_dir, splits, one_lesion=one_lesion, fusion=mixing,
                      test_size=test_size)
    return means


def _write_scores(means, rows, info, model_path, out_dir: Path, splits: Splits, *, one_lesion, fusion: Fusion,
                  test_size) -> None:
    """:func:`score_model`'s ``metrics.json`` and ``best_worst.png``."""
    extra = info.get("extra", {})
    write_text(out_dir / METRICS, json.dumps({
        "mean": means, "n_test": len(rows), "per_image": rows, "frac": float(extra.get("frac", 0.0)),
        "n_labelled": int(extra.get("n_labelled", 0)), "one_lesion": one_lesion, "fuse": fusion.mode != "none",
        "fuse_weight": fusion.weight, "fusion": fusion.mode,
        "predict_size": test_size,
        "model": {k: v for k, v in info.items() if k != "extra"}, "source": str(model_path)}, indent=1,
        default=str))
    best_worst_sheet(rows, splits, out_dir)


def predict_test(model, splits: Splits, out_dir: Path, *, size, device, progress, tta=False, one_lesion=True,
                 fusion: Fusion = Fusion()):
    """Segment every image of ``splits.test`` (:func:`~trainer.inference.segment.segment_images`, then
    :func:`~trainer.inference.masks.mask_from_probability`), write ``out_dir/predictions/<ID>_segmentation.png``
    (0/255, the image's original size) and score it against its expert mask. Returns ``(means, rows)``: the
    mean of each metric and one row per image (with the per-image choice, when ``fusion`` is it)."""
    pred_dir = out_dir / PREDICTIONS
    rows = []
    by_path = {str(s.image): s for s in splits.test}
    bar = tqdm(total=len(by_path), desc="predict test", unit="img", disable=not progress, leave=False)
    for item in segment_images(model, list(by_path), size=size, device=device, tta=tta, fusion=fusion,
                               on_image=bar.update):
        s = by_path[str(item.path)]
        if item.error is not None:
            raise item.error
        full = mask_from_probability(item.prob, one_lesion=one_lesion,
                                     implausible=implausible_map(str(s.image)) if one_lesion else None)
        write_mask_png(pred_dir / f"{s.id}_segmentation.png", full.astype(np.uint8) * 255)
        chosen = choice_record(s.image, item.choice) if item.choice is not None else {}
        rows.append({"id": s.id, **binary_scores(full, datasets.read_mask(s.mask)), **chosen})
    bar.close()
    keys = [k for k in rows[0] if k not in ("id", "source")] if rows else []
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return means, rows


def best_worst_sheet(rows: list[dict], splits: Splits, out_dir: Path, n: int = 4) -> Path | None:
    """Image with expert (green) and predicted (red) contours for the ``n`` best and ``n`` worst test images."""
    if not rows:
        return None
    import matplotlib  # imported when a picture is drawn, not at start-up (it costs about a second)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = sorted(rows, key=lambda r: r["jaccard"], reverse=True)
    picks = ranked[:n] + [r for r in ranked[-n:] if r not in ranked[:n]]
    by_id = {s.id: s for s in splits.test}
    fig, axes = plt.subplots(2, max(n, 1), figsize=(3 * n, 6.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, r in enumerate(picks):
        s = by_id[r["id"]]
        image = cv2.resize(datasets.read_image(s.image, min_long_side=512), (384, 288))
        truth = cv2.resize(datasets.read_mask(s.mask).astype(np.uint8), (384, 288), interpolation=cv2.INTER_NEAREST)
        pred = cv2.imread(str(out_dir / PREDICTIONS / f"{s.id}_segmentation.png"), cv2.IMREAD_GRAYSCALE)
        pred = cv2.resize((pred > 127).astype(np.uint8), (384, 288), interpolation=cv2.INTER_NEAREST)
        for mask, colour in ((truth, (40, 220, 40)), (pred, (255, 40, 40))):
            draw_contour(image, mask, colour, 2)
        ax = axes[0 if k < n else 1, k % n]
        ax.imshow(image)
        ax.set_title(f"{'best' if k < n else 'worst'}: {r['id']}\nJaccard {r['jaccard']:.3f}", fontsize=8)
    fig.suptitle("expert (green) vs prediction (red)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_dir / SHEET, dpi=72)
