"""Feature graphs: every edge checked by a real intervention, a planted circuit found exactly,
IG complete, bad input refused with the model left clean.

The interventions here are written out by hand (capture the clean run, then run the model with
plain hooks that hold the frozen sites, splice the dictionaries and switch one node off), so
they share nothing with `circuits.featuregraph` but the dictionaries' own encode / decode.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor, nn

import circuits as cc
from circuits.attribution.direct import frozen_sites, python_norms
from circuits.dictionaries import Dictionary, DictionaryConfig
from circuits.graph.scores import score_arrays
from circuits.ids import NodeId
from circuits.zoo.lookup import lookup_targets

ATOL = 1e-5


@pytest.fixture(scope="module")
def lookup() -> tuple[nn.Module, Tensor, list[Dictionary]]:
    """The lookup model and its transcoders in float64, so that a difference of two runs
    resolves an edge to 1e-5 (in float32 the runs' rounding is about that size)."""
    model = cc.zoo.lookup_transformer().double()
    tokens = cc.zoo.lookup_batch(1, seed=0).tokens
    ds = [cc.zoo.lookup_transcoder(i).to(dtype=torch.float64) for i in (0, 1)]
    return model, tokens, ds


def _centred_last(out: Tensor) -> Tensor:
    logits = out[0, -1] if out.ndim == 3 else out[0]
    return logits - logits.mean()


def _tl_intervention(model: nn.Module, tokens: Tensor, ds: list[Dictionary]) -> Any:
    """A function (node key, or None for no change) -> value of every target node, computed on
    the linearised replacement model by hand."""
    frozen = frozen_sites(model)
    reads = [d.config.site for d in ds]
    writes = [d.config.target_site or d.config.site for d in ds]  # an SAE writes where it reads
    names = [*frozen, *reads, *writes, "blocks.0.hook_resid_pre"]
    calls: dict[str, list[Tensor]] = {name: [] for name in names}  # a norm may run several times
    record = {n: (lambda a, s, n=n: calls[n].append(a.detach().clone())) for n in names}
    with torch.no_grad(), cc.hooks(model, record):
        model(tokens)
    clean = {n: v[0] for n, v in calls.items()}
    acts = {d.config.site: d.encode(clean[d.config.site][0]) for d in ds}
    errors = {r: clean[w][0] - d.decode(acts[r]) for d, r, w in zip(ds, reads, writes, strict=True)}

    def values(off: str | None) -> dict[str, float]:
        node = None if off is None else NodeId.parse(off)
        seen: dict[str, Tensor] = {}
        replay = {n: iter(calls[n]) for n in frozen}
        fns: dict[str, Any] = {n: (lambda a, s, n=n: next(replay[n])) for n in frozen}

        def embed(a: Tensor, s: Any) -> Tensor:
            x = clean["blocks.0.hook_resid_pre"].clone()
            if node is not None and node.site == "blocks.0.hook_resid_pre":
                x[0, node.pos] = 0
            return x

        fns["blocks.0.hook_resid_pre"] = embed
        for d, site, written in zip(ds, reads, writes, strict=True):

            def read(a: Tensor, s: Any, site: str = site) -> Tensor:
                seen[site] = a[0].detach()
                return a

            def write(
                a: Tensor, s: Any, d: Dictionary = d, site: str = site, to: str = written
            ) -> Tensor:
                if to == site:  # an SAE: read what arrives, then replace it
                    read(a, s, site)
                z, err = acts[site].clone(), errors[site].clone()
                if node is not None and node.site == site and node.error:
                    err[node.pos] = 0
                elif node is not None and node.site == site:
                    z[node.pos, node.unit] = 0
                return (d.decode(z) + err)[None]

            fns[site] = read
            fns[written] = write
        with torch.no_grad(), python_norms(model), cc.hooks(model, fns):
            out = model(tokens)
        result = {}
        for d in ds:
            pre = d.pre_activation(seen[d.config.site])
            for p, latent in (acts[d.config.site] != 0).nonzero().tolist():
                result[str(NodeId(d.config.site, latent, pos=p))] = float(pre[p, latent])
        centred = _centred_last(out)
        for t in range(centred.shape[0]):
            result[str(NodeId("logits", t, pos=tokens.shape[1] - 1))] = float(centred[t])
        return result

    return values


def kinds_of(g: nx.DiGraph) -> list[str]:
    return [a["kind"] for _, a in g.nodes(data=True)]


def _check_edges(g: nx.DiGraph, values: Any, edges: list[tuple[str, str, float]]) -> None:
    base = values(None)
    for u, v, w in edges:
        changed = values(u)
        assert base[v] - changed[v] == pytest.approx(w, abs=ATOL, rel=1e-5), (u, v)


@pytest.mark.transformer
def test_direct_edges_equal_real_interventions(lookup: Any) -> None:
    model, tokens, ds = lookup
    small = cc.feature_graph(model, tokens, ds)
    values = _tl_intervention(model, tokens, ds)
    assert small.number_of_edges() >= 10
    _check_edges(small, values, list(small.edges(data="weight")))
    full = cc.feature_graph(model, tokens, ds, node_threshold=None)
    edges = list(full.edges(data="weight"))
    assert len(edges) > 1000
    sample = random.Random(0).sample(edges, 200)
    kinds = {full.nodes[u]["kind"] for u, _, _ in sample}
    assert kinds == {"feature", "error", "input"}
    _check_edges(full, values, sample)


@pytest.mark.transformer
def test_attention_only_model_with_residual_saes() -> None:
    """The induction model read by SAEs on its residual stream: every edge of the pruned graph
    and 200 of the whole one match interventions; the graph is complete enough to trust."""
    model = cc.zoo.induction_transformer().double()
    tokens = cc.zoo.induction_pair(1, seed=0)[0][:, :48]  # ends inside the repeated segment
    saes = [cc.zoo.induction_sae(i).to(dtype=torch.float64) for i in (0, 1)]
    small = cc.feature_graph(model, tokens, saes, node_threshold=0.9)
    values = _tl_intervention(model, tokens, saes)
    _check_edges(small, values, list(small.edges(data="weight")))
    full = cc.feature_graph(model, tokens, saes, node_threshold=None)
    _check_edges(full, values, random.Random(2).sample(list(full.edges(data="weight")), 200))
    assert small.graph["completeness_score"] >= 0.9
    assert small.graph["faithfulness"] >= 0.9


@pytest.mark.transformer
def test_lookup_scores_and_faithfulness(lookup: Any) -> None:
    model, tokens, ds = lookup
    g = cc.feature_graph(model, tokens, ds)
    assert g.graph["completeness_score"] >= 0.8
    assert 0.8 <= g.graph["replacement_score"] <= 1.0
    assert 0.9 <= g.graph["faithfulness"] <= 1.1
    kinds = {a["kind"] for _, a in g.nodes(data=True)}
    assert {"input", "feature", "output"} <= kinds
    assert sum(k == "input" for k in kinds_of(g)) == tokens.shape[1]  # pruning keeps every token
    # a graph of every node reproduces the run, one of no feature the errors' share only
    full = cc.feature_graph(model, tokens, ds, node_threshold=None)
    assert cc.feature_faithfulness(model, full, tokens, ds) == pytest.approx(1.0, abs=1e-4)
    assert hasattr(cc, "FeatureGraphOptions")


@pytest.mark.transformer
def test_ig_edges_are_complete(lookup: Any) -> None:
    model, _, ds = lookup
    clean, corrupt, batch = cc.zoo.lookup_pair(1, seed=0)
    metric = cc.metrics.logit_diff(batch.targets[:, -1], lookup_targets(corrupt)[:, -1])
    g = cc.feature_graph(model, clean, ds, corrupt=corrupt, metric=metric, method="ig",
                         node_threshold=None, progress=False)  # fmt: skip
    with torch.no_grad():
        expected = float(metric(model(clean)) - metric(model(corrupt)))
    total = sum(w for _, v, w in g.edges(data="weight") if v == "metric")
    assert abs(total - expected) / abs(expected) <= 1e-4
    ap = cc.feature_graph(model, clean, ds, corrupt=corrupt, metric=metric,
                          method="attribution_patching", node_threshold=None)  # fmt: skip
    assert set(ap.nodes) == set(g.nodes)
    assert {a["kind"] for _, a in g.nodes(data=True)} == {"input", "feature", "error", "output"}


def test_conv_direct_edges_equal_frozen_gate_interventions() -> None:
    model = cc.zoo.curve_cnn()
    image = cc.zoo.curve_images(1, seed=3).images
    sae = cc.zoo.curve_sae()
    target = int(model(image).argmax())
    g = cc.feature_graph(model, image, [sae], target=target, node_threshold=None)
    with torch.no_grad():
        c1 = model.conv1(image)
        pooled, where = nn.functional.max_pool2d(model.relu1(c1), 2, return_indices=True)
        c2 = model.conv2(pooled)
        r2 = torch.relu(c2)
        rows = r2[0].permute(1, 2, 0).reshape(-1, 16)
        acts = sae.encode(rows)
        err = rows - sae.decode(acts)
        out = r2[0].reshape(16, -1)
        # the global max pool's choice, frozen; tied maxima share it (as amax's gradient does)
        peak = (out == out.amax(1, keepdim=True)).float()
        peak = peak / peak.sum(1, keepdim=True)

    def values(x: Tensor, z: Tensor) -> dict[str, float]:
        """The gate-frozen model by hand: ReLU masks and pooling choices of the clean run."""
        h = model.conv1(x) * (c1 > 0)
        p = h.flatten(2).gather(2, where.flatten(2)).reshape(pooled.shape)
        pre = sae.pre_activation((model.conv2(p) * (c2 > 0))[0].permute(1, 2, 0).reshape(-1, 16))
        y = ((sae.decode(z) + err).T * peak).sum(1)
        res = {f"logits[{target}]": float(y[target] - y.mean())}
        for r, latent in (acts != 0).nonzero().tolist():
            res[str(NodeId("relu2", latent, h=r // 16, w=r % 16))] = float(pre[r, latent].detach())
        return res

    base = values(image, acts)
    edges = list(g.edges(data="weight"))
    for u, v, w in random.Random(1).sample(edges, 200):
        node = NodeId.parse(u)
        x, z = image.clone(), acts.clone()
        if node.site == "conv1:input":
            x[0, 0, node.h, node.w] = 0
        else:
            z[node.h * 16 + node.w, node.unit] = 0
        with torch.no_grad():
            changed = values(x, z)
        assert base[v] - changed[v] == pytest.approx(w, abs=ATOL, rel=1e-5), (u, v)
    summed = cc.feature_graph(model, image, [sae], target=target, positions="sum")
    assert all(a["pos"] == -1 and "h" not in a for _, a in summed.nodes(data=True))


def test_conv_ig_is_complete_against_another_image() -> None:
    """IG's edges into the metric add up to its change. A ReLU net with max pooling is only
    piecewise linear along the path (gates and pooling choices switch), so the midpoint rule
    converges slowly: 3.4e-4 at 64 steps, 1.0e-4 at 128, 1.2e-4 at 256 on this pair (the same in
    float64), against 3e-5 at 64 on the transformer."""
    model = cc.zoo.curve_cnn()
    images = cc.zoo.curve_images(2, seed=4).images
    clean, corrupt = images[:1], images[1:]
    target = int(model(clean).argmax())

    def metric(out: Tensor) -> Tensor:
        return out[0, target] - out[0].mean()

    g = cc.feature_graph(model, clean, [cc.zoo.curve_sae()], corrupt=corrupt, metric=metric,
                         method="ig", node_threshold=None, progress=False)  # fmt: skip
    with torch.no_grad():
        expected = float(metric(model(clean)) - metric(model(corrupt)))
    total = sum(w for _, v, w in g.edges(data="weight") if v == "metric")
    assert abs(total - expected) / abs(expected) <= 1e-3


class Planted(nn.Module):
    """input (4) -> a (4) -> b (4) -> logits (3), linear with ReLUs: identity dictionaries on
    a and b make every unit a feature, so the true circuit is read off the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4, bias=False)
        self.a = nn.ReLU()
        self.second = nn.Linear(4, 4, bias=False)
        self.b = nn.ReLU()
        self.head = nn.Linear(4, 3, bias=False)
        with torch.no_grad():
            self.first.weight.copy_(torch.eye(4))
            # b0 <- a0 (and a1 weakly); b1 <- a2; b2, b3 <- nothing
            self.second.weight.copy_(
                torch.tensor([[1.0, 0.5, 0, 0], [0, 0, 1.0, 0], [0] * 4, [0] * 4])
            )
            # logit 0 reads b0 only; b1 is active and read by nothing (a dead end)
            self.head.weight.copy_(torch.tensor([[2.0, 0, 0, 0], [0] * 4, [0] * 4]))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.b(self.second(self.a(self.first(x)))))


def _identity(site: str) -> Dictionary:
    cfg = DictionaryConfig(d_in=4, n_latents=4, site=site)
    eye = torch.eye(4)
    return Dictionary(cfg, W_enc=eye.clone(), b_enc=torch.zeros(4), W_dec=eye.clone(),
                      b_dec=torch.zeros(4))  # fmt: skip


def test_planted_circuit_is_recovered_exactly() -> None:
    model = Planted()
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    g = cc.feature_graph(model, x, [_identity("a"), _identity("b")], target=0,
                         node_threshold=0.99)  # fmt: skip
    features = {k for k, a in g.nodes(data=True) if a["kind"] == "feature"}
    assert features == {"a[0]", "a[1]", "b[0]"}
    assert {(u, v) for u, v in g.edges if g.nodes[u]["kind"] == "feature"} == {
        ("a[0]", "b[0]"), ("a[1]", "b[0]"), ("b[0]", "logits[0]")}  # fmt: skip
    weights = {(u, v): w for u, v, w in g.edges(data="weight")}
    assert weights[("a[0]", "b[0]")] == pytest.approx(1.0)
    assert weights[("a[1]", "b[0]")] == pytest.approx(0.5)
    assert g.graph["faithfulness"] == pytest.approx(1.0)


def test_bad_input_is_refused_and_the_model_left_clean(lookup: Any) -> None:
    model, tokens, ds = lookup
    wrong = cc.zoo.curve_sae()
    cases: list[tuple[dict[str, Any], type[Exception]]] = [
        (
            {
                "dictionaries": [
                    Dictionary(
                        DictionaryConfig(d_in=32, n_latents=8, site="blocks.0.hook_resid_pre"),
                        W_enc=torch.zeros(32, 8),
                        b_enc=torch.zeros(8),
                        W_dec=torch.zeros(8, 32),
                        b_dec=torch.zeros(32),
                    )
                ]
            },
            cc.ShapeMismatchError,
        ),
        ({"dictionaries": [wrong]}, cc.SiteNotFoundError),
        ({"target": 10_000}, cc.InputError),
        ({"node_threshold": 0.0}, cc.ConfigError),
        ({"edge_threshold": 1.5}, cc.ConfigError),
        ({"inputs": torch.cat([tokens, tokens])}, cc.InputError),
        ({"metric": lambda out: out.sum()}, cc.ConfigError),
        ({"dictionaries": {"blocks.1.ln2.hook_normalized": ds[0]}}, cc.ConfigError),
        ({"method": "exact"}, cc.ConfigError),
        ({"corrupt": tokens[:, :-1], "method": "ig"}, cc.ShapeMismatchError),
        ({"corrupt": tokens}, cc.ConfigError),  # "direct" has no baseline to compare with
        ({"freeze": "blocks.0.attn.hook_q"}, cc.ConfigError),
        ({"labels": ["a", "b"]}, cc.ConfigError),
        ({"input_site": "blocks.1.hook_resid_pre"}, cc.ConfigError),  # after transcoder 0 reads
    ]
    before = [p.detach().clone() for p in model.parameters()]
    for change, error in cases:
        kwargs: dict[str, Any] = {"inputs": tokens, "dictionaries": ds, **change}
        inputs, dictionaries = kwargs.pop("inputs"), kwargs.pop("dictionaries")
        with pytest.raises(error):
            cc.feature_graph(model, inputs, dictionaries, **kwargs)
        assert cc.hook_count(model) == 0
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


@pytest.mark.transformer
def test_feature_graph_exports_as_an_attribution_graph(lookup: Any, tmp_path: Any) -> None:
    model, tokens, ds = lookup
    g = cc.feature_graph(model, tokens, ds)
    path = cc.save_graph(g, tmp_path / "lookup.json", format="attribution-graph")
    back = cc.load_graph(path)
    assert nx.utils.graphs_equal(g, back)
    assert dict(back.nodes(data=True)) == dict(g.nodes(data=True))
    data = json.loads(path.read_text())
    ids = {n["node_id"] for n in data["nodes"]}
    pos = tokens.shape[1] - 1
    top = max((a for _, a in g.nodes(data=True) if a["kind"] == "output"), key=lambda a: a["prob"])
    assert f"3_{top['unit']}_{pos}" in ids  # logits: {n_layers + 1}_{token}_{pos}
    tokens_in = [n for n in data["nodes"] if n["feature_type"] == "embedding"]
    assert all(
        n["node_id"] == f"E_{int(tokens[0, n['ctx_idx']])}_{n['ctx_idx']}" for n in tokens_in
    )
    features = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert all(n["node_id"] == f"{n['layer']}_{n['feature']}_{n['ctx_idx']}" for n in features)


def _transcoder(read: str, write: str, w_enc: Tensor) -> Dictionary:
    cfg = DictionaryConfig(d_in=4, n_latents=4, d_out=4, kind="transcoder", site=read,
                           target_site=write)  # fmt: skip
    return Dictionary(cfg, W_enc=w_enc.clone(), b_enc=torch.zeros(4), W_dec=torch.eye(4),
                      b_dec=torch.zeros(4))  # fmt: skip


def test_chained_transcoders_read_each_others_replacement() -> None:
    """t1 stands in for `first -> a`, t2 reads `a` (what t1 writes) and stands in for
    `a -> b`: t2's latents must be fed by t1's, with the planted weights, in any order given;
    and the input site is found by running the model, whatever order modules were registered."""
    model = Planted()
    model._modules = dict(reversed(list(model._modules.items())))  # head registered first
    t1 = _transcoder("first", "a", torch.eye(4))
    t2 = _transcoder("a", "b", model.second.weight.detach().T)
    x = torch.ones(1, 4)
    for order in ([t1, t2], [t2, t1]):
        g = cc.feature_graph(model, x, order, target=0, node_threshold=None)
        weights = {(u, v): w for u, v, w in g.edges(data="weight")}
        assert weights[("first[0]", "a[0]")] == pytest.approx(1.0)
        assert weights[("first[1]", "a[0]")] == pytest.approx(0.5)
        assert weights[("first[2]", "a[1]")] == pytest.approx(1.0)
        assert weights[("first:input", "first[0]")] == pytest.approx(1.0)
        pruned = cc.prune(g, influence=0.99)
        assert cc.feature_faithfulness(model, pruned, x, order) == pytest.approx(1.0)


def test_scores_equal_circuit_tracers_dense_formulas() -> None:
    """replacement and completeness scores against circuit-tracer's definitions, written out on
    the dense matrix: influence = w ((I - N)^-1 - I), N the row-normalised |A|."""
    gen = np.random.default_rng(0)
    kinds = ["feature"] * 6 + ["error"] * 3 + ["input"] * 3 + ["output"] * 2
    n = len(kinds)
    rank = {"input": 0, "error": 0, "feature": 1, "output": 3}
    depth = [rank[k] + (i % 2 if k == "feature" else 0) for i, k in enumerate(kinds)]
    a = gen.normal(size=(n, n)) * np.array([[depth[t] > depth[s] for s in range(n)]
                                            for t in range(n)])  # fmt: skip
    probs = np.array([0.0] * 12 + [0.7, 0.3])
    src, dst = np.nonzero(a.T)
    scores = score_arrays(src, dst, a.T[src, dst], kinds, probs)
    norm = np.abs(a) / np.maximum(np.abs(a).sum(1, keepdims=True), 1e-10)
    influence = probs @ (np.linalg.inv(np.eye(n) - norm) - np.eye(n))
    is_kind = {k: np.array([x == k for x in kinds]) for k in set(kinds)}
    token, error = influence[is_kind["input"]].sum(), influence[is_kind["error"]].sum()
    completeness = ((1 - norm[:, is_kind["error"]].sum(1)) * (influence + probs)).sum() / (
        influence + probs
    ).sum()
    assert scores["replacement_score"] == pytest.approx(token / (token + error))
    assert scores["completeness_score"] == pytest.approx(completeness)


def test_pruning_weights_outputs_by_probability() -> None:
    nodes = [{"key": "x", "kind": "input"}, {"key": "f", "kind": "feature", "layer": 0},
             {"key": "g", "kind": "feature", "layer": 0},
             {"key": "o1", "kind": "output", "layer": 1, "prob": 0.9},
             {"key": "o2", "kind": "output", "layer": 1, "prob": 0.1}]  # fmt: skip
    edges = [("x", "f"), ("x", "g"), ("f", "o1"), ("g", "o2")]
    frame = pd.DataFrame([{"source": u, "target": v, "weight": 1.0} for u, v in edges])
    g = cc.prune(cc.build_graph(frame, nodes=pd.DataFrame(nodes)), influence=1.0)
    assert g.nodes["f"]["influence"] == pytest.approx(9 * g.nodes["g"]["influence"])


def test_summed_positions_add_up_the_per_position_graph() -> None:
    model = cc.zoo.curve_cnn()
    image = cc.zoo.curve_images(1, seed=3).images
    sae = cc.zoo.curve_sae()
    each = cc.feature_graph(model, image, [sae], target=0, node_threshold=None)
    summed = cc.feature_graph(model, image, [sae], target=0, node_threshold=None, positions="sum")
    total: dict[tuple[str, str], float] = {}
    for u, v, w in each.edges(data="weight"):
        key = tuple(str(replace(NodeId.parse(k), pos=-1, h=-1, w=-1)) for k in (u, v))
        total[key] = total.get(key, 0.0) + w  # type: ignore[index]
    kept = {k: w for k, w in total.items() if k[0] != k[1]}
    got = {(u, v): w for u, v, w in summed.edges(data="weight")}
    assert set(got) <= set(kept)
    for key, w in got.items():
        assert w == pytest.approx(kept[key], rel=1e-5, abs=1e-5)
    assert summed.nodes["conv1:input"]["unit"] == -1
