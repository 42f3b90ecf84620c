"""The result protocol: what every analysis returns can be tabled, ranked and drawn.

Every result (`PatchingResult`, `AttributionResult`, `ProbeResult`) has

    to_frame()       one row per measured thing (a unit, an edge, a class), as pandas
    top(k)           the k rows that matter most (largest |effect|, |score|, |weight|)
    plot()           a plotly figure

and a result that describes a graph also has `graph_frames()` -> (nodes, edges) tables, which
`cc.build_graph` reads (the `GraphSource` protocol).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import pandas as pd

from circuits.errors import ConfigError


@runtime_checkable
class Result(Protocol):
    """What every result has (module docstring)."""

    def to_frame(self) -> pd.DataFrame: ...
    def top(self, k: int = 10) -> pd.DataFrame: ...
    def plot(self) -> Any: ...


@runtime_checkable
class GraphResult(Result, Protocol):
    """A result that describes a graph: its node and edge tables."""

    def graph_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]: ...


def check_k(k: Any) -> int:
    """`k` for `top(k)`: a positive int, else ConfigError."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive int, got {k!r}")
    return k
