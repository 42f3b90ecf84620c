"""One result protocol: every result tables, ranks and draws itself, and results that describe
a graph build one whose edge weights are the measured effects."""

from __future__ import annotations

import pytest
import torch

import circuits as cc
from circuits.results import GraphResult, Result


def metric(out: torch.Tensor) -> torch.Tensor:
    return out[:, 0].mean()


@pytest.fixture
def results(convnet, images):
    corrupt = images.flip(-1)
    patched = cc.patch(convnet, images, corrupt, metric, site=["conv1", "conv2"], unit="channel")
    attributed = cc.attribute(convnet, images, corrupt, metric, method="eap")
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    probe = cc.fit_probe(x, (x[:, 1] > 0).long())
    return patched, attributed, probe


def test_every_result_has_frame_top_and_plot(results) -> None:
    for res in results:
        assert isinstance(res, Result)
        frame, top = res.to_frame(), res.top(2)
        assert len(top) == 2 and len(frame) >= 2
        assert type(res.plot()).__name__ == "Figure"
        with pytest.raises(cc.ConfigError):
            res.top(0)
    patched, attributed, probe = results
    assert isinstance(patched, GraphResult) and isinstance(attributed, GraphResult)
    assert top_feature(probe) == 1  # the label is read from feature 1


def top_feature(probe: cc.ProbeResult) -> int:
    return int(probe.top(1)["feature"].iloc[0])


def test_patching_results_build_graphs_weighted_by_effect(results, convnet, images) -> None:
    patched = results[0]
    g = cc.build_graph(patched)
    effects = patched.to_frame().set_index(["site", "channel"])["effect"]
    for (site, channel), effect in effects.items():
        assert g.edges[f"{site}[{channel}]", "metric"]["weight"] == pytest.approx(effect)
        assert g.nodes[f"{site}[{channel}]"]["kind"] == "channel"
    assert g.graph["method"] == "patching/denoise"


@pytest.mark.transformer
def test_path_patching_result_builds_sender_to_receiver_graph() -> None:
    from circuits.zoo.transformers import tiny_transformer

    model = tiny_transformer(n_layers=2, d_model=16, n_heads=2, d_head=8, d_vocab=12, n_ctx=6)
    gen = torch.Generator().manual_seed(0)
    clean, corrupt = (torch.randint(0, 12, (2, 6), generator=gen) for _ in range(2))
    res = cc.path_patch(model, clean, corrupt, cc.metrics.logit_diff(1, 2),
                        senders=cc.heads(model, layers=0),
                        receivers=[*cc.heads(model, layers=1, kind="v"), "logits"])  # fmt: skip
    g = cc.build_graph(res)
    frame = res.to_frame()
    assert g.number_of_edges() == len(frame) == 2 * 3
    assert g.edges["blocks.0.attn.hook_z[1]", "blocks.1.attn.hook_v[0]"]["weight"] == (
        pytest.approx(float(res.effects[1, 0]))
    )
    assert g.nodes["logits"]["kind"] == "output" and g.nodes["blocks.1.attn.hook_v[0]"]["unit"] == 0
