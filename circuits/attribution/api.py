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

import dataclasses
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
    basis (attribution_patching, integrated_gradients): score each feature of a feature basis
        (UnitBasis, DirectionBasis, a dictionary's latents) and its error term at the basis's
        site; the scores' "feature" axis holds the features, then "error".
    direct_effects: `source` and `target` feature bases in the linearised model on `clean`
        (corrupt and metric are None).
    clean, corrupt: the model's inputs (tokens [batch, pos], images [batch, channel, h, w], or
        a tuple / dict of them), of the same structure and shapes.

    Shapes: node methods give `scores` shaped by `res.axes`: a leading "layer" axis for a `{L}`
    pattern (or "site" for a list of sites), then the unit's axes, e.g. [layer, head] for
    `site="blocks.{L}.attn.hook_z", unit="head"`, [] for `unit=None`; with `basis=`, a "feature"
    axis of k + 1 (the features, then "error") comes first. Edge methods and direct_effects give
    an edge matrix [source, target] whose labels are `res.coords["source"]` and
    `res.coords["target"]`, NaN where the pair is not an edge.

    For example:

        res = cc.attribute(model, clean, corrupt, metric, method="attribution_patching",
                           site="blocks.{L}.attn.hook_z", unit="head")
        res.scores.shape                               # [n_layers, n_heads]
        res = cc.attribute(model, clean, corrupt, metric, method=cc.attribution.EAPIG(steps=10))
        res.scores.shape                               # [source, target], NaN where no edge
        res.top(10); nodes, edges = res.graph_frames(); res.completeness_gap

    Raises:
        ConfigError: `method` is not a method's name or config, an option is one the method
            does not take (or has an invalid value: steps, rule, direction, ablation, ...),
            metric is None (or, for direct_effects, corrupt or metric is not None), corrupt is
            None with no ablation that does without it, `layers` is given for a TransformerLens
            model, or a basis has no site or lives at another site than `site`.
        ModelError: `model` is not a torch module in eval mode, or its graph is not one the edge
            methods know (a conv net without conv layers; a transformer with parallel attention
            and MLP, gated MLPs, grouped-query attention, ...).
        ShapeMismatchError: clean and corrupt differ in structure or shape, or a basis does not
            fit its site.
        SiteNotFoundError: a site or conv layer is not one of the model's.
        InputError: the forward pass fails on the inputs, integrated gradients on the input get
            a non-float input (tokens of a model other than a TransformerLens one: name a
            site), or a unit index is out of range.
        MetricError: the metric does not return a finite scalar float tensor, or one with a
            gradient.
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
        cls, name = type(method), method.name
    elif isinstance(method, str) and method in METHODS:
        cls, name = METHODS[method], method
    else:
        raise ConfigError(f"method must be one of {list(get_args(Method))}, got {method!r}")
    if "basis" in options and "basis" not in {f.name for f in dataclasses.fields(cls)}:
        raise ConfigError(
            f"method={name!r} does not take basis=: feature bases work with "
            "attribution_patching and integrated_gradients (basis=...), and direct_effects "
            "(source=..., target=...)"
        )
    return configure(cls, method if isinstance(method, MethodConfig) else None, options,
                     what=name)  # type: ignore[no-any-return]  # fmt: skip


def attribution_patching(
    model: nn.Module, clean: Any, corrupt: Any, metric: MetricFn, **options: Any
) -> AttributionResult:
    """`attribute(..., method="attribution_patching")`; options: `AttributionPatching`.

    A first-order estimate of patching each unit: (patched - current) . gradient, from one
    forward and one backward pass. Scores are shaped as for `attribute`'s node methods: a leading
    "layer" or "site" axis (a pattern or a list), then the unit's axes.

        res = attribution_patching(model, clean, corrupt, metric,
                                   site="blocks.{L}.attn.hook_z", unit="head")
        res.scores.shape                               # [n_layers, n_heads]
        res.to_frame().sort_values("score")

    Raises what `attribute` raises (ConfigError for an option `AttributionPatching` does not
    take or a bad value, ShapeMismatchError, SiteNotFoundError, ModelError, InputError,
    MetricError).
    """
    return attribute(model, clean, corrupt, metric, method="attribution_patching", **options)


def integrated_gradients(
    model: nn.Module, clean: Any, corrupt: Any | None, metric: MetricFn, **options: Any
) -> AttributionResult:
    """`attribute(..., method="integrated_gradients")`; options: `IntegratedGradients`.

    Scores sum to `expected` = m(clean) - m(baseline) up to `completeness_gap`. Without a site
    the input is attributed (a float tensor, or a TransformerLens model's token embeddings);
    corrupt is the baseline (None: zeros, or an `ablation=`). Scores are shaped by the unit:
    [] for unit=None, the input's shape for "all" (e.g. [batch, channel, h, w]), [pos] for
    unit="pos".

        res = integrated_gradients(cnn, images, None, metric, steps=64)   # baseline: zeros
        res.completeness_gap                           # ~0: the scores add up
        res = integrated_gradients(model, clean, corrupt, metric,
                                   site="blocks.0.hook_resid_post", unit="pos")
        res.scores.shape                               # [pos]

    Raises what `attribute` raises: ConfigError for an option `IntegratedGradients` does not
    take, a bad value or a list of sites, InputError for a non-float input without a site
    (TransformerLens tokens are fine: their embeddings are attributed), ShapeMismatchError,
    SiteNotFoundError, ModelError, MetricError.
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
    edges sum to the metric difference up to `completeness_gap`. Sources and targets are node
    keys (`res.coords`): "blocks.0.attn.hook_z[1]" a head's output, "blocks.1.hook_q_input[0]"
    a head's query input, "conv1[3]" a channel.

        res = edge_attribution(model, clean, corrupt, metric)              # EAP-IG, 5 steps
        res = edge_attribution(model, clean, corrupt, metric, method="eap")
        g = cc.build_graph(res, top_k=50)             # a circuit graph of the top edges

    Raises:
        ConfigError: `method` is not "eap", "eap-ig" or "edge_patching", or an option is one its
            config does not take; otherwise what `attribute` raises (ModelError for a model
            whose graph the edge methods do not know, ShapeMismatchError, InputError,
            MetricError).
    """
    if method not in get_args(EdgeMethod):
        raise ConfigError(f"method must be one of {list(get_args(EdgeMethod))}, got {method!r}")
    return attribute(model, clean, corrupt, metric, method=method, **options)


def direct_effects(model: nn.Module, inputs: Any, **options: Any) -> AttributionResult:
    """`attribute(model, inputs, None, None, method="direct_effects", ...)`; options:
    `DirectEffects` (source, target, target_pos, freeze, progress).

    Scores are [source feature (k_s, then "error"), target feature (k_t)]; `res.extras["rest"]`
    [k_t] is what does not come from the source site, and `completeness_gap` checks that the
    three add up to the target activations.

        src = UnitBasis(d_model, site="blocks.0.hook_resid_post")
        tgt = DirectionBasis(probe_directions, site="blocks.1.hook_resid_post")
        res = direct_effects(model, tokens, source=src, target=tgt, target_pos=-1)
        res.scores.shape                               # [d_model + 1, k]

    Raises:
        ConfigError: source or target is missing or not a feature basis with a site, both are
            at one site, the source only acts through attention patterns or norm scales, the
            target is frozen or does not depend on the source, or `freeze` is not given for a
            model other than a TransformerLens one.
        InputError: `target_pos` is given and the target site has no "pos" axis, or is out of
            range; or the forward pass fails. Otherwise what `attribute` raises.
    """
    return attribute(model, inputs, None, None, method="direct_effects", **options)


__all__ = [
    "attribute",
    "attribution_patching",
    "direct_effects",
    "edge_attribution",
    "integrated_gradients",
    "method_config",
]
