"""Top-activating examples, checked against a brute-force reference (every activation encoded at
once, one stable sort) on the lookup transformer's transcoder and the curve net's SAE, in memory
and through a disk cache; the receptive field checked by perturbing pixels."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch

import circuits as cc
from circuits.dictionaries import TopExamples, top_examples

pytestmark = pytest.mark.usefixtures("one_thread")


def reference(dictionary, acts: torch.Tensor, latents: torch.Tensor, k: int, dim: int = -1):
    """Values, example indices and places of each latent's k largest positive activations."""
    z = dictionary.encode(acts.movedim(dim, -1))[..., latents]
    places = z.shape[1:-1]
    flat = z.reshape(-1, len(latents))
    values, rows = flat.masked_fill(flat <= 0, -math.inf).sort(dim=0, descending=True, stable=True)
    coords = torch.unravel_index(rows[:k].T, (z.shape[0], *places))
    return values[:k].T, coords[0], torch.stack(coords[1:], -1), z


def assert_matches(ex: TopExamples, dictionary, acts, latents, dim: int = -1) -> None:
    values, example, where, z = reference(dictionary, acts, latents, ex.k, dim)
    filled = values > -math.inf
    assert torch.equal(ex.example >= 0, filled)
    torch.testing.assert_close(ex.activation, values.masked_fill(~filled, 0), atol=1e-5, rtol=0)
    # each kept place really has the activation recorded there
    for r in range(len(latents)):
        for j in range(int(filled[r].sum())):
            at = (int(ex.example[r, j]), *ex.where[r, j].tolist(), r)
            assert abs(float(z[at]) - float(ex.activation[r, j])) < 1e-5
    # where no two values are within rounding of each other, the places are the reference's
    gaps = torch.ones_like(values, dtype=torch.bool)
    diffs = (values[:, :-1] - values[:, 1:]).abs() > 1e-4
    gaps[:, :-1] &= diffs
    gaps[:, 1:] &= diffs
    clear = filled & gaps
    assert torch.equal(ex.example[clear], example[clear])
    assert torch.equal(ex.where[clear], where[clear])
    assert ex.frequency.tolist() == pytest.approx(
        (z > 0).flatten(0, -2).double().mean(0).tolist(), abs=1e-9
    )


@pytest.fixture(scope="module")
def lookup() -> tuple:
    model = cc.zoo.lookup_transformer()
    tokens = cc.zoo.lookup_batch(150, seed=7).tokens
    transcoder = cc.zoo.lookup_transcoder(0)
    acts = cc.capture(model, tokens, sites=[transcoder.config.site])[transcoder.config.site]
    return model, tokens, transcoder, acts


@pytest.fixture(scope="module")
def curve() -> tuple:
    model, sae = cc.zoo.curve_cnn(), cc.zoo.curve_sae()
    images = cc.zoo.curve_images(90, seed=8).images
    return model, images, sae, cc.capture(model, images, sites=["relu2"])["relu2"]


@pytest.mark.transformer
@pytest.mark.parametrize("batch_size", [150, 32])
def test_transcoder_examples_match_the_brute_force_reference(lookup, batch_size) -> None:
    model, tokens, transcoder, acts = lookup
    latents = torch.tensor([5, 0, 17, 300, 511])
    ex = top_examples(model, tokens, transcoder, latents=latents, k=6, batch_size=batch_size)
    assert (ex.site, ex.target_site) == ("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out")
    assert ex.axes == ("pos",) and ex.rows == tokens.numel() and ex.field is None
    assert torch.equal(ex.latents, latents)
    assert_matches(ex, transcoder, acts, latents)


@pytest.mark.transformer
def test_token_contexts_mark_the_max_token(lookup) -> None:
    model, tokens, transcoder, _ = lookup
    ex = top_examples(model, tokens, transcoder, latents=range(0, 512, 37), k=4, context=3)
    frame = ex.to_frame()
    assert list(frame.columns) == ["latent", "rank", "activation", "example", "pos", "context"]
    assert len(frame) == int((ex.example >= 0).sum()) > 0
    for row in frame.itertuples():
        seq = tokens[row.example].tolist()
        lo, hi = max(0, row.pos - 3), min(len(seq), row.pos + 4)
        words = [str(t) for t in seq[lo:hi]]
        words[row.pos - lo] = f"«{seq[row.pos]}»"
        assert row.context == " ".join(words)
    latent = int(frame.latent.iloc[0])
    lines = ex.text(latent).splitlines()
    assert len(lines) == int((frame.latent == latent).sum())
    first = frame[frame.latent == latent].iloc[0]
    assert lines[0].startswith(f"{first.activation:.3g}  #{first.example} pos={first.pos}: ")
    assert "«" in lines[0]
    named = ex.to_frame(decode=lambda t: "abcdefghijklmnop"[t])
    assert named.context.str.contains("«[a-p]»").all()
    assert ex.top(3).activation.is_monotonic_decreasing
    assert ex.plot(latent).data  # a plotly figure with its bars


@pytest.mark.transformer
def test_the_disk_cache_path_gives_the_same_examples(lookup, tmp_path) -> None:
    model, tokens, transcoder, acts = lookup
    latents = torch.arange(0, 512, 9)
    memory = top_examples(model, tokens, transcoder, latents=latents, k=5, batch_size=40)
    filled = top_examples(model, tokens, transcoder, latents=latents, k=5, batch_size=40,
                          cache=tmp_path / "acts")  # fmt: skip
    assert (tmp_path / "acts" / "index.json").is_file()
    assert sorted(cc.load_cache(tmp_path / "acts")) == [transcoder.config.site]
    again = top_examples(None, tokens, transcoder, latents=latents, k=5,
                         cache=cc.load_cache(tmp_path / "acts"))  # fmt: skip
    for ex in (filled, again):
        assert torch.equal(ex.example, memory.example) and torch.equal(ex.where, memory.where)
        torch.testing.assert_close(ex.activation, memory.activation)
        assert torch.equal(ex.context, memory.context)
    assert_matches(again, transcoder, acts, latents)
    no_tokens = top_examples(None, None, transcoder, latents=latents, k=5, cache=tmp_path / "acts")
    assert torch.equal(no_tokens.example, memory.example)
    assert bool((no_tokens.context == -1).all())  # no inputs given: no contexts to show


def test_sae_examples_on_a_conv_map_match_the_reference(curve, tmp_path) -> None:
    model, images, sae, acts = curve
    latents = torch.arange(sae.n_latents)
    ex = top_examples(model, images, sae, k=5, batch_size=25)
    assert ex.axes == ("h", "w") and ex.context is None and ex.rows == 90 * 16 * 16
    assert_matches(ex, sae, acts, latents, dim=1)
    disk = top_examples(model, images, sae, k=5, batch_size=25, cache=tmp_path / "acts")
    assert torch.equal(disk.example, ex.example) and torch.equal(disk.where, ex.where)
    frame = ex.to_frame()
    assert list(frame.columns) == ["latent", "rank", "activation", "example", "h", "w"]
    assert (
        ex.text(int(frame.latent.iloc[0]))
        .splitlines()[0]
        .endswith(f"#{frame.example.iloc[0]} h={frame.h.iloc[0]}, w={frame.w.iloc[0]}")
    )


def test_patches_are_the_receptive_field(curve) -> None:
    """conv1 (5x5) -> pool (2) -> conv2 (5x5): a relu2 cell sees 14 x 14 pixels, stride 2. Pixels
    outside the crop leave the latent's activation unchanged; the crop is those pixels."""
    model, images, sae, _ = curve
    ex = top_examples(model, images, sae, k=3, batch_size=45)
    assert ex.field == ((14, 2, -6), (14, 2, -6))
    latent = int(ex.latents[(ex.example[:, 0] >= 0) & ((ex.where[:, 0] > 4).all(-1))][0])
    crops = ex.patches(images, latent)
    r = int((ex.latents == latent).nonzero()[0, 0])
    assert crops.shape == (int((ex.example[r] >= 0).sum()), 1, 14, 14)
    ex_i, (h, w) = int(ex.example[r, 0]), ex.where[r, 0].tolist()
    top, left = -6 + 2 * h, -6 + 2 * w
    image = images[ex_i : ex_i + 1]
    inside = torch.zeros_like(image, dtype=torch.bool)
    inside[..., max(top, 0) : top + 14, max(left, 0) : left + 14] = True
    expected = torch.zeros(1, 14, 14)
    expected[:, max(0, -top) :, max(0, -left) :] = image[0, :, max(top, 0) : top + 14,
                                                        max(left, 0) : left + 14]  # fmt: skip
    torch.testing.assert_close(crops[0], expected)
    basis = sae.as_basis(dim=1)

    def value(x: torch.Tensor) -> float:
        return float(basis.encode(cc.capture(model, x, sites=["relu2"])["relu2"])[0, latent, h, w])

    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    assert value(image) == pytest.approx(float(ex.activation[r, 0]), abs=1e-5)
    assert value(torch.where(inside, image, image + noise)) == pytest.approx(value(image), abs=1e-5)
    assert value(torch.where(inside, image + noise, image)) != pytest.approx(value(image), abs=1e-3)
    assert ex.plot(latent, images).data


def test_annotate_writes_examples_on_matching_feature_nodes(curve) -> None:
    model, images, sae, _ = curve
    ex = top_examples(model, images, sae, latents=[3, 7], k=2, batch_size=90)
    g = nx.DiGraph()
    g.add_node("relu2[3]", kind="feature", site="relu2", unit=3)
    g.add_node("relu2[4]", kind="feature", site="relu2", unit=4)
    g.add_node("conv2[3]", kind="channel", site="conv2", unit=3)
    assert ex.annotate(g) is g
    assert g.nodes["relu2[3]"]["examples"] == ex.text(3)
    assert "examples" not in g.nodes["relu2[4]"] and "examples" not in g.nodes["conv2[3]"]


def test_bad_inputs_raise_clear_errors(lookup, curve, tmp_path) -> None:
    model, tokens, transcoder, _ = lookup
    cnn, images, sae, _ = curve
    with pytest.raises(cc.ConfigError, match=r"k .* must be a positive int"):
        top_examples(model, tokens, transcoder, k=0)
    with pytest.raises(cc.InputError, match=r"latent 512 is out of range.*512 latents"):
        top_examples(model, tokens, transcoder, latents=[3, 512])
    with pytest.raises(cc.ConfigError, match="context"):
        top_examples(model, tokens, transcoder, context=-1)
    with pytest.raises(cc.InputError, match=r"cache .* must be a file path"):
        top_examples(model, tokens, transcoder, cache=3)
    with pytest.raises(cc.InputError, match="twice"):
        top_examples(model, tokens, transcoder, latents=[3, 3])
    with pytest.raises(cc.InputError, match="latent ids"):
        top_examples(model, tokens, transcoder, latents=[0.5])
    with pytest.raises(cc.SiteNotFoundError, match=r"no site 'blocks\.0\.ln2\.hook_normalized'"):
        top_examples(cnn, images, transcoder, cache=tmp_path / "never")
    assert not (tmp_path / "never").exists()  # refused before anything was written
    with pytest.raises(cc.ConfigError, match="must be a Dictionary"):
        top_examples(cnn, images, "relu2")
    with pytest.raises(cc.ShapeMismatchError, match="dictionary reads 16"):
        top_examples(cnn, images, sae, site="relu1")
    cc.capture_to_disk(cnn, images, tmp_path / "other", sites=["relu1"], batch_size=45)
    with pytest.raises(cc.SiteNotFoundError, match="'relu2' is not in the disk cache"):
        top_examples(None, None, sae, cache=tmp_path / "other")
    with pytest.raises(cc.ConfigError, match="needs a model"):
        top_examples(None, images, sae)
    ex = top_examples(model, tokens[:20], transcoder, latents=[1, 2], k=2)
    with pytest.raises(cc.InputError, match="latent 3 was not among those searched"):
        ex.text(3)
    with pytest.raises(cc.ConfigError, match="patches are for a conv site"):
        ex.patches(images, 1)
