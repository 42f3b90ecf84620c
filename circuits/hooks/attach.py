"""Hook registration: every hook circuits puts on a model is registered here and removed here.

Hooks are global state on the model. `attach` registers plain torch forward (or forward-pre) hooks
for a mapping of site name -> function, yields, and removes every handle in `finally`, so no hook
survives an exception in the forward pass, in a hook function or in the caller's code. The library
runs models through `circuits.hooks.run`, built on `attach`; users intervene through `hooks`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from circuits.adapters.transformer_lens import hook_conversion
from circuits.errors import (
    InputError,
    ModelError,
    ShapeMismatchError,
    SiteNotFiredError,
    SiteRepeatedError,
)
from circuits.site import Site, SiteRef, resolve

HookFn = Callable[[Tensor, Site], "Tensor | None"]
"""A hook: `fn(activation, site)` returning a replacement tensor of the same shape, dtype and
device, or None to leave the activation as it is.
"""
MARK = "__circuits_hook__"  # set on every hook this module registers (see hook_count)


@contextmanager
def hooks(model: nn.Module, fns: Mapping[str, HookFn], *, strict: bool = True) -> Iterator[None]:
    """Run the body with `fn(activation, site)` hooked on each site; `fn` may return a replacement.

    A replacement must have the activation's shape, dtype and device. With `strict` (the
    default), a site whose hook never ran by the end of the block raises SiteNotFiredError: a
    silent no-op intervention is a bug. Hooks are removed when the block ends, whether or not it
    raised.

    Hooks are state on the model, not on the calling thread: while the block runs, every forward
    pass of this model object sees them, one started by another thread included. To run a model
    from several threads, give each its own copy (copy.deepcopy(model)) or its own process.

        with cc.hooks(model, {"blocks.0.attn.hook_z": lambda z, site: z * 0}):
            logits = model(tokens)

    Raises:
        SiteNotFoundError: a name is not a site of the model (nothing is registered then).
        InputError: `fns` is not a mapping of functions, or a replacement has the wrong type.
        ShapeMismatchError: a replacement's shape differs from the activation's.
        SiteNotFiredError: with `strict`, a site whose hook never ran in the block.
        ModelError: a site carries something other than a tensor.
    """
    with attach(model, fns) as (fired, _):
        yield
    if strict:
        require_fired(list(fns), fired)


@contextmanager
def attach(
    model: nn.Module, fns: Mapping[str, HookFn], *, tensors_only: bool = True
) -> Iterator[tuple[Counter[str], list[SiteRef]]]:
    """Register `fns` on their sites for the duration of the block; yields a count of firings
    and the resolved sites.

    Every site is resolved before anything is registered, so an unknown name leaves the model
    untouched. With `tensors_only`, a site whose activation is not a tensor raises ModelError.

    For example:

        with attach(model, {"relu2": lambda act, site: None}) as (fired, refs):
            model(images)
        fired["relu2"]                                        # 1

    Raises:
        InputError: `fns` is not a mapping of functions.
        SiteNotFoundError: a name is not a site of the model (nothing is registered then).
        ModelError: with `tensors_only`, a site carries something other than a tensor.
        ShapeMismatchError: a hook returns a replacement of another shape.
    """
    if not isinstance(fns, Mapping):
        raise InputError(
            f"hooks takes a mapping of site name -> function, got {type(fns).__name__}"
        )
    for name, fn in fns.items():
        if not callable(fn):
            raise InputError(f"the hook for site {name!r} is a {type(fn).__name__}, not a function")
    refs = resolve(model, list(fns))
    fired: Counter[str] = Counter()
    handles: list[RemovableHandle] = []
    try:
        for ref in refs:
            handles.append(_register(ref, fns[ref.name], fired, tensors_only))
        yield fired, refs
    finally:
        for handle in handles:
            handle.remove()


def require_fired(names: Sequence[str], fired: Counter[str]) -> None:
    """Raise SiteNotFiredError for the sites in `names` whose hooks never ran.

    For example:

        with attach(model, fns) as (fired, _):
            model(images)
        require_fired(list(fns), fired)

    Raises:
        SiteNotFiredError: the message names the sites and how to make TransformerLens compute them.
    """
    missing = [name for name in names if fired[name] == 0]
    if missing:
        raise SiteNotFiredError(
            f"site(s) {missing} exist but never ran during the forward pass, so nothing was "
            "read or changed there. TransformerLens computes some hooks only when asked "
            "(hook_result: model.set_use_attn_result(True); hook_q_input: "
            "model.set_use_split_qkv_input(True)); for other modules, check that the forward "
            "pass calls them."
        )


def require_once(names: Sequence[str], fired: Counter[str]) -> None:
    """Every site in `names` ran exactly once: SiteNotFiredError or SiteRepeatedError otherwise.

    For example:

        require_once(["relu1", "relu2"], fired)              # after an `attach` block

    Raises:
        SiteNotFiredError: a site never ran.
        SiteRepeatedError: a site ran more than once (a shared module is not one activation).
    """
    require_fired(names, fired)
    repeated = {name: fired[name] for name in names if fired[name] > 1}
    if repeated:
        raise SiteRepeatedError(
            f"site(s) ran more than once in one forward pass: {repeated}. A module called "
            "several times (a shared ReLU, a reused conv) is not one activation; use a module "
            "that runs once, or the input of the module after it (`name:input`), or leave the "
            "module out of the analysis (conv graphs: layers=[...])."
        )


def hook_count(model: nn.Module) -> int:
    """How many hooks circuits has on `model` right now: 0 outside a `hooks` block or a run.

    Only this library's hooks are counted (each is marked when registered): TransformerLens 4's
    bridge registers hooks of its own on a first forward pass, which are not a leak.

    For example:

        with cc.hooks(model, {"relu2": lambda act, site: None}):
            assert cc.hook_count(model) == 1
        assert cc.hook_count(model) == 0                      # no hook survives the block

    Raises nothing of its own: any module is accepted (one without hooks counts 0).
    """
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(
        1
        for mod in model.modules()
        for kind in kinds
        for fn in getattr(mod, kind, {}).values()
        if getattr(fn, MARK, False)
    )


def _register(ref: SiteRef, fn: HookFn, fired: Counter[str], tensors_only: bool) -> RemovableHandle:
    """Register one torch hook that calls `fn` on the site's activation and applies its result.

    A TransformerBridge hook point holds q/k/v/z flattened over heads; its `hook_conversion`
    shows `fn` the [batch, pos, head, d_head] view that HookedTransformer has, and turns a
    replacement back.
    """
    conversion = hook_conversion(ref.module)

    def apply(act: Any) -> Any:
        fired[ref.name] += 1
        if not isinstance(act, Tensor):
            if tensors_only:
                raise ModelError(
                    f"site {ref.name!r} carries a {type(act).__name__}, not a tensor; "
                    "pick a submodule whose output is a tensor"
                )
            return fn(act, Site(ref.name, (), ()))
        view = act if conversion is None else conversion.convert(act)
        new = fn(view, ref.site(view))
        if new is None:
            return None
        if not isinstance(new, Tensor) or new.shape != view.shape:
            got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
            raise ShapeMismatchError(
                f"the replacement at {ref.name!r} is {got}; it must be a tensor of the "
                f"activation's shape {tuple(view.shape)} (a hook returns None to leave it as is)"
            )
        if new.dtype != view.dtype or new.device != view.device:
            raise InputError(
                f"the replacement at {ref.name!r} is {new.dtype} on {new.device}, the activation "
                f"{view.dtype} on {view.device}; convert it with .to(act)"
            )
        return new if conversion is None else conversion.revert(new)

    if ref.io == "output":

        def post(_mod: nn.Module, _args: Any, out: Any) -> Any:
            return apply(out)

        setattr(post, MARK, True)
        return ref.module.register_forward_hook(post)

    def pre(_mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not args:
            raise ModelError(f"site {ref.name!r} needs a positional input, but got keywords only")
        new = apply(args[0])
        return None if new is None else (new, *args[1:])

    setattr(pre, MARK, True)
    return ref.module.register_forward_pre_hook(pre)
