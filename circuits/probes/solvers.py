"""Closed-form probe solvers in torch: ridge regression and class means (mass-mean, LDA).

Both take a training matrix `x` [n, d] (float32, standardised or at least centred by the caller)
and return a `LinearFit`: one weight row per output and a bias, so that `x @ weight.T + bias` are
the scores. The d x d systems are solved in float64. The logistic solver is in `logistic.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class LinearFit:
    """Weights [k, d] and bias [k] of a linear map to k scores; iterations and convergence.

    `scores` holds x @ weight.T + bias for every row when the solver had them at hand.
    """

    weight: Tensor
    bias: Tensor
    n_iter: int = 0
    converged: bool = True
    scores: Tensor | None = None


def ridge(x: Float[Tensor, "n d"], y: Float[Tensor, "n t"], *, alpha: float) -> LinearFit:
    """Ridge regression (scikit-learn's Ridge(alpha), intercept unpenalised), closed form.

    The centred Gram matrix is x^T x - n m m^T (m the column means), exact in float64 up to the
    float32 product, and accurate because the caller passes centred data.
    """
    n = x.shape[0]
    ones = torch.ones(n, dtype=x.dtype, device=x.device)
    mean_x, mean_y = (x.T @ ones).double() / n, y.double().mean(0)
    gram = (x.T @ x).double() - n * torch.outer(mean_x, mean_x)
    gram.diagonal().add_(alpha)
    rhs = (x.T @ (y - mean_y.to(y.dtype))).double()
    w = _solve(gram, rhs).T  # [t, d]
    return LinearFit(w.float(), (mean_y - w @ mean_x).float())


def mass_mean(
    x: Float[Tensor, "n d"],
    y: Tensor,
    n_classes: int,
    *,
    whiten: bool,
    ridge: float,
    metric: Tensor | None = None,
) -> LinearFit:
    """Class-mean classifier: nearest class mean, or with whitening LDA (equal priors).

    w_k = A (mu_k - mu_bar) and b_k = -w_k . mu_bar - (mu_k - mu_bar) . w_k / 2, where A is the
    inverse of the pooled within-class covariance plus `ridge` times its mean variance (whiten),
    else diag(metric) (the identity by default): the nearest class mean in the norm A defines.
    Two classes give the one row w_1 - w_0 = A (mu_1 - mu_0), thresholded at the midpoint.
    """
    onehot = torch.nn.functional.one_hot(y, n_classes).to(x.dtype)
    counts = onehot.sum(0).double()
    means = (onehot.T @ x).double() / counts.clamp_min(1)[:, None]  # [c, d]
    centre = means.mean(0)
    offsets = means - centre
    if whiten:  # pooled within-class scatter: x^T x - sum_k n_k mu_k mu_k^T
        scatter = (x.T @ x).double() - (means.T * counts) @ means
        cov = scatter / max(x.shape[0] - n_classes, 1)
        cov.diagonal().add_(ridge * float(cov.diagonal().mean()) + 1e-12)
        w = _solve(cov, offsets.T).T
    else:
        w = offsets if metric is None else offsets * metric.double()
    b = -(w @ centre) - 0.5 * (offsets * w).sum(1)
    if n_classes == 2:
        w, b = (w[1] - w[0])[None], (b[1] - b[0])[None]
    return LinearFit(w.float(), b.float())


def _solve(a: Tensor, b: Tensor) -> Tensor:
    """Solve a x = b for symmetric positive (semi)definite a; least squares if singular."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(b, chol)
    return torch.linalg.lstsq(a.cpu(), b.cpu()).solution.to(a.device)
