"""Plumbing shared by the analyses that sweep over many sites and variants (patching, attribution).

Site patterns (`blocks.{L}.attn.hook_z`, one site per layer), chunks of variants per forward pass,
progress bars and metric names. It sits below both analyses, which do not import each other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from circuits.errors import ConfigError, ModelError

LAYER = "{L}"


def expand_sites(model: nn.Module, site: str | Sequence[str]) -> tuple[list[str], str | None, list]:
    """The site names, the name of the leading result axis (None for one site) and its labels.

    A name with `{L}` stands for one site per layer (axis "layer"); a list gives axis "site".
    """
    if isinstance(site, str):
        if LAYER not in site:
            return [site], None, []
        layers = list(range(model_config(model, "n_layers")))
        return [site.replace(LAYER, str(layer)) for layer in layers], "layer", layers
    names = list(site)
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"site must be a name, a {{L}} pattern or a list of names, got {site!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"site lists a name twice: {names}")
    if any(LAYER in n for n in names):
        raise ConfigError("a {L} pattern stands for a list by itself; do not put it in a list")
    return names, "site", names


def model_config(model: nn.Module, key: str) -> int:
    """An integer of a TransformerLens model's cfg (n_layers, n_heads); other models refuse."""
    value = getattr(getattr(model, "cfg", None), key, None)
    if not isinstance(value, int):
        raise ModelError(
            f"this needs a TransformerLens model (cfg.{key}); for other models list the sites "
            "by name"
        )
    return value


def layer_of(name: str) -> int | None:
    """The block a TransformerLens site lives in (`blocks.3.attn.hook_z` -> 3), else None."""
    found = re.match(r"blocks\.(\d+)\.", name)
    return int(found.group(1)) if found else None


def chunks(n: int, k: int) -> Iterator[range]:
    """Consecutive ranges of at most k of n variants."""
    for lo in range(0, n, k):
        yield range(lo, min(n, lo + k))


def progress_bar(total: int, desc: str, show: bool | None, *, unit: str = "it") -> tqdm:
    """A tqdm bar over `total` steps; show=None shows it only on a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, disable=None if show is None else not show)


def metric_name(metric: Callable[..., Any]) -> str:
    """A metric's name for provenance: its `name` attribute, else its function name."""
    return str(getattr(metric, "name", getattr(metric, "__name__", "metric")))
