"""Faithfulness: how much of a model's behaviour a circuit graph's edges alone reproduce.

    f = cc.faithfulness(model, g, clean, corrupt, metric, ablation="patch")   # recorded in g.graph
    check = Faithfulness(model, full, clean, corrupt, metric); check.score(cc.prune(full, top_k=8))

It runs the model graph's ablated run (`circuits.modelgraph`) on graphs that `circuits.graph`
holds; the graph stage itself never runs a model.
"""

from circuits.faithfulness.score import ABLATIONS, Faithfulness, faithfulness

__all__ = ["ABLATIONS", "Faithfulness", "faithfulness"]
