"""The masked-patch (iBOT-style) objective: the loss against a loop reference, its centre, the masks, the masked
backbone pass, one training step and a pretraining run that logs it and resumes only with it."""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from test_pretrain import TINY, shards  # noqa: F401  (the tiny config and its synthetic shards fixture)

from trainer.data.multicrop import multi_crop
from trainer.engine.checkpoint import load_checkpoint
from trainer.engine.run_log import read_log
from trainer.engine.schedules import param_groups
from trainer.losses.dino import DINOLoss
from trainer.losses.masked_patch import MaskedPatchLoss, random_patch_masks
from trainer.models.backbone import forward_tokens, forward_tokens_masked
from trainer.train.config import PretrainConfig, Schedules
from trainer.train.objective import train_step
from trainer.train.pretrain import LATEST, pretrain

MASKED = dataclasses.replace(TINY, masked_patch_weight=2.0, masked_patch_prob=1.0, picture_every=0)


def reference_loss(student: np.ndarray, teacher: np.ndarray, center: np.ndarray, t_temp: float,
                   s_temp: float) -> float:
    """mean over rows of -sum_k softmax((t - c) / t_temp)_k log softmax(s / s_temp)_k, with loops in float64."""
    total = 0.0
    for s, t in zip(student.astype(np.float64), teacher.astype(np.float64)):
        zt = (t - center) / t_temp
        pt = np.exp(zt - zt.max())
        pt /= pt.sum()
        zs = s / s_temp
        log_ps = zs - (zs.max() + math.log(np.exp(zs - zs.max()).sum()))
        total += -(pt * log_ps).sum()
    return total / len(student)


def test_loss_matches_a_loop_reference_and_updates_its_centre():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(7, 12)).astype(np.float32), rng.normal(size=(7, 12)).astype(np.float32)
    loss = MaskedPatchLoss(12, student_temp=0.1, center_momentum=0.9)
    loss.center.copy_(torch.from_numpy(rng.normal(size=(1, 12)).astype(np.float32)))
    c0 = loss.center.numpy().copy()
    got = loss(torch.from_numpy(s), torch.from_numpy(t), 0.04)
    assert got.item() == pytest.approx(reference_loss(s, t, c0[0], 0.04, 0.1), rel=1e-5)
    np.testing.assert_allclose(loss.center.numpy(), 0.9 * c0 + 0.1 * t.mean(axis=0, keepdims=True),
                               rtol=1e-5, atol=1e-7)
    # a student that already predicts the sharpened teacher loses less than one that predicts something else
    sharp = torch.from_numpy((t - loss.center.numpy()) / 0.04 * 0.1)
    assert loss(sharp, torch.from_numpy(t), 0.04, update_center=False) < loss(
        torch.from_numpy(s), torch.from_numpy(t), 0.04, update_center=False)


def test_no_masked_patch_gives_zero_and_keeps_the_centre():
    loss = MaskedPatchLoss(5)
    loss.center.fill_(0.3)
    s = torch.zeros(0, 5, requires_grad=True)
    out = loss(s, torch.zeros(0, 5), 0.04)
    assert out.item() == 0.0 and out.requires_grad
    assert torch.all(loss.center == 0.3)
    with pytest.raises(ValueError, match=r"expected two \(M, 5\) tensors"):
        loss(torch.zeros(3, 4), torch.zeros(3, 4), 0.04)


def test_masks_hide_the_drawn_share_of_the_chosen_images():
    gen = torch.Generator().manual_seed(1)
    masks = random_patch_masks(4000, 100, ratio=(0.1, 0.5), prob=0.5, generator=gen)
    per_image = masks.sum(dim=1).float()
    masked = per_image > 0
    assert masks.shape == (4000, 100) and masks.dtype == torch.bool
    assert abs(masked.float().mean().item() - 0.5) < 0.03  # prob
    assert per_image[masked].min() >= 10 and per_image[masked].max() <= 50  # ratio 0.1-0.5 of 100
    assert abs(per_image[masked].mean().item() - 30) < 1.0  # uniform ratio: mean 0.3
    assert masks[:, :50].float().mean().item() == pytest.approx(masks[:, 50:].float().mean().item(), abs=0.01)
    again = random_patch_masks(4000, 100, ratio=(0.1, 0.5), prob=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(masks, again)
    fixed = random_patch_masks(3, 20, ratio=(0.25, 0.25), prob=1.0, generator=gen)
    assert fixed.sum(dim=1).tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match="ratio"):
        random_patch_masks(2, 4, ratio=(0.6, 0.2))


def test_masked_pass_equals_the_plain_pass_with_nothing_hidden_and_trains_the_token():
    torch.manual_seed(0)
    model = MASKED.build_model().eval()
    assert model.mask_token is not None and torch.all(model.mask_token == 0)
    x = torch.randn(2, 3, 32, 32)
    n = (32 // 16) ** 2
    none = torch.zeros(2, n, dtype=torch.bool)
    plain = forward_tokens(model.backbone, x)
    same = forward_tokens_masked(model.backbone, x, none, model.mask_token)
    torch.testing.assert_close(same[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(same[1], plain[1], rtol=0, atol=0)
    some = none.clone()
    some[0, 1] = True
    with torch.no_grad():
        model.mask_token.normal_()
    cls, patches = forward_tokens_masked(model.backbone, x, some, model.mask_token)
    assert not torch.allclose(cls[0], plain[0][0]) and torch.allclose(cls[1], plain[0][1], atol=1e-6)
    patches.sum().backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="masks: expected"):
        forward_tokens_masked(model.backbone, x, torch.zeros(2, n + 1, dtype=torch.bool), model.mask_token)
    with pytest.raises(ValueError, match="no mask_token"):
        TINY.build_model()([x], masks=none)


def test_train_step_adds_the_weighted_masked_patch_term():
    torch.manual_seed(0)
    b = 4
    images = torch.randint(0, 256, (b, 3, 64, 64), dtype=torch.uint8)
    maps = torch.rand(b, 3, 64, 64)
    maps[:, 0] = (maps[:, 0] > 0.5).float()
    config = dataclasses.replace(MASKED, freeze_last_layer=0)
    views = multi_crop(images, maps, config=config.crops(), generator=torch.Generator().manual_seed(0),
                       binary_channels=(0,))
    student = config.build_model()
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    with torch.no_grad():
        student.mask_token.normal_()
    n = (config.img_size // 16) ** 2
    masks = random_patch_masks(2 * b, n, ratio=(0.5, 0.5), prob=1.0, generator=torch.Generator().manual_seed(2))
    dino = DINOLoss(config.out_dim, n_crops=2 + config.n_local, n_epochs=1, warmup_teacher_temp_epochs=0)
    patch_loss = MaskedPatchLoss(config.out_dim)
    with torch.no_grad():  # the expected term, computed before the step changes the student
        _, _, s_patches = student(views.global_views, segment=False, project=False, masks=masks, return_patches=True)
        _, _, t_patches = teacher(views.global_views, segment=False, project=False, return_patches=True)
        hidden = masks.reshape(-1)
        want = MaskedPatchLoss(config.out_dim)(student.head(s_patches.reshape(-1, s_patches.shape[-1])[hidden]),
                                                teacher.head(t_patches.reshape(-1, t_patches.shape[-1])[hidden]),
                                                dino.teacher_temp_at(3)).item()
    token_before = student.mask_token.detach().clone()
    kw = dict(step=3, epoch=0, config=config, sched=Schedules.build(config, steps_per_epoch=5, total_batch=b),
              student=student, ddp_student=student, teacher=teacher,
              optimizer=torch.optim.AdamW(param_groups(student, config.weight_decay)), dino_loss=dino)
    out = train_step(views, torch.ones(b), **kw, patch_loss=patch_loss, masks=masks)
    assert out["masked_patch"] == pytest.approx(want, rel=1e-5)
    lam = kw["sched"].lam[3]
    assert out["loss"] == pytest.approx(out["dino"] + 2.0 * out["masked_patch"] + lam * out["seg"], rel=1e-5)
    assert not torch.equal(student.mask_token, token_before)  # the token learns
    assert patch_loss.center.abs().sum() > 0  # its own centre moved
    with pytest.raises(ValueError, match="needed exactly when config.masked_patch_weight > 0"):
        train_step(views, torch.ones(b), **kw)


def test_config_checks():
    with pytest.raises(ValueError, match="masked_patch_weight: expected >= 0"):
        PretrainConfig(masked_patch_weight=-1)
    with pytest.raises(ValueError, match="needs the teacher"):
        PretrainConfig(masked_patch_weight=1.0, distill=False)
    with pytest.raises(ValueError, match="masked_patch_ratio"):
        PretrainConfig(masked_patch_ratio=(0.5, 0.2))


def test_pretraining_logs_the_term_saves_its_centre_and_resumes_only_with_it(shards, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    config = dataclasses.replace(MASKED, epochs=1)
    pretrain(shards, out, config, device="cpu", progress=False)
    steps = [r for r in read_log(out / "log.jsonl") if "loss" in r and "event" not in r]
    assert steps and all(r["masked_patch"] > 0 and np.isfinite(r["masked_patch"]) for r in steps)
    state = load_checkpoint(out / LATEST)
    assert state["patch_center"].shape == (1, config.out_dim) and state["patch_center"].abs().sum() > 0
    assert "mask_token" in state["student"]
    with pytest.raises(ValueError, match="made with the masked-patch loss"):
        pretrain(shards, out, dataclasses.replace(config, masked_patch_weight=0.0, epochs=2), device="cpu",
                 progress=False)
    again = pretrain(shards, out, dataclasses.replace(config, epochs=2), device="cpu", progress=False)
    assert again.resumed_from is not None and again.step == 2 * len(steps)
