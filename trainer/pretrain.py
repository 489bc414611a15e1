"""Pretraining: DINO self-distillation plus an auxiliary segmentation loss on the pseudo-masks.

``L = L_DINO + lambda_t * L_seg`` (METHOD.md section 5): the student sees 2 global + N local views made on the
device from the shard images (``trainer.data.multicrop``); the EMA teacher sees the global views; the decoder on the
student's patch tokens is trained against each global view's pseudo-mask, transformed with the same grid.
Schedules are precomputed per global step (as in facebookresearch/dino), so resuming needs only the step.
Ablations: ``lambda_seg=0`` is plain DINO; ``distill=False`` is pseudo-mask supervision only.
Option ``fkd_weight > 0`` (DINO-Mix FKD, ``trainer.models.fkd``) adds ``fkd_weight * L_FKD``: the student's projected
patch tokens of the global views aligned to a frozen foundation ViT's (``fkd_teacher``/``fkd_weights``).
Collapse: every step the DINO loss's collapse monitor (:mod:`trainer.losses.collapse`) is logged, and a
:class:`~trainer.losses.collapse.CollapseDetector` warns when the teacher sits at uniform or one-hot collapse for
more than ``collapse_patience`` steps; ``centering="sinkhorn"`` and ``koleo_weight`` are the preventions
(docs/DINO_COLLAPSE.md). A linear probe of the teacher's frozen patch tokens against held-out pseudo-masks
(:mod:`trainer.probe`) runs at the start and the end of a run.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.guard import bounded_number, check_out_dir, output_folder
from pipeline.shards import read_manifest, sha256_file
from trainer.data.multicrop import MultiCropConfig, multi_crop
from trainer.data.shard_dataset import ShardAwareSampler, ShardDataset
from trainer.engine import distributed as dist_utils
from trainer.engine.checkpoint import load_checkpoint, require_keys, rng_state, save_checkpoint, set_rng_state
from trainer.engine.export import EXPORT, export_model
from trainer.engine.run_log import RunLog, read_log
from trainer.engine.schedules import (
    cancel_last_layer_grads,
    clip_gradients,
    cosine_schedule,
    lambda_ramp,
    param_groups,
    set_lr_wd,
    update_momentum,
)
from trainer.losses.affine import affine_loss, rot90
from trainer.losses.collapse import CollapseDetector, entropy
from trainer.losses.dino import CENTERINGS, DINOLoss
from trainer.losses.fkd import fkd_loss
from trainer.losses.koleo import koleo_loss
from trainer.losses.masked_patch import MaskedPatchLoss, random_patch_masks
from trainer.losses.seg import seg_loss
from trainer.losses.spatial import spatial_loss
from trainer.models.backbone import patch_grid
from trainer.models.decoders import DECODERS
from trainer.models.dino_model import DINOModel
from trainer.models.fkd import FoundationTeacher
from trainer.pictures import collapse_picture, pretrain_picture
from trainer.probe import patch_probe

log = logging.getLogger(__name__)

LATEST = "checkpoint-latest.pt"
PREVIOUS = "checkpoint-previous.pt"  # the checkpoint before LATEST: the fallback when LATEST is damaged
LOG, PICTURES = "log.jsonl", "pictures"
#: What a resume reads from a checkpoint (``epoch``, ``config``, ``data``, ``collapse``: absent in older ones).
CHECKPOINT_KEYS = ("student", "teacher", "optimizer", "center", "step", "rng", "generator")
# Fields that must match to resume a run (the rest, e.g. epochs, may change between runs).
# A field missing from an older checkpoint's config counts as its default here (e.g. decoder: "conv").
ARCHITECTURE_FIELDS = ("arch", "img_size", "out_dim", "decoder_hidden", "head_hidden", "bottleneck_dim", "decoder",
                       "fkd_teacher", "decoder_skip", "patch_size")
# ... except these, whose default changed after checkpoints without them were written: missing = this value.
_MISSING_MEANS = {"decoder_skip": False}


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining hyper-parameters (facebookresearch/dino defaults for ViT-S/16 unless marked ours).

    ``lr`` is the base rate for a total batch of 256 (scaled linearly, DINO). Warm-ups longer than the run are
    shortened to fit it. ``decoder`` picks the auxiliary decoder (:func:`trainer.models.decoders.build_decoder`);
    ``affine_weight`` and ``spatial_weight`` add S^3-Net's label-free terms on the decoder's output
    (:mod:`trainer.losses.affine`, :mod:`trainer.losses.spatial`), weighted like ``L_seg`` times these factors.

    DINO collapse (the last fields; docs/DINO_COLLAPSE.md): ``student_temp`` and ``center_momentum`` are DINO's
    :math:`\\tau_s` and :math:`m`; ``centering`` is ``"centre"`` (DINO) or ``"sinkhorn"`` (Sinkhorn-Knopp targets,
    DINOv2); ``koleo_weight`` adds ``koleo_weight * L_KoLeo`` on the student's global-view head outputs
    (:mod:`trainer.losses.koleo`); ``masked_patch_weight`` adds iBOT's masked-patch loss
    (:mod:`trainer.losses.masked_patch`: the student's global views with ``masked_patch_ratio`` of their patches
    hidden, in a ``masked_patch_prob`` share of the images, predict the teacher's patch outputs there);
    ``collapse_patience`` is how many steps of collapse the detector tolerates
    before it warns; ``probe_samples`` images of the last shard are held out of training (when the data has at
    least 4x as many) for the linear probe (:mod:`trainer.probe`); 0 turns the probe off.
    """

    arch: str = "vit_small_patch16_224"
    img_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    epochs: int = 100
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    out_dim: int = 4096
    head_hidden: int = 2048
    bottleneck_dim: int = 256
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    freeze_last_layer: int = 1
    clip_grad: float = 3.0
    drop_path: float = 0.1
    lambda_seg: float = 0.5        # ours
    lambda_ramp_epochs: int = 10   # ours
    distill: bool = True
    band: tuple[float, float] = (0.1, 0.9)  # ours: the walker's uncertain band
    band_weight: float = 0.0                # ours: weight of the band pixels in L_seg
    decoder_hidden: int = 128
    decoder: str = "conv"             # ours: "conv" (SegDecoder) or "ilka" (S^3-Net blocks)
    affine_weight: float = 0.0        # ours: S^3-Net rotation-equivariance term, relative to L_seg
    spatial_weight: float = 0.0       # ours: edge-aware spatial-consistency term, relative to L_seg
    weights: str | None = None
    fkd_teacher: str | None = None   # DINO-Mix FKD: timm name of the frozen foundation ViT (resolved)
    fkd_weights: str | None = None   # its local checkpoint; an edgedino export.pt also gives the name
    fkd_weight: float = 0.0          # weight of L_FKD (0: off)
    seed: int = 0
    num_workers: int = 2
    picture_every: int = 10
    log_every: int = 10
    decoder_skip: bool = True        # ours: the decoder's high-resolution edge path (borders from pixels)
    patch_size: int | None = None    # ours: patch size in place of the arch's own (None: the arch's)
    student_temp: float = 0.1        # DINO's tau_s
    center_momentum: float = 0.9     # DINO's m (1: the centre stays 0, no centring)
    centering: str = "centre"        # "centre" (DINO) or "sinkhorn" (DINOv2's Sinkhorn-Knopp targets)
    koleo_weight: float = 0.0        # KoLeo spreading term on the student's global head outputs (0: off)
    masked_patch_weight: float = 0.0  # iBOT-style masked-patch distillation on the global views (0: off)
    masked_patch_ratio: tuple[float, float] = (0.1, 0.5)  # share of a masked image's patches hidden (iBOT)
    masked_patch_prob: float = 0.5   # share of the global views masked at all (iBOT)
    collapse_patience: int = 50      # steps of collapse before the warning
    probe_samples: int = 64          # held-out images for the end-of-run linear probe (0: off)
    min_confidence: float = 0.0      # ours: leave out pseudo-masks whose confidence is below this (0: keep all)
    norm_last_layer: bool = True     # DINO: the head's last layer keeps weight norm 1 (False: it learns)
    decoder_lr_scale: float = 1.0    # ours: the aux decoder learns at lr * this (its own AdamW groups when != 1)

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.lambda_seg < 0:
            raise ValueError(f"lambda_seg must be >= 0, got {self.lambda_seg}")
        if not self.distill and self.lambda_seg == 0 and self.fkd_weight == 0:
            raise ValueError("no_distill with lambda_seg 0 leaves nothing to train: give --lambda-seg > 0")
        self._check_fkd()
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder: expected one of {DECODERS}, got {self.decoder!r}")
        for name in ("affine_weight", "spatial_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.lambda_seg == 0 and (self.affine_weight > 0 or self.spatial_weight > 0):
            log.warning("affine_weight/spatial_weight act on the decoder, which lambda_seg 0 turns off: ignored")
        self._check_collapse_fields()
        if self.img_size % 16 and self.img_size % 14:
            log.warning("img_size %d is not a multiple of the usual patch sizes (14, 16)", self.img_size)

    def _check_collapse_fields(self) -> None:
        if not self.student_temp > 0:
            raise ValueError(f"student_temp: expected > 0, got {self.student_temp}")
        if not 0.0 <= self.center_momentum <= 1.0:
            raise ValueError(f"center_momentum: expected in [0, 1], got {self.center_momentum}")
        if self.centering not in CENTERINGS:
            raise ValueError(f"centering: expected one of {CENTERINGS}, got {self.centering!r}")
        if not self.koleo_weight >= 0:
            raise ValueError(f"koleo_weight: expected >= 0 (0: off), got {self.koleo_weight}")
        if not self.masked_patch_weight >= 0:
            raise ValueError(f"masked_patch_weight: expected >= 0 (0: off), got {self.masked_patch_weight}")
        if self.masked_patch_weight > 0 and not self.distill:
            raise ValueError("masked_patch_weight > 0 needs the teacher: it cannot be used with no_distill")
        lo, hi = self.masked_patch_ratio
        if not (0.0 <= lo <= hi <= 1.0 and 0.0 <= self.masked_patch_prob <= 1.0):
            raise ValueError(f"masked_patch_ratio must be 0 <= low <= high <= 1 and masked_patch_prob in [0, 1], "
                             f"got {self.masked_patch_ratio}, {self.masked_patch_prob}")
        if self.collapse_patience < 1:
            raise ValueError(f"collapse_patience: expected >= 1 step, got {self.collapse_patience}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence: expected a value in [0, 1] (0 keeps every sample), got "
                             f"{self.min_confidence}")
        if not self.decoder_lr_scale > 0:
            raise ValueError(f"decoder_lr_scale: expected > 0, got {self.decoder_lr_scale}")
        if self.probe_samples < 0 or self.probe_samples == 1:
            raise ValueError(f"probe_samples: expected 0 (off) or >= 2, got {self.probe_samples}")

    def _check_fkd(self) -> None:
        if not self.fkd_weight >= 0:
            raise ValueError(f"fkd_weight: expected >= 0 (0: FKD off), got {self.fkd_weight}")
        if self.fkd_weight > 0 and self.fkd_teacher is None and self.fkd_weights is None:
            raise ValueError("fkd_weight > 0 needs fkd_teacher (a timm ViT name such as "
                             "'vit_small_patch14_dinov2', with fkd_weights its local checkpoint) or fkd_weights "
                             "(an edgedino export.pt, whose arch is used)")
        if self.fkd_weight == 0 and (self.fkd_teacher is not None or self.fkd_weights is not None):
            raise ValueError(f"fkd_teacher/fkd_weights given ({self.fkd_teacher!r}, {self.fkd_weights!r}) but "
                             "fkd_weight is 0, which turns FKD off: give fkd_weight > 0 (e.g. 1.0) or drop them")

    def crops(self) -> MultiCropConfig:
        return MultiCropConfig(global_size=self.img_size, local_size=self.local_size, n_local=self.n_local,
                               global_scale=self.global_scale, local_scale=self.local_scale)

    def build_model(self, *, fkd_dim: int | None = None) -> DINOModel:
        """The student network; ``fkd_dim`` (the foundation teacher's width) adds its FKD projector."""
        return DINOModel(self.arch, img_size=self.img_size, out_dim=self.out_dim, decoder_hidden=self.decoder_hidden,
                         decoder=self.decoder, weights=self.weights, drop_path_rate=self.drop_path,
                         head_hidden=self.head_hidden, bottleneck_dim=self.bottleneck_dim, fkd_dim=fkd_dim,
                         decoder_skip=self.decoder_skip, patch_size=self.patch_size,
                         norm_last_layer=self.norm_last_layer, mask_token=self.masked_patch_weight > 0)


@dataclass
class Schedules:
    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    lam: np.ndarray

    @classmethod
    def build(cls, config: PretrainConfig, steps_per_epoch: int, total_batch: int) -> "Schedules":
        total = config.epochs * steps_per_epoch
        warmup = min(config.warmup_epochs, max(config.epochs - 1, 0)) * steps_per_epoch
        ramp = min(config.lambda_ramp_epochs, config.epochs) * steps_per_epoch
        return cls(lr=cosine_schedule(config.lr * total_batch / 256.0, config.min_lr, total, warmup),
                   wd=cosine_schedule(config.weight_decay, config.weight_decay_end, total),
                   momentum=cosine_schedule(config.momentum_teacher, 1.0, total),
                   lam=lambda_ramp(config.lambda_seg, total, max(ramp, 1)))


@dataclass
class PretrainResult:
    out_dir: Path
    step: int
    epochs: int
    resumed_from: int | None
    last: dict
    collapse: dict = dataclasses.field(default_factory=dict)  # CollapseDetector.summary()
    probe: dict = dataclasses.field(default_factory=dict)     # probe_* at the end (and probe_init_* when fresh)


def pretrain(shards: str | Path | Iterable[str | Path], out_dir: str | Path, config: PretrainConfig = PretrainConfig(),
             *, device: str = "auto", exclude_ids: Iterable[str] = (), progress: bool = True,
             new_data: bool = False) -> PretrainResult:
    """Pretrain on the shards; write ``checkpoint-latest.pt`` every epoch and ``export.pt`` at the end.

    Rerunning with the same ``out_dir`` resumes from the latest checkpoint (a larger ``epochs`` continues the
    run; a damaged latest checkpoint falls back to ``checkpoint-previous.pt``). The data a run trains on is
    recorded; resuming on other data is refused unless ``new_data``. Launch with ``torchrun --nproc-per-node N
    cli.py pretrain ...`` for DDP; one process needs nothing.

    Raises
    ------
    NonFiniteLoss
        The loss became NaN/inf (the last checkpoint stays as it was).
    ValueError
        ``out_dir`` overlaps the shards, or a resume would change the architecture or (without ``new_data``)
        the data.
    """
    sources = [shards] if isinstance(shards, (str, Path)) else list(shards)
    out_dir = check_out_dir(out_dir, sources, flat_inputs=True)
    info = dist_utils.init_distributed(device)
    run = _set_up(sources, config, info, exclude_ids)
    # one run per folder: a second pretrain on the same --out is refused (a dead run's lock is taken over), and no
    # file is replaced that no run wrote (pipeline.guard.output_folder)
    with output_folder(out_dir, command="pretrain", names=run_outputs(run.config), inputs=sources,
                       flat_inputs=True) if info.is_main else contextlib.nullcontext():
        return _train(run, out_dir, info, new_data=new_data, progress=progress)


def run_outputs(config: PretrainConfig) -> list[str]:
    """The files a pretraining run of ``config`` writes into its folder (TensorBoard's ``tb/`` aside: its event
    files get new names each time)."""
    pictures = [f"{PICTURES}/epoch-{e:04d}.png" for e in range(1, config.epochs + 1)] if config.picture_every else []
    return [LATEST, PREVIOUS, EXPORT, LOG, f"{PICTURES}/collapse.png", *pictures]


def _train(run: "_Run", out_dir: Path, info, *, new_data: bool, progress: bool) -> PretrainResult:
    """Resume (when a checkpoint is there), train the remaining epochs, save every epoch, export at the end."""
    resumed_from = _resume(run, out_dir, info.device, new_data=new_data)
    run_log = RunLog(out_dir, enabled=info.is_main)
    run_log.write({"event": "start", "config": dataclasses.asdict(run.config), "data": run.data,
                   "samples": len(run.dataset),
                   "batch_per_process": run.batch, "world_size": info.world_size, "device": str(info.device),
                   "steps_per_epoch": run.steps_per_epoch, "resumed_from": resumed_from})
    probe: dict = {}
    if resumed_from is None and info.is_main:
        probe = _probe(run, info.device, prefix="probe_init_", run_log=run_log)
    last: dict = {}
    for epoch in range(run.step // run.steps_per_epoch, run.config.epochs):
        last = _train_epoch(run, epoch, run_log, info, progress=progress)
        if info.is_main:
            _end_of_epoch(run, epoch, out_dir, info.device)
        dist_utils.barrier()
    if info.is_main:
        export_model(run.teacher, run.config, out_dir / EXPORT, step=run.step)
        probe.update(_probe(run, info.device, prefix="probe_", run_log=run_log))
        collapse = run.detector.summary()
        if collapse["episodes"]:
            log.warning("DINO collapse during this run: %s (now: %s); see %s", episodes_text(collapse["episodes"]),
                        collapse["status"], out_dir / PICTURES / "collapse.png")
        run_log.write({"event": "summary", "step": run.step, "collapse": collapse, **probe})
    run_log.close()
    dist_utils.cleanup()
    return PretrainResult(out_dir=out_dir, step=run.step, epochs=run.config.epochs, resumed_from=resumed_from,
                          last=last, collapse=run.detector.summary() if run.config.distill else {}, probe=probe)


def episodes_text(episodes: list) -> str:
    """``[[kind, first step, last step], ...]`` of :class:`~trainer.losses.collapse.CollapseDetector` as one phrase."""
    return ", ".join(f"{kind} at steps {a}-{b}" for kind, a, b in episodes)


def _probe(run: "_Run", device: torch.device, *, prefix: str, run_log: RunLog) -> dict:
    """The linear probe of the teacher's frozen patch tokens (:func:`trainer.probe.patch_probe`), logged."""
    if not run.probe_indices:
        return {}
    tic = time.perf_counter()
    result = patch_probe(run.teacher.backbone, run.probe_dataset, run.probe_indices, img_size=run.config.img_size,
                         device=device, seed=run.config.seed).as_dict(prefix)
    result[prefix + "heldout"] = run.probe_heldout
    result[prefix + "seconds"] = round(time.perf_counter() - tic, 2)
    run_log.write({"event": "probe", "step": run.step, **result})
    log.info("linear probe (%s): patch Jaccard %.3f, balanced accuracy %.3f on %d %s images (%.1f s)",
             "before training" if "init" in prefix else "end of run", result[prefix + "jaccard"],
             result[prefix + "balanced_accuracy"], result[prefix + "n_images"],
             "held-out" if run.probe_heldout else "training", result[prefix + "seconds"])
    return result


@dataclass
class _Run:
    """Everything one pretraining run holds between steps (built by :func:`_set_up`)."""

    config: PretrainConfig
    dataset: ShardDataset
    sampler: ShardAwareSampler
    loader: torch.utils.data.DataLoader
    batch: int
    steps_per_epoch: int
    sched: Schedules
    student: DINOModel
    teacher: DINOModel
    ddp_student: torch.nn.Module
    optimizer: torch.optim.Optimizer
    dino_loss: DINOLoss
    patch_loss: MaskedPatchLoss | None
    generator: torch.Generator
    fkd_teacher: FoundationTeacher | None
    detector: CollapseDetector
    probe_dataset: ShardDataset
    probe_indices: list
    probe_heldout: bool
    data: dict
    step: int = 0


def _set_up(shards, config: PretrainConfig, info, exclude_ids) -> _Run:
    """Data, models, optimiser, loss and generator of a fresh run (seeded from ``config.seed`` and the rank)."""
    torch.manual_seed(config.seed * 1000 + info.rank)
    np.random.seed(config.seed * 1000 + info.rank)
    sources = shards if not isinstance(shards, (str, Path)) else [shards]
    dataset = ShardDataset(sources, exclude_ids=exclude_ids, min_confidence=config.min_confidence)
    if dataset.n_excluded:
        log.info("leakage guard: left out %d shard sample(s) whose ids are in the test data", dataset.n_excluded)
    if config.min_confidence > 0:
        log.info("min_confidence %g: left out %d pseudo-mask(s) below it%s", config.min_confidence,
                 dataset.n_low_confidence, f"; {dataset.n_unscored} sample(s) of older shards have no confidence "
                 "and are kept" if dataset.n_unscored else "")
    probe_dataset, n_probe = dataset, min(config.probe_samples, len(dataset))
    probe_heldout = config.probe_samples > 0 and len(dataset) >= 4 * config.probe_samples
    probe_indices = list(range(len(dataset) - n_probe, len(dataset))) if n_probe >= 2 else []
    if probe_heldout:  # the last probe_samples ids (the last shard) stay out of training
        dataset = probe_dataset.without(probe_dataset.ids[-n_probe:])
        log.info("linear probe: %d images of the last shard held out of training", n_probe)
    batch = min(config.batch_size, len(dataset) // info.world_size)
    if batch < 2:
        raise ValueError(f"{len(dataset)} sample(s) over {info.world_size} process(es): need at least 2 per process")
    if batch < config.batch_size:
        log.warning("batch size lowered from %d to %d to fit %d samples", config.batch_size, batch, len(dataset))
    sampler = ShardAwareSampler(dataset, seed=config.seed, rank=info.rank, world_size=info.world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True,
                                         num_workers=config.num_workers, pin_memory=info.device.type == "cuda",
                                         persistent_workers=config.num_workers > 0)
    steps_per_epoch = len(loader)
    fkd_teacher = None
    if config.fkd_weight > 0:
        fkd_teacher = FoundationTeacher(config.fkd_teacher, weights=config.fkd_weights,
                                        img_size=config.img_size).to(info.device)
        config = dataclasses.replace(config, fkd_teacher=fkd_teacher.arch)  # recorded, and checked on resume
        log.info("FKD: frozen %s (%s), %d-d features, patch %d, weight %g", fkd_teacher.arch,
                 fkd_teacher.weights or "random init", fkd_teacher.embed_dim, fkd_teacher.patch_size,
                 config.fkd_weight)
    student = config.build_model(fkd_dim=fkd_teacher.embed_dim if fkd_teacher else None).to(info.device)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    ddp_student = dist_utils.wrap_ddp(student, info, find_unused_parameters=not config.distill
                                      or config.lambda_seg == 0)
    dino_loss = DINOLoss(config.out_dim, n_crops=2 + config.n_local,
                         warmup_teacher_temp=config.warmup_teacher_temp, teacher_temp=config.teacher_temp,
                         warmup_teacher_temp_epochs=min(config.warmup_teacher_temp_epochs, config.epochs),
                         n_epochs=config.epochs, student_temp=config.student_temp, steps_per_epoch=steps_per_epoch,
                         center_momentum=config.center_momentum, centering=config.centering).to(info.device)
    patch_loss = (MaskedPatchLoss(config.out_dim, student_temp=config.student_temp,
                                  center_momentum=config.center_momentum).to(info.device)
                  if config.masked_patch_weight > 0 else None)
    generator = torch.Generator(device=info.device)
    generator.manual_seed(config.seed * 1000 + info.rank)
    return _Run(config=config, dataset=dataset, sampler=sampler, loader=loader, batch=batch,
                steps_per_epoch=steps_per_epoch, sched=Schedules.build(config, steps_per_epoch, batch * info.world_size),
                student=student, teacher=teacher, ddp_student=ddp_student,
                optimizer=torch.optim.AdamW(param_groups(student, config.weight_decay,
                                                          lr_scales=_lr_scales(config))), dino_loss=dino_loss,
                patch_loss=patch_loss,
                generator=generator, fkd_teacher=fkd_teacher, data=data_record(dataset),
                detector=CollapseDetector(config.collapse_patience), probe_dataset=probe_dataset,
                probe_indices=probe_indices, probe_heldout=probe_heldout)


def _lr_scales(config: PretrainConfig) -> dict[str, float]:
    """The submodules that learn at their own rate: the aux decoder when ``decoder_lr_scale`` != 1."""
    return {"decoder": config.decoder_lr_scale} if config.decoder_lr_scale != 1.0 else {}


def data_record(dataset: ShardDataset) -> dict:
    """What a run trains on: the sample count and one hash of the shard contents and the ids used.

    A shard's sha256 comes from the ``manifest.json`` beside it when listed there (no re-read), else from the
    file itself.
    """
    digest = hashlib.sha256()
    manifests: dict[Path, dict] = {}
    for path in dataset.paths:
        folder = path.parent
        if folder not in manifests:
            manifests[folder] = {e["file"]: e.get("sha256") for e in read_manifest(folder).get("shards", [])}
        digest.update(f"{path.name}:{manifests[folder].get(path.name) or sha256_file(path)}\n".encode())
    digest.update("\n".join(dataset.ids).encode("utf-8", "surrogateescape"))
    return {"samples": len(dataset), "fingerprint": digest.hexdigest()[:32]}


def _resume(run: _Run, out_dir: Path, device: torch.device, *, new_data: bool = False) -> int | None:
    """Load the newest loadable checkpoint into ``run`` (``LATEST``, else ``PREVIOUS`` with a warning).

    Checks that it is this architecture and (unless ``new_data``) that it was trained on the same data.
    Resumes at the start of the epoch after the last finished one, counted in this data's steps per epoch.
    Returns its step, or None for a fresh run.
    """
    candidates = [out_dir / name for name in (LATEST, PREVIOUS) if (out_dir / name).exists()]
    if not candidates:
        return None
    for path in candidates:
        try:
            state = load_checkpoint(path, map_location=device)
            break
        except RuntimeError as exc:
            log.warning("%s; trying the previous checkpoint", exc)
    else:
        raise ValueError(f"{out_dir}: no loadable checkpoint ({', '.join(p.name for p in candidates)} are damaged); "
                         "use a new --out or delete them to start over")
    if path.name != LATEST:
        log.warning("resuming from %s: %s could not be loaded", path, LATEST)
    require_keys(state, CHECKPOINT_KEYS, path, what="pretraining checkpoint")
    if not isinstance(state.get("config", {}), dict):
        raise ValueError(f"{path}: config is a {type(state['config']).__name__}, not a dict (pretraining checkpoint)")
    _check_resumable(state, run.config, path)
    _check_same_data(state, run, path, new_data=new_data)
    run.student.load_state_dict(state["student"])
    run.teacher.load_state_dict(state["teacher"])
    try:
        run.optimizer.load_state_dict(state["optimizer"])
    except ValueError as exc:  # other parameter groups: another --decoder-lr-scale or --free-last-layer
        raise ValueError(f"{path}: this run was made with other trainable parameters or groups ({exc}); resume "
                         "with the same --decoder-lr-scale and --norm-last-layer/--free-last-layer, or use a new "
                         "--out") from None
    run.dino_loss.center.copy_(state["center"])
    if run.patch_loss is not None and "patch_center" in state:
        run.patch_loss.center.copy_(state["patch_center"])
    saved_step = bounded_number(state["step"], lo=0, hi=10**12, what="step", source=path)
    epochs_done = bounded_number(state.get("epoch", saved_step // run.steps_per_epoch), lo=0, hi=10**9,
                                 what="epoch", source=path)
    run.step = epochs_done * run.steps_per_epoch
    if run.step != saved_step:
        log.warning("%s: step %d was counted with another number of steps per epoch; continuing at epoch %d, "
                    "step %d", path, saved_step, epochs_done, run.step)
    set_rng_state(state["rng"])
    run.generator.set_state(state["generator"].cpu())
    if "collapse" in state:  # older checkpoints have none: the detector starts afresh
        run.detector.load(state["collapse"])
    log.info("resumed from step %d (epoch %d) of %s", run.step, epochs_done, path)
    return run.step


def _check_same_data(state: dict, run: _Run, path: Path, *, new_data: bool) -> None:
    old = state.get("data")
    if old is None:
        log.warning("%s records no training data (an older run); cannot check that the data is the same", path)
        return
    if old == run.data:
        return
    change = (f"{old.get('samples')} sample(s), fingerprint {old.get('fingerprint')} -> {run.data['samples']} "
              f"sample(s), fingerprint {run.data['fingerprint']}")
    if not new_data:
        raise ValueError(f"{path}: this run was trained on other data ({change}); add --new-data to continue on "
                         "this data anyway, or use a new --out")
    log.warning("%s: continuing on new data (%s)", path, change)


def _train_epoch(run: _Run, epoch: int, run_log: RunLog, info, *, progress: bool) -> dict[str, float]:
    """One pass over the loader; logs every ``log_every`` steps and the epoch means; returns the last step's."""
    config = run.config
    run.sampler.set_epoch(epoch)
    run.student.train()
    sums: dict[str, float] = {}
    last: dict[str, float] = {}
    mean_target = torch.zeros(config.out_dim, device=info.device)  # sum of the batches' mean targets
    tic = time.perf_counter()
    bar = tqdm(run.loader, desc=f"pretrain epoch {epoch + 1}/{config.epochs}", unit="batch",
               disable=not (progress and info.is_main), leave=False)
    for batch_data in bar:
        last = _train_step(batch_data, step=run.step, epoch=epoch, config=config, sched=run.sched,
                           crops=config.crops(), student=run.student, ddp_student=run.ddp_student,
                           teacher=run.teacher, optimizer=run.optimizer, dino_loss=run.dino_loss,
                           generator=run.generator, device=info.device, fkd_teacher=run.fkd_teacher,
                           patch_loss=run.patch_loss)
        for k, v in last.items():
            sums[k] = sums.get(k, 0.0) + v
        if run.step % config.log_every == 0:
            run_log.write({"step": run.step, "epoch": epoch, **last})
        _watch_collapse(run, last, run_log, info)
        if "teacher_entropy" in last:
            mean_target += run.dino_loss.last_mean_target
        bar.set_postfix(loss=f"{last['loss']:.3f}")
        run.step += 1
    means = {k: v / run.steps_per_epoch for k, v in sums.items()}
    if "teacher_entropy" in means:  # the entropy of the mean target over the whole epoch (this process's rows)
        means["epoch_entropy_of_mean"] = entropy(mean_target)
        means["epoch_entropy_of_mean_frac"] = means["epoch_entropy_of_mean"] / means["log_k"]
    run_log.write({"event": "epoch", "epoch": epoch + 1, "step": run.step,
                   "seconds": round(time.perf_counter() - tic, 2), **means})
    if info.is_main:
        shown = ("loss", "dino", "seg", "fkd", "affine", "spatial", "koleo", "masked_patch", "teacher_entropy_frac",
                 "epoch_entropy_of_mean_frac", "prototypes_used")
        log.info("epoch %d/%d: %s", epoch + 1, config.epochs,
                 "  ".join(f"{k} {v:.4f}" for k, v in means.items() if k in shown))
    return last


def _watch_collapse(run: _Run, last: dict, run_log: RunLog, info) -> None:
    """Feed the step's monitor numbers to the detector; warn (console and log) when a collapse outlasts patience."""
    if "teacher_entropy" not in last:  # no distillation, nothing to watch
        return
    stats = run.dino_loss.last_stats
    message = run.detector.update(stats, run.step) if stats is not None else None
    if message and info.is_main:
        log.warning(message)
        run_log.write({"event": "collapse", "step": run.step, "message": message, **stats.as_dict()})


def _end_of_epoch(run: _Run, epoch: int, out_dir: Path, device: torch.device) -> None:
    """Save ``checkpoint-latest.pt`` (atomically; the one before becomes ``checkpoint-previous.pt``) and, every
    ``picture_every`` epochs and at the end, a picture."""
    config = run.config
    if (out_dir / LATEST).exists():
        os.replace(out_dir / LATEST, out_dir / PREVIOUS)
    save_checkpoint(out_dir / LATEST, {
        "student": run.student.state_dict(), "teacher": run.teacher.state_dict(),
        "optimizer": run.optimizer.state_dict(), "scaler": {}, "center": run.dino_loss.center,
        "step": run.step, "epoch": epoch + 1, "rng": rng_state(), "generator": run.generator.get_state(),
        "config": dataclasses.asdict(config), "data": run.data, "collapse": run.detector.summary(),
        **({"patch_center": run.patch_loss.center} if run.patch_loss is not None else {})})
    if config.picture_every and ((epoch + 1) % config.picture_every == 0 or epoch + 1 == config.epochs):
        pretrain_picture(run.teacher, run.dataset, out_dir / PICTURES / f"epoch-{epoch + 1:04d}.png",
                         img_size=config.img_size, device=device)
        if config.distill:
            collapse_picture(out_dir / LOG, out_dir / PICTURES / "collapse.png",
                             patience=config.collapse_patience)


def _check_resumable(state: dict, config: PretrainConfig, path: Path) -> None:
    old = state.get("config", {})
    defaults = {f.name: f.default for f in dataclasses.fields(PretrainConfig)}
    defaults.update(_MISSING_MEANS)
    old = {k: old.get(k, defaults[k]) for k in ARCHITECTURE_FIELDS}
    diff = {k: (old[k], getattr(config, k)) for k in ARCHITECTURE_FIELDS if old[k] != getattr(config, k)}
    if diff:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{path}: cannot resume a run of another architecture ({shown}); use a new --out")
    had_token = float(state.get("config", {}).get("masked_patch_weight", 0.0)) > 0
    if had_token != (config.masked_patch_weight > 0):  # the model has a mask token exactly when the loss is on
        raise ValueError(f"{path}: this run was made {'with' if had_token else 'without'} the masked-patch loss "
                         f"(--masked-patch-weight); resume it {'with a weight > 0' if had_token else 'without it'}, "
                         "or use a new --out")


def _train_step(batch_data, *, step, epoch, config, sched, crops, student, ddp_student, teacher, optimizer,
                dino_loss, generator, device, fkd_teacher=None, patch_loss=None) -> dict[str, float]:
    images = batch_data["image"].to(device, non_blocking=True)
    maps = batch_data["maps"].to(device, non_blocking=True).float().div_(255.0)
    valid = batch_data["valid"].to(device, non_blocking=True)
    views = multi_crop(images, maps, config=crops, generator=generator, binary_channels=(0, 2))
    masks = None
    if patch_loss is not None:
        grid = patch_grid(student.backbone, tuple(views.global_views[0].shape[-2:]))
        masks = random_patch_masks(len(views.global_views) * images.shape[0], grid[0] * grid[1],
                                   ratio=config.masked_patch_ratio, prob=config.masked_patch_prob,
                                   generator=generator, device=device)
    return train_step(views, valid, step=step, epoch=epoch, config=config, sched=sched, student=student,
                      ddp_student=ddp_student, teacher=teacher, optimizer=optimizer, dino_loss=dino_loss,
                      fkd_teacher=fkd_teacher, patch_loss=patch_loss, masks=masks)


def train_step(views, valid, *, step, epoch, config, sched, student, ddp_student, teacher, optimizer,
               dino_loss, fkd_teacher=None, patch_loss=None, masks=None) -> dict[str, float]:
    """One optimisation step on ready-made views (``MultiCropOutput``); returns the logged numbers.

    ``valid`` (B,) weights each sample's segmentation loss (0 when no lesion was seeded); the label-free
    ``affine`` and ``spatial`` terms (when their weights are > 0) use every sample. ``fkd_teacher`` (a
    :class:`~trainer.models.fkd.FoundationTeacher`, needed when ``config.fkd_weight > 0``) adds
    ``fkd_weight * L_FKD`` on the global views (not ramped; with or without ``distill``). ``patch_loss`` (a
    :class:`~trainer.losses.masked_patch.MaskedPatchLoss`, needed when ``config.masked_patch_weight > 0``) with
    ``masks`` ``(G * B, N)`` bool adds ``masked_patch_weight * L_MIM``: the student's global views are masked
    (for every term), the teacher's are not, and the shared head's outputs are compared at the masked patches.
    """
    if (patch_loss is not None) != (config.masked_patch_weight > 0) or (patch_loss is not None) != (masks is not None):
        raise ValueError(f"patch_loss and masks: needed exactly when config.masked_patch_weight > 0 "
                         f"(masked_patch_weight {config.masked_patch_weight}, patch_loss "
                         f"{'given' if patch_loss is not None else 'None'}, masks "
                         f"{'given' if masks is not None else 'None'})")
    if (fkd_teacher is not None) != (config.fkd_weight > 0):
        raise ValueError(f"fkd_teacher: needed exactly when config.fkd_weight > 0 (fkd_weight "
                         f"{config.fkd_weight}, fkd_teacher {'given' if fkd_teacher is not None else 'None'})")
    device = valid.device
    cuda = device.type == "cuda"
    lam = float(sched.lam[step])
    segment = config.lambda_seg > 0
    set_lr_wd(optimizer, float(sched.lr[step]), float(sched.wd[step]))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        head_out, seg_logits, *extra = ddp_student(views.global_views,
                                                   views.local_views if config.distill else [],
                                                   segment=segment, project=config.distill,
                                                   fkd=fkd_teacher is not None, masks=masks,
                                                   return_patches=masks is not None)
        fkd_feats = extra[:1] if fkd_teacher is not None else []
        parts = {}
        loss = torch.zeros((), device=device)
        if config.distill:
            with torch.no_grad():
                teacher_out, _, *teacher_patches = teacher(views.global_views, segment=False,
                                                           return_patches=masks is not None)
            parts["dino"] = dino_loss(head_out.float(), teacher_out.float(), step)
            loss = loss + parts["dino"]
            if masks is not None:
                hidden = masks.reshape(-1)
                student_patches = extra[-1].reshape(-1, extra[-1].shape[-1])[hidden]
                with torch.no_grad():
                    target = teacher.head(teacher_patches[0].reshape(-1, extra[-1].shape[-1])[hidden])
                parts["masked_patch"] = patch_loss(student.head(student_patches).float(), target.float(),
                                                   dino_loss.teacher_temp_at(step))
                loss = loss + config.masked_patch_weight * parts["masked_patch"]
            if config.koleo_weight > 0:
                per_view = head_out.shape[0] // (len(views.global_views) + len(views.local_views))
                parts["koleo"] = torch.stack([koleo_loss(head_out[i * per_view:(i + 1) * per_view])
                                              for i in range(len(views.global_views))]).mean()
                loss = loss + config.koleo_weight * parts["koleo"]
        if segment:
            target = torch.cat([m[:, 0:1] for m in views.global_maps])
            prob = torch.cat([m[:, 1:2] for m in views.global_maps])
            weight = valid.repeat(len(views.global_maps))
            parts["seg"] = seg_loss(seg_logits.float(), target, prob, band=config.band,
                                    band_weight=config.band_weight, sample_weight=weight)
            loss = loss + (lam if config.distill else 1.0) * parts["seg"]
            loss = loss + _s3net_terms(views, seg_logits, parts, step=step, config=config, student=student,
                                       scale=lam if config.distill else 1.0)
        if fkd_teacher is not None:
            grid = patch_grid(student.backbone, tuple(views.global_views[0].shape[-2:]))
            parts["fkd"] = fkd_loss(fkd_feats[0], fkd_teacher(torch.cat(views.global_views), grid))
            loss = loss + config.fkd_weight * parts["fkd"]
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        raise NonFiniteLoss(f"the loss became {loss_value} at step {step} (epoch {epoch + 1}): "
                            f"{ {k: float(v.detach()) for k, v in parts.items()} }; the last good checkpoint is kept. "
                            "Lower --lr, or the teacher temperature if DINO collapsed.")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = clip_gradients(student, config.clip_grad)
    cancel_last_layer_grads(student.head, epoch, config.freeze_last_layer)
    optimizer.step()
    update_momentum(student, teacher, float(sched.momentum[step]))
    monitor = dino_loss.last_stats.as_dict() if config.distill and dino_loss.last_stats is not None else {}
    return {"loss": loss_value, **{k: float(v.detach()) for k, v in parts.items()}, **monitor,
            "lr": float(sched.lr[step]),
            "wd": float(sched.wd[step]), "momentum": float(sched.momentum[step]), "lambda": lam,
            "grad_norm": float(grad_norm)}


def _s3net_terms(views, seg_logits, parts, *, step, config, student, scale) -> torch.Tensor:
    """S^3-Net's label-free terms on the global views' logits, stored in ``parts``; returns their weighted sum.

    ``spatial``: :func:`trainer.losses.spatial.spatial_loss` against the (normalised) global views. ``affine``: the
    student runs once more, backbone + decoder only, on the global views rotated by ``k = 1 + step % 3`` quarter
    turns (deterministic, the same on every rank), and :func:`trainer.losses.affine.affine_loss` compares. That
    forward goes through the unwrapped ``student``: DDP expects one forward per backward through the wrapper,
    and the gradients of this one still land on the same parameters, which DDP all-reduces in the one backward.
    Each term is multiplied by ``scale`` (the ``L_seg`` ramp) and its weight.
    """
    total = torch.zeros((), device=seg_logits.device)
    if config.spatial_weight > 0:
        parts["spatial"] = spatial_loss(seg_logits.float(), torch.cat(views.global_views))
        total = total + scale * config.spatial_weight * parts["spatial"]
    if config.affine_weight > 0:
        k = 1 + step % 3
        _, rotated = student([rot90(v, k) for v in views.global_views], segment=True, project=False)
        parts["affine"] = affine_loss(seg_logits.float(), rotated.float(), k)
        total = total + scale * config.affine_weight * parts["affine"]
    return total


def run_summary(out_dir: str | Path) -> str:
    """A pretraining run folder in a few lines, from its ``log.jsonl``: steps, the collapse monitor, the probe.

    What ``inspect RUN_FOLDER`` prints: the last epoch's DINO loss and teacher entropies against ``ln K``, the
    collapse warnings (one line each) or "none", and the linear probe's patch Jaccard at the start and the end.
    """
    path = Path(out_dir) / "log.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{out_dir}: no log.jsonl (not a pretraining run folder)")
    records = read_log(path)
    epochs = [r for r in records if r.get("event") == "epoch"]
    lines = [f"pretraining run {out_dir}: {epochs[-1]['step'] if epochs else 0} steps, {len(epochs)} epoch(s) logged"]
    monitored = [r for r in records if "teacher_entropy" in r and "event" not in r]
    if epochs and monitored:
        e, log_k = epochs[-1], monitored[-1]["log_k"]
        lines.append(f"  last epoch: DINO loss {e['dino']:.3f} = {e['dino'] / log_k:.3f} ln K "
                     f"(K = {math.exp(log_k):.0f}); "
                     f"teacher entropy {e['teacher_entropy_frac']:.3f} ln K; entropy of the epoch's mean target "
                     f"{e.get('epoch_entropy_of_mean_frac', float('nan')):.3f} ln K (per batch "
                     f"{e['entropy_of_mean_frac']:.3f}); {e['prototypes_used']:.1f} prototypes per batch")
    warnings = [r["message"] for r in records if r.get("event") == "collapse"]
    if not monitored:
        lines.append("  collapse: not monitored (no distillation)")
    else:
        lines += [f"  WARNING: {w}" for w in warnings] or ["  collapse: none (healthy)"]
    probes = [r for r in records if r.get("event") == "probe"]
    for r in probes:
        prefix = "probe_init_" if "probe_init_jaccard" in r else "probe_"
        lines.append(f"  linear probe ({'start' if 'init' in prefix else 'end'}, step {r['step']}): patch Jaccard "
                     f"{r[prefix + 'jaccard']:.3f}, balanced accuracy {r[prefix + 'balanced_accuracy']:.3f} on "
                     f"{r[prefix + 'n_images']} {'held-out' if r[prefix + 'heldout'] else 'training'} images")
    return "\n".join(lines)
