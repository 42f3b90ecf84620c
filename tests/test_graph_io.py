"""Saving and loading: exact round trips in every format, networkx's readers, atomic writes,
corrupted files, and the Neuronpedia / circuit-tracer frontend export (its schema, node ids and
round trip: tests/test_attribution_graph_json.py)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
from networkx.readwrite import json_graph

import circuits.graph.io as gio
from circuits.errors import ConfigError, InputError, SchemaError
from circuits.graph import FORMATS, export_neuronpedia, load_graph, new_graph, prune, save_graph


def rich_graph() -> nx.DiGraph:
    """Every attribute type the schema allows, NaN, unicode and awkward strings included."""
    g = new_graph(model="tiny <model> & co", method="eap-ig", metric="logit_diff",
                  thresholds={"influence": 0.8}, ablation="mean", seed=7, input_hash="ab12",
                  prompt="The cat sat", n_prompts=3, exact=True)  # fmt: skip
    g.add_node("tok@0", kind="input", site="embed", layer=-1, pos=0, unit=464, activation=1.0,
               label="The")  # fmt: skip
    g.add_node("tok@1", kind="input", site="embed", layer=-1, pos=1, unit=3797, activation=1.0,
               label=" cat\n\"quoted\" ü 猫")  # fmt: skip
    g.add_node("blocks.0.attn.hook_z[3]@1", kind="head", site="blocks.0.attn.hook_z", layer=0,
               pos=1, unit=3, activation=-0.25, label="L0H3", influence=0.5, note="prev-token",
               flagged=True, rank=2)  # fmt: skip
    g.add_node("conv[5]@2,3", kind="channel", site="layer1.conv", layer=1, pos=-1, unit=5,
               h=2, w=3, activation=math.nan, label="", influence=math.nan, flagged=False,
               rank=-12345678901)  # fmt: skip
    g.add_node("err@1", kind="error", site="blocks.0.hook_mlp_out", layer=0, pos=1, unit=-1,
               activation=0.1, label="error")  # fmt: skip
    g.add_node("logit[1234]", kind="output", site="logits", layer=-1, pos=1, unit=1234,
               activation=3.5, label=" sat", prob=0.25)  # fmt: skip
    g.add_edge("tok@0", "blocks.0.attn.hook_z[3]@1", weight=0.1 + 0.2, method="eap-ig")
    g.add_edge("tok@1", "blocks.0.attn.hook_z[3]@1", weight=-1e-300, method="eap-ig",
               abs_weight=1e-300)  # fmt: skip
    g.add_edge("blocks.0.attn.hook_z[3]@1", "conv[5]@2,3", weight=2.5, method="patch")
    g.add_edge("conv[5]@2,3", "logit[1234]", weight=-3.0, method="patch", sign="neg")
    g.add_edge("err@1", "logit[1234]", weight=1.0e10, method="eap-ig")
    return g


def typed(attrs: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """Attributes with their types, NaN made comparable."""
    return {k: (type(v).__name__, "NaN" if isinstance(v, float) and math.isnan(v) else v)
            for k, v in attrs.items()}  # fmt: skip


def assert_same(g: nx.DiGraph, h: nx.DiGraph) -> None:
    assert list(g.nodes) == list(h.nodes)
    assert {k: typed(a) for k, a in g.nodes(data=True)} == {
        k: typed(a) for k, a in h.nodes(data=True)
    }
    assert {(u, v): typed(a) for u, v, a in g.edges(data=True)} == {
        (u, v): typed(a) for u, v, a in h.edges(data=True)
    }
    assert typed(g.graph) == typed(h.graph)


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_is_exact(tmp_path: Path, suffix: str) -> None:
    g = rich_graph()
    path = save_graph(g, tmp_path / f"circuit{suffix}")
    assert_same(g, load_graph(path))
    assert [p.name for p in tmp_path.iterdir()] == [f"circuit{suffix}"]  # no temp file left


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_of_a_pruned_graph(tmp_path: Path, suffix: str) -> None:
    g = prune(rich_graph(), influence=0.9, outputs=["logit[1234]"])
    assert "influence" in g.nodes["logit[1234]"]
    assert_same(g, load_graph(save_graph(g, tmp_path / f"p{suffix}")))


def test_networkx_readers_open_our_files(tmp_path: Path) -> None:
    g = rich_graph()
    for suffix in FORMATS:
        save_graph(g, tmp_path / f"g{suffix}")
    with (tmp_path / "g.json").open() as fh:
        data = json.load(fh)  # strict JSON: NaN was written as null
    readers = {
        "json": json_graph.node_link_graph(data),
        "graphml": nx.read_graphml(tmp_path / "g.graphml"),
        "gexf": nx.read_gexf(tmp_path / "g.gexf"),
    }
    for name, h in readers.items():
        assert set(h.nodes) == set(g.nodes), name
        assert set(h.edges) == set(g.edges), name
        assert h.edges["conv[5]@2,3", "logit[1234]"]["weight"] == -3.0, name
        assert h.nodes["blocks.0.attn.hook_z[3]@1"]["kind"] == "head", name
    assert readers["graphml"].graph["metric"] == "logit_diff"


def _refuse(name: str) -> None:
    raise ValueError(name)


def test_json_has_no_nan_token(tmp_path: Path) -> None:
    save_graph(rich_graph(), tmp_path / "g.json")
    json.loads((tmp_path / "g.json").read_text(), parse_constant=_refuse)


def test_saved_file_has_ordinary_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        path = save_graph(rich_graph(), tmp_path / "g.json")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_json_from_older_networkx_uses_links(tmp_path: Path) -> None:
    path = save_graph(rich_graph(), tmp_path / "g.json")
    data = json.loads(path.read_text())
    data["links"] = data.pop("edges")
    path.write_text(json.dumps(data))
    assert_same(rich_graph(), load_graph(path))


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.json, \.graphml, \.gexf"):
        save_graph(rich_graph(), tmp_path / "g.gml")
    with pytest.raises(ConfigError, match="suffix ''"):
        load_graph(tmp_path / "g")
    assert list(tmp_path.iterdir()) == []


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no graph file"):
        load_graph(tmp_path / "absent.json")
    with pytest.raises(ConfigError, match="does not exist"):
        save_graph(rich_graph(), tmp_path / "no" / "such" / "g.json")


@pytest.mark.parametrize("suffix", FORMATS)
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    path = save_graph(rich_graph(), tmp_path / f"g{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SchemaError, match="truncated or corrupted"):
        load_graph(path)
    path.write_bytes(b"")
    with pytest.raises(SchemaError):
        load_graph(path)


def test_corrupted_json(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_text('{"nodes": [}')
    with pytest.raises(SchemaError, match="truncated or corrupted"):
        load_graph(path)
    path.write_text("[1, 2]")
    with pytest.raises(SchemaError, match="not node-link graph data"):
        load_graph(path)
    good = json.loads(save_graph(rich_graph(), path).read_text())
    good["nodes"][0]["kind"] = "token"
    path.write_text(json.dumps(good))
    with pytest.raises(SchemaError, match="node 'tok@0': unknown kind 'token'"):
        load_graph(path)


def test_a_plain_networkx_file_is_not_a_circuit(tmp_path: Path) -> None:
    nx.write_graphml(nx.DiGraph([("a", "b")]), tmp_path / "plain.graphml")
    with pytest.raises(SchemaError, match="schema_version' is missing"):
        load_graph(tmp_path / "plain.graphml")
    nx.write_graphml(nx.Graph([("a", "b")]), tmp_path / "undirected.graphml")
    with pytest.raises(SchemaError, match="simple directed graph"):
        load_graph(tmp_path / "undirected.graphml")


@pytest.mark.parametrize("suffix", FORMATS)
def test_newer_schema_version_is_refused(tmp_path: Path, suffix: str) -> None:
    path = save_graph(rich_graph(), tmp_path / f"g{suffix}")
    text = path.read_text(encoding="utf-8")
    if suffix == ".graphml":
        key = re.search(r'id="(d\d+)"[^>]*attr.name="schema_version"', text)
        assert key is not None
        old, new = f'<data key="{key[1]}">1.0<', f'<data key="{key[1]}">2.0<'
    else:
        old, new = '"schema_version": "1.0"', '"schema_version": "2.0"'
    assert text.count(old) == 1
    path.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(SchemaError, match=r"'2.0', written by a newer circuits.*upgrade"):
        load_graph(path)


@pytest.mark.parametrize("suffix", FORMATS)
def test_invalid_graph_is_not_written(tmp_path: Path, suffix: str) -> None:
    g = rich_graph()
    g.nodes["tok@0"]["vector"] = [1.0, 2.0]
    with pytest.raises(SchemaError, match="'vector' must be a scalar"):
        save_graph(g, tmp_path / f"g{suffix}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".graphml", ".gexf"])
def test_xml_control_characters_are_refused(tmp_path: Path, suffix: str) -> None:
    g = rich_graph()
    g.nodes["tok@0"]["label"] = "bell\x07"
    with pytest.raises(SchemaError, match="control character"):
        save_graph(g, tmp_path / f"g{suffix}")
    assert list(tmp_path.iterdir()) == []
    save_graph(g, tmp_path / "g.json")  # JSON escapes it
    assert load_graph(tmp_path / "g.json").nodes["tok@0"]["label"] == "bell\x07"


@pytest.mark.parametrize("suffix", FORMATS)
def test_writer_failing_midway_leaves_nothing(
    tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(g: nx.DiGraph, fh: Any) -> None:
        fh.write("partial" if "b" not in getattr(fh, "mode", "") else b"partial")
        raise OSError("disk full")

    name = {".json": "_write_json", ".graphml": "_write_graphml", ".gexf": "_write_gexf"}[suffix]
    monkeypatch.setattr(gio, name, broken)
    with pytest.raises(OSError, match="disk full"):
        save_graph(rich_graph(), tmp_path / f"g{suffix}")
    assert list(tmp_path.iterdir()) == []
    # an existing file survives a failed overwrite untouched
    monkeypatch.undo()
    path = save_graph(rich_graph(), tmp_path / f"g{suffix}")
    before = path.read_bytes()
    monkeypatch.setattr(gio, name, broken)
    with pytest.raises(OSError):
        save_graph(rich_graph(), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_neuronpedia_export(tmp_path: Path) -> None:
    g = rich_graph()
    g.edges["tok@1", "blocks.0.attn.hook_z[3]@1"]["weight"] = -0.5
    g = prune(g, influence=1.0, edge_influence=1.0)
    path = export_neuronpedia(g, tmp_path / "circuit.json", index=True)
    data = json.loads(path.read_text(), parse_constant=_refuse)
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    meta = data["metadata"]
    assert meta["slug"] == "circuit" and meta["scan"] == "tiny <model> & co"
    assert meta["prompt_tokens"] == ["The", ' cat\n"quoted" ü 猫']
    assert meta["prompt"] == "The cat sat" and meta["node_threshold"] == 1.0
    assert meta["schema_version"] == 1 and meta["transcoder_list"] == []
    assert meta["circuits"]["graph"]["method"] == "eap-ig"
    assert data["qParams"] == {"pinnedIds": [], "supernodes": [], "linkType": "both",
                               "clickedId": "", "sg_pos": ""}  # fmt: skip
    nodes = {n["node_id"]: n for n in data["nodes"]}
    assert len(nodes) == g.number_of_nodes()
    fields = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob",
              "is_target_logit", "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence",
              "activation", "circuits"}  # fmt: skip
    assert all(set(n) == fields for n in nodes.values())
    assert nodes["E_464_0"]["circuits"]["key"] == "tok@0"
    emb = nodes["E_464_0"]
    assert (
        emb["feature_type"] == "embedding" and emb["layer"] == "E" and emb["jsNodeId"] == "E_464-0"
    )
    head = nodes["0_3_1"]
    assert head["feature_type"] == "cross layer transcoder" and head["feature"] == 3
    assert head["jsNodeId"] == "0_3-0" and head["activation"] == -0.25
    logit = nodes["3_1234_1"]  # 2 layers (0, 1) -> logits at layer "3", as circuit-tracer does
    assert logit["feature_type"] == "logit" and logit["is_target_logit"] is True
    assert logit["token_prob"] == 0.25 and logit["clerp"] == 'Output " sat" (p=0.250)'
    assert nodes["0_-1_1"]["feature_type"] == "mlp reconstruction error"
    assert nodes["1_5_11"]["activation"] is None  # conv (h=2, w=3) at ctx 2 * 4 + 3
    influences = [n["influence"] for n in nodes.values() if n["influence"] is not None]
    assert max(influences) == pytest.approx(1.0) and min(influences) > 0
    assert {(x["source"], x["target"]) for x in data["links"]} == {
        ("E_464_0", "0_3_1"), ("E_3797_1", "0_3_1"), ("0_3_1", "1_5_11"), ("1_5_11", "3_1234_1"),
        ("0_-1_1", "3_1234_1")}  # fmt: skip
    listing = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [m["slug"] for m in listing["graphs"]] == ["circuit"]
    assert set(listing["graphs"][0]) == set(meta) - {"circuits"}
    export_neuronpedia(g, tmp_path / "circuit.json", index=True, slug="circuit", scan="s")
    listing = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [m["scan"] for m in listing["graphs"]] == ["s"]


def test_neuronpedia_ids_stay_unique_when_sites_share_a_layer(tmp_path: Path) -> None:
    g = new_graph()
    common = {"layer": 0, "pos": 0, "activation": 1.0, "label": ""}
    g.add_node("head", kind="head", site="attn", unit=1, **common)
    g.add_node("neuron", kind="neuron", site="mlp", unit=1, **common)
    g.add_node("in", kind="input", site="e", layer=-1, pos=0, unit=5, activation=1.0, label="a")
    g.add_node("in2", kind="input", site="e2", layer=-1, pos=0, unit=5, activation=1.0, label="b")
    g.add_edge("in", "head", weight=1.0, method="m")
    g.add_edge("in2", "neuron", weight=1.0, method="m")
    data = json.loads(export_neuronpedia(g, tmp_path / "x.json").read_text())
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(set(ids)) == 4 and "E_5_0_2" in ids
    features = {n["feature"] for n in data["nodes"] if n["feature_type"] != "embedding"}
    assert len(features) == 2


def test_neuronpedia_refuses_non_schema_graph(tmp_path: Path) -> None:
    with pytest.raises(SchemaError):
        export_neuronpedia(nx.DiGraph([("a", "b")]), tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == []
