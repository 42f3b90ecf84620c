"""What a sweep gathers: each batch's result with the items it covers, and what failed.

`SweepResult.to_frame()` concatenates the results' frames (DataFrames, anything with
`.to_frame()`, mappings, numbers), each row tagged with the first item of its batch and the
number of items; `graph()` merges graphs (or results `cc.build_graph` takes) by summing edge
weights, or averaging them weighted by items.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import networkx as nx
import pandas as pd
import torch

from circuits.errors import CircuitsError, InputError
from circuits.graph import build_graph
from circuits.options import check_choice

Reduce = Literal["sum", "mean"]
"""How `SweepResult.graph` merges edge weights: their sum, or their mean weighted by items."""


@dataclass(frozen=True)
class Part:
    """The result of one call: items `start` to `stop` (excluded), and what the call returned."""

    start: int
    stop: int
    value: Any


@dataclass(frozen=True)
class Failure:
    """A call that raised: its items, the error (type and message) and the worker's traceback."""

    start: int
    stop: int
    error: str
    traceback: str = ""

    def __str__(self) -> str:
        one = self.stop - self.start == 1
        items = f"item {self.start}" if one else f"items {self.start}..{self.stop - 1}"
        return f"{items}: {self.error}"


@dataclass(frozen=True)
class SweepResult:
    """Every call's result in item order (`parts`), the calls that raised (`failures`), and the
    number of items swept."""

    parts: tuple[Part, ...]
    failures: tuple[Failure, ...] = ()
    items: int = 0

    @property
    def values(self) -> list[Any]:
        """What each call returned, in item order."""
        return [p.value for p in self.parts]

    def to_frame(self) -> pd.DataFrame:
        """Every result's frame, concatenated: columns `item` (the first item of its call) and
        `n_items` (how many items it covers), then the result's own columns."""
        frames = []
        for part in self.parts:
            frame = _frame(part.value).copy()
            frame.insert(0, "n_items", part.stop - part.start)
            frame.insert(0, "item", part.start)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def graph(self, *, reduce: Reduce = "sum") -> nx.DiGraph:
        """The results' graphs merged into one: every node and edge of any of them, each edge's
        weight summed ("sum", an edge missing from a graph counting 0) or averaged weighted by
        the items each graph covers ("mean": the whole batch's score for a mean metric).

        Node and edge attributes other than the weight, and the provenance, come from the
        first graph that has them; `g.graph["sweep_items"]` counts the items merged.
        """
        check_choice(reduce, Reduce, "reduce")
        merged = nx.DiGraph()
        total = sum(p.stop - p.start for p in self.parts)
        for part in self.parts:
            g = part.value if isinstance(part.value, nx.DiGraph) else build_graph(part.value)
            scale = (part.stop - part.start) / total if reduce == "mean" else 1.0
            for key, attrs in g.nodes(data=True):
                if key not in merged:
                    merged.add_node(key, **attrs)
            for a, b, attrs in g.edges(data=True):
                if not merged.has_edge(a, b):
                    merged.add_edge(a, b, **{**attrs, "weight": 0.0})
                merged.edges[a, b]["weight"] += scale * float(attrs.get("weight", 0.0))
            if not merged.graph:
                merged.graph.update(g.graph)
        merged.graph.update(sweep_items=total, sweep_parts=len(self.parts), sweep_reduce=reduce)
        return merged


class SweepError(CircuitsError):
    """Some items of a sweep raised. `failures` names each (items, error, traceback); `result`
    holds every other item's result, none lost (None for a capture: its shards are removed)."""

    def __init__(self, failures: tuple[Failure, ...], result: SweepResult | None = None) -> None:
        self.failures, self.result = failures, result
        failed = sum(f.stop - f.start for f in failures)
        kept = "" if result is None else "; the other items' results are in err.result"
        super().__init__(
            f"{failed} item(s) of the sweep raised, the first at {failures[0]}{kept}. Each "
            "failure's traceback is in err.failures; fix the item or the function and sweep "
            "those items again"
        )


def _frame(value: Any) -> pd.DataFrame:
    """A call's result as a DataFrame."""
    if isinstance(value, pd.DataFrame):
        return value
    if hasattr(value, "to_frame"):
        return pd.DataFrame(value.to_frame())
    if isinstance(value, Mapping):
        return pd.DataFrame([dict(value)])
    if isinstance(value, numbers.Number | torch.Tensor) and torch.as_tensor(value).numel() == 1:
        return pd.DataFrame({"value": [float(value)]})  # type: ignore[arg-type]
    raise InputError(
        f"to_frame() needs each call to return a DataFrame, a result with .to_frame(), a "
        f"mapping or a number; one returned {type(value).__name__} (read .values instead)"
    )
