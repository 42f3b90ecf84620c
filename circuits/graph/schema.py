"""The circuit graph schema, version 1.0: the one place it is written down.

A circuit graph is a plain `networkx.DiGraph`, so every networkx algorithm works on it, and every
value in it is a scalar, so it survives node-link JSON, GraphML and GEXF unchanged (`io.py` tests
the round trip). `validate(g)` checks a graph against this text and names the first thing that
breaks it.

Nodes
-----
Keys are non-empty strings. `node_key(site, unit, pos=..., h=..., w=...)` makes the readable,
stable form used by the builders (`circuits.ids.NodeId` formats and parses it): the site, then
``[unit]`` (or ``[error]``, ``[axis=i]``), then ``@pos`` or ``@h,w``::

    blocks.1.attn.hook_z[2]@5      head 2 of layer 1's attention, position 5
    layer2.0.conv1[7]@3,4          channel 7 of a conv layer at spatial location (3, 4)
    blocks.0.hook_resid_pre@0      the embedding of the first token (no unit)

Required node attributes (type in brackets):

    kind        [str]   one of input, feature, neuron, channel, head, mlp, error, output
    site        [str]   the hook site the node lives at ("" where none)
    layer       [int]   the layer index, -1 where none (inputs, outputs)
    pos         [int]   the token position, -1 for all positions or none
    unit        [int]   the index within the site (neuron, channel, head, latent), -1 for none
    activation  [float] how active the node was on the input (NaN where unknown)
    label       [str]   a human-readable name

Optional node attributes: ``h`` and ``w`` [int] (spatial index in a conv feature map, -1 none),
``influence`` [float] (the node's total influence on the outputs, set by influence pruning),
``prob`` [float] (an output's probability, read by the Neuronpedia export). Any other attribute
is allowed if it is a scalar (str, int, float, bool), has one type across the graph and is not a
name the export formats reserve (see RESERVED).

Edges
-----
Required: ``weight`` [float, finite] (the attribution of source to target) and ``method`` [str]
(how it was measured, e.g. "eap-ig", "direct-effect"). Optional: ``abs_weight`` [float].

Provenance, in ``g.graph``
--------------------------
    schema_version [str]   "1.0"; a graph from a newer circuits is refused (upgrade to read it)
    model          [str]   a description of the model
    method         [str]   how edges were computed
    metric         [str]   the metric attributed
    thresholds     [str]   a JSON object of the pruning settings ({} before pruning)
    ablation       [str]   the ablation used ("zero", "mean", "patch", ...; "" if none)
    seed           [int]   the random seed, -1 where none
    input_hash     [str]   a hash of the inputs ("" where unknown)
    faithfulness   [float] the measured faithfulness, NaN until measured
    created_by     [str]   "circuits x.y.z"

Floats are finite or NaN (infinities cannot be written in JSON); ``weight`` must be finite.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib import metadata
from typing import Any, cast

import networkx as nx

from circuits.errors import SchemaError
from circuits.ids import NodeId

SCHEMA_VERSION = "1.0"
"""The version of the schema this circuits writes; graphs of a newer version are refused."""

KINDS = ("input", "feature", "neuron", "channel", "head", "mlp", "error", "output")
"""The node kinds a graph may hold (a node's `kind` attribute)."""

NODE_ATTRS: dict[str, type] = {
    "kind": str,
    "site": str,
    "layer": int,
    "pos": int,
    "unit": int,
    "activation": float,
    "label": str,
}
OPTIONAL_NODE_ATTRS: dict[str, type] = {"h": int, "w": int, "influence": float, "prob": float}
EDGE_ATTRS: dict[str, type] = {"weight": float, "method": str}
OPTIONAL_EDGE_ATTRS: dict[str, type] = {"abs_weight": float}
GRAPH_ATTRS: dict[str, type] = {
    "schema_version": str,
    "model": str,
    "method": str,
    "metric": str,
    "thresholds": str,
    "ablation": str,
    "seed": int,
    "input_hash": str,
    "faithfulness": float,
    "created_by": str,
}

#: Attribute names the export formats use for themselves (node-link JSON's id/source/target/key,
#: GEXF's pid/start/end/viz/type, networkx's GraphML and GEXF defaults).
RESERVED = frozenset(
    {"id", "key", "source", "target", "pid", "start", "end", "viz", "type", "spells", "slices",
     "parents", "node_default", "edge_default", "mode"}
)  # fmt: skip

SCALARS = (str, int, float, bool)


def created_by() -> str:
    """The `created_by` stamp: "circuits <installed version>" (the distribution is circuits-mi)."""
    try:
        return f"circuits {metadata.version('circuits-mi')}"
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "circuits unknown"


def graph_defaults() -> dict[str, Any]:
    """The provenance a new graph starts with; builders overwrite what they know."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model": "",
        "method": "",
        "metric": "",
        "thresholds": "{}",
        "ablation": "",
        "seed": -1,
        "input_hash": "",
        "faithfulness": math.nan,
        "created_by": created_by(),
    }


def new_graph(**meta: Any) -> nx.DiGraph:
    """An empty schema graph with default provenance, updated by `meta` (see `normalise_meta`).

    For example:

        g = new_graph(model="induction-2l", method="eap-ig", thresholds={"top_k": 8})
        g.graph["schema_version"], g.graph["thresholds"]     # "1.0", '{"top_k": 8}'

    Raises:
        SchemaError: `faithfulness` is given and is not a number.
    """
    g = nx.DiGraph()
    g.graph.update(normalise_meta(meta))
    return g


def normalise_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults updated by `meta`; `thresholds` may be a dict (it is JSON-encoded here)."""
    out = graph_defaults()
    for name, value in (meta or {}).items():
        if name == "thresholds" and isinstance(value, Mapping):
            value = json.dumps(dict(value), sort_keys=True)
        elif name in ("seed",) and value is None:
            value = -1
        elif name == "faithfulness" and value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SchemaError(
                    f"graph attribute 'faithfulness' must be a number (NaN until measured), "
                    f"got {value!r}"
                )
            value = float(value)
        out[str(name)] = value
    return out


def node_key(site: str, unit: int = -1, *, pos: int = -1, h: int = -1, w: int = -1) -> str:
    """The readable, stable key of a node: ``site[unit]@pos`` or ``site[unit]@h,w``.

    Parts that are -1 (none) are left out, so a whole site at all positions is just its name.
    The format is `circuits.ids.NodeId`'s; `NodeId.parse(key)` reads it back.

    For example:

        node_key("blocks.1.attn.hook_z", 2, pos=5)          # "blocks.1.attn.hook_z[2]@5"
        node_key("layer2.0.conv1", 7, h=3, w=4)              # "layer2.0.conv1[7]@3,4"

    Raises:
        SchemaError: `site` is empty or holds "[", "]" or "@", or only one of h and w is given.
    """
    if not isinstance(site, str) or not site:
        raise SchemaError(f"node_key needs a non-empty site name, got {site!r}")
    return str(NodeId(site, int(unit), pos=int(pos), h=int(h), w=int(w)))


def parse_version(version: object) -> tuple[int, ...]:
    """``"1.0"`` -> ``(1, 0)``; anything else is a SchemaError."""
    try:
        parts = tuple(int(p) for p in str(version).split("."))
    except ValueError:
        parts = ()
    if not isinstance(version, str) or not parts:
        raise SchemaError(
            f"graph attribute 'schema_version' must be a version string like "
            f"{SCHEMA_VERSION!r}, got {version!r}"
        )
    return parts


def check_version(version: object) -> None:
    """Refuse a schema newer than this circuits reads (the fix is upgrading circuits)."""
    if parse_version(version) > parse_version(SCHEMA_VERSION):
        raise SchemaError(
            f"this graph has schema_version {version!r}, written by a newer circuits; this "
            f"circuits reads up to {SCHEMA_VERSION!r}; upgrade: pip install -U circuits-mi"
        )


def _type_name(t: type) -> str:
    return {str: "str", int: "int", float: "float", bool: "bool"}[t]


def _check_value(where: str, name: str, value: object, want: type | None) -> None:
    """One attribute value: a scalar of the expected type, finite or NaN if a float."""
    if type(value).__module__ == "numpy":
        raise SchemaError(
            f"{where}: attribute {name!r} is a numpy {type(value).__name__}; store plain Python "
            f"scalars (int(x), float(x)) so every export format keeps the type"
        )
    if want is None:  # an extra attribute: any scalar
        if not isinstance(value, SCALARS):
            raise SchemaError(
                f"{where}: attribute {name!r} must be a scalar (str, int, float or bool) because "
                f"GraphML and GEXF store only scalars; got {type(value).__name__} {value!r:.60}"
            )
    elif want is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise SchemaError(
                f"{where}: attribute {name!r} must be an int (-1 for none), got "
                f"{type(value).__name__} {value!r:.60}"
            )
    elif want is float:
        if not isinstance(value, float):
            raise SchemaError(
                f"{where}: attribute {name!r} must be a float (NaN where unknown), got "
                f"{type(value).__name__} {value!r:.60}; convert with float()"
            )
    elif not isinstance(value, want):
        raise SchemaError(
            f"{where}: attribute {name!r} must be a {_type_name(want)}, got "
            f"{type(value).__name__} {value!r:.60}"
        )
    if isinstance(value, float) and math.isinf(value):
        raise SchemaError(f"{where}: attribute {name!r} is {value}; floats must be finite or NaN")


def _check_attrs(
    where: str,
    attrs: Mapping[Any, Any],
    required: Mapping[str, type],
    optional: Mapping[str, type],
    extra_types: dict[str, type],
) -> None:
    for name, want in required.items():
        if name not in attrs:
            raise SchemaError(f"{where}: missing required attribute {name!r} ({want.__name__})")
    for name, value in attrs.items():
        if not isinstance(name, str):
            raise SchemaError(f"{where}: attribute names must be strings, got {name!r}")
        wanted = required.get(name) or optional.get(name)
        if wanted is None and name in RESERVED:
            raise SchemaError(
                f"{where}: attribute name {name!r} is reserved by the export formats; rename it"
            )
        _check_value(where, name, value, wanted)
        if wanted is None:
            seen = extra_types.setdefault(name, type(value))
            if seen is not type(value):
                raise SchemaError(
                    f"{where}: attribute {name!r} is {type(value).__name__} here but "
                    f"{seen.__name__} elsewhere; one attribute has one type across the graph"
                )


def validate(g: object) -> None:
    """Raise SchemaError naming the first node, edge or graph attribute that breaks the schema.

    For example:

        validate(g)                  # None, or a SchemaError naming the first fault
    """
    validate_nodes(g)
    extra: dict[str, type] = {}
    for u, nbrs in cast(nx.DiGraph, g).adjacency():
        for v, attrs in nbrs.items():
            check_edge(u, v, attrs, extra)


def validate_nodes(g: object) -> None:
    """`validate` without the edges: the graph type, its provenance and every node."""
    if not isinstance(g, nx.DiGraph) or g.is_multigraph():
        raise SchemaError(
            f"a circuit graph is a networkx.DiGraph (not a multigraph), got {type(g).__name__}"
        )
    if "schema_version" not in g.graph:
        raise SchemaError(
            "graph attribute 'schema_version' is missing; build graphs with "
            "circuits.graph.build_graph or new_graph, which stamp the provenance"
        )
    check_version(g.graph["schema_version"])
    _check_attrs("graph", g.graph, GRAPH_ATTRS, {}, {})
    try:
        thresholds = json.loads(g.graph["thresholds"])
    except json.JSONDecodeError as err:
        thresholds = err
    if not isinstance(thresholds, dict):
        raise SchemaError(
            f"graph attribute 'thresholds' must be a JSON object, got {g.graph['thresholds']!r:.80}"
        )
    extra: dict[str, type] = {}
    for key, attrs in g.nodes(data=True):
        if not isinstance(key, str) or not key:
            raise SchemaError(
                f"node keys must be non-empty strings (GraphML needs them), got "
                f"{type(key).__name__} {key!r}; make keys with circuits.graph.node_key"
            )
        where = f"node {key!r}"
        kind = attrs.get("kind")
        if kind is None:
            raise SchemaError(f"{where}: missing required attribute 'kind' (one of {KINDS})")
        if kind not in KINDS:
            raise SchemaError(f"{where}: unknown kind {kind!r}; expected one of {KINDS}")
        _check_attrs(where, attrs, NODE_ATTRS, OPTIONAL_NODE_ATTRS, extra)


def check_edge(u: object, v: object, attrs: Mapping[str, Any], extra: dict[str, type]) -> None:
    """One edge's attributes; `extra` collects the types of extra attributes across edges."""
    w = attrs.get("weight")
    # fast path for the common edge: just a finite float weight and a str method
    if len(attrs) == 2 and type(w) is float and w - w == 0.0 and type(attrs.get("method")) is str:
        return
    where = f"edge {u!r} -> {v!r}"
    if "weight" not in attrs:
        raise SchemaError(f"{where}: missing required attribute 'weight' (float attribution)")
    _check_attrs(where, attrs, EDGE_ATTRS, OPTIONAL_EDGE_ATTRS, extra)
    if math.isnan(attrs["weight"]):
        raise SchemaError(f"{where}: 'weight' is NaN; an edge needs a finite attribution")


def fix_types(g: nx.DiGraph) -> None:
    """Cast schema attributes back to their types in place (readers may hand back str or float).

    Only attributes the schema names are touched; a value that cannot be cast is left as it is,
    so `validate` reports it. ``None`` (how JSON writes NaN) becomes NaN for every attribute.
    """
    _cast(g.graph, GRAPH_ATTRS)
    node_types = {**NODE_ATTRS, **OPTIONAL_NODE_ATTRS}
    edge_types = {**EDGE_ATTRS, **OPTIONAL_EDGE_ATTRS}
    for _, attrs in g.nodes(data=True):
        _cast(attrs, node_types)
    for _, _, attrs in g.edges(data=True):
        _cast(attrs, edge_types)


def _cast(attrs: dict[str, Any], types: Mapping[str, type]) -> None:
    for name, value in attrs.items():
        if value is None:
            attrs[name] = math.nan
            continue
        want = types.get(name)
        if want is None or type(value) is want:
            continue
        try:
            if want is int and isinstance(value, float) and not value.is_integer():
                continue
            attrs[name] = want(value)
        except (TypeError, ValueError):
            continue
