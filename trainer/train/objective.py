"""The pretraining objective (the loss mix): DINO self-distillation plus an auxiliary segmentation loss on the
pseudo-masks, and the optional terms, in one optimisation step.

``L = L_DINO + lambda_t * L_seg`` (docs/METHOD.md, section 5.4): the student sees 2 global + N local views made on the
device from the shard images (``trainer.data.multicrop``); the EMA teacher sees the global views; the decoder on the
student's patch tokens is trained against each global view's pseudo-mask, transformed with the same grid.
Ablations: ``lambda_seg=0`` is plain DINO; ``distill=False`` is pseudo-mask supervision only.
Option ``fkd_weight > 0`` (DINO-Mix FKD, ``trainer.models.fkd``) adds ``fkd_weight * L_FKD``: the student's projected
patch tokens of the global views aligned to a frozen foundation ViT's (``fkd_teacher``/``fkd_weights``);
``koleo_weight`` (:mod:`trainer.losses.koleo`), ``masked_patch_weight`` (:mod:`trainer.losses.masked_patch`),
``affine_weight`` and ``spatial_weight`` (S^3-Net's terms on the decoder) add theirs.
As dinov2's meta-architecture holds its losses, this module holds the mix; each loss lives in
:mod:`trainer.losses`, and the loop (:mod:`trainer.train.pretrain`) calls :func:`make_views_and_step` per batch.
"""
from __future__ import annotations

import math

import torch

from trainer.data.multicrop import multi_crop
from trainer.engine.schedules import cancel_last_layer_grads, clip_gradients, set_lr_wd, update_momentum
from trainer.losses.affine import affine_loss, rot90
from trainer.losses.fkd import fkd_loss
from trainer.losses.koleo import koleo_loss
from trainer.losses.masked_patch import random_patch_masks
from trainer.losses.seg import seg_loss
from trainer.losses.spatial import spatial_loss
from trainer.models.backbone import patch_grid


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def make_views_and_step(batch_data, *, step, epoch, config, sched, crops, student, ddp_student, teacher,
                        optimizer, dino_loss, generator, device, fkd_teacher=None, patch_loss=None
                        ) -> dict[str, float]:
    """One optimisation step on a loader batch: the batch's multi-crop views (and, with the masked-patch loss,
    its random patch masks) drawn from ``generator``, then :func:`train_step`; returns the logged numbers."""
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
