"""Feature bases (units, directions, a dictionary's latents) in patching, node attribution,
steering and direct effects, each checked against an independent reference: the unit path, a
hand-written hook on the model, a first-order estimate written out by hand.

Dictionaries here have random weights (a seeded generator) and a nonzero b_dec, so the error
term and the decoder bias are both exercised; training them is `tests/test_dictionary_train.py`'s.
"""

from __future__ import annotations

import pytest
import torch

import circuits as cc
from circuits.attribution import attribute
from circuits.dictionaries import Dictionary, DictionaryConfig
from circuits.features import DirectionBasis, UnitBasis
from circuits.ids import NodeId
from circuits.zoo.transformers import tiny_transformer

SITE = "relu1"  # SmallConvNet: [batch, 4 channels, 6, 6]


def dictionary(
    d: int, n: int, *, site: str, seed: int = 0, activation: str = "relu", dim: int = -1
) -> cc.FeatureBasis:
    """A random SAE at `site` as a basis (axis `dim`); biases chosen so some latents fire."""
    gen = torch.Generator().manual_seed(seed)
    cfg = DictionaryConfig(d_in=d, n_latents=n, site=site, activation=activation,
                           k=2 if activation == "topk" else None)  # fmt: skip
    sae = Dictionary(
        cfg, torch.randn(d, n, generator=gen) / d**0.5, 0.1 * torch.randn(n, generator=gen),
        torch.randn(n, d, generator=gen) / d**0.5, 0.3 * torch.randn(d, generator=gen),
    )  # fmt: skip
    return sae.as_basis(dim=dim)


def metric(out: torch.Tensor) -> torch.Tensor:
    return out[:, 0].sum() - out[:, 1].sum()


@pytest.fixture
def pair(convnet, images):
    corrupt = torch.randn(images.shape, generator=torch.Generator().manual_seed(7))
    return convnet, images, corrupt


def hooked(model, inputs, site, fn) -> float:
    """The metric with `fn` applied to the activation at `site` by a plain hook."""
    with torch.no_grad(), cc.hooks(model, {site: lambda a, s: fn(a.clone())}):
        return float(metric(model(inputs)))


def acts(model, inputs, site=SITE) -> torch.Tensor:
    return cc.capture(model, inputs, sites=[site])[site]


# By-hand versions of each basis on a conv site's channels (channels moved last and back).
def sae_parts(basis, x):
    """(latents [.., n], reconstruction, error) of a conv activation, written out by hand."""
    sae = basis.dictionary
    rows = x.movedim(1, -1)
    z = torch.relu(rows @ sae.W_enc + sae.b_enc)
    recon = z @ sae.W_dec + sae.b_dec
    return z, recon.movedim(-1, 1), x - recon.movedim(-1, 1)


def sae_edit(basis, x, i, value):
    """x with latent i set to `value` ([batch, h, w] or a number), the error kept."""
    z, _, _ = sae_parts(basis, x)
    shift = (value - z[..., i])[..., None] * basis.dictionary.W_dec[i]
    return x + shift.movedim(-1, 1)


# --- patching ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{}, {"direction": "noise"}, {"ablation": "zero"}, {"ablation": "mean"},
     {"ablation": "resample", "seed": 3}],
)  # fmt: skip
def test_unit_basis_patch_is_the_unit_patch(pair, options):
    model, clean, corrupt = pair
    by_unit = cc.patch(model, clean, corrupt, metric, site=SITE, unit="channel", **options)
    by_basis = cc.patch(model, clean, corrupt, metric, basis=UnitBasis(4, dim=1, site=SITE),
                        **options)  # fmt: skip
    assert by_basis.axes == ("feature",) and by_basis.coords["feature"][-1] == "error"
    assert torch.equal(by_basis.values[:4], by_unit.values)
    assert float(by_basis.values[4]) == pytest.approx(by_basis.baseline, abs=1e-6)  # no error
    spatial = cc.patch(model, clean, corrupt, metric, site=SITE, unit=("channel", "h", "w"),
                       **options)  # fmt: skip
    per_pixel = cc.patch(model, clean, corrupt, metric, basis=UnitBasis(4, dim=1, site=SITE),
                         unit=("h", "w"), **options)  # fmt: skip
    assert torch.equal(per_pixel.values[:4], spatial.values)


def test_dictionary_patch_matches_hand_written_hooks(pair):
    model, clean, corrupt = pair
    basis = dictionary(4, 6, site=SITE, dim=1)
    res = cc.patch(model, clean, corrupt, metric, basis=basis)  # denoise: corrupt run, clean in
    assert res.values.shape == (7,) and res.coords["feature"] == (*basis.labels, "error")
    z_clean, _, e_clean = sae_parts(basis, acts(model, clean))
    for i in range(6):
        want = hooked(model, corrupt, SITE, lambda x, i=i: sae_edit(basis, x, i, z_clean[..., i]))
        assert float(res.values[i]) == pytest.approx(want, rel=1e-5, abs=1e-5)
    want = hooked(model, corrupt, SITE, lambda x: x - sae_parts(basis, x)[2] + e_clean)
    assert float(res.values[6]) == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert res.to_frame()["feature"].tolist() == [*basis.labels, "error"]

    mean = cc.patch(model, clean, None, metric, basis=basis, ablation="mean", reference=corrupt)
    z_ref, _, e_ref = sae_parts(basis, acts(model, corrupt))
    for i in (0, 3):
        value = z_ref[..., i].mean(0)  # each latent's mean, not the latent of the mean
        want = hooked(model, clean, SITE, lambda x, i=i, v=value: sae_edit(basis, x, i, v))
        assert float(mean.values[i]) == pytest.approx(want, rel=1e-5, abs=1e-5)
    want = hooked(model, clean, SITE, lambda x: x - sae_parts(basis, x)[2] + e_ref.mean(0))
    assert float(mean.values[6]) == pytest.approx(want, rel=1e-5, abs=1e-5)

    zero = cc.patch(model, clean, None, metric, basis=basis, ablation="zero")
    for i in (1, 5):
        want = hooked(model, clean, SITE, lambda x, i=i: sae_edit(basis, x, i, 0.0))
        assert float(zero.values[i]) == pytest.approx(want, rel=1e-5, abs=1e-5)
    want = hooked(model, clean, SITE, lambda x: x - sae_parts(basis, x)[2])
    assert float(zero.values[6]) == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_direction_patch_matches_hand_written_hooks_per_pixel(pair):
    model, clean, corrupt = pair
    dirs = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    basis = DirectionBasis(dirs, dim=1, site=SITE)
    res = cc.patch(model, clean, corrupt, metric, basis=basis, direction="noise",
                   unit={"h": [0, 4], "w": 2})  # fmt: skip
    assert res.axes == ("feature", "h", "w") and res.values.shape == (4, 2, 1)
    u = dirs / dirs.norm(dim=1, keepdim=True)
    x_src = acts(model, corrupt)
    for i in range(3):
        for j, h in enumerate((0, 4)):

            def edit(x, i=i, h=h):
                shift = torch.einsum("bc,c->b", x_src[:, :, h, 2] - x[:, :, h, 2], u[i])
                x[:, :, h, 2] += shift[:, None] * u[i]
                return x

            want = hooked(model, clean, SITE, edit)
            assert float(res.values[i, j, 0]) == pytest.approx(want, rel=1e-5, abs=1e-5)
    nodes, _ = res.graph_frames()
    keys = set(nodes["key"])
    assert {"relu1[2]@4,2", "relu1[error]@0,2"} <= keys
    assert NodeId.parse("relu1[error]@0,2").error
    g = cc.build_graph(res)
    assert g.nodes["relu1[error]@4,2"]["kind"] == "error"
    assert g.nodes["relu1[1]@0,2"]["label"] == basis.labels[1] + "@0,2"


# --- attribution ---------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_attribution_patching_over_latents_is_the_first_order_estimate(pair, direction):
    model, clean, corrupt = pair
    basis = dictionary(4, 6, site=SITE, dim=1)
    res = attribute(model, clean, corrupt, metric, method="attribution_patching", basis=basis,
                    direction=direction)  # fmt: skip
    site = attribute(model, clean, corrupt, metric, method="attribution_patching", site=SITE,
                     direction=direction)  # fmt: skip
    assert res.axes == ("feature",) and res.scores.shape == (7,)
    torch.testing.assert_close(res.scores.sum(), site.scores.sum(), rtol=1e-5, atol=1e-5)
    base, source = (clean, corrupt) if direction == "noise" else (corrupt, clean)
    ran = cc.capture(model, base, sites=[SITE], grads=True, metric=metric)
    grad = ran.grads[SITE].movedim(1, -1)  # [b, h, w, c]
    z, _, e = sae_parts(basis, ran[SITE])
    z_src, _, e_src = sae_parts(basis, acts(model, source))
    along = grad @ basis.dictionary.W_dec.T  # the gradient along each decoder row
    for i in range(6):
        by_hand = ((z_src[..., i] - z[..., i]) * along[..., i]).sum()
        torch.testing.assert_close(res.scores[i], by_hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.scores[6], ((e_src - e) * ran.grads[SITE]).sum(), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    _, edges = res.graph_frames()
    assert set(edges["source"]) == {f"{SITE}[{i}]" for i in range(6)} | {f"{SITE}[error]"}
    assert cc.build_graph(res).nodes[f"{SITE}[error]"]["kind"] == "error"


@pytest.mark.parametrize("options", [{}, {"ablation": "mean"}])
def test_integrated_gradients_over_latents_add_up_to_the_sites(pair, options):
    """On a conv net with ReLUs the quadrature is not exact, but the feature path is the site's
    straight path, so features plus error give the site's integrated gradients to float error."""
    model, clean, corrupt = pair
    dirs = torch.randn(2, 4, generator=torch.Generator().manual_seed(8))
    bases = [dictionary(4, 6, site=SITE, dim=1), DirectionBasis(dirs, dim=1, site=SITE),
             UnitBasis(4, dim=1, site=SITE, units=(1, 2))]  # fmt: skip
    for basis in bases:
        res = attribute(model, clean, corrupt, metric, method="integrated_gradients",
                        basis=basis, steps=16, **options)  # fmt: skip
        site = attribute(model, clean, corrupt, metric, method="integrated_gradients",
                         site=SITE, steps=16, **options)  # fmt: skip
        torch.testing.assert_close(res.total, site.total, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res.expected, site.expected, rtol=1e-5, atol=1e-6)
    by_pixel = attribute(model, clean, corrupt, metric, method="integrated_gradients",
                         basis=basis, unit=("h", "w"), steps=16, **options)  # fmt: skip
    assert by_pixel.scores.shape == (3, 6, 6)
    keys = {row["key"] for row in by_pixel.nodes}  # a unit basis keeps its units' indices
    assert {"relu1[1]@0,0", "relu1[2]@5,5", "relu1[error]@3,4"} <= keys
    assert {row["kind"] for row in by_pixel.nodes} == {"channel", "error", "output"}
    torch.testing.assert_close(by_pixel.scores.sum((1, 2)), res.scores, rtol=1e-5, atol=1e-6)


def test_zero_baseline_means_zero_coefficients(pair):
    """Without a corrupted input the baseline is every coefficient and the error at zero: the
    activation decode(0), b_dec for a dictionary."""
    model, clean, _ = pair
    basis = dictionary(4, 6, site=SITE, dim=1)
    res = attribute(model, clean, None, metric, method="integrated_gradients", basis=basis,
                    steps=8)  # fmt: skip
    b_dec = basis.dictionary.b_dec[None, :, None, None].expand_as(acts(model, clean))
    at_b_dec = hooked(model, clean, SITE, lambda x: b_dec.clone())
    want = hooked(model, clean, SITE, lambda x: x) - at_b_dec
    assert float(res.expected) == pytest.approx(want, rel=1e-5, abs=1e-6)


# --- steering ------------------------------------------------------------------------------


def test_steer_adds_the_decoder_row(pair):
    model, clean, _ = pair
    basis = dictionary(4, 6, site=SITE, dim=1)
    out = cc.steer(model, clean, basis, which=2, alpha=3.0)
    row = basis.dictionary.W_dec[2][None, :, None, None]
    with torch.no_grad(), cc.hooks(model, {SITE: lambda a, s: a + 3.0 * row}):
        want = model(clean)
    torch.testing.assert_close(out, want)
    both = cc.steer(model, clean, basis, which=[0, 5], alpha=[1.0, -2.0])
    rows = (basis.dictionary.W_dec[0] - 2.0 * basis.dictionary.W_dec[5])[None, :, None, None]
    with torch.no_grad(), cc.hooks(model, {SITE: lambda a, s: a + rows}):
        torch.testing.assert_close(both, model(clean))
    assert cc.hook_count(model) == 0


# --- direct effects ------------------------------------------------------------------------


def test_direct_effects_from_and_to_a_dictionary_on_a_conv_layer(pair):
    """relu1 -> conv2 is linear: each latent's effect is what removing its decoded vector does,
    b_dec goes to `rest` (the run with relu1 at b_dec), and the scores stay complete."""
    model, clean, _ = pair
    source = dictionary(4, 6, site=SITE, dim=1)
    res = attribute(model, clean, None, None, method="direct_effects", freeze=[], source=source,
                    target=UnitBasis(4, dim=1, site="conv2"))  # fmt: skip
    assert res.completeness_gap < 1e-5 and res.scores.shape == (7, 4)

    def conv2(fn):
        with torch.no_grad(), cc.hooks(model, {SITE: lambda a, s: fn(a.clone())}):
            return acts(model, clean, "conv2").sum(dim=(0, 2, 3))

    base = conv2(lambda x: x)
    for i in range(6):
        without = conv2(lambda x, i=i: sae_edit(source, x, i, 0.0))
        torch.testing.assert_close(res.scores[i], base - without, rtol=1e-4, atol=1e-4)
    b_dec = source.dictionary.b_dec[None, :, None, None]
    torch.testing.assert_close(res.extras["rest"], conv2(lambda x: b_dec.expand_as(x).clone()),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    latents = dictionary(4, 5, site="conv2", seed=4, dim=1)
    to_latents = attribute(model, clean, None, None, method="direct_effects", freeze=[],
                           source=source, target=latents)  # fmt: skip
    assert to_latents.completeness_gap < 1e-5  # the target's gates held at the clean run
    keys = to_latents.coords["source"]
    assert keys[-1] == f"{SITE}[error]" and to_latents.coords["target"][0] == "conv2[0]"


# --- bad input -----------------------------------------------------------------------------


def test_bad_bases_raise_and_leave_no_hook(pair):
    model, clean, corrupt = pair
    siteless = dictionary(4, 6, site=SITE, dim=1).dictionary.as_basis(dim=1)
    object.__setattr__(siteless, "site", None)
    wrong_d = dictionary(5, 6, site=SITE, dim=1)
    good = dictionary(4, 6, site=SITE, dim=1)
    calls = [
        lambda b: cc.patch(model, clean, corrupt, metric, basis=b),
        lambda b: attribute(model, clean, corrupt, metric, method="attribution_patching",
                            basis=b),
        lambda b: attribute(model, clean, corrupt, metric, method="integrated_gradients",
                            basis=b, steps=2),
        lambda b: cc.steer(model, clean, b, which=0, alpha=1.0),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(cc.ConfigError, match="site"):
            call(siteless)
        with pytest.raises(cc.ShapeMismatchError, match="axis"):
            call(wrong_d)
        with pytest.raises(cc.ConfigError):
            call("relu1")
        assert cc.hook_count(model) == 0
    for method in ("eap", "eap-ig", "edge_patching"):
        with pytest.raises(cc.ConfigError, match="does not take basis"):
            attribute(model, clean, corrupt, metric, method=method, basis=good)
    with pytest.raises(cc.ConfigError, match="lives at"):
        cc.patch(model, clean, corrupt, metric, site="conv2", basis=good)
    with pytest.raises(cc.ConfigError, match="own axis"):
        cc.patch(model, clean, corrupt, metric, basis=good, unit="channel")
    with pytest.raises(cc.ConfigError, match=r"site=\.\.\. .* or basis="):
        cc.patch(model, clean, corrupt, metric)
    assert cc.hook_count(model) == 0


# --- transformers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    model = tiny_transformer(n_layers=2, d_model=32, n_heads=2, d_head=16, d_vocab=20, n_ctx=16,
                             d_mlp=64, seed=1)  # fmt: skip
    gen = torch.Generator().manual_seed(5)
    clean, corrupt = torch.randint(0, 20, (2, 2, 6), generator=gen)
    return model, clean, corrupt


def lm_metric(out: torch.Tensor) -> torch.Tensor:
    return (out[:, -1, 3] - out[:, -1, 5]).mean()


@pytest.mark.transformer
def test_transformer_patching_attribution_and_steering_with_a_dictionary(tiny):
    model, clean, corrupt = tiny
    own = cc.hook_count(model)
    site = "blocks.1.hook_resid_pre"
    basis = dictionary(32, 8, site=site, seed=3)
    res = cc.patch(model, clean, corrupt, lm_metric, basis=basis, unit={"pos": [2, -1]})
    assert res.axes == ("feature", "pos") and res.values.shape == (9, 2)
    sae = basis.dictionary
    x_clean = acts(model, clean, site)
    z_clean = torch.relu(x_clean @ sae.W_enc + sae.b_enc)
    for i, j, p in [(0, 0, 2), (3, 1, 5), (7, 1, 5)]:

        def edit(x, i=i, p=p):
            z = torch.relu(x[:, p] @ sae.W_enc + sae.b_enc)
            x[:, p] += (z_clean[:, p, i] - z[:, i])[:, None] * sae.W_dec[i]
            return x

        with torch.no_grad(), cc.hooks(model, {site: lambda a, s, f=edit: f(a.clone())}):
            want = float(lm_metric(model(corrupt)))
        assert float(res.values[i, j]) == pytest.approx(want, rel=1e-4, abs=1e-5)
    nodes, _ = res.graph_frames()
    assert {f"{site}[3]@5", f"{site}[error]@2"} <= set(nodes["key"])

    ap = attribute(model, clean, corrupt, lm_metric, method="attribution_patching", basis=basis,
                   unit="pos")  # fmt: skip
    by_site = attribute(model, clean, corrupt, lm_metric, method="attribution_patching",
                        site=site, unit="pos")  # fmt: skip
    torch.testing.assert_close(ap.scores.sum(0), by_site.scores, rtol=1e-5, atol=1e-6)
    assert cc.build_graph(ap).nodes[f"{site}[error]@4"]["kind"] == "error"

    ig = attribute(model, clean, corrupt, lm_metric, method="integrated_gradients", basis=basis,
                   steps=64)  # fmt: skip
    assert ig.completeness_gap <= 1e-4
    site_ig = attribute(model, clean, corrupt, lm_metric, method="integrated_gradients",
                        site=site, steps=64)  # fmt: skip
    torch.testing.assert_close(ig.total, site_ig.total, rtol=1e-5, atol=1e-6)

    out = cc.steer(model, clean, basis, which=4, alpha=5.0, pos=-1)

    def last(a, s):
        a = a.clone()
        a[:, -1] += 5.0 * sae.W_dec[4]
        return a

    with torch.no_grad(), cc.hooks(model, {site: last}):
        torch.testing.assert_close(out, model(clean), rtol=1e-5, atol=1e-5)
    with torch.no_grad(), cc.hooks(model, {site: lambda a, s: basis.steer(a, 4, 5.0)}):
        everywhere = model(clean)  # the basis's own steer, through plain cc.hooks
    torch.testing.assert_close(cc.steer(model, clean, basis, which=4, alpha=5.0), everywhere)
    assert cc.hook_count(model) == own


@pytest.mark.transformer
def test_transformer_direct_effects_between_dictionaries(tiny):
    model, clean, _ = tiny
    source = dictionary(32, 8, site="blocks.0.hook_resid_post", seed=6)
    target = dictionary(32, 6, site="blocks.1.hook_resid_post", seed=7, activation="topk")
    res = attribute(model, clean, None, None, method="direct_effects", source=source,
                    target=target, target_pos=-1)  # fmt: skip
    assert res.scores.shape == (9, 6) and res.completeness_gap < 1e-4
    units = UnitBasis(32, site="blocks.0.hook_resid_post")
    unit = attribute(model, clean, None, None, method="direct_effects", source=units,
                     target=target, target_pos=-1)  # fmt: skip
    # the same source activation split two ways: the totals agree, bias and error included
    torch.testing.assert_close(res.total, unit.total, rtol=1e-4, atol=1e-4)


def test_patch_and_attribution_name_features_alike() -> None:
    cnn, sae = cc.zoo.curve_cnn(), cc.zoo.curve_sae()
    basis = sae.as_basis(dim=1)
    clean, corrupt = cc.zoo.curve_images(4).images, cc.zoo.curve_images(4, seed=3).images
    metric = lambda out: out[:, 8].sum()  # noqa: E731
    patched = cc.patch(cnn, clean, corrupt, metric, basis=basis, direction="noise")
    scored = cc.attribute(cnn, clean, corrupt, metric, method="attribution_patching", basis=basis)
    assert scored.coords["feature"] == (*basis.labels, "error")
    assert list(patched.to_frame()["feature"]) == list(scored.to_frame()["feature"])
