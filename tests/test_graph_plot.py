"""Plotly views: traces, hover text, the threshold slider, HTML and image export."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import networkx as nx
import plotly.graph_objects as go
import pytest

from circuits.errors import CircuitsError, ConfigError, SchemaError
from circuits.graph import new_graph, plot_graph, save_html, save_image


def circuit() -> nx.DiGraph:
    g = new_graph(model="toy")
    g.add_node("in", kind="input", site="embed", layer=-1, pos=0, unit=-1, activation=1.0,
               label="tok")  # fmt: skip
    for i in range(3):
        g.add_node(f"h{i}", kind="head", site="attn", layer=0, pos=0, unit=i, activation=0.5,
                   label=f"L0H{i}", influence=0.1 * i)  # fmt: skip
    g.add_node("m", kind="mlp", site="mlp", layer=1, pos=0, unit=-1, activation=float("nan"),
               label="MLP1")  # fmt: skip
    g.add_node("out", kind="output", site="logits", layer=-1, pos=0, unit=7, activation=2.0,
               label="logit")  # fmt: skip
    weights = {("in", "h0"): 0.05, ("in", "h1"): -0.5, ("in", "h2"): 1.0, ("h0", "m"): 2.0,
               ("h1", "m"): -0.2, ("h2", "out"): 4.0, ("m", "out"): -3.0}  # fmt: skip
    for (u, v), w in weights.items():
        g.add_edge(u, v, weight=w, method="test")
    return g


def node_traces(fig: go.Figure) -> dict[str, go.Scatter]:
    return {t.name: t for t in fig.data if t.mode and "markers" in t.mode and t.showlegend is None}


def test_figure_has_layered_nodes_with_hover_details() -> None:
    fig = plot_graph(circuit())
    assert isinstance(fig, go.Figure)
    nodes = node_traces(fig)
    assert set(nodes) == {"input", "head", "mlp", "output"}
    head_hover = "\n".join(nodes["head"].hovertext)
    for phrase in ("key: h1", "kind: head", "site: attn", "layer: 0", "unit: 1", "influence: 0.1"):
        assert phrase in head_hover
    assert "activation: n/a" in nodes["mlp"].hovertext[0]
    # layers on x: input left of layer 0, layer 0 left of layer 1, output at the right
    xs = {name: set(t.x) for name, t in nodes.items()}
    assert max(xs["input"]) < min(xs["head"]) < min(xs["mlp"]) < min(xs["output"])
    assert len(set(nodes["head"].y)) == 3  # the three heads are spread out, not stacked


def test_vertical_orientation_puts_layers_on_y() -> None:
    nodes = node_traces(plot_graph(circuit(), orientation="vertical"))
    assert min(nodes["input"].y) > max(nodes["head"].y) > max(nodes["output"].y)


def test_edges_coloured_by_sign_and_hover_weights() -> None:
    fig = plot_graph(circuit())
    lines = [t for t in fig.data if t.mode == "lines"]
    assert sum(x is None for t in lines for x in t.x) == 7  # every edge drawn once
    blue = [t for t in lines if t.line.color.startswith("rgba(31,119,180")]
    red = [t for t in lines if t.line.color.startswith("rgba(214,39,40")]
    assert sum(x is None for t in blue for x in t.x) == 4  # positive edges
    assert sum(x is None for t in red for x in t.x) == 3  # negative edges
    hovers = [h for t in fig.data if t.mode == "markers" and t.showlegend is False
              for h in t.hovertext]  # fmt: skip
    assert "h2 → out<br>weight = 4" in hovers and "m → out<br>weight = -3" in hovers
    widths = {t.line.width for t in lines}
    assert len(widths) > 1  # stronger bins are drawn wider


def test_slider_steps_hide_weak_edges() -> None:
    fig = plot_graph(circuit(), steps=4)
    slider = fig.layout.sliders[0]
    cuts = [float(s.label) for s in slider.steps]
    assert cuts[0] == 0.0 and cuts == sorted(cuts) and len(cuts) > 1
    edge_traces = [i for i, t in enumerate(fig.data) if t.mode == "lines"]
    for step, cut in zip(slider.steps, cuts, strict=True):
        visible = step.args[0]["visible"]
        shown = [fig.data[i] for i in edge_traces if visible[i]]
        assert all(v for i, v in enumerate(visible) if i not in edge_traces and
                   fig.data[i].showlegend is None)  # node traces always shown  # fmt: skip
        hover = [fig.data[i] for i, t in enumerate(fig.data) if t.mode == "markers"
                 and t.showlegend is False and visible[i]]  # fmt: skip
        weights = [float(h.split("= ")[1]) for t in hover for h in t.hovertext]
        assert all(abs(w) >= cut - 1e-9 for w in weights)
        n_edges = sum(x is None for t in shown for x in t.x)
        assert n_edges == sum(abs(w) >= cut - 1e-9 for w in
                              [0.05, -0.5, 1.0, 2.0, -0.2, 4.0, -3.0])  # fmt: skip


def test_threshold_and_max_edges_limit_what_is_drawn() -> None:
    fig = plot_graph(circuit(), threshold=1.0)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert sum(x is None for t in lines for x in t.x) == 4
    fig = plot_graph(circuit(), max_edges=2)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert sum(x is None for t in lines for x in t.x) == 2
    assert "5 weaker edges not drawn" in fig.layout.title.text


def test_graph_without_layers_uses_topological_columns() -> None:
    g = circuit()
    for k in g.nodes:
        g.nodes[k]["layer"] = -1
    nodes = node_traces(plot_graph(g))
    assert max(nodes["input"].x) < min(nodes["head"].x) < min(nodes["mlp"].x)


def test_save_html_is_self_contained(tmp_path: Path) -> None:
    path = save_html(circuit(), tmp_path / "circuit.html", steps=3)
    text = path.read_text()
    assert "<html>" in text and "Plotly.newPlot" in text
    assert "plotly.js v" in text or "plotly.min.js" in text or len(text) > 1_000_000
    assert 'src="https://cdn.plot.ly' not in text
    assert "L0H2" in text
    fig = plot_graph(circuit())
    assert save_html(fig, tmp_path / "fig.html").stat().st_size > 1_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circuit.html", "fig.html"]


def test_png_without_kaleido_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "kaleido" else real(name, *a))  # fmt: skip
    for suffix in (".png", ".svg"):
        with pytest.raises(CircuitsError) as info:
            save_image(circuit(), tmp_path / f"c{suffix}")
        message = str(info.value)
        assert "pip install circuits-mi[export]" in message and "chromium" in message
        assert suffix[1:].upper() in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("kaleido") is not None, reason="kaleido installed")
def test_png_really_fails_cleanly_here(tmp_path: Path) -> None:
    with pytest.raises(CircuitsError, match="kaleido"):
        save_image(plot_graph(circuit()), tmp_path / "c.png")


def test_bad_arguments(tmp_path: Path) -> None:
    g = circuit()
    with pytest.raises(ConfigError, match="orientation"):
        plot_graph(g, orientation="diagonal")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="steps"):
        plot_graph(g, steps=0)
    with pytest.raises(ConfigError, match="max_edges"):
        plot_graph(g, max_edges=-1)
    with pytest.raises(ConfigError, match="threshold"):
        plot_graph(g, threshold=-0.5)
    with pytest.raises(ConfigError, match="image suffix"):
        save_image(g, tmp_path / "c.gif")
    with pytest.raises(ConfigError, match="plotly Figure or a circuit graph"):
        save_html("not a figure", tmp_path / "x.html")  # type: ignore[arg-type]
    with pytest.raises(SchemaError):
        plot_graph(nx.DiGraph([("a", "b")]))
    assert list(tmp_path.iterdir()) == []
