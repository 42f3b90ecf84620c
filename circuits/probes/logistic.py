"""L2-regularised logistic regression in torch: L-BFGS with a line search that reads no data.

The objective is scikit-learn's, so C means what it means there:

    sum_i log-loss(y_i, x_i W^T + b) + ||W||^2 / (2 C)          (the bias is not penalised)

with one weight row for two classes (sigmoid) and one row per class for more (softmax, the
"multinomial" parametrisation). It is solved in the mean-loss scaling, where `tol` bounds the
largest gradient entry as scikit-learn's lbfgs `tol` does.

Why it is fast. Along a search direction D the scores move as Z + t (x D^T), so one matrix
product per iteration gives the loss and its first two derivatives for every step length t in
O(n k): the line search is a few Newton steps in t that never touch x. An iteration reads x twice
(x D^T and the gradient R^T x), in float32, where a line search that re-evaluates the objective
reads it twice per trial. The first step, from zero weights and biases that match the class
frequencies, goes along the negative gradient, which there is the (frequency-weighted) difference
of class means: a mass-mean warm start for free.

Standardisation and the split are folded in rather than copied: given the raw matrix, per-feature
`mean` and `scale`, and a 0/1 `rows` mask of training rows, the solver works with
(x - mean) / scale on the masked rows through x @ (W / scale)^T - (mean / scale) . W and
(R^T x - (R^T 1) mean^T) / scale. No n x d copy is made; the float32 products lose accuracy only
for features whose mean is thousands of standard deviations from zero.

Threads. The O(n k) work of an iteration (losses, residuals, the line search) is a few dozen
element-wise ops that torch would spread over its threads; on a busy machine each such op can
wait milliseconds for a descheduled worker (measured here: exp of 10,000 numbers, 24 ms on two
threads, 0.03 ms on one). That work therefore runs inside `serial` (one thread, restored after),
while the two O(n d) products per iteration use every thread; small problems run serially whole.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.probes.data import SMALL, gather_rows, project, serial
from circuits.probes.solvers import LinearFit


def logistic(
    x: Float[Tensor, "n d"],
    y: Tensor,
    n_classes: int,
    *,
    C: float,
    tol: float,
    max_iter: int,
    mean: Tensor | None = None,
    scale: Tensor | None = None,
    rows: Tensor | None = None,
    history: int = 10,
) -> LinearFit:
    """Fit class indices `y` [n] from (x - mean) / scale on the `rows` mask (all rows if None).

    Returns weights and bias in that standardised space, and the scores of every row.
    """
    with serial(x.device) if x.numel() <= SMALL else nullcontext():
        return _lbfgs(x, y, n_classes, C=C, tol=tol, max_iter=max_iter, mean=mean, scale=scale,
                      rows=rows, history=history)  # fmt: skip


def _lbfgs(
    x: Tensor,
    y: Tensor,
    n_classes: int,
    *,
    C: float,
    tol: float,
    max_iter: int,
    mean: Tensor | None,
    scale: Tensor | None,
    rows: Tensor | None,
    history: int,
) -> LinearFit:
    objective = _Objective(x, y, n_classes, mean=mean, scale=scale, rows=rows, C=C)
    k, d = objective.k, x.shape[1]
    w = torch.zeros(k, d, dtype=torch.float64, device=x.device)
    b = objective.prior_bias()
    z = objective.scores(w, b)
    f, g_w, g_b = objective.value_and_grad(z, w)
    g = torch.cat([g_w.reshape(-1), g_b])
    s_hist: list[Tensor] = []
    y_hist: list[Tensor] = []
    converged, it = False, 0
    while it < max_iter:
        if float(g.abs().max()) <= tol:
            converged = True
            break
        it += 1
        step = -_two_loop(g, s_hist, y_hist)
        if float(step @ g) >= 0:  # not a descent direction (numerical trouble): restart
            s_hist.clear()
            y_hist.clear()
            step = -g
        d_w, d_b = step[: k * d].reshape(k, d), step[k * d :]
        q = objective.scores(d_w, d_b)
        t = objective.line_search(z, q, w, d_w, f, float(step @ g))
        w, b = w + t * d_w, b + t * d_b
        with serial(x.device):
            z = z + t * q
        f_new, g_w, g_b = objective.value_and_grad(z, w)
        g_new = torch.cat([g_w.reshape(-1), g_b])
        s, y_diff = t * step, g_new - g
        if float(s @ y_diff) > 1e-12 * float(y_diff @ y_diff):
            s_hist.append(s)
            y_hist.append(y_diff)
            if len(s_hist) > history:
                s_hist.pop(0)
                y_hist.pop(0)
        stalled = f - f_new <= 1e-12 * max(abs(f), 1.0)  # no progress left at float precision
        f, g = f_new, g_new
        if stalled:
            converged = float(g.abs().max()) <= 10 * tol
            break
    else:
        converged = float(g.abs().max()) <= tol
    return LinearFit(w.float(), b.float(), n_iter=it, converged=converged, scores=z.float())


def _two_loop(g: Tensor, s_hist: list[Tensor], y_hist: list[Tensor]) -> Tensor:
    """The L-BFGS inverse-Hessian approximation applied to g (identity scaled by s.y / y.y)."""
    q = g.clone()
    alphas = []
    rhos = [1.0 / float(yv @ s) for s, yv in zip(s_hist, y_hist, strict=True)]
    for s, yv, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rhos), strict=True):
        a = rho * float(s @ q)
        alphas.append(a)
        q -= a * yv
    if s_hist:
        q *= float(s_hist[-1] @ y_hist[-1]) / float(y_hist[-1] @ y_hist[-1])
    for s, yv, rho, a in zip(s_hist, y_hist, rhos, reversed(alphas), strict=True):
        q += (a - rho * float(yv @ q)) * s
    return q


class _Objective:
    """The mean logistic loss with its L2 term: values, gradients and the line search.

    Scores z [n, k], targets and the row mask are float64; the products with x are float32.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        n_classes: int,
        *,
        mean: Tensor | None,
        scale: Tensor | None,
        rows: Tensor | None,
        C: float,
    ) -> None:
        d, dev = x.shape[1], x.device
        self.x, self.binary, self.device = x, n_classes == 2, dev
        self.k = 1 if self.binary else n_classes
        self.inv_scale = 1.0 / (torch.ones(d, device=dev) if scale is None else scale).double()
        self.shift = (torch.zeros(d, device=dev) if mean is None else mean).double()
        with serial(dev):
            onehot = torch.nn.functional.one_hot(y, n_classes).double()
            self.mask = None if rows is None else rows[:, None].double()
            self.counts = (onehot if self.mask is None else onehot * self.mask).sum(0)
            self.targets = onehot[:, 1:] if self.binary else onehot
            self.index = y[:, None]  # the target class of each row, to gather its score
        self.n = float(self.counts.sum())
        self.reg = 1.0 / (C * self.n)
        self.p = self.targets  # class probabilities at the last value_and_grad point

    def prior_bias(self) -> Tensor:
        """Biases whose predictions match the class frequencies (the optimum at zero weights)."""
        logp = torch.log(self.counts.clamp_min(0.5) / self.n)
        return (logp[1:] - logp[:1]) if self.binary else logp - logp.mean()

    def scores(self, w: Tensor, b: Tensor) -> Tensor:
        """Standardised x W^T + b [n, k] in float64, from one float32 product."""
        offset = b - (w * self.inv_scale) @ self.shift
        if not bool(w.any()):  # zero weights: no product needed
            return offset.expand(self.x.shape[0], self.k).clone()
        z = project(self.x, w * self.inv_scale)
        with serial(self.device):
            return z.double() + offset

    def _masked(self, *terms: Tensor) -> list[Tensor]:
        return list(terms) if self.mask is None else [term * self.mask for term in terms]

    def value_and_grad(self, z: Tensor, w: Tensor) -> tuple[float, Tensor, Tensor]:
        """Objective value and its gradient in w and b at scores z."""
        t = self.targets
        with serial(self.device):
            if self.binary:
                value = torch.nn.functional.softplus(z) - t * z
                self.p = torch.sigmoid(z)
            else:
                logz = torch.logsumexp(z, 1, keepdim=True)
                value = logz - z.gather(1, self.index)
                self.p = torch.exp(z - logz)
            value, resid = self._masked(value, self.p - t)
            loss, r_sum, resid32 = float(value.sum()), resid.sum(0), resid.float()
        f = loss / self.n + 0.5 * self.reg * float((w * w).sum())
        raw = gather_rows(resid32, self.x).double() - r_sum[:, None] * self.shift
        g_w = raw * self.inv_scale / self.n + self.reg * w
        return f, g_w, r_sum / self.n

    def _along(self, z: Tensor, q: Tensor, t: float) -> tuple[float, float, float]:
        """Data part of the objective and its first two derivatives at z + t q (times n)."""
        tg = self.targets
        with serial(self.device):
            zt = torch.add(z, q, alpha=t)
            if self.binary:
                p = torch.sigmoid(zt)
                terms = [torch.nn.functional.softplus(zt) - tg * zt, (p - tg) * q,
                         p * (1 - p) * q * q]  # fmt: skip
            else:
                logz = torch.logsumexp(zt, 1, keepdim=True)
                pq_each = torch.exp(zt - logz).mul_(q)
                pq = pq_each.sum(1, keepdim=True)
                terms = [logz - zt.gather(1, self.index), pq - q.gather(1, self.index),
                         (pq_each * q).sum(1, keepdim=True) - pq * pq]  # fmt: skip
            value, first, second = (float(term.sum()) for term in self._masked(*terms))
        return value, first, second

    def _curvature(self, q: Tensor) -> float:
        """Second derivative of the data part along q at the last value_and_grad point (times n)."""
        p = self.p
        with serial(self.device):
            if self.binary:
                term = p * (1 - p) * q * q
            else:
                pq = (p * q).sum(1, keepdim=True)
                term = (p * q * q).sum(1, keepdim=True) - pq * pq
            return float(self._masked(term)[0].sum())

    def line_search(
        self, z: Tensor, q: Tensor, w: Tensor, d_w: Tensor, f0: float, slope0: float
    ) -> float:
        """A step t with strong Wolfe conditions (c1 = 1e-4, c2 = 0.05): safeguarded Newton in t.

        The objective along the line is convex, so Newton steps kept inside the bracket
        [lo, hi] around the minimiser (bisection when they leave it) converge in a few tries,
        each costing O(n k) and no pass over x.
        """
        wd, dd, ww = float((w * d_w).sum()), float((d_w * d_w).sum()), float((w * w).sum())
        lo, hi, t = 0.0, math.inf, 1.0
        second0 = self._curvature(q) / self.n + self.reg * dd
        if second0 > 0:
            t = -slope0 / second0  # the Newton step from t = 0
        for _ in range(30):
            value, first, second = self._along(z, q, t)
            f = value / self.n + 0.5 * self.reg * (ww + 2 * t * wd + t * t * dd)
            slope = first / self.n + self.reg * (wd + t * dd)
            second = second / self.n + self.reg * dd
            if f <= f0 + 1e-4 * t * slope0 and abs(slope) <= 0.05 * abs(slope0):
                return t
            if slope < 0 and f <= f0:
                lo = t
            else:
                hi = t
            newton = t - slope / second if second > 0 else math.inf
            fallback = 2 * lo + 1.0 if math.isinf(hi) else 0.5 * (lo + hi)
            t = newton if lo < newton < hi else fallback
        return lo if lo > 0 else t
