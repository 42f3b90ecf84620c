"""`attribute`: one entry point for every attribution method, and `edge_attribution` for graphs.

    res = cc.attribute(model, clean, corrupt, metric, method="attribution_patching",
                       site="blocks.{L}.attn.hook_z", unit="head")
    res = cc.attribute(model, clean, corrupt, metric, method="eap-ig")     # every edge
    res.top_edges(10); nodes, edges = res.graph_frames()

Sign conventions. "noise" (the default of attribution patching, EAP and EAP-IG, as in Nanda,
Syed et al. and Hanna et al.) estimates the change of the metric when the clean run takes the
corrupted value of a unit or edge: (corrupt - clean) . gradient. "denoise" estimates the change when
the corrupted run takes the clean value. Both match `circuits.patching.patch` with the same
direction. Integrated gradients follow Captum instead: they attribute m(clean) - m(baseline) with
baseline = corrupt (or zeros), so they are positive where a unit supports the clean behaviour.
EAP-IG as Hanna et al. wrote it is direction="noise", rule="riemann_left"; the default rule here
is Gauss-Legendre, which needs fewer steps for the same accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

from torch import nn

from circuits.adapters.transformer_lens import is_transformer_lens
from circuits.capture import Index
from circuits.errors import ConfigError
from circuits.features import FeatureBasis
from circuits.inputs import check_pair

from .common import (
    Direction,
    IGPath,
    Metric,
    Rule,
    UnitSpec,
    check_direction,
    check_max_batch,
    check_metric,
    check_model,
)
from .conv import conv_edges
from .direct import direct_effects
from .edges import transformer_edges
from .nodes import attribution_patching, integrated_gradients
from .result import AttributionResult

Method = Literal["attribution_patching", "integrated_gradients", "eap", "eap-ig", "direct_effects"]
EdgeMethod = Literal["eap", "eap-ig"]

IG_STEPS = 32
EAP_IG_STEPS = 5

_OPTIONS: dict[str, frozenset[str]] = {
    "attribution_patching": frozenset({"site", "unit", "direction"}),
    "integrated_gradients": frozenset({"site", "unit", "steps", "rule", "max_batch", "progress"}),
    "eap": frozenset({"direction", "layers"}),
    "eap-ig": frozenset({"direction", "steps", "rule", "layers", "max_batch", "progress"}),
    "direct_effects": frozenset({"source", "target", "target_pos", "freeze", "progress"}),
}


def attribute(
    model: nn.Module,
    clean: Any,
    corrupt: Any,
    metric: Metric | None,
    *,
    method: Method = "attribution_patching",
    site: str | Sequence[str] | None = None,
    unit: UnitSpec = None,
    direction: Direction | None = None,
    steps: int | None = None,
    rule: Rule | None = None,
    layers: Sequence[str] | None = None,
    source: FeatureBasis | None = None,
    target: FeatureBasis | None = None,
    target_pos: Index | None = None,
    freeze: Sequence[str] | None = None,
    max_batch: int | None = None,
    progress: bool | None = None,
) -> AttributionResult:
    """Attribute `metric` (a scalar function of one run's output) with `method`.

    attribution_patching: site, unit, direction (see `attribution_patching`).
    integrated_gradients: site (None: the input), unit, steps (32), rule (see
        `integrated_gradients`); corrupt is the baseline, None for zeros.
    eap, eap-ig: every edge of the model's graph (TransformerLens models: embeddings, heads,
        MLPs, logits; conv nets: channels of the conv layers, skips included, `layers`); steps (5)
        and rule for EAP-IG.
    direct_effects: `source` and `target` feature bases in the linearised model on `clean`
        (corrupt and metric are None); target_pos, freeze (see `direct_effects`).
    Options a method does not use raise ConfigError rather than being ignored.
    """
    given = {
        "site": site, "unit": unit, "direction": direction, "steps": steps, "rule": rule,
        "layers": layers, "source": source, "target": target, "target_pos": target_pos,
        "freeze": freeze, "max_batch": max_batch, "progress": progress,
    }  # fmt: skip
    if method not in _OPTIONS:
        raise ConfigError(f"method must be one of {list(get_args(Method))}, got {method!r}")
    unused = sorted(k for k, v in given.items() if v is not None and k not in _OPTIONS[method])
    if unused:
        raise ConfigError(
            f"method={method!r} does not use {unused}; it takes {sorted(_OPTIONS[method])}"
        )
    if method == "direct_effects":
        if corrupt is not None or metric is not None:
            raise ConfigError(
                "direct_effects reads feature activations on one input: pass corrupt=None and "
                "metric=None"
            )
        if source is None or target is None:
            raise ConfigError("direct_effects needs source=... and target=... feature bases")
        return direct_effects(model, clean, source=source, target=target, target_pos=target_pos,
                              freeze=freeze, progress=progress)  # fmt: skip
    if metric is None:
        raise ConfigError(f"method={method!r} needs a metric: metric(output) -> scalar tensor")
    if method == "attribution_patching":
        return attribution_patching(model, clean, corrupt, metric, site=site, unit=unit,
                                    direction=direction or "noise")  # fmt: skip
    if method == "integrated_gradients":
        return integrated_gradients(
            model, clean, corrupt, metric, site=site, unit=unit,  # type: ignore[arg-type]
            steps=IG_STEPS if steps is None else steps, rule=rule or "gausslegendre",
            max_batch=max_batch, progress=progress,
        )  # fmt: skip
    return edge_attribution(
        model, clean, corrupt, metric, method=method, direction=direction or "noise",
        steps=steps, rule=rule or "gausslegendre", layers=layers, max_batch=max_batch,
        progress=progress,
    )  # fmt: skip


def edge_attribution(
    model: nn.Module,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    method: EdgeMethod = "eap-ig",
    direction: Direction = "noise",
    steps: int | None = None,
    rule: Rule = "gausslegendre",
    layers: Sequence[str] | None = None,
    max_batch: int | None = None,
    progress: bool | None = None,
) -> AttributionResult:
    """EAP or EAP-IG scores for every edge of the model's graph, batched.

    TransformerLens models: edges from the embeddings, each head's output and each MLP's output
    to each later head's query, key and value input, each later MLP's input and the logits
    (see `circuits.attribution.edges`). Other models: channel edges between conv layers that
    read each other directly, across residual connections too (`layers`, default every conv;
    see `circuits.attribution.conv`).
    Returns scores [source, target] (NaN where no edge); with EAP-IG the embedding's (input's)
    edges sum to the metric difference up to `completeness_gap`.
    """
    check_model(model)
    check_metric(metric)
    direction = check_direction(direction)
    check_pair(clean, corrupt)
    if method not in get_args(EdgeMethod):
        raise ConfigError(f"method must be 'eap' or 'eap-ig', got {method!r}")
    if method == "eap" and steps is not None:
        raise ConfigError("steps applies to method='eap-ig' (EAP takes one gradient)")
    path = (
        IGPath(steps=EAP_IG_STEPS if steps is None else steps, rule=rule)
        if method == "eap-ig"
        else None
    )
    rows = check_max_batch(max_batch)
    if is_transformer_lens(model):
        if layers is not None:
            raise ConfigError("layers names conv layers; a TransformerLens model's graph is fixed")
        return transformer_edges(model, clean, corrupt, metric, path=path, direction=direction,
                                 max_batch=rows, progress=progress)  # fmt: skip
    return conv_edges(model, clean, corrupt, metric, path=path, direction=direction,
                      layers=layers, max_batch=rows, progress=progress)  # fmt: skip
