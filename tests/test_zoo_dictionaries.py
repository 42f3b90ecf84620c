"""The zoo's shipped dictionaries: the quality the issue asks for, the lookup transcoder's
latents checked against the mechanism the lookup transformer has by construction, and the
induction model's residual-stream SAEs against their report and the induction loss."""

from __future__ import annotations

import json

import pytest
import torch

import circuits as cc
from circuits.zoo.train_dictionaries import curve_metric, induction_metric, lookup_metric

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


@pytest.fixture(scope="module")
def induction() -> tuple:
    model = cc.zoo.induction_transformer()
    held = cc.zoo.repeated_tokens(256, seed=99)  # not the seeds the script trained or scored on
    sites = [f"blocks.{layer}.hook_resid_post" for layer in (0, 1)]
    return model, held, cc.capture(model, held.tokens, sites=sites)


@pytest.mark.transformer
@pytest.mark.parametrize("layer", [0, 1])
def test_the_induction_saes_reconstruct_as_reported_and_keep_the_induction_loss(
    induction, layer: int
) -> None:
    model, held, acts = induction
    sae = cc.zoo.induction_sae(layer)
    shipped = json.loads((cc.zoo.DICTIONARIES_PATH / "dictionaries.json").read_text())
    reported = shipped[f"induction_sae_{layer}"]
    assert sae.config.site == reported["site"] == f"blocks.{layer}.hook_resid_post"
    assert (sae.config.kind, sae.config.d_in, sae.n_latents) == ("sae", 64, reported["n_latents"])
    assert 4 * 64 <= sae.n_latents <= 8 * 64 and 8 <= sae.config.k <= 16
    report = cc.evaluate_dictionary(
        sae, acts, model=model, inputs=held.tokens, metric=induction_metric(held)
    ).iloc[0]
    assert report["fve"] >= 0.9 and report["fve"] == pytest.approx(reported["fve"], abs=0.02)
    assert report["l0"] == pytest.approx(reported["l0"], abs=0.5)
    # spliced in, the model still does induction: the loss on the repeats stays close to clean
    # (about 0.85 nats) and far from what removing the stream gives (ln 64 = 4.16)
    assert report["m_spliced"] - report["m_clean"] <= 0.15
    assert report["recovered"] >= 0.95


def test_induction_sae_refuses_a_layer_the_model_lacks() -> None:
    with pytest.raises(cc.ConfigError, match="after layers 0 and 1"):
        cc.zoo.induction_sae(2)
    with pytest.raises(cc.ConfigError, match="layer must be an int >= 0"):
        cc.zoo.induction_sae(-1)


def token_purity(z: torch.Tensor, key: torch.Tensor, n: int = 64) -> tuple:
    """Per latent, whether it fires at all, and whether one value of `key` carries >= 80% of its
    activation (and which)."""
    top, pure = purity(z, key, n)
    return z.sum(0) > 0, pure >= 0.8, top


@pytest.mark.transformer
def test_induction_sae_latents_read_as_the_circuit(induction) -> None:
    """After layer 0 the stream holds the token, its position and, from the previous-token head,
    the token before: latents should each carry one of them. After layer 1, at the positions
    induction predicts, latents should fire for one predicted token and write it (unembedding)."""
    model, held, acts = induction
    tokens = held.tokens
    sae = cc.zoo.induction_sae(0)
    z = sae.encode(acts[sae.config.site])[:, 1:].flatten(0, 1)
    alive, current, _ = token_purity(z, tokens[:, 1:].flatten())
    previous = token_purity(z, tokens[:, :-1].flatten())[1]
    position = token_purity(z, torch.arange(1, tokens.shape[1]).repeat(len(tokens)))[1]
    assert int((alive & current).sum()) >= 100 and int((alive & previous).sum()) >= 40
    assert int((alive & position).sum()) >= 50
    assert float((current | previous | position)[alive].float().mean()) >= 0.5

    sae = cc.zoo.induction_sae(1)
    repeat = held.is_repeat.roll(-1, 1)  # positions whose next token repeats an earlier one
    z = sae.encode(acts[sae.config.site])[repeat]
    alive, pure, target = token_purity(z, tokens.roll(-1, 1)[repeat])
    copying = alive & pure
    unembed = model.W_U if hasattr(model, "W_U") else model.unembed.W_U
    writes = (sae.W_dec[copying] @ unembed.detach()).argmax(1)
    assert int(copying.sum()) >= 50
    assert float((writes == target[copying]).float().mean()) >= 0.7
