"""Edge ablation on a TransformerLens model: run it with only a graph's edges carrying their value.

The model is the residual-stream graph of edge attribution (`circuits.modelgraph.residual`):
senders (the embeddings, each head's output z_h @ W_O[h], each MLP's output) add into the residual
stream, receivers (each head's query, key and value, each MLP, the logits) read it. Each receiver
reads its own copy of the residual stream in which every sender it has no graph edge from is
replaced by its ablated value:

    input(r) = resid - sum over senders s without an edge s -> r of (out_s - ablated_s)

where `resid` and `out_s` come from the ablated run itself, so a sender's output already reflects
the ablation of its own inputs. A head's query, key and value share the head's graph edges (the
graph merges them into one edge per sender). The copies are fed back at hook_q / hook_k / hook_v
(through the block's norm and W_Q / W_K / W_V), at mlp.hook_pre (through W_in) and at the last
hook_resid_post, so nothing needs split-qkv hooks and both transformer-lens lines work.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import einops
import networkx as nx
import torch
from torch import Tensor, nn

from circuits.errors import InputError
from circuits.hooks import HookFn, run
from circuits.modelgraph.residual import LOGITS, ResidualGraph, norm_forward, norm_params
from circuits.site import Site


class ResidualAblation(ResidualGraph):
    """The senders and receivers of one TransformerLens model, and a run with edges ablated."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, "edge-level faithfulness")
        heads = [n for n in self.senders if n.unit >= 0]
        mlps = [n for n in self.senders if n.site.endswith("hook_mlp_out")]
        self.ablation_receivers = [*heads, *mlps, LOGITS]

    def keep(self, g: nx.DiGraph, edges: Iterable[tuple[str, str]]) -> Tensor:
        """keep[s, r]: the edge sender s -> receiver r is kept (`edges` are keys of g's nodes)."""
        send = {n: i for i, n in enumerate(self.senders)}
        recv = {n: i for i, n in enumerate(self.ablation_receivers)}
        place = {key: self.graph_node(key, attrs) for key, attrs in g.nodes(data=True)}
        keep = torch.zeros(len(self.senders), len(self.ablation_receivers), dtype=torch.bool)
        for u, v in edges:
            a, b = place[u], place[v]
            if a not in send or b not in recv:
                raise InputError(
                    f"the edge {u!r} -> {v!r} does not run from a sender (embeddings, head, MLP) "
                    "to a receiver (head, MLP, logits) of this model's residual stream"
                )
            if self.order(a) >= self.order(b):
                raise InputError(
                    f"the edge {u!r} -> {v!r} runs backwards: {u!r} writes to the residual stream "
                    f"after {v!r} reads it, so no such edge exists in this model"
                )
            keep[send[a], recv[b]] = True
        return keep

    def run(self, inputs: Any, ablated: dict[str, Tensor], keep: Tensor) -> Any:
        """The model's output on `inputs` with every edge outside `keep` ablated."""
        drop = (~keep).to(next(iter(ablated.values())).dtype)
        state: dict[str, Tensor] = {}
        diffs: list[Tensor] = []  # [b, p, d] per sender in order, out_s - ablated_s
        fns: dict[str, HookFn] = {}

        def record(act: Tensor, site: Site) -> None:
            state[site.name] = act
            if site.name in ablated:  # a sender site; senders fire in sender order
                diffs.extend(self.sender_outputs(site.name, act - ablated[site.name]).unbind(0))

        def reader(cols: slice, resid_site: str, finish: Any) -> HookFn:
            def fn(act: Tensor, site: Site) -> Tensor:
                d = drop[: len(diffs), cols].to(act.device)
                if not bool(d.any()):
                    return act
                delta = einops.einsum(torch.stack(diffs), d, "s b p d, s r -> r b p d")
                return finish(state[resid_site] - delta, act, d.any(0))

            return fn

        for site in self.sender_sites:
            fns[site] = record
        for ly in range(self.n_layers):
            fns[f"blocks.{ly}.hook_resid_pre"] = record
            heads = slice(ly * self.n_heads, (ly + 1) * self.n_heads)
            for p in "qkv":
                fns[f"blocks.{ly}.attn.hook_{p}"] = reader(
                    heads, f"blocks.{ly}.hook_resid_pre", self._qkv(ly, p)
                )
            if self.mlp:
                fns[f"blocks.{ly}.hook_resid_mid"] = record
                col = self.n_layers * self.n_heads + ly
                fns[f"blocks.{ly}.mlp.hook_pre"] = reader(
                    slice(col, col + 1), f"blocks.{ly}.hook_resid_mid", self._mlp(ly)
                )
        fns[self.last] = _chain(record, reader(slice(-1, None), self.last, _resid))
        return run(self.model, inputs, replace=fns).output

    def _qkv(self, layer: int, p: str) -> Any:
        block = self.model.blocks[layer]
        w = getattr(block.attn, f"W_{p.upper()}")
        b = getattr(block.attn, f"b_{p.upper()}")
        params = norm_params(block.ln1, self.norm)

        def finish(x: Tensor, act: Tensor, changed: Tensor) -> Tensor:
            x = norm_forward(x, self.norm, params, self.eps)  # [head, b, p, d]
            new = einops.einsum(x, w, "h b p d, h d e -> b p h e") + b
            return torch.where(changed.to(act.device)[:, None], new, act)

        return finish

    def _mlp(self, layer: int) -> Any:
        block = self.model.blocks[layer]
        params = norm_params(block.ln2, self.norm)

        def finish(x: Tensor, act: Tensor, changed: Tensor) -> Tensor:
            x = norm_forward(x[0], self.norm, params, self.eps)
            return x @ block.mlp.W_in + block.mlp.b_in

        return finish


def _resid(x: Tensor, act: Tensor, changed: Tensor) -> Tensor:
    return x[0]


def _chain(first: HookFn, second: HookFn) -> HookFn:
    """One hook that runs `first` (for its side effect) and then `second`."""

    def fn(act: Tensor, site: Site) -> Tensor | None:
        first(act, site)
        return second(act, site)

    return fn
