"""TransformerLens models, both lines: 3.x `HookedTransformer` and 4.x `TransformerBridge`.

Both expose `hook_dict`, a mapping from hook names (`blocks.0.attn.hook_z`) to `HookPoint`
modules. A HookPoint is an identity `nn.Module`, so plain torch forward hooks on it see (and may
replace) the activation; the same hook engine serves both lines and any other module.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

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
    model: Any, resid: Tensor, start: int, positions: Sequence[int] | None, batch: int
) -> list[Tensor]:
    """The logits of a pass resumed from `resid` (blocks.start.hook_resid_pre), cut into runs of
    `batch` rows. With `positions`, the final norm and the unembedding run only there; the logits
    keep their full shape (one position broadcast along the position axis, several placed among
    zeros), so a metric that reads only those positions sees the right values."""
    x = resid
    for block in model.blocks[start:]:
        x = block(x)
        x = x[0] if isinstance(x, tuple) else x
    rows, seq = x.shape[0], x.shape[1]
    if positions is not None:
        x = x[:, list(positions)]
    ln_final = getattr(model, "ln_final", None)
    if ln_final is not None:
        x = ln_final(x)
    logits = model.unembed(x)
    if positions is not None and len(positions) == 1:
        logits = logits.expand(rows, seq, logits.shape[-1])
    elif positions is not None:
        full = logits.new_zeros(rows, seq, logits.shape[-1])
        index = torch.tensor(list(positions), device=logits.device)
        logits = full.index_copy_(1, index, logits)
    return list(logits.split(batch))


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
