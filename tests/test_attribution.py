"""Attribution on conv nets: Captum's integrated gradients, exact patching, real interventions on
channel edges, the corner detector's known circuit, result views, bad inputs and hook hygiene."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients
from torch import nn

import circuits as cc
from circuits.attribution import IGPath, attribute, edge_attribution, integrated_gradients
from circuits.features import UnitBasis
from circuits.graph import build_graph
from circuits.graph.schema import KINDS, validate
from circuits.patching import patch
from circuits.zoo import CORNER_CIRCUIT, corner_cnn, corner_images

RULES = ["riemann_left", "riemann_right", "riemann_middle", "gausslegendre"]


class ConvStack(nn.Module):
    """A random sequential conv net: stride, max-pooling and padding between channel layers."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.conv1 = nn.Conv2d(2, 5, 3, padding=1)
        self.conv2 = nn.Conv2d(5, 4, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(4, 3, 2)
        self.head = nn.Linear(3, 2)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv1(x))
        h = self.pool(torch.relu(self.conv2(h)))
        return self.head(torch.tanh(self.conv3(h)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def corner():
    images, labels = corner_images(24, seed=0)
    clean = images[labels == 1][:8]
    corrupt = images[labels == 0][:8]  # no corner anywhere: the answer flips
    return corner_cnn(), clean, corrupt


@pytest.fixture(scope="module")
def stack():
    gen = torch.Generator().manual_seed(0)
    return (
        ConvStack().eval(),
        torch.randn(3, 2, 8, 8, generator=gen),
        torch.randn(3, 2, 8, 8, generator=gen),
    )


def logit0(out: torch.Tensor) -> torch.Tensor:
    return out[:, 0].sum()


@pytest.mark.parametrize("rule", RULES)
def test_input_ig_equals_captum(stack, rule):
    model, clean, corrupt = stack
    ours = integrated_gradients(model, clean, corrupt, logit0, unit="all", steps=16, rule=rule)
    theirs = IntegratedGradients(model).attribute(
        clean, baselines=corrupt, target=0, n_steps=16, method=rule
    )
    torch.testing.assert_close(ours.scores, theirs, rtol=1e-4, atol=1e-6)


def test_trapezoid_is_captums_rescaled(stack):
    """Captum's trapezoid weights sum to 1 - 1/n; ours sum to 1 (a true trapezoid rule)."""
    model, clean, corrupt = stack
    n = 16
    ours = integrated_gradients(
        model, clean, corrupt, logit0, unit="all", steps=n, rule="riemann_trapezoid"
    )
    theirs = IntegratedGradients(model).attribute(
        clean, baselines=corrupt, target=0, n_steps=n, method="riemann_trapezoid"
    )
    torch.testing.assert_close(ours.scores, theirs * n / (n - 1), rtol=1e-4, atol=1e-6)
    assert sum(IGPath(steps=n, rule="riemann_trapezoid").points()[1]) == pytest.approx(1.0)


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_middle"])
def test_corner_input_ig_equals_captum(corner, rule):
    model, clean, corrupt = corner
    ours = integrated_gradients(model, clean, corrupt, logit0, unit="all", steps=8, rule=rule)
    theirs = IntegratedGradients(model).attribute(
        clean, baselines=corrupt, target=0, n_steps=8, method=rule
    )
    torch.testing.assert_close(ours.scores, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_layer_ig_equals_captum(stack, layer):
    model, clean, corrupt = stack
    ours = integrated_gradients(model, clean, corrupt, logit0, site=layer, unit="all", steps=12,
                                max_batch=9)  # fmt: skip
    lig = LayerIntegratedGradients(model, getattr(model, layer))
    theirs = lig.attribute(clean, baselines=corrupt, target=0, n_steps=12, method="gausslegendre")
    torch.testing.assert_close(ours.scores, theirs, rtol=1e-4, atol=1e-6)


def test_completeness_below_one_percent_at_64_steps(corner):
    model, clean, corrupt = corner
    for site in (None, "conv1", "conv2"):
        res = attribute(model, clean, corrupt, logit0, method="integrated_gradients", site=site,
                        steps=64)  # fmt: skip
        assert res.completeness_gap < 0.01, (site, res.completeness_gap)
        assert float(res.expected) == pytest.approx(8.0)  # 8 corners lost: +0.5 -> -0.5 each
    res = integrated_gradients(model, clean, None, logit0, steps=64)  # zero baseline
    assert res.completeness_gap < 0.01 and float(res.expected) == pytest.approx(8.0)


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_attribution_patching_equals_exact_patching_where_linear(direction):
    """Where the metric is linear in the site, the first-order estimate is exact."""
    model = ConvStack().eval()
    gen = torch.Generator().manual_seed(5)
    clean, corrupt = torch.randn(4, 2, 8, 8, generator=gen), torch.randn(4, 2, 8, 8, generator=gen)
    ours = attribute(model, clean, corrupt, logit0, site="head:input", unit="feature",
                     direction=direction)  # fmt: skip
    exact = patch(model, clean, corrupt, logit0, site="head:input", unit="feature",
                  direction=direction)  # fmt: skip
    torch.testing.assert_close(ours.scores, exact.effects.to(ours.scores), rtol=1e-4, atol=1e-5)


def test_conv_edges_match_real_interventions(stack):
    """Each edge score is d metric / d eps of a real run in which only that edge's contribution
    (the conv of the source channel's change with that weight slice) is added to the target."""
    model, clean, corrupt = stack
    res = edge_attribution(model, clean, corrupt, logit0, method="eap")
    frame = res.to_frame().set_index(["source", "target"])["score"]
    convs = {"conv1": model.conv1, "conv2": model.conv2, "conv3": model.conv3}
    inputs = cc.capture(model, clean, sites=[f"{n}:input" for n in convs])
    corrupt_inputs = cc.capture(model, corrupt, sites=[f"{n}:input" for n in convs])
    checked = 0
    for name, conv in convs.items():
        diff = corrupt_inputs[f"{name}:input"] - inputs[f"{name}:input"]
        for c in range(conv.in_channels):
            for c2 in range(0, conv.out_channels, 2):
                w = torch.zeros_like(conv.weight)
                w[c2, c] = conv.weight[c2, c]
                delta = nn.functional.conv2d(diff, w, None, conv.stride, conv.padding).detach()
                eps = torch.zeros((), requires_grad=True)
                with cc.hooks(model, {name: lambda a, s, d=delta, e=eps: a + e * d}):
                    value = logit0(model(clean))
                (ref,) = torch.autograd.grad(value, [eps])
                source = f"{name}:input[{c}]" if name == "conv1" else _previous(name, c)
                assert frame[(source, f"{name}[{c2}]")] == pytest.approx(float(ref), rel=1e-4,
                                                                         abs=1e-6)  # fmt: skip
                checked += 1
    assert checked == 6 + 10 + 8
    out = cc.capture(model, clean, sites=["conv3"], grads=True, metric=logit0)
    moved = cc.capture(model, corrupt, sites=["conv3"])
    ref_out = ((moved["conv3"] - out["conv3"]) * out.grads["conv3"]).sum(dim=(0, 2, 3))
    got = torch.tensor([frame[(f"conv3[{c}]", "output")] for c in range(3)])
    torch.testing.assert_close(got, ref_out, rtol=1e-4, atol=1e-6)


def _previous(name: str, c: int) -> str:
    return {"conv2": f"conv1[{c}]", "conv3": f"conv2[{c}]"}[name]


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_corner_edges_nonzero_exactly_on_the_circuit(corner, method):
    model, clean, corrupt = corner
    res = attribute(model, clean, corrupt, logit0, method=method)
    frame = res.to_frame()
    inner = frame[
        frame["source"].str.startswith("conv1[") & frame["target"].str.startswith("conv2[")
    ]
    assert len(inner) == 12
    truth = {(f"{a}[{i}]", f"{b}[{j}]") for a, i, b, j in CORNER_CIRCUIT.edges}
    for row in inner.itertuples():
        if (row.source, row.target) in truth:
            assert abs(row.score) > 1e-3, row
        else:
            assert abs(row.score) < 1e-6, row
    out = frame[frame["target"] == "output"].set_index("source")["score"]
    assert (
        abs(out["conv2[0]"]) > 1e-3 and abs(out["conv2[1]"]) < 1e-6 and abs(out["conv2[2]"]) < 1e-6
    )


def test_eap_ig_input_edges_sum_to_input_integrated_gradients(stack):
    """The input's edges carry the whole gradient at the input, so their EAP-IG scores add up to
    integrated gradients at the input (noise direction: clean -> corrupt) with the same path."""
    model, clean, corrupt = stack
    res = edge_attribution(model, clean, corrupt, logit0, method="eap-ig", steps=32)
    ig = integrated_gradients(model, corrupt, clean, logit0, steps=32)  # input corrupt, base clean
    assert float(res.total) == pytest.approx(float(ig.total), rel=1e-4)
    assert float(res.expected) == pytest.approx(res.corrupt_value - res.clean_value)
    assert float(res.expected) == pytest.approx(float(ig.expected), rel=1e-5)


def test_result_views_and_graph(corner):
    model, clean, corrupt = corner
    res = attribute(model, clean, corrupt, logit0, method="eap-ig")
    nodes, edges = res.graph_frames()
    assert list(nodes.columns[:8]) == ["key", "kind", "site", "layer", "pos", "unit", "activation",
                                       "label"]  # fmt: skip
    assert set(nodes["kind"]) <= set(KINDS) and set(nodes["kind"]) == {"input", "channel", "output"}
    assert list(edges.columns) == ["source", "target", "weight", "method"]
    assert set(edges["source"]) | set(edges["target"]) <= set(nodes["key"])
    top = res.top_edges(3)
    assert len(top) == 3 and top["weight"].abs().is_monotonic_decreasing
    g = build_graph(res)
    validate(g)
    assert g.graph["method"] == "eap-ig" and g.number_of_edges() == len(edges)
    node_res = attribute(model, clean, corrupt, logit0, site=["conv1", "conv2"], unit="channel")
    assert node_res.axes == ("site", "channel") and node_res.scores.shape == (2, 4)
    assert torch.isnan(node_res.scores[1, 3])  # conv2 has 3 channels: padded
    nodes, edges = node_res.graph_frames()
    assert len(edges) == 7 and set(edges["target"]) == {"metric"}
    assert "_index" not in nodes.columns
    validate(build_graph(node_res))
    assert len(node_res.to_frame()) == 7
    assert "completeness gap" in repr(res)
    assert res.plot().data[0].type == "heatmap"
    assert node_res.plot().data[0].type == "heatmap"
    with pytest.raises(cc.InputError):
        attribute(model, clean, corrupt, logit0, site="conv1", unit="all").plot()
    with pytest.raises(cc.ConfigError):
        res.top_edges(0)


def test_units_and_positions_of_node_results(corner):
    model, clean, corrupt = corner
    full = attribute(model, clean, corrupt, logit0, site="conv2", unit="all")
    chan = attribute(model, clean, corrupt, logit0, site="conv2", unit=("channel", "h"))
    assert full.scores.shape == (8, 3, 16, 16) and chan.axes == ("channel", "h")
    torch.testing.assert_close(chan.scores, full.scores.sum(dim=(0, 3)))
    whole = attribute(model, clean, corrupt, logit0, site="conv2")
    assert whole.axes == () and float(whole.scores) == pytest.approx(float(full.scores.sum()))
    spatial = attribute(model, clean, corrupt, logit0, site="conv2", unit=("channel", "h", "w"))
    keys = spatial.graph_frames()[0]["key"]
    assert "conv2[0]@3,4" in set(keys)


def test_bad_inputs_raise_circuits_errors(corner):
    model, clean, corrupt = corner
    cases = [
        (dict(method="nope"), cc.ConfigError),
        (dict(method="eap", site="conv1"), cc.ConfigError),
        (dict(method="integrated_gradients", steps=0), cc.ConfigError),
        (dict(method="integrated_gradients", rule="simpson"), cc.ConfigError),
        (dict(method="integrated_gradients", site=["conv1", "conv2"]), cc.ConfigError),
        (dict(site="conv9"), cc.SiteNotFoundError),
        (dict(site="conv1", unit="head"), cc.InputError),
        (dict(site="conv1", direction="sideways"), cc.ConfigError),
        (dict(method="eap", layers=["conv2", "readout"]), cc.ModelError),
        (dict(method="eap", layers=["conv2", "conv1"]), cc.ModelError),
        (dict(method="eap", layers=["conv7"]), cc.SiteNotFoundError),
        (dict(method="eap-ig", max_batch=0), cc.ConfigError),
    ]
    for options, error in cases:
        with pytest.raises(error):
            attribute(model, clean, corrupt, logit0, **options)
    with pytest.raises(cc.ShapeMismatchError):
        attribute(model, clean, corrupt[:3], logit0)
    with pytest.raises(cc.MetricError):
        attribute(model, clean, corrupt, lambda out: out[:, 0])  # not a scalar
    with pytest.raises(cc.ConfigError):
        attribute(model, clean, corrupt, None)
    with pytest.raises(cc.ModelError):
        attribute("model", clean, corrupt, logit0)
    with pytest.raises(cc.ModelError):
        attribute(nn.Sequential(nn.Flatten(), nn.Linear(256, 1)), clean, corrupt, logit0,
                  method="eap")  # fmt: skip
    with pytest.raises(cc.InputError):
        attribute(model, clean.long(), corrupt.long(), logit0)  # no float input to attribute to
    with pytest.raises(cc.ConfigError):  # a plain model does not say what to freeze
        attribute(model, clean, None, None, method="direct_effects",
                  source=UnitBasis(4, dim=1, site="conv1"),
                  target=UnitBasis(3, dim=1, site="conv2"))  # fmt: skip
    with pytest.raises(cc.ConfigError):
        attribute(model, clean, corrupt, logit0, method="direct_effects")


def test_direct_effects_on_a_conv_layer(corner):
    """relu1 -> conv2 is linear, so with nothing to freeze the direct effect of each channel is
    exactly what removing that channel does to conv2's channel sums (bias in `rest`)."""
    model, clean, _ = corner
    res = attribute(model, clean, None, None, method="direct_effects", freeze=[],
                    source=UnitBasis(4, dim=1, site="relu1"),
                    target=UnitBasis(3, dim=1, site="conv2"))  # fmt: skip
    assert res.completeness_gap < 1e-6 and res.scores.shape == (5, 3)  # 4 channels + error
    assert torch.all(res.scores[4] == 0)  # a unit basis explains everything
    base = cc.capture(model, clean, sites=["conv2"])["conv2"].sum(dim=(0, 2, 3))
    for c in range(4):

        def drop(a, s, c=c):
            a = a.clone()
            a[:, c] = 0
            return a

        with torch.no_grad(), cc.hooks(model, {"relu1": drop}):
            moved = cc.capture(model, clean, sites=["conv2"])["conv2"].sum(dim=(0, 2, 3))
        torch.testing.assert_close(res.scores[c], base - moved, rtol=1e-5, atol=1e-4)
    assert res.scores[2:4, 0].abs().max() == 0  # the diagonal detectors do not feed the corner
    kinds = res.graph_frames()[0].set_index("key")["kind"]
    assert kinds["relu1[0]"] == "feature" and kinds["relu1[error]"] == "error"


def test_no_hook_left_behind(corner):
    model, clean, corrupt = corner
    before = cc.hook_count(model)
    for method in ("attribution_patching", "integrated_gradients", "eap", "eap-ig"):
        attribute(model, clean, corrupt, logit0, method=method)
    calls = {"n": 0}

    def flaky(out):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("metric failed mid-way")
        return out[:, 0].sum()

    with pytest.raises(RuntimeError, match="mid-way"):
        attribute(model, clean, corrupt, flaky, method="integrated_gradients", site="conv2",
                  max_batch=8)  # fmt: skip
    calls["n"] = 0
    with pytest.raises(RuntimeError, match="mid-way"):
        attribute(model, clean, corrupt, flaky, method="eap-ig", max_batch=8)
    assert cc.hook_count(model) == before == 0
