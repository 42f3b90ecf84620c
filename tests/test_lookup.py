"""The trained lookup model: its circuit checked by interventions, its task, data and training.

The thresholds below are properties of the mechanism with room to spare, not copies of the
measured figures (`weights/lookup.json` has those: on 1,024 held-out sequences the accuracy is
1.0, the previous-token head puts 0.9997 of its attention on the previous position, and removing
that head or MLP 0 leaves chance, 1/16, while removing any other head or MLP 1 leaves 1.0). Chance
is the reference for "destroyed": the answer is independent of either token alone, so a model that
lost the route from one of them can only guess. "Does not matter" allows 0.85 where 1.0 was
measured: the claim is that nothing else is needed, not an exact figure.
"""

from __future__ import annotations

import json

import pytest
import torch

import circuits as cc
from circuits.metrics import logit_diff
from circuits.zoo.lookup import (
    CONFIG,
    IGNORE,
    LOOKUP_CIRCUIT,
    LOOKUP_TABLE,
    WEIGHTS_PATH,
    LookupBatch,
    latin_square,
    lookup_accuracy,
    lookup_batch,
    lookup_pair,
    lookup_targets,
    lookup_transformer,
    mlp_logit_lens,
    previous_token_scores,
)
from circuits.zoo.train_lookup import evaluate, init_weights, train
from circuits.zoo.transformers import hooked_available, hooked_state_dict

pytestmark = [pytest.mark.transformer, pytest.mark.usefixtures("one_thread")]

CHANCE = 1 / CONFIG["d_vocab"]
LAYER, HEAD = LOOKUP_CIRCUIT.previous_token
MLP = LOOKUP_CIRCUIT.lookup_mlp


@pytest.fixture(scope="module")
def model():
    return lookup_transformer()


@pytest.fixture(scope="module")
def batch():
    return lookup_batch(256, seed=1)


def accuracy_metric(targets):
    """Accuracy over the scored positions, as a metric of one run's logits."""
    scored = targets != IGNORE

    def metric(logits):
        return (logits.argmax(-1) == targets)[scored].float().mean()

    return metric


# (1) behaviour


def test_the_model_solves_the_task(model):
    assert lookup_accuracy(model, lookup_batch(512, seed=2)) >= 0.98
    assert model.circuit == LOOKUP_CIRCUIT


def test_accuracy_holds_at_every_position(model, batch):
    with torch.no_grad():
        right = model(batch.tokens).argmax(-1) == batch.targets
    assert right[:, 1:].float().mean(0).min() >= 0.9  # no position is left to chance


# (2) the circuit, by intervention


def test_previous_token_head_attends_to_the_previous_position(model, batch):
    scores = previous_token_scores(model, batch)
    assert scores.shape == (CONFIG["n_layers"], CONFIG["n_heads"])
    assert scores[LAYER, HEAD] >= 0.8  # most of its attention, on every sequence on average
    others = torch.cat([scores[LAYER, :HEAD], scores[LAYER, HEAD + 1 :], scores[1 - LAYER]])
    assert others.max() < 0.4  # no second head does the job


def test_ablating_the_previous_token_head_leaves_chance_and_others_do_not_matter(model, batch):
    res = cc.patch(
        model, batch.tokens, None, accuracy_metric(batch.targets),
        site="blocks.{L}.attn.hook_z", unit=("head",), ablation="mean",
    )  # fmt: skip
    acc = res.values  # [layer, head]
    assert res.baseline >= 0.98
    # Without the route from x[t-1] only x[t] is left, and it says nothing about the answer.
    assert acc[LAYER, HEAD] < 3 * CHANCE
    keep = torch.ones_like(acc, dtype=torch.bool)
    keep[LAYER, HEAD] = False
    assert acc[keep].min() >= 0.85  # the others are bystanders


def test_ablating_the_lookup_mlp_leaves_chance_and_the_other_does_not_matter(model, batch):
    res = cc.patch(
        model, batch.tokens, None, accuracy_metric(batch.targets),
        site="blocks.{L}.hook_mlp_out", ablation="mean",
    )  # fmt: skip
    assert res.values[MLP] < 3 * CHANCE  # nothing else combines the two tokens
    assert res.values[1 - MLP] >= 0.85


def test_patching_the_head_carries_the_previous_token(model):
    """Clean and corrupt differ only in x[t-1] for the last position; restoring the head's
    clean output in the corrupt run restores the clean answer there, and no other head does."""
    clean, corrupt, meta = lookup_pair(128, seed=3)
    good, bad = meta.targets[:, -1], lookup_targets(corrupt)[:, -1]
    assert (good != bad).all()
    metric = logit_diff(good, bad, position=-1)
    res = cc.patch(model, clean, corrupt, metric, site="blocks.{L}.attn.hook_z", unit=("head",))
    assert res.clean_value > 5 and res.corrupt_value < -5  # confident both ways
    recovered = res.normalised()
    assert recovered[LAYER, HEAD] > 0.8
    keep = torch.ones_like(recovered, dtype=torch.bool)
    keep[LAYER, HEAD] = False
    assert recovered[keep].abs().max() < 0.1
    mlps = cc.patch(model, clean, corrupt, metric, site="blocks.{L}.hook_mlp_out").normalised()
    assert mlps[MLP] > 0.8  # MLP 0's clean output writes the clean answer
    # MLP 1's clean output restores much of it too: it carries the amplified answer (see
    # test_the_other_mlp_only_amplifies); ablation, not denoising, shows which MLP decides.


def test_the_lookup_mlp_writes_the_answer(model, batch):
    """Its direct effect on the logits alone (through ln_final and the unembedding) ranks the
    table's answer first, and only while the previous-token head delivers x[t-1]."""
    assert _lens_top1(model, batch, MLP) >= 0.9
    with cc.hooks(model, {LOOKUP_CIRCUIT.head_site: _zero_head(HEAD)}):
        assert _lens_top1(model, batch, MLP) < 3 * CHANCE


def test_the_other_mlp_only_amplifies(model, batch):
    """MLP 1 writes the answer too, but only the one MLP 0 wrote: with MLP 0 mean-ablated its
    direct effect falls to chance, while without MLP 1 the model still answers."""
    amp = LOOKUP_CIRCUIT.amplifier_mlp
    assert amp != MLP
    assert _lens_top1(model, batch, amp) >= 0.9
    with cc.hooks(model, {LOOKUP_CIRCUIT.mlp_site: _mean}):
        assert _lens_top1(model, batch, amp) < 3 * CHANCE
    with cc.hooks(model, {f"blocks.{amp}.hook_mlp_out": _mean}):
        assert lookup_accuracy(model, batch) >= 0.98


def _lens_top1(model, batch, layer):
    scored = batch.targets != IGNORE
    top = mlp_logit_lens(model, batch, layer=layer).argmax(-1)
    return float((top == batch.targets)[scored].float().mean())


def _zero_head(head):
    def fn(z, site):
        z = z.clone()
        z[:, :, head] = 0
        return z

    return fn


def _mean(out, site):
    return out.mean(dim=(0, 1), keepdim=True).expand_as(out)


def test_mlp_logit_lens_is_the_mlps_direct_effect(model, batch):
    """Adding the MLP's output once more just before ln_final, with ln_final's scale held at its
    clean value, moves the logits by exactly what `mlp_logit_lens` says."""
    small = LookupBatch(batch.tokens[:8], batch.targets[:8])
    sites = [LOOKUP_CIRCUIT.mlp_site, "ln_final.hook_scale"]
    out, scale = (cc.capture(model, small.tokens, sites=sites)[s] for s in sites)
    last = f"blocks.{CONFIG['n_layers'] - 1}.hook_resid_post"
    with torch.no_grad():
        base = model(small.tokens)
        fns = {last: lambda act, site: act + out, sites[1]: lambda act, site: scale}
        with cc.hooks(model, fns):
            moved = model(small.tokens)
    lens = mlp_logit_lens(model, small, layer=MLP)
    torch.testing.assert_close(moved - base, lens, rtol=1e-4, atol=1e-4)


# (3) the task and the data


def test_the_table_is_a_latin_square_and_reproducible():
    table = torch.tensor(LOOKUP_TABLE)
    assert table.shape == (16, 16)
    expected = torch.arange(16)
    assert (table.sort(dim=0).values == expected[:, None]).all()  # each column: every symbol once
    assert (table.sort(dim=1).values == expected[None, :]).all()  # each row: every symbol once
    assert latin_square(16, seed=0) == LOOKUP_TABLE
    other = torch.tensor(latin_square(7, seed=5))
    assert (other.sort(dim=0).values == torch.arange(7)[:, None]).all()
    assert (other.sort(dim=1).values == torch.arange(7)[None, :]).all()
    assert latin_square(16, seed=1) != LOOKUP_TABLE


def test_targets_follow_the_table():
    data = lookup_batch(64, seq_len=10, seed=4)
    assert isinstance(data, LookupBatch) and len(data) == 64
    assert data.tokens.shape == data.targets.shape == (64, 10)
    assert (data.targets[:, 0] == IGNORE).all()
    for i, t in [(0, 1), (5, 9), (63, 4)]:
        a, b = int(data.tokens[i, t - 1]), int(data.tokens[i, t])
        assert int(data.targets[i, t]) == LOOKUP_TABLE[a][b]
    assert torch.equal(lookup_targets(data.tokens), data.targets)


def test_batches_are_deterministic_by_seed():
    a, b, c = (lookup_batch(8, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.tokens, c.tokens)


@pytest.mark.parametrize("position", [-1, 5, -7])
def test_lookup_pair_changes_only_the_previous_token(position):
    clean, corrupt, meta = lookup_pair(50, seq_len=12, position=position, seed=8)
    pos = position % 12
    assert torch.equal(clean, lookup_batch(50, seq_len=12, seed=8).tokens)
    assert torch.equal(meta.tokens, clean)
    changed = (clean != corrupt).nonzero()
    assert changed[:, 0].tolist() == list(range(50)) and (changed[:, 1] == pos - 1).all()
    assert (lookup_targets(corrupt)[:, pos] != meta.targets[:, pos]).all()
    assert torch.equal(lookup_pair(50, seq_len=12, position=position, seed=8)[1], corrupt)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be a positive int"),
        ({"n": 2.5}, "n must be a positive int"),
        ({"n": 4, "seq_len": 1}, "seq_len must be an int >= 2"),
        ({"n": 4, "seq_len": 25}, "seq_len=25 is longer than the model's context"),
        ({"n": 4, "seed": -1}, "seed must be an int >= 0"),
    ],
)
def test_bad_data_arguments_raise_config_error(kwargs, match):
    for make in (lookup_batch, lookup_pair):
        with pytest.raises(cc.ConfigError, match=match):
            make(**kwargs)


def test_bad_arguments_elsewhere(model, batch):
    for position in (0, 24, -24, 1.5, True):
        with pytest.raises(cc.ConfigError, match="position"):
            lookup_pair(4, position=position)
    with pytest.raises(cc.InputError, match="LookupBatch"):
        lookup_accuracy(model, batch.tokens)
    with pytest.raises(cc.ModelError, match="TransformerLens model"):
        previous_token_scores(torch.nn.Linear(2, 2), batch)
    with pytest.raises(cc.ConfigError, match="layer must be an int in"):
        mlp_logit_lens(model, batch, layer=2)
    with pytest.raises(cc.InputError, match="symbols in"):
        lookup_targets(torch.tensor([[0, 16]]))
    with pytest.raises(cc.InputError, match="int64"):
        lookup_targets(torch.zeros(2, 3))
    with pytest.raises(cc.ConfigError, match="k must be a positive int"):
        latin_square(0)


# (4) the shipped weights


def test_weights_file_is_small():
    assert WEIGHTS_PATH.stat().st_size < 2_000_000


def test_the_record_matches_the_code():
    record = json.loads(WEIGHTS_PATH.with_suffix(".json").read_text())
    assert record["config"] == CONFIG
    assert record["table"] == [list(row) for row in LOOKUP_TABLE]
    circuit = record["eval"]["circuit"]
    assert tuple(circuit["previous_token"]) == LOOKUP_CIRCUIT.previous_token
    assert circuit["lookup_mlp"] == LOOKUP_CIRCUIT.lookup_mlp
    assert circuit["amplifier_mlp"] == LOOKUP_CIRCUIT.amplifier_mlp


def test_evaluate_reports_the_circuit(model):
    figures = evaluate(model, lookup_batch(128, seed=9))
    assert figures["accuracy"] >= 0.98
    assert figures["accuracy_without_head"][LAYER][HEAD] < 3 * CHANCE
    assert figures["accuracy_without_mlp"][MLP] < 3 * CHANCE
    assert figures["mlp_logit_lens_top1"][MLP] >= 0.9
    assert figures["amplifier_top1_without_lookup_mlp"] < 3 * CHANCE


@pytest.mark.skipif(not hooked_available(), reason="HookedTransformer needs transformer-lens 3.x")
def test_both_lines_give_identical_logits(batch):
    hooked, bridge = lookup_transformer(line="hooked"), lookup_transformer(line="bridge")
    with torch.no_grad():
        a, b = hooked(batch.tokens[:16]), bridge(batch.tokens[:16])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert bridge.circuit == LOOKUP_CIRCUIT
    assert lookup_accuracy(bridge, batch) == lookup_accuracy(hooked, batch)


# (5) the training script


def test_initial_weights_fit_and_are_seeded():
    first, again, other = init_weights(0), init_weights(0), init_weights(1)
    assert first.keys() == hooked_state_dict(lookup_transformer()).keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["embed.W_E"], other["embed.W_E"])
    assert (first["blocks.0.ln1.w"] == 1).all() and (first["blocks.0.mlp.b_in"] == 0).all()


def test_training_reduces_the_loss_and_is_deterministic():
    _, losses = train(seed=0, steps=24, warm_steps=8, fade_steps=8, batch_size=16, lr=3e-2)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05
    first, _ = train(seed=1, steps=3, warm_steps=1, fade_steps=1, batch_size=4)
    second, _ = train(seed=1, steps=3, warm_steps=1, fade_steps=1, batch_size=4)
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.are_deterministic_algorithms_enabled()  # the global flag is put back


def test_warm_up_trains_only_the_circuit():
    """In the warm-up the other heads' outputs are scaled by 0, so no gradient reaches them: their
    weights move only by AdamW's weight decay, the circuit head's by Adam steps."""
    start = init_weights(2)
    model, _ = train(seed=2, steps=3, warm_steps=3, fade_steps=1, batch_size=4, lr=1.0)
    end = hooked_state_dict(model)

    def moved(name, head):
        return float((end[name][head] - start[name][head]).abs().max())

    for name in (f"blocks.{LAYER}.attn.W_Q", f"blocks.{LAYER}.attn.W_V"):
        assert moved(name, HEAD) > 1e-2  # Adam steps of about the learning rate, 0.01 .. 0.03
        others = [h for h in range(CONFIG["n_heads"]) if h != HEAD]
        assert max(moved(name, h) for h in others) < 1e-3  # decay: 1e-4 of the weight a step
    assert float((end["blocks.1.mlp.W_in"] - start["blocks.1.mlp.W_in"]).abs().max()) < 1e-3
