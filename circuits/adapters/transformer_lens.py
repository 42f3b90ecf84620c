"""TransformerLens models, both lines: 3.x `HookedTransformer` and 4.x `TransformerBridge`.

Both expose `hook_dict`, a mapping from hook names (`blocks.0.attn.hook_z`) to `HookPoint`
modules. A HookPoint is an identity `nn.Module`, so plain torch forward hooks on it see (and may
replace) the activation; the same hook engine serves both lines and any other module.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from circuits.adapters.torch_module import patched_forward
from circuits.errors import ModelError

# Axis names of TransformerLens activations, by the last part of the hook name and by rank.
_RESID = ("batch", "pos", "d_model")
_HEAD = ("batch", "pos", "head", "d_head")
_HEAD_IN = ("batch", "pos", "head", "d_model")
_PATTERN = ("batch", "head", "query_pos", "key_pos")
_MLP = ("batch", "pos", "d_mlp")
HOOK_AXES: dict[str, tuple[tuple[str, ...], ...]] = {
    "hook_embed": (_RESID,),
    "hook_pos_embed": (_RESID,),
    "hook_resid_pre": (_RESID,),
    "hook_resid_mid": (_RESID,),
    "hook_resid_post": (_RESID,),
    "hook_attn_out": (_RESID,),
    "hook_mlp_out": (_RESID,),
    "hook_mlp_in": (_RESID,),
    "hook_normalized": (_RESID, _HEAD_IN),
    "hook_scale": (("batch", "pos", "one"), ("batch", "pos", "head", "one")),
    "hook_q": (_HEAD,),
    "hook_k": (_HEAD,),
    "hook_v": (_HEAD,),
    "hook_z": (_HEAD,),
    "hook_rot_q": (_HEAD,),
    "hook_rot_k": (_HEAD,),
    "hook_result": (("batch", "pos", "head", "d_model"),),
    "hook_attn_in": (_HEAD_IN,),
    "hook_q_input": (_HEAD_IN,),
    "hook_k_input": (_HEAD_IN,),
    "hook_v_input": (_HEAD_IN,),
    "hook_attn_scores": (_PATTERN,),
    "hook_pattern": (_PATTERN,),
    "hook_pre": (_MLP,),
    "hook_pre_linear": (_MLP,),
    "hook_post": (_MLP,),
}

# Hooks inside a block that come after its attention mixes positions (or on the query side of
# it): a change there at position p reaches no other position before the next block.
_POSITION_LOCAL = {
    "hook_q", "hook_rot_q", "hook_q_input", "hook_z", "hook_result", "hook_attn_out",
    "hook_resid_mid", "hook_mlp_in", "hook_mlp_out", "hook_resid_post",
}  # fmt: skip


def position_local(name: str) -> bool:
    """Whether a change at one position of the block hook `name` stays at that position until
    the block ends (the query side and everything after the attention's mixing)."""
    return name.rsplit(".", 1)[-1] in _POSITION_LOCAL or ".mlp." in name or ".ln2." in name


def is_transformer_lens(model: nn.Module) -> bool:
    """True for HookedTransformer, TransformerBridge and other HookedRootModule-like models.

    A TransformerBridge builds `hook_dict` afresh on each read (a property); that a class has
    such a property is enough here, so a run reads the table once, not once per check.
    """
    if isinstance(getattr(type(model), "hook_dict", None), property):
        return True
    return isinstance(getattr(model, "hook_dict", None), dict)


def hook_table(model: nn.Module) -> dict[str, nn.Module]:
    """The model's hook points by TransformerLens name."""
    return dict(model.hook_dict)  # type: ignore[arg-type]


def canonical_hook_names(model: nn.Module) -> list[str]:
    """One name per distinct hook point, preferring the 3.x names (`hook_z` over `o.hook_in`).

    TransformerBridge registers each hook point under several aliases; listing or capturing
    all of them would repeat every activation.
    """
    chosen: dict[int, str] = {}
    for name, module in hook_table(model).items():
        best = chosen.get(id(module))
        if best is None or _preference(name) < _preference(best):
            chosen[id(module)] = name
    return list(chosen.values())


def hook_conversion(module: nn.Module) -> Any:
    """The bridge's reshaping of a hook's raw tensor (q/k/v/z to heads), or None."""
    return getattr(module, "hook_conversion", None)


def _preference(name: str) -> tuple[bool, int]:
    return (name.rsplit(".", 1)[-1] not in HOOK_AXES, len(name))


def hook_axes(name: str, ndim: int) -> tuple[str, ...] | None:
    """Axis names for the hook `name` holding an activation of rank `ndim`, if known."""
    for axes in HOOK_AXES.get(name.rsplit(".", 1)[-1], ()):
        if len(axes) == ndim:
            return axes
    return None


def can_resume(model: nn.Module, inputs: Any) -> bool:
    """A TransformerLens model (blocks, unembed) run on a [batch, pos] tensor of token ids."""
    return (
        getattr(model, "cfg", None) is not None
        and isinstance(getattr(model, "blocks", None), nn.ModuleList)
        and isinstance(getattr(model, "unembed", None), nn.Module)
        and isinstance(inputs, Tensor)
        and inputs.ndim == 2
        and not inputs.is_floating_point()
    )


def resume(
    model: Any,
    resid: Tensor,
    start: int,
    positions: Sequence[int] | None,
    batch: int,
    past: Mapping[int, tuple[Tensor, Tensor]] | None = None,
    after: Tensor | None = None,
    tail: bool = False,
) -> list[Tensor]:
    """The logits of a pass resumed from `resid` (blocks.start.hook_resid_pre), cut into runs of
    `batch` rows. With `positions`, the final norm and the unembedding run only there; the logits
    keep their full shape (one position broadcast along the position axis, several placed among
    zeros), so a metric that reads only those positions sees the right values.

    past: for a causal model, each block's keys and values ([rows, p, head, d_head], as hook_k
    and hook_v hold them) at the first p positions, which a change at position p or later cannot
    reach; `resid` then holds positions p.. only, and every block attends to those cached keys
    instead of recomputing them (`positions` must all be >= p).

    after: the base run's stream after block `start` at the positions that follow `resid`'s,
    when `resid` holds the only positions a patch in block `start` changes (`position_local`):
    block `start` runs on `resid` alone, and the later blocks on it followed by `after`.

    tail: with `positions`, the last block (if after `start`) computes only its keys and values
    before the first of them, and runs whole from there (no hook may read that block).
    """
    offset = 0 if past is None else past[start][0].shape[1]
    x = resid
    last = len(model.blocks) - 1
    for layer, block in enumerate(model.blocks[start:], start):
        kv = None if past is None else past[layer]
        cut = positions[0] - offset if tail and positions and start < layer == last else 0
        if cut > 0:
            keys, values = _keys_values(block, x[:, :cut])
            kv = (keys, values) if kv is None else (_cat(kv[0], keys), _cat(kv[1], values))
            x, offset = x[:, cut:], offset + cut
        x = _block(block, x, kv)
        if after is not None and layer == start:
            x = torch.cat([x, after], dim=1)
    seq = offset + x.shape[1]
    if positions is not None:
        x = x[:, [p - offset for p in positions]]
    ln_final = getattr(model, "ln_final", None)
    if ln_final is not None:
        x = ln_final(x)
    if positions is None and offset:
        raise ModelError("a pass over a suffix of the positions needs the metric's positions")
    return list(place_logits(model.unembed(x), positions, seq).split(batch))


def place_logits(logits: Tensor, positions: Sequence[int] | None, seq: int) -> Tensor:
    """Logits [rows, P, vocab] computed at `positions` only, in the model's full output shape
    [rows, seq, vocab] (None: they are already): one position broadcast along the position axis,
    several placed among zeros, so a metric that reads only those positions sees the right
    values."""
    if positions is None:
        return logits
    if len(positions) == 1:
        return logits.expand(logits.shape[0], seq, logits.shape[-1])
    full = logits.new_zeros(logits.shape[0], seq, logits.shape[-1])
    return full.index_copy_(1, torch.tensor(list(positions), device=logits.device), logits)


def _block(block: nn.Module, x: Tensor, kv: tuple[Tensor, Tensor] | None) -> Tensor:
    """One block on `x`; with `kv`, `x` is a suffix of the positions and attends to the cached
    keys and values of the prefix: HookedTransformer's own key-value cache entry, or, on a
    TransformerBridge's native attention (which has no cache), `_suffix_attention`."""
    if kv is None:
        out = block(x)
    else:
        native = _native(block)
        if native is not None:
            with patched_forward(
                cast(nn.Module, native), functools.partial(_suffix_attention, native, *kv)
            ):
                out = block(x)
        else:
            out = block(x, past_kv_cache_entry=_cache_entry(*kv))
    return out[0] if isinstance(out, tuple) else out


def _keys_values(block: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    """The block's attention keys and values at the positions of `x` ([rows, pos, head,
    d_head], as its key-value cache holds them), through its own modules."""
    h = block.ln1(x)
    native = _native(block)
    if native is not None:
        shape = (*x.shape[:2], native.n_kv_heads, native.d_head)
        return native.k(h).view(shape), native.v(h).view(shape)
    cfg = block.cfg
    if cfg.use_split_qkv_input or cfg.use_attn_in:
        raise ModelError("the keys alone are computed only from an unsplit attention input")
    _, keys, values = block.attn.calculate_qkv_matrices(h[:, :1], h, h)
    return keys, values


def _native(block: Any) -> Any:
    """A TransformerBridge block's native attention module (None on any other block)."""
    native = getattr(getattr(block, "attn", None), "original_component", None)
    return native if getattr(native, "accepts_pattern_fn", False) else None


def _cat(past: Tensor, now: Tensor) -> Tensor:
    """Cached positions, then new ones, along the position axis."""
    return torch.cat([past.to(now.dtype), now], dim=1)


def _cache_entry(keys: Tensor, values: Tensor) -> Any:
    """HookedTransformer's key-value cache entry holding `keys` and `values`, read-only."""
    try:
        from transformer_lens.cache.key_value_cache_entry import (
            TransformerLensKeyValueCacheEntry as Entry,
        )
    except ImportError:  # transformer-lens before 3.9
        from transformer_lens.past_key_value_caching import (  # type: ignore[no-redef]
            HookedTransformerKeyValueCacheEntry as Entry,
        )
    return Entry(keys, values, frozen=True)


def _suffix_attention(
    attn: Any,
    past_keys: Tensor,
    past_values: Tensor,
    hidden: Tensor,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    pattern_fn: Any = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """A TransformerBridge native attention's forward for queries at positions p.. that attend
    to cached keys and values at positions < p, through the module's own projections (so their
    hooks fire) and its pattern hook. Causal, no rotary, no grouped keys, no padding mask:
    anything else is refused, and the caller falls back to full passes."""
    if attention_mask is not None or attn.rotary is not None or attn.kv_repeats != 1:
        raise ModelError("the cached-prefix attention supports causal, unrotated, ungrouped heads")
    if not attn.causal:
        raise ModelError("the cached-prefix attention needs a causal model")
    rows, seq, _ = hidden.shape
    offset = past_keys.shape[1]

    def heads(t: Tensor, past: Tensor) -> Tensor:
        return _cat(past, t.view(rows, seq, attn.n_heads, attn.d_head)).transpose(1, 2)

    q = attn.q(hidden).view(rows, seq, attn.n_heads, attn.d_head).transpose(1, 2)
    k = heads(attn.k(hidden), past_keys)
    v = heads(attn.v(hidden), past_values)
    scores = _softcap(torch.matmul(q, k.transpose(-2, -1)) / attn.scale, attn)
    mask = attn.causal_mask[offset : offset + seq, : offset + seq]
    pattern = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1).masked_fill(mask, 0.0)
    if pattern_fn is not None:
        pattern = pattern_fn(pattern)
    z = torch.matmul(pattern, v).transpose(1, 2).contiguous().view(rows, seq, -1)
    return attn.o(z), pattern


def _softcap(scores: Tensor, attn: Any) -> Tensor:
    """The attention's soft cap on its scores (Gemma 2), as its own forward applies it."""
    cap = float(getattr(attn, "attn_scores_soft_cap", 0.0) or 0.0)
    return scores if cap <= 0 else cap * torch.tanh(scores / cap)


def check_editable(model: nn.Module, names: Sequence[str]) -> None:
    """Refuse edits at sites whose value a TransformerBridge does not read back (it computes
    attention without them), where patching would silently do nothing."""
    if type(model).__name__ != "TransformerBridge":
        return
    major = int(importlib.metadata.version("transformer-lens").split(".")[0])
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "hook_attn_scores" or (leaf == "hook_pattern" and major < 4):
            raise ModelError(
                f"a TransformerBridge computes attention without reading back edits to "
                f"{leaf} (on this transformer-lens version), so patching {name!r} would silently "
                "do nothing; patch hook_q / hook_k / hook_v or hook_z instead"
            )
