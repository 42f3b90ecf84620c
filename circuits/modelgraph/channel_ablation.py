"""Edge ablation on a conv net's channel graph: run it with only a graph's edges carrying value.

The graph is the channel graph of conv edge attribution (`circuits.modelgraph.channels`): the
input node's channels, each conv's output channels, the output. A conv B reads its input B_in,
which the ops between convs compute channel by channel from the nodes that feed B directly: one
node in a sequential stack, more where skip connections meet. Output channel c' of B is the sum
over input channels c of conv(B_in[c], W[c', c]). With edges ablated, each pair (c, c') reads its
own B_in[c], computed with each feeding node's channel c at its value in the ablated run where the
edge node[c] -> B[c'] is kept, and at its ablated value where it is not:

    B[c'] = b[c'] + sum over c of conv(B_in[c] from (kept: run value, others: ablated), W[c', c])

Pairs that keep the same set of feeding nodes share one input, so each conv costs one forward
pass (conv outputs fixed, one copy per distinct set stacked along the batch) and one masked
convolution per set. Convs go in the order the model runs them, each from the values computed
before it, so a node's value reflects the ablation of its own inputs. The output reads the nodes
that feed it directly: channel c of each at its run value if its edge to the output is kept, else
at its ablated value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import networkx as nx
import torch
from torch import Tensor, nn

from circuits.adapters.torch_module import module_table
from circuits.errors import InputError, ModelError
from circuits.inputs import repeat
from circuits.modelgraph.channels import INPUT, Conv, patched_run, per_channel, trace

Keep = tuple[dict[str, Tensor], dict[str, Tensor]]
"""Per conv, keep[feeding node, c', c] (the edge node[c] -> conv[c'] is kept); per node feeding
the output, keep[c]."""


class ChannelAblation:
    """The conv layers a channel graph spans, how they feed each other, and a run with edges
    ablated."""

    def __init__(self, model: nn.Module, g: nx.DiGraph, clean: Any, metric: Any) -> None:
        self.model = model
        table = module_table(model)
        convs: dict[str, Conv] = {}
        for key, attrs in g.nodes(data=True):
            kind, site = attrs.get("kind"), str(attrs.get("site", ""))
            name = site.removesuffix(":input") if kind == "input" else site
            if kind == "output":
                continue
            if kind not in ("input", "channel") or not isinstance(table.get(name), Conv):
                raise InputError(
                    f"node {key!r} ({kind} at {site!r}) is not a conv channel of this model: "
                    "edge-level faithfulness on a conv net takes channel graphs as "
                    "cc.attribute(method='eap' or 'eap-ig') builds them"
                )
            if kind == "channel":
                convs[name] = cast(Conv, table[name])
        graph = trace(model, clean, convs, metric)
        self.convs, self.order, self.feeds = convs, graph.order, graph.feeds
        self.direct = list(graph.grads.direct)  # the nodes with a path to the output
        self.first = self.order[0]
        bypass = [c for c, senders in self.feeds.items() if INPUT in senders and c != self.first]
        if bypass or INPUT in self.direct:
            raise ModelError(
                f"the input of {self.first!r} also reaches {bypass or 'the output'} along a path "
                "through no other conv (a skip connection from the input), so ablating it needs "
                "a different model input; put the conv before it in the graph (layers=...)"
            )
        # the sites whose ablated values `run` reads (as for ResidualAblation)
        self.sender_sites = [f"{self.first}:input", *self.order]

    def keep(self, g: nx.DiGraph, edges: Iterable[tuple[str, str]]) -> Keep:
        """Which of the model's channel edges are kept: `edges` (keys of g's nodes)."""
        masks = {
            name: torch.zeros(len(self.feeds[name]), conv.out_channels, conv.in_channels,
                              dtype=torch.bool)
            for name, conv in self.convs.items()
        }  # fmt: skip
        out = {n: torch.zeros(self._channels(n), dtype=torch.bool) for n in self.direct}
        nodes = g.nodes
        for u, v in edges:
            a, b = nodes[u], nodes[v]
            node = INPUT if a.get("kind") == "input" else str(a.get("site"))
            if b.get("kind") == "output":
                if node not in out:
                    raise InputError(f"edge {u!r} -> {v!r}: {u!r} does not feed the output")
                out[node][int(a["unit"])] = True
                continue
            target = str(b.get("site"))
            if node not in self.feeds.get(target, []):
                raise InputError(
                    f"edge {u!r} -> {v!r} does not join a node to a conv it feeds directly in "
                    "this model; use a graph that cc.attribute built for this model"
                )
            masks[target][self.feeds[target].index(node), int(b["unit"]), int(a["unit"])] = True
        return masks, out

    @torch.no_grad()
    def run(self, inputs: Any, ablated: dict[str, Tensor], keep: Keep) -> Any:
        """The model's output on `inputs` with every edge outside `keep` ablated."""
        masks, out = keep
        batch = _batch(inputs)
        held = {INPUT: ablated[f"{self.first}:input"], **{n: ablated[n] for n in self.order}}
        held = {n: value.expand(batch, *value.shape[1:]) for n, value in held.items()}
        # each node's value in the ablated run; the input node's is the clean one (nothing feeds it)
        frozen = {n: held[n] for n in self.order}
        values = {INPUT: patched_run(self.model, inputs, frozen, stop_at=self.first)[1][self.first]}
        for name in self.order:
            senders, conv = self.feeds[name], self.convs[name]
            code = torch.zeros(masks[name].shape[1:], dtype=torch.long)  # [c', c]: kept senders
            for i, kept in enumerate(masks[name]):
                code += kept.long() << i
            patterns = code.unique().tolist()
            copies = [
                {n: values[n] if p >> i & 1 else held[n] for i, n in enumerate(senders)}
                for p in patterns
            ]
            ins = (
                [c[INPUT] for c in copies]
                if name == self.first
                else self._inputs(inputs, name, copies, values, held)
            )
            parts = [
                conv._conv_forward(x, conv.weight * _grouped(code == p, conv).to(x.device), None)
                for p, x in zip(patterns, ins, strict=True)
            ]
            total = torch.stack(parts).sum(0)
            bias = 0 if conv.bias is None else per_channel(conv.bias, total.ndim)
            values[name] = total + bias
        outputs = {n: values[n] for n in self.order}
        for n, kept in out.items():
            outputs[n] = torch.where(per_channel(kept.to(values[n].device), values[n].ndim),
                                     values[n], held[n])  # fmt: skip
        return patched_run(self.model, inputs, outputs)[0]

    def _inputs(
        self, inputs: Any, name: str, copies: list[dict[str, Tensor]], values: dict[str, Tensor],
        held: dict[str, Tensor],
    ) -> list[Tensor]:  # fmt: skip
        """The input of conv `name` in each copy: the nodes feeding it at the copy's values, every
        other conv's output at its value so far (held where not computed yet)."""
        stacked = {
            n: torch.cat([c.get(n, values.get(n, held[n])) for c in copies]) for n in self.order
        }
        repeated = repeat(inputs, len(copies))
        moved = patched_run(self.model, repeated, stacked, stop_at=name)[1][name]
        return list(moved.split(len(moved) // len(copies)))

    def _channels(self, node: str) -> int:
        conv = self.convs[self.first if node == INPUT else node]
        return conv.in_channels if node == INPUT else conv.out_channels


def _grouped(mask: Tensor, conv: Conv) -> Tensor:
    """A [c', c] mask over all channel pairs as a mask of the conv's weight (groups included)."""
    groups = int(conv.groups)
    c_out, c_in = mask.shape
    per_in = c_in // groups
    first = (torch.arange(c_out) // (c_out // groups)) * per_in
    mask = mask.gather(1, first[:, None] + torch.arange(per_in)[None])
    return mask.reshape(*mask.shape, *[1] * (conv.weight.ndim - 2))


def _batch(inputs: Any) -> int:
    if not isinstance(inputs, Tensor):
        raise InputError(
            "edge-level faithfulness on a conv net takes its input as one tensor (images), "
            f"got {type(inputs).__name__}"
        )
    return int(inputs.shape[0])
