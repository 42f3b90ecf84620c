"""Capture, hooks and sites on TransformerLens models, against TransformerLens's own machinery.

Runs under both transformer-lens lines (the `transformer` mark): HookedTransformer and the
TransformerBridge on 3.x, the bridge alone on 4.x.
"""

from __future__ import annotations

import pytest
import torch

import circuits as cc
from circuits.zoo.transformers import hooked_available, tiny_transformer

pytestmark = pytest.mark.transformer
LINES = ["hooked", "bridge"] if hooked_available() else ["bridge"]
SITES = [
    "hook_embed",
    "blocks.0.hook_resid_pre",
    "blocks.0.attn.hook_q",
    "blocks.0.attn.hook_z",
    "blocks.0.attn.hook_pattern",
    "blocks.1.hook_attn_out",
    "blocks.1.mlp.hook_post",
    "blocks.1.hook_resid_post",
]


@pytest.fixture(params=LINES)
def model(request):
    """A tiny model after one forward pass (the bridge adds hooks of its own on its first)."""
    model = tiny_transformer(line=request.param, seed=1)
    with torch.no_grad():
        model(torch.zeros(1, 2, dtype=torch.long))
    model.own_hooks = cc.hook_count(model)
    return model


@pytest.fixture
def tokens():
    return torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(0))


def lm_loss(logits, tokens):
    """Next-token cross-entropy, the loss TransformerLens uses for return_type='loss'."""
    logprobs = logits[:, :-1].log_softmax(-1)
    return -logprobs.gather(-1, tokens[:, 1:, None]).mean()


def test_values_and_grads_match_run_with_cache(model, tokens):
    _, ref = model.run_with_cache(tokens, return_type="loss", incl_bwd=True)
    cache = cc.capture(
        model, tokens, sites=SITES, grads=True, metric=lambda logits: lm_loss(logits, tokens)
    )
    compared = 0
    for name in SITES:
        assert cache[name].shape == ref[name].shape, name
        assert torch.allclose(cache[name], ref[name], atol=1e-5), name
        if name + "_grad" in ref:  # the 3.x bridge keeps no gradient for hook_pattern
            assert torch.allclose(cache.grads[name], ref[name + "_grad"], atol=1e-6), name
            compared += 1
    assert compared >= len(SITES) - 1
    assert cache.sites["blocks.0.attn.hook_z"].axes == ("batch", "pos", "head", "d_head")
    assert cache.sites["blocks.0.attn.hook_pattern"].axes[1:] == ("head", "query_pos", "key_pos")
    assert cc.hook_count(model) == model.own_hooks


def test_intervention_matches_run_with_hooks(model, tokens):
    def ablate_head(z):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    name = "blocks.0.attn.hook_z"
    with torch.no_grad():
        ref = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda z, hook: ablate_head(z))])
        with cc.hooks(model, {name: lambda z, site: ablate_head(z)}):
            ours = model(tokens)
        clean = model(tokens)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert not torch.allclose(ours, clean, atol=1e-3)  # the intervention did something


def test_positions_option(model, tokens):
    full = cc.capture(model, tokens, sites=["blocks.0.attn.hook_z", "blocks.0.attn.hook_pattern"])
    last = cc.capture(
        model, tokens, sites=["blocks.0.attn.hook_z", "blocks.0.attn.hook_pattern"], positions=-1
    )
    assert torch.equal(last["blocks.0.attn.hook_z"], full["blocks.0.attn.hook_z"][:, -1:])
    assert torch.equal(last["blocks.0.attn.hook_pattern"], full["blocks.0.attn.hook_pattern"])


def test_sites_lists_hook_points_once(model, tokens):
    frame = cc.sites(model, tokens).set_index("site")
    assert frame.index.is_unique
    assert frame.loc["blocks.0.attn.hook_z", "shape"] == (3, 9, 4, 16)
    assert frame.loc["blocks.1.hook_resid_post", "axes"] == "batch pos d_model"
    assert frame.loc["blocks.0.attn.hook_z", "calls"] == 1  # (3.x runs ln1 hooks thrice)
    assert "blocks.0.attn.o.hook_in" not in frame.index  # the bridge's alias of hook_z
    assert frame.loc["blocks.0.attn.hook_result", "calls"] == 0  # exists, never computed
    assert set(cc.capture(model, tokens)) == set(frame.index[frame["calls"] == 1])


def test_site_that_never_fires(model, tokens):
    with pytest.raises(cc.SiteNotFiredError, match="hook_result"):
        cc.capture(model, tokens, sites=["blocks.0.attn.hook_result"])
    assert cc.hook_count(model) == model.own_hooks


def test_unknown_site_suggests_the_real_one(model, tokens):
    with pytest.raises(cc.SiteNotFoundError, match=r"'blocks\.0\.attn\.hook_z'"):
        cc.capture(model, tokens, sites=["blocks.0.attn.hook_zz"])


@pytest.mark.parametrize(
    "bad",
    [torch.full((2, 5), 50), torch.randn(2, 5), torch.zeros(2, 65, dtype=torch.long)],
    ids=["token-out-of-vocab", "float-input", "too-long"],
)
def test_bad_tokens_leave_the_model_as_it_was(model, tokens, bad):
    with torch.no_grad():
        before = model(tokens)
    with pytest.raises(cc.InputError, match="forward pass"):
        cc.capture(model, bad, sites=["blocks.0.attn.hook_z"])
    assert cc.hook_count(model) == model.own_hooks
    with torch.no_grad():
        assert torch.equal(model(tokens), before)
