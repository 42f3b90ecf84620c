"""Ablation baselines with one meaning in every method: "patch" (the corrupted run), "zero",
"mean" (over the corrupted batch or a reference) and "resample" (a seeded permutation of the
corrupted batch). Each score is checked against a real intervention built here by hand: the
derivative of the metric along (ablated - clean) for EAP and attribution patching, the metric at
the hand-made baseline for integrated gradients, a hand-patched run for `cc.patch`."""

from __future__ import annotations

import pytest
import torch

import circuits as cc
from circuits.attribution import attribute
from circuits.zoo.transformers import tiny_transformer
from tests.test_attribution_tl import SMALL, Reference, _receiver, _tokens, metric

SEED = 3


def hand_ablated(clean_acts: torch.Tensor, corrupt_acts: torch.Tensor, ablation: str):
    """The ablated value of one site, written out: zeros, the corrupted batch's mean, or the
    corrupted batch permuted by torch.randperm with the seed."""
    if ablation == "zero":
        return torch.zeros_like(clean_acts)
    if ablation == "mean":
        return corrupt_acts.mean(0, keepdim=True).expand_as(clean_acts)
    perm = torch.randperm(corrupt_acts.shape[0], generator=torch.Generator().manual_seed(SEED))
    return corrupt_acts[perm]


@pytest.fixture(scope="module")
def ln_model():
    return tiny_transformer(**SMALL)


@pytest.mark.transformer
@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_eap_with_an_ablation_is_the_derivative_along_ablated_minus_clean(ln_model, ablation):
    """score(s -> r) = (ablated_s - clean_s) . grad_r at the clean run, each edge checked by a
    real run whose receiver input moves by eps times that difference."""
    clean, corrupt = _tokens(1), _tokens(2)
    res = attribute(ln_model, clean, corrupt, metric, method="eap", ablation=ablation, seed=SEED)
    ref = Reference(ln_model)
    sites = ["blocks.0.hook_resid_pre"] + [f"blocks.{ly}.attn.hook_z" for ly in range(2)]
    sites += [f"blocks.{ly}.hook_mlp_out" for ly in range(2)]
    a, b = cc.capture(ln_model, clean, sites=sites), cc.capture(ln_model, corrupt, sites=sites)
    delta = {s: hand_ablated(a[s], b[s], ablation) - a[s] for s in sites}
    diffs = {"blocks.0.hook_resid_pre": delta["blocks.0.hook_resid_pre"]}
    for ly in range(2):
        w_o = ref.w[f"blocks.{ly}.attn.W_O"]
        for h in range(2):
            diffs[f"blocks.{ly}.attn.hook_z[{h}]"] = (
                delta[f"blocks.{ly}.attn.hook_z"][:, :, h] @ w_o[h]
            )
        diffs[f"blocks.{ly}.hook_mlp_out"] = delta[f"blocks.{ly}.hook_mlp_out"]
    frame = res.to_frame()
    kinds = frame["target"].map(lambda t: _receiver(t)[0])
    sample = frame.groupby(kinds, group_keys=False).apply(
        lambda g: g.sample(n=min(2, len(g)), random_state=0)
    )
    assert set(kinds[sample.index]) == {"q", "k", "v", "mlp", "logits"}
    for row in sample.itertuples():
        expected = ref.derivative(clean, _receiver(row.target), diffs[row.source])
        assert row.score == pytest.approx(expected, rel=1e-3, abs=1e-5), row


@pytest.mark.transformer
def test_eap_with_a_reference_mean_needs_no_corrupted_input(ln_model):
    clean, reference = _tokens(1), torch.cat([_tokens(2), _tokens(3)])
    by_reference = attribute(ln_model, clean, None, metric, method="eap", ablation="mean",
                             reference=reference)  # fmt: skip
    as_corrupt = attribute(ln_model, clean, reference[:2], metric, method="eap", ablation="mean")
    assert not torch.allclose(by_reference.scores.nan_to_num(), as_corrupt.scores.nan_to_num())
    zero = attribute(ln_model, clean, None, metric, method="eap", ablation="zero")
    assert bool(torch.isfinite(zero.scores[~torch.isnan(zero.scores)]).all())


@pytest.mark.transformer
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_eap_ig_input_edges_add_up_to_the_ablated_difference(ln_model, ablation):
    """The path runs between the clean and the ablated embeddings, so `expected` is
    m(embeddings ablated) - m(clean), and for "mean" the embedding's edges add up to it. (From
    zero embeddings the first LayerNorm jumps near the path's start, where a quadrature of 16
    points cannot follow it; only `expected` is checked there.)"""
    clean, corrupt = _tokens(1), _tokens(2)
    res = attribute(ln_model, clean, corrupt, metric, method="eap-ig", steps=16, ablation=ablation)
    embed = "blocks.0.hook_resid_pre"
    e_clean = cc.capture(ln_model, clean, sites=[embed])[embed]
    e_corrupt = cc.capture(ln_model, corrupt, sites=[embed])[embed]
    ablated = hand_ablated(e_clean, e_corrupt, ablation)
    with torch.no_grad(), cc.hooks(ln_model, {embed: lambda a, s: ablated}):
        at_ablated = float(metric(ln_model(clean)))
    with torch.no_grad():
        at_clean = float(metric(ln_model(clean)))
    assert float(res.expected[0]) == pytest.approx(at_ablated - at_clean, abs=1e-5)
    if ablation == "mean":
        assert float(res.total[0]) == pytest.approx(at_ablated - at_clean, rel=1e-2)


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_attribution_patching_of_conv_channels(convnet, images, ablation):
    """score(c) = d/d eps m(conv1 with channel c moved by eps * (ablated - clean)) at 0."""
    other = images.flip(0) * 0.5
    res = attribute(convnet, images, other, lambda o: o[:, 0].mean(), site="conv1",
                    unit="channel", ablation=ablation, seed=SEED)  # fmt: skip
    clean_acts = cc.capture(convnet, images, sites=["conv1"])["conv1"]
    corrupt_acts = cc.capture(convnet, other, sites=["conv1"])["conv1"]
    delta = hand_ablated(clean_acts, corrupt_acts, ablation) - clean_acts
    for c in range(4):
        eps = torch.zeros((), requires_grad=True)

        def move(a, s, c=c, eps=eps):
            moved = a.clone()
            moved[:, c] = moved[:, c] + eps * delta[:, c]
            return moved

        with cc.hooks(convnet, {"conv1": move}):
            value = convnet(images)[:, 0].mean()
        (expected,) = torch.autograd.grad(value, [eps])
        assert float(res.scores[c]) == pytest.approx(float(expected), rel=1e-4, abs=1e-6)


def test_integrated_gradients_from_a_mean_baseline_are_complete(convnet, images):
    """IG at the input against the corrupted batch's mean image: the scores add up to m(clean)
    - m(mean image), the baseline written here by hand."""
    other = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(9))
    res = attribute(convnet, images, None, lambda o: o[:, 0].mean(), method="integrated_gradients",
                    ablation="mean", reference=other, steps=64)  # fmt: skip
    with torch.no_grad():
        clean = float(convnet(images)[:, 0].mean())
        base = float(convnet(other.mean(0, keepdim=True).expand_as(images))[:, 0].mean())
    assert float(res.expected[0]) == pytest.approx(clean - base, abs=1e-6)
    assert res.completeness_gap < 0.01  # ReLU kinks: as test_attribution's 64-step bound


def test_patch_with_a_mean_over_the_corrupted_batch(convnet, images):
    """cc.patch(ablation="mean") with corrupt given: the unit takes the corrupted batch's mean."""
    other = images.flip(0) * 2

    def m(out):
        return out[:, 1].mean()

    res = cc.patch(convnet, images, other, m, site="conv1", unit="channel", ablation="mean")
    mean = cc.capture(convnet, other, sites=["conv1"])["conv1"].mean(0)
    for c in range(4):

        def put(a, s, c=c):
            a = a.clone()
            a[:, c] = mean[c]
            return a

        with torch.no_grad(), cc.hooks(convnet, {"conv1": put}):
            expected = float(m(convnet(images)))
        assert float(res.values[c]) == pytest.approx(expected, abs=1e-6)


BAD = [
    (dict(ablation="half"), cc.ConfigError, "ablation"),
    (dict(ablation="patch", corrupt=None), cc.ConfigError, "corrupt"),
    (dict(ablation=None, corrupt=None), cc.ConfigError, "corrupt"),
    (dict(ablation="zero", reference="x"), cc.ConfigError, "reference"),
    (dict(ablation="mean", reference=torch.zeros(3, 1, 5, 5)), cc.ShapeMismatchError, "reference"),
    (dict(ablation="mean", direction="denoise"), cc.ConfigError, "direction"),
    (dict(ablation="resample", seed=-1), cc.ConfigError, "seed"),
]


@pytest.mark.parametrize("method", ["attribution_patching", "eap", "eap-ig", "edge_patching"])
@pytest.mark.parametrize(("change", "error", "match"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_ablations_are_clear_errors_and_leave_no_hook(
    convnet, images, method, change, error, match
):
    if "direction" in change and method == "edge_patching":
        pytest.skip("edge patching has no direction")
    options = dict(change)
    corrupt = options.pop("corrupt", images.flip(0))
    if method == "attribution_patching":
        options.update(site="conv1", unit="channel")
    with pytest.raises(error, match=match):
        attribute(convnet, images, corrupt, lambda o: o.mean(), method=method, **options)
    assert cc.hook_count(convnet) == 0
