"""The hand-set corner detector: its claims checked by behaviour and intervention, not weights."""

from __future__ import annotations

import pytest
import torch

import circuits as cc
from circuits.zoo.corner import CORNER_CIRCUIT, CornerCircuit, corner_cnn, corner_images

N_CONV1, N_CONV2 = 4, 3


@pytest.fixture(scope="module")
def model():
    return corner_cnn()


@pytest.fixture(scope="module")
def data():
    return corner_images(512, seed=0)


def _logits(model, images, fns=None):
    with torch.no_grad(), cc.hooks(model, fns or {}):
        return model(images)[:, 0]


def _zero(channel):
    def fn(act, site):
        act = act.clone()
        act[:, channel] = 0
        return act

    return fn


def _junction_pixels(images):
    """On pixels with an on horizontal neighbour and an on vertical neighbour (any corner)."""
    x = torch.nn.functional.pad(images[:, 0], (1, 1, 1, 1))
    on = x[:, 1:-1, 1:-1] > 0
    horizontal = (x[:, 1:-1, :-2] > 0) | (x[:, 1:-1, 2:] > 0)
    vertical = (x[:, :-2, 1:-1] > 0) | (x[:, 2:, 1:-1] > 0)
    return on & horizontal & vertical


def _line(kind, size=16):
    image = torch.zeros(1, 1, size, size)
    if kind == "horizontal":
        image[0, 0, 7, 3:12] = 1
    else:
        image[0, 0, 3:12, 7] = 1
    return image


# (1) behaviour


def test_classifies_generated_dataset_exactly(model, data):
    images, labels = data
    assert images.shape == (512, 1, 16, 16) and labels.shape == (512,)
    assert int(labels.sum()) == 256  # balanced
    assert set(images.unique().tolist()) <= {0.0, 1.0}
    assert ((_logits(model, images) > 0).long() == labels).all()


def test_labels_match_the_drawing_not_the_model(data):
    images, labels = data
    has_junction = _junction_pixels(images).flatten(1).any(1)
    assert torch.equal(has_junction.long(), labels)
    assert images[:, 0, [0, -1], :].sum() == 0 and images[:, 0, :, [0, -1]].sum() == 0


def test_generator_is_seeded_and_other_sizes_work(model):
    a, la = corner_images(20, seed=3)
    b, lb = corner_images(20, seed=3)
    c, _ = corner_images(20, seed=4)
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    for size in (8, 11, 24):
        images, labels = corner_images(101, size=size, seed=1)
        assert images.shape == (101, 1, size, size) and int(labels.sum()) == 50
        assert ((_logits(model, images) > 0).long() == labels).all()


# (2) what the conv1 channels detect


def test_conv1_orientation_channels(model):
    for kind, on, off in (("horizontal", 0, 1), ("vertical", 1, 0)):
        acts = cc.capture(model, _line(kind), sites="relu1")["relu1"][0]
        assert acts[on].max() > 0, kind
        assert acts[off].max() == 0, kind
        assert acts[2:].max() == 0, kind  # the diagonal channels ignore straight lines
        assert _logits(model, _line(kind)).item() < 0  # a lone line is no corner


# (3) the circuit, by intervention


@pytest.mark.parametrize("site", ["conv1", "relu1"])
def test_circuit_channels_are_necessary(model, data, site):
    images, labels = data
    corners = images[labels == 1]
    clean = _logits(model, corners)
    for channel in (0, 1):
        ablated = _logits(model, corners, {site: _zero(channel)})
        assert (ablated != clean).all()
        assert (ablated < 0).all()  # without either orientation no corner survives


def test_irrelevant_channels_change_nothing(model, data):
    images, _ = data
    clean = _logits(model, images)
    sites = {"conv1": "relu1", "conv2": "relu2"}
    for site, channel in sorted(CORNER_CIRCUIT.irrelevant):
        for name in (site, sites[site]):
            assert torch.equal(_logits(model, images, {name: _zero(channel)}), clean), name
    both = {"relu1": _zero([2, 3]), "relu2": _zero([1, 2])}
    assert torch.equal(_logits(model, images, both), clean)


def test_edges_match_intervention_and_weights(model, data):
    images = data[0][:64]
    base = cc.capture(model, images, sites="conv2")["conv2"]
    noise = torch.rand(images.shape[0], 16, 16, generator=torch.Generator().manual_seed(0))
    moved = set()
    for source in range(N_CONV1):

        def perturb(act, site, source=source):
            act = act.clone()
            act[:, source] += noise
            return act

        with cc.hooks(model, {"relu1": perturb}):
            pre = cc.capture(model, images, sites="conv2")["conv2"]
        for target in range(N_CONV2):
            if not torch.equal(pre[:, target], base[:, target]):
                moved.add((source, target))
    weights = model.conv2.weight.detach()
    nonzero = {(s, t) for t in range(N_CONV2) for s in range(N_CONV1) if weights[t, s].any()}
    assert moved == nonzero
    into_output = {(s, t) for s, t in moved if ("conv2", t) == CORNER_CIRCUIT.output}
    assert into_output == {(e[1], e[3]) for e in CORNER_CIRCUIT.edges}
    for s, t in moved - into_output:  # every other edge joins two irrelevant channels
        assert {("conv1", s), ("conv2", t)} <= CORNER_CIRCUIT.irrelevant


def test_circuit_data(model):
    circuit = model.circuit
    assert circuit is CORNER_CIRCUIT
    assert circuit.output == ("conv2", 0)
    assert circuit.edges == {("conv1", 0, "conv2", 0), ("conv1", 1, "conv2", 0)}
    every = {("conv1", c) for c in range(N_CONV1)} | {("conv2", c) for c in range(N_CONV2)}
    assert circuit.relevant | circuit.irrelevant == every
    assert not circuit.relevant & circuit.irrelevant
    with pytest.raises(cc.ConfigError, match="both"):
        CornerCircuit(
            edges=circuit.edges, output=("conv2", 0), irrelevant=frozenset({("conv2", 0)})
        )


# (4) distractors are real


def test_irrelevant_channels_are_active(model, data):
    images, labels = data
    cache = cc.capture(model, images, sites=["relu1", "relu2"])
    for site, channel in CORNER_CIRCUIT.irrelevant:
        act = cache[site.replace("conv", "relu")][:, channel].flatten(1).amax(1)
        for label in (0, 1):  # active in both classes, so it carries no label information alone
            assert (act[labels == label] > 0).float().mean() > 0.25, (site, channel, label)


# (5) capture


def test_capture_axes(model, data):
    images = data[0][:5]
    cache = cc.capture(model, images, sites=["relu1", "relu2"])
    assert cache["relu1"].shape == (5, 4, 16, 16) and cache["relu2"].shape == (5, 3, 16, 16)
    for name in ("relu1", "relu2"):
        assert cache.sites[name].axes == ("batch", "channel", "h", "w")
    assert cc.hook_count(model) == 0
    table = cc.sites(model, images)
    assert list(table["site"]) == ["conv1", "relu1", "conv2", "relu2", "pool", "readout"]
    assert (table["calls"] == 1).all()


# bad inputs


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 0}, {"n": -3}, {"n": 2.5}, {"n": True}, {"n": 4, "size": 7}, {"n": 4, "size": 9.0}],
)
def test_bad_generator_arguments(kwargs):
    n = kwargs.pop("n")
    with pytest.raises(cc.ConfigError):
        corner_images(n, **kwargs)


def test_bad_model_input(model):
    for bad in (torch.zeros(2, 16, 16), torch.zeros(2, 3, 16, 16), [[0.0]]):
        with pytest.raises(cc.InputError, match="batch x 1 x h x w"):
            model(bad)
