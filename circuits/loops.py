"""Long loops: chunks of variants per forward pass, and the progress bar every loop shows.

`progress=None` is the default everywhere: a bar where output goes to a terminal, none where it
goes to a file or a pipe (CI logs). True and False force it on or off.
"""

from __future__ import annotations

from collections.abc import Iterator

from tqdm.auto import tqdm


def chunks(n: int, k: int) -> Iterator[range]:
    """Consecutive ranges of at most k of n variants."""
    for lo in range(0, n, k):
        yield range(lo, min(n, lo + k))


def progress_bar(total: int | None, desc: str, show: bool | None, *, unit: str = "it") -> tqdm:
    """A tqdm bar over `total` steps; show=None shows it only on a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, disable=None if show is None else not show)
