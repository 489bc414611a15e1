"""DINO collapse at the cpu preset: short pretrainings of each prevention candidate, side by side.

Each candidate is the cpu preset with a few fields replaced (table ``CANDIDATES``); each runs as plain DINO
(``lambda_seg=0``: the auxiliary loss would hide what the distillation does; ``--lambda-seg 0.5`` gives 'ours') on
the same shards for the same steps, one after the other, one thread. Printed per candidate, from ``log.jsonl``, as
means over the last epoch:

- ``dino/lnK``: the DINO loss over ``ln K`` (uniform collapse: 1.0; the issue's target: <= 0.85);
- ``H_t/lnK``: the teacher's mean entropy over ``ln K`` (uniform collapse: near 1);
- ``H(mean)/lnK``: the entropy of the batch's mean target (one-hot collapse: near 0; at most about
  ``ln(2B) / ln K`` for a sharp teacher on a batch of ``B`` images: 0.5 at B = 16, K = 1024);
- ``H(ep.mean)/lnK``: the entropy of the mean target over the whole last epoch (the issue's target: >= 0.9);
- ``KL``: student-teacher KL (nats); ``protos``: distinct teacher argmax per batch (at most 2B);
- ``probe``: the linear probe's patch Jaccard against held-out pseudo-masks, before -> after training
  (:mod:`trainer.eval.probe`); ``collapse``: the detector's verdict (patience: 20 steps).

    python bench/bench_collapse.py --shards /tmp/shards --epochs 3                   # every candidate
    python bench/bench_collapse.py --shards /tmp/shards --only baseline,sinkhorn     # some of them
    python bench/bench_collapse.py --quick                                            # synthetic shards, 2 of them
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from trainer.engine.run_log import read_log
from trainer.train.presets import pretrain_preset
from trainer.train.pretrain import pretrain

from timing import stopwatch

CANDIDATES = {
    "baseline": {},
    "dino-temps": {"warmup_teacher_temp": 0.04, "teacher_temp": 0.07},  # the cpu preset before the teacher at 0.02
    "tt0.04": {"teacher_temp": 0.04, "warmup_teacher_temp": 0.04},
    "lr5e-4": {"lr": 5e-4},
    "lr2e-2": {"lr": 2e-2},
    "cm0.99": {"center_momentum": 0.99},
    "K256": {"out_dim": 256},
    "K128": {"out_dim": 128},
    "K64": {"out_dim": 64},
    "K64+sinkhorn": {"out_dim": 64, "centering": "sinkhorn"},
    "K64+tt0.03": {"out_dim": 64, "teacher_temp": 0.03, "warmup_teacher_temp": 0.03},
    "mom0.996": {"momentum_teacher": 0.996},
    "sinkhorn": {"centering": "sinkhorn"},
    "tt0.02": {"teacher_temp": 0.02, "warmup_teacher_temp": 0.02},
    "tt0.01": {"teacher_temp": 0.01, "warmup_teacher_temp": 0.01},
    "tt0.02-0.04": {"teacher_temp": 0.04, "warmup_teacher_temp": 0.02},
    "tt0.02+sinkhorn": {"teacher_temp": 0.02, "warmup_teacher_temp": 0.02, "centering": "sinkhorn"},
    "tt0.02+koleo0.1": {"teacher_temp": 0.02, "warmup_teacher_temp": 0.02, "koleo_weight": 0.1},
    "tt0.01+sinkhorn": {"teacher_temp": 0.01, "warmup_teacher_temp": 0.01, "centering": "sinkhorn"},
    "tt0.005+sinkhorn": {"teacher_temp": 0.005, "warmup_teacher_temp": 0.005, "centering": "sinkhorn"},
    "koleo0.1": {"koleo_weight": 0.1},
    "koleo1.0": {"koleo_weight": 1.0},
    "sinkhorn+koleo": {"centering": "sinkhorn", "koleo_weight": 0.1},
    "tt=ts(collapse)": {"teacher_temp": 0.1, "warmup_teacher_temp": 0.1},
    "free": {"norm_last_layer": False},
    "tt0.02+free": {"teacher_temp": 0.02, "warmup_teacher_temp": 0.02, "norm_last_layer": False},
    "tt0.02+mom0.9": {"teacher_temp": 0.02, "warmup_teacher_temp": 0.02, "momentum_teacher": 0.9},
    "masked-patch": {"masked_patch_weight": 1.0},  # iBOT's masked-patch loss beside DINO's (preset teacher 0.02)
}


def _synthetic_shards(folder: Path, n: int = 48) -> Path:
    from pipeline.shards import ShardRecord, write_shard

    s = 64
    yy, xx = np.mgrid[:s, :s]
    for k in range(n // 16):
        recs = []
        for i in range(16 * k, 16 * k + 16):
            rng = np.random.default_rng(i)
            cy, cx, r = rng.uniform(22, 42), rng.uniform(22, 42), rng.uniform(8, 20)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            image = np.where(disc[..., None], [90, 60, 40], [220, 170, 150]) + rng.normal(0, 8, (s, s, 3))
            recs.append(ShardRecord(id=f"Q{i:03d}", path=f"/x/Q{i:03d}.jpg", orig_shape=(s, s),
                                    image=np.clip(image, 0, 255).astype(np.uint8), hair_mask=np.zeros((s, s), bool),
                                    prob=disc.astype(np.float32), pseudo_mask=disc, no_lesion=False, diagnostics={}))
        write_shard(folder / f"shard-{k:05d}.h5", recs, size=s, config_json="{}", config_hash="q",
                    planned_ids=[r.id for r in recs], rejects=[], versions={})
    return folder


def run_candidate(name: str, overrides: dict, shards: Path, out: Path, *, epochs: int, base: dict,
                  lambda_seg: float = 0.0) -> dict:
    config = dataclasses.replace(pretrain_preset("cpu"), **{"epochs": epochs, "lambda_seg": lambda_seg,
                                                            "collapse_patience": 20, "picture_every": epochs,
                                                            "log_every": 1, **base, **overrides})
    shutil.rmtree(out, ignore_errors=True)
    with stopwatch() as watch:
        result = pretrain(shards, out, config, device="cpu", progress=False)
    seconds = watch.seconds
    steps = [r for r in read_log(out / "log.jsonl") if "teacher_entropy" in r and "event" not in r]
    last = [r for r in steps if r["epoch"] == epochs - 1]
    mean = {k: float(np.mean([r[k] for r in last])) for k in ("dino", "teacher_entropy_frac", "entropy_of_mean_frac",
                                                               "kl", "prototypes_used")}
    mean["dino_frac"] = mean["dino"] / last[0]["log_k"]
    epoch = [r for r in read_log(out / "log.jsonl") if r.get("event") == "epoch"][-1]
    mean["epoch_mean_frac"] = epoch.get("epoch_entropy_of_mean_frac", float("nan"))
    p = result.probe
    return {"name": name, **mean, "probe_init": p.get("probe_init_jaccard", float("nan")),
            "probe": p.get("probe_jaccard", float("nan")), "collapse": result.collapse.get("status", "-"),
            "episodes": len(result.collapse.get("episodes", [])), "seconds": seconds, "steps": result.step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=Path, help="Pseudo-mask shards (default with --quick: synthetic).")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--only", default="", help="Comma-separated candidate names (default: all).")
    parser.add_argument("--out", type=Path, default=None, help="Where the runs go (default: a temporary folder).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lambda-seg", type=float, default=0.0,
                        help="Weight of the auxiliary pseudo-mask loss (0: plain DINO, the default; 0.5: 'ours').")
    parser.add_argument("--quick", action="store_true", help="Synthetic 64 px shards, 2 candidates, tiny sizes.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tmp = Path(tempfile.mkdtemp(prefix="bench_collapse_"))
    out_root = args.out or tmp
    names = [n for n in args.only.split(",") if n] or list(CANDIDATES)
    base: dict = {}
    shards = args.shards
    if args.quick:
        shards = shards or _synthetic_shards(tmp / "shards")
        names = [n for n in names if n in ("baseline", "sinkhorn")] if not args.only else names
        base = {"img_size": 64, "local_size": 32, "batch_size": 8, "out_dim": 256, "probe_samples": 8}
        args.epochs = min(args.epochs, 2)
    if shards is None:
        parser.error("--shards is needed without --quick")
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidate(s) {unknown}; known: {list(CANDIDATES)}")
    print(f"shards {shards}, {args.epochs} epoch(s), lambda_seg {args.lambda_seg}, cpu preset + overrides, "
          f"{args.threads} thread(s)")
    head = (f"{'candidate':<17} {'dino/lnK':>8} {'H_t/lnK':>8} {'H(mean)/lnK':>11} {'H(ep.mean)/lnK':>14} "
            f"{'KL':>6} {'protos':>6} "
            f"{'probe start->end':>17} {'collapse':>9} {'s':>6}")
    print(head)
    for name in names:
        r = run_candidate(name, CANDIDATES[name], shards, out_root / name, epochs=args.epochs, base=base,
                         lambda_seg=args.lambda_seg)
        print(f"{name:<17} {r['dino_frac']:8.3f} {r['teacher_entropy_frac']:8.3f} {r['entropy_of_mean_frac']:11.3f} "
              f"{r['epoch_mean_frac']:14.3f} {r['kl']:6.3f} {r['prototypes_used']:6.1f} {r['probe_init']:8.3f}->{r['probe']:.3f} "
              f"{r['collapse']:>9} {r['seconds']:6.0f}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
