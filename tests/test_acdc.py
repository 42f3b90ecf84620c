"""ACDC (`cc.discover(..., method="acdc")`) against circuits known by construction: the hand-set
corner detector, whose distractor channels carry exactly nothing, and the induction model's
previous-token -> induction head edge; batched edge tests equal one pass per test."""

from __future__ import annotations

import json

import pytest
import torch

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
    assert record["tau"] == tau and record["passes"] >= 2 and record["edge_tests"] > 0
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


@pytest.mark.transformer
def test_acdc_on_the_induction_model_keeps_the_induction_edge():
    model = cc.zoo.induction_transformer()
    clean, corrupt, _ = cc.zoo.induction_pair(16, seed=0)
    prev, ind = INDUCTION_HEADS["previous_token"], INDUCTION_HEADS["induction"]
    g = cc.discover(model, clean, corrupt, None, method="acdc", threshold=0.05)
    assert g.has_edge(f"blocks.0.attn.hook_z[{prev[1]}]", f"blocks.1.attn.hook_z[{ind[1]}]")
    assert g.graph["metric"] == "kl_div" and 0 < g.number_of_edges() < 33
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
