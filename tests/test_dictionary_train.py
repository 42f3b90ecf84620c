"""Training, streaming and evaluating sparse dictionaries, checked against ground truth: data
built from known sparse features, the toy model of superposition, and dictionaries whose
reconstruction is exact (or nothing) by construction."""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

import circuits as cc
from circuits.capture import ActivationCache, DiskCache
from circuits.dictionaries import Dictionary, DictionaryConfig, evaluate_dictionary
from circuits.dictionaries import train_dictionary as train
from circuits.dictionaries.data import as_rows
from circuits.dictionaries.train import _JumpReLU, _Step
from circuits.site import Site
from circuits.toy import ToyConfig, ToyModel

pytestmark = pytest.mark.usefixtures("one_thread")


def superposition(rows: int, n: int, p: float, seed: int) -> Tensor:
    """Codes [rows, n] of n sparse features: each on with probability p, at a magnitude in
    [0.5, 1.5]; rows of data are codes @ directions."""
    gen = torch.Generator().manual_seed(seed)
    on = torch.rand(rows, n, generator=gen) < p
    return on * (torch.rand(rows, n, generator=gen) + 0.5)


def directions(n: int, d: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(10_000 + seed)
    dirs = torch.randn(n, d, generator=gen)
    return dirs / dirs.norm(dim=1, keepdim=True)


def mmcs(true: Tensor, dictionary: Dictionary) -> float:
    """Mean over true directions of the best cosine similarity with a decoder row."""
    rows = dictionary.W_dec / dictionary.W_dec.norm(dim=1, keepdim=True)
    return float((true @ rows.T).max(1).values.mean())


def active(dictionary: Dictionary, x: Tensor) -> float:
    return float((dictionary.encode(x) != 0).sum(1).float().mean())


@pytest.fixture(scope="module")
def features() -> dict[str, Tensor]:
    """256 features in 64 dims, each on with probability 0.02: a training and a held-out set."""
    dirs = directions(256, 64)
    codes = superposition(60_000, 256, 0.02, seed=0)
    held = superposition(20_000, 256, 0.02, seed=1)
    return {"dirs": dirs, "x": codes @ dirs, "held": held @ dirs, "l0": (held > 0).sum(1).float()}


@pytest.mark.parametrize(
    ("activation", "options"),
    [
        ("relu", {"l1": 3.0, "lr": 2e-2, "steps": 1200}),
        ("topk", {"k": 5, "steps": 2000}),
        ("jumprelu", {"steps": 2000}),
    ],
)
def test_an_sae_recovers_features_in_superposition(features, activation, options) -> None:
    short = {"lr": 1e-2, "batch_size": 512, "resample_every": 100}  # a short run's settings
    d = train(features["x"], 256, activation=activation, progress=False, **{**short, **options})
    assert mmcs(features["dirs"], d) >= 0.95
    true_l0 = float(features["l0"].mean())  # 5.12
    assert abs(active(d, features["held"]) - true_l0) <= 0.2 * true_l0
    assert d.config.activation == activation and d.config.kind == "sae"


@pytest.fixture(scope="module")
def toy() -> tuple[Tensor, ActivationCache]:
    """The toy model of superposition, 5 features in 2 dims at sparsity 0.9: its W [2, 5] and
    its hidden layer on 50k inputs."""
    model = ToyModel(ToyConfig(n_features=5, n_hidden=2, sparsity=0.9), seed=0)
    model = cc.toy.train(model, steps=2000, batch_size=512, lr=2e-2, schedule="cosine",
                         progress=False)  # fmt: skip
    x = model.generate_batch(50_000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.W.detach()[0], cc.capture(model, x, sites="hidden")  # [batch, 1, 2]


def test_an_sae_on_the_toy_model_finds_its_five_directions(toy) -> None:
    w, cache = toy  # feature i is written along column i of w
    assert bool((w.norm(dim=0) > 0.5).all()), "the toy should represent all five (a pentagon)"
    d = train(cache, 5, site="hidden", steps=1000, batch_size=512, lr=1e-2, l1=1.0,
              progress=False)  # fmt: skip
    assert mmcs((w / w.norm(dim=0)).T, d) >= 0.99
    assert (d.config.site, d.config.axis) == ("hidden", "feature")


def test_jumprelu_gradients_are_the_papers_straight_through_estimators() -> None:
    """Rajamanoharan et al. (2024): d/d theta of JumpReLU is -(theta / eps) and of the step
    -1 / eps, for pre-activations within eps / 2 of theta; the step passes nothing to pre."""
    pre = torch.tensor([[0.5, 1.02, 2.0], [0.97, 3.0, 1.2]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 1.2], requires_grad=True)
    _JumpReLU.apply(pre, theta, 0.1).sum().backward()
    assert torch.equal(theta.grad, torch.tensor([-10.0, -10.0, -12.0]))
    assert torch.equal(pre.grad, torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]]))
    theta.grad = pre.grad = None
    _Step.apply(pre, theta, 0.1).sum().backward()
    assert torch.allclose(theta.grad, torch.tensor([-10.0, -10.0, -10.0]))
    assert pre.grad is None


# ---- streaming -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> tuple[DiskCache, Tensor]:
    """[300, 3, 16] activations (batch, pos, feature) in 9 shards of 37 examples and one of 4."""
    x = torch.randn(337, 3, 16, generator=torch.Generator().manual_seed(2))
    folder = tmp_path_factory.mktemp("acts")
    model = nn.Sequential(nn.Identity()).eval()
    cache = cc.capture_to_disk(model, x, folder, sites=["0"], batch_size=37, progress=False)
    return cache, x


def test_streaming_from_disk_trains_the_same_dictionary_as_memory(disk) -> None:
    cache, x = disk
    options = {"steps": 60, "batch_size": 64, "buffer": 4, "lr": 1e-2, "progress": False}
    from_disk = train(cache, 32, site="0", **options)
    in_memory = train(x, 32, **options)
    in_cache = train(
        cc.capture(nn.Sequential(nn.Identity()), x, sites="0"), 32, site="0", **options
    )
    for other in (in_memory, in_cache):
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            assert torch.allclose(getattr(from_disk, name), getattr(other, name), atol=1e-6)
    assert from_disk.config.site == "0" and from_disk.config.axis == "feature"


def test_the_shuffle_depends_on_the_row_order_only(disk) -> None:
    cache, x = disk
    whole = torch.cat([b for b, _ in as_rows(x).batches(50, buffer=3, seed=5)])
    streamed = torch.cat([b for b, _ in as_rows(cache, site="0").batches(50, buffer=3, seed=5)])
    rows = x.reshape(-1, 16)
    assert torch.equal(whole, streamed)
    assert not torch.equal(whole, rows)  # shuffled ...
    assert torch.equal(
        whole[whole[:, 0].argsort()], rows[rows[:, 0].argsort()]
    )  # ... a permutation


def test_a_transcoders_two_sites_stream_from_disk_row_for_row(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    x = torch.randn(90, 2, 5, generator=torch.Generator().manual_seed(6))
    disk = cc.capture_to_disk(model, x, tmp_path, sites=["1", "2"], batch_size=40, progress=False)
    with torch.no_grad():
        pair = (model[1](model[0](x)), model(x))
    streamed = as_rows(disk, site="1", target_site="2", transcoder=True).batches(32, seed=1)
    held = as_rows(pair, transcoder=True).batches(32, seed=1)
    for (a, b), (c, d) in zip(streamed, held, strict=True):
        assert torch.allclose(a, c) and b is not None and d is not None and torch.allclose(b, d)


def test_streaming_never_holds_the_whole_disk_cache(disk, monkeypatch) -> None:
    cache, _ = disk
    alive: list[weakref.ref] = []
    most = [0]
    shards = DiskCache.batches

    def watched(self: DiskCache) -> Iterator[ActivationCache]:
        for shard in shards(self):
            most[0] = max(most[0], sum(r() is not None for r in alive) + 1)
            alive.append(weakref.ref(shard["0"]))
            yield shard

    def whole(self: DiskCache, name: str) -> Tensor:
        raise AssertionError("the stream concatenated the whole cache")

    monkeypatch.setattr(DiskCache, "batches", watched)
    monkeypatch.setattr(DiskCache, "__getitem__", whole)
    batches = list(as_rows(cache, site="0").batches(16, buffer=2))
    assert sum(len(b) for b, _ in batches) == 337 * 3
    assert len(alive) == 10 + 1  # every shard read once, and the first once more for the shape
    assert most[0] <= 2  # the shard being read, and at most the one before it


# ---- transcoders ---------------------------------------------------------------------------


def two_site_cache(x: Tensor, y: Tensor) -> ActivationCache:
    sites = {n: Site(n, ("batch", "d_model"), tuple(t.shape)) for n, t in (("in", x), ("out", y))}
    return ActivationCache({"in": x, "out": y}, sites)


def test_a_transcoder_learns_the_map_between_two_sites() -> None:
    """Both sites are written by the same 64 sparse features, along different directions: a
    linear map cannot predict one from the other, a 64-latent transcoder can."""
    codes = superposition(30_000, 64, 0.03, seed=3)
    out_dirs = directions(64, 12, seed=1)
    cache = two_site_cache(codes @ directions(64, 24, seed=2), codes @ out_dirs)
    d = train(cache, 64, kind="transcoder", site="in", target_site="out", steps=1500,
              batch_size=512, lr=1e-2, l1=0.3, progress=False)  # fmt: skip
    assert (d.config.kind, d.config.d_in, d.config.width) == ("transcoder", 24, 12)
    assert (d.config.site, d.config.target_site) == ("in", "out")
    x, y = cache["in"], cache["out"]
    ones = torch.ones(len(x), 1)
    linear = torch.cat([x, ones], 1) @ torch.linalg.lstsq(torch.cat([x, ones], 1), y).solution
    linear_fve = 1 - float((y - linear).square().sum() / (y - y.mean(0)).square().sum())  # ~0.38
    fve = float(evaluate_dictionary(d, cache)["fve"].iloc[0])
    assert fve >= 0.8 and fve > linear_fve + 0.3
    assert mmcs(out_dirs, d) >= 0.95


# ---- evaluation ----------------------------------------------------------------------------


def exact(d_in: int, *, dead: int = 0, W_out: Tensor | None = None, b_out: Tensor | None = None,
          site: str | None = None, target: str | None = None) -> Dictionary:  # fmt: skip
    """x -> [relu(x), relu(-x), 0...] -> x (times W_out + b_out): exact by construction; `dead`
    extra latents never fire."""
    eye = torch.eye(d_in)
    w_enc = torch.cat([eye, -eye, torch.zeros(d_in, dead)], 1)
    b_enc = torch.cat([torch.zeros(2 * d_in), -torch.ones(dead)])
    w_dec = torch.cat([eye, -eye, torch.zeros(dead, d_in)])
    kind = "sae"
    if W_out is not None:
        w_dec, kind = w_dec @ W_out, "transcoder"
    b_dec = torch.zeros(w_dec.shape[1]) if b_out is None else b_out
    config = DictionaryConfig(d_in=d_in, n_latents=2 * d_in + dead, d_out=w_dec.shape[1],
                              kind=kind, site=site, target_site=target)  # fmt: skip
    return Dictionary(config, w_enc, b_enc, w_dec, b_dec)


def test_evaluate_scores_exact_and_mean_only_dictionaries() -> None:
    x = torch.randn(1000, 8, generator=torch.Generator().manual_seed(4))
    x = x - x.mean(0)
    perfect = evaluate_dictionary(exact(8, dead=3), x, batch_size=300).iloc[0]
    assert perfect["fve"] == pytest.approx(1.0) and perfect["mse"] == pytest.approx(0.0, abs=1e-12)
    assert perfect["l0"] == pytest.approx(8.0)  # each coordinate is one active latent
    assert (perfect["dead"], perfect["dense"], perfect["rows"]) == (3, 16, 1000)
    config = DictionaryConfig(d_in=8, n_latents=4)
    mean_only = Dictionary(config, torch.zeros(8, 4), -torch.ones(4), torch.zeros(4, 8), x.mean(0))
    scores = mean_only.evaluate(x).iloc[0]
    assert scores["fve"] == pytest.approx(0.0, abs=1e-6)
    assert (scores["l0"], scores["dead"], scores["dense"]) == (0.0, 4, 0)


@pytest.fixture
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def metric(out: Tensor) -> Tensor:
    return out[:, 0].mean()


def test_metric_recovered_is_one_for_an_exact_splice_and_zero_for_a_zero_splice(mlp) -> None:
    inputs = torch.randn(32, 4, generator=torch.Generator().manual_seed(5))
    acts = cc.capture(mlp, inputs, sites=["0", "1", "2"])
    splice = {"model": mlp, "inputs": inputs, "metric": metric}
    same = evaluate_dictionary(exact(6, site="0"), acts, **splice).iloc[0]
    assert same["recovered"] == pytest.approx(1.0)
    assert same["m_spliced"] == pytest.approx(same["m_clean"])
    with torch.no_grad():
        assert same["m_clean"] == pytest.approx(float(metric(mlp(inputs))))
    nothing = dataclasses.replace(exact(6, site="0"), W_dec=torch.zeros(12, 6))
    zeroed = evaluate_dictionary(nothing, acts["0"], site="0", **splice).iloc[0]
    assert zeroed["recovered"] == pytest.approx(0.0)
    last = mlp[2]
    transcoder = exact(6, W_out=last.weight.detach().T, b_out=last.bias.detach(), site="1",
                       target="2")  # fmt: skip
    predicted = evaluate_dictionary(transcoder, acts, **splice).iloc[0]
    assert predicted["recovered"] == pytest.approx(1.0, abs=1e-5)
    assert predicted["fve"] == pytest.approx(1.0, abs=1e-5)
    assert cc.hook_count(mlp) == 0


# ---- bad input -----------------------------------------------------------------------------


def test_bad_input_is_refused_with_a_circuits_error() -> None:
    x = torch.randn(64, 8)
    with pytest.raises(cc.ConfigError, match="n_latents"):
        train(x, 0, steps=1, progress=False)
    with pytest.raises(cc.InputError, match="channel"):
        train(two_site_cache(x, x), 4, site="in", axis="channel", steps=1, progress=False)
    with pytest.raises(cc.SiteNotFoundError, match="'in'"):
        train(two_site_cache(x, x), 4, site="inn", steps=1, progress=False)
    with pytest.raises(cc.ShapeMismatchError, match="row for row"):
        train(two_site_cache(x, x[:60]), 4, kind="transcoder", site="in", target_site="out",
              steps=1, progress=False)  # fmt: skip
    with pytest.raises(cc.InputError, match="NaN"):
        train(torch.cat([x, torch.full((1, 8), float("nan"))]), 4, steps=1, progress=False)
    with pytest.raises(cc.InputError, match="float"):
        train(torch.ones(8, 4, dtype=torch.long), 4, steps=1, progress=False)
    with pytest.raises(cc.ConfigError, match="unknown"):
        train(x, 4, steps=1, progres=False)
    with pytest.raises(cc.ConfigError, match="k="):
        train(x, 4, activation="topk", k=5, steps=1, progress=False)
