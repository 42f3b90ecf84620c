"""Edge attribution on TransformerLens models: EAP (Syed et al. 2023), EAP-IG (Hanna et al. 2024).

The residual stream makes a transformer a graph. Upstream nodes write to it: the embeddings
(`blocks.0.hook_resid_pre`, token plus position), each head's output z_h @ W_O[h] (computed from
hook_z and the weights, so no `hook_result` is needed) and each MLP's output. Downstream nodes read
it: each head's query, key and value input, each MLP's input and the logits (the final residual).
A receiver's input is the sum of the outputs written before it, so the effect of an edge to first
order is (upstream output difference) . (gradient of the metric with respect to the receiver's
input), summed over batch and positions.

Receiver gradients come without split-qkv hooks: the gradient at hook_q / hook_k / hook_v (and
mlp.hook_pre) is carried back through that head's W_Q / W_K / W_V (W_in), then through the
LayerNorm before it with its exact Jacobian at the run's own residual stream (LN, LNPre, RMS and
RMSPre); the logits' receiver gradient is the one at the last block's hook_resid_post.

EAP takes the gradient at the base run (the clean run with direction="noise"). EAP-IG averages the
receiver gradients over `steps` points on the straight path between the two runs' embeddings
(`blocks.0.hook_resid_pre`); the scores of the embedding's edges then add up to the metric
difference (integrated gradients at the input), which `completeness_gap` reports.
Not covered: parallel attention + MLP blocks, gated MLPs, grouped-query attention, shortformer
position embeddings (ModelError).
"""

from __future__ import annotations

from typing import Any

import einops
import torch
from torch import Tensor, nn

from circuits.adapters.residual import ResidualGraph, norm_params, norm_vjp
from circuits.cache import ActivationCache
from circuits.capture import capture
from circuits.sweeps import metric_name

from .common import Direction, IGPath, Metric, path_runs
from .result import AttributionResult, node_row

LOGITS = "logits"


def transformer_edges(
    model: nn.Module,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    path: IGPath | None,
    direction: Direction,
    max_batch: int,
    progress: bool | None,
) -> AttributionResult:
    """EAP (path=None) or EAP-IG scores for every edge of a TransformerLens model."""
    g = _Graph(model)
    base, source = (clean, corrupt) if direction == "noise" else (corrupt, clean)
    src = capture(model, source, sites=g.sender_sites, metric=metric)
    sites = list(dict.fromkeys([*g.sender_sites, *g.grad_sites, *g.act_sites]))
    run = capture(model, base, sites=sites if path is None else g.sender_sites, grads=path is None,
                  metric=metric)  # fmt: skip
    diffs = g.sender_diffs(src, run)
    scores = torch.zeros(g.n_senders, g.n_receivers, dtype=diffs.dtype, device=diffs.device)
    if path is None:
        g.score(run, 1, diffs, scores)
    else:
        resid = g.embed
        for cache, _, k in path_runs(
            model, base, replace=resid, base=run[resid], source=src[resid], path=path,
            metric=metric, sites=[*g.grad_sites, *g.act_sites], max_batch=max_batch,
            show=progress, desc="EAP-IG",
        ):  # fmt: skip
            assert cache is not None
            g.score(cache, k, diffs, scores)
    scores = scores.masked_fill(~g.valid.to(scores.device), float("nan"))
    base_value, source_value = float(run.metric or 0.0), float(src.metric or 0.0)
    clean_value, corrupt_value = (
        (base_value, source_value) if direction == "noise" else (source_value, base_value)
    )
    return AttributionResult(
        scores=scores,
        axes=("source", "target"),
        coords={"source": tuple(g.sender_keys), "target": tuple(g.receiver_keys)},
        method="eap" if path is None else "eap-ig",
        metric=metric_name(metric),
        direction=direction,
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        total=scores[0].nansum().reshape(1),
        expected=torch.tensor([source_value - base_value], device=scores.device),
        node_table=tuple(g.node_rows(run)),
        receivers=g.receiver_map(),
    )


class _Graph(ResidualGraph):
    """The nodes of one TransformerLens model and how to score the edges between them.

    Senders: those of `ResidualGraph`. Receivers: per layer the heads' queries, keys and values
    (head-major within each), its MLP input; then the logits.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, "edge attribution")
        self.per_layer = self.n_heads + int(self.mlp)
        self.n_senders = len(self.sender_keys)
        self.recv_per_layer = 3 * self.n_heads + int(self.mlp)
        self.n_receivers = self.n_layers * self.recv_per_layer + 1
        layers = range(self.n_layers)
        self.grad_sites = [f"blocks.{ly}.attn.hook_{p}" for ly in layers for p in "qkv"]
        self.grad_sites += [f"blocks.{ly}.mlp.hook_pre" for ly in layers] if self.mlp else []
        self.grad_sites.append(self.last)
        self.act_sites = [f"blocks.{ly}.hook_resid_pre" for ly in layers] if self.norm else []
        if self.norm and self.mlp:
            self.act_sites += [f"blocks.{ly}.hook_resid_mid" for ly in layers]
        self.valid = self._valid()

    def _attn(self, layer: int, name: str) -> Tensor:
        return getattr(self.model.blocks[layer].attn, name).detach()  # type: ignore[no-any-return]

    @property
    def receiver_keys(self) -> list[str]:
        keys = []
        for ly in range(self.n_layers):
            keys += [f"blocks.{ly}.hook_{p}_input[{h}]" for p in "qkv" for h in range(self.n_heads)]
            keys += [f"blocks.{ly}.hook_mlp_in"] if self.mlp else []
        return [*keys, LOGITS]

    def receiver_map(self) -> dict[str, tuple[str, str]]:
        """Receiver key -> (the graph node it is an input of, which input)."""
        out = {}
        for ly in range(self.n_layers):
            for p in "qkv":
                for h in range(self.n_heads):
                    out[f"blocks.{ly}.hook_{p}_input[{h}]"] = (f"blocks.{ly}.attn.hook_z[{h}]", p)
            if self.mlp:
                out[f"blocks.{ly}.hook_mlp_in"] = (f"blocks.{ly}.hook_mlp_out", "mlp")
        return out

    def node_rows(self, run: ActivationCache) -> list[dict[str, Any]]:
        """Graph nodes; activation: the norm of the node's output on the base run."""
        rows = [node_row(self.embed, "input", self.embed, label="embed",
                         activation=float(run[self.embed].norm()))]  # fmt: skip
        for ly in range(self.n_layers):
            site = f"blocks.{ly}.attn.hook_z"
            norms = self.sender_outputs(site, run[site]).flatten(1).norm(dim=1).tolist()
            rows += [
                node_row(f"{site}[{h}]", "head", site, layer=ly, unit=h, label=f"a{ly}.h{h}",
                         activation=norms[h])
                for h in range(self.n_heads)
            ]  # fmt: skip
            if self.mlp:
                site = f"blocks.{ly}.hook_mlp_out"
                rows.append(node_row(site, "mlp", site, layer=ly, label=f"m{ly}",
                                     activation=float(run[site].norm())))  # fmt: skip
        rows.append(node_row(LOGITS, "output", self.last, label="logits"))
        return rows

    def _valid(self) -> Tensor:
        """valid[s, r]: sender s writes to the residual stream before receiver r reads it."""
        valid = torch.zeros(self.n_senders, self.n_receivers, dtype=torch.bool)
        for ly in range(self.n_layers):
            start = ly * self.recv_per_layer
            valid[: 1 + ly * self.per_layer, start : start + 3 * self.n_heads] = True
            if self.mlp:
                valid[: 1 + ly * self.per_layer + self.n_heads, start + 3 * self.n_heads] = True
        valid[:, -1] = True
        return valid

    # -- scores ----------------------------------------------------------------------------
    def sender_diffs(self, src: ActivationCache, run: ActivationCache) -> Tensor:
        """[sender, batch, pos, d_model]: each sender's output, source run minus base run."""
        return torch.cat([self.sender_outputs(s, src[s] - run[s]) for s in self.sender_sites])

    def score(self, cache: ActivationCache, k: int, diffs: Tensor, scores: Tensor) -> None:
        """Add diffs . (receiver gradients of one pass, its k variants summed) into `scores`."""
        blocks = self.model.blocks
        for ly in range(self.n_layers):
            start = ly * self.recv_per_layer
            senders = 1 + ly * self.per_layer
            resid = cache.get(f"blocks.{ly}.hook_resid_pre")
            for i, p in enumerate("qkv"):
                grad = cache.grads[f"blocks.{ly}.attn.hook_{p}"]
                cot = einops.einsum(
                    grad, self._attn(ly, f"W_{p.upper()}"), "b s h e, h d e -> h b s d"
                )
                cot = self._through_norm(cot, resid, blocks[ly].ln1)
                cols = slice(start + i * self.n_heads, start + (i + 1) * self.n_heads)
                scores[:senders, cols] += _dot(diffs[:senders], _fold(cot, k))
            if self.mlp:
                grad = cache.grads[f"blocks.{ly}.mlp.hook_pre"]
                w_in = blocks[ly].mlp.W_in.detach()
                cot = einops.einsum(grad, w_in, "b s m, d m -> b s d")[None]
                cot = self._through_norm(
                    cot, cache.get(f"blocks.{ly}.hook_resid_mid"), blocks[ly].ln2
                )
                col = start + 3 * self.n_heads
                n = senders + self.n_heads
                scores[:n, col : col + 1] += _dot(diffs[:n], _fold(cot, k))
        last = cache.grads[f"blocks.{self.n_layers - 1}.hook_resid_post"][None]
        scores[:, -1:] += _dot(diffs, _fold(last, k))

    def _through_norm(self, cot: Tensor, x: Tensor | None, module: nn.Module) -> Tensor:
        """Carry cotangents [r, rows, pos, d] on a norm's output back to its input x."""
        if self.norm is None:
            return cot
        assert x is not None
        weight = norm_params(module, self.norm)[0]
        return norm_vjp(x, cot, weight, centre=self.norm.startswith("LN"), eps=self.eps)


def _fold(t: Tensor, k: int) -> Tensor:
    """[r, k * B, ...] -> [r, B, ...]: sum the k variants of a pass."""
    return einops.reduce(t, "r (k b) ... -> r b ...", "sum", k=k)


def _dot(diffs: Tensor, grads: Tensor) -> Tensor:
    """[senders, receivers]: sum over batch, positions and d_model of diffs[s] * grads[r]."""
    return diffs.flatten(1) @ grads.flatten(1).T
