"""Stage-1 speed on isic_sample: seconds per image of ``pseudomasks`` with 1 and 2 jobs, beside a plain decode.

Prints, per image: a plain full-size decode (``read_image(path)``), the reduced decode stage 1 uses
(``read_image(path, min_long_side=decode_long_side)``), and the whole ``run_pseudomasks`` (decode, hair
removal, seeds, walker, shard writing) with ``--jobs 1`` and ``--jobs 2`` (default shard size: all 99 images in
one shard, so the speed-up comes from per-image tasks). Then the ratios the issue asks for.

    python bench/bench_stage1.py            # all 99 images
    python bench/bench_stage1.py --limit 30
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.datasets import read_image  # noqa: E402
from pipeline.run import RunConfig, run_pseudomasks  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic_sample"


def _decode(paths: list[Path], min_long_side: int | None) -> float:
    start = time.perf_counter()
    for p in paths:
        read_image(p, min_long_side=min_long_side)
    return (time.perf_counter() - start) / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="A folder with images/ (isic_sample).")
    parser.add_argument("--limit", type=int, default=None, help="Use the first N images only.")
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)
    paths = sorted((args.data / "images").glob("*.jpg"))[: args.limit]
    with tempfile.TemporaryDirectory(prefix="bench_stage1_") as tmp:
        src = Path(tmp) / "data" / "images"
        src.mkdir(parents=True)
        for p in paths:
            shutil.copy(p, src / p.name)
        config = RunConfig()
        full = _decode(paths, None)
        reduced = _decode(paths, config.decode_long_side)
        per_job = {}
        for jobs in (1, 2):
            start = time.perf_counter()
            run_pseudomasks(src.parent, Path(tmp) / f"out{jobs}", config=config, jobs=jobs, progress=False)
            per_job[jobs] = (time.perf_counter() - start) / len(paths)
    print(f"isic_sample, {len(paths)} images, default RunConfig (shard size {config.shard_size})")
    print(f"{'what':<44} {'ms/image':>9}")
    print(f"{'plain full decode (read_image)':<44} {1000 * full:9.1f}")
    print(f"{'reduced decode (min_long_side=' + str(config.decode_long_side) + ')':<44} {1000 * reduced:9.1f}")
    for jobs, t in per_job.items():
        print(f"{'pseudomasks --jobs ' + str(jobs) + ' (wall / images)':<44} {1000 * t:9.1f}")
    print(f"1 job vs plain full decode: {per_job[1] / full:.1f}x   1 -> 2 jobs speed-up: {per_job[1] / per_job[2]:.2f}x")


if __name__ == "__main__":
    main()
