"""The node rows of a feature graph, in the adjacency matrix's order.

Sources: every latent node (dictionaries in forward order, then row, then latent), every error
row, every input row. Targets: every latent node, then the outputs. Keys are `NodeId`s: a latent
is ``site[latent]@pos`` (``@h,w`` on a conv map), an error ``site[error]@pos``, an input
``site@pos``, a logit ``logits[token]@pos``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from circuits.ids import METRIC, NodeId, node_row

from .trace import Traced


def place(shape: Sequence[int], axes: Sequence[str], dim: int, row: int) -> tuple[int, int, int]:
    """(pos, h, w) of row `row` of an activation whose feature axis is `dim` (-1 for none)."""
    dim = dim % len(shape)
    sizes = [n for i, n in enumerate(shape) if i != dim]
    names = [a for i, a in enumerate(axes) if i != dim]
    index = (int(i) for i in torch.unravel_index(torch.tensor(row), sizes))
    where = dict(zip(names, index, strict=True))
    return where.get("pos", -1), where.get("h", -1), where.get("w", -1)


def _node(site: str, where: tuple[int, int, int], unit: int = -1, error: bool = False) -> NodeId:
    pos, h, w = where
    return NodeId(site, unit, pos=pos, h=h, w=w, error=error)


def node_rows(
    traced: Traced, outputs: list[dict[str, Any]], labels: Sequence[str] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(sources, targets) node rows (module docstring)."""
    features: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for sp, values, error in zip(
        traced.spliced, traced.clean.values, traced.clean.errors, strict=True
    ):
        axes = traced.sites[sp.write].axes
        for (row, latent), value in zip(sp.index.tolist(), values.tolist(), strict=True):
            node = _node(sp.read, place(sp.shape, axes, sp.dim, row), int(latent))
            features.append(node_row(node, "feature", layer=sp.layer, activation=value))
        norms = error.norm(dim=-1).tolist()
        for row, norm in enumerate(norms):
            where = place(sp.shape, axes, sp.dim, row)
            node = _node(sp.read, where, error=True)
            errors.append(node_row(node, "error", layer=sp.layer, activation=norm,
                                   label=f"{sp.read} error {_where(where)}"))  # fmt: skip
    inputs = _input_rows(traced, labels)
    last = max((sp.layer for sp in traced.spliced), default=-1) + 1
    pos = inputs[-1]["pos"] if inputs else -1
    outs = [_output_row(o, last, pos) for o in outputs]
    return [*features, *errors, *inputs], [*features, *outs]


def _input_rows(traced: Traced, labels: Sequence[str] | None) -> list[dict[str, Any]]:
    site = traced.input_site
    axes = traced.sites[site].axes
    x: Tensor = traced.clean.input
    tokens = traced.tokens
    rows = []
    for row in range(x.shape[0]):
        where = place(traced.input_shape, axes, traced.input_dim, row)
        unit = int(tokens[row]) if tokens is not None else -1
        label = labels[row] if labels is not None else str(unit) if unit >= 0 else _where(where)
        node = node_row(_node(site, where), "input", activation=float(x[row].norm()),
                        label=str(label))  # fmt: skip
        rows.append({**node, "unit": unit})
    return rows


def _where(where: tuple[int, int, int]) -> str:
    pos, h, w = where
    return f"({h}, {w})" if h >= 0 else f"@{pos}"


def _output_row(out: dict[str, Any], layer: int, pos: int) -> dict[str, Any]:
    node = NodeId(METRIC) if out.get("metric") else NodeId("logits", int(out["token"]), pos=pos)
    label = str(out["label"])
    row = node_row(node, "output", site="", layer=layer, activation=out["value"], label=label)
    return {**row, "prob": float(out.get("prob", math.nan))}


def sum_positions(
    a: Tensor, sources: list[dict[str, Any]], targets: list[dict[str, Any]]
) -> tuple[Tensor, list[dict[str, Any]], list[dict[str, Any]]]:
    """One node per latent (per error site, per input site): rows and columns of `a` that
    differ only in position are added up, activations too."""
    src_rows, src_of = _merge(sources)
    tgt_rows, tgt_of = _merge(targets)
    src_of, tgt_of = src_of.to(a.device), tgt_of.to(a.device)
    cols = a.new_zeros(a.shape[0], len(src_rows)).index_add(1, src_of, a)
    merged = a.new_zeros(len(tgt_rows), len(src_rows)).index_add(0, tgt_of, cols)
    return merged, src_rows, tgt_rows


def _merge(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Tensor]:
    index: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    group = []
    for r in rows:
        node = replace(NodeId.parse(r["key"]), pos=-1, h=-1, w=-1)
        key = str(node)
        if key not in index:
            index[key] = len(out)
            label = r["label"] if r["kind"] == "output" else key
            unit = -1 if r["kind"] == "input" else r["unit"]  # every token at once
            merged = {**r, "key": key, "pos": -1, "unit": unit, "label": label, "activation": 0.0}
            merged.pop("h", None)
            merged.pop("w", None)
            out.append(merged)
        out[index[key]]["activation"] += r["activation"]
        group.append(index[key])
    return out, torch.tensor(group, dtype=torch.long)
