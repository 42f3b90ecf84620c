"""Toy models of superposition (Elhage et al. 2022): batched training, feature geometry, figures.

Train a sweep over sparsity or importance as one batched `ToyModel`, then measure how its
features are packed (`feature_dimensionality`, `feature_groups`, ...) and draw it (`plot_*`).
"""

from circuits.toy.geometry import (
    DEDICATED,
    NOT_REPRESENTED,
    SUPERPOSITION,
    dimensions_per_feature,
    feature_dimensionality,
    feature_groups,
    feature_norms,
    interference,
    regimes,
)
from circuits.toy.model import ToyConfig, ToyModel, phase_config, train
from circuits.toy.plots import (
    FRACTIONS,
    plot_dimensionality,
    plot_feature_directions,
    plot_interference,
    plot_phase_diagram,
)

__all__ = [
    "DEDICATED",
    "FRACTIONS",
    "NOT_REPRESENTED",
    "SUPERPOSITION",
    "ToyConfig",
    "ToyModel",
    "dimensions_per_feature",
    "feature_dimensionality",
    "feature_groups",
    "feature_norms",
    "interference",
    "phase_config",
    "plot_dimensionality",
    "plot_feature_directions",
    "plot_interference",
    "plot_phase_diagram",
    "regimes",
    "train",
]
