"""The hook engine: interventions apply, and no hook ever survives, whatever fails."""

from __future__ import annotations

import pytest
import torch

import circuits as cc


def _manual(net, x, conv1_scale=1.0):
    """The forward pass written out by hand, with conv1's output scaled."""
    h = torch.relu(net.conv1(x) * conv1_scale)
    out = net.conv2(h) + h
    return net.head(torch.relu(out).mean(dim=(2, 3)))


def test_replacement_changes_downstream_exactly(convnet, images):
    with torch.no_grad(), cc.hooks(convnet, {"conv1": lambda act, site: act * 0.5}):
        patched = convnet(images)
    assert torch.allclose(patched, _manual(convnet, images, 0.5), atol=1e-6)


def test_input_site_and_site_object(convnet, images):
    seen = {}

    def look(act, site):
        seen["axes"], seen["shape"] = site.axes, site.shape

    with torch.no_grad(), cc.hooks(convnet, {"conv2:input": look}):
        convnet(images)
    assert seen == {"axes": ("batch", "channel", "h", "w"), "shape": (3, 4, 6, 6)}


def _outputs_unchanged(net, x, before):
    assert cc.hook_count(net) == 0
    with torch.no_grad():
        assert torch.equal(net(x), before)


def test_no_hook_survives_a_failing_forward(convnet, images):
    with torch.no_grad():
        before = convnet(images)
    convnet.fail = True
    with (
        pytest.raises(RuntimeError, match="deliberate"),
        cc.hooks(convnet, {"conv1": lambda a, s: a + 1}),
    ):
        convnet(images)
    convnet.fail = False
    _outputs_unchanged(convnet, images, before)


def test_no_hook_survives_a_failing_hook_function(convnet, images):
    with torch.no_grad():
        before = convnet(images)

    def broken(act, site):
        raise ValueError("user bug")

    with pytest.raises(ValueError, match="user bug"), cc.hooks(convnet, {"conv2": broken}):
        convnet(images)
    _outputs_unchanged(convnet, images, before)


def test_no_hook_survives_a_failing_metric(convnet, images):
    with torch.no_grad():
        before = convnet(images)

    def metric(out):
        raise ZeroDivisionError("metric bug")

    with pytest.raises(ZeroDivisionError):
        cc.capture(convnet, images, sites=["conv1", "relu2"], grads=True, metric=metric)
    _outputs_unchanged(convnet, images, before)


def test_unknown_site_lists_closest_and_registers_nothing(convnet, images):
    with pytest.raises(cc.SiteNotFoundError, match="'conv1'") as err:
        with cc.hooks(convnet, {"relu1": lambda a, s: None, "conv_1": lambda a, s: None}):
            pass
    assert "cc.sites" in str(err.value)
    assert cc.hook_count(convnet) == 0


def test_site_that_never_fires_is_an_error(convnet, images):
    with pytest.raises(cc.SiteNotFiredError, match="relu2"):
        with cc.hooks(convnet, {"relu2": lambda a, s: None}):
            pass  # the model never runs
    assert cc.hook_count(convnet) == 0


def test_wrong_replacement_shape(convnet, images):
    with torch.no_grad():
        before = convnet(images)
    with pytest.raises(cc.ShapeMismatchError, match=r"\(3, 4, 6, 6\)"):
        with cc.hooks(convnet, {"conv1": lambda a, s: a[:, :2]}):
            convnet(images)
    _outputs_unchanged(convnet, images, before)


@pytest.mark.parametrize("bad", [{"conv1": 3}, ["conv1"]])
def test_bad_hook_arguments(convnet, bad):
    with pytest.raises(cc.InputError), cc.hooks(convnet, bad):
        pass
    assert cc.hook_count(convnet) == 0
