"""Activation and path patching against TransformerLens's own `patching` functions.

Runs under both transformer-lens lines (the `transformer` mark): HookedTransformer and the
TransformerBridge on 3.x, the bridge on 4.x. TransformerLens's functions denoise: they run the
corrupted tokens and patch in the clean cache; swapping the two gives noising.
"""

from __future__ import annotations

import os

import pytest
import torch
import transformer_lens.patching as tl_patching

from circuits.metrics import logit_diff
from circuits.patching import heads, patch, path_patch
from circuits.zoo.transformers import hooked_available, tiny_transformer

pytestmark = pytest.mark.transformer
LINES = ["hooked", "bridge"] if hooked_available() else ["bridge"]
CASES = [
    ("get_act_patch_resid_pre", "blocks.{L}.hook_resid_pre", ("pos",)),
    ("get_act_patch_attn_head_out_all_pos", "blocks.{L}.attn.hook_z", ("head",)),
    ("get_act_patch_attn_head_out_by_pos", "blocks.{L}.attn.hook_z", ("pos", "head")),
    ("get_act_patch_mlp_out", "blocks.{L}.hook_mlp_out", ("pos",)),
]


@pytest.fixture(scope="module", params=LINES)
def model(request):
    """The tiny random model with MLPs and LayerNorm, in eval mode (TL 4.x patching needs it)."""
    return tiny_transformer(line=request.param, seed=1, n_layers=2).eval()


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(0, 50, (2, 4, 4), generator=gen)
    metric = logit_diff(torch.tensor([3, 7, 11, 13]), torch.tensor([5, 2, 17, 19]))
    return clean, corrupt, metric


def _cache(model, tokens):
    with torch.no_grad():
        return model.run_with_cache(tokens)[1]


@pytest.mark.parametrize(("name", "site", "unit"), CASES, ids=[c[0] for c in CASES])
def test_denoising_matches_transformer_lens(model, data, name, site, unit):
    clean, corrupt, metric = data
    with torch.no_grad():
        ref = getattr(tl_patching, name)(model, corrupt, _cache(model, clean), metric)
    ours = patch(model, clean, corrupt, metric, site=site, unit=unit)
    assert ours.values.shape == ref.shape
    assert (ours.values - ref).abs().max() <= 1e-5
    assert ours.axes == ("layer", *unit)


def test_noising_is_transformer_lens_with_the_roles_swapped(model, data):
    clean, corrupt, metric = data
    with torch.no_grad():
        ref = tl_patching.get_act_patch_attn_head_out_all_pos(
            model, clean, _cache(model, corrupt), metric
        )
    ours = patch(
        model,
        clean,
        corrupt,
        metric,
        site="blocks.{L}.attn.hook_z",
        unit="head",
        direction="noise",
        fast=False,
        max_batch=8,
    )
    assert (ours.values - ref).abs().max() <= 1e-5


def _direct_path_reference(model, clean, corrupt, metric, component):
    """TransformerLens 4.x's get_act_patch_direct_path_all_sources, written out for a 3.x
    HookedTransformer: add the source head's clean-minus-corrupted write (z @ W_O) to one later
    head's split q/k/v input, in the corrupted run, through TL's own run_with_hooks."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    clean_cache, corrupt_cache = _cache(model, clean), _cache(model, corrupt)
    out = torch.zeros(n_layers, n_heads, n_layers, n_heads)
    model.set_use_split_qkv_input(True)
    try:
        for sl in range(n_layers):
            for sh in range(n_heads):
                z = f"blocks.{sl}.attn.hook_z"
                w_o = model.blocks[sl].attn.W_O[sh]
                delta = clean_cache[z][:, :, sh] @ w_o - corrupt_cache[z][:, :, sh] @ w_o
                for dl in range(sl + 1, n_layers):
                    for dh in range(n_heads):

                        def add(x, hook, dh=dh, delta=delta):
                            x = x.clone()
                            x[:, :, dh] += delta
                            return x

                        name = f"blocks.{dl}.hook_{component}_input"
                        with torch.no_grad():
                            logits = model.run_with_hooks(corrupt, fwd_hooks=[(name, add)])
                        out[sl, sh, dl, dh] = metric(logits)
    finally:
        model.set_use_split_qkv_input(False)
    return out


@pytest.fixture(scope="module")
def direct_path_model(model):
    """A model TransformerLens's direct path patching runs on, or None (then we skip)."""
    if hasattr(tl_patching, "get_act_patch_direct_path_all_sources"):  # transformer-lens 4.x
        return _gpt2_bridge()  # a boot_native bridge cannot split q/k/v inputs
    return None if type(model).__name__ == "TransformerBridge" else model  # 3.x: HT only


def _gpt2_bridge():
    """A random 2-layer GPT-2 on the HF-backed TransformerBridge (its attention can split q/k/v
    inputs, which TL 4.x's direct path patching needs), built offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokenizers import Tokenizer, models
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(50)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
        unk_token="t0",
        bos_token="t1",
        eos_token="t1",
        pad_token="t1",
        name_or_path="local",
        add_bos_token=True,
    )
    config = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=50,
        n_positions=64,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=1,
        attn_implementation="eager",
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        hf = GPT2LMHeadModel(config)
    return TransformerBridge.boot_transformers("gpt2", hf_model=hf, tokenizer=tokenizer).eval()


@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_path_patching_matches_direct_path_patching(direct_path_model, data, component):
    clean, corrupt, metric = data
    model = direct_path_model
    if model is None:
        pytest.skip("transformer-lens 3.x bridges cannot split q/k/v inputs")
    if hasattr(tl_patching, "get_act_patch_direct_path_all_sources"):  # transformer-lens 4.x
        with torch.no_grad():
            ref = tl_patching.get_act_patch_direct_path_all_sources(
                model,
                corrupt,
                _cache(model, clean),
                _cache(model, corrupt),
                metric,
                component=component,
                verbose=False,
            )
    else:
        ref = _direct_path_reference(model, clean, corrupt, metric, component)
    res = path_patch(
        model,
        clean,
        corrupt,
        metric,
        senders=heads(model, layers=0),
        receivers=heads(model, layers=1, kind=component),
    )
    assert res.axes == ("sender", "receiver")
    assert res.coords["receiver"][2] == f"blocks.1.attn.hook_{component}[head=2]"
    assert (res.values - ref[0, :, 1, :]).abs().max() <= 1e-5
    assert ref[0, :, 1, :].std() > 1e-3  # the paths differ: the comparison has teeth
