"""Linear probes: what a model represents, site by site, as directions the framework can use.

A probe is a linear map from a site's activations to labels. If a simple linear readout recovers
a property (is there a corner, is this token a repeat, which class), the model represents it
linearly at that site, and the probe's weight vector is a direction in activation space that
patching and graph code can use as a feature (`ProbeResult.as_basis()`).

    probe = cc.fit_probe(cache["blocks.1.hook_resid_pre"][:, -1], labels, kind="logistic")
    probe.test_score, probe.selectivity, probe.to_frame()
    frame = cc.probe_sweep(model, tokens, labels, sites=[...], positions=-1)
    cc.plot_probe_sweep(frame)

With `rank=k` a probe finds the k-dimensional subspace that best reads the label, and with
`period=` it reads a cyclic label as a point on a circle; `ProbeResult.as_subspace()` gives it as
a `Subspace` (orthonormal directions) that patching, attribution and steering accept.

Probes are fit in torch on the activations' device; see `fit_probe` for the kinds (logistic,
linear, mass_mean), the held-out split, standardisation and the control task behind selectivity.
"""

from circuits.probes.fit import ProbeConfig, fit_probe
from circuits.probes.result import ProbeResult
from circuits.probes.subspace import Subspace, circle_targets, orthonormal_rows
from circuits.probes.sweep import plot_probe_sweep, probe_sweep

__all__ = [
    "ProbeConfig",
    "ProbeResult",
    "Subspace",
    "circle_targets",
    "fit_probe",
    "orthonormal_rows",
    "plot_probe_sweep",
    "probe_sweep",
]
