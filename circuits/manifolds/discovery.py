"""Finding multi-dimensional features in a dictionary, as Engels et al. (2024) do.

A dictionary (an SAE) trained on activations that hold a circle tiles it with several latents
whose decoder directions lie in the circle's plane, neighbours on the circle close in angle. So:

1. cluster the decoder directions of the latents that fire (`cluster_latents`): "graph" links
   each latent to its two nearest neighbours when their cosine similarity exceeds `threshold`
   and takes connected components (their Mistral runs); "spectral" clusters the affinity
   1 - arccos(cos) / pi into `n_clusters` groups (their GPT-2 runs), k-means on the normalised
   affinity's top eigenvectors. "graph" is the default: a circle's latents form a ring (each
   close to its neighbours only), which nearest-neighbour links keep whole and a normalised cut
   splits into arcs (on the planted circle of `planted_circle`, spectral clustering never kept
   the ring together, at 5 to 40 clusters);
2. for each cluster, reconstruct the activations from its latents alone, on the rows where any
   of them fires and the reconstruction is not small (at least `min_norm` times its 95th
   percentile norm: their radius cut, which drops rows where a latent only grazes), and take
   the top principal components (the cluster's plane);
3. rank the clusters by irreducibility (`irreducibility` on the points in that plane): first
   those that are irreducible and planar (at least `min_explained` of the variance in the
   plane), then by separability, largest first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch
from torch import Tensor

from circuits.checks import check_int, check_number
from circuits.dictionaries import Dictionary
from circuits.errors import ConfigError, InputError
from circuits.manifolds.geometry import plot_points
from circuits.manifolds.irreducible import Irreducibility, irreducibility
from circuits.manifolds.points import as_points
from circuits.options import check_choice
from circuits.probes import Subspace
from circuits.results import check_k

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["ClusterMethod", "ManifoldDiscovery", "cluster_latents", "discover_manifolds"]

ClusterMethod = Literal["spectral", "graph"]
"""How decoder directions are clustered: "spectral" (into n_clusters groups) or "graph"
(connected components of nearest neighbours above a cosine threshold)."""


@dataclass(frozen=True, eq=False)
class ManifoldDiscovery:
    """Clusters of a dictionary's latents ranked by how irreducible their points are.

    clusters: latent indices per cluster, in rank order; tests: each cluster's
    `Irreducibility`; coordinates: each cluster's points on its top (up to 3) principal
    components, one per row of `rows` (indices into the activations); planes: its top-2
    principal plane as a `Subspace`; explained: the share of the reconstruction's variance in
    that plane, `planar` when at least min_explained.
    """

    clusters: tuple[tuple[int, ...], ...]
    tests: tuple[Irreducibility, ...]
    coordinates: tuple[Tensor, ...]
    planes: tuple[Subspace, ...]
    explained: tuple[float, ...]
    rows: tuple[Tensor, ...]
    min_explained: float

    def to_frame(self) -> pd.DataFrame:
        """One row per cluster in rank order: size, latents, the rows it was measured on, the
        indices and verdict, and the share of variance in its plane."""
        return pd.DataFrame([{
            "rank": i, "size": len(c), "latents": list(c), "rows": len(r),
            "separability": t.separability, "mixture": t.mixture, "irreducible": t.irreducible,
            "plane_explained": e, "planar": e >= self.min_explained,
        } for i, (c, t, r, e) in enumerate(zip(self.clusters, self.tests, self.rows,
                                               self.explained, strict=True))])  # fmt: skip

    def top(self, k: int = 10) -> pd.DataFrame:
        """The k most irreducible clusters."""
        check_k(k)
        return self.to_frame().head(k)

    def plot(self, rank: int = 0, *, dims: int = 2, labels: Any = None) -> go.Figure:
        """Cluster `rank`'s points on its top `dims` (2 or 3) principal components, coloured by
        `labels` (one per row of the activations given to `discover_manifolds`) if given."""
        coords = self.coordinates[self._index(rank)]
        if dims not in (2, 3) or dims > coords.shape[1]:
            raise ConfigError(f"dims must be 2 or 3 (at most {coords.shape[1]}), got {dims!r}")
        test = self.tests[rank]
        if labels is not None:
            labels = torch.as_tensor(labels)[self.rows[rank]]
        return plot_points(coords[:, :dims], labels, title=(
            f"cluster {rank} ({len(self.clusters[rank])} latents): separability "
            f"{test.separability:.2f} bits, mixture {test.mixture:.2f}"))  # fmt: skip

    def _index(self, rank: int) -> int:
        if (
            isinstance(rank, bool)
            or not isinstance(rank, int)
            or not 0 <= rank < len(self.clusters)
        ):
            raise ConfigError(f"rank must be in [0, {len(self.clusters)}), got {rank!r}")
        return rank

    def __repr__(self) -> str:
        n = sum(t.irreducible for t in self.tests)
        return f"ManifoldDiscovery({len(self.clusters)} clusters, {n} irreducible)"


def cluster_latents(
    decoder: Tensor | Dictionary,
    *,
    method: ClusterMethod = "graph",
    n_clusters: int | None = None,
    threshold: float = 0.5,
    seed: int = 0,
) -> list[tuple[int, ...]]:
    """Clusters of decoder directions by cosine similarity (module docstring), largest first.

    decoder: [n, d] rows (or a Dictionary: its W_dec). n_clusters: for "spectral" (default
    about n / 4). threshold: the cosine similarity a "graph" edge needs. seed: k-means's
    initialisation.

        clusters = cc.manifolds.cluster_latents(sae, method="graph")

    Raises:
        ConfigError: an unknown method, n_clusters outside [1, n], or threshold outside [-1, 1].
        InputError: the decoder is not a finite [n, d] tensor, or has a zero row.
    """
    check_choice(method, ClusterMethod, "method")
    w = as_points(decoder.W_dec if isinstance(decoder, Dictionary) else decoder, "decoder")
    norms = w.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise InputError("decoder rows must be non-zero to compare their directions")
    cos = ((w / norms) @ (w / norms).T).double().clamp(-1, 1)
    n = cos.shape[0]
    if method == "graph":
        check_number(threshold, "threshold", low=-1, high=1)
        labels = _components(cos, threshold)
    else:
        k = n_clusters if n_clusters is not None else max(1, round(n / 4))
        check_int(k, "n_clusters")
        if k > n:
            raise ConfigError(f"n_clusters={k} exceeds the {n} directions; pass at most {n}")
        labels = _spectral(1 - torch.arccos(cos) / math.pi, k, seed)
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(i)
    return sorted((tuple(g) for g in groups.values()), key=lambda g: (-len(g), g))


def discover_manifolds(
    dictionary: Dictionary,
    acts: Tensor,
    *,
    method: ClusterMethod = "graph",
    n_clusters: int | None = None,
    threshold: float = 0.5,
    min_size: int = 2,
    max_size: int = 64,
    min_explained: float = 0.8,
    min_norm: float = 0.25,
    seed: int = 0,
) -> ManifoldDiscovery:
    """Cluster the latents that fire on `acts` [N, d_in], project each cluster's
    reconstructions onto its principal plane and rank the clusters by irreducibility.

    method, n_clusters, threshold, seed: the clustering (`cluster_latents`). min_size,
    max_size: the cluster sizes looked at (a single latent is 1-d by construction).
    min_explained: the share of a cluster's variance its plane must hold to rank as a 2-d
    feature. min_norm: rows whose reconstruction is below this fraction of the 95th percentile
    norm are dropped (module docstring).

        found = cc.manifolds.discover_manifolds(sae, acts)
        found.top(5); found.plot(0); found.planes[0].principal_angles(true_plane)

    Raises:
        ConfigError: as `cluster_latents`, min_size < 2, max_size < min_size, or min_explained
            or min_norm outside [0, 1].
        InputError: acts are not a finite [N, d_in] tensor, or no latent fires on them.
    """
    check_int(min_size, "min_size", low=2)
    check_int(max_size, "max_size", low=min_size)
    check_number(min_explained, "min_explained", low=0, high=1)
    check_number(min_norm, "min_norm", low=0, high=1)
    x = as_points(acts, "activations", width=dictionary.config.d_in)
    with torch.no_grad():
        z = dictionary.encode(x)
    alive = torch.nonzero((z > 0).any(0))[:, 0]
    if len(alive) < 2:
        raise InputError(f"{len(alive)} latent(s) fire on these activations; pass more rows")
    local = cluster_latents(dictionary.W_dec[alive], method=method, n_clusters=n_clusters,
                            threshold=threshold, seed=seed)  # fmt: skip
    found = []
    for members in local:
        ids = alive[list(members)]
        if not min_size <= len(ids) <= max_size:
            continue
        zc = z[:, ids]
        fires = (zc > 0).any(1)
        if int(fires.sum()) < 3:
            continue
        recon = zc[fires] @ dictionary.W_dec[ids].to(zc)
        norms = recon.norm(dim=1)
        kept = norms >= min_norm * torch.quantile(norms, 0.95)
        recon, rows = recon[kept], torch.nonzero(fires)[:, 0][kept]
        if len(recon) < 3:
            continue
        centred = recon.double() - recon.double().mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        if len(s) < 2 or float(s[1]) <= 1e-9 * float(s[0]):
            continue
        coords = (centred @ vh[:3].T).float()
        test = irreducibility(coords[:, :2])
        share = float((s[:2] ** 2).sum() / (s**2).sum())
        plane = Subspace(vh[:2].float(), site=dictionary.config.site)
        found.append((tuple(int(i) for i in ids), test, coords, plane, share, rows))
    found.sort(key=lambda f: (not (f[1].irreducible and f[4] >= min_explained), -f[1].separability))
    return ManifoldDiscovery(
        clusters=tuple(f[0] for f in found), tests=tuple(f[1] for f in found),
        coordinates=tuple(f[2] for f in found), planes=tuple(f[3] for f in found),
        explained=tuple(f[4] for f in found), rows=tuple(f[5] for f in found),
        min_explained=min_explained,
    )  # fmt: skip


def _components(cos: Tensor, threshold: float) -> Tensor:
    """Connected components of the graph linking each row to its 2 nearest neighbours whose
    similarity exceeds `threshold` (Engels et al.'s graph clustering)."""
    n = cos.shape[0]
    sims = cos.clone()
    sims.fill_diagonal_(-math.inf)
    top = sims.topk(min(2, n - 1), dim=1) if n > 1 else None
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if top is not None:
        for i, (vals, idx) in enumerate(
            zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ):
            for v, j in zip(vals, idx, strict=True):
                if v > threshold:
                    parent[find(i)] = find(j)
    return torch.tensor([find(i) for i in range(n)])


def _spectral(affinity: Tensor, k: int, seed: int) -> Tensor:
    """Spectral clustering: k-means (k-means++, 10 starts) on the row-normalised top-k
    eigenvectors of D^-1/2 A D^-1/2."""
    deg = affinity.sum(1).clamp_min(1e-12).rsqrt()
    _, vecs = torch.linalg.eigh(deg[:, None] * affinity * deg[None])
    emb = vecs[:, -k:]
    emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    gen = torch.Generator().manual_seed(seed)
    best, best_cost = torch.zeros(len(emb), dtype=torch.long), math.inf
    for _ in range(10):
        labels, cost = _kmeans(emb, k, gen)
        if cost < best_cost - 1e-12:
            best, best_cost = labels, cost
    return best


def _kmeans(x: Tensor, k: int, gen: torch.Generator, iters: int = 100) -> tuple[Tensor, float]:
    centres = x[torch.randint(len(x), (1,), generator=gen)]
    for _ in range(1, k):  # k-means++: the next centre drawn by squared distance
        d2 = torch.cdist(x, centres).min(1).values ** 2
        pick = torch.multinomial(d2 + 1e-12, 1, generator=gen) if float(d2.sum()) > 0 else (
            torch.randint(len(x), (1,), generator=gen))  # fmt: skip
        centres = torch.cat([centres, x[pick]])
    labels = torch.zeros(len(x), dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(x, centres).argmin(1)
        if _ > 0 and bool((new == labels).all()):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                centres[j] = members.mean(0)
    cost = float((torch.cdist(x, centres).min(1).values ** 2).sum())
    return labels, cost
