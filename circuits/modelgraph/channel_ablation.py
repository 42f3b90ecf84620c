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
one pass; a node's value then reflects the ablation of its own inputs. A conv's patterns run as
one convolution (their inputs side by side, each pattern's weights in its own block) where the
zero blocks cost less than the calls they save. The output reads the nodes that feed it
directly: channel c of each at its run value if its edge to the output is kept, else at its
ablated value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
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
from circuits.modelgraph.channels import INPUT, Conv, patched_run, trace
from circuits.site import Site

# What one more convolution call (and its gathers) costs, in multiply-adds: about 0.15 ms on a
# CPU core. A conv's patterns run as one convolution where the zero blocks that adds cost less.
CALL_MACS = 6_000_000

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
        # a node's row; feeder[sender row, conv row]: the sender's place among the conv's
        # feeding nodes, or -1 (the output: one more row and column)
        self.name_of = {n: i for i, n in enumerate([*self.order, INPUT])}
        self.feeder = np.full((len(self.name_of) + 1,) * 2, -1, dtype=np.int64)
        for conv, senders in self.feeds.items():
            for i, n in enumerate(senders):
                self.feeder[self.name_of[n], self.name_of[conv]] = i
        # every conv's mask [feeders, c', c] lives in one flat buffer: its shape and offset, per
        # row (the rows past the convs', the input's and the output's, are never read)
        self.shapes = np.zeros((len(self.name_of) + 1, 3), dtype=np.int64)
        for i, n in enumerate(self.order):
            layer = self.convs[n]
            self.shapes[i] = len(self.feeds[n]), layer.out_channels, layer.in_channels
        self.sizes = self.shapes.prod(1)
        self.start = np.cumsum(self.sizes) - self.sizes
        self.feeds_out = np.zeros(len(self.name_of) + 1, dtype=bool)  # per row
        self.feeds_out[[self.name_of[n] for n in self.direct]] = True
        self._table: tuple[nx.DiGraph, list[Any], dict[Any, int], np.ndarray, np.ndarray] | None
        self._table = None
        # the sites whose ablated values `run` reads (as for ResidualAblation)
        self.sender_sites = [f"{self.first}:input", *self.order]
        self.clean_sites = self.sender_sites

    def keep(self, g: nx.DiGraph, edges: Iterable[tuple[str, str]] | nx.DiGraph) -> Keep:
        """Which of the model's channel edges are kept: `edges` (pairs of keys of g's nodes, or a
        subgraph: its edges), mapped to index arrays and set in bulk (a circuit has 10^5 edges
        and more)."""
        keys, index, node, unit = self._nodes(g)
        try:
            u, v = _ends(edges, index)
        except KeyError as err:
            raise InputError(f"edge end {err.args[0]!r} is not a node of the graph") from None
        nu, nv = node[u], node[v]
        to_out = nv == len(self.name_of)
        place = self.feeder[nu, nv]
        for bad, why in (
            (to_out & ~self.feeds_out[nu], "{u!r} does not feed the output"),
            (~to_out & (place < 0), "it does not join a node to a conv it feeds directly in this "
             "model; use a graph that cc.attribute built for this model"),
        ):  # fmt: skip
            if bad.any():
                first = np.flatnonzero(bad)[0]
                a, b = keys[u[first]], keys[v[first]]
                raise InputError(f"edge {a!r} -> {b!r}: " + why.format(u=a))
        out = {}
        for n in self.direct:  # edges into the output
            kept = np.zeros(self._channels(n), dtype=bool)
            kept[unit[u[to_out & (nu == self.name_of[n])]]] = True
            out[n] = torch.from_numpy(kept)
        # each edge into a conv set at its offset in the masks' buffer (a conv's row in `node`
        # is its place in `order`; the edges into the output, computed too, are left out)
        dims, start = self.shapes, self.start
        at = start[nv] + (place * dims[nv, 1] + unit[v]) * dims[nv, 2] + unit[u]
        flat = np.zeros(int(self.sizes.sum()), dtype=bool)
        flat[at[~to_out]] = 1
        masks = {n: torch.from_numpy(flat[start[i] : start[i] + self.sizes[i]].reshape(dims[i]))
                 for i, n in enumerate(self.order)}  # fmt: skip
        return masks, out

    def _nodes(self, g: nx.DiGraph) -> tuple[list[Any], dict[Any, int], np.ndarray, np.ndarray]:
        """g's node keys, their index, and per node its row in `feeder` (the output's last) and
        its channel; kept for the graph last asked about (faithfulness asks of one graph)."""
        if self._table is None or self._table[0] is not g or len(self._table[1]) != len(g):
            keys = list(g.nodes)
            node, unit = np.empty(len(keys), dtype=np.int64), np.empty(len(keys), dtype=np.int64)
            for i, a in enumerate(g.nodes.values()):
                kind = a.get("kind")
                site = INPUT if kind == "input" else str(a.get("site"))
                node[i] = len(self.name_of) if kind == "output" else self.name_of[site]
                unit[i] = int(a.get("unit", 0) or 0)
            self._table = (g, keys, {key: i for i, key in enumerate(keys)}, node, unit)
        return self._table[1:]

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
        layout = torch.channels_last
        laid = _layout(held, layout)
        try:  # the pass with every conv output held, in the layout the stacked runs will use
            ins = patched_run(self.model, inputs, {n: laid[n] for n in self.order})[1]
        except InputError:  # an op that needs the default layout, such as x.view(batch, -1)
            layout = torch.contiguous_format
            laid = _layout(held, layout)
            ins = patched_run(self.model, inputs, {n: laid[n] for n in self.order})[1]
        ins[self.first] = laid[INPUT]
        outs = {n: self.convs[n](ins[n]) for n in self.order}
        return Prepared(inputs, laid, _layout(ins, layout), _layout(outs, layout), layout)

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
        plans = [self._plan(keep, base) for keep in keeps]
        owner = [v for v, plan in enumerate(plans) for _ in range(plan.copies)]  # per copy
        first = np.cumsum([0] + [plan.copies for plan in plans]).tolist()  # a variant's copy 0
        batch = _batch(base.inputs)
        xs: dict[str, Tensor] = {}

        def mix(node: str, value: Callable[[int], Tensor]) -> Tensor:
            """The node's value in every copy: held on the channels the copy's plan says."""
            held = base.held[node]
            cut = np.zeros((len(owner), held.shape[1]), dtype=bool)
            for v, plan in enumerate(plans):
                carried = plan.carry.get(node)
                if carried is not None:
                    cut[first[v] : first[v] + len(carried)] = carried == 0
            stacked = (
                value(0).expand(len(owner), *held.shape)
                if len(plans) == 1
                else torch.stack([value(v) for v in owner])
            )
            # written once into a buffer of the copies, images in the runs' layout (`_layout`)
            layout = base.layout if held.ndim == 4 else torch.contiguous_format
            shape = (len(owner) * held.shape[0], *held.shape[1:])
            out = torch.empty(shape, dtype=held.dtype, device=held.device, memory_format=layout)
            into = out.view(len(owner), *held.shape)
            if cut.any():
                where = torch.from_numpy(cut).to(held.device)
                where = where.reshape(len(owner), 1, -1, *[1] * (held.ndim - 2))
                torch.where(where, held, stacked, out=into)
            else:
                into.copy_(stacked)
            return out

        def enter(name: str) -> Any:
            def fn(act: Tensor, site: Site) -> Tensor | None:
                if name == self.first:
                    act = mix(INPUT, lambda v: act[:batch])
                xs[name] = act
                return act

            return fn

        def leave(name: str) -> Any:
            def fn(act: Tensor, site: Site) -> Tensor:
                x = xs[name].reshape(len(owner), batch, *xs[name].shape[1:])
                runs = [self._value(name, base, plan, x[first[v]:]) for v, plan in
                        enumerate(plans)]  # fmt: skip
                return mix(name, lambda v: runs[v])

            return fn

        fns: dict[str, Any] = {}
        for name in self.order:
            fns[f"{name}:input"] = enter(name)
            fns[name] = leave(name)
        # each conv's own output is replaced by `leave`: skip computing it (any value will do)
        skip = {n: v.new_empty(len(owner) * batch, *v.shape[1:]) for n, v in base.none_out.items()}
        out = run(self.model, repeat(base.inputs, len(owner)), replace=fns, bypass=skip).output
        outs = split(out, len(owner), batch)
        return [outs[first[v] + plan.output] for v, plan in enumerate(plans)]

    def _value(self, name: str, base: Prepared, plan: Plan, x: Tensor) -> Tensor:
        """Conv `name`'s output in a variant whose copies of the input x [copy, B, c, ...] start at
        copy 0: its output with every edge cut, plus per pattern of kept feeding nodes a conv with
        the pattern's weights of (the pattern's input - the cut one)."""
        conv, none = self.convs[name], base.none_in[name]
        value = base.none_out[name]
        for term in plan.terms[name]:
            copy, cols = (torch.from_numpy(t).to(x.device) for t in (term.copy, term.cols))
            diff = x[copy, :, cols].transpose(0, 1) - none[:, cols]
            rows, y = _masked(conv, diff, term, cols)
            if rows is None:  # every output channel: one sum, no copy of the cut output
                value = value + y
            else:
                value = value.clone() if value is base.none_out[name] else value
                value.index_add_(1, rows, y)
        return value

    def _plan(self, keep: Keep, base: Prepared) -> Plan:
        """Which copies of the input one variant needs, and what each node carries in each:
        every pattern of kept feeding nodes a conv reads on some channel must be present, on that
        channel, in one copy (ops between convs act channel by channel); the output reads one
        copy with each node feeding it kept or held as its edge to the output says."""
        masks, out = keep
        plan = Plan(copies=0, carry={}, terms={}, output=-1)
        for name in self.order:
            senders = self.feeds[name]
            kept = masks[name].numpy()
            code = kept[0].view(np.uint8)  # [c', c]; bool is 0 or 1
            if len(senders) > 1:
                kind = np.min_scalar_type(2 ** len(senders) - 1)
                code = code.astype(kind)
                for i in range(1, len(senders)):
                    code |= kept[i].astype(kind) << i
            found = []  # per pattern: its code, output rows, input columns, copy per column
            for p in _present(code, len(senders)):
                hit = code == p
                need = hit.any(0)
                rows, cols = np.flatnonzero(hit.any(1)), np.flatnonzero(need)
                pattern = {n: p >> i & 1 for i, n in enumerate(senders)}
                found.append((p, rows, cols, plan.place(pattern, cols, len(need))))
            plan.terms[name] = self._terms(name, code, found, base)
        bits = {n: out[n].numpy().astype(np.int8) for n in self.direct}
        plan.output = plan.place_all(bits)
        return plan

    def _terms(
        self,
        name: str,
        code: np.ndarray,
        found: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
        base: Prepared,
    ) -> list[Term]:
        """A conv's patterns (code, rows, columns, copies) as one term, their columns side by side
        and each one's pairs in its own block, where the zero blocks cost fewer multiply-adds
        than the convolution calls that saves (`CALL_MACS`); else a term each."""
        conv = self.convs[name]
        if len(found) > 1 and conv.groups == 1:
            rows = np.flatnonzero(code.any(1))  # every pattern's output rows
            extra = len(rows) * sum(len(c) for _, _, c, _ in found)
            extra -= sum(len(r) * len(c) for _, r, c, _ in found)
            # multiply-adds per [c', c] pair: the kernel at each output position
            out = base.none_out[name].shape
            per_pair = math.prod(conv.weight.shape[2:]) * math.prod(out) // out[1]
            if extra * per_pair <= (len(found) - 1) * CALL_MACS:
                block = code[rows]
                pairs = np.concatenate([block[:, c] == p for p, _, c, _ in found], axis=1)
                cols, copy = (np.concatenate([f[i] for f in found]) for i in (2, 3))
                return [Term(rows, cols, copy, pairs)]
        return [Term(r, c, copy, code[r][:, c] == p) for p, r, c, copy in found]

    def _channels(self, node: str) -> int:
        conv = self.convs[self.first if node == INPUT else node]
        return conv.in_channels if node == INPUT else conv.out_channels


@dataclass(frozen=True)
class Prepared:
    """The ablated runs' shared part: the inputs, each node's ablated value (INPUT: the first
    conv's input), each conv's input and output with every edge into it cut, and the layout of
    images in the runs (channels-last unless the model needs the default)."""

    inputs: Tensor
    held: dict[str, Tensor]
    none_in: dict[str, Tensor]
    none_out: dict[str, Tensor]
    layout: torch.memory_format


@dataclass(frozen=True)
class Term:
    """One pattern of kept feeding nodes at a conv: the output channels `rows` and input channels
    `cols` it joins, the copy of the input holding it per column, pairs[row, col] where it holds
    (the [c', c] pairs with that pattern)."""

    rows: np.ndarray
    cols: np.ndarray
    copy: np.ndarray
    pairs: np.ndarray


@dataclass
class Plan:
    """One variant's copies of the run: `copies` of them; carry[node][j, channel] 1 where copy j
    carries the node's value in the variant's run, 0 its ablated value, -1 free (rows past the
    array's end are free); terms[conv] its patterns of kept feeding nodes; output: the copy the
    output is read from."""

    copies: int
    carry: dict[str, np.ndarray]
    terms: dict[str, list[Term]]
    output: int

    def place(self, bits: dict[str, int], cols: np.ndarray, width: int) -> np.ndarray:
        """Per channel in `cols` (of `width`), the copy that carries `bits` (one per node) there:
        the first whose nodes carry those bits or are free on that channel, else a new one."""
        fits = np.ones((self.copies + 1, len(cols)), dtype=bool)  # the last row: a new copy
        for n, b in bits.items():
            have = self.carry.get(n)
            if have is not None:  # free (-1) or b: not the other bit
                fits[: len(have)] &= have[:, cols] != 1 - b
        copy = fits.argmax(0)  # the first copy that fits
        self.copies = max(self.copies, int(copy.max(initial=-1)) + 1)
        for n, b in bits.items():
            self._rows(n, width)
            self.carry[n][copy, cols] = b
        return copy

    def place_all(self, bits: dict[str, np.ndarray]) -> int:
        """The first copy whose nodes carry `bits` (per channel) or are free on every channel,
        else a new one; it then carries them."""
        j = 0
        while j < self.copies:
            have = [(self.carry[n], b) for n, b in bits.items() if n in self.carry]
            if all(((h[j] < 0) | (h[j] == b)).all() for h, b in have if j < len(h)):
                break
            j += 1
        self.copies = max(self.copies, j + 1)
        for n, b in bits.items():
            self._rows(n, len(b))
            self.carry[n][j] = b
        return j

    def _rows(self, node: str, width: int) -> None:
        """Grow carry[node] ([copy, width]) to `copies` rows, the new ones free."""
        have = self.carry.get(node)
        if have is None:
            have = np.full((0, width), -1, dtype=np.int8)
        if len(have) < self.copies:
            pad = np.full((self.copies - len(have), have.shape[1]), -1, dtype=np.int8)
            have = np.concatenate([have, pad])
        self.carry[node] = have


def _ends(
    edges: Iterable[tuple[str, str]] | nx.DiGraph, index: dict[Any, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The index arrays (u, v) of `edges`: pairs, or a graph's edges read off its adjacency
    (each node's index repeated by its out-degree; 4x faster than iterating its edge view)."""
    lookup = index.__getitem__
    if isinstance(edges, nx.DiGraph):
        nodes, succ = zip(*edges.adjacency(), strict=True) if len(edges) else ((), ())
        us = np.fromiter(map(lookup, nodes), np.int64, len(nodes))
        degree = np.fromiter(map(len, succ), np.int64, len(succ))
        vs = np.fromiter(map(lookup, chain.from_iterable(succ)), np.int64, int(degree.sum()))
        return np.repeat(us, degree), vs
    ends = np.fromiter(map(lookup, chain.from_iterable(edges)), np.int64)
    u, v = ends.reshape(-1, 2).T
    return u, v


def _layout(values: dict[str, Tensor], layout: torch.memory_format) -> dict[str, Tensor]:
    """Image tensors [B, c, h, w] in `layout`. Channels-last where the model allows it: its own
    ops between convs then run so on the stacked copies (CPU max pooling 20x faster), at no cost
    to a conv."""
    return {n: v.contiguous(memory_format=layout) if v.ndim == 4 else v
            for n, v in values.items()}  # fmt: skip


def _present(code: np.ndarray, bits: int) -> list[int]:
    """The patterns (codes of `bits` bits) other than 0, nothing kept, present in `code`: tested
    one by one where they are few (faster than a count on a large conv), counted where a count
    fits, else sorted (a conv fed by many earlier blocks)."""
    if bits <= 4:
        return [p for p in range(1, 1 << bits) if (code == p).any()]
    found = np.flatnonzero(np.bincount(code.ravel())) if bits <= 16 else np.unique(code)
    return [p for p in found.tolist() if p]


def _masked(conv: Conv, x: Tensor, term: Term, cols: Tensor) -> tuple[Tensor | None, Tensor]:
    """The conv of x [B, term.cols, ...] with only the weights of the term's [c', c] pairs, at
    the output channels it returns (None: all of them); without groups only the term's output
    and input channels are convolved (cols: term.cols as a tensor on x's device)."""
    pairs = torch.from_numpy(term.pairs).to(conv.weight)
    if int(conv.groups) != 1:
        mask = conv.weight.new_zeros(conv.out_channels, conv.in_channels)
        mask[torch.from_numpy(term.rows)[:, None], cols] = pairs
        full = x.new_zeros(x.shape[0], conv.in_channels, *x.shape[2:])
        full[:, cols] = x
        return None, conv._conv_forward(full, conv.weight * _grouped(mask, conv), None)
    weight, rows = conv.weight, None
    if len(term.rows) < conv.out_channels:  # rows are sorted and distinct: else all of them
        rows = torch.from_numpy(term.rows).to(x.device)
        weight = weight.index_select(0, rows)
    weight = weight.index_select(1, cols)  # two index_selects: faster than [rows, cols]
    weight = weight * pairs.reshape(*pairs.shape, *[1] * (conv.weight.ndim - 2))
    return rows, conv._conv_forward(x, weight, None)


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
