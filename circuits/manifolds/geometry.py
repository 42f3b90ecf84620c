"""Is it a circle? Circularity of labelled points in a plane, and the plots of point clouds.

`circularity(points, labels, period=...)` fits the labelled circle

    point_i = centre + M [cos theta_i, sin theta_i],   theta_i = 2 pi f label_i / period

by least squares (M a 2 x 2 matrix: a circle when M is a rotation times a scale, an ellipse
otherwise), and measures how well the points follow their labels around it:

- correlation: Fisher & Lee's (1983) circular-circular correlation between the label angle
  theta and the point's angle about the centre, det(A) / sqrt(det(U U^T) det(V V^T)) with U, V
  the unit vectors of the two angles and A = U V^T. 1 when the points go round in the labels'
  order, -1 the other way round (a reflection), 0 when unrelated; well defined for evenly spaced
  labels, where the Jammalamadaka-SenGupta coefficient is not (their mean angle is undefined).
- radius_spread: std / mean of the distance to the centre (0 on a circle; an ellipse or
  scatter raises it). ellipticity: the ratio of M's singular values (1 for a circle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from circuits.checks import check_int
from circuits.errors import InputError, ShapeMismatchError
from circuits.manifolds.points import as_points
from circuits.probes.subspace import cyclic_angles

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["Circularity", "circularity", "plot_points"]


@dataclass(frozen=True, eq=False)
class Circularity:
    """How well labelled points in a plane lie on a circle in their labels' order.

    correlation: signed circular correlation (module docstring); `score` is its magnitude.
    radius_spread, ellipticity: the shape (0 and 1 for a circle). centre [2], matrix [2, 2]:
    the fitted circle (centre + matrix @ [cos, sin]). points [n, 2], theta [n]: the data.
    """

    correlation: float
    radius_spread: float
    ellipticity: float
    centre: Float[Tensor, " 2"]
    matrix: Float[Tensor, "2 2"]
    points: Float[Tensor, "n 2"]
    theta: Float[Tensor, " n"]
    labels: Tensor
    frequency: int

    @property
    def score(self) -> float:
        """|correlation|: 1 for points that go round the circle in the labels' order."""
        return abs(self.correlation)

    def to_frame(self) -> pd.DataFrame:
        """One row: correlation, score, radius spread, ellipticity, frequency and n."""
        return pd.DataFrame([{"correlation": self.correlation, "score": self.score,
                              "radius_spread": self.radius_spread,
                              "ellipticity": self.ellipticity, "frequency": self.frequency,
                              "n": len(self.theta)}])  # fmt: skip

    def plot(self, *, title: str | None = None) -> go.Figure:
        """The points coloured by label and the fitted circle (or ellipse) through them."""
        fig = plot_points(self.points, self.labels, title=title or (
            f"circularity {self.score:.3f} (radius spread {self.radius_spread:.2f}, "
            f"ellipticity {self.ellipticity:.2f})"))  # fmt: skip
        t = torch.linspace(0, 2 * math.pi, 200)
        ring = self.centre[None] + torch.stack([torch.cos(t), torch.sin(t)], 1) @ self.matrix.T
        fig.add_scatter(x=ring[:, 0].tolist(), y=ring[:, 1].tolist(), mode="lines",
                        line={"color": "black", "dash": "dash"}, name="circle fit")  # fmt: skip
        fig.update_yaxes(scaleanchor="x", scaleratio=1)
        return fig

    def __repr__(self) -> str:
        return (
            f"Circularity(correlation={self.correlation:.3f}, radius_spread="
            f"{self.radius_spread:.3f}, ellipticity={self.ellipticity:.3f}, n={len(self.theta)})"
        )


def circularity(
    points: Float[Tensor, "n 2"], labels: Any, *, period: float, frequency: int = 1
) -> Circularity:
    """How circular labelled points in a plane are (module docstring).

    points: [n, 2] coordinates in a plane (`subspace.encode(acts)`, a probe's or a manifold's
    plane). labels: [n] numbers on the circle (residues with period p, degrees with period 360);
    the label angle is 2 pi `frequency` label / period (frequency f: the circle of a key
    frequency goes round f times as the label goes round once).

        plane = manifold.plane(14)
        cc.manifolds.circularity(plane.encode(acts), answers, period=p, frequency=14).score

    Raises:
        ConfigError: period is not > 0, or frequency is not a positive int.
        InputError: points are not a finite [n, 2] tensor, labels are not one finite number
            per point or give fewer than 3 distinct angles, or the points are all equal.
        ShapeMismatchError: points are not [n, 2], or labels and points disagree in n.
    """
    p = as_points(points, "points", width=2).double()
    check_int(frequency, "frequency")
    theta = cyclic_angles(labels, period=period, n=p.shape[0]) * frequency
    if float((p - p.mean(0)).abs().max()) <= 1e-12 * max(float(p.abs().max()), 1e-300):
        raise InputError("the points are all equal, so they trace no circle; pass points that vary")
    design = torch.stack([torch.ones_like(theta), torch.cos(theta), torch.sin(theta)], 1)
    coef = torch.linalg.lstsq(design, p).solution  # [3, 2]: centre, then M^T
    centre, matrix = coef[0], coef[1:].T
    rel = p - centre
    radius = rel.norm(dim=1)
    beta = torch.atan2(rel[:, 1], rel[:, 0])
    u = torch.stack([torch.cos(theta), torch.sin(theta)])
    v = torch.stack([torch.cos(beta), torch.sin(beta)])
    denom = math.sqrt(max(float(torch.det(u @ u.T) * torch.det(v @ v.T)), 0.0))
    corr = float(torch.det(u @ v.T)) / denom if denom > 0 else 0.0
    s = torch.linalg.svdvals(matrix)
    return Circularity(
        correlation=corr, radius_spread=float(radius.std() / radius.mean().clamp_min(1e-300)),
        ellipticity=float(s[1] / s[0].clamp_min(1e-300)), centre=centre.float(),
        matrix=matrix.float(), points=p.float(), theta=theta.float(),
        labels=torch.as_tensor(labels).detach().cpu(), frequency=frequency,
    )  # fmt: skip


def plot_points(
    points: Float[Tensor, "n k"], labels: Any = None, *, title: str | None = None
) -> go.Figure:
    """A plotly scatter of projected points, 2-D for [n, 2] and 3-D for [n, 3], coloured by
    label (a colour scale for numbers, a legend entry per value otherwise).

        cc.manifolds.plot_points(plane.encode(acts), answers)          # 2-D
        cc.manifolds.plot_points(pca_coordinates[:, :3], weekdays)    # 3-D

    Raises:
        InputError: the points are not a finite [n, 2] or [n, 3] tensor.
        ShapeMismatchError: there are not 2 or 3 columns, or the labels are not one per point.
    """
    import plotly.graph_objects as go

    p = as_points(points, "points")
    if p.shape[1] not in (2, 3):
        raise ShapeMismatchError(f"plot_points draws [n, 2] or [n, 3] points, got {tuple(p.shape)}")
    cols = [p[:, i].tolist() for i in range(p.shape[1])]
    marker: dict[str, Any] = {"size": 4}
    if labels is not None:
        values = torch.as_tensor(labels).detach().cpu().reshape(-1).tolist()
        if len(values) != p.shape[0]:
            raise ShapeMismatchError(f"got {len(values)} labels for {p.shape[0]} points")
        marker.update(color=values, colorscale="HSV", showscale=True, colorbar={"title": "label"})
    if p.shape[1] == 2:
        trace: Any = go.Scatter(x=cols[0], y=cols[1], mode="markers", marker=marker, name="points")
    else:
        trace = go.Scatter3d(x=cols[0], y=cols[1], z=cols[2], mode="markers", marker=marker,
                             name="points")  # fmt: skip
    fig = go.Figure(trace)
    fig.update_layout(title=title or f"{p.shape[0]} points", showlegend=False)
    return fig
