"""`attribute`: one entry point for every attribution method, and one wrapper per method.

    res = cc.attribute(model, clean, corrupt, metric, method="attribution_patching",
                       site="blocks.{L}.attn.hook_z", unit="head")
    res = cc.attribute(model, clean, corrupt, metric, method="eap-ig")     # every edge
    res.top(10); nodes, edges = res.graph_frames()

Each method's options are its config in `circuits.attribution.methods`. Sign conventions.
"noise" (the default of attribution patching, EAP and EAP-IG, as in Nanda, Syed et al. and Hanna et
al.) estimates the change of the metric when the clean run takes the corrupted value of a unit or
edge: (corrupt - clean) . gradient. "denoise" estimates the change when the corrupted run takes the
clean value. Both match `circuits.patching.patch` with the same direction. Integrated gradients
follow Captum instead: they attribute m(clean) - m(baseline) with baseline = corrupt (or zeros), so
they are positive where a unit supports the clean behaviour. EAP-IG as Hanna et al. wrote it is
direction="noise", rule="riemann_left"; the default rule here is Gauss-Legendre, which needs fewer
steps for the same accuracy.
"""

from __future__ import annotations

from typing import Any, get_args

from torch import nn

from circuits.adapters.transformer_lens import is_transformer_lens
from circuits.checks import check_model
from circuits.errors import ConfigError
from circuits.inputs import check_pair
from circuits.metrics import MetricFn, check_metric
from circuits.options import configure

from .common import DEFAULT_MAX_BATCH
from .conv import conv_edges
from .direct import score_direct
from .edge_patching import edge_patching
from .edges import transformer_edges
from .methods import (
    EAPIG,
    METHODS,
    AttributionPatching,
    DirectEffects,
    EdgeMethod,
    EdgePatching,
    IntegratedGradients,
    Method,
    MethodConfig,
)
from .nodes import score_ig, score_units
from .result import AttributionResult


def attribute(
    model: nn.Module,
    clean: Any,
    corrupt: Any,
    metric: MetricFn | None,
    *,
    method: Method | MethodConfig = "attribution_patching",
    **options: Any,
) -> AttributionResult:
    """Attribute `metric` (a scalar function of one run's output) with `method`.

    method: a name ("attribution_patching", "integrated_gradients", "eap", "eap-ig",
        "edge_patching", "direct_effects") or its config (`AttributionPatching`,
        `IntegratedGradients`, `EAP`, `EAPIG`, `EdgePatching`, `DirectEffects`); `options` set
        the config's fields (see each config for what they mean and their defaults). An option
        the method does not use is a ConfigError.
    eap, eap-ig, edge_patching: every edge of the model's graph (TransformerLens models:
        embeddings, heads, MLPs, logits; conv nets: channels of the conv layers, skips
        included); edge_patching measures each edge by a real intervention.
    ablation (every method but direct_effects): what an ablated unit or edge carries, "patch"
        (the corrupted run's value; the default where corrupt is given), "zero", "mean" (over
        the corrupted batch, or `reference=`), "resample" (`seed=`); with "zero" or a
        reference, corrupt may be None.
    direct_effects: `source` and `target` feature bases in the linearised model on `clean`
        (corrupt and metric are None).
    """
    config = method_config(method, options)
    check_model(model)
    if isinstance(config, DirectEffects):
        if corrupt is not None or metric is not None:
            raise ConfigError(
                "direct_effects reads feature activations on one input: pass corrupt=None and "
                "metric=None"
            )
        return score_direct(model, clean, config)
    if metric is None:
        raise ConfigError(f"method={config.name!r} needs a metric: metric(output) -> scalar tensor")
    check_metric(metric)
    if corrupt is not None:
        check_pair(clean, corrupt)
    if isinstance(config, AttributionPatching):
        config.chosen(corrupt)
        return score_units(model, clean, corrupt, metric, config)
    if isinstance(config, IntegratedGradients):
        return score_ig(model, clean, corrupt, metric, config)
    if isinstance(config, EdgePatching):
        config.chosen(corrupt)
        return edge_patching(model, clean, corrupt, metric, config)
    config.chosen(corrupt)
    path, rows, progress = None, DEFAULT_MAX_BATCH, None
    if isinstance(config, EAPIG):
        path, rows, progress = config.path, config.max_batch or DEFAULT_MAX_BATCH, config.progress
    if is_transformer_lens(model):
        if config.layers is not None:
            raise ConfigError("layers names conv layers; a TransformerLens model's graph is fixed")
        return transformer_edges(model, clean, corrupt, metric, config, path=path, max_batch=rows,
                                 progress=progress)  # fmt: skip
    return conv_edges(model, clean, corrupt, metric, config, path=path, max_batch=rows,
                      progress=progress)  # fmt: skip


def method_config(method: Any, options: dict[str, Any]) -> MethodConfig:
    """The config `method` names (or is), with `options` set on it."""
    if isinstance(method, MethodConfig):
        return configure(type(method), method, options, what=method.name)
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"method must be one of {list(get_args(Method))}, got {method!r}")
    return configure(METHODS[method], None, options, what=method)  # type: ignore[no-any-return]


def attribution_patching(
    model: nn.Module, clean: Any, corrupt: Any, metric: MetricFn, **options: Any
) -> AttributionResult:
    """`attribute(..., method="attribution_patching")`; options: `AttributionPatching`."""
    return attribute(model, clean, corrupt, metric, method="attribution_patching", **options)


def integrated_gradients(
    model: nn.Module, clean: Any, corrupt: Any | None, metric: MetricFn, **options: Any
) -> AttributionResult:
    """`attribute(..., method="integrated_gradients")`; options: `IntegratedGradients`.

    Scores sum to `expected` = m(clean) - m(baseline) up to `completeness_gap`.
    """
    return attribute(model, clean, corrupt, metric, method="integrated_gradients", **options)


def edge_attribution(
    model: nn.Module,
    clean: Any,
    corrupt: Any,
    metric: MetricFn,
    *,
    method: EdgeMethod = "eap-ig",
    **options: Any,
) -> AttributionResult:
    """EAP, EAP-IG or exact edge patching scores for every edge of the model's graph; options:
    `EAP`, `EAPIG`, `EdgePatching`.

    Returns scores [source, target] (NaN where no edge); with EAP-IG the embedding's (input's)
    edges sum to the metric difference up to `completeness_gap`.
    """
    if method not in get_args(EdgeMethod):
        raise ConfigError(f"method must be one of {list(get_args(EdgeMethod))}, got {method!r}")
    return attribute(model, clean, corrupt, metric, method=method, **options)


def direct_effects(model: nn.Module, inputs: Any, **options: Any) -> AttributionResult:
    """`attribute(model, inputs, None, None, method="direct_effects", ...)`; options:
    `DirectEffects` (source, target, target_pos, freeze, progress)."""
    return attribute(model, inputs, None, None, method="direct_effects", **options)


__all__ = [
    "attribute",
    "attribution_patching",
    "direct_effects",
    "edge_attribution",
    "integrated_gradients",
    "method_config",
]
