"""Building schema graphs from tables, from GraphSource objects and from effect matrices."""

from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch

from circuits.errors import CircuitsError, InputError, SchemaError
from circuits.graph import (
    GraphSource,
    build_graph,
    build_graph_from_matrix,
    graph_frames,
    node_key,
    validate,
)

NODES = pd.DataFrame(
    {
        "key": ["emb@0", "blocks.0.attn.hook_z[1]@0", "blocks.1.mlp.hook_post[7]@0", "out"],
        "kind": ["input", "head", "neuron", "output"],
        "site": ["embed", "blocks.0.attn.hook_z", "blocks.1.mlp.hook_post", "logits"],
        "layer": [-1, 0, 1, -1],
        "pos": [0, 0, 0, 0],
        "unit": [-1, 1, 7, 42],
        "activation": [1.0, 0.5, np.nan, 2.0],
        "label": ["The", "L0H1", "L1N7", "dog"],
    }
)
EDGES = pd.DataFrame(
    {
        "source": ["emb@0", "blocks.0.attn.hook_z[1]@0", "blocks.1.mlp.hook_post[7]@0", "emb@0"],
        "target": ["blocks.0.attn.hook_z[1]@0", "blocks.1.mlp.hook_post[7]@0", "out", "out"],
        "weight": [0.5, -1.25, 2.0, 0.125],
    }
)


def test_build_from_tables_types_and_provenance() -> None:
    g = build_graph(EDGES, nodes=NODES, meta={"model": "tiny", "metric": "logit_diff", "seed": 1,
                                              "thresholds": {"note": "none"}})  # fmt: skip
    validate(g)
    assert list(g.nodes) == list(NODES["key"])
    head = g.nodes["blocks.0.attn.hook_z[1]@0"]
    assert head == {"kind": "head", "site": "blocks.0.attn.hook_z", "layer": 0, "pos": 0,
                    "unit": 1, "activation": 0.5, "label": "L0H1"}  # fmt: skip
    assert all(type(head[k]) is int for k in ("layer", "pos", "unit"))
    assert math.isnan(g.nodes["blocks.1.mlp.hook_post[7]@0"]["activation"])
    assert g.edges["emb@0", "out"] == {"weight": 0.125, "method": "unknown"}
    assert g.graph["model"] == "tiny" and g.graph["seed"] == 1
    assert json.loads(g.graph["thresholds"]) == {"note": "none"}
    assert math.isnan(g.graph["faithfulness"])


def test_method_from_meta_or_column() -> None:
    g = build_graph(EDGES, nodes=NODES, meta={"method": "eap-ig"})
    assert {m for _, _, m in g.edges(data="method")} == {"eap-ig"}
    per_edge = EDGES.assign(method=["a", "b", "c", "d"], abs_weight=EDGES["weight"].abs())
    g = build_graph(per_edge, nodes=NODES)
    assert g.edges["emb@0", "out"] == {"weight": 0.125, "method": "d", "abs_weight": 0.125}


def test_without_a_node_table_nodes_are_features() -> None:
    g = build_graph(EDGES)
    assert set(g.nodes) == set(NODES["key"])
    out = g.nodes["out"]
    assert out == {"kind": "feature", "site": "", "layer": -1, "pos": -1, "unit": -1,
                   "activation": out["activation"], "label": "out"}  # fmt: skip
    assert math.isnan(out["activation"])
    validate(g)


def test_keys_from_site_unit_pos_and_extra_columns() -> None:
    nodes = pd.DataFrame({"site": ["embed", "layer1.conv", "logits"], "unit": [-1, 3, 0],
                          "pos": [2, -1, -1], "h": [np.nan, 1, np.nan], "w": [np.nan, 2, np.nan],
                          "kind": ["input", "channel", "output"],
                          "score": [0.5, 1.5, np.nan], "tag": ["x", None, "z"]})  # fmt: skip
    keys = ["embed@2", "layer1.conv[3]@1,2", "logits[0]"]
    edges = pd.DataFrame({"source": keys[:2], "target": keys[1:], "weight": [1.0, 2.0]})
    g = build_graph(edges, nodes=nodes)
    assert list(g.nodes) == keys == [node_key("embed", pos=2), node_key("layer1.conv", 3, h=1, w=2),
                                     node_key("logits", 0)]  # fmt: skip
    conv = g.nodes["layer1.conv[3]@1,2"]
    assert conv["h"] == 1 and conv["w"] == 2 and type(conv["h"]) is int
    assert "h" not in g.nodes["embed@2"]  # a missing optional value means "absent"
    assert g.nodes["embed@2"]["score"] == 0.5 and "score" not in g.nodes["logits[0]"]
    assert "tag" not in g.nodes["layer1.conv[3]@1,2"] and g.nodes["logits[0]"]["tag"] == "z"


class FakeAttribution:
    """What an attribution result looks like to the graph stage: tables and provenance."""

    def graph_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return NODES, EDGES.assign(method="eap")

    def graph_meta(self) -> dict[str, object]:
        return {"model": "fake", "method": "eap", "metric": "logit_diff", "seed": 0}


def test_graph_source_protocol() -> None:
    source = FakeAttribution()
    assert isinstance(source, GraphSource)
    g = build_graph(source, meta={"seed": 5})
    assert g.graph["model"] == "fake" and g.graph["seed"] == 5  # explicit meta wins
    assert g.number_of_edges() == 4 and g.edges["emb@0", "out"]["method"] == "eap"
    pruned = build_graph(source, threshold=1.0)
    assert set(pruned.edges) == set()  # the one strong path loses emb -> head (0.5)
    pruned = build_graph(source, threshold=0.1, top_k=3)
    assert ("emb@0", "out") not in pruned.edges and pruned.number_of_edges() == 3


def test_graph_frames_round_trip() -> None:
    g = build_graph(EDGES.assign(method="m"), nodes=NODES, meta={"model": "tiny"})
    nodes, edges = graph_frames(g)
    assert {"key", "kind", "site", "layer", "pos", "unit", "activation", "label"} <= set(nodes)
    assert list(edges.columns[:3]) == ["source", "target", "weight"]
    h = build_graph(edges, nodes=nodes, meta=g.graph)
    assert _same_nodes(g, h)
    assert sorted(g.edges(data=True)) == sorted(h.edges(data=True))


def _same_nodes(g: nx.DiGraph, h: nx.DiGraph) -> bool:
    def norm(attrs: dict) -> dict:
        return {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in attrs.items()}

    return {k: norm(a) for k, a in g.nodes(data=True)} == {
        k: norm(a) for k, a in h.nodes(data=True)
    }


def test_from_matrix_orientation_and_zeros() -> None:
    sources = [{"site": "embed", "pos": p, "kind": "input"} for p in range(2)]
    feats = [{"site": "mlp", "unit": u, "layer": 0, "kind": "neuron"} for u in range(3)]
    m = np.array([[1.0, 0.0], [0.0, -2.0], [0.5, 0.25]])  # rows: targets, columns: sources
    g = build_graph_from_matrix(m, sources=sources, targets=feats, meta={"model": "x"})
    assert g.edges["embed@0", "mlp[0]"]["weight"] == 1.0
    assert g.edges["embed@1", "mlp[1]"]["weight"] == -2.0
    assert ("embed@1", "mlp[0]") not in g.edges and g.number_of_edges() == 4
    assert g.graph["method"] == "direct-effect"
    assert {m for _, _, m in g.edges(data="method")} == {"direct-effect"}
    t = build_graph_from_matrix(torch.tensor(m), sources=sources, targets=feats)
    assert sorted(t.edges(data=True)) == sorted(g.edges(data=True))


def test_from_square_feature_matrix_skips_self_effects() -> None:
    feats = [{"site": "f", "unit": u, "layer": u, "kind": "feature"} for u in range(3)]
    m = np.array([[9.0, 0.0, 0.0], [1.0, 9.0, 0.0], [0.5, 2.0, 9.0]])
    g = build_graph_from_matrix(m, sources=feats, targets=feats)
    assert g.number_of_nodes() == 3
    assert set(g.edges) == {("f[0]", "f[1]"), ("f[0]", "f[2]"), ("f[1]", "f[2]")}
    p = build_graph_from_matrix(m, sources=feats, targets=feats, threshold=0.75, outputs=["f[2]"])
    assert set(p.edges) == {("f[0]", "f[1]"), ("f[1]", "f[2]")}


def test_from_matrix_bad_shape() -> None:
    with pytest.raises(InputError, match=r"shape \(len\(targets\), len\(sources\)\) = \(1, 2\)"):
        build_graph_from_matrix(np.zeros((2, 1)), sources=[{"site": "a", "kind": "input"}] * 2,
                                targets=[{"site": "b", "kind": "output"}])  # fmt: skip


@pytest.mark.parametrize(
    ("edges", "nodes", "phrases"),
    [
        (EDGES.drop(columns="weight"), NODES, ["needs columns ['weight']"]),
        (EDGES, NODES.drop(columns="kind"), ["needs columns ['kind']"]),
        (EDGES, NODES.iloc[:3], ["edge target 'out' is not in the node table"]),
        (pd.concat([EDGES, EDGES.iloc[:1]]), NODES, ["appears twice"]),
        (EDGES.assign(weight=[1.0, np.nan, 1.0, 1.0]), NODES, ["weights must be finite"]),
        (EDGES.assign(weight=["a", "b", "c", "d"]), NODES, ["edge weights must be numbers"]),
        (EDGES, pd.concat([NODES, NODES.iloc[:1]]), ["duplicate key 'emb@0'"]),
        (EDGES, NODES.assign(kind="token"), ["kind 'token'", "expected one of"]),
        (EDGES, NODES.assign(layer=[0.5, 0, 1, 1]), ["layer must be an integer, got 0.5"]),
        (EDGES.assign(source=[1, 2, 3, 4]), None, ["string node keys", "int 1"]),
        (pd.DataFrame({"source": [1], "target": ["out"], "weight": [1.0]}), NODES,
         ["source must hold string node keys"]),
        ([("a", "b", 1.0)], None, ["expects an edge DataFrame"]),
    ],
)  # fmt: skip
def test_bad_tables(edges: object, nodes: object, phrases: list[str]) -> None:
    with pytest.raises(InputError) as info:
        build_graph(edges, nodes=nodes)  # type: ignore[arg-type]
    for phrase in phrases:
        assert phrase in str(info.value)


def test_bad_meta_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="'seed' must be an int"):
        build_graph(EDGES, nodes=NODES, meta={"seed": "zero"})
    with pytest.raises(SchemaError, match="newer circuits"):
        build_graph(EDGES, nodes=NODES, meta={"schema_version": "3.0"})
    with pytest.raises(CircuitsError, match="'notes' must be a scalar"):
        build_graph(EDGES, nodes=NODES, meta={"notes": ["a"]})
