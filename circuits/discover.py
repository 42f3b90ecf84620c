"""`discover`: attribution, graph, pruning and faithfulness in one call.

    g = cc.discover(model, clean, corrupt, metric)                # EAP-IG, smallest top-k >= 0.8
    g = cc.discover(model, clean, corrupt, metric, method="eap", top_k=50)
    g.graph["faithfulness"], g.number_of_edges()

By default the circuit is the smallest set of top-|weight| edges whose faithfulness reaches
`target` (0.8): edges are scored once, then the number kept is searched by doubling and bisection,
one ablated run per step. Faithfulness need not grow with every edge added, so the circuit found
is small rather than provably the smallest. With explicit pruning options (`threshold`, `top_k`,
`influence`) those are applied instead and the faithfulness of the result is measured. Either way
g.graph records the method, metric, pruning settings, ablation and faithfulness.
"""

from __future__ import annotations

from typing import Any, Literal

import networkx as nx
from torch import nn

from circuits.acdc import acdc
from circuits.attribution import EdgeMethod, attribute
from circuits.capture import Baseline
from circuits.checks import check_number
from circuits.errors import ConfigError
from circuits.faithfulness import Faithfulness
from circuits.graph import build_graph, prune
from circuits.graph.prune import merge_thresholds
from circuits.options import Ablation

TARGET = 0.8


def discover(
    model: nn.Module,
    clean: Any,
    corrupt: Any,
    metric: Any,
    *,
    method: EdgeMethod | Literal["acdc"] = "eap-ig",
    target: float | None = None,
    threshold: float | None = None,
    top_k: int | None = None,
    influence: float | None = None,
    ablation: Ablation | None = None,
    meta: dict[str, Any] | None = None,
    **options: Any,
) -> nx.DiGraph:
    """The circuit of `model` for `metric` on clean against corrupted inputs, as a schema graph.

    method: "eap", "eap-ig" or "edge_patching" (scores, then pruning), or "acdc" (`circuits.acdc`:
        edges settled one receiver at a time by real interventions; threshold=tau, metric None
        for KL divergence from the clean output). `options` go to `cc.attribute` (steps, rule,
        direction, layers, max_batch, progress; reference, seed) or to ACDC (reference, seed,
        progress). target: the faithfulness the circuit must reach (default 0.8 when no pruning
        option is given). threshold, top_k, influence: prune with `cc.prune` instead.
    ablation: what an ablated edge carries, in scoring and in faithfulness alike ("patch" by
        default, "zero", "mean", "resample"; `circuits.capture.Baseline`). meta: provenance for
        g.graph (model description, seed, ...).

    For example:

        model = cc.zoo.induction_transformer()
        clean, corrupt, batch = cc.zoo.induction_pair(8)
        loss = cc.metrics.cross_entropy(clean, mask=batch.is_repeat)
        circuit = cc.discover(model, clean, corrupt, loss)        # EAP-IG, smallest graph >= 0.8
        circuit.graph["faithfulness"], circuit.number_of_edges()
        acdc = cc.discover(model, clean, corrupt, None, method="acdc", threshold=0.05)

    Raises:
        ConfigError: both `target` and pruning options, a `target` outside (0, 1], "acdc" without a
            threshold (or with target, top_k or influence), or an option `cc.attribute` refuses.
        ModelError: the model is neither a TransformerLens model nor a conv net whose channel graph
            can be traced.
        InputError, ShapeMismatchError: clean and corrupted inputs that cannot be run or compared.
        MetricError: the metric is not a finite scalar, or does not change between the clean and
            the fully ablated run (faithfulness is undefined then).
    """
    if method == "acdc":
        if target is not None or top_k is not None or influence is not None or threshold is None:
            raise ConfigError(
                "method='acdc' keeps the edges whose removal moves the metric by tau or more: "
                "pass threshold=tau (for example 0.01), and no target, top_k or influence"
            )
        return acdc(model, clean, corrupt, metric, tau=threshold, ablation=ablation, meta=meta,
                    **options)  # fmt: skip
    pruning = {"threshold": threshold, "top_k": top_k, "influence": influence}
    if target is not None and any(v is not None for v in pruning.values()):
        raise ConfigError("give either target= or pruning options (threshold, top_k, influence)")
    if target is not None and not 0 < check_number(target, "target") <= 1:
        raise ConfigError(f"target must be a faithfulness in (0, 1], got {target!r}")
    chosen = {k: options.pop(k) for k in ("reference", "seed") if k in options}
    baseline = Baseline(ablation=ablation, **chosen)
    result = attribute(model, clean, corrupt, metric, method=method, ablation=ablation, **chosen,
                       **options)  # fmt: skip
    full = build_graph(result, meta=meta)
    check = Faithfulness(model, full, clean, corrupt, metric, baseline)
    if any(v is not None for v in pruning.values()):
        g = prune(full, threshold=threshold, top_k=top_k, influence=influence)
        g.graph["faithfulness"] = check.score(g)
    else:
        goal = TARGET if target is None else target
        g, score = _smallest(full, check, goal)
        g.graph["faithfulness"] = score
        g.graph["thresholds"] = merge_thresholds(g.graph["thresholds"], {"target": goal})
    g.graph["ablation"] = baseline.chosen(corrupt)
    return g


def _smallest(full: nx.DiGraph, check: Faithfulness, goal: float) -> tuple[nx.DiGraph, float]:
    """prune(full, top_k=k) for a small k whose faithfulness reaches `goal` (doubling, bisection),
    with its faithfulness; the whole graph when no k reaches it. Each k is measured once."""
    measured: dict[int, float] = {}

    def score(k: int) -> float:
        if k not in measured:
            measured[k] = check.score(prune(full, top_k=k))
        return measured[k]

    n = full.number_of_edges()
    lo, hi = 0, 1
    while hi < n and score(hi) < goal:
        lo, hi = hi, min(2 * hi, n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if score(mid) >= goal else (mid, hi)
    return prune(full, top_k=hi), score(hi)
