"""Feature manifolds: spectra, circles, irreducibility, discovery and interventions.

References are independent of the code under test: numpy's FFT for the spectrum, a brute-force
pairwise sum for Fisher & Lee's circular correlation, scikit-learn's mutual information for the
separability histogram, point sets whose geometry is fixed by construction (circles, lines,
independent features), a circle planted among linear features, and the curve-detector net,
whose curve channels are tuned to the 8 directions of its classes.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from sklearn.metrics import mutual_info_score

import circuits as cc
from circuits import manifolds as M
from circuits.errors import ConfigError, InputError, ShapeMismatchError

P = 31


def sinusoids(freqs: dict[int, float], *, d: int = 12, seed: int = 0):
    """Class means over residues 0 .. P-1: amplitude**2 / 2 of variance at each frequency, in
    orthonormal planes (so the powers are known exactly)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(d, 2 * len(freqs), generator=g, dtype=torch.float64))[0].T
    y = torch.arange(P, dtype=torch.float64)
    x = torch.full((P, d), 3.0, dtype=torch.float64)
    for i, (f, amp) in enumerate(freqs.items()):
        theta = 2 * math.pi * f * y / P
        x += amp * (theta.cos()[:, None] * q[2 * i] + theta.sin()[:, None] * q[2 * i + 1])
    return x.float(), torch.arange(P)


def test_spectrum_matches_numpy_fft_and_finds_the_key_frequencies():
    x, y = sinusoids({3: 2.0, 7: 1.0, 11: 0.3})
    spectrum = M.fourier_spectrum(x, y, period=P)
    fft = np.fft.rfft(x.double().numpy() - x.double().numpy().mean(0), axis=0)
    power = (np.abs(fft[1:]) ** 2).sum(1)
    assert np.allclose(spectrum.power.numpy(), power / power.sum(), atol=1e-5)
    assert spectrum.explained == pytest.approx(1.0, abs=1e-6)
    assert spectrum.key_frequencies(0.9) == (3, 7)
    assert spectrum.key_frequencies(0.99) == (3, 7, 11)
    assert spectrum.key_frequencies(0.99, max_count=1) == (3,)
    manifold = spectrum.manifold((3, 7, 11))
    assert torch.allclose(manifold.point(y), x, atol=1e-4)  # the class means, rebuilt
    # Repeated rows with noise, and labels given as angles in degrees: the same spectrum.
    g = torch.Generator().manual_seed(1)
    noisy = x.repeat(4, 1) + 0.01 * torch.randn(4 * P, x.shape[1], generator=g)
    again = M.fourier_spectrum(noisy, y.repeat(4) * 360.0 / P, period=360.0)
    assert again.key_frequencies(0.9) == (3, 7) and again.explained > 0.99
    frame = spectrum.top(2)
    assert list(frame.frequency) == [3, 7] and isinstance(spectrum.plot(), go.Figure)


def test_cyclic_manifold_moves_points_along_its_circles():
    x, y = sinusoids({2: 2.0, 5: 1.0})
    manifold = M.fourier_spectrum(x, y, period=P).manifold((2, 5))
    angles = manifold.encode(x)
    expected = torch.remainder(manifold.point_angles(y) + math.pi, 2 * math.pi) - math.pi
    assert torch.allclose(
        torch.remainder(angles - expected + math.pi, 2 * math.pi) - math.pi,
        torch.zeros_like(angles),
        atol=1e-4,
    )
    assert torch.allclose(manifold.shift(x, 4), manifold.point((y + 4) % P), atol=1e-4)
    g = torch.Generator().manual_seed(2)
    off = torch.randn(P, x.shape[1], generator=g)
    off = off - manifold.subspace.project(off)  # a part outside every circle's plane
    moved = manifold.shift(x + off, 4)
    assert torch.allclose(moved - manifold.point((y + 4) % P), off, atol=1e-4)
    turned = manifold.steer(x, None, manifold.shift_angles(-3))  # steer = shift, by angles
    assert torch.allclose(turned, manifold.point((y - 3) % P), atol=1e-4)
    assert torch.allclose(manifold.steer(x, 1, 2 * math.pi), x, atol=1e-4)
    to = manifold.ablate(x, None, value=manifold.point_angles(torch.zeros(P)))
    assert torch.allclose(to, manifold.point(torch.zeros(P)).expand_as(x), atol=1e-4)
    both = manifold.restrict(x + off, y) + manifold.exclude(x + off, y)
    assert torch.allclose(both, x + off + manifold.centre, atol=1e-4)
    assert torch.allclose(manifold.decode(manifold.encode(x)), x, atol=1e-4)
    assert manifold.plane(5).n_features == 2 and manifold.subspace.n_features == 4


def test_circularity_against_brute_force_fisher_lee():
    theta = torch.linspace(0, 2 * math.pi, 41)[:-1]
    labels = torch.arange(40)
    circle = torch.stack([theta.cos(), theta.sin()], 1) * 2 + torch.tensor([5.0, -1.0])
    perfect = M.circularity(circle, labels, period=40)
    assert perfect.correlation == pytest.approx(1.0, abs=1e-6)
    assert perfect.radius_spread < 1e-5 and perfect.ellipticity == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(perfect.centre, torch.tensor([5.0, -1.0]), atol=1e-5)
    mirrored = M.circularity(circle * torch.tensor([1.0, -1.0]), labels, period=40)
    assert mirrored.correlation == pytest.approx(-1.0, abs=1e-6) and mirrored.score > 0.999
    ellipse = M.circularity(circle * torch.tensor([1.0, 0.5]), labels, period=40)
    assert ellipse.ellipticity == pytest.approx(0.5, abs=1e-4) and ellipse.radius_spread > 0.1
    twice = torch.stack([(2 * theta).cos(), (2 * theta).sin()], 1)
    assert M.circularity(twice, labels, period=40, frequency=2).score > 0.999
    g = torch.Generator().manual_seed(0)
    noisy = circle + 0.8 * torch.randn(40, 2, generator=g)
    shuffled = labels[torch.randperm(40, generator=g)]
    for points, labs in [(noisy, labels), (noisy, shuffled)]:
        res = M.circularity(points, labs, period=40)
        a = (2 * math.pi * labs / 40).double().numpy()
        rel = (points.double() - res.centre.double()).numpy()
        b = np.arctan2(rel[:, 1], rel[:, 0])
        da, db = np.subtract.outer(a, a), np.subtract.outer(b, b)
        brute = (np.sin(da) * np.sin(db)).sum() / np.sqrt(
            (np.sin(da) ** 2).sum() * (np.sin(db) ** 2).sum()
        )
        assert res.correlation == pytest.approx(brute, abs=1e-6)
    assert M.circularity(noisy, shuffled, period=40).score < 0.4
    assert isinstance(perfect.plot(), go.Figure) and len(perfect.to_frame()) == 1


def _circle(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(n, generator=g) * 2 * math.pi
    radius = 1 + 0.05 * torch.randn(n, 1, generator=g)
    return torch.stack([theta.cos(), theta.sin()], 1) * radius


def _two_features(n: int, seed: int) -> torch.Tensor:
    """Two independent sparse linear features (each fires 30% of the time), on skewed axes,
    on the rows where either fires."""
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, 2, generator=g) * (torch.rand(n, 2, generator=g) < 0.3)
    values = values[(values > 0).any(1)]
    return values @ torch.tensor([[1.0, 0.2], [0.4, 1.0]])


def test_irreducibility_tells_a_circle_from_linear_features():
    circle = M.irreducibility(_circle(3000, 0))
    assert circle.irreducible and circle.separability > 0.5 and circle.mixture < 0.25
    pair = M.irreducibility(_two_features(6000, 1))
    assert not pair.irreducible and pair.mixture > M.MAX_MIXTURE  # many points lie on one axis
    blob = M.irreducibility(torch.randn(3000, 2, generator=torch.Generator().manual_seed(2)))
    assert not blob.irreducible and blob.separability < 0.05  # independent in every frame
    assert M.separability_index(_circle(3000, 0)) == pytest.approx(circle.separability)
    assert isinstance(circle.plot(), go.Figure) and bool(circle.to_frame().irreducible[0])


def test_separability_histogram_and_mixture_count_match_independent_counts():
    points = _circle(2000, 3)
    res = M.irreducibility(points, bins=8)
    p = res.points.numpy()  # normalised; rotation 0 is the first of the search
    edges = np.linspace(-3, 3, 9)
    codes = [
        np.clip(np.digitize(np.clip(c * math.sqrt(2), -3, 3), edges[1:-1]), 0, 7)
        for c in (p[:, 0], p[:, 1])
    ]
    reference = mutual_info_score(codes[0], codes[1]) / math.log(2)
    assert float(res.information[0]) == pytest.approx(reference, abs=1e-9)
    # 700 points exactly on a line and 300 spread far off it: the best line holds 0.7 of them.
    g = torch.Generator().manual_seed(4)
    line = torch.stack([torch.rand(700, generator=g) * 4 - 2, torch.zeros(700)], 1)
    far = torch.stack([torch.rand(300, generator=g) * 4 - 2, 3 + torch.rand(300, generator=g)], 1)
    assert M.mixture_index(torch.cat([line, far])) == pytest.approx(0.7, abs=0.02)


@pytest.fixture(scope="module")
def planted(one_thread):
    data = M.planted_circle(12_000, seed=0)
    sae = cc.train_dictionary(
        data.acts, 160, activation="topk", k=1, epochs=25, batch_size=256, lr=3e-3, seed=0
    )
    return data, sae


def test_discovery_recovers_the_planted_circle(planted):
    data, sae = planted
    found = M.discover_manifolds(sae, data.acts)
    top = found.to_frame().iloc[0]
    assert bool(top.irreducible) and top.plane_explained > 0.8
    angles = found.planes[0].principal_angles(data.plane)
    assert float(angles.max()) <= 10.0
    truth = M.irreducibility(data.acts[data.active] @ data.plane.T)  # the planted circle itself
    assert truth.irreducible
    pair = data.values[:, :2] @ torch.eye(2)  # two of the independent linear features
    assert not M.irreducibility(pair[(pair > 0).any(1)]).irreducible
    assert isinstance(found.plot(0, dims=3), go.Figure)
    spectral = M.discover_manifolds(sae, data.acts, method="spectral", n_clusters=20)
    assert sum(len(c) for c in spectral.clusters) <= sae.n_latents


def test_graph_clustering_keeps_a_ring_together():
    g = torch.Generator().manual_seed(0)
    plane = torch.linalg.qr(torch.randn(32, 2, generator=g))[0].T
    theta = torch.arange(12) * (2 * math.pi / 12)
    ring = torch.stack([theta.cos(), theta.sin()], 1) @ plane
    others = torch.randn(20, 32, generator=g)
    others = others - others @ plane.T @ plane  # nothing of them in the ring's plane
    clusters = M.cluster_latents(torch.cat([ring, others]), method="graph")
    assert tuple(range(12)) in clusters
    assert all(len(c) == 1 or max(c) < 12 for c in clusters if c != tuple(range(12)))


@pytest.fixture(scope="module")
def ring(one_thread):
    net = cc.zoo.curve_cnn()
    directions = torch.arange(0, 360, 5.0)
    images = torch.cat([cc.zoo.arc_stimuli(directions, radius=r) for r in (6.0, 8.0, 10.0)])
    labels = directions.repeat(3)
    acts = cc.capture(net, images, sites=["pool2"])["pool2"]
    spectrum = M.fourier_spectrum(acts, labels, period=360, site="pool2")
    return net, images, labels, acts, spectrum


def test_curve_detectors_form_a_ring_that_orientation_goes_round(ring):
    _, _, labels, acts, spectrum = ring
    assert spectrum.key_frequencies(0.85)[:2] == (1, 2)  # the ring and its second harmonic
    manifold = spectrum.manifold((1, 2))
    assert M.circularity(manifold.circle_points(acts, 1), labels, period=360).score >= 0.9
    probe = cc.fit_probe(acts, labels, kind="linear", period=360, test_fraction=0.25)
    assert M.circularity(probe.as_subspace().encode(acts), labels, period=360).score >= 0.9


def test_turning_the_ring_moves_the_preferred_orientation(ring):
    net, images, labels, _, spectrum = ring
    curve = lambda out: out[:, 8:].argmax(1)  # noqa: E731 - the preferred curve class
    with torch.no_grad():
        plain = net(images)
    base = curve(plain)
    right = base == torch.round(labels / 45).long() % 8  # 86% of the stimuli
    phi = torch.deg2rad(torch.tensor(cc.zoo.CURVE_DIRECTIONS))  # channel 8 + k's direction

    def decoded(out):  # the curve channels' population vector, in degrees
        r = out[:, 8:]
        return torch.rad2deg(torch.atan2((r * phi.sin()).sum(1), (r * phi.cos()).sum(1)))

    for degrees in (90, 180, -90):
        out = M.intervene(net, images, spectrum.manifold((1, 2)), by=degrees)
        moved = (curve(out) - base) % 8 == (degrees // 45) % 8
        assert float(moved[right].float().mean()) >= 0.85  # measured 0.92 to 0.96
        error = (decoded(out) - decoded(plain) - degrees + 180) % 360 - 180
        assert float(error.abs().median()) < 5  # measured about 3 degrees
    # The first harmonic alone is not the whole ring: a quarter turn of its plane leaves the
    # second harmonic (a half-turn symmetric code) behind, and the class barely moves.
    alone = curve(M.intervene(net, images, spectrum.manifold((1,)), by=90))
    assert float(((alone - base) % 8 == 2).float().mean()) < 0.1
    manifold = spectrum.manifold((1, 2))
    steered = cc.steer(net, images, manifold, which=None, alpha=manifold.shift_angles(90))
    assert torch.allclose(steered, M.intervene(net, images, manifold, by=90), atol=1e-5)
    res = cc.patch(
        net, images[:8], images[18:26], lambda out: out[:, 8:].max(1).values.mean(), basis=manifold
    )
    assert res.values.shape == (3,)  # each circle's angle, then the error term


def test_bad_inputs_raise_clear_errors(ring):
    net, images, labels, acts, spectrum = ring
    with pytest.raises(InputError, match="at least 3 distinct"):
        M.fourier_spectrum(acts, labels % 2, period=360)
    with pytest.raises(InputError, match="all equal"):
        M.fourier_spectrum(torch.ones(10, 3), torch.arange(10), period=10)
    with pytest.raises(InputError, match="all equal"):
        M.circularity(torch.ones(10, 2), torch.arange(10), period=10)
    with pytest.raises(InputError, match="all equal"):
        M.irreducibility(torch.ones(10, 2))
    with pytest.raises(ConfigError, match="period"):
        M.fourier_spectrum(acts, labels, period=0)
    with pytest.raises(ShapeMismatchError):
        M.circularity(torch.randn(10, 3), torch.arange(10), period=10)
    with pytest.raises(ShapeMismatchError):
        M.fourier_spectrum(acts, labels[:-1], period=360)
    with pytest.raises(ConfigError, match="max_frequency"):
        M.fourier_spectrum(acts, labels, period=360, max_frequency=100)
    with pytest.raises(ConfigError, match="frequencies"):
        spectrum.manifold((99,))
    manifold = spectrum.manifold((1, 2))
    with pytest.raises(ConfigError, match="by="):
        M.intervene(net, images, manifold, mode="shift")
    with pytest.raises(ConfigError, match="labels="):
        M.intervene(net, images, manifold, mode="restrict", by=2)
    with pytest.raises(ConfigError, match="mode"):
        M.intervene(net, images, manifold, mode="rotate", by=2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'pos' axis"):
        M.intervene(net, images, manifold, by=2, pos=0)
    with pytest.raises(ConfigError, match="with a site"):
        M.intervene(net, images, M.fourier_spectrum(acts, labels, period=360).manifold((1,)), by=1)
    with pytest.raises(ShapeMismatchError, match="one label per activation"):
        manifold.restrict(acts, labels[:5])
    with pytest.raises(ConfigError, match="n_clusters"):
        M.cluster_latents(torch.randn(5, 4), method="spectral", n_clusters=6)
    with pytest.raises(ConfigError, match="method"):
        M.cluster_latents(torch.randn(5, 4), method="kmeans")  # type: ignore[arg-type]
    with pytest.raises(ShapeMismatchError):
        M.plot_points(torch.randn(5, 4))
