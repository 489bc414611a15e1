"""Stage-1 speed on isic_sample: seconds per image of ``pseudomasks`` with 1 and 2 jobs, beside a plain decode.

Prints, per image: a plain full-size decode (``cv2.imdecode`` of the file's bytes and nothing else: the issue's
18.9 ms), the full decode of ``read_image`` (header, EXIF orientation, checks), the reduced decode stage 1 uses
(``read_image(path, min_long_side=decode_long_side)``), and the whole ``run_pseudomasks`` (decode, hair
removal, seeds, walker, shard writing) with ``--jobs 1`` and ``--jobs 2`` (default shard size: all 99 images in
one shard, so the speed-up comes from per-image tasks) on a copy of the folder as it is: the images and, where
the folder has them, their masks (``pseudomasks --data isic_sample`` pairs them and checks each mask's size). Then the ratios the issue asks for: every row is
measured once per round (``--rounds``, default 3) and each ratio is taken within a round; medians are shown.

"this" is the installed edgedino (``make install``: this checkout). ``--against DIR`` measures another checkout
of edgedino (e.g. the main branch) the same way, in a subprocess run right after this one's, and prints both side
by side (the machine's load average is printed too: other work on the machine slows both, and ``--jobs 2`` most).
How the other checkout is imported: a fresh process started with ``PYTHONPATH=DIR``, whose entries come before the
installed package on the module path, so that process imports DIR's ``pipeline`` (it checks that it did); this
process's own module path is never edited.

    python bench/bench_stage1.py            # all 99 images
    python bench/bench_stage1.py --limit 30
    python bench/bench_stage1.py --quick           # 20 images, 1 round (make bench)
    python bench/bench_stage1.py --against ../main
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import timed

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic_sample"
ROWS = ("imdecode", "full_decode", "reduced_decode", "jobs1", "jobs2")


def _decode(read_image, paths: list[Path], min_long_side: int | None) -> float:
    return timed(lambda: [read_image(p, min_long_side=min_long_side) for p in paths]) / len(paths)


def _imdecode(paths: list[Path]) -> float:
    """The plain full decode the issue measured (18.9 ms): bytes in, ``cv2.imdecode``, nothing else."""
    import cv2
    import numpy as np

    def decode_all():
        for p in paths:
            cv2.imdecode(np.fromfile(p, dtype=np.uint8), cv2.IMREAD_COLOR)

    return timed(decode_all) / len(paths)


_RUN = """
import sys
from pathlib import Path
import pipeline.run
from pipeline.run import run_pseudomasks
from timing import timed
print(pipeline.run.__file__)
print(timed(lambda: run_pseudomasks(Path(sys.argv[1]), Path(sys.argv[2]), jobs=int(sys.argv[3]), progress=False)))
"""


def _fresh_run(code: Path, data: Path, out: Path, jobs: int) -> float:
    """Seconds of one ``run_pseudomasks`` in a new Python process, as ``edgedino pseudomasks`` runs (imports not
    counted): worker pools are started by the run, never left warm by an earlier one."""
    # Run from ``code``: ``python -c`` puts the working folder first on sys.path, before PYTHONPATH, so a run
    # started elsewhere imported the caller's checkout (until 2026-12-01 ``--against`` timed this checkout twice).
    # This folder comes after ``code`` on PYTHONPATH: the run imports ``code``'s edgedino and our timing helper.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(Path(__file__).resolve().parent)])}
    done = subprocess.run([sys.executable, "-c", _RUN, str(data.resolve()), str(out.resolve()), str(jobs)], env=env,
                          cwd=code, check=True, capture_output=True, text=True)
    imported, seconds = done.stdout.strip().splitlines()[-2:]
    if not Path(imported).resolve().is_relative_to(code.resolve()):
        raise RuntimeError(f"the run meant for {code} imported {imported}")
    return float(seconds)


def _checkout(code: Path | None) -> Path:
    """The folder of the edgedino this process imports: the installed one, or ``code`` (``--code``, where the
    process was started with ``PYTHONPATH=code``: refused when another one was imported)."""
    import pipeline

    imported = Path(pipeline.__file__).resolve().parents[1]
    if code is not None and imported != code.resolve():
        raise RuntimeError(f"meant to measure {code} but imported {imported}: start with PYTHONPATH={code}")
    return imported


def measure(code: Path, data: Path, limit: int | None, rounds: int) -> dict:
    """Seconds per image of each row of ``ROWS`` for the edgedino checkout at ``code`` (the one this process
    imports, :func:`_checkout`), per round.

    Every round measures all rows one after the other, so each round's ratios come from figures taken
    seconds apart (the machine is noisy); the table shows the median round.
    """
    import cv2

    try:
        from common.datasets import open_dataset, read_image
    except ImportError:  # a checkout from before common/ (--against an older branch): the same two functions
        from pipeline.datasets import open_dataset, read_image
    from pipeline.run import RunConfig

    cv2.setNumThreads(1)
    samples = open_dataset(data).samples[:limit]  # images paired with their masks as ``pseudomasks`` pairs them
    paths = [s.image for s in samples]
    masks = [s.mask for s in samples if s.mask is not None]
    config = RunConfig()
    out = {"n": len(paths), "shard_size": config.shard_size, "decode_long_side": config.decode_long_side,
           "rounds": [], "masks": len(masks)}
    with tempfile.TemporaryDirectory(prefix="bench_stage1_") as tmp:
        src = Path(tmp) / "data" / "images"
        src.mkdir(parents=True)
        for p in paths:
            shutil.copy(p, src / p.name)
        if masks:
            (src.parent / "masks").mkdir()
            for m in masks:
                shutil.copy(m, src.parent / "masks" / m.name)
        for r in range(rounds):
            row = {"imdecode": _imdecode(paths), "full_decode": _decode(read_image, paths, None),
                   "reduced_decode": _decode(read_image, paths, config.decode_long_side)}
            for jobs in (1, 2):
                row[f"jobs{jobs}"] = _fresh_run(code, src.parent, Path(tmp) / f"out{r}-{jobs}", jobs) / len(paths)
            out["rounds"].append(row)
    return out


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _table(results: dict[str, dict]) -> str:
    first = next(iter(results.values()))
    names = {"imdecode": "plain full decode (cv2.imdecode)",
             "full_decode": "full decode by read_image (+ header, EXIF)",
             "reduced_decode": f"reduced decode (min_long_side={first['decode_long_side']})",
             "jobs1": "pseudomasks --jobs 1 (wall / images)", "jobs2": "pseudomasks --jobs 2 (wall / images)"}
    lines = [f"isic_sample, {first['n']} images and {first.get('masks', 0)} masks, default RunConfig (shard size "
             f"{first['shard_size']}); "
             f"median of {len(first['rounds'])} rounds [min - max]",
             f"{'ms/image':<46}" + "".join(f"{label:>26}" for label in results)]

    def cell(values: list[float], fmt: str) -> str:
        return f"{fmt.format(_median(values))} [{fmt.format(min(values))} - {fmt.format(max(values))}]"

    for row in ROWS:
        lines.append(f"{names[row]:<46}" + "".join(f"{cell([1000 * x[row] for x in r['rounds']], '{:.1f}'):>26}"
                                                   for r in results.values()))
    for label, num, den in (("1 job vs plain full decode", "jobs1", "imdecode"),
                            ("1 job vs read_image full decode", "jobs1", "full_decode"),
                            ("1 -> 2 jobs speed-up", "jobs1", "jobs2")):
        lines.append(f"{label:<46}" + "".join(f"{cell([x[num] / x[den] for x in r['rounds']], '{:.2f}x'):>26}"
                                              for r in results.values()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="A folder with images/ (isic_sample).")
    parser.add_argument("--limit", type=int, default=None, help="Use the first N images only.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of every row (default 3); medians shown.")
    parser.add_argument("--against", type=Path, default=None,
                        help="Another edgedino checkout (e.g. the main branch) to measure the same way, after this one.")
    parser.add_argument("--code", type=Path, default=None, help=argparse.SUPPRESS)  # the checkout to import
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one JSON line (for --against)
    parser.add_argument("--quick", action="store_true", help="20 images, 1 round (what make bench runs)")
    args = parser.parse_args()
    if args.quick:
        args.limit, args.rounds = args.limit or 20, 1
    load = os.getloadavg()[0]
    results = {"this": measure(_checkout(args.code), args.data, args.limit, args.rounds)}
    if args.json:
        print(json.dumps(results["this"]))
        return
    if args.against is not None:
        cmd = [sys.executable, __file__, "--code", str(args.against.resolve()), "--data", str(args.data), "--json"]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        cmd += ["--rounds", str(args.rounds)]
        env = {**os.environ, "PYTHONPATH": str(args.against.resolve())}
        done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        results[args.against.resolve().name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(_table(results))
    print(f"load average (1 min): {load:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
