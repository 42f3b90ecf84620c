"""The HTML page and image files of a circuit view (`plot_graph`'s figure).

`save_html` writes the page. In it, clicking a node highlights its upstream and downstream paths
and dims the rest (a small script in the page; a notebook's ``fig.show()`` has no click
highlighting). plotly.js is written once beside the page by default (the page stays small and
works offline), or inline, or loaded from the CDN. `save_image` writes PNG/SVG/PDF through
kaleido when it is installed (``pip install circuits-mi[export]``, which also needs a Chrome or
Chromium: ``apt install chromium`` on Debian) and says so when it is not.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Literal

import networkx as nx
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs, get_plotlyjs_version

from circuits.errors import CircuitsError, ConfigError
from circuits.files import atomic_open
from circuits.graph.plot import plot_graph

IMAGE_FORMATS = (".png", ".svg", ".pdf", ".jpeg", ".jpg", ".webp")
PLOTLY_MODES = ("directory", "inline", "cdn")

# Click highlighting in the HTML page: plotly runs it once the plot is drawn ({plot_id} is the
# plot's div). Edges and node keys come from layout.meta.circuit_viewer; each "path" trace
# repeats its "edges" trace's style and is filled with the segments on the clicked node's paths.
_VIEWER_JS = """
(function () {
  var gd = document.getElementById('{plot_id}');
  var v = gd && gd.layout.meta && gd.layout.meta.circuit_viewer;
  if (!v) { return; }
  var index = {}, chosen = null, level = 0;
  v.nodes.forEach(function (k, i) { index[k] = i; });
  function restyle(update, idx) { if (idx.length) { Plotly.restyle(gd, update, idx); } }
  function traces(role) {
    var out = [];
    gd.data.forEach(function (t, i) { if (t.meta && t.meta.role === role) { out.push(i); } });
    return out;
  }
  function walk(start, links, edges) {
    var seen = {}, todo = [start];
    seen[start] = true;
    while (todo.length) {
      (links[todo.pop()] || []).forEach(function (link) {
        edges[link[1]] = true;
        if (!seen[link[0]]) { seen[link[0]] = true; todo.push(link[0]); }
      });
    }
    return seen;
  }
  function paths(k) {
    var down = {}, up = {}, edges = {}, nodes = {};
    v.edges.forEach(function (e, id) {
      if (e[2] < level) { return; }
      (down[e[0]] = down[e[0]] || []).push([e[1], id]);
      (up[e[1]] = up[e[1]] || []).push([e[0], id]);
    });
    [walk(k, down, edges), walk(k, up, edges)].forEach(function (seen) {
      Object.keys(seen).forEach(function (n) { nodes[n] = true; });
    });
    return {nodes: nodes, edges: edges};
  }
  function show(key) {
    var p = paths(index[key]), nodes = traces('node'), hl = traces('path');
    restyle({selectedpoints: nodes.map(function (i) {
      var on = [];
      gd.data[i].customdata.forEach(function (k, j) { if (p.nodes[index[k]]) { on.push(j); } });
      return on;
    })}, nodes);
    restyle({opacity: v.dim}, traces('edges'));
    var xs = [], ys = [], sizes = [];
    hl.forEach(function (i) {
      var src = gd.data[gd.data[i].meta.source], x = [], y = [], s = [];
      src.meta.ids.forEach(function (id, j) {
        if (!p.edges[id]) { return; }
        for (var m = 4 * j; m < 4 * j + 4; m++) {
          x.push(src.x[m]); y.push(src.y[m]); s.push(src.marker.size[m]);
        }
      });
      xs.push(x); ys.push(y); sizes.push(s);
    });
    restyle({x: xs, y: ys, 'marker.size': sizes}, hl);
  }
  function reset() {
    if (chosen === null) { return; }
    chosen = null;
    var hl = traces('path'), none = hl.map(function () { return []; });
    var nodes = traces('node');
    restyle({selectedpoints: nodes.map(function () { return null; })}, nodes);
    restyle({opacity: 1}, traces('edges'));
    restyle({x: none, y: none, 'marker.size': none}, hl);
  }
  gd.on('plotly_click', function (e) {
    var pt = e.points[0], meta = pt.data.meta;
    if (!meta || meta.role !== 'node' || pt.customdata === chosen) { reset(); return; }
    chosen = pt.customdata;
    show(chosen);
  });
  gd.addEventListener('click', function (e) {  // plotly_click handles clicks on points
    var ui = e.target.closest && e.target.closest('.legend, .slider-container, .modebar');
    if (!ui && !(gd._hoverdata && gd._hoverdata.length)) { reset(); }
  });
  document.addEventListener('keydown', function (e) { if (e.key === 'Escape') { reset(); } });
  gd.on('plotly_sliderchange', function (e) {
    level = e.step._index;  // the step's index: edges of a weaker bin are hidden now
    if (chosen !== null) { show(chosen); }
  });
  Plotly.relayout(gd, {annotations: (gd.layout.annotations || []).concat([{
    text: 'click a node: its upstream and downstream paths (click again, or Esc, to reset)',
    xref: 'paper', yref: 'paper', x: 1, y: 1, xanchor: 'right', yanchor: 'bottom',
    showarrow: false, font: {size: 11, color: '#666666'}}])});
})();
"""


def _figure(fig_or_graph: go.Figure | nx.DiGraph, plot_options: dict[str, Any]) -> go.Figure:
    if isinstance(fig_or_graph, nx.DiGraph):
        return plot_graph(fig_or_graph, **plot_options)
    if not isinstance(fig_or_graph, go.Figure):
        raise ConfigError(
            f"expected a plotly Figure or a circuit graph, got {type(fig_or_graph).__name__}"
        )
    return fig_or_graph


def save_html(
    fig_or_graph: go.Figure | nx.DiGraph,
    path: str | os.PathLike[str],
    *,
    plotly: Literal["directory", "inline", "cdn"] = "directory",
    **plot_options: Any,
) -> Path:
    """Write an interactive HTML page of a figure or a graph (a graph is plotted first).

    Clicking a node in the page highlights its upstream and downstream paths (the edges drawn at
    the slider's current threshold) and dims the rest; clicking it again, clicking empty space or
    pressing Esc resets. plotly: where plotly.js comes from. "directory" (the default) writes it
    once beside the page as ``plotly-<version>.min.js``, shared by every page in that folder: the
    page stays small (well under 2 MB for a few thousand edges) and works offline, as long as
    the two files travel together. "inline" puts it in the page (one self-contained file, about
    5 MB larger). "cdn" loads it from cdn.plot.ly (small, but needs a network to view).

    For example:

        cc.save_html(circuit, "circuit.html", threshold=0.05)   # plot_graph's options
        cc.save_html(fig, "report/fig.html", plotly="inline")   # one file to mail around

    Raises:
        ConfigError: `fig_or_graph` is neither a plotly Figure nor a circuit graph, `plotly` is
            not "directory", "inline" or "cdn", or a plot option is out of range.
        SchemaError: the graph breaks the schema.
        OutputError: a file cannot be written.
    """
    if plotly not in PLOTLY_MODES:
        raise ConfigError(f"plotly must be one of {PLOTLY_MODES}, got {plotly!r}")
    fig = _figure(fig_or_graph, plot_options)
    include = {"inline": True, "cdn": "cdn", "directory": _plotly_file()}[plotly]
    page = fig.to_html(
        include_plotlyjs=include, full_html=True, post_script=_VIEWER_JS,
        config={"displaylogo": False, "responsive": True},
    )  # fmt: skip
    page = page.replace("<head>", f"<head><title>{_page_title(fig)}</title>", 1)
    if plotly == "directory":
        _write_plotly_js(Path(path).parent / _plotly_file())
    with atomic_open(path, "w") as fh:
        fh.write(page)
    return Path(path)


def _plotly_file() -> str:
    """The versioned name plotly.js is written under, so pages of different versions coexist."""
    return f"plotly-{get_plotlyjs_version()}.min.js"


def _write_plotly_js(target: Path) -> None:
    """Write plotly.js to `target` unless an identical copy is already there."""
    code = get_plotlyjs()
    if target.is_file() and target.stat().st_size == len(code.encode()):
        return
    with atomic_open(target, "w") as fh:
        fh.write(code)


def _page_title(fig: go.Figure) -> str:
    """The browser tab's title: the figure title's first line, without markup."""
    text = fig.layout.title.text or "circuit"
    return html.escape(html.unescape(re.sub(r"<[^>]*>", "", text.split("<br>")[0])))


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
