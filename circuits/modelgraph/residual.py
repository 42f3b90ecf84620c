"""A TransformerLens model as a residual-stream graph: the facts edge attribution and edge ablation
share.

Senders (upstream nodes) add into the residual stream: the embeddings (`blocks.0.hook_resid_pre`,
token plus position), each head's output z_h @ W_O[h] (`blocks.L.attn.hook_z[h]`) and each MLP's
output (`blocks.L.hook_mlp_out`). Receivers read it through a normalisation (each head's query,
key and value input, `blocks.L.hook_q_input[h]` ..., each MLP's input `blocks.L.hook_mlp_in`) or
directly (the `logits`, through the final norm). In the circuit graph a head's query, key and
value inputs are one node, the head's own key, so graph nodes are the senders plus the logits.
That picture holds for the standard GPT-style block with LayerNorm or RMSNorm, with or without
weights folded (LNPre, RMSPre) or no norm at all; `check_residual_graph` names the architectures
it does not describe. Every key is a `NodeId`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import einops
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from circuits.errors import InputError, ModelError
from circuits.ids import NodeId, node_row

NORMS = (None, "LN", "LNPre", "RMS", "RMSPre")
LOGITS = NodeId("logits")


def check_residual_graph(cfg: Any, what: str) -> None:
    """Raise ModelError if the model's residual stream is not a sum of head, MLP and embedding
    outputs read through one norm per reader; `what` names the caller's analysis."""
    problems = []
    if getattr(cfg, "parallel_attn_mlp", False):
        problems.append("parallel attention and MLP (both read one residual stream)")
    if getattr(cfg, "gated_mlp", False):
        problems.append("gated MLPs")
    if getattr(cfg, "n_key_value_heads", None) not in (None, getattr(cfg, "n_heads", None)):
        problems.append("grouped-query attention")
    if getattr(cfg, "positional_embedding_type", "standard") == "shortformer":
        problems.append("shortformer position embeddings (not in the residual stream)")
    if getattr(cfg, "normalization_type", None) not in NORMS:
        problems.append(f"normalization_type {cfg.normalization_type!r}")
    if problems:
        raise ModelError(
            f"{what} reads the residual stream as the sum of head, MLP and embedding outputs; "
            f"this model has {', '.join(problems)}, which that graph does not describe. "
            "Use attribution_patching or patch on its sites instead."
        )


class ResidualGraph:
    """The senders and receivers of a TransformerLens model's residual stream.

    senders: the embeddings, then per layer each head and the MLP (attention-only models: heads).
    receivers: per layer each head's query, key and value input (head-major within each) and the
    MLP's input, then the logits; `input_of` maps each to its graph node and which input it is.
    valid[s, r]: sender s writes before receiver r reads.
    """

    def __init__(self, model: nn.Module, what: str) -> None:
        cfg: Any = model.cfg
        check_residual_graph(cfg, what)
        self.model: Any = model
        self.n_layers, self.n_heads = int(cfg.n_layers), int(cfg.n_heads)
        self.mlp = not bool(cfg.attn_only)
        self.norm: str | None = cfg.normalization_type
        self.eps = float(getattr(cfg, "eps", 1e-5))
        self.embed = "blocks.0.hook_resid_pre"
        self.last = f"blocks.{self.n_layers - 1}.hook_resid_post"
        self.sender_sites = [self.embed]
        self.senders = [NodeId(self.embed)]
        self.receivers: list[NodeId] = []
        self.input_of: dict[str, tuple[str, str]] = {}  # receiver key -> (graph node, which input)
        for ly in range(self.n_layers):
            z = f"blocks.{ly}.attn.hook_z"
            self.sender_sites.append(z)
            self.senders += [NodeId(z, h) for h in range(self.n_heads)]
            for p in "qkv":
                for h in range(self.n_heads):
                    self._receiver(NodeId(f"blocks.{ly}.hook_{p}_input", h), NodeId(z, h), p)
            if self.mlp:
                mlp = NodeId(f"blocks.{ly}.hook_mlp_out")
                self.sender_sites.append(mlp.site)
                self.senders.append(mlp)
                self._receiver(NodeId(f"blocks.{ly}.hook_mlp_in"), mlp, "mlp")
        self.receivers.append(LOGITS)
        self.per_layer = self.n_heads + int(self.mlp)  # senders per layer
        self.recv_per_layer = 3 * self.n_heads + int(self.mlp)
        self.valid = self._valid()

    @property
    def sender_keys(self) -> list[str]:
        return [str(n) for n in self.senders]

    @property
    def receiver_keys(self) -> list[str]:
        return [str(n) for n in self.receivers]

    def sender_outputs(self, site: str, act: Tensor) -> Tensor:
        """[sender, batch, pos, d_model]: what the senders at `site` write to the residual stream
        given `act` there (or a difference of two runs' activations: it is linear)."""
        if site.endswith("hook_z"):
            w_o = self.model.blocks[int(site.split(".")[1])].attn.W_O.detach()
            return einops.einsum(act, w_o, "b p h e, h e d -> h b p d")
        return act[None]

    def node_rows(self, acts: Mapping[str, Tensor]) -> list[dict[str, Any]]:
        """Graph nodes (senders and the logits); activation: the norm of each node's output in
        the run `acts` holds (the sender sites)."""
        rows = [node_row(NodeId(self.embed), "input", label="embed",
                         activation=float(acts[self.embed].norm()))]  # fmt: skip
        for ly in range(self.n_layers):
            site = f"blocks.{ly}.attn.hook_z"
            norms = self.sender_outputs(site, acts[site]).flatten(1).norm(dim=1).tolist()
            rows += [
                node_row(NodeId(site, h), "head", layer=ly, label=f"a{ly}.h{h}",
                         activation=norms[h])
                for h in range(self.n_heads)
            ]  # fmt: skip
            if self.mlp:
                site = f"blocks.{ly}.hook_mlp_out"
                rows.append(node_row(NodeId(site), "mlp", layer=ly, label=f"m{ly}",
                                     activation=float(acts[site].norm())))  # fmt: skip
        rows.append(node_row(LOGITS, "output", site=self.last, label="logits"))
        return rows

    def graph_node(self, key: str, attrs: Mapping[str, Any]) -> NodeId:
        """The model node a circuit-graph node stands for, read from its kind, site and unit."""
        kind, site, unit = attrs.get("kind"), attrs.get("site"), attrs.get("unit", -1)
        if kind == "input" and site == self.embed:
            return NodeId(self.embed)
        if kind == "head" and site in self.sender_sites and 0 <= unit < self.n_heads:
            return NodeId(str(site), int(unit))
        if kind == "mlp" and site in self.sender_sites:
            return NodeId(str(site))
        if kind == "output":
            return LOGITS
        raise InputError(
            f"node {key!r} ({kind} at {site!r}, unit {unit}) is not a node of this model's "
            "residual-stream graph: edge-level faithfulness on a transformer takes graphs of "
            "embeddings, heads, MLPs and logits at all positions, as cc.attribute(method='eap' or "
            "'eap-ig') builds them"
        )

    def order(self, node: NodeId) -> float:
        """Where a graph node sits in the forward pass: senders write at their layer, the logits
        read after the last (the embeddings at -1); a head's input and output share its layer."""
        if node == LOGITS:
            return float(self.n_layers)
        if node.site == self.embed:
            return -1.0
        return float(node.site.split(".")[1]) + (0.5 if node.site.endswith("mlp_out") else 0.0)

    def _receiver(self, node: NodeId, of: NodeId, part: str) -> None:
        self.receivers.append(node)
        self.input_of[str(node)] = (str(of), part)

    def _valid(self) -> Tensor:
        valid = torch.zeros(len(self.senders), len(self.receivers), dtype=torch.bool)
        for ly in range(self.n_layers):
            start = ly * self.recv_per_layer
            valid[: 1 + ly * self.per_layer, start : start + 3 * self.n_heads] = True
            if self.mlp:
                valid[: 1 + ly * self.per_layer + self.n_heads, start + 3 * self.n_heads] = True
        valid[:, -1] = True
        return valid


def norm_params(module: nn.Module, norm: str | None) -> tuple[Tensor | None, Tensor | None]:
    """A norm module's (weight, bias), None where the norm type has none (LNPre, RMSPre, None)."""
    if norm in (None, "LNPre", "RMSPre"):
        return None, None
    weight = getattr(module, "w", None)
    weight = getattr(module, "weight", None) if weight is None else weight
    bias = getattr(module, "b", None)
    bias = getattr(module, "bias", None) if bias is None else bias
    return (
        None if weight is None else weight.detach(),
        None if bias is None else bias.detach(),
    )


def norm_forward(x: Tensor, norm: str | None, params: tuple[Tensor | None, Tensor | None],
                 eps: float) -> Tensor:  # fmt: skip
    """y = w * u / sqrt(mean(u^2) + eps) + b, u = x - mean(x) for LayerNorm (torch's fused
    kernel), x for RMSNorm."""
    if norm is None:
        return x
    weight, bias = params
    if norm.startswith("LN"):
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    y = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


def norm_vjp(x: Tensor, cot: Tensor, weight: Tensor | None, *, centre: bool, eps: float) -> Tensor:
    """The exact vector-Jacobian product of LayerNorm (centre=True) or RMSNorm at x.

    cot: cotangents on y = norm_forward(x) with any leading axes before x's shape.
    """
    if weight is not None:
        cot = cot * weight
    u = x - x.mean(-1, keepdim=True) if centre else x
    scale = (u.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    unit = u / scale
    grad = (cot - unit * (cot * unit).mean(-1, keepdim=True)) / scale
    return grad - grad.mean(-1, keepdim=True) if centre else grad
