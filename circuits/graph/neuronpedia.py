"""Export to the attribution-graph JSON that circuit-tracer's frontend and Neuronpedia read.

The format is circuit-tracer's ``create_graph_files`` output (its pydantic models in
``circuit_tracer/frontend/graph_models.py``)::

    {"metadata": {slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold,
                  schema_version: 1},
     "qParams": {pinnedIds: [], supernodes: [], linkType: "both", clickedId: "", sg_pos: ""},
     "nodes": [{node_id, feature, layer, ctx_idx, feature_type, token_prob, is_target_logit,
                run_idx, reverse_ctx_idx, jsNodeId, clerp, influence, activation}, ...],
     "links": [{source, target, weight}, ...]}

How our schema fills it:

==================  ===========================================================================
node_id             circuit-tracer's pattern: ``{layer}_{feature}_{ctx_idx}`` (features; errors
                    ``{layer}_-1_{ctx}``), ``E_{unit}_{pos}`` (inputs),
                    ``{n_layers+1}_{unit}_{pos}`` (outputs); a clash (rare) gets a ``_2`` suffix
feature             ``unit`` for features, neurons, channels, heads, mlps (offset past the units of
                    earlier sites when one layer holds several sites, so ids stay unique); -1 for
                    errors; ``pos`` for inputs; ``unit`` (vocabulary index) for outputs
layer               ``str(layer)``; "E" for inputs; ``str(n_layers + 1)`` for outputs
ctx_idx             ``pos`` (0 where -1); conv nodes: ``h * width + w``
feature_type        "embedding" (input), "logit" (output), "mlp reconstruction error" (error),
                    "cross layer transcoder" (every other kind: the frontend's feature nodes)
token_prob          an output's ``prob`` attribute (0.0 where absent)
is_target_logit     true for the output with the highest ``prob`` (the first, on ties)
jsNodeId            circuit-tracer's pattern: ``{layer}_{feature}-0``, ``E_{unit}-{pos}``,
                    ``L_{unit}-{pos}``, ``{layer}_-1-{pos}`` for errors
clerp               ``label`` (outputs: ``Output "label" (p=...)``)
influence           cumulative influence share, as circuit-tracer writes it, from the nodes'
                    ``influence`` attribute (set by influence pruning); null without it, and
                    for outputs
activation          ``activation``; null where NaN
run_idx, reverse_ctx_idx   0 (one prompt)
metadata.prompt_tokens     labels of the input nodes, by position
metadata.prompt     ``g.graph["prompt"]`` if set, else the tokens joined
metadata.scan       `scan`, else ``g.graph["model"]``; transcoder_list: []
metadata.node_threshold    the ``influence`` share in ``g.graph["thresholds"]``, else null
==================  ===========================================================================

Left at defaults: qParams (nothing pinned, no supernodes). Graph provenance beyond this (method,
metric, faithfulness, ...) has no place in the format and stays in our own exports.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import networkx as nx

from circuits.errors import SchemaError
from circuits.files import as_path, atomic_open, read_json
from circuits.graph.schema import validate

_TYPES = {"input": "embedding", "output": "logit", "error": "mlp reconstruction error"}


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

    Returns the path written. The fields are listed in the module docstring (the docs' "Neuronpedia
    export" page).

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
    data = to_neuronpedia(g, slug=slug, scan=scan)
    with atomic_open(target, "w") as fh:
        json.dump(data, fh, indent=1, allow_nan=False)
    if index:
        listing = target.parent / "graph-metadata.json"
        graphs = _listing(listing) if listing.exists() else []
        graphs = [m for m in graphs if m.get("slug") != slug] + [data["metadata"]]
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


def to_neuronpedia(g: nx.DiGraph, *, slug: str, scan: str | None = None) -> dict[str, Any]:
    """The frontend JSON as a dict (see the module docstring for the field mapping)."""
    nodes = dict(g.nodes(data=True))
    n_layers = 1 + max((a["layer"] for a in nodes.values() if a["kind"] != "output"), default=-1)
    width = 1 + max((a.get("w", -1) for a in nodes.values()), default=-1)
    offsets = _feature_offsets(nodes)
    cumulative = _cumulative_influence(nodes)
    outputs = [k for k, a in nodes.items() if a["kind"] == "output"]
    target = max(outputs, key=lambda k: nodes[k].get("prob", 0.0), default=None)
    ids: dict[str, str] = {}
    used: set[str] = set()
    out_nodes = []
    for key, a in nodes.items():
        node = _node(a, n_layers, width, offsets)
        node_id = node["node_id"]
        n = 1
        while node_id in used:
            n += 1
            node_id = f"{node['node_id']}_{n}"
        used.add(node_id)
        node["node_id"] = ids[key] = node_id
        node["is_target_logit"] = key == target
        node["influence"] = None if a["kind"] == "output" else cumulative.get(key)
        out_nodes.append(node)
    links = [
        {"source": ids[u], "target": ids[v], "weight": w} for u, v, w in g.edges(data="weight")
    ]
    inputs = sorted((a["pos"], a["label"]) for a in nodes.values() if a["kind"] == "input")
    tokens = [label for _, label in inputs]
    thresholds = json.loads(g.graph["thresholds"])
    metadata = {
        "slug": slug,
        "scan": scan or g.graph["model"] or "circuits",
        "transcoder_list": [],
        "prompt_tokens": tokens,
        "prompt": str(g.graph.get("prompt", "".join(tokens))),
        "node_threshold": thresholds.get("influence"),
        "schema_version": 1,
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
               "sg_pos": ""}  # fmt: skip
    return {"metadata": metadata, "qParams": qparams, "nodes": out_nodes, "links": links}


def _node(a: dict[str, Any], n_layers: int, width: int, offsets: dict[Any, int]) -> dict[str, Any]:
    kind, unit, pos = a["kind"], a["unit"], a["pos"]
    ctx = a["h"] * width + a["w"] if a.get("h", -1) >= 0 and width > 0 else max(pos, 0)
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
    """Per (layer, site): how far to shift unit indices so sites sharing a layer do not clash."""
    top: dict[Any, int] = {}
    for a in nodes.values():
        if a["kind"] not in ("input", "output", "error"):
            top[(a["layer"], a["site"])] = max(top.get((a["layer"], a["site"]), 0), a["unit"] + 1)
    offsets: dict[Any, int] = {}
    running: dict[int, int] = {}
    for layer, site in sorted(top):
        offsets[(layer, site)] = running.get(layer, 0)
        running[layer] = running.get(layer, 0) + top[(layer, site)]
    return offsets


def _cumulative_influence(nodes: dict[str, dict[str, Any]]) -> dict[str, float]:
    """circuit-tracer's node ``influence``: the running share of total influence, by rank."""
    scores = {
        k: a["influence"]
        for k, a in nodes.items()
        if "influence" in a and not math.isnan(a["influence"])
    }
    total = sum(scores.values())
    if not scores or total <= 0:
        return {}
    out, running = {}, 0.0
    for key in sorted(scores, key=lambda k: -scores[k]):
        running += scores[key]
        out[key] = running / total
    return out
