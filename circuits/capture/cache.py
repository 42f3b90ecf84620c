"""ActivationCache: a read-only mapping from site name to the activation captured there."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType

import pandas as pd
from torch import Tensor

from circuits.errors import InputError, SiteNotFoundError, closest
from circuits.site import Site


class ActivationCache(Mapping[str, Tensor]):
    """Activations (and optionally gradients of a metric) by site name, with each site's axes.

    `cache["blocks.0.attn.hook_z"]` is a tensor; `cache.sites[name].axes` names its axes;
    `cache.grads[name]` is d metric / d activation when captured with `grads=True`.
    """

    def __init__(
        self,
        acts: Mapping[str, Tensor],
        sites: Mapping[str, Site],
        *,
        grads: Mapping[str, Tensor] | None = None,
        metric: float | None = None,
    ) -> None:
        self._acts = dict(acts)
        self.sites: Mapping[str, Site] = MappingProxyType(dict(sites))
        self._grads = None if grads is None else MappingProxyType(dict(grads))
        self.metric = metric

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._acts[name]
        except KeyError:
            raise SiteNotFoundError(
                f"site {name!r} is not in this cache; {closest(name, self._acts)}. "
                "Capture it by adding it to sites=[...]."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    @property
    def grads(self) -> Mapping[str, Tensor]:
        """Gradient of the metric at each site (same shapes as the activations)."""
        if self._grads is None:
            raise InputError("this cache holds no gradients; capture with grads=True and a metric")
        return self._grads

    def to_frame(self) -> pd.DataFrame:
        """One row per site: name, axes, shape, dtype, device, whether a gradient is held."""
        return pd.DataFrame(
            [
                {
                    "site": name,
                    "axes": " ".join(self.sites[name].axes),
                    "shape": tuple(act.shape),
                    "dtype": str(act.dtype).removeprefix("torch."),
                    "device": str(act.device),
                    "grad": self._grads is not None,
                }
                for name, act in self._acts.items()
            ]
        )

    def __repr__(self) -> str:
        grads = ", with grads" if self._grads is not None else ""
        return f"ActivationCache({len(self)} sites{grads}: {list(self._acts)[:4]}...)"
