"""The disk store's format in one place: how shards and the two indexes are written and read.

    acts/
      shard_00000.safetensors   one per batch: a tensor per site (and grad/<site>), batch first
      index.parquet             one row per example: example, shard, offset, then your columns
      index.json                written last: format, sites and their axes, grads, shards

`index.json` (the manifest) is what this library trusts for the layout; `index.parquet` (the row
index) is there for everyone else: `pyarrow.dataset`, `datasets.load_dataset("parquet")`, Ray
Data or Spark read it and filter rows by their labels, and `(shard, offset)` says where each
example's tensors are. Each file is written atomically and the manifest last, so a folder
without one is an interrupted capture. A shard is named by its batch number, so workers writing
different batches into one folder never collide and the driver writes both indexes once.

Format 2 ("circuits.disk/2") is written; format 1 (a manifest without a row index) is still
read. Reading trusts nothing: file names must stay inside the folder, and the row index must
put every example where the manifest does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError
from safetensors.torch import save
from torch import Tensor

from circuits.capture.cache import ActivationCache
from circuits.errors import ConfigError, InputError, SchemaError
from circuits.files import atomic_open, confined, open_safetensors, read_json

FORMAT = "circuits.disk/2"
LEGACY = "circuits.disk/1"
GRAD_PREFIX = "grad/"
MANIFEST, ROW_INDEX = "index.json", "index.parquet"
RESERVED = ("example", "shard", "offset")
"""The row index's own columns; your columns take other names."""


@dataclass(frozen=True)
class Shard:
    """One written shard: its file name, its rows (examples) and the axes of each site."""

    file: str
    rows: int
    sites: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class Manifest:
    """What `index.json` says: the format, each site's axes, the shards in order, grads."""

    format: str
    sites: Mapping[str, tuple[str, ...]]
    shards: tuple[tuple[Path, int], ...]
    grads: bool

    @property
    def starts(self) -> np.ndarray:
        """The first example of each shard, and the total at the end."""
        return np.concatenate([[0], np.cumsum([rows for _, rows in self.shards])]).astype(np.int64)


def prepare(folder: Path, overwrite: bool) -> None:
    """Make `folder` ready for a new capture: refuse one that holds a capture unless told to
    overwrite it, and remove its indexes first, so it reads as interrupted until finished."""
    if (folder / MANIFEST).exists() and not overwrite:
        raise ConfigError(f"{folder} already holds a capture; pass overwrite=True to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    for name in (MANIFEST, ROW_INDEX):
        (folder / name).unlink(missing_ok=True)


def write_shard(folder: Path, number: int, cache: ActivationCache, grads: bool) -> Shard:
    """Write one batch's activations (and gradients) as shard `number`, atomically."""
    tensors = {name: t.detach().contiguous() for name, t in cache.items()}
    if grads:
        tensors.update({GRAD_PREFIX + n: g.contiguous() for n, g in cache.grads.items()})
    file = f"shard_{number:05d}.safetensors"
    with atomic_open(folder / file, "wb") as fh:
        fh.write(save(tensors))
    rows = next(iter(cache.values())).shape[0]
    return Shard(file, rows, {name: tuple(site.axes) for name, site in cache.sites.items()})


def columns_table(columns: Any, rows: int | None) -> pa.Table | None:
    """Your per-example columns as an Arrow table, checked: one value per example (`rows`, when
    known yet), each 1-D, none named like the index's own columns."""
    if columns is None:
        return None
    if not isinstance(columns, Mapping | pd.DataFrame):
        raise InputError(
            f"columns must be a mapping of column name -> one value per example (or a pandas "
            f"DataFrame), got {type(columns).__name__}"
        )
    data = {}
    for name, values in columns.items():
        if not isinstance(name, str) or name in RESERVED:
            raise ConfigError(
                f"column name {name!r} is taken or not a str; {RESERVED} are the index's"
            )
        array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
        array = np.asarray(array)
        if array.ndim != 1 or (rows is not None and len(array) != rows):
            raise InputError(
                f"column {name!r} has shape {array.shape}; it needs one value per example "
                f"({rows if rows is not None else 'as many as the inputs have'})"
            )
        data[name] = array
    try:
        return pa.table(data)
    except (pa.ArrowException, ValueError) as err:
        raise InputError(f"columns cannot be stored in Parquet: {str(err)[:200]}") from None


def finish(folder: Path, shards: Sequence[Shard], grads: bool, columns: Any = None) -> None:
    """Write the row index, then the manifest (the commit), and remove shards of an earlier
    capture that this one does not name."""
    if not shards:
        raise InputError("inputs yielded no batch; nothing was captured")
    sites = shards[0].sites
    rows = np.array([s.rows for s in shards], dtype=np.int64)
    extra = columns_table(columns, int(rows.sum()))
    index = _layout([s.file for s in shards], rows)
    for name in extra.column_names if extra is not None else []:
        index = index.append_column(name, extra[name])  # type: ignore[index]
    index = index.replace_schema_metadata({"circuits.format": FORMAT})
    with atomic_open(folder / ROW_INDEX, "wb") as fh:
        pq.write_table(index, fh)
    manifest = {
        "format": FORMAT,
        "sites": {name: list(axes) for name, axes in sites.items()},
        "shards": [{"file": s.file, "rows": s.rows} for s in shards],
        "grads": grads,
    }
    with atomic_open(folder / MANIFEST, "w") as fh:
        fh.write(json.dumps(manifest, indent=1))
    kept = {s.file for s in shards}
    for stale in folder.glob("shard_*.safetensors"):
        if stale.name not in kept:
            stale.unlink()


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the capture in `folder`, every field and shard file checked."""
    file = folder / MANIFEST
    if not file.is_file():
        raise SchemaError(
            f"{folder} has no index.json: not a circuits capture, or one that was interrupted "
            "before it finished; capture it again"
        )
    index = read_json(file, "capture index")
    if not isinstance(index, dict) or index.get("format") not in (FORMAT, LEGACY):
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise SchemaError(f"{file} has format {got!r}, not {FORMAT!r} (or {LEGACY!r})")
    sites = index.get("sites")
    if not isinstance(sites, dict) or not all(
        isinstance(v, list) and all(isinstance(a, str) for a in v) for v in sites.values()
    ):
        raise SchemaError(f"{file}: 'sites' must map each site to its axis names")
    if not isinstance(index.get("grads"), bool):
        raise SchemaError(f"{file}: 'grads' must be true or false")
    shards = index.get("shards")
    if not isinstance(shards, list) or not shards:
        raise SchemaError(f"{file}: 'shards' must be a non-empty list of shards")
    listed = []
    for shard in shards:
        if not isinstance(shard, dict) or not isinstance(shard.get("rows"), int):
            raise SchemaError(f"{file}: each shard needs a 'file' and a number of 'rows'")
        path = confined(folder, shard.get("file"))
        if not path.is_file():
            raise SchemaError(f"{path} is missing; the capture in {folder} is incomplete")
        listed.append((path, int(shard["rows"])))
    if index["format"] == FORMAT and not confined(folder, ROW_INDEX).is_file():
        raise SchemaError(f"{folder} has no {ROW_INDEX}; the capture is incomplete, capture again")
    axes = {k: tuple(v) for k, v in sites.items()}
    return Manifest(index["format"], axes, tuple(listed), index["grads"])


def read_rows(folder: Path, manifest: Manifest, where: Any = None) -> pa.Table:
    """The row index, filtered by `where` (a pyarrow expression on its columns), each row kept
    checked against the manifest; a format-1 capture's is made from its manifest."""
    starts = manifest.starts
    names = [path.name for path, _ in manifest.shards]
    file = folder / ROW_INDEX
    if manifest.format == LEGACY:
        table = _layout(names, np.diff(starts))
    else:
        try:
            table = pq.read_table(confined(folder, ROW_INDEX))
        except (pa.ArrowException, OSError) as err:
            raise SchemaError(f"{file} is not a readable row index ({str(err)[:200]})") from None
    if where is not None:
        try:
            table = table.filter(where)
        except (pa.ArrowException, TypeError) as err:
            raise InputError(
                f"where= must be a pyarrow expression on the index's columns "
                f"{table.column_names} (pyarrow.compute.field('label') == 1); {str(err)[:200]}"
            ) from None
    _check_rows(folder, file, table, names, starts)
    return table


def _layout(names: Sequence[str], rows: np.ndarray) -> pa.Table:
    """The row index's example, shard and offset columns for shards `names` of `rows` rows."""
    starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    shard = np.repeat(np.arange(len(names), dtype=np.int32), rows)
    return pa.table(
        {
            "example": np.arange(starts[-1], dtype=np.int64),
            "shard": pa.DictionaryArray.from_arrays(shard, list(names)),
            "offset": np.arange(starts[-1], dtype=np.int64) - starts[shard],
        }
    )


def read_shard(
    file: Path, rows: int, at: np.ndarray | None, keys: Sequence[str] | None
) -> dict[str, Tensor]:
    """The tensors `keys` (None: all) of one shard, rows `at` (None: all), each checked against
    the rows the index claims; only the span of rows asked for is read."""
    with open_safetensors(file, "shard", "capture again") as f:
        names = list(f.keys())
        for key in keys or []:
            if key not in names:
                raise SchemaError(f"{file} holds no {key!r}; the capture is incomplete")
        return {key: _rows(f, key, file, rows, at) for key in keys or names}


def _rows(f: Any, key: str, file: Path, rows: int, at: np.ndarray | None) -> Tensor:
    """Rows `at` of one tensor of an open shard, after checking it has `rows` rows."""
    try:
        part = f.get_slice(key)
        shape = part.get_shape()
        if shape and shape[0] == rows:
            if at is None:
                return f.get_tensor(key)  # type: ignore[no-any-return]
            lo, hi = int(at[0]), int(at[-1]) + 1
            t: Tensor = part[lo:hi]
            return t if hi - lo == len(at) else t[torch.from_numpy(at - lo)]
    except (SafetensorError, ValueError) as err:
        raise SchemaError(f"{file}: cannot read {key!r} ({str(err)[:120]})") from None
    raise SchemaError(
        f"{file}: {key!r} has {shape[0] if shape else 0} rows, its index claims {rows}; the "
        "index does not describe the shards, capture again"
    )


def _check_rows(
    folder: Path, file: Path, table: pa.Table, names: list[str], starts: np.ndarray
) -> None:
    """Every row must name a shard inside the folder that the manifest lists, and put its
    example at the shard and offset where the manifest puts it."""
    for column in RESERVED:
        kind = table.schema.field(column).type if column in table.column_names else None
        if (
            kind is None
            or table[column].null_count
            or not (column == "shard" or pa.types.is_integer(kind))
        ):
            what = "shard file names" if column == "shard" else "integers"
            raise SchemaError(f"{file} needs a column {column!r} of {what}; capture again")
    shard = pc.cast(table["shard"], pa.string())
    ids = pc.index_in(shard, value_set=pa.array(names))
    unknown = pc.filter(shard, pc.is_null(ids)).to_pylist()
    if unknown:
        confined(folder, unknown[0])  # a name outside the folder says so; else it is unlisted
        raise SchemaError(f"{file} names the shard {unknown[0]!r}, which index.json does not list")
    example = table["example"].to_numpy().astype(np.int64)
    offset = table["offset"].to_numpy().astype(np.int64)
    if len(example) and (example.min() < 0 or example.max() >= starts[-1]):
        raise SchemaError(f"{file} names examples outside 0..{starts[-1] - 1}; capture again")
    at = np.searchsorted(starts, example, side="right") - 1
    wrong = np.flatnonzero((at != ids.to_numpy()) | (example - starts[at] != offset))
    if len(wrong):
        i = wrong[0]
        raise SchemaError(
            f"{file}: row {i} puts example {example[i]} at {shard[i]} offset {offset[i]}, while "
            f"index.json puts it at {names[at[i]]!r} offset {example[i] - starts[at[i]]}; the "
            "indexes disagree, capture again"
        )
