"""Activation patching: the metric after replacing one unit of one site, for every unit, batched.

Denoising runs the corrupted input and patches in the clean activation (TransformerLens's
`get_act_patch_*` convention): a unit whose clean value restores the clean behaviour matters.
Noising runs the clean input and patches in the corrupted activation. Ablation runs the clean input
and replaces the unit with the corrupted value ("patch"), zero, its mean over a reference batch,
or its value on another example ("resample"); with "zero" or a reference no corrupted input is
needed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Num
from torch import Tensor, nn

from circuits.adapters.transformer_lens import check_editable
from circuits.capture import Baseline, ablated, ablation_values, capture
from circuits.errors import ConfigError, ShapeMismatchError
from circuits.hooks.variants import Budget, SitePatch, base_run
from circuits.inputs import check_pair
from circuits.loops import chunks, progress_bar
from circuits.metrics import MetricFn, check_metric, metric_name, metric_value
from circuits.options import Ablation, Direction, check_choice, configure, runs
from circuits.site import expand_sites, resolve
from circuits.units import UnitSpec, parse_unit, unit_mask

from .result import PatchingResult


def patch(
    model: nn.Module,
    clean: Num[Tensor, "batch ..."] | Any,
    corrupt: Num[Tensor, "batch ..."] | Any | None,
    metric: MetricFn,
    *,
    site: str | Sequence[str],
    unit: UnitSpec = None,
    direction: Direction | None = None,
    ablation: Ablation | None = None,
    reference: Any = None,
    seed: int = 0,
    budget: Budget | None = None,
    **budget_options: Any,
) -> PatchingResult:
    """Patch each unit of `site` in turn and measure `metric` on the model's output.

    site: a site name, a list of names, or a pattern with `{L}` for every layer
        ("blocks.{L}.hook_resid_pre"); several sites add a leading "site" / "layer" axis.
    unit: the axes a unit spans, by name (`circuits.units`): ("pos",) on the residual stream,
        ("head",) or ("pos", "head") on hook_z / hook_q / hook_pattern, ("d_mlp",) on
        mlp.hook_post, ("channel",) or ("channel", "h", "w") on a conv activation; a mapping
        picks indices ({"pos": [-1], "head": None}); None patches the whole site at once.
    metric: `metric(output) -> scalar tensor` for one run (see circuits.metrics); it may declare
        `metric.positions`, the positions it reads, so logits are computed only there.
    direction: "denoise" (default; run corrupt, patch in clean) or "noise" (run clean, patch in
        corrupt). ablation: run clean and replace the unit by the corrupted run's value
        ("patch", the same as direction="noise"), zero, its mean over `reference` (default: the
        corrupted batch, else clean), or its value on a random other example of that batch
        ("resample", drawn with `seed`); corrupt may then be None (`circuits.capture.Baseline`).
    budget (or its fields as keywords: max_batch, memory, fast, progress): rows per forward pass
        (variants x batch) or a byte budget to pick it, whether to resume each variant from the
        cached residual stream before the patched block (TransformerLens models; checked against
        the full forward first), and the progress bar (None: only on a terminal). See `Budget`.

    Returns a PatchingResult whose `values` has the site axis (if any) then the unit axes.
    The model must treat examples independently (eval mode): variants share a batch.
    """
    budget = configure(Budget, budget, budget_options)
    check_metric(metric)
    baseline = Baseline(ablation=ablation, reference=reference, seed=seed)
    if ablation is None:
        if corrupt is None:
            raise ConfigError(
                "corrupt is None: pass corrupted inputs, or ablation='zero' / 'mean' / 'resample'"
            )
        chosen: Direction = check_choice(direction or "denoise", Direction, "direction")
    else:
        baseline.chosen(corrupt)
        if direction not in (None, "noise"):
            raise ConfigError(
                f"ablation={ablation!r} replaces values in the clean run (direction='noise'); "
                "omit direction, or pass ablation=None with direction='denoise'"
            )
        chosen = "noise"
    if corrupt is not None:
        check_pair(clean, corrupt)
    names, lead, lead_coords = expand_sites(model, site)
    resolve(model, names)
    check_editable(model, names)

    base, source = runs(chosen, clean, corrupt)
    source_value = None
    run = base_run(model, base, metric, sites=names, budget=budget)
    if ablation is None:
        src = capture(model, source, sites=names, metric=metric)
        source_value = src.metric
        _check_shapes(src, run.sites, "source")
        sources = ablation_values(src, "patch", batch=run.batch)
    else:
        sources, source_value = ablated(model, names, baseline, clean, corrupt, batch=run.batch,
                                        metric=metric, like=run.acts)  # fmt: skip
        _check_shapes(sources, run.sites, "reference")

    sites = [run.sites[n] for n in names]
    units = [parse_unit(unit, s) for s in sites]
    axes = units[0][0]
    sizes = [max(len(c[i]) for _, c in units) for i in range(len(axes))]
    values = torch.full(([len(names)] if lead else []) + sizes, math.nan)
    total = sum(math.prod(len(c) for c in coords) for _, coords in units)
    with progress_bar(total, "patching", budget.progress, unit="patch") as bar:
        for s, (name, info, (_, coords)) in enumerate(zip(names, sites, units, strict=True)):
            cells = list(itertools.product(*(range(len(c)) for c in coords)))
            for part in chunks(len(cells), run.per_pass):
                picks = [tuple(c[i] for c, i in zip(coords, cells[j], strict=True)) for j in part]
                mask = unit_mask(info, axes, picks)
                outs, _ = run.runner.forward(
                    len(part),
                    {name: [SitePatch(mask, sources[name])]},
                    start=run.runner.start([name]),
                )
                assert outs is not None  # full passes always return outputs
                for j, out in zip(part, outs, strict=True):
                    where = ((s,) if lead else ()) + cells[j]
                    values[where] = metric_value(metric, out).detach().float().cpu()
                bar.update(len(part))

    longest = [max((c[i] for _, c in units), key=len) for i in range(len(axes))]
    coords_out = {lead: tuple(lead_coords)} if lead else {}
    coords_out.update({a: tuple(c) for a, c in zip(axes, longest, strict=True)})
    if ablation is None:
        clean_value, corrupt_value = runs(chosen, run.value, source_value)
        method = str(chosen)
    else:
        clean_value, corrupt_value, method = run.value, source_value, str(ablation)
    return PatchingResult(
        values=values,
        axes=((lead,) if lead else ()) + axes,
        coords=coords_out,
        baseline=run.value,
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        method=method,
        metric=metric_name(metric),
        sites=tuple(names),
    )


def _check_shapes(cache: Any, sites: Any, what: str) -> None:
    """The source or reference run must give each site the base run's shape (a reference may
    have another batch size)."""
    for name, acts in cache.items():
        want = sites[name].shape
        if tuple(acts.shape[1:]) != want[1:] or (what == "source" and acts.shape[0] != want[0]):
            raise ShapeMismatchError(
                f"the {what} run gives {name!r} the shape {tuple(acts.shape)}, the run it is "
                f"patched into {want}; apart from a reference's batch size they must agree (same "
                "sequence length or image size)"
            )
