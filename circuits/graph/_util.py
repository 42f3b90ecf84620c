"""Small helpers shared by the graph modules."""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of small objects.

    Each collection walks every live container, so creating a million edge dicts next to a
    graph of a million edge dicts triggers collections that cost more than the work itself.
    Nothing built here is cyclic garbage; reference counting frees it as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def nan_to_none(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes as strict JSON values: NaN floats become None (null)."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in attrs.items()}
