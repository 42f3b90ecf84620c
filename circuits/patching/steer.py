"""Steering: run a model with alpha times some features' vectors added at their basis's site.

    out = cc.steer(model, tokens, basis, which=3, alpha=4.0)            # every position
    out = cc.steer(model, tokens, basis, which=[3, 5], alpha=[2.0, -1.0], pos=-1)

Each basis says what steering means for it (`FeatureBasis.steer`): a unit gets alpha added, a
direction alpha times its unit vector, a dictionary latent alpha times its decoder row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from circuits.features import FeatureBasis, Which, check_basis
from circuits.hooks import run
from circuits.site import Site
from circuits.units import indices, unit_mask


def steer(
    model: nn.Module,
    inputs: Any,
    basis: FeatureBasis,
    *,
    which: Which,
    alpha: float | Sequence[float] | Tensor,
    pos: int | Sequence[int] | None = None,
) -> Any:
    """The model's output on `inputs` with `basis.steer(act, which, alpha)` at the basis's site.

    which: the feature(s) to add (indices into the basis); alpha: one number, or one per
    feature in `which`. pos: the positions steered (the site needs a "pos" axis); None steers
    every element. Runs without gradients; hooks come off when it returns or raises.

        basis = dictionary.as_basis(site="blocks.1.hook_resid_pre")
        logits = cc.steer(model, tokens, basis, which=7, alpha=8.0, pos=-1)

    Raises:
        ConfigError: `basis` is not a feature basis, or has no site.
        ShapeMismatchError: the basis's d does not match the site's axis `basis.dim`.
        InputError: `pos` is out of range, or the site has no "pos" axis.
    """
    site = check_basis(basis, None, "steer")
    shift = alpha if isinstance(alpha, float | int | Tensor) else torch.tensor(list(alpha))

    def fn(act: Tensor, info: Site) -> Tensor:
        steered = basis.steer(act, which, shift)
        if pos is None:
            return steered
        chosen = indices(pos, info.shape[info.axis("pos")], "pos", info.name)
        where = unit_mask(info, ["pos"], [[p] for p in chosen]).any(0)
        return torch.where(where.to(act.device), steered, act)

    return run(model, inputs, replace={site: fn}).output
