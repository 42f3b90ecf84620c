"""NodeId: the one identity of a graph node, formatted and parsed here and nowhere else.

Every stage names nodes the same way, and the exported key stays a readable string::

    blocks.1.attn.hook_z[2]          head 2 of layer 1's attention (every position)
    blocks.1.attn.hook_z[2]@5        the same head at position 5
    layer2.0.conv1[7]@3,4            channel 7 of a conv layer at spatial location (3, 4)
    relu1[error]                     what a feature basis at relu1 does not explain
    blocks.1.attn.hook_k[head=2]     a unit named by its axes (patching's senders, receivers)
    logits                           a node that is a name only (outputs, embeddings)

Grammar: ``site`` then an optional ``[...]`` holding, comma-separated, the unit index, the word
``error`` and ``axis=index`` items, then an optional ``@pos`` or ``@h,w``. `NodeId.parse` reads
back exactly what `str` writes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from circuits.errors import SchemaError

_KEY = re.compile(
    r"^(?P<site>[^\[\]@]+)(?:\[(?P<part>[^\[\]]*)\])?(?:@(?P<where>-?\d+(?:,-?\d+)?))?$"
)
_NAMED = re.compile(r"^(?P<axis>[A-Za-z_][A-Za-z0-9_]*)=(?P<index>-?\d+)$")
_BLOCK = re.compile(r"blocks\.(\d+)\.")
METRIC = "metric"  # the key of the output node that stands for the metric


@dataclass(frozen=True, order=True)
class NodeId:
    """Where a node is: its site (or name), unit, position or spatial index, named axes.

    site: the hook site the node lives at, or a plain name ("logits", "metric").
    unit: the index along the site's unit axis (neuron, channel, head, latent), -1 for none.
    pos: the token position, -1 for all positions. h, w: a spatial index, -1 for none.
    named: other axes as (axis, index) pairs, in order (`[head=2]`, `[3,batch=0]`).
    error: the error node of a feature basis at `site` (what the basis misses).
    """

    site: str
    unit: int = -1
    pos: int = -1
    h: int = -1
    w: int = -1
    named: tuple[tuple[str, int], ...] = ()
    error: bool = False

    def __post_init__(self) -> None:
        site = self.site
        if not isinstance(site, str) or not site or "[" in site or "]" in site or "@" in site:
            raise SchemaError(
                f"a node's site must be a non-empty name without '[', ']' or '@', got {site!r}"
            )
        if not all(type(v) is int for v in (self.unit, self.pos, self.h, self.w)):
            for name in ("unit", "pos", "h", "w"):
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise SchemaError(f"NodeId.{name} must be an int (-1 for none), got {value!r}")
        if (self.h >= 0) != (self.w >= 0):
            raise SchemaError(f"NodeId needs both h and w or neither, got h={self.h}, w={self.w}")
        if self.named:
            named = tuple((str(a), int(i)) for a, i in self.named)
            if any(not _NAMED.match(f"{a}={i}") for a, i in named):
                raise SchemaError(f"NodeId.named holds (axis name, int) pairs, got {self.named!r}")
            object.__setattr__(self, "named", named)

    @property
    def key(self) -> str:
        """The readable string form (the graph's node key)."""
        return str(self)

    def __str__(self) -> str:
        items = [str(self.unit)] if self.unit >= 0 else []
        items += ["error"] if self.error else []
        items += [f"{axis}={index}" for axis, index in self.named]
        key = self.site + (f"[{','.join(items)}]" if items else "")
        if self.h >= 0:
            return f"{key}@{self.h},{self.w}"
        return f"{key}@{self.pos}" if self.pos >= 0 else key

    @classmethod
    def parse(cls, key: str) -> NodeId:
        """The NodeId whose string form is `key`; SchemaError for anything else."""
        found = _KEY.match(key) if isinstance(key, str) else None
        if found is None:
            raise SchemaError(
                f"{key!r} is not a node key (site[unit]@pos, site[unit]@h,w, site[error], "
                "site[axis=i])"
            )
        unit, error = -1, False
        named: list[tuple[str, int]] = []
        part = found["part"]
        for i, item in enumerate(part.split(",") if part else []):
            if item.isdigit() and i == 0:
                unit = int(item)
            elif item == "error" and not error and not named:
                error = True
            elif _NAMED.match(item):
                axis, index = item.split("=")
                named.append((axis, int(index)))
            else:
                raise SchemaError(f"{key!r}: cannot read {item!r} inside the brackets")
        pos, h, w = -1, -1, -1
        where = found["where"]
        if where is not None and "," in where:
            h, w = (int(v) for v in where.split(","))
        elif where is not None:
            pos = int(where)
        node = cls(found["site"], unit, pos=pos, h=h, w=w, named=tuple(named), error=error)
        if str(node) != key:
            raise SchemaError(f"{key!r} is not in canonical form; write it as {str(node)!r}")
        return node


def node_row(
    node: NodeId,
    kind: str,
    *,
    site: str | None = None,
    layer: int = -1,
    activation: float = math.nan,
    label: str = "",
) -> dict[str, Any]:
    """The attributes of a graph node (see `circuits.graph.schema`), keyed by `node`.

    site: the hook site, when it differs from the node's name (the logits read the last
    residual stream); layer: the block, -1 for none.
    """
    key = str(node)
    row: dict[str, Any] = {
        "key": key,
        "kind": kind,
        "site": node.site if site is None else site,
        "layer": int(layer),
        "pos": int(node.pos),
        "unit": int(node.unit),
        "activation": float(activation),
        "label": label or key,
    }
    if node.h >= 0:
        row.update(h=int(node.h), w=int(node.w))
    return row


def unit_rows(
    site: str, kind: str, activations: Sequence[float], *, layer: int = -1
) -> list[dict[str, Any]]:
    """The node rows of units 0..n-1 of `site` (n = len(activations)): `node_row` of
    NodeId(site, unit) for each, with the site checked once (thousands of conv channels)."""
    template = node_row(NodeId(site, 0), kind, layer=layer)
    rows = []
    for unit, activation in enumerate(activations):
        key = f"{site}[{unit}]"
        rows.append({**template, "key": key, "unit": unit, "activation": float(activation),
                     "label": key})  # fmt: skip
    return rows


def unit_node(
    site: str, axes: Sequence[str], index: Sequence[int], *, activation: float = math.nan
) -> dict[str, Any]:
    """The node row of one unit of `site`: the indices along `axes` place it. Position and
    spatial axes become pos / h / w, the first other axis the unit index (and its kind), and
    any further axes (batch, ...) named items of the key."""
    where = dict(zip(axes, (int(i) for i in index), strict=True))
    pos = where.pop("pos", -1)
    h, w = (where.pop("h"), where.pop("w")) if "h" in where and "w" in where else (-1, -1)
    rest = list(where.items())
    unit = rest[0][1] if rest else -1
    node = NodeId(site, unit, pos=pos, h=h, w=w, named=tuple(rest[1:]))
    kind = node_kind(site, rest[0][0] if rest else None)
    return node_row(node, kind, layer=block_of(site), activation=float(activation))


def metric_node(label: str) -> dict[str, Any]:
    """The graph's output node standing for the metric (key "metric")."""
    return node_row(NodeId(METRIC), "output", site="", label=label)


def node_kind(site: str, unit_axis: str | None) -> str:
    """The schema kind of a unit at `site` spanning `unit_axis` (None: the whole site)."""
    leaf = site.rsplit(".", 1)[-1]
    if site == "input" or leaf in ("hook_embed", "hook_pos_embed") or site.endswith(":input"):
        return "input"
    if unit_axis == "head":
        return "head"
    if unit_axis == "channel":
        return "channel"
    if unit_axis == "d_mlp":
        return "neuron"
    if leaf == "hook_mlp_out" and unit_axis is None:
        return "mlp"
    return "feature"


def layer_of(site: str) -> int | None:
    """The block a TransformerLens site lives in (`blocks.3.attn.hook_z` -> 3), else None."""
    found = _BLOCK.match(site)
    return int(found.group(1)) if found else None


def block_of(site: str) -> int:
    """`layer_of` with the graph schema's -1 for "none"."""
    found = layer_of(site)
    return -1 if found is None else found
