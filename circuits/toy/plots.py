"""Plotly figures of toy-model geometry, in the style of Elhage et al. (2022).

Each function takes the weight W ([m, n] or [instances, m, n]) and, where the figure needs it,
per-instance sparsity or importance, and returns a `plotly.graph_objects.Figure`; nothing is
shown or written, so the caller decides (fig.show(), fig.write_html(...)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import Tensor

from circuits.errors import ConfigError, InputError
from circuits.toy.geometry import (
    DEDICATED,
    NOT_REPRESENTED,
    SUPERPOSITION,
    check_weights,
    dimensions_per_feature,
    feature_dimensionality,
    feature_norms,
    interference,
    regimes,
)

__all__ = [
    "FRACTIONS",
    "plot_dimensionality",
    "plot_feature_directions",
    "plot_interference",
    "plot_phase_diagram",
]

FRACTIONS: tuple[tuple[str, float], ...] = (
    ("1", 1.0),
    ("3/4", 3 / 4),
    ("2/3", 2 / 3),
    ("1/2", 1 / 2),
    ("2/5", 2 / 5),
    ("3/8", 3 / 8),
    ("1/3", 1 / 3),
)
"""The dimensionalities features stick at: dedicated dimension, tetrahedron, triangle,
antipodal pair, pentagon, square antiprism, and (the limit of the family) 1/3."""


def _instances(W: Tensor) -> Tensor:
    """W as [instances, m, n], whether one instance or a sweep was passed."""
    return check_weights(W).cpu().reshape(-1, *W.shape[-2:])


def _per_instance(name: str, values: Sequence[float] | Tensor, k: int, hint: str) -> np.ndarray:
    """One float per instance as an array, or an InputError that says what went wrong."""
    array = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, float)
    if array.shape != (k,):
        raise InputError(
            f"{name}: expected one value per instance ({k}), got shape {list(array.shape)}; "
            f"pass e.g. {hint} for the model whose W you plot."
        )
    return array


def _grid(k: int, titles: Sequence[str] | None, cols: int) -> tuple[go.Figure, int]:
    """A subplot grid with one panel per instance, and its number of columns."""
    if cols < 1:
        raise ConfigError(
            f"cols: expected a positive number of columns, got {cols}; pass cols >= 1."
        )
    cols = min(cols, k)
    if titles is not None and len(titles) != k:
        raise ConfigError(
            f"titles: expected one title per instance ({k}), got {len(titles)}; pass {k} titles."
        )
    names = list(titles) if titles is not None else [f"instance {i}" for i in range(k)]
    return make_subplots(rows=math.ceil(k / cols), cols=cols, subplot_titles=names), cols


def plot_interference(
    W: Tensor, *, titles: Sequence[str] | None = None, cols: int = 5
) -> go.Figure:
    """Heatmaps of W^T W, one panel (one trace) per instance, on a shared red-blue scale.

    For example:

        cc.toy.plot_interference(model.W, titles=[f"S={s}" for s in (0.0, 0.9)]).show()

    Raises:
        InputError: `W` is not an `[m, n]` or `[instances, m, n]` tensor.
        ConfigError: `cols` is below 1, or `titles` does not have one title per instance.
    """
    matrices = interference(_instances(W)).numpy()
    fig, cols = _grid(len(matrices), titles, cols)
    for i, matrix in enumerate(matrices):
        fig.add_trace(go.Heatmap(z=matrix, coloraxis="coloraxis"), i // cols + 1, i % cols + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(coloraxis={"colorscale": "RdBu", "cmin": -1, "cmax": 1}, title="W^T W")
    return fig


def plot_feature_directions(
    W: Tensor, *, titles: Sequence[str] | None = None, cols: int = 5
) -> go.Figure:
    """Each column W_i as an arrow from the origin, one panel (one trace) per instance; m = 2.

    For example:

        cc.toy.plot_feature_directions(model.W).show()      # the pentagon, for n=5, m=2

    Raises:
        InputError: `W` is not an `[m, n]` or `[instances, m, n]` tensor.
        InputError: the model does not have m = 2 hidden dimensions.
        ConfigError: `cols` is below 1, or `titles` does not have one title per instance.
    """
    weights = _instances(W).numpy()
    if weights.shape[1] != 2:
        raise InputError(
            f"W: expected m = 2 hidden dimensions to draw in the plane, got m = "
            f"{weights.shape[1]}; use plot_interference for other sizes."
        )
    fig, cols = _grid(len(weights), titles, cols)
    for i, w in enumerate(weights):
        xs = [v for x in w[0] for v in (0.0, x, None)]
        ys = [v for y in w[1] for v in (0.0, y, None)]
        labels = [v for f in range(w.shape[1]) for v in ("", f"feature {f}", "")]
        trace = go.Scatter(x=xs, y=ys, mode="lines+markers", text=labels, showlegend=False)
        fig.add_trace(trace, i // cols + 1, i % cols + 1)
    fig.update_xaxes(range=[-1.5, 1.5])
    fig.update_yaxes(range=[-1.5, 1.5], scaleanchor="x", scaleratio=1)
    return fig


def plot_dimensionality(
    W: Tensor, *, sparsity: Sequence[float] | Tensor, min_norm: float = 0.5
) -> go.Figure:
    """Per-feature dimensionality D_i against 1/(1-S), with the fractions features stick at.

    Two traces: the D_i of every represented feature (norm > min_norm), and the dimensions per
    feature m / ||W||_F^2 of each instance as a line; FRACTIONS are drawn as horizontal lines.

    For example:

        cc.toy.plot_dimensionality(model.W, sparsity=model.sparsity).show()

    Raises:
        InputError: `W` is not an `[m, n]` or `[instances, m, n]` tensor.
        InputError: `sparsity` does not have one value per instance.
    """
    weights = _instances(W)
    x = 1.0 / (1.0 - _per_instance("sparsity", sparsity, len(weights), "model.sparsity"))
    dims = feature_dimensionality(weights).numpy()
    represented = feature_norms(weights).numpy() > min_norm
    instances, features = np.nonzero(represented)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=x[instances], y=dims[instances, features], mode="markers", name="D_i", text=features
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x, y=dimensions_per_feature(weights).numpy(), mode="lines", name="m / ||W||_F^2"
        )
    )
    for label, value in FRACTIONS:
        fig.add_hline(y=value, line_dash="dot", line_width=1, annotation_text=label)
    fig.update_xaxes(type="log", title="1 / (1 - S)")
    fig.update_yaxes(title="dimensions per feature")
    return fig


def plot_phase_diagram(
    W: Tensor,
    *,
    sparsity: Sequence[float] | Tensor,
    importance: Sequence[float] | Tensor,
    feature: int = -1,
) -> go.Figure:
    """Which regime stores `feature`, per (relative importance, feature density 1 - S) cell.

    For the paper's n=2, m=1 sweep (see `phase_config`), `importance` is the relative importance
    of the extra feature in each instance. Three traces, one per regime (possibly empty):
    NOT_REPRESENTED, DEDICATED and SUPERPOSITION.

    For example:

        cc.toy.plot_phase_diagram(model.W, sparsity=model.sparsity,
                                  importance=model.importance[:, -1]).show()

    Raises:
        InputError: `W` is not an `[m, n]` or `[instances, m, n]` tensor.
        InputError: `sparsity` or `importance` does not have one value per instance, or `feature`
            is not an index of W's features.
    """
    weights = _instances(W)
    x = _per_instance("importance", importance, len(weights), "model.importance[:, -1]")
    y = 1.0 - _per_instance("sparsity", sparsity, len(weights), "model.sparsity")
    labels = np.array(regimes(weights, feature=feature))
    fig = go.Figure()
    for regime, colour in ((NOT_REPRESENTED, "blue"), (DEDICATED, "grey"), (SUPERPOSITION, "red")):
        chosen = labels == regime
        marker = {"color": colour, "symbol": "square", "size": 12}
        fig.add_trace(
            go.Scatter(x=x[chosen], y=y[chosen], mode="markers", name=regime, marker=marker)
        )
    fig.update_xaxes(type="log", title="relative importance")
    fig.update_yaxes(type="log", title="feature density 1 - S")
    return fig
