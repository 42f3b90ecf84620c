r"""A hand-set conv net that detects corners, with its channel circuit known by construction.

`corner_cnn()` answers "is there a corner in this image?" for binary images of 1-pixel-thick line
segments. A corner is a pixel where a horizontal and a vertical segment meet: an L corner, a T
junction or a cross. Every weight is set by hand, so the channel circuit is a fact, not a finding:

    conv1 ch0 (horizontal) --\
                              >-- conv2 ch0 (corner) -- pool ch0 -- readout (logit)
    conv1 ch1 (vertical) ----/
    conv1 ch2 (diagonal \)    --- conv2 ch1 (diagonal strokes)      -x (readout weight 0)
    conv1 ch3 (anti-diag. /)  --- conv2 ch2 (anti-diagonal strokes) -x (readout weight 0)

The diagonal channels fire on the stimuli but nothing they feed reaches the output: they are
distractors that a circuit-discovery method must leave out. `CORNER_CIRCUIT` (also `model.circuit`)
holds the true circuit as data, and `corner_images` draws labelled stimuli whose labels come from
how each image was drawn, not from the model.

All weights are small integers (or halves) and the images are 0/1, so every activation is an exact
small integer in float32: the model's accuracy is exactly 1 and ablating an irrelevant channel
leaves the output bit-for-bit unchanged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from circuits.errors import ConfigError
from circuits.inputs import check_gray_images

__all__ = ["CORNER_CIRCUIT", "CornerCNN", "CornerCircuit", "corner_cnn", "corner_images"]

Edge = tuple[str, int, str, int]
Channel = tuple[str, int]
Pixel = tuple[int, int]

MIN_SIZE = 8  # a cross needs a 5 x 5 box inside the 1-pixel margin, plus room for distractors
MARGIN = 1  # no stimulus pixel on the border, so zero padding cannot shape any response


@dataclass(frozen=True)
class CornerCircuit:
    """The true circuit of `corner_cnn`: channel-to-channel edges that carry the answer.

    edges: (source_site, source_channel, target_site, target_channel) for every edge that matters.
    output: the channel whose global max is the answer (the readout reads only it).
    irrelevant: channels that are active on the stimuli but cannot change the output.
    """

    edges: frozenset[Edge]
    output: Channel
    irrelevant: frozenset[Channel]

    def __post_init__(self) -> None:
        overlap = self.relevant & self.irrelevant
        if overlap:
            raise ConfigError(f"channels {sorted(overlap)} are both in the circuit and irrelevant")

    @property
    def relevant(self) -> frozenset[Channel]:
        """Every channel on the circuit: the ends of its edges and the output channel."""
        ends = {(e[0], e[1]) for e in self.edges} | {(e[2], e[3]) for e in self.edges}
        return frozenset(ends | {self.output})


CORNER_CIRCUIT = CornerCircuit(
    edges=frozenset({("conv1", 0, "conv2", 0), ("conv1", 1, "conv2", 0)}),
    output=("conv2", 0),
    irrelevant=frozenset({("conv1", 2), ("conv1", 3), ("conv2", 1), ("conv2", 2)}),
)
"""The true channel circuit of `corner_cnn` (also `model.circuit`): conv1 ch0 (horizontal) and
ch1 (vertical) feed conv2 ch0 (the corner), the channel the readout reads; the diagonal channels
conv1 ch2, ch3 and conv2 ch1, ch2 fire but cannot change the output."""


class GlobalMaxPool(nn.Module):
    """Max over the spatial axes, batch x channel x h x w -> batch x channel: "fired anywhere"."""

    def forward(self, x: Float[Tensor, "batch channel h w"]) -> Float[Tensor, "batch channel"]:
        return x.amax(dim=(-2, -1))


class CornerCNN(nn.Module):
    """conv1 -> relu1 -> conv2 -> relu2 -> pool -> readout; each step its own module, called once.

    Input: batch x 1 x h x w images with values 0 or 1. Output: batch x 1 logits, +0.5 where the
    image holds a corner and -0.5 where it does not. Build it with `corner_cnn()`.
    """

    circuit: CornerCircuit

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = GlobalMaxPool()
        self.readout = nn.Linear(3, 1)
        self.circuit = CORNER_CIRCUIT

    def forward(self, images: Float[Tensor, "batch 1 h w"]) -> Float[Tensor, "batch 1"]:
        check_gray_images(images, "corner_cnn")
        h = self.relu1(self.conv1(images))
        c = self.relu2(self.conv2(h))
        return self.readout(self.pool(c))


def corner_cnn() -> CornerCNN:
    r"""The corner detector with its hand-set weights, in eval mode.

    conv1: four "three in a row" detectors, one per orientation. A channel's kernel is 1 on the
    three taps of its line through the centre, bias -2, so on a 0/1 image it is exactly 1 where a
    pixel and both its neighbours along that orientation are on (the interior of a segment), and 0
    elsewhere: a vertical line gives the horizontal channel at most 1 - 2 < 0.
      ch0 horizontal, ch1 vertical, ch2 diagonal (\), ch3 anti-diagonal (/).
    conv2 ch0, the corner: with H, V the horizontal and vertical maps and out = relu(a_H + a_V - 1),
      a_H(p) = H(left) + H(right) - H(p),  a_V(p) = V(up) + V(down) - V(p).
      On a lone horizontal segment a_H is 1 at both ends (one interior neighbour, p itself not
      interior) and at pixels two or more from either end, less elsewhere, and never above 1: in
      the middle of a line the -H(p) cancels the second neighbour. Off horizontal segments it is
      0. So a_H + a_V reaches 2 only at a pixel on a horizontal and a vertical segment at once: an
      L corner (two ends meet), a T or a cross (arms reach 2 pixels past the meeting point). Lone
      lines, parallel lines, diagonals and segments that do not touch keep it at or below 1, and
      the bias -1 silences them.
      Its weights from ch2 and ch3 are exactly 0: the diagonals are not part of the circuit.
    conv2 ch1, ch2: sums along the diagonal (ch1 from conv1 ch2) and anti-diagonal (ch2 from conv1
      ch3), bias 0: active on diagonal strokes, fed only by the distractor channels.
    pool: global max, so a channel reports whether it fired anywhere.
    readout: weight [1, 0, 0], bias -0.5. The corner channel's max is a whole number (1 with a
      corner, 0 without), so the logit is +0.5 or -0.5; conv2 ch1, ch2 have weight 0.

    Shapes: images [batch, 1, h, w] (0/1 values, any h, w) -> logits [batch, 1]; sites conv1 and
    relu1 are [batch, 4, h, w], conv2 and relu2 [batch, 3, h, w], pool [batch, 3].

    For example:

        model = cc.zoo.corner_cnn()
        images, labels = cc.zoo.corner_images(64)
        ((model(images)[:, 0] > 0).long() == labels).all()     # tensor(True)
        model.circuit.relevant           # {("conv1", 0), ("conv1", 1), ("conv2", 0)}

    Raises nothing itself (the weights are set in code); the model raises InputError when it is
    called on images that are not [batch, 1, h, w].
    """
    model = CornerCNN()
    w1 = torch.zeros(4, 1, 3, 3)
    w1[0, 0, 1, :] = 1.0  # horizontal: the middle row
    w1[1, 0, :, 1] = 1.0  # vertical: the middle column
    w1[2, 0] = torch.eye(3)  # diagonal \: top-left to bottom-right
    w1[3, 0] = torch.eye(3).flip(1)  # anti-diagonal /: top-right to bottom-left
    b1 = torch.full((4,), -2.0)  # all three taps on, nothing less

    w2 = torch.zeros(3, 4, 3, 3)
    w2[0, 0, 1] = torch.tensor([1.0, -1.0, 1.0])  # a_H: left + right - centre of H
    w2[0, 1, :, 1] = torch.tensor([1.0, -1.0, 1.0])  # a_V: up + down - centre of V
    w2[1, 2] = torch.eye(3)  # diagonal strokes, from the diagonal detector only
    w2[2, 3] = torch.eye(3).flip(1)  # anti-diagonal strokes, from the anti-diagonal detector only
    b2 = torch.tensor([-1.0, 0.0, 0.0])  # corner: a_H + a_V must reach 2

    readout_w, readout_b = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([-0.5])
    weights = {"conv1.weight": w1, "conv1.bias": b1, "conv2.weight": w2, "conv2.bias": b2}
    model.load_state_dict({**weights, "readout.weight": readout_w, "readout.bias": readout_b})
    return model.eval()


def corner_images(
    n: int, *, size: int = 16, seed: int = 0
) -> tuple[Float[Tensor, "n 1 size size"], Int[Tensor, " n"]]:
    """`n` binary images of line segments and their labels: 1 with a corner, 0 without.

    Exactly n // 2 images (n - n // 2 rounded the other way) are positive, in a seeded random
    order. A positive image holds one junction (an L corner, a T or a cross, arms >= 3 pixels), a
    negative image none, and both hold 1 to 3 distractors drawn with the same odds: lone horizontal
    or vertical segments, diagonal segments (the likeliest, so the diagonal channels are busy),
    parallel pairs with a 1 or 2 pixel gap, and near misses (a horizontal and a vertical segment
    that stop one pixel short of an L or T). Segments are at least 3 pixels long, shapes are at
    least 2 pixels apart (Chebyshev) so none touches another, and no pixel lies on the border. The
    label is how the image was drawn; a distractor that finds no free spot is left out.

    Shapes: images [n, 1, size, size] float32 of 0s and 1s; labels [n] int64.

    For example:

        images, labels = cc.zoo.corner_images(32, size=16, seed=1)
        images.shape, labels.sum()                      # (32, 1, 16, 16), tensor(16)

    Raises:
        ConfigError: `n` is not a positive int, or `size` is not an int >= 8.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ConfigError(f"n must be a positive int (the number of images), got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise ConfigError(
            f"size must be an int >= {MIN_SIZE} (room for a corner and distractors inside the "
            f"{MARGIN}-pixel margin), got {size!r}"
        )
    rng = random.Random(seed)
    labels = [1] * (n // 2) + [0] * (n - n // 2)
    rng.shuffle(labels)
    index = [(i, r, c) for i, label in enumerate(labels) for r, c in _draw(rng, size, label == 1)]
    images = torch.zeros(n, 1, size, size)
    at = torch.tensor(index, dtype=torch.long)
    images[at[:, 0], 0, at[:, 1], at[:, 2]] = 1.0
    return images, torch.tensor(labels, dtype=torch.long)


def _draw(rng: random.Random, size: int, positive: bool) -> list[Pixel]:
    """The on pixels of one image: a junction if `positive`, then distractors that touch nothing."""
    hi = max(3, (size - 2 * MARGIN) // 2)  # longest arm; every shape then fits the inner square
    shapes = [_junction(rng, hi)] if positive else []
    shapes += [_distractor(rng, hi) for _ in range(rng.randint(1, 3))]  # same odds in both classes
    on: set[Pixel] = set()
    for k, shape in enumerate(shapes):
        tries = 1 if k == 0 else 30  # the first shape always fits the empty canvas
        placed = _place(rng, shape, size, on, tries)
        on |= placed
    return sorted(on)


def _junction(rng: random.Random, hi: int) -> list[Pixel]:
    """An L, T or cross: one pixel on a horizontal and a vertical segment, each arm >= 3 long."""
    kind = rng.choice(("L", "T", "cross"))
    if kind == "L":
        a, b = rng.randint(3, hi), rng.randint(3, hi)
        shape = [(0, i) for i in range(a)] + [(i, 0) for i in range(1, b)]
    elif kind == "T":
        bar, stem = rng.randint(5, max(5, hi)), rng.randint(3, hi)
        j = rng.randint(2, bar - 3)  # two pixels of bar on each side of the stem
        shape = [(0, i) for i in range(bar)] + [(i, j) for i in range(1, stem)]
    else:
        bh, bv = rng.randint(5, max(5, hi)), rng.randint(5, max(5, hi))
        jh, jv = rng.randint(2, bh - 3), rng.randint(2, bv - 3)
        shape = [(0, i) for i in range(bh)] + [(i - jv, jh) for i in range(bv) if i != jv]
    return _transform(rng, shape)


def _distractor(rng: random.Random, hi: int) -> list[Pixel]:
    """A shape with no corner: a segment, a diagonal, a parallel pair or a near-miss L / T."""
    kind = rng.choices(("segment", "diagonal", "parallel", "near_miss"), weights=(1, 2, 1, 1))[0]
    a = rng.randint(3, hi)
    if kind == "segment":
        shape = [(0, i) for i in range(a)]
    elif kind == "diagonal":
        shape = [(i, i) for i in range(a)]
    elif kind == "parallel":
        b, gap, shift = rng.randint(3, hi), rng.randint(2, 3), rng.randint(-2, 2)
        shape = [(0, i) for i in range(a)] + [(gap, i + shift) for i in range(b)]
    else:  # a vertical segment starting two rows below the horizontal: one missing pixel
        b, j = rng.randint(3, hi), rng.randint(0, a - 1)
        shape = [(0, i) for i in range(a)] + [(2 + i, j) for i in range(b)]
    return _transform(rng, shape)


def _transform(rng: random.Random, shape: list[Pixel]) -> list[Pixel]:
    """A random flip / transpose of `shape` (all 8 symmetries of the square), moved to (0, 0)."""
    if rng.random() < 0.5:
        shape = [(c, r) for r, c in shape]
    sr, sc = rng.choice((1, -1)), rng.choice((1, -1))
    shape = [(sr * r, sc * c) for r, c in shape]
    r0, c0 = min(r for r, _ in shape), min(c for _, c in shape)
    return [(r - r0, c - c0) for r, c in shape]


def _place(
    rng: random.Random, shape: list[Pixel], size: int, on: set[Pixel], tries: int
) -> set[Pixel]:
    """`shape` moved to a random spot inside the margin, >= 2 pixels from `on`; empty if none."""
    height = max(r for r, _ in shape) + 1
    width = max(c for _, c in shape) + 1
    for _ in range(tries):
        dr = rng.randint(MARGIN, size - MARGIN - height)
        dc = rng.randint(MARGIN, size - MARGIN - width)
        moved = {(r + dr, c + dc) for r, c in shape}
        near = {(r + i, c + j) for r, c in moved for i in (-1, 0, 1) for j in (-1, 0, 1)}
        if not near & on:
            return moved
    return set()
