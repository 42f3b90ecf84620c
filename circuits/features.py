"""Feature bases: what counts as "a feature" at a site, for patching, attribution and graphs.

Features are directions in activation space, and which directions is a choice: a neuron or a
channel (`UnitBasis`), a set of directions found by a probe or written by hand
(`DirectionBasis`), or a dictionary's latents (an SAE or transcoder: a later `DictionaryBasis`).
Code above this layer (patching, attribution, graph building) talks to every one of them through
the same small contract, `FeatureBasis`:

    basis.site, basis.dim        where the basis lives: a site name and the activation axis it
                                 acts on (-1: d_model / d_mlp / d_head; conv channels: 1 or -3)
    basis.d, basis.n_features    size of that axis, and the number of features k
    basis.labels                 one short name per feature (node names in a graph)
    basis.encode(act)            coefficients: the axis `dim` of size d becomes one of size k
    basis.decode(coeffs)         activation-space vectors: the axis `dim` of size k becomes d
    basis.ablate(act, which, value=None)   set features' coefficients to 0 (or `value`), moving
                                 act as little as possible
    basis.steer(act, which, alpha)         add alpha times the features' decoder vectors

Every other axis (batch, position, head, h, w) passes through unchanged. `decode(encode(act))`
need not give `act` back: for a dictionary it is the reconstruction, and `act - decode(encode(
act))` is the error term a graph keeps as its own node. For a unit basis it is exact; for a
direction basis it is `act` projected onto the directions when they are orthonormal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from functools import partial
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor, nn

from circuits.capture.ablation import Baseline, ablated
from circuits.errors import ConfigError, InputError, ShapeMismatchError
from circuits.options import warn_renamed
from circuits.site import Site

__all__ = [
    "DirectionBasis",
    "FeatureBasis",
    "UnitBasis",
    "ablated_coordinates",
    "check_basis",
    "coordinates",
]

Which = int | Sequence[int] | Tensor | None


@runtime_checkable
class FeatureBasis(Protocol):
    """The contract every feature basis keeps (module docstring)."""

    @property
    def site(self) -> str | None:
        """The site the basis lives at (None: not tied to one)."""

    @property
    def dim(self) -> int:
        """The activation axis the basis acts on (-1: d_model / d_mlp / d_head; 1: channels)."""

    @property
    def d(self) -> int:
        """The size of that axis."""

    @property
    def n_features(self) -> int:
        """The number of features k."""

    @property
    def labels(self) -> tuple[str, ...]:
        """One short name per feature (node labels in a graph)."""

    def encode(self, act: Tensor) -> Tensor:
        """Feature coefficients: axis `dim` of size d becomes one of size k (ShapeMismatchError
        if it is not of size d)."""

    def decode(self, coeffs: Tensor) -> Tensor:
        """Activation-space vectors: axis `dim` of size k becomes one of size d."""

    def ablate(
        self, act: Tensor, which: Which = None, value: float | Tensor | None = None
    ) -> Tensor:
        """`act` with the chosen features (all if None) set to 0 or `value`, moved as little as
        possible."""

    def steer(self, act: Tensor, which: Which, alpha: float | Tensor) -> Tensor:
        """`act` plus `alpha` times the chosen features' decoder vectors."""


@dataclass(frozen=True, eq=False)
class UnitBasis:
    """Each unit along one axis is a feature: neurons, channels, heads' dimensions.

    d: size of the axis; dim: which axis (-1 by default, 1 for conv channels); units: keep only
    these units as features (all by default). Build it from a captured site with `for_site`.
    """

    d: int
    dim: int = -1
    site: str | None = None
    units: tuple[int, ...] | None = None
    labels: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if isinstance(self.d, bool) or not isinstance(self.d, int) or self.d < 1:
            raise ConfigError(f"d must be a positive int (the size of the axis), got {self.d!r}")
        if self.units is not None:
            units = tuple(int(u) for u in self.units)
            bad = [u for u in units if not 0 <= u < self.d]
            if bad or not units or len(set(units)) != len(units):
                raise ConfigError(
                    f"units must be distinct indices in [0, {self.d}), got {self.units!r}"
                )
            object.__setattr__(self, "units", units)
        _set_labels(self, self.site, "unit", self._index())

    @classmethod
    def for_site(
        cls, site: Site, *, axis: str | None = None, units: Sequence[int] | None = None
    ) -> UnitBasis:
        """The units along `axis` of a captured site ("channel" if it has one, else the last)."""
        name = axis or ("channel" if "channel" in site.axes else site.axes[-1])
        index = site.axis(name)
        return cls(
            d=site.shape[index], dim=index - len(site.axes), site=site.name,
            units=None if units is None else tuple(units),
        )  # fmt: skip

    @property
    def n_features(self) -> int:
        """The number of features: `d`, or the number of chosen `units`."""
        return self.d if self.units is None else len(self.units)

    def encode(self, act: Tensor) -> Tensor:
        """The chosen units' activations (the whole axis when all units are features)."""
        _check_axis(act, self.dim, self.d, "activation")
        if self.units is None:
            return act
        return act.index_select(self.dim, self._index().to(act.device))

    def decode(self, coeffs: Tensor) -> Tensor:
        """Coefficients placed back on their units (zeros elsewhere)."""
        _check_axis(coeffs, self.dim, self.n_features, "coefficients")
        if self.units is None:
            return coeffs
        shape = list(coeffs.shape)
        shape[self.dim] = self.d
        out = coeffs.new_zeros(shape)
        return out.index_copy(self.dim, self._index().to(coeffs.device), coeffs)

    def ablate(
        self, act: Tensor, which: Which = None, value: float | Tensor | None = None
    ) -> Tensor:
        """Set the chosen features (all if None) to 0, or to `value` (a number or one per unit)."""
        _check_axis(act, self.dim, self.d, "activation")
        idx = self._index()[_which(which, self.n_features)].to(act.device)
        moved = act.movedim(self.dim, -1).clone()
        moved[..., idx] = _values(value, len(idx), moved[..., idx], dim=self.dim, ndim=act.ndim)
        return moved.movedim(-1, self.dim)

    def steer(self, act: Tensor, which: Which, alpha: float | Tensor) -> Tensor:
        """Add `alpha` (a number or one per chosen unit) to the chosen units."""
        _check_axis(act, self.dim, self.d, "activation")
        idx = self._index()[_which(which, self.n_features)].to(act.device)
        moved = act.movedim(self.dim, -1).clone()
        moved[..., idx] += _values(alpha, len(idx), moved[..., idx], dim=self.dim, ndim=act.ndim)
        return moved.movedim(-1, self.dim)

    def _index(self) -> Tensor:
        return torch.arange(self.d) if self.units is None else torch.tensor(self.units)


@dataclass(frozen=True, eq=False)
class DirectionBasis:
    """A set of k directions [k, d] along one axis: probe directions, mean differences, by hand.

    encode projects onto the directions (unit-normalised unless normalise=False); decode sums
    coefficient-weighted directions. ablate and steer move the activation along the directions.
    """

    directions: Float[Tensor, "k d"]
    dim: int = -1
    site: str | None = None
    labels: tuple[str, ...] = field(default=())
    normalise: bool = True
    normalize: InitVar[bool | None] = None  # the old spelling, for one release

    def __post_init__(self, normalize: bool | None) -> None:
        if normalize is not None:
            warn_renamed("normalize", "normalise")
            object.__setattr__(self, "normalise", normalize)
        u = self.directions
        if not isinstance(u, Tensor) or u.ndim not in (1, 2):
            got = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
            raise ShapeMismatchError(f"directions must be a tensor [k, d] (or [d]), got {got}")
        u = u.detach().float()
        u = u[None] if u.ndim == 1 else u
        if not bool(torch.isfinite(u).all()):
            raise InputError("directions hold NaN or infinite values")
        norms = u.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise InputError(f"direction(s) {norms[:, 0].eq(0).nonzero()[:, 0].tolist()} are zero")
        object.__setattr__(self, "directions", u / norms if self.normalise else u)
        _set_labels(self, self.site, "direction", torch.arange(u.shape[0]))

    @property
    def d(self) -> int:
        """The size of the axis the directions live in."""
        return self.directions.shape[1]

    @property
    def n_features(self) -> int:
        """The number of directions k."""
        return self.directions.shape[0]

    def encode(self, act: Tensor) -> Tensor:
        """Projections of act onto each direction: axis `dim` of size d becomes size k."""
        _check_axis(act, self.dim, self.d, "activation")
        u = self.directions.to(act)
        return (act.movedim(self.dim, -1) @ u.T).movedim(-1, self.dim)

    def decode(self, coeffs: Tensor) -> Tensor:
        """sum_k coeffs_k * direction_k: axis `dim` of size k becomes size d."""
        _check_axis(coeffs, self.dim, self.n_features, "coefficients")
        u = self.directions.to(coeffs)
        return (coeffs.movedim(self.dim, -1) @ u).movedim(-1, self.dim)

    def ablate(
        self, act: Tensor, which: Which = None, value: float | Tensor | None = None
    ) -> Tensor:
        """Set act's projection on the chosen directions to 0 (or `value`), changing nothing else.

        The smallest change that does it: act + c @ U with U the chosen directions and c solving
        (U U^T) c = value - U act, so the part of act orthogonal to the directions is untouched.
        `value`: a number, one per chosen direction [m], or a tensor shaped like
        `encode(act)` restricted to the chosen directions (e.g. mean projections).
        """
        _check_axis(act, self.dim, self.d, "activation")
        u = self.directions[_which(which, self.n_features)].to(act)
        moved = act.movedim(self.dim, -1)
        current = moved @ u.T
        target = _values(value, u.shape[0], current, dim=self.dim, ndim=act.ndim)
        gram_inv = torch.linalg.pinv((u @ u.T).double()).to(act)
        return (moved + ((target - current) @ gram_inv) @ u).movedim(-1, self.dim)

    def __repr__(self) -> str:
        where = f"{self.site!r}, " if self.site else ""
        return f"DirectionBasis({where}k={self.n_features}, d={self.d}, dim={self.dim})"

    def steer(self, act: Tensor, which: Which, alpha: float | Tensor) -> Tensor:
        """act + alpha * direction (summed over the chosen directions; alpha one number or [m])."""
        _check_axis(act, self.dim, self.d, "activation")
        u = self.directions[_which(which, self.n_features)].to(act)
        shift = torch.as_tensor(alpha, dtype=act.dtype, device=act.device).reshape(-1)
        if shift.numel() not in (1, u.shape[0]):
            raise ShapeMismatchError(
                f"alpha must be a number or one per chosen direction ({u.shape[0]}), got "
                f"{shift.numel()} values"
            )
        vector = (shift[:, None] * u).sum(0) if shift.numel() > 1 else shift * u.sum(0)
        return (act.movedim(self.dim, -1) + vector).movedim(-1, self.dim)


def check_basis(basis: Any, site: Any, what: str) -> str:
    """The site of `basis`, a FeatureBasis with a site (agreeing with `site` if given), for the
    operation `what` that reads it there.

        check_basis(UnitBasis(4, dim=1, site="relu1"), None, "patch")      # "relu1"

    Raises ConfigError when `basis` is not a feature basis, has no site, or lives at another
    site than `site`.
    """
    if not isinstance(basis, FeatureBasis):
        raise ConfigError(
            "basis must be a feature basis (UnitBasis, DirectionBasis, a dictionary's "
            f"as_basis()), got {type(basis).__name__}"
        )
    if not isinstance(basis.site, str) or not basis.site:
        raise ConfigError(
            f"{what} reads the basis at its site, and this basis has none; build it with one: "
            "UnitBasis(..., site=...), DirectionBasis(..., site=...), dictionary.as_basis(site=...)"
        )
    if site is not None and site != basis.site:
        raise ConfigError(
            f"site={site!r} but the basis lives at {basis.site!r}; omit site= (the basis names it)"
        )
    return basis.site


def coordinates(basis: FeatureBasis, act: Tensor) -> Tensor:
    """`act` in feature coordinates: [coefficients, act - decode(coefficients)] along the basis
    axis (k + d entries), so patching or ablating a coordinate moves one feature or the error.

        p = coordinates(basis, act)          # [..., k + d, ...] along basis.dim

    Raises ShapeMismatchError when `act` is not of size d along the basis axis.
    """
    coeffs = basis.encode(act)
    return torch.cat([coeffs, act - basis.decode(coeffs)], dim=basis.dim)


def ablated_coordinates(
    model: nn.Module, basis: FeatureBasis, baseline: Baseline, clean: Any, corrupt: Any, *,
    batch: int, like: Mapping[str, Tensor], metric: Any = None,
) -> tuple[Tensor, float | None]:  # fmt: skip
    """What the features and the error term take when patched or ablated, in feature coordinates
    ([batch or 1, ...]), and the metric on the reference run when it is the corrupted run: the
    baseline's values (`circuits.capture.ablated`) of `coordinates`, so "mean" is each
    coefficient's mean and "zero" sets coefficients and error to zero.

        values, _ = ablated_coordinates(model, basis, Baseline(ablation="zero"), clean, None,
                                        batch=len(clean), like={basis.site: act})

    Raises what `circuits.capture.ablated` raises.
    """
    site = str(basis.site)
    values, value = ablated(model, [site], baseline, clean, corrupt, batch=batch, metric=metric,
                            like=like, transform=partial(coordinates, basis))  # fmt: skip
    return values[site], value


def _set_labels(
    basis: UnitBasis | DirectionBasis, site: str | None, stem: str, index: Tensor
) -> None:
    n = len(index)
    labels = basis.labels
    if not labels:
        prefix = f"{site}:" if site else ""
        labels = tuple(f"{prefix}{stem}{int(i)}" for i in index)
    if len(labels) != n:
        raise ConfigError(f"labels must name each of the {n} features, got {len(labels)}")
    object.__setattr__(basis, "labels", tuple(str(label) for label in labels))
    if isinstance(basis.dim, bool) or not isinstance(basis.dim, int):
        raise ConfigError(f"dim must be an int (an axis index), got {basis.dim!r}")


def _check_axis(t: Tensor, dim: int, size: int, what: str) -> None:
    if not isinstance(t, Tensor):
        raise InputError(f"the {what} must be a tensor, got {type(t).__name__}")
    if not -t.ndim <= dim < t.ndim or t.shape[dim] != size:
        raise ShapeMismatchError(
            f"the {what} of shape {tuple(t.shape)} should have size {size} along axis {dim} "
            "(the basis's feature axis); check the site and the basis's dim"
        )


def _which(which: Which, n: int) -> Tensor:
    """Chosen feature indices as a long tensor; None means all."""
    if which is None:
        return torch.arange(n)
    idx = torch.as_tensor(which, dtype=torch.long).reshape(-1).cpu()
    if idx.numel() == 0 or bool(((idx < -n) | (idx >= n)).any()):
        raise InputError(f"feature indices {idx.tolist()} are not in range for {n} features")
    return idx % n


def _values(
    value: float | Tensor | None, m: int, like: Tensor, *, dim: int = -1, ndim: int = 0
) -> Tensor:
    """A value per chosen feature, broadcast to `like` ([..., m], features last)."""
    if value is None:
        return torch.zeros_like(like)
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if v.ndim == 1 and v.shape[0] == m:
        return v.expand_as(like)
    if v.ndim == ndim and ndim > 1:  # laid out like encode(act): move its feature axis last
        v = v.movedim(dim, -1)
    try:
        return v.expand_as(like)
    except RuntimeError:
        raise ShapeMismatchError(
            f"value of shape {tuple(v.shape)} does not broadcast to the {m} chosen features "
            f"(coefficients of shape {tuple(like.shape)}, features last)"
        ) from None
