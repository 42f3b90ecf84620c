"""Any `torch.nn.Module`: sites are `named_modules()` paths, axes are named from the rank."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

# Axis names by rank for activations of modules we know nothing about. Rank 4 is the conv case.
AXES_BY_RANK: dict[int, tuple[str, ...]] = {
    1: ("batch",),
    2: ("batch", "feature"),
    3: ("batch", "pos", "feature"),
    4: ("batch", "channel", "h", "w"),
    5: ("batch", "channel", "d", "h", "w"),
}


def module_table(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule by its dotted path (the root, whose path is empty, is left out)."""
    return {name: mod for name, mod in model.named_modules() if name}


def generic_axes(ndim: int) -> tuple[str, ...]:
    """Axis names for an activation of rank `ndim` (`dim0`, `dim1`, ... beyond rank 5)."""
    return AXES_BY_RANK.get(ndim, ("batch", *(f"dim{i}" for i in range(1, ndim))))


@contextmanager
def patched_forward(module: nn.Module, forward: Any) -> Iterator[None]:
    """`module` runs `forward` instead of its own inside the block (removed in `finally`); its
    hooks still run around it."""
    module.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.forward
