"""Checks every public entry point shares: what a model, its inputs and a count must be.

Each raises a CircuitsError that says what was expected and how to fix it, before anything runs,
so a bad call leaves the model as it was. `circuits.hooks.run` applies `check_model` and
`check_inputs` to every run, so every function that runs a model gets them, present and future.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from circuits.errors import ConfigError, InputError, ModelError
from circuits.inputs import tensors

# Modules whose training mode makes a run change the model (batch norm's running statistics) or
# depend on chance and on the batch it is stacked with (dropout, batch statistics).
TRAIN_DEPENDENT = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.dropout._DropoutNd,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def check_model(model: Any) -> nn.Module:
    """`model` if it is a torch.nn.Module that can run here, else ModelError.

    Refused: anything that is not a module, a model on the meta device (no values to run), and a
    model whose batch norm or dropout is in training mode (a run would update its running
    statistics, or depend on chance and on the other examples in the batch).
    """
    check_module(model)
    param = next(model.parameters(), None)
    if param is not None and param.is_meta:
        raise ModelError(
            "the model is on the meta device (shapes without values), so it cannot run; load "
            "its weights first (model.to_empty(device=...) and a state dict, or build it on cpu)"
        )
    if _any_training(model):
        training = [
            name or type(model).__name__
            for name, mod in model.named_modules()
            if mod.training and _train_dependent(mod)
        ]
        raise ModelError(
            f"{training[:3]} are in training mode: a run would update batch norm's running "
            "statistics (changing the model) and normalise over the other examples of the "
            "batch, and dropout would drop at random. Call model.eval() first."
        )
    return model


def check_module(model: Any) -> nn.Module:
    """`model` if it is a torch.nn.Module, else ModelError (for sites and scoped hooks, which
    a model in training mode may have)."""
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model must be a torch.nn.Module (a TransformerLens model or any module), got "
            f"{type(model).__name__}"
        )
    return model


def check_inputs(inputs: Any, *, what: str = "inputs") -> Any:
    """`inputs` if every tensor in it has a non-empty batch and finite float values."""
    for t in tensors(inputs):
        if t.ndim > 0 and t.shape[0] == 0:
            raise InputError(f"{what} hold an empty batch (shape {tuple(t.shape)}); pass >= 1 row")
        if t.is_floating_point() or t.is_complex():
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                raise InputError(
                    f"{what} hold {int(bad.sum())} NaN or infinite value(s) (shape "
                    f"{tuple(t.shape)}); every score would be NaN. Clean the inputs first"
                )
    return inputs


def check_int(value: Any, what: str, *, low: int = 1, allow_none: bool = False) -> Any:
    """`value` if it is an int >= `low` (not a bool; None where allowed), else ConfigError."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        extra = " or None" if allow_none else ""
        kind = "a positive int" if low == 1 else f"an int >= {low}"
        raise ConfigError(f"{what} must be {kind}{extra}, got {value!r}")
    return value


def check_number(value: Any, what: str, *, low: float = -math.inf, high: float = math.inf) -> float:
    """`value` as a float if it is a finite real number in [low, high], else ConfigError."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or not low <= float(value) <= high:
        bounds = "" if (low, high) == (-math.inf, math.inf) else f" in [{low}, {high}]"
        raise ConfigError(f"{what} must be a finite number{bounds}, got {value!r}")
    return float(value)


def _any_training(model: nn.Module) -> bool:
    """Whether any submodule is train-dependent and in training mode: a walk over the module
    tree without building names (runs on every run, so it stays cheap on large models)."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        mod = stack.pop()
        if id(mod) in seen:
            continue
        seen.add(id(mod))
        if mod.training and _train_dependent(mod):
            return True
        stack.extend(child for child in mod._modules.values() if child is not None)
    return False


def _train_dependent(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return bool(module.track_running_stats)
    return isinstance(module, TRAIN_DEPENDENT)


def is_finite(t: Tensor) -> bool:
    """Whether every value of a float tensor is finite (always True for other dtypes)."""
    return not t.is_floating_point() or bool(torch.isfinite(t).all())
