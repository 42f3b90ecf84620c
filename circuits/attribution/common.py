"""Pieces every attribution method shares: the integration path, checks, batching of path points.

Path methods (integrated gradients, EAP-IG) evaluate gradients at points `baseline + alpha *
(input - baseline)` and weight them by a quadrature rule. `IGPath` holds the number of steps and
the rule, with Captum's names; `path_runs` runs many path points stacked along the batch, so a
forward pass serves several alphas at once, and hands back gradients already weighted by the rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import einops
import numpy as np
import torch
from torch import Tensor, nn

from circuits.cache import ActivationCache
from circuits.capture import capture, run_model, scalar_metric
from circuits.errors import ConfigError, ModelError, ShapeMismatchError
from circuits.hooks import attach, require_fired
from circuits.inputs import repeat_rows
from circuits.site import Site
from circuits.sweeps import chunks, progress_bar

Rule = Literal[
    "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"
]
Direction = Literal["noise", "denoise"]
Metric = Callable[[Any], Tensor]
UnitSpec = str | Sequence[str] | None

DEFAULT_MAX_BATCH = 256


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


def check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def check_metric(metric: Any) -> None:
    if not callable(metric):
        raise ConfigError(
            f"metric must be a function of the model output returning a scalar tensor "
            f"(see circuits.metrics), got {type(metric).__name__}"
        )


def check_direction(direction: Any) -> Direction:
    if direction not in get_args(Direction):
        raise ConfigError(f"direction must be 'noise' or 'denoise', got {direction!r}")
    return direction  # type: ignore[no-any-return]


def check_max_batch(max_batch: Any) -> int:
    if max_batch is None:
        return DEFAULT_MAX_BATCH
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(
            f"max_batch must be a positive int (rows per forward pass), got {max_batch!r}"
        )
    return max_batch


def rows(output: Any, start: int, stop: int) -> Any:
    """Rows start..stop of every tensor in a model output (a tensor, tuple, list or dict)."""
    if isinstance(output, Tensor):
        return output[start:stop]
    if isinstance(output, tuple | list):
        return type(output)(rows(x, start, stop) for x in output)
    if isinstance(output, dict):
        return {key: rows(x, start, stop) for key, x in output.items()}
    return output


def weighted_metric(metric: Metric, weights: Sequence[float], batch: int) -> Metric:
    """sum_i weights[i] * metric(rows of variant i): one backward pass weights every variant."""

    def fn(output: Any) -> Tensor:
        parts = [
            w * scalar_metric(metric, rows(output, i * batch, (i + 1) * batch))
            for i, w in enumerate(weights)
        ]
        return torch.stack(parts).sum()

    return fn


def interpolate(base: Tensor, source: Tensor, alphas: Sequence[float]) -> Tensor:
    """[k * B, ...]: base + alpha * (source - base) for each alpha, variant-major."""
    a = torch.tensor(list(alphas), dtype=base.dtype, device=base.device)
    a = a.reshape(-1, *([1] * base.ndim))
    return einops.rearrange(base + a * (source - base), "k b ... -> (k b) ...")


def fold(t: Tensor, k: int) -> Tensor:
    """Sum the k variants of a stacked [k * B, ...] tensor: [B, ...]."""
    return einops.reduce(t, "(k b) ... -> b ...", "sum", k=k)


def unit_axes(unit: UnitSpec, site: Site) -> tuple[str, ...]:
    """The axes a unit spans, checked against the site: None is the whole site, "all" every axis."""
    if unit is None:
        return ()
    if unit == "all":
        return site.axes
    axes = (unit,) if isinstance(unit, str) else tuple(unit)
    for axis in axes:
        if not isinstance(axis, str):
            raise ConfigError(f"unit must name axes (strings), got {unit!r}")
        site.axis(axis)  # InputError naming the real axes
    if len(set(axes)) != len(axes):
        raise ConfigError(f"unit names an axis twice: {axes}")
    return axes


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
    metric: Metric,
    sites: Sequence[str],
    max_batch: int,
    show: bool | None,
    desc: str,
) -> Iterator[tuple[ActivationCache | None, Tensor | None, int]]:
    """Gradients along the path base -> source, several path points per forward pass.

    Each pass stacks k points along the batch (variant-major, k * B rows). With `replace`, the
    model runs `context` (repeated k times) with that site replaced by the points; without, the
    points are the model's input. The metric of variant i is weighted by the rule's weight, so a
    site's gradient summed over the k variants (`fold`) is that chunk's share of the path
    integral. Yields (cache of `sites` with gradients, or None if no sites; the gradient with
    respect to the input points when `replace` is None and no sites are asked; k).
    """
    alphas, weights = path.points()
    batch = base.shape[0]
    per_pass = max(1, max_batch // max(1, batch))
    with progress_bar(len(alphas), desc, show) as bar:
        for part in chunks(len(alphas), per_pass):
            points = interpolate(base, source, [alphas[i] for i in part])
            weighted = weighted_metric(metric, [weights[i] for i in part], batch)
            if replace is None and not sites:
                x = points.detach().requires_grad_(True)
                with torch.enable_grad():
                    value = weighted(run_model(model, x))
                    (grad,) = torch.autograd.grad(value, [x])
                yield None, grad, len(part)
            elif replace is None:
                yield (
                    capture(model, points, sites=sites, grads=True, metric=weighted),
                    None,
                    len(part),
                )
            else:
                with attach(model, {replace: _replacer(points, replace)}) as fired:
                    cache = capture(
                        model, repeat_rows(context, len(part)), sites=sites, grads=True,
                        metric=weighted,
                    )  # fmt: skip
                require_fired([replace], fired)
                yield cache, None, len(part)
            bar.update(len(part))


def _replacer(value: Tensor, name: str) -> Callable[[Tensor, Site], Tensor]:
    def put(act: Tensor, site: Site) -> Tensor:
        if act.shape != value.shape:
            raise ShapeMismatchError(
                f"site {name!r} has shape {tuple(act.shape)} in this pass, the values put there "
                f"{tuple(value.shape)}; the clean and corrupted runs must give it one shape"
            )
        return value

    return put
