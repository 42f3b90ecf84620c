"""Faithfulness: how much of the model's behaviour the circuit's edges alone reproduce.

    f = (m(circuit) - m(empty)) / (m(model) - m(empty))

m(model) is the metric on the clean input; m(circuit) the metric when every edge outside the graph
is ablated, each at the one receiver it enters (edge level, not node level: a head outside the
circuit's edges into one head may still feed another); m(empty) the metric with every edge
ablated. With ablation="patch" (the default) an ablated edge carries its value from the corrupted
run, so m(empty) is the corrupted run's metric and f = 1 means the circuit alone restores the
clean behaviour, f = 0 that it restores none of it. "mean" uses the corrupted run's mean over the
batch (per position), "zero" zeros.

Graphs of TransformerLens models (embeddings, heads, MLPs, logits: `ablate_residual`) and of conv
channels, across residual connections too (`ablate_channels`), are covered, as
`cc.attribute(method="eap" or "eap-ig")` builds them. On a conv net "mean" and "zero" ablate a
node's value (a conv's output), and the ops between convs then act on it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import networkx as nx
import torch
from torch import Tensor, nn

from circuits.adapters.transformer_lens import is_transformer_lens
from circuits.capture import capture, scalar_metric
from circuits.errors import ConfigError, MetricError
from circuits.graph.ablate_channels import ChannelAblation
from circuits.graph.ablate_residual import ResidualAblation
from circuits.graph.schema import validate
from circuits.inputs import check_pair

Ablation = Literal["patch", "mean", "zero"]


def faithfulness(
    model: nn.Module,
    g: nx.DiGraph,
    clean: Any,
    corrupt: Any,
    metric: Any,
    *,
    ablation: Ablation = "patch",
) -> float:
    """The circuit's faithfulness on `clean` against `corrupt`; stored in g.graph.

    g.graph["faithfulness"] and g.graph["ablation"] are set. A graph without edges has
    faithfulness 0 by definition. Raises MetricError when the metric does not change between the
    clean and the fully ablated run (the ratio is undefined then).
    """
    validate(g)
    score = Faithfulness(model, g, clean, corrupt, metric, ablation).score(g) if g.edges else 0.0
    g.graph["faithfulness"] = score
    g.graph["ablation"] = ablation
    return score


class Faithfulness:
    """Faithfulness of subgraphs of one graph, the model's runs shared between them.

    The clean run, the ablated values and m(empty) are computed once; each `score(sub)` then
    costs one ablated run: one forward pass on a transformer, about one per conv on a conv net.
    `sub` is `g` or a subgraph of it (pruned copies included).
    """

    def __init__(
        self, model: nn.Module, g: nx.DiGraph, clean: Any, corrupt: Any, metric: Any,
        ablation: Ablation = "patch",
    ) -> None:  # fmt: skip
        if ablation not in get_args(Ablation):
            raise ConfigError(f"ablation must be one of {get_args(Ablation)}, got {ablation!r}")
        if ablation == "patch":
            check_pair(clean, corrupt)
        self.runner: Any = (
            ResidualAblation(model)
            if is_transformer_lens(model)
            else ChannelAblation(model, g, clean, metric)
        )
        self.runner.keep(g, g.edges())  # a graph the runner cannot map fails here, before any run
        self.g, self.clean, self.metric, self.ablation = g, clean, metric, ablation
        base = capture(model, clean, sites=self.runner.sender_sites, metric=metric)
        self.ablated = _ablated(model, self.runner.sender_sites, base, corrupt, ablation)
        self.model_value = float(base.metric or 0.0)
        self.empty_value = self._value(self.runner.keep(g, []))
        if abs(self.model_value - self.empty_value) <= 1e-7 * max(1.0, abs(self.model_value)):
            raise MetricError(
                f"the metric is {self.model_value:.6g} both on the clean input and with every "
                f"edge ablated ({ablation}), so faithfulness (a ratio of their difference) is "
                "undefined; use a corrupted input or an ablation that changes the metric"
            )

    def score(self, sub: nx.DiGraph) -> float:
        """(m(sub) - m(empty)) / (m(model) - m(empty)) for a subgraph `sub` of the graph."""
        if not sub.edges:
            return 0.0
        value = self._value(self.runner.keep(self.g, sub.edges()))
        return (value - self.empty_value) / (self.model_value - self.empty_value)

    def _value(self, keep: Any) -> float:
        return float(scalar_metric(self.metric, self.runner.run(self.clean, self.ablated, keep)))


def _ablated(
    model: nn.Module, sites: list[str], base: Any, corrupt: Any, ablation: str
) -> dict[str, Tensor]:
    """The value each sender site takes where its edges are ablated."""
    if ablation == "zero":
        return {name: torch.zeros_like(base[name]) for name in sites}
    run = capture(model, corrupt, sites=sites)
    if ablation == "mean":
        return {name: run[name].mean(0, keepdim=True) for name in sites}
    return {name: run[name] for name in sites}
