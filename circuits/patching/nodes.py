"""Nodes: one unit at one site, the senders and receivers of path patching.

A `Node` names a site and an index along some of its axes (the rest whole); units, the choice of
axes a patch spans, are `circuits.units`. A node's label is its `NodeId` (`site[head=3]`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from circuits.errors import ConfigError
from circuits.ids import NodeId
from circuits.site import model_config

OUTPUT = "logits"
"""The receiver that stands for the model's output: the path ends in the unembedding."""


@dataclass(frozen=True)
class Node:
    """One unit at one site: the site name and an index along some of its axes (the rest whole).

    `Node("blocks.0.attn.hook_z", (("head", 3),))`, or `node("blocks.0.attn.hook_z", head=3)`.
    """

    site: str
    index: tuple[tuple[str, int], ...] = field(default=())

    @property
    def label(self) -> str:
        """`site[axis=i,...]`, or the site alone when the node is the whole site (a NodeId)."""
        return str(NodeId(self.site, named=self.index))

    def __str__(self) -> str:
        return self.label


def node(site: str, **index: int) -> Node:
    """A Node from a site name and axis=index keywords: `node("blocks.1.attn.hook_k", head=2)`.

    Each keyword names an axis of the site and one index along it (negative counts from the
    end); axes not named stay whole. The site and the indices are checked against the model
    when the node is used (`path_patch`), not here.

        cc.node("blocks.1.attn.hook_k", head=2)        # blocks.1.attn.hook_k[head=2]
        cc.node("blocks.0.hook_resid_pre", pos=-1)     # the last position's residual stream
        cc.node("blocks.0.attn.hook_z")                # the whole site

    Raises:
        ConfigError: an index is not an int.
    """
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
    """One Node per attention head of a TransformerLens model (`hook_z`, or its q/k/v/pattern).

    layers: one layer, a list, or None for every layer. kind: which of the head's sites the
    nodes name: "z" (its output, as a sender), "q", "k", "v" (its query, key and value, as
    receivers) or "pattern". The nodes come layer by layer, head by head within a layer.

        cc.heads(model, layers=0)                      # [blocks.0.attn.hook_z[head=0], ...]
        cc.heads(model, layers=[1, 2], kind="k")       # the key inputs of layers 1 and 2

    Raises:
        ModelError: the model is not a TransformerLens model (it has no cfg.n_layers /
            cfg.n_heads).
        ConfigError: a layer is out of range, or `kind` is not one of z, q, k, v, pattern.
    """
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
