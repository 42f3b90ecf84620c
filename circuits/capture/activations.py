"""Activation capture: run a model once and keep the activations (and gradients) at chosen sites.

`capture` is the recording use of `circuits.hooks.run`. Options that save memory act as each
activation is stored: keep some positions or a spatial window, cast to a dtype, move to an offload
device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from circuits.adapters.transformer_lens import is_transformer_lens
from circuits.capture.cache import ActivationCache
from circuits.errors import ConfigError, InputError
from circuits.hooks import run
from circuits.hooks.run import Replacement
from circuits.metrics import MetricFn, differentiable, metric_value
from circuits.site import INPUT_SUFFIX, Site, default_site_names, resolve
from circuits.units import indices

Index = int | slice | Sequence[int] | Tensor
"""Which entries of one axis to keep: an int, a slice, a list of ints or an integer
tensor (negative indices count from the end).
"""


def capture(
    model: nn.Module,
    inputs: Any,
    *,
    sites: str | Sequence[str] | None = None,
    grads: bool = False,
    metric: MetricFn | None = None,
    positions: Index | None = None,
    spatial: tuple[Index, Index] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    detach: bool = True,
    replace: Mapping[str, Replacement] | None = None,
) -> ActivationCache:
    """Run `model(inputs)` once and return the activations at `sites` as an ActivationCache.

    sites: one name or a list (None: every site `cc.sites` lists that runs once in this pass).
    grads: also keep d metric / d activation at each site; needs `metric(output)` -> scalar.
    metric: a function of the model output; its value is stored in `cache.metric`.
    positions: keep only these indices of a site's "pos" axis (sites without one are kept whole).
    spatial: (h_index, w_index) kept from a site's "h" and "w" axes (conv activations).
    dtype, device: cast and move each stored tensor (an offload device such as "cpu").
    detach: store tensors cut from the autograd graph (False keeps them connected).
    replace: interventions during the pass, as for `circuits.hooks.run` (a captured site is
        recorded as it arrives, before its own replacement).
    Inputs are passed as `model(inputs)`; a tuple is spread as arguments, a dict as keywords.

    Shapes: each stored tensor has its site's axes (`cache.sites[name].axes`), e.g. `[batch, pos,
    head, d_head]` at `blocks.0.attn.hook_z` or `[batch, channel, h, w]` at a conv layer, with the
    "pos" (or "h", "w") axis cut to `positions` (`spatial`) when given; `cache.grads[name]` has the
    same shape.

    For example:

        cache = cc.capture(model, tokens, sites=["blocks.0.attn.hook_z"], positions=-1)
        cache["blocks.0.attn.hook_z"].shape          # (batch, 1, n_heads, d_head)
        cache = cc.capture(cnn, images, sites="relu2", grads=True,
                           metric=lambda out: out[:, 0].sum())

    Raises:
        SiteNotFoundError: a name is not a site of the model (the message lists the closest ones).
        SiteNotFiredError: a named site never ran during the pass.
        SiteRepeatedError: a named site ran more than once (capture it per call with `cc.hooks`).
        ConfigError: `sites` is empty or names a site twice, `grads=True` without `metric`, or
            `spatial` is not an (h, w) pair.
        InputError: `positions` or `spatial` is out of range or picks nothing.
        MetricError: the metric is not a finite scalar tensor, or has no gradient with `grads=True`.
    """
    names = site_list(model, sites)
    if grads and metric is None:
        raise ConfigError(
            "grads=True needs metric=..., a function of the output returning a scalar"
        )
    if spatial is not None and len(spatial) != 2:
        raise ConfigError(f"spatial must be (h_index, w_index), got {spatial!r}")
    connected = grads or not detach

    def store(act: Tensor, site: Site) -> Tensor:
        kept = select(act, site, positions, spatial)
        return kept if dtype is None and device is None else kept.to(device=device, dtype=dtype)

    ran = run(
        model,
        inputs,
        replace=replace,
        record=names,
        keep=None if connected else store,
        grad=connected,
        calls="any" if sites is None else "once",
    )
    if sites is None:  # "everything": keep what ran once (cc.sites shows the call counts)
        names = [name for name in names if ran.fired[name] == 1]
    value = None if metric is None else metric_value(metric, ran.output)
    gradients = None
    if grads and value is not None:
        wrt = [ran.recorded[n] for n in names]
        found = torch.autograd.grad(differentiable(value), wrt, allow_unused=True)
        gradients = {
            n: store(torch.zeros_like(ran.recorded[n]) if g is None else g, ran.sites[n])
            for n, g in zip(names, found, strict=True)
        }
    kept = {n: ran.recorded[n] for n in names}
    if connected:
        kept = {n: store(t.detach() if detach else t, ran.sites[n]) for n, t in kept.items()}
    shapes = {n: Site(n, ran.sites[n].axes, tuple(t.shape)) for n, t in kept.items()}
    metric_value_ = None if value is None else float(value.detach())
    return ActivationCache(kept, shapes, grads=gradients, metric=metric_value_)


def sites(model: nn.Module, example_input: Any, *, inputs: bool = False) -> pd.DataFrame:
    """Every hookable site with its axis names and shape, found by one forward pass.

    TransformerLens models list their hook points; other modules list every submodule's output,
    and with `inputs=True` also each module's input (`name:input`). `calls` counts how often the
    site ran in the pass: 0 means it exists but never fires (it cannot be captured as is).

    Returns a pandas DataFrame with one row per site: `site`, `axes` (space-separated names),
    `shape`, `calls`, `module` (its class name) and `note` (why a non-tensor site cannot be read).

    For example:

        cc.sites(cnn, images)                               # conv net: every submodule's output
        cc.sites(cnn, images, inputs=True)                  # ... and every "name:input"
        cc.sites(model, tokens).query("axes.str.contains('head')", engine="python")

    Raises:
        ModelError: `model` is not a `torch.nn.Module`.
        InputError: the forward pass fails on `example_input` (the message says what to check).
    """
    names = default_site_names(model)
    if inputs and not is_transformer_lens(model):
        names += [name + INPUT_SUFFIX for name in names]
    seen: dict[str, Any] = {}

    def look(act: Any, site: Site) -> None:
        seen[site.name] = site if isinstance(act, Tensor) else type(act).__name__

    modules = {ref.name: ref.module for ref in resolve(model, names)}
    fired = run(
        model, example_input, replace=dict.fromkeys(names, look), calls="any", tensors_only=False
    ).fired
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
    """Normalise the `sites` argument to a list of names (None: the model's default sites).

    For example:

        site_list(model, "relu2")            # ["relu2"]
        site_list(model, None)               # every default site of the model

    Raises:
        ConfigError: `sites` is empty or names a site twice.
    """
    if sites is None:
        return default_site_names(model)
    names = [sites] if isinstance(sites, str) else list(sites)
    if not names:
        raise ConfigError("sites is empty; name at least one site (cc.sites lists them)")
    if len(set(names)) != len(names):
        raise ConfigError(f"sites lists a name twice: {names}")
    return names


def select(act: Tensor, site: Site, positions: Index | None, spatial: Any) -> Tensor:
    """Keep the chosen positions ("pos" axis) and spatial window ("h", "w" axes) of `act`.

    `act` has the axes `site.axes`; the "pos", "h" and "w" axes are kept (length 1 for an int),
    so the result has the same rank.

    For example:

        select(act, site, positions=-1, spatial=None)        # [batch, pos, ...] -> [batch, 1, ...]
        select(act, site, None, spatial=(slice(2, 4), 3))    # [b, c, h, w] -> [b, c, 2, 1]

    Raises:
        ConfigError: `spatial` is not an (h_index, w_index) pair.
        InputError: an index is out of range or picks nothing.
    """
    index: list[Any] = [slice(None)] * act.ndim
    wanted = {"pos": positions}
    if spatial is not None:
        if len(spatial) != 2:
            raise ConfigError(f"spatial must be (h_index, w_index), got {spatial!r}")
        wanted.update(h=spatial[0], w=spatial[1])
    picked = False
    for axis, choice in wanted.items():
        if choice is not None and axis in site.axes:
            dim = site.axes.index(axis)
            index[dim] = _as_index(choice, act.shape[dim], axis, site.name)
            picked = True
    if not picked:
        return act
    out = act
    for dim, idx in enumerate(index):  # one axis at a time: lists on two axes must not pair up
        if not (isinstance(idx, slice) and idx == slice(None)):
            out = out[(slice(None),) * dim + (idx,)]
    return out


def _as_index(choice: Index, size: int, axis: str, site: str) -> Any:
    """An index along one axis that keeps the axis; out of range or empty is an InputError."""
    if isinstance(choice, slice):
        if not range(size)[choice]:
            raise InputError(f"{choice} picks nothing on axis {axis!r} of {site!r} (size {size})")
        return choice
    picked = indices(choice, size, axis, site)
    if len(picked) == 1:
        return slice(picked[0], picked[0] + 1)  # a view, as the axis is kept
    return torch.as_tensor(picked, dtype=torch.long)
