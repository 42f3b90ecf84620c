"""Pieces every attribution method shares: the integration path, checks, batching of path points.

Path methods (integrated gradients, EAP-IG) evaluate gradients at points `baseline + alpha *
(input - baseline)` and weight them by a quadrature rule. `IGPath` holds the number of steps and
the rule, with Captum's names; `path_runs` runs many path points stacked along the batch, so a
forward pass serves several alphas at once, and hands back gradients already weighted by the rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import einops
import numpy as np
import torch
from torch import Tensor, nn

from circuits.errors import ConfigError, ShapeMismatchError
from circuits.features import FeatureBasis, UnitBasis
from circuits.hooks import run
from circuits.ids import NodeId, block_of, node_kind, node_row, unit_node
from circuits.inputs import repeat, split
from circuits.loops import chunks, progress_bar
from circuits.metrics import MetricFn, differentiable, metric_value
from circuits.site import Site

Rule = Literal[
    "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"
]
"""A quadrature rule for a path integral, by Captum's names (`IGPath` says where each places its
points and how it weights them). "gausslegendre", the default, needs fewer steps than the Riemann
rules for the same accuracy; Hanna et al.'s EAP-IG is "riemann_left"."""

DEFAULT_MAX_BATCH = 256
POINTS = ""  # the key of the gradient with respect to the path points themselves


@dataclass(frozen=True)
class IGPath:
    """How a path integral is approximated: `steps` points placed by `rule` (Captum's names).

    riemann_left / right / middle: alphas k/n, (k+1)/n, (k+1/2)/n, each weighted 1/n.
    riemann_trapezoid: alphas linspace(0, 1, n), weights 1/(n-1) with the two ends halved, so the
    weights sum to 1. (Captum weights every point 1/n and halves the ends, so its trapezoid sums
    to 1 - 1/n; its attributions are ours times (n-1)/n.)
    gausslegendre: Gauss-Legendre nodes and weights mapped from [-1, 1] to [0, 1].
    """

    steps: int = 32
    rule: Rule = "gausslegendre"

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be a positive int, got {self.steps!r}")
        if self.rule not in get_args(Rule):
            raise ConfigError(f"rule must be one of {get_args(Rule)}, got {self.rule!r}")
        if self.rule == "riemann_trapezoid" and self.steps < 2:
            raise ConfigError("riemann_trapezoid needs steps >= 2 (both ends of the path)")

    def points(self) -> tuple[list[float], list[float]]:
        """(alphas, weights) of the rule as Python floats (the alphas Captum uses, to the bit)."""
        n = self.steps
        if self.rule == "gausslegendre":
            x, w = np.polynomial.legendre.leggauss(n)
            return (0.5 * (1 + x)).tolist(), (0.5 * w).tolist()
        if self.rule == "riemann_trapezoid":
            weights = [1 / (n - 1)] * n
            weights[0] /= 2
            weights[-1] /= 2
            return torch.linspace(0, 1, n).tolist(), weights
        ends = {
            "riemann_left": (0.0, 1 - 1 / n),
            "riemann_right": (1 / n, 1.0),
            "riemann_middle": (1 / (2 * n), 1 - 1 / (2 * n)),
        }[self.rule]
        return torch.linspace(*ends, n).tolist(), [1 / n] * n


def weighted_metric(metric: MetricFn, weights: Sequence[float], batch: int) -> MetricFn:
    """sum_i weights[i] * metric(rows of variant i): one backward pass weights every variant."""

    def fn(output: Any) -> Tensor:
        parts = split(output, len(weights), batch)
        return torch.stack(
            [w * metric_value(metric, p) for w, p in zip(weights, parts, strict=True)]
        ).sum()

    return fn


def interpolate(base: Tensor, source: Tensor, alphas: Sequence[float]) -> Tensor:
    """[k * B, ...]: base + alpha * (source - base) for each alpha, variant-major."""
    a = torch.tensor(list(alphas), dtype=base.dtype, device=base.device)
    a = a.reshape(-1, *([1] * base.ndim))
    return einops.rearrange(base + a * (source - base), "k b ... -> (k b) ...")


def fold(t: Tensor, k: int, dim: int = 0) -> Tensor:
    """Sum the k variants of a tensor stacked along `dim` ([..., k * B, ...] -> [..., B, ...])."""
    return t.unflatten(dim, (k, -1)).sum(dim)


def reduce_to(t: Tensor, axes: Sequence[str], keep: Sequence[str]) -> Tensor:
    """Sum `t` (axes named `axes`) over every axis not in `keep`, ordered as `keep`."""
    pattern = f"{' '.join(axes)} -> {' '.join(keep)}"
    return einops.reduce(t, pattern, "sum")


def stack_padded(parts: Sequence[Tensor]) -> Tensor:
    """Stack tensors of equal rank, padding smaller ones with NaN (sites of different sizes)."""
    shape = [max(p.shape[i] for p in parts) for i in range(parts[0].ndim)]
    out = parts[0].new_full((len(parts), *shape), math.nan)
    for i, p in enumerate(parts):
        index: tuple[Any, ...] = (i, *(slice(0, s) for s in p.shape))
        out[index] = p
    return out


def path_runs(
    model: nn.Module,
    context: Any,
    *,
    replace: str | None,
    base: Tensor,
    source: Tensor,
    path: IGPath,
    metric: MetricFn,
    grads: Sequence[str] = (),
    acts: Sequence[str] = (),
    max_batch: int,
    show: bool | None,
    desc: str,
    to_site: Callable[[Tensor], Tensor] | None = None,
) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor], int]]:
    """Gradients along the path base -> source, several path points per forward pass.

    Each pass stacks k points along the batch (variant-major, k * B rows). With `replace`, the
    model runs `context` (repeated k times) with that site replaced by the points; without, the
    points are the model's input. The metric of variant i is weighted by the rule's weight, so a
    gradient summed over the k variants (`fold`) is that chunk's share of the path integral.
    to_site: what a point becomes at the site (`feature_act`: a path in a basis's coordinates);
    the gradient at the points is then with respect to those coordinates.
    Yields (gradients: at the points (key POINTS) and at each site in `grads`; activations at
    the sites in `acts`; k).
    """
    alphas, weights = path.points()
    batch = base.shape[0]
    per_pass = max(1, max_batch // max(1, batch))
    with progress_bar(len(alphas), desc, show) as bar:
        for part in chunks(len(alphas), per_pass):
            x = interpolate(base, source, [alphas[i] for i in part]).detach().requires_grad_(True)
            weighted = weighted_metric(metric, [weights[i] for i in part], batch)
            names = [n for n in dict.fromkeys([*grads, *acts]) if n != replace]
            with torch.enable_grad():
                at_site = x if to_site is None else to_site(x)
            if replace is None:
                ran = run(model, at_site, record=names, grad=True)
            else:
                context_k = repeat(context, len(part))
                ran = run(model, context_k, replace={replace: at_site}, record=names, grad=True)
            with torch.enable_grad():
                value = weighted(ran.output)
            recorded = {**ran.recorded, **({replace: at_site} if replace else {})}  # what ran
            wrt = [x, *(recorded[n] for n in grads)]
            found = torch.autograd.grad(differentiable(value), wrt, allow_unused=True)
            out = {
                name: torch.zeros_like(t) if g is None else g
                for name, t, g in zip([POINTS, *grads], wrt, found, strict=True)
            }
            yield out, {n: recorded[n].detach() for n in acts}, len(part)
            bar.update(len(part))


# Feature bases. A site's activation in a basis's coordinates is p = [coefficients, error] laid
# along the basis axis (size k + d): `feature_coords` and `feature_act` map between the two, so a
# path or a difference in p moves each feature and the error term on their own, and a gradient
# with respect to p is [J_decode^T g, g] (g: the gradient at the site).


def feature_act(basis: FeatureBasis, p: Tensor) -> Tensor:
    """The activation at feature coordinates p: decode(coefficients) + error."""
    k = basis.n_features
    return basis.decode(p.narrow(basis.dim, 0, k)) + p.narrow(basis.dim, k, basis.d)


def fold_error(basis: FeatureBasis, t: Tensor) -> Tensor:
    """A tensor in feature coordinates with its d error entries summed into one: k + 1 entries."""
    k = basis.n_features
    error = t.narrow(basis.dim, k, basis.d).sum(basis.dim, keepdim=True)
    return torch.cat([t.narrow(basis.dim, 0, k), error], dim=basis.dim)


def feature_site(basis: FeatureBasis, info: Site) -> Site:
    """`info` with the basis axis renamed "feature", of size k + 1 (the features, then error)."""
    n = len(info.axes)
    dim = basis.dim % n if -n <= basis.dim < n else None
    if dim is None or info.shape[dim] != basis.d:
        raise ShapeMismatchError(
            f"the basis acts on axis {basis.dim} of size {basis.d}, but site {info.name!r} has "
            f"shape {info.shape} (axes {info.axes}); build the basis for this site (its d and "
            "dim)"
        )
    axes, shape = list(info.axes), list(info.shape)
    axes[dim], shape[dim] = "feature", basis.n_features + 1
    return Site(info.name, tuple(axes), tuple(shape))


def feature_node(
    basis: FeatureBasis, site: str, axes: Sequence[str], index: Sequence[int], *, kind: str,
    activation: float = math.nan,
) -> dict[str, Any]:  # fmt: skip
    """The graph node of one feature of `basis` at `site` (`index` along `axes`, one of them
    "feature"; index n_features is the error term), placed by its other axes (pos, h, w):
    `site[i]@pos` (a unit basis keeps its units' indices) or `site[error]@pos`."""
    where = dict(zip(axes, (int(i) for i in index), strict=True))
    f = where.pop("feature")
    rest, at = list(where), list(where.values())
    if f == basis.n_features:
        place = NodeId.parse(unit_node(site, rest, at)["key"])
        node = dataclasses.replace(place, error=True)
        label = f"{site} error" + str(node).removeprefix(site).removeprefix("[error]")
        return node_row(node, "error", layer=block_of(site), activation=activation, label=label)
    units = basis.units if isinstance(basis, UnitBasis) and basis.units else None
    row = unit_node(site, ["feature", *rest], [units[f] if units else f, *at],
                    activation=activation)  # fmt: skip
    where_at = row["key"].partition("@")[2]
    row.update(kind=kind, label=basis.labels[f] + (f"@{where_at}" if where_at else ""))
    return row


def feature_kind(basis: FeatureBasis, site: str, axis: str | None) -> str:
    """The node kind of a basis's features at `site` (its axis named `axis`): a unit basis's
    units keep theirs (a channel, a neuron), any other basis's are features."""
    return node_kind(site, axis) if isinstance(basis, UnitBasis) else "feature"


def nan_matrix(rows: int, cols: int, device: torch.device | str = "cpu") -> Tensor:
    """A [rows, cols] edge matrix of NaN (no edge yet), in torch's default dtype. On the CPU numpy
    allocates it: numpy asks Linux for huge pages on large arrays, so a conv net's 90 MB matrix
    costs a few hundred page faults instead of some 22,000, and is made about 2.5x faster."""
    dtype = torch.get_default_dtype()
    if torch.device(device).type != "cpu" or dtype not in (torch.float32, torch.float64):
        return torch.full((rows, cols), math.nan, device=device)
    return torch.from_numpy(np.full((rows, cols), np.nan, dtype=str(dtype).removeprefix("torch.")))
