"""Checks every public entry point shares: what a model, a batch and a count must be.

Each raises a CircuitsError that says what was expected and how to fix it, before anything runs,
so a bad call leaves the model as it was.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from circuits.errors import ModelError


def check_model(model: Any) -> nn.Module:
    """`model` if it is a torch.nn.Module, else ModelError."""
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model must be a torch.nn.Module (a TransformerLens model or any module), got "
            f"{type(model).__name__}"
        )
    return model
