"""ACDC (`cc.discover(..., method="acdc")`) against circuits known by construction: the hand-set
corner detector, whose distractor channels carry exactly nothing, and the induction model's
previous-token -> induction head edge; batched edge tests equal one pass per test; what it
records: the edges the reference implementation would test, the final circuit's faithfulness."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import circuits as cc
from circuits.acdc import acdc
from circuits.zoo import CORNER_CIRCUIT, INDUCTION_HEADS, corner_cnn, corner_images


def corner_data():
    images, labels = corner_images(24, seed=0)
    return images[labels == 1][:8], images[labels == 0][:8]


def logit(out: torch.Tensor) -> torch.Tensor:
    return out[:, 0].mean()


@pytest.mark.parametrize("tau", [1e-4, 1e-3, 1e-2])
def test_acdc_returns_exactly_the_corner_circuit(tau):
    clean, corrupt = corner_data()
    g = cc.discover(corner_cnn(), clean, corrupt, logit, method="acdc", threshold=tau)
    found = {(u, v) for u, v in g.edges if u.startswith("conv1[") and v.startswith("conv2[")}
    truth = {(f"{a}[{i}]", f"{b}[{j}]") for a, i, b, j in CORNER_CIRCUIT.edges}
    assert found == truth
    assert set(g.predecessors("output")) == {"conv2[0]"}
    record = json.loads(g.graph["thresholds"])
    assert record["tau"] == tau and record["passes"] >= 2
    # the edges the reference implementation tests: the output's, the corner channel's and the
    # input's into the circuit's conv1 channels; the other receivers are cut off, untested
    model = corner_cnn()
    on_path = {i for _, i, _, _ in CORNER_CIRCUIT.edges}
    conv1, conv2 = model.conv1, model.conv2
    assert (
        record["edge_tests"]
        == conv2.out_channels + conv1.out_channels + len(on_path) * conv1.in_channels
    )
    assert g.graph["method"] == "acdc" and g.graph["ablation"] == "patch"
    assert g.graph["faithfulness"] == pytest.approx(1.0, abs=1e-6)  # distractors carry nothing
    cc.graph.validate(g)


def test_every_kept_edge_moves_the_metric_by_tau_or_more():
    """Each kept edge's weight is its measured effect; removing any one from the final circuit
    moves the metric by at least about tau (it survived its test)."""
    clean, corrupt = corner_data()
    tau = 1e-3
    g = acdc(corner_cnn(), clean, corrupt, logit, tau=tau)
    assert all(abs(w) >= tau for _, _, w in g.edges(data="weight"))


def test_the_recorded_faithfulness_is_the_final_circuits():
    """A 1x1 conv reading two input channels with weights 1 and 0.01: at tau 0.1 the last
    receiver's weak edge goes, and the circuit keeps 1 / 1.01 of the clean-corrupt gap."""

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 1, 1, bias=False)
            with torch.no_grad():
                self.conv.weight.copy_(torch.tensor([1.0, 0.01]).view(1, 2, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean((2, 3))

    clean, corrupt = torch.ones(4, 2, 3, 3), torch.zeros(4, 2, 3, 3)
    g = acdc(TwoInputs().eval(), clean, corrupt, logit, tau=0.1)
    assert sorted(g.edges) == [("conv:input[0]", "conv[0]"), ("conv[0]", "output")]
    assert g.graph["faithfulness"] == pytest.approx(1 / 1.01, abs=1e-6)


@pytest.mark.transformer
def test_acdc_on_the_induction_model_keeps_the_induction_edge():
    model = cc.zoo.induction_transformer()
    clean, corrupt, _ = cc.zoo.induction_pair(16, seed=0)
    prev, ind = INDUCTION_HEADS["previous_token"], INDUCTION_HEADS["induction"]
    g = cc.discover(model, clean, corrupt, None, method="acdc", threshold=0.05)
    assert g.has_edge(f"blocks.0.attn.hook_z[{prev[1]}]", f"blocks.1.attn.hook_z[{ind[1]}]")
    assert g.graph["metric"] == "kl_div" and 0 < g.number_of_edges() < 33
    # the faithfulness it records is the circuit's, scored afresh from the clean run
    kl = cc.metrics.kl_div(model(clean).detach(), position=None)
    again = cc.faithfulness(model, g.copy(), clean, corrupt, kl)
    assert g.graph["faithfulness"] == pytest.approx(again, abs=1e-5)
    batched = sorted(g.edges)
    one_by_one = acdc(model, clean, corrupt, None, tau=0.05, memory=1)  # one variant a pass
    assert sorted(one_by_one.edges) == batched
    assert cc.hook_count(model) == 0


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        (dict(threshold=-0.1), cc.ConfigError, "tau"),
        (dict(threshold=None), cc.ConfigError, "threshold"),
        (dict(threshold=0.1, top_k=3), cc.ConfigError, "threshold"),
        (dict(threshold=0.1, ablation="half"), cc.ConfigError, "ablation"),
    ],
)
def test_bad_acdc_options(options, error, match):
    clean, corrupt = corner_data()
    model = corner_cnn()
    with pytest.raises(error, match=match):
        cc.discover(model, clean, corrupt, logit, method="acdc", **options)
    assert cc.hook_count(model) == 0
