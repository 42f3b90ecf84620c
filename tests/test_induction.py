"""The trained induction model: its claims checked from behaviour and attention, and its data."""

from __future__ import annotations

import json

import pytest
import torch

import circuits as cc
from circuits.zoo.induction import (
    CONFIG,
    INDUCTION_HEADS,
    WEIGHTS_PATH,
    RepeatBatch,
    head_scores,
    induction_pair,
    induction_score,
    induction_transformer,
    prev_token_score,
    repeated_tokens,
)
from circuits.zoo.train_induction import evaluate, next_token_loss, train
from circuits.zoo.transformers import hooked_available, tiny_transformer

pytestmark = [pytest.mark.transformer, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def model():
    return induction_transformer()


@pytest.fixture(scope="module")
def batch():
    return repeated_tokens(128, seed=1)


@pytest.fixture(scope="module")
def scores(model, batch):
    return head_scores(model, batch)


# (1) the circuit


def test_induction_head_attends_to_the_token_after_the_first_occurrence(model, batch):
    assert induction_score(model, batch, *INDUCTION_HEADS["induction"]) >= 0.6


def test_previous_token_head_in_layer_0(model, batch):
    layer, head = INDUCTION_HEADS["previous_token"]
    assert layer == 0
    assert prev_token_score(model, batch, layer, head) >= 0.4


def test_named_heads_are_the_ones_the_behaviour_needs(model, batch, scores):
    assert model.induction_heads == INDUCTION_HEADS
    (_, prev), (_, ind) = INDUCTION_HEADS["previous_token"], INDUCTION_HEADS["induction"]
    assert scores["previous_token"][0, prev] >= scores["previous_token"][0].max() - 0.05
    assert scores["induction"][1, ind] >= scores["induction"][1].max() - 0.1
    assert scores["induction"][0].max() < 0.2  # layer 0 cannot do induction on its own
    with torch.no_grad():
        clean = next_token_loss(model, batch.tokens)[batch.is_repeat].mean()
        ablated = []
        for head in range(4):
            with cc.hooks(model, {"blocks.1.attn.hook_z": _zero_head(head)}):
                ablated.append(next_token_loss(model, batch.tokens)[batch.is_repeat].mean())
    assert int(torch.stack(ablated).argmax()) == ind
    assert ablated[ind] > 3 * clean  # without it, the repeat is mostly lost
    with cc.hooks(model, {"blocks.0.attn.hook_z": _zero_head(prev)}):
        assert induction_score(model, batch, 1, ind) < 0.5 * scores["induction"][1, ind]


def _zero_head(head):
    def fn(z, site):
        z = z.clone()
        z[:, :, head] = 0
        return z

    return fn


def test_single_head_scores_match_head_scores(model, batch, scores):
    for layer, head in [(0, 1), (1, 3)]:
        ind = induction_score(model, batch, layer, head)
        prev = prev_token_score(model, batch, layer, head)
        assert ind == pytest.approx(float(scores["induction"][layer, head]), abs=1e-6)
        assert prev == pytest.approx(float(scores["previous_token"][layer, head]), abs=1e-6)


def test_uniform_attention_scores_low():
    """A head that attends evenly everywhere (an untrained model's) is far below the claims."""
    random_model = tiny_transformer(**CONFIG)
    small = repeated_tokens(16, seed=2)
    got = head_scores(random_model, small)
    assert got["induction"].max() < 0.2
    assert got["previous_token"].max() < 0.4


# (2) behaviour


def test_second_occurrence_is_predicted_far_better_than_the_first(model, batch):
    with torch.no_grad():
        loss = next_token_loss(model, batch.tokens)
    second, first = loss[batch.is_repeat].mean(), loss[batch.is_first].mean()
    assert second < 0.3 * first


def test_copying_is_by_content_not_position(model):
    """Corrupting the first occurrence (same positions) removes the benefit on the second."""
    clean, corrupt, meta = induction_pair(128, seed=3)
    with torch.no_grad():
        clean_loss = next_token_loss(model, clean)[meta.is_repeat].mean()
        corrupt_loss = next_token_loss(model, corrupt)[meta.is_repeat].mean()
        first = next_token_loss(model, clean)[meta.is_first].mean()
    assert clean_loss < 0.3 * first
    assert corrupt_loss > 0.8 * first


def test_evaluate_reports_the_shipped_record(model):
    record = json.loads(WEIGHTS_PATH.with_suffix(".json").read_text())
    assert record["config"] == CONFIG
    heads = {k: tuple(v) for k, v in record["eval"]["heads"].items()}
    assert heads == INDUCTION_HEADS
    figures = evaluate(model, repeated_tokens(64, seed=4))
    assert figures["loss_second_occurrence"] < 0.3 * figures["loss_first_occurrence"]


# (3) the shipped weights


def test_weights_file_is_small():
    assert WEIGHTS_PATH.stat().st_size < 1_000_000


@pytest.mark.skipif(not hooked_available(), reason="HookedTransformer needs transformer-lens 3.x")
def test_both_lines_give_identical_logits(batch):
    hooked, bridge = induction_transformer(line="hooked"), induction_transformer(line="bridge")
    with torch.no_grad():
        a, b = hooked(batch.tokens[:16]), bridge(batch.tokens[:16])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert bridge.induction_heads == INDUCTION_HEADS


# (4) the data


def test_generator_is_deterministic_by_seed():
    a, b, c = (repeated_tokens(8, seed=s) for s in (5, 5, 6))
    for field in ("tokens", "first", "second", "length", "is_repeat", "is_first"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.tokens, c.tokens)


def test_metadata_describes_the_repeat():
    data = repeated_tokens(200, seq_len=48, min_len=4, max_len=12, d_vocab=40, seed=7)
    assert isinstance(data, RepeatBatch) and len(data) == 200
    assert data.tokens.shape == (200, 48) and data.tokens.max() < 40
    for i in range(len(data)):
        a, b, n = int(data.first[i]), int(data.second[i]), int(data.length[i])
        assert 4 <= n <= 12 and a + n <= b and b + n <= 48
        segment = data.tokens[i, a : a + n]
        assert torch.equal(data.tokens[i, b : b + n], segment)
        assert len(set(segment.tolist())) == n  # distinct: one place to copy from inside it
        assert data.is_repeat[i].nonzero().flatten().tolist() == list(range(b + 1, b + n))
        assert data.is_first[i].nonzero().flatten().tolist() == list(range(a + 1, a + n))
    offsets = (data.second - data.first).unique()
    assert len(offsets) > 10  # no fixed offset to copy from by position


def test_induction_pair_corrupts_only_the_first_occurrence():
    clean, corrupt, meta = induction_pair(50, seed=8)
    assert torch.equal(clean, repeated_tokens(50, seed=8).tokens)
    for i in range(50):
        a, b, n = int(meta.first[i]), int(meta.second[i]), int(meta.length[i])
        changed = (clean[i] != corrupt[i]).nonzero().flatten().tolist()
        assert changed == list(range(a, a + n))
        assert not set(corrupt[i, a : a + n].tolist()) & set(clean[i, b : b + n].tolist())
    again = induction_pair(50, seed=8)
    assert torch.equal(again[1], corrupt)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be a positive int"),
        ({"n": -3}, "n must be a positive int"),
        ({"n": 4, "seq_len": 20}, "seq_len=20 is too short"),
        ({"n": 4, "min_len": 9, "max_len": 8}, "min_len <= max_len"),
        ({"n": 4, "min_len": 1}, "min_len <= max_len"),
        ({"n": 4, "d_vocab": 16}, "d_vocab=16 leaves no filler"),
        ({"n": 2.5}, "n must be a positive int"),
    ],
)
def test_bad_data_arguments_raise_config_error(kwargs, match):
    for make in (repeated_tokens, induction_pair):
        with pytest.raises(cc.ConfigError, match=match):
            make(**kwargs)


def test_bad_score_arguments(model, batch):
    with pytest.raises(cc.ConfigError, match="layer must be an int in"):
        induction_score(model, batch, 2, 0)
    with pytest.raises(cc.ConfigError, match="head must be an int in"):
        prev_token_score(model, batch, 0, 4)
    with pytest.raises(cc.InputError, match="RepeatBatch"):
        induction_score(model, batch.tokens, 1, 0)
    with pytest.raises(cc.ModelError, match="TransformerLens model"):
        head_scores(torch.nn.Linear(2, 2), batch)


# (5) the training script


def test_training_reduces_the_loss_and_is_deterministic():
    _, losses = train(seed=0, steps=0, skip_steps=16, batch_size=8, lr=3e-2)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1
    first, _ = train(seed=1, steps=2, skip_steps=2, batch_size=4)
    second, _ = train(seed=1, steps=2, skip_steps=2, batch_size=4)
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.are_deterministic_algorithms_enabled()  # the global flag is put back
