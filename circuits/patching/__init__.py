"""Activation patching and path patching, batched, for any site and unit, on any model.

    res = patch(model, clean, corrupt, metric, site="blocks.{L}.attn.hook_z", unit=("pos", "head"))
    res.effects            # [layer, pos, head] tensor; res.to_frame(), res.plot()
    paths = path_patch(model, clean, corrupt, metric,
                       senders=heads(model, layers=0), receivers=heads(model, layers=1, kind="k"))

`patch` replaces one unit at a time (denoise, noise, or zero / mean / resample ablation);
`path_patch` measures the effect of a sender on the metric through one receiver only. Both stack
many variants along the batch of one forward pass (see `engine`).
"""

from circuits.patching.activation import Ablation, Direction, patch
from circuits.patching.path import path_patch
from circuits.patching.result import PatchingResult
from circuits.patching.spec import OUTPUT, Node, heads, node

__all__ = [
    "OUTPUT",
    "Ablation",
    "Direction",
    "Node",
    "PatchingResult",
    "heads",
    "node",
    "patch",
    "path_patch",
]
