"""The Fourier spectrum of a representation over a cyclic label: which frequencies carry it.

A model that represents a cyclic quantity (a residue mod p, a weekday, an orientation) as points
on circles writes, for each label y, about

    act(y) = centre + sum_f  a_f cos(2 pi f y / period) + b_f sin(2 pi f y / period)

with a few key frequencies f (Nanda et al. 2023: a one-layer transformer trained on modular
addition uses about five). `fourier_spectrum` fits that expansion by least squares (for labels
0 .. period - 1 that all occur equally often, it is the discrete Fourier transform of the label
means), and reports how much of the variance each frequency carries. `key_frequencies` picks the
fewest that carry a given fraction, and `manifold` turns them into a `CyclicManifold`: one circle
per key frequency, the planes spanned by (a_f, b_f).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from circuits.checks import check_int, check_number
from circuits.errors import ConfigError, InputError
from circuits.manifolds.cyclic import CyclicManifold
from circuits.manifolds.points import as_points
from circuits.probes.subspace import cyclic_angles, distinct_positions
from circuits.results import check_k

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["FourierSpectrum", "fourier_spectrum"]


@dataclass(frozen=True, eq=False)
class FourierSpectrum:
    """A representation's expansion over a cyclic label, frequency by frequency.

    frequencies: 1 .. F. power [F]: each frequency's share of the variance the expansion
    explains (summing to 1 when the labels are balanced). explained: the fraction of the
    activations' total variance the whole expansion explains (1 when the activation is a
    function of the label alone). centre [d]; cos, sin [F, d]: the coefficient vectors a_f, b_f.
    site, dim: where the activations came from (carried to `manifold`).
    """

    period: float
    frequencies: tuple[int, ...]
    power: Float[Tensor, " F"]
    explained: float
    centre: Float[Tensor, " d"]
    cos: Float[Tensor, "F d"]
    sin: Float[Tensor, "F d"]
    n: int
    site: str | None = None
    dim: int = -1

    def key_frequencies(
        self, fraction: float = 0.9, *, max_count: int | None = None
    ) -> tuple[int, ...]:
        """The fewest frequencies whose power adds up to `fraction` (largest first), at most
        `max_count` of them; sorted ascending.

            spectrum.key_frequencies(0.9)          # e.g. (4, 11, 14, 17, 25)

        Raises ConfigError for a fraction outside (0, 1] or a max_count below 1.
        """
        if not 0 < check_number(fraction, "fraction") <= 1:
            raise ConfigError(f"fraction must be in (0, 1], got {fraction!r}")
        check_int(max_count, "max_count", allow_none=True)
        order = torch.argsort(self.power, descending=True, stable=True)
        cumulative = torch.cumsum(self.power[order], 0)
        count = int((cumulative < fraction - 1e-9).sum()) + 1
        count = min(count, len(order), max_count or len(order))
        return tuple(sorted(self.frequencies[int(i)] for i in order[:count]))

    def manifold(self, frequencies: tuple[int, ...] | None = None) -> CyclicManifold:
        """The circles of `frequencies` (default: `key_frequencies()`) as a `CyclicManifold`.

        Raises ConfigError for a frequency that is not in the spectrum.
        """
        chosen = self.key_frequencies() if frequencies is None else tuple(frequencies)
        unknown = [f for f in chosen if f not in self.frequencies]
        if unknown or not chosen:
            raise ConfigError(
                f"frequencies {list(chosen)} must be among the spectrum's 1 .. "
                f"{max(self.frequencies)}; unknown: {unknown}"
            )
        idx = [self.frequencies.index(f) for f in chosen]
        axes = torch.stack([self.cos[idx], self.sin[idx]], 1)
        return CyclicManifold(period=self.period, frequencies=chosen, centre=self.centre,
                              axes=axes, dim=self.dim, site=self.site)  # fmt: skip

    def to_frame(self) -> pd.DataFrame:
        """One row per frequency: its power, the cumulative power in order of power, its rank."""
        power = self.power.double().numpy()
        order = np.argsort(-power, kind="stable")
        rank = np.empty(len(power), dtype=np.int64)
        rank[order] = np.arange(1, len(power) + 1)
        cumulative = np.empty(len(power))
        cumulative[order] = np.cumsum(power[order])
        norms = (self.cos.double().norm(dim=1) ** 2 + self.sin.double().norm(dim=1) ** 2).sqrt()
        return pd.DataFrame({"frequency": list(self.frequencies), "power": power,
                             "cumulative": cumulative, "rank": rank,
                             "amplitude": norms.numpy()})  # fmt: skip

    def top(self, k: int = 10) -> pd.DataFrame:
        """The k frequencies with the most power, largest first."""
        check_k(k)
        return self.to_frame().sort_values("rank").head(k).reset_index(drop=True)

    def plot(self, *, title: str | None = None, fraction: float = 0.9) -> go.Figure:
        """The spectrum as bars (power per frequency), the key frequencies for `fraction`
        highlighted."""
        import plotly.graph_objects as go

        key = set(self.key_frequencies(fraction))
        colours = ["#d62728" if f in key else "#9ecae1" for f in self.frequencies]
        fig = go.Figure(go.Bar(x=list(self.frequencies), y=self.power.tolist(),
                               marker_color=colours))  # fmt: skip
        where = f" at {self.site}" if self.site else ""
        fig.update_layout(
            title=title or f"Fourier spectrum over a label of period {self.period:g}{where} "
            f"(key: {sorted(key)}, explained {self.explained:.2f})",
            xaxis_title="frequency", yaxis_title="share of variance",
        )  # fmt: skip
        return fig

    def __repr__(self) -> str:
        return (
            f"FourierSpectrum(period={self.period:g}, F={len(self.frequencies)}, "
            f"key={self.key_frequencies()}, explained={self.explained:.3f})"
        )


def fourier_spectrum(
    acts: Float[Tensor, "n d"],
    labels: Any,
    *,
    period: float,
    max_frequency: int | None = None,
    site: str | None = None,
    dim: int = -1,
) -> FourierSpectrum:
    """Fit act = centre + sum_f a_f cos(2 pi f y / period) + b_f sin(...) over f = 1 .. F by
    least squares (float64) and measure each frequency's share of the variance.

    acts: [n, d] (one row per example; pick positions first). labels: [n] numbers on the
    circle (residues 0 .. period - 1, or angles in degrees with period 360). max_frequency: F,
    by default the most the distinct label values support, (distinct - 1) // 2. site, dim: where
    the activations live (the manifold's feature axis there), for interventions later.

        W_E = cc.zoo.hooked_state_dict(model)["embed.W_E"][:p]
        spectrum = cc.manifolds.fourier_spectrum(W_E, torch.arange(p), period=p)
        spectrum.key_frequencies(0.9), spectrum.plot()

    Raises:
        ConfigError: period is not a number > 0, or max_frequency is not an int in [1, F].
        InputError: the activations are not a finite [n, d] tensor, the labels are not one
            finite number per row, fewer than 3 distinct label values (no circle), or all the
            points are equal (no variance to explain).
        ShapeMismatchError: labels and activations disagree in n.
    """
    x = as_points(acts, "activations")
    theta = cyclic_angles(labels, period=period, n=x.shape[0])
    distinct = distinct_positions(theta)
    limit = (distinct - 1) // 2
    check_int(max_frequency, "max_frequency", allow_none=True)
    if max_frequency is not None and max_frequency > limit:
        raise ConfigError(
            f"max_frequency={max_frequency} but {distinct} distinct label values support "
            f"frequencies up to {limit}; lower it or label more values"
        )
    freqs = torch.arange(1, (max_frequency or limit) + 1, dtype=torch.float64)
    phase = theta[:, None] * freqs[None]  # [n, F]
    design = torch.cat([torch.ones_like(theta)[:, None], torch.cos(phase), torch.sin(phase)], 1)
    xd = x.double()
    total = float(((xd - xd.mean(0)) ** 2).sum(1).mean())
    if total <= 1e-20 * max(float((xd**2).sum(1).mean()), 1e-300):
        raise InputError(
            "the points are all equal (no variance over the labels), so there is no spectrum; "
            "pass activations that vary"
        )
    coef = torch.linalg.lstsq(design, xd).solution  # [1 + 2F, d]
    f_count = len(freqs)
    a, b = coef[1 : 1 + f_count], coef[1 + f_count :]
    fitted = design @ coef
    explained = float(((fitted - fitted.mean(0)) ** 2).sum(1).mean()) / total
    var = _component_variance(torch.cos(phase), torch.sin(phase), a, b)
    power = var / var.sum().clamp_min(1e-300)
    return FourierSpectrum(
        period=float(period), frequencies=tuple(int(f) for f in freqs), power=power.float(),
        explained=min(explained, 1.0), centre=coef[0].float(), cos=a.float(), sin=b.float(),
        n=x.shape[0], site=site, dim=dim,
    )  # fmt: skip


def _component_variance(cos: Tensor, sin: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Variance over the rows of a_f cos_f + b_f sin_f, for each frequency f ([F])."""
    cc_, ss, cs = (_cov(cos, cos), _cov(sin, sin), _cov(cos, sin))  # [F] each
    aa, bb, ab = (a * a).sum(1), (b * b).sum(1), (a * b).sum(1)
    return (aa * cc_ + bb * ss + 2 * ab * cs).clamp_min(0)


def _cov(u: Tensor, v: Tensor) -> Tensor:
    return (u * v).mean(0) - u.mean(0) * v.mean(0)
