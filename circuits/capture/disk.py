"""Capture a dataset too large for memory, batch by batch, to safetensors shards on disk.

Each batch is captured, written to `shard_NNNNN.safetensors` and dropped, so peak memory is about
one batch. `index.json` is written last (atomically): a folder without it is an interrupted capture
and is refused when read back. `load_cache` gives a mapping whose values concatenate the shards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sized
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from circuits.capture.activations import capture
from circuits.capture.cache import ActivationCache
from circuits.errors import ConfigError, InputError, SchemaError, SiteNotFoundError, closest
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
    """
    folder = Path(path)
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
            save_file(tensors, str(folder / file))
            rows = next(iter(cache.values())).shape[0]
            shards.append({"file": file, "rows": rows})
            axes = {name: list(site.axes) for name, site in cache.sites.items()}
            bar.update(1)
    if not shards:
        raise InputError("inputs yielded no batch; nothing was captured")
    index = {"format": FORMAT, "sites": axes, "shards": shards, "grads": bool(options.get("grads"))}
    tmp = folder / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(folder / "index.json")
    return DiskCache(folder)


def load_cache(path: str | os.PathLike[str]) -> DiskCache:
    """Open a capture written by `capture_to_disk`."""
    return DiskCache(Path(path))


class DiskCache(Mapping[str, Tensor]):
    """Activations stored in shards: `cache[site]` concatenates that site across all shards.

    `batches()` yields one ActivationCache per shard, for passes that must stay within memory.
    """

    def __init__(self, folder: Path) -> None:
        index_file = folder / "index.json"
        if not index_file.exists():
            raise SchemaError(
                f"{folder} has no index.json: not a circuits capture, or one that was interrupted "
                "before it finished; capture it again"
            )
        try:
            index = json.loads(index_file.read_text())
        except json.JSONDecodeError as err:
            raise SchemaError(f"{index_file} is not valid JSON ({err}); capture again") from err
        if index.get("format") != FORMAT:
            raise SchemaError(f"{index_file} has format {index.get('format')!r}, not {FORMAT!r}")
        self.folder = folder
        self._shards: list[dict[str, Any]] = index["shards"]
        self._axes: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in index["sites"].items()}
        self.has_grads: bool = index["grads"]

    def __getitem__(self, name: str) -> Tensor:
        return self._concat(self._check(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._axes)

    def __len__(self) -> int:
        return len(self._axes)

    @property
    def rows(self) -> int:
        """Number of examples captured (the total batch size)."""
        return sum(shard["rows"] for shard in self._shards)

    def grad(self, name: str) -> Tensor:
        """The stored gradient at site `name`, concatenated across shards."""
        if not self.has_grads:
            raise InputError(f"{self.folder} holds no gradients; capture with grads=True")
        return self._concat(GRAD_PREFIX + self._check(name))

    def batches(self) -> Iterator[ActivationCache]:
        """One ActivationCache per shard, in order."""
        for shard in self._shards:
            acts, grads = {}, {}
            with safe_open(str(self.folder / shard["file"]), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    if key.startswith(GRAD_PREFIX):
                        grads[key.removeprefix(GRAD_PREFIX)] = f.get_tensor(key)
                    else:
                        acts[key] = f.get_tensor(key)
            sites = {n: Site(n, self._axes[n], tuple(t.shape)) for n, t in acts.items()}
            yield ActivationCache(acts, sites, grads=grads if self.has_grads else None)

    def _check(self, name: str) -> str:
        if name not in self._axes:
            raise SiteNotFoundError(f"site {name!r} is not in {self.folder}; {closest(name, self)}")
        return name

    def _concat(self, key: str) -> Tensor:
        parts = []
        for shard in self._shards:
            file = self.folder / shard["file"]
            if not file.exists():
                raise SchemaError(f"{file} is missing; the capture in {self.folder} is incomplete")
            with safe_open(str(file), framework="pt") as f:
                parts.append(f.get_tensor(key))
        return torch.cat(parts)


def _batches(inputs: Tensor | Iterable[Any], batch_size: int | None) -> tuple[Iterable[Any], Any]:
    """Split a tensor into batches, or pass an iterable of batches through; also its length."""
    if isinstance(inputs, Tensor):
        if batch_size is None or batch_size < 1:
            raise ConfigError(f"a tensor input needs batch_size >= 1, got {batch_size}")
        parts = inputs.split(batch_size)
        return parts, len(parts)
    if batch_size is not None:
        raise ConfigError("batch_size applies to a tensor input; an iterable is already batched")
    return inputs, (len(inputs) if isinstance(inputs, Sized) else None)
