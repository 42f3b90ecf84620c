"""Patching a feature basis: each feature, then the error term, moved to its source value.

A basis's feature i is patched by `basis.ablate(act, i, value)`: its coefficient takes the
source run's value (or the ablated one) and nothing else moves, the error term included. The
error term (act - decode(encode(act))) is patched on its own as one more variant. Values come in
feature coordinates, [coefficients, error] along the basis axis, so "mean" is each coefficient's
mean and "zero" sets coefficients and error to 0 (`circuits.capture.Baseline` for the rest).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.errors import ConfigError, ShapeMismatchError
from circuits.features import FeatureBasis, UnitBasis
from circuits.hooks.variants import SitePatch
from circuits.ids import node_kind
from circuits.site import Site
from circuits.units import UnitSpec, parse_unit, unit_mask


def feature_units(
    basis: FeatureBasis, info: Site, unit: UnitSpec
) -> tuple[tuple[str, ...], list[list[int]]]:
    """The variants' axes, ("feature", *the unit's axes), and their indices: every feature and
    the error term (index n_features), at each chosen index of the unit's axes ({"pos": ...})."""
    dim = basis.dim % len(info.axes) if -len(info.axes) <= basis.dim < len(info.axes) else None
    if dim is None or info.shape[dim] != basis.d:
        raise ShapeMismatchError(
            f"the basis acts on axis {basis.dim} of size {basis.d}, but site {info.name!r} has "
            f"shape {info.shape} (axes {info.axes}); build the basis for this site (its d and "
            "dim)"
        )
    axes, coords = parse_unit(unit, info)
    if info.axes[dim] in axes or "feature" in axes:
        raise ConfigError(
            f"with basis=, unit names the other axes to patch at ({'pos'!r}, say); the basis's "
            f"own axis {info.axes[dim]!r} is its features. Got unit={unit!r}"
        )
    return ("feature", *axes), [list(range(basis.n_features + 1)), *coords]


@dataclass(frozen=True)
class FeaturePatches:
    """The patched activations of a basis's variants: `act` (the base run's) with one feature
    or the error term at its value in `source` (feature coordinates)."""

    basis: FeatureBasis
    act: Tensor
    source: Tensor

    def edited(self, f: int) -> Tensor:
        """act with feature f (f = n_features: the error term) at its source value."""
        b, k = self.basis, self.basis.n_features
        if f < k:
            return b.ablate(self.act, f, value=self.source.narrow(b.dim, f, 1))
        error = self.act - b.decode(b.encode(self.act))
        return self.act + (self.source.narrow(b.dim, k, b.d) - error)

    def site_patch(
        self, info: Site, axes: Sequence[str], picks: Sequence[tuple[int, ...]]
    ) -> SitePatch:
        """Variant j edits feature picks[j][0] where its other unit indices picks[j][1:] say."""
        edited = {f: self.edited(f) for f in dict.fromkeys(p[0] for p in picks)}
        mask = unit_mask(info, axes[1:], [p[1:] for p in picks])
        return SitePatch(mask, torch.stack([edited[p[0]] for p in picks]), per_variant=True)


def feature_nodes(basis: FeatureBasis, info: Site) -> tuple[tuple[int, ...], str]:
    """Each feature's unit index in node keys (a unit basis keeps its units'), and their kind."""
    if isinstance(basis, UnitBasis):
        units = basis.units if basis.units is not None else tuple(range(basis.d))
        return tuple(units), node_kind(info.name, info.axes[basis.dim])
    return tuple(range(basis.n_features)), "feature"
