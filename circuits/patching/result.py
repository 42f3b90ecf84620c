"""PatchingResult: the metric after each patch, over named axes, with pandas and plotly views."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from torch import Tensor

from circuits.errors import ConfigError, MetricError
from circuits.ids import METRIC, NodeId, block_of, metric_node, node_row, unit_node
from circuits.results import check_k

from .nodes import OUTPUT

Quantity = Literal["effect", "value", "normalised"]


@dataclass(frozen=True, eq=False)
class PatchingResult:
    """The metric measured once per patched unit (or sender x receiver path).

    values: the metric on each patched run, shaped by `axes` (e.g. ("layer", "pos", "head")); NaN
        where a site has fewer units than the axis (sites of different sizes in one call).
    axes: the axis names; coords: the label of each index along each axis (layer numbers, site
        names, unit indices, node labels).
    baseline: the metric on the unpatched run the patches were made in (the corrupted run when
        denoising, the clean run when noising or ablating).
    clean_value, corrupt_value: the metric on the clean and corrupted runs (None if not run).
    method: "denoise", "noise", "zero", "mean", "resample", or "path/denoise", "path/noise".
    metric: the metric's name.
    sites: the patched site of each index of the leading axis ("layer" / "site"), or the one site
        (activation patching; empty for path patching, whose senders and receivers name theirs).
    feature_units, feature_kind: for a feature basis (axis "feature": its labels, then
        "error"), each feature's unit index in node keys (`site[i]@pos`; the error node is
        `site[error]@pos`) and the kind of its nodes.
    """

    values: Tensor
    axes: tuple[str, ...]
    coords: Mapping[str, tuple[Any, ...]]
    baseline: float
    clean_value: float | None
    corrupt_value: float | None
    method: str
    metric: str = "metric"
    sites: tuple[str, ...] = ()
    feature_units: tuple[int, ...] = ()
    feature_kind: str = "feature"

    @property
    def effects(self) -> Tensor:
        """values - baseline: how much each patch moved the metric."""
        return self.values - self.baseline

    def normalised(self) -> Tensor:
        """(values - corrupt_value) / (clean_value - corrupt_value): 0 corrupted, 1 clean."""
        if self.clean_value is None or self.corrupt_value is None:
            raise MetricError(
                f"a {self.method} result has no clean and corrupted values to normalise by; "
                "use .effects, or normalise the metric yourself (circuits.metrics.normalised)"
            )
        span = self.clean_value - self.corrupt_value
        if span == 0:
            raise MetricError(
                "the metric is equal on the clean and corrupted runs; cannot normalise"
            )
        return (self.values - self.corrupt_value) / span

    def to_frame(self) -> pd.DataFrame:
        """One row per unit: a column per axis (its labels), then value, effect (and normalised)."""
        if not self.axes:
            frame = pd.DataFrame({"value": [float(self.values)]})
        else:
            index = pd.MultiIndex.from_product(
                [list(self.coords[a]) for a in self.axes], names=list(self.axes)
            )
            frame = pd.DataFrame({"value": self.values.flatten().tolist()}, index=index)
            frame = frame.reset_index()
        frame["effect"] = frame["value"] - self.baseline
        clean, corrupt = self.clean_value, self.corrupt_value
        if clean is not None and corrupt is not None and clean != corrupt:
            frame["normalised"] = (frame["value"] - corrupt) / (clean - corrupt)
        return frame.dropna(subset=["value"]).reset_index(drop=True)

    def top(self, k: int = 10) -> pd.DataFrame:
        """The k units (or paths) with the largest absolute effect, largest first."""
        check_k(k)
        frame = self.to_frame()
        return frame.loc[frame["effect"].abs().sort_values(ascending=False).index[:k]]

    def graph_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(nodes, edges) for `cc.build_graph`: each patched unit -> the metric, or each sender
        -> receiver path, weighted by its effect."""
        frame = self.to_frame()
        nodes: dict[str, dict[str, Any]] = {}
        ends: list[tuple[str, str]] = []
        if self.axes[:2] == ("sender", "receiver"):
            for sender, receiver in zip(frame["sender"], frame["receiver"], strict=True):
                a, b = _labelled_node(sender), _labelled_node(receiver)
                nodes.update({a["key"]: a, b["key"]: b})
                ends.append((a["key"], b["key"]))
        else:
            lead = self.axes[0] if self.axes and self.axes[0] in ("layer", "site") else None
            units = [a for a in self.axes if a != lead]
            where = {c: i for i, c in enumerate(self.coords[lead])} if lead else {}
            nodes[METRIC] = metric_node(self.metric)
            for row in frame.to_dict("records"):
                site = self.sites[where[row[lead]]] if lead else self.sites[0]
                node = self._unit_node(site, units, row)
                nodes[node["key"]] = node
                ends.append((node["key"], METRIC))
        edges = pd.DataFrame(ends, columns=["source", "target"])
        edges["weight"] = frame["effect"].to_numpy()
        edges["method"] = f"patching/{self.method}"
        return pd.DataFrame(list(nodes.values())), edges

    def _unit_node(self, site: str, axes: list[str], row: dict[str, Any]) -> dict[str, Any]:
        """The node row of one patched unit; a basis's feature or error term by its index."""
        if "feature" not in axes:
            return unit_node(site, axes, [row[a] for a in axes])
        rest = [a for a in axes if a != "feature"]
        f = self.coords["feature"].index(row["feature"])
        if f == len(self.feature_units):
            place = NodeId.parse(unit_node(site, rest, [row[a] for a in rest])["key"])
            node = dataclasses.replace(place, error=True)
            return node_row(node, "error", layer=block_of(site), label=f"{site} error")
        out = unit_node(site, ["feature", *rest], [self.feature_units[f], *(row[a] for a in rest)])
        at = out["key"].partition("@")[2]
        out.update(kind=self.feature_kind, label=str(row["feature"]) + (f"@{at}" if at else ""))
        return out

    def graph_meta(self) -> dict[str, Any]:
        """Provenance for the graph builder's `g.graph`."""
        return {"method": f"patching/{self.method}", "metric": self.metric}

    def plot(self, *, quantity: Quantity = "effect", title: str | None = None) -> Any:
        """A plotly figure: a bar chart for one axis, a heatmap for two, one heatmap per leading
        index for three or more (the leading axes are flattened)."""
        import plotly.express as px

        data = self._quantity(quantity).detach().cpu().float()
        title = title or f"{self.method} patching: {quantity} of {self.metric}"
        labels = [[str(c) for c in self.coords[a]] for a in self.axes]
        if data.ndim == 0:
            return px.bar(x=["all"], y=[float(data)], labels={"x": "", "y": quantity}, title=title)
        if data.ndim == 1:
            return px.bar(
                x=labels[0], y=data.numpy(), labels={"x": self.axes[0], "y": quantity}, title=title
            )
        style: dict[str, Any] = dict(
            color_continuous_scale="RdBu", color_continuous_midpoint=0.0, aspect="auto"
        )
        axis_labels = {"x": self.axes[-1], "y": self.axes[-2], "color": quantity}
        if data.ndim == 2:
            return px.imshow(
                data.numpy(), x=labels[1], y=labels[0], labels=axis_labels, title=title, **style
            )
        lead = data.reshape(-1, *data.shape[-2:])
        names = [""]
        for axis, labs in zip(self.axes[:-2], labels[:-2], strict=True):
            names = [f"{n} {axis}={lab}".strip() for n in names for lab in labs]
        fig = px.imshow(
            lead.numpy(),
            x=labels[-1],
            y=labels[-2],
            facet_col=0,
            facet_col_wrap=min(4, lead.shape[0]),
            labels=axis_labels,
            title=title,
            **style,
        )
        for annotation, name in zip(fig.layout.annotations, names, strict=False):
            annotation.text = name
        return fig

    def _quantity(self, quantity: Quantity) -> Tensor:
        if quantity == "effect":
            return self.effects
        if quantity == "value":
            return self.values
        if quantity == "normalised":
            return self.normalised()
        raise ConfigError(f"quantity must be 'effect', 'value' or 'normalised', got {quantity!r}")

    def __repr__(self) -> str:
        shape = " x ".join(f"{a}={len(self.coords[a])}" for a in self.axes) or "scalar"
        return (
            f"PatchingResult({self.method}, {shape}, metric={self.metric}, "
            f"baseline={self.baseline:.4g}, max |effect|={_max_abs(self.effects):.4g})"
        )


def _max_abs(t: Tensor) -> float:
    finite = t[~torch.isnan(t)]
    return float(finite.abs().max()) if finite.numel() else float("nan")


def _labelled_node(label: str) -> dict[str, Any]:
    """The node row of a path-patching sender or receiver, from its label (`site[head=3]`)."""
    if label == OUTPUT:
        return node_row(NodeId(OUTPUT), "output", label=OUTPUT)
    node = NodeId.parse(label)
    return unit_node(node.site, [a for a, _ in node.named], [i for _, i in node.named])
