"""How good a dictionary is: reconstruction and sparsity over activations, and what splicing it
into the model does to a metric.

    cc.evaluate_dictionary(d, cache)                           # one row
    cc.evaluate_dictionary(d, cache, model=model, inputs=tokens, metric=metric)

Columns of the one-row frame:

    site, target_site, rows, n_latents
    mse         mean over rows and features of (target - prediction)^2
    fve         fraction of variance explained, 1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2
    l0          mean number of active latents per row
    dead        latents never active on these rows
    dense       latents active on more than `dense` of the rows (0.1, SAEBench's cut)

With `model`, `inputs` and `metric`, three more runs of the model (all through the hook engine,
so no hook outlives them) give m_clean, m_spliced (the site replaced by the SAE's reconstruction;
for a transcoder, the target site replaced by the prediction from the input site in the same
pass) and m_zero (that site zeroed), and

    recovered   1 - (m_spliced - m_clean) / (m_zero - m_clean): 1 when the splice changes nothing
                the metric sees, 0 when it is as bad as removing the site (NaN when zeroing the
                site does not move the metric either).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from circuits.capture import ActivationCache, DiskCache
from circuits.checks import check_int, check_number
from circuits.errors import ConfigError, InputError, ShapeMismatchError
from circuits.hooks import run
from circuits.hooks.run import Replacement
from circuits.metrics import MetricFn, check_metric, metric_value
from circuits.site import Site

from .data import as_rows, feature_dim
from .dictionary import Dictionary

__all__ = ["evaluate_dictionary"]

logger = logging.getLogger(__name__)


def evaluate_dictionary(
    dictionary: Dictionary,
    acts: Any,
    *,
    site: str | None = None,
    target_site: str | None = None,
    axis: str | None = None,
    dim: int | None = None,
    model: nn.Module | None = None,
    inputs: Any = None,
    metric: MetricFn | None = None,
    batch_size: int = 4096,
    dense: float = 0.1,
    device: torch.device | str | None = None,
) -> pd.DataFrame:
    """Score `dictionary` on `acts` (module docstring); returns a one-row DataFrame.

    acts: as for `train_dictionary` (a tensor, a pair (inputs, targets), an ActivationCache or a
        DiskCache, read a batch at a time); site, target_site and axis default to the
        dictionary's own. model, inputs, metric: all three to measure the spliced effect.
    device: where to compute (default: where the activations are).

    For example:

        cc.evaluate_dictionary(d, cache)[["fve", "l0", "dead"]]
        cc.evaluate_dictionary(d, cache, model=model, inputs=tokens,
                               metric=cc.metrics.cross_entropy(tokens))["recovered"]

    Raises:
        ConfigError: `dictionary` is not a Dictionary; batch_size not a positive int or dense
            not in [0, 1]; some but not all of model, inputs and metric; no site to splice at.
        ShapeMismatchError: activations whose widths are not the dictionary's.
        SiteNotFoundError, InputError: as `train_dictionary` raises them for `acts`, and as the
            hook engine raises them for a splice (a site the model lacks or that never runs).
        MetricError: a metric that does not return a finite scalar.
    """
    if not isinstance(dictionary, Dictionary):
        raise ConfigError(f"dictionary must be a Dictionary, got {type(dictionary).__name__}")
    check_int(batch_size, "batch_size")
    check_number(dense, "dense", low=0, high=1)
    c = dictionary.config
    site, target_site = site or c.site, target_site or c.target_site
    splice = (model, inputs, metric)
    if any(v is not None for v in splice) and any(v is None for v in splice):
        raise ConfigError("the spliced effect needs all of model=, inputs= and metric=")
    named = isinstance(acts, ActivationCache | DiskCache)
    rows = as_rows(
        acts, site=site, target_site=target_site if named else None,
        axis=(axis or c.axis) if named else axis, dim=dim, transcoder=c.kind == "transcoder",
    )  # fmt: skip
    if (rows.d_in, rows.d_out or rows.d_in) != (c.d_in, c.width):
        raise ShapeMismatchError(
            f"the dictionary maps {c.d_in} -> {c.width} features, the activations give "
            f"{rows.d_in} -> {rows.d_out or rows.d_in}; check the site and its feature axis"
        )
    where = torch.device(device) if device is not None else rows.device
    frame: dict[str, Any] = {"site": site, "target_site": target_site, "n_latents": c.n_latents}
    frame |= _scores(dictionary.to(where), rows.batches(batch_size, buffer=0, device=where), dense)
    if model is not None and metric is not None:
        frame |= _spliced(dictionary, model, inputs, metric, site, target_site, axis or c.axis)
    return pd.DataFrame([frame])


@torch.no_grad()
def _scores(d: Dictionary, batches: Any, dense: float) -> dict[str, Any]:
    """Reconstruction and sparsity, summed on the device in float64 and read once at the end."""
    device, width = d.W_enc.device, d.config.width
    sse, square = (torch.zeros((), dtype=torch.float64, device=device) for _ in range(2))
    total = torch.zeros(width, dtype=torch.float64, device=device)
    counts = torch.zeros(d.n_latents, dtype=torch.long, device=device)
    rows = 0
    for x, y in batches:
        target = (x if y is None else y).double()
        z = d.encode(x)
        sse += (target - d.decode(z).double()).square().sum()
        total += target.sum(0)
        square += target.square().sum()
        counts += (z != 0).sum(0)
        rows += len(x)
    error = float(sse)
    variance = float(square - total.square().sum() / rows)  # sum of ||y - mean||^2
    return {
        "rows": rows,
        "mse": error / (rows * width),
        "fve": 1 - error / variance if variance > 0 else math.nan,
        "l0": float(counts.sum()) / rows,
        "dead": int((counts == 0).sum()),
        "dense": int((counts > dense * rows).sum()),
    }


def _spliced(
    d: Dictionary,
    model: nn.Module,
    inputs: Any,
    metric: MetricFn,
    site: str | None,
    target_site: str | None,
    axis: str | None,
) -> dict[str, float]:
    """The metric clean, with the dictionary spliced in, and with its site zeroed."""
    check_metric(metric)
    if site is None or (d.config.kind == "transcoder" and target_site is None):
        raise ConfigError(
            "splicing needs the site the dictionary reads (site=, or the dictionary's config)"
            + (" and the site it predicts (target_site=)" if d.config.kind == "transcoder" else "")
        )
    written = target_site or site
    clean = _value(model, inputs, metric, {})
    spliced = _value(model, inputs, metric, _replacements(d, site, target_site, axis))
    zero = _value(model, inputs, metric, {written: lambda act, s: torch.zeros_like(act)})
    if zero == clean:
        logger.warning("zeroing %s leaves the metric at %s; recovered is NaN", written, clean)
    recovered = 1 - (spliced - clean) / (zero - clean) if zero != clean else math.nan
    return {"m_clean": clean, "m_spliced": spliced, "m_zero": zero, "recovered": recovered}


def _replacements(
    d: Dictionary, site: str, target_site: str | None, axis: str | None
) -> dict[str, Replacement]:
    """Hook functions that put the dictionary's output in place of the site's activation."""
    if target_site is None:

        def reconstruct(act: Tensor, s: Site) -> Tensor:
            at = feature_dim(s, axis)
            return d.reconstruct(act.movedim(at, -1)).movedim(-1, at)

        return {site: reconstruct}
    seen: dict[str, Tensor] = {}

    def read(act: Tensor, s: Site) -> None:
        seen["x"] = act.movedim(feature_dim(s, axis), -1)

    def predict(act: Tensor, s: Site) -> Tensor:
        if "x" not in seen:
            raise InputError(
                f"{target_site!r} ran before {site!r}; a transcoder's input site must run first"
            )
        at = feature_dim(s, axis)
        moved = act.movedim(at, -1)
        out = d.reconstruct(seen["x"]).reshape(moved.shape)
        return out.to(act.dtype).movedim(-1, at)

    return {site: read, target_site: predict}


def _value(model: nn.Module, inputs: Any, metric: MetricFn, replace: dict[str, Any]) -> float:
    return float(metric_value(metric, run(model, inputs, replace=replace).output).detach())
