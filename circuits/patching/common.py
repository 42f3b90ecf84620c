"""Steps shared by activation and path patching: checks, the base run, the runner set-up."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from circuits.cache import ActivationCache
from circuits.capture import capture
from circuits.errors import ConfigError, ModelError
from circuits.inputs import batch_size
from circuits.metrics import metric_positions
from circuits.site import resolve
from circuits.sweeps import layer_of

from .engine import DEFAULT_MEMORY, Runner, can_resume, row_numel, rows_per_pass


@dataclass(frozen=True)
class Budget:
    """How many variants share a forward pass, and whether to resume from a cached layer.

    max_batch: rows (variants x batch) per forward pass; None picks it from `memory` (bytes).
    fast: resume from the cached residual stream before the patched block and compute logits only
    at the positions the metric declares (TransformerLens models); False runs every variant through
    the whole model. progress: show a tqdm bar (None: only on a terminal).
    """

    max_batch: int | None = None
    memory: int = DEFAULT_MEMORY
    fast: bool = True
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.max_batch is not None and (
            isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int)
        ):
            raise ConfigError(f"max_batch must be a positive int or None, got {self.max_batch!r}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"max_batch must be a positive int or None, got {self.max_batch!r}")
        if isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory < 1:
            raise ConfigError(f"memory must be a positive number of bytes, got {self.memory!r}")


def check_metric(metric: Any) -> tuple[int, ...] | None:
    """The metric must be callable; returns the positions it declares (None: all)."""
    if not callable(metric):
        raise ConfigError(
            f"metric must be a function of the model output returning a scalar tensor, got "
            f"{type(metric).__name__}"
        )
    return metric_positions(metric)


def check_sites(model: nn.Module, names: Sequence[str]) -> None:
    """Resolve every site (SiteNotFoundError before anything runs) and refuse edits a
    TransformerBridge would silently discard."""
    resolve(model, list(names))
    if type(model).__name__ != "TransformerBridge":
        return
    major = int(importlib.metadata.version("transformer-lens").split(".")[0])
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "hook_attn_scores" or (leaf == "hook_pattern" and major < 4):
            raise ModelError(
                f"a TransformerBridge computes attention without reading back edits to "
                f"{leaf} (on this transformer-lens version), so patching {name!r} would silently "
                "do nothing; patch hook_q / hook_k / hook_v or hook_z instead"
            )


@dataclass
class BaseRun:
    """The unpatched run the variants start from: activations, metric value, runner."""

    cache: ActivationCache
    value: float
    runner: Runner
    rows: int

    @property
    def batch(self) -> int:
        return self.runner.batch


def base_run(
    model: nn.Module,
    base: Any,
    metric: Callable[[Any], Tensor],
    *,
    sites: Sequence[str],
    layers: Sequence[int | None],
    budget: Budget,
) -> BaseRun:
    """Run the base input once, keeping `sites` (and the residual stream before each block in
    `layers` for resuming), the metric and the output; set up the runner and the chunk size."""
    positions = check_metric(metric)
    blocks = sorted({ly for ly in layers if ly is not None})
    resume = budget.fast and bool(blocks) and None not in layers and can_resume(model, base)
    resid = [f"blocks.{ly}.hook_resid_pre" for ly in blocks] if resume else []
    held: dict[str, Any] = {}

    def keep(output: Any) -> Tensor:
        held["out"] = output
        return metric(output)

    names = list(dict.fromkeys([*sites, *resid]))
    cache = capture(model, base, sites=names, metric=keep)
    batch = batch_size(base)
    runner = Runner(
        model,
        base,
        batch=batch,
        positions=positions,
        resid={ly: cache[f"blocks.{ly}.hook_resid_pre"] for ly in blocks} if resume else None,
    )
    if resume:
        runner.enable_resume(held["out"], max(blocks))
    output_row = row_numel(held.pop("out"), batch)
    site_row = max((row_numel(cache[n], batch) for n in sites), default=1)
    rows = rows_per_pass(
        model,
        base,
        batch=batch,
        output_row=output_row,
        site_row=site_row,
        positions=runner.positions,
        resume=runner.resumable,
        max_batch=budget.max_batch,
        memory=budget.memory,
    )
    value = cache.metric
    assert value is not None  # capture computes it whenever a metric is given
    return BaseRun(cache, value, runner, rows)


def start_layer(runner: Runner, names: Sequence[str]) -> int | None:
    """The block to resume from for a pass that touches `names` (None: a full pass)."""
    if not runner.resumable:
        return None
    layers = [layer_of(n) for n in names]
    if not layers or None in layers:
        return None
    return min(ly for ly in layers if ly is not None)
