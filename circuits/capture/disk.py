"""Capture a dataset too large for memory, batch by batch, to safetensors shards on disk.

Each batch is captured, written to `shard_NNNNN.safetensors` (atomically) and dropped, so peak
memory is about one batch. `index.json` is written last (atomically): a folder without it is an
interrupted capture and is refused when read back; shards of an earlier capture that the new
index does not name are removed. `load_cache` gives a mapping whose values concatenate the
shards. Reading trusts nothing in the folder: the index must name shards inside it (no `..`,
absolute paths or symlinks out), each shard must be a readable safetensors file, and the rows
the index claims must be the rows the tensors have; anything else is a SchemaError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sized
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save
from torch import Tensor, nn

from circuits.capture.activations import capture
from circuits.capture.cache import ActivationCache
from circuits.checks import check_int
from circuits.errors import (
    ConfigError,
    InputError,
    SchemaError,
    SiteNotFoundError,
    closest,
)
from circuits.files import as_path, atomic_open, confined, open_safetensors, read_json
from circuits.loops import progress_bar
from circuits.site import Site

FORMAT = "circuits.disk/1"
GRAD_PREFIX = "grad/"


def capture_to_disk(
    model: nn.Module,
    inputs: Tensor | Iterable[Any],
    path: str | os.PathLike[str],
    *,
    sites: str | list[str] | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    **options: Any,
) -> DiskCache:
    """Capture `sites` over many batches into the folder `path`; returns the DiskCache.

    inputs: a tensor split into batches of `batch_size` along dim 0, or any iterable of batches
    (a DataLoader of inputs, say). Other keywords (grads, metric, positions, spatial, dtype, ...)
    go to `cc.capture` for each batch.

    Shapes: `cache[site]` is `[total rows, ...]`, the site's axes with every batch concatenated;
    each shard holds one batch. The folder's files are described in the docs' "Disk cache" page.

    For example:

        disk = cc.capture_to_disk(cnn, images, "acts/", sites=["relu2"], batch_size=16)
        disk["relu2"].shape                                   # (len(images), 3, 16, 16)
        for part in disk.batches(): ...                       # one ActivationCache per shard

    Raises:
        ConfigError: the folder already holds a capture and `overwrite` is False, or
            `batch_size` is missing (or not a positive int) for a tensor, or given for batches.
        InputError: `path` is not a path, or `inputs` yields no batch.
        SiteNotFoundError, SiteNotFiredError, MetricError: as `capture` raises them, per batch.
        OutputError: a shard or the index cannot be written.
    """
    folder = as_path(path, "the capture folder")
    if (folder / "index.json").exists() and not overwrite:
        raise ConfigError(f"{folder} already holds a capture; pass overwrite=True to replace it")
    batches, total = _batches(inputs, batch_size)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.json").unlink(missing_ok=True)
    shards: list[dict[str, Any]] = []
    axes: dict[str, list[str]] = {}
    with progress_bar(total, "capture", progress) as bar:
        for i, batch in enumerate(batches):
            cache = capture(model, batch, sites=sites, **options)
            tensors = {name: t.detach().contiguous() for name, t in cache.items()}
            if options.get("grads"):
                tensors.update({GRAD_PREFIX + n: g.contiguous() for n, g in cache.grads.items()})
            file = f"shard_{i:05d}.safetensors"
            with atomic_open(folder / file, "wb") as fh:
                fh.write(save(tensors))
            rows = next(iter(cache.values())).shape[0]
            shards.append({"file": file, "rows": rows})
            axes = {name: list(site.axes) for name, site in cache.sites.items()}
            bar.update(1)
    if not shards:
        raise InputError("inputs yielded no batch; nothing was captured")
    index = {"format": FORMAT, "sites": axes, "shards": shards, "grads": bool(options.get("grads"))}
    with atomic_open(folder / "index.json", "w") as fh:
        fh.write(json.dumps(index, indent=1))
    kept = {shard["file"] for shard in shards}
    for stale in folder.glob("shard_*.safetensors"):  # an earlier, longer capture's shards
        if stale.name not in kept:
            stale.unlink()
    return DiskCache(folder)


def load_cache(path: str | os.PathLike[str]) -> DiskCache:
    """Open a capture written by `capture_to_disk`.

    For example:

        disk = cc.load_cache("acts/")
        disk["relu2"]                      # every shard concatenated: [rows, channel, h, w]
        disk.grad("relu2")                 # if captured with grads=True

    Raises:
        InputError: `path` is not a path.
        SchemaError: the folder holds no finished capture (no `index.json`), or its index or
            shards are not what a capture writes (wrong format, a shard outside the folder, rows
            that do not match the tensors).
    """
    return DiskCache(as_path(path, "the capture folder"))


class DiskCache(Mapping[str, Tensor]):
    """Activations stored in shards: `cache[site]` concatenates that site across all shards.

    `batches()` yields one ActivationCache per shard, for passes that must stay within memory.
    """

    def __init__(self, folder: Path) -> None:
        index_file = folder / "index.json"
        if not index_file.is_file():
            raise SchemaError(
                f"{folder} has no index.json: not a circuits capture, or one that was interrupted "
                "before it finished; capture it again"
            )
        index = read_json(index_file, "capture index")
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            got = index.get("format") if isinstance(index, dict) else type(index).__name__
            raise SchemaError(f"{index_file} has format {got!r}, not {FORMAT!r}")
        self.folder = folder
        self._shards = _shard_list(folder, index_file, index.get("shards"))
        sites = index.get("sites")
        if not isinstance(sites, dict) or not all(
            isinstance(v, list) and all(isinstance(a, str) for a in v) for v in sites.values()
        ):
            raise SchemaError(f"{index_file}: 'sites' must map each site to its axis names")
        self._axes: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in sites.items()}
        if not isinstance(index.get("grads"), bool):
            raise SchemaError(f"{index_file}: 'grads' must be true or false")
        self.has_grads: bool = index["grads"]

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
        """Number of examples captured (the total batch size)."""
        return sum(rows for _, rows in self._shards)

    def grad(self, name: str) -> Tensor:
        """The stored gradient at site `name`, concatenated across shards."""
        if not self.has_grads:
            raise InputError(f"{self.folder} holds no gradients; capture with grads=True")
        return self._concat(GRAD_PREFIX + self._check(name))

    def batches(self) -> Iterator[ActivationCache]:
        """One ActivationCache per shard, in order."""
        for file, rows in self._shards:
            acts, grads = {}, {}
            with _open(file) as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    t = _tensor(f, key, file, rows)
                    if key.startswith(GRAD_PREFIX):
                        grads[key.removeprefix(GRAD_PREFIX)] = t
                    else:
                        acts[key] = t
            unknown = sorted(set(acts) - set(self._axes))
            if unknown:
                raise SchemaError(f"{file} holds site(s) {unknown} that the index does not list")
            sites = {n: Site(n, self._axes[n], tuple(t.shape)) for n, t in acts.items()}
            yield ActivationCache(acts, sites, grads=grads if self.has_grads else None)

    def _check(self, name: str) -> str:
        if name not in self._axes:
            raise SiteNotFoundError(f"site {name!r} is not in {self.folder}; {closest(name, self)}")
        return name

    def _concat(self, key: str) -> Tensor:
        parts = []
        for file, rows in self._shards:
            with _open(file) as f:
                if key not in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    raise SchemaError(f"{file} holds no {key!r}; the capture is incomplete")
                parts.append(_tensor(f, key, file, rows))
        return torch.cat(parts)


def _shard_list(folder: Path, index_file: Path, shards: Any) -> list[tuple[Path, int]]:
    """(file, rows) of every shard the index lists, each file confined to the folder."""
    if not isinstance(shards, list) or not shards:
        raise SchemaError(f"{index_file}: 'shards' must be a non-empty list of shards")
    out = []
    for shard in shards:
        if not isinstance(shard, dict) or not isinstance(shard.get("rows"), int):
            raise SchemaError(f"{index_file}: each shard needs a 'file' and a number of 'rows'")
        file = confined(folder, shard.get("file"))
        if not file.is_file():
            raise SchemaError(f"{file} is missing; the capture in {folder} is incomplete")
        out.append((file, int(shard["rows"])))
    return out


def _open(file: Path) -> Any:
    """`file` opened as safetensors; any failure to parse it is a SchemaError naming it."""
    return open_safetensors(file, "shard", "capture again")


def _tensor(f: Any, key: str, file: Path, rows: int) -> Tensor:
    """One tensor of a shard, checked against the rows the index claims for it."""
    try:
        t: Tensor = f.get_tensor(key)
    except (SafetensorError, ValueError) as err:
        raise SchemaError(f"{file}: cannot read {key!r} ({str(err)[:120]})") from None
    if t.ndim == 0 or t.shape[0] != rows:
        raise SchemaError(
            f"{file}: {key!r} has {t.shape[0] if t.ndim else 0} rows, its index claims {rows}; "
            "the index does not describe the shards, capture again"
        )
    return t


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
