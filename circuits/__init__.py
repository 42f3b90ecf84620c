"""circuits: mechanistic circuits analysis for conv nets and transformers.

    import circuits as cc
    cache = cc.capture(model, inputs, sites=["blocks.0.attn.hook_z"])
    with cc.hooks(model, {"layer1.0.conv1": lambda act, site: act * 0}):
        model(images)

Importing has no side effects: no model is built, nothing is written or downloaded (the only
read is the installed packages' metadata, to refuse a clash of names).

The distribution is `circuits-mi` (``pip install circuits-mi``); ``pip install circuits`` is an
unrelated project, an asynchronous event framework, that installs the same import name.
"""

from importlib import metadata as _metadata

if any(  # ours is circuits-mi, or (in an old checkout) "circuits" with our summary
    not str(dist.metadata.get_all("Summary", [""])[0]).startswith("Mechanistic circuits analysis")
    for dist in _metadata.distributions(name="circuits")
):
    raise ImportError(
        "the distribution 'circuits' installed in this environment is an unrelated project (an "
        "asynchronous event framework) whose import name is also `circuits`, so the two overwrite "
        "each other's files; this package is circuits-mi. Fix: pip uninstall -y circuits "
        "circuits-mi && pip install circuits-mi (or keep them in separate virtual environments)"
    )
del _metadata

from circuits import manifolds, metrics, toy, zoo
from circuits.attribution import AttributionResult, attribute
from circuits.capture import (
    ActivationCache,
    DiskCache,
    capture,
    capture_to_disk,
    load_cache,
    sites,
)
from circuits.dictionaries import (
    Dictionary,
    DictionaryBasis,
    DictionaryConfig,
    TopExamples,
    evaluate_dictionary,
    load_dictionary,
    save_dictionary,
    top_examples,
    train_dictionary,
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
from circuits.featuregraph import FeatureGraphOptions, feature_faithfulness, feature_graph
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
from circuits.patching import Node, PatchingResult, heads, node, patch, path_patch, steer
from circuits.probes import (
    ProbeConfig,
    ProbeResult,
    Subspace,
    fit_probe,
    plot_probe_sweep,
    probe_sweep,
)
from circuits.site import Site
from circuits.sweep import SweepError, SweepResult, sweep

__version__ = "0.1.0"

__all__ = [
    "ActivationCache",
    "AttributionResult",
    "CircuitsError",
    "ConfigError",
    "Dictionary",
    "DictionaryBasis",
    "DictionaryConfig",
    "DirectionBasis",
    "DiskCache",
    "FeatureBasis",
    "FeatureGraphOptions",
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
    "Subspace",
    "SweepError",
    "SweepResult",
    "TopExamples",
    "UnitBasis",
    "__version__",
    "attribute",
    "build_graph",
    "build_graph_from_matrix",
    "capture",
    "capture_to_disk",
    "discover",
    "evaluate_dictionary",
    "export_neuronpedia",
    "faithfulness",
    "feature_faithfulness",
    "feature_graph",
    "fit_probe",
    "graph_frames",
    "heads",
    "hook_count",
    "hooks",
    "load_cache",
    "load_dictionary",
    "load_graph",
    "manifolds",
    "metrics",
    "node",
    "patch",
    "path_patch",
    "plot_graph",
    "plot_probe_sweep",
    "probe_sweep",
    "prune",
    "save_dictionary",
    "save_graph",
    "save_html",
    "sites",
    "steer",
    "sweep",
    "top_examples",
    "toy",
    "train_dictionary",
    "zoo",
]
