"""Batched ablated runs (`Faithfulness.keep / outputs / values`, the interface ACDC calls): many
edge sets stacked along the batch give what one run per edge set gives, a mask may cut a head's
query, key or value input alone, and faithfulness takes every ablation of `Baseline`."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import circuits as cc
from circuits.errors import ConfigError, ShapeMismatchError
from circuits.faithfulness import Faithfulness
from circuits.modelgraph.channel_ablation import _present
from tests.test_edge_patching import Residual


@pytest.fixture(scope="module")
def induction():
    model = cc.zoo.induction_transformer()
    clean, corrupt, batch = cc.zoo.induction_pair(4, seed=2)
    loss = cc.metrics.cross_entropy(clean, mask=batch.is_repeat)
    full = cc.build_graph(cc.attribute(model, clean, corrupt, loss, method="eap"))
    return model, clean, corrupt, loss, full


def _subsets(g, n, seed=0):
    rng = random.Random(seed)
    edges = list(g.edges)
    return [rng.sample(edges, rng.randint(0, len(edges))) for _ in range(n)]


@pytest.mark.transformer
@pytest.mark.parametrize("ablation", ["patch", "mean"])
def test_batched_transformer_runs_equal_one_at_a_time(induction, ablation):
    model, clean, corrupt, loss, full = induction
    check = Faithfulness(model, full, clean, corrupt, loss, ablation)
    masks = [check.keep(edges) for edges in _subsets(full, 9)]
    batched = check.values(masks)
    single = Faithfulness(model, full, clean, corrupt, loss, ablation, memory=1)
    one = [single.values([m])[0] for m in masks]
    assert batched == pytest.approx(one, abs=1e-5)
    for edges, value in zip(_subsets(full, 9), batched, strict=True):
        sub = full.edge_subgraph(edges).copy()
        if edges:
            want = (value - check.empty_value) / (check.model_value - check.empty_value)
            assert check.score(sub) == pytest.approx(want, abs=1e-5)
    outs = list(check.outputs(masks[:2]))
    assert len(outs) == 2 and outs[0].shape == model(clean).shape


@pytest.mark.transformer
def test_a_mask_cuts_query_key_or_value_alone(induction):
    """A mask with one q/k/v receiver column cut equals exact edge patching of that edge."""
    model, clean, corrupt, loss, full = induction
    check = Faithfulness(model, full, clean, corrupt, loss)
    runner = check.runner
    res = cc.attribute(model, clean, corrupt, loss, method="edge_patching")
    everything = runner.valid.clone()
    masks, want = [], []
    for r in [0, runner.n_heads, 2 * runner.n_heads + 1, len(runner.receivers) - 1]:
        s = int(runner.valid[:, r].nonzero()[-1])
        mask = everything.clone()
        mask[s, r] = False
        masks.append(mask)
        want.append(float(res.scores[s, r]) + check.model_value)
    assert check.values(masks) == pytest.approx(want, abs=1e-5)
    assert check.values([everything]) == pytest.approx([check.model_value], abs=1e-5)


@pytest.mark.transformer
def test_faithfulness_ablations_and_bad_input(induction):
    model, clean, corrupt, loss, full = induction
    before = cc.hook_count(model)
    for ablation in ("zero", "mean", "resample"):
        f = cc.faithfulness(model, full, clean, corrupt, loss, ablation=ablation)
        assert f == pytest.approx(1.0, abs=1e-5) and full.graph["ablation"] == ablation
    assert cc.faithfulness(model, full, clean, None, loss, ablation="zero") == pytest.approx(1.0)
    ref = torch.cat([corrupt, clean])
    assert cc.faithfulness(model, full, clean, None, loss, ablation="mean", reference=ref) == (
        pytest.approx(1.0, abs=1e-5)
    )
    with pytest.raises(ConfigError, match="ablation"):
        cc.faithfulness(model, full, clean, corrupt, loss, ablation="bogus")
    with pytest.raises(ConfigError, match="corrupt"):
        cc.faithfulness(model, full, clean, None, loss)
    with pytest.raises(ShapeMismatchError, match="reference"):
        cc.faithfulness(model, full, clean, None, loss, ablation="mean", reference=clean[:, :3])
    assert cc.hook_count(model) == before


@pytest.mark.parametrize("ablation", ["patch", "zero", "mean"])
def test_batched_conv_runs_equal_one_at_a_time(ablation):
    model = Residual().eval()
    gen = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randn(2, 3, 2, 6, 6, generator=gen)

    def metric(out):
        return out[:, 0].mean()

    full = cc.build_graph(cc.attribute(model, clean, corrupt, metric, method="eap"))
    check = Faithfulness(model, full, clean, corrupt, metric, ablation)
    subsets = _subsets(full, 6, seed=1)
    masks = [check.keep(edges) for edges in subsets]
    batched = check.values(masks)
    single = Faithfulness(model, full, clean, corrupt, metric, ablation, memory=1)
    assert batched == pytest.approx([single.values([m])[0] for m in masks], abs=1e-5)
    assert check.values([check.keep(full.edges)]) == pytest.approx([check.model_value], abs=1e-5)


@pytest.mark.parametrize("bits", [1, 3, 6, 18])  # tested one by one, counted, sorted
def test_the_patterns_present_are_the_codes_that_occur(bits):
    rng = np.random.default_rng(bits)
    code = rng.choice(rng.integers(0, 1 << bits, size=6), size=(5, 7))
    assert _present(code, bits) == sorted(set(code.ravel().tolist()) - {0})
