"""The benchmarks import the installed package (no ``sys.path`` edits) and time through one helper,
``bench/timing.py``, which is checked here on a fake clock."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _timing():
    spec = importlib.util.spec_from_file_location("bench_timing", BENCH / "timing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_a_bench_neither_edits_the_module_path_nor_reads_the_clock_itself(path):
    text = path.read_text()
    assert not re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=", text), path.name
    if path.name != "timing.py":
        assert not re.search(r"time\.(perf_counter|time|monotonic)\(", text), f"{path.name}: time it with timing.py"


def test_timing_helpers_on_a_fake_clock(monkeypatch):
    timing = _timing()
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0, 30.0, 30.5])  # calls of 1, 3, 2 and 0.5 s
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(ticks))
    calls = []
    assert timing.timed(lambda: calls.append("a")) == 1.0
    assert timing.median_of(lambda: calls.append("b"), 3) == 2.0  # 3, 2, 0.5 after one untimed warm-up call
    assert calls == ["a"] + ["b"] * 4
    ticks = iter([0.0, 4.0, 5.0, 6.5])
    assert timing.best_of(lambda: None, 2, warmup=False) == 1.5
    ticks = iter([100.0, 101.0, 103.0])
    with timing.stopwatch() as watch:
        assert watch.lap() == 1.0
    assert watch.seconds == 3.0
