"""Feature bases: the contract, unit and direction bases, ablation and steering by the numbers."""

from __future__ import annotations

import pytest
import torch

from circuits.errors import ConfigError, InputError, ShapeMismatchError
from circuits.features import DirectionBasis, FeatureBasis, UnitBasis
from circuits.probes import fit_probe
from circuits.site import Site


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


@pytest.fixture
def acts() -> torch.Tensor:
    return torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture
def dirs() -> torch.Tensor:
    return torch.randn(3, 16, generator=torch.Generator().manual_seed(1))


def test_both_bases_keep_the_contract(dirs):
    for basis in (UnitBasis(16, site="s"), DirectionBasis(dirs, site="s")):
        assert isinstance(basis, FeatureBasis)
        assert len(basis.labels) == basis.n_features
        assert basis.labels[0].startswith("s:")
    assert UnitBasis(16).labels[:2] == ("unit0", "unit1")


def test_direction_encode_decode_along_any_axis(dirs):
    u = dirs / dirs.norm(dim=1, keepdim=True)
    basis = DirectionBasis(dirs, dim=1)
    conv = torch.randn(2, 16, 3, 3)  # batch channel h w
    coeffs = basis.encode(conv)
    assert coeffs.shape == (2, 3, 3, 3)
    assert torch.allclose(coeffs, torch.einsum("bchw,kc->bkhw", conv, u), atol=1e-5)
    back = basis.decode(coeffs)
    assert back.shape == conv.shape
    assert torch.allclose(back, torch.einsum("bkhw,kc->bchw", coeffs, u), atol=1e-5)
    q, _ = torch.linalg.qr(torch.randn(16, 3))
    ortho = DirectionBasis(q.T)  # orthonormal: decode(encode(x)) is the projection onto the span
    x = torch.randn(7, 16)
    assert torch.allclose(ortho.decode(ortho.encode(x)), x @ q @ q.T, atol=1e-5)


def test_ablate_zeroes_the_projection_and_leaves_the_rest(acts, dirs):
    basis = DirectionBasis(dirs)
    u = unit(dirs[1]).double()
    out = basis.ablate(acts, 1)
    assert torch.allclose(out @ u, torch.zeros(4, 5, dtype=torch.float64), atol=1e-6)
    rest = acts - (acts @ u)[..., None] * u  # the orthogonal complement
    assert torch.allclose(out, rest, atol=1e-6)
    set_to = basis.ablate(acts, 1, value=2.5)
    assert torch.allclose(set_to @ u, torch.full((4, 5), 2.5, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(set_to - (set_to @ u)[..., None] * u, rest, atol=1e-6)


def test_ablate_several_directions_at_once(acts, dirs):
    basis = DirectionBasis(dirs)
    u = (dirs / dirs.norm(dim=1, keepdim=True)).double()
    means = torch.tensor([0.5, -1.0], dtype=torch.float64)
    out = basis.ablate(acts, [0, 2], value=means)
    assert torch.allclose(out @ u[[0, 2]].T, means.expand(4, 5, 2), atol=1e-6)
    q, _ = torch.linalg.qr(u[[0, 2]].T)  # the change lies in the span of the two directions
    change = out - acts
    assert torch.allclose(change - change @ q @ q.T, torch.zeros_like(change), atol=1e-6)
    everything = basis.ablate(acts)
    assert torch.allclose(everything @ u.T, torch.zeros(4, 5, 3, dtype=torch.float64), atol=1e-6)
    per_position = torch.randn(4, 5, 1, dtype=torch.float64)  # laid out like encode(acts)
    out = basis.ablate(acts, 1, value=per_position)
    assert torch.allclose(out @ u[1], per_position[..., 0], atol=1e-6)


def test_steer_adds_exactly_alpha_times_the_unit_direction(acts, dirs):
    basis = DirectionBasis(dirs)
    u = (dirs / dirs.norm(dim=1, keepdim=True)).double()
    assert torch.allclose(basis.steer(acts, 2, 3.0), acts + 3.0 * u[2])
    both = basis.steer(acts, [0, 1], torch.tensor([1.0, -2.0]))
    assert torch.allclose(both, acts + u[0] - 2.0 * u[1])
    raw = DirectionBasis(dirs, normalize=False)
    assert torch.allclose(raw.steer(acts, 0, 1.0), acts + dirs[0].double())


def test_unit_basis(acts):
    full = UnitBasis(16)
    assert torch.equal(full.encode(acts), acts) and torch.equal(full.decode(acts), acts)
    some = UnitBasis(16, units=(3, 7))
    coeffs = some.encode(acts)
    assert torch.equal(coeffs, acts[..., [3, 7]])
    back = some.decode(coeffs)
    assert torch.equal(back[..., [3, 7]], coeffs) and back.abs().sum() == coeffs.abs().sum()
    out = some.ablate(acts, 1)
    assert torch.equal(out[..., 7], torch.zeros(4, 5, dtype=torch.float64))
    assert torch.equal(out[..., :7], acts[..., :7]) and torch.equal(out[..., 8:], acts[..., 8:])
    steered = full.steer(acts, [0, 5], 2.0)
    assert torch.equal(steered[..., [0, 5]], acts[..., [0, 5]] + 2.0)
    site = Site("layer1", ("batch", "channel", "h", "w"), (2, 6, 4, 4))
    channels = UnitBasis.for_site(site, units=[1, 4])
    assert (channels.dim, channels.d, channels.site) == (-3, 6, "layer1")
    conv = torch.randn(2, 6, 4, 4)
    assert torch.equal(channels.encode(conv), conv[:, [1, 4]])
    ablated = channels.ablate(conv, 0, value=9.0)
    assert torch.equal(ablated[:, 1], torch.full((2, 4, 4), 9.0))
    assert torch.equal(ablated[:, [0, 2, 3, 4, 5]], conv[:, [0, 2, 3, 4, 5]])


def test_probe_basis_separates_raw_activations():
    g = torch.Generator().manual_seed(2)
    y = torch.arange(1000) % 2
    scales = torch.logspace(-2, 2, 12)  # wildly uneven feature scales: standardisation matters
    x = (torch.randn(1000, 12, generator=g) + 1.5 * y[:, None] * torch.ones(12)) * scales + 7.0
    probe = fit_probe(x, y, control=False)
    basis = probe.as_basis()
    assert basis.n_features == 1 and basis.labels == ("probe:logistic:1",)
    assert torch.allclose(basis.directions[0], probe.direction[0] / probe.direction[0].norm())
    proj = basis.encode(x)[:, 0]
    threshold = (proj[y == 0].mean() + proj[y == 1].mean()) / 2
    assert ((proj > threshold).long() == y).double().mean() > 0.95
    cleaned = basis.ablate(x, 0, value=float(proj.mean()))  # a mean ablation of the direction
    assert torch.allclose(basis.encode(cleaned)[:, 0], proj.mean().expand(1000), atol=1e-2)


def test_bad_inputs_raise_clear_errors(dirs):
    with pytest.raises(ShapeMismatchError, match=r"\[k, d\]"):
        DirectionBasis(torch.randn(2, 3, 4))
    with pytest.raises(InputError, match="zero"):
        DirectionBasis(torch.zeros(2, 4))
    with pytest.raises(InputError, match="NaN"):
        DirectionBasis(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ConfigError, match="labels"):
        DirectionBasis(dirs, labels=("a",))
    basis = DirectionBasis(dirs)
    with pytest.raises(ShapeMismatchError, match="size 16 along axis -1"):
        basis.encode(torch.randn(2, 15))
    with pytest.raises(ShapeMismatchError, match="coefficients"):
        basis.decode(torch.randn(2, 4))
    with pytest.raises(InputError, match="not in range"):
        basis.ablate(torch.randn(2, 16), 3)
    with pytest.raises(ShapeMismatchError, match="alpha"):
        basis.steer(torch.randn(2, 16), [0, 1], torch.ones(3))
    with pytest.raises(ShapeMismatchError, match="broadcast"):
        basis.ablate(torch.randn(2, 16), [0, 1], value=torch.ones(5, 5))
    with pytest.raises(ConfigError, match="units"):
        UnitBasis(4, units=(4,))
    with pytest.raises(ConfigError, match="positive int"):
        UnitBasis(0)
    with pytest.raises(ConfigError, match="dim must be an int"):
        UnitBasis(4, dim=1.5)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="tensor"):
        UnitBasis(4).encode([1, 2, 3, 4])  # type: ignore[arg-type]
