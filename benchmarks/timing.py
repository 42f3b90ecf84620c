"""Timing helpers shared by the benchmarks: best-of-n wall time after a warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1) -> float:
    """Best wall-clock seconds of `repeat` calls to `fn` after `warmup` calls (least noisy)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(fns: list[Callable[[], object]], *, repeat: int = 5) -> list[float]:
    """Best wall-clock seconds of each function, timed in turn round by round after a warm-up.

    Interleaving puts every variant under the same background load, which matters more than
    the number of repeats on a shared machine.
    """
    return [min(times) for times in zip(*rounds(fns, repeat=repeat), strict=True)]


def rounds(fns: list[Callable[[], object]], *, repeat: int = 5) -> list[list[float]]:
    """Per round, the wall-clock seconds of each function, timed in turn after a warm-up: the
    functions of one round ran under the same load, so ratios within a round compare."""
    for fn in fns:
        fn()
    out = []
    for _ in range(repeat):
        times = []
        for fn in fns:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out.append(times)
    return out


def paired_ratio(times: list[list[float]], reference: int, ours: int) -> float:
    """The median over rounds of reference time / our time (`rounds`' output, by index)."""
    return statistics.median(r[reference] / r[ours] for r in times)


def row(benchmark: str, ours: float, reference: float, note: str = "") -> dict[str, object]:
    """A result row; ratio = reference / ours, so above 1 means we are faster."""
    return {
        "benchmark": benchmark,
        "ours_s": ours,
        "reference_s": reference,
        "ratio": reference / ours,
        "note": note,
    }
