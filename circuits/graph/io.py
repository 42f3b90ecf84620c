"""Save and load circuit graphs: node-link JSON, GraphML, GEXF and attribution-graph JSON.

The file suffix chooses the format, or ``format="attribution-graph"`` (a .json file) asks for the
JSON that circuit-tracer writes and Neuronpedia's graph frontend reads (`circuits.graph.neuronpedia`
describes it). Every format round-trips the schema exactly (same nodes, edges, attributes and
attribute types; NaN stays NaN), and networkx's own readers open our node-link, GraphML and GEXF
files:

* ``.json``: networkx node-link data (``json_graph.node_link_graph(json.load(f))``), strict JSON:
  NaN is written as ``null`` and read back as NaN.
* ``.graphml``: ``nx.read_graphml``; provenance is GraphML graph data.
* ``.gexf``: ``nx.read_gexf``; GEXF has no graph attributes, so the provenance is a JSON object
  in ``<meta><description>``, which networkx ignores and `load_graph` reads.
* attribution-graph ``.json``: what the format has no field for travels in ``circuits`` keys the
  frontend ignores; `load_graph` tells it from node-link data by its ``metadata`` object, and also
  reads attribution graphs other tools wrote.

Writes are atomic: the file is written to a temporary file in the same folder and moved into
place with ``os.replace``, so a failed save leaves neither a partial file nor the temporary file.
`load_graph` validates the schema; a truncated or corrupted file, or one from a newer schema,
raises SchemaError.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal

import networkx as nx
import pandas as pd
from networkx.readwrite import json_graph

from circuits.errors import ConfigError, InputError, SchemaError
from circuits.files import as_path, atomic_open, read_json
from circuits.graph._util import nan_to_none
from circuits.graph.neuronpedia import from_neuronpedia, is_attribution_graph
from circuits.graph.neuronpedia import write_attribution_graph as _write_attribution_graph
from circuits.graph.schema import GRAPH_ATTRS, check_version, fix_types, validate

FORMATS = (".json", ".graphml", ".gexf")
"""The file suffixes `save_graph` and `load_graph` know: node-link JSON, GraphML and GEXF."""
ATTRIBUTION_GRAPH = "attribution-graph"
"""`save_graph`'s ``format`` for circuit-tracer's attribution-graph JSON (a .json file)."""
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_GEXF_NS = "{http://www.gexf.net/1.2draft}"
_GEXF_TAG = "circuits-graph-attributes:"


def _suffix(path: Any) -> str:
    suffix = as_path(path, "a graph file").suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(
            f"cannot tell the graph format of {str(path)!r} from its suffix {suffix!r}; "
            f"use one of {', '.join(FORMATS)}"
        )
    return suffix


def save_graph(
    g: nx.DiGraph,
    path: str | os.PathLike[str],
    *,
    format: Literal["attribution-graph"] | None = None,
) -> Path:
    """Validate `g` and write it to `path` (.json, .graphml or .gexf), atomically.

    format: None picks the format from the suffix; ``"attribution-graph"`` writes the JSON that
    circuit-tracer writes and Neuronpedia's graph frontend reads (slug: the file stem; for other
    slugs, a scan or the graph-metadata.json listing use `export_neuronpedia`, the same writer).
    `load_graph` reads every one of them back unchanged.

    Returns the path written. The formats are described in the docs' "Graph files" and
    "Attribution graphs" pages.

    For example:

        cc.save_graph(g, "circuit.graphml")                 # also .json and .gexf
        networkx.read_graphml("circuit.graphml")            # plain networkx opens it too
        cc.save_graph(g, "circuit.json", format="attribution-graph")   # circuit-tracer's JSON

    Raises:
        ConfigError: the suffix is not .json, .graphml or .gexf, `format` is not None or
            "attribution-graph", or an attribution graph is not given a .json name.
        InputError: `path` is not a path.
        SchemaError: `g` breaks the schema, or (XML formats) holds a control character.
        OutputError: the file cannot be written (nothing is left behind).
    """
    suffix = _suffix(path)
    _check_format(format, suffix)
    validate(g)
    if suffix != ".json":
        _check_xml_text(g)
    writer: Callable[[nx.DiGraph, IO[Any]], object] = {
        ".json": _write_json, ".graphml": _write_graphml, ".gexf": _write_gexf
    }[suffix]  # fmt: skip
    if format == ATTRIBUTION_GRAPH:
        writer = functools.partial(_write_attribution_graph, slug=Path(path).stem)
    with atomic_open(path, "w" if suffix == ".json" else "wb") as fh:
        writer(g, fh)
    return Path(path)


def _check_format(format: object, suffix: str) -> None:
    """`save_graph`'s format: None, or "attribution-graph" for a .json file."""
    if format not in (None, ATTRIBUTION_GRAPH):
        raise ConfigError(
            f"unknown graph format {format!r}; use format=None (from the suffix) or "
            f"format={ATTRIBUTION_GRAPH!r}"
        )
    if format == ATTRIBUTION_GRAPH and suffix != ".json":
        raise ConfigError(
            f"an attribution graph is JSON; name the file *.json (got suffix {suffix!r}) so "
            "load_graph and circuit-tracer's frontend find it"
        )


def load_graph(path: str | os.PathLike[str]) -> nx.DiGraph:
    """Read a graph written by `save_graph`, restore attribute types and validate the schema.

    A .json file may hold node-link data or attribution-graph JSON (told apart by its
    ``metadata`` object): our own attribution graphs come back unchanged, and circuit-tracer's
    are mapped to the schema (see the docs' "Attribution graphs" page).

    For example:

        g = cc.load_graph("circuit.graphml")
        g.graph["faithfulness"], g.nodes["blocks.1.attn.hook_z[2]"]["kind"]

    Raises:
        ConfigError: the suffix is not .json, .graphml or .gexf.
        InputError: there is no file at `path`.
        SchemaError: the file is truncated or corrupted, lists a node or an edge twice, was written
            by a newer schema version, or does not hold a valid circuit graph (an attribution
            graph: a node without node_id, feature_type or ctx_idx, or a link naming no node).
    """
    suffix = _suffix(path)
    if not Path(path).is_file():
        raise InputError(f"no graph file at {str(path)!r}")
    reader = {".json": _read_json, ".graphml": _read_graphml, ".gexf": _read_gexf}[suffix]
    try:
        g, listed = reader(Path(path))
    except SchemaError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, ET.ParseError, nx.NetworkXError,
            RecursionError, OSError) as e:  # fmt: skip
        raise SchemaError(
            f"{str(path)!r} is not a readable {suffix[1:]} circuit graph (truncated or "
            f"corrupted?): {type(e).__name__}: {str(e)[:200]}"
        ) from None
    if listed != (g.number_of_nodes(), g.number_of_edges()):
        raise SchemaError(
            f"{str(path)!r} lists {listed[0]} nodes and {listed[1]} edges but holds "
            f"{len(g)} distinct nodes and {g.number_of_edges()} distinct edges: a node or an edge "
            "is listed twice, and which copy wins would be a guess; remove the duplicates"
        )
    if not isinstance(g, nx.DiGraph) or g.is_multigraph() or not g.is_directed():
        raise SchemaError(f"{str(path)!r} does not hold a simple directed graph")
    if "schema_version" in g.graph:
        check_version(g.graph["schema_version"])
    fix_types(g)
    validate(g)
    return g


def graph_frames(g: nx.DiGraph) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The graph as tables: nodes (a ``key`` column + attributes), edges (source, target, ...).

    `build_graph(edges, nodes=nodes, meta=g.graph)` rebuilds the same graph.

    For example:

        nodes, edges = cc.graph_frames(g)
        edges.sort_values("weight", key=abs, ascending=False).head()

    Raises:
        InputError: `g` is not a networkx.DiGraph.
    """
    if not isinstance(g, nx.DiGraph):
        raise InputError(f"graph_frames takes a networkx.DiGraph, got {type(g).__name__}")
    nodes = pd.DataFrame([{"key": k, **a} for k, a in g.nodes(data=True)], columns=None)
    if nodes.empty:
        nodes = pd.DataFrame(columns=["key", "kind"])
    edges = pd.DataFrame(
        [{"source": u, "target": v, **a} for u, v, a in g.edges(data=True)],
    )
    if edges.empty:
        edges = pd.DataFrame(columns=["source", "target", "weight", "method"])
    return nodes, edges


def _check_xml_text(g: nx.DiGraph) -> None:
    """XML cannot hold control characters; refuse them before writing anything."""

    def check(where: str, value: object) -> None:
        if isinstance(value, str) and _XML_BAD.search(value):
            raise SchemaError(f"{where} holds a control character XML cannot store: {value!r:.80}")

    for name, value in g.graph.items():
        check(f"graph attribute {name!r}", value)
    for key, attrs in g.nodes(data=True):
        check("a node key", key)
        for name, value in attrs.items():
            check(f"node {key!r} attribute {name!r}", value)
    for u, v, attrs in g.edges(data=True):
        for name, value in attrs.items():
            check(f"edge {u!r} -> {v!r} attribute {name!r}", value)


def _write_json(g: nx.DiGraph, fh: IO[Any]) -> None:
    data = json_graph.node_link_data(g, edges="edges")
    data["graph"] = nan_to_none(data["graph"])
    data["nodes"] = [nan_to_none(n) for n in data["nodes"]]
    data["edges"] = [nan_to_none(e) for e in data["edges"]]
    json.dump(data, fh, allow_nan=False, indent=1)
    fh.write("\n")


def _read_json(path: Path) -> tuple[nx.DiGraph, tuple[int, int]]:
    data = read_json(path, "JSON circuit graph")
    if is_attribution_graph(data):
        return from_neuronpedia(data, repr(str(path)))
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise SchemaError(f"{str(path)!r} is JSON but not node-link graph data")
    version = (data.get("graph") or {}).get("schema_version")
    if version is not None:
        check_version(version)
    edges = "links" if "edges" not in data and "links" in data else "edges"  # networkx < 3.4
    g = json_graph.node_link_graph(data, directed=True, multigraph=False, edges=edges)
    return g, (len(data["nodes"]), len(data.get(edges) or []))


def _write_graphml(g: nx.DiGraph, fh: IO[Any]) -> None:
    nx.write_graphml(g, fh, encoding="utf-8", prettyprint=True)


def _read_graphml(path: Path) -> tuple[nx.DiGraph, tuple[int, int]]:
    g = nx.read_graphml(path, force_multigraph=False)
    g.graph.pop("node_default", None)
    g.graph.pop("edge_default", None)
    return g, _listed(ET.parse(path).getroot())


def _write_gexf(g: nx.DiGraph, fh: IO[Any]) -> None:
    writer = nx.readwrite.gexf.GEXFWriter(encoding="utf-8", prettyprint=True)
    writer.add_graph(g)
    meta = writer.xml.find("meta")
    if meta is None:  # networkx writes <meta>; be safe if a version does not
        meta = ET.SubElement(writer.xml, "meta")
    provenance = json.dumps(nan_to_none(dict(g.graph)), allow_nan=False, sort_keys=True)
    ET.SubElement(meta, "description").text = _GEXF_TAG + provenance
    writer.write(fh)


def _read_gexf(path: Path) -> tuple[nx.DiGraph, tuple[int, int]]:
    root = ET.parse(path).getroot()
    text = root.findtext(f"{_GEXF_NS}meta/{_GEXF_NS}description") or ""
    provenance: dict[str, Any] = {}
    if text.startswith(_GEXF_TAG):
        provenance = json.loads(text[len(_GEXF_TAG) :])
        if "schema_version" in provenance:
            check_version(provenance["schema_version"])
    g = nx.read_gexf(path)
    if g.is_multigraph():
        raise SchemaError(f"{str(path)!r} holds parallel edges; a circuit graph has none")
    for name in ("mode", "name", "node_default", "edge_default"):
        if name not in provenance:
            g.graph.pop(name, None)
    g.graph.update(provenance)
    for _, _, attrs in g.edges(data=True):
        attrs.pop("id", None)  # GEXF edge ids, made up by the writer; "id" is reserved
    for name in GRAPH_ATTRS:  # the provenance JSON wrote NaN as null
        if g.graph.get(name, 0) is None:
            g.graph[name] = math.nan
    return g, _listed(root)


def _listed(root: ET.Element) -> tuple[int, int]:
    """How many node and edge elements an XML graph file lists (duplicates included)."""
    tags = [el.tag.rsplit("}", 1)[-1] for el in root.iter()]
    return tags.count("node"), tags.count("edge")
