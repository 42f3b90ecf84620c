"""Preparing probe data: activations to a matrix, labels to classes, a split, standardisation.

A probe needs samples x features. Activations come as [n, d] or with more axes (positions,
heads, spatial h and w). `pool` says how the axes that are neither the batch nor the feature axis
go away:

    None       there are none (or they all have size 1, e.g. one captured position)
    "mean"     average over them (a conv layer's mean activation per channel)
    "max"      maximum over them ("did this channel fire anywhere")
    "flatten"  concatenate them into the feature axis: d = the product of all non-batch axes
    "stack"    each position is a sample of its own (per-token labels): labels are [n] (the same
               label at every position) or shaped like the activation without its feature axis

The split is made over inputs (with "stack", all positions of an input fall on the same side), is
stratified by class for classification and is seeded.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from circuits.errors import ConfigError, InputError, ShapeMismatchError

Pool = Literal["mean", "max", "flatten", "stack"]
POOLS = ("mean", "max", "flatten", "stack")
STRIP = 1 << 18  # elements per strip of a one-thread pass over x on a CPU (1 MiB of float32)
SMALL = 1 << 22  # elements of a matrix small enough that one thread multiplies it fastest
Labels = Tensor | np.ndarray | Sequence[Any]


@dataclass(frozen=True)
class Layout:
    """How a probe's [N, d] matrix came from the activation: rank, feature axis, pool, axes."""

    ndim: int
    feature_axis: int  # non-negative index into the activation's axes
    pool: Pool | None
    extra: tuple[int, ...]  # sizes of the pooled (or stacked) axes, in order


def as_tensor(acts: Any, *, min_samples: int = 2) -> Tensor:
    """Activations as a float tensor (numpy arrays are converted; integer types become float32)."""
    if isinstance(acts, np.ndarray):
        acts = torch.from_numpy(acts)
    if not isinstance(acts, Tensor):
        raise InputError(
            f"activations must be a torch tensor (or numpy array), got {type(acts).__name__}; "
            "take one from a cache: cache['site name']"
        )
    acts = acts.detach()
    if not acts.is_floating_point() or acts.dtype in (torch.float16, torch.bfloat16):
        acts = acts.float()
    if acts.ndim < 2:
        raise ShapeMismatchError(
            f"activations must have a batch axis and a feature axis, got shape {tuple(acts.shape)}"
            "; add a feature axis with acts[:, None] if each sample is a single number"
        )
    if acts.shape[0] < min_samples:
        raise InputError(f"need at least {min_samples} samples to fit a probe, got {acts.shape[0]}")
    return acts


def to_matrix(acts: Tensor, *, pool: Pool | None, feature_axis: int) -> tuple[Tensor, Layout]:
    """Reduce activations [n, ...] to a matrix [N, d] as `pool` says; also the layout used."""
    if pool is not None and pool not in POOLS:
        raise ConfigError(f"pool must be one of {POOLS} or None, got {pool!r}")
    if not -acts.ndim < feature_axis < acts.ndim or feature_axis in (0, -acts.ndim):
        raise ConfigError(
            f"feature_axis {feature_axis} is not a non-batch axis of activations with shape "
            f"{tuple(acts.shape)}; use -1 for the last axis, 1 for conv channels"
        )
    axis = feature_axis % acts.ndim
    moved = acts.movedim(axis, -1)  # [n, *extra, d]
    extra = tuple(moved.shape[1:-1])
    layout = Layout(acts.ndim, axis, pool, extra)
    n, d = moved.shape[0], moved.shape[-1]
    if not extra:
        return moved, layout
    if pool is None:
        if all(size == 1 for size in extra):
            return moved.reshape(n, d), layout
        raise ConfigError(
            f"activations of shape {tuple(acts.shape)} have axes besides batch and features "
            f"(feature_axis={feature_axis}); pick positions first (acts[:, -1]) or pass "
            "pool='mean', 'max', 'flatten' or 'stack'"
        )
    dims = tuple(range(1, len(extra) + 1))
    if pool == "mean":
        return moved.mean(dim=dims), layout
    if pool == "max":
        return moved.amax(dim=dims), layout
    if pool == "flatten":
        return acts.reshape(n, -1), layout
    return moved.reshape(-1, d), layout


@contextmanager
def serial(device: torch.device) -> Iterator[None]:
    """Run the block's torch CPU ops on one thread; the thread count is restored afterwards.

    For small or element-wise work. torch (with its OpenMP backend) and MKL spread even a tiny
    op over every thread, and on a busy machine each such op can wait milliseconds for a
    descheduled worker: 2,500 x 30 times 30 x 4 took about 50 ms on two threads here, 0.1 ms on
    one. The count is process-wide, so torch ops that other Python threads run meanwhile also
    get one thread. Does nothing off the CPU, or where the parallel backend is not OpenMP.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or not _openmp():
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.cache
def _openmp() -> bool:
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def project(x: Tensor, w: Tensor) -> Tensor:
    """x @ w.T [n, k] for x [n, d] and a few rows w [k, d] (on one thread when x is small)."""
    with serial(x.device) if x.numel() <= SMALL else nullcontext():
        return x @ w.to(x.dtype).T


def gather_rows(r: Tensor, x: Tensor) -> Tensor:
    """r.T @ x [k, d] for weights r [n, k] and x [n, d] (on one thread when x is small)."""
    with serial(x.device) if x.numel() <= SMALL else nullcontext():
        return r.to(x.dtype).T @ x


def check_finite(x: Tensor, what: str) -> None:
    """Raise InputError if x holds NaN or inf.

    One matrix-vector product decides (a NaN or inf anywhere makes its column sum NaN or inf);
    only then is the element-wise test run, to say where.
    """
    ones = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    if x.ndim == 2 and bool(torch.isfinite(x.T @ ones).all()):
        return
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise InputError(
            f"{what} hold {int(bad.sum())} NaN or infinite values (first at index "
            f"{tuple(int(i) for i in bad.nonzero()[0])}); drop or fix those samples first"
        )


def label_array(labels: Labels, layout: Layout, n: int, *, device: torch.device) -> Any:
    """Labels checked against the samples: a tensor or array with one label per matrix row."""
    if labels is None:
        raise InputError("labels are missing: pass one label per sample")
    arr: Any = labels if isinstance(labels, Tensor) else np.asarray(labels)
    shape = tuple(arr.shape)
    if layout.pool == "stack" and layout.extra:
        full = (n, *layout.extra)
        if shape == (n,):
            arr = _repeat(arr, int(np.prod(layout.extra)))
        elif shape != full:
            raise ShapeMismatchError(
                f"with pool='stack' labels must have shape ({n},) or {full} (one per position), "
                f"got {shape}"
            )
        return arr.reshape(-1)
    if not shape or shape[0] != n:
        raise ShapeMismatchError(
            f"got {shape[0] if shape else 'a scalar'} labels for {n} samples (activations "
            f"{n} x ...); pass exactly one label per sample"
        )
    return arr


def encode_classes(arr: Any, *, device: torch.device) -> tuple[Tensor, tuple[Any, ...]]:
    """Class indices [N] (long, on device) and the sorted distinct class values."""
    if getattr(arr, "ndim", 1) != 1:
        raise ShapeMismatchError(
            f"classification labels must be one value per sample, got shape {tuple(arr.shape)}; "
            "for several continuous targets use kind='linear'"
        )
    if isinstance(arr, Tensor) and arr.device.type == "cpu":
        arr = arr.detach().numpy()  # numpy sorts 10^5 labels single-threaded in milliseconds
    if isinstance(arr, Tensor):
        if arr.is_floating_point() and not bool(torch.isfinite(arr).all()):
            raise InputError("labels hold NaN or infinite values")
        values, index = torch.unique(arr, return_inverse=True)
        classes = tuple(values.tolist())
    else:
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InputError("labels hold NaN or infinite values")
        distinct, inverse = np.unique(arr, return_inverse=True)
        classes = tuple(v.item() if hasattr(v, "item") else v for v in distinct)
        index = torch.from_numpy(np.asarray(inverse, dtype=np.int64).reshape(-1))
    if len(classes) < 2:
        raise InputError(
            f"labels hold only one class ({classes[0] if classes else 'none'!r}); a probe needs "
            "at least two classes (for continuous targets use kind='linear')"
        )
    if len(classes) > max(20, len(arr) // 2):
        raise InputError(
            f"labels hold {len(classes)} distinct values for {len(arr)} samples; that looks like a "
            "continuous target: use kind='linear' for regression"
        )
    return index.to(device=device, dtype=torch.long), classes


def encode_targets(arr: Any, *, device: torch.device) -> Tensor:
    """Regression targets as float32 [N, t] on device."""
    y = arr if isinstance(arr, Tensor) else torch.as_tensor(np.asarray(arr, dtype=np.float32))
    y = y.to(device=device, dtype=torch.float32)
    if y.ndim not in (1, 2):
        raise ShapeMismatchError(f"targets must be [n] or [n, t], got shape {tuple(y.shape)}")
    check_finite(y, "targets")
    return y[:, None] if y.ndim == 1 else y


def split(
    n_inputs: int,
    per_input: int,
    *,
    test_fraction: float,
    seed: int,
    strata: Tensor | None,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Train and test row indices: a seeded split of inputs, stratified by `strata` if given.

    Each input owns `per_input` consecutive rows (positions under pool='stack'). Every stratum
    keeps at least one input on the training side. Index bookkeeping runs in numpy on the CPU.
    """
    rng = np.random.default_rng(seed)
    if strata is None:
        groups = [np.arange(n_inputs)]
    else:
        codes = strata.cpu().numpy()
        order = np.argsort(codes, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
    is_test = np.zeros(n_inputs, dtype=bool)
    for members in groups:
        k = min(round(test_fraction * len(members)), len(members) - 1)
        is_test[rng.permutation(members)[:k]] = True
    rows = np.arange(n_inputs * per_input).reshape(n_inputs, per_input)
    train, test = rows[~is_test].reshape(-1), rows[is_test].reshape(-1)
    return torch.from_numpy(train).to(device), torch.from_numpy(test).to(device)


def standardise(
    x: Tensor, rows: Tensor | None = None, *, scale: bool = True
) -> tuple[Tensor, Tensor]:
    """Per-feature mean and scale of the `rows` mask of x (population std, as scikit-learn).

    Constant features (variance within float rounding of zero) get scale 1; `scale=False` gives
    the mean and a scale of ones. Two passes over x and no n x d copy: the mean from one
    matrix-vector product, then squared deviations from it, strip by strip through one reused
    buffer that stays in cache (on one thread: see `serial`).
    """
    n_rows, d = x.shape
    weights = torch.ones(n_rows, dtype=x.dtype, device=x.device) if rows is None else rows
    weights = weights.to(x.dtype)
    n = float(weights.sum())
    mean = (x.T @ weights) / n
    if not scale:
        return mean, torch.ones_like(mean)
    squares = torch.zeros_like(mean)
    step = max(1, STRIP // d) if x.device.type == "cpu" else n_rows
    buffer = torch.empty(min(step, n_rows), d, dtype=x.dtype, device=x.device)
    with serial(x.device):
        for start in range(0, n_rows, step):
            chunk = x[start : start + step]
            dev = torch.sub(chunk, mean, out=buffer[: len(chunk)]).square_()
            torch.addmv(squares, dev.T, weights[start : start + step], out=squares)
    var = squares.double() / n
    eps = torch.finfo(x.dtype).eps
    constant = var <= (n * eps * mean.double()) ** 2 + torch.finfo(x.dtype).tiny
    return mean, torch.where(constant, torch.ones_like(var), var.sqrt()).to(x.dtype)


def distinct_index(arr: Any, *, device: torch.device) -> Tensor:
    """For each element of `arr`, the index of its value among the distinct values (long [N])."""
    if isinstance(arr, Tensor):
        index = torch.unique(arr.reshape(-1), return_inverse=True)[1]
    else:
        index = torch.from_numpy(np.unique(np.asarray(arr).reshape(-1), return_inverse=True)[1])
    return index.reshape(-1).to(device=device, dtype=torch.long)


def control_labels(
    y: Tensor, types: Labels | None, layout: Layout, n_inputs: int, *, seed: int
) -> Tensor:
    """Control labels: a seeded permutation of y, or one random label per distinct type.

    With types, each distinct type takes the label of a randomly drawn sample, so labels keep
    the label distribution in expectation (Hewitt & Liang's control task).
    """
    gen = torch.Generator().manual_seed(seed + 1)
    if types is None:
        return y[torch.randperm(len(y), generator=gen).to(y.device)]
    kinds = distinct_index(label_array(types, layout, n_inputs, device=y.device), device=y.device)
    if len(kinds) != len(y):
        raise ShapeMismatchError(f"got {len(kinds)} types for {len(y)} samples; pass one each")
    draw = torch.randint(len(y), (int(kinds.max()) + 1,), generator=gen).to(y.device)
    return y[draw][kinds]


def _repeat(arr: Any, times: int) -> Any:
    if isinstance(arr, Tensor):
        return arr.repeat_interleave(times)
    return np.repeat(arr, times)
