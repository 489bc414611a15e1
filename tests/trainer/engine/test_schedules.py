"""Per-step schedules, parameter groups, last-layer freeze, EMA and gradient clipping."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trainer.engine.schedules import (
    cancel_last_layer_grads,
    clip_gradients,
    cosine_schedule,
    lambda_ramp,
    param_groups,
    set_lr_wd,
    update_momentum,
)
from trainer.models.dino_head import DINOHead


@pytest.mark.parametrize("base,final,total,warmup", [(5e-4, 1e-6, 100, 10), (0.04, 0.4, 50, 0), (0.996, 1.0, 7, 0)])
def test_cosine_endpoints_warmup_and_monotonicity(base, final, total, warmup):
    s = cosine_schedule(base, final, total, warmup_steps=warmup)
    assert s.shape == (total,)
    assert s[warmup] == pytest.approx(base) and s[-1] == pytest.approx(final)
    if warmup:
        assert s[0] == 0.0 and np.all(np.diff(s[: warmup + 1]) > 0)
        np.testing.assert_allclose(s[:warmup], base * np.arange(warmup) / warmup)
    tail = np.diff(s[warmup:])
    assert np.all(tail <= 0) if final < base else np.all(tail >= 0)
    # half-way through the cosine part: the mean of base and final
    n = total - warmup
    if (n - 1) % 2 == 0:
        assert s[warmup + (n - 1) // 2] == pytest.approx((base + final) / 2)


def test_cosine_start_warmup_and_errors():
    s = cosine_schedule(1.0, 0.0, 20, warmup_steps=5, start_warmup=0.5)
    assert s[0] == 0.5 and s[5] == 1.0
    assert cosine_schedule(1.0, 0.0, 1).tolist() == [1.0]
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(1.0, 0.0, 10, warmup_steps=11)


@pytest.mark.parametrize("shape", ["linear", "cosine", "sigmoid"])
def test_lambda_ramp(shape):
    lam = lambda_ramp(0.5, 100, 20, delay_steps=10, shape=shape)
    assert lam.shape == (100,)
    assert np.all(lam[:10] == 0) and np.all(lam[30:] == 0.5)
    assert np.all(np.diff(lam) >= 0) and lam[20] < 0.5
    if shape == "linear":
        assert lam[20] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="shape"):
        lambda_ramp(0.5, 10, 2, shape="step")


def test_param_groups_no_decay_on_biases_norms_and_weight_norm_gain():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), DINOHead(8, 16, 12, 6, norm_last_layer=False))
    groups = {g["name"]: g for g in param_groups(model, 0.04)}
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.04 and groups["no_decay"]["weight_decay"] == 0.0
    gain, direction = (f"2.last_layer.parametrizations.weight.original{i}" for i in (0, 1))
    assert {"0.weight", "2.mlp.0.weight", direction} <= decay
    assert {"0.bias", "1.weight", "1.bias", "2.mlp.0.bias", gain} <= no_decay
    assert decay.isdisjoint(no_decay) and decay | no_decay == set(names.values())
    # a frozen gain (norm_last_layer=True) is left out altogether
    frozen = DINOHead(8, 16, 12, 6, norm_last_layer=True)
    all_params = [p for g in param_groups(frozen) for p in g["params"]]
    assert id(frozen.last_layer.parametrizations.weight.original0) not in {id(p) for p in all_params}
    assert len(all_params) == sum(p.requires_grad for p in frozen.parameters())
    # set_lr_wd: weight decay scheduled on the decay group only
    opt = torch.optim.AdamW(param_groups(model, 0.04), lr=1.0)
    set_lr_wd(opt, 0.1, 0.3)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.1, 0.3), (0.1, 0.0)]


def test_update_momentum_formula():
    torch.manual_seed(0)
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    update_momentum(student, teacher, 0.9)
    for t, t0, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s.detach())
    update_momentum(student, teacher, 0.0)
    for t, s in zip(teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, s.detach())
    with pytest.raises(ValueError, match="architecture"):
        update_momentum(nn.Linear(3, 2), nn.Linear(3, 3), 0.9)


def test_cancel_last_layer_grads_only_touches_last_layer():
    head = DINOHead(8, 16, 12, 6, norm_last_layer=False)
    head(torch.randn(4, 8)).pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in head.named_parameters()}
    cancel_last_layer_grads(head, epoch=1, freeze_epochs=1)  # after the freeze: nothing happens
    assert all(p.grad is not None for p in head.parameters())
    cancel_last_layer_grads(head, epoch=0, freeze_epochs=1)
    for n, p in head.named_parameters():
        if "last_layer" in n:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, grads[n])
    assert any("last_layer" in n for n in grads) and any("mlp" in n for n in grads)


def test_clip_gradients_per_parameter_and_global():
    model = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 1))
    for p in model.parameters():
        p.grad = torch.full_like(p, 2.0)
    norms = [float(p.grad.norm()) for p in model.parameters()]
    total = clip_gradients(model, 3.0)
    assert total == pytest.approx(float(np.linalg.norm(norms)), rel=1e-5)
    for p, n in zip(model.parameters(), norms):
        assert float(p.grad.norm()) == pytest.approx(min(n, 3.0), rel=1e-4)
    for p in model.parameters():
        p.grad = torch.full_like(p, 2.0)
    clip_gradients(model, 3.0, per_parameter=False)
    assert float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))) == \
        pytest.approx(3.0, rel=1e-4)


def test_param_groups_lr_scales_give_a_submodule_its_own_rate():
    model = nn.Module()
    model.backbone = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
    model.decoder = nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))
    groups = param_groups(model, 0.04, lr_scales={"decoder": 10.0})
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"decay", "no_decay", "decay:decoder", "no_decay:decoder"}
    ids = {id(p) for p in model.decoder.parameters()}
    assert {id(p) for g in groups if g["name"].endswith(":decoder") for p in g["params"]} == ids
    assert not ids & {id(p) for g in groups if not g["name"].endswith(":decoder") for p in g["params"]}
    assert by_name["decay:decoder"]["weight_decay"] == 0.04 and by_name["no_decay:decoder"]["weight_decay"] == 0.0
    opt = torch.optim.AdamW(groups, lr=1.0)
    set_lr_wd(opt, 0.01, 0.2)
    got = {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert got == {"decay": (0.01, 0.2), "no_decay": (0.01, 0.0),
                   "decay:decoder": (pytest.approx(0.1), 0.2), "no_decay:decoder": (pytest.approx(0.1), 0.0)}
    # no scales: the two DINO groups exactly as before
    assert [g["name"] for g in param_groups(model)] == ["decay", "no_decay"]
