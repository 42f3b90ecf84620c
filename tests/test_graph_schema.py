"""The circuit graph schema: keys, validation and the precise messages of SchemaError."""

from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np
import pytest

from circuits.errors import SchemaError
from circuits.graph import SCHEMA_VERSION, new_graph, node_key, validate
from circuits.graph.schema import KINDS, fix_types, graph_defaults


def small() -> nx.DiGraph:
    g = new_graph(model="hand-made", thresholds={"threshold": 0.1})
    base = {"site": "s", "layer": 0, "pos": -1, "unit": 0, "activation": 1.0, "label": ""}
    g.add_node("a", **{**base, "kind": "input", "layer": -1})
    g.add_node("b", **{**base, "kind": "neuron", "unit": 3})
    g.add_node("c", **{**base, "kind": "output", "layer": -1})
    g.add_edge("a", "b", weight=0.5, method="hand")
    g.add_edge("b", "c", weight=-1.5, method="hand")
    return g


def test_node_key_forms() -> None:
    assert node_key("blocks.1.attn.hook_z", 2, pos=5) == "blocks.1.attn.hook_z[2]@5"
    assert node_key("layer2.0.conv1", 7, h=3, w=4) == "layer2.0.conv1[7]@3,4"
    assert node_key("blocks.0.hook_resid_pre", pos=0) == "blocks.0.hook_resid_pre@0"
    assert node_key("logits") == "logits"
    with pytest.raises(SchemaError, match="non-empty site"):
        node_key("")


def test_new_graph_has_every_provenance_field() -> None:
    g = new_graph(seed=3, faithfulness=0.9)
    assert g.graph["schema_version"] == SCHEMA_VERSION == "1.0"
    assert g.graph["seed"] == 3 and g.graph["faithfulness"] == 0.9
    assert math.isnan(graph_defaults()["faithfulness"])
    assert g.graph["created_by"].startswith("circuits ")
    assert json.loads(new_graph(thresholds={"top_k": 5}).graph["thresholds"]) == {"top_k": 5}
    validate(g)
    validate(small())


def _node_attr(name: str, value: object):
    def change(g: nx.DiGraph) -> None:
        g.nodes["b"][name] = value

    return change


def _edge_attr(name: str, value: object):
    def change(g: nx.DiGraph) -> None:
        g.edges["a", "b"][name] = value

    return change


def _graph_attr(name: str, value: object):
    def change(g: nx.DiGraph) -> None:
        g.graph[name] = value

    return change


def _int_key(g: nx.DiGraph) -> None:
    g.add_node(7, **g.nodes["b"])


def _del(where: str, name: str):
    def change(g: nx.DiGraph) -> None:
        target = {"node": g.nodes["b"], "edge": g.edges["a", "b"], "graph": g.graph}[where]
        del target[name]

    return change


BREAKS = [
    (_int_key, ["node keys must be non-empty strings", "int 7"]),
    (_del("node", "kind"), ["node 'b'", "missing required attribute 'kind'"]),
    (_node_attr("kind", "neuronn"), ["node 'b'", "unknown kind 'neuronn'", "feature"]),
    (_del("node", "layer"), ["node 'b'", "missing required attribute 'layer'"]),
    (_node_attr("layer", "3"), ["node 'b'", "'layer' must be an int", "str"]),
    (_node_attr("layer", True), ["'layer' must be an int", "bool"]),
    (_node_attr("activation", 1), ["node 'b'", "'activation' must be a float", "int"]),
    (_node_attr("activation", math.inf), ["'activation' is inf", "finite or NaN"]),
    (_node_attr("activation", np.float32(1.0)), ["numpy float32", "float(x)"]),
    (_node_attr("tags", [1, 2]), ["node 'b'", "'tags' must be a scalar", "list"]),
    (_node_attr("id", "x"), ["'id' is reserved"]),
    (_del("edge", "weight"), ["edge 'a' -> 'b'", "missing required attribute 'weight'"]),
    (_edge_attr("weight", 1), ["edge 'a' -> 'b'", "'weight' must be a float", "int"]),
    (_edge_attr("weight", math.nan), ["edge 'a' -> 'b'", "'weight' is NaN"]),
    (_edge_attr("weight", np.float64(0.5)), ["edge 'a' -> 'b'", "numpy float64"]),
    (_edge_attr("method", 3), ["edge 'a' -> 'b'", "'method' must be a str"]),
    (_edge_attr("extra", {"x": 1}), ["'extra' must be a scalar", "dict"]),
    (_del("graph", "schema_version"), ["'schema_version' is missing"]),
    (_graph_attr("schema_version", "2.0"), ["'2.0'", "newer circuits", "upgrade"]),
    (_graph_attr("schema_version", "1.1"), ["newer circuits"]),
    (_graph_attr("schema_version", "one"), ["version string"]),
    (_graph_attr("schema_version", 1.0), ["version string"]),
    (_del("graph", "metric"), ["graph", "missing required attribute 'metric'"]),
    (_graph_attr("seed", None), ["graph", "'seed' must be an int"]),
    (_graph_attr("thresholds", "{oops"), ["'thresholds' must be a JSON object"]),
    (_graph_attr("thresholds", "[1]"), ["'thresholds' must be a JSON object"]),
]


@pytest.mark.parametrize(("change", "phrases"), BREAKS, ids=[str(p[1][-1]) for p in BREAKS])
def test_validate_names_the_problem(change, phrases: list[str]) -> None:
    g = small()
    change(g)
    with pytest.raises(SchemaError) as info:
        validate(g)
    for phrase in phrases:
        assert phrase in str(info.value)


def test_extra_attribute_must_keep_one_type() -> None:
    g = small()
    g.nodes["a"]["score"] = 1
    g.nodes["b"]["score"] = 1.5
    with pytest.raises(SchemaError, match="'score' is float here but int elsewhere"):
        validate(g)
    g.nodes["b"]["score"] = 2
    g.nodes["c"]["note"] = "fine"
    g.edges["a", "b"]["abs_weight"] = 0.5
    validate(g)


def test_not_a_digraph() -> None:
    with pytest.raises(SchemaError, match=r"networkx\.DiGraph"):
        validate(nx.MultiDiGraph(small()))
    with pytest.raises(SchemaError, match=r"networkx\.DiGraph"):
        validate(nx.Graph())
    with pytest.raises(SchemaError, match=r"networkx\.DiGraph"):
        validate({"nodes": []})


def test_every_kind_is_accepted() -> None:
    g = small()
    for kind in KINDS:
        g.nodes["b"]["kind"] = kind
        validate(g)


def test_fix_types_casts_schema_attributes_only() -> None:
    g = small()
    g.nodes["b"].update(layer="0", activation="1.5", prob=None, custom="7")
    g.graph["seed"] = "4"
    g.edges["a", "b"]["weight"] = "0.25"
    fix_types(g)
    assert g.nodes["b"]["layer"] == 0 and g.nodes["b"]["activation"] == 1.5
    assert math.isnan(g.nodes["b"]["prob"]) and g.nodes["b"]["custom"] == "7"
    assert g.graph["seed"] == 4 and g.edges["a", "b"]["weight"] == 0.25
    validate(g)
