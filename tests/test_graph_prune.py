"""Pruning, checked on graphs whose answer is known by construction and against a dense
numpy computation of the circuit-tracing influence, B = (I - A)^-1 - I."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from circuits.errors import ConfigError, InputError, SchemaError
from circuits.graph import build_graph, graph_frames, prune
from circuits.graph.dag import influence, levels, normalised, on_paths, share_cutoff


def make(edges: dict[tuple[str, str], float], kinds: dict[str, str] | None = None) -> nx.DiGraph:
    """A graph from {(u, v): weight}; kinds default: names starting with 'in' are inputs,
    'out' outputs, everything else a feature."""
    keys = list(dict.fromkeys(k for e in edges for k in e))
    kinds = kinds or {}

    def kind(k: str) -> str:
        return kinds.get(k) or ("input" if k.startswith("in") else
                                "output" if k.startswith("out") else "feature")  # fmt: skip

    nodes = pd.DataFrame({"key": keys, "kind": [kind(k) for k in keys]})
    frame = pd.DataFrame(
        [(u, v, w) for (u, v), w in edges.items()], columns=["source", "target", "weight"]
    )
    return build_graph(frame, nodes=nodes, meta={"method": "hand"})


def random_dag(n: int, p: float, seed: int) -> tuple[nx.DiGraph, np.ndarray]:
    """Nodes 0..n-1 in topological order: the first two inputs, the last two outputs."""
    rng = np.random.default_rng(seed)
    names = [f"in{i}" if i < 2 else f"out{i}" if i >= n - 2 else f"f{i}" for i in range(n)]
    edges = {}
    dense = np.zeros((n, n))  # dense[t, s] = weight of s -> t
    for s in range(n - 2):
        for t in range(max(s + 1, 2), n):
            if rng.random() < p:
                w = float(rng.normal())
                edges[names[s], names[t]] = w
                dense[t, s] = w
    return make(edges), dense


def test_dangling_branch_is_dropped() -> None:
    g = make({("in", "a"): 1.0, ("a", "out"): 1.0, ("in", "dead"): 5.0, ("dead", "end"): 5.0})
    p = prune(g)
    assert set(p.nodes) == {"in", "a", "out"}
    assert set(p.edges) == {("in", "a"), ("a", "out")}


def test_threshold_cuts_edges_then_nodes_off_the_path() -> None:
    edges = {("in", "a"): 0.05, ("a", "out"): 2.0, ("in", "b"): -1.0, ("b", "out"): 0.5,
             ("b", "c"): 3.0}  # fmt: skip
    p = prune(make(edges), threshold=0.1)
    # a loses its only input edge, so it is no longer reached from an input: dropped with a->out
    assert set(p.edges) == {("in", "b"), ("b", "out")}
    assert json.loads(p.graph["thresholds"])["threshold"] == 0.1


def test_top_k_keeps_exactly_the_k_largest() -> None:
    weights = [0.1, -0.9, 0.5, 0.7, -0.3, 0.2, 0.8, -0.6]
    edges = {(f"in{i}", f"out{i}"): w for i, w in enumerate(weights)}
    for k in (0, 1, 3, 5, 8, 20):
        p = prune(make(edges), top_k=k)
        best = sorted(range(len(weights)), key=lambda i: -abs(weights[i]))[:k]
        assert set(p.edges) == {(f"in{i}", f"out{i}") for i in best}
        assert p.number_of_nodes() == 2 * min(k, len(weights))


def test_top_k_ties_keep_the_earlier_edges() -> None:
    edges = {("in0", "out0"): 1.0, ("in1", "out1"): -1.0, ("in2", "out2"): 1.0}
    assert set(prune(make(edges), top_k=2).edges) == {("in0", "out0"), ("in1", "out1")}


def dense_influence(dense: np.ndarray, out_w: np.ndarray) -> np.ndarray:
    a = np.abs(dense)
    a = a / np.maximum(a.sum(axis=1, keepdims=True), 1e-10)
    b = np.linalg.inv(np.eye(len(a)) - a) - np.eye(len(a))
    return out_w @ b


@pytest.mark.parametrize("seed", range(5))
def test_influence_matches_the_matrix_inverse(seed: int) -> None:
    _, dense = random_dag(12, 0.4, seed)
    n = len(dense)
    out_w = np.zeros(n)
    out_w[-2:] = 0.5
    expected = dense_influence(dense, out_w)
    t, s = np.nonzero(dense)
    src, dst = s.astype(np.int64), t.astype(np.int64)
    w = dense[t, s]
    got = influence(src, dst, normalised(dst, w, n), levels(src, dst, n), out_w)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_influence_pruning_against_dense_numpy(seed: int) -> None:
    g, dense = random_dag(14, 0.35, seed)
    names = list(g.nodes)
    order = [f"in{i}" if i < 2 else f"out{i}" if i >= 12 else f"f{i}" for i in range(14)]
    present = [k for k in order if k in names]
    idx = [order.index(k) for k in present]
    dense = dense[np.ix_(idx, idx)]
    out_w = np.array([1.0 if k.startswith("out") else 0.0 for k in present])
    out_w /= out_w.sum()
    x = dense_influence(dense, out_w)
    # node stage: smallest set of top nodes carrying 80% of the total, plus inputs and outputs
    ranked = np.sort(x)[::-1]
    cut = ranked[np.searchsorted(np.cumsum(ranked) / ranked.sum(), 0.8)]
    io = np.array([k.startswith(("in", "out")) for k in present])
    keep = (x >= cut) | io
    sub = dense * keep[:, None] * keep[None, :]
    # edge stage on the node-pruned graph: score = A'[t, s] * (o[t] + x'[t]), keep 98%
    a = np.abs(sub) / np.maximum(np.abs(sub).sum(axis=1, keepdims=True), 1e-10)
    x2 = dense_influence(sub, out_w)
    scores = a * (out_w + x2)[:, None]
    flat = np.sort(scores[scores > 0])[::-1]
    ecut = flat[min(int(np.searchsorted(np.cumsum(flat) / flat.sum(), 0.98)), len(flat) - 1)]
    kept = {(present[s], present[t]) for t, s in zip(*np.nonzero(scores >= ecut), strict=True)}
    # and finally only what lies on an input -> output path
    h = nx.DiGraph(list(kept))
    h.add_nodes_from(present)
    sources = {k for k in present if k.startswith("in") or g.in_degree(k) == 0}
    fwd = set().union(*(nx.descendants(h, s) | {s} for s in sources))
    back = set().union(*(nx.ancestors(h, o) | {o} for o in present if o.startswith("out")))
    on_path = fwd & back
    expected = {(u, v) for u, v in kept if u in on_path and v in on_path}

    p = prune(g, influence=0.8)
    assert set(p.edges) == expected
    assert set(p.nodes) == {k for e in expected for k in e}
    for k in p.nodes:
        assert math.isclose(p.nodes[k]["influence"], x[present.index(k)], abs_tol=1e-12)
    assert json.loads(p.graph["thresholds"])["edge_influence"] == 0.98


def test_influence_share_one_keeps_every_influential_node() -> None:
    g = make({("in", "a"): 1.0, ("a", "out"): 1.0, ("in", "b"): 1e-3, ("b", "out"): 1e-3})
    assert set(prune(g, influence=1.0, edge_influence=1.0).nodes) == {"in", "a", "b", "out"}
    # influences: in 1.0, a 0.999, b 0.001 (total 2): the input alone carries half of it, so
    # 0.5 keeps no feature (and no path survives), 0.6 needs a as well
    assert set(prune(g, influence=0.5).nodes) == set()
    assert set(prune(g, influence=0.6).nodes) == {"in", "a", "out"}


def test_outputs_argument_picks_and_weights_outputs() -> None:
    edges = {("in", "a"): 1.0, ("a", "o1"): 1.0, ("in", "b"): 1.0, ("b", "o2"): 1.0}
    g = make(edges, kinds={"o1": "feature", "o2": "feature"})
    with pytest.raises(ConfigError, match="pruning needs outputs"):
        prune(g)
    assert set(prune(g, outputs=["o1"]).nodes) == {"in", "a", "o1"}
    p = prune(g, influence=0.6, outputs={"o1": 0.9, "o2": 0.1})
    assert set(p.nodes) == {"in", "a", "o1"}
    assert json.loads(p.graph["thresholds"])["outputs"] == {"o1": 0.9, "o2": 0.1}
    with pytest.raises(InputError, match=r"'o3' is not a node.*closest"):
        prune(g, outputs=["o3"])
    with pytest.raises(ConfigError, match="list of node keys"):
        prune(g, outputs="o1")  # type: ignore[arg-type]


def test_prune_never_mutates_its_input() -> None:
    g, _ = random_dag(12, 0.5, 0)
    before = copy.deepcopy(g)
    p = prune(g, threshold=0.2, top_k=10, influence=0.7)
    assert dict(g.nodes(data=True)).keys() == dict(before.nodes(data=True)).keys()
    assert all("influence" not in a for _, a in g.nodes(data=True))
    assert list(g.edges(data=True)) == list(before.edges(data=True))
    assert g.graph == {**before.graph, "faithfulness": g.graph["faithfulness"]}
    p.nodes[next(iter(p.nodes))]["label"] = "changed"
    u, v = next(iter(p.edges))
    p.edges[u, v]["weight"] = 99.0
    assert g.edges[u, v]["weight"] != 99.0 and g.nodes[u]["label"] != "changed"


def test_criteria_compose_in_order() -> None:
    g, _ = random_dag(16, 0.5, 3)
    both = prune(g, threshold=0.3, top_k=12)
    staged = prune(prune(g, threshold=0.3), top_k=12)
    assert set(both.edges) == set(staged.edges)
    assert all(abs(w) >= 0.3 for _, _, w in both.edges(data="weight"))
    assert both.number_of_edges() <= 12
    rec = json.loads(both.graph["thresholds"])
    assert rec["threshold"] == 0.3 and rec["top_k"] == 12
    assert rec["candidates"] == {"nodes": g.number_of_nodes(), "edges": g.number_of_edges()}


def test_cycle_is_refused() -> None:
    g = make({("in", "a"): 1.0, ("a", "b"): 1.0, ("b", "a"): 1.0, ("b", "out"): 1.0})
    with pytest.raises(InputError, match=r"acyclic.*'a'"):
        prune(g)
    # a cut that breaks the cycle is fine
    g.edges["b", "a"]["weight"] = 0.01
    assert set(prune(g, threshold=0.1).edges) == {("in", "a"), ("a", "b"), ("b", "out")}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": -1.0}, "threshold must be"),
        ({"threshold": math.nan}, "threshold must be"),
        ({"threshold": "0.1"}, "threshold must be"),
        ({"top_k": 2.5}, "top_k must be"),
        ({"top_k": -1}, "top_k must be"),
        ({"top_k": True}, "top_k must be"),
        ({"influence": 1.5}, "influence must be a share"),
        ({"influence": -0.1}, "influence must be a share"),
        ({"edge_influence": 0.9}, "needs influence="),
    ],
)
def test_bad_options(options: dict, message: str) -> None:
    g = make({("in", "out"): 1.0})
    with pytest.raises(ConfigError, match=message):
        prune(g, **options)


def test_prune_refuses_a_non_schema_graph() -> None:
    with pytest.raises(SchemaError):
        prune(nx.DiGraph([("a", "b")]))


def test_array_helpers() -> None:
    src = np.array([0, 1, 2, 0], dtype=np.int64)
    dst = np.array([1, 2, 3, 3], dtype=np.int64)
    assert levels(src, dst, 5).tolist() == [0, 1, 2, 3, 0]
    cyc = levels(np.array([0, 1]), np.array([1, 0]), 3)
    assert cyc.tolist() == [-1, -1, 0]
    lv = levels(src, dst, 5)
    keep = on_paths(src, dst, lv, np.array([1, 0, 0, 0, 1], bool), np.array([0, 0, 1, 0, 0], bool))
    assert keep.tolist() == [True, True, True, False, False]
    assert share_cutoff(np.array([4.0, 3.0, 2.0, 1.0]), 0.7) == 3.0
    assert share_cutoff(np.array([0.0, 0.0]), 0.5) == math.inf
    assert share_cutoff(np.array([1.0, 0.0]), 1.0) == 1.0


def test_build_with_pruning_equals_prune_after_build() -> None:
    g, _ = random_dag(30, 0.3, 7)
    nodes, edges = graph_frames(g)
    options: dict[str, Any] = {"threshold": 0.1, "top_k": 60, "influence": 0.9}
    early = build_graph(edges, nodes=nodes, meta=g.graph, **options)
    late = prune(g, **options)
    assert dict(early.nodes(data=True)) == dict(late.nodes(data=True))
    assert sorted(early.edges(data=True)) == sorted(late.edges(data=True))
    assert early.graph["thresholds"] == late.graph["thresholds"]
