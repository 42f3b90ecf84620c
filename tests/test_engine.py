"""The run engine (`circuits.hooks.run`): record, freeze, replace and stop, checked against the
forward pass written out by hand, and never a hook left behind."""

from __future__ import annotations

import pytest
import torch

import circuits as cc
from circuits.hooks import run
from circuits.zoo.transformers import tiny_transformer


def _by_hand(net, x, *, h_scale=1.0):
    """SmallConvNet's forward written out, returning every intermediate."""
    c1 = net.conv1(x)
    h = torch.relu(c1) * h_scale
    c2 = net.conv2(h)
    out = net.head(torch.relu(c2 + h).mean(dim=(2, 3)))
    return {"conv1": c1, "relu1": h, "conv2": c2, "out": out}


def test_record_replace_and_stop_match_the_forward_by_hand(convnet, images):
    want = _by_hand(convnet, images)
    ran = run(convnet, images, record=["conv1", "conv2"])
    assert torch.allclose(ran.recorded["conv1"], want["conv1"], atol=1e-6)
    assert torch.allclose(ran.recorded["conv2"], want["conv2"], atol=1e-6)  # before `out += h`
    assert torch.allclose(ran.output, want["out"], atol=1e-6)
    assert ran.sites["conv2"].axes == ("batch", "channel", "h", "w")

    halved = _by_hand(convnet, images, h_scale=0.5)
    ran = run(convnet, images, replace={"relu1": lambda a, s: a * 0.5}, record=["relu1", "conv2"])
    assert torch.allclose(ran.output, halved["out"], atol=1e-6)
    assert torch.allclose(ran.recorded["relu1"], want["relu1"], atol=1e-6)  # as it arrived
    assert torch.allclose(ran.recorded["conv2"], halved["conv2"], atol=1e-6)

    stopped = run(convnet, images, record=["conv1"], stop_after="relu1")
    assert stopped.output is None and torch.allclose(stopped.recorded["conv1"], want["conv1"])
    assert cc.hook_count(convnet) == 0


def test_freeze_holds_values_and_stops_gradients(convnet, images):
    other = images.flip(-1)
    ran = run(convnet, other, freeze=["relu1"])
    held = ran.frozen["relu1"]
    assert len(held) == 1 and not held[0].requires_grad
    replayed = run(convnet, images, freeze=ran.frozen, record=["conv2"])
    assert torch.allclose(replayed.recorded["conv2"], convnet.conv2(held[0]), atol=1e-6)
    grad_run = run(convnet, images, freeze=["relu1"], record=["conv1"], grad=True)
    assert grad_run.output.requires_grad  # the head and conv2 still carry gradients
    (g,) = torch.autograd.grad(grad_run.output.sum(), [grad_run.recorded["conv1"]],
                               allow_unused=True)  # fmt: skip
    assert g is None  # nothing flows back through the frozen relu1


def test_grad_run_records_tensors_gradients_flow_to(convnet, images):
    ran = run(convnet, images, record=["relu1"], grad=True)
    (g,) = torch.autograd.grad(ran.output.sum(), [ran.recorded["relu1"]])
    x = ran.recorded["relu1"].detach().requires_grad_(True)
    out = convnet.head(torch.relu(convnet.conv2(x) + x).mean(dim=(2, 3)))
    (want,) = torch.autograd.grad(out.sum(), [x])
    assert torch.allclose(g, want, atol=1e-6)


class Reuse(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        return self.relu(self.relu(x) - 1)


def test_each_site_once_and_bad_replacements_leave_no_hook(convnet, images):
    with pytest.raises(cc.SiteRepeatedError, match="more than once") as err:
        run(Reuse(), images, record=["relu"])
    assert isinstance(err.value, cc.InputError) and isinstance(err.value, cc.ModelError)
    assert run(Reuse(), images, freeze=["relu"]).fired["relu"] == 2  # a frozen site may repeat
    with pytest.raises(cc.SiteNotFiredError):
        run(convnet, images, record=["relu1"], stop_after="conv1")  # relu1 never ran
    zeros = torch.zeros(3, 4, 6, 6)
    with pytest.raises(cc.InputError, match="float64"):
        run(convnet, images, replace={"conv1": zeros.double()})
    with pytest.raises(cc.ShapeMismatchError, match=r"\(3, 4, 6, 6\)"):
        run(convnet, images, replace={"conv1": zeros[:, :2]})
    with pytest.raises(cc.InputError, match="ran more often"):
        run(Reuse(), images, freeze={"relu": [images]})
    assert cc.hook_count(convnet) == 0 and cc.hook_count(Reuse()) == 0


@pytest.mark.transformer
def test_transformer_views_and_resume_through_the_engine():
    model = tiny_transformer(n_layers=2, d_model=32, n_heads=2, d_head=16, d_vocab=20, n_ctx=8)
    tokens = torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(0))
    before = cc.hook_count(model)
    ran = run(model, tokens, record=["blocks.0.attn.hook_z", "blocks.1.hook_resid_pre"])
    assert ran.recorded["blocks.0.attn.hook_z"].shape == (3, 8, 2, 16)
    zeroed = run(model, tokens, replace={"blocks.0.attn.hook_z": lambda z, s: z * 0}).output
    with torch.no_grad(), cc.hooks(model, {"blocks.0.attn.hook_z": lambda z, s: z * 0}):
        assert torch.allclose(zeroed, model(tokens), atol=1e-5)
    from circuits.adapters.transformer_lens import resume

    (resumed,) = resume(model, ran.recorded["blocks.1.hook_resid_pre"], 1, None, 3)
    assert torch.allclose(resumed, ran.output, atol=1e-4)
    assert cc.hook_count(model) == before


@pytest.mark.transformer
def test_hook_count_counts_this_librarys_hooks_only():
    model = tiny_transformer(n_layers=1, d_model=16, n_heads=2, d_head=8, d_vocab=10, n_ctx=4)
    model(torch.zeros(1, 4, dtype=torch.long))  # a bridge adds hooks of its own on a first pass
    assert cc.hook_count(model) == 0
    with cc.hooks(
        model, {"blocks.0.attn.hook_z": lambda z, s: None, "hook_embed": lambda a, s: None}
    ):
        assert cc.hook_count(model) == 2
        model(torch.zeros(1, 4, dtype=torch.long))
    assert cc.hook_count(model) == 0
