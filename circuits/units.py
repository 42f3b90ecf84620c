"""Units: which part of a site's activation one patch, score or node covers, named by axes.

A unit is a choice of axes of a site's activation, named as in `Site.axes`: `("head",)` on
`hook_z` is one head at every position, `("pos", "head")` one head at one position,
`("channel", "h", "w")` one conv channel at one pixel. A mapping also picks indices along each
axis (`{"pos": [3, 7], "head": None}`, None meaning all). None is the whole site at once; "all" is
every axis (each element its own unit). Patching and attribution read units with `parse_unit`,
so `unit=` means the same in `cc.patch` and in `cc.attribute`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from circuits.errors import ConfigError, InputError
from circuits.site import Site

UnitSpec = str | Sequence[str] | Mapping[str, Any] | None
"""A unit: None (the whole site), "all", an axis name, a sequence of them, or a mapping from
axis names to indices (an int, a list, a slice, or None for all)."""


def parse_unit(unit: UnitSpec, site: Site) -> tuple[tuple[str, ...], list[list[int]]]:
    """The unit's axis names and, per axis, the chosen indices (non-negative, in order)."""
    if unit is None:
        return (), []
    if isinstance(unit, str):
        unit = site.axes if unit == "all" else (unit,)
    if not isinstance(unit, Sequence | Mapping):
        raise ConfigError(
            f"unit must be None, 'all', an axis name, a sequence of them or a mapping from axis "
            f"names to indices, got {unit!r}; the site has axes {site.axes}"
        )
    chosen: Mapping[str, Any] = unit if isinstance(unit, Mapping) else dict.fromkeys(unit)
    axes = tuple(chosen)
    if not all(isinstance(a, str) for a in axes):
        raise ConfigError(f"unit names axes by their names (strings), got {unit!r}")
    if not isinstance(unit, Mapping) and len(set(unit)) != len(axes):
        raise ConfigError(f"unit names an axis twice: {tuple(unit)}")
    coords = []
    for axis in axes:
        size = site.shape[site.axis(axis)]  # an absent axis raises InputError naming the others
        coords.append(indices(chosen[axis], size, axis, site.name))
    return axes, coords


def unit_mask(site: Site, axes: Sequence[str], picks: Sequence[Sequence[int]]) -> Tensor:
    """A bool mask [k, *shape without batch] (1 on non-unit axes), True on variant i's unit.

    picks: one index tuple (one index per unit axis) for each of the k variants.
    """
    if "batch" in axes:
        raise InputError("the batch axis is not a unit: every variant patches the whole batch")
    dims = [site.axis(a) - 1 for a in axes]  # positions in the shape after the batch axis
    rest = site.shape[1:]
    shape = [len(picks)] + [rest[d] if d in dims else 1 for d in range(len(rest))]
    mask = torch.zeros(shape, dtype=torch.bool)
    if not picks:
        return mask
    table = torch.as_tensor(picks, dtype=torch.long).reshape(len(picks), len(axes))
    cols = [torch.zeros(len(picks), dtype=torch.long)] * len(rest)
    for j, d in enumerate(dims):
        cols[d] = table[:, j]
    mask[(torch.arange(len(picks)), *cols)] = True
    return mask


def index_mask(site: Site, index: Sequence[tuple[str, int]], k: int = 1) -> Tensor:
    """The mask of one unit, given as (axis, index) pairs, repeated for k variants."""
    axes = [axis for axis, _ in index]
    if len(set(axes)) != len(axes):
        raise ConfigError(f"a node names axis twice: {index}")
    picks = [indices(i, site.shape[site.axis(a)], a, site.name)[0] for a, i in index]
    return unit_mask(site, axes, [picks] * k)


def indices(choice: Any, size: int, axis: str, site: str) -> list[int]:
    """The indices `choice` picks along an axis of `size` (None: all), non-negative."""
    if choice is None:
        return list(range(size))
    if isinstance(choice, slice):
        return list(range(size))[choice]
    if isinstance(choice, Tensor):
        choice = choice.flatten().tolist()
    items = [choice] if isinstance(choice, int) else list(choice)
    out = []
    for i in items:
        if isinstance(i, bool) or not isinstance(i, int) or not -size <= i < size:
            raise InputError(
                f"index {i!r} on axis {axis!r} of site {site!r} is out of range (size {size})"
            )
        out.append(i % size)
    if not out:
        raise InputError(f"no index chosen on axis {axis!r} of site {site!r}")
    return out
