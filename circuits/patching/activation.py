"""Activation patching: the metric after replacing one unit of one site, for every unit, batched.

Denoising runs the corrupted input and patches in the clean activation (TransformerLens's
`get_act_patch_*` convention): a unit whose clean value restores the clean behaviour matters.
Noising runs the clean input and patches in the corrupted activation. Ablation runs the clean input
and replaces the unit with zero, its mean over a reference batch, or its value on another example
(resample), with no corrupted input.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Num
from torch import Tensor, nn

from circuits.capture import capture, scalar_metric
from circuits.errors import ConfigError, ShapeMismatchError
from circuits.inputs import check_pair
from circuits.site import Site
from circuits.sweeps import chunks, expand_sites, layer_of, metric_name, progress_bar

from .common import Budget, base_run, check_metric, check_sites, start_layer
from .engine import DEFAULT_MEMORY, SitePatch
from .result import PatchingResult
from .spec import UnitSpec, parse_unit, unit_mask

Direction = Literal["denoise", "noise"]
Ablation = Literal["zero", "mean", "resample"]


def patch(
    model: nn.Module,
    clean: Num[Tensor, "batch ..."] | Any,
    corrupt: Num[Tensor, "batch ..."] | Any | None,
    metric: Callable[[Any], Tensor],
    *,
    site: str | Sequence[str],
    unit: UnitSpec = None,
    direction: Direction | None = None,
    ablation: Ablation | None = None,
    reference: Any = None,
    seed: int = 0,
    max_batch: int | None = None,
    memory: int = DEFAULT_MEMORY,
    fast: bool = True,
    progress: bool | None = None,
) -> PatchingResult:
    """Patch each unit of `site` in turn and measure `metric` on the model's output.

    site: a site name, a list of names, or a pattern with `{L}` for every layer
        ("blocks.{L}.hook_resid_pre"); several sites add a leading "site" / "layer" axis.
    unit: the axes a unit spans, by name: ("pos",) on the residual stream, ("head",) or
        ("pos", "head") on hook_z / hook_q / hook_pattern, ("d_mlp",) on mlp.hook_post,
        ("channel",) or ("channel", "h", "w") on a conv activation; a mapping picks indices
        ({"pos": [-1], "head": None}); None patches the whole site at once.
    metric: `metric(output) -> scalar tensor` for one run (see circuits.metrics); it may declare
        `metric.positions`, the positions it reads, so logits are computed only there.
    direction: "denoise" (default; run corrupt, patch in clean) or "noise" (run clean, patch in
        corrupt). ablation: "zero", "mean" or "resample" with corrupt=None: run clean and replace
        the unit by zero, its mean over `reference` (default: clean), or its value on a random
        other example of `reference` (drawn with `seed`).
    max_batch, memory: rows per forward pass (variants x batch), or a byte budget to pick it.
    fast: resume each variant from the cached residual stream before the patched block
        (TransformerLens models; checked against the full forward first).
    progress: show a tqdm bar (None: only on a terminal).

    Returns a PatchingResult whose `values` has the site axis (if any) then the unit axes.
    The model must treat examples independently (eval mode): variants share a batch.
    """
    budget = Budget(max_batch=max_batch, memory=memory, fast=fast, progress=progress)
    check_metric(metric)
    if ablation is None:
        if corrupt is None:
            raise ConfigError(
                "corrupt is None: pass corrupted inputs, or ablation='zero' / 'mean' / 'resample'"
            )
        direction = direction or "denoise"
        if direction not in ("denoise", "noise"):
            raise ConfigError(f"direction must be 'denoise' or 'noise', got {direction!r}")
        check_pair(clean, corrupt)
    else:
        if ablation not in ("zero", "mean", "resample"):
            raise ConfigError(f"ablation must be 'zero', 'mean' or 'resample', got {ablation!r}")
        if corrupt is not None:
            raise ConfigError("ablation replaces corrupted inputs: pass corrupt=None with it")
        if direction not in (None, "noise"):
            raise ConfigError("ablation runs the clean input (direction='noise'); omit direction")
    names, lead, lead_coords = expand_sites(model, site)
    check_sites(model, names)

    base = corrupt if direction == "denoise" else clean
    source_input = clean if direction == "denoise" else corrupt
    source_value, src = None, None
    if ablation is None:
        src = capture(model, source_input, sites=names, metric=metric)
        source_value = src.metric
    elif ablation != "zero":
        src = capture(model, clean if reference is None else reference, sites=names)
    run = base_run(
        model, base, metric, sites=names, layers=[layer_of(n) for n in names], budget=budget
    )

    sites = [run.cache.sites[n] for n in names]
    units = [parse_unit(unit, s) for s in sites]
    axes = units[0][0]
    sizes = [max(len(c[i]) for _, c in units) for i in range(len(axes))]
    values = torch.full(([len(names)] if lead else []) + sizes, math.nan)
    k = max(1, run.rows // run.batch)
    total = sum(math.prod(len(c) for c in coords) for _, coords in units)
    with progress_bar(total, "patching", budget.progress, unit="patch") as bar:
        for s, (name, info, (_, coords)) in enumerate(zip(names, sites, units, strict=True)):
            if src is not None:
                source = _source(src[name], info, ablation, run.batch, reference is None, seed)
            else:  # zero ablation
                source = torch.zeros((1, *info.shape[1:]), dtype=run.cache[name].dtype)
            cells = list(itertools.product(*(range(len(c)) for c in coords)))
            for part in chunks(len(cells), k):
                picks = [tuple(c[i] for c, i in zip(coords, cells[j], strict=True)) for j in part]
                mask = unit_mask(info, axes, picks)
                outs, _ = run.runner.forward(
                    len(part),
                    {name: [SitePatch(mask, source)]},
                    start=start_layer(run.runner, [name]),
                )
                assert outs is not None  # full passes always return outputs
                for j, out in zip(part, outs, strict=True):
                    where = ((s,) if lead else ()) + cells[j]
                    values[where] = scalar_metric(metric, out).detach().float().cpu()
                bar.update(len(part))

    longest = [max((c[i] for _, c in units), key=len) for i in range(len(axes))]
    coords_out = {lead: tuple(lead_coords)} if lead else {}
    coords_out.update({a: tuple(c) for a, c in zip(axes, longest, strict=True)})
    if ablation is None:
        clean_value = source_value if direction == "denoise" else run.value
        corrupt_value = run.value if direction == "denoise" else source_value
        method = str(direction)
    else:
        clean_value, corrupt_value, method = run.value, None, str(ablation)
    return PatchingResult(
        values=values,
        axes=((lead,) if lead else ()) + axes,
        coords=coords_out,
        baseline=run.value,
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        method=method,
        metric=metric_name(metric),
    )


def _source(
    acts: Tensor, site: Site, ablation: Ablation | None, batch: int, self_ref: bool, seed: int
) -> Tensor:
    """The replacement values for the site: the other run's activation, a mean, or a resample."""
    if tuple(acts.shape[1:]) != site.shape[1:] or (ablation is None and acts.shape[0] != batch):
        raise ShapeMismatchError(
            f"the {'reference' if ablation else 'source'} run gives {site.name!r} the shape "
            f"{tuple(acts.shape)}, the run it is patched into {site.shape}; apart from a "
            "reference's batch size they must agree (same sequence length or image size)"
        )
    if ablation is None:
        return acts
    if ablation == "mean":
        return acts.mean(0, keepdim=True)
    gen = torch.Generator().manual_seed(seed)
    n = acts.shape[0]
    if self_ref and n > 1:  # another example of the same batch, never the example itself
        pick = (torch.arange(batch) + torch.randint(1, n, (batch,), generator=gen)) % n
    else:
        pick = torch.randint(n, (batch,), generator=gen)
    return acts[pick.to(acts.device)]
