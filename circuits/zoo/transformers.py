"""Tiny TransformerLens models from a config, on whichever transformer-lens line is installed.

transformer-lens 3.x builds a `HookedTransformer`; 4.x removed it, so there we build a
`TransformerBridge` with `boot_native` (offline, no hub). Weights travel in HookedTransformer's
layout (`blocks.0.attn.W_Q` of shape [head, d_model, d_head]), which `load_weights` maps onto
either class, so one safetensors file serves both lines.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn

from circuits.checks import check_int
from circuits.errors import ConfigError, ModelError
from circuits.options import check_choice

Line = Literal["hooked", "bridge"]
NORMS = (None, "LN", "LNPre", "RMS", "RMSPre")


def tiny_transformer(
    *,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    d_head: int = 16,
    d_vocab: int = 50,
    n_ctx: int = 64,
    attn_only: bool = False,
    d_mlp: int | None = None,
    act_fn: str = "gelu",
    normalization_type: str | None = "LN",
    seed: int = 0,
    line: Line | None = None,
) -> nn.Module:
    """A small random TransformerLens model in eval mode, built offline from these settings.

    line: "hooked" (HookedTransformer, transformer-lens 3.x only) or "bridge" (TransformerBridge);
    None picks HookedTransformer where it exists and the bridge otherwise.
    """
    for key, value in {
        "n_layers": n_layers,
        "d_model": d_model,
        "n_heads": n_heads,
        "d_head": d_head,
        "d_vocab": d_vocab,
        "n_ctx": n_ctx,
    }.items():
        check_int(value, key)
    check_int(d_mlp, "d_mlp", allow_none=True)
    check_int(seed, "seed", low=0)
    if not isinstance(attn_only, bool):
        raise ConfigError(f"attn_only must be True or False, got {attn_only!r}")
    check_choice(normalization_type, NORMS, "normalization_type")
    if not isinstance(act_fn, str):
        raise ConfigError(f"act_fn must be a TransformerLens activation name, got {act_fn!r}")
    config: dict[str, Any] = dict(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        attn_only=attn_only,
        d_mlp=None if attn_only else (d_mlp or 4 * d_model),
        act_fn=act_fn,
        normalization_type=normalization_type,
        seed=seed,
    )
    line = line or ("hooked" if hooked_available() else "bridge")
    if line == "hooked":
        model = _hooked(config)
    elif line == "bridge":
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge

        model = TransformerBridge.boot_native(TransformerBridgeConfig(**config))  # type: ignore[attr-defined]
    else:
        raise ConfigError(f"line must be 'hooked' or 'bridge', got {line!r}")
    return model.eval()


def hooked_available() -> bool:
    """True where transformer-lens still has HookedTransformer (the 3.x line)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def hooked_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights in HookedTransformer's layout, whichever class holds them."""
    if not isinstance(model, nn.Module) or getattr(model, "cfg", None) is None:
        raise ModelError(
            f"hooked_state_dict takes a TransformerLens model (HookedTransformer or "
            f"TransformerBridge), got {type(model).__name__}"
        )
    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head  # type: ignore[union-attr]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if not _is_bridge(model):
        return {k: v for k, v in state.items() if not k.endswith((".mask", ".IGNORE"))}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        parent, _, part = prefix.rpartition(".")
        if part in ("q", "k", "v") and leaf == "weight":  # [head*d_head, d_model]
            out[f"{parent}.W_{part.upper()}"] = value.reshape(n_heads, d_head, -1).transpose(1, 2)
        elif part in ("q", "k", "v"):
            out[f"{parent}.b_{part.upper()}"] = value.reshape(n_heads, d_head)
        elif part == "o":
            out[f"{parent}.{'W_O' if leaf == 'weight' else 'b_O'}"] = (
                value.T.reshape(n_heads, d_head, -1) if leaf == "weight" else value
            )
        elif part in ("in", "out"):
            out[f"{parent}.{'W' if leaf == 'weight' else 'b'}_{part}"] = (
                value.T if leaf == "weight" else value
            )
        else:
            out[_HOOKED_NAMES.get(key, prefix + (".w" if leaf == "weight" else ".b"))] = (
                value.T if key == "unembed.weight" else value
            )
    return {k: v.contiguous() for k, v in out.items()}


def load_weights(model: nn.Module, weights: dict[str, Tensor]) -> nn.Module:
    """Load HookedTransformer-layout `weights` into `model` (either class); returns the model."""
    if not _is_bridge(model):
        buffers = {k: v for k, v in model.state_dict().items() if k.endswith((".mask", ".IGNORE"))}
        _strict_load(model, {**weights, **buffers})
        return model
    bridge_names = {v: k for k, v in _HOOKED_NAMES.items()}
    out: dict[str, Tensor] = {}
    for key, value in weights.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf in ("W_Q", "W_K", "W_V"):
            out[f"{prefix}.{leaf[-1].lower()}.weight"] = value.transpose(1, 2).flatten(0, 1)
        elif leaf in ("b_Q", "b_K", "b_V"):
            out[f"{prefix}.{leaf[-1].lower()}.bias"] = value.flatten()
        elif leaf in ("W_O", "b_O"):
            out[f"{prefix}.o.{'weight' if leaf == 'W_O' else 'bias'}"] = (
                value.flatten(0, 1).T if leaf == "W_O" else value
            )
        elif leaf in ("W_in", "W_out", "b_in", "b_out"):
            name = "weight" if leaf.startswith("W") else "bias"
            out[f"{prefix}.{leaf[2:]}.{name}"] = value.T if name == "weight" else value
        elif key in bridge_names:
            out[bridge_names[key]] = value.T if key == "unembed.W_U" else value
        else:
            out[f"{prefix}.{'weight' if leaf == 'w' else 'bias'}"] = value
    _strict_load(model, {k: v.contiguous() for k, v in out.items()})
    return model


_HOOKED_NAMES = {  # bridge name -> HookedTransformer name, for the embedding and unembedding
    "embed.weight": "embed.W_E",
    "pos_embed.weight": "pos_embed.W_pos",
    "unembed.weight": "unembed.W_U",
    "unembed.bias": "unembed.b_U",
}


def _is_bridge(model: nn.Module) -> bool:
    return type(model).__name__ == "TransformerBridge"


def _strict_load(model: nn.Module, state: dict[str, Tensor]) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelError(
            f"these weights do not fit {type(model).__name__} with config {model.cfg}: {err}"  # type: ignore[union-attr]
        ) from err


def _hooked(config: dict[str, Any]) -> nn.Module:
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as err:
        raise ConfigError(
            "line='hooked' needs transformer-lens 3.x (HookedTransformer was removed in 4.0); "
            "use line='bridge' or line=None"
        ) from err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with torch.random.fork_rng():  # seed the weights without touching the caller's RNG
            return HookedTransformer(HookedTransformerConfig(**config))
