"""Where stage 1's second job loses time: the worker's start, and two threads in one process instead.

``pseudomasks --jobs 2`` runs images in this process and in one loky worker (``pipeline.run``). Two figures bound
what 2 jobs can gain over 1 on a small folder (docs/EXPERIMENTS.md, "Stage 1 speed"):

1. **The worker's start**, per round a fresh ``ProcessPoolExecutor(max_workers=1)``: seconds from making the pool
   until a worker has run a bare function (``os.getpid``: the interpreter and loky), until it has run a function
   of ``pipeline.run`` (its imports: numpy, SciPy, OpenCV, scikit-image, pyamg, h5py), and until the first image
   is done (``hashed_sample``, as the run calls it: the lazy imports of the first image on top).
2. **Two threads instead of a worker**: the same images through ``hashed_sample`` one after another and through
   ``ThreadPoolExecutor(2).map``, after one warm-up image, side by side in each round: the part of an image's work
   that holds the GIL caps what threads can gain (Amdahl).

    python bench/bench_stage1_startup.py             # 3 rounds, 40 isic_sample images for the threads
    python bench/bench_stage1_startup.py --quick     # 1 round, 8 images
"""
from __future__ import annotations

import argparse
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from joblib.externals.loky import ProcessPoolExecutor

from common.datasets import open_dataset
from pipeline.run import RunConfig, hashed_sample, sample_seed

from timing import stopwatch, timed

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic_sample"


def worker_start(first_sample, config: RunConfig) -> dict[str, float]:
    """Seconds from a fresh one-worker pool to: a bare call, a ``pipeline.run`` call, the first image done.
    Two pools: the first measures the bare call alone (a later call would find the worker's imports done)."""
    with stopwatch() as watch, ProcessPoolExecutor(max_workers=1) as pool:
        pool.submit(os.getpid).result()
        bare = watch.lap()
    with stopwatch() as watch, ProcessPoolExecutor(max_workers=1) as pool:
        pool.submit(sample_seed, 0, "x").result()
        ready = watch.lap()
        pool.submit(hashed_sample, first_sample, config).result()
        first = watch.lap()
    return {"bare": bare, "pipeline": ready, "first_image": first}


def threads_vs_serial(samples: list, config: RunConfig) -> tuple[float, float]:
    """(serial seconds, two-thread seconds) for the same images, after one warm-up image."""
    hashed_sample(samples[0], config)
    serial = timed(lambda: [hashed_sample(sample, config) for sample in samples])
    with stopwatch() as watch:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: hashed_sample(s, config), samples))
    return serial, watch.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="image folder (default: shared isic_sample)")
    ap.add_argument("--images", type=int, default=40, help="images for the threads figure")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 round, 8 images")
    args = ap.parse_args()
    rounds, n = (1, 8) if args.quick else (args.rounds, args.images)
    samples = list(open_dataset(args.data).samples)[:n]
    config = RunConfig()
    print(f"{args.data}: {len(samples)} images for the threads; {rounds} round(s); "
          f"load average {os.getloadavg()[0]:.2f}")
    starts, ratios = [], []
    for r in range(rounds):
        s = worker_start(samples[0], config)
        serial, threaded = threads_vs_serial(samples, config)
        starts.append(s)
        ratios.append(serial / threaded)
        print(f"round {r}: worker ready {s['bare']:.2f} s bare, {s['pipeline']:.2f} s with pipeline.run, first image "
              f"done {s['first_image']:.2f} s | {len(samples)} images serial {serial:.2f} s, 2 threads "
              f"{threaded:.2f} s ({serial / threaded:.2f}x)")
    med = {k: statistics.median(s[k] for s in starts) for k in starts[0]}
    print(f"median: worker ready {med['bare']:.2f} s bare, {med['pipeline']:.2f} s with pipeline.run, first image "
          f"done {med['first_image']:.2f} s; 2 threads {statistics.median(ratios):.2f}x over 1 "
          f"(load average after {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
