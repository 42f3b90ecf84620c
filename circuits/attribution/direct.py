"""Feature-to-feature direct effects in a linearised model (as in the circuit-tracing work).

Freeze what makes a transformer nonlinear at its clean values: attention patterns (by holding
hook_q and hook_k, the only things a pattern is computed from; this works on every
transformer-lens line, where an edit of hook_pattern is discarded on some), LayerNorm scales
(hook_scale) and MLP activations (mlp.hook_post, so no gradient crosses an MLP). What is left is
affine in the source site s: a target feature's activation is t_j = sum_s' J_j . s' + rest_j.

With a feature basis at the source (s = decode(encode(s)) + error), the direct effect of source
feature i on target feature j is the part of J_j . s carried by feature i's decoded vector:

    DE[i, j] = < J_j , decode(coefficients of feature i only) >      (summed over batch, positions)

plus an error row < J_j , s - decode(encode(s)) > (what the basis does not explain), and `rest_j`
(everything not coming from the source's features or error: embeddings along other paths, biases,
frozen MLPs, and the source basis's own offset decode(0), a dictionary's b_dec). The three add up
to t_j exactly in an affine model; `completeness_gap` measures it with a second, real run where
the source is set to decode(0) (zero for unit and direction bases), so a nonlinearity left
unfrozen shows up as a gap.

A target feature's activation is its coefficient summed over every other axis (batch, positions,
or only `target_pos`); a source feature's effect sums over all its positions. The target basis's
encoder is linearised at the clean run like every other nonlinearity (a dictionary's ReLU, TopK or
JumpReLU gates held where they are): exact for unit and direction bases, whose encode is linear.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from circuits.adapters.transformer_lens import hook_axes, hook_table, is_transformer_lens
from circuits.capture import Index, select
from circuits.errors import ConfigError
from circuits.features import FeatureBasis
from circuits.hooks import run
from circuits.ids import NodeId, node_row
from circuits.loops import progress_bar
from circuits.site import Site

from .common import feature_kind, feature_node
from .methods import DirectEffects
from .result import AttributionResult

log = logging.getLogger(__name__)

LINEARITY_TOLERANCE = 1e-3
NONLINEAR = ("hook_q", "hook_k", "hook_pattern", "hook_attn_scores", "hook_scale", "hook_rot_q",
             "hook_rot_k")  # fmt: skip


def score_direct(model: nn.Module, inputs: Any, cfg: DirectEffects) -> AttributionResult:
    """Direct effects of each source feature on each target feature in the linearised model.

    Returns scores [source feature (+ error), target feature] with `extras["rest"]`.
    """
    src_basis, src_site = _basis(cfg.source, "source")
    tgt_basis, tgt_site = _basis(cfg.target, "target")
    if src_site == tgt_site:
        raise ConfigError(
            f"source and target are both at {src_site!r}; a site has no direct effect on itself"
        )
    frozen = _frozen(model, cfg.freeze)
    if src_site.rsplit(".", 1)[-1] in NONLINEAR:
        raise ConfigError(
            f"the source {src_site!r} only acts through attention patterns or normalisation "
            "scales, which the linearised model freezes; pick hook_z, hook_v, a residual or an "
            "MLP site"
        )
    if tgt_site in frozen:
        raise ConfigError(
            f"the target {tgt_site!r} is frozen in the linearised model; read a site before the "
            "nonlinearity (mlp.hook_pre for MLP neurons)"
        )
    with python_norms(model):
        return _direct_effects(
            model, inputs, src_basis, tgt_basis, frozen, cfg.target_pos, cfg.progress
        )


def _direct_effects(
    model: nn.Module, inputs: Any, src_basis: FeatureBasis, tgt_basis: FeatureBasis,
    frozen: list[str], target_pos: Index | None, progress: bool | None,
) -> AttributionResult:  # fmt: skip
    src_site, tgt_site = str(src_basis.site), str(tgt_basis.site)
    leaf: dict[str, Tensor] = {}

    def read_source(act: Tensor, site: Site) -> Tensor:
        leaf["s"] = act.detach().requires_grad_(True)
        return leaf["s"]

    ran = run(model, inputs, freeze=frozen, replace={src_site: read_source}, record=[tgt_site],
              grad=True)  # fmt: skip
    s, site = leaf["s"], ran.sites[tgt_site]
    with torch.enable_grad():
        t = _activation(tgt_basis, ran.recorded[tgt_site], site, target_pos)
    order = list(ran.sites)
    if order.index(tgt_site) < order.index(src_site) or not t.requires_grad:
        raise ConfigError(
            f"the target {tgt_site!r} does not depend on the source {src_site!r} in the "
            "linearised model; the target must come after the source"
        )
    coeffs = src_basis.encode(s.detach())
    error = s.detach() - src_basis.decode(coeffs)
    decode_t = torch.func.vjp(src_basis.decode, coeffs)[1]
    k_s, k_t = src_basis.n_features, tgt_basis.n_features
    scores = s.new_zeros(k_s + 1, k_t)
    with progress_bar(k_t, "direct effects", progress) as bar:
        for j in range(k_t):
            (grad,) = torch.autograd.grad(t[j], [s], retain_graph=j + 1 < k_t, allow_unused=True)
            grad = torch.zeros_like(s) if grad is None else grad
            (back,) = decode_t(grad)
            scores[:k_s, j] = _per_feature(coeffs * back, src_basis.dim, k_s)
            scores[k_s, j] = (grad * error).sum()
            bar.update(1)
    offset = src_basis.decode(torch.zeros_like(coeffs))  # every feature off, no error
    rest = _rest(model, inputs, ran.frozen, src_site, offset, tgt_site, tgt_basis, target_pos,
                 at=ran.recorded[tgt_site].detach())  # fmt: skip
    src_rows, src_keys = _feature_nodes(
        src_basis, src_site, s, _per_feature(coeffs, src_basis.dim, k_s)
    )
    tgt_rows, tgt_keys = _feature_nodes(tgt_basis, tgt_site, ran.recorded[tgt_site], t.detach())
    error_key = str(NodeId(src_site, error=True))
    error_row = node_row(NodeId(src_site, error=True), "error", label=f"{src_site} error",
                         activation=float(error.norm()))  # fmt: skip
    result = AttributionResult(
        scores=scores.detach(),
        axes=("source", "target"),
        coords={"source": (*src_keys, error_key), "target": tuple(tgt_keys)},
        method="direct_effects",
        metric=f"{tgt_site} features",
        total=(scores.sum(0) + rest).detach(),
        expected=t.detach(),
        node_table=(*src_rows, error_row, *tgt_rows),
        extras={"rest": rest, "target_activation": t.detach(),
                "source_activation": _per_feature(coeffs, src_basis.dim, k_s)},
    )  # fmt: skip
    gap = result.completeness_gap
    if gap is not None and gap > LINEARITY_TOLERANCE:
        log.warning(
            "the linearised model is not affine in the source (completeness gap %.3g): a "
            "nonlinearity between %s and %s was not frozen; name it in freeze=[...]",
            gap, src_site, tgt_site,
        )  # fmt: skip
    return result


@contextmanager
def python_norms(model: nn.Module) -> Iterator[None]:
    """Run a TransformerBridge's norms on their python path for the duration of the block.

    On the native-autograd path (the bridge's RMSNorm) an edit of hook_scale made by a plain
    torch hook is recomputed under no_grad, which would cut every gradient through the norm;
    the python path keeps the edited scale in the graph. Restored in `finally`.
    """
    switched = [
        module
        for module in model.modules()
        if getattr(module, "use_native_layernorm_autograd", None) is True
    ]
    try:
        for module in switched:
            setattr(module, "use_native_layernorm_autograd", False)  # noqa: B010
        yield
    finally:
        for module in switched:
            setattr(module, "use_native_layernorm_autograd", True)  # noqa: B010


def frozen_sites(model: nn.Module) -> list[str]:
    """The sites a TransformerLens model's linearisation freezes (those it has)."""
    table = hook_table(model)
    cfg: Any = model.cfg
    n_layers = int(cfg.n_layers)
    wanted = [f"blocks.{ly}.attn.hook_{p}" for ly in range(n_layers) for p in "qk"]
    wanted += [f"blocks.{ly}.mlp.hook_post" for ly in range(n_layers)]
    wanted += [f"blocks.{ly}.{ln}.hook_scale" for ly in range(n_layers) for ln in ("ln1", "ln2")]
    wanted.append("ln_final.hook_scale")
    return [name for name in wanted if name in table]


def _frozen(model: nn.Module, freeze: Sequence[str] | None) -> list[str]:
    if freeze is not None:
        if isinstance(freeze, str) or not all(isinstance(n, str) for n in freeze):
            raise ConfigError(f"freeze must be a list of site names, got {freeze!r}")
        return list(freeze)
    if not is_transformer_lens(model):
        raise ConfigError(
            "which sites make this model nonlinear is not known; pass freeze=[...] naming the "
            "sites to hold at their clean values (an empty list for a model that is linear)"
        )
    return frozen_sites(model)


def _rest(
    model: nn.Module, inputs: Any, held: dict[str, list[Tensor]], src_site: str, offset: Tensor,
    tgt_site: str, basis: FeatureBasis, target_pos: Index | None, *, at: Tensor,
) -> Tensor:  # fmt: skip
    """Target activations of the linearised model (its encoder linearised at `at`, the clean
    target) with the source set to `offset`, the basis's decode(0) (a real run)."""
    ran = run(model, inputs, freeze=held, replace={src_site: offset}, record=[tgt_site])
    return _activation(basis, ran.recorded[tgt_site], ran.sites[tgt_site], target_pos, at=at)


def _activation(
    basis: FeatureBasis, act: Tensor, site: Site, target_pos: Index | None, *,
    at: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """[k]: each feature's coefficient summed over every other axis (chosen positions only);
    with `at`, of the encoder linearised there: encode(at) + J_encode(at) (act - at)."""
    if target_pos is not None:
        site.axis("pos")  # InputError if the target has no position axis
        act = select(act, site, target_pos, None)
        at = None if at is None else select(at, site, target_pos, None)
    if at is None:
        coeffs = basis.encode(act)
    else:
        value_slope = torch.func.jvp(basis.encode, (at,), (act - at,))
        coeffs = value_slope[0] + value_slope[1]
    return _per_feature(coeffs, basis.dim, basis.n_features)


def _per_feature(t: Tensor, dim: int, k: int) -> Tensor:
    return t.movedim(dim, -1).reshape(-1, k).sum(0)


def _basis(basis: Any, role: str) -> tuple[FeatureBasis, str]:
    if not isinstance(basis, FeatureBasis):
        raise ConfigError(
            f"{role} must be a feature basis (UnitBasis, DirectionBasis, ...), got "
            f"{type(basis).__name__}; build one with UnitBasis.for_site(...) or from a probe"
        )
    if not isinstance(basis.site, str) or not basis.site:
        raise ConfigError(f"the {role} basis has no site; give it one (UnitBasis(..., site=...))")
    return basis, basis.site


def _feature_nodes(
    basis: FeatureBasis, site: str, act: Tensor, activation: Tensor
) -> tuple[list[dict[str, Any]], list[str]]:
    """Node rows and keys of a basis's features (`feature_node`); units keep index and kind."""
    kind = feature_kind(basis, site, _axis_name(site, act, basis.dim))
    rows = [
        feature_node(basis, site, ["feature"], [i], kind=kind, activation=float(activation[i]))
        for i in range(basis.n_features)
    ]
    return rows, [row["key"] for row in rows]


def _axis_name(site: str, act: Tensor, dim: int) -> str:
    axes = hook_axes(site, act.ndim) or ()
    return axes[dim] if axes and -len(axes) <= dim < len(axes) else ""
