"""Per-step schedules and the small optimisation helpers of the DINO loop.

Schedules are arrays with one value per global step (as facebookresearch/dino precomputes them), so resuming
needs only the step. Defaults from DINO (ViT-S/16): lr 5e-4 * batch / 256 with 10 warm-up epochs and cosine
decay to 1e-6, weight decay 0.04 -> 0.4, teacher momentum 0.996 -> 1, gradient clip 3.0, last layer frozen
for the first epoch.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

__all__ = [
    "cosine_schedule",
    "lambda_ramp",
    "param_groups",
    "set_lr_wd",
    "cancel_last_layer_grads",
    "update_momentum",
    "clip_gradients",
]


def cosine_schedule(
    base: float, final: float, total_steps: int, warmup_steps: int = 0, start_warmup: float = 0.0
) -> np.ndarray:
    r"""One value per global step: linear warm-up ``start_warmup -> base``, then cosine ``base -> final``.

    For step :math:`t` of :math:`T` = ``total_steps`` with :math:`W` = ``warmup_steps``:

    .. math::

        v_t = s + (b - s)\,\frac{t}{W} \quad (t < W), \qquad
        v_t = f + \tfrac12 (b - f)\Big(1 + \cos\frac{\pi (t - W)}{T - W - 1}\Big) \quad (t \ge W)

    so ``v[W] == base`` and ``v[-1] == final`` exactly (DINO's version stops one step short of ``final``).
    Used for the learning rate (``base=lr``, ``final=1e-6``), weight decay (0.04 -> 0.4, no warm-up) and
    teacher momentum (0.996 -> 1, no warm-up).

    Returns
    -------
    np.ndarray, shape (total_steps,), float64
    """
    if total_steps < 1:
        raise ValueError(f"total_steps: expected >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps: expected in [0, total_steps={total_steps}], got {warmup_steps}")
    warm = start_warmup + (base - start_warmup) * np.arange(warmup_steps) / max(warmup_steps, 1)
    n = total_steps - warmup_steps
    t = np.arange(n) / max(n - 1, 1)
    cos = final + 0.5 * (base - final) * (1.0 + np.cos(np.pi * t))
    if n == 1:
        cos = np.array([base], dtype=np.float64)
    return np.concatenate([warm, cos]).astype(np.float64)


def lambda_ramp(
    target: float, total_steps: int, ramp_steps: int, *, delay_steps: int = 0, shape: str = "linear"
) -> np.ndarray:
    r"""Weight of the auxiliary loss per global step: 0 for ``delay_steps``, ramped to ``target`` over
    ``ramp_steps``, then constant (ours: lambda ~0.5 ramped in over the first epochs).

    With :math:`r = \mathrm{clip}((t - \text{delay}) / \text{ramp}, 0, 1)`: ``'linear'`` :math:`\lambda r`;
    ``'cosine'`` :math:`\lambda (1 - \cos \pi r) / 2`; ``'sigmoid'`` :math:`\lambda e^{-5 (1 - r)^2}`
    (Laine & Aila 2017; starts near 0.007 lambda, not 0).

    Returns
    -------
    np.ndarray, shape (total_steps,), float64
    """
    shapes = ("linear", "cosine", "sigmoid")
    if shape not in shapes:
        raise ValueError(f"shape: expected one of {shapes}, got {shape!r}")
    if total_steps < 1 or ramp_steps < 0 or delay_steps < 0:
        raise ValueError(
            f"total_steps={total_steps}, ramp_steps={ramp_steps}, delay_steps={delay_steps}: "
            "expected >= 1, >= 0, >= 0"
        )
    t = np.arange(total_steps, dtype=np.float64) - delay_steps
    r = np.clip(t / ramp_steps, 0.0, 1.0) if ramp_steps > 0 else (t >= 0).astype(np.float64)
    if shape == "cosine":
        r = 0.5 * (1.0 - np.cos(np.pi * r))
    elif shape == "sigmoid":
        r = np.where(t >= 0, np.exp(-5.0 * (1.0 - r) ** 2), 0.0)
    return target * r


def _no_decay(name: str, p: torch.Tensor) -> bool:
    # biases, norm scales/shifts and every 1-D parameter; the weight-norm magnitude g of the DINO head
    return name.endswith(".bias") or p.ndim <= 1 or name.endswith("parametrizations.weight.original0")


def param_groups(model: nn.Module, weight_decay: float = 0.04, *,
                 lr_scales: dict[str, float] | None = None) -> list[dict]:
    """AdamW parameter groups: ``'decay'`` (weights) and ``'no_decay'`` (biases, norms, 1-D parameters,
    the weight-norm magnitude), as in DINO. Frozen parameters (``requires_grad=False``) are left out.

    ``lr_scales`` maps a top-level submodule name (e.g. ``{"decoder": 10.0}``) to a learning-rate factor: its
    parameters get their own pair of groups (``'decay:decoder'``, ``'no_decay:decoder'``) carrying
    ``'lr_scale'``, which :func:`set_lr_wd` multiplies into the scheduled rate. Empty groups are left out.
    Each group carries ``'name'``; :func:`set_lr_wd` schedules the weight decay of the decay groups only.
    """
    lr_scales = dict(lr_scales or {})
    groups: dict[tuple[str, str], list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        top = name.split(".", 1)[0]
        kind = "no_decay" if _no_decay(name, p) else "decay"
        groups.setdefault((kind, top if top in lr_scales else ""), []).append(p)
    out = []
    for part in ["", *lr_scales]:
        for kind in ("decay", "no_decay"):
            params = groups.get((kind, part), [])
            if part and not params:
                continue
            out.append({"params": params, "weight_decay": weight_decay if kind == "decay" else 0.0,
                        "name": f"{kind}:{part}" if part else kind, "lr_scale": lr_scales.get(part, 1.0)})
    return out


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
    """Set every group's learning rate to ``lr`` times its ``'lr_scale'`` (1 when absent), and the weight decay of
    groups whose name does not start with ``'no_decay'``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is not None and not str(group.get("name", "")).startswith("no_decay"):
            group["weight_decay"] = weight_decay


def cancel_last_layer_grads(head: nn.Module, epoch: int, freeze_epochs: int = 1) -> None:
    """Drop (set to ``None``) the gradients of the DINO head's last layer while ``epoch < freeze_epochs``.

    ``head`` may be the head itself or any module containing it (the student wrapper, DDP): every parameter
    whose name contains ``last_layer`` is affected, nothing else. A ``None`` gradient makes AdamW skip the
    parameter entirely (no update, no weight decay), as in DINO.
    """
    if epoch >= freeze_epochs:
        return
    for name, p in head.named_parameters():
        if "last_layer" in name:
            p.grad = None


def _params(module: nn.Module) -> list[torch.Tensor]:
    while hasattr(module, "module") and isinstance(module.module, nn.Module):  # DDP
        module = module.module
    return list(module.parameters())


@torch.no_grad()
def update_momentum(student: nn.Module, teacher: nn.Module, m: float) -> None:
    r"""EMA of the student into the teacher: :math:`\theta_t \leftarrow m\,\theta_t + (1 - m)\,\theta_s`.

    Parameters are matched in order (same architecture; DDP wrappers are looked through); buffers are not
    touched. ``m = 1`` leaves the teacher unchanged.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"m: expected in [0, 1], got {m}")
    ps, pt = _params(student), _params(teacher)
    if len(ps) != len(pt) or any(a.shape != b.shape for a, b in zip(ps, pt)):
        raise ValueError(
            f"update_momentum: student ({len(ps)} parameters) and teacher ({len(pt)}) differ in architecture"
        )
    if m == 1.0:
        return
    torch._foreach_lerp_([p.data for p in pt], [p.data.to(p2.dtype) for p, p2 in zip(ps, pt)], 1.0 - m)


def clip_gradients(model: nn.Module | Iterable[torch.Tensor], max_norm: float, *,
                   per_parameter: bool = True) -> float:
    """Clip gradients; return the global L2 norm of all gradients before clipping.

    ``per_parameter=True`` (DINO's ``clip_gradients``): each parameter's gradient is scaled to norm
    ``<= max_norm`` on its own. ``False``: ``torch.nn.utils.clip_grad_norm_`` on the global norm.
    ``max_norm <= 0`` disables clipping (the norm is still returned).
    """
    params = model.parameters() if isinstance(model, nn.Module) else model
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norms = torch._foreach_norm(grads)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    if max_norm > 0:
        if per_parameter:
            coefs = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
            torch._foreach_mul_(grads, coefs)
        else:
            coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
            torch._foreach_mul_(grads, coef.to(grads[0].dtype))
    return float(total)
