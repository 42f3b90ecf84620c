"""`run`: the one way circuits runs a model with some activations replaced, recorded or frozen.

    ran = run(model, tokens, replace={"blocks.0.attn.hook_z": zeros}, record=["blocks.1.hook_z"])
    ran.output, ran.recorded["blocks.1.hook_z"], ran.sites["blocks.1.hook_z"].axes

Capture, patching, path patching, attribution, direct effects and faithfulness all run models
through it; every hook it needs is registered by `attach` and removed in `finally`. At each hooked
site, in this order:

1. record: the arriving activation is kept (detached, or connected to the autograd graph with
   `grad=True`; a copy where later in-place ops could rewrite it; `keep` may shrink it first).
2. freeze: the site is held at a value with no gradient: its own (`freeze=[names]`, each call's
   value kept in `frozen` for another run) or one given per call (`freeze={name: values}`, as
   `frozen` holds them). A frozen site may run several times (HookedTransformer's ln1 runs once
   each for queries, keys and values); every call is held.
3. replace: a tensor takes the activation's place, or a function `fn(act, site)` returns the
   replacement (None leaves it unchanged); either is checked for shape, dtype and device.
4. stop: after `stop_after` has run, the forward pass ends there and `output` is None.

A site in `bypass` is a module whose own computation is skipped: each call returns a copy of the
given value (its hooks still see its input and that output). Where a module's output will be
replaced anyway, this saves computing it (a conv's output in a patched conv-net run).

Each other hooked site must run exactly once (`calls="once"`, the default): one that never runs
or runs twice is an error, not a silent no-op or a mix of calls. Every run first checks the
model and the inputs (`circuits.checks`): a module, not on the meta device, batch norm and
dropout in eval mode, a non-empty batch of finite values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from circuits.adapters.torch_module import patched_forward
from circuits.checks import check_inputs, check_model
from circuits.errors import CircuitsError, InputError
from circuits.hooks.attach import HookFn, attach, require_fired, require_once
from circuits.inputs import describe
from circuits.site import Site, SiteRef

Replacement = Tensor | HookFn
Keep = Callable[[Tensor, Site], Tensor]


@dataclass
class Ran:
    """What a run gives back: the output (None if stopped early), the recorded activations, each
    hooked site as it was seen (axes and shape) and how often each site ran.

    For example:

        ran = run(model, tokens, record=["blocks.0.attn.hook_z"])
        ran.fired["blocks.0.attn.hook_z"], ran.sites["blocks.0.attn.hook_z"].axes
    """

    output: Any
    recorded: dict[str, Tensor] = field(default_factory=dict)
    frozen: dict[str, list[Tensor]] = field(default_factory=dict)
    sites: dict[str, Site] = field(default_factory=dict)
    fired: Counter[str] = field(default_factory=Counter)


def run(
    model: nn.Module,
    inputs: Any,
    *,
    replace: Mapping[str, Replacement] | None = None,
    record: Sequence[str] = (),
    keep: Keep | None = None,
    freeze: Sequence[str] | Mapping[str, Sequence[Tensor]] = (),
    stop_after: str | None = None,
    grad: bool = False,
    forward: Callable[[], Any] | None = None,
    calls: Literal["once", "any"] = "once",
    tensors_only: bool = True,
    bypass: Mapping[str, Tensor] | None = None,
) -> Ran:
    """Run `model(inputs)` once with activations recorded and replaced (module docstring).

    keep: applied to each recorded activation as it is stored (select positions, cast, offload).
    freeze: sites held at their own values (a list) or at given ones, call by call (a mapping).
    grad: run with autograd on; recorded activations stay on the graph (one that needs no
        gradient becomes a leaf that does, and the pass goes on from it).
    forward: runs the model instead of `model(inputs)` (a resumed pass over some blocks).
    calls: "once" checks that every hooked site ran exactly once; "any" leaves it to the caller
        (`fired` has the counts). tensors_only: a site carrying a non-tensor is a ModelError.
    bypass: module output sites whose module is not run; each call returns a copy of the value.

    For example:

        ran = run(model, tokens, record=["blocks.0.attn.hook_z"],
                  replace={"blocks.1.attn.hook_z": lambda z, site: z * 0})
        ran.output, ran.recorded["blocks.0.attn.hook_z"]     # logits, [batch, pos, head, d_head]
        run(model, tokens, record=["blocks.0.hook_resid_post"],
            stop_after="blocks.0.hook_resid_post").output    # None: stopped after that site

    Raises:
        ModelError: `model` is not a module, or a site carries a non-tensor (`tensors_only`).
        InputError: the inputs are not tensors, the forward pass fails on them, or a frozen site
            runs more often than the run its values came from.
        SiteNotFoundError: a name is not a site of the model.
        SiteNotFiredError, SiteRepeatedError: with `calls="once"`, a site ran zero or several times.
        ShapeMismatchError: a replacement's shape differs from the activation's.
    """
    check_model(model)
    check_inputs(inputs)
    replace = dict(replace or {})
    bypass = dict(bypass or {})
    once = list(dict.fromkeys([*record, *replace, *bypass, *([stop_after] if stop_after else [])]))
    held = {n: iter(v) for n, v in freeze.items()} if isinstance(freeze, Mapping) else {}
    names = list(dict.fromkeys([*once, *freeze]))
    wanted = set(record)
    ran = Ran(output=None, frozen={n: [] for n in freeze})

    def hook(name: str) -> HookFn:
        new = replace.get(name)

        def fn(act: Any, site: Site) -> Any:
            ran.sites[name] = site
            if not isinstance(act, Tensor):
                return new(act, site) if callable(new) else None
            out = None
            if name in wanted:
                ran.recorded[name], out = _record(act, site, shared[name], grad, keep)
            if name in ran.frozen:
                out = _hold(act, name, held.get(name))
                ran.frozen[name].append(out)
            if new is not None:
                # a given tensor is copied where later in-place ops (out += x) could rewrite it
                out = new(act, site) if callable(new) else new.clone() if shared[name] else new
            if name == stop_after:
                raise _Stop
            return out

        return fn

    with (
        attach(model, {n: hook(n) for n in names}, tensors_only=tensors_only) as (fired, refs),
        _bypassed(refs, bypass),
    ):
        shared = {ref.name: ref.shared for ref in refs}
        with torch.set_grad_enabled(grad):
            try:
                ran.output = forward() if forward is not None else run_model(model, inputs)
            except _Stop:
                ran.output = None
    ran.fired = fired
    require_fired(list(freeze), fired)
    if calls == "once":
        require_once(once, fired)
    elif stop_after is not None and fired[stop_after] == 0:
        require_fired([stop_after], fired)
    return ran


@contextmanager
def _bypassed(refs: Sequence[SiteRef], values: Mapping[str, Tensor]) -> Iterator[None]:
    """Each bypassed site's module returns a copy of its value instead of running."""
    with ExitStack() as stack:
        for ref in refs:
            if ref.name not in values:
                continue
            if ref.io != "output" or ref.hook_point:
                raise InputError(
                    f"bypass takes module outputs (a conv, a block); {ref.name!r} is a hook point "
                    "or a module's input"
                )
            value = values[ref.name]
            stack.enter_context(patched_forward(ref.module, lambda *_, v=value, **__: v.clone()))
        yield


def run_model(model: nn.Module, inputs: Any) -> Any:
    """Call the model on `inputs`; a failure of the forward pass itself becomes an InputError.

    A tuple is spread as positional arguments, a dict as keywords.

    For example:

        run_model(model, tokens)                        # model(tokens)
        run_model(model, {"input_ids": ids})            # model(input_ids=ids)

    Raises:
        InputError: the forward pass raised RuntimeError, ValueError, IndexError, TypeError or
            AssertionError (a wrong shape, dtype or token id); the message says what to check.
    """
    try:
        if isinstance(inputs, dict):
            return model(**inputs)
        if isinstance(inputs, tuple):
            return model(*inputs)
        return model(inputs)
    except (CircuitsError, _Stop):
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as err:
        raise InputError(
            f"the forward pass of {type(model).__name__} failed on {describe(inputs)}: {err}. "
            "Check the input's shape, dtype and range (token ids below d_vocab, at most n_ctx "
            "positions; images as batch x channel x h x w)."
        ) from err


def _hold(act: Tensor, name: str, values: Iterator[Tensor] | None) -> Tensor:
    """The value a frozen site is held at on this call: its own, or the next one given."""
    if values is None:
        return act.detach()
    value = next(values, None)
    if value is None:
        raise InputError(
            f"site {name!r} ran more often than in the run its frozen values came from; freeze "
            "it with values from a run of the same inputs"
        )
    return value.detach()


def _record(
    act: Tensor, site: Site, shared: bool, grad: bool, keep: Keep | None
) -> tuple[Tensor, Tensor | None]:
    """What is kept of `act`, and what the pass goes on with (None: `act` itself)."""
    if grad:
        if not act.requires_grad:  # frozen weights: start the graph here
            act = act.detach().requires_grad_(True)
        # Hand on what we differentiate by, so the rest of the pass depends on it (a reshaped
        # view would otherwise be off the path); a copy where later in-place ops could rewrite it.
        return act, act.clone() if shared else act
    kept = act.detach()
    if keep is not None:
        kept = keep(kept, site)
    if shared and kept.untyped_storage().data_ptr() == act.untyped_storage().data_ptr():
        kept = kept.clone()
    return kept, None


class _Stop(Exception):
    """Ends a run after `stop_after` (raised from its hook, caught around the forward pass)."""
