"""Logistic probes against scikit-learn's LogisticRegression (default lbfgs solver, C=1).

Synthetic activations, 100,000 x 768 float32: Gaussian noise plus class means along random
directions, with per-feature offsets and scales, at a strength that makes the best possible
accuracy about 0.9, so neither model can be perfect and their test accuracies are comparable.
Both fit the same training split (fit_probe's stratified split, seed 0) and are scored on the
same test split. scikit-learn gets that split already standardised with the training statistics,
as float32 (which its lbfgs keeps), and only its `fit` is timed.

Rows, for a binary probe and a 10-class (softmax) probe on half the rows (a shorter run):
  solver: our logistic solver on exactly the matrix scikit-learn gets (the like-for-like figure);
  fit_probe: ours end to end from the raw activations (split, standardisation, fit, scores;
      control task off, as scikit-learn has none) against the same scikit-learn fit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from benchmarks.timing import best_time, row
from circuits.probes import fit_probe
from circuits.probes.data import split, standardise
from circuits.probes.logistic import logistic

N, D = 100_000, 768


def planted(n_classes: int, *, n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations whose class means differ along random directions; Bayes accuracy about 0.9."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    centres = torch.randn(n_classes, D, generator=g)
    strength = 1.28 if n_classes == 2 else 3.2  # binary: Phi(1.28) = 0.9
    centres *= strength / centres.norm(dim=1, keepdim=True)
    if n_classes == 2:
        centres = torch.stack([-centres[0], centres[0]])
    x = torch.randn(n, D, generator=g).add_(centres[y])
    x.mul_(torch.rand(D, generator=g) * 2 + 0.5).add_(torch.randn(D, generator=g))
    return x, y


def compare(
    name: str, n_classes: int, *, n: int, repeat: int, warmup: int
) -> list[dict[str, object]]:
    """Time ours and scikit-learn's on one problem; rows for the solver and for fit_probe."""
    x, y = planted(n_classes, n=n)
    train, test = split(n, 1, test_fraction=0.2, seed=0, strata=y, device=x.device)
    mean, scale = standardise(x[train])
    x_train = (x[train] - mean) / scale
    x_test = ((x[test] - mean) / scale).numpy()
    y_train, y_test = y[train], y[test].numpy()
    out: dict[str, Any] = {}

    def theirs() -> None:
        out["sklearn"] = LogisticRegression().fit(x_train.numpy(), y_train.numpy())

    def solver() -> None:
        out["solver"] = logistic(x_train, y_train, n_classes, C=1.0, tol=1e-4, max_iter=100)

    def ours() -> None:
        out["probe"] = fit_probe(x, y, control=False)

    t_theirs = best_time(theirs, repeat=repeat, warmup=warmup)
    t_solver = best_time(solver, repeat=repeat, warmup=warmup)
    t_ours = best_time(ours, repeat=repeat, warmup=warmup)
    clf, fit, probe = out["sklearn"], out["solver"], out["probe"]
    acc_theirs = float(clf.score(x_test, y_test))
    s = x_test @ fit.weight.numpy().T + fit.bias.numpy()
    acc_solver = float(((s[:, 0] > 0) if n_classes == 2 else s.argmax(1)).__eq__(y_test).mean())
    iters = f"{fit.n_iter} iterations vs sklearn {int(np.max(clf.n_iter_))}"

    def note(acc: float, extra: str) -> str:
        diff = 100 * (acc - acc_theirs)
        return f"test acc ours {acc:.4f} vs sklearn {acc_theirs:.4f} ({diff:+.2f} pt); {extra}"

    shape = f"{n}x{D}"
    return [
        row(f"logistic solver, {name}, {shape}", t_solver, t_theirs,
            note(acc_solver, f"{iters}; same standardised float32 data")),
        row(f"fit_probe, {name}, {shape}", t_ours, t_theirs,
            note(probe.test_score, "ours from raw data: split + standardise + fit + score")),
    ]  # fmt: skip


def run() -> list[dict[str, object]]:
    """Binary and 10-class logistic probes: ours against scikit-learn, same data, same run."""
    torch.manual_seed(0)
    binary = compare("binary", 2, n=N, repeat=2, warmup=1)
    return binary + compare("10-class", 10, n=N // 2, repeat=1, warmup=0)  # warm by now


if __name__ == "__main__":
    import pandas as pd

    with pd.option_context("display.max_colwidth", 120, "display.width", 250):
        print(pd.DataFrame(run()).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
