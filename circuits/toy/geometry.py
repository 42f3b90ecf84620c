"""Feature geometry of toy-model weights: how many features a model packs, and in what shape.

Every measure takes the weight W of one instance, [m, n], or of a whole sweep, [instances, m, n];
column W_i is the direction (and, through its norm, the strength) with which feature i is stored.
The measures follow Elhage et al. (2022): norms say which features are represented, W^T W shows
their interference, and the per-feature dimensionality D_i says what fraction of a dimension
each feature gets: 1 for a dedicated dimension, 1/2 for an antipodal pair, 2/5 for a pentagon.
"""

from __future__ import annotations

from torch import Tensor

from circuits.errors import InputError

__all__ = [
    "DEDICATED",
    "NOT_REPRESENTED",
    "SUPERPOSITION",
    "dimensions_per_feature",
    "feature_dimensionality",
    "feature_groups",
    "feature_norms",
    "interference",
    "regimes",
]

NOT_REPRESENTED = "not represented"
"""The `regimes` label of a feature the model drops (its norm is at most `min_norm`)."""
DEDICATED = "dedicated dimension"
"""The `regimes` label of a feature with a hidden dimension (a subspace) of its own."""
SUPERPOSITION = "superposition"
"""The `regimes` label of a feature that shares its subspace with other features."""

_EPS = 1e-12


def check_weights(W: Tensor, ndims: tuple[int, ...] = (2, 3)) -> Tensor:
    """W detached as float, after checking it is [m, n] or [instances, m, n] (as `ndims` allows)."""
    if W.ndim not in ndims:
        shapes = " or ".join({2: "[m, n]", 3: "[instances, m, n]"}[d] for d in ndims)
        raise InputError(
            f"W: expected a tensor of shape {shapes}, got shape {list(W.shape)}; pass model.W "
            "or model.W[i] for a single instance."
        )
    return W.detach().float()


def feature_norms(W: Tensor) -> Tensor:
    """||W_i|| for every feature, [..., n]; a feature is 'represented' when this is near 1.

    For example:

        model = cc.toy.train(cc.toy.ToyModel(cc.toy.ToyConfig(n_features=5, n_hidden=2)))
        cc.toy.feature_norms(model.W)                       # [instances, 5]

    Raises:
        InputError: `W` is not an `[m, n]` or `[instances, m, n]` tensor.
    """
    return check_weights(W).norm(dim=-2)


def interference(W: Tensor) -> Tensor:
    """W^T W, [..., n, n]: the diagonal is ||W_i||^2, the rest is how much features overlap.

    For example:

        cc.toy.interference(model.W)[0]                     # [n, n] for the first instance

    Raises:
        InputError: `W` is not an `[m, n]` or `[instances, m, n]` tensor.
    """
    W = check_weights(W)
    return W.transpose(-1, -2) @ W


def feature_dimensionality(W: Tensor) -> Tensor:
    """D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 for every feature, [..., n].

    The share of an embedding dimension feature i gets: 1 when it is orthogonal to all others,
    1/k when it shares a dimension with k-1 others, and 0 when it is not represented at all.

    For example:

        cc.toy.feature_dimensionality(model.W)              # [instances, n]; 1/2 for a pair

    Raises:
        InputError: `W` is not an `[m, n]` or `[instances, m, n]` tensor.
    """
    W = check_weights(W)
    norms = W.norm(dim=-2, keepdim=True)
    unit = W / norms.clamp_min(_EPS)
    overlap = ((unit.transpose(-1, -2) @ W) ** 2).sum(-1)
    return norms.squeeze(-2) ** 2 / overlap.clamp_min(_EPS)


def dimensions_per_feature(W: Tensor) -> Tensor:
    """m / ||W||_F^2 per instance (a scalar for one instance): hidden dimensions per feature.

    It is 1 when m features get a dimension each and falls below 1 as features are packed in
    superposition, e.g. to 1/2 when every dimension holds an antipodal pair.

    For example:

        cc.toy.dimensions_per_feature(model.W)              # [instances]; 2/5 for a pentagon

    Raises:
        InputError: `W` is not an `[m, n]` or `[instances, m, n]` tensor.
    """
    W = check_weights(W)
    return W.shape[-2] / (W**2).sum((-2, -1)).clamp_min(_EPS)


def feature_groups(W: Tensor, *, threshold: float = 0.2, min_norm: float = 0.5) -> list[list[int]]:
    """Group the represented features of one instance ([m, n]) that share a subspace.

    Features with ||W_i|| > min_norm are linked when |W_i_hat . W_j_hat| > threshold; the groups
    are the connected components, so an antipodal pair, a triangle or a pentagon each form one
    group and a feature with a dedicated dimension forms a group of its own. Unrepresented
    features belong to no group. Groups are sorted, and so are the features within them.

    For example:

        cc.toy.feature_groups(model.W[0])                   # e.g. [[0, 1, 2, 3, 4]]: a pentagon

    Raises:
        InputError: `W` is not an `[m, n]` tensor (one instance).
    """
    W = check_weights(W, (2,))
    norms = W.norm(dim=0)
    unit = W / norms.clamp_min(_EPS)
    linked = ((unit.T @ unit).abs() > threshold).tolist()
    unseen = {i for i, norm in enumerate(norms.tolist()) if norm > min_norm}
    groups = []
    while unseen:
        stack, group = [min(unseen)], set()
        while stack:
            i = stack.pop()
            if i in unseen:
                unseen.discard(i)
                group.add(i)
                stack.extend(j for j in unseen if linked[i][j])
        groups.append(sorted(group))
    return groups


def regimes(
    W: Tensor, *, feature: int = -1, threshold: float = 0.2, min_norm: float = 0.5
) -> list[str]:
    """Classify how each instance stores `feature`: the three phases of the paper's n=2, m=1 sweep.

    Returns one label per instance (a list of one for [m, n]): NOT_REPRESENTED when its norm is
    at most `min_norm`, SUPERPOSITION when it shares a group (see `feature_groups`) with other
    features, and DEDICATED when it has a subspace of its own.

    For example:

        model = cc.toy.train(cc.toy.ToyModel(cc.toy.phase_config(sparsities=[0.0, 0.9],
                                                                 importances=[0.1, 1.0])))
        cc.toy.regimes(model.W)                             # one label per (sparsity, importance)

    Raises:
        InputError: `W` is not an `[m, n]` or `[instances, m, n]` tensor.
        InputError: `feature` is not an index of W's features.
    """
    W = check_weights(W)
    n = W.shape[-1]
    if not -n <= feature < n:
        raise InputError(
            f"feature: expected an index in [-{n}, {n}), got {feature}; W has {n} features."
        )
    index, labels = feature % n, []
    for w in W.reshape(-1, *W.shape[-2:]):
        groups = feature_groups(w, threshold=threshold, min_norm=min_norm)
        size = next((len(group) for group in groups if index in group), 0)
        labels.append(NOT_REPRESENTED if size == 0 else DEDICATED if size == 1 else SUPERPOSITION)
    return labels
