"""Sites: named places in a model where an activation can be read or replaced.

A site name is a TransformerLens hook name (`blocks.0.attn.hook_z`) on TransformerLens models, or a
`named_modules()` path (`layer2.0.conv1`) on any module. A module path names the module's output;
append `:input` (`layer2.0.conv1:input`) for its first positional input. Every site has named axes,
so later stages select units by axis name ("head", "channel", "pos") instead of by position.

A pattern with `{L}` (`blocks.{L}.attn.hook_z`) stands for one site per layer (`expand_sites`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from circuits.adapters import torch_module, transformer_lens
from circuits.checks import check_module
from circuits.errors import ConfigError, InputError, ModelError, SiteNotFoundError, closest
from circuits.ids import layer_of

INPUT_SUFFIX = ":input"
LAYER = "{L}"

__all__ = ["INPUT_SUFFIX", "LAYER", "Site", "SiteRef", "expand_sites", "layer_of", "resolve"]


@dataclass(frozen=True)
class Site:
    """A site as observed in a forward pass: its name, axis names and activation shape."""

    name: str
    axes: tuple[str, ...]
    shape: tuple[int, ...]

    def axis(self, name: str) -> int:
        """Index of the axis called `name`; an absent axis raises InputError naming the others."""
        if name not in self.axes:
            raise InputError(
                f"site {self.name!r} has axes {self.axes}, not {name!r}; "
                f"pick one of {', '.join(self.axes)}"
            )
        return self.axes.index(name)


@dataclass(frozen=True)
class SiteRef:
    """A resolved site: the module to hook, whether its output or input is meant, and how to
    name the axes of its activation (a TransformerLens table, else names by rank)."""

    name: str
    module: nn.Module
    io: Literal["output", "input"]
    known_axes: Callable[[str, int], tuple[str, ...] | None] | None = None
    hook_point: bool = False

    @property
    def shared(self) -> bool:
        """Whether later ops may modify this activation in place (so a kept one is a copy).

        TransformerLens hook points hand on a tensor nothing modifies in place; an arbitrary
        module's output may be (ReLU(inplace=True), `out += identity` in residual blocks).
        """
        return not self.hook_point

    def site(self, act: Tensor) -> Site:
        """The Site describing `act`, the activation seen at this site."""
        axes = self.known_axes(self.name, act.ndim) if self.known_axes else None
        return Site(self.name, axes or torch_module.generic_axes(act.ndim), tuple(act.shape))


def default_site_names(model: nn.Module) -> list[str]:
    """The sites listed when the caller names none: hook points, or every module's output."""
    check_module(model)
    if transformer_lens.is_transformer_lens(model):
        return transformer_lens.canonical_hook_names(model)
    return list(torch_module.module_table(model))


def resolve(model: nn.Module, names: list[str]) -> list[SiteRef]:
    """The modules behind the sites `names`; an unknown name lists the closest real ones.

    TransformerLens hook names are looked up first, then `named_modules()` paths.
    """
    check_module(model)
    tl = transformer_lens.is_transformer_lens(model)
    hooks = transformer_lens.hook_table(model) if tl else {}
    modules: dict[str, nn.Module] | None = None
    refs = []
    for name in names:
        if not isinstance(name, str):
            raise SiteNotFoundError(f"a site name must be a string, got {type(name).__name__}")
        is_input = name.endswith(INPUT_SUFFIX)
        base = name.removesuffix(INPUT_SUFFIX)
        module = hooks.get(base)
        if module is None:
            modules = torch_module.module_table(model) if modules is None else modules
            module = modules.get(base)
        if module is None:
            known = list(hooks) or list(modules or {})
            raise SiteNotFoundError(
                f"no site {name!r} on {type(model).__name__}; {closest(base, known)}. "
                "List them all with cc.sites(model, example_input)."
            )
        point = tl and not is_input and base in hooks
        axes = transformer_lens.hook_axes if point else None
        refs.append(SiteRef(name, module, "input" if is_input else "output", axes, point))
    return refs


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
