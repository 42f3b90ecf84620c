"""Activation patching and path patching, batched, for any site and unit, on any model.

    res = patch(model, clean, corrupt, metric, site="blocks.{L}.attn.hook_z", unit=("pos", "head"))
    res.effects            # [layer, pos, head] tensor; res.to_frame(), res.top(5), res.plot()
    paths = path_patch(model, clean, corrupt, metric,
                       senders=heads(model, layers=0), receivers=heads(model, layers=1, kind="k"))

`patch` replaces one unit at a time (denoise, noise, or zero / mean / resample ablation), or one
feature of a feature basis (`basis=`); `path_patch` measures the effect of a sender on the metric
through one receiver only. Both stack many variants along the batch of one forward pass
(`circuits.hooks.variants`). `steer` runs the model with features added at their basis's site.
"""

from circuits.hooks.variants import Budget
from circuits.options import Ablation, Direction
from circuits.patching.activation import patch
from circuits.patching.nodes import OUTPUT, Node, heads, node
from circuits.patching.path import path_patch
from circuits.patching.result import PatchingResult
from circuits.patching.steer import steer

__all__ = [
    "OUTPUT",
    "Ablation",
    "Budget",
    "Direction",
    "Node",
    "PatchingResult",
    "heads",
    "node",
    "patch",
    "path_patch",
    "steer",
]
