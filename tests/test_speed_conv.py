"""The shortcuts conv edge attribution takes, each against the plain computation it replaces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import circuits as cc
from circuits.attribution.conv import _weight_grad, channel_scores
from circuits.hooks import run
from circuits.ids import NodeId, node_row, unit_rows


def test_unit_rows_equal_node_rows() -> None:
    rows = unit_rows("layer1.0.conv1", "channel", [0.5, -1.0, 2.0], layer=2)
    assert rows == [
        node_row(NodeId("layer1.0.conv1", i), "channel", layer=2, activation=a)
        for i, a in enumerate([0.5, -1.0, 2.0])
    ]
    with pytest.raises(cc.SchemaError):
        unit_rows("bad[site", "channel", [1.0])


@pytest.mark.parametrize(
    "options",
    [
        {"padding": 1},
        {"padding": 2, "stride": 2, "dilation": 2},
        {"padding": "same"},
        {"padding": 1, "padding_mode": "reflect"},
        {"padding": 1, "groups": 2},
    ],
)
def test_weight_grad_equals_autograd(options: dict) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, **options)
    x = torch.randn(2, 4, 9, 9)
    grad = torch.randn_like(conv(x))
    leaf = conv.weight.detach().clone().requires_grad_(True)
    (want,) = torch.autograd.grad(conv._conv_forward(x, leaf, None), [leaf], grad_outputs=[grad])
    torch.testing.assert_close(_weight_grad(conv, x, grad), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("groups", "layout"), [(1, None), (2, None), (1, torch.channels_last)])
def test_channel_scores_equal_the_plain_sum(groups: int, layout: torch.memory_format) -> None:
    """score[i, o] = sum over the kernel of W[o, i] * dW[o, i] (dW the weight gradient of the
    sender's difference), written where groups connect i and o; other pairs keep their value.
    A channels-last model's weight gradient is not contiguous."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=groups)
    x = torch.randn(2, 4, 9, 9)
    if layout is not None:
        conv, x = conv.to(memory_format=layout), x.to(memory_format=layout)
    grad = torch.randn_like(conv(x))
    per = (conv.weight.detach() * _weight_grad(conv, x, grad)).flatten(2).sum(-1)  # [out, in/g]
    want = torch.full((4, 6), float("nan"))
    i, o = 4 // groups, 6 // groups
    for g in range(groups):
        want[g * i : (g + 1) * i, g * o : (g + 1) * o] = per[g * o : (g + 1) * o].T
    got = torch.full((4, 6), float("nan"))
    channel_scores(conv, x, grad, got)
    torch.testing.assert_close(got, want, equal_nan=True)


class Counting(nn.Conv2d):
    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Counting.calls += 1
        return super().forward(x)


def test_bypass_skips_the_module_and_equals_replace(convnet: nn.Module) -> None:
    convnet.conv2 = Counting(4, 4, 3, padding=1)
    images = torch.randn(2, 1, 6, 6)
    value = torch.randn(2, 4, 6, 6)
    want = run(convnet, images, replace={"conv2": value}, record=["conv2:input"])
    Counting.calls = 0
    got = run(convnet, images, bypass={"conv2": value}, record=["conv2:input"])
    assert Counting.calls == 0
    torch.testing.assert_close(got.output, want.output)
    torch.testing.assert_close(got.recorded["conv2:input"], want.recorded["conv2:input"])
    assert "forward" not in vars(convnet.conv2) and cc.hook_count(convnet) == 0
    convnet.fail = True
    with pytest.raises(cc.InputError, match="deliberate failure"):
        run(convnet, images, bypass={"conv2": value})
    assert "forward" not in vars(convnet.conv2) and cc.hook_count(convnet) == 0


def test_bypass_refuses_inputs(convnet: nn.Module) -> None:
    with pytest.raises(cc.InputError, match="bypass"):
        run(convnet, torch.randn(2, 1, 6, 6), bypass={"conv2:input": torch.zeros(2, 4, 6, 6)})
    assert cc.hook_count(convnet) == 0
