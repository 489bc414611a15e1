"""``advise`` on a relabelled pool: wall seconds of each phase and of the whole command (target: <= 2 min on
2 cores for the 2,696-image ``isic2017_256`` pool once the round's shards exist).

The phases are those of :func:`trainer.inference.advise.advise`: reading the pool's rows and images from the
shards, the student's features (one forward pass per image at its training size), the gain-weighted greedy
k-centre choice, and the whole command with its outputs (advise.csv, advise.png, annotate/).

    python bench/bench_advise.py --shards REFINE/round-2/shards            # N = 16
    python bench/bench_advise.py --quick      # make bench: the demo's round-2 pool (make demo first), N = 3
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from timing import stopwatch
from trainer.inference import advise as advise_mod
from trainer.inference.relabel import relabel_info

DEMO_POOL = "artifacts/refine/round-2/shards"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default=DEMO_POOL, help="a relabelled folder (refine's round-r/shards)")
    parser.add_argument("--n", type=int, default=16, help="images to choose")
    parser.add_argument("--quick", action="store_true", help="N = 3 (the demo's pool is small anyway)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shards = Path(args.shards)
    if args.quick:
        args.n = 3
    if not shards.is_dir():
        print(f"bench_advise: no relabelled pool at {shards} (run make demo or make refine first); nothing timed")
        return
    info = relabel_info(shards)
    if info is None:
        raise SystemExit(f"{shards}: not a relabelled folder (run refine or relabel first)")
    model = Path(info["model"]["path"])

    with stopwatch() as read:
        rows, images = advise_mod._pool(shards, set())
    with stopwatch() as feats:
        features = advise_mod._features(model, images, device="cpu", progress=False)
    gain = np.array([1.0 - r["confidence"] for r in rows])
    with stopwatch() as pick:
        advise_mod.choose_to_label(gain, features, [r["id"] for r in rows], args.n)
    with tempfile.TemporaryDirectory() as tmp, stopwatch() as whole:
        advise_mod.advise(shards, Path(tmp) / "advise", n=args.n, device="cpu", progress=False)

    print(f"pool: {len(rows)} images, {features.shape[1]}-d features, N = {args.n}, {args.threads} thread(s)")
    print(f"  read shards     {read.seconds:7.1f} s")
    print(f"  features        {feats.seconds:7.1f} s")
    print(f"  choose          {pick.seconds:7.1f} s")
    print(f"  whole command   {whole.seconds:7.1f} s   (target <= 120 s: {'met' if whole.seconds <= 120 else 'NOT met'})")


if __name__ == "__main__":
    main()
