"""What resume's input check costs: sha256 of every input file (common.guard.inputs_hash), per image.

    python bench/bench_provenance.py [DATA ...]     (default: ../shared/data/isic_sample)
    python bench/bench_provenance.py --quick        (what ``make bench`` runs: the same, it takes about a second)

Prints the number of images, their total size, and seconds per image for a first pass (files possibly not in
the page cache) and a second pass (cached), beside the pseudo-mask cost per image for scale
(about 0.1 s; docs/RESULTS.md, "Pseudo-masks").
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common import datasets
from common.guard import inputs_hash

from timing import timed

REPO = Path(__file__).resolve().parents[1]


def main(paths: list[str]) -> None:
    for path in paths or [str(REPO.parent / "shared" / "data" / "isic_sample")]:
        samples = datasets.open_dataset(path).samples
        size = sum(s.image.stat().st_size + (s.mask.stat().st_size if s.mask else 0) for s in samples)
        times = [timed(lambda: inputs_hash(samples)) for _ in range(2)]
        print(f"{path}: {len(samples)} images, {size / 1e6:.1f} MB (images + masks); sha256 of all: first pass "
              f"{times[0]:.2f} s ({1e3 * times[0] / len(samples):.2f} ms/image), cached "
              f"{times[1]:.2f} s ({1e3 * times[1] / len(samples):.2f} ms/image)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="*", help="dataset folders (default: ../shared/data/isic_sample)")
    parser.add_argument("--quick", action="store_true", help="accepted for make bench; the bench is already quick")
    main(parser.parse_args().data)
