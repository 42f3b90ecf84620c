"""ACDC (Conmy et al. 2023): a circuit settled edge by edge by real interventions.

    g = cc.discover(model, clean, corrupt, None, method="acdc", threshold=0.01)

The search starts from every edge of the model's graph (the graph EAP scores: embeddings, heads,
MLPs and logits on a transformer, with a head's query, key and value inputs as one node; conv
channels on a conv net) and visits the receivers in reverse topological order, the output first.
At each receiver every incoming edge still in the circuit is tested: the circuit's output with
that edge ablated too (`ablation`, the corrupted run's value by default) against the current
circuit's. An edge whose removal moves the metric by less than `tau` is removed. The default
metric is the paper's: the KL divergence of the circuit's output from the clean output, and an
edge goes when the divergence grows by less than tau; with a metric of your own, when the metric
moves by less than tau either way. A receiver none of whose outgoing edges is left is cut off
from the output: its incoming edges go untested, as in the reference implementation (ablating
them changes nothing).

One difference from the reference implementation, for speed: the edges into one receiver are
tested together, each against the same current circuit, in one batched pass (the reference tests
them one after another, each against the circuit the previous test left). On a transformer the
current circuit's run is recorded once per change (one pass, with its metric), and each test
recomputes only the heads, MLPs and logits its cut reaches (`Faithfulness.values(..., near=)`).
The result records tau, the ablation, the number of batched passes (tests and recordings) and
edge tests, and the circuit's faithfulness.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import torch
from torch import nn

from circuits.attribution import attribute
from circuits.capture import Baseline
from circuits.checks import check_number
from circuits.faithfulness import Faithfulness
from circuits.graph import build_graph
from circuits.graph.prune import merge_thresholds
from circuits.hooks import run
from circuits.loops import progress_bar
from circuits.metrics import MetricFn, kl_div


def acdc(
    model: nn.Module,
    clean: Any,
    corrupt: Any,
    metric: MetricFn | None,
    *,
    tau: float,
    ablation: Any = None,
    reference: Any = None,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
    memory: int | None = None,
    progress: bool | None = None,
) -> nx.DiGraph:
    """The ACDC circuit of `model` on `clean` (module docstring); `metric` None: KL divergence
    from the clean output. Returns a schema graph whose edge weights are each kept edge's
    measured effect (the metric change when it alone was removed).

    memory: bytes of stacked variants per pass (None: `Faithfulness`'s default; a small budget
    runs one edge test a pass, as the reference implementation does).
    """
    tau = check_number(tau, "threshold (ACDC's tau)", low=0.0)
    baseline = Baseline(ablation=ablation, reference=reference, seed=seed)
    with torch.no_grad():
        clean_out = run(model, clean).output
    kl = metric is None
    measure = kl_div(clean_out, position=None) if kl else metric
    nodes, edges = attribute(model, clean, corrupt, measure, method="eap", ablation=ablation,
                             reference=reference, seed=seed).graph_frames()  # fmt: skip
    full = build_graph(edges, nodes=nodes, meta={**(meta or {}), "method": "acdc"})
    budget = {} if memory is None else {"memory": memory}
    check = Faithfulness(model, full, clean, corrupt, measure, baseline, **budget)
    kept = set(full.edges)
    effect: dict[tuple[str, str], float] = {}
    near = check.keep(kept)  # the current circuit's mask
    current = check.record(near)
    passes, tests, stale = 1, 0, False
    receivers = [n for n in reversed(list(nx.topological_sort(full))) if full.in_degree(n)]
    with progress_bar(len(receivers), "ACDC", progress, unit="receiver") as bar:
        for node in receivers:
            bar.update(1)
            incoming = [e for e in full.in_edges(node) if e in kept]
            if not incoming:
                continue
            if full.out_degree(node) and not any(e in kept for e in full.out_edges(node)):
                kept -= set(incoming)  # cut off from the output: ablating them changes nothing
                near, stale = check.without(near, incoming), True
                continue
            if stale:  # the circuit changed: its metric, its run recorded for the tests
                current, passes, stale = check.record(near), passes + 1, False
            values = check.values([check.without(near, [e]) for e in incoming], near)
            passes, tests = passes + 1, tests + len(incoming)
            moved = {e: (v - current) if kl else abs(v - current)
                     for e, v in zip(incoming, values, strict=True)}  # fmt: skip
            effect.update(moved)
            dropped = {e for e in incoming if moved[e] < tau}
            if dropped:
                kept -= dropped
                near, stale = check.without(near, dropped), True
    if stale:
        current, passes = check.record(near), passes + 1
    g = full.edge_subgraph(kept).copy()
    for u, v in g.edges:
        g.edges[u, v]["weight"] = effect[u, v]
        g.edges[u, v]["method"] = "acdc"
    g.graph["faithfulness"] = check.fraction(current) if g.edges else 0.0
    g.graph["ablation"] = baseline.chosen(corrupt)
    g.graph["metric"] = "kl_div" if kl else g.graph["metric"]
    g.graph["thresholds"] = merge_thresholds(
        g.graph["thresholds"], {"tau": tau, "passes": passes, "edge_tests": tests}
    )
    return g
