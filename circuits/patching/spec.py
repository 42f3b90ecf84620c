"""What to patch: site lists and patterns, units (choices of axes), nodes, and batched inputs.

A unit is a choice of axes of a site's activation, named as in `Site.axes`: `("head",)` on
`hook_z` patches one head at every position, `("pos", "head")` one head at one position,
`("channel", "h", "w")` one conv channel at one pixel. A mapping picks indices along each axis
(`{"pos": [3, 7], "head": None}`, None meaning all). A `Node` is one unit at one site, the sender
and receiver of path patching.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import einops
import torch
from torch import Tensor, nn

from circuits.errors import ConfigError, InputError, ModelError
from circuits.site import Site
from circuits.sweeps import model_config

OUTPUT = "logits"
"""The receiver that stands for the model's output: the path ends in the unembedding."""

UnitSpec = str | Sequence[str] | Mapping[str, Any] | None


@dataclass(frozen=True)
class Node:
    """One unit at one site: the site name and an index along some of its axes (the rest whole).

    `Node("blocks.0.attn.hook_z", (("head", 3),))`, or `node("blocks.0.attn.hook_z", head=3)`.
    """

    site: str
    index: tuple[tuple[str, int], ...] = field(default=())

    @property
    def label(self) -> str:
        """`site[axis=i,...]`, or the site alone when the node is the whole site."""
        inner = ",".join(f"{axis}={i}" for axis, i in self.index)
        return f"{self.site}[{inner}]" if inner else self.site

    def __str__(self) -> str:
        return self.label


def node(site: str, **index: int) -> Node:
    """A Node from a site name and axis=index keywords: `node("blocks.1.attn.hook_k", head=2)`."""
    for axis, i in index.items():
        if isinstance(i, bool) or not isinstance(i, int):
            raise ConfigError(f"node index {axis}={i!r} must be an int")
    return Node(site, tuple(index.items()))


def heads(
    model: nn.Module,
    *,
    layers: int | Sequence[int] | None = None,
    kind: Literal["z", "q", "k", "v", "pattern"] = "z",
) -> list[Node]:
    """One Node per attention head of a TransformerLens model (`hook_z`, or its q/k/v/pattern)."""
    n_layers, n_heads = model_config(model, "n_layers"), model_config(model, "n_heads")
    chosen = range(n_layers) if layers is None else [layers] if isinstance(layers, int) else layers
    for layer in chosen:
        if not 0 <= layer < n_layers:
            raise ConfigError(f"layer {layer} is out of range for a model of {n_layers} layers")
    if kind not in ("z", "q", "k", "v", "pattern"):
        raise ConfigError(f"kind must be one of z, q, k, v, pattern, got {kind!r}")
    return [node(f"blocks.{ly}.attn.hook_{kind}", head=h) for ly in chosen for h in range(n_heads)]


def as_node(spec: Any, *, receiver: bool = False) -> Node:
    """Read a sender / receiver spec: a Node, a site name, or (site, {axis: index})."""
    if isinstance(spec, Node):
        return spec
    if isinstance(spec, str):
        return Node(spec)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], Mapping):
        return node(spec[0], **dict(spec[1]))
    role = "receiver" if receiver else "sender"
    raise ConfigError(
        f"a {role} is a Node (cc.node(site, head=3)), a site name or (site, {{axis: index}}), "
        f"got {spec!r}"
    )


def parse_unit(unit: UnitSpec, site: Site) -> tuple[tuple[str, ...], list[list[int]]]:
    """The unit's axis names and, per axis, the indices to patch (non-negative, in order)."""
    if unit is None:
        return (), []
    if isinstance(unit, str):
        unit = (unit,)
    chosen: Mapping[str, Any] = unit if isinstance(unit, Mapping) else dict.fromkeys(unit)
    axes = tuple(chosen)
    if not all(isinstance(a, str) for a in axes):
        raise ConfigError(f"unit names axes by their names (strings), got {unit!r}")
    if "batch" in axes:
        raise InputError("the batch axis is not a unit: every variant patches the whole batch")
    coords = []
    for axis in axes:
        size = site.shape[site.axis(axis)]  # an absent axis raises InputError naming the others
        coords.append(_indices(chosen[axis], size, axis, site.name))
    return axes, coords


def unit_mask(site: Site, axes: Sequence[str], picks: Sequence[Sequence[int]]) -> Tensor:
    """A bool mask [k, *shape without batch] (1 on non-unit axes), True on variant i's unit.

    picks: one index tuple (one index per unit axis) for each of the k variants.
    """
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


def node_mask(site: Site, index: Sequence[tuple[str, int]], k: int = 1) -> Tensor:
    """The mask of one node repeated for k variants (see `unit_mask`)."""
    axes = [axis for axis, _ in index]
    if len(set(axes)) != len(axes):
        raise ConfigError(f"a node names axis twice: {index}")
    picks = [_indices(i, site.shape[site.axis(a)], a, site.name)[0] for a, i in index]
    return unit_mask(site, axes, [picks] * k)


def variants(coords: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Every combination of unit indices, the last axis fastest (the result's row-major order)."""
    return list(itertools.product(*coords))


def repeat_input(inputs: Any, k: int) -> Any:
    """`inputs` repeated k times along the batch axis: variant i is rows i*B .. (i+1)*B - 1."""
    if k == 1:
        return inputs
    if isinstance(inputs, Tensor):
        return einops.repeat(inputs, "b ... -> (k b) ...", k=k)
    if isinstance(inputs, tuple):
        return tuple(repeat_input(x, k) if isinstance(x, Tensor) else x for x in inputs)
    if isinstance(inputs, dict):
        return {n: repeat_input(x, k) if isinstance(x, Tensor) else x for n, x in inputs.items()}
    raise InputError(f"cannot batch inputs of type {type(inputs).__name__}; pass tensors")


def split_output(output: Any, k: int, batch: int) -> list[Any]:
    """The stacked output of k variants cut back into k outputs of `batch` rows each."""
    if k == 1:
        return [output]
    if isinstance(output, Tensor):
        if output.ndim == 0 or output.shape[0] != k * batch:
            raise ModelError(
                f"the model's output {tuple(output.shape)} does not keep the batch axis first "
                f"({k * batch} rows), so stacked variants cannot be told apart; pass "
                f"max_batch={batch} to run one variant per forward pass"
            )
        return list(output.split(batch))
    if isinstance(output, tuple | list):
        parts = [split_output(x, k, batch) for x in output]
        return [type(output)(p[i] for p in parts) for i in range(k)]
    if isinstance(output, dict):
        split = {n: split_output(x, k, batch) for n, x in output.items()}
        return [{n: split[n][i] for n in output} for i in range(k)]
    raise ModelError(
        f"cannot split a model output of type {type(output).__name__} into variants; pass "
        f"max_batch={batch} to run one variant per forward pass"
    )


def _indices(choice: Any, size: int, axis: str, site: str) -> list[int]:
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
