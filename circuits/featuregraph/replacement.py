"""The local replacement model: dictionaries spliced in, every graph node a leaf tensor.

Each dictionary reads its site (`config.site`) and writes the site it reconstructs (the same site
for an SAE, `config.target_site` for a transcoder). In the replacement model the written site is

    b_dec + sum over active latents i of a_i W_dec[i] + error

where the activations a_i and the error (what the dictionary misses, at every position) are
leaf tensors: upstream of them nothing reaches downstream except through the residual paths the
model keeps around the site (for a transcoder, the skip connection around its MLP). The model's
input (the residual stream's embedding, or the image) is a leaf too. So every node of a feature
graph is a tensor that autograd can differentiate by, and a target (a latent's pre-activation
where its dictionary reads, or an output) is a function of the leaves upstream of it.

Activations are held as rows: the feature axis last, every other axis (batch of one, positions
or h, w) flattened, so one code path serves token positions and conv feature maps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from circuits.dictionaries import Dictionary
from circuits.hooks import run
from circuits.site import Site

Step = Callable[[Tensor, Site], Tensor]


@dataclass(frozen=True)
class Spliced:
    """One dictionary in the replacement model and its nodes.

    read / write: the sites it encodes from and reconstructs; read_dim / dim: the feature axis
    at each. shape: the activation's shape at `write`. index: [n, 2] (row, latent) of its nodes, in
    order. clean: the written site's rows in the clean run; offset: `decoded` at the clean
    nodes (so the replacement adds only the change).
    """

    dictionary: Dictionary
    read: str
    write: str
    layer: int
    read_dim: int
    dim: int
    shape: tuple[int, ...]
    index: Tensor
    clean: Tensor
    offset: Tensor

    @property
    def n(self) -> int:
        """How many latent nodes it has."""
        return int(self.index.shape[0])


@dataclass
class Leaves:
    """The node tensors of one point of the replacement model: the input rows [P, d], each
    dictionary's latent values [n] and error rows [P, d_out]."""

    input: Tensor
    values: list[Tensor]
    errors: list[Tensor]

    def all(self) -> list[Tensor]:
        """Every leaf: input, values..., errors... (the order gradients come back in)."""
        return [self.input, *self.values, *self.errors]

    def detached(self) -> Leaves:
        """Copies that are leaves of a new graph (requires_grad)."""
        return self._split([t.detach().clone().requires_grad_(True) for t in self.all()])

    def minus(self, base: Leaves) -> Leaves:
        """self - base, leaf by leaf (no graph)."""
        pairs = zip(self.all(), base.all(), strict=True)
        return self._split([(t - b).detach() for t, b in pairs])

    def _split(self, flat: list[Tensor]) -> Leaves:
        k = len(self.values)
        return Leaves(flat[0], flat[1 : 1 + k], flat[1 + k :])

    def lerp(self, base: Leaves, alpha: float) -> Leaves:
        """base + alpha (self - base), leaf by leaf, as new leaves."""
        pairs = zip(self.all(), base.all(), strict=True)
        return self._split([(b + alpha * (t - b)).detach().requires_grad_(True) for t, b in pairs])


def to_rows(act: Tensor, dim: int) -> Tensor:
    """[..., d at dim, ...] -> [rows, d]: the feature axis last, the rest flattened."""
    return act.movedim(dim, -1).reshape(-1, act.shape[dim])


def from_rows(rows: Tensor, shape: Sequence[int], dim: int) -> Tensor:
    """The inverse of `to_rows` for an activation of `shape`."""
    dim %= len(shape)
    return rows.reshape([*shape[:dim], *shape[dim + 1 :], shape[dim]]).movedim(-1, dim)


@dataclass
class Point:
    """One run of the replacement model: its leaves, the model output and each dictionary's
    target pre-activations (one per node, in node order)."""

    leaves: Leaves
    output: Any
    pre: list[Tensor]


def forward(
    model: nn.Module,
    inputs: Any,
    spliced: Sequence[Spliced],
    leaves: Leaves,
    *,
    input_site: str,
    input_dim: int,
    freeze: Mapping[str, Sequence[Tensor]] | None = None,
) -> Point:
    """Run the replacement model at `leaves` with autograd on (module docstring).

    freeze: sites held at given values (the linearised model's attention patterns and norm
    scales); None for the real model.
    """
    pre: list[Tensor] = [leaves.input.new_zeros(0)] * len(spliced)
    nodes = zip(spliced, leaves.values, leaves.errors, strict=True)
    edits = [
        (sp.read, sp.write, _read_step(sp, pre, i), _write_step(sp, values, error))
        for i, (sp, values, error) in enumerate(nodes)
    ]
    steps = ordered_steps({input_site: _input_step(leaves.input, input_dim)}, edits)
    ran = run(model, inputs, replace=steps, freeze=dict(freeze or {}), grad=True)
    return Point(leaves, ran.output, pre)


def ordered_steps(
    first: Mapping[str, Step], dictionaries: Sequence[tuple[str, str, Step, Step]]
) -> dict[str, Step]:
    """One replacement per site from the steps that edit it, in the order that makes the
    replacement model what it says: the input first, then an SAE's read (of what arrives), then
    the writes, then the reads of dictionaries that read a site another one writes (they see
    its replacement). `dictionaries`: (read site, write site, read step, write step)."""
    steps: dict[str, list[Step]] = {name: [fn] for name, fn in first.items()}
    for read, write, on_read, _ in dictionaries:
        if read == write:
            steps.setdefault(read, []).append(on_read)
    for _, write, _, on_write in dictionaries:
        steps.setdefault(write, []).append(on_write)
    for read, write, on_read, _ in dictionaries:
        if read != write:
            steps.setdefault(read, []).append(on_read)
    return {name: _chain(fns) for name, fns in steps.items()}


def _chain(steps: Sequence[Step]) -> Step:
    def fn(act: Tensor, site: Site) -> Tensor:
        for step in steps:
            act = step(act, site)
        return act

    return fn


def _input_step(rows: Tensor, dim: int) -> Step:
    return lambda act, site: from_rows(rows, act.shape, dim)


def _read_step(sp: Spliced, pre: list[Tensor], i: int) -> Step:
    d = sp.dictionary

    def step(act: Tensor, site: Site) -> Tensor:
        x = to_rows(act, sp.read_dim)[sp.index[:, 0]]
        if d.config.apply_b_dec_to_input:
            x = x - d.b_dec.to(x)
        latents = sp.index[:, 1]
        pre[i] = (x * d.W_enc.to(x).T[latents]).sum(-1) + d.b_enc.to(x)[latents]
        return act

    return step


def decoded(sp: Spliced, values: Tensor, error: Tensor) -> Tensor:
    """The written site's rows rebuilt from the nodes: b_dec + error + sum of a_i W_dec[i]."""
    d = sp.dictionary
    parts = values[:, None] * d.W_dec.to(values)[sp.index[:, 1]]
    return (error + d.b_dec.to(error)).index_add(0, sp.index[:, 0], parts)


def _write_step(sp: Spliced, values: Tensor, error: Tensor) -> Step:
    def step(act: Tensor, site: Site) -> Tensor:
        # the clean rows plus the change of the rebuilt rows: at the clean nodes this is the
        # clean activation bit for bit (ties in a later max stay ties), with the same gradient
        rows = sp.clean + (decoded(sp, values, error) - sp.offset)
        return from_rows(rows, act.shape, sp.dim)

    return step
