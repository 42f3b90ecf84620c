"""Plotly views: traces, hover text, the threshold slider, HTML and image export."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import networkx as nx
import numpy as np
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


def traces(fig: go.Figure, role: str) -> list[go.Scatter]:
    """The traces of one role: node, edges, edge-hover, path (click highlighting), legend."""
    return [t for t in fig.data if (t.meta or {}).get("role") == role]


def node_traces(fig: go.Figure) -> dict[str, go.Scatter]:
    return {t.name: t for t in traces(fig, "node")}


def n_edges(lines: list[go.Scatter]) -> int:
    """Edges drawn in line traces: each is a segment ended by a None gap."""
    return sum(x is None for t in lines for x in t.x)


def hover_weights(ts: list[go.Scatter]) -> list[float]:
    return [float(h.split("weight = ")[1].split("<br>")[0]) for t in ts for h in t.hovertext]


def feature_graph() -> nx.DiGraph:
    """Tokens at positions 0-2, features stacked in a cell, an error node and an output."""
    g = new_graph(model="toy <tc>", thresholds={"top_k": 20, "candidates": {"nodes": 9}})
    for p, tok in enumerate(["The", " cat", " sat"]):
        g.add_node(f"t{p}", kind="input", site="embed", layer=-1, pos=p, unit=-1, activation=1.0,
                   label=tok)  # fmt: skip
    for i, (layer, pos) in enumerate([(0, 1), (0, 1), (0, 1), (1, 2), (0, 0)]):
        g.add_node(f"f{i}", kind="feature", site=f"tc{layer}", layer=layer, pos=pos, unit=i,
                   activation=0.5, label=f"F{i}", score=0.25 * i,
                   examples="a <b>cat</b>\n\nthe cat sat\nline 3\nline 4\nline 5")  # fmt: skip
    g.add_node("err", kind="error", site="err1", layer=1, pos=2, unit=-1, activation=0.1,
               label="error 1", score=0.0, examples="")  # fmt: skip
    g.add_node("out", kind="output", site="logits", layer=-1, pos=2, unit=3, activation=2.0,
               label="logit ' on'", score=0.0, examples="")  # fmt: skip
    for u, v, w in [("t1", "f0", 1.0), ("t1", "f1", -0.5), ("t0", "f4", 0.3), ("f0", "f3", 2.0),
                    ("f1", "f3", 0.4), ("f2", "err", -0.1), ("err", "out", 0.2),
                    ("f3", "out", 3.0), ("t2", "f3", 0.7)]:  # fmt: skip
        g.add_edge(u, v, weight=w, method="test")
    return g


def test_figure_has_layered_nodes_with_hover_details() -> None:
    fig = plot_graph(circuit())
    assert isinstance(fig, go.Figure)
    nodes = node_traces(fig)
    assert set(nodes) == {"input", "head", "mlp", "output"}
    head_hover = "\n".join(nodes["head"].hovertext)
    for phrase in ("key: h1", "kind: head", "site: attn", "layer 0", "unit: 1", "influence: 0.1"):
        assert phrase in head_hover
    assert "activation: n/a" in nodes["mlp"].hovertext[0]
    assert list(nodes["head"].customdata) == ["h0", "h1", "h2"]  # the click script reads keys
    # layers on x: input left of layer 0, layer 0 left of layer 1, output at the right
    xs = {name: set(t.x) for name, t in nodes.items()}
    assert max(xs["input"]) < min(xs["head"]) < min(xs["mlp"]) < min(xs["output"])
    assert len(set(nodes["head"].y)) == 3  # the three heads share a cell: spread, not stacked
    assert list(fig.layout.xaxis.ticktext) == ["input", "L0", "L1", "output"]


def test_rows_are_token_positions_labelled_with_the_tokens() -> None:
    g = feature_graph()
    fig = plot_graph(g)
    y = {k: yy for t in traces(fig, "node") for k, yy in zip(t.customdata, t.y, strict=True)}
    assert fig.layout.yaxis.autorange == "reversed"  # the first token on top
    assert list(fig.layout.yaxis.ticktext) == ["0: The", "1:  cat", "2:  sat"]
    centres = dict(zip(fig.layout.yaxis.ticktext, fig.layout.yaxis.tickvals, strict=True))
    row = {k: min(centres, key=lambda c: abs(centres[c] - y[k]))[0] for k in g}
    assert row == {k: str(a["pos"]) for k, a in g.nodes(data=True)}  # each node in its token's row
    assert y["t0"] < y["t1"] < y["t2"]
    assert len({y["f0"], y["f1"], y["f2"]}) == 3  # a shared (layer, position) cell is spread out
    assert abs(sum(y[k] for k in ("f0", "f1", "f2")) / 3 - y["t1"]) < 1e-9  # around its row
    x = {k: xx for t in traces(fig, "node") for k, xx in zip(t.customdata, t.x, strict=True)}
    assert x["f0"] == x["f4"] < x["f3"] == x["err"] < x["out"]
    assert len(fig.layout.shapes) == 2  # every other row shaded


def test_conv_nodes_sit_in_rows_by_spatial_location() -> None:
    g = new_graph()
    g.add_node("img", kind="input", site="x", layer=-1, pos=-1, unit=-1, activation=1.0,
               label="image")  # fmt: skip
    for h, w in [(0, 0), (0, 2), (1, 1)]:
        g.add_node(f"c{h}{w}", kind="channel", site="conv1", layer=0, pos=-1, unit=3,
                   activation=1.0, label=f"ch3@{h},{w}", h=h, w=w)  # fmt: skip
        g.add_edge("img", f"c{h}{w}", weight=1.0, method="test")
    fig = plot_graph(g)
    y = {k: yy for t in traces(fig, "node") for k, yy in zip(t.customdata, t.y, strict=True)}
    assert y["img"] < y["c00"] < y["c02"] < y["c11"]  # rows h * width + w, width 3
    assert list(fig.layout.yaxis.ticktext) == ["all positions", "h,w 0,0", "h,w 0,2", "h,w 1,1"]
    assert "h,w 1,1" in node_traces(fig)["channel"].hovertext[2]


def test_vertical_orientation_puts_layers_on_y() -> None:
    fig = plot_graph(circuit(), orientation="vertical")
    nodes = node_traces(fig)
    assert min(nodes["input"].y) > max(nodes["head"].y) > max(nodes["output"].y)
    assert list(fig.layout.yaxis.ticktext) == ["input", "L0", "L1", "output"]


def test_edges_coloured_by_sign_sized_by_weight_with_arrows() -> None:
    fig = plot_graph(circuit())
    lines = traces(fig, "edges")
    assert n_edges(lines) == 7  # every edge drawn once
    blue = [t for t in lines if t.line.color.startswith("rgba(31,119,180")]
    red = [t for t in lines if t.line.color.startswith("rgba(214,39,40")]
    assert n_edges(blue) == 4 and n_edges(red) == 3  # positive, negative
    widths = {t.line.width for t in lines}
    assert len(widths) > 1  # stronger bins are drawn wider
    for t in lines:  # per edge: source, arrow head, target, gap; the head points along the edge
        assert t.marker.symbol == "arrow" and t.marker.angleref == "previous"
        assert len(t.x) == 4 * len(t.meta["ids"]) == len(t.marker.size)
        for i in range(0, len(t.x), 4):
            assert list(t.marker.size[i : i + 4])[::2] == [0, 0] and t.marker.size[i + 1] > 0
            (x0, xa, x1), (y0, ya, y1) = t.x[i : i + 3], t.y[i : i + 3]
            assert min(x0, x1) <= xa <= max(x0, x1) and abs(xa - x1) <= abs(xa - x0)
            assert min(y0, y1) <= ya <= max(y0, y1)
    hovers = [h for t in traces(fig, "edge-hover") for h in t.hovertext]
    assert "L0H2 → logit<br>weight = 4<br><i>h2 → out</i>" in hovers
    assert "MLP1 → logit<br>weight = -3<br><i>m → out</i>" in hovers
    legend = traces(fig, "legend")
    assert [t.name for t in legend] == ["edge: positive", "edge: negative"]
    assert {t.legendgroup for t in lines} == {t.name for t in legend}  # a click toggles a sign


def test_slider_steps_hide_weak_edges() -> None:
    fig = plot_graph(circuit(), steps=4)
    slider = fig.layout.sliders[0]
    cuts = [float(s.label) for s in slider.steps]
    assert cuts[0] == 0.0 and cuts == sorted(cuts) and len(cuts) > 1
    weights = [0.05, -0.5, 1.0, 2.0, -0.2, 4.0, -3.0]
    role = [(t.meta or {}).get("role") for t in fig.data]
    for step, cut in zip(slider.steps, cuts, strict=True):
        visible = step.args[0]["visible"]
        assert all(visible[i] for i, r in enumerate(role) if r in ("node", "legend"))
        shown = [t for i, t in enumerate(fig.data) if visible[i]]
        hover = hover_weights([t for t in shown if t.meta["role"] == "edge-hover"])
        assert all(abs(w) >= cut - 1e-9 for w in hover)
        n_shown = n_edges([t for t in shown if t.meta["role"] == "edges"])
        assert n_shown == len(hover) == sum(abs(w) >= cut - 1e-9 for w in weights)
        for t in shown:  # a path trace is shown with its edges trace
            if t.meta["role"] == "path":
                assert visible[t.meta["source"]]


def test_the_page_script_gets_keys_edges_and_path_traces() -> None:
    fig = plot_graph(feature_graph())
    viewer = fig.layout.meta["circuit_viewer"]
    assert viewer["nodes"] == list(feature_graph().nodes)
    edges = {(viewer["nodes"][u], viewer["nodes"][v]) for u, v, _ in viewer["edges"]}
    assert edges == set(feature_graph().edges)
    ids = sorted(i for t in traces(fig, "edges") for i in t.meta["ids"])
    assert ids == list(range(len(viewer["edges"])))
    for path in traces(fig, "path"):
        source = fig.data[path.meta["source"]]
        assert source.meta["role"] == "edges" and len(path.x) == 0
        assert path.line == source.line and path.marker.symbol == "arrow"
    for t in traces(fig, "node"):
        assert t.unselected.marker.opacity < 0.5  # how a click dims the nodes off its paths


def test_hover_shows_score_examples_and_the_token() -> None:
    fig = plot_graph(feature_graph())
    features = node_traces(fig)["feature"]
    text = dict(zip(features.customdata, features.hovertext, strict=True))["f1"]
    assert "score: 0.25" in text and "pos 1 ( cat)" in text and "kind: feature" in text
    assert "top examples" in text and "a &lt;b&gt;cat&lt;/b&gt;" in text  # shown, not parsed
    assert "line 4" in text and "line 5" not in text  # the first four non-empty lines
    errors = node_traces(fig)["error"].hovertext[0]
    assert "score: 0" in errors and "top examples" not in errors


def test_title_has_faithfulness_scores_and_pruning() -> None:
    g = feature_graph()
    title = plot_graph(g).layout.title.text
    assert title.startswith("toy &lt;tc&gt;<br>")
    assert "not measured" not in title and "faithfulness" not in title  # NaN: left out
    assert "pruning: top_k=20" in title and "candidates" not in title
    assert "10 nodes, 9 edges" in title
    g.graph.update(faithfulness=0.875, replacement_score=0.5, completeness_score=0.9)
    title = plot_graph(g, title="My circuit").layout.title.text
    assert title.startswith("My circuit<br>")
    for phrase in ("faithfulness 0.875", "replacement 0.5", "completeness 0.9"):
        assert phrase in title
    assert "not pruned" in plot_graph(circuit()).layout.title.text
    g.graph["thresholds"] = '{"threshold": 0.0125, "outputs": ["a", "b"]}'
    assert 'pruning: threshold=0.0125, outputs=["a","b"]' in plot_graph(g).layout.title.text
    legend = [t.name for t in fig_legend(plot_graph(g))]
    assert legend == ["input", "feature", "error", "output", "edge: positive", "edge: negative"]


def fig_legend(fig: go.Figure) -> list[go.Scatter]:
    """The legend's entries, in the order the legend shows them (by legendrank)."""
    shown = [t for t in fig.data if t.showlegend is not False]
    return sorted(shown, key=lambda t: 1000 if t.legendrank is None else t.legendrank)


def test_threshold_and_max_edges_limit_what_is_drawn() -> None:
    fig = plot_graph(circuit(), threshold=1.0)
    assert n_edges(traces(fig, "edges")) == 4
    fig = plot_graph(circuit(), max_edges=2)
    assert n_edges(traces(fig, "edges")) == 2
    assert len(fig.layout.meta["circuit_viewer"]["edges"]) == 2
    assert "5 weaker edges not drawn" in fig.layout.title.text


def test_graph_without_layers_uses_topological_columns() -> None:
    g = circuit()
    for k in g.nodes:
        g.nodes[k]["layer"] = -1
    nodes = node_traces(plot_graph(g))
    assert max(nodes["input"].x) < min(nodes["head"].x) < min(nodes["mlp"].x)


def test_save_html_writes_plotly_once_beside_the_page(tmp_path: Path) -> None:
    path = save_html(circuit(), tmp_path / "circuit.html", steps=3)
    text = path.read_text()
    js = next(tmp_path.glob("plotly-*.min.js"))
    assert f'src="{js.name}"' in text and "Plotly.newPlot" in text and "L0H2" in text
    assert "plotly_click" in text and "circuit_viewer" in text  # the click highlighting
    assert "<title>toy</title>" in text
    assert path.stat().st_size < 100_000 and js.stat().st_size > 1_000_000
    before = js.stat().st_mtime_ns
    save_html(plot_graph(circuit()), tmp_path / "fig.html")
    assert js.stat().st_mtime_ns == before  # shared, not written again
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["circuit.html", "fig.html",
                                                                js.name])  # fmt: skip
    js.write_text("truncated")
    save_html(circuit(), tmp_path / "circuit.html")
    assert js.stat().st_size > 1_000_000  # a broken copy is replaced


def test_save_html_inline_and_cdn(tmp_path: Path) -> None:
    text = save_html(circuit(), tmp_path / "inline.html", plotly="inline").read_text()
    assert len(text) > 1_000_000 and "<script src=" not in text and 'src="plotly' not in text
    text = save_html(circuit(), tmp_path / "cdn.html", plotly="cdn").read_text()
    assert 'src="https://cdn.plot.ly' in text and len(text) < 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cdn.html", "inline.html"]


def test_a_figure_of_someone_else_saves_without_the_viewer_data(tmp_path: Path) -> None:
    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]), layout={"title": {"text": "a <b>b</b>"}})
    text = save_html(fig, tmp_path / "f.html", plotly="cdn").read_text()
    assert "<title>a b</title>" in text and "circuit_viewer;" in text  # the script returns early


def test_html_of_a_300_node_2000_edge_graph_is_under_2_mb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    g = new_graph(model="large", thresholds={"top_k": 2000})
    for p in range(10):
        g.add_node(f"t{p}", kind="input", site="embed", layer=-1, pos=p, unit=-1,
                   activation=1.0, label=f"token {p}")  # fmt: skip
    for i in range(290):
        layer, pos = int(rng.integers(0, 6)), int(rng.integers(0, 10))
        g.add_node(f"f{i}", kind="feature", site=f"tc{layer}", layer=layer, pos=pos, unit=i,
                   activation=0.5, label=f"L{layer}/{i}", score=0.5,
                   examples="\n".join(f"example {j} of feature {i}" for j in range(5)))  # fmt: skip
    keys = list(g)
    while g.number_of_edges() < 2000:
        u, v = rng.choice(keys, 2)
        if g.nodes[u]["layer"] < g.nodes[v]["layer"]:
            g.add_edge(str(u), str(v), weight=float(rng.normal()), method="test")
    path = save_html(g, tmp_path / "large.html")
    assert path.stat().st_size < 2_000_000


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
    with pytest.raises(ConfigError, match="threshold"):
        plot_graph(g, threshold=True)
    with pytest.raises(ConfigError, match="plotly Figure or a circuit graph"):
        save_html("not a figure", tmp_path / "x.html")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="plotly must be one of"):
        save_html(g, tmp_path / "x.html", plotly="embed")  # type: ignore[arg-type]
    with pytest.raises(SchemaError):
        plot_graph(nx.DiGraph([("a", "b")]))
    assert list(tmp_path.iterdir()) == []
