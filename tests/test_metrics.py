"""Metric factories: values against direct formulas, declared positions, bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import circuits.metrics as cm
from circuits.errors import ConfigError, MetricError


@pytest.fixture
def logits():
    return torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0))


def test_logit_diff_per_example_and_shared_ids(logits):
    correct, incorrect = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    expected = (
        logits[torch.arange(3), -1, correct] - logits[torch.arange(3), -1, incorrect]
    ).mean()
    metric = cm.logit_diff(correct, incorrect)
    assert torch.allclose(metric(logits), expected)
    assert metric.positions == (-1,)
    shared = cm.logit_diff(1, [4, 5, 6], position=2)
    expected = (logits[:, 2, 1] - logits[torch.arange(3), 2, torch.tensor([4, 5, 6])]).mean()
    assert torch.allclose(shared(logits), expected)


def test_prob_and_log_prob(logits):
    probs = logits[:, -1].softmax(-1)
    assert torch.allclose(cm.prob(7)(logits), probs[:, 7].mean())
    assert torch.allclose(cm.prob(7, log=True)(logits), probs[:, 7].log().mean(), atol=1e-6)
    assert cm.prob(7, position=None)(logits[:, 0]).shape == ()  # a [batch, classes] output


def test_kl_div_against_torch(logits):
    other = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    metric = cm.kl_div(logits)
    assert float(metric(logits)) == pytest.approx(0.0, abs=1e-6)
    expected = F.kl_div(
        other[:, -1].log_softmax(-1),
        logits[:, -1].log_softmax(-1),
        log_target=True,
        reduction="batchmean",
    )
    assert torch.allclose(metric(other), expected, atol=1e-6)
    assert torch.allclose(cm.kl_div(logits[:, -1])(other), expected, atol=1e-6)
    every = cm.kl_div(logits, position=None)
    assert every.positions is None and float(every(other)) > 0


def test_cross_entropy_next_token(logits):
    tokens = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(2))
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), tokens[:, 1:].reshape(-1))
    metric = cm.cross_entropy(tokens)
    assert torch.allclose(metric(logits), expected, atol=1e-6)
    assert metric.positions == (0, 1, 2, 3)  # the last position predicts nothing
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 3] = mask[2, 4] = True
    masked = cm.cross_entropy(tokens, mask=mask)
    lp = logits.log_softmax(-1)
    expected = -(lp[0, 2, tokens[0, 3]] + lp[2, 3, tokens[2, 4]]) / 2
    assert torch.allclose(masked(logits), expected, atol=1e-6)
    assert masked.positions == (2, 3)


@pytest.mark.transformer
def test_cross_entropy_is_transformer_lens_loss():
    from circuits.zoo.transformers import tiny_transformer

    model = tiny_transformer(seed=3)
    tokens = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = model(tokens, return_type="loss")
        ours = cm.cross_entropy(tokens)(model(tokens))
    assert torch.allclose(ours, loss, atol=1e-5)


def test_normalised(logits):
    base = cm.logit_diff(1, 2)
    clean, corrupt = 2.0, -1.0
    metric = cm.normalised(base, clean, corrupt)
    value = float(base(logits))
    assert float(metric(logits)) == pytest.approx((value - corrupt) / (clean - corrupt))
    assert metric.positions == base.positions
    assert "normalised(logit_diff)" in repr(metric)
    with pytest.raises(MetricError, match="equal"):
        cm.normalised(base, 1.0, 1.0)
    plain = cm.normalised(lambda out: out.sum(), torch.tensor(4.0), 0.0)
    assert plain.positions is None and float(plain(torch.ones(2, 2))) == 1.0


def test_a_metric_reads_only_its_positions(logits):
    """Patching may hand a metric logits computed only at its positions, broadcast elsewhere."""
    metric = cm.logit_diff([1, 2, 3], [4, 5, 6], position=-1)
    broadcast = logits[:, -1:].expand(logits.shape)
    assert torch.equal(metric(broadcast), metric(logits))


def test_declared_positions():
    def plain(logits):
        return logits.sum()

    assert cm.metric_positions(plain) is None
    plain.positions = [-1]  # type: ignore[attr-defined]
    assert cm.metric_positions(plain) == (-1,)
    plain.positions = ["last"]  # type: ignore[attr-defined]
    with pytest.raises(MetricError, match="positions"):
        cm.metric_positions(plain)
    plain.positions = []  # type: ignore[attr-defined]
    with pytest.raises(MetricError, match="positions"):
        cm.metric_positions(plain)


def test_bad_inputs(logits):
    with pytest.raises(MetricError, match="2 correct token ids"):
        cm.logit_diff([1, 2], 3)(logits)
    with pytest.raises(MetricError, match="shape"):
        cm.prob(1)(logits[None])
    with pytest.raises(MetricError, match="position 9"):
        cm.prob(1, position=9)(logits)
    with pytest.raises(ConfigError, match="token id"):
        cm.prob(1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="position"):
        cm.prob(1, position="last")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="integer"):
        cm.cross_entropy(torch.randn(2, 3))
    with pytest.raises(ConfigError, match="mask"):
        cm.cross_entropy(
            torch.zeros(2, 3, dtype=torch.long), mask=torch.ones(2, 4, dtype=torch.bool)
        )
    with pytest.raises(ConfigError, match="no predicted token"):
        cm.cross_entropy(
            torch.zeros(2, 3, dtype=torch.long), mask=torch.zeros(2, 3, dtype=torch.bool)
        )
    with pytest.raises(MetricError, match="built for tokens"):
        cm.cross_entropy(torch.zeros(2, 3, dtype=torch.long))(logits)
    with pytest.raises(ConfigError, match="reference"):
        cm.kl_div(torch.zeros(3))
    with pytest.raises(MetricError, match="reference"):
        cm.kl_div(logits[:2])(logits)
    with pytest.raises(ConfigError, match="function"):
        cm.normalised(3, 1.0, 0.0)  # type: ignore[arg-type]
