"""Edge ablation as changes to a recorded run (`circuits.modelgraph.residual_delta`) against the
hook-based pass that runs the model's own blocks (`ResidualAblation.run`), on both
transformer-lens lines: random masks from the clean run, from a recorded circuit, and single-edge
flips of it (ACDC's tests); and the fallback where the model's own run is not reproduced.
"""

from __future__ import annotations

import pytest
import torch

import circuits as cc
from circuits.capture import Baseline, ablated, capture
from circuits.metrics import logit_diff, metric_positions
from circuits.modelgraph import residual_delta
from circuits.modelgraph.residual_ablation import Clean, ResidualAblation
from circuits.modelgraph.residual_delta import ResidualDelta

pytestmark = [pytest.mark.transformer, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module", params=["mlp", "attn_only"])
def model(request):
    """In float64: the two computations round differently, and a receiver whose senders are
    mostly cut (zero ablation) reads a small difference of large streams, which its norm then
    scales up (float32 gaps up to 6e-4 in KL on transformer-lens 3; 1e-13 in float64). With
    MLPs and LayerNorm, or attention only without norms."""
    shape = dict(n_layers=3, d_model=32, n_heads=4, d_head=8, d_vocab=40, n_ctx=10, seed=3)
    if request.param == "mlp":
        model = cc.zoo.tiny_transformer(**shape, d_mlp=64)
    else:
        model = cc.zoo.tiny_transformer(**shape, attn_only=True, normalization_type=None)
    model = model.double()
    model.cfg.dtype = torch.float64  # HookedTransformer casts its attention pattern to it
    return model


@pytest.fixture(scope="module")
def tokens():
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 40, (3, 10), generator=gen)
    return clean, torch.randint(0, 40, (3, 10), generator=gen)


def setup(model, tokens, metric, ablation="patch"):
    clean, corrupt = tokens
    g = ResidualAblation(model)
    values, _ = ablated(model, g.sender_sites, Baseline(ablation=ablation), clean, corrupt, batch=3)
    acts = capture(model, clean, sites=g.clean_sites, metric=metric)
    base = Clean(clean, dict(acts), metric_positions(metric))
    return g, base, values


def metrics(model, tokens):
    clean_logits = model(tokens[0]).detach()
    return [
        logit_diff(correct=1, incorrect=2, position=-1),
        logit_diff(correct=1, incorrect=2, position=4),
        cc.metrics.kl_div(clean_logits, position=None),
    ]


def random_masks(g, n, p, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *g.valid.shape, generator=gen) < p) & g.valid


def gap(metric, ours, theirs):
    """The largest difference of the metric, relative to its size where that exceeds 1."""
    values = [(float(metric(a)), float(metric(b))) for a, b in zip(ours, theirs, strict=True)]
    return max(abs(a - b) / max(1.0, abs(b)) for a, b in values)


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("ablation", ["patch", "zero"])
def test_masks_match_the_hook_pass(model, tokens, which, ablation):
    metric = metrics(model, tokens)[which]
    g, base, values = setup(model, tokens, metric, ablation)
    delta = ResidualDelta.build(g, base, values)
    assert delta is not None, "the delta runs are off on this model"
    masks = random_masks(g, 5, 0.5, seed=which)
    reference = g.run(base, values, masks)
    assert gap(metric, delta.outputs(delta.clean, masks), reference) <= 1e-9
    # the same masks from a recorded circuit that shares few of their edges
    circuit = delta.state(random_masks(g, 1, 0.3, seed=9)[0])
    assert gap(metric, delta.outputs(circuit, masks), reference) <= 1e-9


def test_single_edge_flips_of_a_recorded_circuit(model, tokens):
    """ACDC's tests: the current circuit with one more edge cut (or put back)."""
    metric = metrics(model, tokens)[2]
    g, base, values = setup(model, tokens, metric)
    delta = ResidualDelta.build(g, base, values)
    keep = random_masks(g, 1, 0.4, seed=5)[0]
    circuit = delta.state(keep)
    edges = g.valid.nonzero()
    picks = edges[torch.randperm(len(edges), generator=torch.Generator().manual_seed(1))[:12]]
    masks = keep.repeat(len(picks), 1, 1)
    masks[torch.arange(len(picks)), picks[:, 0], picks[:, 1]] ^= True
    reference = g.run(base, values, masks)
    assert gap(metric, delta.outputs(circuit, masks), reference) <= 1e-9
    # the recorded run's own output (ACDC's current metric)
    assert gap(metric, [delta.output(circuit)], g.run(base, values, keep[None])) <= 1e-9
    # a recorded run computed from another recorded one is the same run
    again = delta.state(masks[0], circuit)
    assert gap(metric, delta.outputs(again, masks[1:]), reference[1:]) <= 1e-9


def test_senders_no_variant_reads_do_not_run_again(model, tokens, monkeypatch):
    """A sender none of whose edges out any variant keeps is never read, so it does not run
    again: the empty circuit runs no head or MLP. Masks with whole senders cut off, sparse ones
    and the empty one still match the hook pass, from the clean run and from a recorded circuit.
    """
    metric = metrics(model, tokens)[2]
    g, base, values = setup(model, tokens, metric)
    delta = ResidualDelta.build(g, base, values)
    off = torch.rand(4, len(g.senders), generator=torch.Generator().manual_seed(12)) < 0.5
    masks = torch.cat([
        random_masks(g, 4, 0.6, seed=11) & ~off[:, :, None],
        random_masks(g, 2, 0.05, seed=13),
        torch.zeros(1, *g.valid.shape, dtype=torch.bool),
    ])  # fmt: skip
    reference = g.run(base, values, masks)
    circuit = delta.state(random_masks(g, 1, 0.5, seed=14)[0])
    for near in (delta.clean, circuit):
        assert gap(metric, delta.outputs(near, masks), reference) <= 1e-9
    ran = []
    for name in ("_project", "_mlp"):
        monkeypatch.setattr(delta, name, lambda *a, name=name: ran.append(name))
    assert gap(metric, delta.outputs(delta.clean, masks[-1:]), reference[-1:]) <= 1e-9
    assert ran == []


def test_a_run_it_does_not_reproduce_falls_back(model, tokens, monkeypatch):
    """A wrong attention scale makes its clean run differ from the model's: no delta runs, and
    edge patching still gives the hook pass's scores."""
    metric = metrics(model, tokens)[0]
    g, base, values = setup(model, tokens, metric)
    fast = cc.attribute(model, *tokens, metric, method="edge_patching", progress=False)
    circuit = cc.prune(cc.build_graph(fast), top_k=12)
    faithful = cc.faithfulness(model, circuit, *tokens, metric)
    monkeypatch.setattr(residual_delta, "_attn_scale", lambda attn: 1.0)
    assert ResidualDelta.build(g, base, values) is None
    slow = cc.attribute(model, *tokens, metric, method="edge_patching", progress=False)
    valid = ~torch.isnan(fast.scores)
    assert torch.equal(valid, ~torch.isnan(slow.scores))
    assert torch.allclose(fast.scores[valid], slow.scores[valid], atol=1e-9)
    assert cc.faithfulness(model, circuit, *tokens, metric) == pytest.approx(faithful, abs=1e-9)


@pytest.mark.parametrize(
    ("flag", "value"),
    [("clip_qkv", 1.0), ("use_qk_norm", True), ("positional_embedding_type", "rotary")],
)
def test_attention_it_does_not_compute_is_refused(model, tokens, flag, value, monkeypatch):
    """Options the clean-run check may not see (a clip the clean run does not reach) are refused
    by name."""
    metric = metrics(model, tokens)[0]
    g, base, values = setup(model, tokens, metric)
    assert ResidualDelta.build(g, base, values) is not None
    monkeypatch.setattr(model.cfg, flag, value, raising=False)
    assert ResidualDelta.build(g, base, values) is None


def test_a_hugging_face_gpt2_bridge(tmp_path):
    """transformer-lens 4 wraps Hugging Face's own GPT-2 attention (a `scaling` factor, not a
    divisor): the delta runs are on there too, and match the hook pass (float32)."""
    transformers = pytest.importorskip("transformers")
    bridge = pytest.importorskip("transformer_lens.model_bridge")
    if not hasattr(bridge.TransformerBridge, "boot_transformers"):
        pytest.skip("this transformer-lens has no Hugging Face bridge")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=40, n_positions=16,
                                     architectures=["GPT2LMHeadModel"])  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path)  # a local folder: nothing is downloaded
    model = bridge.TransformerBridge.boot_transformers(str(tmp_path), hf_model=hf, tokenizer=None)
    gen = torch.Generator().manual_seed(0)
    tokens = (
        torch.randint(0, 40, (3, 10), generator=gen),
        torch.randint(0, 40, (3, 10), generator=gen),
    )
    metric = cc.metrics.kl_div(model(tokens[0]).detach(), position=None)
    g, base, values = setup(model, tokens, metric)
    delta = ResidualDelta.build(g, base, values)
    assert delta is not None, "the delta runs are off on a Hugging Face bridge"
    masks = random_masks(g, 5, 0.5, seed=1)
    assert gap(metric, delta.outputs(delta.clean, masks), g.run(base, values, masks)) <= 1e-6
