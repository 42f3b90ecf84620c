"""Rows for a dictionary: any activation source as a stream of shuffled [rows, d] batches.

A dictionary reads one vector per example, position and pixel, so every axis of an activation
but its feature axis becomes rows. `as_rows` accepts

    a tensor                features last, or `dim=` naming the feature axis;
    a pair (x, y)           a transcoder's inputs and targets, laid out alike;
    an ActivationCache      with `site=` (and `target_site=` for a transcoder); the feature axis
                            is `axis=`, else "channel" where the site has one, else the last;
    a DiskCache             the same, read shard by shard (`DiskCache.batches()`), never whole.

`Rows.batches` shuffles within a buffer of a few batches, drawn with a seed. The buffer is filled
to exactly its size before each shuffle, so the batches depend on the order of the rows only, not
on how they arrive in chunks: a disk cache gives the same batches as its rows held in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuits.capture import ActivationCache, DiskCache
from circuits.errors import ConfigError, InputError, ShapeMismatchError, SiteNotFoundError, closest
from circuits.site import Site

__all__ = ["Rows", "as_rows", "feature_dim"]

Pair = tuple[Tensor, Tensor | None]
CHUNK_ROWS = 1 << 16  # rows per chunk cut from an in-memory tensor (bounds the copies made)


@dataclass(frozen=True)
class Rows:
    """A re-iterable source of rows: `batches()` streams them, holding one chunk (a shard, or
    a slice of an in-memory tensor) and the shuffle buffer, never the whole source.

    d_in, d_out: widths of the input rows and of the targets (d_out None: the targets are the
    inputs, an SAE). rows: how many rows a pass yields (a disk cache's is its examples times
    the first shard's rows per example). device: where the rows arrive. site, target_site,
    axis: what was read, for the dictionary's config.
    """

    chunks: Callable[[], Iterator[Pair]]
    d_in: int
    d_out: int | None
    rows: int
    device: torch.device
    site: str | None = None
    target_site: str | None = None
    axis: str | None = None

    def batches(
        self,
        batch_size: int,
        *,
        buffer: int = 16,
        seed: int = 0,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Iterator[Pair]:
        """One pass over the rows in batches of `batch_size` (the last may be smaller).

        buffer: rows are shuffled within a buffer of this many batches (at least 2): once it is
        full, half of its slots, drawn at random, go out as batches and the next rows take their
        places. Each row is copied in once and out once. 0 keeps the rows in order.
        """
        capacity = batch_size * (max(buffer, 2) if buffer else 1)
        out = (capacity // 2 // batch_size) * batch_size if buffer else capacity
        gen = torch.Generator().manual_seed(seed) if buffer else None
        to = device or self.device
        slots: list[Tensor | None] = [None, None]  # the buffers for inputs and targets
        free = torch.arange(capacity)  # the slots the next rows go to, in order
        filled = 0
        for chunk in self.chunks():
            free = free.to(chunk[0].device)
            start = 0
            while start < len(chunk[0]):
                take = min(len(chunk[0]) - start, len(free) - filled)
                at = free[filled : filled + take]
                for i, t in enumerate(chunk):
                    if t is not None:
                        slot = slots[i]
                        if slot is None:
                            slot = slots[i] = t.new_empty((capacity, t.shape[1]))
                        slot.index_copy_(0, at, t[start : start + take])
                filled, start = filled + take, start + take
                if filled == len(free):
                    free, filled = _order(capacity, gen, free.device)[:out], 0
                    yield from _draw(slots, free, batch_size, to, dtype)
        if slots[0] is not None:
            left = torch.ones(capacity, dtype=torch.bool, device=free.device)
            left[free[filled:]] = False
            rest = left.nonzero().squeeze(1)
            if gen is not None:
                rest = rest[_order(len(rest), gen, rest.device)]
            yield from _draw(slots, rest, batch_size, to, dtype)


def as_rows(
    acts: Any,
    *,
    site: str | None = None,
    target_site: str | None = None,
    axis: str | None = None,
    dim: int | None = None,
    transcoder: bool = False,
) -> Rows:
    """The rows of `acts` (module docstring); `transcoder` asks for inputs and targets."""
    if isinstance(acts, DiskCache | ActivationCache):
        if dim is not None:
            raise ConfigError("dim= is for a tensor; a cache names its feature axis with axis=")
        return _cache_rows(acts, site, target_site, axis, transcoder)
    if axis is not None or target_site is not None:
        raise ConfigError(
            "axis= and target_site= name a cache's axes and sites; a tensor takes dim= (its "
            "feature axis), and a transcoder's tensors come as a pair (inputs, targets)"
        )
    if isinstance(acts, tuple) and len(acts) == 2:
        if not transcoder:
            raise ConfigError("a pair (inputs, targets) is a transcoder's data; pass one tensor")
        x, y = _checked(acts[0], "inputs"), _checked(acts[1], "targets")
    elif isinstance(acts, Tensor):
        if transcoder:
            raise ConfigError(
                "a transcoder reads one site and predicts another: pass a pair (inputs, targets), "
                "or a cache with site= and target_site="
            )
        x, y = _checked(acts, "activations"), None
    else:
        raise InputError(
            f"acts must be a tensor, a pair of tensors, an ActivationCache or a DiskCache, got "
            f"{type(acts).__name__}"
        )
    d = -1 if dim is None else dim
    rows = _matching(x, d, "inputs", y, d, "targets")
    d_out = None if y is None else _width(y, d)
    return Rows(_tensor_chunks(x, y, d, d), _width(x, d), d_out, rows, x.device, site=site)


def _cache_rows(
    cache: DiskCache | ActivationCache,
    site: str | None,
    target_site: str | None,
    axis: str | None,
    transcoder: bool,
) -> Rows:
    """Rows of one site (and a target site) of an in-memory or on-disk cache."""
    if site is None:
        raise ConfigError(f"name the site to read with site=; this cache holds {sorted(cache)}")
    if transcoder != (target_site is not None):
        raise ConfigError(
            "a transcoder needs target_site= (the site it predicts)"
            if transcoder
            else "target_site= is a transcoder's; pass kind='transcoder' or drop it"
        )
    names = [site] if target_site is None else [site, target_site]
    for name in names:
        if name not in cache:
            raise SiteNotFoundError(f"site {name!r} is not in this cache; {closest(name, cache)}")
    # the axes and widths, from the cache itself or from its first shard
    first = cache if isinstance(cache, ActivationCache) else next(iter(cache.batches()))
    x = _checked(first[site], f"site {site!r}")
    x_dim = feature_dim(first.sites[site], axis)
    y = None if target_site is None else _checked(first[target_site], f"site {target_site!r}")
    y_dim = x_dim if target_site is None else feature_dim(first.sites[target_site], axis)
    rows = _matching(x, x_dim, f"site {site!r}", y, y_dim, f"site {target_site!r}")
    d_out = None if y is None else _width(y, y_dim)
    chosen = axis or first.sites[site].axes[x_dim]
    if isinstance(cache, ActivationCache):
        chunks, device = _tensor_chunks(x, y, x_dim, y_dim), x.device
    else:  # every shard is taken to have the first's rows per example
        chunks, device = _disk_chunks(cache, names, axis), torch.device("cpu")
        rows = cache.rows * rows // x.shape[0]
    return Rows(chunks, _width(x, x_dim), d_out, rows, device, site, target_site, chosen)


def _tensor_chunks(
    x: Tensor, y: Tensor | None, x_dim: int, y_dim: int
) -> Callable[[], Iterator[Pair]]:
    """Chunks of rows of in-memory tensors: slices of their first axis, each made into rows, so
    a feature axis that is not last is moved a slice at a time, never the whole tensor."""
    whole = x_dim % x.ndim == 0 or (y is not None and y_dim % y.ndim == 0)
    step = x.shape[0] if whole else max(1, CHUNK_ROWS * x.shape[0] * x.shape[x_dim] // x.numel())

    def chunks() -> Iterator[Pair]:
        for lo in range(0, x.shape[0], step):
            ys = None if y is None else _as_matrix(y[lo : lo + step], y_dim)
            yield _as_matrix(x[lo : lo + step], x_dim), ys

    return chunks


def _disk_chunks(
    cache: DiskCache, names: list[str], axis: str | None
) -> Callable[[], Iterator[Pair]]:
    """Chunks of rows read one shard at a time, each checked as it arrives."""

    def chunks() -> Iterator[Pair]:
        for shard in cache.batches():
            parts = []
            for name in names:
                t = _checked(shard[name], f"site {name!r} in {cache.folder}")
                parts.append(_as_matrix(t, feature_dim(shard.sites[name], axis)))
            del shard  # only the rows stay alive while they are consumed
            if len(parts) == 2 and len(parts[0]) != len(parts[1]):
                raise ShapeMismatchError(
                    f"a shard of {cache.folder} holds {len(parts[0])} rows of {names[0]!r} and "
                    f"{len(parts[1])} of {names[1]!r}; a transcoder's sites must match row for row"
                )
            yield parts[0], (parts[1] if len(parts) == 2 else None)

    return chunks


def feature_dim(site: Site, axis: str | None) -> int:
    """Index of the site's feature axis: `axis`, else "channel" if it has one, else the last."""
    name = axis or ("channel" if "channel" in site.axes else site.axes[-1])
    return site.axis(name)


def _checked(t: Any, what: str) -> Tensor:
    """`t` if it is a float tensor of finite values with at least one axis, else InputError."""
    if not isinstance(t, Tensor) or not t.is_floating_point():
        got = str(t.dtype) if isinstance(t, Tensor) else type(t).__name__
        raise InputError(f"{what} must be a float tensor of activations, got {got}")
    if t.ndim == 0 or t.numel() == 0:
        raise InputError(f"{what} hold no rows (shape {tuple(t.shape)})")
    # a sum is NaN or infinite if any value is (one pass, no mask); only then look closer
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise InputError(
            f"{what} hold NaN or infinite values; a dictionary trained on them would be NaN. "
            "Clean the activations first"
        )
    return t


def _width(t: Tensor, dim: int) -> int:
    if not -t.ndim <= dim < t.ndim:
        raise InputError(f"dim={dim} is not an axis of a tensor of shape {tuple(t.shape)}")
    return int(t.shape[dim])


def _matching(x: Tensor, x_dim: int, what: str, y: Tensor | None, y_dim: int, y_what: str) -> int:
    """Rows of x (every element but the feature axis); y must give as many."""
    rows = x.numel() // _width(x, x_dim)
    if y is not None and y.numel() // _width(y, y_dim) != rows:
        raise ShapeMismatchError(
            f"{what} (shape {tuple(x.shape)}) gives {rows} rows but {y_what} (shape "
            f"{tuple(y.shape)}) gives {y.numel() // _width(y, y_dim)}; a transcoder's input and "
            "target must match row for row (the same examples, positions and pixels)"
        )
    return rows


def _as_matrix(t: Tensor, dim: int) -> Tensor:
    """[rows, d]: the feature axis moved last, every other axis flattened into rows."""
    return t.movedim(dim, -1).reshape(-1, t.shape[dim])


def _order(n: int, gen: torch.Generator | None, device: torch.device) -> Tensor:
    """0..n-1 in random order (drawn from `gen`), or in order without one."""
    order = torch.arange(n) if gen is None else torch.randperm(n, generator=gen)
    return order.to(device)


def _draw(
    slots: list[Tensor | None], at: Tensor, size: int, device: torch.device, dtype: torch.dtype
) -> Iterator[Pair]:
    """The rows in slots `at`, copied out in batches of `size`, on `device` in `dtype`."""
    x, y = slots
    assert x is not None  # the buffer is made with the first chunk
    for lo in range(0, len(at), size):
        rows = at[lo : lo + size]
        batch = x[rows].to(device=device, dtype=dtype)
        yield batch, None if y is None else y[rows].to(device=device, dtype=dtype)
