"""The one timing helper of the benchmarks: wall seconds of a call or of a block, and the median or best of repeats.

A bench that compares variants times them interleaved (one call of each per round), so that load from other
processes hits every variant alike; each call is one :func:`timed`. On a CUDA device the work is asynchronous,
so the clock is read only after ``torch.cuda.synchronize``.

    from timing import best_of, median_of, stopwatch, timed

    seconds = timed(step, device=device)             # one call
    seconds = median_of(step, 5, device=device)      # one warm-up call, then the median of 5
    seconds = best_of(step, 3, warmup=False)         # the fastest of 3 (the least disturbed by other work)
    with stopwatch() as watch:                       # a block that also returns something
        result = pretrain(...)
    seconds = watch.seconds
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def _sync(device: Any) -> None:
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch  # only here: the stage-1 benches time no torch work and need not load it

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], *, device: Any = None) -> float:
    """Wall seconds of one call ``fn()`` (on a CUDA ``device``, synchronised before and after)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def median_of(fn: Callable[[], object], repeats: int, *, device: Any = None, warmup: bool = True) -> float:
    """The median wall seconds of ``repeats`` calls of ``fn``, after one untimed call when ``warmup``."""
    if warmup:
        fn()
    return statistics.median(timed(fn, device=device) for _ in range(repeats))


def best_of(fn: Callable[[], object], repeats: int, *, device: Any = None, warmup: bool = True) -> float:
    """The fewest wall seconds of ``repeats`` calls of ``fn``, after one untimed call when ``warmup``."""
    if warmup:
        fn()
    return min(timed(fn, device=device) for _ in range(repeats))


class stopwatch:
    """``with stopwatch() as watch:`` a block; ``watch.seconds`` is its wall time once it has ended, and
    ``watch.lap()`` the seconds since it started (inside the block too)."""

    def __enter__(self) -> "stopwatch":
        self.start = time.perf_counter()
        self.seconds = float("nan")
        return self

    def lap(self) -> float:
        return time.perf_counter() - self.start

    def __exit__(self, *exc) -> None:
        self.seconds = self.lap()
