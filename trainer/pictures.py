"""Pictures of a model at work, for people to look at during and after training."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.atomic import save_figure
from trainer.data.normalise import normalise
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
