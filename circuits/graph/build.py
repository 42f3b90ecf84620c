"""Build a schema graph (see `circuits.graph.schema`) from plain tables.

The graph stage knows nodes and edges, not how they were computed: results of other stages
reach it as pandas tables. `build_graph` takes

* an edge table (columns ``source``, ``target``, ``weight``, optional ``method`` and any other
  scalar columns) and an optional node table (``key`` or ``site``, ``kind``, and optional
  ``site layer pos unit h w activation label``; other columns become extra attributes), or
* any object with a ``graph_frames()`` method returning ``(nodes_df or None, edges_df)``: the
  `GraphSource` protocol through which attribution and patching results plug in. It may also
  have ``graph_meta()`` returning provenance (model, method, metric, ...) for ``g.graph``.

`build_graph_from_matrix` takes a direct-effect matrix between features instead.

Pruning options (``threshold``, ``top_k``, ``influence``, ``outputs``; see `circuits.graph.prune`)
are applied to the candidate edge arrays *before* any networkx object exists, so a million
candidate edges cost arrays, not a million Python dicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeAlias, cast, runtime_checkable

import networkx as nx
import numpy as np
import pandas as pd

from circuits.errors import InputError
from circuits.graph._util import paused_gc
from circuits.graph.prune import (
    PruneOptions,
    merge_thresholds,
    output_weights,
    prune_arrays,
)
from circuits.graph.schema import (
    KINDS,
    NODE_ATTRS,
    OPTIONAL_NODE_ATTRS,
    node_key,
    normalise_meta,
    validate,
    validate_nodes,
)
from circuits.options import configure

NodeRows: TypeAlias = pd.DataFrame | Sequence[Mapping[str, Any]]


@runtime_checkable
class GraphSource(Protocol):
    """Anything that can hand the graph stage its nodes and edges as tables."""

    def graph_frames(self) -> tuple[pd.DataFrame | None, pd.DataFrame]:
        """(nodes, edges): the node table (None: the edge endpoints, as features) and the edge
        table (source, target, weight, method), as `build_graph` reads them."""


def build_graph(
    edges: pd.DataFrame | GraphSource,
    options: PruneOptions | None = None,
    *,
    nodes: NodeRows | None = None,
    meta: Mapping[str, Any] | None = None,
    **keywords: Any,
) -> nx.DiGraph:
    """A validated circuit graph from an edge table (and node table), pruned if asked.

    edges: a DataFrame with ``source``, ``target``, ``weight`` (and optional ``method``), or a
    `GraphSource`. nodes: the node table; without one, nodes are the edge endpoints, of kind
    "feature". meta: provenance for ``g.graph`` (model, method, metric, seed, ...).
    options, keywords: pruning, as a `PruneOptions` or its fields as keywords (threshold, top_k,
    influence, edge_influence, outputs); only what survives is built (see `prune`).

    For example:

        edges = pd.DataFrame({"source": ["tok", "head"], "target": ["head", "logit"],
                              "weight": [0.5, 1.2]})
        nodes = pd.DataFrame({"key": ["tok", "head", "logit"], "kind": ["input", "head", "output"],
                              "layer": [-1, 0, 1]})
        g = cc.build_graph(edges, nodes=nodes, meta={"model": "toy"}, top_k=1)
        g = cc.build_graph(cc.attribute(model, clean, corrupt, loss, method="eap-ig"))

    Raises:
        InputError: a table lacks a column, has duplicate or non-string keys, an edge names a node
            the node table lacks, or a weight is not a finite number.
        ConfigError: a pruning option is unknown or out of range.
        SchemaError: a node attribute or `meta` entry breaks the schema (`validate`).
    """
    options = configure(PruneOptions, options, keywords, what="pruning")
    meta = dict(meta or {})
    if isinstance(edges, GraphSource) and not isinstance(edges, pd.DataFrame):
        source = edges
        node_frame, edges = source.graph_frames()
        nodes = node_frame if nodes is None else nodes
        get_meta = getattr(source, "graph_meta", None)
        meta = {**(get_meta() if callable(get_meta) else {}), **meta}
    if not isinstance(edges, pd.DataFrame):
        raise InputError(
            f"build_graph expects an edge DataFrame (source, target, weight) or an object with "
            f".graph_frames(), got {type(edges).__name__}"
        )
    graph_meta = normalise_meta(meta)
    method = str(graph_meta["method"] or "unknown")
    keys, attrs = _node_rows(nodes, edges)
    src, dst, weight = _edge_arrays(edges, keys)
    node_mask = np.ones(len(keys), dtype=bool)
    edge_mask = np.ones(src.shape[0], dtype=bool)
    if options.asked:
        kinds = [a["kind"] for a in attrs]
        is_input = np.asarray([k == "input" for k in kinds], dtype=bool)
        probs = [a.get("prob", math.nan) for a in attrs]
        out_w = output_weights(keys, kinds, options.outputs, probs)
        result = prune_arrays(src, dst, weight, is_input=is_input, out_w=out_w, options=options,
                              keys=keys)  # fmt: skip
        node_mask, edge_mask = result.node_mask, result.edge_mask
        if result.influence is not None:
            for i in np.flatnonzero(node_mask):
                attrs[i]["influence"] = float(result.influence[i])
        record = options.record(len(keys), int(src.shape[0]))
        graph_meta["thresholds"] = merge_thresholds(graph_meta["thresholds"], record)
    g = nx.DiGraph()
    g.graph.update(graph_meta)
    with paused_gc():
        g.add_nodes_from((keys[i], attrs[i]) for i in np.flatnonzero(node_mask))
        _add_edges(g, edges, keys, src, dst, edge_mask, method)
        validate_nodes(g)
        if set(edges.columns) - {"source", "target", "weight", "method"}:
            validate(g)  # extra columns can hold anything; else edges are right by construction
    return g


def build_graph_from_matrix(
    matrix: Any,
    *,
    sources: NodeRows,
    targets: NodeRows,
    meta: Mapping[str, Any] | None = None,
    method: str = "direct-effect",
    **prune_options: Any,
) -> nx.DiGraph:
    """A graph from a direct-effect matrix: ``matrix[i, j]`` is the effect of source j on target i.

    Rows are targets and columns sources, as in circuit-tracer's adjacency matrix and in
    ``y = W x``. sources/targets are node rows (dicts or DataFrames, as for build_graph's node
    table); a node in both lists (a feature-to-feature matrix) is one node. Zero entries and a
    node's effect on itself are not edges. Accepts numpy arrays and torch tensors; other
    keywords are build_graph's pruning options.

    Shapes: `matrix` is `[n_targets, n_sources]`, one row per target row and one column per source
    row.

    For example:

        sources = [{"key": f"f{j}", "kind": "feature", "layer": 0} for j in range(3)]
        targets = [{"key": "out", "kind": "output", "layer": 1}]
        g = cc.build_graph_from_matrix(np.array([[0.5, 0.0, -1.2]]), sources=sources,
                                       targets=targets)                 # 2 edges: zeros dropped

    Raises:
        InputError: `matrix` is not 2-d, its shape does not match the node lists, or it holds NaN
            or infinite values; the node rows are malformed (as `build_graph`).
        ConfigError: a pruning option is unknown or out of range.
        SchemaError: a node attribute or `meta` entry breaks the schema.
    """
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().numpy()
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            f"matrix must be a 2-d array of numbers (numpy or torch), got {type(matrix).__name__}"
        ) from None
    src_rows, tgt_rows = pd.DataFrame(sources), pd.DataFrame(targets)
    if m.ndim != 2 or m.shape != (len(tgt_rows), len(src_rows)):
        raise InputError(
            f"matrix must have shape (len(targets), len(sources)) = "
            f"({len(tgt_rows)}, {len(src_rows)}), got {m.shape}"
        )
    src_keys, _ = _node_rows(src_rows, None)
    tgt_keys, _ = _node_rows(tgt_rows, None)
    both = pd.concat([src_rows.assign(key=src_keys), tgt_rows.assign(key=tgt_keys)])
    nodes = both.drop_duplicates(subset="key", keep="first")
    cut = prune_options.get("threshold")
    mask = m != 0 if cut is None else np.abs(m) >= max(float(cut), np.finfo(float).tiny)
    i, j = np.nonzero(mask)
    sk, tk = np.asarray(src_keys, dtype=object)[j], np.asarray(tgt_keys, dtype=object)[i]
    loop = sk == tk
    frame = pd.DataFrame({"source": sk[~loop], "target": tk[~loop], "weight": m[i, j][~loop]})
    frame["method"] = method
    return build_graph(frame, nodes=nodes, meta={"method": method, **(meta or {})},
                       **prune_options)  # fmt: skip


def _node_rows(nodes: NodeRows | None, edges: pd.DataFrame | None) -> tuple[list[str], list[dict]]:
    """Keys and attribute dicts of the nodes, with schema types and defaults filled in."""
    if nodes is None:
        if edges is None:
            return [], []
        _require(edges, ("source", "target"), "edge table")
        keys = pd.unique(pd.concat([edges["source"], edges["target"]], ignore_index=True))
        _string_keys(pd.Series(keys), "source/target")
        return list(keys), [_default_attrs(k) for k in keys]
    df = nodes if isinstance(nodes, pd.DataFrame) else pd.DataFrame(list(nodes))
    df = df.reset_index(drop=True)
    if "key" not in df.columns:
        _require(df, ("site",), "node table (or give a 'key' column)")
        df = df.assign(key=[_key_of(r) for r in df.to_dict("records")])
    if edges is not None:
        _require(df, ("kind",), "node table")
    keys = df["key"]
    _string_keys(keys, "node table 'key'")
    dup = keys[keys.duplicated()]
    if len(dup):
        raise InputError(f"node table has duplicate key {dup.iloc[0]!r}; keys must be unique")
    if "kind" in df.columns:
        bad = ~df["kind"].isin(KINDS)
        if bad.any():
            row = df[bad].iloc[0]
            raise InputError(
                f"node {row['key']!r} has kind {row['kind']!r}; expected one of {KINDS}"
            )
    rows = []
    for rec in df.to_dict("records"):
        rows.append(_attrs_of(rec))
    return list(keys), rows


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{what} needs columns {missing}; it has {list(df.columns)}")


def _string_keys(keys: pd.Series, what: str) -> None:
    if len(keys) and pd.api.types.infer_dtype(keys, skipna=False) != "string":
        bad = next(k for k in keys if not isinstance(k, str))
        raise InputError(
            f"{what} must hold string node keys (GraphML needs them), found "
            f"{type(bad).__name__} {bad!r}; make keys with circuits.graph.node_key"
        )


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _int(rec: Mapping[str, Any], name: str) -> int:
    value = rec.get(name)
    if _missing(value):
        return -1
    if (isinstance(value, float) and not value.is_integer()) or isinstance(value, str | bool):
        raise InputError(f"node {rec.get('key')!r}: {name} must be an integer, got {value!r}")
    return int(cast(Any, value))


def _key_of(rec: Mapping[str, Any]) -> str:
    dims = {n: _int(rec, n) for n in ("unit", "pos", "h", "w")}
    return node_key(str(rec["site"]), dims["unit"], pos=dims["pos"], h=dims["h"], w=dims["w"])


def _default_attrs(key: str) -> dict[str, Any]:
    return {"kind": "feature", "site": "", "layer": -1, "pos": -1, "unit": -1,
            "activation": math.nan, "label": key}  # fmt: skip


def _attrs_of(rec: Mapping[str, Any]) -> dict[str, Any]:
    """Schema-typed attributes of one node row; missing optional values are left out."""
    key = rec["key"]
    out = _default_attrs(key)
    out["kind"] = rec.get("kind", "feature")
    for name, want in {**NODE_ATTRS, **OPTIONAL_NODE_ATTRS}.items():
        value = rec.get(name)
        if name in ("kind",) or (_missing(value) and name in OPTIONAL_NODE_ATTRS):
            continue
        if want is int:
            out[name] = _int(rec, name)
        elif want is float:
            out[name] = math.nan if _missing(value) else float(value)  # type: ignore[arg-type]
        elif not _missing(value):
            out[name] = str(value)
    for name, value in rec.items():
        if name not in out and name != "key" and not _missing(value):
            out[name] = value.item() if hasattr(value, "item") else value
    return out


def _edge_arrays(
    edges: pd.DataFrame, keys: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer endpoints and float weights of the edge table, checked."""
    _require(edges, ("source", "target", "weight"), "edge table")
    index = pd.Index(keys)
    src = index.get_indexer(edges["source"])
    dst = index.get_indexer(edges["target"])
    for ends, col in ((src, "source"), (dst, "target")):
        if (ends < 0).any():
            bad = edges[col].iloc[int(np.flatnonzero(ends < 0)[0])]
            _string_keys(edges[col], col)
            raise InputError(f"edge {col} {bad!r} is not in the node table; add it there")
    try:
        weight = pd.to_numeric(edges["weight"]).to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"edge weights must be numbers: {err}") from None
    bad_w = ~np.isfinite(weight)
    if bad_w.any():
        e = int(np.flatnonzero(bad_w)[0])
        raise InputError(
            f"edge {keys[src[e]]!r} -> {keys[dst[e]]!r} has weight {weight[e]}; weights must "
            "be finite"
        )
    pair = src.astype(np.int64) * max(len(keys), 1) + dst
    dup = pd.Series(pair).duplicated().to_numpy()
    if dup.any():
        e = int(np.flatnonzero(dup)[0])
        raise InputError(
            f"edge {keys[src[e]]!r} -> {keys[dst[e]]!r} appears twice; sum or drop duplicates"
        )
    return src.astype(np.int64), dst.astype(np.int64), weight


def _add_edges(
    g: nx.DiGraph,
    edges: pd.DataFrame,
    keys: Sequence[str],
    src: np.ndarray,
    dst: np.ndarray,
    mask: np.ndarray,
    method: str,
) -> None:
    """Add the kept edges with their attributes (plain Python scalars) to `g`."""
    rows = np.flatnonzero(mask)
    key_arr = np.asarray(keys, dtype=object)
    sources, targets = key_arr[src[rows]].tolist(), key_arr[dst[rows]].tolist()
    weights = edges["weight"].to_numpy(dtype=np.float64)[rows].tolist()
    extra = [c for c in edges.columns if c not in ("source", "target", "weight", "method")]
    if "method" in edges.columns:
        methods = edges["method"].iloc[rows].astype(str).tolist()
    else:
        methods = [method] * len(rows)
    if not extra:
        g.add_edges_from(
            (u, v, {"weight": w, "method": m})
            for u, v, w, m in zip(sources, targets, weights, methods, strict=True)
        )
        return
    columns = [edges[c].iloc[rows].tolist() for c in extra]
    for u, v, w, m, *vals in zip(sources, targets, weights, methods, *columns, strict=True):
        attrs = {"weight": w, "method": m}
        attrs.update((c, x) for c, x in zip(extra, vals, strict=True) if not _missing(x))
        g.add_edge(u, v, **attrs)
