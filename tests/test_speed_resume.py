"""Resumed patching passes against full ones: from a cached block, over a suffix of positions.

A patch that first touches position p runs only blocks L.. and only positions p.., attending to
the base run's cached keys and values before p; a patch at p alone, after block L's attention has
mixed positions, runs block L on position p alone; the last block (when unpatched) computes only
its keys and values before the metric's first position. Its values must equal a full, unresumed run
(`fast=False`) and TransformerLens's own patching functions, for patches at the first and the last
position and on a right-padded batch whose metric reads each row's last real token. Both
transformer-lens lines (the `transformer` mark).
"""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tl_patching

from circuits.hooks.variants import Budget, SitePatch, base_run
from circuits.metrics import Metric, logit_diff
from circuits.patching import patch
from circuits.zoo.transformers import hooked_available, tiny_transformer

pytestmark = pytest.mark.transformer
LINES = ["hooked", "bridge"] if hooked_available() else ["bridge"]
SEQ = 10


@pytest.fixture(scope="module", params=LINES)
def model(request):
    return tiny_transformer(line=request.param, seed=2, n_layers=3, n_ctx=32).eval()


@pytest.fixture(scope="module")
def tokens():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 50, (2, 3, SEQ), generator=gen)


def _metric(position: int) -> Metric:
    return logit_diff(torch.tensor([3, 7, 11]), torch.tensor([5, 2, 17]), position=position)


@pytest.mark.parametrize("patched", [0, 4, SEQ - 1])
def test_suffix_pass_equals_full_pass(model, tokens, patched):
    corrupt = tokens[1]
    metric = _metric(-1)
    run = base_run(model, corrupt, metric, sites=["blocks.1.attn.hook_z"], budget=Budget())
    assert run.runner.resumable
    # The suffix pass is used by HookedTransformer and by transformer-lens 4's native bridge;
    # transformer-lens 3's bridge falls back to all positions (checked equal all the same).
    native = type(model).__name__ == "HookedTransformer" or not hooked_available()
    assert run.runner.suffix or not native
    assert run.runner.local or not native
    assert run.runner.tail or not native
    mask = torch.zeros(2, SEQ, 4, 1, dtype=torch.bool)
    mask[0, patched, 1] = True
    mask[1, patched:, 2] = True
    source = torch.randn(3, SEQ, 4, 16, generator=torch.Generator().manual_seed(0))
    patches = {"blocks.1.attn.hook_z": [SitePatch(mask, source)]}
    fast, _ = run.runner.forward(2, patches, start=1)
    full, _ = run.runner.forward(2, patches)
    assert fast is not None and full is not None
    for a, b in zip(fast, full, strict=True):
        assert float((metric(a) - metric(b)).abs()) <= 1e-5


@pytest.mark.parametrize("position", [0, SEQ - 1])
def test_head_patching_matches_transformer_lens(model, tokens, position):
    clean, corrupt = tokens
    metric = _metric(position)
    ours = patch(model, clean, corrupt, metric, site="blocks.{L}.attn.hook_z", unit=("pos", "head"))
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        ref = tl_patching.get_act_patch_attn_head_out_by_pos(model, corrupt, cache, metric)
    assert float((ours.values - ref).abs().max()) <= 1e-5


def test_padded_batch_matches_full_run(model, tokens):
    """Rows of different lengths, right-padded with token 0; the metric reads each row's last
    real token, so it declares several positions and the pass starts at the earliest patch."""
    clean, corrupt = tokens.clone()
    lengths = torch.tensor([SEQ, 6, 8])
    pad = torch.arange(SEQ)[None] >= lengths[:, None]
    clean[pad], corrupt[pad] = 0, 0
    last = lengths - 1
    rows = torch.arange(3)

    def fn(logits: torch.Tensor) -> torch.Tensor:
        picked = logits[rows, last]
        return (picked[:, 3] - picked[:, 5]).mean()

    metric = Metric(fn, name="last_token", positions=sorted(set(last.tolist())))
    site = "blocks.{L}.attn.hook_z"
    fast = patch(model, clean, corrupt, metric, site=site, unit=("pos", "head"))
    full = patch(model, clean, corrupt, metric, site=site, unit=("pos", "head"), fast=False)
    assert float((fast.values - full.values).abs().max()) <= 1e-5


@pytest.mark.parametrize(
    "site",
    [
        "blocks.{L}.hook_resid_pre",  # mixed by the block's attention: positions p.. change
        "blocks.{L}.attn.hook_k",
        "blocks.{L}.attn.hook_q",  # the rest change position p alone in their block
        "blocks.{L}.hook_resid_mid",
        "blocks.{L}.mlp.hook_post",
        "blocks.{L}.hook_resid_post",
    ],
)
def test_one_position_patches_equal_full_runs(model, tokens, site):
    """Each position of each block patched alone: the resumed passes (one-position blocks where
    the site allows) against full forward passes, for a metric at the last and at a middle
    position."""
    clean, corrupt = tokens
    for position in (-1, SEQ // 2):
        metric = _metric(position)
        fast = patch(model, clean, corrupt, metric, site=site, unit="pos")
        full = patch(model, clean, corrupt, metric, site=site, unit="pos", fast=False)
        assert float((fast.values - full.values).abs().max()) <= 1e-5
