"""Capture a dataset too large for memory, batch by batch, to a store of safetensors shards.

Each batch is captured, written as one shard (atomically) and dropped, so peak memory is about
one batch; the row index (`index.parquet`, one row per example with your columns) and then the
manifest (`index.json`) are written last (`circuits.capture.store` has the format). `load_cache`
opens a store as a mapping whose values concatenate the shards, with a selection of rows (by
example number, or a pyarrow filter on the row index), and streams it a shard at a time
(`batches()`), optionally in a shuffled shard order or read ahead on Ray workers. Reading trusts
nothing in the folder: file names stay inside it, each shard must be a readable safetensors file
with the rows the indexes claim, and the two indexes must agree; anything else is a SchemaError.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor, nn

from circuits.capture.activations import capture
from circuits.capture.cache import ActivationCache
from circuits.capture.remote import read_ahead, require_ray
from circuits.capture.store import (
    GRAD_PREFIX,
    columns_table,
    finish,
    prepare,
    read_manifest,
    read_rows,
    read_shard,
    write_shard,
)
from circuits.checks import check_int
from circuits.errors import ConfigError, InputError, SchemaError, SiteNotFoundError, closest
from circuits.files import as_path
from circuits.loops import progress_bar
from circuits.options import check_choice
from circuits.site import Site

Reader = Literal["local", "ray"]
"""Where `DiskCache.batches()` reads shards: in this process, or on Ray workers, ahead."""

READ_AHEAD = 4  # shards a Ray reader keeps in flight


def capture_to_disk(
    model: nn.Module,
    inputs: Tensor | Iterable[Any],
    path: str | os.PathLike[str],
    *,
    sites: str | list[str] | None = None,
    batch_size: int | None = None,
    columns: Mapping[str, Any] | Any = None,
    overwrite: bool = False,
    progress: bool | None = None,
    **options: Any,
) -> DiskCache:
    """Capture `sites` over many batches into the folder `path`; returns the DiskCache.

    inputs: a tensor split into batches of `batch_size` along dim 0, or any iterable of batches
    (a DataLoader of inputs, say). columns: per-example values stored in the row index beside
    each example's shard and offset (a mapping name -> one value per example, or a DataFrame:
    prompts, ids, labels), for filtering with `load_cache(where=...)` or any Parquet reader.
    Other keywords (grads, metric, positions, spatial, dtype, ...) go to `cc.capture` for each
    batch. `cc.sweep(cc.capture_to_disk, inputs, model=model, path=...)` writes the same store
    from many workers.

    Shapes: `cache[site]` is `[total rows, ...]`, the site's axes with every batch concatenated;
    each shard holds one batch. The folder's files are described in the docs' "Disk cache" page.

    For example:

        disk = cc.capture_to_disk(cnn, images, "acts/", sites=["relu2"], batch_size=16,
                                  columns={"label": labels})
        disk["relu2"].shape                                   # (len(images), 3, 16, 16)
        for part in disk.batches(): ...                       # one ActivationCache per shard
        pyarrow.parquet.read_table("acts/index.parquet")      # example, shard, offset, label

    Raises:
        ConfigError: the folder already holds a capture and `overwrite` is False, or
            `batch_size` is missing (or not a positive int) for a tensor, or given for batches;
            a column is named example, shard or offset.
        InputError: `path` is not a path, `inputs` yields no batch, or a column does not hold
            one value per example.
        SiteNotFoundError, SiteNotFiredError, MetricError: as `capture` raises them, per batch.
        OutputError: a shard or an index cannot be written.
    """
    folder = as_path(path, "the capture folder")
    batches, total = _batches(inputs, batch_size)
    columns_table(columns, len(inputs) if isinstance(inputs, Tensor) else None)
    prepare(folder, overwrite)
    grads = bool(options.get("grads"))
    shards = []
    with progress_bar(total, "capture", progress) as bar:
        for i, batch in enumerate(batches):
            shards.append(
                write_shard(folder, i, capture(model, batch, sites=sites, **options), grads)
            )
            bar.update(1)
    finish(folder, shards, grads, columns)
    return DiskCache(folder)


def load_cache(
    path: str | os.PathLike[str],
    *,
    rows: Sequence[int] | Tensor | np.ndarray | None = None,
    where: pc.Expression | None = None,
    shuffle: int | None = None,
    reader: Reader = "local",
) -> DiskCache:
    """Open a capture written by `capture_to_disk` (or by a sweep), or some of its rows.

    rows: example numbers to keep; where: a pyarrow expression on the row index's columns
    (`pyarrow.compute.field("label") == 1`). Both: the rows that pass both. Kept rows come back
    in the store's order. shuffle: a seed; each pass of `batches()` then visits the shards in a
    new random order drawn from it (a dictionary trained on the cache sees rows of shards from
    all over the store in each stretch; its shuffle buffer mixes them). reader: "ray" reads
    shards on Ray workers, a few ahead of the consumer (`pip install 'circuits-mi[ray]'`).

    For example:

        disk = cc.load_cache("acts/")
        disk["relu2"]                      # every shard concatenated: [rows, channel, h, w]
        disk.grad("relu2")                 # if captured with grads=True
        ones = cc.load_cache("acts/", where=pyarrow.compute.field("label") == 1)
        ones.index.to_pandas()             # the kept rows of index.parquet
        cc.train_dictionary(cc.load_cache("acts/", shuffle=0), 512, site="relu2")

    Raises:
        InputError: `path` is not a path; `rows` are not example numbers of the store, `where`
            is not an expression on its columns, or the selection keeps no row.
        ConfigError: `shuffle` is not a non-negative int, or `reader` is not "local" / "ray"
            (or is "ray" without Ray installed).
        SchemaError: the folder holds no finished capture (no `index.json`), or its indexes or
            shards are not what a capture writes (wrong format, a shard outside the folder,
            indexes that disagree, rows that do not match the tensors).
    """
    folder = as_path(path, "the capture folder")
    return DiskCache(folder, rows=rows, where=where, shuffle=shuffle, reader=reader)


class DiskCache(Mapping[str, Tensor]):
    """Activations stored in shards: `cache[site]` concatenates that site across all shards.

    `batches()` yields one ActivationCache per shard, for passes that must stay within memory;
    `index` is the row index (a pyarrow Table) of the rows kept; `rows` how many there are.
    """

    def __init__(
        self,
        folder: Path,
        *,
        rows: Any = None,
        where: Any = None,
        shuffle: int | None = None,
        reader: Reader = "local",
    ) -> None:
        self.folder = folder
        self._manifest = manifest = read_manifest(folder)
        self._axes = manifest.sites
        self.has_grads: bool = manifest.grads
        self._reader: Reader = check_choice(reader, Reader, "reader")
        if reader == "ray":
            require_ray("reader='ray'")
        check_int(shuffle, "shuffle (a seed)", low=0, allow_none=True)
        self._shuffle, self._passes = shuffle, 0
        self._kept: np.ndarray | None = None
        self._index: pa.Table | None = None  # read on first use without a selection
        self._picks: list[tuple[Path, int, np.ndarray | None]] = [
            (file, n, None) for file, n in manifest.shards
        ]
        if rows is not None or where is not None:
            starts = manifest.starts
            table = read_rows(folder, manifest, where)
            self._kept = _kept(table, rows, folder, int(starts[-1]))
            self._index = table.filter(pc.is_in(table["example"], pa.array(self._kept)))
            parts = np.split(self._kept, np.searchsorted(self._kept, starts[1:-1]))
            self._picks = [
                (file, n, part - start)
                for (file, n), part, start in zip(manifest.shards, parts, starts, strict=False)
                if len(part)
            ]

    def __getitem__(self, name: str) -> Tensor:
        return self._concat(self._check(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._axes)

    def __contains__(self, name: object) -> bool:
        """Whether the capture holds site `name`: read from the index, no shard is opened."""
        return name in self._axes

    def __len__(self) -> int:
        return len(self._axes)

    @property
    def rows(self) -> int:
        """Number of examples kept (all that were captured, without a selection)."""
        return sum(n if at is None else len(at) for _, n, at in self._picks)

    @property
    def index(self) -> pa.Table:
        """The row index of the kept rows: example, shard, offset and the stored columns."""
        if self._index is None:
            self._index = read_rows(self.folder, self._manifest)
        return self._index

    def grad(self, name: str) -> Tensor:
        """The stored gradient at site `name`, concatenated across shards."""
        if not self.has_grads:
            raise InputError(f"{self.folder} holds no gradients; capture with grads=True")
        return self._concat(GRAD_PREFIX + self._check(name))

    def batches(self) -> Iterator[ActivationCache]:
        """One ActivationCache per shard (its kept rows): in order, or in a random order drawn
        anew each pass with `shuffle`; read on Ray workers with reader="ray"."""
        order = list(range(len(self._picks)))
        if self._shuffle is not None:
            gen = torch.Generator().manual_seed(self._shuffle * 1_000_003 + self._passes)
            order = torch.randperm(len(order), generator=gen).tolist()
            self._passes += 1
        calls = [(*self._picks[i], None) for i in order]
        parts = (
            read_ahead(read_shard, calls, READ_AHEAD)
            if self._reader == "ray"
            else (read_shard(*call) for call in calls)
        )
        for (file, *_), tensors in zip(calls, parts, strict=True):
            acts = {k: t for k, t in tensors.items() if not k.startswith(GRAD_PREFIX)}
            unknown = sorted(set(acts) - set(self._axes))
            if unknown:
                raise SchemaError(f"{file} holds site(s) {unknown} that the index does not list")
            grads = {k.removeprefix(GRAD_PREFIX): t for k, t in tensors.items() if k not in acts}
            sites = {n: Site(n, self._axes[n], tuple(t.shape)) for n, t in acts.items()}
            yield ActivationCache(acts, sites, grads=grads if self.has_grads else None)

    def _check(self, name: str) -> str:
        if name not in self._axes:
            raise SiteNotFoundError(f"site {name!r} is not in {self.folder}; {closest(name, self)}")
        return name

    def _concat(self, key: str) -> Tensor:
        return torch.cat([read_shard(file, n, at, [key])[key] for file, n, at in self._picks])


def _kept(table: pa.Table, rows: Any, folder: Path, total: int) -> np.ndarray:
    """The sorted example numbers the row index keeps, cut to `rows` if given."""
    kept = np.unique(table["example"].to_numpy())
    if rows is not None:
        wanted = np.asarray(rows.detach().cpu() if isinstance(rows, Tensor) else rows)
        if wanted.ndim != 1 or not (wanted.size == 0 or np.issubdtype(wanted.dtype, np.integer)):
            raise InputError(f"rows must be example numbers (a 1-D list of ints), got {rows!r}")
        if wanted.size and (wanted.min() < 0 or wanted.max() >= total):
            raise InputError(f"rows must lie in 0..{total - 1} (the store's examples)")
        kept = np.intersect1d(kept, wanted)
    if not len(kept):
        raise InputError(f"the selection keeps no row of {folder}; loosen rows= or where=")
    return kept


def _batches(inputs: Tensor | Iterable[Any], batch_size: int | None) -> tuple[Iterable[Any], Any]:
    """Split a tensor into batches, or pass an iterable of batches through; also its length."""
    if isinstance(inputs, Tensor):
        if batch_size is None:
            raise ConfigError("a tensor input needs batch_size=... (rows per shard)")
        check_int(batch_size, "batch_size")
        parts = inputs.split(batch_size)
        return parts, len(parts)
    if batch_size is not None:
        raise ConfigError("batch_size applies to a tensor input; an iterable is already batched")
    return inputs, (len(inputs) if isinstance(inputs, Sized) else None)
