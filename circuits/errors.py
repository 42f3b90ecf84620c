"""Errors raised by circuits.

Every error is a `CircuitsError`, so `except cc.CircuitsError` catches anything this library
raises on purpose. Subclasses name the cause. Messages say what was expected, what arrived and how
to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CircuitsError(Exception):
    """Root of every error raised on purpose by circuits."""


class ConfigError(CircuitsError, ValueError):
    """An option or configuration value is out of range or inconsistent."""


class InputError(CircuitsError, ValueError):
    """Inputs (tensors, labels, batches) do not have the expected type, shape or values."""


class ShapeMismatchError(InputError):
    """Two tensors that must agree in shape do not."""


class SiteNotFoundError(CircuitsError, KeyError):
    """A site name does not exist on the model."""

    def __str__(self) -> str:  # KeyError would quote the message; show it as written.
        return str(self.args[0]) if self.args else ""


class SiteNotFiredError(CircuitsError, RuntimeError):
    """A site exists but its hook never ran during the forward pass."""


class MetricError(CircuitsError, ValueError):
    """A metric did not return what was expected (a scalar, or one value per run)."""


class ModelError(CircuitsError, TypeError):
    """The model is of a kind this operation does not support."""


class SiteRepeatedError(InputError, ModelError):
    """A site ran more than once in one forward pass: the model reuses that module."""


class OutputError(CircuitsError, OSError):
    """A file could not be written where asked (a read-only folder, a folder in the way)."""


class SchemaError(CircuitsError, ValueError):
    """A graph or file does not follow the circuits schema."""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """A short 'did you mean' phrase listing the candidates closest to `name`."""
    pool = list(candidates)
    near = difflib.get_close_matches(name, pool, n=n, cutoff=0.0) if pool else []
    return "closest: " + ", ".join(repr(c) for c in near) if near else "the model has no sites"
