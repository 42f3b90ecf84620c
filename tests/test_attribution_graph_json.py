"""circuit-tracer's attribution-graph JSON: exports validate against the schema written from its
pydantic models (tests/data/attribution_graph.schema.json), node ids follow its formats, links
name existing nodes, our own files round-trip through `load_graph` exactly, and circuit-tracer's
own files (no ``circuits`` keys) load by the documented mapping."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import networkx as nx
import pytest

from circuits.errors import ConfigError, SchemaError
from circuits.graph import export_neuronpedia, load_graph, new_graph, node_key, prune, save_graph
from tests.test_graph_io import assert_same, rich_graph

SCHEMA = json.loads((Path(__file__).parent / "data" / "attribution_graph.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _node(g: nx.DiGraph, key: str, kind: str, site: str, layer: int, pos: int, unit: int,
          **extra: Any) -> str:  # fmt: skip
    attrs = {"activation": 1.0, "label": key, **extra}
    g.add_node(key, kind=kind, site=site, layer=layer, pos=pos, unit=unit, **attrs)
    return key


def component_graph() -> nx.DiGraph:
    """Tokens -> heads and whole-site MLPs in two layers -> logits: sites share each layer."""
    g = new_graph(model="attn-only-2l", method="eap-ig", metric="logit_diff")
    toks = [_node(g, node_key("hook_embed", pos=p), "input", "hook_embed", -1, p, 100 + p,
                  label=f"t{p}") for p in range(3)]  # fmt: skip
    heads = [
        _node(g, node_key(f"blocks.{layer}.attn.hook_z", h, pos=2), "head",
              f"blocks.{layer}.attn.hook_z", layer, 2, h, activation=0.1 * h)
        for layer in (0, 1) for h in (0, 3)
    ]  # fmt: skip
    mlps = [_node(g, node_key(f"blocks.{layer}.hook_mlp_out", pos=2), "mlp",
                  f"blocks.{layer}.hook_mlp_out", layer, 2, -1) for layer in (0, 1)]  # fmt: skip
    logits = [_node(g, f"logits[{v}]@2", "output", "logits", -1, 2, v, prob=p, label=f" w{v}")
              for v, p in ((7, 0.6), (9, 0.3))]  # fmt: skip
    for t in toks:
        g.add_edge(t, heads[0], weight=0.5, method="eap-ig")
    g.add_edge(heads[0], mlps[0], weight=0.25, method="eap-ig")
    g.add_edge(mlps[0], heads[2], weight=-0.75, method="eap-ig")
    g.add_edge(heads[1], mlps[1], weight=1.5, method="eap-ig")
    g.add_edge(toks[2], heads[1], weight=0.125, method="eap-ig")
    for h in heads[2:] + mlps[1:]:
        for out in logits:
            g.add_edge(h, out, weight=2.0, method="eap-ig")
    return g


def feature_graph() -> nx.DiGraph:
    """A transcoder-style graph: tokens, features, an error node per (layer, pos), logits;
    influence-pruned so nodes carry ``influence``."""
    g = new_graph(model="gemma-toy", method="direct-effect", metric="logit", prompt="a b c")
    toks = [_node(g, f"tok@{p}", "input", "hook_embed", -1, p, [2, 651, 16][p], label=s)
            for p, s in enumerate(["a", " b", " c"])]  # fmt: skip
    feats, errs = {}, {}
    for layer in range(3):
        for p in range(3):
            site = f"blocks.{layer}.hook_mlp_out"
            feats[layer, p] = _node(g, node_key(f"{site}.tc", 40 + 7 * layer + p, pos=p),
                                    "feature", f"{site}.tc", layer, p, 40 + 7 * layer + p,
                                    activation=0.5 + p)  # fmt: skip
            errs[layer, p] = _node(g, node_key(site, pos=p) + "[error]", "error", site, layer, p,
                                   -1, activation=math.nan, label="err")  # fmt: skip
    logit = _node(g, "logits[3000]@2", "output", "logits", -1, 2, 3000, prob=0.9, label=" d")
    for p in range(3):
        g.add_edge(toks[p], feats[0, p], weight=1.0 + p, method="direct-effect")
        for layer in (1, 2):
            g.add_edge(feats[layer - 1, p], feats[layer, p], weight=0.5, method="direct-effect")
            g.add_edge(errs[layer - 1, p], feats[layer, p], weight=0.1, method="direct-effect")
        g.add_edge(feats[2, p], logit, weight=0.3 * (p + 1), method="direct-effect")
        g.add_edge(errs[2, p], logit, weight=0.05, method="direct-effect")
    return prune(g, influence=0.99, outputs=[logit])


def conv_graph() -> nx.DiGraph:
    """Input channels -> conv channels at (h, w) -> class logits."""
    g = new_graph(model="tiny-cnn", method="eap", metric="class_logit")
    ins = [_node(g, f"conv1:input[{c}]", "input", "conv1:input", -1, -1, c) for c in range(3)]
    chans = [
        _node(g, node_key(f"conv{layer + 1}", c, h=h, w=w), "channel", f"conv{layer + 1}",
              layer, -1, c, h=h, w=w)
        for layer in (0, 1) for c in (0, 5) for h, w in ((0, 1), (2, 3))
    ]  # fmt: skip
    outs = [_node(g, f"fc[{k}]", "output", "fc", -1, -1, k, prob=0.5) for k in (0, 1)]
    for i, c in enumerate(chans[:4]):
        g.add_edge(ins[i % 3], c, weight=0.2 * (i + 1), method="eap")
        g.add_edge(c, chans[4 + i], weight=-0.4, method="eap")
        g.add_edge(chans[4 + i], outs[i % 2], weight=1.25, method="eap")
    return g


GRAPHS = {
    "components": component_graph,
    "features": feature_graph,
    "conv": conv_graph,
    "rich": rich_graph,
    "rich-pruned": lambda: prune(rich_graph(), influence=0.9, outputs=["logit[1234]"]),
}


def export(g: nx.DiGraph, tmp_path: Path, name: str = "g") -> dict[str, Any]:
    path = save_graph(g, tmp_path / f"{name}.json", format="attribution-graph")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse)


def _refuse(name: str) -> None:
    raise ValueError(f"non-strict JSON token {name}")


def schema_errors(data: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(data)]


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    node = SCHEMA["$defs"]["Node"]
    assert node["properties"]["feature_type"]["enum"] == [
        "cross layer transcoder", "mlp reconstruction error", "embedding", "logit"]  # fmt: skip
    assert set(SCHEMA["$defs"]["Metadata"]["required"]) >= {"slug", "scan", "prompt_tokens",
                                                             "node_threshold"}  # fmt: skip


@pytest.mark.parametrize("name", GRAPHS)
def test_export_validates_against_the_schema(tmp_path: Path, name: str) -> None:
    data = export(GRAPHS[name](), tmp_path)
    assert schema_errors(data) == []
    assert data["qParams"] == {"pinnedIds": [], "supernodes": [], "linkType": "both",
                               "clickedId": "", "sg_pos": ""}  # fmt: skip
    assert data["metadata"]["slug"] == "g" and data["metadata"]["schema_version"] == 1


@pytest.mark.parametrize("name", GRAPHS)
def test_links_name_existing_nodes_and_ids_are_unique(tmp_path: Path, name: str) -> None:
    g = GRAPHS[name]()
    data = export(g, tmp_path)
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(ids) == len(set(ids)) == g.number_of_nodes()
    assert len({n["jsNodeId"] for n in data["nodes"] if n["feature_type"] != "cross layer "
                "transcoder"}) == sum(n["feature_type"] != "cross layer transcoder"
                                      for n in data["nodes"])  # fmt: skip
    assert {(x["source"], x["target"]) for x in data["links"]} <= {(a, b) for a in ids
                                                                   for b in ids}  # fmt: skip
    assert len(data["links"]) == g.number_of_edges()


def expected_ids(node: dict[str, Any], n_layers: int) -> tuple[str, str]:
    """The node_id and jsNodeId circuit-tracer's Node constructors give this node's fields."""
    layer, feature, ctx = node["layer"], node["feature"], node["ctx_idx"]
    unit = node["circuits"]["attrs"]["unit"]
    return {
        "cross layer transcoder": (f"{layer}_{feature}_{ctx}", f"{layer}_{feature}-0"),
        "mlp reconstruction error": (f"{layer}_-1_{ctx}", f"{layer}_-1-{ctx}"),
        "embedding": (f"E_{unit}_{ctx}", f"E_{unit}-{ctx}"),
        "logit": (f"{n_layers + 1}_{feature}_{ctx}", f"L_{feature}-{ctx}"),
    }[node["feature_type"]]


@pytest.mark.parametrize("name", GRAPHS)
def test_node_ids_follow_circuit_tracer_formats(tmp_path: Path, name: str) -> None:
    g = GRAPHS[name]()
    data = export(g, tmp_path)
    n_layers = 1 + max(a["layer"] for _, a in g.nodes(data=True) if a["kind"] != "output")
    for node in data["nodes"]:
        attrs = node["circuits"]["attrs"]
        assert (node["node_id"], node["jsNodeId"]) == expected_ids(node, n_layers), node
        if node["feature_type"] == "embedding":
            assert node["layer"] == "E" and node["feature"] == node["ctx_idx"]
            assert node["node_id"] == f"E_{attrs['unit']}_{node['ctx_idx']}"  # the token id
        elif node["feature_type"] == "logit":
            assert node["feature"] == attrs["unit"]  # the vocabulary id
            assert node["layer"] == str(n_layers + 1)
        else:
            assert node["layer"] == str(max(attrs["layer"], 0))
        assert node["ctx_idx"] == max(attrs["pos"], 0) or "h" in attrs


def test_feature_graph_ids_in_detail(tmp_path: Path) -> None:
    data = export(feature_graph(), tmp_path)
    by_id = {n["node_id"]: n for n in data["nodes"]}
    assert {"E_2_0", "E_651_1", "E_16_2", "0_40_0", "2_55_1", "1_-1_2", "4_3000_2"} <= set(by_id)
    assert by_id["1_-1_2"]["feature_type"] == "mlp reconstruction error"
    assert by_id["1_-1_2"]["jsNodeId"] == "1_-1-2" and by_id["1_-1_2"]["activation"] is None
    logit = by_id["4_3000_2"]
    assert logit["is_target_logit"] and logit["clerp"] == 'Output " d" (p=0.900)'
    assert logit["influence"] is None and logit["token_prob"] == 0.9
    influences = [n["influence"] for n in data["nodes"] if n["influence"] is not None]
    assert influences and max(influences) == pytest.approx(1.0)
    assert data["metadata"]["node_threshold"] == 0.99
    assert data["metadata"]["prompt_tokens"] == ["a", " b", " c"]


def test_conv_positions_become_ctx_indices(tmp_path: Path) -> None:
    data = export(conv_graph(), tmp_path)
    ctx = {n["circuits"]["key"]: n["ctx_idx"] for n in data["nodes"]}
    assert ctx[node_key("conv2", 5, h=2, w=3)] == 2 * 4 + 3  # width 4 (w runs 0..3)
    assert {n["node_id"] for n in data["nodes"] if n["feature_type"] == "logit"} == {
        "3_0_0", "3_1_0"}  # fmt: skip


def test_sites_sharing_a_layer_get_distinct_features(tmp_path: Path) -> None:
    data = export(component_graph(), tmp_path)
    layer0 = {n["circuits"]["key"]: n["feature"] for n in data["nodes"] if n["layer"] == "0"}
    assert len(set(layer0.values())) == len(layer0) == 3  # heads 0 and 3, and the whole MLP


@pytest.mark.parametrize("name", GRAPHS)
def test_round_trip_is_lossless(tmp_path: Path, name: str) -> None:
    g = GRAPHS[name]()
    path = save_graph(g, tmp_path / "g.json", format="attribution-graph")
    assert_same(g, load_graph(path))
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]


def test_export_neuronpedia_writes_the_same_format(tmp_path: Path) -> None:
    g = feature_graph()
    path = export_neuronpedia(g, tmp_path / "g.json", scan="gemma-2-2b", index=True)
    data = json.loads(path.read_text())
    assert schema_errors(data) == [] and data["metadata"]["scan"] == "gemma-2-2b"
    assert_same(g, load_graph(path))
    (tmp_path / "plain").mkdir()
    plain = export(g, tmp_path / "plain")
    assert data["nodes"] == plain["nodes"] and data["links"] == plain["links"]
    listing = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert "circuits" not in listing["graphs"][0]  # the listing stays circuit-tracer's metadata


def test_clashing_ids_get_a_suffix_and_still_round_trip(tmp_path: Path) -> None:
    g = new_graph()
    tok = _node(g, "tok", "input", "e", -1, 0, 5)
    out = _node(g, "out", "output", "logits", -1, 0, 9)
    for site in ("blocks.0.hook_attn_out", "blocks.0.hook_mlp_out"):  # two errors, one layer/pos
        err = _node(g, f"{site}[error]@0", "error", site, 0, 0, -1)
        g.add_edge(tok, err, weight=1.0, method="m")
        g.add_edge(err, out, weight=1.0, method="m")
    data = export(g, tmp_path)
    assert [n["node_id"] for n in data["nodes"]] == ["E_5_0", "2_9_0", "0_-1_0", "0_-1_0_2"]
    assert schema_errors(data) == []
    assert_same(g, load_graph(tmp_path / "g.json"))


@pytest.mark.parametrize(
    ("path", "change", "message"),
    [
        (["nodes", 0, "feature_type"], "transcoder", "is not one of"),
        (["nodes", 0, "node_id"], "E_2-0", "does not match"),
        (["nodes", "F", "node_id"], "3_-1_0", "does not match"),  # an error id on a feature
        (["nodes", 0, "ctx_idx"], "0", "is not of type 'integer'"),
        (["metadata", "prompt_tokens"], "a b c", "is not of type 'array'"),
        (["links", 0, "weight"], None, "is not of type 'number'"),
    ],
)
def test_the_schema_has_teeth(tmp_path: Path, path: list[Any], change: Any, message: str) -> None:
    data = export(feature_graph(), tmp_path)
    first = [n["feature_type"] for n in data["nodes"]].index("cross layer transcoder")
    bad = copy.deepcopy(data)
    _set(bad, [first if part == "F" else part for part in path], change)
    assert any(message in e for e in schema_errors(bad)), schema_errors(bad)


def cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def circuit_tracer_file() -> dict[str, Any]:
    """A graph as circuit-tracer's create_graph_files writes it (schema_version 1)."""

    def node(node_id: str, feature: int, layer: str, ctx: int, ftype: str, js: str,
             **extra: Any) -> dict[str, Any]:  # fmt: skip
        return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": ctx,
                "feature_type": ftype, "token_prob": 0.0, "is_target_logit": False,
                "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": js, "clerp": "",
                "influence": None, "activation": None, **extra}  # fmt: skip

    nodes = [
        node("E_2_0", 0, "E", 0, "embedding", "E_2-0", influence=0.97),
        node("E_651_1", 1, "E", 1, "embedding", "E_651-1", influence=0.95),
        node("0_1234_1", cantor(0, 1234), "0", 1, "cross layer transcoder", "0_1234-0",
             influence=0.4, activation=3.5, clerp="says b"),
        node("1_77_1", cantor(1, 77), "1", 1, "cross layer transcoder", "1_77-0",
             influence=0.7, activation=1.25),
        node("1_-1_1", -1, "1", 1, "mlp reconstruction error", "1_-1-1", influence=0.8),
        node("27_9_1", 9, "27", 1, "logit", "L_9-1", token_prob=0.625, is_target_logit=True,
             clerp='Output " c" (p=0.625)'),
    ]  # fmt: skip
    links = [{"source": s, "target": t, "weight": w} for s, t, w in [
        ("E_2_0", "0_1234_1", 1.5), ("E_651_1", "0_1234_1", -0.5), ("0_1234_1", "1_77_1", 2.0),
        ("1_-1_1", "27_9_1", 0.25), ("1_77_1", "27_9_1", 3.0)]]  # fmt: skip
    metadata = {"slug": "ab", "scan": "gemma-2-2b", "transcoder_list": [],
                "prompt_tokens": ["<bos>", " b"], "prompt": "<bos> b", "node_threshold": 0.8,
                "schema_version": 1}  # fmt: skip
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
               "sg_pos": ""}  # fmt: skip
    return {"metadata": metadata, "qParams": qparams, "nodes": nodes, "links": links}


def test_a_circuit_tracer_file_loads_by_the_mapping(tmp_path: Path) -> None:
    data = circuit_tracer_file()
    assert schema_errors(data) == []
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(data))
    g = load_graph(path)
    assert list(g.nodes) == [n["node_id"] for n in data["nodes"]]
    kinds = {k: (a["kind"], a["layer"], a["pos"], a["unit"]) for k, a in g.nodes(data=True)}
    assert kinds == {"E_2_0": ("input", -1, 0, 2), "E_651_1": ("input", -1, 1, 651),
                     "0_1234_1": ("feature", 0, 1, 1234), "1_77_1": ("feature", 1, 1, 77),
                     "1_-1_1": ("error", 1, 1, -1), "27_9_1": ("output", -1, 1, 9)}  # fmt: skip
    labels = {k: a["label"] for k, a in g.nodes(data=True)}
    assert labels["E_651_1"] == " b" and labels["0_1234_1"] == "says b"
    assert labels["27_9_1"] == " c" and labels["1_77_1"] == "1_77_1"
    assert g.nodes["27_9_1"]["prob"] == 0.625 and "cumulative_influence" not in g.nodes["27_9_1"]
    assert g.nodes["0_1234_1"]["activation"] == 3.5 and math.isnan(g.nodes["E_2_0"]["activation"])
    assert g.nodes["1_77_1"]["cumulative_influence"] == 0.7
    assert g.edges["E_651_1", "0_1234_1"] == {"weight": -0.5, "method": "attribution-graph"}
    assert g.graph["model"] == "gemma-2-2b" and g.graph["slug"] == "ab"
    assert json.loads(g.graph["thresholds"]) == {"influence": 0.8}
    # written back, the ids, influences and links are circuit-tracer's own
    again = export(g, tmp_path, name="again")
    assert schema_errors(again) == []
    assert [n["node_id"] for n in again["nodes"]] == [n["node_id"] for n in data["nodes"]]
    assert [n["jsNodeId"] for n in again["nodes"]] == [n["jsNodeId"] for n in data["nodes"]]
    assert [n["influence"] for n in again["nodes"]] == [n["influence"] for n in data["nodes"]]
    assert [n["clerp"] for n in again["nodes"]][2:] == [n["clerp"] or n["node_id"]
                                                        for n in data["nodes"]][2:]  # fmt: skip
    links = [{k: x[k] for k in ("source", "target", "weight")} for x in again["links"]]
    assert sorted(links, key=str) == sorted(data["links"], key=str)


def test_a_first_release_circuit_tracer_file_loads(tmp_path: Path) -> None:
    """circuit-tracer's first release wrote errors as 0_{layer}_{pos}, jsNodeId {layer}_{pos}-0,
    and no schema_version."""
    data = circuit_tracer_file()
    del data["metadata"]["schema_version"]
    err = data["nodes"][4]
    err["node_id"], err["jsNodeId"] = "0_1_1", "1_1-0"
    data["links"][3]["source"] = "0_1_1"
    assert schema_errors(data) == []
    (tmp_path / "old.json").write_text(json.dumps(data))
    g = load_graph(tmp_path / "old.json")
    a = g.nodes["0_1_1"]
    assert (a["kind"], a["layer"], a["pos"], a["unit"]) == ("error", 1, 1, -1)
    assert g.has_edge("0_1_1", "27_9_1")


def _set(data: dict[str, Any], path: list[Any], value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    if value is _DELETE:
        del data[path[-1]]
    else:
        data[path[-1]] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["nodes"], _DELETE, "needs a list under 'nodes'"),
        (["links"], {}, "needs a list under 'links', got dict"),
        (["metadata"], [], "'metadata' must be an object"),
        (["nodes", 2, "node_id"], _DELETE, r"nodes\[2\]: 'node_id' must be a str, got missing"),
        (["nodes", 2, "feature_type"], 3, r"'feature_type' must be a str, got int 3"),
        (["nodes", 2, "ctx_idx"], True, r"'ctx_idx' must be a int"),
        (["nodes", 2, "activation"], "big", r"'activation' must be a number or null"),
        (["nodes", 3, "node_id"], "0_1234_1", "repeats node_id '0_1234_1'"),
        (["nodes", 1], "E_651_1", r"nodes\[1\] must be an object"),
        (["links", 1, "target"], "9_9_9", r"links\[1\] names node_id '9_9_9', which no node"),
        (["links", 1, "weight"], None, r"links\[1\]: 'weight' must be a number, got NoneType"),
        (["links", 1], ["E_651_1", "0_1234_1"], r"links\[1\] must be an object"),
        (["links", 1, "source"], "E_2_0", "lists 6 nodes and 5 edges but holds"),  # a duplicate
        (["nodes", 2, "circuits"], {"key": 3}, "'circuits' must be {'key': str"),
        (["metadata", "circuits"], {"graph": "x"}, "metadata.circuits must be"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, path: list[Any], value: Any,
                                     message: str) -> None:  # fmt: skip
    data = circuit_tracer_file()
    _set(data, path, value)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(SchemaError, match=message):
        load_graph(tmp_path / "bad.json")


def test_our_file_with_a_newer_schema_is_refused(tmp_path: Path) -> None:
    data = export(rich_graph(), tmp_path)
    data["metadata"]["circuits"]["graph"]["schema_version"] = "2.0"
    (tmp_path / "g.json").write_text(json.dumps(data))
    with pytest.raises(SchemaError, match="newer circuits"):
        load_graph(tmp_path / "g.json")


def test_our_file_with_a_broken_attribute_is_refused(tmp_path: Path) -> None:
    data = export(rich_graph(), tmp_path)
    data["nodes"][0]["circuits"]["attrs"]["kind"] = "token"
    (tmp_path / "g.json").write_text(json.dumps(data))
    with pytest.raises(SchemaError, match="node 'tok@0': unknown kind 'token'"):
        load_graph(tmp_path / "g.json")


def test_format_argument(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown graph format 'neuronpedia'.*attribution-graph"):
        save_graph(rich_graph(), tmp_path / "g.json", format="neuronpedia")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=re.escape("name the file *.json")):
        save_graph(rich_graph(), tmp_path / "g.graphml", format="attribution-graph")
    assert list(tmp_path.iterdir()) == []
    save_graph(rich_graph(), tmp_path / "g.json", format=None)  # node-link, as before
    assert "graph" in json.loads((tmp_path / "g.json").read_text())
