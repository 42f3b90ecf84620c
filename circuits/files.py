"""Files, in one place: paths confined to their folder, atomic writes, and reads whose every
failure is a SchemaError naming the file and the reason.

Disk caches, graph files and exports all read and write through these, so a hand-edited index
cannot point outside its folder, a truncated or corrupted file never escapes as a parser's own
exception, and a failed write leaves neither a partial file nor a stray temporary one.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from safetensors import SafetensorError, safe_open

from circuits.errors import CircuitsError, ConfigError, InputError, OutputError, SchemaError

PathLike = str | os.PathLike[str]


def as_path(path: Any, what: str = "path") -> Path:
    """`path` as a Path if it is a str or os.PathLike, else InputError."""
    if not isinstance(path, str | os.PathLike) or str(path) == "":
        raise InputError(f"{what} must be a file path (str or pathlib.Path), got {path!r}")
    return Path(path)


def confined(folder: Path, name: Any) -> Path:
    """The file `name` inside `folder`: a plain relative name that resolves (symlinks followed)
    to a path inside the folder, else SchemaError."""
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        raise SchemaError(f"{folder}: a file name in its index must be relative, got {name!r}")
    path = folder / name
    root = folder.resolve()
    if root not in path.resolve().parents:
        raise SchemaError(
            f"{folder}: its index names {name!r}, which lies outside the folder; an index may "
            "only name files inside its own folder (capture again to rewrite it)"
        )
    return path


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON in `path`; SchemaError (naming the file and the reason) on any failure."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:200]
        raise SchemaError(
            f"{str(path)!r} is not a readable {what} (truncated or corrupted?): not valid JSON "
            f"({reason})"
        ) from None


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success move it onto `path`, else delete it.

    The temporary file is created with `open(..., "x")`, so it gets the usual permissions (the
    umask), unlike `tempfile.mkstemp`'s owner-only ones. A failure of the file system is an
    OutputError naming `path` itself, never the temporary file.
    """
    target = as_path(path)
    if not target.parent.is_dir():
        raise ConfigError(f"folder {str(target.parent)!r} does not exist; create it first")
    if target.is_dir():
        raise OutputError(f"{str(target)!r} is a folder; name a file to write")
    if mode not in ("w", "wb"):
        raise ConfigError(f"atomic_open writes with mode 'w' or 'wb', got {mode!r}")
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") if mode == "wb" else open(tmp, "x", encoding="utf-8") as fh:
            yield fh
        os.replace(tmp, target)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"cannot write {str(target)!r}: {err.strerror or err}") from err
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def open_safetensors(file: Path, what: str, fix: str) -> Iterator[Any]:
    """`file` opened with safetensors (no code runs, no pickle); any failure to parse it is a
    SchemaError naming the file, what it should be (`what`) and how to fix it (`fix`)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            yield f
    except CircuitsError:
        raise
    except (SafetensorError, OSError, ValueError) as err:
        raise SchemaError(
            f"{file} is not a readable safetensors {what} ({str(err)[:120]}); {fix}"
        ) from None
