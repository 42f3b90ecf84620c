"""Linear probes: scikit-learn and closed forms as references, control tasks, bad inputs, zoo.

References are independent of our code: scikit-learn's LogisticRegression and Ridge fit on the
same standardised data, numpy closed forms for class means and LDA, and models whose answer is
known by construction (the hand-set corner detector).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score
from sklearn.preprocessing import StandardScaler
from torch import nn

import circuits as cc
from circuits.errors import ConfigError, InputError, ShapeMismatchError, SiteNotFoundError
from circuits.features import DirectionBasis
from circuits.probes import ProbeResult, fit_probe, plot_probe_sweep, probe_sweep
from circuits.zoo import induction


def gaussian_classes(n: int, d: int, n_classes: int, *, sep: float, seed: int):
    """Samples around random class centres (known directions), with uneven feature scales."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, d, generator=g) * sep / math.sqrt(d)
    y = torch.randint(0, n_classes, (n,), generator=g)
    scales = torch.linspace(0.5, 3.0, d)
    x = (torch.randn(n, d, generator=g) + centres[y]) * scales + 2.0
    return x, y


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def sklearn_on(x: torch.Tensor, y: torch.Tensor, **kw):
    scaler = StandardScaler().fit(x.numpy())
    return scaler, LogisticRegression(**kw).fit(scaler.transform(x.numpy()), y.numpy())


# --- against scikit-learn ---------------------------------------------------------------------


def test_binary_logistic_matches_sklearn():
    x_all, y_all = gaussian_classes(6000, 40, 2, sep=3.0, seed=1)
    x, y, x_new, y_new = x_all[:3000], y_all[:3000], x_all[3000:], y_all[3000:]
    probe = fit_probe(x, y, C=0.5, test_fraction=0.0, control=False)
    scaler, clf = sklearn_on(x, y, C=0.5)
    assert probe.converged
    assert cosine(probe.direction_std, clf.coef_) >= 0.999
    assert cosine(probe.direction, clf.coef_ / scaler.scale_) >= 0.999  # raw space
    ours = (probe.predict(x_new) == y_new).double().mean().item()
    theirs = clf.score(scaler.transform(x_new.numpy()), y_new.numpy())
    assert abs(ours - theirs) <= 0.01
    assert ours > 0.8
    assert probe.bias_std.item() == pytest.approx(clf.intercept_[0], abs=0.02)


def test_multiclass_logistic_matches_sklearn_multinomial():
    x_all, y_all = gaussian_classes(5000, 30, 4, sep=3.0, seed=2)
    x, y, x_new, y_new = x_all[:2500], y_all[:2500], x_all[2500:], y_all[2500:]
    probe = fit_probe(x, y, test_fraction=0.0, control=False)
    scaler, clf = sklearn_on(x, y)
    assert probe.direction.shape == (4, 30)
    for k in range(4):  # each class's weight vector
        assert cosine(probe.direction_std[k], clf.coef_[k]) >= 0.99
    ours = (probe.predict(x_new) == y_new).double().mean().item()
    theirs = clf.score(scaler.transform(x_new.numpy()), y_new.numpy())
    assert abs(ours - theirs) <= 0.01


def test_held_out_split_is_stratified_and_scores_like_sklearn():
    x, y = gaussian_classes(4000, 20, 3, sep=2.5, seed=3)
    probe = fit_probe(x, y, test_fraction=0.25, seed=7, control=False)
    assert (probe.n_train, probe.n_test) == (3000, 1000)
    # the split is stratified: each class keeps (about) its share on the test side
    assert sum(probe.support) == 1000
    shares = torch.bincount(y, minlength=3).double() / len(y)
    assert np.allclose(np.array(probe.support) / 1000, shares.numpy(), atol=0.002)
    # ours against sklearn on a split of the same size: both near the same accuracy
    scaler, clf = sklearn_on(x[:3000], y[:3000])
    theirs = clf.score(scaler.transform(x[3000:].numpy()), y[3000:].numpy())
    assert abs(probe.test_score - theirs) <= 0.03


def test_ridge_matches_sklearn():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3000, 25, generator=g) * torch.linspace(0.2, 5, 25) + 1.0
    w = torch.randn(25, generator=g)
    target = x @ w + 2.0 * torch.randn(3000, generator=g)
    probe = fit_probe(x[:2000], target[:2000], kind="linear", alpha=10.0, test_fraction=0.0)
    scaler = StandardScaler().fit(x[:2000].numpy())
    ridge = Ridge(alpha=10.0).fit(scaler.transform(x[:2000].numpy()), target[:2000].numpy())
    theirs = r2_score(target[2000:].numpy(), ridge.predict(scaler.transform(x[2000:].numpy())))
    ours = r2_score(target[2000:].numpy(), probe.predict(x[2000:]).numpy())
    assert round(ours, 3) == round(theirs, 3)
    assert np.allclose(probe.direction_std[0].numpy(), ridge.coef_, atol=1e-3)
    assert probe.metric == "r2" and probe.train_score > 0.9


# --- mass mean ---------------------------------------------------------------------------------


def test_mass_mean_recovers_the_mean_difference():
    g = torch.Generator().manual_seed(5)
    delta = torch.zeros(16)
    delta[3], delta[7] = 2.0, -1.0
    y = torch.arange(4000) % 2
    x = torch.randn(4000, 16, generator=g) * torch.linspace(0.5, 2.0, 16) + 5.0 + y[:, None] * delta
    probe = fit_probe(x, y, kind="mass_mean", test_fraction=0.0, control=False)
    empirical = x[y == 1].mean(0) - x[y == 0].mean(0)
    assert torch.allclose(probe.direction[0], empirical, atol=1e-4)  # raw mean difference
    assert cosine(probe.direction[0], delta) > 0.98
    midpoint = (x[y == 1].mean(0) + x[y == 0].mean(0)) / 2  # threshold half way between means
    assert (midpoint @ probe.direction[0] + probe.bias).abs().item() < 1e-3


def test_whitened_mass_mean_is_lda():
    g = torch.Generator().manual_seed(6)
    d = 10
    mix = torch.randn(d, d, generator=g) * torch.logspace(0, -1.5, d)
    y = torch.arange(3000) % 2
    mu = torch.randn(d, generator=g) * 0.2
    x = torch.randn(3000, d, generator=g) @ mix.T + y[:, None] * mu
    probe = fit_probe(x, y, kind="mass_mean", whiten=True, ridge=0.0, test_fraction=0.0)
    xn, yn = x.double().numpy(), y.numpy()
    mu0, mu1 = xn[yn == 0].mean(0), xn[yn == 1].mean(0)
    within = np.concatenate([xn[yn == 0] - mu0, xn[yn == 1] - mu1])
    sigma = within.T @ within / (len(xn) - 2)
    lda = np.linalg.solve(sigma, mu1 - mu0)
    assert cosine(probe.direction[0], lda) > 0.999
    plain = fit_probe(x, y, kind="mass_mean", test_fraction=0.0)
    assert cosine(plain.direction[0], mu1 - mu0) > 0.9999
    assert probe.train_score > plain.train_score + 0.1  # whitening helps on anisotropic data


# --- control tasks and selectivity --------------------------------------------------------------


def test_selectivity_is_large_when_labels_are_decodable():
    x, y = gaussian_classes(2000, 20, 2, sep=4.0, seed=8)
    probe = fit_probe(x, y)
    assert probe.test_score > 0.9
    assert abs(probe.control_score - 0.5) < 0.1  # control near chance
    assert probe.selectivity == pytest.approx(probe.test_score - probe.control_score)
    assert probe.selectivity > 0.3


def test_control_is_memorised_in_high_dimensions():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(80, 400, generator=g)
    y = torch.arange(80) % 2
    probe = fit_probe(x, y, C=10.0)
    assert probe.control_train_score >= 0.95  # the probe memorises the random labels
    assert probe.control_score < 0.8  # and it does not generalise


def test_control_with_types_gives_each_type_one_label():
    # five token types, each with a fixed embedding; the label is a property of the type
    g = torch.Generator().manual_seed(10)
    emb = torch.randn(5, 12, generator=g) * 3
    types = torch.randint(0, 5, (1500,), generator=g)
    x = emb[types] + 0.1 * torch.randn(1500, 12, generator=g)
    y = (types % 2 == 0).long()
    typed = fit_probe(x, y, types=types)
    permuted = fit_probe(x, y)
    assert typed.control_score > 0.95  # a type-memorising control (Hewitt & Liang) is learnable
    assert permuted.control_score < 0.7  # permuted labels are not


# --- inputs: pools, devices, standardisation ---------------------------------------------------


def test_pools_reduce_to_the_expected_matrix():
    g = torch.Generator().manual_seed(11)
    conv = torch.randn(300, 3, 4, 4, generator=g)
    y = (conv[:, 1].amax(dim=(1, 2)) > 1.8).long()
    for pool, d in (("max", 3), ("mean", 3), ("flatten", 48)):
        probe = fit_probe(conv, y, pool=pool, feature_axis=1, control=False)
        assert probe.direction.shape == (1, d)
        assert probe.predict(conv).shape == (300,)
    assert fit_probe(conv, y, pool="max", feature_axis=1).test_score > 0.9
    seq = torch.randn(50, 6, 8, generator=g)
    per_token = (seq[..., 0] > 0).long()
    stacked = fit_probe(seq, per_token, pool="stack")
    assert stacked.n_train + stacked.n_test == 300  # every position is a sample
    assert stacked.n_test % 6 == 0  # whole sequences go to one side of the split
    assert stacked.predict(seq).shape == (50, 6)
    assert stacked.test_score > 0.95
    one_position = fit_probe(seq[:, -1:], per_token[:, -1])  # size-1 axes need no pool
    assert one_position.direction.shape == (1, 8)


def test_standardisation_is_folded_into_the_raw_direction():
    x, y = gaussian_classes(1000, 8, 2, sep=3.0, seed=12)
    probe = fit_probe(x, y, control=False)
    standardised = (x - probe.mean) / probe.scale
    raw = x @ probe.direction.T + probe.bias
    std = standardised @ probe.direction_std.T + probe.bias_std
    assert torch.allclose(raw, std, atol=1e-3)
    assert torch.allclose(probe.scores(x), raw)
    unscaled = fit_probe(x, y, standardize=False, control=False)
    assert torch.equal(unscaled.scale, torch.ones(8)) and unscaled.test_score > 0.8


def test_half_precision_labels_of_any_type_and_frames():
    x, y = gaussian_classes(600, 6, 3, sep=4.0, seed=13)
    names = np.array(["cat", "dog", "eel"])[y.numpy()]
    probe = fit_probe(x.half(), list(names))
    assert probe.classes == ("cat", "dog", "eel")
    frame = probe.to_frame()
    assert list(frame.columns) == ["class", "precision", "recall", "support"]
    assert frame["support"].sum() == probe.n_test
    assert set(probe.summary()) >= {"test_score", "control_score", "selectivity", "chance"}
    assert "ProbeResult(" in repr(probe)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_fits_on_the_gpu():
    x, y = gaussian_classes(4000, 64, 3, sep=3.0, seed=14)
    probe = fit_probe(x.cuda(), y.cuda())
    cpu = fit_probe(x, y)
    assert probe.direction.device.type == "cuda"
    assert abs(probe.test_score - cpu.test_score) < 0.01
    assert cosine(probe.direction_std.cpu(), cpu.direction_std) > 0.999


# --- bad inputs ----------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    x, y = gaussian_classes(100, 5, 2, sep=3.0, seed=15)
    with pytest.raises(ShapeMismatchError, match="99 labels for 100 samples"):
        fit_probe(x, y[:99])
    with pytest.raises(InputError, match="only one class"):
        fit_probe(x, torch.zeros(100))
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(InputError, match="NaN or infinite"):
        fit_probe(bad, y)
    bad[3, 2] = float("inf")
    with pytest.raises(InputError, match="NaN or infinite"):
        fit_probe(bad, y)
    with pytest.raises(ConfigError, match="kind must be one of"):
        fit_probe(x, y, kind="svm")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pool must be one of"):
        fit_probe(x, y, pool="sum")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="test_fraction"):
        fit_probe(x, y, test_fraction=1.0)
    with pytest.raises(ConfigError, match="C must be > 0"):
        fit_probe(x, y, C=0.0)
    with pytest.raises(ConfigError, match="pool="):
        fit_probe(torch.randn(100, 4, 5), y)
    with pytest.raises(InputError, match="torch tensor"):
        fit_probe("acts", y)  # type: ignore[arg-type]
    with pytest.raises(ShapeMismatchError, match="feature axis"):
        fit_probe(torch.randn(100), y)
    with pytest.raises(InputError, match="kind='linear'"):
        fit_probe(x, torch.randn(100))
    with pytest.raises(InputError, match="NaN"):
        fit_probe(x, torch.full((100,), float("nan")), kind="linear")
    probe = fit_probe(x, y)
    with pytest.raises(ShapeMismatchError, match="5 features"):
        probe.predict(torch.randn(10, 6))
    flat = fit_probe(torch.randn(100, 2, 3), y, pool="flatten")
    with pytest.raises(ConfigError, match="flatten"):
        flat.as_basis()


# --- sweeps --------------------------------------------------------------------------------


class TwoStage(nn.Module):
    """A fixed random feature map, then a layer that copies the input's sign pattern."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.noise = nn.Linear(8, 8)
        self.copy = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.copy(self.noise(x))


def test_probe_sweep_fits_every_site_and_plots():
    model = TwoStage().eval()
    g = torch.Generator().manual_seed(16)
    inputs = torch.randn(400, 8, generator=g)
    labels = (inputs[:, 0] > 0).long()
    frame = probe_sweep(model, inputs, labels, sites=["noise", "copy"], batch_size=128,
                        C=1000.0, progress=False)  # fmt: skip
    assert list(frame["site"]) == ["noise", "copy"]
    assert (frame["test_score"] > 0.9).all()  # invertible maps: the sign stays linear
    assert (frame["control_score"] < 0.7).all()
    assert isinstance(frame["probe"].iloc[0], ProbeResult)
    assert frame["probe"].iloc[1].site == "copy"
    fig = plot_probe_sweep(frame)
    assert [trace.name for trace in fig.data] == ["test", "control", "train"]
    cache = cc.capture(model, inputs, sites=["noise", "copy"])
    again = probe_sweep(cache, labels=labels, sites=["copy"], C=1000.0, progress=False)
    assert again["test_score"].iloc[0] == pytest.approx(frame["test_score"].iloc[1], abs=1e-6)


def test_probe_sweep_errors():
    model = TwoStage().eval()
    inputs = torch.randn(40, 8)
    labels = torch.arange(40) % 2
    cache = cc.capture(model, inputs, sites=["noise"])
    with pytest.raises(SiteNotFoundError, match="closest"):
        probe_sweep(cache, labels=labels, sites=["nosie"], progress=False)
    with pytest.raises(SiteNotFoundError):
        probe_sweep(model, inputs, labels, sites=["nosie"], progress=False)
    with pytest.raises(ConfigError, match="labels"):
        probe_sweep(model, inputs, sites=["noise"], progress=False)
    with pytest.raises(ShapeMismatchError, match="39 labels for 40 inputs"):
        probe_sweep(model, inputs, labels[:39], sites=["noise"], progress=False)
    with pytest.raises(ConfigError, match="inputs=None"):
        probe_sweep(cache, inputs, labels, progress=False)
    with pytest.raises(ConfigError, match="unknown probe option"):
        probe_sweep(cache, labels=labels, lr=0.1, progress=False)
    with pytest.raises(InputError, match="column"):
        plot_probe_sweep(pd.DataFrame({"site": ["a"]}))


# --- a probe finds what is known to be there ------------------------------------------------


def test_corner_layer_holds_the_answer_and_irrelevant_channels_do_not():
    corner = pytest.importorskip("circuits.zoo.corner")
    if not hasattr(corner, "corner_cnn") or not hasattr(corner, "corner_images"):
        pytest.skip("circuits.zoo.corner lacks corner_cnn / corner_images")
    model = corner.corner_cnn()
    images, labels = corner.corner_images(600, size=16, seed=0)
    frame = probe_sweep(model, images, labels, sites=["relu1", "relu2"], pool="max",
                        progress=False)  # fmt: skip
    relu2 = frame.set_index("site").loc["relu2"]
    assert relu2["test_score"] >= 0.98
    assert relu2["selectivity"] >= 0.4
    cache = cc.capture(model, images, sites=["relu1", "relu2"])
    distractors = fit_probe(cache["relu2"][:, 1:], labels, pool="max", feature_axis=1)
    diagonal = fit_probe(cache["relu1"][:, 2:], labels, pool="max", feature_axis=1)
    assert distractors.test_score <= 0.75
    assert diagonal.test_score <= 0.75
    basis = relu2["probe"].as_basis()  # the probe direction points at the corner channel
    assert isinstance(basis, DirectionBasis) and basis.dim == -3
    assert basis.directions[0].abs().argmax().item() == 0


@pytest.fixture(scope="module")
def transformer():
    """The zoo's trained induction model, one for the file (building one takes seconds)."""
    return induction.induction_transformer()


def seen_before(tokens: torch.Tensor) -> torch.Tensor:
    """[n, seq] booleans: the token at each position occurred earlier in its sequence."""
    return (tokens[:, :, None] == tokens[:, None, :]).tril(diagonal=-1).any(-1)


@pytest.mark.transformer
def test_sweep_over_a_transformer_by_position_and_by_token(transformer):
    tokens = torch.randint(0, 64, (400, 8), generator=torch.Generator().manual_seed(17))
    last_even = (tokens[:, -1] % 2 == 0).long()  # a property of the last token's identity
    sites = ["hook_embed", "blocks.0.hook_resid_post"]
    frame = probe_sweep(transformer, tokens, last_even, sites=sites, positions=-1,
                        batch_size=150, progress=False)  # fmt: skip
    assert frame["test_score"].iloc[0] >= 0.95  # 64 token embeddings in 64 dimensions
    assert frame["probe"].iloc[0].as_basis().dim == -1
    per_token = (tokens % 2 == 0).long()
    stacked = probe_sweep(transformer, tokens, per_token, sites=["hook_embed"], pool="stack",
                          progress=False)  # fmt: skip
    probe = stacked["probe"].iloc[0]
    assert probe.test_score >= 0.95
    embed = cc.capture(transformer, tokens[:5], sites=["hook_embed"])["hook_embed"]
    assert probe.predict(embed).shape == (5, 8)


@pytest.mark.transformer
def test_induction_model_writes_the_next_token_and_attends_to_repeats(transformer):
    batch = induction.repeated_tokens(300, seed=3)
    tokens = batch.tokens
    sites = ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.1.attn.hook_pattern"]
    cache = cc.capture(transformer, tokens, sites=sites)
    # In a repeated segment the induction head (layer 1) copies the token that came next last
    # time: the next token is readable after layer 1 and not before it.
    known = batch.is_repeat.clone()
    known[:, -1] = False
    upcoming = tokens.roll(-1, dims=1)[known]
    before = fit_probe(cache["blocks.1.hook_resid_pre"][known], upcoming)
    after = fit_probe(cache["blocks.1.hook_resid_post"][known], upcoming)
    assert after.test_score >= 0.6 and after.selectivity >= 0.5  # 64 classes: chance ~0.02
    assert before.test_score <= 0.15
    # "Has this token occurred earlier in the sequence?" (labels from the tokens alone) is in
    # layer 1's attention: each head's largest attention weight from the position.
    repeat = seen_before(tokens).long()
    peak = cache["blocks.1.attn.hook_pattern"].amax(dim=-1).transpose(1, 2)  # batch pos head
    attention = fit_probe(peak, repeat, pool="stack")
    assert attention.test_score >= 0.85
    assert attention.test_score - attention.chance >= 0.15


@pytest.mark.transformer
def test_previous_token_is_linear_in_layer_1_residual_stream(transformer):
    """Known to be there by construction: the previous-token heads of layer 0 write "the token
    before me" into each position, so a 64-way probe reads it after layer 0 and not before."""
    tokens = induction.repeated_tokens(200, seed=3).tokens
    sites = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    cache = cc.capture(transformer, tokens, sites=sites)
    previous = tokens[:, :-1]  # label of positions 1.. (position 0 has no previous token)
    before = fit_probe(cache["blocks.0.hook_resid_pre"][:, 1:], previous, pool="stack",
                       control=False)  # fmt: skip
    after = fit_probe(cache["blocks.1.hook_resid_pre"][:, 1:], previous, pool="stack")
    assert after.test_score >= 0.5 and after.selectivity >= 0.4  # measured 0.64 and 0.62
    assert before.test_score <= 0.1  # token + position embeddings: chance ~0.02, measured ~0.02


def position_balanced(label: torch.Tensor, valid: torch.Tensor, seed: int):
    """(sequence, position, label) rows with as many True as False labels at every position.

    label, valid: [n, seq] booleans; rows are drawn from the valid entries, keeping at each
    position min(#True, #False) of each (a seeded random choice), so position alone predicts
    nothing about the label.
    """
    gen = torch.Generator().manual_seed(seed)
    rows, cols, ys = [], [], []
    for p in range(label.shape[1]):
        true = (label[:, p] & valid[:, p]).nonzero()[:, 0]
        false = (~label[:, p] & valid[:, p]).nonzero()[:, 0]
        k = min(len(true), len(false))
        for seqs, y in ((true, 1), (false, 0)):
            keep = seqs[torch.randperm(len(seqs), generator=gen)[:k]]
            rows.append(keep)
            cols.append(torch.full_like(keep, p))
            ys.append(torch.full_like(keep, y))
    return torch.cat(rows), torch.cat(cols), torch.cat(ys)


@pytest.mark.transformer
def test_repeat_is_in_the_induction_heads_norm_not_a_direction(transformer):
    """A limit of linear probes, recorded as a negative control: "has the current token occurred
    earlier in the sequence?" is not a direction in layer 1's residual stream.

    Over all positions a probe beats the majority class (0.66 against 0.62), but the position
    embedding alone does better (0.71): late positions are more often repeats. Once every position
    has as many repeats as non-repeats, the residual stream after layer 1 scores near chance
    (measured 0.52-0.55). The induction head still computes it: the norm of its output, one
    number, reads it at ~0.91. Why no direction: the model has no attention sink (no BOS token),
    so when the query has no earlier match the induction head spreads its attention over earlier
    positions and writes the average of their value vectors (times W_O). That average lies inside
    the convex hull of the outputs it writes when matched (one value vector each), so no
    hyperplane separates the two cases; it is just shorter, as averages of random vectors are.
    A sink does not change this: the same model retrained with a BOS token first scores 0.47-0.50
    here too, since nothing downstream of layer 1 would read a "repeat" direction if it wrote one.
    """
    tokens = induction.repeated_tokens(300, seed=3).tokens
    sites = ["blocks.1.hook_resid_post", "blocks.1.attn.hook_z"]
    cache = cc.capture(transformer, tokens, sites=sites)
    repeat = seen_before(tokens)
    valid = torch.ones_like(repeat)
    valid[:, 0] = False  # position 0 is never a repeat
    rows, cols, y = position_balanced(repeat, valid, seed=0)
    position = fit_probe(transformer.W_pos.detach()[cols], y, control=False)
    assert position.test_score <= 0.55  # the balancing works: measured 0.43-0.45
    resid = fit_probe(cache["blocks.1.hook_resid_post"][rows, cols], y)
    assert resid.chance == pytest.approx(0.5, abs=0.01)
    assert resid.test_score <= 0.62  # measured 0.52-0.55 over data seeds 0-3
    layer, head = induction.INDUCTION_HEADS["induction"]
    z = cache[f"blocks.{layer}.attn.hook_z"][rows, cols, head]  # [n, d_head]
    norm = (z @ transformer.W_O[layer, head].detach()).norm(dim=-1, keepdim=True)
    read = fit_probe(norm, y)
    assert read.test_score >= 0.8  # measured 0.91-0.93


# --- rank-k probes and subspaces ---------------------------------------------------------------


def planted_ring(n: int, d: int, period: int, *, noise: float, seed: int):
    """Labels 0 .. period - 1 written on a circle in a random plane (known), plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, period, (n,), generator=g)
    plane = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))[0].T.float()
    theta = 2 * math.pi * y / period
    x = torch.stack([theta.cos(), theta.sin()], 1) @ plane + noise * torch.randn(n, d, generator=g)
    return x, y, plane


def test_rank_one_probe_is_the_plain_probe():
    x, y = gaussian_classes(600, 12, 2, sep=3.0, seed=4)
    plain, ranked = fit_probe(x, y), fit_probe(x, y, rank=1)
    assert torch.equal(plain.direction, ranked.direction) and torch.equal(plain.bias, ranked.bias)
    assert ranked.test_score == plain.test_score and ranked.train_score == plain.train_score
    sub = ranked.as_subspace()
    assert isinstance(sub, cc.Subspace) and sub.n_features == 1
    unit = plain.direction[0] / plain.direction[0].norm()
    assert torch.allclose(sub.directions[0], unit, atol=1e-6)  # same direction, same sign
    target = x[:, 0] - 0.5 * x[:, 3]  # regression: one target, rank 1 is the ridge probe itself
    lin, lin1 = fit_probe(x, target, kind="linear"), fit_probe(x, target, kind="linear", rank=1)
    assert torch.equal(lin.direction, lin1.direction) and lin.test_score == lin1.test_score


def test_circular_probe_finds_the_planted_plane_and_circle():
    # A decoder's weights on the 14 directions without signal are off by about
    # sqrt(14 / n) radians whatever the noise level (filters, not patterns): 4,000 rows, 4 deg.
    x, y, plane = planted_ring(4000, 16, 7, noise=0.05, seed=0)
    probe = fit_probe(x, y, kind="linear", period=7)
    assert probe.direction.shape == (2, 16) and probe.test_score > 0.95  # R^2 of (cos, sin)
    sub = probe.as_subspace()
    assert sub.n_features == 2 and float(sub.principal_angles(plane).max()) < 8
    gram = sub.directions @ sub.directions.T
    assert torch.allclose(gram, torch.eye(2), atol=1e-5)  # orthonormal
    circle = cc.manifolds.circularity(sub.encode(x), y, period=7)
    assert circle.score > 0.99


def test_reduced_rank_keeps_the_subspace_the_classes_live_in():
    # 7 classes on a circle: the class-weight matrix has rank 6, the information rank 2.
    x, y, plane = planted_ring(2000, 16, 7, noise=0.05, seed=1)
    full, two, one = fit_probe(x, y), fit_probe(x, y, rank=2), fit_probe(x, y, rank=1)
    assert torch.linalg.matrix_rank(two.direction - two.direction.mean(0)) == 2
    assert two.test_score > 0.95 and two.test_score >= full.test_score - 0.02
    assert one.test_score < two.test_score  # a line holds less of a circle
    means = fit_probe(x, y, kind="mass_mean", rank=2)  # class means: the pattern, not a filter
    assert float(means.as_subspace().principal_angles(plane).max()) < 2
    scores = two.scores(x)  # the refit probe's directions act on raw activations directly
    expected = x @ two.direction.T + two.bias
    assert torch.allclose(scores, expected, atol=1e-4)


def test_subspace_geometry_against_hand_computed_values():
    e = torch.eye(4)
    sub = cc.Subspace(torch.stack([2 * e[0], e[0] + e[1]]))  # orthonormalised in order
    assert torch.allclose(sub.directions, e[:2], atol=1e-6)
    tilt = torch.stack([e[0], math.cos(0.3) * e[1] + math.sin(0.3) * e[2]])
    angles = sub.principal_angles(tilt)
    assert torch.allclose(angles, torch.tensor([0.0, math.degrees(0.3)]), atol=1e-3)
    assert float(sub.principal_angles(e[2:]).min()) == pytest.approx(90.0, abs=1e-4)
    act = torch.tensor([[1.0, 0.0, 5.0, -2.0]])
    turned = sub.rotate(act, math.pi / 2)
    assert torch.allclose(turned, torch.tensor([[0.0, 1.0, 5.0, -2.0]]), atol=1e-6)
    assert torch.allclose(sub.rotate(turned, -math.pi / 2), act, atol=1e-6)
    about = sub.rotate(act, math.pi, centre=torch.tensor([1.0, 1.0]))  # (1, 0) about (1, 1)
    assert torch.allclose(about, torch.tensor([[1.0, 2.0, 5.0, -2.0]]), atol=1e-6)
    assert torch.allclose(sub.project(act), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_subspace_plugs_into_patching_and_steering(convnet, images):
    acts = cc.capture(convnet, images, sites=["relu1"])["relu1"]
    sub = cc.Subspace(
        torch.randn(2, 4, generator=torch.Generator().manual_seed(0)), dim=1, site="relu1"
    )
    res = cc.patch(convnet, images, images.flip(0), lambda out: out[:, 0].mean(), basis=sub)
    assert res.values.shape == (3,)  # two coordinates, then the error term
    steered = cc.steer(convnet, images, sub, which=1, alpha=2.0)
    with cc.hooks(convnet, {"relu1": lambda a, site: a + 2.0 * sub.directions[1][:, None, None]}):
        by_hand = convnet(images)
    assert torch.allclose(steered, by_hand, atol=1e-5)
    coords = torch.einsum("nchw,kc->nkhw", acts, sub.directions)  # the channel axis, projected
    assert torch.allclose(sub.encode(acts), coords, atol=1e-6)


def test_subspace_and_rank_bad_inputs_raise_clear_errors():
    x, y, _ = planted_ring(200, 6, 7, noise=0.1, seed=2)
    with pytest.raises(ConfigError, match="larger than the feature axis"):
        fit_probe(x, y, rank=7)
    with pytest.raises(ConfigError, match="at most that many"):
        fit_probe(x, y, kind="linear", period=7, rank=3)
    with pytest.raises(InputError, match="at least 3 distinct values"):
        fit_probe(x, y % 2, kind="linear", period=7)
    with pytest.raises(ConfigError, match="kind='linear'"):
        fit_probe(x, y, period=7)
    with pytest.raises(ConfigError, match="frequencies"):
        fit_probe(x, y, kind="linear", frequencies=(1,))
    with pytest.raises(ConfigError, match="rank"):
        fit_probe(x, y, rank=0)
    with pytest.raises(InputError, match="linearly dependent"):
        cc.Subspace(torch.tensor([[1.0, 0.0], [2.0, 0.0]]))
    with pytest.raises(ConfigError, match="plane"):
        cc.Subspace(torch.eye(3)).rotate(torch.zeros(1, 3), 1.0, plane=(0, 0))
    with pytest.raises(ShapeMismatchError):
        cc.Subspace(torch.eye(3)).principal_angles(torch.eye(4))
