"""Interactive plotly views of a circuit graph.

`plot_graph` lays nodes out in layers (layer on one axis; position, site and unit order on the
other), draws edges with width by |weight| and colour by sign (blue positive, red negative), puts
node details in the hover text, and adds a slider whose steps hide edges below a threshold.
Edges are drawn in one trace per (strength bin, sign), not one per edge, so a few thousand edges
stay fast; a midpoint marker per edge carries its hover text.

`save_html` writes a self-contained page (plotly.js inline, works offline). `save_image` writes
PNG/SVG/PDF through kaleido when it is installed (``pip install circuits-mi[export]``, which also
needs a Chrome or Chromium: ``apt install chromium`` on Debian) and says so when it is not.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import networkx as nx
import numpy as np
import plotly.graph_objects as go

from circuits.errors import CircuitsError, ConfigError
from circuits.files import atomic_open
from circuits.graph.schema import KINDS, validate

IMAGE_FORMATS = (".png", ".svg", ".pdf", ".jpeg", ".jpg", ".webp")
_KIND_COLOURS = dict(zip(KINDS, ("#7f7f7f", "#9467bd", "#8c564b", "#e377c2", "#ff7f0e",
                                 "#2ca02c", "#bcbd22", "#17becf"), strict=True))  # fmt: skip
_SIGN_COLOURS = {1: (31, 119, 180), -1: (214, 39, 40)}


def plot_graph(
    g: nx.DiGraph,
    *,
    threshold: float | None = None,
    orientation: Literal["horizontal", "vertical"] = "horizontal",
    steps: int = 6,
    max_edges: int = 5000,
    title: str | None = None,
) -> go.Figure:
    """A layered plotly figure of `g` with an edge-threshold slider.

    threshold: edges with |weight| below it are not drawn at all. orientation: "horizontal"
    puts layers on the x axis (inputs left, outputs right), "vertical" on the y axis.
    steps: slider steps (quantiles of |weight|). max_edges: draw at most this many edges, the
    largest by |weight| (the title says when some were left out).

    For example:

        fig = cc.plot_graph(circuit, threshold=0.05, orientation="vertical")
        fig.show()

    Raises:
        SchemaError: `g` breaks the schema.
        ConfigError: an option is out of range (orientation, steps, max_edges, threshold).
    """
    validate(g)
    if orientation not in ("horizontal", "vertical"):
        raise ConfigError(f"orientation must be 'horizontal' or 'vertical', got {orientation!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(max_edges, bool) or not isinstance(max_edges, int) or max_edges < 0:
        raise ConfigError(f"max_edges must be an int >= 0, got {max_edges!r}")
    if threshold is not None and not (isinstance(threshold, int | float) and threshold >= 0):
        raise ConfigError(f"threshold must be a number >= 0, got {threshold!r}")
    xy = _layout(g, orientation)
    edges = [(u, v, w) for u, v, w in g.edges(data="weight") if abs(w) >= (threshold or 0.0)]
    dropped = max(len(edges) - max_edges, 0)
    edges = sorted(edges, key=lambda e: -abs(e[2]))[:max_edges]
    mags = np.abs(np.asarray([w for _, _, w in edges], dtype=float))
    cuts = _cuts(mags, steps)
    fig = go.Figure()
    groups = _edge_traces(fig, edges, xy, cuts)
    _node_traces(fig, g, xy)
    n_traces = len(fig.data)
    slider_steps = []
    for i, cut in enumerate(cuts):
        visible = [True] * n_traces
        for t, b in groups:
            visible[t] = b >= i
        slider_steps.append(
            {"method": "restyle", "label": f"{cut:.3g}", "args": [{"visible": visible}]}
        )
    note = f" ({dropped} weaker edges not drawn)" if dropped else ""
    fig.update_layout(
        title=(title or str(g.graph.get("model") or "circuit")) + note,
        showlegend=True,
        hovermode="closest",
        plot_bgcolor="white",
        xaxis={"visible": orientation == "horizontal", "title": "layer", "showgrid": False},
        yaxis={"visible": orientation == "vertical", "title": "layer", "showgrid": False},
        sliders=[{"active": 0, "currentvalue": {"prefix": "|weight| >= "}, "steps": slider_steps}],
    )
    return fig


def _layout(g: nx.DiGraph, orientation: str) -> dict[str, tuple[float, float]]:
    """Node coordinates: a column per layer, nodes in a column ordered by (pos, site, unit)."""
    real = [a["layer"] for _, a in g.nodes(data=True) if a["layer"] >= 0]
    if real:
        lo, hi = min(real), max(real)
        column = {
            k: float(a["layer"] if a["layer"] >= 0 else hi + 1 if a["kind"] == "output" else lo - 1)
            for k, a in g.nodes(data=True)
        }
    elif nx.is_directed_acyclic_graph(g):
        column = {k: float(i) for i, gen in enumerate(nx.topological_generations(g)) for k in gen}
    else:
        column = {k: 0.0 for k in g.nodes}
    by_column: dict[float, list[str]] = defaultdict(list)
    for k in g.nodes:
        by_column[column[k]].append(k)
    xy = {}
    for x, keys in by_column.items():
        keys.sort(key=lambda k: (g.nodes[k]["pos"], g.nodes[k]["site"], g.nodes[k]["unit"], k))
        for rank, k in enumerate(keys):
            y = rank - (len(keys) - 1) / 2
            xy[k] = (x, y) if orientation == "horizontal" else (y, -x)
    return xy


def _cuts(mags: np.ndarray, steps: int) -> list[float]:
    """Slider thresholds: 0, then quantiles of |weight| (distinct values only)."""
    if mags.size == 0:
        return [0.0]
    qs = np.quantile(mags, np.linspace(0, 1, steps + 1)[1:-1]) if steps > 1 else []
    return [0.0, *sorted({float(q) for q in qs if q > 0})]


def _edge_traces(
    fig: go.Figure, edges: list[tuple[str, str, float]], xy: dict, cuts: list[float]
) -> list[tuple[int, int]]:
    """One line trace and one hover trace per (bin, sign); returns (trace index, bin) pairs."""
    bins: dict[tuple[int, int], list[tuple[str, str, float]]] = defaultdict(list)
    for u, v, w in edges:
        b = int(np.searchsorted(cuts, abs(w), side="right")) - 1
        bins[(b, 1 if w >= 0 else -1)].append((u, v, w))
    out = []
    for (b, sign), members in sorted(bins.items()):
        strength = (b + 1) / len(cuts)
        r, gr, bl = _SIGN_COLOURS[sign]
        colour = f"rgba({r},{gr},{bl},{0.25 + 0.7 * strength:.2f})"
        xs: list[float | None] = []
        ys: list[float | None] = []
        for u, v, _ in members:
            xs += [xy[u][0], xy[v][0], None]
            ys += [xy[u][1], xy[v][1], None]
        name = f"{'+' if sign > 0 else '-'} |w| >= {cuts[b]:.3g}"
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", name=name,
                                 legendgroup=name, showlegend=False,
                                 line={"width": 0.5 + 4 * strength, "color": colour}))  # fmt: skip
        out.append((len(fig.data) - 1, b))
        mid_x = [(xy[u][0] + xy[v][0]) / 2 for u, v, _ in members]
        mid_y = [(xy[u][1] + xy[v][1]) / 2 for u, v, _ in members]
        text = [f"{u} → {v}<br>weight = {w:.4g}" for u, v, w in members]
        fig.add_trace(go.Scatter(x=mid_x, y=mid_y, mode="markers", name=name, legendgroup=name,
                                 showlegend=False, hovertext=text, hoverinfo="text",
                                 marker={"size": 6, "color": colour, "opacity": 0.0}))  # fmt: skip
        out.append((len(fig.data) - 1, b))
    return out


def _node_traces(fig: go.Figure, g: nx.DiGraph, xy: dict) -> None:
    """One marker trace per node kind (a legend entry each) with the node details on hover."""
    few = g.number_of_nodes() <= 60
    for kind in KINDS:
        keys = [k for k, a in g.nodes(data=True) if a["kind"] == kind]
        if not keys:
            continue
        fig.add_trace(
            go.Scatter(
                x=[xy[k][0] for k in keys],
                y=[xy[k][1] for k in keys],
                mode="markers+text" if few else "markers",
                name=kind,
                text=[g.nodes[k]["label"] for k in keys] if few else None,
                textposition="top center",
                hovertext=[_hover(k, g.nodes[k]) for k in keys],
                hoverinfo="text",
                marker={"size": 12, "color": _KIND_COLOURS[kind], "line": {"width": 1}},
            )
        )


def _hover(key: str, a: dict[str, Any]) -> str:
    lines = [f"<b>{a['label']}</b>", f"key: {key}", f"kind: {a['kind']}", f"site: {a['site']}",
             f"layer: {a['layer']}  pos: {a['pos']}  unit: {a['unit']}"]  # fmt: skip
    if a.get("h", -1) >= 0:
        lines.append(f"h, w: {a['h']}, {a.get('w', -1)}")
    act = a["activation"]
    lines.append(f"activation: {'n/a' if math.isnan(act) else f'{act:.4g}'}")
    if "influence" in a:
        lines.append(f"influence: {a['influence']:.4g}")
    return "<br>".join(lines)


def _figure(fig_or_graph: go.Figure | nx.DiGraph, plot_options: dict[str, Any]) -> go.Figure:
    if isinstance(fig_or_graph, nx.DiGraph):
        return plot_graph(fig_or_graph, **plot_options)
    if not isinstance(fig_or_graph, go.Figure):
        raise ConfigError(
            f"expected a plotly Figure or a circuit graph, got {type(fig_or_graph).__name__}"
        )
    return fig_or_graph


def save_html(
    fig_or_graph: go.Figure | nx.DiGraph, path: str | os.PathLike[str], **plot_options: Any
) -> Path:
    """Write a self-contained HTML page (plotly.js inline); a graph is plotted first.

    For example:

        cc.save_html(circuit, "circuit.html", threshold=0.05)   # plot_graph's options

    Raises:
        ConfigError: `fig_or_graph` is neither a plotly Figure nor a circuit graph, or a plot
            option is out of range.
        SchemaError: the graph breaks the schema.
        OutputError: the file cannot be written.
    """
    fig = _figure(fig_or_graph, plot_options)
    with atomic_open(path, "w") as fh:
        fig.write_html(fh, include_plotlyjs=True, full_html=True)
    return Path(path)


def save_image(
    fig_or_graph: go.Figure | nx.DiGraph, path: str | os.PathLike[str], **plot_options: Any
) -> Path:
    """Write PNG, SVG, PDF, JPEG or WebP (by suffix) through kaleido; a graph is plotted first.

    For example:

        save_image(circuit, "circuit.svg")               # needs the export extra and a Chromium

    Raises:
        ConfigError: the suffix is not an image format, or a plot option is out of range.
        CircuitsError: kaleido is not installed (the message says how to install it).
        SchemaError: the graph breaks the schema.
        OutputError: the file cannot be written.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ConfigError(f"image suffix must be one of {IMAGE_FORMATS}, got {suffix!r}")
    if importlib.util.find_spec("kaleido") is None:
        raise CircuitsError(
            f"writing {suffix[1:].upper()} needs kaleido, which is not installed: "
            "pip install circuits-mi[export] (kaleido also needs a Chrome or Chromium; on Debian: "
            "apt install chromium). save_html works without it"
        )
    fig = _figure(fig_or_graph, plot_options)
    with atomic_open(path, "wb") as fh:
        fig.write_image(fh, format=suffix[1:].replace("jpg", "jpeg"))
    return Path(path)
