"""Foundation knowledge distillation (DINO-Mix FKD): the loss against a NumPy reference, the frozen teacher, the
token-grid match across patch sizes, gradients through ``train_step``, a pretraining run that logs and resumes,
an ``export.pt`` as the teacher, and the config/CLI boundary."""
from __future__ import annotations

import copy
import dataclasses
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from test_pretrain import TINY, _record  # the tiny config and synthetic shard records of the pretraining tests

from pipeline.shards import write_shard
from trainer.data.multicrop import multi_crop
from trainer.engine.checkpoint import load_checkpoint
from trainer.engine.export import export_model, read_export
from trainer.engine.run_log import read_log
from trainer.engine.schedules import param_groups
from trainer.losses.dino import DINOLoss
from trainer.losses.fkd import fkd_loss
from trainer.models.backbone import patch_tokens
from trainer.models.dino_model import DINOModel
from trainer.models.fkd import FKDProjector, FoundationTeacher
from trainer.train import pretrain as pretrain_module
from trainer.train.config import PretrainConfig, Schedules
from trainer.train.objective import train_step
from trainer.train.pretrain import LATEST, pretrain

TEACHER = "vit_tiny_patch16_224"  # a cheap random "foundation" stand-in (the real one is a file on disk)
FKD = dataclasses.replace(TINY, fkd_weight=1.0, fkd_teacher=TEACHER, picture_every=0)


def reference_fkd_loss(student: np.ndarray, teacher: np.ndarray, eps: float = 1e-8) -> float:
    """mean over (b, n) of 1 - cos(s_bn, t_bn), with explicit loops in float64."""
    total, count = 0.0, 0
    for b in range(student.shape[0]):
        for n in range(student.shape[1]):
            s, t = student[b, n], teacher[b, n]
            dot = sum(float(x) * float(y) for x, y in zip(s, t))
            norm_s = max(float(np.sqrt(sum(float(x) ** 2 for x in s))), eps)
            norm_t = max(float(np.sqrt(sum(float(y) ** 2 for y in t))), eps)
            total += 1.0 - dot / (norm_s * norm_t)
            count += 1
    return total / count


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 4, 8), (3, 9, 33)])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_loss_matches_reference(shape, scale):
    rng = np.random.default_rng(sum(shape) + int(scale * 10))
    s = rng.normal(size=shape) * scale
    t = rng.normal(size=shape) * scale + 0.3 * s  # correlated, so the loss is away from 1
    got = fkd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32))
    assert got.dtype == torch.float32 and got.shape == ()
    assert got.item() == pytest.approx(reference_fkd_loss(s, t), rel=1e-5, abs=1e-6)


def test_loss_is_0_for_same_directions_1_for_orthogonal_2_for_opposite():
    s = torch.randn(2, 5, 16)
    scales = torch.rand(2, 5, 1) * 10 + 0.1  # per-token positive scales: only directions count
    assert fkd_loss(s, s * scales).item() == pytest.approx(0.0, abs=1e-6)
    assert fkd_loss(s, -s * scales).item() == pytest.approx(2.0, abs=1e-6)
    e = torch.eye(4)
    assert fkd_loss(e[None, :2], e[None, 2:]).item() == pytest.approx(1.0, abs=1e-7)
    zero = fkd_loss(torch.zeros(1, 2, 4), torch.randn(1, 2, 4))  # a zero token: cosine 0, not NaN
    assert zero.item() == pytest.approx(1.0)


def test_loss_gradient_reaches_student_only_and_shapes_are_checked():
    s = torch.randn(2, 3, 8, requires_grad=True)
    t = torch.randn(2, 3, 8, requires_grad=True)
    fkd_loss(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    with pytest.raises(ValueError, match=r"student, teacher: .*\(2, 3, 8\) and \(2, 4, 8\)"):
        fkd_loss(torch.zeros(2, 3, 8), torch.zeros(2, 4, 8))
    with pytest.raises(ValueError, match="student, teacher"):
        fkd_loss(torch.zeros(3, 8), torch.zeros(3, 8))


def test_projector_maps_student_width_to_teacher_width():
    proj = FKDProjector(192, 384)
    assert proj(torch.randn(2, 5, 192)).shape == (2, 5, 384)
    assert [m.out_features for m in proj.mlp if isinstance(m, torch.nn.Linear)] == [384, 384]
    with pytest.raises(ValueError, match="in_dim, out_dim"):
        FKDProjector(0, 8)


def test_teacher_is_frozen_stays_in_eval_and_warns_without_weights(caplog):
    with caplog.at_level(logging.WARNING, logger="trainer.models.fkd"):
        teacher = FoundationTeacher(TEACHER, img_size=32)
    assert "random weights" in caplog.text and "only meaningful for tests" in caplog.text
    assert all(not p.requires_grad for p in teacher.parameters())
    assert teacher.train() is teacher
    assert not teacher.training and not any(m.training for m in teacher.modules())
    torch.nn.Sequential(teacher).train()  # a parent switching to train mode does not reach it either
    assert not any(m.training for m in teacher.modules())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = teacher(x, (2, 2))
    assert not out.requires_grad and out.grad_fn is None


@pytest.mark.parametrize("name,p_t,dim", [("vit_small_patch14_dinov2", 14, 384), ("vit_tiny_patch16_224", 16, 192)])
def test_teacher_grid_equals_student_grid_for_patch_14_and_16(name, p_t, dim):
    """Student ViT-Ti/16 tokens at (H/16, W/16); the teacher sees the views resized to grid * p_t."""
    torch.manual_seed(0)
    student = DINOModel("vit_tiny_patch16_224", img_size=32, out_dim=16, head_hidden=16, bottleneck_dim=8,
                        decoder_hidden=8, drop_path_rate=0.0, fkd_dim=dim).eval()
    teacher = FoundationTeacher(name, img_size=32)
    assert teacher.patch_size == p_t and teacher.embed_dim == dim
    for hw, grid in (((32, 32), (2, 2)), ((48, 32), (3, 2))):
        views = torch.randn(2, 3, *hw)
        with torch.no_grad():
            _, _, s = student([views], segment=False, project=False, fkd=True)
        t = teacher(views, grid)
        assert s.shape == t.shape == (2, grid[0] * grid[1], dim)
        resized = F.interpolate(views, size=(grid[0] * p_t, grid[1] * p_t), mode="bilinear", align_corners=False,
                                antialias=True)
        with torch.no_grad():  # 32 px is no multiple of 14: without the resize a patch-14 timm ViT refuses it
            torch.testing.assert_close(t, patch_tokens(teacher.model, resized))
    with pytest.raises(ValueError, match="views, grid"):
        teacher(views, (0, 2))


def test_dino_model_keeps_its_two_outputs_by_default():
    model = DINOModel("vit_tiny_patch16_224", img_size=32, out_dim=16, head_hidden=16, bottleneck_dim=8,
                      decoder_hidden=8, drop_path_rate=0.0)
    assert model.fkd_proj is None
    out = model([torch.randn(2, 3, 32, 32)])
    assert len(out) == 2 and out[0].shape == (2, 16) and out[1].shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="fkd: this model has no fkd_proj"):
        model([torch.randn(2, 3, 32, 32)], fkd=True)


def _step_fixture(config: PretrainConfig, teacher: FoundationTeacher | None):
    torch.manual_seed(0)
    b = 4
    images = torch.randint(0, 256, (b, 3, 64, 64), dtype=torch.uint8)
    maps = torch.rand(b, 3, 64, 64)
    maps[:, 0] = (maps[:, 0] > 0.5).float()
    views = multi_crop(images, maps, config=config.crops(), generator=torch.Generator().manual_seed(0),
                       binary_channels=(0,))
    student = config.build_model(fkd_dim=teacher.embed_dim if teacher else None)
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    kw = dict(step=3, epoch=0, config=config, sched=Schedules.build(config, steps_per_epoch=5, total_batch=b),
              student=student, ddp_student=student, teacher=ema,
              optimizer=torch.optim.AdamW(param_groups(student, config.weight_decay)),
              dino_loss=DINOLoss(config.out_dim, n_crops=2 + config.n_local, n_epochs=1, warmup_teacher_temp_epochs=0))
    return views, torch.ones(b), student, kw


@pytest.mark.parametrize("distill,lambda_seg", [(True, 0.5), (False, 0.0)])
def test_train_step_trains_student_and_projector_but_not_the_foundation_teacher(distill, lambda_seg):
    config = dataclasses.replace(FKD, distill=distill, lambda_seg=lambda_seg, fkd_weight=2.5,
                                 fkd_teacher="vit_small_patch14_dinov2", freeze_last_layer=0)
    teacher = FoundationTeacher(config.fkd_teacher, img_size=config.img_size)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    views, valid, student, kw = _step_fixture(config, teacher)
    with torch.no_grad():  # the expected FKD term, computed independently before the step changes the student
        _, _, feats = student(views.global_views, segment=False, project=False, fkd=True)
        resized = F.interpolate(torch.cat(views.global_views), size=(28, 28), mode="bilinear", antialias=True)
        want = fkd_loss(feats, patch_tokens(teacher.model, resized)).item()
    backbone_before = student.backbone.patch_embed.proj.weight.detach().clone()
    out = train_step(views, valid, **kw, fkd_teacher=teacher)
    assert out["fkd"] == pytest.approx(want, rel=1e-5)
    lam = kw["sched"].lam[3]
    expected = 2.5 * out["fkd"] + out.get("dino", 0.0) + (lam * out["seg"] if "seg" in out else 0.0)
    assert out["loss"] == pytest.approx(expected, rel=1e-5)
    assert ("dino" in out) == distill
    for name, module in (("backbone", student.backbone), ("fkd_proj", student.fkd_proj)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    assert not torch.equal(student.backbone.patch_embed.proj.weight, backbone_before)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert not teacher.training
    if not distill:  # FKD alone drives the backbone: the DINO head gets no gradient
        assert all(p.grad is None for p in student.head.parameters())


def test_train_step_needs_the_teacher_exactly_when_fkd_is_on():
    kw = dict(step=0, epoch=0, sched=None, student=None, ddp_student=None, teacher=None, optimizer=None,
              dino_loss=None)  # checked before anything is used
    with pytest.raises(ValueError, match="fkd_teacher: needed exactly when config.fkd_weight > 0"):
        train_step(None, None, config=FKD, **kw)
    with pytest.raises(ValueError, match=r"fkd_weight 0.0, fkd_teacher given"):
        train_step(None, None, config=TINY, fkd_teacher=torch.nn.Identity(), **kw)


def test_config_names_what_fkd_needs():
    with pytest.raises(ValueError, match="fkd_weight > 0 needs fkd_teacher"):
        dataclasses.replace(TINY, fkd_weight=1.0)
    with pytest.raises(ValueError, match="fkd_weight: expected >= 0"):
        dataclasses.replace(TINY, fkd_weight=-1.0, fkd_teacher=TEACHER)
    with pytest.raises(ValueError, match="fkd_weight is 0, which turns FKD off"):
        dataclasses.replace(TINY, fkd_teacher=TEACHER)
    assert dataclasses.replace(TINY, fkd_weight=1.0, fkd_weights="export.pt").fkd_teacher is None  # inferred later
    fkd_only = dataclasses.replace(FKD, distill=False, lambda_seg=0.0)  # FKD alone is something to train
    assert fkd_only.fkd_weight == 1.0
    with pytest.raises(ValueError, match="leaves nothing to train"):
        dataclasses.replace(TINY, distill=False, lambda_seg=0.0)
    with pytest.raises(ValueError, match="name: a timm ViT name is needed"):
        FoundationTeacher(None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("fkd_shards")
    for k in range(2):
        recs = [_record(4 * k + j) for j in range(4)]
        write_shard(out / f"shard-{k:05d}.h5", recs, size=64, config_json="{}", config_hash="h",
                    planned_ids=[r.id for r in recs], rejects=[], versions={})
    return out


@pytest.fixture(scope="module")
def export_file(tmp_path_factory):
    """An edgedino export.pt of a tiny DINOModel (what 'pretrain' writes), and that model."""
    torch.manual_seed(1)
    model = TINY.build_model().eval()
    path = export_model(model, TINY, tmp_path_factory.mktemp("export") / "export.pt", step=7)
    return path, model


def test_export_loads_as_teacher_with_its_arch_inferred(export_file, tmp_path):
    path, model = export_file
    teacher = FoundationTeacher(weights=path)
    assert teacher.arch == TINY.arch and teacher.weights == str(path)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x, (2, 2)), patch_tokens(model.backbone, x))
    with pytest.raises(ValueError, match="export of a 'vit_tiny_patch16_224' backbone, not 'vit_small"):
        FoundationTeacher("vit_small_patch16_224", weights=path)
    other = tmp_path / "plain.pt"
    torch.save({"model": model.backbone.state_dict()}, other)  # a plain checkpoint needs a name
    with pytest.raises(ValueError, match="plain.pt is not one"):
        FoundationTeacher(weights=other)
    assert FoundationTeacher(TINY.arch, weights=other, img_size=32).arch == TINY.arch


def test_pretrain_with_fkd_logs_resumes_and_records_the_teacher(shards, export_file, tmp_path):
    path, _ = export_file
    config = dataclasses.replace(FKD, epochs=1, fkd_teacher=None, fkd_weights=str(path))
    out = tmp_path / "run"
    first = pretrain(shards, out, config, device="cpu", progress=False)
    records = read_log(out / "log.jsonl")
    start = [r for r in records if r.get("event") == "start"][0]
    assert start["config"]["fkd_teacher"] == TINY.arch  # inferred from the export and recorded
    steps = [r for r in records if "loss" in r and "event" not in r]
    assert len(steps) == first.step == 2
    assert all(0.0 < r["fkd"] < 2.0 and r["dino"] > 0 and r["seg"] > 0 for r in steps)
    epoch = [r for r in records if r.get("event") == "epoch"][0]
    assert epoch["fkd"] == pytest.approx(np.mean([r["fkd"] for r in steps]))
    state = load_checkpoint(out / LATEST)
    assert any(k.startswith("fkd_proj.") for k in state["student"])
    assert state["config"]["fkd_teacher"] == TINY.arch
    more = pretrain(shards, out, dataclasses.replace(config, epochs=2), device="cpu", progress=False)
    assert more.resumed_from == 2 and more.step == 4 and 0.0 < more.last["fkd"] < 2.0
    export = read_export(out / "export.pt")
    assert not any(k.startswith("fkd_proj") for k in export["backbone"])  # the projector is not exported
    with pytest.raises(ValueError, match="another architecture.*fkd_teacher"):
        pretrain(shards, out, dataclasses.replace(TINY, epochs=3, picture_every=0), device="cpu", progress=False)


def test_cli_passes_the_fkd_options_into_the_config(shards, tmp_path, monkeypatch, export_file):
    import cli

    seen = {}

    def fake_pretrain(shards, out, config, **kw):
        seen["config"] = config
        return pretrain_module.PretrainResult(out_dir=out, step=0, epochs=1, resumed_from=None, last={})

    monkeypatch.setattr(pretrain_module, "pretrain", fake_pretrain)
    base = ["pretrain", "--shards", str(shards), "--out", str(tmp_path / "o"), "--preset", "cpu"]
    result = CliRunner().invoke(cli.main, base + ["--fkd-weight", "1.5", "--fkd-teacher", "vit_small_patch14_dinov2",
                                                  "--fkd-weights", str(export_file[0])])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.fkd_weight, config.fkd_teacher, config.fkd_weights) == (
        1.5, "vit_small_patch14_dinov2", str(export_file[0]))
    result = CliRunner().invoke(cli.main, base + ["--fkd-weight", "1"])
    assert result.exit_code != 0 and "fkd_weight > 0 needs fkd_teacher" in result.output
