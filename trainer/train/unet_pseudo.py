"""The ``unet-pseudo`` baseline: a small U-Net trained on the walker pseudo-masks alone (no label, no DINO, no ViT).

The table fine-tunes it with the same labels as every other row: ours must beat it to claim that self-distillation
adds anything beyond the pseudo-masks. Each step takes ``batch_size`` shard samples, one random-resized crop
each at ``img_size`` with flips, 90-degree rotations and colour jitter (the same on-device multi-crop as
pretraining; the pseudo-mask and probability follow the crop exactly), and the pseudo-mask loss of pretraining
(BCE + soft Dice, the walker's uncertain band ignored: :func:`trainer.losses.seg.seg_loss`). AdamW with a cosine
schedule. Writes ``model.pt`` (:func:`trainer.models.segmenter.save_seg_model`) and ``log.jsonl``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from common.atomic import write_text
from common.guard import output_folder
from trainer.data.multicrop import MultiCropConfig, multi_crop
from trainer.data.shard_dataset import ShardAwareSampler, ShardDataset
from trainer.engine.distributed import resolve_device
from trainer.engine.schedules import cosine_schedule
from trainer.losses.seg import seg_loss
from trainer.models.segmenter import save_seg_model
from trainer.models.unet import UNet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UNetPseudoConfig:
    """U-Net on pseudo-masks (ours). ``steps`` of ``batch_size`` crops of ``img_size`` px (the preset's input
    size, so fine-tuning and prediction see what the other rows see); ``band`` is the walker's uncertain band,
    ignored in the loss."""

    img_size: int = 96
    channels: tuple[int, ...] = (16, 32, 64, 128)
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    crop_scale: tuple[float, float] = (0.4, 1.0)
    band: tuple[float, float] = (0.1, 0.9)
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.img_size < 16:
            raise ValueError(f"steps, batch_size >= 1 and img_size >= 16 expected, got {self.steps}, "
                             f"{self.batch_size}, {self.img_size}")


def train_unet_on_pseudomasks(shards, out_dir: str | Path, config: UNetPseudoConfig = UNetPseudoConfig(), *,
                              exclude_ids: Iterable[str] = (), device: str = "auto", progress: bool = True) -> Path:
    """Train :class:`~trainer.models.unet.UNet` on the pseudo-masks of ``shards``; return the ``model.pt`` path.

    A finished run (``model.pt`` present) is not retrained.
    """
    out_dir = Path(out_dir)
    path = out_dir / "model.pt"
    if path.exists():
        return path
    dev = resolve_device(device)
    torch.manual_seed(config.seed)
    dataset = ShardDataset(shards if not isinstance(shards, (str, Path)) else [shards], exclude_ids=exclude_ids)
    batch = min(config.batch_size, len(dataset))
    sampler = ShardAwareSampler(dataset, seed=config.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True)
    model = UNet(config.channels).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), weight_decay=config.weight_decay)
    lr = cosine_schedule(config.lr, config.lr * 0.01, config.steps, max(1, config.steps // 20))
    crops = MultiCropConfig(n_global=1, n_local=0, global_size=config.img_size, global_scale=config.crop_scale,
                            brightness=0.2, contrast=0.2, saturation=0.1, hue=0.02, grey_p=0.0,
                            global_blur_p=(0.2,), global_solarise_p=(0.0,))
    generator = torch.Generator(device=dev).manual_seed(config.seed)
    lines, step, epoch, tic = [], 0, 0, time.perf_counter()
    bar = tqdm(total=config.steps, desc="unet on pseudo-masks", unit="step", disable=not progress)
    while step < config.steps:
        sampler.set_epoch(epoch)
        for item in loader:
            if step >= config.steps:
                break
            images = item["image"].to(dev)
            maps = item["maps"].to(dev).float().div_(255.0)
            view = multi_crop(images, maps, config=crops, generator=generator, binary_channels=(0, 2))
            x, m = view.global_views[0], view.global_maps[0]
            for group in optimizer.param_groups:
                group["lr"] = float(lr[step])
            loss = seg_loss(model(x).float(), m[:, 0:1], m[:, 1:2], band=config.band,
                            sample_weight=item["valid"].to(dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update()
            if step % 20 == 0 or step == config.steps:
                bar.set_postfix(loss=f"{loss.item():.3f}")
                lines.append(json.dumps({"step": step, "loss": loss.item(), "lr": float(lr[step - 1])}))
        epoch += 1
    bar.close()
    log.info("U-Net on pseudo-masks: %d steps in %.0f s", step, time.perf_counter() - tic)
    with output_folder(out_dir, command="unet-pseudo", names=["log.jsonl", path.name]):
        write_text(out_dir / "log.jsonl", "\n".join(lines) + "\n")
        model.cpu()
        return save_seg_model(model, {"img_size": config.img_size}, path,
                              extra={"trained_on": "pseudo-masks", "config": dataclasses.asdict(config)})
