"""TransformerLens models, both lines: 3.x `HookedTransformer` and 4.x `TransformerBridge`.

Both expose `hook_dict`, a mapping from hook names (`blocks.0.attn.hook_z`) to `HookPoint`
modules. A HookPoint is an identity `nn.Module`, so plain torch forward hooks on it see (and may
replace) the activation; the same hook engine serves both lines and any other module.
"""

from __future__ import annotations

from typing import Any

from torch import nn

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


def is_transformer_lens(model: nn.Module) -> bool:
    """True for HookedTransformer, TransformerBridge and other HookedRootModule-like models."""
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
