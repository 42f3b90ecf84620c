"""Sites: named places in a model where an activation can be read or replaced.

A site name is a TransformerLens hook name (`blocks.0.attn.hook_z`) on TransformerLens models, or a
`named_modules()` path (`layer2.0.conv1`) on any module. A module path names the module's output;
append `:input` (`layer2.0.conv1:input`) for its first positional input. Every site has named axes,
so later stages select units by axis name ("head", "channel", "pos") instead of by position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from circuits.adapters import torch_module, transformer_lens
from circuits.errors import InputError, SiteNotFoundError, closest

INPUT_SUFFIX = ":input"


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

    def site(self, act: Tensor) -> Site:
        """The Site describing `act`, the activation seen at this site."""
        axes = self.known_axes(self.name, act.ndim) if self.known_axes else None
        return Site(self.name, axes or torch_module.generic_axes(act.ndim), tuple(act.shape))


def default_site_names(model: nn.Module) -> list[str]:
    """The sites listed when the caller names none: hook points, or every module's output."""
    if transformer_lens.is_transformer_lens(model):
        return transformer_lens.canonical_hook_names(model)
    return list(torch_module.module_table(model))


def resolve(model: nn.Module, names: list[str]) -> list[SiteRef]:
    """The modules behind the sites `names`; an unknown name lists the closest real ones.

    TransformerLens hook names are looked up first, then `named_modules()` paths.
    """
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
        axes = transformer_lens.hook_axes if tl and not is_input else None
        refs.append(SiteRef(name, module, "input" if is_input else "output", axes))
    return refs
