r"""A small conv net trained here to name lines and curves: line detectors feed curve detectors.

The Distill circuits thread found curve detectors in InceptionV1: channels that fire on a curve of
one orientation, built from earlier channels that detect lines tangent to that curve. `curve_cnn()`
is a tiny net with the same structure, small enough to read every weight.

Task: a 32 x 32 image holds one thin, anti-aliased stroke, a straight line or a circular arc, with
pixel noise. The net names it among 16 classes:
  0..7   a line at orientation 22.5 * k degrees (`LINE_ORIENTATIONS`),
  8..15  an arc bulging towards 45 * (k - 8) degrees (`CURVE_DIRECTIONS`).
Angles are in degrees, counter-clockwise from "pointing right" as seen on screen (rows go down). A
line's orientation is taken mod 180; an arc's direction is where its convex side points, from the
circle's centre through the arc's midpoint, mod 360 (90 is an arch, 270 a cup). The tangent at the
arc's midpoint is perpendicular to it: orientation direction + 90 (mod 180).

Architecture (`CurveCNN`): conv1 (1 -> 8, 5 x 5) -> relu1 -> pool1 (2 x 2 max) -> conv2 (8 -> 16,
5 x 5, receptive field 14 pixels) -> relu2 -> pool2 (global max) -> the 16 logits. There is no
linear readout: conv2 channel k's peak activation is class k's logit, so each conv2 channel has one
job. `circuits.zoo.train_curve` trains it (the recipe and why are in its docstring): conv1 first
learns to name line orientations (channel k for LINE_ORIENTATIONS[k]) and is then frozen; conv2
learns the 16-class task on its own, so how curves are built from lines is found, not imposed.

What the shipped model does (`weights/curve.json` has every figure, from `train_curve.evaluate`):
held-out accuracy 0.93 on the training distribution (lines 1.00, curves 0.85, line vs curve 0.97).
Every conv1 channel is a line detector of one orientation, within 8 degrees of its class's: the
orthogonal line gets at most 9% of its peak response, and five of the eight stay silent. conv2
channels 8..15 are curve detectors: each peaks on arcs bulging its way, gives the opposite arcs at
most 16% of that, and gives any straight line 2.2 to 4.7 times less than its arc. conv2 channels
0..7 are line detectors, 1.5 to 2.6 times more for their line than for any arc. The circuit: the
conv1 channel that feeds a curve channel most (EAP-IG on its own arcs against a blank image) is a
line detector within 22.5 degrees of the tangent at the arc's midpoint, and zeroing it takes 28% to
40% of the curve channel's response; detectors perpendicular to the tangent barely matter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from circuits.capture import capture
from circuits.errors import ConfigError, InputError
from circuits.inputs import check_gray_images
from circuits.zoo.corner import GlobalMaxPool

__all__ = [
    "CURVE_DIRECTIONS",
    "LINE_ORIENTATIONS",
    "NOISE",
    "N_CLASSES",
    "SIZE",
    "WEIGHTS_PATH",
    "CurveBatch",
    "CurveCNN",
    "arc_stimuli",
    "curve_class_names",
    "curve_cnn",
    "curve_images",
    "line_stimuli",
    "peak_responses",
    "sample",
]

SIZE = 32  # image side in pixels
WIDTH = 1.5  # stroke width in pixels
NOISE = 0.25  # std of the Gaussian pixel noise in the training images
MARGIN = 2  # no stroke pixel within this many pixels of the border
LINE_ORIENTATIONS: tuple[float, ...] = tuple(22.5 * k for k in range(8))
"""Orientation (degrees) of line class k, and of conv1 channel k's training target."""
CURVE_DIRECTIONS: tuple[float, ...] = tuple(45.0 * k for k in range(8))
"""Direction (degrees) in which the arcs of class 8 + k bulge."""
LINE_JITTER, CURVE_JITTER = 5.0, 10.0  # uniform +- degrees around a class's angle
LENGTHS = (10.0, 20.0)  # line lengths, pixels
RADII = (6.0, 10.0)  # arc radii, pixels
SPANS = (90.0, 150.0)  # arc angles, degrees
CONTRAST = (0.6, 1.0)  # stroke intensity
N_CLASSES = len(LINE_ORIENTATIONS) + len(CURVE_DIRECTIONS)
WEIGHTS_PATH = Path(__file__).parent / "weights" / "curve.safetensors"


@dataclass(frozen=True)
class CurveBatch:
    """Labelled stroke images, each label from how the stroke was drawn.

    images: the pictures, values about 0 (background) to 1 (stroke), plus noise.
    label: the class, 0..7 lines, 8..15 curves (see the module docstring).
    kind: 0 for a line, 1 for a curve. angle: the drawn angle in degrees (a line's orientation in
    [0, 180), a curve's direction in [0, 360)), before any rounding to a class.
    curvature: 1 / radius in 1 / pixels for curves, 0 for lines.
    """

    images: Float[Tensor, "n 1 h w"]
    label: Int[Tensor, " n"]
    kind: Int[Tensor, " n"]
    angle: Float[Tensor, " n"]
    curvature: Float[Tensor, " n"]

    def __len__(self) -> int:
        return int(self.label.shape[0])


class CurveCNN(nn.Module):
    """conv1 -> relu1 -> pool1 -> conv2 -> relu2 -> pool2; the output is pool2 (16 logits).

    Input: batch x 1 x h x w grayscale images (trained at 32 x 32; the net is fully convolutional,
    so other sizes work). Build it with `curve_cnn()`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, len(LINE_ORIENTATIONS), 5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(len(LINE_ORIENTATIONS), N_CLASSES, 5, padding=2)
        self.relu2 = nn.ReLU()
        self.pool2 = GlobalMaxPool()

    def forward(self, images: Float[Tensor, "batch 1 h w"]) -> Float[Tensor, "batch 16"]:
        _check_images(images)
        h = self.pool1(self.relu1(self.conv1(images)))
        return self.pool2(self.relu2(self.conv2(h)))


def curve_cnn() -> CurveCNN:
    """The trained model (eval mode) with its shipped weights (`WEIGHTS_PATH`).

    Shapes: images [batch, 1, h, w] float (trained at 32 x 32) -> logits [batch, 16]; sites
    conv1, relu1 [batch, 8, h, w], pool1 [batch, 8, h/2, w/2], conv2, relu2 [batch, 16, h/2,
    w/2], pool2 [batch, 16].

        model = cc.zoo.curve_cnn()
        batch = cc.zoo.curve_images(256, seed=1)
        (model(batch.images).argmax(1) == batch.label).float().mean()     # about 0.9

    Raises nothing itself (the weights ship with the package); the model raises InputError when
    it is called on images that are not float [batch, 1, h, w].
    """
    from safetensors.torch import load_file

    model = CurveCNN()
    model.load_state_dict(load_file(WEIGHTS_PATH))
    return model.eval()


def curve_class_names() -> list[str]:
    """The 16 class names by index: "line 0°" .. "line 157.5°", then "curve 0°" .. "curve 315°".

        names = cc.zoo.curve_class_names()
        names[int(model(images).argmax(1)[0])]          # e.g. "curve 90°", an arch

    Raises nothing.
    """
    lines = [f"line {a:g}°" for a in LINE_ORIENTATIONS]
    return lines + [f"curve {a:g}°" for a in CURVE_DIRECTIONS]


def curve_images(
    n: int, *, label: int | None = None, size: int = SIZE, noise: float = NOISE, seed: int = 0
) -> CurveBatch:
    """`n` random labelled images from the training distribution; same seed, same images.

    Classes equally likely (half lines, half curves on average), or all of class `label`. A line:
    length 10..20 pixels, at its class's orientation +-5 degrees. A curve: radius 6..10 pixels,
    arc angle 90..150 degrees, bulging in its class's direction +-10 degrees. Intensity 0.6..1,
    width 1.5 pixels, placed at random with the whole stroke at least 2 pixels from the border
    (so size >= 24), then Gaussian pixel noise of std `noise`. The training script draws from
    another random stream.

    Shapes: `images` [n, 1, size, size] float32; `label`, `kind` [n] int64; `angle`,
    `curvature` [n] float32 (see `CurveBatch`).

        batch = cc.zoo.curve_images(64, seed=1)
        arcs = cc.zoo.curve_images(16, label=10, noise=0.0)     # arches, bulging up (90°)

    Raises:
        ConfigError: `n` is not an int >= 1, `size` not an int >= 24, `noise` not a number in
            [0, 10], or `label` not None or a class in [0, 16).
    """
    _check_int("n", n, 1)
    _check_int("size", size, 24)
    _check_number("noise", noise, 0.0, 10.0, "a pixel std")
    if label is not None and (
        isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < N_CLASSES
    ):
        raise ConfigError(f"label must be None or a class in [0, {N_CLASSES}), got {label!r}")
    gen = torch.Generator().manual_seed(seed)
    return sample(n, gen, label=label, size=size, noise=float(noise))


def sample(
    n: int,
    gen: torch.Generator,
    *,
    label: int | Tensor | None = None,
    size: int = SIZE,
    noise: float = NOISE,
) -> CurveBatch:
    """Draw a CurveBatch from `gen` (unchecked arguments; the training loop's data stream).

    label: None (every class equally likely), one class, or a class per image.
    """

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    if label is None:
        labels = torch.randint(N_CLASSES, (n,), generator=gen)
    else:
        labels = torch.as_tensor(label, dtype=torch.long).expand(n).clone()
    kind = (labels >= len(LINE_ORIENTATIONS)).long()
    k = labels % len(LINE_ORIENTATIONS)
    angle = torch.where(
        kind == 1,
        torch.tensor(CURVE_DIRECTIONS)[k] + uniform(-CURVE_JITTER, CURVE_JITTER),
        torch.tensor(LINE_ORIENTATIONS)[k] + uniform(-LINE_JITTER, LINE_JITTER),
    )
    length, radius = uniform(*LENGTHS), uniform(*RADII)
    span = torch.deg2rad(uniform(*SPANS))
    half = torch.where(kind == 1, _arc_half_extent(radius, span), length / 2)
    free = size - 2 * MARGIN - 2 * half  # room left for the stroke's centre
    cx, cy = MARGIN + half + uniform(0, 1) * free, MARGIN + half + uniform(0, 1) * free
    strokes = torch.where(
        (kind == 1)[:, None, None],
        _arcs(cx, cy, torch.deg2rad(angle), radius, span, size),
        _segments(cx, cy, torch.deg2rad(angle), length, size),
    )
    images = strokes * uniform(*CONTRAST)[:, None, None]
    images = images + noise * torch.randn(n, size, size, generator=gen)
    curvature = torch.where(kind == 1, 1.0 / radius, torch.zeros(n))
    angle = torch.where(kind == 1, angle % 360, angle % 180)
    return CurveBatch(images[:, None], labels, kind, angle, curvature)


def line_stimuli(
    orientations: Sequence[float] | Tensor, *, length: float = 20.0, size: int = SIZE
) -> Float[Tensor, "n 1 size size"]:
    """Noise-free lines through the image centre, one image per orientation (degrees), width 1.5.

    Shapes: [n, 1, size, size] float32 for n orientations; length in pixels.

        lines = cc.zoo.line_stimuli(torch.arange(0, 180, 7.5))      # 24 orientations
        tuning = cc.zoo.peak_responses(model, lines, "relu1")      # [24, 8]

    Raises:
        ConfigError: `orientations` is not a non-empty 1-d sequence of finite numbers, `size`
            is not an int >= 8, or `length` is not a number in (0, size].
    """
    theta = _angles(orientations)
    _check_int("size", size, 8)
    _check_number("length", length, 0.0, size, "pixels", open_low=True)
    centre = torch.full_like(theta, (size - 1) / 2)
    return _segments(centre, centre, theta, torch.full_like(theta, float(length)), size)[:, None]


def arc_stimuli(
    directions: Sequence[float] | Tensor,
    *,
    radius: float = 8.0,
    span: float = 120.0,
    size: int = SIZE,
) -> Float[Tensor, "n 1 size size"]:
    """Noise-free arcs centred in the image, one per bulge direction (degrees), width 1.5.

    radius in pixels, span (the arc's angle) in degrees, at most 180.

    Shapes: [n, 1, size, size] float32 for n directions.

        arcs = cc.zoo.arc_stimuli(cc.zoo.CURVE_DIRECTIONS)         # one per curve class
        cc.zoo.peak_responses(model, arcs, "relu2")[:, 8:].argmax(1)   # tensor([0, ..., 7])

    Raises:
        ConfigError: `directions` is not a non-empty 1-d sequence of finite numbers, `size` is
            not an int >= 8, `radius` is not in (0, size / 2] or `span` not in (0, 180].
    """
    phi = _angles(directions)
    _check_int("size", size, 8)
    _check_number("radius", radius, 0.0, size / 2, "pixels", open_low=True)
    _check_number("span", span, 0.0, 180.0, "degrees", open_low=True)
    centre = torch.full_like(phi, (size - 1) / 2)
    radii, spans = torch.full_like(phi, float(radius)), torch.full_like(phi, math.radians(span))
    return _arcs(centre, centre, phi, radii, spans, size)[:, None]


def peak_responses(
    model: nn.Module, images: Float[Tensor, "n 1 h w"], site: str
) -> Float[Tensor, "n channel"]:
    """Each channel's largest activation at `site` (a conv-shaped site) on each image.

    The peak over positions is what a detector reports ("it fired somewhere"), so the tuning of a
    channel to a stimulus family is one column of this table.

    Shapes: images [n, 1, h, w]; the site's activations [n, channel, h', w'] -> [n, channel].

        lines = cc.zoo.line_stimuli(cc.zoo.LINE_ORIENTATIONS)
        cc.zoo.peak_responses(cc.zoo.curve_cnn(), lines, "relu1").argmax(1)   # each line's channel

    Raises:
        InputError: the site's activations are not [batch, channel, h, w] (pool2, say), or the
            model's forward pass fails on `images`.
        SiteNotFoundError: `site` is not one of the model's.
        SiteNotFiredError, SiteRepeatedError: the site does not run exactly once per pass.
    """
    act = capture(model, images, sites=[site])[site]
    if act.ndim != 4:
        raise InputError(
            f"site {site!r} has activations of shape {tuple(act.shape)}; peak_responses needs a "
            "batch x channel x h x w site such as 'relu1' or 'relu2'"
        )
    return act.amax(dim=(-2, -1))


def _segments(
    cx: Tensor, cy: Tensor, theta: Tensor, length: Tensor, size: int
) -> Float[Tensor, "n size size"]:
    """Anti-aliased straight segments: centre (cx, cy) in pixels (x right, y down), angle theta."""
    x, y = _grid(size, cx, cy)
    ux, uy = torch.cos(theta)[:, None, None], -torch.sin(theta)[:, None, None]
    half = length[:, None, None] / 2
    t = (x * ux + y * uy).clamp(min=-half, max=half)  # nearest point on the segment
    return _ink(torch.hypot(x - t * ux, y - t * uy))


def _arcs(
    cx: Tensor, cy: Tensor, phi: Tensor, radius: Tensor, span: Tensor, size: int
) -> Float[Tensor, "n size size"]:
    """Anti-aliased circular arcs bulging towards phi, their bounding box centred on (cx, cy)."""
    shift = _arc_sagitta(radius, span) / 2 - radius  # from the box centre to the circle's centre
    ox, oy = cx + shift * torch.cos(phi), cy - shift * torch.sin(phi)
    x, y = _grid(size, ox, oy)
    off = torch.remainder(torch.atan2(-y, x) - phi[:, None, None] + math.pi, 2 * math.pi) - math.pi
    on_arc = off.abs() <= span[:, None, None] / 2
    to_circle = (torch.hypot(x, y) - radius[:, None, None]).abs()
    ends = [phi + s * span / 2 for s in (-1.0, 1.0)]
    to_ends = torch.stack(
        [
            torch.hypot(
                x - (radius * torch.cos(a))[:, None, None],
                y + (radius * torch.sin(a))[:, None, None],
            )
            for a in ends
        ]
    ).amin(0)
    return _ink(torch.where(on_arc, to_circle, to_ends))


def _grid(size: int, cx: Tensor, cy: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates relative to (cx, cy), each n x size x size."""
    pos = torch.arange(size, dtype=torch.float32)
    return pos[None, None, :] - cx[:, None, None], pos[None, :, None] - cy[:, None, None]


def _ink(distance: Tensor) -> Tensor:
    """Intensity from distance to the stroke's centre line: 1 inside, a 1-pixel linear edge."""
    return (WIDTH / 2 + 0.5 - distance).clamp(0.0, 1.0)


def _arc_sagitta(radius: Tensor, span: Tensor) -> Tensor:
    """How far the arc's midpoint stands out from its chord."""
    return radius * (1 - torch.cos(span / 2))


def _arc_half_extent(radius: Tensor, span: Tensor) -> Tensor:
    """The farthest an arc's point lies from its box centre (spans up to 180 degrees): a corner."""
    return torch.hypot(radius * torch.sin(span / 2), _arc_sagitta(radius, span) / 2)


def _angles(degrees: Sequence[float] | Tensor) -> Tensor:
    """Degrees (a sequence or a 1-d tensor) as float32 radians."""
    angles = torch.as_tensor(degrees, dtype=torch.float32)
    if angles.ndim != 1 or angles.numel() == 0 or not bool(torch.isfinite(angles).all()):
        raise ConfigError(
            f"angles must be a non-empty 1-d sequence of finite degrees, got {degrees!r}"
        )
    return torch.deg2rad(angles)


def _check_int(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{name} must be an int >= {least}, got {value!r}")


def _check_number(
    name: str, value: object, low: float, high: float, unit: str, *, open_low: bool = False
) -> None:
    """A real number in [low, high] (or (low, high] with open_low), else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        ok = False
    else:
        ok = low < value <= high if open_low else low <= value <= high
    if not ok:
        left = "(" if open_low else "["
        raise ConfigError(
            f"{name} must be a number in {left}{low:g}, {high:g}] ({unit}), got {value!r}"
        )


def _check_images(images: object) -> None:
    dtype = check_gray_images(images, "curve_cnn").dtype
    if not dtype.is_floating_point:
        raise InputError(f"curve_cnn takes float images, got dtype {dtype}")
