"""fit_probe: one linear probe on one set of activations, with a held-out split and a control task.

Control task (after Hewitt & Liang, 2019, "Designing and Interpreting Probes with Control Tasks").
Their control gives every word type a fixed random label, so a probe can only score on it by
memorising types. Activations alone carry no types, so by default the control labels are the real
labels under a seeded random permutation: class balance is kept exactly, and any link between an
activation and its label is broken. A probe that scores well on that (on its training split) is
memorising; on the test split it sits at chance. Pass `types` (one per sample, e.g. token ids)
for the original recipe: each distinct type gets one label drawn from the label distribution.
selectivity = test_score - control_score.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import InitVar, dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.checks import check_int, is_finite
from circuits.errors import ConfigError, InputError
from circuits.options import configure, warn_renamed
from circuits.probes import solvers
from circuits.probes.data import (
    POOLS,
    Labels,
    Layout,
    Pool,
    as_tensor,
    check_finite,
    control_labels,
    encode_classes,
    encode_targets,
    label_array,
    project,
    split,
    standardise,
    to_matrix,
)
from circuits.probes.logistic import logistic
from circuits.probes.result import ProbeResult, evaluate
from circuits.probes.solvers import LinearFit
from circuits.probes.subspace import check_cyclic, reduce_rank, subspace_labels

logger = logging.getLogger(__name__)

Kind = Literal["logistic", "linear", "mass_mean"]
KINDS = ("logistic", "linear", "mass_mean")


@dataclass(frozen=True)
class ProbeConfig:
    """Options of a probe fit, validated here; `fit_probe` and `probe_sweep` take this config
    or its fields as keywords.

    kind: "logistic" (L2-regularised, binary or softmax; `C` as scikit-learn's
        LogisticRegression), "linear" (ridge regression, `alpha` as scikit-learn's Ridge) or
        "mass_mean" (difference of class means in raw activation space; `whiten` multiplies by
        the inverse within-class covariance plus `ridge` times its mean variance: LDA).
    standardise: fit on features scaled to mean 0, std 1 with the training split's statistics
        (logistic and linear; directions are reported in raw and standardised space either way).
    test_fraction, seed: size of the held-out split (stratified by class) and its seed.
    control: also fit the control task (module docstring) to report selectivity.
    pool, feature_axis: how activations with more than two axes become [n, d] (None, "mean",
        "max", "flatten", "stack"; see circuits.probes.data), and which axis holds the features.
    tol, max_iter: logistic solver stopping rule (largest gradient entry of the mean loss).
    rank, period, frequencies: the probe refit in the top-k subspace of its directions (as it
        is when its map has rank <= k); with a period (kind "linear"), labels become [cos, sin]
        of 2 pi f label / period for each f (default (1,)). See `circuits.probes.subspace`.
    """

    kind: Kind = "logistic"
    C: float = 1.0
    alpha: float = 1.0
    whiten: bool = False
    ridge: float = 1e-3
    standardise: bool = True
    test_fraction: float = 0.2
    control: bool = True
    seed: int = 0
    pool: Pool | None = None
    feature_axis: int = -1
    tol: float = 1e-4
    max_iter: int = 100
    rank: int | None = None
    period: float | None = None
    frequencies: tuple[int, ...] | None = None
    standardize: InitVar[bool | None] = None  # the old spelling of standardise, for one release

    def __post_init__(self, standardize: bool | None) -> None:
        if standardize is not None:
            warn_renamed("standardize", "standardise")
            object.__setattr__(self, "standardise", standardize)
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.pool is not None and self.pool not in POOLS:
            raise ConfigError(f"pool must be one of {POOLS} or None, got {self.pool!r}")
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be in [0, 1), got {self.test_fraction!r}")
        for name in ("C", "tol"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("alpha", "ridge"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if (
            isinstance(self.max_iter, bool)
            or not isinstance(self.max_iter, int)
            or self.max_iter < 1
        ):
            raise ConfigError(f"max_iter must be a positive int, got {self.max_iter!r}")
        check_int(self.rank, "rank", allow_none=True)
        freqs = check_cyclic(self.period, self.frequencies, kind=self.kind)
        object.__setattr__(self, "frequencies", freqs)

    @classmethod
    def of(cls, config: ProbeConfig | None, options: Mapping[str, Any]) -> ProbeConfig:
        """`config` (or the defaults) with `options` set."""
        return configure(cls, config, options, what="probe")


def fit_probe(
    acts: Float[Tensor, "n ..."],
    labels: Labels,
    config: ProbeConfig | None = None,
    *,
    types: Labels | None = None,
    site: str | None = None,
    **options: Any,
) -> ProbeResult:
    """Fit a linear probe reading `labels` out of `acts`; returns a ProbeResult.

    acts: [n, d], or more axes reduced as the config's `pool` says; `feature_axis` names the
        feature axis (-1; 1 for conv channels).
    labels: one per sample (classes of any type for logistic / mass_mean; numbers [n] or [n, t]
        for linear).
    config, options: a `ProbeConfig`, or its fields as keywords (kind, C, alpha, whiten, ridge,
        standardise, test_fraction, control, seed, pool, feature_axis, tol, max_iter, rank,
        period, frequencies); keywords override the config's fields.
    types: one per sample (e.g. token ids) for Hewitt & Liang's control task (module docstring).
    Runs on the activations' device, in float32 (float64 for the small d x d solves).

    For example:

        cache = cc.capture(model, tokens, sites=["blocks.1.hook_resid_pre"], positions=-1)
        probe = cc.fit_probe(cache["blocks.1.hook_resid_pre"][:, -1], labels, kind="logistic")
        probe.test_score, probe.selectivity                 # held-out accuracy, minus the control's
        basis = probe.as_basis()                            # its direction as a feature basis
        plane = cc.fit_probe(acts, weekday, kind="linear", period=7).as_subspace()  # a circle
        top2 = cc.fit_probe(acts, digit, rank=2)            # the best 2-d subspace for 10 classes

    Raises:
        ConfigError: an unknown option, kind or pool, or an option out of range; a rank larger
            than the feature axis or than the probe's map (its rows; minus one when centred),
            a period without kind="linear", frequencies without a period.
        ShapeMismatchError: the labels do not match the activations' first axis.
        InputError: the activations have no features or are NaN or infinite, the labels cannot be
            read (a single class, NaN targets), a cyclic label has fewer than 3 distinct values,
            or too few examples are left for a test split.
    """
    config = ProbeConfig.of(config, options)
    acts = as_tensor(acts)
    x, layout = to_matrix(acts, pool=config.pool, feature_axis=config.feature_axis)
    return fit_matrix(x, labels, layout=layout, n_inputs=acts.shape[0], config=config,
                      types=types, site=site)  # fmt: skip


def fit_matrix(
    x: Tensor,
    labels: Labels,
    *,
    layout: Layout,
    n_inputs: int,
    config: ProbeConfig,
    types: Labels | None = None,
    site: str | None = None,
) -> ProbeResult:
    """Fit on a prepared matrix [N, d] (rows grouped by input as `layout` says)."""
    if x.shape[1] == 0:
        raise InputError("the activations have no features (d = 0); probe a site with some")
    check_finite(x, "activations")
    device = x.device
    classify = config.kind != "linear"
    arr = subspace_labels(label_array(labels, layout, n_inputs, device=device), config, x.shape[1])
    classes: tuple[Any, ...] = ()
    if classify:
        y, classes = encode_classes(arr, device=device)
    else:
        y = encode_targets(arr, device=device)
    per_input = x.shape[0] // n_inputs
    strata = y.reshape(n_inputs, per_input)[:, 0] if classify and per_input == 1 else None
    train, test = split(n_inputs, per_input, test_fraction=config.test_fraction,
                        seed=config.seed, strata=strata, device=device)  # fmt: skip
    if config.test_fraction > 0 and len(test) == 0:
        raise InputError(
            f"with {n_inputs} inputs, test_fraction={config.test_fraction} leaves no held-out "
            "example (each class keeps at least one for training), so the test score would be "
            "NaN; pass more inputs, or test_fraction=0 to fit without a test score"
        )
    if not classify and (len(train) < 2 or 0 < len(test) < 2):
        raise InputError(
            f"R^2 needs two rows or more on each side of the split; {len(train)} train and "
            f"{len(test)} test rows here. Pass more inputs, or test_fraction=0"
        )
    data = _Training(x, train, config, n_classes=len(classes))
    if not (is_finite(data.mean) and is_finite(data.scale)):
        raise InputError(
            f"the activations are too large for {x.dtype} statistics (largest magnitude "
            f"{float(x.abs().max()):.3g}); rescale them, or pass them as float64"
        )
    main = data.fit(y)
    w_raw = main.weight / data.scale
    b_raw = main.bias - w_raw @ data.mean
    metrics = evaluate(_scores(x, main, w_raw, b_raw), y, classes, train, test)
    control = (math.nan, math.nan)
    if config.control:
        y_control = control_labels(y, types, layout, n_inputs, seed=config.seed)
        fit = data.fit(y_control)
        wc = fit.weight / data.scale
        scores = _scores(x, fit, wc, fit.bias - wc @ data.mean)
        control = evaluate(scores, y_control, classes, train, test)[:2]
    if not main.converged:
        logger.warning(
            "probe%s did not converge in %d iterations; raise max_iter or tol",
            f" at {site!r}" if site else "", config.max_iter,
        )  # fmt: skip
    test_score = metrics[1]
    result = ProbeResult(
        kind=config.kind, metric="accuracy" if classify else "r2",
        direction=w_raw, bias=b_raw, direction_std=main.weight, bias_std=main.bias,
        mean=data.mean, scale=data.scale, classes=classes,
        train_score=metrics[0], test_score=test_score,
        control_score=control[1], control_train_score=control[0],
        selectivity=test_score - control[1] if config.control else math.nan,
        chance=metrics[2], precision=metrics[3], recall=metrics[4], support=metrics[5],
        n_train=len(train), n_test=len(test), n_iter=main.n_iter, converged=main.converged,
        site=site, config=config, layout=layout,
    )  # fmt: skip
    full = dataclasses.replace(config, rank=None)
    refit = functools.partial(fit_matrix, labels=labels, layout=layout, n_inputs=n_inputs,
                              config=full, types=types, site=site)  # fmt: skip
    return reduce_rank(result, x, refit)


class _Training:
    """The training split of x, standardised, as each solver wants it.

    The binary logistic solver reads x in place through the split mask and the statistics (no
    copy); the softmax and closed-form solvers get one standardised copy of the training rows,
    made on first use and shared by the task and control fits. Data are always centred (a bias
    absorbs it); `standardise` decides whether they are also scaled.
    """

    def __init__(self, x: Tensor, train: Tensor, config: ProbeConfig, *, n_classes: int) -> None:
        self.x, self.train, self.config, self.n_classes = x, train, config, n_classes
        self.rows: Tensor | None = None
        if len(train) < x.shape[0]:
            self.rows = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            self.rows[train] = True
        self.mean, self.scale = standardise(x, self.rows, scale=config.standardise)
        self._copy: Tensor | None = None

    def fit(self, y: Tensor) -> LinearFit:
        """One solver call; weights and bias in the standardised space."""
        config = self.config
        solve = functools.partial(logistic, C=config.C, tol=config.tol, max_iter=config.max_iter)
        if config.kind == "logistic" and (self.n_classes == 2 or self.rows is None):
            return solve(self.x, y, self.n_classes, mean=self.mean, scale=self.scale,
                         rows=self.rows)  # fmt: skip
        y_train = y[self.train]
        if config.kind == "logistic":  # softmax: two n x d x k products per iteration, so a
            # standardised copy of the training rows costs less than reading the test rows too
            fit = solve(self.copy(), y_train, self.n_classes)
            return dataclasses.replace(fit, scores=None)
        if config.kind == "linear":
            return solvers.ridge(self.copy(), y_train, alpha=config.alpha)
        # Unwhitened: nearest class mean in raw activation space, whose metric in standardised
        # coordinates is diag(scale^2); whitened: LDA, the same in either coordinates.
        metric = None if config.whiten else self.scale**2
        return solvers.mass_mean(self.copy(), y_train, self.n_classes, whiten=config.whiten,
                                 ridge=config.ridge, metric=metric)  # fmt: skip

    def copy(self) -> Tensor:
        """The training rows, standardised: one copy, made on first use."""
        if self._copy is None:
            self._copy = self.x.index_select(0, self.train).sub_(self.mean).div_(self.scale)
        return self._copy


def _scores(x: Tensor, fit: LinearFit, w_raw: Tensor, b_raw: Tensor) -> Tensor:
    """Every row's scores: the solver's own where it kept them, else one product."""
    return fit.scores if fit.scores is not None else project(x, w_raw) + b_raw
