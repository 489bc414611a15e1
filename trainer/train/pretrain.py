"""Pretraining: DINO self-distillation plus an auxiliary segmentation loss on the pseudo-masks; the loop around
the objective.

The configuration is :class:`~trainer.train.config.PretrainConfig`, the loss mix of one step
:mod:`trainer.train.objective`. Here: the set-up (data, models, optimiser, losses), the checks before a resume
(same architecture, same data), the epochs, the end-of-epoch checkpoint and pictures, the export at the end, and
the summary of a run folder (:func:`run_summary`). Schedules are precomputed per global step (as in
facebookresearch/dino), so resuming needs only the step.
Collapse: every step the DINO loss's collapse monitor (:mod:`trainer.losses.collapse`) is logged, and a
:class:`~trainer.losses.collapse.CollapseDetector` warns when the teacher sits at uniform or one-hot collapse for
more than ``collapse_patience`` steps; ``centering="sinkhorn"`` and ``koleo_weight`` are the preventions
(docs/DINO_COLLAPSE.md). A linear probe of the teacher's frozen patch tokens against held-out pseudo-masks
(:mod:`trainer.eval.probe`) runs at the start and the end of a run.
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

from common.guard import bounded_number, check_out_dir, output_folder, sha256_file
from pipeline.shards import read_manifest
from trainer.data.shard_dataset import ShardAwareSampler, ShardDataset
from trainer.engine import distributed as dist_utils
from trainer.engine.checkpoint import load_checkpoint, require_keys, rng_state, save_checkpoint, set_rng_state
from trainer.engine.export import EXPORT, export_model
from trainer.engine.run_log import RunLog, read_log
from trainer.engine.schedules import param_groups
from trainer.eval.pictures import collapse_picture, pretrain_picture
from trainer.eval.probe import patch_probe
from trainer.losses.collapse import CollapseDetector, entropy
from trainer.losses.dino import DINOLoss
from trainer.losses.masked_patch import MaskedPatchLoss
from trainer.models.dino_model import DINOModel
from trainer.models.fkd import FoundationTeacher
from trainer.train.config import PretrainConfig, Schedules
from trainer.train.objective import make_views_and_step

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
    # file is replaced that no run wrote (common.guard.output_folder)
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
    if resumed_from is None and run.config.init_from:
        _initialise(run, Path(run.config.init_from), info.device)
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
    """The linear probe of the teacher's frozen patch tokens (:func:`trainer.eval.probe.patch_probe`), logged."""
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


def _initialise(run: _Run, path: Path, device: torch.device) -> None:
    """Start a fresh run from the weights of another run's checkpoint (``config.init_from``): student, teacher,
    DINO centre (and the masked-patch centre); the optimiser, the schedules and the step start afresh. A
    self-training round (``refine``) continues the previous round's student this way on its relabelled data."""
    state = load_checkpoint(path, map_location=device)
    _check_resumable(state, run.config, path)
    run.student.load_state_dict(state["student"])
    run.teacher.load_state_dict(state["teacher"])
    run.dino_loss.center.copy_(state["center"])
    if run.patch_loss is not None and "patch_center" in state:
        run.patch_loss.center.copy_(state["patch_center"])
    log.info("initialised from %s (step %d of that run)", path, int(state.get("step", 0)))


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
        last = make_views_and_step(batch_data, step=run.step, epoch=epoch, config=config, sched=run.sched,
                                   crops=config.crops(), student=run.student,
                                   ddp_student=run.ddp_student, teacher=run.teacher,
                                   optimizer=run.optimizer, dino_loss=run.dino_loss,
                                   generator=run.generator, device=info.device,
                                   fkd_teacher=run.fkd_teacher, patch_loss=run.patch_loss)
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


#: The linear probe must rise at least this much (patch Jaccard) for a run to count as having learned features.
PROBE_RISE = 0.01


def probe_verdict(start: float | None, end: float) -> str:
    """What the linear probe says about a run's features: ``start`` and ``end`` patch Jaccard (``start`` None
    when unknown). A probe that does not rise by :data:`PROBE_RISE` means the features are no better than at
    the start, whatever the collapse monitor says (a run can be free of collapse and still learn nothing)."""
    if start is None:
        return f"{end:.3f} at the end (no start value to compare)"
    change = end - start
    if change >= PROBE_RISE:
        return f"{start:.3f} at the start -> {end:.3f} ({change:+.3f}): the features improved"
    worse = "got worse" if change <= -PROBE_RISE else "did not improve"
    return (f"{start:.3f} at the start -> {end:.3f} ({change:+.3f}): NOT LEARNING: the features {worse} "
            f"(a rise of at least {PROBE_RISE} is expected); the segmentation decoder may still have learned")


def _probe_start(result: PretrainResult) -> float | None:
    """The probe's start value of a run: from the result, else (a resumed run) from its log."""
    if "probe_init_jaccard" in result.probe:
        return float(result.probe["probe_init_jaccard"])
    path = Path(result.out_dir) / "log.jsonl"
    if path.exists():
        for r in read_log(path):
            if r.get("event") == "probe" and "probe_init_jaccard" in r:
                return float(r["probe_init_jaccard"])
    return None


def health_line(result: PretrainResult) -> str:
    """The final line of ``pretrain``: the linear probe (start -> end, with :func:`probe_verdict`) and the
    collapse monitor's status."""
    probe = result.probe
    if "probe_jaccard" in probe:
        where = "held-out" if probe.get("probe_heldout") else "training"
        text = (f"linear probe (patch Jaccard vs pseudo-masks, {probe['probe_n_images']} {where} images): "
                f"{probe_verdict(_probe_start(result), float(probe['probe_jaccard']))}")
    else:
        text = "linear probe: off"
    collapse = result.collapse
    if not collapse:
        return f"{text}; collapse: not monitored"
    if collapse.get("episodes"):
        return f"{text}; WARNING: DINO collapse ({episodes_text(collapse['episodes'])}; now: {collapse['status']})"
    ongoing = {k: n for k, n in collapse.get("runs", {}).items() if n >= min(collapse.get("patience", 50), 10)}
    if ongoing:  # a run shorter than the patience can end inside a collapse the detector has not flagged yet
        what = ", ".join(f"{k} for the last {n} steps" for k, n in ongoing.items())
        return (f"{text}; collapse: none flagged, but the teacher sits at {what} (under --collapse-patience "
                f"{collapse.get('patience')}): check pictures/collapse.png")
    return f"{text}; collapse: none" + ("" if "NOT LEARNING" in text else " (healthy)")


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
        lines += [f"  WARNING: {w}" for w in warnings] or ["  collapse: none"]
    probes = [r for r in records if r.get("event") == "probe"]
    for r in probes:
        prefix = "probe_init_" if "probe_init_jaccard" in r else "probe_"
        lines.append(f"  linear probe ({'start' if 'init' in prefix else 'end'}, step {r['step']}): patch Jaccard "
                     f"{r[prefix + 'jaccard']:.3f}, balanced accuracy {r[prefix + 'balanced_accuracy']:.3f} on "
                     f"{r[prefix + 'n_images']} {'held-out' if r[prefix + 'heldout'] else 'training'} images")
    starts = [r["probe_init_jaccard"] for r in probes if "probe_init_jaccard" in r]
    ends = [r["probe_jaccard"] for r in probes if "probe_jaccard" in r]
    if ends:
        lines.append(f"  features: {probe_verdict(starts[0] if starts else None, ends[-1])}")
    return "\n".join(lines)
