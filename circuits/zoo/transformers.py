"""Tiny TransformerLens models from a config, on whichever transformer-lens line is installed.

transformer-lens 3.x builds a `HookedTransformer`; 4.x removed it, so there we build a
`TransformerBridge` with `boot_native` (offline, no hub). Weights travel in HookedTransformer's
layout (`blocks.0.attn.W_Q` of shape [head, d_model, d_head]), which `load_weights` maps onto
either class, so one safetensors file serves both lines.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm import tqdm

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
    None picks HookedTransformer where it exists and the bridge otherwise. d_mlp: None gives
    4 * d_model (no MLPs at all with attn_only). seed: the random weights' seed.

    Shapes: tokens [batch, pos] (ids < d_vocab, pos <= n_ctx) -> logits [batch, pos, d_vocab];
    hook_z sites are [batch, pos, n_heads, d_head], the residual stream [batch, pos, d_model].

        model = cc.zoo.tiny_transformer(n_layers=1, d_vocab=20, attn_only=True)
        model(torch.randint(20, (2, 5))).shape              # (2, 5, 20)
        cc.sites(model, torch.randint(20, (1, 5)))          # every hook point and its axes

    Raises:
        ConfigError: a size (n_layers, d_model, n_heads, d_head, d_vocab, n_ctx, d_mlp) is not
            a positive int, seed is not an int >= 0, attn_only is not a bool, act_fn is not a
            string, normalization_type is not None, "LN", "LNPre", "RMS" or "RMSPre", or line is
            not "hooked", "bridge" or None ("hooked" needs transformer-lens 3.x).
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
    """The model's weights in HookedTransformer's layout, whichever class holds them.

    Keys and shapes are HookedTransformer's: `embed.W_E` [d_vocab, d_model],
    `blocks.L.attn.W_Q` [n_heads, d_model, d_head], `blocks.L.attn.W_O` [n_heads, d_head,
    d_model], `blocks.L.mlp.W_in` [d_model, d_mlp], `unembed.W_U` [d_model, d_vocab], ...;
    attention masks and other buffers are left out. The tensors are detached copies.

        weights = cc.zoo.hooked_state_dict(model)
        safetensors.torch.save_file(weights, "model.safetensors")   # loads into either class

    Raises:
        ModelError: `model` is not a TransformerLens model (HookedTransformer or
            TransformerBridge).
    """
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
    """Load HookedTransformer-layout `weights` into `model` (either class); returns the model.

    `model` is a HookedTransformer or TransformerBridge whose config fits the weights (the
    layout is `hooked_state_dict`'s); every weight must be given, none may be left over.

        model = cc.zoo.load_weights(cc.zoo.tiny_transformer(**config), weights)
        twin = cc.zoo.load_weights(cc.zoo.tiny_transformer(line="bridge"),
                                   cc.zoo.hooked_state_dict(hooked_model))

    Raises:
        ModelError: the weights do not fit the model (a missing, unexpected or wrongly shaped
            tensor), e.g. a config with another number of layers.
    """
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
            f"these weights do not fit {type(model).__name__} with config "
            f"{getattr(model, 'cfg', None)}: {err}"
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


def fit(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    steps: int,
    loss_at: Callable[[int], Tensor],
    *,
    desc: str,
    progress: bool,
) -> list[float]:
    """The zoo's training loop: `steps` optimiser steps on `loss_at(step)`, with deterministic
    algorithms on for the loop (and the caller's setting restored); returns each step's loss.
    Same seed, same weights (same machine and torch build)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        losses: list[float] = []
        bar = tqdm(range(steps), disable=not progress, desc=desc)
        for step in bar:
            loss = loss_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
        return losses
    finally:
        torch.use_deterministic_algorithms(deterministic)
