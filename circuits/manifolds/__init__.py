"""Feature manifolds: features that are not one direction (circles, rings, families), found,
measured and intervened on.

Days of the week and months sit on circles in language models (Engels et al. 2024); a
transformer trained on modular addition writes each residue on several circles, one per key
frequency (Nanda et al. 2023); curve detectors form a ring indexed by orientation. The tools:

    spectrum = cc.manifolds.fourier_spectrum(acts, labels, period=p)   # which frequencies
    manifold = spectrum.manifold()               # the key circles, a feature basis of angles
    cc.manifolds.circularity(manifold.plane(f).encode(acts), labels, period=p, frequency=f)
    cc.manifolds.irreducibility(points)          # Engels et al.'s separability / mixture tests
    found = cc.manifolds.discover_manifolds(sae, acts)   # clusters of latents, ranked
    cc.manifolds.intervene(model, tokens, manifold, by=3, pos=-1)   # turn every circle
    cc.fit_probe(acts, labels, kind="linear", period=p).as_subspace()  # a circular probe

A `cc.Subspace` (orthonormal directions) and a `CyclicManifold` are feature bases, so
`cc.patch(basis=...)` and `cc.steer` take them.
"""

from circuits.manifolds.cyclic import CyclicManifold
from circuits.manifolds.discovery import (
    ClusterMethod,
    ManifoldDiscovery,
    cluster_latents,
    discover_manifolds,
)
from circuits.manifolds.fourier import FourierSpectrum, fourier_spectrum
from circuits.manifolds.geometry import Circularity, circularity, plot_points
from circuits.manifolds.intervention import Mode, intervene
from circuits.manifolds.irreducible import (
    MAX_MIXTURE,
    MIN_SEPARABILITY,
    Irreducibility,
    irreducibility,
    mixture_index,
    separability_index,
)
from circuits.manifolds.synthetic import PlantedCircle, planted_circle
from circuits.probes import Subspace

__all__ = [
    "MAX_MIXTURE",
    "MIN_SEPARABILITY",
    "Circularity",
    "ClusterMethod",
    "CyclicManifold",
    "FourierSpectrum",
    "Irreducibility",
    "ManifoldDiscovery",
    "Mode",
    "PlantedCircle",
    "Subspace",
    "circularity",
    "cluster_latents",
    "discover_manifolds",
    "fourier_spectrum",
    "intervene",
    "irreducibility",
    "mixture_index",
    "planted_circle",
    "plot_points",
    "separability_index",
]
