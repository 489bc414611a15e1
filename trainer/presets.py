"""Named starting points for the trainer: ``paper`` (a GPU, DINO's sizes) and ``cpu`` (minutes on 2 cores)."""
from __future__ import annotations

from trainer.pretrain import PretrainConfig

PRESETS = ("cpu", "paper")


def pretrain_preset(name: str) -> PretrainConfig:
    """The pretraining config of a preset; ``dataclasses.replace`` it to override fields."""
    if name == "paper":
        return PretrainConfig()
    if name == "cpu":
        return PretrainConfig(arch="vit_tiny_patch16_224", img_size=64, local_size=32, n_local=4, epochs=10,
                              batch_size=16, out_dim=1024, head_hidden=512, bottleneck_dim=128, decoder_hidden=64,
                              warmup_epochs=1, warmup_teacher_temp_epochs=3, lambda_ramp_epochs=2,
                              momentum_teacher=0.99, num_workers=0, picture_every=5, log_every=5, drop_path=0.0)
    raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")


def finetune_preset(name: str) -> "FinetuneConfig":
    """The fine-tuning config of a preset."""
    from trainer.finetune import FinetuneConfig

    if name == "paper":
        return FinetuneConfig()
    if name == "cpu":
        return FinetuneConfig(iters=120, batch_size=8, eval_every=20, decoder_hidden=64)
    raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
