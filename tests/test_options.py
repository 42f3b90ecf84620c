"""Configs and keywords meet in one place: a config, its fields as keywords, or both, mean the
same call; unknown options and old spellings are handled the same way everywhere."""

from __future__ import annotations

import warnings

import pytest
import torch

import circuits as cc
from circuits.attribution import EAPIG, IntegratedGradients
from circuits.graph.prune import PruneOptions
from circuits.patching import Budget
from circuits.zoo.transformers import tiny_transformer


def _data(n: int = 60, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen)
    return x, (x[:, 0] + 0.3 * torch.randn(n, generator=gen) > 0).long()


def test_fit_probe_takes_a_config_keywords_or_both() -> None:
    x, y = _data()
    by_config = cc.fit_probe(x, y, cc.ProbeConfig(C=0.1, seed=3))
    by_keywords = cc.fit_probe(x, y, C=0.1, seed=3)
    overridden = cc.fit_probe(x, y, cc.ProbeConfig(C=5.0, seed=3), C=0.1)
    for other in (by_keywords, overridden):
        assert torch.equal(other.direction, by_config.direction)
    with pytest.raises(cc.ConfigError, match=r"unknown probe option.*'lr'"):
        cc.fit_probe(x, y, lr=0.1)
    with pytest.warns(DeprecationWarning, match="standardise"):
        old = cc.fit_probe(x, y, standardize=False)
    assert torch.equal(old.direction, cc.fit_probe(x, y, standardise=False).direction)


def test_old_spellings_warn_and_still_work() -> None:
    dirs = torch.tensor([[3.0, 4.0]])
    with pytest.warns(DeprecationWarning, match="normalise"):
        old = cc.DirectionBasis(dirs, normalize=False)
    assert torch.equal(old.directions, cc.DirectionBasis(dirs, normalise=False).directions)
    x, y = _data()
    probe = cc.fit_probe(x, y)
    with pytest.warns(DeprecationWarning, match="normalise"):
        probe.as_basis(normalize=False)


@pytest.mark.transformer
def test_attribute_method_config_equals_its_name_and_keywords() -> None:
    model = tiny_transformer(n_layers=1, d_model=16, n_heads=2, d_head=8, d_vocab=12, n_ctx=6)
    gen = torch.Generator().manual_seed(0)
    clean, corrupt = (torch.randint(0, 12, (2, 6), generator=gen) for _ in range(2))
    metric = cc.metrics.logit_diff(1, 2)
    named = cc.attribute(model, clean, corrupt, metric, method="eap-ig", steps=3)
    config = cc.attribute(model, clean, corrupt, metric, method=EAPIG(steps=3))
    both = cc.attribute(model, clean, corrupt, metric, method=EAPIG(steps=9), steps=3)
    assert torch.equal(named.scores.nan_to_num(), config.scores.nan_to_num())
    assert torch.equal(named.scores.nan_to_num(), both.scores.nan_to_num())
    with pytest.raises(cc.ConfigError, match=r"unknown eap option.*'steps'"):
        cc.attribute(model, clean, corrupt, metric, method="eap", steps=3)
    with pytest.raises(cc.ConfigError, match="unknown integrated_gradients option"):
        cc.attribute(model, clean, corrupt, metric, method=IntegratedGradients(), layers=["x"])


@pytest.mark.transformer
def test_one_unit_syntax_in_patching_and_attribution() -> None:
    model = tiny_transformer(n_layers=2, d_model=16, n_heads=3, d_head=8, d_vocab=12, n_ctx=6)
    gen = torch.Generator().manual_seed(1)
    clean, corrupt = (torch.randint(0, 12, (2, 6), generator=gen) for _ in range(2))
    metric = cc.metrics.logit_diff(1, 2)
    site = "blocks.{L}.attn.hook_z"
    some = {"head": [2, 0]}
    full = cc.attribute(model, clean, corrupt, metric, site=site, unit="head")
    picked = cc.attribute(model, clean, corrupt, metric, site=site, unit=some)
    assert picked.coords["head"] == (2, 0)
    assert torch.allclose(picked.scores, full.scores[:, [2, 0]])
    keys = {row["key"] for row in picked.nodes if row["kind"] == "head"}
    assert keys == {f"blocks.{ly}.attn.hook_z[{h}]" for ly in (0, 1) for h in (2, 0)}
    patched = cc.patch(model, clean, corrupt, metric, site=site, unit=some)
    assert patched.coords["head"] == (2, 0)
    whole = cc.patch(model, clean, corrupt, metric, site=site, unit="head")
    assert torch.allclose(patched.values, whole.values[:, [2, 0]], atol=1e-6)


def test_budget_and_prune_options_as_configs(convnet, images) -> None:
    metric = lambda out: out[:, 0].mean()  # noqa: E731
    ablate = dict(site="conv1", unit="channel", ablation="zero")
    by_keyword = cc.patch(convnet, images, None, metric, max_batch=6, **ablate)
    by_config = cc.patch(convnet, images, None, metric, budget=Budget(max_batch=6), **ablate)
    assert torch.equal(by_keyword.values, by_config.values)
    with pytest.raises(cc.ConfigError, match="unknown Budget option"):
        cc.patch(convnet, images, None, metric, max_batches=6, **ablate)
    g = cc.build_graph(cc.attribute(convnet, images, images.flip(-1), metric, method="eap"))
    assert set(cc.prune(g, PruneOptions(top_k=3)).edges) == set(cc.prune(g, top_k=3).edges)
    early = cc.build_graph(
        cc.attribute(convnet, images, images.flip(-1), metric, method="eap"), top_k=3
    )
    assert set(early.edges) == set(cc.prune(g, top_k=3).edges)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cc.prune(g, threshold=0.0)  # no deprecation on the current names
