"""No public function changes the model it is given: parameters, buffers (batch norm's running
statistics and `num_batches_tracked` included), training flags and hooks are the same after the
call, whether it returned or raised. Every attribution method, and every other function that
runs a model, on a conv net with batch norm (eval mode: runs; training mode: refused) and on a
TransformerLens model with LayerNorm and MLPs (marked `transformer`, so `make tl3` runs it on
transformer-lens 3.x as well)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import circuits as cc
from circuits.features import UnitBasis
from circuits.patching import node


class BatchNormNet(nn.Module):
    """conv -> batch norm -> ReLU -> conv -> batch norm -> mean -> linear: every buffer kind."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        return self.head(self.bn2(self.conv2(h)).mean(dim=(2, 3)))


def state(m: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool], int]:
    tensors = {k: v.detach().clone() for k, v in [*m.named_parameters(), *m.named_buffers()]}
    return tensors, [mod.training for mod in m.modules()], cc.hook_count(m)


def assert_unchanged(m: nn.Module, before: Any) -> None:
    tensors, flags, hooks = state(m)
    assert flags == before[1], "a training flag changed"
    assert hooks == before[2] == 0, "a hook was left on the model"
    assert tensors.keys() == before[0].keys()
    changed = [k for k in tensors if not torch.equal(tensors[k], before[0][k])]
    assert not changed, f"changed: {changed}"


def logit0(out: torch.Tensor) -> torch.Tensor:
    return out[..., 0].mean()


IMAGES = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
OTHER = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))

CONV_CALLS: dict[str, Callable[[nn.Module], Any]] = {
    "attribution_patching": lambda m: cc.attribute(
        m, IMAGES, OTHER, logit0, site="conv1", unit="channel"
    ),
    "integrated_gradients": lambda m: cc.attribute(
        m, IMAGES, OTHER, logit0, method="integrated_gradients", steps=4
    ),
    "eap": lambda m: cc.attribute(m, IMAGES, OTHER, logit0, method="eap"),
    "eap-ig": lambda m: cc.attribute(m, IMAGES, OTHER, logit0, method="eap-ig", steps=2),
    "direct_effects": lambda m: cc.attribute(
        m,
        IMAGES,
        None,
        None,
        method="direct_effects",
        freeze=[],
        source=UnitBasis(3, dim=1, site="relu"),
        target=UnitBasis(4, dim=1, site="conv2"),
    ),
    "capture": lambda m: cc.capture(m, IMAGES, sites=["bn1"], grads=True, metric=logit0),
    "patch": lambda m: cc.patch(m, IMAGES, OTHER, logit0, site="bn1", unit="channel"),
    "patch (mean ablation)": lambda m: cc.patch(
        m, IMAGES, None, logit0, site="conv2", unit="channel", ablation="mean"
    ),
    "discover": lambda m: cc.discover(m, IMAGES, OTHER, logit0, method="eap", top_k=4),
    "probe_sweep": lambda m: cc.probe_sweep(
        m, IMAGES, [0, 1, 0, 1], sites=["bn1"], pool="mean", test_fraction=0, progress=False
    ),
}


@pytest.mark.parametrize("call", CONV_CALLS, ids=list(CONV_CALLS))
def test_a_batch_norm_net_in_eval_mode_is_left_as_it_was(call: str) -> None:
    model = BatchNormNet().eval()
    before = state(model)
    assert CONV_CALLS[call](model) is not None
    assert_unchanged(model, before)


@pytest.mark.parametrize("call", CONV_CALLS, ids=list(CONV_CALLS))
def test_a_batch_norm_net_in_training_mode_is_refused_and_left_as_it_was(call: str) -> None:
    """Training mode would update the running statistics and couple the stacked runs."""
    model = BatchNormNet().train()
    before = state(model)
    with pytest.raises(cc.ModelError, match=r"model\.eval"):
        CONV_CALLS[call](model)
    assert_unchanged(model, before)


def test_faithfulness_leaves_the_batch_norm_net_as_it_was() -> None:
    model = BatchNormNet().eval()
    g = cc.build_graph(cc.attribute(model, IMAGES, OTHER, logit0, method="eap"))
    before = state(model)
    score = cc.faithfulness(model, cc.prune(g, top_k=5), IMAGES, OTHER, logit0)
    assert 0 <= abs(score) < 10
    assert_unchanged(model, before)
    model.train()
    with pytest.raises(cc.ModelError):
        cc.faithfulness(model, g, IMAGES, OTHER, logit0)
    assert_unchanged(model.eval(), before)


@pytest.fixture(scope="module")
def transformer() -> nn.Module:
    return cc.zoo.tiny_transformer(
        n_layers=2, d_model=16, n_heads=2, d_head=8, d_vocab=12, n_ctx=8, d_mlp=32,
        attn_only=False, normalization_type="LN",
    )  # fmt: skip


TOKENS = torch.randint(0, 12, (3, 8), generator=torch.Generator().manual_seed(0))
CORRUPT = torch.randint(0, 12, (3, 8), generator=torch.Generator().manual_seed(1))
Z = "blocks.{L}.attn.hook_z"
TF_CALLS: dict[str, Callable[[nn.Module], Any]] = {
    "attribution_patching": lambda m: cc.attribute(m, TOKENS, CORRUPT, logit0, site=Z, unit="head"),
    "integrated_gradients": lambda m: cc.attribute(
        m, TOKENS, CORRUPT, logit0, method="integrated_gradients", steps=4
    ),
    "eap": lambda m: cc.attribute(m, TOKENS, CORRUPT, logit0, method="eap"),
    "eap-ig": lambda m: cc.attribute(m, TOKENS, CORRUPT, logit0, method="eap-ig", steps=2),
    "direct_effects": lambda m: cc.attribute(
        m,
        TOKENS,
        None,
        None,
        method="direct_effects",
        source=UnitBasis(16, dim=-1, site="blocks.0.hook_resid_post"),
        target=UnitBasis(16, dim=-1, site="blocks.1.hook_resid_post"),
    ),
    "capture": lambda m: cc.capture(
        m, TOKENS, sites=["blocks.0.attn.hook_z"], grads=True, metric=logit0
    ),
    "patch": lambda m: cc.patch(m, TOKENS, CORRUPT, logit0, site=Z, unit="head"),
    "path_patch": lambda m: cc.path_patch(
        m,
        TOKENS,
        CORRUPT,
        logit0,
        senders=[node("blocks.0.attn.hook_z", head=1)],
        receivers=["logits"],
    ),
    "discover": lambda m: cc.discover(m, TOKENS, CORRUPT, logit0, top_k=4),
}


@pytest.mark.transformer
@pytest.mark.parametrize("call", TF_CALLS, ids=list(TF_CALLS))
def test_a_transformer_is_left_as_it_was(transformer: nn.Module, call: str) -> None:
    before = state(transformer)
    assert TF_CALLS[call](transformer) is not None
    assert_unchanged(transformer, before)


@pytest.mark.transformer
@pytest.mark.parametrize("call", ["eap", "patch", "capture"])
def test_a_transformer_is_left_as_it_was_when_the_metric_raises(
    transformer: nn.Module, call: str
) -> None:
    def broken(out: torch.Tensor) -> torch.Tensor:
        raise ValueError("deliberate")

    before = state(transformer)
    calls = {
        "eap": lambda: cc.attribute(transformer, TOKENS, CORRUPT, broken, method="eap"),
        "patch": lambda: cc.patch(transformer, TOKENS, CORRUPT, broken, site=Z, unit="head"),
        "capture": lambda: cc.capture(
            transformer, TOKENS, sites=[Z.format(L=0)], grads=True, metric=broken
        ),
    }
    with pytest.raises(ValueError, match="deliberate"):
        calls[call]()
    assert_unchanged(transformer, before)
