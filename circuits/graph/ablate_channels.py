"""Edge ablation on a conv net's channel graph: run it with only a graph's edges carrying value.

The graph is the channel graph of conv edge attribution: the input channels of a conv, then each
conv's output channels, then the output. An edge c -> c' into conv B is the slice W[c', c] of B's
weight applied to B's input channel c, so ablating the edges outside the graph replaces, in each
output channel c', the contribution of every input channel c without an edge by the contribution
of that channel's ablated value:

    B(x)[c'] - sum over c without an edge c -> c' of conv(x_c - ablated_c, W[c', c])

which is one extra convolution with the weight masked to the missing edges. An edge from a
channel of the last conv to the output carries that channel's value; without it, the channel takes
its ablated value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import networkx as nx
import torch
from torch import Tensor, nn

from circuits.adapters.torch_module import module_table
from circuits.capture import run_model
from circuits.errors import InputError
from circuits.hooks import HookFn, hooks
from circuits.site import Site

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ChannelAblation:
    """The conv layers a channel graph spans, and a run of the model with edges ablated."""

    def __init__(self, model: nn.Module, g: nx.DiGraph) -> None:
        self.model = model
        self.table: dict[str, Any] = module_table(model)
        layers: dict[str, int] = {}
        for key, attrs in g.nodes(data=True):
            kind, site = attrs.get("kind"), str(attrs.get("site", ""))
            name = site.removesuffix(":input") if kind == "input" else site
            if kind == "output":
                continue
            if kind not in ("input", "channel") or not isinstance(self.table.get(name), CONVS):
                raise InputError(
                    f"node {key!r} ({kind} at {site!r}) is not a conv channel of this model: "
                    "edge-level faithfulness on a conv net takes channel graphs as "
                    "cc.attribute(method='eap' or 'eap-ig') builds them"
                )
            if kind == "channel":
                layers[name] = int(attrs.get("layer", -1))
        self.convs = sorted(layers, key=layers.__getitem__)
        # the site whose channels feed each conv in the graph: its input, or the previous conv
        feeds = [f"{self.convs[0]}:input", *self.convs[:-1]]
        self.sources = dict(zip(self.convs, feeds, strict=True))
        # the sites whose ablated values `run` reads (as for ResidualAblation)
        self.sender_sites = [f"{name}:input" for name in self.convs] + self.convs[-1:]

    def keep(self, g: nx.DiGraph, edges: Iterable[tuple[str, str]]) -> dict[str, Tensor]:
        """Per conv, keep[c', c] (the edge c -> c' is kept); "output": keep[c] of the last conv."""
        table = self.table
        masks = {
            name: torch.zeros(table[name].out_channels, table[name].in_channels, dtype=torch.bool)
            for name in self.convs
        }
        last = self.convs[-1]
        masks["output"] = torch.zeros(masks[last].shape[0], dtype=torch.bool)
        nodes = g.nodes
        for u, v in edges:
            a, b = nodes[u], nodes[v]
            if b.get("kind") == "output":
                if a.get("site") != last:
                    raise InputError(f"edge {u!r} -> {v!r}: only the last conv feeds the output")
                masks["output"][int(a["unit"])] = True
                continue
            target = str(b.get("site"))
            if target not in self.sources or a.get("site") != self.sources[target]:
                raise InputError(
                    f"edge {u!r} -> {v!r} does not join consecutive conv layers (a skip "
                    "connection?); edge-level faithfulness on a conv net covers sequential "
                    "channel graphs only. For a residual net, build and prune the graph with "
                    "cc.attribute, cc.build_graph and cc.prune instead of cc.discover"
                )
            masks[target][int(b["unit"]), int(a["unit"])] = True
        return masks

    def run(self, inputs: Any, ablated: dict[str, Tensor], keep: dict[str, Tensor]) -> Any:
        """The model's output on `inputs` with every edge outside `keep` ablated."""
        table = self.table
        seen: dict[str, Tensor] = {}
        fns: dict[str, HookFn] = {}

        def record(act: Tensor, site: Site) -> None:
            seen[site.name] = act

        def ablate(act: Tensor, site: Site) -> Tensor:
            conv: Any = table[site.name]
            drop = (~keep[site.name]).to(act.device)
            out = act
            if bool(drop.any()):
                delta = seen[f"{site.name}:input"] - ablated[f"{site.name}:input"]
                weight = conv.weight * drop.reshape(*drop.shape, *[1] * (conv.weight.ndim - 2))
                out = out - conv._conv_forward(delta, weight, None)
            if site.name == self.convs[-1]:
                cut = (~keep["output"]).to(act.device).reshape(1, -1, *[1] * (act.ndim - 2))
                out = torch.where(cut, ablated[site.name].expand_as(out), out)
            return out

        for name in self.convs:
            fns[f"{name}:input"] = record
            fns[name] = ablate
        with torch.no_grad(), hooks(self.model, fns):
            return run_model(self.model, inputs)
