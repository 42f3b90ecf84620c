"""AttributionResult: scores over named axes (units) or between nodes (edges), with pandas views.

Two shapes of result share one class:

* node scores (attribution patching, integrated gradients): `scores` is shaped by `axes`, e.g.
  ("layer", "head"); each score is one unit's attribution to the metric. As a graph, every unit is
  a node with one edge to the metric's output node.
* edge scores (EAP, EAP-IG, conv channel edges, feature direct effects): `axes` is
  ("source", "target") and `scores[i, j]` is the edge from `coords["source"][i]` to
  `coords["target"][j]`, NaN where the pair is not an edge of the graph.

`total` and `expected` give the completeness check: what the scores add up to, and what they
should add up to (a metric difference, or for direct effects the target activations).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuits.errors import ConfigError, InputError
from circuits.ids import METRIC
from circuits.options import warn_renamed
from circuits.results import check_k

NODE_COLUMNS = ("key", "kind", "site", "layer", "pos", "unit", "activation", "label")


@dataclass(frozen=True, eq=False)
class AttributionResult:
    """Attribution scores with their axes, nodes and completeness check.

    scores: node scores shaped by `axes`, or an edge matrix [source, target] (NaN: no edge).
    axes, coords: axis names and the label of each index along each axis (node keys for edges).
    method: "attribution_patching", "integrated_gradients", "eap", "eap-ig", "direct_effects".
    metric: the metric's name. direction: "noise" / "denoise" (how the difference was taken), ""
        where it does not apply.
    clean_value, corrupt_value: the metric on the clean and corrupted runs (None if not run).
    total, expected: what the scores sum to, and what they should sum to (None: no such check).
    node_table: one row per graph node (NODE_COLUMNS, plus "h", "w" for spatial units), or a
        function building them when first asked for (`nodes`); for node scores a unit's row
        holds "_index", its position in `scores.flatten()`.
    receivers: edge results whose targets are inputs of a node (a head's query, key and value
        input): target key -> (graph node key, which input), used to merge them in graph_frames.
    extras: other tensors a method reports (for direct effects, "rest": the part of each target
        that does not come from the source site, biases included).
    """

    scores: Tensor
    axes: tuple[str, ...]
    coords: Mapping[str, tuple[Any, ...]]
    method: str
    metric: str = "metric"
    direction: str = ""
    clean_value: float | None = None
    corrupt_value: float | None = None
    total: Tensor | None = None
    expected: Tensor | None = None
    node_table: tuple[Mapping[str, Any], ...] | Callable[[], tuple[Mapping[str, Any], ...]] = ()
    receivers: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    extras: Mapping[str, Tensor] = field(default_factory=dict)

    @cached_property
    def nodes(self) -> tuple[Mapping[str, Any], ...]:
        """The graph's node rows (built on first use: one per unit can be many)."""
        table = self.node_table
        return table() if callable(table) else table

    @property
    def is_edges(self) -> bool:
        """True when `scores` is a [source, target] edge matrix."""
        return self.axes == ("source", "target")

    @property
    def completeness_gap(self) -> float | None:
        """|total - expected| / |expected| (vector norms), or None where there is no check."""
        if self.total is None or self.expected is None:
            return None
        total, expected = self.total.detach().cpu().double(), self.expected.detach().cpu().double()
        diff, scale = float((total - expected).norm()), float(expected.norm())
        return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)

    def to_frame(self) -> pd.DataFrame:
        """One row per score: the axis labels (source, target for edges) and `score`."""
        values = self.scores.detach().float().cpu()
        if not self.axes:
            return pd.DataFrame({"score": [float(values)]})
        index = pd.MultiIndex.from_product(
            [list(self.coords[a]) for a in self.axes], names=list(self.axes)
        )
        frame = pd.DataFrame({"score": values.flatten().numpy()}, index=index).reset_index()
        return frame.dropna(subset=["score"]).reset_index(drop=True)

    def edge_frame(self) -> pd.DataFrame:
        """Every edge (source, target, weight, method); node scores become unit -> metric edges."""
        if self.is_edges:
            frame = self.to_frame().rename(columns={"score": "weight"})
        else:
            units = [row for row in self.nodes if "_index" in row]
            if not units:
                raise InputError("this result has no node table; it cannot be drawn as a graph")
            flat = self.scores.detach().float().cpu().contiguous().flatten().numpy()
            weight = flat[[int(row["_index"]) for row in units]]
            keys = [row["key"] for row in units]
            frame = pd.DataFrame({"source": keys, "target": METRIC, "weight": weight})
            frame = frame.dropna(subset=["weight"]).reset_index(drop=True)
        frame["method"] = self.method
        return frame[["source", "target", "weight", "method"]]

    def top(self, k: int = 10, *, by: Literal["abs", "value"] = "abs") -> pd.DataFrame:
        """The k edges with the largest |weight| (by="abs") or weight (by="value"), largest first.

        Edges are as computed (a head's query, key and value inputs apart); for node scores, the
        units with the largest attribution.
        """
        check_k(k)
        if by not in ("abs", "value"):
            raise ConfigError(f"by must be 'abs' or 'value', got {by!r}")
        frame = self.edge_frame()
        order = frame["weight"].abs() if by == "abs" else frame["weight"]
        return frame.loc[order.sort_values(ascending=False, kind="stable").index[:k]].reset_index(
            drop=True
        )

    def top_edges(self, k: int = 10, *, by: Literal["abs", "value"] = "abs") -> pd.DataFrame:
        """Deprecated name of `top` (one release)."""
        warn_renamed("top_edges", "top")
        return self.top(k, by=by)

    def graph_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(nodes_df, edges_df) for `circuits.graph.build_graph`.

        nodes: key, kind, site, layer, pos (-1: all positions), unit, activation, label.
        edges: source, target, weight, method. A head's query, key and value inputs are one node
        (the head's), so their edges from one source are summed into one edge; the parts are kept
        in the columns weight_q, weight_k, weight_v (NaN for other targets).
        """
        if not self.nodes:
            raise InputError("this result has no node table; it cannot be drawn as a graph")
        nodes = pd.DataFrame(
            [{k: v for k, v in row.items() if k != "_index"} for row in self.nodes]
        )
        for column in ("h", "w"):
            if column in nodes.columns:
                nodes[column] = nodes[column].fillna(-1).astype(int)
        edges = self.edge_frame()
        if self.receivers:
            edges = _merge_receivers(edges, self.receivers)
        return nodes, edges.reset_index(drop=True)

    def graph_meta(self) -> dict[str, Any]:
        """Provenance for the graph builder's `g.graph`."""
        return {"method": self.method, "metric": self.metric}

    def plot(self, *, title: str | None = None) -> Any:
        """A plotly figure: a bar chart for one axis, a heatmap for two (edges: source x target)."""
        import plotly.express as px

        data = self.scores.detach().float().cpu()
        title = title or f"{self.method}: attribution to {self.metric}"
        labels = [[str(c) for c in self.coords[a]] for a in self.axes]
        if data.ndim == 1:
            return px.bar(x=labels[0], y=data.numpy(), labels={"x": self.axes[0], "y": "score"},
                          title=title)  # fmt: skip
        if data.ndim != 2:
            raise InputError(
                f"plot draws one or two axes; these scores have axes {self.axes}: sum some "
                "away (choose a smaller unit)"
            )
        return px.imshow(
            data.numpy(), x=labels[1], y=labels[0], title=title, aspect="auto",
            color_continuous_scale="RdBu", color_continuous_midpoint=0.0,
            labels={"x": self.axes[1], "y": self.axes[0], "color": "score"},
        )  # fmt: skip

    def __repr__(self) -> str:
        shape = " x ".join(f"{a}={len(self.coords[a])}" for a in self.axes) or "scalar"
        gap = self.completeness_gap
        extra = "" if gap is None else f", completeness gap={gap:.3g}"
        finite = self.scores[~torch.isnan(self.scores)]
        peak = float(finite.abs().max()) if finite.numel() else math.nan
        return f"AttributionResult({self.method}, {shape}, max |score|={peak:.4g}{extra})"


def _merge_receivers(edges: pd.DataFrame, receivers: Mapping[str, tuple[str, str]]) -> pd.DataFrame:
    """Sum edges into the inputs of one node; keep the q / k / v parts as columns."""
    node = edges["target"].map(lambda t: receivers.get(t, (t, ""))[0])
    via = edges["target"].map(lambda t: receivers.get(t, (t, ""))[1])
    frame = edges.assign(target=node, via=via)
    merged = frame.groupby(["source", "target"], sort=False, as_index=False).agg(
        weight=("weight", "sum"), method=("method", "first")
    )
    for part in ("q", "k", "v"):
        sub = frame[frame["via"] == part].set_index(["source", "target"])["weight"]
        index = pd.MultiIndex.from_frame(merged[["source", "target"]])
        merged[f"weight_{part}"] = sub.reindex(index).to_numpy(dtype=np.float64)
    return merged
