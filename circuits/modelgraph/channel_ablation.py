"""Edge ablation on a conv net's channel graph: run it with only a graph's edges carrying value.

The graph is the channel graph of conv edge attribution (`circuits.modelgraph.channels`): the
input node's channels, each conv's output channels, the output. A conv B reads its input B_in,
which the ops between convs compute channel by channel from the nodes that feed B directly: one
node in a sequential stack, more where skip connections meet. Output channel c' of B is the sum
over input channels c of conv(B_in[c], W[c', c]). With edges ablated, each pair (c, c') reads its
own B_in[c], computed with each feeding node's channel c at its value in the ablated run where the
edge node[c] -> B[c'] is kept, and at its ablated value where it is not:

    B[c'] = b[c'] + sum over c of conv(B_in[c] from (kept: run value, others: ablated), W[c', c])

which is conv(B_in with every edge cut) plus, per set of kept feeding nodes, a convolution with
only that set's [c', c] weights of (B_in for that set - B_in with every edge cut):
out = conv(x_abl) + conv_{W*M}(x - x_abl). `prepare` computes every conv's all-cut input and
output once (one pass, every conv output at its ablated value). Pairs that keep the same set of
feeding nodes share one input copy, and the copies every variant needs, with each node's
channels at its run or its ablated value as the copy's plan says, run stacked along the batch in
one pass; a node's value then reflects the ablation of its own inputs. The output reads the nodes
that feed it directly: channel c of each at its run value if its edge to the output is kept, else
at its ablated value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import networkx as nx
import numpy as np
import torch
from torch import Tensor, nn

from circuits.adapters.torch_module import module_table
from circuits.errors import InputError, ModelError
from circuits.hooks import run
from circuits.hooks.variants import DEFAULT_MEMORY as MEMORY
from circuits.inputs import repeat, split
from circuits.loops import chunks
from circuits.modelgraph.channels import INPUT, Conv, patched_run, per_channel, trace
from circuits.site import Site

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
        self.clean_sites = self.sender_sites

    def keep(self, g: nx.DiGraph, edges: Iterable[tuple[str, str]]) -> Keep:
        """Which of the model's channel edges are kept: `edges` (keys of g's nodes), gathered
        into index lists and set in bulk (a circuit has 10^5 edges and more)."""
        masks = {
            name: torch.zeros(len(self.feeds[name]), conv.out_channels, conv.in_channels,
                              dtype=torch.bool)
            for name, conv in self.convs.items()
        }  # fmt: skip
        out = {n: torch.zeros(self._channels(n), dtype=torch.bool) for n in self.direct}
        keys = list(g.nodes)
        name_of = {n: i for i, n in enumerate([*self.order, INPUT])}
        output = len(name_of)  # the output's row and column
        node, unit = np.empty(len(keys), dtype=np.int64), np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            a = g.nodes[key]
            kind = a.get("kind")
            site = INPUT if kind == "input" else str(a.get("site"))
            node[i] = output if kind == "output" else name_of[site]
            unit[i] = int(a.get("unit", 0) or 0)
        # feeder[sender, conv]: the sender's place among the conv's feeding nodes, or -1
        feeder = np.full((output + 1, output + 1), -1, dtype=np.int64)
        for conv, senders in self.feeds.items():
            for i, n in enumerate(senders):
                feeder[name_of[n], name_of[conv]] = i
        index = {key: i for i, key in enumerate(keys)}
        edges = list(edges)
        u, v = np.array([index[x] for e in edges for x in e], dtype=np.int64).reshape(-1, 2).T
        to_out = node[v] == output
        place = feeder[node[u], node[v]]
        for bad, why in (
            (to_out & ~np.isin(node[u], [name_of[n] for n in self.direct]), "{u!r} does not feed "
             "the output"),
            (~to_out & (place < 0), "it does not join a node to a conv it feeds directly in this "
             "model; use a graph that cc.attribute built for this model"),
        ):  # fmt: skip
            if bad.any():
                a, b = edges[int(np.flatnonzero(bad)[0])]
                raise InputError(f"edge {a!r} -> {b!r}: " + why.format(u=a))
        for n in self.direct:  # edges into the output
            out[n][torch.from_numpy(unit[u[to_out & (node[u] == name_of[n])]])] = True
        for name in masks:
            hit = node[v] == name_of[name]
            rows = (place[hit], unit[v[hit]], unit[u[hit]])
            masks[name][tuple(torch.from_numpy(r) for r in rows)] = True
        return masks, out

    def without(self, keep: Keep, cut: Keep) -> Keep:
        """The mask `keep` with the edges of the mask `cut` ablated too."""
        (masks, out), (cut_masks, cut_out) = keep, cut
        return (
            {n: m & ~cut_masks[n] for n, m in masks.items()},
            {n: m & ~cut_out[n] for n, m in out.items()},
        )

    def prepare(self, inputs: Any, ablated: dict[str, Tensor]) -> Prepared:
        """What every ablated run of `inputs` shares: each node's ablated value, and each conv's
        input and output with every edge into it cut (one pass, every conv output held)."""
        batch = _batch(inputs)
        held = {INPUT: ablated[f"{self.first}:input"], **{n: ablated[n] for n in self.order}}
        held = {n: value.expand(batch, *value.shape[1:]) for n, value in held.items()}
        ins = patched_run(self.model, inputs, {n: held[n] for n in self.order})[1]
        ins[self.first] = held[INPUT]
        outs = {n: self.convs[n](ins[n]) for n in self.order}
        return Prepared(inputs, held, ins, outs)

    def outputs(
        self, base: Prepared, ablated: dict[str, Tensor], keeps: Sequence[Keep], *,
        memory: int = MEMORY,
    ) -> Iterator[Any]:  # fmt: skip
        """The output of each variant, as many variants per pass as `memory` bytes hold."""
        size = sum(v.numel() * v.element_size() for v in base.held.values())
        for part in chunks(len(keeps), max(1, memory // (4 * size))):
            yield from self.run(base, [keeps[i] for i in part])

    @torch.no_grad()
    def run(self, base: Prepared, keeps: Sequence[Keep]) -> list[Any]:
        """The output of each variant with only its `keep` edges carrying their value: one pass
        over the copies every variant's plan asks for, stacked along the batch."""
        plans = [self._plan(keep) for keep in keeps]
        copies = [(v, j) for v, plan in enumerate(plans) for j in range(len(plan.assign))]
        batch = _batch(base.inputs)
        xs: dict[str, Tensor] = {}

        def mix(node: str, value: Callable[[int], Tensor]) -> Tensor:
            """The node's value in every copy: held where the copy's plan says so."""
            parts = []
            for v, j in copies:
                carried = plans[v].assign[j].get(node)
                if carried is None:
                    parts.append(value(v))
                    continue
                held = torch.from_numpy(carried == 0).to(base.held[node].device)
                parts.append(torch.where(per_channel(held, base.held[node].ndim),
                                         base.held[node], value(v)))  # fmt: skip
            return torch.cat(parts)

        def enter(name: str) -> Any:
            def fn(act: Tensor, site: Site) -> Tensor | None:
                if name == self.first:
                    act = mix(INPUT, lambda v: act[:batch])
                xs[name] = act
                return act

            return fn

        def leave(name: str) -> Any:
            def fn(act: Tensor, site: Site) -> Tensor:
                x = xs[name].reshape(len(copies), batch, *xs[name].shape[1:])
                runs = [self._value(name, base, plan, x, copies, v) for v, plan in
                        enumerate(plans)]  # fmt: skip
                return mix(name, lambda v: runs[v])

            return fn

        fns: dict[str, Any] = {}
        for name in self.order:
            fns[f"{name}:input"] = enter(name)
            fns[name] = leave(name)
        # each conv's own output is replaced by `leave`: skip computing it
        skip = {name: repeat(base.none_out[name], len(copies)) for name in self.order}
        out = run(self.model, repeat(base.inputs, len(copies)), replace=fns, bypass=skip).output
        outs = split(out, len(copies), batch)
        return [outs[copies.index((v, plan.output))] for v, plan in enumerate(plans)]

    def _value(
        self, name: str, base: Prepared, plan: Plan, x: Tensor, copies: list[tuple[int, int]],
        v: int,
    ) -> Tensor:  # fmt: skip
        """Conv `name`'s output in variant v: its output with every edge cut, plus per pattern of
        kept feeding nodes a conv with the pattern's weights of (its input - the cut one)."""
        conv, none = self.convs[name], base.none_in[name]
        value = base.none_out[name].clone()
        code = torch.from_numpy(plan.codes[name]).to(x.device)
        for p, served in plan.served[name].items():
            diff = torch.zeros_like(none)
            for j, channels in served:
                chans = torch.from_numpy(channels).to(x.device)
                diff[:, chans] = x[copies.index((v, j))][:, chans] - none[:, chans]
            _add_masked(value, conv, diff, code == p)
        return value

    def _plan(self, keep: Keep) -> Plan:
        """Which copies of the input one variant needs, and what each node carries in each:
        every pattern of kept feeding nodes a conv reads on some channel must be present, on that
        channel, in one copy (ops between convs act channel by channel); the output reads one
        copy with each node feeding it kept or held as its edge to the output says."""
        masks, out = keep
        plan = Plan(assign=[], codes={}, served={}, output=-1)
        for name in self.order:
            senders = self.feeds[name]
            kept = masks[name].numpy()
            code = np.zeros(kept.shape[1:], dtype=np.int64)  # [c', c]
            for i in range(len(senders)):
                code |= kept[i].astype(np.int64) << i
            plan.codes[name], plan.served[name] = code, {}
            for p in _present(code, len(senders)):
                if p:
                    need = (code == p).any(0)
                    bits = {n: np.full(need.shape, p >> i & 1, dtype=np.int8)
                            for i, n in enumerate(senders)}  # fmt: skip
                    plan.served[name][p] = plan.place(bits, need, self._channels)
        bits = {n: out[n].numpy().astype(np.int8) for n in self.direct}
        plan.output = plan.place(bits, None, self._channels)[0][0]
        return plan

    def _channels(self, node: str) -> int:
        conv = self.convs[self.first if node == INPUT else node]
        return conv.in_channels if node == INPUT else conv.out_channels


@dataclass(frozen=True)
class Prepared:
    """The ablated runs' shared part: the inputs, each node's ablated value (INPUT: the first
    conv's input), each conv's input and output with every edge into it cut."""

    inputs: Tensor
    held: dict[str, Tensor]
    none_in: dict[str, Tensor]
    none_out: dict[str, Tensor]


@dataclass
class Plan:
    """One variant's copies: assign[j][node] per channel, 1 its value in the variant's run, 0 its
    ablated value, -1 free; codes[conv] the pattern of kept feeding nodes per [c', c]; served[conv]
    [pattern] the (copy, channels) holding that pattern's input; output: the copy the output is
    read from."""

    assign: list[dict[str, np.ndarray]]
    codes: dict[str, np.ndarray]
    served: dict[str, dict[int, list[tuple[int, np.ndarray]]]]
    output: int

    def place(
        self, bits: dict[str, np.ndarray], need: np.ndarray | None, channels: Callable[[str], int]
    ) -> list[tuple[int, np.ndarray]]:
        """Copies (new ones where none fits) whose nodes carry `bits` (0 or 1 per channel) on the
        `need` channels (None: on every channel, in one copy)."""
        found = []
        j = 0
        while need is None or need.any():
            if j == len(self.assign):
                self.assign.append({})
            have = self.assign[j]
            cur = {n: have.get(n, np.full(channels(n), -1, dtype=np.int8)) for n in bits}
            fits = [(cur[n] < 0) | (cur[n] == b) for n, b in bits.items()]
            if need is None:
                if all(f.all() for f in fits):
                    have.update(bits)
                    return [(j, np.ones(0, dtype=bool))]
            else:
                ok = need.copy()
                for f in fits:
                    ok &= f
                if ok.any():
                    for n, b in bits.items():
                        have[n] = np.where(ok, b, cur[n])
                    found.append((j, ok))
                    need = need & ~ok
            j += 1
        return found


def _present(code: np.ndarray, bits: int) -> list[int]:
    """The patterns (codes of `bits` bits) present in `code`: counted where they are few, sorted
    where a count would need 2^bits entries (a conv fed by many earlier blocks)."""
    if bits <= 16:
        return np.flatnonzero(np.bincount(code.ravel())).tolist()
    return np.unique(code).tolist()


def _add_masked(out: Tensor, conv: Conv, x: Tensor, mask: Tensor) -> None:
    """out += conv of x with only the weights of the [c', c] pairs in `mask`; without groups
    only the output and input channels the mask touches are convolved."""
    if int(conv.groups) != 1:
        out += conv._conv_forward(x, conv.weight * _grouped(mask, conv), None)
        return
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    pairs = mask[rows[:, None], cols].to(conv.weight.dtype)
    weight = conv.weight[rows[:, None], cols]
    weight *= pairs.reshape(*pairs.shape, *[1] * (conv.weight.ndim - 2))
    out.index_add_(1, rows, conv._conv_forward(x[:, cols], weight, None))


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
