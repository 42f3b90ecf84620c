"""Subspaces: k orthonormal directions as one feature, and the rank-k probes that find them.

A feature that is not one direction (a circle of weekdays, an orientation ring) lives in a
k-dimensional subspace. `Subspace` is a `DirectionBasis` whose directions are orthonormal, so
patching (`cc.patch(basis=...)`), attribution and steering (`cc.steer`) read and move the
activation's coordinates in it, each coordinate a feature; it adds what a subspace needs on top:
the component of an activation in it (`project`), a rotation in one of its planes (`rotate`) and
principal angles to another subspace (`principal_angles`).

`fit_probe(..., rank=k)` finds one (`ProbeResult.as_subspace()`); with `period=` a label with a
cyclic order (weekdays: period 7; an angle in degrees: period 360) becomes a point on a circle,
(cos, sin) of 2 pi f label / period for each frequency f, and a linear probe reads those.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from circuits.checks import check_int, check_number
from circuits.errors import ConfigError, InputError, ShapeMismatchError
from circuits.features import DirectionBasis

if TYPE_CHECKING:
    from circuits.probes.result import ProbeResult

__all__ = ["Subspace", "circle_targets", "orthonormal_rows"]


@dataclass(frozen=True, eq=False)
class Subspace(DirectionBasis):
    """A k-dimensional subspace along one activation axis: k orthonormal directions [k, d].

    The directions given are orthonormalised in order (Gram-Schmidt, so the first keeps its
    direction); they must be linearly independent. Every `DirectionBasis` operation works: encode
    gives the k coordinates, decode maps coordinates back, ablate and steer move the activation
    inside the subspace only.

        plane = cc.Subspace(torch.randn(2, 64), site="blocks.0.hook_resid_post")
        plane.encode(acts)                        # [..., 2]: coordinates in the plane
        plane.rotate(acts, math.pi / 2)           # a quarter turn inside the plane
        plane.principal_angles(other)             # degrees, smallest first

    Raises ShapeMismatchError for directions that are not [k, d], InputError for NaN, zero or
    linearly dependent directions.
    """

    def __post_init__(self, normalize: bool | None) -> None:
        super().__post_init__(normalize)
        object.__setattr__(self, "directions", orthonormal_rows(self.directions))
        object.__setattr__(self, "normalise", True)

    def project(self, act: Tensor) -> Tensor:
        """The component of `act` inside the subspace (same shape as `act`)."""
        return self.decode(self.encode(act))

    def rotate(
        self,
        act: Tensor,
        angle: float | Tensor,
        *,
        plane: tuple[int, int] = (0, 1),
        centre: Tensor | None = None,
    ) -> Tensor:
        """`act` with its coordinates in the plane of basis vectors `plane` turned by `angle`
        (radians, from the first towards the second), about `centre` (coordinates [2] in that
        plane; the origin by default). Nothing outside the plane moves; `angle` may be one
        number or one per element of the other axes ([...], broadcast like `encode(act)`
        without its basis axis)."""
        i, j = _plane(plane, self.n_features)
        coords = self.encode(act).movedim(self.dim, -1)
        xy = coords[..., [i, j]]
        c = torch.zeros(2) if centre is None else torch.as_tensor(centre, dtype=torch.float32)
        if c.shape != (2,):
            raise ShapeMismatchError(f"centre must be 2 coordinates, got shape {tuple(c.shape)}")
        c = c.to(xy)
        a = torch.as_tensor(angle, dtype=xy.dtype, device=xy.device)
        turned = turn(xy - c, a) + c
        delta = torch.zeros_like(coords)
        delta[..., [i, j]] = turned - xy
        return act + self.decode(delta.movedim(-1, self.dim))

    def principal_angles(self, other: Subspace | DirectionBasis | Tensor) -> Tensor:
        """The principal angles (degrees, smallest first) between this subspace and `other`
        (a basis or directions [m, d] over the same axis): min(k, m) of them; 0 for a shared
        direction, 90 for orthogonal ones."""
        rows = other.directions if isinstance(other, DirectionBasis) else other
        if not isinstance(rows, Tensor):
            raise InputError(f"other must be a Subspace or a tensor [m, d], got {type(rows)}")
        rows = rows[None] if rows.ndim == 1 else rows
        if rows.ndim != 2 or rows.shape[1] != self.d:
            raise ShapeMismatchError(
                f"other has shape {tuple(rows.shape)}; it needs directions over the same axis "
                f"([m, {self.d}])"
            )
        q = orthonormal_rows(rows.detach().float())
        s = torch.linalg.svdvals(self.directions.double() @ q.double().T).clamp(-1.0, 1.0)
        return torch.rad2deg(torch.arccos(s)).float().sort().values

    def __repr__(self) -> str:
        where = f"{self.site!r}, " if self.site else ""
        return f"Subspace({where}k={self.n_features}, d={self.d}, dim={self.dim})"


def orthonormal_rows(rows: Float[Tensor, "k d"]) -> Float[Tensor, "k d"]:
    """Gram-Schmidt on the rows, in order (QR in float64): row i of the result spans the same
    first i + 1 directions, and row 0 points where rows[0] points.

        q = orthonormal_rows(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))   # [[1, 0], [0, 1]]

    Raises:
        InputError: the rows are linearly dependent (or there are more rows than columns).
    """
    q, r = torch.linalg.qr(rows.double().T)
    diag = r.diagonal()
    norms = rows.double().norm(dim=1)
    if rows.shape[0] > rows.shape[1] or bool((diag.abs() <= 1e-6 * norms.clamp_min(1e-30)).any()):
        raise InputError(
            f"the {rows.shape[0]} directions (of length {rows.shape[1]}) are linearly dependent, "
            "so they span fewer dimensions than given; pass independent directions (or fewer)"
        )
    return (q * torch.sign(diag)).T.to(rows.dtype).contiguous()


def circle_targets(labels: Any, *, period: float, frequencies: Sequence[int]) -> Tensor:
    """Cyclic labels as points on circles: [cos, sin] of 2 pi f label / period for each f,
    [n, 2 * len(frequencies)] float32 (the targets of a circular probe).

        circle_targets(torch.arange(7), period=7, frequencies=(1,))   # weekdays on a circle

    Raises:
        InputError: the labels are not one finite number each, or hold fewer than 3 distinct
            positions on some circle (two points do not fix a circle).
    """
    theta = cyclic_angles(labels, period=period)
    columns = []
    for f in frequencies:
        count = distinct_positions(theta * f)
        if count < 3:
            raise InputError(
                f"a cyclic label needs at least 3 distinct values on the circle; at frequency "
                f"{f} with period {period:g} the labels give {count}. Pass labels with 3 or more "
                "values (or another period / frequency)"
            )
        columns += [torch.cos(f * theta), torch.sin(f * theta)]
    return torch.stack(columns, 1).float()


def cyclic_angles(labels: Any, *, period: float, n: int | None = None) -> Tensor:
    """Angles 2 pi label / period, float64 [n], of one finite number per sample (n of them
    when given), at least 3 of them distinct on the circle (InputError otherwise)."""
    if not check_number(period, "period") > 0:
        raise ConfigError(f"period must be > 0 (labels repeat after it), got {period!r}")
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise InputError(
            f"a cyclic label must be one number per sample, got dtype {arr.dtype} and shape "
            f"{arr.shape}"
        )
    if n is not None and arr.shape[0] != n:
        raise ShapeMismatchError(f"got {arr.shape[0]} labels for {n} rows; pass one per row")
    if not np.isfinite(arr).all():
        raise InputError("cyclic labels hold NaN or infinite values")
    theta = torch.as_tensor(arr, dtype=torch.float64) * (2 * math.pi / period)
    count = distinct_positions(theta)
    if count < 3:
        raise InputError(
            f"a cyclic label needs at least 3 distinct values on the circle, got {count} "
            f"(period {period:g}); two points do not fix a circle, so label more values"
        )
    return theta


def distinct_positions(theta: Tensor) -> int:
    """How many distinct points on the circle the angles (radians) hit, to 1e-6 of a turn."""
    turns = torch.remainder(theta / (2 * math.pi), 1.0)
    return len(torch.unique(torch.round(turns * 1e6).long() % 1_000_000))


def _plane(plane: Any, k: int) -> tuple[int, int]:
    ok = (
        isinstance(plane, tuple)
        and len(plane) == 2
        and all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < k for p in plane)
    )
    if not ok or plane[0] == plane[1]:
        raise ConfigError(f"plane must be two distinct basis indices in [0, {k}), got {plane!r}")
    return int(plane[0]), int(plane[1])


def subspace_labels(arr: Any, config: Any, d: int) -> Any:
    """A probe's labels as its config reads them (circle targets with a period), after
    checking the config's rank against the feature axis d (ConfigError when larger)."""
    if config.rank is not None and config.rank > d:
        raise ConfigError(
            f"rank={config.rank} is larger than the feature axis (d={d}): a subspace of the "
            f"activations has at most {d} dimensions; pass rank <= {d}"
        )
    if config.period is None:
        return arr
    return circle_targets(arr, period=config.period, frequencies=config.frequencies or (1,))


def check_cyclic(period: Any, frequencies: Any, *, kind: str) -> tuple[int, ...] | None:
    """The probe's cyclic options checked: `frequencies` as a tuple (None without a period)."""
    if period is not None and (check_number(period, "period") <= 0 or kind != "linear"):
        raise ConfigError(
            f"period={period!r} makes the label a point on a circle, read by a linear probe: "
            f"pass a period > 0 with kind='linear' (got kind={kind!r})"
        )
    if frequencies is None:
        return None
    freqs = tuple(frequencies) if isinstance(frequencies, list | tuple) else ()
    if period is None or not freqs or len(set(freqs)) != len(freqs):
        raise ConfigError(
            f"frequencies must be distinct positive ints, given with period=; got {frequencies!r}"
            f" (period={period!r})"
        )
    for f in freqs:
        check_int(f, "each frequency")
    return freqs


def probe_rows(result: ProbeResult) -> Tensor:
    """The rows whose span is the probe's subspace: its raw directions, centred over classes
    when there are more than two (softmax and class means shift every row alike)."""
    w = result.direction.double()
    return w - w.mean(0) if result.metric == "accuracy" and len(result.classes) > 2 else w


def top_rows(w: Tensor, k: int) -> Tensor:
    """The top k right singular vectors of w [m, d] as rows [k, d], each signed so that the
    largest of its projections w @ v is positive (one row: v = w / |w|)."""
    _, _, vh = torch.linalg.svd(w.double(), full_matrices=False)
    v = vh[:k]
    proj = w.double() @ v.T  # [m, k]
    pick = proj.abs().argmax(0)
    signs = torch.sign(proj.gather(0, pick[None])[0])
    return (v * torch.where(signs == 0, 1.0, signs)[:, None]).float()


def probe_rank(result: ProbeResult) -> int:
    """The numerical rank of the probe's map (`probe_rows`)."""
    s = torch.linalg.svdvals(probe_rows(result))
    return int((s > 1e-6 * s.max().clamp_min(1e-30)).sum()) if len(s) else 0


def reduce_rank(
    result: ProbeResult, x: Tensor, refit: Callable[[Tensor], ProbeResult]
) -> ProbeResult:
    """The rank-k probe (k = result.config.rank): `result` itself when k is None or its map
    has rank <= k, else the probe refit by `refit` on the coordinates of x [N, d] in the top-k
    subspace of its rows, with its directions mapped back to the d features."""
    if result.config.rank is None:
        return result
    k = int(result.config.rank)
    available = probe_rank(result)
    rows = result.direction.shape[0]
    if k > rows:
        raise ConfigError(
            f"rank={k} but this probe's map has {rows} row(s) (one per class, target or circle "
            "coordinate), so its subspace has at most that many dimensions; lower rank, or read "
            "more: another class, target, or frequencies=(...) with a period"
        )
    if k >= available:
        return result
    basis = top_rows(probe_rows(result), k).to(x)
    sub = refit(x @ basis.T)
    direction = sub.direction @ basis
    bias = sub.bias
    return dataclasses.replace(
        sub, direction=direction, bias=bias, direction_std=direction * result.scale,
        bias_std=bias + direction @ result.mean, mean=result.mean, scale=result.scale,
        config=result.config,
    )  # fmt: skip


def turn(t: Tensor, angle: Tensor) -> Tensor:
    """Points t [..., 2] of planes turned by angle [...] about their origins."""
    c, s = torch.cos(angle), torch.sin(angle)
    x, y = t[..., 0], t[..., 1]
    return torch.stack([c * x - s * y, s * x + c * y], -1)
