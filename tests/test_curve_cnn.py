"""The trained curve detector: its claims measured with stimuli drawn here, not by the model's code.

`_draw` renders strokes its own way (points along the curve, splatted onto a 4x finer grid and
averaged down: box-filtered coverage), so no claim rests on the generator the model trained on.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import circuits as cc
from circuits.zoo.curve import (
    CURVE_DIRECTIONS,
    LINE_ORIENTATIONS,
    N_CLASSES,
    WEIGHTS_PATH,
    CurveCNN,
    arc_stimuli,
    curve_class_names,
    curve_cnn,
    curve_images,
    line_stimuli,
    peak_responses,
)
from circuits.zoo.train_curve import one_vs_rest_loss, train

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, HALF_WIDTH, FINE = 32, 0.75, 4
ORIENTATIONS = np.arange(0.0, 180.0, 7.5)
DIRECTIONS = np.arange(0.0, 360.0, 15.0)
CURVES = range(len(LINE_ORIENTATIONS), N_CLASSES)  # conv2 channels 8..15


@pytest.fixture(scope="module")
def model() -> CurveCNN:
    return curve_cnn()


def _draw(points: np.ndarray) -> np.ndarray:
    """Coverage of a stroke 1.5 pixels wide along `points` (x right, y down, pixel centres at
    integers), on a 4x finer grid averaged down to SIZE x SIZE."""
    fine = (np.arange(SIZE * FINE) + 0.5) / FINE - 0.5
    ys, xs = np.meshgrid(fine, fine, indexing="ij")
    near = np.zeros(xs.shape, dtype=bool)
    for x, y in points:
        near |= (xs - x) ** 2 + (ys - y) ** 2 <= HALF_WIDTH**2
    return near.reshape(SIZE, FINE, SIZE, FINE).mean(axis=(1, 3))


def _line(orientation: float, length: float = 20.0) -> np.ndarray:
    t = math.radians(orientation)
    s = np.linspace(-length / 2, length / 2, int(length * 8))
    c = (SIZE - 1) / 2
    return _draw(np.stack([c + s * math.cos(t), c - s * math.sin(t)], axis=1))


def _arc(direction: float, radius: float = 8.0, span: float = 120.0) -> np.ndarray:
    """An arc bulging towards `direction`, its chord-to-midpoint axis centred in the image."""
    p, half = math.radians(direction), math.radians(span) / 2
    sagitta = radius * (1 - math.cos(half))
    c = (SIZE - 1) / 2 - (radius - sagitta / 2) * np.array([math.cos(p), -math.sin(p)])
    a = p + np.linspace(-half, half, int(radius * span / 6))
    return _draw(np.stack([c[0] + radius * np.cos(a), c[1] - radius * np.sin(a)], axis=1))


def _images(drawings: list[np.ndarray]) -> torch.Tensor:
    return torch.tensor(np.stack(drawings), dtype=torch.float32)[:, None]


def _gap(a: float, b: float, period: float = 180.0) -> float:
    """Circular distance between two angles in degrees."""
    return abs((a - b + period / 2) % period - period / 2)


@pytest.fixture(scope="module")
def line_peaks(model):
    """[orientation, channel] peaks at relu1 and relu2 for lines of length 10 and 20."""
    lines = {n: _images([_line(o, n) for o in ORIENTATIONS]) for n in (10.0, 20.0)}
    return {
        "relu1": peak_responses(model, lines[20.0], "relu1"),
        "relu2": torch.maximum(*(peak_responses(model, x, "relu2") for x in lines.values())),
    }


@pytest.fixture(scope="module")
def arc_peaks(model):
    """[direction, channel] relu2 peaks, best over radius 6, 8, 10."""
    per_radius = [
        peak_responses(model, _images([_arc(d, r) for d in DIRECTIONS]), "relu2")
        for r in (6.0, 8.0, 10.0)
    ]
    return torch.stack(per_radius).amax(0)


# the model and its record


def test_weights_load_into_the_architecture(model):
    assert isinstance(model, CurveCNN) and not model.training
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {
        "conv1.weight": (8, 1, 5, 5),
        "conv1.bias": (8,),
        "conv2.weight": (16, 8, 5, 5),
        "conv2.bias": (16,),
    }
    assert len(curve_class_names()) == N_CLASSES == 16
    assert model(torch.zeros(3, 1, SIZE, SIZE)).shape == (3, N_CLASSES)


def test_held_out_accuracy_matches_the_record(model):
    record = json.loads(WEIGHTS_PATH.with_suffix(".json").read_text())["eval"]["accuracy"]
    batch = curve_images(record["n"], seed=record["seed"])
    with torch.no_grad():
        right = model(batch.images).argmax(1) == batch.label
    assert float(right.float().mean()) == pytest.approx(record["all"], abs=0.005)
    assert record["all"] >= 0.9 and record["line_vs_curve"] >= 0.95


def test_classifies_strokes_drawn_another_way(model):
    lines = [_line(o, n) for o in LINE_ORIENTATIONS for n in (12.0, 18.0)]
    arcs = [_arc(d, r) for d in CURVE_DIRECTIONS for r in (6.0, 8.0, 10.0)]
    labels = [k for k in range(8) for _ in range(2)] + [8 + k for k in range(8) for _ in range(3)]
    with torch.no_grad():
        predicted = model(_images(lines + arcs)).argmax(1)
    assert float((predicted == torch.tensor(labels)).float().mean()) >= 0.9


# conv1: oriented line detectors


def test_conv1_channels_are_orientation_tuned(line_peaks):
    resp = line_peaks["relu1"]  # [orientation, channel]
    best = resp.argmax(0)
    orthogonal = resp[(best + len(ORIENTATIONS) // 2) % len(ORIENTATIONS), torch.arange(8)]
    assert bool((orthogonal <= 0.2 * resp.amax(0)).all()), orthogonal / resp.amax(0)
    preferred = ORIENTATIONS[best.numpy()]
    for k, angle in enumerate(preferred):  # channel k learned LINE_ORIENTATIONS[k]
        assert _gap(angle, LINE_ORIENTATIONS[k]) <= 10.0, (k, angle)
    assert len({round(a / 22.5) % 8 for a in preferred}) >= 6  # they tile the orientations


# conv2: curve detectors (channels 8..15) and line detectors (0..7)


def test_curve_channels_fire_more_for_curves_than_for_any_line(line_peaks, arc_peaks):
    for channel in CURVES:
        curve = float(arc_peaks[:, channel].max())
        line = float(line_peaks["relu2"][:, channel].max())
        assert curve >= 2.0 * line, (channel, curve, line)


def test_curve_channels_are_selective_for_one_direction(arc_peaks):
    for channel in CURVES:
        resp = arc_peaks[:, channel]
        best = int(resp.argmax())
        assert _gap(DIRECTIONS[best], CURVE_DIRECTIONS[channel - 8], 360.0) <= 22.5, channel
        opposite = resp[(best + len(DIRECTIONS) // 2) % len(DIRECTIONS)]
        assert float(opposite) <= 0.3 * float(resp[best]), channel


def test_line_channels_fire_more_for_lines(line_peaks, arc_peaks):
    for channel in range(8):
        assert line_peaks["relu2"][:, channel].max() > 1.3 * arc_peaks[:, channel].max()
        best = ORIENTATIONS[int(line_peaks["relu2"][:, channel].argmax())]
        assert _gap(best, LINE_ORIENTATIONS[channel]) <= 10.0


# the circuit: curve channels read the line detectors tangent to their arc


@pytest.fixture(scope="module")
def curve_edges(model):
    """Per curve channel: EAP-IG scores of its conv1 inputs on its own arcs (blank baseline)."""
    out = {}
    for channel in CURVES:
        direction = CURVE_DIRECTIONS[channel - 8]
        clean = _images([_arc(direction + j, r) for j in (-8, 0, 8) for r in (6.0, 8.0, 10.0)])
        res = cc.attribute(model, clean, torch.zeros_like(clean), _logit(channel),
                           method="eap-ig", direction="denoise")  # fmt: skip
        frame = res.edge_frame().set_index(["source", "target"])["weight"]
        scores = torch.tensor([frame[(f"conv1[{c}]", f"conv2[{channel}]")] for c in range(8)])
        out[channel] = (clean, scores)
    return out


def _logit(channel: int):
    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, channel].mean()

    return metric


def _tangent_gaps(channel: int) -> list[float]:
    tangent = (CURVE_DIRECTIONS[channel - 8] + 90.0) % 180.0  # at the arc's midpoint
    return [_gap(angle, tangent) for angle in LINE_ORIENTATIONS]


def test_top_edges_come_from_tangent_line_detectors(curve_edges):
    for channel, (_, scores) in curve_edges.items():
        gaps = _tangent_gaps(channel)
        top = int(scores.argmax())
        assert gaps[top] <= 30.0, (channel, top, scores)
        for c, gap in enumerate(gaps):  # no part of a 120-degree arc has this orientation
            if gap > 60.0:
                assert abs(float(scores[c])) < 0.25 * float(scores[top]), (channel, c, scores)


def test_ablating_an_attributed_edge_source_drops_the_curve_channel(model, curve_edges):
    """A real intervention for the top edge and for a non-tangent channel of each curve channel."""
    for channel, (clean, scores) in curve_edges.items():
        metric = _logit(channel)
        with torch.no_grad():
            base = float(metric(model(clean)))
        top = int(scores.argmax())
        far = max(range(8), key=lambda c: _tangent_gaps(channel)[c])
        assert _ablated(model, clean, top, metric) < 0.8 * base, channel
        assert _ablated(model, clean, far, metric) == pytest.approx(base, rel=0.05), channel


def _ablated(model, images, channel, metric) -> float:
    def zero(act, site):
        act = act.clone()
        act[:, channel] = 0.0
        return act

    with torch.no_grad(), cc.hooks(model, {"relu1": zero}):
        return float(metric(model(images)))


# the stimuli and the training script


def test_curve_images_are_labelled_by_how_they_were_drawn():
    batch = curve_images(256, noise=0.0, seed=3)
    assert torch.equal(batch.images, curve_images(256, noise=0.0, seed=3).images)
    assert not torch.equal(batch.images, curve_images(256, noise=0.0, seed=4).images)
    lines = batch.kind == 0
    assert torch.equal(lines, batch.label < 8) and 0 < int(lines.sum()) < 256
    k = batch.label % 8
    pairs = zip(batch.angle[lines], k[lines], strict=True)
    assert all(_gap(float(a), 22.5 * int(c)) <= 5.0 for a, c in pairs)
    assert all(
        _gap(float(a), 45.0 * int(c), 360.0) <= 10.0
        for a, c in zip(batch.angle[~lines], k[~lines], strict=True)
    )
    assert bool((batch.curvature[lines] == 0).all())
    assert bool(((batch.curvature[~lines] >= 0.1) & (batch.curvature[~lines] <= 1 / 6)).all())
    border = torch.ones(SIZE, SIZE, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert float(batch.images[:, 0, border].abs().max()) == 0.0  # strokes keep off the border
    one = curve_images(8, label=11, seed=0)
    assert bool((one.label == 11).all()) and bool((one.kind == 1).all())


def test_package_stimuli_agree_with_the_independent_drawing():
    ours = torch.cat([line_stimuli([30.0, 100.0]), arc_stimuli([45.0, 200.0])])
    theirs = _images([_line(30.0), _line(100.0), _arc(45.0), _arc(200.0)])
    assert float((ours - theirs).abs().mean()) < 0.03
    assert float((ours - theirs).abs().max()) < 0.5


def test_training_is_deterministic_and_freezes_conv1():
    short, _ = train(stage1_steps=3, stage2_steps=0, batch_size=8)
    first, losses = train(stage1_steps=3, stage2_steps=3, batch_size=8)
    again, losses_again = train(stage1_steps=3, stage2_steps=3, batch_size=8)
    assert losses == losses_again and len(losses) == 6
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    assert torch.equal(short.conv1.weight, first.conv1.weight)  # stage 2 leaves conv1 alone
    assert not torch.equal(short.conv2.weight, first.conv2.weight)


def test_one_vs_rest_loss_wants_the_others_below_tau():
    labels = torch.tensor([0, 1])
    quiet = torch.tensor([[8.0, 0.0, 0.0], [0.0, 8.0, 0.0]])
    loud = quiet + 5.0  # the same ranking, every channel firing
    assert one_vs_rest_loss(quiet, labels) < one_vs_rest_loss(loud, labels)


# bad inputs


@pytest.mark.parametrize(
    "call",
    [
        lambda: curve_images(0),
        lambda: curve_images(True),
        lambda: curve_images(4, label=16),
        lambda: curve_images(4, label=1.5),
        lambda: curve_images(4, size=10),
        lambda: curve_images(4, noise=-1.0),
        lambda: line_stimuli([]),
        lambda: line_stimuli([[0.0, 1.0]]),
        lambda: line_stimuli([float("nan")]),
        lambda: line_stimuli([0.0], length=0.0),
        lambda: arc_stimuli([0.0], radius=40.0),
        lambda: arc_stimuli([0.0], span=0.0),
    ],
)
def test_bad_stimulus_options_raise_config_errors(call):
    with pytest.raises(cc.ConfigError):
        call()


def test_bad_model_inputs_raise_clear_errors(model):
    with pytest.raises(cc.InputError, match="unsqueeze"):
        model(torch.zeros(2, SIZE, SIZE))
    with pytest.raises(cc.InputError, match="float"):
        model(torch.zeros(2, 1, SIZE, SIZE, dtype=torch.long))
    with pytest.raises(cc.InputError, match="relu2"):
        peak_responses(model, torch.zeros(2, 1, SIZE, SIZE), "pool2")
    with pytest.raises(cc.SiteNotFoundError, match="relu1"):
        peak_responses(model, torch.zeros(2, 1, SIZE, SIZE), "relu_1")
    assert cc.hook_count(model) == 0
