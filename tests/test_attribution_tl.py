"""Attribution on tiny TransformerLens models, each against an independent reference: real
interventions differentiated by eps (EAP, EAP-IG), Captum (integrated gradients) and a frozen
model driven by plain hooks (direct effects)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerIntegratedGradients

import circuits as cc
from circuits.attribution import attribute, edge_attribution, integrated_gradients
from circuits.features import DirectionBasis, UnitBasis
from circuits.zoo.transformers import hooked_state_dict, tiny_transformer

pytestmark = pytest.mark.transformer

SMALL = dict(n_layers=2, d_model=32, n_heads=2, d_head=16, d_vocab=20, n_ctx=16, d_mlp=64)


def _tokens(seed: int) -> torch.Tensor:
    return torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(seed))


def metric(out: torch.Tensor) -> torch.Tensor:
    return (out[:, -1, 3] - out[:, -1, 5]).mean()


@pytest.fixture(scope="module")
def ln_model():
    return tiny_transformer(**SMALL)


@pytest.fixture(scope="module")
def plain_model():
    return tiny_transformer(**SMALL, attn_only=True, normalization_type=None)


class Reference:
    """d metric / d eps of a real run of `base` with one receiver's input moved by eps * delta.

    The receiver's input is rebuilt from the residual stream of the same run with textbook torch
    (F.layer_norm, matrix products with the model's weights) and written into hook_q / hook_k /
    hook_v (one head), mlp.hook_pre or the last hook_resid_post. `resid0` optionally replaces the
    embeddings (a point on EAP-IG's path).
    """

    def __init__(self, model):
        self.model, self.cfg = model, model.cfg
        self.w = hooked_state_dict(model)

    def ln(self, x, name):
        if self.cfg.normalization_type is None:
            return x
        return F.layer_norm(x, (x.shape[-1],), self.w[f"{name}.w"], self.w[f"{name}.b"], 1e-5)

    def derivative(self, base, receiver, delta, resid0=None):
        kind, layer, head = receiver
        eps = torch.zeros((), requires_grad=True)
        seen = {}
        fns = {}
        if resid0 is not None:
            fns["blocks.0.hook_resid_pre"] = lambda a, s: resid0
        if kind in "qkv":
            resid = f"blocks.{layer}.hook_resid_pre"
            fns[resid] = lambda a, s: seen.__setitem__("x", a)
            big = kind.upper()

            def put(a, s):
                x = self.ln(seen["x"] + eps * delta, f"blocks.{layer}.ln1")
                w, b = (
                    self.w[f"blocks.{layer}.attn.W_{big}"],
                    self.w[f"blocks.{layer}.attn.b_{big}"],
                )
                new = x @ w[head] + b[head]
                return torch.cat([a[:, :, :head], new[:, :, None], a[:, :, head + 1 :]], dim=2)

            fns[f"blocks.{layer}.attn.hook_{kind}"] = put
        elif kind == "mlp":
            fns[f"blocks.{layer}.hook_resid_mid"] = lambda a, s: seen.__setitem__("x", a)

            def pre(a, s):
                x = self.ln(seen["x"] + eps * delta, f"blocks.{layer}.ln2")
                return x @ self.w[f"blocks.{layer}.mlp.W_in"] + self.w[f"blocks.{layer}.mlp.b_in"]

            fns[f"blocks.{layer}.mlp.hook_pre"] = pre
        else:
            last = f"blocks.{self.cfg.n_layers - 1}.hook_resid_post"
            fns[last] = lambda a, s: a + eps * delta
        with cc.hooks(self.model, fns):
            value = metric(self.model(base))
        (grad,) = torch.autograd.grad(value, [eps])
        return float(grad)

    def sender_diffs(self, base, source):
        """Each sender's output, source run minus base run (z @ W_O for heads)."""
        cfg = self.cfg
        names = ["blocks.0.hook_resid_pre"] + [
            f"blocks.{ly}.attn.hook_z" for ly in range(cfg.n_layers)
        ]
        if not cfg.attn_only:
            names += [f"blocks.{ly}.hook_mlp_out" for ly in range(cfg.n_layers)]
        a, b = (
            cc.capture(self.model, base, sites=names),
            cc.capture(self.model, source, sites=names),
        )
        out = {"blocks.0.hook_resid_pre": b[names[0]] - a[names[0]]}
        for ly in range(cfg.n_layers):
            dz = b[f"blocks.{ly}.attn.hook_z"] - a[f"blocks.{ly}.attn.hook_z"]
            for h in range(cfg.n_heads):
                out[f"blocks.{ly}.attn.hook_z[{h}]"] = (
                    dz[:, :, h] @ self.w[f"blocks.{ly}.attn.W_O"][h]
                )
            if not cfg.attn_only:
                site = f"blocks.{ly}.hook_mlp_out"
                out[site] = b[site] - a[site]
        return out


def _receiver(key: str):
    if key == "logits":
        return ("logits", -1, -1)
    layer = int(key.split(".")[1])
    if key.endswith("hook_mlp_in"):
        return ("mlp", layer, -1)
    kind = key.split("hook_")[1][0]
    return (kind, layer, int(key.split("[")[1][:-1]))


@pytest.mark.parametrize(
    ("model_name", "direction"),
    [("ln_model", "noise"), ("ln_model", "denoise"), ("plain_model", "noise")],
)
def test_eap_equals_directional_derivative_of_real_interventions(model_name, direction, request):
    model = request.getfixturevalue(model_name)
    clean, corrupt = _tokens(1), _tokens(2)
    res = edge_attribution(model, clean, corrupt, metric, method="eap", direction=direction)
    base, source = (clean, corrupt) if direction == "noise" else (corrupt, clean)
    ref = Reference(model)
    diffs = ref.sender_diffs(base, source)
    frame = res.to_frame()
    assert len(frame) == int((~torch.isnan(res.scores)).sum())
    kinds = frame["target"].map(lambda t: _receiver(t)[0])
    sample = frame.groupby(kinds, group_keys=False).apply(
        lambda g: g.sample(n=min(3, len(g)), random_state=0)
    )
    assert set(kinds[sample.index]) == (
        {"q", "k", "v", "logits"} | ({"mlp"} if not model.cfg.attn_only else set())
    )
    for row in sample.itertuples():
        expected = ref.derivative(base, _receiver(row.target), diffs[row.source])
        assert row.score == pytest.approx(expected, rel=1e-3, abs=1e-5), row


def test_edge_count_of_the_graph(ln_model, plain_model):
    clean, corrupt = _tokens(1), _tokens(2)
    res = edge_attribution(ln_model, clean, corrupt, metric, method="eap")
    # per layer L: 3 * heads receivers read 1 + 3L senders, the MLP 1 + 3L + 2; logits all 7
    assert int((~torch.isnan(res.scores)).sum()) == 6 * 1 + 6 * 4 + 3 + 6 + 7
    res = edge_attribution(plain_model, clean, corrupt, metric, method="eap")
    assert int((~torch.isnan(res.scores)).sum()) == 6 * 1 + 6 * 3 + 5


def test_eap_ig_is_the_path_average_of_real_interventions(ln_model):
    """EAP-IG: the same derivative, averaged over runs whose embeddings lie on the path."""
    model = ln_model
    clean, corrupt = _tokens(1), _tokens(2)
    res = edge_attribution(model, clean, corrupt, metric, method="eap-ig", steps=3,
                           rule="riemann_middle")  # fmt: skip
    ref = Reference(model)
    diffs = ref.sender_diffs(clean, corrupt)
    resid = "blocks.0.hook_resid_pre"
    e0, e1 = (
        cc.capture(model, clean, sites=[resid])[resid],
        cc.capture(model, corrupt, sites=[resid])[resid],
    )
    frame = res.to_frame().set_index(["source", "target"])["score"]
    for source, target in [
        ("blocks.0.attn.hook_z[1]", "blocks.1.hook_k_input[0]"),
        ("blocks.0.hook_resid_pre", "blocks.0.hook_mlp_in"),
        ("blocks.1.hook_mlp_out", "logits"),
    ]:
        expected = sum(
            ref.derivative(clean, _receiver(target), diffs[source], resid0=e0 + a * (e1 - e0)) / 3
            for a in (1 / 6, 3 / 6, 5 / 6)
        )
        assert frame[(source, target)] == pytest.approx(expected, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("norm", [None, "LN", "LNPre", "RMS"])
def test_eap_ig_input_edges_are_complete(norm):
    """The embedding's edges carry the whole gradient at the input only if every receiver
    gradient (through every norm's Jacobian) is right: a sharp check of the decomposition."""
    model = tiny_transformer(**SMALL, normalization_type=norm)
    res = attribute(model, _tokens(1), _tokens(2), metric, method="eap-ig", steps=8)
    assert res.completeness_gap < 1e-3


def test_ig_equals_captum_on_a_transformer_layer(ln_model):
    model = ln_model
    clean, corrupt = _tokens(1), _tokens(2)

    def forward(tokens):
        out = model(tokens)
        return out[:, -1, 3] - out[:, -1, 5]

    def total(out):
        return (out[:, -1, 3] - out[:, -1, 5]).sum()

    for site in ("blocks.0.attn.hook_z", "blocks.1.hook_resid_pre", "hook_embed"):
        ours = integrated_gradients(model, clean, corrupt, total, site=site, unit="all", steps=8)
        lig = LayerIntegratedGradients(forward, model.hook_dict[site])
        theirs = lig.attribute(clean, baselines=corrupt, n_steps=8, method="gausslegendre")
        torch.testing.assert_close(ours.scores, theirs.reshape(ours.scores.shape), rtol=1e-4,
                                   atol=1e-6)  # fmt: skip
    default = integrated_gradients(model, clean, corrupt, total, unit=("batch", "pos"), steps=8)
    torch.testing.assert_close(default.scores, theirs.sum(-1), rtol=1e-4, atol=1e-6)
    assert default.completeness_gap < 0.01


class Frozen:
    """The linearised model by plain hooks: patterns, LayerNorm scales and MLP activations held
    at their clean values; the source site set to a given value; the target basis read."""

    def __init__(self, model, tokens):
        cfg = model.cfg
        self.model, self.tokens = model, tokens
        self.names = [f"blocks.{ly}.attn.hook_pattern" for ly in range(cfg.n_layers)]
        if not cfg.attn_only:
            self.names += [f"blocks.{ly}.mlp.hook_post" for ly in range(cfg.n_layers)]
        if cfg.normalization_type:
            norms = ("ln1",) if cfg.attn_only else ("ln1", "ln2")
            self.names += [
                f"blocks.{ly}.{ln}.hook_scale" for ly in range(cfg.n_layers) for ln in norms
            ]
            self.names.append("ln_final.hook_scale")
        self.clean = {}

        def keep(a, s):
            self.clean.setdefault(s.name, a.detach().clone())

        with torch.no_grad(), cc.hooks(model, dict.fromkeys(self.names, keep)):
            model(tokens)

    def target(self, source_site, value, basis, pos=None):
        seen = {}
        fns = {n: (lambda a, s: self.clean[s.name]) for n in self.names}
        fns[source_site] = lambda a, s: value
        fns[basis.site] = lambda a, s: seen.__setitem__("t", a)
        with torch.no_grad(), cc.hooks(self.model, fns):
            self.model(self.tokens)
        t = seen["t"] if pos is None else seen["t"][:, pos]
        coeffs = basis.encode(t)
        return coeffs.movedim(basis.dim, -1).reshape(-1, basis.n_features).sum(0)


@pytest.mark.parametrize("case", ["directions", "heads_to_neurons"])
def test_direct_effects_match_interventions_on_the_frozen_model(ln_model, case):
    model, tokens = ln_model, _tokens(3)
    gen = torch.Generator().manual_seed(0)
    if case == "directions":
        source = DirectionBasis(torch.randn(3, 32, generator=gen), site="blocks.0.hook_resid_post")
        target = DirectionBasis(torch.randn(2, 32, generator=gen), site="blocks.1.hook_resid_post")
        pos = None
    else:
        source = UnitBasis(2, dim=-2, site="blocks.0.attn.hook_z")  # the two heads
        target = UnitBasis(64, units=(0, 5, 7), site="blocks.1.mlp.hook_pre")
        pos = -1
    res = attribute(model, tokens, None, None, method="direct_effects", source=source,
                    target=target, target_pos=pos)  # fmt: skip
    frozen = Frozen(model, tokens)
    s = cc.capture(model, tokens, sites=[source.site])[source.site]
    full = frozen.target(source.site, s, target, pos)
    coeffs = source.encode(s)
    k = source.n_features
    for i in range(k):
        only = torch.zeros_like(coeffs).movedim(source.dim, -1)
        only[..., i] = coeffs.movedim(source.dim, -1)[..., i]
        without = s - source.decode(only.movedim(-1, source.dim))
        expected = full - frozen.target(source.site, without, target, pos)
        torch.testing.assert_close(res.scores[i], expected, rtol=1e-4, atol=1e-4)
    error = full - frozen.target(source.site, source.decode(coeffs), target, pos)
    torch.testing.assert_close(res.scores[k], error, rtol=1e-4, atol=1e-4)
    rest = frozen.target(source.site, torch.zeros_like(s), target, pos)
    torch.testing.assert_close(res.extras["rest"], rest, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res.expected, full, rtol=1e-4, atol=1e-4)
    assert res.completeness_gap < 1e-4
    nodes, edges = res.graph_frames()
    assert set(nodes["kind"]) == ({"feature", "error"} if case == "directions" else
                                  {"head", "error", "neuron"})  # fmt: skip
    assert len(edges) == (k + 1) * target.n_features


def test_direct_effects_bad_inputs(ln_model):
    tokens = _tokens(3)
    good = UnitBasis(32, site="blocks.1.hook_resid_post")
    cases = [
        dict(source="blocks.0.hook_resid_post", target=good),
        dict(source=UnitBasis(32), target=good),
        dict(source=UnitBasis(16, site="blocks.0.attn.hook_q"), target=good),
        dict(source=good, target=good),
        dict(source=UnitBasis(32, site="blocks.0.hook_resid_post"),
             target=UnitBasis(64, site="blocks.0.mlp.hook_post")),
        dict(source=good, target=UnitBasis(32, site="blocks.0.hook_resid_post")),  # earlier
    ]  # fmt: skip
    for options in cases:
        with pytest.raises(cc.ConfigError):
            attribute(ln_model, tokens, None, None, method="direct_effects", **options)
    with pytest.raises(cc.ShapeMismatchError):
        attribute(ln_model, tokens, None, None, method="direct_effects", target=good,
                  source=UnitBasis(7, site="blocks.0.hook_resid_post"))  # fmt: skip


def test_head_attribution_patching_axes_and_graph(ln_model):
    res = attribute(ln_model, _tokens(1), _tokens(2), metric, site="blocks.{L}.attn.hook_z",
                    unit=("pos", "head"))  # fmt: skip
    assert res.axes == ("layer", "pos", "head") and res.scores.shape == (2, 6, 2)
    nodes, edges = res.graph_frames()
    row = nodes.set_index("key").loc["blocks.1.attn.hook_z[0]@5"]
    assert (row["kind"], row["layer"], row["pos"], row["unit"]) == ("head", 1, 5, 0)
    assert edges.set_index("source").loc["blocks.1.attn.hook_z[0]@5", "weight"] == pytest.approx(
        float(res.scores[1, 5, 0])
    )
    eap = attribute(ln_model, _tokens(1), _tokens(2), metric, method="eap")
    nodes, edges = eap.graph_frames()
    assert set(nodes["kind"]) == {"input", "head", "mlp", "output"}
    merged = edges.set_index(["source", "target"]).loc[
        ("blocks.0.attn.hook_z[1]", "blocks.1.attn.hook_z[0]")
    ]
    fine = eap.to_frame().set_index(["source", "target"])["score"]
    parts = [fine[("blocks.0.attn.hook_z[1]", f"blocks.1.hook_{p}_input[0]")] for p in "qkv"]
    assert merged["weight"] == pytest.approx(sum(parts), rel=1e-5)
    assert merged["weight_k"] == pytest.approx(parts[1], rel=1e-6)


def test_no_hook_left_behind(ln_model):
    model, clean, corrupt = ln_model, _tokens(1), _tokens(2)
    model(clean)  # a bridge adds hooks of its own on its first forward
    before = cc.hook_count(model)
    methods = {"attribution_patching": {}, "integrated_gradients": {"steps": 4}, "eap": {},
               "eap-ig": {"steps": 2}}  # fmt: skip
    for method, options in methods.items():
        attribute(model, clean, corrupt, metric, method=method, **options)
    attribute(model, clean, None, None, method="direct_effects",
              source=UnitBasis(32, site="blocks.0.hook_resid_post"),
              target=UnitBasis(32, site="blocks.1.hook_resid_post"))  # fmt: skip

    def broken(out):
        raise RuntimeError("metric failed")

    for method, options in methods.items():
        with pytest.raises(RuntimeError, match="metric failed"):
            attribute(model, clean, corrupt, broken, method=method, **options)
    assert cc.hook_count(model) == before
