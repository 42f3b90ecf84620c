"""Pieces every attribution method shares: the integration path, checks, batching of path points.

Path methods (integrated gradients, EAP-IG) evaluate gradients at points `baseline + alpha *
(input - baseline)` and weight them by a quadrature rule. `IGPath` holds the number of steps and
the rule, with Captum's names; `path_runs` runs many path points stacked along the batch, so a
forward pass serves several alphas at once, and hands back gradients already weighted by the rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import einops
import numpy as np
import torch
from torch import Tensor, nn

from circuits.errors import ConfigError
from circuits.hooks import run
from circuits.inputs import repeat, split
from circuits.loops import chunks, progress_bar
from circuits.metrics import MetricFn, differentiable, metric_value

Rule = Literal[
    "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"
]

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
) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor], int]]:
    """Gradients along the path base -> source, several path points per forward pass.

    Each pass stacks k points along the batch (variant-major, k * B rows). With `replace`, the
    model runs `context` (repeated k times) with that site replaced by the points; without, the
    points are the model's input. The metric of variant i is weighted by the rule's weight, so a
    gradient summed over the k variants (`fold`) is that chunk's share of the path integral.
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
            if replace is None:
                ran = run(model, x, record=names, grad=True)
            else:
                context_k = repeat(context, len(part))
                ran = run(model, context_k, replace={replace: x}, record=names, grad=True)
            with torch.enable_grad():
                value = weighted(ran.output)
            recorded = {**ran.recorded, **({replace: x} if replace else {})}  # what ran there
            wrt = [x, *(recorded[n] for n in grads)]
            found = torch.autograd.grad(differentiable(value), wrt, allow_unused=True)
            out = {
                name: torch.zeros_like(t) if g is None else g
                for name, t, g in zip([POINTS, *grads], wrt, found, strict=True)
            }
            yield out, {n: recorded[n].detach() for n in acts}, len(part)
            bar.update(len(part))
