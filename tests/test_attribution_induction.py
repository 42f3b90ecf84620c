"""Attribution on the trained induction model: attribution patching against exact patching,
EAP-IG finding the K-composition edge, and completeness of integrated gradients."""

from __future__ import annotations

import pytest
import torch

from circuits.attribution import attribute
from circuits.metrics import cross_entropy
from circuits.patching import patch
from circuits.zoo import induction

pytestmark = [
    pytest.mark.transformer,
    pytest.mark.skipif(
        not induction.WEIGHTS_PATH.exists(), reason="the induction model's weights are not built"
    ),
]

HEADS = "blocks.{L}.attn.hook_z"


@pytest.fixture(scope="module")
def setup():
    model = induction.induction_transformer()
    clean, corrupt, batch = induction.induction_pair(8, seed=0)
    loss = cross_entropy(clean, mask=batch.is_repeat)

    def metric(out: torch.Tensor) -> torch.Tensor:
        return -loss(out)  # log-likelihood of the tokens induction predicts

    return model, clean, corrupt, metric


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().float(), b.flatten().float()]))[0, 1])


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_attribution_patching_tracks_exact_patching_of_heads(setup, direction):
    model, clean, corrupt, metric = setup
    approx = attribute(model, clean, corrupt, metric, site=HEADS, unit="head",
                       direction=direction)  # fmt: skip
    exact = patch(model, clean, corrupt, metric, site=HEADS, unit="head", direction=direction)
    assert approx.axes == exact.axes == ("layer", "head")
    assert approx.clean_value == pytest.approx(exact.clean_value, rel=1e-5)
    assert approx.corrupt_value == pytest.approx(exact.corrupt_value, rel=1e-5)
    assert _pearson(approx.scores.cpu(), exact.effects) >= 0.9


def test_eap_ig_finds_the_previous_token_to_induction_key_edge(setup):
    model, clean, corrupt, metric = setup
    res = attribute(model, clean, corrupt, metric, method="eap-ig")
    (pl, ph), (il, ih) = model.induction_heads["previous_token"], model.induction_heads["induction"]
    edge = (f"blocks.{pl}.attn.hook_z[{ph}]", f"blocks.{il}.hook_k_input[{ih}]")
    top = res.top_edges(10)
    assert edge in set(zip(top["source"], top["target"], strict=True))
    fine = res.to_frame().set_index(["source", "target"])["score"]
    into_key = fine.xs(edge[1], level="target").abs()
    assert into_key[edge[0]] >= 0.5 * into_key.max()  # a main input of the induction key
    parts = {p: abs(fine[(edge[0], f"blocks.{il}.hook_{p}_input[{ih}]")]) for p in "qkv"}
    assert parts["k"] > 20 * max(parts["q"], parts["v"])  # K-composition, not Q or V
    assert res.completeness_gap < 0.01  # the embedding's edges add up to the metric change


def test_integrated_gradients_complete_at_64_steps():
    model = induction.induction_transformer()
    clean, corrupt, batch = induction.induction_pair(2, seed=1)
    loss = cross_entropy(clean, mask=batch.is_repeat)

    def metric(out: torch.Tensor) -> torch.Tensor:
        return -loss(out)

    tokens = attribute(model, clean, corrupt, metric, method="integrated_gradients",
                       unit=("batch", "pos"), steps=64)  # fmt: skip
    assert tokens.completeness_gap < 0.01
    changed = (clean != corrupt).to(tokens.scores.device)
    assert tokens.scores[~changed].abs().max() == 0  # tokens that did not change get nothing
    heads = attribute(model, clean, corrupt, metric, method="integrated_gradients",
                      site="blocks.1.attn.hook_z", unit="head", steps=64)  # fmt: skip
    assert heads.completeness_gap < 0.01
