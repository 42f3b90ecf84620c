"""How faithful a feature circuit is, measured by intervention on the replacement model.

The real model (nothing frozen) with every dictionary spliced in: each written site becomes
``decode(latents * keep) + error``, with the latents computed from the live run (so upstream
ablations propagate) and each error held at its clean value. Three runs:

- full: every latent kept. This is the clean run exactly (the clean error fills the gap).
- circuit: the latents that are feature nodes of the graph kept, every other latent zero.
- empty: every latent zero, only the errors (and what bypasses the dictionaries) left.

faithfulness = (m(circuit) - m(empty)) / (m(full) - m(empty)), with m the graph's outputs: the
probability-weighted target logits (minus the mean logit), or the metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import networkx as nx
import torch
from torch import Tensor, nn

from circuits.dictionaries import Dictionary
from circuits.dictionaries.data import feature_dim
from circuits.errors import ConfigError, InputError
from circuits.graph.schema import validate_nodes
from circuits.hooks import run
from circuits.ids import METRIC
from circuits.inputs import batch_size, describe
from circuits.metrics import metric_value
from circuits.site import Site

from .replacement import from_rows, ordered_steps, to_rows
from .trace import centred_logits, check_dictionaries, sites_of

Keep = Callable[[Dictionary, Site, int], Tensor]


def feature_faithfulness(
    model: nn.Module,
    g: nx.DiGraph,
    inputs: Any,
    dictionaries: Mapping[str, Dictionary] | Sequence[Dictionary],
    *,
    metric: Callable[[Any], Tensor] | None = None,
) -> float:
    """The faithfulness of feature graph `g` on `inputs` (module docstring).

    metric: the scalar the graph explains when it has a "metric" output node (pass the one
    given to `feature_graph`); else the graph's logit outputs are read from its nodes.

    For example:

        g = cc.feature_graph(model, tokens, transcoders, node_threshold=0.6)
        cc.feature_faithfulness(model, g, tokens, transcoders)       # 0.99 on the lookup model

    Raises:
        ConfigError: `g` has a metric output and no `metric` is given, or no outputs at all.
        InputError: `inputs` is not one example.
        SchemaError: `g` breaks the schema.
        SiteNotFoundError, ShapeMismatchError: as `feature_graph`.
    """
    validate_nodes(g)
    ds = check_dictionaries(dictionaries)
    if batch_size(inputs) != 1:
        raise InputError(
            f"inputs must hold the one example the graph explains, got {describe(inputs)}"
        )
    m = _metric(g, metric)
    ran = run(model, inputs, record=list(dict.fromkeys(s for d in ds for s in sites_of(d))))
    errors = {}
    for d in ds:
        read, write = sites_of(d)
        with torch.no_grad():
            acts = d.encode(
                to_rows(ran.recorded[read], feature_dim(ran.sites[read], d.config.axis))
            )
            rows = to_rows(ran.recorded[write], feature_dim(ran.sites[write], d.config.axis))
            errors[write] = rows - d.decode(acts)
    kept = _kept(g)

    def circuit(d: Dictionary, site: Site, rows: int) -> Tensor:
        mask = torch.zeros(rows, d.n_latents, dtype=torch.bool)
        for where, latent in kept.get(sites_of(d)[0], ()):
            mask[_rows(where, site), latent] = True
        return mask

    def every(d: Dictionary, site: Site, rows: int) -> Tensor:
        return torch.ones(rows, d.n_latents, dtype=torch.bool)

    def none(d: Dictionary, site: Site, rows: int) -> Tensor:
        return torch.zeros(rows, d.n_latents, dtype=torch.bool)

    full, part, empty = (
        m(_spliced_run(model, inputs, ds, errors, keep)) for keep in (every, circuit, none)
    )
    if abs(full - empty) < 1e-12:
        return math.nan
    return (part - empty) / (full - empty)


def _metric(g: nx.DiGraph, metric: Callable[[Any], Tensor] | None) -> Callable[[Any], float]:
    outs = [a for _, a in g.nodes(data=True) if a["kind"] == "output"]
    if METRIC in g:
        if metric is None:
            raise ConfigError(
                "this graph explains a metric; pass the same metric= it was built with"
            )
        return lambda out: float(metric_value(metric, out))
    if not outs:
        raise ConfigError("the graph has no output nodes; build it with cc.feature_graph")
    tokens = [a["unit"] for a in outs]
    weights = torch.tensor([a.get("prob", 1.0) for a in outs], dtype=torch.float64)
    weights = weights / weights.sum()

    def value(out: Any) -> float:
        return float((centred_logits(out, torch.float64)[tokens] * weights).sum())

    return value


def _kept(g: nx.DiGraph) -> dict[str, list[tuple[tuple[int, int, int], int]]]:
    """Per dictionary site: ((pos, h, w), latent) of every feature node of `g`."""
    out: dict[str, list[tuple[tuple[int, int, int], int]]] = {}
    for _, a in g.nodes(data=True):
        if a["kind"] == "feature":
            where = (a["pos"], a.get("h", -1), a.get("w", -1))
            out.setdefault(a["site"], []).append((where, a["unit"]))
    return out


def _rows(where: tuple[int, int, int], site: Site) -> Any:
    """The row index (or every row) that a node's place names on `site` (one example)."""
    pos, h, w = where
    if h >= 0:
        return h * site.shape[site.axis("w")] + w
    return slice(None) if pos < 0 else pos


def _spliced_run(
    model: nn.Module, inputs: Any, ds: Sequence[Dictionary], errors: dict[str, Tensor], keep: Keep
) -> Any:
    latents: dict[str, Tensor] = {}
    steps = []
    for d in ds:
        read, write = sites_of(d)

        def encode(act: Tensor, site: Site, d: Dictionary = d, read: str = read) -> Tensor:
            latents[read] = d.encode(to_rows(act, feature_dim(site, d.config.axis)))
            return act

        def decode(
            act: Tensor, site: Site, d: Dictionary = d, read: str = read, write: str = write
        ) -> Tensor:
            z = latents[read]
            z = z * keep(d, site, z.shape[0]).to(z)
            dim = feature_dim(site, d.config.axis)
            return from_rows(d.decode(z) + errors[write], act.shape, dim)

        steps.append((read, write, encode, decode))
    with torch.no_grad():
        return run(model, inputs, replace=ordered_steps({}, steps)).output
