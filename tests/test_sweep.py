"""cc.sweep on the local backend: batches of a sweep give what one call over all items gives,
failures name their item and lose nothing else, and bad calls are refused before anything runs.

The Ray backend runs the same batches through the same code; tests/test_sweep_ray.py checks it
gives the same results.
"""

from __future__ import annotations

import sys

import networkx as nx
import pytest
import torch

import circuits as cc

pytestmark = pytest.mark.usefixtures("one_thread")
HEADS = {"site": "blocks.{L}.attn.hook_z", "unit": "head"}


def induction_loss(batch):
    return cc.metrics.cross_entropy(batch["clean"], mask=batch["mask"])


@pytest.fixture(scope="module")
def induction():
    model = cc.zoo.induction_transformer()
    clean, corrupt, info = cc.zoo.induction_pair(64, seed=3)
    return model, {"clean": clean, "corrupt": corrupt, "mask": info.is_repeat}


def weighted_by_tokens(frame, pairs, batch_size):
    """Per-batch mean losses combined into the whole batch's: weighted by the tokens each
    batch's loss averages over."""
    tokens = {lo: int(pairs["mask"][lo : lo + batch_size, 1:].sum()) for lo in range(0, 64, 8)}
    frame = frame.assign(w=frame["item"].map(tokens))
    frame = frame.assign(wv=frame["value"] * frame["w"]).groupby(["layer", "head"])
    return frame["wv"].sum() / frame["w"].sum()


@pytest.mark.transformer
def test_a_sweep_of_patching_equals_one_patch_over_the_whole_batch(induction) -> None:
    model, pairs = induction
    res = cc.sweep(cc.patch, pairs, model=model, batch_size=8, metric_for=induction_loss,
                   progress=False, **HEADS)  # fmt: skip
    frame = res.to_frame()
    assert len(res.parts) == 8 and len(frame) == 8 * 2 * 4 and not res.failures
    assert list(frame.columns[:4]) == ["item", "n_items", "layer", "head"]
    whole = cc.patch(model, pairs["clean"], pairs["corrupt"], induction_loss(pairs),
                     progress=False, **HEADS).to_frame().set_index(["layer", "head"])  # fmt: skip
    combined = weighted_by_tokens(frame, pairs, 8)
    assert torch.allclose(
        torch.tensor(combined.to_numpy()),
        torch.tensor(whole.loc[combined.index, "value"].to_numpy()),
        atol=1e-5,
    )


@pytest.mark.transformer
def test_merged_attribution_graphs_equal_the_whole_batchs(induction) -> None:
    model, pairs = induction
    first = {k: v[:16] for k, v in pairs.items()}

    def metric(logits):  # a plain mean over examples: batches of equal size average exactly
        return logits[:, -1, :5].mean()

    res = cc.sweep(cc.attribute, first, model=model, batch_size=8, metric=metric,
                   method="eap", progress=False)  # fmt: skip
    merged = res.graph(reduce="mean")
    whole = cc.build_graph(
        cc.attribute(model, first["clean"], first["corrupt"], metric, method="eap")
    )
    assert set(merged.edges) == set(whole.edges) and merged.graph["sweep_items"] == 16
    for a, b, w in whole.edges(data="weight"):
        assert merged.edges[a, b]["weight"] == pytest.approx(w, abs=1e-5)
    summed = res.graph()
    edge = next(iter(whole.edges))
    assert summed.edges[edge]["weight"] == pytest.approx(2 * merged.edges[edge]["weight"])
    assert isinstance(summed, nx.DiGraph)


def test_a_function_over_a_list_gets_each_item_as_it_is() -> None:
    res = cc.sweep(lambda seed, scale: scale * seed, range(5), scale=10, progress=False)
    assert res.values == [0, 10, 20, 30, 40] and [p.start for p in res.parts] == list(range(5))
    assert res.to_frame()["value"].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]
    batched = cc.sweep(lambda seeds: sum(seeds), list(range(5)), batch_size=2, progress=False)
    assert batched.values == [1, 5, 4] and batched.to_frame()["n_items"].tolist() == [2, 2, 1]


def test_the_model_is_passed_and_tensor_rows_keep_their_batch_axis(convnet) -> None:
    x = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    res = cc.sweep(lambda m, batch: m(batch).detach(), x, model=convnet, batch_size=2,
                   progress=False)  # fmt: skip
    assert [v.shape[0] for v in res.values] == [2, 2, 1]
    assert torch.allclose(torch.cat(res.values), convnet(x).detach(), atol=1e-6)


def test_a_probe_fit_per_item() -> None:
    gen = torch.Generator().manual_seed(0)
    items = [(torch.randn(40, 3, generator=gen), torch.arange(40) % 2) for _ in range(2)]
    res = cc.sweep(cc.fit_probe, items, kind="linear", progress=False)
    alone = cc.fit_probe(*items[1], kind="linear")
    assert torch.allclose(res.values[1].direction, alone.direction)
    assert len(res.to_frame()) == 2


def test_a_failing_item_is_named_and_the_others_are_kept() -> None:
    def fn(batch):
        if 13 in batch:
            raise ValueError("bad item")
        return {"total": sum(batch)}

    with pytest.raises(cc.SweepError, match="item 13: ValueError: bad item") as caught:
        cc.sweep(fn, list(range(20)), batch_size=4, progress=False)
    err = caught.value
    assert [(f.start, f.stop) for f in err.failures] == [(13, 14)]
    assert "raise ValueError" in err.failures[0].traceback
    kept = sorted(i for p in err.result.parts for i in range(p.start, p.stop))
    assert kept == [i for i in range(20) if i != 13]
    frame = err.result.to_frame()
    assert frame["total"].sum() == sum(range(20)) - 13


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"backend": "spark"}, cc.ConfigError, "backend must be one of 'local', 'ray'"),
        ({"batch_size": 0}, cc.ConfigError, "batch_size"),
        ({"retries": -1}, cc.ConfigError, "retries"),
        ({"resources": {"num_cpus": -1}}, cc.ConfigError, "resources"),
    ],
)
def test_bad_options_are_refused(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        cc.sweep(lambda b: b, [1, 2], **kwargs)


def test_ray_missing_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(cc.ConfigError, match=r"circuits-mi\[ray\]"):
        cc.sweep(lambda b: b, [1, 2], backend="ray")


def test_bad_items_and_jobs_are_refused(convnet) -> None:
    with pytest.raises(cc.InputError, match="no item"):
        cc.sweep(lambda b: b, [])
    with pytest.raises(cc.InputError, match="same length"):
        cc.sweep(lambda b: b, {"a": torch.zeros(3), "b": torch.zeros(4)})
    with pytest.raises(cc.InputError, match="items must be"):
        cc.sweep(lambda b: b, "abc")
    with pytest.raises(cc.ConfigError, match="needs model"):
        cc.sweep(cc.patch, {"clean": torch.zeros(2)}, metric=lambda o: o.sum())
    with pytest.raises(cc.ConfigError, match="metric_for"):
        cc.sweep(cc.patch, {"clean": torch.zeros(2)}, model=convnet)
    with pytest.raises(cc.ConfigError, match="not a model"):
        cc.sweep(cc.fit_probe, [(torch.zeros(2, 2), [0, 1])], model=convnet)
    with pytest.raises(cc.ConfigError, match="path"):
        cc.sweep(cc.capture_to_disk, torch.zeros(2, 1, 6, 6), model=convnet)
