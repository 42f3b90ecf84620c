"""The zoo's shipped dictionaries: the quality the issue asks for, and the lookup transcoder's
latents checked against the mechanism the lookup transformer has by construction."""

from __future__ import annotations

import pytest
import torch

import circuits as cc
from circuits.zoo.train_dictionaries import curve_metric, lookup_metric

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lookup() -> tuple:
    model = cc.zoo.lookup_transformer()
    held = cc.zoo.lookup_batch(256, seed=99)  # not the seeds the script trained or scored on
    transcoder = cc.zoo.lookup_transcoder(0)
    site, target = transcoder.config.site, transcoder.config.target_site
    return model, held, transcoder, cc.capture(model, held.tokens, sites=[site, target])


@pytest.mark.transformer
def test_the_lookup_transcoder_explains_its_mlp_and_splices_in(lookup) -> None:
    model, held, transcoder, acts = lookup
    report = cc.evaluate_dictionary(
        transcoder, acts, model=model, inputs=held.tokens, metric=lookup_metric(held)
    ).iloc[0]
    assert report["fve"] >= 0.9 and report["l0"] <= 32
    assert report["recovered"] >= 0.9


def purity(z, key: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per latent, the value of `key` (a pair or token id per row) carrying most of its
    activation, and the share of its activation that value carries."""
    mass = torch.zeros(n, z.shape[-1]).index_add_(0, key, z)
    return mass.argmax(0), mass.max(0).values / mass.sum(0).clamp_min(1e-9)


@pytest.mark.transformer
def test_lookup_latents_are_pairs_writing_their_table_entry_or_single_tokens(lookup) -> None:
    """MLP 0 is a key-value memory over (previous, current) pairs: latents that fire on one pair
    should promote that pair's table entry through the unembedding. The others should read a
    single token (the one-token parts of the MLP's output, which carry no answer)."""
    model, held, transcoder, acts = lookup
    z = transcoder.encode(acts[transcoder.config.site])[:, 1:].flatten(0, 1)
    prev, cur = held.tokens[:, :-1].flatten(), held.tokens[:, 1:].flatten()
    alive = z.sum(0) > 0
    top, pure = purity(z, prev * 16 + cur, 256)
    paired = alive & (pure >= 0.9)
    unembed = model.W_U if hasattr(model, "W_U") else model.unembed.W_U
    writes = (transcoder.W_dec[paired] @ unembed.detach()).argmax(1)
    table = torch.tensor(cc.zoo.LOOKUP_TABLE)
    assert int(paired.sum()) >= 50  # a pair carries >= 90% of each one's activation
    assert float((writes == table[top[paired] // 16, top[paired] % 16]).float().mean()) >= 0.8
    single = (purity(z, prev, 16)[1] >= 0.9) | (purity(z, cur, 16)[1] >= 0.9)
    assert float((paired | single)[alive].float().mean()) >= 0.5  # chance: ~0


def test_the_curve_sae_explains_relu2_and_splices_in() -> None:
    model, sae = cc.zoo.curve_cnn(), cc.zoo.curve_sae()
    held = cc.zoo.curve_images(256, seed=99)
    acts = cc.capture(model, held.images, sites=["relu2"])
    report = cc.evaluate_dictionary(
        sae, acts, model=model, inputs=held.images, metric=curve_metric(held.label)
    ).iloc[0]
    assert (report["site"], sae.config.axis) == ("relu2", "channel")
    assert report["fve"] >= 0.9 and report["l0"] <= 8
    assert report["recovered"] >= 0.9


def test_zoo_dictionaries_refuse_a_layer_the_model_lacks() -> None:
    with pytest.raises(cc.ConfigError, match="layers 0 and 1"):
        cc.zoo.lookup_transcoder(2)
