"""Each attribution method's options, in one place: a frozen dataclass per method.

    cc.attribute(model, clean, corrupt, metric, method="eap-ig", steps=10)
    cc.attribute(model, clean, corrupt, metric, method=EAPIG(steps=10))     # the same call

`attribute` reads `method` (a name or one of these configs) and keyword options into the config;
an option the method does not have is a ConfigError listing the ones it has. Defaults live here
and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from circuits.capture import Baseline
from circuits.checks import check_int
from circuits.errors import ConfigError
from circuits.features import FeatureBasis, check_basis
from circuits.options import Direction, check_choice
from circuits.units import UnitSpec

from .common import IGPath, Rule

Method = Literal[
    "attribution_patching",
    "integrated_gradients",
    "eap",
    "eap-ig",
    "edge_patching",
    "direct_effects",
]
"""The name of an attribution method, as `attribute(..., method=...)` takes it; each names one
config class here (`METHODS`): `attribute(..., method="eap-ig")` is `method=EAPIG()`."""
EdgeMethod = Literal["eap", "eap-ig", "edge_patching"]
"""The methods that score every edge of the model's graph ([source, target] results), as
`edge_attribution(..., method=...)` takes them."""


def check_direction(direction: Direction, baseline: Baseline) -> None:
    """A direction word, and "denoise" only with the corrupted run's values (it patches the clean
    values into the corrupted run; zero, mean and resample ablate the clean run)."""
    check_choice(direction, Direction, "direction")
    if direction == "denoise" and baseline.ablation not in (None, "patch"):
        raise ConfigError(
            f"ablation={baseline.ablation!r} ablates the clean run (direction='noise'); "
            "direction='denoise' patches clean values into the corrupted run: use one of the two"
        )


@dataclass(frozen=True, kw_only=True)
class AttributionPatching(Baseline):
    """First-order estimate of patching each unit of `site`: (patched - current) . gradient.

    site: a name, a list, or a `{L}` pattern ("blocks.{L}.attn.hook_z"); None: the input
        (a float tensor) or, on a TransformerLens model, the token embeddings (hook_embed).
    unit: the axes a unit spans (`circuits.units`: ("head",), ("pos", "head"), ("channel",),
        {"head": [3]}); None the whole site, "all" every element.
    direction: "noise" (run clean, gradient at clean, ablated - clean) or "denoise".
    ablation, reference, seed: what a unit's patched value is (`circuits.capture.Baseline`:
        "patch" the corrupted run's value, "zero", "mean", "resample").
    basis: score each feature of a feature basis at its site (UnitBasis, DirectionBasis, a
        dictionary's latents) and its error term (act - decode(encode(act))) as one more node:
        (patched - current coefficient) . the gradient pulled back through decode; "zero" sets
        coefficients and error to 0, "mean" is each coefficient's mean. The scores (axis
        "feature": the features, then "error") add up to the site's. unit then names further
        axes to keep ("pos": each feature at each position).
    """

    name: ClassVar[str] = "attribution_patching"
    site: str | Sequence[str] | None = None
    unit: UnitSpec = None
    direction: Direction = "noise"
    basis: FeatureBasis | None = None

    def __post_init__(self) -> None:
        Baseline.__post_init__(self)
        check_direction(self.direction, self)
        if self.basis is not None:
            check_basis(self.basis, _one(self.site), self.name)


@dataclass(frozen=True, kw_only=True)
class PathOptions:
    """The integration path of a path method: `steps` points placed by `rule` (`IGPath`; rule
    names are Captum's), `max_batch` rows per forward pass (path points x batch), a progress
    bar."""

    steps: int = 32
    rule: Rule = "gausslegendre"
    max_batch: int | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        IGPath(self.steps, self.rule)
        check_int(self.max_batch, "max_batch", allow_none=True)

    @property
    def path(self) -> IGPath:
        return IGPath(self.steps, self.rule)


@dataclass(frozen=True, kw_only=True)
class IntegratedGradients(PathOptions, Baseline):
    """Integrated gradients of the metric on the input or one site, against a baseline: the
    corrupted input (or zeros when there is none), or the ablated value (`ablation=`):
    Captum's IntegratedGradients and LayerIntegratedGradients.

    site: None for the input (a float tensor; token embeddings `hook_embed` on a TransformerLens
        model), or one site name (layer integrated gradients; completeness holds per site).
    unit: as for attribution patching; None sums everything, "all" keeps Captum's shape.
    steps (32), rule, max_batch, progress: `PathOptions`. ablation, reference, seed: the
        baseline (`circuits.capture.Baseline`; default the corrupted input, zeros without one).
    basis: integrate over a feature basis's coefficients and its error term instead (the path
        is straight in those coordinates; as for attribution patching, the baseline's
        coefficients and error are the reference's, zeros without one), so the features plus
        the error node add up to m(clean) - m(baseline).
    """

    name: ClassVar[str] = "integrated_gradients"
    site: str | None = None
    unit: UnitSpec = None
    basis: FeatureBasis | None = None

    def __post_init__(self) -> None:
        PathOptions.__post_init__(self)
        Baseline.__post_init__(self)
        if self.basis is not None:
            check_basis(self.basis, _one(self.site), self.name)
        if self.site is not None and not isinstance(self.site, str):
            raise ConfigError(
                "integrated_gradients attributes one site at a time (completeness holds per "
                f"site); got {self.site!r}: call it once per site, or use attribution_patching "
                "for a sweep"
            )


@dataclass(frozen=True, kw_only=True)
class EAP(Baseline):
    """Edge attribution patching (Syed et al. 2023): every edge of the model's graph in one
    backward pass. TransformerLens models: embeddings, heads, MLPs, logits; conv nets: channels
    of the conv layers named in `layers` (default every conv), skips included.

    direction: "noise" (default; the gradient at the clean run) or "denoise".
    ablation, reference, seed: what an ablated sender carries (`circuits.capture.Baseline`); a
        sender's difference is (ablated - clean), "patch" (the corrupted run) by default.
    """

    name: ClassVar[str] = "eap"
    direction: Direction = "noise"
    layers: Sequence[str] | None = None

    def __post_init__(self) -> None:
        Baseline.__post_init__(self)
        check_direction(self.direction, self)


@dataclass(frozen=True, kw_only=True)
class EAPIG(PathOptions, EAP):
    """EAP-IG (Hanna et al. 2024): edge scores with the receivers' gradients integrated along the
    path between the runs; the input's edges add up to the metric difference.

    direction, layers, ablation, reference, seed: as for EAP (the path runs from the ablated
    to the clean input). steps (5), rule, max_batch, progress: `PathOptions` (Hanna et al.'s
    recipe is rule="riemann_left"; Gauss-Legendre needs fewer steps).
    """

    name: ClassVar[str] = "eap-ig"
    steps: int = 5

    def __post_init__(self) -> None:
        PathOptions.__post_init__(self)
        EAP.__post_init__(self)


@dataclass(frozen=True, kw_only=True)
class EdgePatching(Baseline):
    """Exact edge patching: every edge of the graph EAP scores (same edge keys: a head's query,
    key and value inputs apart; conv channel edges across residual connections too), scored as
    m(that edge alone ablated, every other edge kept) - m(clean), by real interventions batched
    along the batch axis.

    ablation, reference, seed: what the ablated edge carries (`circuits.capture.Baseline`).
    layers: conv layers, as for EAP. max_batch: rows per forward pass (variants x batch; None:
        a memory budget picks it). progress: a tqdm bar over the edges.
    """

    name: ClassVar[str] = "edge_patching"
    layers: Sequence[str] | None = None
    max_batch: int | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        Baseline.__post_init__(self)
        check_int(self.max_batch, "max_batch", allow_none=True)


@dataclass(frozen=True, kw_only=True)
class DirectEffects:
    """Feature-to-feature direct effects in the linearised model, on one input (corrupt and
    metric are None).

    source, target: feature bases whose `site` names where they live (UnitBasis, DirectionBasis,
        e.g. a probe's directions, a dictionary's latents); the target must lie after the
        source. A source's offset decode(0) (a dictionary's b_dec) counts in `rest`; a target's
        encoder is linearised at the clean run (`circuits.attribution.direct`).
    target_pos: positions of the target read (None: all).
    freeze: sites held at their clean values; None: a TransformerLens model's hook_q, hook_k,
        hook_scale and mlp.hook_post everywhere. Other models must name them.
    progress: a tqdm bar over the target features.
    """

    name: ClassVar[str] = "direct_effects"
    source: FeatureBasis | None = None
    target: FeatureBasis | None = None
    target_pos: Any = None
    freeze: Sequence[str] | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.source is None or self.target is None:
            raise ConfigError("direct_effects needs source=... and target=... feature bases")


def _one(site: Any) -> str | None:
    """A site a basis method was given: one name, or None (the basis names it)."""
    if site is None or isinstance(site, str):
        return site
    raise ConfigError(f"with basis=, the site is the basis's; got site={site!r}: omit site=")


MethodConfig = (
    AttributionPatching | IntegratedGradients | EAP | EAPIG | EdgePatching | DirectEffects
)
"""Any method's config: what `attribute(..., method=...)` takes in place of a name, with its
options set (`EAPIG(steps=10, rule="riemann_left")`); keyword options given to `attribute` then
replace its fields."""
METHODS: dict[str, type] = {
    cls.name: cls
    for cls in (AttributionPatching, IntegratedGradients, EAP, EAPIG, EdgePatching, DirectEffects)
}
