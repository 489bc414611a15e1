"""Step-time overhead of the decoder's high-resolution edge path, side by side with the token-only decoder.

The real pretraining step (``trainer.train.objective.train_step``: multi-crop, student on every crop, teacher on the
globals, DINO head and loss, decoder and pseudo-mask loss, AdamW, EMA) of a preset, built twice from the same
seed: ``decoder_skip=False`` (tokens only) and ``decoder_skip=True`` (the edge path), timed interleaved so
load from other processes hits both alike. Also the old cpu preset (ViT-Ti/16, 6x6 tokens, 4 local crops) for
the cost of the finer token grid. Prints median ms per step, the ratio, and the minutes one pretraining on
``isic2017_256`` (1,892 images after the leakage guard, ``--n-images``) would take at that step time.

    python bench/bench_edge_decoder.py                 # cpu preset, 1 thread, 5 timed steps each
    python bench/bench_edge_decoder.py --quick         # 2 timed steps
    python bench/bench_edge_decoder.py --preset paper --device cuda --batch-size 64
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics

import torch

from trainer.data.multicrop import multi_crop
from trainer.engine.distributed import resolve_device
from trainer.engine.schedules import param_groups
from trainer.losses.dino import DINOLoss
from trainer.train.config import Schedules
from trainer.train.objective import train_step
from trainer.train.presets import pretrain_preset

from timing import timed


def make_step(cfg, images, maps, device):
    """A closure running one real pretraining step of ``cfg`` on fresh crops of ``images``."""
    torch.manual_seed(0)
    student = cfg.build_model().to(device)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(param_groups(student, cfg.weight_decay))
    loss = DINOLoss(cfg.out_dim, n_crops=2 + cfg.n_local, n_epochs=1, warmup_teacher_temp_epochs=0).to(device)
    sched = Schedules.build(cfg, steps_per_epoch=10_000, total_batch=len(images))
    generator = torch.Generator(device).manual_seed(0)
    valid = torch.ones(len(images), device=device)

    def step():
        views = multi_crop(images, maps, config=cfg.crops(), generator=generator, binary_channels=(0, 2))
        train_step(views, valid, step=0, epoch=0, config=cfg, sched=sched, student=student, ddp_student=student,
                   teacher=teacher, optimizer=optimizer, dino_loss=loss)
    return step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    ap.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-images", type=int, default=1892, help="pretraining set size for the minutes estimate")
    ap.add_argument("--quick", action="store_true", help="2 timed steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps = 2
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    base = pretrain_preset(args.preset)
    if args.batch_size:
        base = dataclasses.replace(base, batch_size=args.batch_size)
    base = dataclasses.replace(base, freeze_last_layer=0)
    b = base.batch_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, 3, 256, 256), dtype=torch.uint8, generator=g).to(device)
    maps = torch.rand(b, 3, 256, 256, generator=g).to(device)
    maps[:, 0] = (maps[:, 0] > 0.5).float()
    variants = {"token-only decoder": dataclasses.replace(base, decoder_skip=False),
                "edge-aware decoder": dataclasses.replace(base, decoder_skip=True)}
    if args.preset == "cpu":
        variants["old cpu preset (6x6 tokens, token-only)"] = dataclasses.replace(
            base, patch_size=None, n_local=4, epochs=15, decoder_skip=False)
    steps = {name: make_step(cfg, images, maps, device) for name, cfg in variants.items()}
    for fn in steps.values():
        fn()  # warm-up
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, fn in steps.items():
            times[name].append(timed(fn, device=device))
    t = {k: statistics.median(v) for k, v in times.items()}
    per_epoch = -(-args.n_images // b)
    print(f"preset {args.preset}, batch {b}, device {device}, threads {torch.get_num_threads()}, "
          f"{args.steps} timed steps each (median)")
    ref = t["token-only decoder"]
    for name, cfg in variants.items():
        grid = cfg.img_size // (cfg.patch_size or 16)
        minutes = t[name] * per_epoch * cfg.epochs / 60
        print(f"{name:42s} {grid:3d}x{grid:<3d} {t[name] * 1e3:8.0f} ms/step  {t[name] / ref:5.2f}x token-only  "
              f"{cfg.epochs} epochs x {per_epoch} steps = {minutes:5.1f} min")


if __name__ == "__main__":
    main()
