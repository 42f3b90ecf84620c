"""Exact edge patching: each edge of the model's graph scored by a real intervention.

    score(s -> r) = m(the edge s -> r alone ablated, every other edge kept) - m(clean)

(direction "noise"), for every edge EAP scores, with EAP's keys and result layout, so the result
goes to cc.build_graph, cc.prune, cc.faithfulness and export unchanged. What the ablated edge
carries is the config's `Baseline` (`circuits.capture.ablated`).

Transformers: only the receiver's input moves, so each single-edge variant is computed as the
change it makes to the clean run (`circuits.modelgraph.residual_delta`): the receiver's head or
MLP, then every head and MLP downstream, the last layer's queries, MLP and unembedding only at
the metric's positions; the variants into one head or MLP run stacked along the batch (a pass
computes every head any of its variants moves, for all of them), those into one receiver
sharing its input. Where that
computation does not reproduce the model's own run, the hook-based pass
(`circuits.modelgraph.residual_ablation`) runs instead, resumed from the receiver's block.

Conv nets: the edge n[c] -> B[c'] changes B's output channel c' alone, by
conv(x_n[c] - x[c], W[c', c]), x_n the input of B with node n at its ablated value (the path
patching difference of EAP, `conv_graph.deltas`); each variant replaces B's output and the model
runs on from it. An edge n[c] -> output holds every conv at its clean value and n's channel c at
its ablated one. Variants run stacked along the batch, `max_batch` rows per pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from circuits.adapters.transformer_lens import is_transformer_lens
from circuits.capture import ablated, capture
from circuits.errors import ConfigError, ModelError
from circuits.hooks import run
from circuits.inputs import batch_size, repeat, split
from circuits.loops import chunks, progress_bar
from circuits.metrics import MetricFn, metric_name, metric_positions, metric_value
from circuits.modelgraph.channels import INPUT, Conv, Trace, trace
from circuits.modelgraph.residual_ablation import MEMORY, Clean, ResidualAblation
from circuits.modelgraph.residual_delta import ResidualDelta

from .common import DEFAULT_MAX_BATCH, nan_matrix
from .conv import OUTPUT, ablated_nodes, blocks, conv_layers, conv_nodes
from .conv_graph import deltas
from .methods import EdgePatching
from .result import AttributionResult


def edge_patching(
    model: nn.Module, clean: Any, corrupt: Any, metric: MetricFn, cfg: EdgePatching
) -> AttributionResult:
    """m(one edge ablated) - m(clean) for every edge EAP scores, batched (see `EdgePatching`)."""
    if is_transformer_lens(model):
        if cfg.layers is not None:
            raise ConfigError("layers names conv layers; a TransformerLens model's graph is fixed")
        return _transformer(model, clean, corrupt, metric, cfg)
    return _conv(model, clean, corrupt, metric, cfg)


def _transformer(
    model: nn.Module, clean: Any, corrupt: Any, metric: MetricFn, cfg: EdgePatching
) -> AttributionResult:
    g = ResidualAblation(model)
    batch = batch_size(clean)
    values, corrupt_value = ablated(model, g.sender_sites, cfg, clean, corrupt, batch=batch,
                                    metric=metric)  # fmt: skip
    acts = capture(model, clean, sites=g.clean_sites, metric=metric)
    base = Clean(clean, dict(acts), metric_positions(metric))
    clean_value = float(acts.metric or 0.0)
    per_pass = cfg.max_batch // batch if cfg.max_batch else g.rows_per_pass(base)
    delta = ResidualDelta.build(g, base, values)
    edges = g.valid.nonzero()
    cols = edges[:, 1]
    layer = torch.where(cols == len(g.receivers) - 1, g.n_layers, g.recv_layer[cols])
    # a pass's variants: those into one head (its queries, keys or values) or MLP where the delta
    # runs, since a pass recomputes every head any of its variants moves; those into one block
    # for the hook pass, which resumes there. Edges into one receiver share its input.
    unit = layer * (g.n_heads + 1) + _head(g, cols) if delta is not None else layer
    order = (unit * len(g.receivers) + cols).argsort(stable=True)
    edges, unit, layer = edges[order], unit[order], layer[order]
    scores = nan_matrix(*g.valid.shape)

    def outputs(keep: Tensor) -> list[Any]:
        return delta.outputs(delta.clean, keep) if delta else g.run(base, values, keep)

    with progress_bar(len(edges), "edge patching", cfg.progress, unit="edge") as bar:
        for u in unit.unique().tolist():
            into = unit == u
            group, ly = edges[into], int(layer[into][0])
            if delta is not None and not cfg.max_batch:
                per_pass = delta.rows_per_pass(min(ly, g.n_layers - 1), MEMORY)
            for part in chunks(len(group), max(1, per_pass)):
                pairs = group[part.start : part.stop]
                keep = torch.ones(len(pairs), *g.valid.shape, dtype=torch.bool)
                keep[torch.arange(len(pairs)), pairs[:, 0], pairs[:, 1]] = False
                for (s, r), out in zip(pairs.tolist(), outputs(keep), strict=True):
                    scores[s, r] = float(metric_value(metric, out)) - clean_value
                bar.update(len(pairs))
    if corrupt_value is None:  # no corrupted run: the metric with every edge cut
        (out,) = outputs(torch.zeros(1, *g.valid.shape, dtype=torch.bool))
        corrupt_value = float(metric_value(metric, out))
    return AttributionResult(
        scores=scores,
        axes=("source", "target"),
        coords={"source": tuple(g.sender_keys), "target": tuple(g.receiver_keys)},
        method="edge_patching",
        metric=metric_name(metric),
        direction="noise",
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        node_table=tuple(g.node_rows(acts)),
        receivers=g.input_of,
    )


def _head(g: ResidualAblation, cols: Tensor) -> Tensor:
    """Per receiver column, the head whose query, key or value input it is; n_heads for an MLP's
    input (the logits' column: 0, alone in its layer)."""
    within = cols % g.recv_per_layer
    return torch.where(within < 3 * g.n_heads, within % g.n_heads, g.n_heads)


def _conv(
    model: nn.Module, clean: Any, corrupt: Any, metric: MetricFn, cfg: EdgePatching
) -> AttributionResult:
    convs = conv_layers(model, cfg.layers)
    graph = trace(model, clean, convs, metric)
    if cfg.layers is not None and list(cfg.layers) != graph.order:
        raise ModelError(
            f"layers lists {list(cfg.layers)}, but the forward pass runs them as {graph.order}: "
            "list them in that order"
        )
    if graph.shared(INPUT) or INPUT in graph.grads.direct:
        raise ModelError(
            f"the input of {graph.order[0]!r} also reaches another conv or the output along a "
            "path through no other conv (a skip connection from the input), so ablating one of "
            "its edges needs a different model input; put the conv before it in the graph "
            "(layers=...)"
        )
    batch = batch_size(clean)
    held, src_in = ablated_nodes(model, clean, corrupt, graph, cfg)
    corrupt_value = None
    if cfg.chosen(corrupt) == "patch":
        with torch.no_grad():
            corrupt_value = float(metric_value(metric, run(model, corrupt).output))
    rows_per_pass = cfg.max_batch or DEFAULT_MAX_BATCH
    moved = deltas(model, clean, clean, graph, held, src_in, max_batch=rows_per_pass)
    senders = [INPUT, *graph.order]
    rows = blocks(senders, [graph.values[n].shape[1] for n in senders])
    cols = blocks([*graph.order, OUTPUT], [convs[n].out_channels for n in graph.order] + [1])
    scores = nan_matrix(rows[senders[-1]].stop, cols[OUTPUT].stop)
    jobs = [(conv, node) for conv in graph.order for node in graph.feeds[conv]]
    jobs += [(OUTPUT, node) for node in graph.grads.direct]
    per_pass = max(1, rows_per_pass // batch)
    total = sum(_count(convs, graph, conv, node) for conv, node in jobs)
    with progress_bar(total, "edge patching", cfg.progress, unit="edge") as bar:
        for target, node in jobs:
            variants = (
                _output_variants(graph, held, node)
                if target == OUTPUT
                else _conv_variants(convs[target], graph, target, moved[node, target])
            )
            fixed = graph.values if target == OUTPUT else {}
            fixed = {n: v for n, v in fixed.items() if n != INPUT}
            for (c, c_out), replace in _passes(variants, per_pass, fixed):
                k = len(c)
                out = run(model, repeat(clean, k), replace=replace).output
                got = [float(metric_value(metric, o)) - graph.metric for o in split(out, k, batch)]
                target_cols = cols[target].start + torch.tensor(c_out)
                scores[rows[node].start + torch.tensor(c), target_cols] = torch.tensor(got)
                bar.update(k)
    src_keys, tgt_keys, nodes = conv_nodes(graph)
    return AttributionResult(
        scores=scores,
        axes=("source", "target"),
        coords={"source": tuple(src_keys), "target": tuple(tgt_keys)},
        method="edge_patching",
        metric=metric_name(metric),
        direction="noise",
        clean_value=graph.metric,
        corrupt_value=corrupt_value,
        node_table=tuple(nodes),
    )


def _conv_variants(conv: Conv, graph: Trace, name: str, delta: Tensor) -> Iterator[Any]:
    """Per edge node[c] -> name[c']: name's clean output with channel c' moved by
    conv(delta[c], W[c', c]) (delta: name's input with the node ablated, minus its clean input).
    """
    c_out, c_in = conv.out_channels, conv.in_channels
    per_group_in, per_group_out = c_in // conv.groups, c_out // conv.groups
    value = graph.values[name]
    for c in range(c_in):
        group = c // per_group_in
        outs = list(range(group * per_group_out, (group + 1) * per_group_out))
        weight = conv.weight.detach()[outs, c % per_group_in][:, None]  # [c', 1, k...]
        x = delta[:, c : c + 1]
        change = _conv_nd(x, weight, conv)  # [B, c', ...]

        def patched(i: int, o: int, c: int = c, change: Tensor = change) -> Tensor:
            new = value.clone()
            new[:, o] += change[:, i]
            return new

        yield from ((name, c, o, lambda i=i, o=o, p=patched: p(i, o)) for i, o in enumerate(outs))


def _output_variants(graph: Trace, held: dict[str, Tensor], node: str) -> Iterator[Any]:
    """Per edge node[c] -> output: node's channel c ablated (every other conv held clean)."""
    value = graph.values[node]
    for c in range(value.shape[1]):

        def patched(c: int = c) -> Tensor:
            new = value.clone()
            new[:, c] = held[node][:, c]
            return new

        yield (node, c, 0, patched)


def _passes(variants: Iterator[Any], per_pass: int, fixed: dict[str, Tensor]) -> Iterator[Any]:
    """Chunks of variants as ((input channels, target channels), replacements for their rows);
    `fixed`: sites held at one value in every row."""
    chunk: list[Any] = []
    for variant in [*variants, None]:
        if variant is not None:
            chunk.append(variant)
        if chunk and (variant is None or len(chunk) == per_pass):
            replace = {n: repeat(v, len(chunk)) for n, v in fixed.items()}
            replace[chunk[0][0]] = torch.cat([make() for _, _, _, make in chunk])
            yield ([v[1] for v in chunk], [v[2] for v in chunk]), replace
            chunk = []


def _conv_nd(x: Tensor, weight: Tensor, conv: Conv) -> Tensor:
    """conv of one input channel x [B, 1, ...] with `weight` [c', 1, ...] (conv's geometry)."""
    if conv.padding_mode != "zeros":
        raise ModelError(
            f"edge patching convolves single channels with zero padding; this conv pads with "
            f"{conv.padding_mode!r}"
        )
    fn = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.ndim]
    return fn(x, weight, None, conv.stride, conv.padding, conv.dilation)  # type: ignore[operator]


def _count(convs: dict[str, Conv], graph: Trace, target: str, node: str) -> int:
    if target == OUTPUT:
        return int(graph.values[node].shape[1])
    conv = convs[target]
    return conv.in_channels * conv.out_channels // conv.groups
