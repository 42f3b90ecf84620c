"""Moving activations along a manifold inside a forward pass, and what the model then outputs.

`intervene(model, inputs, manifold, mode=...)` runs the model once through the hook engine
(`circuits.hooks.run`) with the activation at the manifold's site replaced:

    "shift"     every circle turned as if the label were y + `by` (`CyclicManifold.shift`)
    "to"        every circle turned to the angle of the label `labels` (radius kept)
    "restrict"  the activation replaced by the manifold's point for `labels` (only the circles'
                frequencies of the label kept: Nanda et al.'s restricted loss)
    "exclude"   the circles' part of `labels` removed (their excluded loss)

`pos` picks the position edited on sites with a "pos" axis (the answer's position, say); None
edits every element. The manifold is also a feature basis, so `cc.patch(model, clean, corrupt,
metric, basis=manifold)` patches each circle's angle from another run, and `cc.steer(model,
inputs, manifold, which=None, alpha=manifold.shift_angles(d))` is the "shift" of this function.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from circuits.errors import ConfigError, InputError
from circuits.hooks import run
from circuits.manifolds.cyclic import CyclicManifold
from circuits.options import check_choice
from circuits.site import Site

__all__ = ["Mode", "intervene"]

Mode = Literal["shift", "to", "restrict", "exclude"]
"""What `intervene` does to the activation (module docstring)."""


def intervene(
    model: nn.Module,
    inputs: Any,
    manifold: CyclicManifold,
    *,
    mode: Mode = "shift",
    by: float | Tensor | None = None,
    labels: Any = None,
    pos: int | None = None,
) -> Any:
    """The model's output on `inputs` with the activation at `manifold.site` moved along the
    manifold as `mode` says (module docstring). Runs without gradients; hooks come off when it
    returns or raises.

    by: the label offset for "shift" (a number, or one per example [batch]). labels: one per
    example [batch] (or per edited element): the target labels for "to", the true labels for
    "restrict" and "exclude". pos: the position edited (an int; None: every element).

        manifold = cc.manifolds.fourier_spectrum(resid, answers, period=p,
                                                 site="blocks.0.hook_resid_post").manifold()
        logits = cc.manifolds.intervene(model, tokens, manifold, by=5, pos=-1)
        logits[:, -1].argmax(-1)          # (a + b + 5) mod p
        restricted = cc.manifolds.intervene(model, tokens, manifold, mode="restrict",
                                            labels=answers, pos=-1)

    Raises:
        ConfigError: an unknown mode, a manifold without a site, "shift" without `by`, another
            mode without `labels`, or `pos` on a site without a "pos" axis.
        InputError: `pos` out of range, labels that do not fit the edited activations, or what
            `circuits.hooks.run` raises (an unknown site, a failing forward pass).
    """
    check_choice(mode, Mode, "mode")
    if not isinstance(manifold, CyclicManifold) or not manifold.site:
        raise ConfigError(
            "intervene needs a CyclicManifold with a site (fourier_spectrum(..., site=...)"
            ".manifold()); got " + (repr(manifold) if isinstance(manifold, CyclicManifold)
                                     else type(manifold).__name__)
        )  # fmt: skip
    if (mode == "shift") != (by is not None) or (mode != "shift") != (labels is not None):
        raise ConfigError(
            f"mode={mode!r} takes " + ("by= (the label offset) and no labels"
                                       if mode == "shift" else "labels= and no by")
        )  # fmt: skip

    def edit(act: Tensor) -> Tensor:
        if mode == "shift":
            return manifold.shift(act, by if isinstance(by, Tensor) else float(by or 0))
        y = torch.as_tensor(labels, device=act.device)
        if mode == "to":
            angles = manifold.point_angles(y)
            return manifold.ablate(act, None, value=angles.movedim(-1, manifold.dim))
        return manifold.restrict(act, y) if mode == "restrict" else manifold.exclude(act, y)

    def fn(act: Tensor, info: Site) -> Tensor:
        if pos is None:
            return edit(act)
        if "pos" not in info.axes:
            raise ConfigError(f"pos={pos} but site {info.name!r} has no 'pos' axis {info.axes}")
        axis = info.axis("pos")
        size = act.shape[axis]
        if isinstance(pos, bool) or not isinstance(pos, int) or not -size <= pos < size:
            raise InputError(f"pos={pos!r} is out of range for {size} positions")
        out = act.clone()
        out.select(axis, pos).copy_(edit(act.select(axis, pos)))
        return out

    with torch.no_grad():
        return run(model, inputs, replace={manifold.site: fn}).output
