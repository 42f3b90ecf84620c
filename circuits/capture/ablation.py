"""What an ablated unit carries, computed in one place for patching, faithfulness and attribution.

Every ablation reads a reference run of the sites (`Ablation` in `circuits.options`):

    "patch"     the reference itself (the corrupted run), example by example
    "zero"      zeros (the reference gives the shape only)
    "mean"      the reference's mean over its batch, per position
    "resample"  the reference's value on another example, drawn with a seed
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from circuits.errors import InputError, ShapeMismatchError
from circuits.options import Ablation


def ablation_values(
    reference: Mapping[str, Tensor],
    ablation: Ablation,
    *,
    batch: int,
    seed: int = 0,
    exclude_self: bool = False,
) -> dict[str, Tensor]:
    """Per site, the value an ablated unit takes: [batch or 1, ...] (a 1 broadcasts).

    batch: the rows of the run the values go into ("patch" needs that many in the reference).
    exclude_self: for "resample" from the run itself, never draw an example's own value (so
    the reference needs two examples or more: with one, resampling would patch each example
    with itself and measure nothing).
    """
    out = {}
    for name, acts in reference.items():
        if ablation == "patch":
            if acts.shape[0] != batch:
                raise ShapeMismatchError(
                    f"the corrupted run gives {name!r} {acts.shape[0]} examples, the run it is "
                    f"patched into {batch}; pass clean and corrupted inputs of one batch size"
                )
            out[name] = acts
        elif ablation == "zero":
            out[name] = acts.new_zeros((1, *acts.shape[1:]))
        elif ablation == "mean":
            out[name] = acts.mean(0, keepdim=True)
        else:
            if exclude_self and acts.shape[0] < 2:
                raise InputError(
                    "resample ablation draws each example's value from another example of the "
                    "batch; a batch of 1 has none, so every patch would change nothing. Pass a "
                    "batch of 2 or more, or a reference batch (reference=...)"
                )
            out[name] = acts[_draw(acts.shape[0], batch, seed, exclude_self).to(acts.device)]
    return out


def _draw(n: int, batch: int, seed: int, exclude_self: bool) -> Tensor:
    """For each of `batch` rows, the index of a reference example (never its own, if asked)."""
    gen = torch.Generator().manual_seed(seed)
    if exclude_self:
        return (torch.arange(batch) + torch.randint(1, n, (batch,), generator=gen)) % n
    return torch.randint(n, (batch,), generator=gen)
