"""Faithfulness: how much of the model's behaviour the circuit's edges alone reproduce.

    f = (m(circuit) - m(empty)) / (m(model) - m(empty))

m(model) is the metric on the clean input; m(circuit) the metric when every edge outside the graph
is ablated, each at the one receiver it enters (edge level, not node level: a head outside the
circuit's edges into one head may still feed another); m(empty) the metric with every edge
ablated. With ablation="patch" (the default) an ablated edge carries its value from the corrupted
run, so m(empty) is the corrupted run's metric and f = 1 means the circuit alone restores the
clean behaviour, f = 0 that it restores none of it. "mean" uses the corrupted run's mean over the
batch (per position), "zero" zeros.

Graphs of TransformerLens models (embeddings, heads, MLPs, logits:
`circuits.modelgraph.residual_ablation`) and of conv channels, across residual connections too
(`circuits.modelgraph.channel_ablation`), are covered, as
`cc.attribute(method="eap" or "eap-ig")` builds them. On a conv net "mean" and "zero" ablate a
node's value (a conv's output), and the ops between convs then act on it.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
from torch import nn

from circuits.adapters.transformer_lens import is_transformer_lens
from circuits.capture import ablation_values, capture
from circuits.errors import MetricError
from circuits.graph.schema import validate
from circuits.inputs import batch_size, check_pair
from circuits.metrics import metric_value
from circuits.modelgraph.channel_ablation import ChannelAblation
from circuits.modelgraph.residual_ablation import ResidualAblation
from circuits.options import Ablation, check_choice

ABLATIONS = ("patch", "mean", "zero")


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
        check_choice(ablation, ABLATIONS, "ablation")
        if ablation == "patch":
            check_pair(clean, corrupt)
        self.runner: Any = (
            ResidualAblation(model)
            if is_transformer_lens(model)
            else ChannelAblation(model, g, clean, metric)
        )
        self.runner.keep(g, g.edges())  # a graph the runner cannot map fails here, before any run
        self.g, self.clean, self.metric, self.ablation = g, clean, metric, ablation
        sites = self.runner.sender_sites
        base = capture(model, clean, sites=sites, metric=metric)
        reference = base if ablation == "zero" else capture(model, corrupt, sites=sites)
        self.ablated = ablation_values(reference, ablation, batch=batch_size(clean))
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
        return float(metric_value(self.metric, self.runner.run(self.clean, self.ablated, keep)))
