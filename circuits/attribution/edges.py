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

from collections.abc import Mapping
from typing import Any

import einops
import torch
from torch import Tensor, nn

from circuits.capture import ablated, capture
from circuits.hooks import run as hooks_run
from circuits.inputs import batch_size
from circuits.metrics import MetricFn, metric_name, metric_value
from circuits.modelgraph.residual import ResidualGraph, norm_params, norm_vjp
from circuits.options import runs

from .common import IGPath, fold, path_runs
from .methods import EAP
from .result import AttributionResult


def transformer_edges(
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
    """EAP (path=None) or EAP-IG scores for every edge of a TransformerLens model."""
    g = _Graph(model)
    base, source = runs(cfg.direction, clean, corrupt)
    sites = list(dict.fromkeys([*g.sender_sites, *g.grad_sites, *g.act_sites]))
    run = capture(model, base, sites=sites if path is None else g.sender_sites, grads=path is None,
                  metric=metric)  # fmt: skip
    source_value: float | None
    if cfg.direction == "denoise":  # the clean run's values patched into the corrupted run
        found = capture(model, source, sites=g.sender_sites, metric=metric)
        src: Mapping[str, Tensor] = found
        source_value = float(found.metric or 0.0)
    else:
        values, source_value = ablated(model, g.sender_sites, cfg, clean, corrupt,
                                       batch=batch_size(base), metric=metric, like=run)  # fmt: skip
        src = {name: v.expand_as(run[name]) for name, v in values.items()}
    if source_value is None:  # zero, mean, resample: the base input with its embeddings
        # ablated (every other sender follows), so EAP-IG's input edges add up to the difference
        at_source = hooks_run(model, base, replace={g.embed: src[g.embed]}).output
        source_value = float(metric_value(metric, at_source))
    diffs = g.sender_diffs(src, run)
    scores = torch.zeros(len(g.senders), len(g.receivers), dtype=diffs.dtype, device=diffs.device)
    if path is None:
        g.score(run.grads, run, 1, diffs, scores)
    else:
        resid = g.embed
        for grads, acts, k in path_runs(
            model, base, replace=resid, base=run[resid], source=src[resid], path=path,
            metric=metric, grads=g.grad_sites, acts=g.act_sites, max_batch=max_batch,
            show=progress, desc="EAP-IG",
        ):  # fmt: skip
            g.score(grads, acts, k, diffs, scores)
    scores = scores.masked_fill(~g.valid.to(scores.device), float("nan"))
    base_value = float(run.metric or 0.0)
    clean_value, corrupt_value = runs(cfg.direction, base_value, source_value)
    return AttributionResult(
        scores=scores,
        axes=("source", "target"),
        coords={"source": tuple(g.sender_keys), "target": tuple(g.receiver_keys)},
        method="eap" if path is None else "eap-ig",
        metric=metric_name(metric),
        direction=cfg.direction,
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        total=scores[0].nansum().reshape(1),
        expected=torch.tensor([source_value - base_value], device=scores.device),
        node_table=tuple(g.node_rows(run)),
        receivers=g.input_of,
    )


class _Graph(ResidualGraph):
    """The residual-stream graph of one model and how to score the edges between its nodes:
    the sites whose gradients (and activations, for the norms' Jacobians) the scores read."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, "edge attribution")
        layers = range(self.n_layers)
        self.grad_sites = [f"blocks.{ly}.attn.hook_{p}" for ly in layers for p in "qkv"]
        self.grad_sites += [f"blocks.{ly}.mlp.hook_pre" for ly in layers] if self.mlp else []
        self.grad_sites.append(self.last)
        self.act_sites = [f"blocks.{ly}.hook_resid_pre" for ly in layers] if self.norm else []
        if self.norm and self.mlp:
            self.act_sites += [f"blocks.{ly}.hook_resid_mid" for ly in layers]

    def _attn(self, layer: int, name: str) -> Tensor:
        return getattr(self.model.blocks[layer].attn, name).detach()  # type: ignore[no-any-return]

    # -- scores ----------------------------------------------------------------------------
    def sender_diffs(self, src: Mapping[str, Tensor], run: Mapping[str, Tensor]) -> Tensor:
        """[sender, batch, pos, d_model]: each sender's output, source run minus base run."""
        return torch.cat([self.sender_outputs(s, src[s] - run[s]) for s in self.sender_sites])

    def score(
        self,
        grads: Mapping[str, Tensor],
        acts: Mapping[str, Tensor],
        k: int,
        diffs: Tensor,
        scores: Tensor,
    ) -> None:
        """Add diffs . (receiver gradients of one pass, its k variants summed) into `scores`;
        `acts` holds the residual stream before each norm (the norms' Jacobians)."""
        blocks = self.model.blocks
        for ly in range(self.n_layers):
            start = ly * self.recv_per_layer
            senders = 1 + ly * self.per_layer
            resid = acts.get(f"blocks.{ly}.hook_resid_pre")
            for i, p in enumerate("qkv"):
                grad = grads[f"blocks.{ly}.attn.hook_{p}"]
                cot = einops.einsum(
                    grad, self._attn(ly, f"W_{p.upper()}"), "b s h e, h d e -> h b s d"
                )
                cot = self._through_norm(cot, resid, blocks[ly].ln1)
                cols = slice(start + i * self.n_heads, start + (i + 1) * self.n_heads)
                scores[:senders, cols] += _dot(diffs[:senders], fold(cot, k, dim=1))
            if self.mlp:
                grad = grads[f"blocks.{ly}.mlp.hook_pre"]
                w_in = blocks[ly].mlp.W_in.detach()
                cot = einops.einsum(grad, w_in, "b s m, d m -> b s d")[None]
                cot = self._through_norm(
                    cot, acts.get(f"blocks.{ly}.hook_resid_mid"), blocks[ly].ln2
                )
                col = start + 3 * self.n_heads
                n = senders + self.n_heads
                scores[:n, col : col + 1] += _dot(diffs[:n], fold(cot, k, dim=1))
        last = grads[f"blocks.{self.n_layers - 1}.hook_resid_post"][None]
        scores[:, -1:] += _dot(diffs, fold(last, k, dim=1))

    def _through_norm(self, cot: Tensor, x: Tensor | None, module: nn.Module) -> Tensor:
        """Carry cotangents [r, rows, pos, d] on a norm's output back to its input x."""
        if self.norm is None:
            return cot
        assert x is not None
        weight = norm_params(module, self.norm)[0]
        return norm_vjp(x, cot, weight, centre=self.norm.startswith("LN"), eps=self.eps)


def _dot(diffs: Tensor, grads: Tensor) -> Tensor:
    """[senders, receivers]: sum over batch, positions and d_model of diffs[s] * grads[r]."""
    return diffs.flatten(1) @ grads.flatten(1).T
