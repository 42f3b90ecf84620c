"""Metrics: scalar functions of one run's output, the quantity patching and attribution measure.

A metric maps a model's output for one batch (logits `[batch, pos, d_vocab]` for a transformer,
`[batch, classes]` for a classifier) to a scalar tensor, the convention of TransformerLens's
patching functions. The factories here build `Metric` objects that also declare the positions they
read (`metric.positions`): patching then computes the unembedding only there, which on a large
vocabulary is a large share of a forward pass. A plain function works too; it is treated as reading
every position.

This module owns the metric: the protocol (`MetricFn`, any function of one run's output returning
a scalar tensor), calling it with a check of what it returned (`metric_value`), checking a metric
before anything runs (`check_metric`) and naming it for provenance (`metric_name`).

The positions contract: a metric that declares `positions` may be handed logits whose entries at
other positions are unspecified (patching fills them by broadcasting the computed positions), so it
must index its positions before reducing over anything.

    metric = logit_diff(correct=[3, 5], incorrect=[4, 6], position=-1)
    metric(model(tokens))            # tensor(0.83)
    recovered = normalised(metric, clean_value=2.1, corrupt_value=-0.4)   # 0 corrupt, 1 clean
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuits.errors import ConfigError, MetricError

__all__ = [
    "Metric",
    "MetricFn",
    "cross_entropy",
    "kl_div",
    "logit_diff",
    "metric_positions",
    "normalised",
    "prob",
]

Tokens = int | Sequence[int] | Int[Tensor, " batch"]
MetricFn = Callable[[Any], Tensor]
"""A metric: `metric(output) -> scalar tensor` for one run's output."""


class Metric:
    """A named metric: `metric(output) -> scalar tensor`, reading only `positions` of the output.

    positions: the indices of the output's position axis the metric reads, or None for all of
    them (also for outputs without a position axis).

    For example:

        top = Metric(lambda logits: logits[:, -1].max(-1).values.mean(), name="top", positions=[-1])

    Raises:
        MetricError: `positions` is not None, an int or a non-empty list of ints.
    """

    def __init__(
        self,
        fn: Callable[[Any], Tensor],
        *,
        name: str,
        positions: Sequence[int] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.positions: tuple[int, ...] | None = _check_positions(positions, name)

    def __call__(self, output: Any) -> Tensor:
        return self.fn(output)

    def __repr__(self) -> str:
        where = "all positions" if self.positions is None else f"positions {list(self.positions)}"
        return f"Metric({self.name}, {where})"


def metric_positions(metric: Callable[..., Any]) -> tuple[int, ...] | None:
    """The positions `metric` declares it reads (its `positions` attribute), or None for all.

    For example:

        metric_positions(cc.metrics.logit_diff(3, 4))       # (-1,)
        metric_positions(lambda logits: logits.sum())       # None: a plain function reads all

    Raises:
        MetricError: the declared positions are not None or a sequence of ints.
    """
    return _check_positions(getattr(metric, "positions", None), getattr(metric, "name", "metric"))


def logit_diff(correct: Tokens, incorrect: Tokens, *, position: int | None = -1) -> Metric:
    """Mean over the batch of logit[correct] - logit[incorrect] at `position`.

    correct, incorrect: one token id for every example, or one per example (`[batch]`).
    position: the position read (None: an output without a position axis, or the mean over all
    positions).

    Shapes: the output is logits `[batch, pos, d_vocab]` (or `[batch, classes]` with position
    None); the value is a 0-d tensor.

    For example:

        metric = cc.metrics.logit_diff(correct=[3, 5], incorrect=[4, 6], position=-1)
        metric(model(tokens))                               # tensor(0.83)

    Raises:
        ConfigError: a token id list is empty, not integers or not one-dimensional, or `position`
            is not an int or None (when the metric is built).
        MetricError: the output is not `[batch, (pos,) d_vocab]` logits, the position or a token id
            is out of range, or a per-example list does not match the batch (when it is called).
    """
    good, bad = _token_ids(correct, "correct"), _token_ids(incorrect, "incorrect")

    def fn(logits: Tensor) -> Tensor:
        at = _at(logits, position, "logit_diff")
        return (_pick(at, good, "correct") - _pick(at, bad, "incorrect")).mean()

    return Metric(fn, name="logit_diff", positions=_declared(position))


def prob(token: Tokens, *, position: int | None = -1, log: bool = False) -> Metric:
    """Mean over the batch of the probability (or log-probability) of `token` at `position`.

    Shapes: as `logit_diff`: logits `[batch, pos, d_vocab]` in, a 0-d tensor out.

    For example:

        p = cc.metrics.prob(7, position=-1)                 # P(token 7) at the last position
        logp = cc.metrics.prob(batch.answers, log=True)     # one token id per example

    Raises:
        ConfigError: `token` is not a token id or a `[batch]` list of ids, or `position` is not an
            int or None.
        MetricError: the output is not logits, or the position or a token id is out of range.
    """
    ids = _token_ids(token, "token")

    def fn(logits: Tensor) -> Tensor:
        logprobs = _at(logits, position, "prob").log_softmax(-1)
        picked = _pick(logprobs, ids, "token")
        return (picked if log else picked.exp()).mean()

    return Metric(fn, name="log_prob" if log else "prob", positions=_declared(position))


def kl_div(reference: Float[Tensor, "batch *pos d_vocab"], *, position: int | None = -1) -> Metric:
    """Mean over the batch of KL(softmax(reference) || softmax(output)) at `position`.

    reference: the logits to compare with (usually the clean run's), either the whole
    `[batch, pos, d_vocab]` output or just `[batch, d_vocab]` at `position`. Zero when the output
    equals the reference; position None averages over every position.

    For example:

        clean_logits = model(clean)
        metric = cc.metrics.kl_div(clean_logits, position=-1)
        metric(model(corrupt))                              # >= 0; 0 for the clean run itself

    Raises:
        ConfigError: `reference` is not a `[batch, (pos,) d_vocab]` tensor.
        MetricError: the output's shape at the read positions differs from the reference's.
    """
    if not isinstance(reference, Tensor) or reference.ndim not in (2, 3):
        raise ConfigError("kl_div's reference must be logits of shape [batch, (pos,) d_vocab]")
    ref = reference.detach()
    known: dict[int, tuple[Tensor, Tensor]] = {}  # the reference's log p and p, by output rank

    def fn(logits: Tensor) -> Tensor:
        out = _at(logits, position, "kl_div")
        if out.ndim not in known:
            target = ref if ref.ndim == out.ndim else _at(ref, position, "kl_div")
            logp = target.log_softmax(-1)
            known[out.ndim] = logp, logp.exp()
        logp, p = known[out.ndim]
        if logp.shape != out.shape:
            raise MetricError(
                f"kl_div's reference has shape {tuple(logp.shape)} at the read position(s), "
                f"the output {tuple(out.shape)}; build the metric from logits of this batch"
            )
        return (p * (logp - out.log_softmax(-1))).sum(-1).mean()

    return Metric(fn, name="kl_div", positions=_declared(position))


def cross_entropy(
    tokens: Int[Tensor, "batch pos"], *, mask: Bool[Tensor, "batch pos"] | None = None
) -> Metric:
    """Mean next-token cross-entropy: the logits at p predict tokens[:, p + 1].

    mask: which predicted tokens count (aligned with `tokens`; the first position is never
    predicted). None counts every token after the first, TransformerLens's return_type="loss".
    Declares as positions exactly those that predict a counted token.

    For example:

        clean, corrupt, batch = cc.zoo.induction_pair(8)
        loss = cc.metrics.cross_entropy(clean, mask=batch.is_repeat)   # the repeated half only
        loss(model(clean))                                             # tensor(0.85)

    Raises:
        ConfigError: `tokens` is not a `[batch, pos]` integer tensor, or `mask` has another shape or
            selects no predicted token.
        MetricError: the logits it is called on do not match `tokens` in batch and positions.
    """
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        raise ConfigError("cross_entropy takes the token ids as a [batch, pos] integer tensor")
    targets = tokens[:, 1:]
    if mask is None:
        keep = torch.ones_like(targets, dtype=torch.bool)
    else:
        if not isinstance(mask, Tensor) or mask.shape != tokens.shape:
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ConfigError(
                f"mask must be a bool tensor of shape {tuple(tokens.shape)}, got {got}"
            )
        keep = mask[:, 1:].bool()
    if not keep.any():
        raise ConfigError("the mask selects no predicted token; cross_entropy would be empty")
    read = torch.nonzero(keep.any(0)).flatten().tolist()  # logit positions that predict a token

    def fn(logits: Tensor) -> Tensor:
        if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
            raise MetricError(
                f"cross_entropy was built for tokens of shape {tuple(tokens.shape)} and needs "
                f"logits [batch, pos, d_vocab] to match, got {tuple(logits.shape)}"
            )
        at = logits[:, read].log_softmax(-1)
        chosen = at.gather(-1, targets[:, read, None].to(at.device)).squeeze(-1)
        weights = keep[:, read].to(at.device, at.dtype)
        return -(chosen * weights).sum() / weights.sum()

    return Metric(fn, name="cross_entropy", positions=read)


def normalised(
    metric: Callable[[Any], Tensor], clean_value: float | Tensor, corrupt_value: float | Tensor
) -> Metric:
    """`(metric - corrupt_value) / (clean_value - corrupt_value)`: 0 at corrupt, 1 at clean.

    Keeps the positions `metric` declares. The two values must differ.

    For example:

        metric = cc.metrics.logit_diff(3, 4)
        recovered = cc.metrics.normalised(metric, metric(model(clean)), metric(model(corrupt)))
        cc.patch(model, clean, corrupt, recovered, site="blocks.{L}.attn.hook_z", unit="head")

    Raises:
        ConfigError: `metric` is not callable.
        MetricError: `clean_value` equals `corrupt_value` (nothing to normalise by).
    """
    if not callable(metric):
        raise ConfigError(f"normalised takes a metric function, got {type(metric).__name__}")
    clean, corrupt = float(clean_value), float(corrupt_value)
    if not abs(clean - corrupt) > 1e-12 * max(1.0, abs(clean)):
        raise MetricError(
            f"clean_value ({clean}) and corrupt_value ({corrupt}) are equal, so there is nothing "
            "to normalise by; choose inputs on which the metric differs"
        )

    def fn(output: Any) -> Tensor:
        return (metric(output) - corrupt) / (clean - corrupt)

    return Metric(fn, name=f"normalised({metric_name(metric)})", positions=metric_positions(metric))


def check_metric(metric: Any) -> tuple[int, ...] | None:
    """Refuse a metric that is not callable (ConfigError); return the positions it declares."""
    if not callable(metric):
        raise ConfigError(
            f"metric must be a function of the model output returning a scalar tensor (see "
            f"circuits.metrics), got {type(metric).__name__}"
        )
    return metric_positions(metric)


def metric_value(metric: MetricFn, output: Any, *, allow_nonfinite: bool = False) -> Tensor:
    """`metric(output)` as a 0-d float tensor; MetricError if it is not a scalar float tensor,
    or (unless `allow_nonfinite`) if it is NaN or infinite: every score would be NaN."""
    value = metric(output)
    if not isinstance(value, Tensor) or value.numel() != 1 or not value.is_floating_point():
        got = (
            f"shape {tuple(value.shape)}, dtype {value.dtype}"
            if isinstance(value, Tensor)
            else type(value).__name__
        )
        raise MetricError(
            f"the metric must return a scalar float tensor, got {got}; reduce it (for example "
            ".mean()) and return a float torch tensor computed from the output, so gradients "
            "can flow"
        )
    if not allow_nonfinite and not bool(torch.isfinite(value.detach())):
        raise MetricError(
            f"the metric returned {float(value.detach())} on this run; every score would be NaN. "
            "Check the metric (a log of a zero probability, a division by zero) and the inputs"
        )
    return value.reshape(())


def differentiable(value: Tensor) -> Tensor:
    """`value` if gradients can be taken of it, else MetricError: a metric that detaches the
    output, or builds a new tensor from Python numbers, has no gradient to attribute."""
    if not value.requires_grad:
        raise MetricError(
            "the metric's value does not depend on the model output through autograd (it was "
            "detached, or built with torch.tensor(...) or .item()), so it has no gradient; "
            "compute it from the output with torch operations"
        )
    return value


def metric_name(metric: Callable[..., Any]) -> str:
    """A metric's name for provenance: its `name` attribute, else its function name."""
    return str(getattr(metric, "name", getattr(metric, "__name__", "metric")))


def _check_positions(positions: Any, name: str) -> tuple[int, ...] | None:
    if positions is None:
        return None
    if isinstance(positions, Tensor):
        positions = positions.flatten().tolist()
    elif isinstance(positions, int):
        positions = [positions]
    ok = isinstance(positions, Sequence) and not isinstance(positions, str) and len(positions) > 0
    if not ok or any(isinstance(p, bool) or not isinstance(p, int) for p in positions):
        raise MetricError(
            f"{name}.positions must be None or a non-empty list of position indices, "
            f"got {positions!r}"
        )
    return tuple(positions)


def _declared(position: int | None) -> list[int] | None:
    if position is None:
        return None
    if isinstance(position, bool) or not isinstance(position, int):
        raise ConfigError(f"position must be an int or None, got {position!r}")
    return [position]


def _token_ids(tokens: Tokens, what: str) -> Tensor:
    ids = torch.as_tensor(tokens)
    if ids.is_floating_point() or ids.ndim > 1 or ids.numel() == 0:
        raise ConfigError(f"{what} must be a token id or a [batch] list of ids, got {tokens!r}")
    return ids.long()


def _at(logits: Any, position: int | None, name: str) -> Tensor:
    """The [batch, d_vocab] (or [batch, pos, d_vocab] for position None) logits the metric reads."""
    if not isinstance(logits, Tensor) or logits.ndim not in (2, 3):
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise MetricError(
            f"{name} reads logits of shape [batch, pos, d_vocab] or [batch, d_vocab], got {got}"
        )
    if logits.ndim == 2 or position is None:
        return logits
    if not -logits.shape[1] <= position < logits.shape[1]:
        raise MetricError(f"{name} reads position {position}, the output has {logits.shape[1]}")
    return logits[:, position]


def _pick(logits: Tensor, ids: Tensor, what: str) -> Tensor:
    """logits[..., ids] with one id per example (or one id for all): a [batch] or [batch, pos]."""
    batch = logits.shape[0]
    if ids.numel() != 1 and ids.shape[0] != batch:
        raise MetricError(
            f"the metric holds {ids.shape[0]} {what} token ids, the output has {batch} examples; "
            "give one id per example of the batch the metric is applied to"
        )
    index = ids.to(logits.device).expand(batch) if ids.numel() == 1 else ids.to(logits.device)
    shape = (batch,) + (1,) * (logits.ndim - 1)
    index = index.reshape(shape).expand(*logits.shape[:-1], 1)
    if bool(((index < 0) | (index >= logits.shape[-1])).any()):
        raise MetricError(
            f"the metric's {what} token ids {sorted(set(ids.flatten().tolist()))} are not all in "
            f"the vocabulary of {logits.shape[-1]}; use ids in [0, {logits.shape[-1]})"
        )
    return logits.gather(-1, index).squeeze(-1)
