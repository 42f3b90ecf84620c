"""Node attribution: attribution patching and integrated gradients, for any site and unit.

Attribution patching (Nanda 2023; Syed et al. 2023) estimates activation patching to first order:
the effect of patching a unit is about (patched value - current value) . gradient, so one forward
and backward pass on each run scores every unit at once. `direction` matches
`circuits.patching.patch`: "noise" (the default here, Nanda's convention) runs clean and patches
in corrupt, score = (corrupt - clean) . d metric / d act at the clean run, comparable with
`patch(..., direction="noise").effects`; "denoise" runs corrupt and patches in clean, score =
(clean - corrupt) . gradient at the corrupted run, comparable with the default `patch`.

Integrated gradients (Sundararajan et al. 2017) follow Captum: the input (the clean run) is
attributed against a baseline (the corrupted run, or zeros), with the gradient averaged over the
straight path between them. On a site (Captum's LayerIntegratedGradients) the model runs the clean
input with the site replaced by each path point, so the scores sum to m(clean) - m(clean run with
the site set to its corrupted value), which is m(clean) - m(corrupt) for the input itself or a
site every path crosses. Each result reports that completeness gap.

A unit is a choice of the site's axes by name, as in patching: ("head",) on hook_z, ("pos",) on
the residual stream, ("channel",) on a conv output; the score of a unit sums the elementwise
scores over every other axis (batch included). None is the whole site, "all" every element.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from circuits.adapters.torch_module import generic_axes
from circuits.adapters.transformer_lens import is_transformer_lens
from circuits.capture import capture, run_model, scalar_metric
from circuits.errors import ConfigError, InputError, ShapeMismatchError
from circuits.hooks import hooks
from circuits.inputs import check_pair
from circuits.site import Site
from circuits.sweeps import expand_sites, metric_name

from .common import (
    Direction,
    IGPath,
    Metric,
    Rule,
    UnitSpec,
    check_direction,
    check_max_batch,
    check_metric,
    check_model,
    fold,
    path_runs,
    reduce_to,
    stack_padded,
    unit_axes,
)
from .result import AttributionResult, output_node, unit_node

INPUT = "input"


def attribution_patching(
    model: nn.Module,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    site: str | Sequence[str] | None = None,
    unit: UnitSpec = None,
    direction: Direction = "noise",
) -> AttributionResult:
    """First-order estimate of patching each unit of `site`: (patched - current) . gradient.

    site: a name, a list, or a `{L}` pattern ("blocks.{L}.attn.hook_z"); None: the input
        (a float tensor) or, on a TransformerLens model, the token embeddings (hook_embed).
    unit: axes a unit spans (("head",), ("pos", "head"), ("channel",)); None the whole site.
    direction: "noise" (run clean, gradient at clean, corrupt - clean) or "denoise".
    Returns scores with axes (["layer" | "site"], *unit) on the model's device.
    """
    check_model(model)
    check_metric(metric)
    direction = check_direction(direction)
    check_pair(clean, corrupt)
    base, source = (clean, corrupt) if direction == "noise" else (corrupt, clean)
    site = _default_site(model, clean, site)
    if site is None:
        x_base, x_source = _float_input(base), _float_input(source)
        grad, base_value = _input_grad(model, x_base, metric)
        with torch.no_grad():
            source_value = float(scalar_metric(metric, run_model(model, x_source)))
        infos = {INPUT: Site(INPUT, generic_axes(x_base.ndim), tuple(x_base.shape))}
        acts, diffs, grads = {INPUT: x_base}, {INPUT: x_source - x_base}, {INPUT: grad}
        names, lead = [INPUT], None
    else:
        names, lead, _ = expand_sites(model, site)
        src = capture(model, source, sites=names, metric=metric)
        run = capture(model, base, sites=names, grads=True, metric=metric)
        for name in names:
            if src[name].shape != run[name].shape:
                raise ShapeMismatchError(
                    f"site {name!r} has shape {tuple(run[name].shape)} on one run and "
                    f"{tuple(src[name].shape)} on the other; they must match"
                )
        infos = dict(run.sites)
        acts = {n: run[n] for n in names}
        diffs = {n: src[n] - run[n] for n in names}
        grads = {n: run.grads[n] for n in names}
        base_value, source_value = float(run.metric or 0.0), float(src.metric or 0.0)
    elementwise = {n: diffs[n] * grads[n] for n in names}
    clean_value, corrupt_value = (
        (base_value, source_value) if direction == "noise" else (source_value, base_value)
    )
    return _node_result(
        names, lead, infos, unit, elementwise, acts,
        method="attribution_patching", metric=metric_name(metric), direction=direction,
        clean_value=clean_value, corrupt_value=corrupt_value,
    )  # fmt: skip


def integrated_gradients(
    model: nn.Module,
    clean: Any,
    corrupt: Any | None,
    metric: Metric,
    *,
    site: str | None = None,
    unit: UnitSpec = None,
    steps: int = 32,
    rule: Rule = "gausslegendre",
    max_batch: int | None = None,
    progress: bool | None = None,
) -> AttributionResult:
    """Integrated gradients of `metric` on the input or one site, baseline `corrupt` (or zeros).

    site: None for the input (a float tensor; token embeddings `hook_embed` on a TransformerLens
        model), or one site name (layer integrated gradients; completeness holds per site).
    unit: axes a unit spans; None sums everything, "all" keeps every element (Captum's shape).
    steps, rule: the path quadrature (see IGPath); rule names are Captum's.
    max_batch: rows per forward pass (path points x batch).
    Scores sum to `expected` = m(clean) - m(baseline) up to `completeness_gap`.
    """
    check_model(model)
    check_metric(metric)
    path = IGPath(steps=steps, rule=rule)
    rows = check_max_batch(max_batch)
    if corrupt is not None:
        check_pair(clean, corrupt)
    if site is not None and not isinstance(site, str):
        raise ConfigError(
            "integrated_gradients attributes one site at a time (completeness holds per site); "
            f"got {site!r}: call it once per site, or use attribution_patching for a sweep"
        )
    name = _default_site(model, clean, site)
    if name is None:
        x = _float_input(clean)
        x0 = torch.zeros_like(x) if corrupt is None else _float_input(corrupt).to(x)
        total = torch.zeros_like(x)
        for _, grad, k in path_runs(
            model, None, replace=None, base=x0, source=x, path=path, metric=metric, sites=(),
            max_batch=rows, show=progress, desc="integrated gradients",
        ):  # fmt: skip
            assert grad is not None
            total += fold(grad, k)
        with torch.no_grad():
            clean_value = float(scalar_metric(metric, run_model(model, x)))
            base_value = float(scalar_metric(metric, run_model(model, x0)))
        info = Site(INPUT, generic_axes(x.ndim), tuple(x.shape))
        act, baseline, name = x, x0, INPUT
    else:
        run = capture(model, clean, sites=[name], metric=metric)
        act, info, clean_value = run[name], run.sites[name], float(run.metric or 0.0)
        baseline = torch.zeros_like(act)
        if corrupt is not None:
            baseline = capture(model, corrupt, sites=[name])[name]
        total = torch.zeros_like(act)
        for cache, _, k in path_runs(
            model, clean, replace=name, base=baseline, source=act, path=path, metric=metric,
            sites=[name], max_batch=rows, show=progress, desc="integrated gradients",
        ):  # fmt: skip
            assert cache is not None
            total += fold(cache.grads[name], k)
        with torch.no_grad(), hooks(model, {name: lambda a, s: baseline}):
            base_value = float(scalar_metric(metric, run_model(model, clean)))
    elementwise = (act - baseline) * total
    corrupt_value = base_value if corrupt is not None and name == INPUT else None
    return _node_result(
        [name], None, {name: info}, unit, {name: elementwise}, {name: act},
        method="integrated_gradients", metric=metric_name(metric), direction="",
        clean_value=clean_value, corrupt_value=corrupt_value,
        total=elementwise.sum().reshape(1),
        expected=torch.tensor([clean_value - base_value], device=act.device),
    )  # fmt: skip


def _node_result(
    names: list[str],
    lead: str | None,
    infos: dict[str, Site],
    unit: UnitSpec,
    elementwise: dict[str, Tensor],
    acts: dict[str, Tensor],
    **meta: Any,
) -> AttributionResult:
    """Reduce elementwise scores to units, stack sites, and describe every unit as a node."""
    axes = unit_axes(unit, infos[names[0]])
    parts = []
    for name in names:
        info = infos[name]
        if unit_axes(unit, info) != axes:
            raise ConfigError(f"the sites {names} do not share the unit axes {axes}")
        parts.append(reduce_to(elementwise[name], info.axes, axes))
    scores = stack_padded(parts) if lead else parts[0]
    strengths = [reduce_to(acts[n].float() ** 2, infos[n].axes, axes).sqrt().cpu() for n in names]

    def node_rows() -> tuple[dict[str, Any], ...]:
        rows = []
        for s, (name, strength) in enumerate(zip(names, strengths, strict=True)):
            for index in itertools.product(*(range(n) for n in strength.shape)):
                row = unit_node(name, axes, index, activation=float(strength[index]))
                full = ((s,) if lead else ()) + index
                row["_index"] = int(np.ravel_multi_index(full, tuple(scores.shape))) if full else 0
                rows.append(row)
        return (*rows, output_node(meta["metric"]))

    coords: dict[str, tuple[Any, ...]] = {}
    if lead == "layer":
        coords["layer"] = tuple(range(len(names)))
    elif lead == "site":
        coords["site"] = tuple(names)
    shape = scores.shape[bool(lead) :]
    coords.update({a: tuple(range(n)) for a, n in zip(axes, shape, strict=True)})
    all_axes = ((lead,) if lead else ()) + axes
    return AttributionResult(
        scores=scores, axes=all_axes, coords=coords, node_table=node_rows, **meta
    )


def _default_site(model: nn.Module, inputs: Any, site: Any) -> str | None:
    """None stands for the input: token embeddings on a TransformerLens model given token ids."""
    if site is not None:
        return site  # type: ignore[no-any-return]
    is_tokens = isinstance(inputs, Tensor) and not inputs.is_floating_point()
    if is_transformer_lens(model) and is_tokens:
        return "hook_embed"
    return None


def _float_input(inputs: Any) -> Tensor:
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point():
        got = f"a {inputs.dtype} tensor" if isinstance(inputs, Tensor) else type(inputs).__name__
        raise InputError(
            f"attributing to the input needs a float tensor input (images, embeddings), got {got}; "
            "name a site instead (site='...'), e.g. the embedding output"
        )
    return inputs


def _input_grad(model: nn.Module, x: Tensor, metric: Metric) -> tuple[Tensor, float]:
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        value = scalar_metric(metric, run_model(model, leaf))
        (grad,) = torch.autograd.grad(value, [leaf])
    return grad, float(value.detach())
