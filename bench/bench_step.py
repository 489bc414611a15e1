"""Step overhead of DINO + auxiliary segmentation over a plain backbone training step.

Full step: student backbone on 2 global + N local crops, DINO head on every crop's class token, segmentation
decoder on the global crops' patch tokens, teacher backbone + head on the 2 globals (no grad), DINO loss + seg
loss, backward, per-parameter clipping, AdamW step, EMA of the student into the teacher.
Plain step: the same backbone, forward + backward + AdamW step on the same crops (loss: mean of the tokens).

Prints the median time of each, their ratio (target <= 1.15x) and where the extra time goes (each component
timed on its own). Runs on CPU with 2 threads by default; ``--device cuda`` on a GPU.

    python bench/bench_step.py --arch vit_small_patch16_224 --img-size 112 --local-size 48 --batch-size 8
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.backbone import create_backbone, forward_tokens, patch_size  # noqa: E402
from trainer.dino_loss import DINOLoss  # noqa: E402
from trainer.distributed import resolve_device  # noqa: E402
from trainer.heads import DINOHead, SegDecoder  # noqa: E402
from trainer.schedules import clip_gradients, param_groups, update_momentum  # noqa: E402
from trainer.seg_loss import SegLoss  # noqa: E402


class Student(torch.nn.Module):
    def __init__(self, backbone, head, decoder=None):
        super().__init__()
        self.backbone, self.head, self.decoder = backbone, head, decoder


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats):
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vit_small_patch16_224")
    ap.add_argument("--img-size", type=int, default=112, help="global crop size (224 in DINO)")
    ap.add_argument("--local-size", type=int, default=48, help="local crop size (96 in DINO)")
    ap.add_argument("--n-local", type=int, default=8, help="local crops per image (DINO default 8)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out-dim", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the per-component timings")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    b, n_local = args.batch_size, args.n_local
    g_size, l_size = args.img_size, args.local_size

    backbone = create_backbone(args.arch, img_size=g_size).to(device)
    d, p = backbone.embed_dim, patch_size(backbone)
    student = Student(backbone, DINOHead(d, args.out_dim), SegDecoder(d, p)).to(device)
    teacher = Student(copy.deepcopy(backbone), DINOHead(d, args.out_dim)).to(device)
    teacher.head.load_state_dict(student.head.state_dict())
    for q in teacher.parameters():
        q.requires_grad_(False)
    plain = copy.deepcopy(backbone)
    opt_full = torch.optim.AdamW(param_groups(student, 0.04), lr=1e-4)
    opt_plain = torch.optim.AdamW(param_groups(plain, 0.04), lr=1e-4)
    dino_loss = DINOLoss(args.out_dim, 2 + n_local, warmup_teacher_temp_epochs=0, n_epochs=1).to(device)
    seg = SegLoss()

    globals_ = torch.randn(2 * b, 3, g_size, g_size, device=device)
    locals_ = torch.randn(n_local * b, 3, l_size, l_size, device=device)
    masks = (torch.rand(2 * b, 1, g_size, g_size, device=device) > 0.5).float()
    probs = torch.rand(2 * b, 1, g_size, g_size, device=device)

    def plain_step(mark=lambda name: None):
        opt_plain.zero_grad(set_to_none=True)
        loss = plain.forward_features(globals_).mean() + plain.forward_features(locals_).mean()
        mark("student backbone forward")
        loss.backward()
        mark("backward")
        opt_plain.step()
        mark("clip + AdamW step")

    def full_step(mark=lambda name: None):
        opt_full.zero_grad(set_to_none=True)
        with torch.no_grad():
            t_out = teacher.head(forward_tokens(teacher.backbone, globals_)[0])
        mark("teacher forward (globals, no grad)")
        cls_g, patches_g = forward_tokens(student.backbone, globals_)
        cls_l, _ = forward_tokens(student.backbone, locals_)
        mark("student backbone forward")
        s_out = student.head(torch.cat([cls_g, cls_l]))
        logits = student.decoder(patches_g, (g_size, g_size))
        mark("DINO head + decoder forward")
        loss = dino_loss(s_out, t_out, 0) + 0.5 * seg(logits, masks, probs)
        mark("DINO + seg loss")
        loss.backward()
        mark("backward")
        clip_gradients(student, 3.0)
        opt_full.step()
        mark("clip + AdamW step")
        update_momentum(student.backbone, teacher.backbone, 0.996)
        update_momentum(student.head, teacher.head, 0.996)
        mark("EMA update")

    plain_step(), full_step()  # warm-up (allocator, AdamW state)
    t_plain, t_full = [], []
    for _ in range(args.steps):  # interleaved, so load from other processes hits both alike
        t_plain.append(_timed(plain_step, device, 1))
        t_full.append(_timed(full_step, device, 1))
    tp, tf = statistics.median(t_plain), statistics.median(t_full)
    print(f"config: {args.arch}, batch {b}, 2 x {g_size}px + {n_local} x {l_size}px crops, out_dim {args.out_dim}, "
          f"device {device}, threads {torch.get_num_threads()}, {args.steps} interleaved steps each")
    print(f"plain backbone step : median {tp * 1e3:8.1f} ms   min {min(t_plain) * 1e3:8.1f} ms")
    print(f"DINO + aux step     : median {tf * 1e3:8.1f} ms   min {min(t_full) * 1e3:8.1f} ms")
    print(f"ratio               : median {tf / tp:8.3f}x     min {min(t_full) / min(t_plain):8.3f}x   "
          "(target <= 1.15x)")
    if args.no_breakdown:
        return

    def phases(step_fn):
        out: dict[str, float] = {}
        last = [0.0]

        def mark(name):
            _sync(device)
            now = time.perf_counter()
            out[name] = out.get(name, 0.0) + now - last[0]
            last[0] = now

        _sync(device)
        last[0] = time.perf_counter()
        step_fn(mark)
        return out

    reps = max(3, args.steps)
    runs_p, runs_f = [], []
    for _ in range(reps):
        runs_p.append(phases(plain_step))
        runs_f.append(phases(full_step))
    # min over repeats: the least-disturbed estimate on a shared machine
    best_p = {k: min(r[k] for r in runs_p) for k in runs_p[0]}
    best_f = {k: min(r[k] for r in runs_f) for k in runs_f[0]}
    base = sum(best_p.values())
    print(f"breakdown (min over {reps} instrumented steps; extra = % of the plain step's {base * 1e3:.0f} ms):")
    print(f"  {'phase':38s} {'plain':>9s} {'DINO+aux':>9s} {'extra':>8s}")
    for name in best_f:
        a, c = best_p.get(name, 0.0), best_f[name]
        print(f"  {name:38s} {a * 1e3:7.1f}ms {c * 1e3:7.1f}ms {100 * (c - a) / base:+7.1f}%")
    teacher_t = best_f["teacher forward (globals, no grad)"]
    print(f"ratio of the phase sums: {sum(best_f.values()) / base:.3f}x")
    print(f"teacher forward alone: +{100 * teacher_t / base:.1f}%; ratio without it (heads, decoder, losses, "
          f"clipping, AdamW on the head, EMA): {(sum(best_f.values()) - teacher_t) / base:.3f}x")
    n_bb = sum(q.numel() for q in backbone.parameters())
    n_head = sum(q.numel() for q in student.head.parameters())
    n_dec = sum(q.numel() for q in student.decoder.parameters())
    print(f"parameters: backbone {n_bb / 1e6:.2f} M, DINO head {n_head / 1e6:.2f} M, decoder {n_dec / 1e6:.3f} M")


if __name__ == "__main__":
    main()
