"""Channel-to-channel edge attribution in conv nets (EAP and EAP-IG on the channel graph).

Nodes are the channels of a chain of conv layers (the Distill circuits thread's view). Conv layer
i+1 reads the channels of conv layer i through channelwise functions (ReLU, pooling, per-channel
normalisation), so input channel c of conv i+1 stands for channel c of conv i. The pre-activation
of output channel c' is a sum over input channels, conv(x_c, W[c', c]), so the edge c -> c' has a
first-order effect

    score(c -> c') = sum over batch and positions of conv(diff_c, W[c', c]) * grad_c'

with diff_c the change of the input channel (source run - base run) and grad_c' the gradient of the
metric at the pre-activation. That sum is the gradient of sum(grad * conv(diff, W)) with respect to
W, contracted with W itself, so one weight-gradient per layer scores all its edges (any stride,
padding, dilation or groups). The first conv's input channels are input nodes; the last conv's
channels have an edge to the output, score sum(diff * grad) at its pre-activation.

Restriction: a sequential stack. A residual connection that adds another layer's channels into a
conv's input would mix sources; name a sequential sub-chain with `layers`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from circuits.adapters.torch_module import module_table
from circuits.capture import capture
from circuits.errors import InputError, ModelError, SiteNotFoundError, closest
from circuits.sweeps import metric_name

from .common import Direction, IGPath, Metric, path_runs
from .result import AttributionResult, node_row

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
Conv = nn.Conv1d | nn.Conv2d | nn.Conv3d
OUTPUT = "output"


def conv_edges(
    model: nn.Module,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    path: IGPath | None,
    direction: Direction,
    layers: Sequence[str] | None,
    max_batch: int,
    progress: bool | None,
) -> AttributionResult:
    """EAP (path=None) or EAP-IG channel edge scores along a chain of conv layers."""
    chain = conv_chain(model, layers)
    names = [name for name, _ in chain]
    inputs = [f"{name}:input" for name in names]
    base, source = (clean, corrupt) if direction == "noise" else (corrupt, clean)
    src = capture(model, source, sites=[*inputs, names[-1]], metric=metric)
    run = capture(model, base, sites=[*inputs, *names], grads=path is None, metric=metric)
    if path is None:
        grads = {name: run.grads[name] for name in names}
    else:
        grads = {name: torch.zeros_like(run[name]) for name in names}
        x_base, x_source = _image(base), _image(source)
        for cache, _, k in path_runs(
            model, None, replace=None, base=x_base, source=x_source, path=path, metric=metric,
            sites=names, max_batch=max_batch, show=progress, desc="EAP-IG",
        ):  # fmt: skip
            assert cache is not None
            for name in names:
                g = cache.grads[name]
                grads[name] += g.reshape(k, -1, *g.shape[1:]).sum(0)
    sizes = [conv.in_channels for _, conv in chain] + [chain[-1][1].out_channels]
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    n_src, n_tgt = offsets[-1], offsets[-1] - sizes[0] + 1
    scores = torch.full((n_src, n_tgt), float("nan"), device=run[names[0]].device)
    for i, (name, conv) in enumerate(chain):  # sources: block i; targets: block i + 1
        diff = src[inputs[i]] - run[inputs[i]]
        cols = slice(offsets[i + 1] - sizes[0], offsets[i + 2] - sizes[0])
        scores[offsets[i] : offsets[i + 1], cols] = channel_scores(conv, diff, grads[name])
    last = names[-1]
    out_diff = src[last] - run[last]
    scores[offsets[-2] :, -1] = (out_diff * grads[last]).transpose(0, 1).flatten(1).sum(1)
    base_value, source_value = float(run.metric or 0.0), float(src.metric or 0.0)
    clean_value, corrupt_value = (
        (base_value, source_value) if direction == "noise" else (source_value, base_value)
    )
    src_keys, tgt_keys, nodes = _nodes(chain, run)
    return AttributionResult(
        scores=scores,
        axes=("source", "target"),
        coords={"source": tuple(src_keys), "target": tuple(tgt_keys)},
        method="eap" if path is None else "eap-ig",
        metric=metric_name(metric),
        direction=direction,
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        total=scores[: sizes[0]].nansum().reshape(1),
        expected=torch.tensor([source_value - base_value], device=scores.device),
        node_table=tuple(nodes),
    )


def channel_scores(conv: Conv, diff: Tensor, grad: Tensor) -> Tensor:
    """[in_channel, out_channel] edge scores of one conv layer (NaN where groups cut the pair)."""
    weight = conv.weight.detach()
    leaf = weight.clone().requires_grad_(True)
    with torch.enable_grad():
        out = conv._conv_forward(diff.detach(), leaf, None)
        (wgrad,) = torch.autograd.grad(out, [leaf], grad_outputs=[grad.detach()])
    per = (weight * wgrad).flatten(2).sum(-1)  # [out, in / groups]
    groups = int(conv.groups)
    if groups == 1:
        return per.T
    c_out, c_in = per.shape[0], per.shape[1] * groups
    scores = per.new_full((c_in, c_out), float("nan"))
    o, i = c_out // groups, c_in // groups
    for g in range(groups):
        scores[g * i : (g + 1) * i, g * o : (g + 1) * o] = per[g * o : (g + 1) * o].T
    return scores


def conv_chain(model: nn.Module, layers: Sequence[str] | None) -> list[tuple[str, Conv]]:
    """The conv layers (by module path) whose channels form the graph, checked to chain up."""
    table = module_table(model)
    chain: list[tuple[str, Conv]] = []
    if layers is None:
        chain = [(name, cast(Conv, mod)) for name, mod in table.items() if isinstance(mod, CONVS)]
        if not chain:
            raise ModelError(
                f"{type(model).__name__} has no Conv1d / Conv2d / Conv3d layers and is not a "
                "TransformerLens model, so it has no graph edge attribution knows; use "
                "attribution_patching or integrated_gradients on its sites"
            )
    else:
        if isinstance(layers, str) or not layers:
            raise InputError(
                f"layers must be a non-empty list of conv module paths, got {layers!r}"
            )
        for name in layers:
            if name not in table:
                raise SiteNotFoundError(f"no module {name!r}; {closest(name, table)}")
            if not isinstance(table[name], CONVS):
                raise ModelError(f"{name!r} is a {type(table[name]).__name__}, not a conv layer")
            chain.append((name, cast(Conv, table[name])))
    for (a, first), (b, second) in itertools.pairwise(chain):
        if second.in_channels != first.out_channels:
            raise ModelError(
                f"{b!r} reads {second.in_channels} channels but {a!r} writes "
                f"{first.out_channels}: these layers are not a sequential stack. Pass "
                "layers=[...] naming a chain in which each conv reads the previous one's channels"
            )
    return chain


def _nodes(chain: list[tuple[str, Conv]], run: Any) -> tuple[list[str], list[str], list[dict]]:
    """Source keys, target keys and node rows; activation: a channel's mean on the base run."""
    first = f"{chain[0][0]}:input"
    x = run[first]
    src = [f"{first}[{c}]" for c in range(x.shape[1])]
    nodes = [
        node_row(key, "input", first, unit=c, activation=float(x[:, c].mean()))
        for c, key in enumerate(src)
    ]
    tgt = []
    for i, (name, conv) in enumerate(chain):
        act = run[name]
        keys = [f"{name}[{c}]" for c in range(conv.out_channels)]
        nodes += [
            node_row(key, "channel", name, layer=i, unit=c, activation=float(act[:, c].mean()))
            for c, key in enumerate(keys)
        ]
        tgt += keys
    nodes.append(node_row(OUTPUT, "output", "", label="output"))
    return src + tgt, [*tgt, OUTPUT], nodes


def _image(inputs: Any) -> Tensor:
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point():
        raise InputError(
            "EAP-IG on a conv net interpolates the input, so it must be a float tensor "
            f"(images), got {type(inputs).__name__}"
        )
    return inputs
