"""Capture on plain torch modules, checked against the forward pass and autograd written by hand."""

from __future__ import annotations

import pytest
import torch

import circuits as cc


def _reference(net, x):
    """Activations and their gradients of out.sum(), by plain autograd with retain_grad."""
    conv1 = net.conv1(x)
    conv1.retain_grad()
    h = torch.relu(conv1)
    h.retain_grad()
    conv2 = net.conv2(h)
    conv2.retain_grad()
    out = net.head(torch.relu(conv2 + h).mean(dim=(2, 3)))
    out.sum().backward()
    return {"conv1": conv1, "relu1": h, "conv2": conv2}


def test_values_and_grads_match_autograd(convnet, images):
    ref = _reference(convnet, images)
    convnet.zero_grad()
    cache = cc.capture(
        convnet, images, sites=["conv1", "relu1", "conv2"], grads=True, metric=lambda o: o.sum()
    )
    for name, t in ref.items():
        assert torch.allclose(cache[name], t.detach(), atol=1e-6), name
        assert torch.allclose(cache.grads[name], t.grad, atol=1e-6), name
    assert cache["conv1"].min() < 0  # not rewritten by the in-place ReLU after it
    with torch.no_grad():
        assert cache.metric == pytest.approx(float(convnet(images).sum()), rel=1e-5)
    assert all(p.grad is None for p in convnet.parameters())  # capture leaves .grad alone


def test_grads_with_frozen_weights(convnet, images):
    ref = _reference(convnet, images)
    for p in convnet.parameters():
        p.requires_grad_(False)
    cache = cc.capture(convnet, images, sites=["conv1", "conv2"], grads=True, metric=torch.sum)
    assert torch.allclose(cache.grads["conv1"], ref["conv1"].grad, atol=1e-6)
    assert torch.allclose(cache.grads["conv2"], ref["conv2"].grad, atol=1e-6)


def test_memory_options(convnet, images):
    full = cc.capture(convnet, images, sites=["conv2"])["conv2"]
    part = cc.capture(
        convnet, images, sites=["conv2"], spatial=(slice(1, 3), [0, 5]), dtype=torch.float16
    )
    assert part["conv2"].dtype == torch.float16
    assert torch.allclose(part["conv2"].float(), full[:, :, 1:3][:, :, :, [0, 5]], atol=1e-2)
    assert part.sites["conv2"].shape == (3, 4, 2, 2)
    one = cc.capture(convnet, images, sites="conv2", spatial=(2, 4))
    assert torch.equal(one["conv2"], full[:, :, 2:3, 4:5])


def test_cache_is_read_only_and_reports(convnet, images):
    cache = cc.capture(convnet, images, sites=["conv1"])
    with pytest.raises(TypeError):
        cache["x"] = torch.zeros(1)  # type: ignore[index]
    with pytest.raises(cc.SiteNotFoundError, match="conv1"):
        cache["conv2"]
    with pytest.raises(cc.InputError, match="grads=True"):
        _ = cache.grads
    frame = cache.to_frame()
    assert frame.loc[0, "axes"] == "batch channel h w" and frame.loc[0, "shape"] == (3, 4, 6, 6)


def test_sites_lists_every_module(convnet, images):
    frame = cc.sites(convnet, images, inputs=True).set_index("site")
    assert frame.loc["conv2", "shape"] == (3, 4, 6, 6)
    assert frame.loc["head", "axes"] == "batch feature"
    assert frame.loc["conv1:input", "shape"] == (3, 1, 6, 6)
    assert frame["calls"].eq(1).all()
    assert cc.hook_count(convnet) == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sites": ["conv9"]}, cc.SiteNotFoundError, "conv1"),
        ({"sites": []}, cc.ConfigError, "empty"),
        ({"sites": ["conv1", "conv1"]}, cc.ConfigError, "twice"),
        ({"sites": ["conv1"], "grads": True}, cc.ConfigError, "metric"),
        ({"sites": ["conv1"], "grads": True, "metric": lambda o: o}, cc.MetricError, "scalar"),
        ({"sites": ["conv1"], "metric": lambda o: 1.0}, cc.MetricError, "float"),
        ({"sites": ["conv1"], "spatial": (1,)}, cc.ConfigError, "h_index"),
    ],
)
def test_bad_arguments(convnet, images, kwargs, error, match):
    with torch.no_grad():
        before = convnet(images)
    with pytest.raises(error, match=match):
        cc.capture(convnet, images, **kwargs)
    assert cc.hook_count(convnet) == 0
    with torch.no_grad():
        assert torch.equal(convnet(images), before)


def test_wrong_input_shape_is_an_input_error(convnet):
    with pytest.raises(cc.InputError, match=r"shape \(3, 6, 6\)"):
        cc.capture(convnet, torch.randn(3, 6, 6), sites=["conv1"])
    assert cc.hook_count(convnet) == 0


def test_module_called_twice_is_refused(images):
    relu = torch.nn.ReLU()
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), relu, torch.nn.Conv2d(2, 2, 1), relu)
    with pytest.raises(cc.InputError, match="more than once"):
        cc.capture(net, images, sites=["1"])
    assert cc.capture(net, images, sites=["2:input"])["2:input"].min() >= 0
