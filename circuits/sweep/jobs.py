"""What a sweep runs on each batch: a function of yours, a built-in analysis, a probe fit, or a
capture into one store.

A job is a small picklable object: `run(model, batch, number)` computes one batch's result in
whichever process runs it (`number` is the batch's place in the sweep), and `split` says whether
a batch that raised is retried item by item, so that the failure names its item and the batch's
other items still give results. `items_of`, `spans` and `cut` make the batches, the same ones
for every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from torch import Tensor

from circuits.attribution import attribute
from circuits.capture import DiskCache, capture
from circuits.capture.store import Shard, columns_table, finish, prepare, write_shard
from circuits.discover import discover
from circuits.errors import CircuitsError, ConfigError, InputError
from circuits.files import as_path
from circuits.patching import patch, path_patch
from circuits.probes import fit_probe
from circuits.sweep.result import Failure, SweepError

ANALYSES = (patch, path_patch, attribute, discover)
"""Built-in jobs called as `fn(model, clean, corrupt, metric, **options)`."""


class Span(NamedTuple):
    """A batch: items `start` to `stop` (excluded), the `number`-th batch of the sweep."""

    start: int
    stop: int
    number: int


@dataclass(frozen=True)
class Call:
    """Your function: `fn(model, batch, **options)`, or `fn(batch, **options)` without a model."""

    fn: Callable[..., Any]
    options: Mapping[str, Any]
    with_model: bool
    split: bool = True

    def run(self, model: Any, batch: Any, number: int) -> Any:
        head = (model, batch) if self.with_model else (batch,)
        return self.fn(*head, **self.options)


@dataclass(frozen=True)
class Analysis:
    """`fn(model, clean, corrupt, metric, **options)` on a batch of prompt pairs: a mapping with
    "clean" (and "corrupt") or a pair; the metric fixed, or built per batch by `metric_for`."""

    fn: Callable[..., Any]
    options: Mapping[str, Any]
    metric: Any = None
    metric_for: Callable[[Any], Any] | None = None
    split: bool = True

    def run(self, model: Any, batch: Any, number: int) -> Any:
        if isinstance(batch, Mapping) and "clean" in batch:
            clean, corrupt = batch["clean"], batch.get("corrupt")
        elif isinstance(batch, tuple) and len(batch) == 2:
            clean, corrupt = batch
        else:
            raise InputError(
                f"{self.fn.__name__} sweeps prompt pairs: items as columns {{'clean': ..., "
                f"'corrupt': ...}} or a list of (clean, corrupt) batches; a batch is "
                f"{type(batch).__name__}"
            )
        metric = self.metric if self.metric_for is None else self.metric_for(batch)
        return self.fn(model, clean, corrupt, metric, **self.options)


@dataclass(frozen=True)
class Probe:
    """`fit_probe(acts, labels, **options)` on an item (acts, labels) or {"acts", "labels"}."""

    options: Mapping[str, Any]
    split: bool = True

    def run(self, model: Any, batch: Any, number: int) -> Any:
        pair = (batch["acts"], batch["labels"]) if isinstance(batch, Mapping) else batch
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise InputError(
                "fit_probe sweeps items (acts, labels) or {'acts': ..., 'labels': ...}"
            )
        return fit_probe(*pair, **self.options)


@dataclass(frozen=True)
class Capture:
    """Capture a batch and write it as shard `number` of the store in `folder`; the driver
    writes the indexes once every shard is there (`store`)."""

    folder: Path
    options: Mapping[str, Any]
    overwrite: bool = False
    split: bool = False  # a shard is a batch: a failed batch cannot be cut into items

    def run(self, model: Any, batch: Any, number: int) -> Shard:
        cache = capture(model, batch, **self.options)
        return write_shard(self.folder, number, cache, bool(self.options.get("grads")))

    def start(self) -> None:
        """Make the folder ready (refusing one that holds a capture, unless overwriting)."""
        prepare(self.folder, self.overwrite)

    def store(self, shards: list[Shard], failures: tuple[Failure, ...], columns: Any) -> DiskCache:
        """The finished store; or, if a batch failed, its shards removed and a SweepError."""
        try:
            if failures:
                raise SweepError(failures)
            finish(self.folder, shards, bool(self.options.get("grads")), columns)
        except CircuitsError:
            for shard in shards:
                (self.folder / shard.file).unlink(missing_ok=True)
            raise
        return DiskCache(self.folder)


def capture_job(model: Any, options: dict[str, Any], rows: int | None) -> tuple[Capture, Any]:
    """The job of a sweep of `cc.capture_to_disk`, and the columns its index will hold."""
    if model is None or "path" not in options:
        raise ConfigError("sweeping capture_to_disk needs model=... and path=... (a folder)")
    folder = as_path(options.pop("path"), "the capture folder")
    columns, overwrite = options.pop("columns", None), options.pop("overwrite", False)
    columns_table(columns, rows)
    return Capture(folder, options, overwrite), columns


Job = Call | Analysis | Probe | Capture
"""Any of the jobs a sweep runs."""


def job_for(fn: Any, model: Any, options: dict[str, Any]) -> Call | Analysis | Probe:
    """The job that runs `fn` (a function of yours or a built-in) with `options`."""
    if not callable(fn):
        raise ConfigError(f"sweep maps a function over items; got {type(fn).__name__}")
    if fn in ANALYSES:
        if model is None:
            raise ConfigError(f"sweeping {fn.__name__} needs model=...")
        metric, metric_for = options.pop("metric", None), options.pop("metric_for", None)
        if (metric is None) == (metric_for is None) and (fn is not discover or metric_for):
            raise ConfigError(
                f"sweeping {fn.__name__} needs one of metric= (the same for every batch) or "
                "metric_for= (a function of the batch that builds its metric), not both"
            )
        if metric_for is not None and not callable(metric_for):
            raise ConfigError(f"metric_for must be a function of the batch, got {metric_for!r}")
        if metric is not None and not callable(metric):
            raise ConfigError(f"metric must be a metric (a function of the output), got {metric!r}")
        return Analysis(fn, options, metric, metric_for)
    if fn is fit_probe:
        if model is not None:
            raise ConfigError("fit_probe reads activations, not a model; drop model=")
        return Probe(options)
    return Call(fn, options, model is not None)


def items_of(items: Any) -> tuple[int, Any]:
    """(the number of items, the items in a form `cut` slices): a tensor (rows), a mapping of
    equal-length columns, or a list of anything."""
    if isinstance(items, str | bytes) or items is None:
        raise InputError(f"items must be a tensor, a mapping of columns or a list; got {items!r}")
    if isinstance(items, Tensor):
        n = len(items) if items.ndim else 0
    elif isinstance(items, Mapping):
        lengths = {k: _length(v, k) for k, v in items.items()}
        if len(set(lengths.values())) != 1:
            raise InputError(f"every column of items must have the same length, got {lengths}")
        n = next(iter(lengths.values()))
    else:
        items = list(items)
        n = len(items)
    if n == 0:
        raise InputError("items holds no item; nothing to sweep")
    return n, items


def cut(items: Any, start: int, stop: int) -> Any:
    """Items `start` to `stop` of a tensor, a mapping of columns or a list (tensors copied, so
    a batch sent to a worker carries its rows only, not the whole tensor they are cut from)."""
    if isinstance(items, Tensor):
        return items[start:stop].clone()
    if isinstance(items, Mapping):
        return {k: cut(v, start, stop) for k, v in items.items()}
    return items[start:stop]


def spans(n: int, batch_size: int) -> list[Span]:
    """The sweep's batches over n items."""
    return [Span(lo, min(n, lo + batch_size), i) for i, lo in enumerate(range(0, n, batch_size))]


def _length(column: Any, name: str) -> int:
    try:
        return len(column)
    except TypeError:
        raise InputError(f"column {name!r} of items must be a tensor, an array or a list") from None
