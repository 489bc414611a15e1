"""Fine-tune a segmenter with FRAC of the expert labels; select on validation; predict and score the test split.

METHOD.md section 6: the encoder starts from the pretrained teacher backbone (decoder from the auxiliary head,
or fresh), BCE + soft Dice, a fixed iteration budget (few images: iterations, not epochs), model selection on
the validation split, then predictions at each test image's original size (ISIC submission format) and the
ISIC metrics.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline import datasets
from pipeline.atomic import save_figure, write_text
from pipeline.export import write_mask_png
from pipeline.guard import check_out_dir, make_out_dir
from pipeline.report import draw_contour
from trainer.data.cutmix import PICConfig, pic_bias, pic_cutmix
from trainer.data.multicrop import MultiCropConfig, multi_crop
from trainer.data.normalise import normalise
from trainer.data.splits import Splits, describe, labelled_subset, near_duplicates, split_dataset
from trainer.engine.distributed import resolve_device
from trainer.engine.schedules import cosine_schedule
from trainer.losses.seg import seg_loss
from trainer.metrics import binary_scores
from trainer.models.decoders import DECODERS
from trainer.models.segmenter import SegModel, build_seg_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning hyper-parameters (ours; tuned for 1-30 labelled images).

    ``iters`` optimiser steps of ``batch_size`` images drawn with replacement from the labelled subset, each a
    random-resized crop (scale ``crop_scale``) with flips, 90-degree rotations and mild colour jitter; the
    backbone learns at ``lr * backbone_lr_scale``. Validation every ``eval_every`` steps picks the weights.
    ``pic`` turns on progressive imbalance-aware CutMix on the augmented batch (:mod:`trainer.data.cutmix`).
    ``decoder`` ('aux' or 'fresh') says where the decoder's weights start; ``decoder_arch`` ('conv' or 'ilka')
    is its kind for runs without an export (an export rebuilds its own kind).
    """

    init: str = "pretrain"
    decoder: str = "aux"
    arch: str | None = None
    img_size: int | None = None
    iters: int = 300
    batch_size: int = 8
    lr: float = 2e-3
    backbone_lr_scale: float = 0.3
    weight_decay: float = 0.05
    warmup_frac: float = 0.1
    crop_scale: tuple[float, float] = (0.5, 1.0)
    eval_every: int = 50
    decoder_hidden: int = 128
    decoder_arch: str = "conv"  # decoder kind without an export; with one, the export's kind is used
    seed: int = 0
    pic: PICConfig | None = None

    def __post_init__(self):
        if self.decoder_arch not in DECODERS:
            raise ValueError(f"decoder_arch: expected one of {DECODERS}, got {self.decoder_arch!r}")


@dataclass
class FinetuneResult:
    out_dir: Path
    means: dict[str, float]
    best_iter: int
    best_val_jaccard: float
    subset_ids: list[str]


def _load(samples: Sequence[datasets.Sample], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 3, size, size) uint8`` and masks ``(N, 1, size, size) float`` {0, 1}, squashed to size."""
    images, masks = [], []
    for s in samples:
        image = datasets.read_image(s.image, min_long_side=2 * size)
        images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
        mask = datasets.read_mask(s.mask).astype(np.float32)
        masks.append(cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR) >= 0.5)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.stack(masks).astype(np.float32))[:, None]
    return x, y


@torch.no_grad()
def predict_probability(model: SegModel, images: torch.Tensor, *, size: int, device: torch.device,
                        batch: int = 16) -> np.ndarray:
    """``(N, 3, S, S) uint8 -> (N, size, size) float32`` lesion probabilities."""
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalise(images[i:i + batch].to(device), size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(torch.sigmoid(model(x).float())[:, 0].cpu().numpy())
    return np.concatenate(out)


def _mean_jaccard(prob: np.ndarray, masks: torch.Tensor) -> float:
    pred = prob >= 0.5
    truth = masks[:, 0].numpy() >= 0.5
    inter = (pred & truth).sum(axis=(1, 2))
    union = (pred | truth).sum(axis=(1, 2))
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def finetune(data: Sequence[str | Path] | str | Path, frac: float, out_dir: str | Path, *,
             checkpoint: str | Path | None = None, test_data: Sequence[str | Path] | None = None,
             config: FinetuneConfig = FinetuneConfig(), device: str = "auto", progress: bool = True
             ) -> FinetuneResult:
    """Fine-tune on ``frac`` of the labelled training images of ``data``; write predictions and metrics.

    Writes ``out_dir/subset.json`` (the ids used), ``predictions/<ID>_segmentation.png`` at each test image's
    original size (0/255), ``metrics.json`` (per image and mean) and ``best_worst.png``.
    """
    roots = [data] if isinstance(data, (str, Path)) else list(data)
    out_dir = check_out_dir(out_dir, roots + list(test_data or []) + ([checkpoint] if checkpoint else []))
    dev = resolve_device(device)
    torch.manual_seed(config.seed)
    dataset = datasets.open_dataset(data)
    test = datasets.open_dataset(test_data, require_masks=True) if test_data else None
    splits = split_dataset(dataset, test=test)
    if splits.n_excluded:
        log.warning("leakage guard: %d id(s) of the test data were removed from training and validation",
                    splits.n_excluded)
    subset = labelled_subset(splits.train, frac, seed=config.seed)
    log.info("%s", describe(splits, subset))
    if test is not None:
        dupes = near_duplicates(subset + splits.validation, splits.test)
        for a, b, d in dupes:
            log.warning("near-duplicate images across ids: %s (training) and %s (test), dHash distance %d", a, b, d)
    check_before_training(subset + splits.validation + splits.test, progress=progress)
    model, info = build_seg_model(config.init, checkpoint=checkpoint, arch=config.arch, img_size=config.img_size,
                                  decoder=config.decoder, decoder_hidden=config.decoder_hidden,
                                  decoder_arch=config.decoder_arch)
    size = int(info["img_size"])
    model.to(dev)
    make_out_dir(out_dir)
    write_text(out_dir / "subset.json", json.dumps({"frac": frac, "seed": config.seed,
                                                    "ids": [s.id for s in subset],
                                                    "validation": [s.id for s in splits.validation],
                                                    "test": [s.id for s in splits.test],
                                                    "excluded_for_leakage": splits.n_excluded}, indent=1))
    train_x, train_y = _load(subset, size)
    val_x, val_y = _load(splits.validation, size)
    best_state, best_iter, best_val = _train(model, train_x, train_y, val_x, val_y, config=config, size=size,
                                             device=dev, progress=progress)
    model.load_state_dict(best_state)
    means, rows = _predict_test(model, splits, out_dir, size=size, device=dev, progress=progress)
    write_text(out_dir / "metrics.json", json.dumps({
        "mean": means, "n_test": len(rows), "per_image": rows, "frac": frac, "n_labelled": len(subset),
        "best_iter": best_iter, "best_val_jaccard": best_val, "model": info,
        "config": dataclasses.asdict(config), "splits": describe(splits, subset)}, indent=1))
    _best_worst_sheet(rows, splits, out_dir)
    return FinetuneResult(out_dir, means, best_iter, best_val, [s.id for s in subset])


def check_before_training(samples: Sequence[datasets.Sample], *, progress: bool = False) -> None:
    """Check every image and mask that fine-tuning will read, before any training: all problems in one error.

    Raises
    ------
    DatasetError
        A missing mask, an unreadable image or mask, a mask of another size than its image, a non-binary mask.
    """
    problems = []
    for s in samples:
        if s.mask is None:
            problems.append(datasets.Problem(s.image, "image without a mask (masks are required here)", s.id, True))
    checked = datasets.Dataset(tuple(s for s in samples if s.mask is not None), ())
    problems += [datasets.Problem(p.path, p.reason, p.id, True)
                 for p in datasets.check_dataset(checked, check_mask_values=True, progress=progress)]
    if problems:
        raise datasets.DatasetError(problems)


def _train(model, train_x, train_y, val_x, val_y, *, config, size, device, progress):
    backbone_params = list(model.backbone.parameters())
    decoder_params = list(model.decoder.parameters())
    optimizer = torch.optim.AdamW([{"params": backbone_params, "scale": config.backbone_lr_scale},
                                   {"params": decoder_params, "scale": 1.0}], weight_decay=config.weight_decay)
    lr = cosine_schedule(config.lr, config.lr * 0.01, config.iters, int(config.warmup_frac * config.iters))
    crops = MultiCropConfig(n_global=1, n_local=0, global_size=size, global_scale=config.crop_scale,
                            brightness=0.2, contrast=0.2, saturation=0.1, hue=0.02, grey_p=0.0,
                            global_blur_p=(0.2,), global_solarise_p=(0.0,))
    generator = torch.Generator(device=device).manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    best_state, best_iter, best_val = copy.deepcopy(model.state_dict()), 0, -1.0
    bar = tqdm(range(config.iters), desc="fine-tune", unit="it", disable=not progress, leave=False)
    tic = time.perf_counter()
    for it in bar:
        model.train()
        idx = torch.from_numpy(rng.integers(0, len(train_x), config.batch_size))
        images, masks = train_x[idx].to(device), train_y[idx].to(device)
        view = multi_crop(images, masks, config=crops, generator=generator, binary_channels=(0,))
        inputs, targets = view.global_views[0], view.global_maps[0]
        if config.pic is not None and float(torch.rand((), generator=generator, device=device)) < config.pic.prob:
            bias = pic_bias(it / config.iters, config.pic.anneal)
            inputs, targets, _ = pic_cutmix(inputs, targets, bias=bias, generator=generator, area=config.pic.area)
        for group in optimizer.param_groups:
            group["lr"] = float(lr[it]) * group["scale"]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(inputs)
        loss = seg_loss(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        optimizer.step()
        if (it + 1) % config.eval_every == 0 or it + 1 == config.iters:
            val = _mean_jaccard(predict_probability(model, val_x, size=size, device=device), val_y)
            bar.set_postfix(loss=f"{loss.item():.3f}", val_jaccard=f"{val:.3f}")
            log.debug("iter %d: loss %.4f, validation Jaccard %.4f", it + 1, loss.item(), val)
            if val > best_val:
                best_state, best_iter, best_val = copy.deepcopy(model.state_dict()), it + 1, val
    log.info("fine-tuned %d iterations in %.0f s; best validation Jaccard %.4f at iteration %d",
             config.iters, time.perf_counter() - tic, best_val, best_iter)
    return best_state, best_iter, best_val


@functools.lru_cache(maxsize=4096)
def _test_input(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A test image squashed to ``size`` and its original (H, W); cached across the cells of a table run."""
    image = cv2.resize(datasets.read_image(path, min_long_side=2 * size), (size, size), interpolation=cv2.INTER_AREA)
    image.flags.writeable = False
    return image, datasets.image_size(Path(path))


def _predict_test(model, splits: Splits, out_dir: Path, *, size, device, progress):
    pred_dir = out_dir / "predictions"
    rows = []
    for s in tqdm(splits.test, desc="predict test", unit="img", disable=not progress, leave=False):
        image, (height, width) = _test_input(str(s.image), size)
        prob = predict_probability(model, torch.from_numpy(image.copy()).permute(2, 0, 1)[None], size=size,
                                   device=device)[0]
        full = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5
        write_mask_png(pred_dir / f"{s.id}_segmentation.png", full.astype(np.uint8) * 255)
        rows.append({"id": s.id, **binary_scores(full, datasets.read_mask(s.mask))})
    keys = [k for k in rows[0] if k != "id"] if rows else []
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return means, rows


def _best_worst_sheet(rows: list[dict], splits: Splits, out_dir: Path, n: int = 4) -> Path | None:
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
        pred = cv2.imread(str(out_dir / "predictions" / f"{s.id}_segmentation.png"), cv2.IMREAD_GRAYSCALE)
        pred = cv2.resize((pred > 127).astype(np.uint8), (384, 288), interpolation=cv2.INTER_NEAREST)
        for mask, colour in ((truth, (40, 220, 40)), (pred, (255, 40, 40))):
            draw_contour(image, mask, colour, 2)
        ax = axes[0 if k < n else 1, k % n]
        ax.imshow(image)
        ax.set_title(f"{'best' if k < n else 'worst'}: {r['id']}\nJaccard {r['jaccard']:.3f}", fontsize=8)
    fig.suptitle("expert (green) vs prediction (red)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_dir / "best_worst.png", dpi=72)
