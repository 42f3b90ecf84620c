"""EAP-IG's integrated gradients and each node's direct change at each conv's input, on the
channel graph of a conv net (`circuits.modelgraph.channels`).

* `path_grads` sums the metric's gradients (direct and total, as `trace` gives them) over the
  points of an integration path.
* `deltas`: the change of each conv's input when one node alone takes its source value and every
  other conv's output keeps its base value (that node's direct effect there). Where a conv reads
  one node, that is the plain difference of its input between the runs; otherwise the node is
  patched, nodes that feed no conv in common together, several such groups per forward pass,
  stacked along the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from circuits.inputs import repeat
from circuits.loops import chunks, progress_bar
from circuits.metrics import MetricFn
from circuits.modelgraph.channels import INPUT, Conv, Grads, Trace, backward, cut_run, patched_run

from .common import IGPath, fold, interpolate, weighted_metric


def path_grads(
    model: nn.Module,
    base: Tensor,
    source: Tensor,
    convs: Mapping[str, Conv],
    metric: MetricFn,
    *,
    path: IGPath,
    max_batch: int,
    progress: bool | None,
) -> Grads:
    """Gradients integrated along base -> source (inputs interpolated), several points per pass."""
    alphas, weights = path.points()
    batch = base.shape[0]
    total: dict[str, Tensor] = {}
    direct: dict[str, Tensor] = {}
    with progress_bar(len(alphas), "EAP-IG", progress) as bar:
        for part in chunks(len(alphas), max(1, max_batch // batch)):
            points = interpolate(base, source, [alphas[i] for i in part])
            weighted = weighted_metric(metric, [weights[i] for i in part], batch)
            grads, _ = backward(cut_run(model, points, convs, weighted))
            _add_folded(total, grads.total, len(part))
            _add_folded(direct, grads.direct, len(part))
            bar.update(len(part))
    return Grads(total, direct)


def deltas(
    model: nn.Module,
    base: Any,
    source: Any,
    graph: Trace,
    source_values: Mapping[str, Tensor],
    source_inputs: Mapping[str, Tensor],
    *,
    max_batch: int,
) -> dict[tuple[str, str], Tensor]:
    """(node, conv) -> the change of the conv's input when only that node takes its source value
    and every other conv's output keeps its base value, for each node feeding each conv.

    A conv fed by one node changes by the plain difference of its input between the two runs.
    For a conv fed by several, the input node's change comes from a run of the source input with
    every conv's output at its base value, and a conv's from a run of the base input with that
    conv's output alone at its source value (such runs stacked along the batch).
    """
    out = {
        (senders[0], conv): source_inputs[conv] - graph.inputs[conv]
        for conv, senders in graph.feeds.items()
        if len(senders) == 1
    }
    frozen = {name: graph.values[name] for name in graph.order}
    if graph.shared(INPUT):
        _, moved = patched_run(model, source, frozen)
        out.update(
            {(INPUT, conv): moved[conv] - graph.inputs[conv] for conv in graph.shared(INPUT)}
        )
    variants = _disjoint([name for name in graph.order if graph.shared(name)], graph)
    batch = graph.values[INPUT].shape[0]
    for part in chunks(len(variants), max(1, max_batch // batch)):
        group = [variants[i] for i in part]
        stacked = {
            name: torch.cat([source_values[name] if name in nodes else value for nodes in group])
            for name, value in frozen.items()
        }
        _, moved = patched_run(model, repeat(base, len(group)), stacked)
        for i, nodes in enumerate(group):
            for node in nodes:
                for conv in graph.shared(node):
                    out[node, conv] = moved[conv][i * batch : (i + 1) * batch] - graph.inputs[conv]
    return out


def _disjoint(nodes: list[str], graph: Trace) -> list[list[str]]:
    """`nodes` in groups that may take their source values in one run: with every conv's output
    frozen, a node reaches only the inputs of the convs it feeds directly, so nodes that share
    no such conv leave each other's readings alone (greedy, first group that fits)."""
    groups: list[tuple[list[str], set[str]]] = []
    for node in nodes:
        reads = set(graph.shared(node))
        fit = next((g for g in groups if not g[1] & reads), None)
        if fit is None:
            groups.append(([node], reads))
        else:
            fit[0].append(node)
            fit[1].update(reads)
    return [members for members, _ in groups]


def _add_folded(into: dict[str, Tensor], grads: Mapping[str, Tensor], k: int) -> None:
    for name, g in grads.items():
        g = fold(g, k)
        into[name] = into[name] + g if name in into else g
