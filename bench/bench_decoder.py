"""Decoder cost: the light conv decoder vs S^3-Net's I-LKA + deformable decoder, and the S^3-Net aux terms.

On the global views of a pretraining step (random images and masks; what is timed is forward + backward of
the segmentation branch, with the pseudo-mask loss), side by side in one run, interleaved:

- decoder only: patch tokens (from the backbone, computed once) -> decoder -> ``seg_loss`` -> backward;
- backbone + decoder: the images through the backbone and the decoder, backward through both;
- ``spatial``: :func:`trainer.losses.spatial.spatial_loss` forward + backward on its own, on logits of the same
  size (timed alone: it is a few elementwise passes, smaller than the noise of a whole step);
- ``+ affine``: backbone + conv decoder plus the second forward on the views rotated by a quarter turn and
  :func:`trainer.losses.affine.affine_loss` (what ``train_step`` adds with ``--affine-weight``).

Median times in ms and the ratios. A whole pretraining step also runs the local crops, the DINO head and the
teacher (``bench/bench_step.py``), so these ratios are upper bounds for the whole step. Two cases by default:
ViT-Ti/16 at 96 px with 32 maps (the cpu preset's global crops: 16 images x 2 views) and ViT-S/16 at 224 px
with 16 maps. CPU with 2 threads by default; ``--device cuda`` on a GPU.

    python bench/bench_decoder.py --quick             # ViT-Ti/16 case only, 3 repeats
    python bench/bench_decoder.py --device cuda --repeats 20
"""
from __future__ import annotations

import argparse
import statistics

import torch

from trainer.engine.distributed import resolve_device
from trainer.losses.affine import affine_loss, rot90
from trainer.losses.seg import seg_loss
from trainer.losses.spatial import spatial_loss
from trainer.models.backbone import create_backbone, forward_tokens, patch_size
from trainer.models.decoders import DECODERS, build_decoder

from timing import timed

CASES = {"vit-ti": ("vit_tiny_patch16_224", 96, 32), "vit-s": ("vit_small_patch16_224", 224, 16)}


def _variants(arch: str, img: int, batch: int, hidden: int, device: torch.device) -> dict:
    """The timed closures of one case: name -> fn()."""
    torch.manual_seed(0)
    backbone = create_backbone(arch, img_size=img, drop_path_rate=0.0).to(device)
    p = patch_size(backbone)
    decoders = {k: build_decoder(k, backbone.embed_dim, p, hidden=hidden).to(device) for k in DECODERS}
    x = torch.randn(batch, 3, img, img, device=device)
    target = (torch.rand(batch, 1, img, img, device=device) > 0.5).float()
    with torch.no_grad():
        tokens = forward_tokens(backbone, x)[1].float()
    cuda = device.type == "cuda"
    modules = [backbone, *decoders.values()]

    def step(kind: str, *, full: bool, affine: bool = False):
        def fn():
            for m in modules:
                m.zero_grad(set_to_none=True)
            dec = decoders[kind]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                patches = forward_tokens(backbone, x)[1] if full else tokens.detach().requires_grad_()
                logits = dec(patches, (img, img)).float()
                loss = seg_loss(logits, target)
                if affine:
                    rotated = dec(forward_tokens(backbone, rot90(x, 1))[1], (img, img)).float()
                    loss = loss + affine_loss(logits, rotated, 1)
            loss.backward()
        return fn

    logits = torch.randn(batch, 1, img, img, device=device, requires_grad=True)

    def spatial_only():
        logits.grad = None
        spatial_loss(logits, x).backward()

    out = {f"dec-{k}": step(k, full=False) for k in DECODERS}
    out |= {f"full-{k}": step(k, full=True) for k in DECODERS}
    out |= {"full-conv+affine": step("conv", full=True, affine=True), "spatial-only": spatial_only}
    return out


def run_case(name: str, arch: str, img: int, batch: int, *, hidden: int, repeats: int, device: torch.device) -> dict:
    fns = _variants(arch, img, batch, hidden, device)
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved, so load from other processes hits every variant alike
        for k, fn in fns.items():
            times[k].append(timed(fn, device=device))
    t = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    g = img // 16
    print(f"\n{name}: {arch} at {img} px, {batch} maps ({g}x{g} tokens), decoder hidden {hidden}, device {device}, "
          f"threads {torch.get_num_threads()}, median of {repeats}")
    print(f"  decoder fwd+bwd on tokens   conv {t['dec-conv']:8.1f} ms   ilka {t['dec-ilka']:8.1f} ms   "
          f"ilka/conv {t['dec-ilka'] / t['dec-conv']:.2f}x")
    print(f"  backbone + decoder fwd+bwd  conv {t['full-conv']:8.1f} ms   ilka {t['full-ilka']:8.1f} ms   "
          f"ilka/conv {t['full-ilka'] / t['full-conv']:.2f}x")
    base, affine, spatial = t["full-conv"], t["full-conv+affine"], t["spatial-only"]
    print(f"  + affine term (conv)        {affine:8.1f} ms   +{affine - base:8.1f} ms   "
          f"{affine / base:.2f}x backbone + conv decoder")
    print(f"  + spatial term (loss alone) {spatial:8.1f} ms   +{spatial / base * 100:7.1f} %  of backbone + conv "
          f"decoder")
    return t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="vit-ti,vit-s", help=f"comma-separated, of {sorted(CASES)}")
    ap.add_argument("--hidden", type=int, default=None,
                    help="decoder hidden width (default: 64 for ViT-Ti as the cpu preset, 128 for ViT-S)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per variant (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="the ViT-Ti case only, 3 repeats")
    args = ap.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if args.quick:
        cases, args.repeats = ["vit-ti"], 3
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"--cases: unknown {unknown}, expected some of {sorted(CASES)}")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    for c in cases:
        arch, img, batch = CASES[c]
        hidden = args.hidden or (64 if c == "vit-ti" else 128)
        run_case(c, arch, img, batch, hidden=hidden, repeats=args.repeats, device=device)


if __name__ == "__main__":
    main()
