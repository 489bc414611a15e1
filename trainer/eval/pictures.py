"""Pictures of a model at work, for people to look at during and after training."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from common.atomic import save_figure
from trainer.data.normalise import normalise
from trainer.engine.run_log import read_log
from trainer.models.backbone import forward_tokens
from trainer.models.dino_model import cls_attention


@torch.no_grad()
def pretrain_picture(model, dataset, path: str | Path, *, img_size: int, device: torch.device, n: int = 6) -> Path:
    """Image | pseudo-mask | predicted mask | class-token attention for the first ``n`` samples (a fixed batch)."""
    import matplotlib  # imported when a picture is drawn, not at start-up (it costs about a second)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [dataset[i] for i in range(min(n, len(dataset)))]
    images = torch.stack([it["image"] for it in items]).to(device)
    x = normalise(images, img_size)
    was_training = model.training
    model.eval()
    _, patches = forward_tokens(model.backbone, x)
    pred = torch.sigmoid(model.decoder(patches, (img_size, img_size), x))[:, 0].float().cpu().numpy()
    attention = cls_attention(model.backbone, x).float().cpu().numpy()
    model.train(was_training)
    cols = ["image", "pseudo-mask", "predicted mask", "CLS attention"]
    fig, axes = plt.subplots(len(items), 4, figsize=(9, 2.3 * len(items)), squeeze=False)
    for r, it in enumerate(items):
        panels = [it["image"].permute(1, 2, 0).numpy(), it["maps"][0].numpy() / 255.0, pred[r], attention[r]]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            if c == 3:
                ax.imshow(panel, cmap="magma", interpolation="nearest")
            else:
                ax.imshow(panel, cmap=None if panel.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=72)


def collapse_picture(log_path: str | Path, path: str | Path, *, patience: int | None = None) -> Path | None:
    """The collapse monitor's curves from ``log.jsonl``: entropies, loss and KL (over ``ln K``), prototypes in use.

    Left: the teacher's mean entropy and the entropy of its mean target as fractions of ``ln K``, with the
    detector's thresholds (0.95: uniform collapse above; 0.1: one-hot collapse below); middle: the DINO loss and
    the student-teacher KL over ``ln K``; right: prototypes in use per batch. Steps where the detector warned
    are marked. Returns None when the log holds no monitor numbers (a run without distillation).
    """
    import matplotlib  # imported when a picture is drawn, not at start-up (it costs about a second)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    steps = [r for r in records if "teacher_entropy" in r and "event" not in r]
    if not steps:
        return None
    x = [r["step"] for r in steps]
    log_k = steps[-1]["log_k"]
    warned = [r["step"] for r in records if r.get("event") == "collapse"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    ax = axes[0]
    ax.plot(x, [r["teacher_entropy_frac"] for r in steps], label="teacher entropy / ln K")
    ax.plot(x, [r["entropy_of_mean_frac"] for r in steps], label="entropy of the mean / ln K")
    ax.axhline(0.95, color="red", ls=":", lw=1, label="uniform collapse above")
    ax.axhline(0.1, color="purple", ls=":", lw=1, label="one-hot collapse below")
    ax.set_ylim(0, 1.05)
    ax = axes[1]
    ax.plot(x, [r["dino"] / log_k for r in steps], label="DINO loss / ln K")
    ax.plot(x, [r["kl"] / log_k for r in steps], label="student-teacher KL / ln K")
    ax.axhline(0.85, color="grey", ls=":", lw=1, label="0.85 (target: below)")
    ax = axes[2]
    ax.plot(x, [r["prototypes_used"] for r in steps], label="prototypes in use per batch")
    for ax in axes:
        for s in warned:
            ax.axvline(s, color="red", alpha=0.4, lw=1)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    title = f"DINO collapse monitor (K = {round(math.exp(log_k))})"
    if warned:
        title += f": collapse warned at step(s) {', '.join(map(str, warned))}"
        if patience:
            title += f" (patience {patience})"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)
