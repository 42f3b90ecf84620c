"""The attribution-graph JSON that circuit-tracer writes and its frontend and Neuronpedia read.

``cc.save_graph(g, "x.json", format="attribution-graph")`` and ``cc.export_neuronpedia`` write it
(one writer); ``cc.load_graph`` reads it back: exactly for files we wrote, by the mapping below for
files circuit-tracer (or any other tool) wrote. The format is circuit-tracer's
``create_graph_files`` output (its pydantic models in ``circuit_tracer/frontend/graph_models.py``)::

    {"metadata": {slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold,
                  schema_version: 1},
     "qParams": {pinnedIds: [], supernodes: [], linkType: "both", clickedId: "", sg_pos: ""},
     "nodes": [{node_id, feature, layer, ctx_idx, feature_type, token_prob, is_target_logit,
                run_idx, reverse_ctx_idx, jsNodeId, clerp, influence, activation}, ...],
     "links": [{source, target, weight}, ...]}

How our schema fills it:

==================  ===========================================================================
node_id             circuit-tracer's patterns: ``{layer}_{feature}_{ctx_idx}`` (features),
                    ``{layer}_-1_{ctx_idx}`` (errors), ``E_{unit}_{ctx_idx}`` (inputs: the token
                    id), ``{n_layers+1}_{unit}_{ctx_idx}`` (outputs: the vocabulary id); two nodes
                    that would share an id (e.g. two error nodes of one layer and position) get
                    ``_2``, ``_3``, ... appended
feature             ``unit`` for features, neurons, channels, heads, mlps (offset past the units of
                    earlier sites when one layer holds several sites, so ids stay unique); -1 for
                    errors; ``ctx_idx`` for inputs; ``unit`` (vocabulary index) for outputs
layer               ``str(layer)``; "E" for inputs; ``str(n_layers + 1)`` for outputs, where
                    n_layers is ``g.graph["n_layers"]`` (the model's layer count) if set, and at
                    least 1 + the highest layer in the graph
ctx_idx             ``pos`` (0 where -1); conv nodes: ``h * width + w``
feature_type        "embedding" (input), "logit" (output), "mlp reconstruction error" (error),
                    "cross layer transcoder" (every other kind: the frontend's feature nodes)
token_prob          an output's ``prob`` attribute (0.0 where absent)
is_target_logit     true for the output with the highest ``prob`` (the first, on ties)
jsNodeId            circuit-tracer's patterns: ``{layer}_{feature}-0``, ``E_{unit}-{ctx}``,
                    ``L_{unit}-{ctx}``, ``{layer}_-1-{ctx}`` for errors
clerp               ``label`` (outputs: ``Output "label" (p=...)``)
influence           cumulative influence share, as circuit-tracer writes it, from the nodes'
                    ``influence`` attribute (set by influence pruning), or a node's
                    ``cumulative_influence`` attribute where it has one (graphs read from such a
                    file); null without either, and for outputs
activation          ``activation``; null where NaN
run_idx, reverse_ctx_idx   0 (one prompt)
metadata.prompt_tokens     labels of the input nodes, by position
metadata.prompt     ``g.graph["prompt"]`` if set, else the tokens joined
metadata.scan       `scan`, else ``g.graph["model"]``; transcoder_list: []
metadata.node_threshold    the ``influence`` share in ``g.graph["thresholds"]``, else null
==================  ===========================================================================

qParams is left at its defaults (nothing pinned, no supernodes).

**Loss-less extension.** What the format has no place for travels in keys named ``circuits``,
which circuit-tracer's models and the frontend ignore: each node's ``circuits`` is ``{"key": our
node key, "attrs": every node attribute}``, each link's ``circuits`` holds the edge attributes
other than ``weight``, and ``metadata.circuits`` is ``{"graph": g.graph}`` (NaN written as null).
`load_graph` rebuilds the graph from them, so a graph we wrote comes back identical.

**Reading a file without them** (circuit-tracer's own output), node by node:

==================  ===========================================================================
key                 ``node_id``
kind                "embedding" -> input, "logit" -> output, any type naming an "error" -> error,
                    any other -> feature
layer               ``int(layer)`` where numeric, else -1; -1 for inputs and outputs
pos                 ``ctx_idx``
unit                features: the feature index in ``node_id`` (``{layer}_{index}_{ctx}``), else
                    ``feature`` (circuit-tracer's ``feature`` packs layer and index together);
                    inputs: the token id in ``E_{token}_{ctx}``, else -1; outputs: ``feature``
                    (the vocabulary id); errors: -1
label               ``clerp``; inputs without one: ``metadata.prompt_tokens[ctx_idx]``; outputs:
                    the token in ``Output "token" (p=...)``; else ``node_id``
activation          ``activation`` (NaN where null); site: ""
prob                outputs: ``token_prob``
cumulative_influence   ``influence`` where not null (circuit-tracer's cumulative share, not our
                    per-node ``influence``; written back unchanged on export)
==================  ===========================================================================

Links become edges (``weight``; method "attribution-graph"); provenance: model = ``scan``, method
"attribution-graph", thresholds ``{"influence": node_threshold}``, and as further graph
attributes ``slug``, ``prompt`` and ``n_layers`` (a logit node's layer - 1), so that writing the
graph again gives the file's node ids.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import IO, Any

import networkx as nx

from circuits.errors import SchemaError
from circuits.files import as_path, atomic_open, read_json
from circuits.graph._util import nan_to_none
from circuits.graph.schema import new_graph, validate

EXT = "circuits"
"""The key of the loss-less extension objects in nodes, links and metadata."""
_TYPES = {"input": "embedding", "output": "logit", "error": "mlp reconstruction error"}
_KINDS = {"embedding": "input", "logit": "output"}
_NODE_FIELDS = "node_id, feature, layer, ctx_idx, feature_type"
_QPARAMS = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
_OUTPUT_CLERP = re.compile(r'Output "(.*)" \(p=[-+0-9.eE]+\)', re.DOTALL)


def export_neuronpedia(
    g: nx.DiGraph,
    path: str | os.PathLike[str],
    *,
    slug: str | None = None,
    scan: str | None = None,
    index: bool = False,
) -> Path:
    """Write `g` as circuit-tracer / Neuronpedia graph JSON to `path` (atomically).

    slug: the graph's name in the frontend (default: the file stem). scan: the model or
    dictionary set it belongs to (default: ``g.graph["model"]``). index: also add the graph to
    ``graph-metadata.json`` in the same folder, as circuit-tracer's local server expects.
    ``cc.save_graph(g, path, format="attribution-graph")`` writes the same file with the defaults;
    ``cc.load_graph`` reads it back unchanged.

    Returns the path written. The fields are listed in the module docstring (the docs'
    "Attribution graphs" page).

    For example:

        cc.export_neuronpedia(circuit, "graphs/induction.json", scan="induction-2l", index=True)

    Raises:
        SchemaError: `g` breaks the schema, or `graph-metadata.json` exists and is not a listing.
        InputError: `path` is not a path.
        OutputError: the file cannot be written.
    """
    validate(g)
    target = as_path(path)
    slug = slug or target.stem
    with atomic_open(target, "w") as fh:
        metadata = write_attribution_graph(g, fh, slug=slug, scan=scan)
    if index:
        listing = target.parent / "graph-metadata.json"
        graphs = _listing(listing) if listing.exists() else []
        entry = {k: v for k, v in metadata.items() if k != EXT}
        graphs = [m for m in graphs if m.get("slug") != slug] + [entry]
        with atomic_open(listing, "w") as fh:
            json.dump({"graphs": graphs}, fh, indent=1)
    return target


def _listing(path: Path) -> list[dict[str, Any]]:
    """The graphs a graph-metadata.json lists; SchemaError if it is not such a listing."""
    data = read_json(path, "graph listing")
    graphs = data.get("graphs", []) if isinstance(data, dict) else None
    if not isinstance(graphs, list) or not all(isinstance(m, dict) for m in graphs):
        raise SchemaError(
            f'{str(path)!r} is not a graph listing ({{"graphs": [{{...}}, ...]}}); move it '
            "aside or export without index=True"
        )
    return graphs


def write_attribution_graph(
    g: nx.DiGraph, fh: IO[str], *, slug: str, scan: str | None = None
) -> dict[str, Any]:
    """Write the attribution-graph JSON of a validated `g` to `fh`; return its metadata."""
    data = to_neuronpedia(g, slug=slug, scan=scan)
    json.dump(data, fh, indent=1, allow_nan=False)
    fh.write("\n")
    return dict(data["metadata"])


# ------------------------------------------------------------------------------------ writing


def to_neuronpedia(g: nx.DiGraph, *, slug: str, scan: str | None = None) -> dict[str, Any]:
    """The frontend JSON as a dict (see the module docstring for the field mapping)."""
    nodes = dict(g.nodes(data=True))
    ids, out_nodes = _nodes(nodes, g.graph.get("n_layers"))
    links = [
        {
            "source": ids[u],
            "target": ids[v],
            "weight": a["weight"],
            EXT: nan_to_none({k: v for k, v in a.items() if k != "weight"}),
        }
        for u, v, a in g.edges(data=True)
    ]
    inputs = sorted((a["pos"], a["label"]) for a in nodes.values() if a["kind"] == "input")
    tokens = [label for _, label in inputs]
    metadata = {
        "slug": slug,
        "scan": scan or g.graph["model"] or "circuits",
        "transcoder_list": [],
        "prompt_tokens": tokens,
        "prompt": str(g.graph.get("prompt", "".join(tokens))),
        "node_threshold": json.loads(g.graph["thresholds"]).get("influence"),
        "schema_version": 1,
        EXT: {"graph": nan_to_none(g.graph)},
    }
    return {"metadata": metadata, "qParams": dict(_QPARAMS), "nodes": out_nodes, "links": links}


def _nodes(
    nodes: dict[str, dict[str, Any]], model_layers: object
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Every node's frontend dict (in graph order) and the node_id each key got.

    Outputs sit at layer n_layers + 1: `model_layers` (``g.graph["n_layers"]``) where it is an
    int, at least 1 + the highest layer in the graph.
    """
    n_layers = 1 + max((a["layer"] for a in nodes.values() if a["kind"] != "output"), default=-1)
    if isinstance(model_layers, int) and not isinstance(model_layers, bool):
        n_layers = max(n_layers, model_layers)
    width = 1 + max((a.get("w", -1) for a in nodes.values()), default=-1)
    offsets = _feature_offsets(nodes)
    cumulative = _cumulative_influence(nodes)
    outputs = [k for k, a in nodes.items() if a["kind"] == "output"]
    target = max(outputs, key=lambda k: nodes[k].get("prob", 0.0), default=None)
    ids: dict[str, str] = {}
    used: set[str] = set()
    out = []
    for key, a in nodes.items():
        node = _node(a, n_layers, width, offsets)
        node["node_id"] = ids[key] = _unique(node["node_id"], used)
        node["is_target_logit"] = key == target
        node["influence"] = None if a["kind"] == "output" else cumulative.get(key)
        node[EXT] = {"key": key, "attrs": nan_to_none(a)}
        out.append(node)
    return ids, out


def _unique(node_id: str, used: set[str]) -> str:
    """`node_id`, or with ``_2``, ``_3``, ... appended if it is in `used`; added to `used`."""
    candidate, n = node_id, 1
    while candidate in used:
        n += 1
        candidate = f"{node_id}_{n}"
    used.add(candidate)
    return candidate


def _node(a: dict[str, Any], n_layers: int, width: int, offsets: dict[Any, int]) -> dict[str, Any]:
    """One node's frontend fields (node_id before de-duplication; no influence yet)."""
    kind, unit = a["kind"], a["unit"]
    ctx = a["h"] * width + a["w"] if a.get("h", -1) >= 0 and width > 0 else max(a["pos"], 0)
    layer = str(max(a["layer"], 0))
    label = a["label"]
    prob = float(a.get("prob", 0.0))
    prob = 0.0 if math.isnan(prob) else prob
    if kind == "input":
        layer, feature = "E", ctx
        node_id, js = f"E_{unit}_{ctx}", f"E_{unit}-{ctx}"
    elif kind == "output":
        layer, feature = str(n_layers + 1), unit
        node_id, js = f"{layer}_{unit}_{ctx}", f"L_{unit}-{ctx}"
        label = f'Output "{label}" (p={prob:.3f})'
    elif kind == "error":
        feature = -1
        node_id, js = f"{layer}_-1_{ctx}", f"{layer}_-1-{ctx}"
    else:
        feature = max(unit, 0) + offsets.get((a["layer"], a["site"]), 0)
        node_id, js = f"{layer}_{feature}_{ctx}", f"{layer}_{feature}-0"
    act = a["activation"]
    return {
        "node_id": node_id,
        "feature": int(feature),
        "layer": layer,
        "ctx_idx": int(ctx),
        "feature_type": _TYPES.get(kind, "cross layer transcoder"),
        "token_prob": prob,
        "is_target_logit": False,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": js,
        "clerp": label,
        "influence": None,
        "activation": None if math.isnan(act) else act,
    }


def _feature_offsets(nodes: dict[str, dict[str, Any]]) -> dict[Any, int]:
    """Per (layer, site): how far to shift unit indices so sites sharing a layer do not clash.

    A site's whole-site node (unit -1, written as feature 0) takes one slot too.
    """
    top: dict[Any, int] = {}
    for a in nodes.values():
        if a["kind"] not in ("input", "output", "error"):
            site = (a["layer"], a["site"])
            top[site] = max(top.get(site, 0), max(a["unit"], 0) + 1)
    offsets: dict[Any, int] = {}
    running: dict[int, int] = {}
    for layer, site in sorted(top):
        offsets[(layer, site)] = running.get(layer, 0)
        running[layer] = running.get(layer, 0) + top[(layer, site)]
    return offsets


def _cumulative_influence(nodes: dict[str, dict[str, Any]]) -> dict[str, float]:
    """circuit-tracer's node ``influence``: the running share of total influence, by rank.

    A node's own ``cumulative_influence`` (read from an attribution-graph file) is kept as it is.
    """
    scores = {k: a["influence"] for k, a in nodes.items() if _number(a.get("influence"))}
    total = sum(scores.values())
    out: dict[str, float] = {}
    if scores and total > 0:
        running = 0.0
        for key in sorted(scores, key=lambda k: -scores[k]):
            running += scores[key]
            out[key] = running / total
    for key, a in nodes.items():
        if _number(a.get("cumulative_influence")):
            out[key] = a["cumulative_influence"]
    return out


def _number(x: object) -> bool:
    return isinstance(x, float | int) and not isinstance(x, bool) and not math.isnan(x)


# ------------------------------------------------------------------------------------ reading


def is_attribution_graph(data: object) -> bool:
    """Whether parsed JSON is an attribution graph (not networkx node-link data)."""
    return isinstance(data, dict) and "metadata" in data and "graph" not in data


def from_neuronpedia(data: Any, where: str) -> tuple[nx.DiGraph, tuple[int, int]]:
    """The graph in attribution-graph JSON, and how many nodes and links the file lists.

    Nodes and links carrying a ``circuits`` object come back exactly as written; others are
    mapped as the module docstring says. `where` names the file in errors. The result is not
    validated yet (`load_graph` restores types and validates).
    """
    meta, nodes, links = _parts(data, where)
    tokens = [t if isinstance(t, str) else "" for t in meta.get("prompt_tokens") or []]
    g = nx.DiGraph()
    g.graph.update(_graph_attrs(meta, nodes, where))
    keys: dict[str, str] = {}
    for i, node in enumerate(nodes):
        key, attrs = _read_node(node, tokens, f"{where}: nodes[{i}]")
        if node["node_id"] in keys:
            raise SchemaError(
                f"{where}: nodes[{i}] repeats node_id {node['node_id']!r}; every node needs its "
                "own node_id (links name nodes by it), so remove or rename the duplicate"
            )
        keys[node["node_id"]] = key
        g.add_node(key, **attrs)
    for i, link in enumerate(links):
        u, v, attrs = _read_link(link, keys, f"{where}: links[{i}]")
        g.add_edge(u, v, **attrs)
    return g, (len(nodes), len(links))


def _parts(data: Any, where: str) -> tuple[dict[str, Any], list[Any], list[Any]]:
    """metadata, nodes and links, each of the right JSON type, else SchemaError."""
    if not is_attribution_graph(data):
        raise SchemaError(f"{where} is not attribution-graph JSON (an object with 'metadata')")
    meta, nodes, links = data["metadata"], data.get("nodes"), data.get("links")
    if not isinstance(meta, dict):
        raise SchemaError(f"{where}: 'metadata' must be an object (slug, scan, prompt_tokens, ...)")
    for name, value in (("nodes", nodes), ("links", links)):
        if not isinstance(value, list):
            raise SchemaError(
                f"{where}: attribution-graph JSON needs a list under {name!r}, got "
                f"{type(value).__name__}; is the file complete?"
            )
    return meta, nodes, links


def _graph_attrs(meta: dict[str, Any], nodes: list[Any], where: str) -> dict[str, Any]:
    """Provenance: ours from ``metadata.circuits.graph``, else made from the metadata."""
    ext = meta.get(EXT)
    if ext is not None:
        if not isinstance(ext, dict) or not isinstance(ext.get("graph"), dict):
            raise SchemaError(
                f"{where}: metadata.{EXT} must be {{'graph': {{...provenance...}}}}, got "
                f"{ext!r:.80}; remove it to read the file as a plain attribution graph"
            )
        return dict(ext["graph"])
    threshold = meta.get("node_threshold")
    share = float(threshold) if isinstance(threshold, int | float) and _number(threshold) else None
    extra: dict[str, Any] = {k: meta[k] for k in ("slug", "prompt") if isinstance(meta.get(k), str)}
    logit_layers = [
        int(n["layer"]) - 1
        for n in nodes
        if isinstance(n, dict) and n.get("feature_type") == "logit"
        and re.fullmatch(r"\d+", str(n.get("layer")))
    ]  # fmt: skip
    if logit_layers:
        extra["n_layers"] = max(logit_layers)
    scan = meta.get("scan")
    return dict(
        new_graph(
            model=scan if isinstance(scan, str) else "",
            method="attribution-graph",
            thresholds={} if share is None else {"influence": share},
            **extra,
        ).graph
    )


def _read_node(node: Any, tokens: list[str], where: str) -> tuple[str, dict[str, Any]]:
    """A node's key and attributes: ours from its ``circuits`` object, else mapped."""
    if not isinstance(node, dict):
        raise SchemaError(f"{where} must be an object ({_NODE_FIELDS}, ...), got {node!r:.60}")
    _need(node, "node_id", str, where)
    ext = node.get(EXT)
    if ext is None:
        return node["node_id"], _foreign_node(node, tokens, where)
    if not (isinstance(ext, dict) and isinstance(ext.get("key"), str)
            and isinstance(ext.get("attrs"), dict)):  # fmt: skip
        raise SchemaError(
            f"{where}: {EXT!r} must be {{'key': str, 'attrs': {{...}}}}, got {ext!r:.80}; "
            f"remove it to read the node by its attribution-graph fields"
        )
    return ext["key"], dict(ext["attrs"])


def _foreign_node(node: dict[str, Any], tokens: list[str], where: str) -> dict[str, Any]:
    """Our attributes for a node written by another tool (see the module docstring)."""
    ftype = _need(node, "feature_type", str, where)
    ctx = _need(node, "ctx_idx", int, where)
    kind = _KINDS.get(ftype) or ("error" if "error" in ftype else "feature")
    raw_layer = node.get("layer")
    layer = -1
    if kind not in ("input", "output") and re.fullmatch(r"-?\d+", str(raw_layer)):
        layer = int(str(raw_layer))
    attrs: dict[str, Any] = {
        "kind": kind,
        "site": "",
        "layer": layer,
        "pos": ctx,
        "unit": _unit(kind, node, layer, ctx),
        "activation": _float(node, "activation", where),
        "label": _label(kind, node, tokens, ctx),
    }
    if kind == "output":
        prob = _float(node, "token_prob", where)
        attrs["prob"] = 0.0 if math.isnan(prob) else prob
    influence = _float(node, "influence", where)
    if not math.isnan(influence):
        attrs["cumulative_influence"] = influence
    return attrs


def _unit(kind: str, node: dict[str, Any], layer: int, ctx: int) -> int:
    """The unit: the index in node_id where circuit-tracer puts it, else the feature field."""
    feature = node.get("feature")
    fallback = feature if isinstance(feature, int) and not isinstance(feature, bool) else -1
    if kind == "error":
        return -1
    if kind == "input":
        m = re.fullmatch(r"E_(-?\d+)_(\d+)", node["node_id"])
        return int(m[1]) if m else -1
    if kind == "feature":
        m = re.fullmatch(r"(\d+)_(\d+)_(\d+)", node["node_id"])
        if m and int(m[1]) == layer and int(m[3]) == ctx:
            return int(m[2])
    return fallback


def _label(kind: str, node: dict[str, Any], tokens: list[str], ctx: int) -> str:
    clerp = node.get("clerp")
    clerp = clerp if isinstance(clerp, str) else ""
    if kind == "output" and (m := _OUTPUT_CLERP.fullmatch(clerp)):
        return m[1]
    if kind == "input" and not clerp and 0 <= ctx < len(tokens):
        return tokens[ctx]
    return clerp or str(node["node_id"])


def _read_link(link: Any, keys: dict[str, str], where: str) -> tuple[str, str, dict[str, Any]]:
    """An edge's endpoints (our keys) and attributes."""
    if not isinstance(link, dict):
        raise SchemaError(f"{where} must be an object (source, target, weight), got {link!r:.60}")
    ends = [_need(link, name, str, where) for name in ("source", "target")]
    for end in ends:
        if end not in keys:
            raise SchemaError(
                f"{where} names node_id {end!r}, which no node has; every link's source and "
                "target must be the node_id of a node in 'nodes' (is the file complete?)"
            )
    weight = _float(link, "weight", where, required=True)
    ext = link.get(EXT, {"method": "attribution-graph"})
    if not isinstance(ext, dict):
        raise SchemaError(f"{where}: {EXT!r} must be an object of edge attributes, got {ext!r:.60}")
    return keys[ends[0]], keys[ends[1]], {"weight": weight, **ext}


def _need(obj: dict[str, Any], name: str, want: type, where: str) -> Any:
    """`obj[name]`, which must be a `want` (a bool is no int), else SchemaError."""
    value = obj.get(name)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        got = "missing" if name not in obj else f"{type(value).__name__} {value!r:.60}"
        raise SchemaError(
            f"{where}: {name!r} must be a {want.__name__}, got {got} (an attribution-graph node "
            f"has {_NODE_FIELDS}; a link has source, target, weight)"
        )
    return value


def _float(obj: dict[str, Any], name: str, where: str, required: bool = False) -> float:
    """`obj[name]` as a float: a number, or null / absent (NaN) unless `required`."""
    value = obj.get(name)
    if value is None and not required:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        got = "missing" if name not in obj else f"{type(value).__name__} {value!r:.60}"
        need = "a number" if required else "a number or null"
        raise SchemaError(f"{where}: {name!r} must be {need}, got {got}")
    return float(value)
