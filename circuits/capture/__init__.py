"""Capture: activations (and gradients) read through hooks, in memory or to disk.

    cache = capture(model, inputs, sites=["blocks.0.attn.hook_z"], grads=True, metric=metric)
    disk = capture_to_disk(model, batches, "acts/", sites=["relu2"]); load_cache("acts/")
    cc.sites(model, example)        # every site: name, axes, shape, calls

`Baseline` (ablation, reference, seed) and `ablated` turn a reference run into what an ablated
unit carries (zero, mean, resample, the corrupted value): the one place patching, attribution
and faithfulness get it from.
"""

from circuits.capture.ablation import Baseline, ablated, ablated_input, ablation_values
from circuits.capture.activations import Index, capture, select, site_list, sites
from circuits.capture.cache import ActivationCache
from circuits.capture.disk import DiskCache, capture_to_disk, load_cache

__all__ = [
    "ActivationCache",
    "Baseline",
    "DiskCache",
    "Index",
    "ablated",
    "ablated_input",
    "ablation_values",
    "capture",
    "capture_to_disk",
    "load_cache",
    "select",
    "site_list",
    "sites",
]
