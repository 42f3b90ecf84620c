"""Faithfulness: how much of the model's behaviour the circuit's edges alone reproduce.

    f = (m(circuit) - m(empty)) / (m(model) - m(empty))

m(model) is the metric on the clean input; m(circuit) the metric when every edge outside the graph
is ablated, each at the one receiver it enters (edge level, not node level: a head outside the
circuit's edges into one head may still feed another); m(empty) the metric with every edge
ablated. What an ablated edge carries is `circuits.capture.Baseline`'s one meaning: "patch" (the
default) the corrupted run's value, so m(empty) is the corrupted run's metric and f = 1 means the
circuit alone restores the clean behaviour, f = 0 that it restores none of it; "mean" the mean
over the corrupted batch or `reference` (per position), "zero" zeros, "resample" another
example's value (`seed`). With "zero" or a reference, `corrupt` may be None.

Graphs of TransformerLens models (embeddings, heads, MLPs, logits:
`circuits.modelgraph.residual_ablation`) and of conv channels, across residual connections too
(`circuits.modelgraph.channel_ablation`), are covered, as
`cc.attribute(method="eap" or "eap-ig")` builds them. On a conv net "mean" and "zero" ablate a
node's value (a conv's output), and the ops between convs then act on it.

`Faithfulness` is also the batched ablated run that search methods (ACDC) call: `keep(edges)`
gives a mask, `values(masks)` the metric of many masks, run stacked along the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, get_args

import networkx as nx
import torch
from torch import nn

from circuits.adapters.transformer_lens import is_transformer_lens
from circuits.capture import Baseline, ablated, capture
from circuits.errors import MetricError
from circuits.graph.schema import validate
from circuits.inputs import batch_size
from circuits.loops import chunks
from circuits.metrics import metric_positions, metric_value
from circuits.modelgraph.channel_ablation import ChannelAblation
from circuits.modelgraph.residual_ablation import MEMORY, Clean, ResidualAblation
from circuits.modelgraph.residual_delta import ResidualDelta, State
from circuits.options import Ablation

ABLATIONS = get_args(Ablation)
"""The ablations `faithfulness` accepts: "patch", "zero", "mean" and "resample"."""


def faithfulness(
    model: nn.Module,
    g: nx.DiGraph,
    clean: Any,
    corrupt: Any,
    metric: Any,
    *,
    ablation: Ablation = "patch",
    reference: Any = None,
    seed: int = 0,
) -> float:
    """The circuit's faithfulness on `clean` against `corrupt`; stored in g.graph.

    ablation, reference, seed: what an ablated edge carries (`circuits.capture.Baseline`).
    g.graph["faithfulness"] and g.graph["ablation"] are set. A graph without edges has
    faithfulness 0 by definition. Raises MetricError when the metric does not change between the
    clean and the fully ablated run (the ratio is undefined then).

    Faithfulness is (m(circuit) - m(nothing)) / (m(model) - m(nothing)): 1 when the graph's edges
    alone reproduce the model's metric, 0 when they do no better than ablating every edge.

    For example:

        g = cc.prune(cc.build_graph(cc.attribute(model, clean, corrupt, loss, method="eap-ig")),
                     top_k=8)
        cc.faithfulness(model, g, clean, corrupt, loss)           # e.g. 0.88
        cc.faithfulness(model, g, clean, None, loss, ablation="zero")
    """
    validate(g)
    baseline = Baseline(ablation=ablation, reference=reference, seed=seed)
    score = Faithfulness(model, g, clean, corrupt, metric, baseline).score(g) if g.edges else 0.0
    g.graph["faithfulness"] = score
    g.graph["ablation"] = ablation
    return score


class Faithfulness:
    """Faithfulness of subgraphs of one graph, the model's runs shared between them.

    The clean run, the ablated values and m(empty) are computed once; each `score(sub)` then
    costs one ablated run: on a transformer the change the cut edges make to the clean run
    (`circuits.modelgraph.residual_delta`; where that does not reproduce the model's own run, a
    forward pass resumed from the first block an ablated edge enters), about one pass on a conv
    net. `sub` is `g` or a subgraph of it (pruned copies
    included). `baseline`: an ablation name or a `Baseline`.

    For search methods: `keep(edges)` is the mask of an edge set (keys of g's nodes; on a
    transformer a bool tensor [senders, receivers] over `runner.sender_keys` and
    `runner.receiver_keys`, a head's query, key and value inputs apart, so a caller may cut one of
    them alone), `outputs(masks)` the model's output with each mask's edges alone kept, and
    `values(masks)` the metric of each, `record(mask)` the metric of a search's next circuit (its
    run recorded, on a transformer, for `values(masks, near=mask)`); masks run many at a time,
    stacked along the batch under `memory` bytes.
    """

    def __init__(
        self, model: nn.Module, g: nx.DiGraph, clean: Any, corrupt: Any, metric: Any,
        baseline: Ablation | Baseline = "patch", *, memory: int = MEMORY,
    ) -> None:  # fmt: skip
        base = baseline if isinstance(baseline, Baseline) else Baseline(ablation=baseline)
        base.chosen(corrupt)  # "patch" without corrupted inputs fails here, before any run
        self.runner: Any = (
            ResidualAblation(model)
            if is_transformer_lens(model)
            else ChannelAblation(model, g, clean, metric)
        )
        self.runner.keep(g, g)  # a graph the runner cannot map fails here, before any run
        self.g, self.metric, self.memory = g, metric, memory
        run = capture(model, clean, sites=self.runner.clean_sites, metric=metric)
        values, _ = ablated(model, self.runner.sender_sites, base, clean, corrupt,
                            batch=batch_size(clean), like=run)  # fmt: skip
        self.ablated = values
        self.delta: ResidualDelta | None = None
        self.base: Any
        if isinstance(self.runner, ResidualAblation):
            self.base = Clean(clean, dict(run), metric_positions(metric))
            self.delta = ResidualDelta.build(self.runner, self.base, values)
        else:
            self.base = self.runner.prepare(clean, values)
        self._near: tuple[bytes, State] | None = None
        self.model_value = float(run.metric or 0.0)
        (self.empty_value,) = self.values([self.keep([])])
        if abs(self.model_value - self.empty_value) <= 1e-7 * max(1.0, abs(self.model_value)):
            raise MetricError(
                f"the metric is {self.model_value:.6g} both on the clean input and with every "
                f"edge ablated ({base.chosen(corrupt)}), so faithfulness (a ratio of their "
                "difference) is undefined; use a corrupted input or an ablation that changes the "
                "metric"
            )

    def keep(self, edges: Iterable[tuple[str, str]] | nx.DiGraph) -> Any:
        """The mask that keeps `edges` (pairs of keys of the graph's nodes, or a subgraph: its
        edges) and ablates every other."""
        return self.runner.keep(self.g, edges)

    def without(self, mask: Any, edges: Iterable[tuple[str, str]]) -> Any:
        """`mask` with `edges` ablated too: a search's next mask without rebuilding it from the
        whole edge set."""
        return self.runner.without(mask, self.keep(edges))

    def outputs(self, masks: Sequence[Any], near: Any = None) -> Iterator[Any]:
        """The model's output with each mask's edges alone kept, in order; the masks run stacked
        along the batch, as many per pass as the memory budget allows. On a transformer whose
        metric declares positions, logits elsewhere are unspecified (the metric never reads
        them).

        near: a mask the masks differ from in few edges (ACDC's current circuit). On a
        transformer its run is recorded once and each mask recomputes only what its changes
        reach (`circuits.modelgraph.residual_delta`); without it, the changes from the clean run.
        """
        if self.delta is None:
            return self.runner.outputs(self.base, self.ablated, masks, memory=self.memory)
        return self._delta_outputs(masks, near)

    def values(self, masks: Sequence[Any], near: Any = None) -> list[float]:
        """The metric with each mask's edges alone kept (`near`: as for `outputs`)."""
        return [float(metric_value(self.metric, out)) for out in self.outputs(masks, near)]

    def record(self, mask: Any) -> float:
        """The metric with `mask`'s edges alone kept, its run recorded (on a transformer) for
        later `values(..., near=mask)`: a search's step to its next circuit in one pass."""
        if self.delta is None:
            return self.values([mask])[0]
        state = self._recorded(mask)
        logits = self.delta.output(state)
        return float(metric_value(self.metric, logits))

    def _recorded(self, near: Any) -> State:
        """`near`'s recorded run, computed as changes to the last one recorded, if any."""
        assert self.delta is not None
        key = near.numpy().tobytes()
        if self._near is None or self._near[0] != key:
            self._near = (key, self.delta.state(near, self._near and self._near[1]))
        return self._near[1]

    def _delta_outputs(self, masks: Sequence[Any], near: Any) -> Iterator[Any]:
        assert self.delta is not None
        base = self.delta.clean if near is None else self._recorded(near)
        per_pass = self.delta.rows_per_pass(0, self.memory)
        for part in chunks(len(masks), per_pass):
            yield from self.delta.outputs(base, torch.stack(list(masks[part.start : part.stop])))

    def score(self, sub: nx.DiGraph) -> float:
        """(m(sub) - m(empty)) / (m(model) - m(empty)) for a subgraph `sub` of the graph."""
        if nx.is_empty(sub):  # stops at the first edge; `not sub.edges` counts them all
            return 0.0
        (value,) = self.values([self.keep(sub)])
        return self.fraction(value)

    def fraction(self, value: float) -> float:
        """The faithfulness of a circuit whose metric is `value` (as `score`)."""
        return (value - self.empty_value) / (self.model_value - self.empty_value)
