"""What an ablated unit or edge carries, computed in one place for patching, attribution and
faithfulness.

Every ablation reads a reference run of the sites (`Ablation` in `circuits.options`):

    "patch"     the corrupted run itself, example by example (needs `corrupt`)
    "zero"      zeros (the reference gives the shape only; `corrupt` may be None)
    "mean"      the mean over a reference batch, per position: `reference` if given, else the
                corrupted batch, else the clean batch
    "resample"  the value on another example of that reference batch, drawn with `seed`: a
                permutation of the corrupted batch; from the clean batch itself, an example never
                draws its own value

`Baseline` holds these options for every method that takes them; `ablated` runs the reference
and returns the values, so no caller picks the reference run by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from circuits.capture.activations import capture
from circuits.checks import check_int
from circuits.errors import ConfigError, InputError, ShapeMismatchError
from circuits.inputs import tensors
from circuits.options import Ablation, check_choice


@dataclass(frozen=True, kw_only=True)
class Baseline:
    """What an ablated unit or edge carries: `ablation` (None: "patch" when corrupted inputs are
    given), `reference` inputs for "mean" and "resample" (default: the corrupted batch), `seed`
    for "resample".

    For example:

        Baseline(ablation="mean", reference=other_tokens)    # the mean over a batch of your own
        Baseline(ablation="resample", seed=3)                # permutes the corrupted batch

    Raises:
        ConfigError: an unknown ablation, a negative seed, or `reference` with an ablation other
            than "mean" or "resample".
    """

    ablation: Ablation | None = None
    reference: Any = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ablation is not None:
            check_choice(self.ablation, Ablation, "ablation")
        check_int(self.seed, "seed", low=0)
        if self.reference is not None and self.ablation not in ("mean", "resample"):
            raise ConfigError(
                f"reference= is the batch that 'mean' and 'resample' read; ablation="
                f"{self.ablation!r} does not use it (pass ablation='mean' or 'resample')"
            )

    def chosen(self, corrupt: Any) -> Ablation:
        """The ablation in force: "patch" by default where corrupted inputs are given."""
        if self.ablation is None:
            if corrupt is None:
                raise ConfigError(
                    "corrupt is None: pass corrupted inputs, or an ablation that needs none: "
                    "ablation='zero', or 'mean' / 'resample' with reference=... (a batch)"
                )
            return "patch"
        if self.ablation == "patch" and corrupt is None:
            raise ConfigError(
                "ablation='patch' takes the corrupted run's values: pass corrupt inputs, or "
                "ablation='zero', 'mean' or 'resample'"
            )
        return self.ablation


def ablated(
    model: nn.Module,
    sites: Sequence[str],
    baseline: Baseline,
    clean: Any,
    corrupt: Any,
    *,
    batch: int,
    metric: Any = None,
    like: Mapping[str, Tensor] | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> tuple[dict[str, Tensor], float | None]:
    """Per site, the values ablated units take ([batch or 1, ...]; a 1 broadcasts), and the
    metric on the reference run when it is the corrupted run of "patch" (else None).

    Runs the one reference run the baseline names (module docstring); "zero" runs nothing when
    `like` (the clean run's activations at the sites) gives the shapes. `transform` maps each
    site's activations before they are reduced (a feature basis's coordinates, so "mean" is each
    coefficient's mean).

    For example:

        values, corrupt_metric = ablated(model, ["blocks.0.attn.hook_z"], Baseline(), clean,
                                         corrupt, batch=clean.shape[0], metric=metric)
        values["blocks.0.attn.hook_z"].shape                 # [batch or 1, pos, head, d_head]

    Raises:
        ConfigError: the baseline needs corrupted inputs and `corrupt` is None.
        ShapeMismatchError: `reference` holds inputs of another shape than `clean`.
        SiteNotFoundError, SiteNotFiredError: from the reference run (see `capture`).
    """
    ablation, inputs, exclude_self = _reference(baseline, clean, corrupt)
    change = transform or (lambda act: act)
    if ablation == "zero" and like is not None:
        return ablation_values({s: change(like[s]) for s in sites}, "zero", batch=batch), None
    ref = capture(model, inputs, sites=list(sites), metric=metric if ablation == "patch" else None)
    acts = {s: change(ref[s]) for s in sites}
    values = ablation_values(acts, ablation, batch=batch, seed=baseline.seed,
                             exclude_self=exclude_self)  # fmt: skip
    return values, (float(ref.metric) if ref.metric is not None else None)


def ablated_input(baseline: Baseline, clean: Tensor, corrupt: Tensor | None) -> Tensor:
    """The model input itself ablated ([batch or 1, ...]): for attribution to a float input.

    For example:

        baseline_images = ablated_input(Baseline(ablation="zero"), images, None)   # zeros [1, ...]

    Raises:
        ConfigError: the baseline needs corrupted inputs and `corrupt` is None.
        ShapeMismatchError: `reference` holds inputs of another shape than `clean`.
    """
    ablation, inputs, exclude_self = _reference(baseline, clean, corrupt)
    values = ablation_values({"input": inputs}, ablation, batch=clean.shape[0],
                             seed=baseline.seed, exclude_self=exclude_self)  # fmt: skip
    return values["input"].to(clean)


def _reference(baseline: Baseline, clean: Any, corrupt: Any) -> tuple[Ablation, Any, bool]:
    """The ablation in force, the inputs its values are read from, and whether "resample" must
    skip an example's own value (it reads the clean batch itself)."""
    ablation = baseline.chosen(corrupt)
    if ablation == "patch":
        return ablation, corrupt, False
    if ablation == "zero":
        return ablation, clean, False
    if baseline.reference is not None:
        _check_reference(baseline.reference, clean)
        return ablation, baseline.reference, False
    if corrupt is not None:
        return ablation, corrupt, False
    return ablation, clean, True


def _check_reference(reference: Any, clean: Any) -> None:
    """A reference batch may differ from the clean one in its batch size only."""
    got = [tuple(t.shape[1:]) for t in tensors(reference)]
    want = [tuple(t.shape[1:]) for t in tensors(clean)]
    if type(reference) is not type(clean) or got != want or not got:
        raise ShapeMismatchError(
            f"the reference batch has example shapes {got}, the clean inputs {want}; a reference "
            "for 'mean' or 'resample' must hold inputs like the clean ones (same sequence length "
            "or image size), in a batch of any size"
        )


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

    For example:

        ref = cc.capture(model, corrupt, sites=["blocks.0.hook_resid_pre"])
        ablation_values(ref, "mean", batch=8)["blocks.0.hook_resid_pre"].shape   # [1, pos, d_model]

    Raises:
        ShapeMismatchError: "patch" with a reference batch of another size than `batch`.
        InputError: "resample" from the clean batch itself when it holds a single example.
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
    """For each of `batch` rows, the index of a reference example: never its own (if asked), a
    seeded permutation of the reference when it has `batch` examples, else seeded draws."""
    gen = torch.Generator().manual_seed(seed)
    if exclude_self:
        return (torch.arange(batch) + torch.randint(1, n, (batch,), generator=gen)) % n
    if n == batch:
        return torch.randperm(n, generator=gen)
    return torch.randint(n, (batch,), generator=gen)
