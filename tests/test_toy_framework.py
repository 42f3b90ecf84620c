"""The toy model is a regular module: capture, probe and patch work on it like on any model."""

from __future__ import annotations

import pytest
import torch

import circuits as cc
from circuits import toy


@pytest.fixture(scope="module")
def dense_model():
    """n=5, m=2, no sparsity: keeps the two most important features on orthogonal axes."""
    config = toy.ToyConfig(n_features=5, n_hidden=2, importance=[0.9**i for i in range(5)])
    model = toy.ToyModel(config, seed=0)
    return toy.train(model, steps=1500, batch_size=512, lr=2e-2, schedule="cosine", progress=False)


def test_capture_probe_and_patch_the_hidden_layer(dense_model):
    x = dense_model.generate_batch(2000, torch.Generator().manual_seed(1))
    hidden = cc.capture(dense_model, x, sites="hidden")["hidden"][:, 0]  # [batch, m]
    kept = (toy.feature_norms(dense_model.W.detach()[0]) > 0.5).tolist()
    assert kept == [True, True, False, False, False]
    r2 = [cc.fit_probe(hidden, x[:, 0, i], kind="linear", alpha=1e-3).test_score for i in range(5)]
    assert all(r > 0.95 for r in r2[:2]) and all(r < 0.1 for r in r2[2:]), r2

    def loss(output):  # reconstruction error of the kept features
        return ((output - x)[:, :, :2] ** 2).mean()

    res = cc.patch(dense_model, x, None, loss, site="hidden", unit="feature", ablation="zero")
    with torch.no_grad():
        base = float(loss(dense_model(x)))
    assert res.values.shape == (2,) and bool((res.values > 10 * base).all()), res.values
