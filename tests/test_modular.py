"""The modular-addition model: a clock by construction, checked with the manifold tools.

What is known independently of the tools: the task (the answer is (a + b) mod P), numpy's FFT
of the embedding (for the key frequencies), the model's own algebra (no LayerNorm, so the logits
are the answer site times W_U plus b_U: a restricted activation's logits can be computed by
hand), chance (log P) and the training record shipped with the weights.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import circuits as cc
from circuits import manifolds as M
from circuits.errors import ConfigError, InputError
from circuits.zoo.modular import MODULAR_KEY_FREQUENCIES, MODULUS, WEIGHTS_PATH

pytestmark = pytest.mark.transformer
P = MODULUS
ANSWER_SITE = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def model(one_thread):
    return cc.zoo.modular_transformer()


@pytest.fixture(scope="module")
def embed(model):
    return cc.zoo.hooked_state_dict(model)["embed.W_E"][:P]


@pytest.fixture(scope="module")
def clock(embed):
    spectrum = M.fourier_spectrum(embed, torch.arange(P), period=P, site="hook_embed")
    return spectrum.manifold(spectrum.key_frequencies(0.9))


def test_it_has_grokked_and_the_record_says_so(model):
    assert cc.zoo.modular_accuracy(model, cc.zoo.modular_batch("test")) == 1.0
    assert cc.zoo.modular_accuracy(model, cc.zoo.modular_batch("train")) == 1.0
    train, test = cc.zoo.modular_batch("train"), cc.zoo.modular_batch("test")
    pairs = lambda batch: set((batch.a * P + batch.b).tolist())  # noqa: E731
    assert len(train) + len(test) == P * P and not pairs(train) & pairs(test)
    record = json.loads(WEIGHTS_PATH.with_suffix(".json").read_text())
    assert record["eval"]["accuracy_test"] == 1.0
    assert record["training"]["first_step_test_accuracy_1"] is not None
    assert tuple(record["eval"]["key_frequencies"]) == MODULAR_KEY_FREQUENCIES
    assert WEIGHTS_PATH.stat().st_size < 1_000_000


def test_the_key_frequencies_carry_the_embedding(embed):
    centred = embed.double().numpy() - embed.double().numpy().mean(0)
    power = (np.abs(np.fft.rfft(centred, axis=0)[1:]) ** 2).sum(1)  # numpy, not our fit
    share = power / power.sum()
    order = np.argsort(-share)
    count = int(np.searchsorted(np.cumsum(share[order]), 0.9)) + 1
    by_numpy = tuple(sorted(int(f) + 1 for f in order[:count]))
    assert by_numpy == MODULAR_KEY_FREQUENCIES and len(by_numpy) <= 6
    spectrum = M.fourier_spectrum(embed, torch.arange(P), period=P)
    assert spectrum.key_frequencies(0.9) == by_numpy
    assert float(spectrum.power[[f - 1 for f in by_numpy]].sum()) >= 0.9


def test_each_key_frequency_is_a_circle(embed, clock):
    for f in clock.frequencies:
        res = M.circularity(clock.circle_points(embed, f), torch.arange(P), period=P, frequency=f)
        assert res.score >= 0.95, f


def test_restricted_loss_stays_and_excluded_loss_passes_chance(model, clock):
    batch = cc.zoo.modular_batch()
    acts = cc.capture(model, batch.tokens, sites=[ANSWER_SITE])[ANSWER_SITE][:, -1]
    answer = M.fourier_spectrum(acts, batch.answer, period=P, site=ANSWER_SITE)
    manifold = answer.manifold(clock.frequencies)
    with torch.no_grad():
        full = float(cc.zoo.modular_loss(model, batch))
    restricted = M.intervene(
        model, batch.tokens, manifold, mode="restrict", labels=batch.answer, pos=-1
    )
    excluded = M.intervene(
        model, batch.tokens, manifold, mode="exclude", labels=batch.answer, pos=-1
    )
    assert float(cc.zoo.modular_loss(model, batch, logits=restricted)) <= 1.1 * full
    assert float(cc.zoo.modular_loss(model, batch, logits=excluded)) >= math.log(P)
    # No LayerNorm: the restricted run's logits are the manifold's point times W_U, plus b_U.
    weights = cc.zoo.hooked_state_dict(model)
    by_hand = manifold.point(batch.answer) @ weights["unembed.W_U"] + weights["unembed.b_U"]
    assert torch.allclose(restricted[:, -1], by_hand, atol=1e-3)


def test_turning_the_clock_moves_the_answer(model, clock):
    batch = cc.zoo.modular_batch()
    for d in (1, 7, 23, 58):
        logits = M.intervene(model, batch.tokens, clock, by=d, pos=0)
        moved = (batch.answer + d) % P
        assert float((logits[:, -1, :P].argmax(-1) == moved).float().mean()) >= 0.9, d
    steered = cc.steer(
        model, batch.tokens[:64], clock, which=None, alpha=clock.shift_angles(7), pos=0
    )
    assert torch.allclose(
        steered, M.intervene(model, batch.tokens[:64], clock, by=7, pos=0), atol=1e-4
    )
    # "to": every circle of a's embedding set to residue 0's angles answers b.
    zero = torch.zeros(len(batch), dtype=torch.long)
    logits = M.intervene(model, batch.tokens, clock, mode="to", labels=zero, pos=0)
    assert float((logits[:, -1, :P].argmax(-1) == batch.b).float().mean()) >= 0.9


def test_bad_inputs_raise_clear_errors(model, clock):
    batch = cc.zoo.modular_batch("test")
    with pytest.raises(ConfigError, match="split"):
        cc.zoo.modular_batch("val")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="logits"):
        cc.zoo.modular_loss(model, batch, logits=torch.zeros(3, 3, P + 1))
    with pytest.raises(InputError, match="ModularBatch"):
        cc.zoo.modular_accuracy(model, batch.tokens)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="out of range"):
        M.intervene(model, batch.tokens, clock, by=1, pos=5)
