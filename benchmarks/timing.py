"""Timing helpers shared by the benchmarks: best-of-n wall time after a warm-up."""

from __future__ import annotations

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
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def row(benchmark: str, ours: float, reference: float, note: str = "") -> dict[str, object]:
    """A result row; ratio = reference / ours, so above 1 means we are faster."""
    return {
        "benchmark": benchmark,
        "ours_s": ours,
        "reference_s": reference,
        "ratio": reference / ours,
        "note": note,
    }
