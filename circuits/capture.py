"""Activation capture: run a model once and keep the activations (and gradients) at chosen sites.

`capture` is the read-only use of the hook engine. Options that save memory act as each activation
is stored: keep some positions or a spatial window, cast to a dtype, move to an offload device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from circuits.adapters.transformer_lens import hook_table, is_transformer_lens
from circuits.cache import ActivationCache
from circuits.errors import CircuitsError, ConfigError, InputError, MetricError
from circuits.hooks import attach, require_fired
from circuits.site import INPUT_SUFFIX, Site, default_site_names, resolve

Metric = Callable[[Any], Tensor]
Index = int | slice | Sequence[int] | Tensor


def capture(
    model: nn.Module,
    inputs: Any,
    *,
    sites: str | Sequence[str] | None = None,
    grads: bool = False,
    metric: Metric | None = None,
    positions: Index | None = None,
    spatial: tuple[Index, Index] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    detach: bool = True,
) -> ActivationCache:
    """Run `model(inputs)` once and return the activations at `sites` as an ActivationCache.

    sites: one name or a list (None: every site `cc.sites` lists that runs once in this pass).
    grads: also keep d metric / d activation at each site; needs `metric(output)` -> scalar.
    metric: a function of the model output; its value is stored in `cache.metric`.
    positions: keep only these indices of a site's "pos" axis (sites without one are kept whole).
    spatial: (h_index, w_index) kept from a site's "h" and "w" axes (conv activations).
    dtype, device: cast and move each stored tensor (an offload device such as "cpu").
    detach: store tensors cut from the autograd graph (False keeps them connected).
    Inputs are passed as `model(inputs)`; a tuple is spread as arguments, a dict as keywords.
    """
    names = site_list(model, sites)
    if grads and metric is None:
        raise ConfigError(
            "grads=True needs metric=..., a function of the output returning a scalar"
        )
    copy = _copies_needed(model, names)
    graph: dict[str, Tensor] = {}
    kept: dict[str, Tensor] = {}
    shapes: dict[str, Site] = {}

    def keep(act: Tensor, site: Site) -> Tensor | None:
        if grads and not act.requires_grad:  # frozen weights: start the graph here
            act = act.detach().requires_grad_(True)
        if grads or not detach:
            graph[site.name] = act
        stored = select(act.detach() if detach else act, site, positions, spatial)
        kept[site.name] = _store(stored, dtype, device, copy=copy[site.name])
        shapes[site.name] = Site(site.name, site.axes, tuple(kept[site.name].shape))
        if not grads:
            return None
        # Hand on what we differentiate against, so the rest of the pass depends on it (a
        # reshaped view or a new leaf would otherwise be off the path); a copy where later
        # in-place ops could rewrite it.
        return act.clone() if copy[site.name] else act

    value = None
    gradients: dict[str, Tensor] | None = None
    with attach(model, dict.fromkeys(names, keep)) as fired:
        with torch.set_grad_enabled(grads or not detach):
            output = run_model(model, inputs)
        if sites is None:  # "everything": keep what ran once (cc.sites shows the call counts)
            names = [name for name in names if fired[name] == 1]
            kept = {name: kept[name] for name in names}
        _require_once(names, fired)
        if metric is not None:
            value = scalar_metric(metric, output)
        if grads and value is not None:
            found = torch.autograd.grad(value, [graph[n] for n in names], allow_unused=True)
            gradients = {
                n: _store(
                    select(_or_zeros(g, graph[n]), shapes[n], positions, spatial),
                    dtype,
                    device,
                    copy=False,
                )
                for n, g in zip(names, found, strict=True)
            }
    metric_value = None if value is None else float(value.detach())
    return ActivationCache(kept, shapes, grads=gradients, metric=metric_value)


def sites(model: nn.Module, example_input: Any, *, inputs: bool = False) -> pd.DataFrame:
    """Every hookable site with its axis names and shape, found by one forward pass.

    TransformerLens models list their hook points; other modules list every submodule's output,
    and with `inputs=True` also each module's input (`name:input`). `calls` counts how often the
    site ran in the pass: 0 means it exists but never fires (it cannot be captured as is).
    """
    names = default_site_names(model)
    if inputs and not is_transformer_lens(model):
        names += [name + INPUT_SUFFIX for name in names]
    seen: dict[str, Any] = {}

    def record(act: Any, site: Site) -> None:
        seen[site.name] = site if isinstance(act, Tensor) else type(act).__name__

    modules = {ref.name: ref.module for ref in resolve(model, names)}
    with attach(model, dict.fromkeys(names, record), tensors_only=False) as fired:
        with torch.no_grad():
            run_model(model, example_input)
    rows = []
    for name in names:
        info = seen.get(name)
        rows.append(
            {
                "site": name,
                "axes": " ".join(info.axes) if isinstance(info, Site) else None,
                "shape": info.shape if isinstance(info, Site) else None,
                "calls": fired[name],
                "module": type(modules[name]).__name__,
                "note": info if isinstance(info, str) else "",
            }
        )
    return pd.DataFrame(rows)


def site_list(model: nn.Module, sites: str | Sequence[str] | None) -> list[str]:
    """Normalise the `sites` argument to a list of names (None: the model's default sites)."""
    if sites is None:
        return default_site_names(model)
    names = [sites] if isinstance(sites, str) else list(sites)
    if not names:
        raise ConfigError("sites is empty; name at least one site (cc.sites lists them)")
    if len(set(names)) != len(names):
        raise ConfigError(f"sites lists a name twice: {names}")
    return names


def run_model(model: nn.Module, inputs: Any) -> Any:
    """Call the model on `inputs`; a failure of the forward pass itself becomes an InputError."""
    try:
        if isinstance(inputs, dict):
            return model(**inputs)
        if isinstance(inputs, tuple):
            return model(*inputs)
        return model(inputs)
    except CircuitsError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as err:
        raise InputError(
            f"the forward pass of {type(model).__name__} failed on {describe(inputs)}: {err}. "
            "Check the input's shape, dtype and range (token ids below d_vocab, at most n_ctx "
            "positions; images as batch x channel x h x w)."
        ) from err


def scalar_metric(metric: Metric, output: Any) -> Tensor:
    """Call `metric(output)` and check that it returned a scalar tensor."""
    value = metric(output)
    if not isinstance(value, Tensor) or value.numel() != 1:
        got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise MetricError(
            f"the metric must return a scalar tensor, got {got}; reduce it (for example .mean()) "
            "and return a torch tensor so gradients can flow"
        )
    return value.reshape(())


def select(act: Tensor, site: Site, positions: Index | None, spatial: Any) -> Tensor:
    """Keep the chosen positions ("pos" axis) and spatial window ("h", "w" axes) of `act`."""
    index: list[Any] = [slice(None)] * act.ndim
    wanted = {"pos": positions}
    if spatial is not None:
        if len(spatial) != 2:
            raise ConfigError(f"spatial must be (h_index, w_index), got {spatial!r}")
        wanted.update(h=spatial[0], w=spatial[1])
    picked = False
    for axis, choice in wanted.items():
        if choice is not None and axis in site.axes:
            index[site.axes.index(axis)] = _as_index(choice)
            picked = True
    if not picked:
        return act
    out = act
    for dim, idx in enumerate(index):  # one axis at a time: lists on two axes must not pair up
        if not (isinstance(idx, slice) and idx == slice(None)):
            out = out[(slice(None),) * dim + (idx,)]
    return out


def describe(inputs: Any) -> str:
    """A short description of inputs for error messages: type, shape and dtype."""
    if isinstance(inputs, Tensor):
        return f"a tensor of shape {tuple(inputs.shape)} and dtype {inputs.dtype}"
    return f"a {type(inputs).__name__}"


def _as_index(choice: Index) -> Any:
    if isinstance(choice, int):
        return slice(choice, choice + 1 if choice != -1 else None)  # keep the axis
    if isinstance(choice, slice | Tensor):
        return choice
    return torch.as_tensor(list(choice), dtype=torch.long)


def _copies_needed(model: nn.Module, names: list[str]) -> dict[str, bool]:
    """Sites whose stored tensor must be a copy: outputs that later in-place ops may rewrite.

    TransformerLens hook points hand on a tensor nothing modifies in place; an arbitrary module's
    output may be (ReLU(inplace=True), `out += identity` in residual blocks).
    """
    hook_points = hook_table(model) if is_transformer_lens(model) else {}
    return {name: name not in hook_points for name in names}


def _or_zeros(grad: Tensor | None, act: Tensor) -> Tensor:
    """A site the metric does not depend on has gradient zero (autograd reports None)."""
    return torch.zeros_like(act) if grad is None else grad


def _store(t: Tensor, dtype: torch.dtype | None, device: Any, *, copy: bool) -> Tensor:
    if dtype is None and device is None and not copy:
        return t
    return t.to(device=device, dtype=dtype, copy=copy)


def _require_once(names: list[str], fired: Any) -> None:
    require_fired(names, fired)
    repeated = {name: fired[name] for name in names if fired[name] > 1}
    if repeated:
        raise InputError(
            f"site(s) ran more than once in one forward pass: {repeated}. A module called "
            "several times (a shared ReLU, say) is not one activation; capture a module that "
            "runs once, or the input of the module after it (`name:input`)."
        )
