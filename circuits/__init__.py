"""circuits: mechanistic circuits analysis for conv nets and transformers.

    import circuits as cc
    cache = cc.capture(model, inputs, sites=["blocks.0.attn.hook_z"])
    with cc.hooks(model, {"layer1.0.conv1": lambda act, site: act * 0}):
        model(images)

Importing has no side effects: no model is built, no file is read, nothing is downloaded.
"""

from circuits import metrics, toy, zoo
from circuits.attribution import AttributionResult, attribute
from circuits.capture import (
    ActivationCache,
    DiskCache,
    capture,
    capture_to_disk,
    load_cache,
    sites,
)
from circuits.discover import discover
from circuits.errors import (
    CircuitsError,
    ConfigError,
    InputError,
    MetricError,
    ModelError,
    OutputError,
    SchemaError,
    ShapeMismatchError,
    SiteNotFiredError,
    SiteNotFoundError,
    SiteRepeatedError,
)
from circuits.faithfulness import faithfulness
from circuits.features import DirectionBasis, FeatureBasis, UnitBasis
from circuits.graph import (
    build_graph,
    build_graph_from_matrix,
    export_neuronpedia,
    graph_frames,
    load_graph,
    plot_graph,
    prune,
    save_graph,
    save_html,
)
from circuits.hooks import hook_count, hooks
from circuits.patching import Node, PatchingResult, heads, node, patch, path_patch
from circuits.probes import ProbeConfig, ProbeResult, fit_probe, plot_probe_sweep, probe_sweep
from circuits.site import Site

__version__ = "0.1.0"

__all__ = [
    "ActivationCache",
    "AttributionResult",
    "CircuitsError",
    "ConfigError",
    "DirectionBasis",
    "DiskCache",
    "FeatureBasis",
    "InputError",
    "MetricError",
    "ModelError",
    "Node",
    "OutputError",
    "PatchingResult",
    "ProbeConfig",
    "ProbeResult",
    "SchemaError",
    "ShapeMismatchError",
    "Site",
    "SiteNotFiredError",
    "SiteNotFoundError",
    "SiteRepeatedError",
    "UnitBasis",
    "__version__",
    "attribute",
    "build_graph",
    "build_graph_from_matrix",
    "capture",
    "capture_to_disk",
    "discover",
    "export_neuronpedia",
    "faithfulness",
    "fit_probe",
    "graph_frames",
    "heads",
    "hook_count",
    "hooks",
    "load_cache",
    "load_graph",
    "metrics",
    "node",
    "patch",
    "path_patch",
    "plot_graph",
    "plot_probe_sweep",
    "probe_sweep",
    "prune",
    "save_graph",
    "save_html",
    "sites",
    "toy",
    "zoo",
]
