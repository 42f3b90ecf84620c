"""The `circuits` command: the demo discovers the induction circuit; show and convert files."""

from __future__ import annotations

import networkx as nx
import pytest

from circuits.cli import main
from circuits.graph import load_graph
from circuits.zoo import INDUCTION_HEADS


@pytest.mark.transformer
def test_demo_writes_the_induction_circuit(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--features"]) == 0
    g = nx.read_graphml(tmp_path / "induction-circuit.graphml")  # networkx's own reader
    prev, ind = INDUCTION_HEADS["previous_token"], INDUCTION_HEADS["induction"]
    labels = {g.nodes[n]["label"]: n for n in g}
    assert g.has_edge(labels[f"a{prev[0]}.h{prev[1]}"], labels[f"a{ind[0]}.h{ind[1]}"])
    assert "plotly" in (tmp_path / "induction-circuit.html").read_text()[:100_000].lower()
    assert float(g.graph["faithfulness"]) >= 0.8
    out = capsys.readouterr().out
    assert "induction head" in out and f"faithfulness {g.graph['faithfulness']:.2f}" in out
    features = load_graph(tmp_path / "induction-features.json")  # the attribution-graph JSON
    assert {a["kind"] for _, a in features.nodes(data=True)} >= {"input", "feature", "output"}
    assert f"completeness {features.graph['completeness_score']:.2f}" in out
    assert (tmp_path / "induction-features.html").stat().st_size < 2_000_000


def test_show_and_convert(tmp_path, capsys):
    import pandas as pd

    import circuits as cc

    edges = pd.DataFrame({"source": ["a"], "target": ["b"], "weight": [1.0]})
    nodes = pd.DataFrame({"key": ["a", "b"], "kind": ["input", "output"]})
    cc.save_graph(cc.build_graph(edges, nodes=nodes), tmp_path / "g.json")
    assert main(["convert", str(tmp_path / "g.json"), str(tmp_path / "g.gexf")]) == 0
    assert set(nx.read_gexf(tmp_path / "g.gexf").edges()) == {("a", "b")}
    assert main(["show", str(tmp_path / "g.gexf")]) == 0
    assert (tmp_path / "g.html").exists()
    (tmp_path / "bad.json").write_text("{")
    assert main(["show", str(tmp_path / "bad.json")]) == 2
    assert "circuits show" in capsys.readouterr().err
