"""Option types every stage shares, their checks, and how a config meets keyword options.

`Direction` and `Ablation` are the words patching, attribution and faithfulness all use, defined
once here. `configure` is how a public function takes its config dataclass as well as (or instead
of) keywords: `fit_probe(acts, labels, ProbeConfig(C=0.5))`, `fit_probe(acts, labels, C=0.5)` and
`fit_probe(acts, labels, ProbeConfig(C=0.5), seed=1)` all work, and a keyword the config does not
have is a ConfigError that lists the ones it has.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args

from circuits.errors import ConfigError

Direction = Literal["noise", "denoise"]
""""noise": run clean, patch in corrupted values; "denoise": run corrupted, patch in clean."""

Ablation = Literal["patch", "zero", "mean", "resample"]
"""What an ablated unit or edge carries: the corrupted run's value ("patch"), zero, its mean
over a reference batch, or its value on another example of the reference batch ("resample")."""

C = TypeVar("C")
T = TypeVar("T")


def runs(direction: Direction, clean: T, corrupt: T) -> tuple[T, T]:
    """(base, source): the run that is patched, and the run the patched values come from.

    Its own inverse: `runs(direction, base, source)` gives back (clean, corrupt).
    """
    return (clean, corrupt) if direction == "noise" else (corrupt, clean)


def check_choice(value: Any, choices: Any, what: str) -> Any:
    """`value` if it is one of `choices` (a Literal type or a tuple), else ConfigError."""
    allowed = get_args(choices) or tuple(choices)
    if not isinstance(value, str | None) or value not in allowed:
        raise ConfigError(f"{what} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def configure(
    cls: type[C],
    config: C | None,
    options: Mapping[str, Any],
    *,
    what: str | None = None,
) -> C:
    """`config` (or the defaults of `cls`) with `options` replacing its fields, validated.

    what: the name used in errors (default: the class name). Init-only names (an old spelling
    kept for one release) are accepted as the class accepts them.
    """
    if config is not None and not isinstance(config, cls):
        raise ConfigError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    given = dict(options)
    names = set(inspect.signature(cls).parameters)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(given) - names)
    if unknown:
        raise ConfigError(
            f"unknown {what or cls.__name__} option(s) {unknown}; it takes {sorted(fields)}"
        )
    if config is None:
        return cls(**given)
    return dataclasses.replace(config, **given)  # type: ignore[type-var]


def warn_renamed(old: str, new: str) -> None:
    """A DeprecationWarning for a name that changed (kept as an alias for one release)."""
    warnings.warn(
        f"{old!r} is now {new!r}; the old name goes in the next release",
        DeprecationWarning,
        stacklevel=4,
    )
