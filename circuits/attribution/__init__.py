"""Path attribution: which parts and which connections carry a behaviour, from gradients.

    res = attribute(model, clean, corrupt, metric, method="attribution_patching",
                    site="blocks.{L}.attn.hook_z", unit="head")     # ~ patching every head
    res = attribute(model, clean, corrupt, metric, method="integrated_gradients")  # the input
    res = attribute(model, clean, corrupt, metric, method="eap-ig")  # every edge of the graph
    res = attribute(model, tokens, None, None, method="direct_effects",
                    source=DirectionBasis(..., site=...), target=UnitBasis(..., site=...))
    res.to_frame(); res.top(10); nodes, edges = res.graph_frames(); res.completeness_gap

- `methods`: each method's options and defaults (`EAPIG(steps=5)`, ...), the one place.
- `nodes`: attribution patching and integrated gradients (Captum's rules) on any site and unit.
- `edges`: EAP and EAP-IG on a TransformerLens model's residual-stream graph.
- `conv`: EAP and EAP-IG on the channel graph of a conv net, residual connections included.
- `direct`: feature-to-feature direct effects in the linearised model, with an error term.
Every model run goes through `circuits.hooks.run`; tensors stay on the model's device.
"""

from circuits.attribution.api import (
    attribute,
    attribution_patching,
    direct_effects,
    edge_attribution,
    integrated_gradients,
)
from circuits.attribution.common import IGPath, Rule
from circuits.attribution.methods import (
    EAP,
    EAPIG,
    AttributionPatching,
    DirectEffects,
    EdgeMethod,
    IntegratedGradients,
    Method,
    MethodConfig,
)
from circuits.attribution.result import AttributionResult
from circuits.options import Direction

__all__ = [
    "EAP",
    "EAPIG",
    "AttributionPatching",
    "AttributionResult",
    "DirectEffects",
    "Direction",
    "EdgeMethod",
    "IGPath",
    "IntegratedGradients",
    "Method",
    "MethodConfig",
    "Rule",
    "attribute",
    "attribution_patching",
    "direct_effects",
    "edge_attribution",
    "integrated_gradients",
]
