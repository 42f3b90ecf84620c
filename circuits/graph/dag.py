"""Array algorithms on a directed acyclic graph given as edge arrays (no networkx objects).

Nodes are integers ``0..n-1``; edge ``e`` runs from ``src[e]`` to ``dst[e]``. Pruning a million
candidate edges happens here, on numpy arrays, before the survivors become a `networkx.DiGraph`.

Circuit graphs are DAGs (layer order), so the influence of the circuit-tracing paper, which is
written with a matrix inverse, is computed exactly by one pass over a topological order: with
``A`` the row-normalised absolute adjacency (``A[t, s] = |w_st| / sum_s' |w_s't|``, each
target's incoming edges summing to 1) and ``o`` the output weights, the indirect influence is
``B = (I - A)^-1 - I = A + A^2 + ...`` and a node's influence on the outputs is ``(o @ B)[s]``.
Expanding one step, ``x[s] = sum_t A[t, s] * (o[t] + x[t])`` over the edges ``s -> t``, so
processing targets from the last topological level to the first gives every ``x`` exactly,
in O(edges). Every step is vectorised per level.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


def levels(src: IntArray, dst: IntArray, n: int) -> IntArray:
    """Topological level of each node (longest path from a node without predecessors).

    Every edge goes from a lower level to a higher one. Nodes on a cycle, or downstream of one,
    get level -1 (Kahn's algorithm never frees them); callers treat that as "not a DAG".
    """
    indeg = np.bincount(dst, minlength=n)
    counts = np.bincount(src, minlength=n)
    starts = np.concatenate(([0], np.cumsum(counts)))
    dst_by_src = dst[np.argsort(src, kind="stable")]
    level = np.full(n, -1, dtype=np.int64)
    frontier = np.flatnonzero(indeg == 0)
    k = 0
    while frontier.size:
        level[frontier] = k
        c = counts[frontier]
        total = int(c.sum())
        if total == 0:
            break
        # indices of every out-edge of the frontier: the ranges starts[f] .. starts[f] + c[f]
        first = np.repeat(starts[frontier] - (np.cumsum(c) - c), c)
        targets, hits = np.unique(dst_by_src[first + np.arange(total)], return_counts=True)
        indeg[targets] -= hits
        frontier = targets[indeg[targets] == 0]
        k += 1
    return level


def _groups(level_of_dst: IntArray, *, reverse: bool) -> Iterator[IntArray]:
    """Edge indices grouped by the level of their target, in level order (or reversed)."""
    if level_of_dst.size == 0:
        return
    order = np.argsort(level_of_dst, kind="stable")
    cuts = np.flatnonzero(np.diff(level_of_dst[order])) + 1
    parts = np.split(order, cuts)
    yield from reversed(parts) if reverse else parts


def normalised(dst: IntArray, weight: FloatArray, n: int) -> FloatArray:
    """``A`` on the edges: |w| divided by the sum of |w| over the target's incoming edges."""
    a = np.abs(weight)
    total = np.bincount(dst, weights=a, minlength=n)
    return a / np.maximum(total[dst], 1e-10)


def influence(
    src: IntArray, dst: IntArray, a: FloatArray, level: IntArray, out_w: FloatArray
) -> FloatArray:
    """Each node's influence on the outputs, ``o @ ((I - A)^-1 - I)``, exact on a DAG.

    `a` holds A's entries on the edges (see `normalised`), `out_w` the output weights ``o``.
    """
    x = np.zeros(out_w.shape[0], dtype=np.float64)
    for idx in _groups(level[dst], reverse=True):
        t = dst[idx]
        # targets at this level are final: all their out-edges reach higher levels, done already
        np.add.at(x, src[idx], a[idx] * (out_w[t] + x[t]))
    return x


def edge_scores(dst: IntArray, a: FloatArray, x: FloatArray, out_w: FloatArray) -> FloatArray:
    """An edge's share of the influence: ``A[t, s] * (o[t] + x[t])`` (circuit-tracer's score)."""
    return a * (out_w[dst] + x[dst])


def on_paths(
    src: IntArray, dst: IntArray, level: IntArray, sources: BoolArray, outputs: BoolArray
) -> BoolArray:
    """Nodes on some path from a source node to an output node (both ends included)."""
    fwd = sources.copy()
    back = outputs.copy()
    lv = level[dst]
    for idx in _groups(lv, reverse=False):  # sources of these edges are final
        fwd[dst[idx][fwd[src[idx]]]] = True
    for idx in _groups(lv, reverse=True):  # targets of these edges are final
        back[src[idx][back[dst[idx]]]] = True
    keep: BoolArray = fwd & back
    return keep


def share_cutoff(scores: FloatArray, share: float) -> float:
    """The score above which items carry `share` of the total (circuit-tracer's find_threshold).

    Items are sorted by score, largest first; the cut-off is the score of the first item at
    which the running total reaches `share` of the whole, so keeping ``scores >= cutoff`` keeps
    the smallest set of top items carrying that share. Zero scores are never needed.
    """
    ordered = np.sort(scores)[::-1]
    total = ordered.sum()
    if ordered.size == 0 or total <= 0:
        return float("inf")
    cumulative = np.cumsum(ordered) / total
    i = int(np.searchsorted(cumulative, share))
    nonzero = int((ordered > 0).sum())
    return float(ordered[min(i, max(nonzero - 1, 0))])
