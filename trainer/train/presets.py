"""Named starting points for the trainer: ``paper`` (a GPU, DINO's sizes) and ``cpu`` (minutes on 2 cores).

``cpu``: ViT-Ti with **patch 8** at 96 px global and 48 px local crops (12x12 and 6x6 tokens), 2 local crops,
small heads, the decoder's edge path, a higher base learning rate (5e-3 per 256 images: short runs on small
data) and a lower teacher momentum. 12 x 12 tokens because the old 6 x 6 grid capped what any mask drawn on it
could score (``bench/bench_grid_ceiling.py``), and patch 8 at 96 px gives 144 tokens for a quarter of the pixels
of patch 16 at 192 px; 5 epochs keep one pretraining on ``isic2017_256`` near 35 minutes.

Two cpu-preset fields differ from DINO's by measurement: a constant teacher temperature of 0.02 (DINO's 0.04 ->
0.07 sits at uniform collapse here; docs/DINO_COLLAPSE.md), and the auxiliary decoder learning at 10x the DINO
rate (the DINO rate is too slow for a decoder that starts from scratch). The figures behind both, and behind the
grid: docs/EXPERIMENTS.md, "The cpu preset" and "Token grid and edge path".
"""
from __future__ import annotations

import torch

from trainer.train.config import PretrainConfig
from trainer.train.finetune import FinetuneConfig
from trainer.train.unet_pseudo import UNetPseudoConfig

PRESETS = ("auto", "cpu", "paper")


def resolve_preset(name: str) -> str:
    """``auto`` -> ``paper`` when CUDA is available, else ``cpu``."""
    if name == "auto":
        return "paper" if torch.cuda.is_available() else "cpu"
    return name


def pretrain_preset(name: str) -> PretrainConfig:
    """The pretraining config of a preset; ``dataclasses.replace`` it to override fields."""
    name = resolve_preset(name)
    if name == "paper":
        return PretrainConfig()
    if name == "cpu":
        return PretrainConfig(arch="vit_tiny_patch16_224", patch_size=8, img_size=96, local_size=48, n_local=2,
                              epochs=5, batch_size=16, lr=5e-3, out_dim=1024, head_hidden=512, bottleneck_dim=128,
                              decoder_hidden=64, warmup_epochs=1, warmup_teacher_temp_epochs=2, lambda_ramp_epochs=1,
                              momentum_teacher=0.99, num_workers=0, picture_every=5, log_every=5, drop_path=0.0,
                              warmup_teacher_temp=0.02, teacher_temp=0.02, decoder_lr_scale=10.0)
    raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")


def unet_pseudo_preset(name: str, *, img_size: int) -> UNetPseudoConfig:
    """The ``unet-pseudo`` baseline's training on pseudo-masks, at the pretraining preset's input size: ``cpu``
    1,000 steps of 16 (about 10 minutes on 2 cores at 128 px), ``paper`` 5,000 steps of 32."""
    name = resolve_preset(name)
    if name == "paper":
        return UNetPseudoConfig(img_size=img_size, steps=5000, batch_size=32)
    if name == "cpu":
        return UNetPseudoConfig(img_size=img_size, steps=1000, batch_size=16)
    raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")


def finetune_preset(name: str) -> FinetuneConfig:
    """The fine-tuning config of a preset."""
    name = resolve_preset(name)
    if name == "paper":
        return FinetuneConfig(lr=1e-3)
    if name == "cpu":
        return FinetuneConfig(iters=120, batch_size=8, eval_every=20, decoder_hidden=64)
    raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
