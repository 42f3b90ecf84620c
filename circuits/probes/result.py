"""ProbeResult: a fitted probe, its scores on the split, the control task, and its directions.

The probe is linear: scores = acts @ direction.T + bias, in the raw activation space (the space
the model computes in, after the pool the probe was fit with). The same map in the standardised
space the solver worked in is direction_std, bias_std, with standardised acts = (acts - mean) /
scale. Two classes give one row (positive scores mean classes[1]); more give one row per class
(softmax, or nearest class mean); regression gives one row per target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from jaxtyping import Float
from torch import Tensor

from circuits.errors import ConfigError, InputError, ShapeMismatchError
from circuits.features import DirectionBasis
from circuits.options import warn_renamed
from circuits.probes.data import Layout, as_tensor, project, to_matrix
from circuits.probes.subspace import Subspace, probe_rank, probe_rows, top_rows
from circuits.results import check_k

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from circuits.probes.fit import ProbeConfig


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """A fitted linear probe and how well it reads its labels out of the activations.

    Scores are accuracy (classification) or R^2 (regression), as `metric` says; `test_score` is on
    the held-out split (NaN without one). `control_score` is the same probe fit on control labels
    (see `fit_probe`), on the same test split, and `selectivity = test_score - control_score`:
    how much of the score comes from the activations rather than from the probe's own capacity.
    `chance` is the test accuracy of always answering the most frequent class (0 for R^2).
    Per-class figures on the test split (the training split without one) are in `to_frame()`.
    """

    kind: str
    metric: str
    direction: Tensor
    bias: Tensor
    direction_std: Tensor
    bias_std: Tensor
    mean: Tensor
    scale: Tensor
    classes: tuple[Any, ...]
    train_score: float
    test_score: float
    control_score: float
    control_train_score: float
    selectivity: float
    chance: float
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    support: tuple[int, ...]
    n_train: int
    n_test: int
    n_iter: int
    converged: bool
    site: str | None
    config: ProbeConfig
    layout: Layout

    def scores(self, acts: Tensor) -> Float[Tensor, "n k"]:
        """Raw scores [N, k] (logits, or predicted targets) for activations shaped as in the fit.

        The fit's pool is applied first, so pass activations as you passed them to fit_probe.
        """
        return self._scores(acts)[0]

    def predict(self, acts: Tensor) -> Tensor:
        """Predicted class indices into `classes` (or targets for regression), one per sample.

        With pool='stack' the result has the shape of the activation without its feature axis.
        """
        s, layout = self._scores(acts)
        if self.metric == "r2":
            out = s[:, 0] if s.shape[1] == 1 else s
        else:
            out = (s[:, 0] > 0).long() if len(self.classes) == 2 else s.argmax(1)
        if layout.pool == "stack" and layout.extra:
            return out.reshape(-1, *layout.extra, *out.shape[1:])
        return out

    def as_basis(self, *, normalise: bool = True, normalize: bool | None = None) -> DirectionBasis:
        """The probe's directions as a DirectionBasis over the raw activation's feature axis.

        Raw-space directions (standardisation folded in), so projecting raw activations onto
        them separates the classes. Not available for pool='flatten' on activations with more
        than two axes: those directions span several axes, not one feature axis.
        normalise: unit-length directions (`normalize` is the old spelling, for one release).
        """
        if normalize is not None:
            warn_renamed("normalize", "normalise")
            normalise = normalize
        if self.layout.pool == "flatten" and self.layout.extra:
            raise ConfigError(
                "a probe fit with pool='flatten' has directions over several axes of the "
                "activation, not over its feature axis; refit with pool='mean', 'max' or 'stack' "
                "(or pick positions first) to get a basis"
            )
        name = self.site or "probe"
        if self.metric == "r2":
            labels = [f"{name}:{self.kind}:target{i}" for i in range(self.direction.shape[0])]
        elif len(self.classes) == 2:
            labels = [f"{name}:{self.kind}:{self.classes[1]}"]
        else:
            labels = [f"{name}:{self.kind}:{c}" for c in self.classes]
        dim = self.layout.feature_axis - self.layout.ndim
        return DirectionBasis(
            self.direction, dim=dim, site=self.site, labels=tuple(labels),
            normalise=normalise,
        )  # fmt: skip

    def as_subspace(self) -> Subspace:
        """The subspace the probe reads, as a `Subspace` (orthonormal) over the raw feature axis.

        Its rank is the config's `rank` (or the probe map's own rank): the top right singular
        vectors of the raw directions (centred over classes for more than two), so a rank-1
        probe on two classes gives its direction, unit length. Raises ConfigError for a probe
        fit with pool='flatten' over several axes (as `as_basis`).

            plane = cc.fit_probe(acts, weekday, kind="linear", period=7).as_subspace()
            plane.encode(acts)                     # [n, 2]: the weekdays on their circle
        """
        basis = self.as_basis()
        k = min(self.config.rank or self.direction.shape[0], probe_rank(self))
        if k == 0:
            raise InputError("the probe's directions are all zero: it reads no subspace")
        labels = tuple(f"{self.site or 'probe'}:rank{k}:{i}" for i in range(k))
        return Subspace(top_rows(probe_rows(self), k), dim=basis.dim, site=self.site,
                        labels=labels)  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """The headline figures as one flat dict (a row of `probe_sweep`'s frame)."""
        return {
            "site": self.site,
            "kind": self.kind,
            "metric": self.metric,
            "train_score": self.train_score,
            "test_score": self.test_score,
            "control_score": self.control_score,
            "control_train_score": self.control_train_score,
            "selectivity": self.selectivity,
            "chance": self.chance,
            "n_classes": len(self.classes),
            "n_train": self.n_train,
            "n_test": self.n_test,
            "d": self.direction.shape[1],
            "converged": self.converged,
        }

    def to_frame(self) -> pd.DataFrame:
        """Per-class precision, recall and support (classification), else one row of figures."""
        if self.metric == "r2":
            return pd.DataFrame([self.summary()])
        return pd.DataFrame(
            {
                "class": list(self.classes),
                "precision": list(self.precision),
                "recall": list(self.recall),
                "support": list(self.support),
            }
        )

    def top(self, k: int = 10) -> pd.DataFrame:
        """The k features with the largest |weight| in the standardised direction (each output
        row: one for two classes or one target, else one per class), largest first."""
        check_k(k)
        w = self.direction_std.detach().float().cpu()
        names = (
            [self.classes[1]] if self.metric != "r2" and len(self.classes) == 2
            else list(self.classes) if self.metric != "r2"
            else [f"target{i}" for i in range(w.shape[0])]
        )  # fmt: skip
        rows = [
            {"output": names[r], "feature": f, "weight": float(w[r, f])}
            for r in range(w.shape[0])
            for f in range(w.shape[1])
        ]
        frame = pd.DataFrame(rows)
        order = frame["weight"].abs().sort_values(ascending=False, kind="stable").index[:k]
        return frame.loc[order].reset_index(drop=True)

    def plot(self, *, title: str | None = None) -> go.Figure:
        """Train, test and control scores beside chance, as bars."""
        import plotly.graph_objects as go

        names = ["train", "test", "control", "chance"]
        values = [self.train_score, self.test_score, self.control_score, self.chance]
        fig = go.Figure(go.Bar(x=names, y=values, marker_color=["#9ecae1", "#3182bd",
                                                                "#fd8d3c", "#bdbdbd"]))  # fmt: skip
        where = f" at {self.site}" if self.site else ""
        fig.update_layout(
            title=title or f"{self.kind} probe{where}: {self.metric}",
            yaxis_title=self.metric,
            xaxis_title="",
        )
        return fig

    def __repr__(self) -> str:
        where = f"{self.site!r}, " if self.site else ""
        return (
            f"ProbeResult({where}{self.kind}, {self.metric} train {self.train_score:.3f} test "
            f"{self.test_score:.3f} control {self.control_score:.3f} selectivity "
            f"{self.selectivity:.3f}, d={self.direction.shape[1]})"
        )

    def _scores(self, acts: Tensor) -> tuple[Tensor, Layout]:
        x, layout = self._matrix(acts)
        return project(x, self.direction.to(x)) + self.bias.to(x), layout

    def _matrix(self, acts: Tensor) -> tuple[Tensor, Layout]:
        x, layout = to_matrix(
            as_tensor(acts, min_samples=1),
            pool=self.layout.pool,
            feature_axis=self.layout.feature_axis,
        )
        if layout.ndim != self.layout.ndim or x.shape[1] != self.direction.shape[1]:
            raise ShapeMismatchError(
                f"the probe was fit on {self.layout.ndim}-axis activations with "
                f"{self.direction.shape[1]} features per sample; got shape {tuple(acts.shape)}"
            )
        return x, layout


def evaluate(
    scores: Tensor, y: Tensor, classes: tuple[Any, ...], train: Tensor, test: Tensor
) -> tuple[float, float, float, tuple[float, ...], tuple[float, ...], tuple[int, ...]]:
    """Train and test score, chance, and per-class precision, recall, support (test split).

    Runs in numpy on the CPU: the vectors are n x k, and small ops on them are faster there.
    """
    s, truth = scores.detach().double().cpu().numpy(), y.cpu().numpy()
    tr, te = train.cpu().numpy(), test.cpu().numpy()
    if not classes:
        return _r2(s[tr], truth[tr]), _r2(s[te], truth[te]), 0.0, (), (), ()
    k = len(classes)
    pred = (s[:, 0] > 0).astype(np.int64) if k == 2 else s.argmax(1)
    held = te if len(te) else tr
    confusion = np.bincount(truth[held] * k + pred[held], minlength=k * k).reshape(k, k)
    hits, predicted, support = confusion.diagonal(), confusion.sum(0), confusion.sum(1)
    precision = tuple(float(h / p) if p else math.nan for h, p in zip(hits, predicted, strict=True))
    recall = tuple(float(h / n) if n else math.nan for h, n in zip(hits, support, strict=True))
    chance = float(support.max()) / len(held)

    def acc(idx: np.ndarray) -> float:
        return float((pred[idx] == truth[idx]).mean()) if len(idx) else math.nan

    return acc(tr), acc(te), chance, precision, recall, tuple(int(n) for n in support)


def _r2(pred: np.ndarray, truth: np.ndarray) -> float:
    """Coefficient of determination averaged over targets, as scikit-learn's r2_score."""
    if len(truth) < 2:
        return math.nan
    ss_res = ((truth - pred) ** 2).sum(0)
    ss_tot = ((truth - truth.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_target = np.where(ss_tot > 0, 1 - ss_res / ss_tot, (ss_res == 0).astype(float))
    return float(per_target.mean())
