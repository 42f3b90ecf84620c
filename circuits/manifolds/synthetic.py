"""Ground truth for discovery: a circle planted in superposition among linear features.

`planted_circle` draws activations in d dimensions that are sums of sparse features: n_linear
1-d features, each a fixed random unit direction times a magnitude in [0, 1) when it fires (with
probability `p_linear`, independently), and one 2-d feature, a point on the unit circle of a
fixed random plane at a uniform random angle, firing with probability `p_circle`. More features
than dimensions, so they overlap (superposition); the plane is the truth a discovery method
must find, and the angle the label its points should follow.

With the defaults, a top-1 SAE of 160 latents (the example below) tiles the circle with 9 to 20
latents, and `discover_manifolds` ranks that cluster first, its plane within 2 degrees of the
truth, for each of 10 seeds tried. Top-2 and ReLU SAEs tiled it too, but left gaps that split
the ring, or grazing activations that made clusters of a few linear features look 2-d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuits.checks import check_int, check_number

__all__ = ["PlantedCircle", "planted_circle"]


@dataclass(frozen=True)
class PlantedCircle:
    """Activations with a planted circle, and the truth.

    acts [n, d]; plane [2, d] (orthonormal rows); angle [n] radians (NaN where the circle is
    off); active [n] (the circle fires); directions [n_linear, d] (unit rows);
    values [n, n_linear] (each linear feature's magnitude, 0 when off).
    """

    acts: Float[Tensor, "n d"]
    plane: Float[Tensor, "2 d"]
    angle: Float[Tensor, " n"]
    active: Bool[Tensor, " n"]
    directions: Float[Tensor, "k d"]
    values: Float[Tensor, "n k"]


def planted_circle(
    n: int,
    *,
    d: int = 32,
    n_linear: int = 100,
    p_linear: float = 0.01,
    p_circle: float = 0.4,
    seed: int = 0,
) -> PlantedCircle:
    """`n` rows of sparse features in `d` dimensions: `n_linear` linear ones and one circle
    (module docstring); same seed, same data.

        data = cc.manifolds.planted_circle(12_000)
        sae = cc.train_dictionary(data.acts, 160, activation="topk", k=1, epochs=25,
                                  batch_size=256, lr=3e-3)
        found = cc.manifolds.discover_manifolds(sae, data.acts)
        found.planes[0].principal_angles(data.plane)       # about 1 degree: the circle is found

    Raises:
        ConfigError: n, d or n_linear not positive ints, d < 2, or a probability outside [0, 1].
    """
    check_int(n, "n")
    check_int(d, "d", low=2)
    check_int(n_linear, "n_linear")
    check_number(p_linear, "p_linear", low=0, high=1)
    check_number(p_circle, "p_circle", low=0, high=1)
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_linear, d, generator=gen)
    directions = directions / directions.norm(dim=1, keepdim=True)
    plane = torch.linalg.qr(torch.randn(d, 2, generator=gen))[0].T.contiguous()
    fires = torch.rand(n, n_linear, generator=gen) < p_linear
    values = torch.rand(n, n_linear, generator=gen) * fires
    active = torch.rand(n, generator=gen) < p_circle
    theta = torch.rand(n, generator=gen) * 2 * math.pi
    circle = torch.stack([torch.cos(theta), torch.sin(theta)], 1) @ plane * active[:, None]
    return PlantedCircle(
        acts=values @ directions + circle, plane=plane,
        angle=torch.where(active, theta, torch.full_like(theta, math.nan)), active=active,
        directions=directions, values=values,
    )  # fmt: skip
