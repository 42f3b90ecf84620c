"""Feature circuits: attribution graphs over dictionary latents, with error nodes.

    g = cc.feature_graph(model, tokens, {t.config.site: t for t in transcoders})
    g.graph["replacement_score"], g.graph["completeness_score"], g.graph["faithfulness"]
    cc.save_graph(g, "circuit.json", format="attribution-graph")

`build.feature_graph` is the entry point; `trace` fixes the nodes and computes the adjacency
matrix on the replacement model of `replacement`; `faithfulness` measures a pruned graph by
intervention.
"""

from circuits.featuregraph.build import FeatureGraphOptions, feature_graph
from circuits.featuregraph.faithfulness import feature_faithfulness

__all__ = ["FeatureGraphOptions", "feature_faithfulness", "feature_graph"]
