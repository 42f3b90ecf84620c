"""A TransformerLens model as a residual-stream graph: the facts edge attribution and edge ablation
share.

Upstream nodes (embeddings, each head's output, each MLP's output) add into the residual stream;
downstream nodes read it through a normalisation (each head's query, key and value, each MLP) or
directly (the logits, through the final norm). That picture holds for the standard GPT-style
block with LayerNorm or RMSNorm, with or without weights folded (LNPre, RMSPre) or no norm at all;
`check_residual_graph` names the architectures it does not describe.
"""

from __future__ import annotations

from typing import Any

import einops
from torch import Tensor, nn

from circuits.errors import ModelError

NORMS = (None, "LN", "LNPre", "RMS", "RMSPre")


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
    """The senders of a TransformerLens model's residual stream and what each one writes.

    Senders, in order: the embeddings (`blocks.0.hook_resid_pre`, token plus position), then per
    layer each head's output z_h @ W_O[h] (key `blocks.L.attn.hook_z[h]`) and the MLP's output
    (`blocks.L.hook_mlp_out`). Edge attribution and edge ablation both build on this.
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
        self.sender_sites, self.sender_keys = [self.embed], [self.embed]
        for ly in range(self.n_layers):
            z = f"blocks.{ly}.attn.hook_z"
            self.sender_sites.append(z)
            self.sender_keys += [f"{z}[{h}]" for h in range(self.n_heads)]
            if self.mlp:
                self.sender_sites.append(f"blocks.{ly}.hook_mlp_out")
                self.sender_keys.append(f"blocks.{ly}.hook_mlp_out")

    def sender_outputs(self, site: str, act: Tensor) -> Tensor:
        """[sender, batch, pos, d_model]: what the senders at `site` write to the residual stream
        given `act` there (or a difference of two runs' activations: it is linear)."""
        if site.endswith("hook_z"):
            w_o = self.model.blocks[int(site.split(".")[1])].attn.W_O.detach()
            return einops.einsum(act, w_o, "b p h e, h e d -> h b p d")
        return act[None]


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
    """y = w * u / sqrt(mean(u^2) + eps) + b, u = x - mean(x) for LayerNorm, x for RMSNorm."""
    if norm is None:
        return x
    u = x - x.mean(-1, keepdim=True) if norm.startswith("LN") else x
    y = u / (u.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    weight, bias = params
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
