"""Stage-1 speed on isic_sample: seconds per image of ``pseudomasks`` with 1 and 2 jobs, beside a plain decode.

Prints, per image: a plain full-size decode (``read_image(path)``), the reduced decode stage 1 uses
(``read_image(path, min_long_side=decode_long_side)``), and the whole ``run_pseudomasks`` (decode, hair
removal, seeds, walker, shard writing) with ``--jobs 1`` and ``--jobs 2`` (default shard size: all 99 images in
one shard, so the speed-up comes from per-image tasks). Then the ratios the issue asks for.

``--against DIR`` measures another checkout of edgedino (e.g. the main branch) the same way, in a subprocess
run right after this one's, and prints both side by side (the machine's load average is printed too: other
work on the machine slows both, and ``--jobs 2`` most).

    python bench/bench_stage1.py            # all 99 images
    python bench/bench_stage1.py --limit 30
    python bench/bench_stage1.py --against ../main
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
DATA = HERE.parent / "shared" / "data" / "isic_sample"
ROWS = ("full_decode", "reduced_decode", "jobs1", "jobs2")


def _decode(read_image, paths: list[Path], min_long_side: int | None) -> float:
    start = time.perf_counter()
    for p in paths:
        read_image(p, min_long_side=min_long_side)
    return (time.perf_counter() - start) / len(paths)


def measure(code: Path, data: Path, limit: int | None) -> dict[str, float]:
    """Seconds per image of each row of ``ROWS`` for the edgedino checkout at ``code``."""
    sys.path.insert(0, str(code))
    import cv2

    from pipeline.datasets import read_image
    from pipeline.run import RunConfig, run_pseudomasks

    cv2.setNumThreads(1)
    paths = sorted((data / "images").glob("*.jpg"))[:limit]
    with tempfile.TemporaryDirectory(prefix="bench_stage1_") as tmp:
        src = Path(tmp) / "data" / "images"
        src.mkdir(parents=True)
        for p in paths:
            shutil.copy(p, src / p.name)
        config = RunConfig()
        out = {"n": len(paths), "shard_size": config.shard_size, "decode_long_side": config.decode_long_side,
               "full_decode": _decode(read_image, paths, None),
               "reduced_decode": _decode(read_image, paths, config.decode_long_side)}
        for jobs in (1, 2):
            start = time.perf_counter()
            run_pseudomasks(src.parent, Path(tmp) / f"out{jobs}", config=config, jobs=jobs, progress=False)
            out[f"jobs{jobs}"] = (time.perf_counter() - start) / len(paths)
    return out


def _table(results: dict[str, dict[str, float]]) -> str:
    first = next(iter(results.values()))
    names = {"full_decode": "plain full decode (read_image)",
             "reduced_decode": f"reduced decode (min_long_side={first['decode_long_side']})",
             "jobs1": "pseudomasks --jobs 1 (wall / images)", "jobs2": "pseudomasks --jobs 2 (wall / images)"}
    lines = [f"isic_sample, {first['n']} images, default RunConfig (shard size {first['shard_size']})",
             f"{'ms/image':<44}" + "".join(f"{label:>12}" for label in results)]
    for row in ROWS:
        lines.append(f"{names[row]:<44}" + "".join(f"{1000 * r[row]:12.1f}" for r in results.values()))
    lines.append(f"{'1 job vs plain full decode':<44}" + "".join(f"{r['jobs1'] / r['full_decode']:11.2f}x"
                                                              for r in results.values()))
    lines.append(f"{'1 -> 2 jobs speed-up':<44}" + "".join(f"{r['jobs1'] / r['jobs2']:11.2f}x"
                                                        for r in results.values()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="A folder with images/ (isic_sample).")
    parser.add_argument("--limit", type=int, default=None, help="Use the first N images only.")
    parser.add_argument("--against", type=Path, default=None,
                        help="Another edgedino checkout (e.g. the main branch) to measure the same way, after this one.")
    parser.add_argument("--code", type=Path, default=HERE, help=argparse.SUPPRESS)  # the checkout to import
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one JSON line (for --against)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results = {"this": measure(args.code, args.data, args.limit)}
    if args.json:
        print(json.dumps(results["this"]))
        return
    if args.against is not None:
        cmd = [sys.executable, __file__, "--code", str(args.against.resolve()), "--data", str(args.data), "--json"]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        env = {**os.environ, "PYTHONPATH": str(args.against.resolve())}
        done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        results[args.against.resolve().name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(_table(results))
    print(f"load average (1 min): {load:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
