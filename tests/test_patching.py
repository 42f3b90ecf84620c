"""Activation and path patching on TransformerLens models: units of every kind against hand-made
interventions, the resumed fast path against full passes, and bad inputs that change nothing.

Runs under both transformer-lens lines (the `transformer` mark).
"""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

import circuits as cc
from circuits.metrics import cross_entropy, logit_diff
from circuits.patching import OUTPUT, heads, node, patch, path_patch
from circuits.zoo.transformers import hooked_available, tiny_transformer

pytestmark = pytest.mark.transformer
LINES = ["hooked", "bridge"] if hooked_available() else ["bridge"]
TL_MAJOR = int(importlib.metadata.version("transformer-lens").split(".")[0])


@pytest.fixture(scope="module", params=LINES)
def model(request):
    """A 3-layer model after one forward pass (the bridge adds hooks of its own on its first)."""
    model = tiny_transformer(line=request.param, seed=2, n_layers=3)
    with torch.no_grad():
        model(torch.zeros(1, 2, dtype=torch.long))
    model.own_hooks = cc.hook_count(model)
    return model


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(1)
    clean, corrupt = torch.randint(0, 50, (2, 3, 6), generator=gen)
    return clean, corrupt, logit_diff(torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]))


def _patched(model, tokens, site, fn, metric):
    """The metric with `fn` applied at `site` through the hook engine."""
    with torch.no_grad(), cc.hooks(model, {site: lambda act, s: fn(act.clone())}):
        return float(metric(model(tokens)))


def _set(index, value):
    def fn(act):
        act[index] = value[index]
        return act

    return fn


def test_units_of_every_kind_match_hand_made_patches(model, data):
    clean, corrupt, metric = data
    cache = cc.capture(
        model,
        clean,
        sites=["blocks.1.mlp.hook_post", "blocks.2.attn.hook_v", "blocks.1.attn.hook_pattern"],
    )
    neurons = patch(
        model, clean, corrupt, metric, site="blocks.1.mlp.hook_post", unit={"d_mlp": [5, 100]}
    )
    act = cache["blocks.1.mlp.hook_post"]
    expected = _patched(model, corrupt, "blocks.1.mlp.hook_post", _set((..., 100), act), metric)
    assert float(neurons.values[1]) == pytest.approx(expected, abs=1e-5)

    qkv = patch(
        model,
        clean,
        corrupt,
        metric,
        site=["blocks.2.attn.hook_q", "blocks.2.attn.hook_k", "blocks.2.attn.hook_v"],
        unit=("pos", "head"),
    )
    assert qkv.axes == ("site", "pos", "head") and qkv.values.shape == (3, 6, 4)
    act = cache["blocks.2.attn.hook_v"]
    expected = _patched(
        model, corrupt, "blocks.2.attn.hook_v", _set((slice(None), 4, 3), act), metric
    )
    assert float(qkv.values[2, 4, 3]) == pytest.approx(expected, abs=1e-5)

    if TL_MAJOR < 4 and type(model).__name__ == "TransformerBridge":
        with pytest.raises(cc.ModelError, match="silently"):  # 3.x bridges discard the edit
            patch(model, clean, corrupt, metric, site="blocks.1.attn.hook_pattern", unit="head")
        return
    pattern = patch(
        model, clean, corrupt, metric, site="blocks.1.attn.hook_pattern", unit=("head", "query_pos")
    )
    act = cache["blocks.1.attn.hook_pattern"]
    expected = _patched(
        model, corrupt, "blocks.1.attn.hook_pattern", _set((slice(None), 2, 5), act), metric
    )
    assert float(pattern.values[2, 5]) == pytest.approx(expected, abs=1e-5)


def test_resumed_passes_equal_full_passes(model, data):
    clean, corrupt, _ = data
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[:, [2, 4]] = True
    metric = cross_entropy(clean, mask=mask)  # reads positions 1 and 3: the zero-filled case
    kwargs = dict(site="blocks.{L}.attn.hook_z", unit=("pos", "head"))
    fast = patch(model, clean, corrupt, metric, **kwargs)
    full = patch(model, clean, corrupt, metric, fast=False, **kwargs)
    chunked = patch(
        model,
        clean,
        corrupt,
        metric,
        site="blocks.{L}.attn.hook_z",
        unit={"pos": [1, 4], "head": None},
        max_batch=6,
    )
    assert (fast.values - full.values).abs().max() <= 1e-5
    assert (chunked.values - full.values[:, [1, 4]]).abs().max() <= 1e-5
    assert fast.values.shape == (3, 6, 4) and fast.coords["layer"] == (0, 1, 2)
    plain = patch(
        model,
        clean,
        corrupt,
        lambda logits: metric(logits),  # declares nothing
        site="blocks.{L}.hook_resid_pre",
        unit="pos",
    )
    listed = patch(
        model,
        clean,
        corrupt,
        metric,
        site=[f"blocks.{i}.hook_resid_pre" for i in range(3)],
        unit="pos",
    )
    assert (plain.values - listed.values).abs().max() <= 1e-5
    assert listed.axes == ("site", "pos")
    assert cc.hook_count(model) == model.own_hooks


def test_ablations_on_a_transformer(model, data):
    clean, _, metric = data
    zero = patch(
        model, clean, None, metric, site="blocks.0.attn.hook_z", unit="head", ablation="zero"
    )
    expected = _patched(
        model,
        clean,
        "blocks.0.attn.hook_z",
        _set((slice(None), slice(None), 1), torch.zeros(3, 6, 4, 16)),
        metric,
    )
    assert float(zero.values[1]) == pytest.approx(expected, abs=1e-5)
    mean = patch(
        model, clean, None, metric, site="blocks.1.hook_resid_pre", unit="pos", ablation="mean"
    )
    resid = cc.capture(model, clean, sites=["blocks.1.hook_resid_pre"])["blocks.1.hook_resid_pre"]
    averaged = resid.mean(0, keepdim=True).expand_as(resid)
    expected = _patched(
        model, clean, "blocks.1.hook_resid_pre", _set((slice(None), 2), averaged), metric
    )
    assert float(mean.values[2]) == pytest.approx(expected, abs=1e-5)
    assert zero.baseline == zero.clean_value


def test_path_patching_to_the_logits_is_the_direct_effect(model, data):
    clean, corrupt, metric = data
    res = path_patch(
        model,
        clean,
        corrupt,
        metric,
        senders=[node("blocks.1.attn.hook_z", head=2)],
        receivers=[OUTPUT, node("blocks.2.attn.hook_k", head=0)],
        direction="noise",
    )
    assert res.coords["receiver"] == ("logits", "blocks.2.attn.hook_k[head=0]")
    base = cc.capture(
        model,
        clean,
        sites=[
            "blocks.1.attn.hook_z",
            "blocks.2.attn.hook_z",
            "blocks.1.hook_mlp_out",
            "blocks.2.hook_mlp_out",
        ],
    )
    source = cc.capture(model, corrupt, sites=["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"]

    def sender(act, site):
        act = act.clone()
        act[:, :, 2] = source[:, :, 2]
        return act

    freeze = {n: (lambda act, site: base[site.name]) for n in base if n != "blocks.1.attn.hook_z"}
    with torch.no_grad(), cc.hooks(model, {"blocks.1.attn.hook_z": sender, **freeze}):
        expected = float(metric(model(clean)))
    assert float(res.values[0, 0]) == pytest.approx(expected, abs=1e-5)
    assert res.method == "path/noise" and res.baseline == res.clean_value
    assert cc.hook_count(model) == model.own_hooks


def test_path_patching_many_senders_and_receivers(model, data):
    clean, corrupt, metric = data
    receivers = [*heads(model, layers=[1, 2], kind="q"), "blocks.2.hook_resid_pre"]
    small = path_patch(
        model,
        clean,
        corrupt,
        metric,
        senders=heads(model, layers=0),
        receivers=receivers,
        max_batch=9,
    )
    fast = path_patch(
        model, clean, corrupt, metric, senders=heads(model, layers=0), receivers=receivers
    )
    full = path_patch(
        model,
        clean,
        corrupt,
        metric,
        senders=heads(model, layers=0),
        receivers=receivers,
        fast=False,
    )
    assert small.values.shape == (4, 9)
    assert (fast.values - full.values).abs().max() <= 1e-5
    assert (small.values - full.values).abs().max() <= 1e-5
    assert full.to_frame().shape[0] == 36


def _bad_patch(model, clean, corrupt, metric):
    return [
        (
            lambda: patch(
                model, clean, corrupt[:, :5], metric, site="blocks.0.hook_resid_pre", unit="pos"
            ),
            cc.ShapeMismatchError,
            "same shapes",
        ),
        (
            lambda: patch(
                model,
                clean,
                corrupt,
                lambda out: out[:, -1, 0],
                site="blocks.0.hook_resid_pre",
                unit="pos",
            ),
            cc.MetricError,
            "scalar",
        ),
        (
            lambda: patch(
                model, clean, corrupt, metric, site="blocks.0.attn.hook_z", unit="channel"
            ),
            cc.InputError,
            "pos, head, d_head",
        ),
        (
            lambda: patch(model, clean, corrupt, metric, site="blocks.0.attn.hook_zz", unit="head"),
            cc.SiteNotFoundError,
            r"blocks\.0\.attn\.hook_z",
        ),
        (
            lambda: (
                patch(
                    model,
                    clean,
                    corrupt,
                    metric,
                    site="blocks.0.attn.hook_attn_scores",
                    unit="head",
                )
                if type(model).__name__ == "TransformerBridge"
                else _raise(cc.ModelError("silently (stand-in)"))
            ),
            cc.ModelError,
            "silently",
        ),
        (
            lambda: patch(
                model, clean, corrupt, metric, site="blocks.0.attn.hook_result", unit="head"
            ),
            cc.SiteNotFiredError,
            "hook_result",
        ),
        (
            lambda: path_patch(
                model,
                clean,
                corrupt,
                metric,
                senders=[("blocks.0.attn.hook_z", 3)],
                receivers=[OUTPUT],
            ),
            cc.ConfigError,
            "sender",
        ),
        (
            lambda: path_patch(
                model,
                clean,
                corrupt,
                metric,
                senders=heads(model, layers=0),
                receivers=["blocks.1.attn.hook_kk"],
            ),
            cc.SiteNotFoundError,
            "hook_k",
        ),
        (
            lambda: path_patch(model, clean, corrupt, metric, senders=[], receivers=[OUTPUT]),
            cc.ConfigError,
            "empty",
        ),
        (
            lambda: path_patch(
                model,
                clean,
                corrupt,
                metric,
                senders=heads(model, layers=0),
                receivers=[node("blocks.1.attn.hook_k", head=9)],
            ),
            cc.InputError,
            "out of range",
        ),
        (lambda: heads(model, layers=7), cc.ConfigError, "out of range"),
    ]


def _raise(err):
    raise err


@pytest.mark.parametrize("case", range(11))
def test_bad_inputs_leave_the_model_as_it_was(model, data, case):
    clean, corrupt, metric = data
    with torch.no_grad():
        before = model(clean)
    call, error, match = _bad_patch(model, clean, corrupt, metric)[case]
    with pytest.raises(error, match=match):
        call()
    assert cc.hook_count(model) == model.own_hooks
    with torch.no_grad():
        assert torch.equal(model(clean), before)
