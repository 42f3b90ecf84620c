"""The channel graph of a conv net, read off autograd: which node feeds which conv directly, and
the metric's gradients at every node. Edge attribution and edge ablation on conv nets build on it.

Nodes are the outputs of the graph's convs and the first conv's input (the input node, key
`INPUT`). Every pass goes through `circuits.hooks.run`, so no hook outlives it.

`trace` runs the model once with every conv's output cut into a fresh leaf tensor (`cut_run`):
each conv's input is then a function of the leaves of earlier convs (and of the input node)
through the ops between convs only. A vector-Jacobian product from a conv's input tells which
nodes feed it directly (autograd answers None where there is no path), and a second one, with each
channel's cotangent scaled by a random factor, checks that the path is channelwise. The same cut
run gives the metric's gradient along the direct paths from each node to the output (every other
conv output held fixed), and, swept back conv by conv, its total gradient at each conv's output.
`patched_run` runs the model with every conv's output replaced by given values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from circuits.errors import ModelError
from circuits.hooks import run
from circuits.metrics import MetricFn, differentiable, metric_value
from circuits.site import INPUT_SUFFIX, Site

Conv = nn.Conv1d | nn.Conv2d | nn.Conv3d
INPUT = ""  # the input node's key among the nodes (conv names are never empty)


@dataclass(frozen=True)
class Grads:
    """total: conv -> d metric / d output; direct: node -> d metric / d node along paths through no
    other conv of the graph (nodes with no such path are absent)."""

    total: dict[str, Tensor]
    direct: dict[str, Tensor]


@dataclass(frozen=True)
class Trace:
    """The graph on the base run: convs in the order they ran, each node's value (INPUT: the first
    conv's input), each conv's input, the nodes each conv reads directly, EAP's gradients."""

    order: list[str]
    values: dict[str, Tensor]
    inputs: dict[str, Tensor]
    feeds: dict[str, list[str]]
    grads: Grads
    metric: float

    def shared(self, node: str) -> list[str]:
        """The convs that `node` feeds together with other nodes."""
        return [
            conv for conv, senders in self.feeds.items() if node in senders and len(senders) > 1
        ]


@dataclass(frozen=True)
class Run:
    """One cut forward pass: nodes (leaves; INPUT first), each conv's output as computed from its
    input, each conv's input (a copy that only the conv reads), the metric."""

    nodes: dict[str, Tensor]
    real: dict[str, Tensor]
    ins: dict[str, Tensor]
    value: Tensor


def trace(model: nn.Module, inputs: Any, convs: Mapping[str, Conv], metric: MetricFn) -> Trace:
    """The graph, base values and EAP gradients from one cut run on `inputs` (the base run)."""
    run = cut_run(model, inputs, convs, metric)
    grads, feeds = backward(run)
    _check_channelwise(run, feeds)
    order = list(run.ins)
    values = {INPUT: run.ins[order[0]].detach()}
    values.update({name: run.nodes[name].detach() for name in order})
    return Trace(
        order=order,
        values=values,
        inputs={name: x.detach() for name, x in run.ins.items()},
        feeds=feeds,
        grads=grads,
        metric=float(run.value.detach()),
    )


def cut_run(model: nn.Module, inputs: Any, convs: Mapping[str, Conv], metric: MetricFn) -> Run:
    """Run with every conv's output replaced by a leaf, the metric's graph kept for `backward`."""
    nodes: dict[str, Tensor] = {}
    real: dict[str, Tensor] = {}
    ins: dict[str, Tensor] = {}

    def enter(name: str) -> Any:
        def fn(act: Tensor, site: Site) -> Tensor:
            if not ins:  # the first conv to run: its input is the input node
                if not act.requires_grad:
                    raise ModelError(
                        f"the input of {name!r} depends on no float model input or trainable "
                        "parameter, so autograd cannot trace what it feeds; pass the model a "
                        "float tensor"
                    )
                nodes[INPUT] = act
            ins[name] = act.clone()
            return ins[name]

        return fn

    def leave(name: str) -> Any:
        def fn(act: Tensor, site: Site) -> Tensor:
            real[name] = act
            nodes[name] = act.detach().requires_grad_(True)
            return nodes[name].clone()  # later in-place ops must not write into the leaf

        return fn

    fns = {}
    for name in convs:
        fns[name + INPUT_SUFFIX] = enter(name)
        fns[name] = leave(name)
    output = run(model, _track(inputs), replace=fns, grad=True).output
    with torch.enable_grad():
        value = differentiable(metric_value(metric, output))
    return Run(nodes, real, ins, value)


def backward(run: Run) -> tuple[Grads, dict[str, list[str]]]:
    """Direct gradients, then total ones swept from the last conv back: a node's total gradient
    is its direct one plus what flows back into it through each conv it feeds."""
    direct = _vjp(run.value, run.nodes, None)
    running = dict(direct)
    total: dict[str, Tensor] = {}
    feeds: dict[str, list[str]] = {}
    for conv in reversed(run.ins):
        total[conv] = running.get(conv, torch.zeros_like(run.nodes[conv]))
        parts = _vjp(run.real[conv], run.nodes, total[conv])
        feeds[conv] = list(parts)
        for node, g in parts.items():
            running[node] = running[node] + g if node in running else g
    return Grads(total, direct), {conv: feeds[conv] for conv in run.ins}


def _vjp(out: Tensor, nodes: Mapping[str, Tensor], cotangent: Tensor | None) -> dict[str, Tensor]:
    """d <out, cotangent> / d node for each node that `out` depends on (the others are absent)."""
    if not out.requires_grad:
        return {}
    found = torch.autograd.grad(
        out, list(nodes.values()), grad_outputs=cotangent, allow_unused=True, retain_graph=True
    )
    return {name: g for name, g in zip(nodes, found, strict=True) if g is not None}


def _check_channelwise(run: Run, feeds: Mapping[str, list[str]]) -> None:
    """Each conv's input must be a channelwise function of each node feeding it: same channel
    count, and a Jacobian that is block-diagonal over channels."""
    label = {node: repr(node) for node in run.nodes}
    label[INPUT] = f"the input of {next(iter(run.ins))!r}"
    for conv, senders in feeds.items():
        x = run.ins[conv]
        for node in senders:
            if run.nodes[node].shape[1] != x.shape[1]:
                raise ModelError(
                    f"{conv!r} reads {x.shape[1]} channels but {label[node]}, which feeds it "
                    f"directly, has {run.nodes[node].shape[1]}: the path between them changes "
                    "the channel count (a concatenation, a linear layer, a conv left out of "
                    "layers), so their channels cannot be paired. Name every conv on the path "
                    "in layers."
                )
        mixing = _mixing(x, {node: run.nodes[node] for node in senders})
        if mixing:
            raise ModelError(
                f"{label[mixing[0]]} feeds {conv!r} through an op that mixes channels (a linear "
                "layer, a norm over channels, a conv left out of layers), so channel c of one is "
                "not channel c of the other. Channel edges need channelwise ops between convs "
                "(ReLU, batch norm in eval mode, pooling, residual additions); name every conv on "
                "the path in layers."
            )


def _mixing(x: Tensor, leaves: Mapping[str, Tensor]) -> list[str]:
    """The leaves whose Jacobian into `x` mixes channels: a random cotangent at `x` scaled by a
    random factor per channel must pull back to each leaf scaled by the same factors."""
    if not leaves:
        return []
    gen = torch.Generator(device=x.device).manual_seed(0)
    v = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    scale = 1 + torch.rand(x.shape[1], generator=gen, device=x.device, dtype=x.dtype)
    plain, scaled = _vjp(x, leaves, v), _vjp(x, leaves, v * per_channel(scale, x.ndim))
    tol = max(1e-3, 16 * torch.finfo(x.dtype).eps)  # rounding, not mixing
    mixing = []
    for node, g in plain.items():
        want = g * per_channel(scale, g.ndim)
        if not torch.allclose(scaled[node], want, rtol=tol, atol=tol * float(want.abs().max())):
            mixing.append(node)
    return mixing


def per_channel(values: Tensor, ndim: int) -> Tensor:
    """`values` [channel] shaped to broadcast over a [batch, channel, ...] tensor of rank ndim."""
    return values.reshape(1, -1, *[1] * (ndim - 2))


def patched_run(
    model: nn.Module, inputs: Any, outputs: Mapping[str, Tensor], *, stop_at: str | None = None
) -> tuple[Any, dict[str, Tensor]]:
    """The model's output and each conv's input in a run of `inputs` whose conv outputs are
    replaced by `outputs`. With `stop_at` (a conv), the pass ends once that conv's input is
    recorded, and the output is None: the rest of the model would cost time and change nothing."""

    ins = {name: name + INPUT_SUFFIX for name in outputs}
    ran = run(
        model,
        inputs,
        bypass=outputs,  # the convs' own outputs would be replaced: skip computing them
        record=list(ins.values()),
        stop_after=None if stop_at is None else ins[stop_at],
        calls="once" if stop_at is None else "any",
    )
    return ran.output, {
        name: ran.recorded[site] for name, site in ins.items() if site in ran.recorded
    }


def _track(inputs: Any) -> Any:
    """`inputs` with every float tensor a fresh leaf that requires grad (the caller's untouched)."""
    if isinstance(inputs, Tensor):
        return inputs.detach().requires_grad_(True) if inputs.is_floating_point() else inputs
    if isinstance(inputs, tuple | list):
        return type(inputs)(_track(x) for x in inputs)
    if isinstance(inputs, dict):
        return {key: _track(x) for key, x in inputs.items()}
    return inputs
