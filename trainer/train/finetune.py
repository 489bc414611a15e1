"""Fine-tune a segmenter with FRAC of the expert labels; select on validation; predict and score the test split.

docs/METHOD.md, section 7: the encoder starts from the pretrained teacher backbone (decoder from the auxiliary head,
or fresh), BCE + soft Dice, a fixed iteration budget (few images: iterations, not epochs), model selection on
the validation split, then predictions at each test image's original size (ISIC submission format) and the
ISIC metrics.
"""
from __future__ import annotations

import copy
import dataclasses
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

from common import datasets
from common.atomic import write_text
from common.guard import check_out_dir, output_folder
from trainer.data.cutmix import PICConfig, pic_bias, pic_cutmix
from trainer.data.multicrop import MultiCropConfig, multi_crop
from trainer.data.splits import (Splits, describe, labelled_subset, listed_subset, near_duplicates,
                                 selection_from_subset, split_dataset)
from trainer.engine.distributed import resolve_device
from trainer.engine.schedules import cosine_schedule
from trainer.eval.scoring import METRICS, best_worst_sheet, predict_test, score_outputs
from trainer.inference.choice import PoolReference
from trainer.inference.relabel import relabel_info
from trainer.inference.fusion import FUSE_WEIGHT
from trainer.inference.masks import implausible_map, mask_from_probability
from trainer.inference.calibrate import calibrate
from trainer.inference.segment import PREDICT_SCALE, fusion_of, predict_probability, predict_size
from trainer.losses.seg import seg_loss
from trainer.models.decoders import DECODERS
from trainer.models.segmenter import build_seg_model, save_seg_model

MODEL = "model.pt"
SUBSET = "subset.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning hyper-parameters (ours; tuned for 1-30 labelled images).

    ``iters`` optimiser steps of ``batch_size`` images drawn with replacement from the labelled subset, each a
    random-resized crop (scale ``crop_scale``) with flips, 90-degree rotations and mild colour jitter; the
    backbone learns at ``lr * backbone_lr_scale``. Validation at the start and every ``eval_every`` steps picks
    the weights (the starting model wins when nothing beats it).
    ``pic`` turns on progressive imbalance-aware CutMix on the augmented batch (:mod:`trainer.data.cutmix`).
    ``decoder`` ('aux' or 'fresh') says where the decoder's weights start; ``decoder_arch`` ('conv' or 'ilka')
    is its kind for runs without an export (an export rebuilds its own kind).

    Semi-supervised (ours, off unless ``pseudo_shards`` is given): each step also draws ``pseudo_batch`` images
    of the unlabelled pool (the shards of ``pseudomasks``, minus the validation and test ids) with their
    pseudo-masks, cropped the same way, and adds ``pseudo_weight * ramp * L_seg(pseudo)`` to the expert loss,
    with the walker's uncertain band ``pseudo_band`` ignored (:func:`trainer.losses.seg.seg_loss`); ``ramp``
    rises linearly from 0 to 1 over the first ``pseudo_ramp_frac`` of the iterations (:func:`semi_loss`).
    ``tta`` averages the test-time probabilities over the 8 flips/quarter turns
    (:func:`~trainer.inference.segment.predict_probability`).
    ``one_lesion`` turns each test probability into a mask by
    :func:`~trainer.inference.masks.mask_from_probability` with that prior.
    ``predict_scale``: test images (and ``predict``'s) are segmented at this multiple of the training input size
    (:func:`~trainer.inference.segment.predict_size`; validation stays at the training size). 2 (ours): the
    random-resized crops of training show lesions larger than a whole squashed image does, and a ViT gains tokens
    to draw the border with (docs/EXPERIMENTS.md, "Prediction size and test-time augmentation").
    ``fuse``: each test probability is combined with stage 1's label-free walker probability of the same image
    (:func:`~trainer.inference.fusion.walker_probability`; ``fuse_weight``:
    :func:`~trainer.inference.fusion.fuse_probabilities`) before the mask is cut; ``predict``
    does the same for a model fine-tuned with it. ``fusion``: how: ``"choice"`` (ours, the default), per image
    the model's mask, the walker's or their combination, decided over the test images as a pool
    (:mod:`trainer.inference.choice`); ``"fixed"``, every image with the model's share ``fuse_weight``.
    docs/RESULTS.md has the gains.
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
    decoder_skip: bool = True  # edge path of a decoder without an export; with one, the export's
    patch_size: int | None = None  # patch size without an export (None: the arch's); with one, the export's
    pseudo_shards: str | None = None  # semi-supervised: shards of the unlabelled pool (None: expert labels only)
    pseudo_batch: int = 8             # pool images per step beside the batch_size labelled ones
    pseudo_weight: float = 0.5        # weight of the pseudo-mask loss, relative to the expert loss
    pseudo_ramp_frac: float = 0.2     # the weight ramps linearly 0 -> pseudo_weight over this fraction of iters
    pseudo_band: tuple[float, float] = (0.1, 0.9)  # the walker's uncertain band, ignored in the pseudo loss
    pseudo_min_confidence: float = 0.0  # pool pseudo-masks whose stored confidence is below this are not used
    tta: bool = False                 # test-time averaging over flips and quarter turns
    one_lesion: bool = True           # masks: holes filled, one component kept (mask_from_probability)
    predict_scale: float = PREDICT_SCALE  # test-time input size / training input size (predict_size)
    fuse: bool = False                # test masks from the model's and stage 1's probability (fuse_probabilities)
    fuse_weight: float = FUSE_WEIGHT  # the model's share of the fused probability (fusion "fixed"; "choice" where
    #                                   the model and the walker agree)
    fusion: str = "choice"            # "choice": per image (trainer.inference.choice); "fixed": fuse_weight for all
    calibrate: bool = True            # beside a relabelled pool: refit the walker cut and the choice on the labels

    def __post_init__(self):
        if not self.predict_scale > 0:
            raise ValueError(f"predict_scale must be > 0, got {self.predict_scale}")
        if self.decoder_arch not in DECODERS:
            raise ValueError(f"decoder_arch: expected one of {DECODERS}, got {self.decoder_arch!r}")
        if not self.pseudo_weight >= 0 or self.pseudo_batch < 1 or not 0 <= self.pseudo_ramp_frac <= 1:
            raise ValueError(f"pseudo_weight >= 0, pseudo_batch >= 1 and 0 <= pseudo_ramp_frac <= 1 expected, got "
                             f"{self.pseudo_weight}, {self.pseudo_batch}, {self.pseudo_ramp_frac}")
        if not 0.0 <= self.fuse_weight <= 1.0:
            raise ValueError(f"fuse_weight must be in [0, 1], got {self.fuse_weight}")
        if self.fusion not in ("choice", "fixed"):
            raise ValueError(f"fusion: expected 'choice' or 'fixed', got {self.fusion!r}")
        if not 0.0 <= self.pseudo_min_confidence <= 1.0:
            raise ValueError(f"pseudo_min_confidence: expected a value in [0, 1] (0 keeps every pseudo-mask), got "
                             f"{self.pseudo_min_confidence}")


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
    if not samples:  # no validation image (see selection_from_subset)
        return torch.zeros((0, 3, size, size), dtype=torch.uint8), torch.zeros((0, 1, size, size))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.stack(masks).astype(np.float32))[:, None]
    return x, y


def _mean_jaccard(prob: np.ndarray, masks: torch.Tensor, implausible: Sequence[np.ndarray] | None = None) -> float:
    """Mean per-image Jaccard of ``prob >= 0.5`` against ``masks``; with ``implausible`` (one map per image), of
    the mask the product writes (the one-lesion rule, :func:`mask_from_probability`), so that the validation
    chooses the iteration that scores best as ``predict`` scores, not as the raw map does."""
    if implausible is None:
        pred = prob >= 0.5
    else:
        pred = np.stack([mask_from_probability(p, implausible=m) for p, m in zip(prob, implausible)])
    truth = masks[:, 0].numpy() >= 0.5
    inter = (pred & truth).sum(axis=(1, 2))
    union = (pred | truth).sum(axis=(1, 2))
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def finetune(data: Sequence[str | Path] | str | Path, frac: float, out_dir: str | Path, *,
             checkpoint: str | Path | None = None, test_data: Sequence[str | Path] | None = None,
             config: FinetuneConfig = FinetuneConfig(), device: str = "auto", progress: bool = True,
             labels_from: str | Path | None = None) -> FinetuneResult:
    """Fine-tune on ``frac`` of the labelled training images of ``data`` (or, with ``labels_from``, on the
    images listed there: ``advise.csv`` or one id per line; ``frac`` is then ignored); write predictions and
    metrics.

    Writes ``out_dir/subset.json`` (the ids used), ``model.pt`` (the selected segmenter, everything needed to
    rebuild it: :func:`trainer.models.segmenter.save_seg_model`; ``predict`` reads it),
    ``predictions/<ID>_segmentation.png`` at each test image's original size (0/255), ``metrics.json`` (per
    image and mean) and ``best_worst.png``.
    """
    roots = [data] if isinstance(data, (str, Path)) else list(data)
    inputs = roots + list(test_data or []) + ([checkpoint] if checkpoint else [])
    out_dir = check_out_dir(out_dir, inputs)
    dev = resolve_device(device)
    torch.manual_seed(config.seed)
    dataset = datasets.open_dataset(data)
    test = datasets.open_dataset(test_data, require_masks=True) if test_data else None
    splits = split_dataset(dataset, test=test)
    if splits.n_excluded:
        log.warning("leakage guard: %d id(s) of the test data were removed from training and validation",
                    splits.n_excluded)
    if labels_from is not None:
        subset = listed_subset(splits, datasets.read_id_list(labels_from), source=str(labels_from))
        frac = len(subset) / len(splits.train)
    else:
        subset = labelled_subset(splits.train, frac, seed=config.seed)
    calibrate_on = subset  # calibration is cross-validated on the labels themselves: every listed one counts
    if not splits.validation:  # only the training images are labelled: select on a share of them
        subset, selection = selection_from_subset(subset)
        splits = dataclasses.replace(splits, validation=selection)
        log.warning("%s", f"no validation image has a mask: {len(selection)} of the {len(subset) + len(selection)} "
                          "labelled image(s) select the iteration instead of training" if selection else
                          f"no validation image has a mask and only {len(subset)} label(s): all train, the last "
                          "iteration is kept (label more images, or some of the validation split, to select)")
    log.info("%s", describe(splits, subset))
    if test is not None:
        dupes = near_duplicates(subset + splits.validation, splits.test)
        for a, b, d in dupes:
            log.warning("near-duplicate images across ids: %s (training) and %s (test), dHash distance %d", a, b, d)
    check_before_training(subset + splits.validation + splits.test, progress=progress, lesions=False)
    model, info = build_seg_model(config.init, checkpoint=checkpoint, arch=config.arch, img_size=config.img_size,
                                  decoder=config.decoder, decoder_hidden=config.decoder_hidden,
                                  decoder_arch=config.decoder_arch, decoder_skip=config.decoder_skip,
                                  patch=config.patch_size)
    check_lesions(subset + splits.validation + splits.test, what="the expert masks")
    check_lesions(subset, what=f"the {len(subset)} labelled training image(s) "
                               + (f"listed in {labels_from}" if labels_from is not None
                                  else f"chosen (--frac {frac:g}, --seed {config.seed})"))
    pool = None
    if config.pseudo_shards:  # refused here, before any writing, when its pseudomasks run is still going
        held_out = {s.id for s in splits.validation} | {s.id for s in splits.test}
        pool = _PseudoPool(config.pseudo_shards, held_out, config.seed, min_confidence=config.pseudo_min_confidence)
    # one run per folder, and no file replaced that no run wrote: a second finetune into this --out is refused
    with output_folder(out_dir, command="finetune", names=run_outputs(splits, with_model=True), inputs=inputs):
        return _finetune_locked(model, info, splits, subset, frac, out_dir, config=config, device=dev,
                                progress=progress, pool=pool, calibrate_on=calibrate_on)


def run_outputs(splits: Splits, *, with_model: bool) -> list[str]:
    """The files a fine-tuning run (``with_model``) or :func:`trainer.eval.scoring.score_model` writes into its
    folder."""
    return ([SUBSET, MODEL] if with_model else []) + score_outputs(splits)


def _finetune_locked(model, info: dict, splits: Splits, subset, frac: float, out_dir: Path, *,
                     config: FinetuneConfig, device: torch.device, progress: bool, pool,
                     calibrate_on: Sequence[datasets.Sample]) -> FinetuneResult:
    """:func:`finetune` once the data is checked, the model built and ``out_dir`` locked and claimed."""
    dev = device
    size = int(info["img_size"])
    model.to(dev)
    write_text(out_dir / SUBSET, json.dumps({"frac": frac, "seed": config.seed, "ids": [s.id for s in subset],
                                             "validation": [s.id for s in splits.validation],
                                             "test": [s.id for s in splits.test],
                                             "excluded_for_leakage": splits.n_excluded}, indent=1))
    train_x, train_y = _load(subset, size)
    val_x, val_y = _load(splits.validation, size)
    # validated as the product scores: through the one-lesion rule with each image's colour map
    val_rule = [implausible_map(str(s.image)) for s in splits.validation] if config.one_lesion else None
    best_state, best_iter, best_val = _train(model, train_x, train_y, val_x, val_y, config=config, size=size,
                                             device=dev, progress=progress, pool=pool, val_rule=val_rule)
    model.load_state_dict(best_state)
    recorded_val = best_val if np.isfinite(best_val) else None  # JSON null: no validation image
    reference = _pool_reference(config.pseudo_shards)
    calibration = calibrate(config.pseudo_shards, calibrate_on) if reference is not None and config.calibrate else None
    if calibration is not None:
        log.info("%s", calibration.line())
    save_seg_model(model, info, out_dir / MODEL, extra={
        "frac": frac, "n_labelled": len(subset), "labelled_ids": [s.id for s in subset], "best_iter": best_iter,
        "best_val_jaccard": recorded_val, "init": info, "config": json.loads(json.dumps(dataclasses.asdict(config))),
        **({"choice_reference": json.loads(reference.to_json())} if reference else {}),
        **({"calibration": calibration.to_dict()} if calibration else {})})
    test_size = predict_size(size, config.predict_scale)
    fusion = fusion_of(config.fusion if config.fuse else "none", config.fuse_weight, reference, calibration)
    means, rows = predict_test(model, splits, out_dir, size=test_size, device=dev, progress=progress,
                               tta=config.tta, one_lesion=config.one_lesion, fusion=fusion)
    write_text(out_dir / METRICS, json.dumps({
        "mean": means, "n_test": len(rows), "per_image": rows, "frac": frac, "n_labelled": len(subset),
        "predict_size": test_size, "best_iter": best_iter, "best_val_jaccard": recorded_val, "model": info,
        **({"calibration": calibration.to_dict()} if calibration else {}),
        "config": dataclasses.asdict(config), "splits": describe(splits, subset)}, indent=1))
    best_worst_sheet(rows, splits, out_dir)
    return FinetuneResult(out_dir, means, best_iter, best_val, [s.id for s in subset])


def _pool_reference(shards: str | None) -> PoolReference | None:
    """The pool reference of a relabelled pool (a ``refine`` round's or ``relabel``'s shards), saved with the model
    so that ``predict`` measures a few new images against it; None for stage 1's own shards."""
    found = relabel_info(shards) if shards else None
    return PoolReference.from_dict(found["reference"]) if found and "reference" in found else None


def check_before_training(samples: Sequence[datasets.Sample], *, progress: bool = False,
                          lesions: bool = True) -> None:
    """Check every image and mask that fine-tuning will read, before any training: all problems in one error.

    Raises
    ------
    DatasetError
        A missing mask, an unreadable image or mask, a mask of another size than its image, a mask that is not
        binary or whose lesion colour is ambiguous (:func:`common.datasets.read_mask`), or (``lesions``) masks
        that are all empty (:func:`check_lesions`).
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
    if lesions:
        check_lesions(samples, what="the expert masks")


def check_lesions(samples: Sequence[datasets.Sample], *, what: str) -> None:
    """Refuse labels that are all empty: a model trained on them learns that there is never a lesion (and scores
    a perfect Jaccard on empty validation masks). Reads the masks until one marks a lesion (usually the first).

    Raises
    ------
    DatasetError
        Every mask of ``samples`` (``what`` says which) is empty; names their folder.
    """
    labelled = [s for s in samples if s.mask is not None]
    if not labelled or any(datasets.read_mask(s.mask).any() for s in labelled):
        return
    folder = labelled[0].mask.parent
    raise datasets.DatasetError([datasets.Problem(
        folder, f"none of {what} marks a lesion (all {len(labelled)} mask(s) are empty): nothing to learn a lesion "
                "from; check that the masks mark the lesion (0 background, 255 lesion), or choose other labelled "
                "images", fatal=True)])


def semi_loss(logits: torch.Tensor, targets: torch.Tensor, n_labelled: int, pseudo_prob: torch.Tensor | None, *,
              weight: float, band: tuple[float, float]) -> tuple[torch.Tensor, dict[str, float]]:
    r"""The semi-supervised fine-tuning loss of one mixed batch.

    ``logits`` and ``targets`` are ``(B_l + B_p, 1, H, W)``: the first ``n_labelled`` rows are labelled crops
    (expert masks), the rest pool crops (pseudo-masks, ``pseudo_prob`` ``(B_p, 1, H, W)`` their walker
    probability). :math:`L = L_{seg}(\text{expert}) + w \cdot L_{seg}(\text{pseudo}; \text{band ignored})`, each
    :func:`trainer.losses.seg.seg_loss` (BCE + soft Dice) over its own rows. Returns ``(L, parts)``.
    """
    loss = seg_loss(logits[:n_labelled], targets[:n_labelled])
    parts = {"expert": float(loss.detach())}
    if pseudo_prob is not None and len(logits) > n_labelled:
        pseudo = seg_loss(logits[n_labelled:], targets[n_labelled:], pseudo_prob, band=band, band_weight=0.0)
        parts["pseudo"] = float(pseudo.detach())
        loss = loss + weight * pseudo
    return loss, parts


class _PseudoPool:
    """Random batches of pool images with their pseudo-mask and walker probability, read lazily from the shards."""

    def __init__(self, shards: str | Path, exclude_ids: set[str], seed: int, *, min_confidence: float = 0.0) -> None:
        from trainer.data.shard_dataset import ShardDataset

        self.dataset = ShardDataset([shards], exclude_ids=exclude_ids, min_confidence=min_confidence)
        self.valid = np.flatnonzero(self.dataset.has_lesion())  # the no_lesion columns only, no image read
        if not len(self.valid):
            raise ValueError(f"pseudo_shards {shards}: no usable pseudo-mask (all excluded or without a lesion)")
        self.rng = np.random.default_rng(seed + 7919)
        log.info("semi-supervised: %d pool image(s) with pseudo-masks (%d left out: validation/test ids; %d below "
                 "the confidence %g)", len(self.valid), self.dataset.n_excluded, self.dataset.n_low_confidence,
                 min_confidence)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, 3, S, S) uint8`` images and ``(n, 2, S, S) float`` maps: pseudo-mask {0, 1}, probability."""
        items = [self.dataset[int(i)] for i in self.rng.choice(self.valid, n)]
        images = torch.stack([it["image"] for it in items])
        maps = torch.stack([it["maps"][:2] for it in items]).float() / 255.0
        return images, maps


def _train(model, train_x, train_y, val_x, val_y, *, config, size, device, progress, pool=None, val_rule=None):
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
    # iteration 0 is a candidate too: a model that already segments (a pretrained decoder, the U-Net on pseudo-masks)
    # is never replaced by a fine-tuned one that does worse on validation (few labels can overfit it)
    # no validation image (fewer than 4 labels, none with a validation mask): the last iteration is kept
    validate = len(val_x) > 0
    best_val = _mean_jaccard(predict_probability(model, val_x, size=size, device=device), val_y, val_rule) \
        if validate else float("nan")
    best_state, best_iter = copy.deepcopy(model.state_dict()), 0
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
        pseudo_prob = None
        if pool is not None:
            p_images, p_maps = pool.batch(config.pseudo_batch)
            p_view = multi_crop(p_images.to(device), p_maps.to(device), config=crops, generator=generator,
                                binary_channels=(0,))
            inputs = torch.cat([inputs, p_view.global_views[0]])
            targets = torch.cat([targets, p_view.global_maps[0][:, 0:1]])
            pseudo_prob = p_view.global_maps[0][:, 1:2]
        for group in optimizer.param_groups:
            group["lr"] = float(lr[it]) * group["scale"]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(inputs)
        ramp = min(1.0, (it + 1) / max(1.0, config.pseudo_ramp_frac * config.iters))
        loss, _ = semi_loss(logits.float(), targets, config.batch_size, pseudo_prob,
                            weight=config.pseudo_weight * ramp, band=config.pseudo_band)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        optimizer.step()
        if not validate:
            if it + 1 == config.iters:
                best_state, best_iter = copy.deepcopy(model.state_dict()), it + 1
        elif (it + 1) % config.eval_every == 0 or it + 1 == config.iters:
            val = _mean_jaccard(predict_probability(model, val_x, size=size, device=device), val_y, val_rule)
            bar.set_postfix(loss=f"{loss.item():.3f}", val_jaccard=f"{val:.3f}")
            log.debug("iter %d: loss %.4f, validation Jaccard %.4f", it + 1, loss.item(), val)
            if val > best_val:
                best_state, best_iter, best_val = copy.deepcopy(model.state_dict()), it + 1, val
    if validate:
        log.info("fine-tuned %d iterations in %.0f s; best validation Jaccard %.4f at iteration %d",
                 config.iters, time.perf_counter() - tic, best_val, best_iter)
    else:
        log.info("fine-tuned %d iterations in %.0f s; no validation image: the last iteration is kept",
                 config.iters, time.perf_counter() - tic)
    return best_state, best_iter, best_val
