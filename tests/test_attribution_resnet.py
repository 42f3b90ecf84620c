"""Channel edges on residual conv nets: a hand-set net whose circuit runs through a skip connection,
real interventions on each sampled edge, a random torchvision-style ResNet (completeness, graph,
hook hygiene, model untouched) and the graphs the method must refuse."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import circuits as cc
from circuits.attribution import attribute, edge_attribution, integrated_gradients
from circuits.graph import build_graph
from circuits.graph.schema import validate


def logit0(out: torch.Tensor) -> torch.Tensor:
    return out[:, 0].sum()


# SkipNet's nonzero weight slices (out, in) and its circuit (edges with a nonzero score).
SKIP_NET_SLICES = {
    "conv1": [(0, 0), (1, 1), (2, 0)],
    "conv2": [(0, 2), (1, 1)],
    "conv3": [(0, 0), (1, 1), (1, 2)],
}
SKIP_NET_CIRCUIT = {
    ("conv1:input[0]", "conv1[0]"), ("conv1:input[0]", "conv1[2]"), ("conv1[2]", "conv2[0]"),
    ("conv1[0]", "conv3[0]"), ("conv2[0]", "conv3[0]"), ("conv3[0]", "output"),
}  # fmt: skip


def _sites(frame) -> list[tuple[str, str]]:
    """(source site, target site) of each row of an edge frame: keys without channel indices."""
    return [
        (s.split("[")[0], t.split("[")[0])
        for s, t in zip(frame["source"], frame["target"], strict=True)
    ]


class SkipNet(nn.Module):
    """conv1 -> relu -> conv2 -> relu, plus an identity skip around conv2, -> conv3 -> tanh.

    The metric reads output channel 0. By construction (the weight slices SKIP_NET_SLICES) the
    circuit is input[0] -> conv1[0] -> (skip) -> conv3[0] and input[0] -> conv1[2] -> conv2[0] ->
    conv3[0]; conv1[0] reaches conv3 only through the skip. Input channel 1 and every other channel
    change between the runs but reach nothing the metric reads (distractors), and conv2[2] is dead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        gen = torch.Generator().manual_seed(0)
        for name, pairs in SKIP_NET_SLICES.items():
            weight = getattr(self, name).weight
            weight.data.zero_()
            for o, i in pairs:  # positive kernels on positive images: every ReLU stays open
                weight.data[o, i] = 0.05 + 0.2 * torch.rand(3, 3, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        g = torch.relu(self.conv2(h)) + h
        return torch.tanh(self.conv3(g)).mean(dim=(2, 3))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: in-place ReLU (used twice), `out += identity`, and a 1x1 conv +
    batch norm shortcut where the shape changes. The shortcut is defined first but runs after
    conv2 (as in torchvision), so module order is not the order the convs run in."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else None
        )
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    """Stem (conv, bn, relu, max-pool), three BasicBlocks (the second downsamples), pool, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = BasicBlock(4, 4)
        self.layer2 = BasicBlock(4, 6, stride=2)
        self.layer3 = BasicBlock(6, 6)
        self.fc = nn.Linear(6, 2)
        gen = torch.Generator().manual_seed(1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.5
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):  # torchvision's initialisation keeps the scale
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", generator=gen)
            if isinstance(mod, nn.BatchNorm2d):  # random statistics, so eval mode matters
                mod.weight.data = 0.5 + torch.rand(mod.weight.shape, generator=gen)
                mod.running_mean = 0.3 * torch.randn(mod.running_mean.shape, generator=gen)
                mod.running_var = 0.5 + torch.rand(mod.running_var.shape, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        h = self.layer3(self.layer2(self.layer1(h)))
        return self.fc(h.mean(dim=(2, 3)))


# Which node feeds which conv (or the output) directly in TinyResNet, skips included.
FEEDS = {
    "input": ["conv1"],
    "conv1": ["layer1.conv1", "layer2.conv1", "layer2.downsample.0"],  # around layer1
    "layer1.conv1": ["layer1.conv2"],
    "layer1.conv2": ["layer2.conv1", "layer2.downsample.0"],
    "layer2.conv1": ["layer2.conv2"],
    "layer2.conv2": ["layer3.conv1", "output"],  # to the output around layer3
    "layer2.downsample.0": ["layer3.conv1", "output"],
    "layer3.conv1": ["layer3.conv2"],
    "layer3.conv2": ["output"],
}
SKIPS = [("conv1", "layer2.conv1"), ("conv1", "layer2.downsample.0"),
         ("layer2.conv2", "output"), ("layer2.downsample.0", "output")]  # fmt: skip


@pytest.fixture(scope="module")
def resnet():
    gen = torch.Generator().manual_seed(2)
    return (
        TinyResNet().eval(),
        torch.randn(3, 3, 8, 8, generator=gen),
        torch.randn(3, 3, 8, 8, generator=gen),
    )


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_skip_net_edges_nonzero_exactly_on_the_circuit(method):
    gen = torch.Generator().manual_seed(4)
    clean, corrupt = torch.rand(4, 2, 6, 6, generator=gen), torch.rand(4, 2, 6, 6, generator=gen)
    res = attribute(SkipNet(), clean, corrupt, logit0, method=method)
    frame = res.to_frame()
    found = {(r.source, r.target) for r in frame.itertuples() if abs(r.score) > 1e-7}
    assert found == SKIP_NET_CIRCUIT  # precision and recall 1
    assert frame.loc[frame["score"].abs() > 1e-7, "score"].abs().min() > 1e-3
    assert set(_sites(frame)) == {("conv1:input", "conv1"), ("conv1", "conv2"), ("conv1", "conv3"),
                      ("conv2", "conv3"), ("conv3", "output")}  # fmt: skip
    assert len(frame) == 2 * 3 + 3 * 3 + 3 * 2 + 3 * 2 + 2  # every channel pair of each block


def test_resnet_edges_match_real_interventions(resnet):
    """Each sampled edge score is d metric / d eps of a real run in which eps times that edge's
    contribution is added at the target: the change of the target conv's input when the source
    channel alone takes its corrupted value (every other conv frozen at its clean value), pushed
    through the one weight slice of the edge. Output edges: eps times the source channel's change
    added to its output with every other conv frozen."""
    model, clean, corrupt = resnet
    res = edge_attribution(model, clean, corrupt, logit0, method="eap")
    frame = res.to_frame().set_index(["source", "target"])["score"]
    convs = {name: mod for name, mod in model.named_modules() if isinstance(mod, nn.Conv2d)}
    base = cc.capture(model, clean, sites=list(convs))
    moved = cc.capture(model, corrupt, sites=list(convs))
    checked = 0
    for sender, targets in FEEDS.items():
        for target in targets:
            for c, c2 in [(0, 1), (2, 3)]:
                ref = _edge_effect(model, clean, corrupt, convs, base, moved, sender, c, target, c2)
                key = f"conv1:input[{c}]" if sender == "input" else f"{sender}[{c}]"
                got = frame[key, "output" if target == "output" else f"{target}[{c2}]"]
                assert got == pytest.approx(ref, rel=1e-4, abs=1e-6), (sender, target, c, c2)
                checked += 1
    assert checked == 2 * 14


def _edge_effect(model, clean, corrupt, convs, base, moved, sender, c, target, c2) -> float:
    """The reference for one edge from hooks and torch alone (see the test's docstring)."""
    if sender == "input":
        x = clean.clone()
        x[:, c] = corrupt[:, c]
    else:
        x = clean

    def frozen(name, eps=None):
        def fn(act, site):
            out = base[name].clone()
            if name == sender:
                change = moved[name][:, c] - base[name][:, c]
                out[:, c] = out[:, c] + (change if eps is None else eps * change)
            return out

        return fn

    eps = torch.zeros((), requires_grad=True)
    if target == "output":
        with cc.hooks(model, {name: frozen(name, eps) for name in convs}):
            value = logit0(model(clean))
    else:
        site = f"{target}:input"
        with torch.no_grad(), cc.hooks(model, {name: frozen(name) for name in convs}):
            patched = cc.capture(model, x, sites=[site])[site]
        delta = patched - cc.capture(model, clean, sites=[site])[site]
        conv = convs[target]
        w = torch.zeros_like(conv.weight)
        w[c2, c] = conv.weight[c2, c]
        push = F.conv2d(delta, w.detach(), None, conv.stride, conv.padding)
        with cc.hooks(model, {target: lambda act, site: act + eps * push}):
            value = logit0(model(clean))
    (grad,) = torch.autograd.grad(value, [eps])
    return float(grad)


def test_random_resnet_graph_completeness_and_hygiene(resnet):
    model, clean, corrupt = resnet
    before = model(clean).detach().clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    res = edge_attribution(
        model, clean, corrupt, logit0, method="eap-ig", steps=256, rule="riemann_trapezoid",
        max_batch=400,
    )  # fmt: skip
    blocks = res.scores.isnan().logical_not()
    assert torch.isfinite(res.scores[blocks]).all()
    frame = res.to_frame()
    want = {("conv1:input" if s == "input" else s, t) for s, ts in FEEDS.items() for t in ts}
    assert set(_sites(frame)) == want  # every direct connection, skips included, nothing else
    skip_edges = frame[[pair in SKIPS for pair in _sites(frame)]]
    assert len(skip_edges) == 4 * 6 + 4 * 6 + 6 + 6 and (skip_edges["score"].abs() > 0).any()
    ig = integrated_gradients(model, corrupt, clean, logit0, steps=256, rule="riemann_trapezoid")
    assert float(res.total) == pytest.approx(float(ig.total), rel=1e-4)
    assert float(res.expected) == pytest.approx(res.corrupt_value - res.clean_value)
    assert res.completeness_gap < 0.03  # integrated gradients converge slowly across ReLU kinks
    g = build_graph(res)
    validate(g)
    assert g.has_edge("conv1[0]", "layer2.conv1[1]") and g.has_edge("layer2.conv2[0]", "output")
    assert cc.hook_count(model) == 0
    assert torch.equal(model(clean), before)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_resnet_layers_name_a_subgraph(resnet):
    """With layers, the input node is the first named conv's input and the other convs are part of
    the paths before or after the named ones; edges between named convs keep their scores."""
    model, clean, corrupt = resnet
    names = ["layer2.conv1", "layer2.conv2", "layer2.downsample.0", "layer3.conv1", "layer3.conv2"]
    sub = attribute(model, clean, corrupt, logit0, method="eap", layers=names)
    full = attribute(model, clean, corrupt, logit0, method="eap").to_frame()
    frame = sub.to_frame()
    assert set(frame["source"].str.split("[").str[0]) == {"layer2.conv1:input", *names}
    inner = frame[~frame["source"].str.startswith("layer2.conv1:input")]
    ref = full.set_index(["source", "target"])["score"]
    torch.testing.assert_close(
        torch.tensor(inner["score"].to_numpy()),
        torch.tensor(ref.loc[list(zip(inner["source"], inner["target"], strict=True))].to_numpy()),
    )
    x_edges = frame[frame["source"].str.startswith("layer2.conv1:input")]
    assert set(x_edges["target"].str.split("[").str[0]) == {"layer2.conv1", "layer2.downsample.0"}


class InPlaceNet(nn.Module):
    """Convs whose outputs in-place ops rewrite (+=, relu_), with the input added into both later
    convs' inputs; with inplace=False the same function out of place."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv3 = nn.Conv2d(3, 2, 3, padding=1)
        gen = torch.Generator().manual_seed(6)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            h = self.conv1(x)
            h += x
            out = self.conv2(h.relu_())
            out += h
            return self.conv3(out.relu_()).mean(dim=(2, 3))
        h = torch.relu(self.conv1(x) + x)
        return self.conv3(torch.relu(self.conv2(h) + h)).mean(dim=(2, 3))


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_in_place_ops_on_conv_outputs_change_nothing(resnet, method):
    _, clean, corrupt = resnet
    plain = attribute(InPlaceNet(inplace=False), clean, corrupt, logit0, method=method)
    res = attribute(InPlaceNet(inplace=True), clean, corrupt, logit0, method=method)
    torch.testing.assert_close(res.scores, plain.scores, equal_nan=True)
    pairs = set(_sites(res.to_frame()))
    assert {("conv1:input", "conv2"), ("conv1:input", "conv3"), ("conv1", "conv3")} <= pairs


class Mixer(nn.Module):
    """Two convs joined by `op` (a channel flip, a concatenation)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(6 if op == "cat" else 3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.cat([h, h], dim=1) if self.op == "cat" else h.flip(1)
        return self.conv2(h).mean(dim=(2, 3))


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.conv(x))).mean(dim=(2, 3))


def test_graphs_that_cannot_be_paired_raise(resnet):
    model, clean, corrupt = resnet
    cases = [
        (Mixer("flip"), {}, cc.ModelError, "mixes channels"),
        (Mixer("cat"), {}, cc.ModelError, "reads 6 channels but 'conv1'"),
        (Twice(), {}, cc.ModelError, "more than once"),
        (model, dict(layers=["layer1.conv1", "layer2.conv1"]), cc.ModelError, "mixes channels"),
        (model, dict(layers=["layer2.downsample.0", "layer2.conv2"]), cc.ModelError,
         "runs them as ['layer2.conv2', 'layer2.downsample.0']"),
        (model, dict(layers=["layer2.conv1", "layer2.conv1"]), cc.InputError, "distinct"),
        (model, dict(layers=["layer2.bn1"]), cc.ModelError, "not a conv layer"),
        (model, dict(layers=["layer2.conv9"]), cc.SiteNotFoundError, "layer2.conv1"),
        (model, dict(steps=0), cc.ConfigError, "steps"),
    ]  # fmt: skip
    for net, options, error, phrase in cases:
        method = "eap-ig" if "steps" in options else "eap"
        x, y = (clean, corrupt) if net is model else (clean[:, :2], corrupt[:, :2])
        with pytest.raises(error, match=re.escape(phrase)):
            attribute(net, x, y, logit0, method=method, **options)
        assert cc.hook_count(net) == 0
    model.train()
    try:
        with pytest.raises(cc.ModelError, match=r"model\.eval\(\)"):
            attribute(model, clean, corrupt, logit0, method="eap")
    finally:
        model.eval()
    with pytest.raises(cc.InputError, match="float tensor"):
        attribute(model, clean.long(), corrupt.long(), logit0, method="eap-ig")


def test_no_hook_left_when_the_metric_fails(resnet):
    model, clean, corrupt = resnet
    calls = {"n": 0}

    def flaky(out):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("metric failed mid-way")
        return out[:, 0].sum()

    with pytest.raises(RuntimeError, match="mid-way"):
        attribute(model, clean, corrupt, flaky, method="eap-ig", steps=8, max_batch=6)
    assert cc.hook_count(model) == 0


# -- faithfulness and discover on residual nets ---------------------------------------------------


def test_discover_finds_the_skip_net_circuit():
    """Every edge outside SkipNet's circuit has a zero weight slice or reaches nothing the metric
    reads, so keeping the circuit alone is fully faithful, and nothing smaller is."""
    gen = torch.Generator().manual_seed(4)
    clean, corrupt = torch.rand(4, 2, 6, 6, generator=gen), torch.rand(4, 2, 6, 6, generator=gen)
    g = cc.discover(SkipNet(), clean, corrupt, logit0, method="eap", target=0.999)
    assert set(g.edges) == SKIP_NET_CIRCUIT
    assert g.graph["faithfulness"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("ablation", ["patch", "mean", "zero"])
def test_resnet_faithfulness_by_construction(resnet, ablation):
    """The edge-by-edge run (one masked conv per pattern of kept senders, skips and the 1x1
    shortcut included) with every edge kept is the model: faithfulness 1. Without the edges into
    the output, the output reads only ablated values: 0. Under patching, without the input's edges
    every later edge carries the corrupted run's own values: 0 again."""
    model, clean, corrupt = resnet
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = build_graph(edge_attribution(model, clean, corrupt, logit0, method="eap"))

    def score(edges):
        sub = g.edge_subgraph(edges).copy()
        return cc.faithfulness(model, sub, clean, corrupt, logit0, ablation=ablation)

    assert score(g.edges) == pytest.approx(1.0, abs=1e-5)
    assert score([e for e in g.edges if e[1] != "output"]) == pytest.approx(0.0, abs=1e-5)
    if ablation == "patch":
        inner = [e for e in g.edges if not e[0].startswith("conv1:input")]
        assert score(inner) == pytest.approx(0.0, abs=1e-5)
    assert cc.hook_count(model) == 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_discover_on_a_resnet_reaches_the_target(resnet):
    model, clean, corrupt = resnet
    g = cc.discover(model, clean, corrupt, logit0, method="eap")
    assert g.graph["faithfulness"] >= 0.8
    assert g.number_of_edges() < build_graph(edge_attribution(
        model, clean, corrupt, logit0, method="eap")).number_of_edges()  # fmt: skip
