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

A unit is a choice of the site's axes by name, as in patching (`circuits.units`): ("head",) on
hook_z, ("pos",) on the residual stream, ("channel",) on a conv output, {"head": [3]} one head;
the score of a unit sums the elementwise scores over every other axis (batch included). None is
the whole site, "all" every element. Options: `circuits.attribution.methods`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from circuits.adapters.torch_module import generic_axes
from circuits.adapters.transformer_lens import is_transformer_lens
from circuits.capture import Baseline, ablated, ablated_input, capture
from circuits.errors import ConfigError, InputError, ShapeMismatchError
from circuits.features import FeatureBasis, ablated_coordinates, coordinates
from circuits.hooks import run
from circuits.ids import metric_node, unit_node
from circuits.inputs import batch_size
from circuits.metrics import MetricFn, differentiable, metric_name, metric_value
from circuits.options import runs
from circuits.site import Site, expand_sites
from circuits.units import UnitSpec, parse_unit

from .common import (
    DEFAULT_MAX_BATCH,
    POINTS,
    feature_act,
    feature_kind,
    feature_node,
    feature_site,
    fold,
    fold_error,
    path_runs,
    reduce_to,
    stack_padded,
)
from .methods import AttributionPatching, IntegratedGradients
from .result import AttributionResult

INPUT = "input"


def score_units(
    model: nn.Module, clean: Any, corrupt: Any, metric: MetricFn, cfg: AttributionPatching
) -> AttributionResult:
    """Attribution patching of every unit of `cfg.site` (or feature of `cfg.basis`); scores with
    axes (["layer" | "site"], *unit) on the model's device."""
    if cfg.basis is not None:
        return _score_features(model, clean, corrupt, metric, cfg)
    direction = cfg.direction
    base, source = runs(direction, clean, corrupt)
    site = _default_site(model, clean, cfg.site)
    if site is None:
        x_base = _float_input(base)
        if direction == "denoise":
            x_source = _float_input(source)
        else:
            x_corrupt = None if corrupt is None else _float_input(corrupt)
            x_source = ablated_input(cfg, x_base, x_corrupt).expand_as(x_base)
        grad, base_value = _input_grad(model, x_base, metric)
        source_value: float | None = float(metric_value(metric, run(model, x_source).output))
        infos = {INPUT: Site(INPUT, generic_axes(x_base.ndim), tuple(x_base.shape))}
        acts, diffs, grads = {INPUT: x_base}, {INPUT: x_source - x_base}, {INPUT: grad}
        names, lead = [INPUT], None
    else:
        names, lead, _ = expand_sites(model, site)
        ran = capture(model, base, sites=names, grads=True, metric=metric)
        if direction == "denoise":
            src = capture(model, source, sites=names, metric=metric)
            values, source_value = dict(src), float(src.metric or 0.0)
        else:
            values, source_value = ablated(model, names, cfg, clean, corrupt,
                                           batch=batch_size(base), metric=metric,
                                           like=ran)  # fmt: skip
        for name in names:
            if values[name].shape[1:] != ran[name].shape[1:]:
                raise ShapeMismatchError(
                    f"site {name!r} has shape {tuple(ran[name].shape)} on one run and "
                    f"{tuple(values[name].shape)} on the other; they must match"
                )
        infos = dict(ran.sites)
        acts = {n: ran[n] for n in names}
        diffs = {n: values[n] - ran[n] for n in names}
        grads = {n: ran.grads[n] for n in names}
        base_value = float(ran.metric or 0.0)
    elementwise = {n: diffs[n] * grads[n] for n in names}
    clean_value, corrupt_value = runs(direction, base_value, source_value)
    return _node_result(
        names, lead, infos, cfg.unit, elementwise, acts,
        method="attribution_patching", metric=metric_name(metric), direction=direction,
        clean_value=clean_value, corrupt_value=corrupt_value,
    )  # fmt: skip


def _score_features(
    model: nn.Module, clean: Any, corrupt: Any, metric: MetricFn, cfg: AttributionPatching
) -> AttributionResult:
    """Attribution patching of each feature of `cfg.basis` and of its error term, in feature
    coordinates p (`coordinates`): (p_source - p) . [J_decode^T g, g] at the base run."""
    basis = cfg.basis
    assert basis is not None  # the caller checked
    name = str(basis.site)  # checked with the config
    base, source = runs(cfg.direction, clean, corrupt)
    ran = capture(model, base, sites=[name], grads=True, metric=metric)
    info, kind = feature_site(basis, ran.sites[name]), _kind(basis, ran.sites[name])
    reference = cfg if cfg.direction == "noise" else Baseline(ablation="patch")
    p_source, source_value = ablated_coordinates(
        model, basis, reference, base, source, batch=batch_size(base), like=ran, metric=metric
    )
    p = coordinates(basis, ran[name])
    (grad,) = torch.func.vjp(partial(feature_act, basis), p)[1](ran.grads[name])
    clean_value, corrupt_value = runs(cfg.direction, float(ran.metric or 0.0), source_value)
    return _node_result(
        [name], None, {name: info}, _with_feature(cfg.unit),
        {name: fold_error(basis, (p_source - p) * grad)}, {name: fold_error(basis, p**2).sqrt()},
        basis=basis, kind=kind, method="attribution_patching", metric=metric_name(metric),
        direction=cfg.direction, clean_value=clean_value, corrupt_value=corrupt_value,
    )  # fmt: skip


def score_ig(
    model: nn.Module, clean: Any, corrupt: Any | None, metric: MetricFn, cfg: IntegratedGradients
) -> AttributionResult:
    """Integrated gradients on the input, one site, or one basis's features and error term;
    scores sum to `expected` = m(clean) - m(baseline) up to `completeness_gap`.

    With a basis the path runs in feature coordinates (`coordinates`): every coefficient and
    the error term move on a straight line from their baseline values, which is the site's own
    straight path when decode is affine (every basis here), so the feature and error scores add
    up to the site's integrated gradients.
    """
    rows = cfg.max_batch or DEFAULT_MAX_BATCH
    basis = cfg.basis
    name = _default_site(model, clean, cfg.site if basis is None else basis.site)
    zeros = cfg.ablation is None and corrupt is None  # Captum's default baseline
    reference = Baseline(ablation="zero") if zeros else cfg
    to_site: Callable[[Tensor], Tensor] = lambda x: x  # noqa: E731
    kind = "feature"
    if name is None:
        act = _float_input(clean)
        if zeros:
            baseline = torch.zeros_like(act)
        else:
            x_corrupt = None if corrupt is None else _float_input(corrupt)
            baseline = ablated_input(cfg, act, x_corrupt).expand_as(act)
        info = Site(INPUT, generic_axes(act.ndim), tuple(act.shape))
        clean_value = float(metric_value(metric, run(model, act).output))
        base_value = float(metric_value(metric, run(model, baseline).output))
    else:
        clean_run = capture(model, clean, sites=[name], metric=metric)
        act, info, clean_value = clean_run[name], clean_run.sites[name], clean_run.metric or 0.0
        if basis is None:
            values, _ = ablated(model, [name], reference, clean, corrupt,
                                batch=batch_size(clean), like=clean_run)  # fmt: skip
            baseline = values[name].expand_as(act)
        else:
            kind = _kind(basis, info)
            info, act = feature_site(basis, info), coordinates(basis, act)
            values_p, _ = ablated_coordinates(model, basis, reference, clean, corrupt,
                                         batch=batch_size(clean), like=clean_run)  # fmt: skip
            baseline, to_site = values_p.expand_as(act), partial(feature_act, basis)
        at_base = run(model, clean, replace={name: to_site(baseline)}).output
        base_value = float(metric_value(metric, at_base))
    total = torch.zeros_like(act)
    for grads, _, k in path_runs(
        model, clean, replace=name, base=baseline, source=act, path=cfg.path, metric=metric,
        max_batch=rows, show=cfg.progress, desc="integrated gradients", to_site=to_site,
    ):  # fmt: skip
        total += fold(grads[POINTS], k)
    elementwise, strength = (act - baseline) * total, act
    if basis is not None:
        elementwise, strength = fold_error(basis, elementwise), fold_error(basis, act**2).sqrt()
    patched = corrupt is not None and cfg.ablation in (None, "patch")
    corrupt_value = base_value if patched and name is None else None
    key = INPUT if name is None else name
    return _node_result(
        [key], None, {key: info}, cfg.unit if basis is None else _with_feature(cfg.unit),
        {key: elementwise}, {key: strength}, basis=basis, kind=kind,
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
    *,
    basis: FeatureBasis | None = None,
    kind: str = "feature",
    **meta: Any,
) -> AttributionResult:
    """Reduce elementwise scores to units, stack sites, and describe every unit as a node (a
    basis's features and error term as feature nodes: `feature_node`)."""
    axes, _ = parse_unit(unit, infos[names[0]])
    parts, strengths, chosen = [], [], []
    for name in names:
        info = infos[name]
        site_axes, coords = parse_unit(unit, info)
        if site_axes != axes:
            raise ConfigError(f"the sites {names} do not share the unit axes {axes}")
        parts.append(_pick(reduce_to(elementwise[name], info.axes, axes), coords))
        strength = reduce_to(acts[name].float() ** 2, info.axes, axes).sqrt().cpu()
        strengths.append(_pick(strength, coords))
        chosen.append(coords)
    scores = stack_padded(parts) if lead else parts[0]

    def node_rows() -> tuple[dict[str, Any], ...]:
        rows = []
        for s, (name, strength, coords) in enumerate(zip(names, strengths, chosen, strict=True)):
            for index in itertools.product(*(range(n) for n in strength.shape)):
                units = tuple(c[i] for c, i in zip(coords, index, strict=True))
                activation = float(strength[index])
                row = (
                    unit_node(name, axes, units, activation=activation)
                    if basis is None
                    else feature_node(basis, name, axes, units, kind=kind, activation=activation)
                )
                full = ((s,) if lead else ()) + index
                row["_index"] = int(np.ravel_multi_index(full, tuple(scores.shape))) if full else 0
                rows.append(row)
        return (*rows, metric_node(meta["metric"]))

    out: dict[str, tuple[Any, ...]] = {}
    if lead == "layer":
        out["layer"] = tuple(range(len(names)))
    elif lead == "site":
        out["site"] = tuple(names)
    longest = [max((c[i] for c in chosen), key=len) for i in range(len(axes))]
    out.update({a: tuple(c) for a, c in zip(axes, longest, strict=True)})
    if basis is not None:  # features by name, as patching labels them
        names_of = (*basis.labels, "error")
        out["feature"] = tuple(names_of[i] for i in out["feature"])
    all_axes = ((lead,) if lead else ()) + axes
    return AttributionResult(scores=scores, axes=all_axes, coords=out, node_table=node_rows, **meta)


def _with_feature(unit: UnitSpec) -> UnitSpec:
    """A unit over a basis spans its "feature" axis and the axes named (None: features alone;
    "pos": each feature at each position; {"pos": [-1]}: at the last only)."""
    if unit is None or unit == "all":
        return ("feature",) if unit is None else unit
    if isinstance(unit, str):
        unit = (unit,)
    if isinstance(unit, Mapping):
        return unit if "feature" in unit else {"feature": None, **unit}
    return tuple(unit) if "feature" in unit else ("feature", *unit)


def _kind(basis: FeatureBasis, info: Site) -> str:
    """The node kind of the basis's features at the site `info` (before `feature_site`)."""
    axis = info.axes[basis.dim] if -len(info.axes) <= basis.dim < len(info.axes) else None
    return feature_kind(basis, info.name, axis)


def _pick(t: Tensor, coords: list[list[int]]) -> Tensor:
    """`t` restricted to the chosen indices along each axis (a no-op where all are chosen)."""
    for dim, idx in enumerate(coords):
        if idx != list(range(t.shape[dim])):
            t = t.index_select(dim, torch.tensor(idx, device=t.device))
    return t


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


def _input_grad(model: nn.Module, x: Tensor, metric: MetricFn) -> tuple[Tensor, float]:
    leaf = x.detach().requires_grad_(True)
    output = run(model, leaf, grad=True).output
    with torch.enable_grad():
        value = metric_value(metric, output)
    (grad,) = torch.autograd.grad(differentiable(value), [leaf])
    return grad, float(value.detach())
