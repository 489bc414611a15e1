"""Named starting points for the trainer: ``paper`` (a GPU, DINO's sizes) and ``cpu`` (minutes on 2 cores).

``cpu``: ViT-Ti/16 with 96 px global and 48 px local crops (6x6 and 3x3 tokens), 4 local crops, small heads,
a higher base learning rate (5e-3 per 256 images: short runs on small data) and a lower teacher momentum.
"""
from __future__ import annotations

import torch

from trainer.finetune import FinetuneConfig
from trainer.pretrain import PretrainConfig

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
        return PretrainConfig(arch="vit_tiny_patch16_224", img_size=96, local_size=48, n_local=4, epochs=15,
                              batch_size=16, lr=5e-3, out_dim=1024, head_hidden=512, bottleneck_dim=128, decoder_hidden=64,
                              warmup_epochs=1, warmup_teacher_temp_epochs=3, lambda_ramp_epochs=2,
                              momentum_teacher=0.99, num_workers=0, picture_every=5, log_every=5, drop_path=0.0)
    raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")


def finetune_preset(name: str) -> FinetuneConfig:
    """The fine-tuning config of a preset."""
    name = resolve_preset(name)
    if name == "paper":
        return FinetuneConfig(lr=1e-3)
    if name == "cpu":
        return FinetuneConfig(iters=120, batch_size=8, eval_every=20, decoder_hidden=64)
    raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
