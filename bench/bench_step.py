"""Step overhead: the real pretraining step (``trainer.train.objective.train_step``) vs a plain backbone step.

On the same ready-made crops (2 global + N local, made once with ``multi_crop``), side by side in one run:

- plain: the student backbone alone, forward + backward (loss: mean of the class tokens) + AdamW step;
- DINO: ``train_step`` with ``lambda_seg=0`` (student on every crop, teacher on the globals, head, DINO loss,
  per-parameter clipping, AdamW, EMA);
- DINO + aux: ``train_step`` as pretraining runs it (plus the decoder and the pseudo-mask loss);
- DINO + aux + FKD: the same with ``fkd_weight=1`` (DINO-Mix foundation distillation): a frozen foundation ViT
  (default: a random-init ViT-S/16 stand-in, ``--fkd-teacher``/``--fkd-weights`` for a real one) on the global
  views, the student's FKD projector and the cosine loss.

Prints the median step times and the ratios. The target (issue: DINO+aux <= 1.15x plain) has an arithmetic
floor: the teacher's forward on the globals (no grad) is a fixed share of the step that plain training does not
pay — the script prints that floor from the token counts. CPU with 2 threads by default; ``--device cuda`` on a GPU.
The memory of DINO + aux and of DINO + aux + FKD is measured in a fresh subprocess per variant (build, two steps):
peak RSS, and on CUDA ``torch.cuda.max_memory_allocated``; the difference is the FKD overhead (frozen teacher
weights, its activations, the projector and its optimiser state).

    python bench/bench_step.py                       # ViT-S/16 at 112/48 px, batch 8, CPU
    python bench/bench_step.py --img-size 224 --local-size 96 --device cuda --batch-size 64
    python bench/bench_step.py --preset cpu --compile --no-memory   # the cpu preset, eager vs torch.compile
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from trainer.data.multicrop import multi_crop
from trainer.engine.distributed import resolve_device
from trainer.engine.schedules import param_groups
from trainer.losses.dino import DINOLoss
from trainer.models.backbone import forward_tokens
from trainer.models.fkd import FoundationTeacher
from trainer.train.config import PretrainConfig, Schedules
from trainer.train.objective import train_step
from trainer.train.presets import pretrain_preset

from timing import median_of


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vit_small_patch16_224")
    ap.add_argument("--img-size", type=int, default=112, help="global crop size (224 in DINO)")
    ap.add_argument("--local-size", type=int, default=48, help="local crop size (96 in DINO)")
    ap.add_argument("--n-local", type=int, default=8, help="local crops per image (DINO: 8)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out-dim", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="ViT-Ti, batch 4, 3 steps")
    ap.add_argument("--preset", choices=["cpu", "paper"],
                    help="take the model, crops, heads and batch from this pretraining preset instead")
    ap.add_argument("--compile", action="store_true",
                    help="also time the DINO + aux step with every ViT block under torch.compile, side by side")
    ap.add_argument("--fkd-teacher", default="vit_small_patch16_224",
                    help="frozen foundation ViT of the FKD variant (random init unless --fkd-weights)")
    ap.add_argument("--fkd-weights", default=None, help="its local checkpoint (an export.pt needs no name)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    ap.add_argument("--memory-of", choices=["full", "fkd"], help=argparse.SUPPRESS)  # the subprocess's job
    args = ap.parse_args(argv)
    if args.quick:
        args.arch, args.batch_size, args.steps, args.out_dim = "vit_tiny_patch16_224", 4, 3, 1024

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    config = PretrainConfig(arch=args.arch, img_size=args.img_size, local_size=args.local_size,
                            n_local=args.n_local, out_dim=args.out_dim, batch_size=args.batch_size, epochs=1,
                            drop_path=0.0, freeze_last_layer=0)
    if args.preset:
        config = dataclasses.replace(pretrain_preset(args.preset), epochs=1, drop_path=0.0, freeze_last_layer=0)
        args.arch, args.img_size, args.local_size = config.arch, config.img_size, config.local_size
        args.n_local, args.out_dim, args.batch_size = config.n_local, config.out_dim, config.batch_size
    b = args.batch_size
    images = torch.randint(0, 256, (b, 3, 256, 256), dtype=torch.uint8, device=device)
    maps = torch.rand(b, 3, 256, 256, device=device)
    maps[:, 0] = (maps[:, 0] > 0.5).float()
    views = multi_crop(images, maps, config=config.crops(), generator=torch.Generator(device).manual_seed(0),
                       binary_channels=(0,))
    valid = torch.ones(b, device=device)

    def make(cfg, fkd_teacher=None, compiled=False):
        student = cfg.build_model(fkd_dim=fkd_teacher.embed_dim if fkd_teacher else None).to(device)
        teacher = copy.deepcopy(student).eval().requires_grad_(False)
        if compiled:  # each transformer block, in place (a graph per crop size)
            for block in (*student.backbone.blocks, *teacher.backbone.blocks):
                block.compile(dynamic=False)
        optimizer = torch.optim.AdamW(param_groups(student, cfg.weight_decay))
        loss = DINOLoss(cfg.out_dim, n_crops=2 + cfg.n_local, n_epochs=1, warmup_teacher_temp_epochs=0).to(device)
        sched = Schedules.build(cfg, steps_per_epoch=10_000, total_batch=b)
        kw = dict(step=0, epoch=0, config=cfg, sched=sched, student=student, ddp_student=student, teacher=teacher,
                  optimizer=optimizer, dino_loss=loss)
        return lambda: train_step(views, valid, **kw, fkd_teacher=fkd_teacher), student

    def make_fkd():
        teacher = FoundationTeacher(args.fkd_teacher, weights=args.fkd_weights, img_size=args.img_size).to(device)
        cfg = dataclasses.replace(config, fkd_weight=1.0, fkd_teacher=teacher.arch, fkd_weights=args.fkd_weights)
        return make(cfg, teacher)[0], teacher

    if args.memory_of:  # subprocess: build one variant, run two steps, report the peaks
        step_fn = make(config)[0] if args.memory_of == "full" else make_fkd()[0]
        step_fn()
        step_fn()
        peak = {"rss_mb": _peak_rss_mb()}
        if device.type == "cuda":
            peak["cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        print(json.dumps(peak))
        return

    full_step, student = make(config)
    dino_step, _ = make(dataclasses.replace(config, lambda_seg=0.0))
    fkd_step, fkd_teacher = make_fkd()
    grid = (args.img_size // student.backbone.patch_embed.patch_size[0],) * 2
    globals_cat = torch.cat(views.global_views)
    backbone = copy.deepcopy(student.backbone)
    plain_opt = torch.optim.AdamW(param_groups(backbone, 0.04))
    all_views = views.global_views + views.local_views

    def plain_step():
        loss = sum(forward_tokens(backbone, torch.cat(v))[0].mean()
                   for v in (views.global_views, views.local_views))
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    compiled_step = make(config, compiled=True)[0] if args.compile else None
    times = {"plain": [], "dino": [], "full": [], "fkd": [], "teacher": [], "compiled": []}
    for _ in range(args.steps):  # interleaved, so load from other processes hits all three alike
        times["plain"].append(median_of(plain_step, 1, device=device))
        times["dino"].append(median_of(dino_step, 1, device=device))
        times["full"].append(median_of(full_step, 1, device=device))
        times["fkd"].append(median_of(fkd_step, 1, device=device))
        times["teacher"].append(median_of(lambda: fkd_teacher(globals_cat, grid), 1, device=device))
        if compiled_step:  # its first call (the warm-up inside median_of) compiles
            times["compiled"].append(median_of(compiled_step, 1, device=device))
    t = {k: statistics.median(v) for k, v in times.items() if v}
    p = student.backbone.patch_embed.patch_size[0]
    g_tokens = 2 * (args.img_size // p) ** 2
    l_tokens = args.n_local * (args.local_size // p) ** 2
    floor = 1 + g_tokens / (3 * (g_tokens + l_tokens))  # teacher forward ~ 1/3 of fwd+bwd per token
    print(f"{args.arch}, batch {b}, crops 2x{args.img_size} + {args.n_local}x{args.local_size}, out_dim "
          f"{args.out_dim}, device {device}, threads {torch.get_num_threads()}, {len(all_views)} views")
    print(f"plain backbone step : {t['plain'] * 1e3:9.1f} ms")
    print(f"DINO step (lambda 0): {t['dino'] * 1e3:9.1f} ms   {t['dino'] / t['plain']:.3f}x plain")
    print(f"DINO + aux step     : {t['full'] * 1e3:9.1f} ms   {t['full'] / t['plain']:.3f}x plain "
          f"(target <= 1.15x)   {t['full'] / t['dino']:.3f}x DINO")
    print(f"floor set by the teacher forward on the globals alone: {floor:.3f}x plain")
    print(f"DINO + aux + FKD    : {t['fkd'] * 1e3:9.1f} ms   {t['fkd'] / t['full']:.3f}x DINO + aux   "
          f"(frozen {fkd_teacher.arch}{'' if args.fkd_weights else ' random init'}, patch "
          f"{fkd_teacher.patch_size}, D_t {fkd_teacher.embed_dim}; its forward alone {t['teacher'] * 1e3:.1f} ms)")
    if compiled_step:
        print(f"DINO + aux, compiled: {t['compiled'] * 1e3:9.1f} ms   speed-up over eager {t['full'] / t['compiled']:.3f}x "
              "(every ViT block under torch.compile)")
    if not args.no_memory:
        _print_memory(argv)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process image: ``VmHWM`` on Linux. (``ru_maxrss`` is no good here: after
    fork + exec it still holds the parent's resident size at the fork.)"""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def _print_memory(argv) -> None:
    """Peak memory of DINO + aux and of DINO + aux + FKD, each in a fresh process (same arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    peaks = {}
    for variant in ("full", "fkd"):
        run = subprocess.run([sys.executable, __file__, *argv, "--memory-of", variant], capture_output=True,
                             text=True, check=True)
        peaks[variant] = json.loads(run.stdout.strip().splitlines()[-1])
    for key, what in (("rss_mb", "peak RSS (process)"), ("cuda_mb", "CUDA max_memory_allocated")):
        if key in peaks["full"]:
            a, b = peaks["full"][key], peaks["fkd"][key]
            print(f"{what:26s}: DINO + aux {a:8.1f} MB   + FKD {b:8.1f} MB   overhead {b - a:+8.1f} MB "
                  f"({b / a:.3f}x)")


if __name__ == "__main__":
    main()
