"""Channel-to-channel edge attribution in conv nets (EAP and EAP-IG on the channel graph).

Nodes are the output channels of the conv layers (the Distill circuits thread's view), the channels
of the first conv's input (input nodes) and the metric (the output node). A conv B reads its input
B_in, which the model computes from the outputs of earlier convs and from the input through the
ops between convs: ReLU, batch norm in eval mode, pooling, and the additions of residual
connections. In a sequential stack B_in comes from one conv; in a ResNet block's output the
previous block's input arrives too, through the skip connection, so a conv feeds every conv that
reads it along a path through no other conv of the graph. `circuits.modelgraph.channels.trace`
finds these pairs with autograd, on a run where each conv's output is cut from its input.

Edge A -> B. Let delta_AB be the change of B_in when A's output alone takes its source value and
every other conv's output keeps its base value: the change path patching A -> B would make. The
ops between convs act channel by channel (this is checked), so channel c of delta_AB depends on
A's channel c only. The pre-activation of B's output channel c' is a sum over input channels,
conv(x_c, W[c', c]), so the edge A_c -> B_c' has the first-order effect

    score(A_c -> B_c') = sum over batch and positions of conv(delta_AB[c], W[c', c]) * grad_B[c']

with grad_B the gradient of the metric at B's output (EAP: on the base run; EAP-IG: integrated
along the straight path between the inputs). That sum is the gradient of sum(grad * conv(delta, W))
with respect to W, contracted with W itself, so one weight-gradient per (A, B) scores all their
edges (any stride, padding, dilation or groups). Where B reads A alone (a sequential stack),
delta_AB is the plain difference of B's input between the two runs.

Why a patched difference and not a Jacobian-vector product: it is exact where B reads one conv,
needs no forward-mode rule for every op, and channel by channel it is what the real intervention
"A's channel c alone at its source value" does to B_in. Neither is additive over convs whose
outputs meet inside a nonlinearity (relu(a + b)).

Edge A -> output: A's change times the metric's gradient along the direct paths from A to the
output, every other conv's output held fixed. The input nodes' edges carry the whole change of the
input, so with EAP-IG they add up to the metric difference (`total` vs `expected`).

`layers` restricts the nodes to the named convs, listed in the order the forward pass runs them.
The other convs become part of the paths: before the first named conv or on the way to the output
they are fine; between two named convs a conv mixes channels and is refused (ModelError). The
input node is the first named conv's input: paths from the model's input that bypass that tensor
are not in the graph (their effect is missing from `total`). Refused too, with a ModelError that
says what to change: a conv that runs twice, a path that changes the channel count
(concatenation) or mixes channels (a linear layer, a norm over channels), and batch norm or
dropout in training mode.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from circuits.adapters.torch_module import module_table
from circuits.capture import Baseline, ablated, ablated_input, capture
from circuits.errors import InputError, ModelError, SiteNotFoundError, closest
from circuits.hooks import run
from circuits.ids import NodeId, node_row, unit_rows
from circuits.inputs import batch_size
from circuits.metrics import MetricFn, metric_name, metric_value
from circuits.modelgraph.channels import INPUT, Conv, Grads, Trace, patched_run, trace
from circuits.options import runs

from .common import IGPath, nan_matrix
from .conv_graph import deltas, path_grads
from .methods import EAP
from .result import AttributionResult

OUTPUT = "output"


def conv_edges(
    model: nn.Module,
    clean: Any,
    corrupt: Any,
    metric: MetricFn,
    cfg: EAP,
    *,
    path: IGPath | None,
    max_batch: int,
    progress: bool | None,
) -> AttributionResult:
    """EAP (path=None) or EAP-IG channel edge scores on the graph of the model's conv layers."""
    convs = conv_layers(model, cfg.layers)
    base, source = runs(cfg.direction, clean, corrupt)
    if path is not None:
        base = _image(base)
    graph = trace(model, base, convs, metric)
    if cfg.layers is not None and list(cfg.layers) != graph.order:
        raise ModelError(
            f"layers lists {list(cfg.layers)}, but the forward pass runs them as {graph.order}: "
            "list them in that order"
        )
    if cfg.direction == "denoise" or cfg.chosen(corrupt) == "patch":  # another run's values
        values, src_inputs, source_value = _source_run(model, source, graph, metric)
    else:  # zero, mean or resample: each node ablated, and the input for the path and skips
        values, src_inputs = ablated_nodes(model, clean, corrupt, graph, cfg)
        image = None if corrupt is None else _image(corrupt)
        source = ablated_input(cfg, _image(clean), image).expand_as(clean)
        with torch.no_grad():
            source_value = float(metric_value(metric, run(model, source).output))
    grads = (
        graph.grads
        if path is None
        else path_grads(model, base, _image(source), convs, metric, path=path,
                        max_batch=max_batch, progress=progress)
    )  # fmt: skip
    moved = deltas(model, base, source, graph, values, src_inputs, max_batch=max_batch)
    scores = _scores(convs, graph, grads, moved, values)
    base_value = graph.metric
    clean_value, corrupt_value = runs(cfg.direction, base_value, source_value)
    src_keys, tgt_keys, nodes = conv_nodes(graph)
    n_input = graph.values[INPUT].shape[1]
    return AttributionResult(
        scores=scores,
        axes=("source", "target"),
        coords={"source": tuple(src_keys), "target": tuple(tgt_keys)},
        method="eap" if path is None else "eap-ig",
        metric=metric_name(metric),
        direction=cfg.direction,
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        total=scores[:n_input].nansum().reshape(1),
        expected=torch.tensor([source_value - base_value], device=scores.device),
        node_table=tuple(nodes),
    )


def ablated_nodes(
    model: nn.Module, clean: Any, corrupt: Any, graph: Trace, baseline: Baseline
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Every node's ablated value (INPUT: the first conv's input; [B, ...]) and each conv's input
    in the run whose nodes all take their ablated values (the source run of EAP's differences;
    with "patch" that is the corrupted run itself)."""
    first = f"{graph.order[0]}:input"
    found, _ = ablated(model, [first, *graph.order], baseline, clean, corrupt,
                       batch=batch_size(clean))  # fmt: skip
    values = {INPUT: found[first], **{n: found[n] for n in graph.order}}
    values = {n: v.expand_as(graph.values[n]) for n, v in values.items()}
    inputs = patched_run(model, clean, {n: values[n] for n in graph.order})[1]
    inputs[graph.order[0]] = values[INPUT]
    return values, inputs


def channel_scores(conv: Conv, diff: Tensor, grad: Tensor, into: Tensor) -> None:
    """Write one conv layer's edge scores into `into` [in_channel, out_channel] (pairs that groups
    cut keep their value)."""
    wgrad = _weight_grad(conv, diff.detach(), grad.detach()).mul_(conv.weight.detach())
    c_out, i = wgrad.shape[:2]
    # the sum over each kernel as a matrix-vector product: a plain sum over so short an axis is
    # several times slower
    per = (wgrad.reshape(c_out * i, -1) @ wgrad.new_ones(wgrad[0, 0].numel())).view(c_out, i)
    o = c_out // int(conv.groups)
    for g in range(int(conv.groups)):
        into[g * i : (g + 1) * i, g * o : (g + 1) * o].T.copy_(per[g * o : (g + 1) * o])


def _weight_grad(conv: Conv, x: Tensor, grad: Tensor) -> Tensor:
    """d sum(grad * conv(x, W)) / dW: one weight-gradient convolution, with no forward conv."""
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":  # padding done by the module
        leaf = conv.weight.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = conv._conv_forward(x, leaf, None)
            return torch.autograd.grad(out, [leaf], grad_outputs=[grad])[0]
    zeros = [0] * (x.ndim - 2)
    return torch.ops.aten.convolution_backward(
        grad, x, conv.weight.detach(), None, conv.stride, conv.padding, conv.dilation,
        False, zeros, conv.groups, [False, True, False],
    )[1]  # fmt: skip


def conv_layers(model: nn.Module, layers: Sequence[str] | None) -> dict[str, Conv]:
    """The conv layers (by module path) whose channels are the graph's nodes."""
    table = module_table(model)
    if layers is None:
        convs = {name: cast(Conv, mod) for name, mod in table.items() if isinstance(mod, Conv)}
        if not convs:
            raise ModelError(
                f"{type(model).__name__} has no Conv1d / Conv2d / Conv3d layers and is not a "
                "TransformerLens model, so it has no graph edge attribution knows; use "
                "attribution_patching or integrated_gradients on its sites"
            )
        return convs
    if isinstance(layers, str) or not layers or len(set(layers)) != len(layers):
        raise InputError(
            f"layers must be a non-empty list of distinct conv module paths, got {layers!r}"
        )
    for name in layers:
        if name not in table:
            raise SiteNotFoundError(f"no module {name!r}; {closest(name, table)}")
        if not isinstance(table[name], Conv):
            raise ModelError(f"{name!r} is a {type(table[name]).__name__}, not a conv layer")
    return {name: cast(Conv, table[name]) for name in layers}


def _source_run(
    model: nn.Module, source: Any, graph: Trace, metric: MetricFn
) -> tuple[dict[str, Tensor], dict[str, Tensor], float]:
    """Node values (INPUT: the first conv's input), conv inputs and the metric on the source run."""
    sites = {name: f"{name}:input" for name in graph.order}
    src = capture(model, source, sites=[*graph.order, *sites.values()], metric=metric)
    inputs = {name: src[site] for name, site in sites.items()}
    values = {INPUT: inputs[graph.order[0]], **{name: src[name] for name in graph.order}}
    return values, inputs, float(src.metric or 0.0)


def _scores(
    convs: Mapping[str, Conv],
    graph: Trace,
    grads: Grads,
    moved: Mapping[tuple[str, str], Tensor],
    source_values: Mapping[str, Tensor],
) -> Tensor:
    """[source, target] scores: rows the input node and each conv, columns each conv and the
    output; NaN where a node does not feed a conv (or the output) directly."""
    senders = [INPUT, *graph.order]
    rows = blocks(senders, [graph.values[node].shape[1] for node in senders])
    cols = blocks([*graph.order, OUTPUT], [convs[n].out_channels for n in graph.order] + [1])
    scores = nan_matrix(rows[senders[-1]].stop, cols[OUTPUT].stop, graph.values[INPUT].device)
    for conv in graph.order:
        for node in graph.feeds[conv]:
            channel_scores(
                convs[conv], moved[node, conv], grads.total[conv], scores[rows[node], cols[conv]]
            )
    for node, grad in grads.direct.items():
        diff = source_values[node] - graph.values[node]
        scores[rows[node], -1] = (diff * grad).transpose(0, 1).flatten(1).sum(1)
    return scores


def blocks(names: Sequence[str], sizes: Sequence[int]) -> dict[str, slice]:
    """Consecutive index ranges of the given sizes, by name."""
    ends = list(itertools.accumulate(sizes))
    return {
        name: slice(end - size, end) for name, size, end in zip(names, sizes, ends, strict=True)
    }


def conv_nodes(graph: Trace) -> tuple[list[str], list[str], list[dict]]:
    """Source keys, target keys and node rows; activation: a channel's mean on the base run."""
    nodes = unit_rows(f"{graph.order[0]}:input", "input", _channel_means(graph.values[INPUT]))
    src = [row["key"] for row in nodes]
    tgt = []
    for i, name in enumerate(graph.order):
        rows = unit_rows(name, "channel", _channel_means(graph.values[name]), layer=i)
        nodes += rows
        tgt += [row["key"] for row in rows]
    nodes.append(node_row(NodeId(OUTPUT), "output", site="", label="output"))
    return src + tgt, [*tgt, OUTPUT], nodes


def _channel_means(act: Tensor) -> list[float]:
    return act.detach().transpose(0, 1).flatten(1).mean(1).tolist()


def _image(inputs: Any) -> Tensor:
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point():
        raise InputError(
            "EAP-IG on a conv net interpolates the input, so it must be a float tensor "
            f"(images), got {type(inputs).__name__}"
        )
    return inputs
