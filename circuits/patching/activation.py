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
from circuits.features import FeatureBasis, ablated_coordinates, check_basis
from circuits.hooks.variants import Budget, SitePatch, base_run
from circuits.inputs import check_pair
from circuits.loops import chunks, progress_bar
from circuits.metrics import MetricFn, check_metric, metric_name, metric_value
from circuits.options import Ablation, Direction, check_choice, configure, runs
from circuits.site import Site, expand_sites, resolve
from circuits.units import UnitSpec, parse_unit, unit_mask

from .features import FeaturePatches, feature_nodes, feature_units
from .result import PatchingResult


def patch(
    model: nn.Module,
    clean: Num[Tensor, "batch ..."] | Any,
    corrupt: Num[Tensor, "batch ..."] | Any | None,
    metric: MetricFn,
    *,
    site: str | Sequence[str] | None = None,
    unit: UnitSpec = None,
    basis: FeatureBasis | None = None,
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
    basis: patch each feature of a feature basis (UnitBasis, DirectionBasis, a dictionary's
        latents) at its site instead, then its error term: `basis.ablate` moves one feature's
        coefficient to its source (or ablated) value and leaves the rest, error included. The
        values' first axis is "feature" (the basis's labels, then "error"); unit may add other
        axes ("pos", or {"pos": [-1]}) to patch each feature at each of their indices alone.
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

    Returns a PatchingResult whose `values` has the site axis (if any) then the unit axes
    ("feature" first with a basis).
    The model must treat examples independently (eval mode): variants share a batch.

    Shapes: clean and corrupt are the model's inputs (tokens [batch, pos], images [batch,
    channel, h, w], or a tuple / dict of them), of the same structure and shapes. `values` holds
    one metric value per unit: [layer, head] for `site="blocks.{L}.attn.hook_z", unit="head"`,
    [pos, head] for one hook_z site and `unit=("pos", "head")`, [channel] for a conv site and
    `unit="channel"`, [] for `unit=None`; with a basis, [feature] (k + 1: the features, then
    "error"), or [feature, pos] with `unit="pos"`.

    For example:

        res = cc.patch(model, clean, corrupt, metric, site="blocks.{L}.attn.hook_z", unit="head")
        res.values.shape                        # [n_layers, n_heads]; res.top(5), res.plot()
        res = cc.patch(cnn, images, None, metric, site="relu1", unit="channel", ablation="mean")
        basis = sae.as_basis(site="blocks.1.hook_resid_pre")
        res = cc.patch(model, clean, corrupt, metric, basis=basis)   # [feature]: latents, error

    Raises:
        ConfigError: neither site nor basis is given, a basis has no site or lives at another
            site, or at a `{L}` pattern; corrupt is None without an ablation that does without
            it; `direction` is not "denoise" / "noise" (or is "denoise" with an ablation);
            `site` is not a name, a pattern or a list of distinct names; `unit` names an axis
            twice; `metric` is not callable; a budget option is unknown or invalid.
        ShapeMismatchError: clean and corrupt differ in structure or shape, a reference batch
            gives a site another shape (apart from its batch size), or a basis does not fit its
            site.
        SiteNotFoundError: a site is not one of the model's.
        ModelError: a `{L}` pattern on a model that is not a TransformerLens model, a site a
            TransformerBridge does not read edits back from (hook_attn_scores), or a model that
            is not a torch module in eval mode.
        InputError: `unit` names an axis the site does not have (or the batch axis), an index
            is out of range, or the forward pass fails.
        MetricError: the metric does not return a finite scalar float tensor.
    """
    budget = configure(Budget, budget, budget_options)
    check_metric(metric)
    if basis is not None:
        site = check_basis(basis, site, "patch")
    elif site is None:
        raise ConfigError(
            "patch needs site=... (a name, a list, or a pattern with {L}) or basis=... (a "
            "feature basis, which names its site)"
        )
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
    if basis is not None and lead:
        raise ConfigError(f"a basis lives at one site, not a pattern: got {basis.site!r}")
    resolve(model, names)
    check_editable(model, names)

    base, source = runs(chosen, clean, corrupt)
    source_value = None
    run = base_run(model, base, metric, sites=names, budget=budget)
    sites = [run.sites[n] for n in names]
    if basis is not None:
        units = [feature_units(basis, sites[0], unit)]
        given = baseline if ablation is not None else Baseline(ablation="patch")
        at, source_value = ablated_coordinates(
            model, basis, given, base, source, batch=run.batch, like=run.acts, metric=metric
        )
        write = FeaturePatches(basis, run.acts[names[0]], at).site_patch
    else:
        if ablation is None:
            src = capture(model, source, sites=names, metric=metric)
            source_value = src.metric
            _check_shapes(src, run.sites, "source")
            sources = ablation_values(src, "patch", batch=run.batch)
        else:
            sources, source_value = ablated(
                model, names, baseline, clean, corrupt, batch=run.batch, metric=metric,
                like=run.acts,
            )  # fmt: skip
            _check_shapes(sources, run.sites, "reference")
        units = [parse_unit(unit, s) for s in sites]

        def write(info: Site, axes: Sequence[str], picks: Sequence[tuple[int, ...]]) -> SitePatch:
            """Variant j takes the source where its unit, picks[j], is."""
            return SitePatch(unit_mask(info, axes, picks), sources[info.name])

    axes = units[0][0]
    sizes = [max(len(c[i]) for _, c in units) for i in range(len(axes))]
    values = torch.full(([len(names)] if lead else []) + sizes, math.nan)
    total = sum(math.prod(len(c) for c in coords) for _, coords in units)
    with progress_bar(total, "patching", budget.progress, unit="patch") as bar:
        for s, (name, info, (_, coords)) in enumerate(zip(names, sites, units, strict=True)):
            cells = list(itertools.product(*(range(len(c)) for c in coords)))
            for part in chunks(len(cells), run.per_pass):
                picks = [tuple(c[i] for c, i in zip(coords, cells[j], strict=True)) for j in part]
                outs, _ = run.runner.forward(
                    len(part), {name: [write(info, axes, picks)]}, start=run.runner.start([name])
                )
                assert outs is not None  # full passes always return outputs
                for j, out in zip(part, outs, strict=True):
                    where = ((s,) if lead else ()) + cells[j]
                    values[where] = metric_value(metric, out).detach().float().cpu()
                bar.update(len(part))

    longest = [max((c[i] for _, c in units), key=len) for i in range(len(axes))]
    coords_out = {lead: tuple(lead_coords)} if lead else {}
    coords_out.update({a: tuple(c) for a, c in zip(axes, longest, strict=True)})
    feature_ids, kind = ((), "feature") if basis is None else feature_nodes(basis, sites[0])
    if basis is not None:
        coords_out["feature"] = (*basis.labels, "error")
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
        feature_units=feature_ids,
        feature_kind=kind,
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
