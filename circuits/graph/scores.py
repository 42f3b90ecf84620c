"""How much of a feature graph's influence runs through features rather than error nodes.

circuit-tracer's two scores (Ameisen et al. 2025, its ``compute_graph_scores``), on the
row-normalised absolute adjacency A and each node's influence x on the outputs (`dag`):

- replacement score: the influence of the inputs over that of inputs and error nodes together,
  ``x[inputs].sum() / (x[inputs].sum() + x[errors].sum())``. 1 when every path from the input
  to the outputs runs through features.
- completeness score: each node's share of incoming weight that does not come from error nodes,
  averaged with weights ``x + o`` (influence, plus the output weight for outputs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import networkx as nx
import numpy as np

from circuits.errors import InputError
from circuits.graph import dag
from circuits.graph.dag import FloatArray, IntArray
from circuits.graph.prune import output_weights
from circuits.graph.schema import validate_nodes


def graph_scores(g: nx.DiGraph) -> dict[str, float]:
    """``{"replacement_score": ..., "completeness_score": ...}`` of `g` (module docstring).

    Outputs are weighted as `prune` weights them (their ``prob`` where all have one).

    For example:

        scores = graph_scores(feature_graph)     # on the graph before pruning, as circuit-tracer

    Raises:
        SchemaError: `g` breaks the schema.
        ConfigError: `g` has no output nodes.
        InputError: `g` has a cycle.
    """
    validate_nodes(g)
    keys = list(g.nodes)
    index = {k: i for i, k in enumerate(keys)}
    attrs: list[dict[str, Any]] = [g.nodes[k] for k in keys]
    kinds = [a["kind"] for a in attrs]
    edges = list(g.edges(data="weight"))
    src = np.asarray([index[u] for u, _, _ in edges], dtype=np.int64)
    dst = np.asarray([index[v] for _, v, _ in edges], dtype=np.int64)
    weight = np.asarray([w for _, _, w in edges], dtype=np.float64)
    out_w = output_weights(keys, kinds, None, [a.get("prob", math.nan) for a in attrs])
    return score_arrays(src, dst, weight, kinds, out_w)


def score_arrays(
    src: IntArray, dst: IntArray, weight: FloatArray, kinds: Sequence[str], out_w: FloatArray
) -> dict[str, float]:
    """`graph_scores` on edge arrays (node i has kind ``kinds[i]``, output weight ``out_w[i]``)."""
    n = len(kinds)
    kind = np.asarray(kinds, dtype=object)
    level = dag.levels(src, dst, n)
    if (level < 0).any():
        raise InputError("graph scores need an acyclic graph; this one has a cycle")
    a = dag.normalised(dst, weight, n)
    x = dag.influence(src, dst, a, level, out_w)
    token, error = float(x[kind == "input"].sum()), float(x[kind == "error"].sum())
    replacement = token / (token + error) if token + error > 0 else math.nan
    from_error = np.bincount(dst, weights=a * (kind[src] == "error"), minlength=n)
    out = x + out_w
    completeness = float(((1.0 - from_error) * out).sum() / out.sum())
    return {"replacement_score": replacement, "completeness_score": completeness}
