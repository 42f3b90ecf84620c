"""Edge-level faithfulness and `discover`, checked against forward passes written out by hand.

The references rebuild each model's computation with every edge explicit (a head's input is the
sum of its senders' outputs, a conv channel is the sum of its input channels' convolutions), so
keeping or ablating an edge is a plain choice of which value enters the sum; nothing is shared
with the hook-based implementation.
"""

from __future__ import annotations

import random

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import circuits as cc
from circuits.errors import ConfigError, InputError, MetricError, ModelError, ShapeMismatchError
from circuits.faithfulness import Faithfulness
from circuits.modelgraph import channel_ablation
from circuits.zoo import CORNER_CIRCUIT, INDUCTION_HEADS, corner_cnn, corner_images

# -- transformers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def induction():
    model = cc.zoo.induction_transformer()
    clean, corrupt, batch = cc.zoo.induction_pair(8, seed=1)
    loss = cc.metrics.cross_entropy(clean, mask=batch.is_repeat)
    full = cc.build_graph(cc.attribute(model, clean, corrupt, loss, method="eap"))
    return model, clean, corrupt, loss, full


def hand_forward(w, tokens, n_layers, n_heads, kept=None, ablated=None):
    """Logits of an attention-only, norm-free transformer (HookedTransformer weights `w`) in
    which each receiver (head or "logits") sums its senders one by one, taking `ablated[s]`
    instead of sender s's own output where the edge s -> receiver is not in `kept`.
    Returns (logits, outputs): outputs[s] is each sender's own output in this run."""
    resid_bias = torch.zeros(w["embed.W_E"].shape[1])
    outputs = {"embed": w["embed.W_E"][tokens] + w["pos_embed.W_pos"][: tokens.shape[1]]}

    def read(receiver):
        total = resid_bias.clone()
        for s, out in outputs.items():
            keep = kept is None or (s, receiver) in kept
            total = total + (out if keep else ablated[s])
        return total

    for ly in range(n_layers):
        new = {}
        for h in range(n_heads):
            x = read((ly, h))
            q, k, v = (x @ w[f"blocks.{ly}.attn.W_{p}"][h] + w[f"blocks.{ly}.attn.b_{p}"][h]
                       for p in "QKV")  # fmt: skip
            scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
            causal = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
            pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            new[(ly, h)] = (pattern @ v) @ w[f"blocks.{ly}.attn.W_O"][h]
        outputs.update(new)
        resid_bias = resid_bias + w[f"blocks.{ly}.attn.b_O"]
    return read("logits") @ w["unembed.W_U"] + w["unembed.b_U"], outputs


def hand_edges(g):
    """The graph's edges in hand_forward's names: "embed", (layer, head), "logits"."""

    def name(key):
        a = g.nodes[key]
        return {"input": "embed", "output": "logits"}.get(a["kind"], (a["layer"], a["unit"]))

    return {(name(u), name(v)) for u, v in g.edges}


@pytest.mark.transformer
def test_faithfulness_equals_a_hand_written_edge_ablation(induction):
    model, clean, corrupt, loss, full = induction
    w = cc.zoo.hooked_state_dict(model)
    cfg = model.cfg
    logits, _ = hand_forward(w, clean, cfg.n_layers, cfg.n_heads)
    with torch.no_grad():
        assert torch.allclose(logits, model(clean), atol=1e-4)  # the reference is the model
        m_clean, m_corrupt = float(loss(model(clean))), float(loss(model(corrupt)))
    _, ablated = hand_forward(w, corrupt, cfg.n_layers, cfg.n_heads)
    edges = list(full.edges)
    rng = random.Random(0)
    for size in (3, 8, 16, 25):
        sub = full.edge_subgraph(rng.sample(edges, size)).copy()
        kept = hand_edges(sub)
        logits, _ = hand_forward(w, clean, cfg.n_layers, cfg.n_heads, kept, ablated)
        want = (float(loss(logits)) - m_corrupt) / (m_clean - m_corrupt)
        got = cc.faithfulness(model, sub, clean, corrupt, loss)
        assert got == pytest.approx(want, abs=1e-4)
        assert sub.graph["faithfulness"] == got and sub.graph["ablation"] == "patch"


@pytest.mark.transformer
def test_whole_graph_is_fully_faithful_and_no_edge_is_zero(induction):
    model, clean, corrupt, loss, full = induction
    assert cc.faithfulness(model, full, clean, corrupt, loss) == pytest.approx(1.0, abs=1e-5)
    empty = nx.DiGraph(full.subgraph([]))
    empty.graph.update(full.graph)
    assert cc.faithfulness(model, empty, clean, corrupt, loss) == 0.0
    for ablation in ("mean", "zero"):
        assert cc.faithfulness(model, full, clean, corrupt, loss, ablation=ablation) == (
            pytest.approx(1.0, abs=1e-5)
        )


@pytest.mark.transformer
def test_complete_subgraph_equals_patching_the_other_nodes():
    """With every edge among a node set kept, edge ablation is node patching of everything else,
    here on a model with LayerNorm and MLPs; the reference patches with plain hooks."""
    model = cc.zoo.tiny_transformer(n_layers=2, d_vocab=50, n_ctx=12, seed=3)
    gen = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(0, 50, (2, 6, 10), generator=gen)

    def metric(logits):
        return logits[:, -1].log_softmax(-1)[:, 7].mean()

    full = cc.build_graph(cc.attribute(model, clean, corrupt, metric, method="eap"))
    outside = {"blocks.0.attn.hook_z[1]", "blocks.1.attn.hook_z[0]", "blocks.0.hook_mlp_out"}
    sub = full.subgraph([n for n in full if n not in outside]).copy()
    got = cc.faithfulness(model, sub, clean, corrupt, metric)
    ref = cc.capture(model, corrupt, sites=["blocks.0.attn.hook_z", "blocks.1.attn.hook_z",
                                            "blocks.0.hook_mlp_out"])  # fmt: skip

    def patch_heads(layer, head):
        def fn(z, site):
            z = z.clone()
            z[:, :, head] = ref[f"blocks.{layer}.attn.hook_z"][:, :, head]
            return z

        return fn

    fns = {
        "blocks.0.attn.hook_z": patch_heads(0, 1),
        "blocks.1.attn.hook_z": patch_heads(1, 0),
        "blocks.0.hook_mlp_out": lambda act, site: ref["blocks.0.hook_mlp_out"],
    }
    with torch.no_grad():
        m_clean, m_corrupt = float(metric(model(clean))), float(metric(model(corrupt)))
        with cc.hooks(model, fns):
            m_patched = float(metric(model(clean)))
    assert got == pytest.approx((m_patched - m_corrupt) / (m_clean - m_corrupt), abs=1e-4)
    assert abs(1 - got) > 0.05  # the three nodes matter: the check is not trivially 1


# -- conv nets -----------------------------------------------------------------------------------


class Stack(nn.Module):
    """A random sequential conv net: conv1 -> tanh -> conv2 (stride 2) -> relu -> mean -> linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 3, 3, stride=2)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.readout(torch.relu(self.conv2(torch.tanh(self.conv1(x)))))

    def readout(self, h):
        return self.head(h.mean(dim=(2, 3)))


class Flat(Stack):
    """Stack read out through x.view(batch, -1), as many conv nets do: a view the channels-last
    layout cannot give, so the ablated runs keep the default one."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3 * 4 * 4, 2)  # conv2's 3 channels at 4 x 4 on 9 x 9 images

    def readout(self, h):
        return self.head(h.view(h.shape[0], -1))


class Grouped(Stack):
    """Stack with grouped convs: conv1 2 -> 4 channels and conv2 4 -> 4, each in 2 groups."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, groups=2)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, groups=2)
        self.head = nn.Linear(4, 2)


def hand_conv(model, x, x_abl, kept):
    """Stack's (or Grouped's) output with each channel edge summed by hand: input channel c enters
    output channel c' of a conv as conv(x_c, W[c', c]) (c in the group of c'), from the ablated
    run where (c, c') is not kept."""

    def layer(conv, name, inp, inp_abl, source):
        outs = []
        per_in, per_out = conv.in_channels // conv.groups, conv.out_channels // conv.groups
        for o in range(conv.out_channels):
            total = conv.bias[o].expand(1)
            group = o // per_out
            for c in range(group * per_in, (group + 1) * per_in):
                keep = (f"{source}[{c}]", f"{name}[{o}]") in kept
                part = (inp if keep else inp_abl)[:, c : c + 1]
                weight = conv.weight[o : o + 1, c - group * per_in][:, None]
                total = total + F.conv2d(part, weight, stride=conv.stride, padding=conv.padding)
            outs.append(total)
        return torch.cat(outs, 1)

    with torch.no_grad():
        a1 = torch.tanh(model.conv1(x_abl))
        p2_abl = model.conv2(a1)
        p1 = layer(model.conv1, "conv1", x, x_abl, "conv1:input")
        p2 = layer(model.conv2, "conv2", torch.tanh(p1), a1, "conv1")
        n_out = model.conv2.out_channels
        out_kept = torch.tensor([(f"conv2[{c}]", "output") in kept for c in range(n_out)])
        p2 = torch.where(out_kept[None, :, None, None], p2, p2_abl)
        return model.readout(torch.relu(p2))


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_discover_finds_the_corner_circuit(method):
    images, labels = corner_images(24, seed=0)
    clean, corrupt = images[labels == 1][:8], images[labels == 0][:8]
    g = cc.discover(corner_cnn(), clean, corrupt, lambda out: out[:, 0].sum(), method=method)
    found = {(u, v) for u, v in g.edges if u.startswith("conv1[") and v.startswith("conv2[")}
    truth = {(f"{a}[{i}]", f"{b}[{j}]") for a, i, b, j in CORNER_CIRCUIT.edges}
    assert found == truth  # precision and recall 1.0
    assert set(g.predecessors("output")) == {"conv2[0]"}
    assert g.graph["faithfulness"] == 1.0  # the distractors contribute exactly nothing


# -- discover on the induction model ---------------------------------------------------------------


@pytest.mark.transformer
def test_discover_induction_circuit_is_small_and_faithful():
    model = cc.zoo.induction_transformer()
    clean, corrupt, batch = cc.zoo.induction_pair(16, seed=0)
    loss = cc.metrics.cross_entropy(clean, mask=batch.is_repeat)
    g = cc.discover(model, clean, corrupt, loss, meta={"model": "induction_transformer"})
    prev, ind = INDUCTION_HEADS["previous_token"], INDUCTION_HEADS["induction"]
    assert g.has_edge(f"blocks.0.attn.hook_z[{prev[1]}]", f"blocks.1.attn.hook_z[{ind[1]}]")
    candidates = g.graph["thresholds"]
    n_all = 4 * 1 + 4 * 5 + 9  # embed -> layer 0; embed and layer 0 -> layer 1; all -> logits
    assert f'"edges": {n_all}' in candidates
    assert g.number_of_edges() <= n_all / 4
    assert g.graph["faithfulness"] >= 0.8
    again = cc.faithfulness(model, g.copy(), clean, corrupt, loss)
    assert again == pytest.approx(g.graph["faithfulness"], abs=1e-6)
    fixed = cc.discover(model, clean, corrupt, loss, method="eap", top_k=4)
    assert fixed.number_of_edges() <= 4 and "top_k" in fixed.graph["thresholds"]


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.transformer
def test_bad_input_raises_and_leaves_the_model_alone(induction):
    model, clean, corrupt, loss, full = induction
    hooks_before = cc.hook_count(model)
    with torch.no_grad():
        before = model(clean)
    with pytest.raises(ConfigError, match="ablation"):
        cc.faithfulness(model, full, clean, corrupt, loss, ablation="bogus")
    with pytest.raises(ShapeMismatchError):
        cc.faithfulness(model, full, clean, corrupt[:3], loss)
    with pytest.raises(MetricError, match="undefined"):
        cc.faithfulness(model, full, clean, clean, loss)
    images, _ = corner_images(4, seed=0)
    corner = cc.build_graph(
        cc.attribute(corner_cnn(), images, images.flip(-1), lambda o: o.sum(), method="eap")
    )
    with pytest.raises(InputError, match="not a node"):
        cc.faithfulness(model, corner, clean, corrupt, loss)
    with pytest.raises(InputError, match="not a conv channel"):
        cc.faithfulness(corner_cnn(), full, images, images.flip(-1), lambda o: o.sum())
    check = Faithfulness(corner_cnn(), corner, images[1:3], images[[0, 3]], lambda o: o.sum())
    with pytest.raises(InputError, match="'conv9\\[0\\]' is not a node of the graph"):
        check.keep([("conv9[0]", "output")])
    with pytest.raises(InputError, match="'conv1\\[0\\]' does not feed the output"):
        check.keep([("conv2[0]", "output"), ("conv1[0]", "output")])
    with pytest.raises(InputError, match=r"'conv1:input\[0\]' -> 'conv2\[1\]': it does not join"):
        check.keep([("conv1[0]", "conv2[1]"), ("conv1:input[0]", "conv2[1]")])
    with pytest.raises(ConfigError, match="either target"):
        cc.discover(model, clean, corrupt, loss, target=0.9, top_k=3)
    assert cc.hook_count(model) == hooks_before
    with torch.no_grad():
        assert torch.equal(model(clean), before)


class Residual(nn.Module):
    """A random residual block: conv1 -> relu = h; relu(bn(conv2(h)) + h) -> conv3 (stride 2) ->
    mean -> linear. conv3 reads conv2 and, through the skip connection, conv1; the ReLU after the
    addition mixes the two (nonlinearly) before conv3 sees them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv3 = nn.Conv2d(3, 2, 3, stride=2)
        self.head = nn.Linear(2, 2)
        self.bn.running_mean.normal_()
        self.bn.running_var.uniform_(0.5, 2.0)
        self.bn.weight.data.normal_()

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        return self.head(self.conv3(torch.relu(self.bn(self.conv2(h)) + h)).mean(dim=(2, 3)))


def hand_residual(model, x, x_abl, kept):
    """Residual's output with each channel edge summed by hand: output channel o of a conv is the
    sum over input channels c of conv(input_c, W[o, c]), where conv3's input_c is computed from
    conv2's and conv1's channel c, each from the ablated run unless its edge to o is kept."""

    def pair(conv, o, c, inp):
        return F.conv2d(inp[:, c : c + 1], conv.weight[o : o + 1, c : c + 1],
                        stride=conv.stride, padding=conv.padding)  # fmt: skip

    def layer(conv, inputs):  # inputs(o, c) -> the input the pair (c, o) reads
        return torch.cat([
            conv.bias[o] + sum(pair(conv, o, c, inputs(o, c)) for c in range(conv.in_channels))
            for o in range(conv.out_channels)
        ], 1)  # fmt: skip

    def edge(source, name, o):
        return (source, f"{name}[{o}]") in kept

    def into1(o, c):
        return x if edge(f"conv1:input[{c}]", "conv1", o) else x_abl

    def into2(o, c):
        return torch.relu(p1 if edge(f"conv1[{c}]", "conv2", o) else a1)

    def into3(o, c):
        branch = p2 if edge(f"conv2[{c}]", "conv3", o) else a2
        skip = p1 if edge(f"conv1[{c}]", "conv3", o) else a1
        return torch.relu(model.bn(branch) + torch.relu(skip))

    with torch.no_grad():
        a1 = model.conv1(x_abl)
        a2 = model.conv2(torch.relu(a1))
        a3 = model.conv3(torch.relu(model.bn(a2) + torch.relu(a1)))
        p1 = layer(model.conv1, into1)
        p2 = layer(model.conv2, into2)
        p3 = layer(model.conv3, into3)
        out_kept = torch.tensor([(f"conv3[{c}]", "output") in kept for c in range(2)])
        p3 = torch.where(out_kept[None, :, None, None], p3, a3)
        return model.head(p3.mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("net", "hand", "n_edges", "sizes"),
    [
        (Stack, hand_conv, 2 * 4 + 4 * 3 + 3, (4, 10, 16)),
        (Flat, hand_conv, 2 * 4 + 4 * 3 + 3, (4, 10, 16)),
        # each input channel feeds the 2 output channels of its group
        (Grouped, hand_conv, 2 * 2 + 4 * 2 + 4, (4, 8, 12)),
        # conv3 reads conv2 and, through the skip, conv1: 2 x (3 x 2) edges
        (Residual, hand_residual, 2 * 3 + 3 * 3 + 2 * (3 * 2) + 2, (5, 12, 20, 27)),
    ],
)
@pytest.mark.parametrize("call_macs", [0, 10**12])  # a conv's patterns apart, or merged
def test_conv_faithfulness_equals_a_hand_written_edge_ablation(
    net, hand, n_edges, sizes, call_macs, monkeypatch
):
    monkeypatch.setattr(channel_ablation, "CALL_MACS", call_macs)
    model = net().eval()
    gen = torch.Generator().manual_seed(3)
    clean, corrupt = torch.randn(2, 4, 2, 9, 9, generator=gen)

    def metric(out):
        return out[:, 0].mean() - out[:, 1].mean()

    full = cc.build_graph(cc.attribute(model, clean, corrupt, metric, method="eap"))
    assert full.number_of_edges() == n_edges
    with torch.no_grad():
        m_clean, m_corrupt = float(metric(model(clean))), float(metric(model(corrupt)))
    all_kept = float(metric(hand(model, clean, corrupt, set(full.edges))))
    assert all_kept == pytest.approx(m_clean, abs=1e-5)  # the hand forward is the model
    rng = random.Random(4)
    for size in sizes:
        sub = full.edge_subgraph(rng.sample(list(full.edges), size)).copy()
        want = (float(metric(hand(model, clean, corrupt, set(sub.edges)))) - m_corrupt) / (
            m_clean - m_corrupt
        )
        assert cc.faithfulness(model, sub, clean, corrupt, metric) == pytest.approx(want, abs=1e-4)
    assert cc.hook_count(model) == 0


def test_a_skip_connection_from_the_input_is_refused_with_advice():
    class InputSkip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv1, self.conv2 = (nn.Conv2d(2, 2, 3, padding=1) for _ in range(2))

        def forward(self, x):
            return self.conv2(torch.relu(self.conv1(x)) + x).mean(dim=(1, 2, 3))

    model = InputSkip().eval()
    clean, corrupt = torch.randn(2, 3, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    g = cc.build_graph(cc.attribute(model, clean, corrupt, lambda o: o.sum(), method="eap"))
    with pytest.raises(ModelError, match="skip connection from the input"):
        cc.faithfulness(model, g, clean, corrupt, lambda o: o.sum())
    assert cc.hook_count(model) == 0
