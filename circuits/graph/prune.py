"""Pruning: keep the part of a circuit graph that matters for the outputs.

Three criteria, applied in this order when several are given:

1. ``threshold``: drop edges with ``|weight| < threshold``.
2. ``top_k``: keep the ``k`` edges of largest ``|weight|`` (ties broken by edge order).
3. ``influence``: the cumulative-influence pruning of the circuit-tracing paper (Ameisen et al.
   2025, as in circuit-tracer's ``prune_graph``). Each node's influence on the outputs is
   computed from the row-normalised absolute adjacency (see `circuits.graph.dag`); the nodes
   carrying an ``influence`` share of the total are kept (inputs and outputs always), then each
   surviving edge is scored by ``A[t, s] * (o[t] + x[t])`` on the node-pruned graph and the
   edges carrying an ``edge_influence`` share are kept (default 0.98, circuit-tracer's).
   As in circuit-tracer, the total counts every node, inputs included; inputs carry much of
   it, so a small share can keep inputs only (and then nothing, since no path survives).

Then, always: nodes not on a path from an input to an output are dropped, with their edges.
Inputs are nodes of kind "input" and nodes without predecessors in the candidate graph (error
nodes, say); outputs are nodes of kind "output", or exactly the keys in ``outputs=`` when given
(a mapping gives each output a weight). Without ``outputs=``, outputs that all carry a positive
``prob`` are weighted by it, as circuit-tracer weights its logits; else equally.

Everything runs on numpy arrays (`prune_arrays`), so `circuits.graph.build_graph` can prune a
million candidate edges before building any networkx object; `prune(g)` is the same on a graph.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import networkx as nx
import numpy as np

from circuits.errors import ConfigError, InputError, closest
from circuits.graph import dag
from circuits.graph._util import paused_gc
from circuits.graph.dag import BoolArray, FloatArray, IntArray
from circuits.graph.schema import check_edge, validate_nodes
from circuits.options import configure

Outputs: TypeAlias = Sequence[str] | Mapping[str, float] | None


@dataclass(frozen=True)
class PruneOptions:
    """Validated pruning settings (module docstring); every one is optional. `prune` and
    `build_graph` take this config or its fields as keywords.

    threshold: drop edges with |weight| below it. top_k: keep the k largest |weight| edges.
    influence: keep the nodes carrying this share (0..1) of the total influence on the outputs,
    then the edges carrying `edge_influence` (default 0.98). outputs: the output node keys
    (default: nodes of kind "output", weighted by their ``prob`` where all have one), or a
    mapping key -> weight.
    """

    threshold: float | None = None
    top_k: int | None = None
    influence: float | None = None
    edge_influence: float | None = None
    outputs: Outputs = None

    def __post_init__(self) -> None:
        t = self.threshold
        if t is not None and (isinstance(t, bool) or not _real(t) or not t >= 0 or math.isinf(t)):
            raise ConfigError(f"threshold must be a finite number >= 0, got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0):
            raise ConfigError(f"top_k must be an int >= 0, got {k!r}")
        for name in ("influence", "edge_influence"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not _real(v) or not 0 <= v <= 1):
                raise ConfigError(f"{name} must be a share between 0 and 1 (e.g. 0.8), got {v!r}")
        if self.edge_influence is not None and self.influence is None:
            raise ConfigError("edge_influence needs influence= too (node pruning comes first)")

    @property
    def asked(self) -> bool:
        """Whether any pruning was asked for."""
        return any(
            v is not None for v in (self.threshold, self.top_k, self.influence, self.outputs)
        )

    def record(self, n_nodes: int, n_edges: int) -> dict[str, Any]:
        """The settings as they go into ``g.graph["thresholds"]``."""
        outputs = self.outputs
        out: dict[str, Any] = {"candidates": {"nodes": n_nodes, "edges": n_edges}}
        if self.threshold is not None:
            out["threshold"] = float(self.threshold)
        if self.top_k is not None:
            out["top_k"] = int(self.top_k)
        if self.influence is not None:
            out["influence"] = float(self.influence)
            out["edge_influence"] = float(self.edge_share)
        if outputs is not None:
            out["outputs"] = dict(outputs) if isinstance(outputs, Mapping) else list(outputs)
        return out

    @property
    def edge_share(self) -> float:
        return 0.98 if self.edge_influence is None else float(self.edge_influence)


def _real(v: object) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not math.isnan(float(v))


@dataclass(frozen=True)
class Pruned:
    """What survives: masks over the candidate nodes and edges, and each node's influence."""

    node_mask: BoolArray
    edge_mask: BoolArray
    influence: FloatArray | None


def output_weights(
    keys: Sequence[str], kinds: Sequence[str], outputs: Outputs, probs: Sequence[float] = ()
) -> FloatArray:
    """The output weight vector ``o`` (sums to 1): exactly `outputs` when given, else the kind
    "output" nodes, weighted by their `probs` (each node's ``prob``, as circuit-tracer weights
    its logits) where every output has a positive one, else equally."""
    w = np.zeros(len(keys), dtype=np.float64)
    if outputs is None:
        is_out = np.asarray(kinds, dtype=object) == "output"
        p = np.asarray(probs, dtype=np.float64) if len(probs) == len(keys) else np.zeros(len(keys))
        w[is_out] = p[is_out] if is_out.any() and bool((p[is_out] > 0).all()) else 1.0
    else:
        if isinstance(outputs, str):
            raise ConfigError(f"outputs must be a list of node keys, got the string {outputs!r}")
        index = {k: i for i, k in enumerate(keys)}
        items = outputs.items() if isinstance(outputs, Mapping) else ((k, 1.0) for k in outputs)
        for key, weight in items:
            if key not in index:
                raise InputError(f"output {key!r} is not a node of the graph; {closest(key, keys)}")
            if not _real(weight) or weight < 0:
                raise ConfigError(f"output weight for {key!r} must be >= 0, got {weight!r}")
            w[index[key]] = float(weight)
    if not w.sum() > 0:
        raise ConfigError(
            "pruning needs outputs: give nodes kind='output' or pass outputs=[node keys] "
            "(with a positive weight if a mapping)"
        )
    normalised: FloatArray = w / w.sum()
    return normalised


def prune_arrays(
    src: IntArray,
    dst: IntArray,
    weight: FloatArray,
    *,
    is_input: BoolArray,
    out_w: FloatArray,
    options: PruneOptions,
    keys: Sequence[str] | None = None,
) -> Pruned:
    """The pruning policy on candidate edge arrays (see the module docstring)."""
    n = is_input.shape[0]
    keep = np.ones(src.shape[0], dtype=bool)
    absw = np.abs(weight)
    if options.threshold is not None:
        keep &= absw >= options.threshold
    if options.top_k is not None and int(keep.sum()) > options.top_k:
        idx = np.flatnonzero(keep)
        best = idx[np.argsort(-absw[idx], kind="stable")[: int(options.top_k)]]
        keep = np.zeros_like(keep)
        keep[best] = True
    sources = is_input | (np.bincount(dst, minlength=n) == 0)
    outputs = out_w > 0
    s, t, w = src[keep], dst[keep], weight[keep]
    level = dag.levels(s, t, n)
    if (level < 0).any():
        bad = np.flatnonzero(level < 0)[:5]
        names = [keys[i] if keys is not None else int(i) for i in bad]
        raise InputError(
            f"pruning needs an acyclic graph; these nodes are on or after a cycle: {names}. "
            "Drop self-loops and backward edges, or raise threshold= to cut them"
        )
    node_keep = np.ones(n, dtype=bool)
    x = None
    if options.influence is not None:
        x = dag.influence(s, t, dag.normalised(t, w, n), level, out_w)
        node_keep = (x >= dag.share_cutoff(x, options.influence)) | is_input | outputs
        sub = node_keep[s] & node_keep[t]
        keep[np.flatnonzero(keep)[~sub]] = False
        s, t, w = src[keep], dst[keep], weight[keep]
        a = dag.normalised(t, w, n)
        scores = dag.edge_scores(t, a, dag.influence(s, t, a, level, out_w), out_w)
        sub = scores >= dag.share_cutoff(scores, options.edge_share)
        keep[np.flatnonzero(keep)[~sub]] = False
        s, t = src[keep], dst[keep]
    node_keep &= dag.on_paths(s, t, level, sources, outputs)
    sub = node_keep[s] & node_keep[t]
    keep[np.flatnonzero(keep)[~sub]] = False
    return Pruned(node_keep, keep, x)


def merge_thresholds(old: object, new: Mapping[str, Any]) -> str:
    """The JSON ``thresholds`` attribute: the old settings updated by the new ones."""
    try:
        merged = json.loads(old) if isinstance(old, str) else {}
    except json.JSONDecodeError:
        merged = {}
    if not isinstance(merged, dict):
        merged = {}
    merged.update(new)
    return json.dumps(merged, sort_keys=True)


def prune(g: nx.DiGraph, options: PruneOptions | None = None, **keywords: Any) -> nx.DiGraph:
    """A pruned copy of `g` (the input is never changed); see the module docstring.

    options, keywords: a `PruneOptions`, or its fields as keywords (threshold, top_k, influence,
    edge_influence, outputs). Nodes off every input-to-output path are always dropped. The
    settings are recorded in ``g.graph["thresholds"]``; influence pruning also sets each kept
    node's ``influence``. `build_graph` takes the same options and prunes before building
    (faster for big graphs).

    For example:

        small = cc.prune(g, top_k=20)                     # the 20 strongest edges
        core = cc.prune(g, influence=0.8)                 # nodes carrying 80% of the influence
        small.graph["thresholds"]                         # '{"top_k": 20}'

    Raises:
        ConfigError: an option is unknown or out of range, or `outputs` is malformed.
        InputError: an output named in `outputs` is not a node of the graph.
        SchemaError: `g` breaks the schema.
    """
    validate_nodes(g)
    options = configure(PruneOptions, options, keywords, what="pruning")
    with paused_gc():
        return _prune_graph(g, options)


def _prune_graph(g: nx.DiGraph, options: PruneOptions) -> nx.DiGraph:
    keys = list(g.nodes)
    index = {k: i for i, k in enumerate(keys)}
    edges: list[tuple[str, str, dict[str, Any]]] = []
    src: list[int] = []
    dst: list[int] = []
    weights: list[float] = []
    extra: dict[str, type] = {}
    for u, nbrs in g.adjacency():  # one pass: validate each edge and collect the arrays
        iu = index[u]
        for v, d in nbrs.items():
            check_edge(u, v, d, extra)
            edges.append((u, v, d))
            src.append(iu)
            dst.append(index[v])
            weights.append(d["weight"])
    m = len(edges)
    weight = np.asarray(weights, dtype=np.float64)
    kinds = [g.nodes[k]["kind"] for k in keys]
    is_input = np.asarray([k == "input" for k in kinds], dtype=bool)
    probs = [g.nodes[k].get("prob", math.nan) for k in keys]
    out_w = output_weights(keys, kinds, options.outputs, probs)
    result = prune_arrays(
        np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64), weight,
        is_input=is_input, out_w=out_w, options=options, keys=keys,
    )  # fmt: skip
    h = nx.DiGraph()
    h.graph.update(g.graph)
    h.graph["thresholds"] = merge_thresholds(
        g.graph.get("thresholds"), options.record(len(keys), m)
    )
    for i in np.flatnonzero(result.node_mask):
        attrs = dict(g.nodes[keys[i]])
        if result.influence is not None:
            attrs["influence"] = float(result.influence[i])
        h.add_node(keys[i], **attrs)
    kept = (edges[e] for e in np.flatnonzero(result.edge_mask).tolist())
    h.add_edges_from((u, v, dict(d)) for u, v, d in kept)
    return h
