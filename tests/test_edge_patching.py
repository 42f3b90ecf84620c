"""Exact edge patching checked edge by edge against forward passes written out by hand.

The transformer reference rebuilds the model from its weights with every receiver (a head's
query, key or value input, an MLP's input, the logits) summing its senders one by one, so
ablating one edge is a plain choice of which value enters one sum; nothing is shared with the
hook-based implementation. The conv reference convolves every channel pair on its own.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import circuits as cc
from circuits.errors import ConfigError

# -- transformers ---------------------------------------------------------------------------------


def _ln(w, name, x, eps):
    if f"{name}.w" not in w and f"{name}.weight" not in w:
        return x
    u = x - x.mean(-1, keepdim=True)
    y = u / (u.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return y * w.get(f"{name}.w", w.get(f"{name}.weight")) + w.get(
        f"{name}.b", w.get(f"{name}.bias")
    )


def hand_forward(w, cfg, tokens, cut=None, ablated=None):
    """(logits, sender outputs) of a GPT-style model (weights `w` in HookedTransformer's layout)
    in which each receiver sums its senders one by one, the sender of `cut` = (sender, receiver)
    replaced by `ablated[sender]` at that receiver alone. Senders: "embed", ("head", L, h),
    ("mlp", L); receivers: (p, L, h) for p in "qkv", ("mlp", L), "logits"."""
    outs = {"embed": w["embed.W_E"][tokens] + w["pos_embed.W_pos"][: tokens.shape[1]]}
    bias = torch.zeros(())

    def read(receiver):
        total = bias
        for s, out in outs.items():
            total = total + (ablated[s] if cut == (s, receiver) else out)
        return total

    for ly in range(cfg.n_layers):
        new = {}
        for h in range(cfg.n_heads):
            q, k, v = (
                _ln(w, f"blocks.{ly}.ln1", read((p, ly, h)), cfg.eps)
                @ w[f"blocks.{ly}.attn.W_{p.upper()}"][h]
                + w[f"blocks.{ly}.attn.b_{p.upper()}"][h]
                for p in "qkv"
            )
            scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
            causal = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
            pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            new[("head", ly, h)] = (pattern @ v) @ w[f"blocks.{ly}.attn.W_O"][h]
        outs.update(new)
        bias = bias + w[f"blocks.{ly}.attn.b_O"]
        if not cfg.attn_only:
            x = _ln(w, f"blocks.{ly}.ln2", read(("mlp", ly)), cfg.eps)
            pre = x @ w[f"blocks.{ly}.mlp.W_in"] + w[f"blocks.{ly}.mlp.b_in"]
            outs[("mlp", ly)] = (
                F.gelu(pre) @ w[f"blocks.{ly}.mlp.W_out"] + w[f"blocks.{ly}.mlp.b_out"]
            )
    x = _ln(w, "ln_final", read("logits"), cfg.eps)
    return x @ w["unembed.W_U"] + w["unembed.b_U"], outs


def hand_scores(model, clean, corrupt, metric, ablation):
    """[sender, receiver] m(edge alone cut) - m(clean), in edge patching's key order."""
    w, cfg = cc.zoo.hooked_state_dict(model), model.cfg
    logits, _ = hand_forward(w, cfg, clean)
    with torch.no_grad():
        assert torch.allclose(logits, model(clean), atol=1e-4)  # the reference is the model
    _, ref = hand_forward(w, cfg, corrupt if corrupt is not None else clean)
    held = {
        "patch": ref,
        "zero": {s: torch.zeros_like(v[:1]) for s, v in ref.items()},
        "mean": {s: v.mean(0, keepdim=True) for s, v in ref.items()},
    }[ablation]
    senders = ["embed"]
    receivers = []
    for ly in range(cfg.n_layers):
        senders += [("head", ly, h) for h in range(cfg.n_heads)]
        receivers += [(p, ly, h) for p in "qkv" for h in range(cfg.n_heads)]
        if not cfg.attn_only:
            senders.append(("mlp", ly))
            receivers.append(("mlp", ly))
    receivers.append("logits")
    base = float(metric(logits))
    layer = {s: -1 if s == "embed" else s[1] + (0.5 if s[0] == "mlp" else 0) for s in senders}
    at = {
        r: cfg.n_layers if r == "logits" else r[1] + (0.5 if r[0] == "mlp" else 0)
        for r in receivers
    }
    out = torch.full((len(senders), len(receivers)), float("nan"))
    for i, s in enumerate(senders):
        for j, r in enumerate(receivers):
            if layer[s] < at[r]:
                logits, _ = hand_forward(w, cfg, clean, (s, r), held)
                out[i, j] = float(metric(logits)) - base
    return out


@pytest.fixture(scope="module")
def induction():
    model = cc.zoo.induction_transformer()
    clean, corrupt, batch = cc.zoo.induction_pair(4, seed=1)
    return model, clean, corrupt, cc.metrics.cross_entropy(clean, mask=batch.is_repeat)


@pytest.fixture(scope="module")
def mlp_model():
    model = cc.zoo.tiny_transformer(
        n_layers=3,
        d_model=32,
        n_heads=2,
        d_head=8,
        d_vocab=40,
        n_ctx=8,
        attn_only=False,
        normalization_type="LN",
        seed=5,
    )
    gen = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(0, 40, (2, 3, 6), generator=gen)
    return model, clean, corrupt, cc.metrics.logit_diff(correct=3, incorrect=7, position=-1)


@pytest.mark.transformer
@pytest.mark.parametrize("ablation", ["patch", "zero", "mean"])
@pytest.mark.parametrize("which", ["induction", "mlp_model"])
def test_transformer_edge_patching_equals_hand_written_single_edge_ablations(
    which, ablation, request
):
    model, clean, corrupt, metric = request.getfixturevalue(which)
    res = cc.attribute(
        model, clean, corrupt, metric, method="edge_patching", ablation=ablation, max_batch=7
    )
    want = hand_scores(model, clean, corrupt, metric, ablation)
    assert torch.equal(res.scores.isnan(), want.isnan())
    assert float((res.scores - want).nan_to_num().abs().max()) <= 1e-5
    eap = cc.attribute(model, clean, corrupt, metric, method="eap", ablation=ablation)
    assert res.coords == eap.coords and torch.equal(res.scores.isnan(), eap.scores.isnan())


@pytest.mark.transformer
def test_edge_patching_result_works_with_graph_prune_faithfulness_and_export(induction, tmp_path):
    model, clean, corrupt, metric = induction
    res = cc.attribute(model, clean, corrupt, metric, method="edge_patching")
    assert res.method == "edge_patching" and res.corrupt_value is not None
    g = cc.build_graph(res)
    sub = cc.prune(g, top_k=8)
    score = cc.faithfulness(model, sub, clean, corrupt, metric)
    assert -10 < score < 10
    cc.save_graph(sub, tmp_path / "edges.json")
    assert cc.load_graph(tmp_path / "edges.json").number_of_edges() == sub.number_of_edges()
    zero = cc.attribute(model, clean, None, metric, method="edge_patching", ablation="zero")
    assert zero.corrupt_value is not None


@pytest.mark.transformer
def test_edge_patching_bad_input(induction):
    model, clean, corrupt, metric = induction
    before = cc.hook_count(model)
    with pytest.raises(ConfigError, match="corrupt"):
        cc.attribute(model, clean, None, metric, method="edge_patching")
    with pytest.raises(ConfigError, match="layers"):
        cc.attribute(model, clean, corrupt, metric, method="edge_patching", layers=["x"])
    assert cc.hook_count(model) == before


# -- conv nets ------------------------------------------------------------------------------------


class Residual(nn.Module):
    """conv1 -> relu = h; relu(conv2(h) + h) -> conv3 -> mean -> linear: conv3 reads conv2 and,
    through the skip, conv1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv3 = nn.Conv2d(3, 2, 3, stride=2)
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(h) + h)
        return self.head(self.conv3(y).mean((2, 3)))


def conv_hand(m, x, cut=None, held=None):
    """The Residual model with each conv channel a sum of single-channel convolutions; `cut` =
    (node, c, target, c') takes held[node][:, c] on that one pair (target "out": the head)."""

    def conv(layer, name, inputs):
        """inputs: per input channel c, a function of c' giving the value conv `name` reads."""
        outs = []
        for o in range(layer.out_channels):
            total = layer.bias[o]
            for c in range(layer.in_channels):
                xc = inputs(c, o)
                total = (
                    total
                    + F.conv2d(
                        xc[:, None],
                        layer.weight[o : o + 1, c : c + 1],
                        stride=layer.stride,
                        padding=layer.padding,
                    )[:, 0]
                )
            outs.append(total)
        return torch.stack(outs, 1)

    def pick(node, value, target, c, o):
        if cut is not None and cut[:4] == (node, c, target, o):
            return held[node][:, c]
        return value[:, c]

    a = conv(m.conv1, "conv1", lambda c, o: pick("input", x, "conv1", c, o))
    b = conv(m.conv2, "conv2", lambda c, o: torch.relu(pick("conv1", a, "conv2", c, o)))

    def skip(c, o):
        return torch.relu(
            pick("conv2", b, "conv3", c, o) + torch.relu(pick("conv1", a, "conv3", c, o))
        )

    y = conv(m.conv3, "conv3", skip)
    y = torch.stack([pick("conv3", y, "out", c, 0) for c in range(y.shape[1])], 1)
    return m.head(y.mean((2, 3))), {"input": x, "conv1": a, "conv2": b, "conv3": y}


@pytest.mark.parametrize("ablation", ["patch", "zero", "mean"])
def test_conv_edge_patching_equals_hand_written_single_edge_ablations(ablation):
    m = Residual().eval()
    gen = torch.Generator().manual_seed(1)
    clean, corrupt = torch.randn(2, 3, 2, 7, 7, generator=gen)

    def metric(out):
        return out[:, 0].mean() - out[:, 1].mean()

    with torch.no_grad():
        out, _ = conv_hand(m, clean)
        assert torch.allclose(out, m(clean), atol=1e-5)
        _, ref = conv_hand(m, corrupt)
        held = {
            "patch": ref,
            "zero": {k: torch.zeros_like(v) for k, v in ref.items()},
            "mean": {k: v.mean(0, keepdim=True).expand_as(v) for k, v in ref.items()},
        }[ablation]
        res = cc.attribute(
            m, clean, corrupt, metric, method="edge_patching", ablation=ablation, max_batch=10
        )
        base = float(metric(out))
        keys = {
            "conv1:input": "input",
            "conv1": "conv1",
            "conv2": "conv2",
            "conv3": "conv3",
            "output": "out",
        }
        checked = 0
        for i, src in enumerate(res.coords["source"]):
            for j, tgt in enumerate(res.coords["target"]):
                if torch.isnan(res.scores[i, j]):
                    continue
                node, c = src.rsplit("[", 1) if "[" in src else (src, "0]")
                target, o = tgt.rsplit("[", 1) if "[" in tgt else (tgt, "0]")
                cut = (keys[node], int(c[:-1]), keys[target], int(o[:-1]))
                want = float(metric(conv_hand(m, clean, cut, held)[0])) - base
                assert float(res.scores[i, j]) == pytest.approx(want, abs=1e-5), (src, tgt)
                checked += 1
    assert checked == 2 * 3 + 3 * 3 + 3 * 2 * 2 + 2
