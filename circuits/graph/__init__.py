"""Circuit graphs: build, prune, save, load, export and view.

Graphs are plain `networkx.DiGraph` objects following one versioned schema
(`circuits.graph.schema`, the one place it is written down). Results of other stages reach this
package as plain tables (`build_graph`, the `GraphSource` protocol); it never imports them, and
it never runs a model (it imports no torch): faithfulness lives in `circuits.faithfulness`.

    g = build_graph(edges_df, nodes=nodes_df, meta={"model": "gpt2-small"}, influence=0.8)
    g = prune(g, top_k=200)
    save_graph(g, "circuit.graphml"); g2 = load_graph("circuit.graphml")
    plot_graph(g)
"""

from circuits.graph.build import GraphSource, build_graph, build_graph_from_matrix
from circuits.graph.io import FORMATS, graph_frames, load_graph, save_graph
from circuits.graph.neuronpedia import export_neuronpedia
from circuits.graph.page import save_html, save_image
from circuits.graph.plot import plot_graph
from circuits.graph.prune import prune
from circuits.graph.schema import KINDS, SCHEMA_VERSION, new_graph, node_key, validate

__all__ = [
    "FORMATS",
    "KINDS",
    "SCHEMA_VERSION",
    "GraphSource",
    "build_graph",
    "build_graph_from_matrix",
    "export_neuronpedia",
    "graph_frames",
    "load_graph",
    "new_graph",
    "node_key",
    "plot_graph",
    "prune",
    "save_graph",
    "save_html",
    "save_image",
    "validate",
]
