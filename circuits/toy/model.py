"""The ReLU output toy model of Elhage et al. (2022), "Toy Models of Superposition".

n sparse features x are compressed into m < n hidden dimensions, h = W x, and read back out with
the tied weights, x' = ReLU(W^T h + b). Whether the model packs more than m features into the m
dimensions (superposition) depends on how sparse and how important the features are, so the
interesting objects are sweeps over sparsity or importance. All instances of a sweep live in one
batched module (W of shape [instances, m, n]) and train together, which is far faster on a CPU
than a loop over separate models.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from circuits.errors import ConfigError, InputError

__all__ = ["ToyConfig", "ToyModel", "phase_config", "train"]

logger = logging.getLogger(__name__)

Schedule = Literal["constant", "cosine"]


def _table(name: str, value: object, shape: tuple[int, ...], allowed: str) -> Tensor:
    """`value` as a float tensor broadcast to `shape`; only the shapes named in `allowed` pass."""
    try:
        table = torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        table = None
    if table is None or table.shape not in (shape, shape[1:]):
        got = list(table.shape) if table is not None else repr(value)
        raise ConfigError(f"{name}: expected {allowed}, got {got}; pass {allowed}.")
    return table.expand(shape)


def _frozen(value: object) -> object:
    """Sequences (nested lists, arrays, tensors) as tuples of floats: configs hash and compare."""
    if value is None or isinstance(value, int | float):
        return value
    rows = torch.as_tensor(value, dtype=torch.float64).tolist()
    return tuple(tuple(row) if isinstance(row, list) else row for row in rows)


@dataclass(frozen=True)
class ToyConfig:
    """Shape and data distribution of a batched sweep of toy models.

    Args:
        n_features: number of input features n.
        n_hidden: number of hidden dimensions m (at most n).
        n_instances: number of models trained side by side.
        sparsity: probability S in [0, 1) that a feature is zero; one number for all instances or
            one per instance. Non-zero features are uniform in [0, 1].
        importance: weight I_i of each feature in the loss; None means all ones, a sequence of n
            numbers is shared by every instance, and a sequence of n_instances rows of n numbers
            gives each instance its own importances (an importance sweep).

    Sequences are stored as tuples, so configs are hashable and compare by value.
    """

    n_features: int = 5
    n_hidden: int = 2
    n_instances: int = 1
    sparsity: float | Sequence[float] = 0.0
    importance: Sequence[float] | Sequence[Sequence[float]] | None = None

    def __post_init__(self) -> None:
        for name in ("n_features", "n_hidden", "n_instances"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(
                    f"{name}: expected a positive integer, got {value!r}; pass a whole number >= 1."
                )
        if self.n_hidden > self.n_features:
            raise ConfigError(
                f"n_hidden: expected at most n_features={self.n_features} hidden dimensions, got "
                f"{self.n_hidden}; superposition needs m <= n, so lower n_hidden or raise "
                "n_features."
            )
        sparsity = self.sparsity_table()
        if not bool(((sparsity >= 0) & (sparsity < 1)).all()):
            raise ConfigError(
                f"sparsity: expected values in [0, 1), got {self.sparsity!r}; S is the "
                "probability that a feature is zero, and S = 1 would leave no data."
            )
        if bool((self.importance_table() < 0).any()):
            raise ConfigError(
                f"importance: expected non-negative weights, got {self.importance!r}; "
                "importances weight the squared error of each feature, so use values >= 0."
            )
        object.__setattr__(self, "sparsity", _frozen(self.sparsity))
        object.__setattr__(self, "importance", _frozen(self.importance))

    def sparsity_table(self) -> Tensor:
        """Sparsity of every instance, [n_instances]."""
        k = self.n_instances
        return _table("sparsity", self.sparsity, (k,), f"a number or {k} numbers, one per instance")

    def importance_table(self) -> Tensor:
        """Importance of every feature of every instance, [n_instances, n_features]."""
        k, n = self.n_instances, self.n_features
        if self.importance is None:
            return torch.ones(k, n)
        allowed = f"{n} numbers (one per feature) or {k} rows of {n} (one row per instance)"
        return _table("importance", self.importance, (k, n), allowed)


def phase_config(*, sparsities: Sequence[float], importances: Sequence[float]) -> ToyConfig:
    """The paper's n=2, m=1 phase-diagram sweep: one instance per (sparsity, importance) cell.

    Feature 0 has importance 1 and feature 1 the relative importance; both share the cell's
    sparsity. Instances run over `sparsities` (outer) and `importances` (inner).

    For example:

        config = cc.toy.phase_config(sparsities=[0.0, 0.5, 0.9], importances=[0.1, 1.0, 10.0])
        config.n_instances                                  # 9

    Raises:
        ConfigError: a sparsity outside [0, 1) or a negative importance (from `ToyConfig`).
    """
    cells = [(s, r) for s in sparsities for r in importances]
    return ToyConfig(
        n_features=2,
        n_hidden=1,
        n_instances=len(cells),
        sparsity=[s for s, _ in cells],
        importance=[[1.0, r] for _, r in cells],
    )


class ToyModel(nn.Module):
    """A batch of ReLU output models x' = ReLU(W^T W x + b), one per sweep instance.

    `forward` takes x of shape [batch, instances, n] and returns the reconstruction of the same
    shape. The hidden activations h = W x pass through the identity submodule `hidden`, so a
    forward hook on `model.hidden` (site "hidden") captures them as [batch, instances, m].
    """

    sparsity: Tensor
    importance: Tensor

    def __init__(self, config: ToyConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        k, m, n = config.n_instances, config.n_hidden, config.n_features
        gen = torch.Generator().manual_seed(seed)
        std = math.sqrt(2.0 / (m + n))  # Xavier-normal for each instance's [m, n] matrix.
        self.W = nn.Parameter(torch.randn(k, m, n, generator=gen) * std)
        self.b = nn.Parameter(torch.zeros(k, n))
        self.hidden = nn.Identity()
        self.register_buffer("sparsity", config.sparsity_table().clone())
        self.register_buffer("importance", config.importance_table().clone())

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct x [batch, instances, n] through the m-dimensional bottleneck."""
        k, n = self.config.n_instances, self.config.n_features
        if x.ndim != 3 or x.shape[1:] != (k, n):
            raise InputError(
                f"x: expected shape [batch, {k}, {n}] (batch, instances, features), got "
                f"{list(x.shape)}; sample inputs with model.generate_batch(batch_size)."
            )
        xt = x.permute(1, 2, 0)  # [instances, n, batch]: one batched matmul per layer
        h = self.hidden(torch.bmm(self.W, xt).permute(2, 0, 1))
        z = torch.baddbmm(self.b[:, :, None], self.W.transpose(1, 2), h.permute(1, 2, 0))
        return torch.relu(z).permute(2, 0, 1)

    def generate_batch(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Sample x [batch_size, instances, n]: each feature is 0 with probability S, else U[0, 1].

        One uniform u per entry suffices: u < S gives 0, and given u >= S, (u - S) / (1 - S) is
        again uniform on [0, 1]. The result is a view of an [instances, n, batch] tensor, the
        layout in which `train` computes its gradients.
        """
        k, n = self.config.n_instances, self.config.n_features
        u = torch.rand((k, n, batch_size), generator=generator, device=self.W.device)
        s = self.sparsity[:, None, None]
        return u.sub_(s).clamp_min_(0.0).div_(1.0 - s).permute(2, 0, 1)

    def loss(self, x: Tensor) -> Tensor:
        """Importance-weighted squared error, summed over features, averaged over the batch.

        Returned per instance ([instances]); summing it trains every instance independently.
        """
        error = self(x) - x
        return (error.square() * self.importance).sum(dim=(0, 2)) / x.shape[0]


def _set_gradients(model: ToyModel, x: Tensor) -> None:
    """Set W.grad and b.grad to the gradient of model.loss(x).sum(), in closed form.

    With h = W x, z = W^T h + b and e = ReLU(z) - x, the loss is sum I e^2 / batch, so
    dL/dz = 2 I e [z > 0] / batch, dL/db = sum over the batch of dL/dz, and
    dL/dW = h dL/dz^T + (W dL/dz) x^T. This makes about half the passes over (and allocations of)
    the large [instances, n, batch] tensors that autograd makes: most of a step's cost on a CPU.
    """
    W = model.W
    with torch.no_grad():
        xt = x.permute(1, 2, 0)  # as in forward; contiguous for generate_batch data
        h = torch.bmm(W, xt)
        z = torch.baddbmm(model.b[:, :, None], W.transpose(1, 2), h)
        active = z > 0
        dz = z.sub_(xt).mul_(active).mul_(model.importance[:, :, None] * (2 / x.shape[0]))
        model.b.grad = dz.sum(-1)
        W.grad = torch.bmm(h, dz.transpose(1, 2)).add_(torch.bmm(W, dz).bmm(xt.transpose(1, 2)))


def train(
    model: ToyModel,
    *,
    steps: int = 10_000,
    batch_size: int = 1024,
    lr: float = 1e-3,
    schedule: Schedule = "constant",
    seed: int = 0,
    progress: bool = True,
) -> ToyModel:
    """Train every instance of `model` in place with Adam and return it.

    The defaults are the paper's (Adam, lr 1e-3, batch 1024, 10k steps). `schedule="cosine"`
    decays the rate to zero, which settles the weights onto their final geometry. `seed` fixes
    the data stream; the initial weights are fixed by the model's own seed. Gradients are
    computed in closed form (the same as autograd through `model.loss`, about 1.7x faster on a
    CPU; see benchmarks/bench_toy.py), so hooks on the model do not run during training.

    For example:

        model = cc.toy.ToyModel(cc.toy.ToyConfig(n_features=5, n_hidden=2, sparsity=0.9))
        cc.toy.train(model, steps=2_000, schedule="cosine", progress=False)

    Raises:
        ConfigError: `steps`, `batch_size` or `lr` is not positive, or `schedule` is unknown.
    """
    if steps <= 0 or batch_size <= 0 or lr <= 0:
        raise ConfigError(
            f"train: expected positive steps, batch_size and lr, got steps={steps}, "
            f"batch_size={batch_size}, lr={lr}; pass values > 0."
        )
    if schedule not in ("constant", "cosine"):
        raise ConfigError(
            f"schedule: expected 'constant' or 'cosine', got {schedule!r}; pick one of those."
        )
    gen = torch.Generator(device=model.W.device).manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    bar = tqdm(range(steps), disable=not progress, desc="toy model")
    for step in bar:
        if schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        x = model.generate_batch(batch_size, gen)
        _set_gradients(model, x)
        optimizer.step()
        if progress and (step % 500 == 0 or step == steps - 1):
            with torch.no_grad():
                bar.set_postfix(loss=float(model.loss(x).mean()))
    logger.debug("trained %d instances for %d steps", model.config.n_instances, steps)
    return model
