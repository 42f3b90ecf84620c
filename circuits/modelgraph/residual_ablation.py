"""Edge ablation on a TransformerLens model: run it with only some edges carrying their value, many
variants of the edge set stacked along the batch in one pass.

The model is the residual-stream graph of edge attribution (`circuits.modelgraph.residual`):
senders (the embeddings, each head's output z_h @ W_O[h], each MLP's output) add into the residual
stream, receivers (each head's query, key and value input apart, each MLP, the logits) read it.
Each receiver reads its own copy of the residual stream in which every sender it has no kept edge
from is replaced by its ablated value:

    input(r) = resid - sum over senders s without an edge s -> r of (out_s - ablated_s)

where `resid` and `out_s` come from the ablated run itself, so a sender's output already reflects
the ablation of its own inputs. The copies are fed back at hook_q / hook_k / hook_v (through the
block's norm and W_Q / W_K / W_V), at mlp.hook_pre (through W_in) and at the last
hook_resid_post, so nothing needs split-qkv hooks and both transformer-lens lines work.

This hook-based pass runs the model's own blocks, so it covers every model the graph describes;
`circuits.modelgraph.residual_delta` computes the same runs faster, as changes to a recorded run,
where it reproduces the model's own clean run, and callers fall back to this pass elsewhere.

A keep mask is bool [senders, receivers] (`ResidualGraph.receivers` order); `run` takes k of them
([k, senders, receivers]) and runs the k variants stacked variant-major along the batch (k * B
rows). Nothing before the first receiver any variant cuts off can change, so with the clean run's
activations (`Clean`) the pass resumes from that block's cached `hook_resid_pre`, and with a
metric's positions the final norm and unembedding run only there
(`circuits.adapters.transformer_lens.resume`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import einops
import networkx as nx
import torch
from torch import Tensor, nn

from circuits.adapters.transformer_lens import can_resume, resume
from circuits.errors import InputError
from circuits.hooks import HookFn, run
from circuits.inputs import repeat, split
from circuits.loops import chunks
from circuits.modelgraph.residual import ResidualGraph, norm_forward, norm_params
from circuits.site import Site

# Bytes of stacked variants per pass. A mask that cuts many edges holds a copy of the residual
# stream per sender, and past about this size a larger stack runs no faster on a CPU (measured:
# ACDC's masks on a 4-layer d_model 256 model took 33 s at 64 MiB, 57 s at 512 MiB).
MEMORY = 64 * 2**20


@dataclass(frozen=True)
class Clean:
    """The unablated run a batched ablation resumes from: its inputs, the activations at the
    sender sites and every block's hook_resid_pre (`ResidualAblation.clean_sites`), and the
    positions the metric reads (None: all)."""

    inputs: Any
    acts: Mapping[str, Tensor]
    positions: tuple[int, ...] | None = None


class ResidualAblation(ResidualGraph):
    """The senders and receivers of one TransformerLens model, and runs with edges ablated."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, "edge-level faithfulness")
        self.clean_sites = list(dict.fromkeys(
            [*self.sender_sites, *(f"blocks.{ly}.hook_resid_pre" for ly in range(self.n_layers)),
             self.last]
        ))  # fmt: skip
        # the block each receiver reads in (the logits: the last block's hook_resid_post)
        self.recv_layer = torch.tensor(
            [ly for ly in range(self.n_layers) for _ in range(self.recv_per_layer)]
            + [self.n_layers - 1]
        )
        self.graph_receivers: dict[str, list[int]] = {}  # graph node -> its receiver columns
        for i, node in enumerate(self.receivers):
            of = self.input_of.get(str(node), (str(node), ""))[0]
            self.graph_receivers.setdefault(of, []).append(i)
        self._send = {n: i for i, n in enumerate(self.senders)}
        self._places: dict[tuple[Any, ...], tuple[int | None, list[int], float]] = {}

    def keep(self, g: nx.DiGraph, edges: Iterable[tuple[str, str]] | nx.DiGraph) -> Tensor:
        """keep[s, r]: the edge sender s -> receiver r is kept (`edges`: pairs of keys of g's
        nodes, or a subgraph; an edge into a head keeps its query, key and value inputs)."""
        place = {key: self._place(key, attrs) for key, attrs in g.nodes(data=True)}
        rows: list[int] = []
        cols: list[int] = []
        for u, v in edges.edges if isinstance(edges, nx.DiGraph) else edges:
            (send, _, a), (_, into, b) = place[u], place[v]
            if send is None or not into:
                raise InputError(
                    f"the edge {u!r} -> {v!r} does not run from a sender (embeddings, head, MLP) "
                    "to a receiver (head, MLP, logits) of this model's residual stream"
                )
            if a >= b:
                raise InputError(
                    f"the edge {u!r} -> {v!r} runs backwards: {u!r} writes to the residual stream "
                    f"after {v!r} reads it, so no such edge exists in this model"
                )
            rows += [send] * len(into)
            cols += into
        keep = torch.zeros(len(self.senders), len(self.receivers), dtype=torch.bool)
        keep[rows, cols] = True
        return keep

    def _place(self, key: str, attrs: Mapping[str, Any]) -> tuple[int | None, list[int], float]:
        """A graph node's sender row (None: not a sender), receiver columns and forward order,
        cached by the attributes that decide them."""
        at = (key, attrs.get("kind"), attrs.get("site"), attrs.get("unit", -1))
        if at not in self._places:
            node = self.graph_node(key, attrs)
            self._places[at] = (
                self._send.get(node),
                self.graph_receivers.get(str(node), []),
                self.order(node),
            )
        return self._places[at]

    def without(self, keep: Tensor, cut: Tensor) -> Tensor:
        """The mask `keep` with the edges of the mask `cut` ablated too."""
        return keep & ~cut

    def rows_per_pass(self, clean: Clean, memory: int = MEMORY) -> int:
        """How many variants one stacked pass holds under `memory` bytes."""
        x = clean.acts[self.embed]
        per_variant = 2 * len(self.senders) * x.numel() * x.element_size()
        return max(1, memory // max(1, per_variant))

    def outputs(
        self, clean: Clean, ablated: Mapping[str, Tensor], keeps: Sequence[Tensor] | Tensor,
        *, memory: int = MEMORY, per_pass: int | None = None,
    ) -> Iterator[Any]:  # fmt: skip
        """The output of each variant, run `per_pass` variants at a time (default: as many as
        `memory` bytes hold)."""
        keeps = torch.stack(list(keeps)) if not isinstance(keeps, Tensor) else keeps
        k = per_pass or self.rows_per_pass(clean, memory)
        for part in chunks(len(keeps), k):
            yield from self.run(clean, ablated, keeps[part.start : part.stop])

    def start(self, keep: Tensor) -> int:
        """The first block any of the masks [k, senders, receivers] cuts an edge into; n_layers
        when only edges into the logits are cut (no block needs to run again)."""
        cut = ((~keep) & self.valid.to(keep.device)).any(0).any(0)
        if not bool(cut[:-1].any()):
            return self.n_layers
        return int(self.recv_layer.to(keep.device)[cut].min())

    def run(self, clean: Clean, ablated: Mapping[str, Tensor], keep: Tensor) -> list[Any]:
        """The output of each of the k variants keep[k, senders, receivers] describes (one pass,
        k * B rows); `ablated` holds each sender site's ablated value [B or 1, ...]."""
        keep = keep[None] if keep.ndim == 2 else keep
        k = keep.shape[0]
        batch = int(clean.acts[self.embed].shape[0])
        drop = (~keep).to(clean.acts[self.embed].dtype)
        start = self.start(keep) if can_resume(self.model, clean.inputs) else 0
        state: dict[str, Tensor] = {}
        # per sender in order, out_s - ablated_s: [k * B, p, d], or [B, p, d] where every
        # variant shares it (written before the resumed blocks), or None where no variant cuts it
        diffs: list[Tensor | None] = []
        cuts = (drop.bool() & self.valid.to(drop.device)).any(0).any(1).tolist()  # [senders]

        def diff(site: str, act: Tensor) -> None:
            n = 1 if site == self.embed or not site.endswith("hook_z") else self.n_heads
            if not any(cuts[len(diffs) : len(diffs) + n]):
                diffs.extend([None] * n)
                return
            held = ablated[site].to(act.device)
            moved = (act.reshape(-1, batch, *act.shape[1:]) - held).reshape(act.shape)
            diffs.extend(self.sender_outputs(site, moved).unbind(0))

        def record(act: Tensor, site: Site) -> None:
            state[site.name] = act
            if site.name in ablated:  # a sender site; senders fire in sender order
                diff(site.name, act)

        def reader(cols: slice, resid_site: str, finish: Any) -> HookFn:
            def fn(act: Tensor, site: Site) -> Tensor:
                d = drop[:, : len(diffs), cols].to(act.device)  # [k, s, r]
                pairs = d.any(1).nonzero()  # (variant, receiver) whose input moves
                if not len(pairs):
                    return act
                resid = state[resid_site].unflatten(0, (k, batch))[pairs[:, 0]]
                x = resid - _removed(diffs, d[pairs[:, 0], :, pairs[:, 1]], pairs[:, 0], batch)
                return finish(x, act.clone(), pairs)

            return fn

        fns: dict[str, HookFn] = {}
        for site in self.sender_sites:
            ly = 0 if site == self.embed else int(site.split(".")[1])
            if ly >= start:
                fns[site] = record
            else:  # written before the resumed blocks: as in the clean run, in every variant
                diff(site, clean.acts[site])
        for ly in range(start, self.n_layers):
            fns[f"blocks.{ly}.hook_resid_pre"] = record
            base = ly * self.recv_per_layer
            for i, p in enumerate("qkv"):
                cols = slice(base + i * self.n_heads, base + (i + 1) * self.n_heads)
                fns[f"blocks.{ly}.attn.hook_{p}"] = reader(
                    cols, f"blocks.{ly}.hook_resid_pre", self._qkv(ly, p)
                )
            if self.mlp:
                fns[f"blocks.{ly}.hook_resid_mid"] = record
                col = base + 3 * self.n_heads
                fns[f"blocks.{ly}.mlp.hook_pre"] = reader(
                    slice(col, col + 1), f"blocks.{ly}.hook_resid_mid", self._mlp(ly)
                )
        fns[self.last] = _chain(record, reader(slice(-1, None), self.last, _resid))
        inputs = repeat(clean.inputs, k)
        if start == self.n_layers:  # only the logits read another residual stream
            x = repeat(clean.acts[self.last], k)
            if bool(drop[:, :, -1].any()):
                every = torch.arange(k, device=drop.device)
                cut = _removed(diffs, drop[:, :, -1], every, batch)
                x = (x.unflatten(0, (k, batch)) - cut).flatten(0, 1)
            forward = lambda: resume(self.model, x, start, clean.positions, batch)  # noqa: E731
            return list(run(self.model, inputs, forward=forward).output)
        if start == 0:
            return split(run(self.model, inputs, replace=fns).output, k, batch)
        x = repeat(clean.acts[f"blocks.{start}.hook_resid_pre"], k)
        fns.pop(f"blocks.{start}.hook_resid_pre")
        state[f"blocks.{start}.hook_resid_pre"] = x
        ran = run(self.model, inputs, replace=fns,
                  forward=lambda: resume(self.model, x, start, clean.positions, batch))  # fmt: skip
        return list(ran.output)

    def _qkv(self, layer: int, p: str) -> Any:
        block = self.model.blocks[layer]
        w = getattr(block.attn, f"W_{p.upper()}")
        b = getattr(block.attn, f"b_{p.upper()}")
        params = norm_params(block.ln1, self.norm)

        def finish(x: Tensor, act: Tensor, pairs: Tensor) -> Tensor:
            x = norm_forward(x, self.norm, params, self.eps)  # [pair, B, p, d]
            heads = pairs[:, 1]
            new = einops.einsum(x, w[heads], "n b p d, n d e -> n b p e") + b[heads][:, None, None]
            act.unflatten(0, (-1, x.shape[1]))[pairs[:, 0], :, :, heads] = new
            return act

        return finish

    def _mlp(self, layer: int) -> Any:
        block = self.model.blocks[layer]
        params = norm_params(block.ln2, self.norm)

        def finish(x: Tensor, act: Tensor, pairs: Tensor) -> Tensor:
            x = norm_forward(x, self.norm, params, self.eps)
            new = x @ block.mlp.W_in + block.mlp.b_in
            act.unflatten(0, (-1, x.shape[1]))[pairs[:, 0]] = new
            return act

        return finish


def _removed(diffs: list[Tensor | None], weights: Tensor, variants: Tensor, batch: int) -> Tensor:
    """[n, B, p, d]: for n (variant, receiver) pairs, the sum of the differences of the senders
    cut from that receiver (weights [n, s] in {0, 1}), read from the pair's variant's rows (or
    the rows every variant shares); one gather-add per sender that any pair cuts."""
    out: Tensor | None = None
    for s in weights.any(0).nonzero()[:, 0].tolist():
        d = diffs[s]
        assert d is not None  # computed for every sender some variant cuts
        if out is None:
            out = d.new_zeros(len(variants), batch, *d.shape[1:])
        hit = weights[:, s].nonzero()[:, 0]
        rows = d.unflatten(0, (-1, batch))
        out[hit] += rows[variants[hit]] if rows.shape[0] > 1 else rows[0]
    assert out is not None  # called only where some pair cuts a sender
    return out


def _resid(x: Tensor, act: Tensor, pairs: Tensor) -> Tensor:
    act.unflatten(0, (-1, x.shape[1]))[pairs[:, 0]] = x
    return act


def _chain(first: HookFn, second: HookFn) -> HookFn:
    """One hook that runs `first` (for its side effect) and then `second`."""

    def fn(act: Tensor, site: Site) -> Tensor | None:
        first(act, site)
        return second(act, site)

    return fn
