"""Interactive plotly views of a circuit graph, made for reading circuits.

`plot_graph` draws a grid: a column per layer (inputs left, outputs right) and a row per token
position, labelled with the input tokens (a conv node's row is its spatial location, h * width +
w); nodes that share a cell are stacked inside it. Edges are coloured by sign (blue positive, red
negative), drawn wider and more opaque the larger |weight|, with an arrow head near the target,
and a slider hides weak edges. Hovering a node shows its kind, position, activation, influence or
score and its top examples; the title carries the faithfulness and the pruning settings; the
legend names the node kinds and the edge signs. Edges are drawn in one trace per (strength bin,
sign), not one per edge, so a few thousand edges stay fast; a marker at each edge's midpoint
carries its hover text.

`circuits.graph.page` writes the figure as an HTML page (with click highlighting) or an image.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import networkx as nx
import numpy as np
import plotly.graph_objects as go

from circuits.errors import ConfigError
from circuits.graph.schema import KINDS, validate

_KIND_COLOURS = dict(zip(KINDS, ("#7f7f7f", "#9467bd", "#8c564b", "#e377c2", "#ff7f0e",
                                 "#2ca02c", "#bcbd22", "#17becf"), strict=True))  # fmt: skip
_KIND_SYMBOLS = {"input": "square", "output": "square", "error": "diamond"}
_SIGN_COLOURS = {1: (31, 119, 180), -1: (214, 39, 40)}
_SIGN_NAMES = {1: "edge: positive", -1: "edge: negative"}
_TEXT = "#333333"
_FADED = "rgba(0,0,0,0.15)"  # the labels of nodes a click does not highlight
_DIM = 0.12  # opacity of what a click does not highlight
_GAP = 0.8  # blank units between two rows
_UNIT_PX = 22.0  # pixels per row unit the figure height aims at
_PLOT_W_PX = 900.0  # the plot area's width assumed when placing arrow heads
_NODE_PX = 12
_EXAMPLE_LINES = 4


def plot_graph(
    g: nx.DiGraph,
    *,
    threshold: float | None = None,
    orientation: Literal["horizontal", "vertical"] = "horizontal",
    steps: int = 6,
    max_edges: int = 5000,
    title: str | None = None,
) -> go.Figure:
    """A plotly figure of `g` for reading a circuit: layers as columns, positions as rows.

    Columns are layers (inputs left, outputs right) and rows are token positions, labelled with
    the input tokens (a conv node with ``h``/``w`` sits in row ``h * width + w``); nodes that share
    a (layer, position) cell are stacked inside it. Edges are blue (positive) or red (negative),
    wider the larger |weight|, with an arrow head; a slider hides weak edges. A node's hover
    shows its key, kind, layer, position, activation, influence/score and top ``examples``. The
    title carries the model (or `title`), the faithfulness, the pruning settings and, where
    ``g.graph`` has them, ``replacement_score`` and ``completeness_score``. Clicking a node to
    highlight its paths works in the page `save_html` writes, not in a notebook's ``fig.show()``.

    threshold: edges with |weight| below it are not drawn at all. orientation: "horizontal"
    puts layers on the x axis, "vertical" on the y axis (inputs on top, positions across).
    steps: slider steps (quantiles of |weight|). max_edges: draw at most this many edges, the
    largest by |weight| (the title says when some were left out).

    For example:

        fig = cc.plot_graph(circuit, threshold=0.05)
        fig.show()                                   # or cc.save_html(circuit, "circuit.html")

    Raises:
        SchemaError: `g` breaks the schema.
        ConfigError: an option is out of range (orientation, steps, max_edges, threshold).
    """
    validate(g)
    _check_options(orientation, steps, max_edges, threshold)
    grid = _grid(g, orientation)
    edges = [(u, v, w) for u, v, w in g.edges(data="weight") if abs(w) >= (threshold or 0.0)]
    dropped = max(len(edges) - max_edges, 0)
    edges = sorted(edges, key=lambda e: -abs(e[2]))[:max_edges]
    cuts = _cuts(np.abs(np.asarray([w for _, _, w in edges], dtype=float)), steps)
    fig = go.Figure()
    groups = _edge_traces(fig, g, edges, grid, cuts)
    _node_traces(fig, g, grid)
    slider_steps = []
    for i, cut in enumerate(cuts):
        visible = [True] * len(fig.data)
        for t, b in groups:
            visible[t] = b >= i
        slider_steps.append(
            {"method": "restyle", "label": f"{cut:.3g}", "args": [{"visible": visible}]}
        )
    index = {k: i for i, k in enumerate(g.nodes)}
    viewer = {"nodes": list(g.nodes), "dim": _DIM,
              "edges": [[index[u], index[v], _bin(cuts, w)] for u, v, w in edges]}  # fmt: skip
    fig.update_layout(
        title={"text": _title(g, title, dropped), "x": 0.01, "xanchor": "left"},
        height=grid.height,
        margin={"l": 120, "r": 20, "t": 90, "b": 40},
        showlegend=True,
        legend={"title": {"text": "nodes and edges"}, "itemsizing": "constant"},
        hovermode="closest",
        hoverlabel={"align": "left", "bgcolor": "white", "font": {"size": 12}},
        plot_bgcolor="white",
        shapes=_bands(grid, orientation),
        sliders=[
            {
                "active": 0,
                "currentvalue": {"prefix": "|weight| >= "},
                "pad": {"t": 40},
                "steps": slider_steps,
            }
        ],
        meta={"circuit_viewer": viewer},
        **_axes(grid, orientation),
    )
    return fig


def _check_options(orientation: str, steps: int, max_edges: int, threshold: float | None) -> None:
    """ConfigError naming the first of plot_graph's options that is out of range."""
    if orientation not in ("horizontal", "vertical"):
        raise ConfigError(f"orientation must be 'horizontal' or 'vertical', got {orientation!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(max_edges, bool) or not isinstance(max_edges, int) or max_edges < 0:
        raise ConfigError(f"max_edges must be an int >= 0, got {max_edges!r}")
    if threshold is not None and not (
        isinstance(threshold, int | float) and not isinstance(threshold, bool) and threshold >= 0
    ):
        raise ConfigError(f"threshold must be a number >= 0, got {threshold!r}")


@dataclass
class _Grid:
    """Where the nodes go, how the axes are labelled, and the pixel scale arrows are placed by."""

    xy: dict[str, tuple[float, float]]
    columns: dict[float, str]  # column coordinate -> "input", "L3", "output"
    rows: dict[float, str]  # row centre -> its token (or location)
    bands: list[tuple[float, float]]  # each row's extent along the row axis
    depth: float  # the row axis' extent, in units
    height: int  # the figure's height in pixels
    px: tuple[float, float]  # estimated pixels per x unit, per y unit


def _grid(g: nx.DiGraph, orientation: str) -> _Grid:
    """Columns by layer, rows by position; a cell's nodes stacked one unit apart in its row."""
    column, column_names = _columns(g)
    row, row_names = _rows(g)
    cells: dict[tuple[float, int], list[str]] = defaultdict(list)
    for k in g.nodes:
        cells[(column[k], row[k])].append(k)
    size: dict[int, int] = defaultdict(lambda: 1)
    for (_, r), keys in cells.items():
        size[r] = max(size[r], len(keys))
    start, at = {}, 0.0
    for r in sorted(size):
        start[r], at = at, at + size[r] + _GAP
    depth = max(at - _GAP - 1, 1.0)
    xy = {}
    for (c, r), keys in cells.items():
        keys.sort(key=lambda k: (g.nodes[k]["site"], g.nodes[k]["unit"], k))
        centre = start[r] + (size[r] - 1) / 2
        for i, k in enumerate(keys):
            y = centre + i - (len(keys) - 1) / 2
            xy[k] = (c, y) if orientation == "horizontal" else (y, -c)
    rows = {start[r] + (size[r] - 1) / 2: row_names[r] for r in sorted(size)}
    bands = [(start[r], start[r] + size[r] - 1) for r in sorted(size)]
    height, px = _size(len(column_names), depth, orientation)
    return _Grid(xy, column_names, rows, bands, depth, height, px)


def _size(n_columns: int, depth: float, orientation: str) -> tuple[int, tuple[float, float]]:
    """The figure's height (about _UNIT_PX per row unit, within 480-2400 px) and the pixels per
    x and y unit that arrow heads are placed by (the width assumed: _PLOT_W_PX)."""
    gaps = max(n_columns - 1, 1)
    if orientation == "horizontal":
        height = int(min(max(200 + _UNIT_PX * depth, 480), 2400))
        return height, (_PLOT_W_PX / gaps, (height - 200) / depth)
    height = int(min(max(200 + 5 * _UNIT_PX * n_columns, 480), 2400))
    return height, (_PLOT_W_PX / depth, (height - 200) / gaps)


def _columns(g: nx.DiGraph) -> tuple[dict[str, float], dict[float, str]]:
    """Each node's column (its layer; inputs before the first, outputs after the last) and the
    column names; a graph without layers falls back to topological generations."""
    real = [a["layer"] for _, a in g.nodes(data=True) if a["layer"] >= 0]
    if real:
        lo, hi = min(real), max(real)
        column = {
            k: float(a["layer"] if a["layer"] >= 0 else hi + 1 if a["kind"] == "output" else lo - 1)
            for k, a in g.nodes(data=True)
        }
        names = {float(c): "input" if c < lo else "output" if c > hi else f"L{int(c)}"
                 for c in sorted(set(column.values()))}  # fmt: skip
        return column, names
    if nx.is_directed_acyclic_graph(g):
        column = {k: float(i) for i, gen in enumerate(nx.topological_generations(g)) for k in gen}
    else:
        column = {k: 0.0 for k in g.nodes}
    return column, {c: str(int(c)) for c in sorted(set(column.values()))}


def _rows(g: nx.DiGraph) -> tuple[dict[str, int], dict[int, str]]:
    """Each node's row (its token position, or h * width + w for a conv location; -1 for all
    positions) and the row names: the input tokens where the graph has inputs."""
    spatial = [a for _, a in g.nodes(data=True) if a.get("h", -1) >= 0]
    width = 1 + max((int(a.get("w", -1)) for a in spatial), default=0)
    row: dict[str, int] = {}
    names: dict[int, str] = {}
    for k in sorted(g.nodes, key=lambda k: (g.nodes[k]["kind"] != "input", k)):
        a = g.nodes[k]
        if a.get("h", -1) >= 0:
            r, name = a["h"] * width + max(a.get("w", 0), 0), f"h,w {a['h']},{a.get('w', -1)}"
        elif a["pos"] < 0:
            r, name = a["pos"], "all positions"
        elif a["kind"] == "input":
            r, name = a["pos"], f"{a['pos']}: {a['label']}"
        else:
            r, name = a["pos"], f"pos {a['pos']}"
        row[k] = r
        names.setdefault(r, _escape(name))
    return row, names


def _cuts(mags: np.ndarray, steps: int) -> list[float]:
    """Slider thresholds: 0, then quantiles of |weight| (distinct values only)."""
    if mags.size == 0:
        return [0.0]
    qs = np.quantile(mags, np.linspace(0, 1, steps + 1)[1:-1]) if steps > 1 else []
    return [0.0, *sorted({float(q) for q in qs if q > 0})]


def _bin(cuts: list[float], w: float) -> int:
    """An edge's strength bin: the last slider step that still shows it."""
    return int(np.searchsorted(cuts, abs(w), side="right")) - 1


def _edge_traces(
    fig: go.Figure, g: nx.DiGraph, edges: list[tuple[str, str, float]], grid: _Grid,
    cuts: list[float],
) -> list[tuple[int, int]]:  # fmt: skip
    """Per (bin, sign): a line trace with arrow heads, a midpoint hover trace and an empty "path"
    trace the page's script fills on a click. Returns (trace index, bin) for the slider."""
    bins: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (_, _, w) in enumerate(edges):
        bins[(_bin(cuts, w), 1 if w >= 0 else -1)].append(i)
    order = sorted(bins)
    for sign in (1, -1):  # legend entries: one per sign, toggling that sign's edges
        r, gr, bl = _SIGN_COLOURS[sign]
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=_SIGN_NAMES[sign],
                                 legendgroup=_SIGN_NAMES[sign], meta={"role": "legend"},
                                 legendrank=2000,  # after the node kinds
                                 line={"width": 3, "color": f"rgb({r},{gr},{bl})"}))  # fmt: skip
    first = len(fig.data)
    out = []
    for j, (b, sign) in enumerate(order):
        members = [edges[i] for i in bins[(b, sign)]]
        fig.add_trace(_edge_trace(members, bins[(b, sign)], b, sign, grid, len(cuts)))
        out.append((first + j, b))
    for j, (b, sign) in enumerate(order):
        members = [edges[i] for i in bins[(b, sign)]]
        fig.add_trace(_hover_trace(g, members, b, sign, grid, len(cuts)))
        out.append((first + len(order) + j, b))
    for j, (b, _) in enumerate(order):
        fig.add_trace(_path_trace(fig.data[first + j], first + j))
        out.append((first + 2 * len(order) + j, b))
    return out


def _path_trace(line: go.Scatter, source: int) -> go.Scatter:
    """An empty trace styled as the edges trace `line` (at index `source`); a click in the page
    fills it with those of `line`'s edges that lie on the clicked node's paths."""
    return go.Scatter(
        x=[], y=[], mode="lines+markers", hoverinfo="skip", showlegend=False,
        legendgroup=line.legendgroup, meta={"role": "path", "source": source}, line=line.line,
        marker={**line.marker.to_plotly_json(), "size": []},
    )  # fmt: skip


def _style(b: int, sign: int, n_bins: int) -> tuple[str, float]:
    """An edge bin's colour (by sign, more opaque when stronger) and line width."""
    strength = (b + 1) / n_bins
    r, gr, bl = _SIGN_COLOURS[sign]
    return f"rgba({r},{gr},{bl},{0.3 + 0.65 * strength:.2f})", 0.6 + 3.4 * strength


def _edge_trace(
    members: list[tuple[str, str, float]], ids: list[int], b: int, sign: int, grid: _Grid,
    n_bins: int,
) -> go.Scatter:  # fmt: skip
    """One bin's edges as segments source -> arrow head -> target -> gap (four points each)."""
    colour, width = _style(b, sign, n_bins)
    arrow = round(8 + 1.5 * width)
    xs: list[float | None] = []
    ys: list[float | None] = []
    for u, v, _ in members:
        (x0, y0), (x1, y1) = grid.xy[u], grid.xy[v]
        t = _arrow_at((x1 - x0) * grid.px[0], (y1 - y0) * grid.px[1], _NODE_PX / 2 + arrow / 2 + 1)
        xs += [x0, _r(x0 + t * (x1 - x0)), x1, None]
        ys += [y0, _r(y0 + t * (y1 - y0)), y1, None]
    return go.Scatter(
        x=xs, y=ys, mode="lines+markers", hoverinfo="skip", showlegend=False,
        name=f"{'+' if sign > 0 else '-'} bin {b}", legendgroup=_SIGN_NAMES[sign],
        meta={"role": "edges", "ids": ids}, line={"width": width, "color": colour},
        marker={"symbol": "arrow", "angleref": "previous", "color": colour,
                "size": [0, arrow, 0, 0] * len(members), "line": {"width": 0}},
    )  # fmt: skip


def _arrow_at(dx_px: float, dy_px: float, back_px: float) -> float:
    """Where along an edge (0 source, 1 target) its arrow head goes: `back_px` short of the
    target, so that the target's marker does not hide it; the middle for very short edges."""
    length = math.hypot(dx_px, dy_px)
    return 0.5 if length <= 2 * back_px else 1 - back_px / length


def _r(x: float) -> float:
    """A coordinate rounded for the page: four decimals are finer than a pixel."""
    return round(x, 4)


def _hover_trace(
    g: nx.DiGraph, members: list[tuple[str, str, float]], b: int, sign: int, grid: _Grid,
    n_bins: int,
) -> go.Scatter:  # fmt: skip
    """Invisible markers at the edges' midpoints that carry each edge's hover text."""
    colour, _ = _style(b, sign, n_bins)
    label = {k: _escape(g.nodes[k]["label"]) for e in members for k in e[:2]}
    xy = grid.xy
    return go.Scatter(
        x=[_r((xy[u][0] + xy[v][0]) / 2) for u, v, _ in members],
        y=[_r((xy[u][1] + xy[v][1]) / 2) for u, v, _ in members],
        mode="markers", showlegend=False, legendgroup=_SIGN_NAMES[sign],
        meta={"role": "edge-hover"}, hoverinfo="text",
        hovertext=[f"{label[u]} → {label[v]}<br>weight = {w:.4g}<br>"
                   f"<i>{_escape(u)} → {_escape(v)}</i>" for u, v, w in members],
        marker={"size": 8, "color": colour, "opacity": 0.0},
    )  # fmt: skip


def _node_traces(fig: go.Figure, g: nx.DiGraph, grid: _Grid) -> None:
    """One marker trace per node kind (a legend entry each) with the node details on hover."""
    few = g.number_of_nodes() <= 60
    tokens = {a["pos"]: a["label"] for _, a in g.nodes(data=True) if a["kind"] == "input"}
    for kind in KINDS:
        keys = [k for k, a in g.nodes(data=True) if a["kind"] == kind]
        if not keys:
            continue
        fig.add_trace(
            go.Scatter(
                x=[grid.xy[k][0] for k in keys], y=[grid.xy[k][1] for k in keys],
                mode="markers+text" if few else "markers", name=kind, meta={"role": "node"},
                uid=f"node-{kind}",
                customdata=keys, text=[_escape(g.nodes[k]["label"]) for k in keys] if few else None,
                textposition="top center", textfont={"size": 10, "color": _TEXT},
                hovertext=[_hover(k, g.nodes[k], tokens) for k in keys], hoverinfo="text",
                marker={"size": _NODE_PX, "color": _KIND_COLOURS[kind],
                        "symbol": _KIND_SYMBOLS.get(kind, "circle"),
                        "line": {"width": 1, "color": "#222222"}},
                unselected={"marker": {"opacity": _DIM}, "textfont": {"color": _FADED}},
            )
        )  # fmt: skip


def _hover(key: str, a: dict[str, Any], tokens: dict[int, str]) -> str:
    """A node's hover text: label, key, kind, where it is, how active, how important, examples."""
    where = f"layer {a['layer']} · pos {a['pos']}"
    if a["pos"] >= 0 and a["pos"] in tokens and a["kind"] != "input":
        where += f" ({_escape(tokens[a['pos']])})"
    if a.get("h", -1) >= 0:
        where += f" · h,w {a['h']},{a.get('w', -1)}"
    act = a["activation"]
    lines = [f"<b>{_escape(a['label'])}</b>", f"kind: {a['kind']}", f"key: {_escape(key)}",
             where, f"site: {_escape(a['site']) or '-'} · unit: {a['unit']}",
             f"activation: {'n/a' if math.isnan(act) else f'{act:.4g}'}"]  # fmt: skip
    for name in ("influence", "score", "prob"):
        value = a.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            lines.append(f"{name}: {value:.4g}")
    examples = a.get("examples")
    if isinstance(examples, str) and examples.strip():
        shown = [e for e in examples.splitlines() if e.strip()][:_EXAMPLE_LINES]
        lines.append("<i>top examples:</i>")
        lines += [f"  {_escape(e[:80] + ('…' if len(e) > 80 else ''))}" for e in shown]
    return "<br>".join(lines)


def _escape(text: object) -> str:
    """Text as plotly shows it literally (its labels read a little HTML)."""
    return html.escape(str(text), quote=False)


def _title(g: nx.DiGraph, title: str | None, dropped: int) -> str:
    """The title: the model (or `title`), then a line of the circuit's measurements and how it
    was pruned."""
    head = title if title is not None else _escape(g.graph.get("model") or "circuit")
    if dropped:
        head += f" ({dropped} weaker edges not drawn)"
    facts = []
    for name, attr in (("faithfulness", "faithfulness"), ("replacement", "replacement_score"),
                       ("completeness", "completeness_score")):  # fmt: skip
        value = g.graph.get(attr)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            facts.append(f"{name} {value:.3g}")
    facts.append(_pruning(g.graph["thresholds"]))
    facts.append(f"{g.number_of_nodes()} nodes, {g.number_of_edges()} edges")
    return f"{head}<br><span style='font-size:12px;color:#555555'>{' · '.join(facts)}</span>"


def _pruning(thresholds: str) -> str:
    """The pruning settings of ``g.graph["thresholds"]`` (a JSON object, as `validate` checked)
    in a few words; the candidate counts are left out."""
    shown = {k: v for k, v in json.loads(thresholds).items() if k != "candidates"}
    if not shown:
        return "not pruned"
    parts = []
    for k, v in shown.items():
        text = f"{v:.3g}" if isinstance(v, float) else json.dumps(v, separators=(",", ":"))
        parts.append(f"{_escape(k)}={_escape(text[:40])}")
    return "pruning: " + ", ".join(parts)


def _axes(grid: _Grid, orientation: str) -> dict[str, Any]:
    """Layer ticks on the layer axis, token ticks on the row axis (row 0 nearest the title)."""
    plain = {"showgrid": False, "zeroline": False, "showline": False}
    sign = 1 if orientation == "horizontal" else -1  # vertical: inputs on top, at y = -column
    layers = {**plain, "tickvals": [sign * c for c in grid.columns],
              "ticktext": list(grid.columns.values()), "title": {"text": "layer"}}  # fmt: skip
    named = len(grid.rows) > 1 or any(t != "all positions" for t in grid.rows.values())
    rows = {**plain, "tickvals": list(grid.rows), "ticktext": list(grid.rows.values()),
            "showticklabels": named, "title": {"text": "position" if named else ""}}  # fmt: skip
    if orientation == "horizontal":
        return {"xaxis": layers, "yaxis": {**rows, "autorange": "reversed"}}
    return {"xaxis": rows, "yaxis": layers}


def _bands(grid: _Grid, orientation: str) -> list[dict[str, Any]]:
    """Light shading behind every other row, so a token's nodes read as one band."""
    if len(grid.bands) < 2 or len(grid.bands) > 400:
        return []
    out = []
    for lo, hi in grid.bands[::2]:
        a, b = lo - _GAP / 2 - 0.1, hi + _GAP / 2 + 0.1
        span = {"x0": 0, "x1": 1, "xref": "paper", "y0": a, "y1": b, "yref": "y"}
        if orientation == "vertical":
            span = {"y0": 0, "y1": 1, "yref": "paper", "x0": a, "x1": b, "xref": "x"}
        out.append({"type": "rect", "layer": "below", "line": {"width": 0},
                    "fillcolor": "rgba(0,0,0,0.04)", **span})  # fmt: skip
    return out
