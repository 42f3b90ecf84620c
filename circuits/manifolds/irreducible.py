"""Is a 2-d feature really 2-d? Engels et al.'s (2024) irreducibility tests.

A feature f whose points lie in a plane is reducible, one of two simpler things in disguise, if

- it is separable: two independent 1-d features, so that in some rotated frame its coordinates
  (a, b) are independent. The separability index S(f) is the mutual information between a and
  b (bits, from a histogram) minimised over rotations: about 0 for independent coordinates (an
  isotropic Gaussian, a grid), large for a circle, whose coordinates stay tied in every frame.
- it is a mixture: most of the time it is a 1-d feature, so that most points lie near a line.
  The epsilon-mixture index M_eps(f) is the largest fraction of points within eps of a line
  v . f + c = 0, the distance measured in units of the root mean square of v . f + c over all
  points: large for points on two axes (two features that rarely fire together), small for a
  circle or a blob.

`irreducibility` says irreducible when S >= `min_separability` and M <= `max_mixture`. Points
are centred and scaled by their root mean square radius first (a rotation-invariant
normalisation). The rotation search covers [0, 90) degrees, since a quarter turn or a mirror
only permutes the histogram; the mixture search tries `angles` directions for v and, for each,
offsets c at the quantiles of v . f (their method, gradient ascent on a smoothed count, finds
the same optimum less predictably).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from circuits.checks import check_int, check_number
from circuits.errors import ConfigError, InputError
from circuits.manifolds.points import as_points

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["Irreducibility", "irreducibility", "mixture_index", "separability_index"]

MIN_SEPARABILITY = 0.2
"""Bits of mutual information (minimised over rotations) below which points count as
separable, i.e. two independent 1-d features."""
MAX_MIXTURE = 0.35
"""The epsilon-mixture index above which points count as a mixture of a 1-d feature."""


@dataclass(frozen=True, eq=False)
class Irreducibility:
    """The two indices, the verdict, and what they were computed from.

    separability: S(f) in bits; mixture: M_eps(f). irreducible: S >= min_separability and
    M <= max_mixture. angles, information [R]: the rotation search (radians, bits). line:
    (v [2], c) of the best mixture line in the normalised frame. points [n, 2]: normalised.
    """

    separability: float
    mixture: float
    irreducible: bool
    epsilon: float
    min_separability: float
    max_mixture: float
    angles: Tensor
    information: Tensor
    line: tuple[Tensor, float]
    points: Tensor

    def to_frame(self) -> pd.DataFrame:
        """One row: separability, mixture, the verdict and the thresholds."""
        return pd.DataFrame([{"separability": self.separability, "mixture": self.mixture,
                              "irreducible": self.irreducible, "epsilon": self.epsilon,
                              "min_separability": self.min_separability,
                              "max_mixture": self.max_mixture, "n": len(self.points)}])  # fmt: skip

    def plot(self, *, title: str | None = None) -> go.Figure:
        """The normalised points with the best mixture band, and the information per rotation."""
        from plotly.subplots import make_subplots

        fig = make_subplots(
            rows=1,
            cols=2,
            subplot_titles=(
                f"points; mixture index {self.mixture:.3f}",
                f"mutual information per rotation; separability {self.separability:.3f} bits",
            ),
        )
        p = self.points.float()
        fig.add_scatter(
            x=p[:, 0].tolist(),
            y=p[:, 1].tolist(),
            mode="markers",
            marker={"size": 3, "color": "black"},
            row=1,
            col=1,
            name="points",
        )
        v, c = self.line[0].float(), self.line[1]
        along = torch.stack([-v[1], v[0]])
        t = torch.linspace(-3, 3, 2)
        for side in (-1.0, 1.0):
            rms = float(((p @ v + c) ** 2).mean().sqrt())
            base = v * (side * self.epsilon * rms - c)
            ends = base[None] + t[:, None] * along[None]
            fig.add_scatter(
                x=ends[:, 0].tolist(),
                y=ends[:, 1].tolist(),
                mode="lines",
                line={"color": "red", "dash": "dash"},
                row=1,
                col=1,
                name="band",
            )
        fig.add_scatter(
            x=torch.rad2deg(self.angles).tolist(),
            y=self.information.tolist(),
            mode="lines",
            line={"color": "green"},
            row=1,
            col=2,
            name="bits",
        )
        verdict = "irreducible" if self.irreducible else "reducible"
        fig.update_layout(title=title or f"{verdict}", showlegend=False)
        fig.update_xaxes(title_text="rotation (degrees)", row=1, col=2)
        return fig

    def __repr__(self) -> str:
        verdict = "irreducible" if self.irreducible else "reducible"
        return (
            f"Irreducibility({verdict}: separability {self.separability:.3f} bits, mixture "
            f"{self.mixture:.3f}, n={len(self.points)})"
        )


def separability_index(
    points: Float[Tensor, "n 2"], *, bins: int = 10, angles: int = 90, clip: float = 3.0
) -> float:
    """S(f): the mutual information (bits) between the two coordinates of the normalised
    points, minimised over rotations (module docstring). bins per axis over [-clip, clip]
    (values beyond go to the edge bins); angles: rotations tried in [0, 90) degrees.

        cc.manifolds.separability_index(circle_points)      # about 1 bit or more
        cc.manifolds.separability_index(torch.randn(2000, 2))   # about 0

    Raises:
        ConfigError: bins < 2, angles < 1 or clip not > 0.
        InputError: points are not a finite [n, 2] tensor or are all equal.
    """
    return _separability(_normalised(points), bins=bins, angles=angles, clip=clip)[0]


def mixture_index(
    points: Float[Tensor, "n 2"], *, epsilon: float = 0.1, angles: int = 180, offsets: int = 101
) -> float:
    """M_eps(f): the largest fraction of points within epsilon * rms(v . f + c) of a line
    v . f + c = 0 (module docstring); `angles` directions in [0, 180) degrees, `offsets`
    quantiles of v . f as candidate offsets (and c = 0).

        cc.manifolds.mixture_index(points_on_two_axes)      # about 1
        cc.manifolds.mixture_index(circle_points)           # about 0.2

    Raises:
        ConfigError: epsilon not in (0, 1], angles or offsets < 1.
        InputError: points are not a finite [n, 2] tensor or are all equal.
    """
    return _mixture(_normalised(points), epsilon=epsilon, angles=angles, offsets=offsets)[0]


def irreducibility(
    points: Float[Tensor, "n 2"],
    *,
    epsilon: float = 0.1,
    min_separability: float = MIN_SEPARABILITY,
    max_mixture: float = MAX_MIXTURE,
    bins: int = 10,
) -> Irreducibility:
    """Both tests on points in a plane, and the verdict (module docstring).

        res = cc.manifolds.irreducibility(plane.encode(acts))
        res.irreducible, res.separability, res.mixture; res.plot()

    Raises:
        ConfigError: an option out of range (epsilon in (0, 1], thresholds >= 0, bins >= 2).
        InputError: points are not a finite [n, 2] tensor or are all equal.
    """
    check_number(min_separability, "min_separability", low=0)
    check_number(max_mixture, "max_mixture", low=0, high=1)
    p = _normalised(points)
    s, grid, info = _separability(p, bins=bins, angles=90, clip=3.0)
    m, line = _mixture(p, epsilon=epsilon, angles=180, offsets=101)
    return Irreducibility(
        separability=s, mixture=m, irreducible=s >= min_separability and m <= max_mixture,
        epsilon=epsilon, min_separability=min_separability, max_mixture=max_mixture,
        angles=grid, information=info, line=line, points=p,
    )  # fmt: skip


def _normalised(points: Any) -> Tensor:
    """Centred points scaled to a root mean square radius of 1 (float64)."""
    raw = as_points(points, "points", width=2).double()
    p = raw - raw.mean(0)
    rms = float((p**2).sum(1).mean().sqrt())
    if rms <= 1e-12 * max(float(raw.abs().max()), 1e-300):
        raise InputError("the points are all equal, so they span no plane; pass points that vary")
    return p / rms


def _separability(
    p: Tensor, *, bins: int, angles: int, clip: float
) -> tuple[float, Tensor, Tensor]:
    check_int(bins, "bins", low=2)
    check_int(angles, "angles")
    if not check_number(clip, "clip") > 0:
        raise ConfigError(f"clip must be > 0 (the histogram's range in rms units), got {clip!r}")
    grid = torch.arange(angles, dtype=torch.float64) * (math.pi / 2 / angles)
    c, s = torch.cos(grid), torch.sin(grid)
    x = p[:, :1] * c + p[:, 1:] * s  # [n, R]
    y = -p[:, :1] * s + p[:, 1:] * c
    scale = math.sqrt(2.0)  # each coordinate of a unit-rms radius has rms 1 / sqrt(2)
    ix = _bin(x * scale, bins, clip)
    iy = _bin(y * scale, bins, clip)
    counts = torch.zeros(angles, bins * bins, dtype=torch.float64)
    counts.scatter_add_(1, (ix * bins + iy).T, torch.ones(angles, p.shape[0], dtype=torch.float64))
    joint = counts.reshape(angles, bins, bins) / p.shape[0]
    px, py = joint.sum(2, keepdim=True), joint.sum(1, keepdim=True)
    ratio = torch.where(joint > 0, joint / (px * py).clamp_min(1e-300), torch.ones_like(joint))
    info = (joint * torch.log2(ratio)).sum((1, 2)).clamp_min(0)
    return float(info.min()), grid, info


def _bin(values: Tensor, bins: int, clip: float) -> Tensor:
    scaled = ((values.clamp(-clip, clip) + clip) / (2 * clip) * bins).long()
    return scaled.clamp(0, bins - 1)


def _mixture(p: Tensor, *, epsilon: float, angles: int, offsets: int, pairs: int = 512,
             ) -> tuple[float, tuple[Tensor, float]]:  # fmt: skip
    if not 0 < check_number(epsilon, "epsilon") <= 1:
        raise ConfigError(f"epsilon must be in (0, 1] (a fraction of the rms), got {epsilon!r}")
    check_int(angles, "angles")
    check_int(offsets, "offsets")
    grid = torch.arange(angles, dtype=torch.float64) * (math.pi / angles)
    v = torch.stack([torch.cos(grid), torch.sin(grid)], 1)  # [R, 2]
    z = (p @ v.T).T.contiguous()  # [R, n]
    q = torch.linspace(0, 1, offsets, dtype=torch.float64)
    centres = torch.cat([torch.quantile(z, q, dim=1).T, torch.zeros(angles, 1, dtype=z.dtype)], 1)
    frac = _within(z, centres, epsilon)  # [R, K]
    best = int(frac.argmax())
    r, k = divmod(best, frac.shape[1])
    found, line = float(frac.max()), (v[r], -float(centres[r, k]))
    # Lines through pairs of points (seeded): a line the points lie on exactly, whatever its
    # angle, which a grid of directions only comes close to.
    gen = torch.Generator().manual_seed(0)
    i, j = torch.randint(len(p), (2, pairs), generator=gen)
    step = p[j] - p[i]
    keep = step.norm(dim=1) > 1e-9
    if bool(keep.any()):
        normal = torch.stack([-step[keep, 1], step[keep, 0]], 1)
        normal = normal / normal.norm(dim=1, keepdim=True)
        zp = (p @ normal.T).T.contiguous()  # [K', n]
        through = (normal * p[i[keep]]).sum(1, keepdim=True)  # v . p_i: the band's centre
        frac_p = _within(zp, through, epsilon)[:, 0]
        if float(frac_p.max()) > found:
            b = int(frac_p.argmax())
            found, line = float(frac_p[b]), (normal[b], -float(through[b, 0]))
    return found, (line[0].float(), line[1])


def _within(z: Tensor, centres: Tensor, epsilon: float) -> Tensor:
    """For projections z [R, n] and band centres [R, K]: the fraction of the n values within
    epsilon * rms(z - centre) of each centre (counted on the sorted values)."""
    z_sorted = z.sort(1).values
    mean, mean_sq = z.mean(1, keepdim=True), (z**2).mean(1, keepdim=True)
    rms = (mean_sq - 2 * centres * mean + centres**2).clamp_min(0).sqrt()
    half = epsilon * rms
    lo = torch.searchsorted(z_sorted, (centres - half).contiguous(), side="left")
    hi = torch.searchsorted(z_sorted, (centres + half).contiguous(), side="right")
    return (hi - lo).double() / z.shape[1]
