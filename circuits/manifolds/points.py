"""Input checks the manifold tools share: point clouds (cyclic labels: `probes.subspace`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from circuits.errors import InputError, ShapeMismatchError


def as_points(points: Any, what: str = "points", *, width: int | None = None) -> Tensor:
    """`points` as a finite float32 tensor [n, d] (numpy converted), `width` columns if given."""
    if isinstance(points, np.ndarray):
        points = torch.from_numpy(points)
    if not isinstance(points, Tensor):
        raise InputError(f"{what} must be a tensor [n, d], got {type(points).__name__}")
    x = points.detach().float()
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ShapeMismatchError(
            f"{what} must be [n, d] with n >= 2 rows, got shape {tuple(points.shape)}; select "
            "positions first (acts[:, -1]) and keep the feature axis last"
        )
    if width is not None and x.shape[1] != width:
        raise ShapeMismatchError(
            f"{what} must have {width} columns (coordinates), got shape {tuple(x.shape)}; "
            "project them first (subspace.encode(acts))"
        )
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{what} hold NaN or infinite values")
    return x
