"""Timing helpers shared by the benchmarks: best-of-n wall time after a warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


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


def medians(times: list[list[float]]) -> list[float]:
    """Each function's median time over the rounds (`rounds`' output)."""
    return [statistics.median(t) for t in zip(*times, strict=True)]


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with n torch threads, then restore the count. One thread is the steady
    clock on a shared 2-core box, where a second thread is free only some of the time."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def row(
    benchmark: str, ours: float, reference: float, note: str = "", ratio: float | None = None
) -> dict[str, object]:
    """A result row; ratio = reference / ours unless given (a paired ratio), so above 1 means
    we are faster."""
    return {
        "benchmark": benchmark,
        "ours_s": ours,
        "reference_s": reference,
        "ratio": reference / ours if ratio is None else ratio,
        "note": note,
    }
