"""The clean (and baseline) runs that fix a feature graph's nodes, and its adjacency matrix.

`trace` runs the model once with the dictionaries' sites recorded: each dictionary's active
latents (and, against a corrupted input, those active there too) become its nodes, and what it
misses becomes its error rows. `adjacency` differentiates every target (a node's pre-activation,
an output) by every leaf of the replacement model and multiplies by the leaf's change:

    A[t, s] = (s_clean - s_base) . mean over points on the path of d t / d s

One point (the clean run) for "direct" and "attribution_patching", the midpoints of `steps`
intervals for "ig". The targets are handled `batch` at a time with batched vector-Jacobian
products (`is_grads_batched`): one forward pass per point and one backward pass per batch of
targets, whatever the number of source positions. Memory: the matrix, [targets, sources] with
both about the number of active latents, and one batch of leaf gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from circuits.dictionaries import Dictionary
from circuits.dictionaries.data import feature_dim
from circuits.errors import ConfigError, InputError, ShapeMismatchError
from circuits.hooks import run
from circuits.ids import block_of
from circuits.inputs import check_pair
from circuits.loops import chunks, progress_bar
from circuits.site import Site

from .replacement import Leaves, Point, Spliced, decoded, forward, to_rows

Outputs = Callable[[Any], Tensor]


@dataclass
class Traced:
    """What the clean run fixed: the spliced dictionaries with their nodes, the leaves at the
    clean run and at the baseline, the clean output, the held (frozen) values."""

    spliced: list[Spliced]
    clean: Leaves
    base: Leaves
    output: Any
    input_site: str
    input_dim: int
    input_shape: tuple[int, ...]
    held: dict[str, list[Tensor]] | None
    sites: dict[str, Site]
    tokens: Tensor | None


def trace(
    model: nn.Module,
    inputs: Any,
    dictionaries: Sequence[Dictionary],
    *,
    input_site: str,
    freeze: Sequence[str] | None,
    corrupt: Any = None,
) -> Traced:
    """Run clean (and corrupt) once; nodes are latents active in either run.

    freeze: sites the linearised model holds at their clean values (None: the real model).
    """
    record = list(dict.fromkeys([input_site, *(s for d in dictionaries for s in sites_of(d))]))
    ran = run(model, inputs, record=record, freeze=list(freeze or ()))
    other = None
    if corrupt is not None:
        check_pair(inputs, corrupt)
        other = run(model, corrupt, record=record).recorded
    order = list(ran.sites)
    ordered = sorted(dictionaries, key=lambda d: order.index(sites_of(d)[1]))
    spliced, clean, base = [], _empty(), _empty()
    for rank, d in enumerate(ordered):
        read, write = sites_of(d)
        if order.index(input_site) > order.index(read):
            raise ConfigError(
                f"input_site {input_site!r} runs after {read!r}, which a dictionary reads; the "
                "input nodes must come first: pass an earlier input_site (the model's input)"
            )
        d = d.to(device=ran.recorded[read].device)
        dims = [_dim(d, ran.sites[site], ran.recorded[site]) for site in (read, write)]
        sp, at_clean, at_base = _splice(d, rank, ran.recorded, dims, other)
        spliced.append(sp)
        for leaves, (values, error) in ((clean, at_clean), (base, at_base)):
            leaves.values.append(values)
            leaves.errors.append(error)
    in_dim = feature_dim(ran.sites[input_site], None)
    x = ran.recorded[input_site]
    clean.input = to_rows(x, in_dim)
    base.input = to_rows(other[input_site], in_dim) if other else torch.zeros_like(clean.input)
    held = ran.frozen if freeze is not None else None
    tokens = inputs[0] if isinstance(inputs, Tensor) and not inputs.is_floating_point() else None
    return Traced(spliced, clean, base, ran.output, input_site, in_dim, tuple(x.shape), held,
                  ran.sites, tokens)  # fmt: skip


def _dim(d: Dictionary, site: Site, act: Tensor) -> int:
    """The dictionary's feature axis at `site`, checked: its width, and no axes but batch,
    positions or (h, w) besides it (each row of a graph is one position)."""
    dim = feature_dim(site, d.config.axis)
    width = d.config.d_in if site.name == d.config.site else d.config.width
    if act.shape[dim] != width:
        raise ShapeMismatchError(
            f"the dictionary for {d.config.site!r} has width {width} at {site.name!r}, but that "
            f"site's feature axis ({site.axes[dim]!r}) has {act.shape[dim]} (activation shape "
            f"{tuple(act.shape)}); pass the dictionary trained on this site"
        )
    extra = set(site.axes) - {"batch", "pos", "h", "w", site.axes[dim]}
    if extra:
        raise ConfigError(
            f"a feature graph places each row of {site.name!r} at a position or (h, w); its axes "
            f"{site.axes} also have {sorted(extra)}: read a site without them (hook_z's heads: "
            "use hook_result or attn_out)"
        )
    return dim


def _empty() -> Leaves:
    return Leaves(torch.zeros(0), [], [])


def sites_of(d: Dictionary) -> tuple[str, str]:
    """(read, write): the site a dictionary encodes and the one it reconstructs."""
    c = d.config
    read = str(c.site)
    return read, str(c.target_site) if c.kind == "transcoder" else read


def _splice(
    d: Dictionary,
    rank: int,
    clean: Mapping[str, Tensor],
    dims: list[int],
    other: Mapping[str, Tensor] | None,
) -> tuple[Spliced, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The Spliced record, (values, error) at the clean run and at the baseline."""
    read, write = sites_of(d)
    acts = _encode(d, clean[read], dims[0])
    active = acts != 0
    if other is not None:
        acts_o = _encode(d, other[read], dims[0])
        active |= acts_o != 0
    index = active.nonzero()
    layer = block_of(write)
    error = _error(d, clean[write], acts, dims[1])
    values = acts[index[:, 0], index[:, 1]]
    rows = to_rows(clean[write].detach(), dims[1])
    sp = Spliced(d, read, write, layer if layer >= 0 else rank, dims[0], dims[1],
                 tuple(clean[write].shape), index, rows, rows)  # fmt: skip
    with torch.no_grad():
        sp = replace(sp, offset=decoded(sp, values.clone(), error.clone()))
    if other is None:
        return sp, (values, error), (torch.zeros_like(values), torch.zeros_like(error))
    base = (acts_o[index[:, 0], index[:, 1]], _error(d, other[write], acts_o, dims[1]))
    return sp, (values, error), base


def _encode(d: Dictionary, act: Tensor, dim: int) -> Tensor:
    with torch.no_grad():
        return d.encode(to_rows(act.detach(), dim))


def _error(d: Dictionary, written: Tensor, acts: Tensor, dim: int) -> Tensor:
    with torch.no_grad():
        return to_rows(written.detach(), dim) - d.decode(acts)


def adjacency(
    model: nn.Module,
    inputs: Any,
    traced: Traced,
    outputs: Outputs,
    *,
    points: Sequence[float],
    batch: int,
    progress: bool | None,
) -> Tensor:
    """A [targets, sources] (module docstring).

    Targets: every node's pre-activation (spliced order), then `outputs(model output)`.
    Sources: every node (spliced order), every error row, every input row.
    """
    delta = traced.clean.minus(traced.base)
    n_targets = sum(sp.n for sp in traced.spliced) + int(outputs(traced.output).numel())
    a = torch.zeros(0)
    passes = len(points) * len(range(0, n_targets, batch))
    with progress_bar(passes, "feature graph", progress, unit="pass") as bar:
        for alpha in points:
            point = _point(model, inputs, traced, alpha)
            targets = torch.cat([*point.pre, outputs(point.output).reshape(-1)])
            part = _columns(point, targets, delta, batch, bar.update) / len(points)
            a = part if a.numel() == 0 else a + part
    return a


def _point(model: nn.Module, inputs: Any, traced: Traced, alpha: float) -> Point:
    leaves = traced.clean.lerp(traced.base, alpha) if alpha != 1.0 else traced.clean.detached()
    return forward(model, inputs, traced.spliced, leaves, input_site=traced.input_site,
                   input_dim=traced.input_dim, freeze=traced.held)  # fmt: skip


def _columns(
    point: Point, targets: Tensor, delta: Leaves, batch: int, done: Callable[[int], Any]
) -> Tensor:
    """Rows of A for every target: gradients by every leaf, times the leaf's change."""
    leaves = point.leaves.all()
    n_t = targets.shape[0]
    rows = []
    for part in chunks(n_t, batch):
        seeds = targets.new_zeros(len(part), n_t)
        seeds[torch.arange(len(part)), torch.tensor(list(part))] = 1.0
        found = torch.autograd.grad(targets, leaves, seeds, retain_graph=True, allow_unused=True,
                                    is_grads_batched=True)  # fmt: skip
        grads = [
            t.new_zeros(len(part), *t.shape) if g is None else g
            for g, t in zip(found, leaves, strict=True)
        ]
        k = len(delta.values)
        g_in, g_vals, g_errs = grads[0], grads[1 : 1 + k], grads[1 + k :]
        cols = [g * v for g, v in zip(g_vals, delta.values, strict=True)]
        cols += [(g * e).sum(-1) for g, e in zip(g_errs, delta.errors, strict=True)]
        cols.append((g_in * delta.input).sum(-1))
        rows.append(torch.cat(cols, dim=1).detach())
        done(1)
    return torch.cat(rows)


def path_points(method: str, steps: int) -> list[float]:
    """The points on the path from the baseline (0) to the clean run (1) a method evaluates:
    the clean run itself, or IG's `steps` midpoints."""
    return [(i + 0.5) / steps for i in range(steps)] if method == "ig" else [1.0]


def check_dictionaries(ds: Any) -> list[Dictionary]:
    """The dictionaries as a list, checked: each keyed by the site it reads, with the sites it
    reads and writes named, no two reading one site (their nodes would share keys) and no two
    writing one."""
    items = list(ds.items()) if isinstance(ds, Mapping) else [(None, d) for d in ds]
    if not items:
        raise ConfigError("dictionaries is empty; pass {site: Dictionary, ...}")
    out = []
    for key, d in items:
        if not isinstance(d, Dictionary):
            raise ConfigError(f"dictionaries must hold Dictionary objects, got {type(d).__name__}")
        if not d.config.site or (d.config.kind == "transcoder" and not d.config.target_site):
            raise ConfigError(
                "a dictionary names no site (a transcoder: no target_site); set config.site "
                "(and target_site) to the sites it was trained on"
            )
        if key is not None and key != d.config.site:
            raise ConfigError(
                f"the dictionary keyed {key!r} reads {d.config.site!r}; key it by its site"
            )
        out.append(d)
    for i, what in ((0, "read"), (1, "reconstruct")):
        names = [sites_of(d)[i] for d in out]
        if len(set(names)) < len(names):
            raise ConfigError(f"two dictionaries {what} the same site ({names}); keep one")
    return out


def last_logits(output: Any) -> Tensor:
    """The output vector a graph explains: the logits at the last position (a classifier's
    logits) of the one example."""
    if not isinstance(output, Tensor) or output.ndim < 2:
        raise InputError(
            "a feature graph explains a tensor output [1, (pos,) n]; this model returned "
            f"{type(output).__name__}: pass metric= (attribution_patching, ig)"
        )
    out = output[0]
    return out[-1] if out.ndim >= 2 else out


def centred_logits(output: Any, dtype: torch.dtype | None = None) -> Tensor:
    """The last position's logits (in `dtype`) minus their mean: what a graph's logit outputs
    explain."""
    logits = last_logits(output).to(dtype)
    return logits - logits.mean()
