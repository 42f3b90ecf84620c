"""Property-based checks of the public API (hypothesis): random shapes, dtypes, NaN and inf,
empty and one-row batches, random bytes as files. Every call either returns a finite,
well-formed result or raises a CircuitsError, and leaves the model's parameters, buffers,
training flags and hooks exactly as they were."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import circuits as cc
from circuits.ids import NodeId

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


class Net(nn.Module):
    """A conv net with batch norm (eval mode) and an in-place ReLU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn(self.conv1(x)))).mean(dim=(2, 3))


NET = Net().eval()
_TF: list[nn.Module] = []


def transformer() -> nn.Module:
    if not _TF:
        _TF.append(cc.zoo.tiny_transformer(n_layers=2, d_model=16, n_heads=2, d_head=8,
                                           d_vocab=12, n_ctx=8))  # fmt: skip
    return _TF[0]


def state(m: nn.Module) -> Any:
    tensors = {k: v.detach().clone() for k, v in [*m.named_parameters(), *m.named_buffers()]}
    return tensors, [mod.training for mod in m.modules()], cc.hook_count(m)


def unchanged(m: nn.Module, before: Any) -> None:
    tensors, flags, hooks = state(m)
    assert flags == before[1] and hooks == before[2] == 0
    assert all(torch.equal(tensors[k], before[0][k]) for k in tensors)


def holds(m: nn.Module | None, call: Callable[[], Any], check: Callable[[Any], None]) -> None:
    """`call()` returns something `check` accepts or raises a CircuitsError; `m` unchanged."""
    before = state(m) if m is not None else None
    try:
        result = call()
    except cc.CircuitsError as err:
        assert str(err)  # a message that says something
    else:
        check(result)
    if m is not None:
        unchanged(m, before)


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


special = st.sampled_from([0.0, 1.0, -1.0, 1e30, math.nan, math.inf, -math.inf])


@st.composite
def images(draw: Any) -> torch.Tensor:
    batch = draw(st.integers(0, 3))
    side = draw(st.integers(1, 6))
    channels = draw(st.sampled_from([1, 1, 1, 2]))
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.int64]))
    x = torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(side))
    if draw(st.booleans()) and x.numel():
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(special)
    return x.to(dtype)


@st.composite
def tokens(draw: Any) -> torch.Tensor:
    batch, seq = draw(st.integers(0, 3)), draw(st.integers(1, 9))
    ids = draw(st.lists(st.integers(-1, 13), min_size=batch * seq, max_size=batch * seq))
    return torch.tensor(ids, dtype=torch.long).reshape(batch, seq)


def metric(kind: str) -> Callable[[Any], Any]:
    return {
        "mean": lambda out: out[..., 0].mean(),
        "nan": lambda out: out.sum() * math.nan,
        "detached": lambda out: out.detach().sum(),
        "vector": lambda out: out[..., 0],
        "int": lambda out: torch.tensor(1),
    }[kind]


metrics = st.sampled_from(["mean", "mean", "mean", "nan", "detached", "vector", "int"])


@SETTINGS
@given(x=images(), sites=st.sets(st.sampled_from(["conv1", "bn", "relu", "conv2", "nope"]),
                                 min_size=1), grads=st.booleans(), m=metrics)  # fmt: skip
def test_capture(x: torch.Tensor, sites: set[str], grads: bool, m: str) -> None:
    def check(cache: cc.ActivationCache) -> None:
        assert set(cache) == sites
        assert all(finite(cache[s]) and cache[s].shape[0] == x.shape[0] for s in sites)

    holds(NET, lambda: cc.capture(NET, x, sites=sorted(sites), grads=grads, metric=metric(m)),
          check)  # fmt: skip


@SETTINGS
@given(x=images(), y=images(), unit=st.sampled_from([None, "channel", ("channel", "h"), "all", 2]),
       direction=st.sampled_from(["denoise", "noise", "sideways"]), m=metrics,
       max_batch=st.sampled_from([None, 1, 0, 2.5]))  # fmt: skip
def test_patch(x, y, unit, direction, m, max_batch) -> None:
    def check(res: cc.PatchingResult) -> None:
        assert finite(res.values) and len(res.to_frame()) == res.values.numel()

    holds(NET, lambda: cc.patch(NET, x, y, metric(m), site="conv1", unit=unit,
                                direction=direction, max_batch=max_batch), check)  # fmt: skip


@SETTINGS
@given(x=images(), y=images(), method=st.sampled_from(
    ["attribution_patching", "integrated_gradients", "eap", "eap-ig", "edge_patching"]),
    m=metrics, steps=st.sampled_from([1, 2, 0]),
    ablation=st.sampled_from([None, "patch", "zero", "mean", "resample", "bogus"]))  # fmt: skip
def test_attribute_conv(x, y, method, m, steps, ablation) -> None:
    options: dict[str, Any] = {"ablation": ablation}
    if method in ("integrated_gradients", "eap-ig"):
        options["steps"] = steps
    if method == "attribution_patching":
        options.update(site="conv1", unit="channel")

    def check(res: cc.AttributionResult) -> None:
        frame = res.to_frame()
        assert len(frame) > 0 and bool(frame["score"].map(math.isfinite).all())

    holds(NET, lambda: cc.attribute(NET, x, y, metric(m), method=method, **options), check)


@pytest.mark.transformer
@SETTINGS
@given(clean=tokens(), corrupt=tokens(), method=st.sampled_from(["eap", "attribution_patching"]),
       m=metrics)  # fmt: skip
def test_attribute_transformer(clean, corrupt, method, m) -> None:
    model = transformer()
    options = {"site": "blocks.{L}.attn.hook_z", "unit": "head"} if method != "eap" else {}

    def check(res: cc.AttributionResult) -> None:
        assert bool(res.to_frame()["score"].map(math.isfinite).all())

    holds(model, lambda: cc.attribute(model, clean, corrupt, metric(m), method=method, **options),
          check)  # fmt: skip


@SETTINGS
@given(n=st.integers(0, 12), d=st.integers(0, 4), classes=st.integers(1, 3),
       value=special, kind=st.sampled_from(["logistic", "linear", "mass_mean"]),
       test_fraction=st.sampled_from([0.0, 0.2, 0.5, 1.0, -0.1]))  # fmt: skip
def test_fit_probe(n, d, classes, value, kind, test_fraction) -> None:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n))
    if x.numel():
        x[0, 0] = value
    labels = [i % classes for i in range(n)]

    def check(probe: cc.ProbeResult) -> None:
        assert math.isfinite(probe.train_score) and finite(probe.direction)
        assert test_fraction == 0 or math.isfinite(probe.test_score)

    holds(None, lambda: cc.fit_probe(x, labels, kind=kind, test_fraction=test_fraction), check)


@SETTINGS
@given(logits=st.lists(special, min_size=1, max_size=6), token=st.integers(-2, 8),
       kind=st.sampled_from(["prob", "logit_diff", "kl_div"]))  # fmt: skip
def test_metrics(logits: list[float], token: int, kind: str) -> None:
    out = torch.tensor(logits).reshape(1, 1, -1)
    build = {
        "prob": lambda: cc.metrics.prob(token),
        "logit_diff": lambda: cc.metrics.logit_diff(token, 0),
        "kl_div": lambda: cc.metrics.kl_div(torch.zeros_like(out)),
    }[kind]

    def check(value: torch.Tensor) -> None:
        assert value.numel() == 1  # a metric itself may be non-finite; callers refuse that

    holds(None, lambda: build()(out), check)


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".json", ".graphml", ".gexf"]))
def test_random_bytes_as_graph_files(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"g{suffix}"
        path.write_bytes(data)
        holds(None, lambda: cc.load_graph(path), lambda g: cc.graph.validate(g))


@SETTINGS
@given(index=st.binary(max_size=200), shard=st.binary(max_size=200))
def test_random_bytes_as_a_disk_cache(index: bytes, shard: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "index.json").write_bytes(index)
        (folder / "shard_00000.safetensors").write_bytes(shard)

        def read() -> Any:
            cache = cc.load_cache(folder)
            return {name: cache[name] for name in cache}

        holds(None, read, lambda got: None)


@SETTINGS
@given(key=st.text(max_size=30))
def test_node_keys_parse_or_refuse(key: str) -> None:
    holds(None, lambda: NodeId.parse(key), lambda node: str(node) == key or pytest.fail(key))


@SETTINGS
@given(weights=st.lists(special, min_size=1, max_size=5), top_k=st.sampled_from([None, 0, 1, -1]),
       influence=st.sampled_from([None, 0.5, 2.0, math.nan]))  # fmt: skip
def test_build_and_prune(weights: list[float], top_k: Any, influence: Any) -> None:
    n = len(weights)
    edges = pd.DataFrame({"source": ["in"] * n, "target": [f"f{i}" for i in range(n)],
                          "weight": weights})  # fmt: skip
    nodes = [{"key": "in", "kind": "input"}] + [{"key": f"f{i}", "kind": "output"}
                                                 for i in range(n)]  # fmt: skip

    def check(g: Any) -> None:
        cc.graph.validate(g)

    holds(None, lambda: cc.build_graph(edges, nodes=nodes, top_k=top_k, influence=influence),
          check)  # fmt: skip
