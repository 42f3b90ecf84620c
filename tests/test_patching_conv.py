"""Activation patching on conv nets: the corner detector's known circuit, ablations against
hand-made interventions, the result object, and bad inputs that must leave the model as it was."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch

import circuits as cc
from circuits.patching import PatchingResult, patch
from circuits.zoo import corner_cnn, corner_images


def mean_output(out):
    return out.mean()


@pytest.fixture(scope="module")
def corner():
    model = corner_cnn()
    images, labels = corner_images(48, seed=0)
    return model, images[labels == 1][:16], images[labels == 0][:16]


def _channels(res: PatchingResult, sites):
    """{(site, channel): effect} for a [site, channel] result (NaN padding left out)."""
    return {
        (site, c): float(res.effects[s, c])
        for s, site in enumerate(sites)
        for c in range(res.values.shape[1])
        if not torch.isnan(res.values[s, c])
    }


@pytest.mark.parametrize(
    "how",
    [dict(direction="denoise"), dict(direction="noise"), dict(ablation="zero")],
    ids=["denoise", "noise", "zero"],
)
def test_corner_circuit_channels_and_only_they_matter(corner, how):
    model, clean, corrupt = corner
    sites = ["conv1", "conv2"]
    res = patch(
        model,
        clean,
        None if "ablation" in how else corrupt,
        mean_output,
        site=sites,
        unit="channel",
        **how,
    )
    assert res.axes == ("site", "channel") and res.coords["site"] == ("conv1", "conv2")
    effects = _channels(res, sites)
    assert set(effects) == model.circuit.relevant | model.circuit.irrelevant
    for channel in model.circuit.relevant:
        assert effects[channel] != 0, channel
    for channel in model.circuit.irrelevant:
        assert effects[channel] == 0.0, channel  # exactly: the readout weight is 0


def test_channel_by_location(corner):
    model, clean, _ = corner
    res = patch(
        model,
        clean[:4],
        None,
        mean_output,
        site="relu1",
        unit=("channel", "h", "w"),
        ablation="zero",
    )
    assert res.values.shape == (4, 16, 16) and res.axes == ("channel", "h", "w")
    touched = (res.effects != 0).flatten(1).any(1)
    assert touched.tolist() == [True, True, False, False]  # horizontal, vertical; not diagonals
    frame = res.to_frame()
    assert list(frame.columns) == ["channel", "h", "w", "value", "effect"]
    assert len(frame) == 4 * 16 * 16


def _manual(model, images, site, fn):
    with torch.no_grad(), cc.hooks(model, {site: lambda act, s: fn(act)}):
        return float(model(images).mean())


def test_zero_and_mean_ablation_match_hand_made_hooks(convnet, images):
    reference = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    zero = patch(convnet, images, None, mean_output, site="conv1", unit="channel", ablation="zero")
    mean = patch(
        convnet,
        images,
        None,
        mean_output,
        site="conv1",
        unit="channel",
        ablation="mean",
        reference=reference,
    )
    ref_act = cc.capture(convnet, reference, sites=["conv1"])["conv1"].mean(0)
    for c in range(4):

        def zeroed(act, c=c):
            act = act.clone()
            act[:, c] = 0
            return act

        def averaged(act, c=c):
            act = act.clone()
            act[:, c] = ref_act[c]
            return act

        assert float(zero.values[c]) == pytest.approx(
            _manual(convnet, images, "conv1", zeroed), abs=1e-6
        )
        assert float(mean.values[c]) == pytest.approx(
            _manual(convnet, images, "conv1", averaged), abs=1e-6
        )
    assert cc.hook_count(convnet) == 0


def test_resample_ablation(convnet, images):
    same = images[:1].expand(4, -1, -1, -1).contiguous()  # resampling a copy changes nothing
    res = patch(convnet, same, None, mean_output, site="conv2", unit="channel", ablation="resample")
    assert torch.equal(res.effects, torch.zeros(4))
    a = patch(
        convnet,
        images,
        None,
        mean_output,
        site="conv2",
        unit="channel",
        ablation="resample",
        seed=1,
    )
    b = patch(
        convnet,
        images,
        None,
        mean_output,
        site="conv2",
        unit="channel",
        ablation="resample",
        seed=1,
    )
    assert torch.equal(a.values, b.values) and a.effects.abs().max() > 0
    assert a.method == "resample" and a.corrupt_value is None


def test_chunking_does_not_change_results(convnet, images):
    whole = patch(
        convnet, images, None, mean_output, site="conv1", unit=("channel", "h"), ablation="zero"
    )
    one_by_one = patch(
        convnet,
        images,
        None,
        mean_output,
        site="conv1",
        unit=("channel", "h"),
        ablation="zero",
        max_batch=3,
        progress=False,
    )
    small = patch(
        convnet,
        images,
        None,
        mean_output,
        site="conv1",
        unit=("channel", "h"),
        ablation="zero",
        memory=1,
    )
    # equal up to rounding: a convolution may sum in another order at another batch size
    for other in (one_by_one, small):
        torch.testing.assert_close(other.values, whole.values, rtol=0, atol=1e-6)


def test_result_views(convnet, images):
    corrupt = images.flip(-1)  # mirrored: the batch's mean output changes (a reordered batch's
    # does not, and normalising needs the clean and corrupted metrics apart)
    res = patch(
        convnet,
        images,
        corrupt,
        mean_output,
        site=["conv1", "conv2"],
        unit={"channel": [0, 2], "h": None},
    )
    assert res.values.shape == (2, 2, 6) and res.coords["channel"] == (0, 2)
    assert torch.allclose(res.effects, res.values - res.baseline)
    assert res.baseline == res.corrupt_value  # denoising runs the corrupted input
    norm = res.normalised()
    assert torch.allclose(
        norm, (res.values - res.corrupt_value) / (res.clean_value - res.corrupt_value)
    )
    frame = res.to_frame()
    assert {"site", "channel", "h", "value", "effect", "normalised"} <= set(frame.columns)
    assert len(res.top(3)) == 3
    assert "denoise" in repr(res)
    whole = patch(convnet, images, corrupt, mean_output, site="conv1")  # the whole site at once
    assert whole.values.shape == () and float(whole.normalised()) == pytest.approx(1.0, abs=1e-5)
    for fig in (
        whole.plot(),
        patch(convnet, images, corrupt, mean_output, site="conv1", unit="channel").plot(),
        res.plot(quantity="normalised"),
        res.plot(quantity="value"),
    ):
        assert isinstance(fig, go.Figure)
    with pytest.raises(cc.ConfigError, match="quantity"):
        res.plot(quantity="size")
    ablated = patch(convnet, images, None, mean_output, site="conv1", ablation="zero")
    with pytest.raises(cc.MetricError, match="normalise"):
        ablated.normalised()


BAD = [
    (dict(corrupt=torch.zeros(3, 1, 5, 5)), cc.ShapeMismatchError, "same shapes"),
    (dict(corrupt=torch.zeros(2, 1, 6, 6)), cc.ShapeMismatchError, "same shapes"),
    (dict(metric=lambda out: out[:, 0]), cc.MetricError, "scalar"),
    (dict(metric=lambda out: 1.0), cc.MetricError, "scalar"),
    (dict(metric="mean"), cc.ConfigError, "metric"),
    (dict(unit="head"), cc.InputError, "channel, h, w"),
    (dict(unit="batch"), cc.InputError, "batch"),
    (dict(unit={"channel": [7]}), cc.InputError, "out of range"),
    (dict(site="conv3"), cc.SiteNotFoundError, "'conv1'"),
    (dict(site=["conv1", "conv1"]), cc.ConfigError, "twice"),
    (dict(site="blocks.{L}.hook_z"), cc.ModelError, "TransformerLens"),
    (dict(corrupt=None), cc.ConfigError, "ablation"),
    (dict(ablation="zero", direction="denoise"), cc.ConfigError, "direction"),
    (dict(ablation="zero", reference=torch.zeros(2, 1, 6, 6)), cc.ConfigError, "reference"),
    (dict(direction="sideways"), cc.ConfigError, "direction"),
    (dict(max_batch=0), cc.ConfigError, "max_batch"),
    (
        dict(corrupt=None, ablation="mean", reference=torch.zeros(2, 1, 5, 5)),
        cc.ShapeMismatchError,
        "shape",
    ),
    (dict(corrupt=None, ablation="half"), cc.ConfigError, "ablation"),
]


@pytest.mark.parametrize(("change", "error", "match"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_inputs_leave_the_model_as_it_was(convnet, images, change, error, match):
    with torch.no_grad():
        before = convnet(images)
    args = dict(
        clean=images, corrupt=images.flip(0), metric=mean_output, site="conv1", unit="channel"
    )
    args.update(change)
    with pytest.raises(error, match=match):
        patch(convnet, args.pop("clean"), args.pop("corrupt"), args.pop("metric"), **args)
    assert cc.hook_count(convnet) == 0
    with torch.no_grad():
        assert torch.equal(convnet(images), before)


def test_a_failing_metric_midway_leaves_no_hook(convnet, images):
    calls = []

    def flaky(out):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("metric broke")
        return out.mean()

    with pytest.raises(RuntimeError, match="metric broke"):
        patch(convnet, images, images.flip(0), flaky, site="conv1", unit="channel", max_batch=3)
    assert cc.hook_count(convnet) == 0
