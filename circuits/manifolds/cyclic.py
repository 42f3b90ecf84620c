"""CyclicManifold: circles in activation space, one per frequency, as a feature basis of angles.

A cyclic label y (period p) written on circles puts the activation near

    point(y) = centre + sum_f  cos(2 pi f y / p) a_f + sin(2 pi f y / p) b_f

(`fourier_spectrum` finds centre, a_f and b_f). Each circle is a feature whose coefficient is an
angle: `encode` reads where an activation sits on each circle (coordinates t = (act - centre)
A^+ in the (cos, sin) frame of every circle at once, A the [2m, d] matrix of the a_f, b_f rows;
angle atan2(t_sin, t_cos)), and moving along a circle is the linear map that turns t in its
frame and leaves everything outside the circles' span alone:

    steer(act, which, alpha)     turn the chosen circles by alpha radians ("add to the angle")
    ablate(act, which, value)    turn them to the angle `value` (0 by default), radius kept
    shift(act, by)               turn circle f by 2 pi f by / p: the label moves by `by`
    restrict(act, y) / exclude(act, y)   keep only point(y), or remove point(y) - centre

Because it keeps the `FeatureBasis` contract, `cc.patch(basis=manifold)` patches each circle's
angle from the source run (and then the rest, the error term), and `cc.steer(model, x,
manifold, which=..., alpha=...)` turns circles inside a forward pass. Mean ablation averages
angles arithmetically, which is rarely what a circle wants: patch or resample instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.checks import check_number
from circuits.errors import ConfigError, InputError, ShapeMismatchError
from circuits.features import Which, _check_axis, _values, _which
from circuits.probes import Subspace
from circuits.probes.subspace import turn

__all__ = ["CyclicManifold"]


@dataclass(frozen=True, eq=False)
class CyclicManifold:
    """Circles of a cyclic label (module docstring): `axes` [m, 2, d] holds a_f and b_f for
    each of the m `frequencies`, `centre` [d] the point all circles turn about.

    Build one with `fourier_spectrum(...).manifold()`. As a feature basis it has one feature
    per circle, whose coefficient is the angle (radians) on it.

        manifold = cc.manifolds.fourier_spectrum(acts, labels, period=p).manifold()
        manifold.encode(acts)            # [n, m] angles, f * 2 pi y / p on circle f
        manifold.shift(acts, 3)          # every circle turned as if y were y + 3
        cc.steer(model, tokens, manifold, which=None, alpha=manifold.shift_angles(3), pos=-1)

    Raises ShapeMismatchError for axes that are not [m, 2, d] or a centre that is not [d],
    ConfigError for frequencies that do not match the axes or a period <= 0, InputError for
    axes that do not span 2m dimensions.
    """

    period: float
    frequencies: tuple[int, ...]
    centre: Float[Tensor, " d"]
    axes: Float[Tensor, "m 2 d"]
    dim: int = -1
    site: str | None = None
    labels: tuple[str, ...] = field(default=())
    _pinv: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        a, c = self.axes, self.centre
        if not isinstance(a, Tensor) or a.ndim != 3 or a.shape[1] != 2:
            raise ShapeMismatchError(f"axes must be [m, 2, d], got {getattr(a, 'shape', a)!r}")
        if not isinstance(c, Tensor) or tuple(c.shape) != (a.shape[2],):
            raise ShapeMismatchError(f"centre must be [{a.shape[2]}], got {getattr(c, 'shape', c)}")
        check_number(self.period, "period")
        object.__setattr__(self, "frequencies", tuple(int(f) for f in self.frequencies))
        if len(self.frequencies) != a.shape[0] or not self.period > 0:
            raise ConfigError(
                f"need one frequency per circle ({a.shape[0]}) and a period > 0; got "
                f"frequencies={self.frequencies!r}, period={self.period!r}"
            )
        rows = a.detach().double().reshape(-1, a.shape[2])
        s = torch.linalg.svdvals(rows)
        if not bool(torch.isfinite(rows).all()) or bool((s <= 1e-6 * s.max()).any()):
            raise InputError(
                f"the {a.shape[0]} circles' axes do not span {2 * a.shape[0]} dimensions (a "
                "flat or repeated circle); keep only frequencies that carry variance"
            )
        object.__setattr__(self, "axes", a.detach().float())
        object.__setattr__(self, "centre", c.detach().float())
        object.__setattr__(self, "_pinv", torch.linalg.pinv(rows).float())  # [d, 2m]
        labels = self.labels or tuple(
            f"{self.site + ':' if self.site else ''}circle{f}" for f in self.frequencies
        )
        if len(labels) != a.shape[0]:
            raise ConfigError(f"labels must name each of the {a.shape[0]} circles")
        object.__setattr__(self, "labels", tuple(labels))

    @property
    def d(self) -> int:
        """The size of the activation axis the circles live in."""
        return self.axes.shape[2]

    @property
    def n_features(self) -> int:
        """The number of circles m (one feature each)."""
        return self.axes.shape[0]

    @property
    def subspace(self) -> Subspace:
        """The span of every circle (2m orthonormal directions) as a `Subspace`."""
        return Subspace(self.axes.reshape(-1, self.d), dim=self.dim, site=self.site)

    def plane(self, frequency: int) -> Subspace:
        """The plane of one circle (its a_f, b_f orthonormalised) as a `Subspace`."""
        if frequency not in self.frequencies:
            raise ConfigError(f"frequency {frequency} is not one of {self.frequencies}")
        return Subspace(self.axes[self.frequencies.index(frequency)], dim=self.dim, site=self.site)

    def circle_points(self, act: Tensor, frequency: int) -> Float[Tensor, "... 2"]:
        """Where `act`'s component on one circle lies in that circle's plane: the part
        a_f t_cos + b_f t_sin of the activation (t = its `coordinates`, so the other circles'
        parts are taken out first) in orthonormal coordinates of the plane ([..., 2], the basis
        axis moved last). An elliptical or noisy circle stays so here: the plane's geometry."""
        plane = self.plane(frequency)
        f = self.frequencies.index(frequency)
        part = self.coordinates(act)[..., f, :] @ self.axes[f].to(act)  # [..., d]
        return part @ plane.directions.T.to(act)

    def coordinates(self, act: Tensor) -> Float[Tensor, "... m 2"]:
        """Each circle's (cos, sin) coordinates of `act` ([..., m, 2], the basis axis moved
        last): 1 from the centre on the fitted circle."""
        _check_axis(act, self.dim, self.d, "activation")
        moved = act.movedim(self.dim, -1)
        t = (moved - self.centre.to(moved)) @ self._pinv.to(moved)
        return t.reshape(*t.shape[:-1], self.n_features, 2)

    def encode(self, act: Tensor) -> Tensor:
        """The angle (radians, in (-pi, pi]) of `act` on each circle: axis `dim` becomes m."""
        t = self.coordinates(act)
        return torch.atan2(t[..., 1], t[..., 0]).movedim(-1, self.dim)

    def decode(self, coeffs: Tensor) -> Tensor:
        """The point at angles `coeffs` (one per circle along `dim`): centre + sum of circles."""
        _check_axis(coeffs, self.dim, self.n_features, "angles")
        return self._at(coeffs.movedim(self.dim, -1)).movedim(-1, self.dim)

    def steer(self, act: Tensor, which: Which, alpha: float | Tensor) -> Tensor:
        """Turn the chosen circles by `alpha` radians (one number, or one per chosen circle)."""
        idx = _which(which, self.n_features)
        angles = torch.zeros(self.n_features, dtype=act.dtype, device=act.device)
        shift = torch.as_tensor(alpha, dtype=act.dtype, device=act.device).reshape(-1)
        if shift.numel() not in (1, len(idx)):
            raise ShapeMismatchError(
                f"alpha must be a number or one per chosen circle ({len(idx)}), got "
                f"{shift.numel()} values"
            )
        angles[idx.to(act.device)] = shift
        return self._move(act, lambda t: turn(t, angles))

    def ablate(
        self, act: Tensor, which: Which = None, value: float | Tensor | None = None
    ) -> Tensor:
        """Turn the chosen circles (all if None) to the angle `value` (0 by default; a number,
        one per chosen circle, or laid out like `encode(act)`), keeping each radius."""
        idx = _which(which, self.n_features).to(act.device)

        def to_angle(t: Tensor) -> Tensor:
            current = torch.atan2(t[..., 1], t[..., 0])
            target = _values(value, len(idx), current[..., idx], dim=self.dim, ndim=act.ndim)
            angles = torch.zeros_like(current)
            angles[..., idx] = target - current[..., idx]
            return turn(t, angles)

        return self._move(act, to_angle)

    def shift_angles(self, by: float) -> Tensor:
        """The angles [m] that move the label by `by`: 2 pi f by / period on circle f."""
        return torch.tensor([2 * math.pi * f * float(by) / self.period for f in self.frequencies])

    def shift(self, act: Tensor, by: float | Tensor) -> Tensor:
        """Every circle turned as if the label were y + `by` (a number, or one per element of
        act's other axes)."""
        b = torch.as_tensor(by, dtype=act.dtype, device=act.device)[..., None]
        freqs = torch.tensor(self.frequencies, dtype=act.dtype, device=act.device)
        return self._move(act, lambda t: turn(t, 2 * math.pi * freqs * b / self.period))

    def point_angles(self, labels: Any) -> Tensor:
        """Each circle's angle for each label, 2 pi f y / period: [..., m] for labels [...]."""
        y = torch.as_tensor(labels).float()
        freqs = torch.tensor(self.frequencies, dtype=torch.float32, device=y.device)
        return 2 * math.pi * y[..., None] * freqs / self.period

    def point(self, labels: Any) -> Tensor:
        """The manifold's point for each label: [..., d] for labels [...] (features last)."""
        return self._at(self.point_angles(labels))

    def restrict(self, act: Tensor, labels: Any) -> Tensor:
        """`act` replaced by `point(labels)` (labels one per element of act's other axes): only
        the circles' frequencies of the label are kept (Nanda et al.'s restricted loss)."""
        return self._labelled(act, labels, keep=True)

    def exclude(self, act: Tensor, labels: Any) -> Tensor:
        """`act` minus point(labels) - centre: the circles' part of the label removed
        (Nanda et al.'s excluded loss)."""
        return self._labelled(act, labels, keep=False)

    def _labelled(self, act: Tensor, labels: Any, *, keep: bool) -> Tensor:
        _check_axis(act, self.dim, self.d, "activation")
        y = torch.as_tensor(labels, device=act.device)
        moved = act.movedim(self.dim, -1)
        if tuple(y.shape) != tuple(moved.shape[:-1]):
            raise ShapeMismatchError(
                f"labels of shape {tuple(y.shape)} must give one label per activation "
                f"({tuple(moved.shape[:-1])})"
            )
        point = self._at(self.point_angles(y).to(moved))
        out = point if keep else moved - (point - self.centre.to(moved))
        return out.movedim(-1, self.dim)

    def _at(self, angles: Tensor) -> Tensor:
        """centre + sum_f (cos, sin)(angle_f) [a_f; b_f], for angles [..., m] -> [..., d]."""
        unit = torch.stack([torch.cos(angles), torch.sin(angles)], -1).flatten(-2)
        return self.centre.to(unit) + unit @ self.axes.reshape(-1, self.d).to(unit)

    def _move(self, act: Tensor, turn: Any) -> Tensor:
        t = self.coordinates(act)
        delta = (turn(t) - t).flatten(-2) @ self.axes.reshape(-1, self.d).to(act)
        return act + delta.movedim(-1, self.dim)

    def __repr__(self) -> str:
        where = f"{self.site!r}, " if self.site else ""
        return f"CyclicManifold({where}period={self.period:g}, frequencies={self.frequencies})"
