"""Train `curve_cnn` from scratch: ``python -m circuits.zoo.train_curve --out PATH``.

The recipe, and why each part is there (the figures come from trial runs of this script):

1. Warm-up (STAGE1_STEPS): conv1 alone names the orientation of a line. Each image holds one line
   from `sample` (lines only); conv1 channel k's peak activation is the logit of
   LINE_ORIENTATIONS[k]. Trained end to end on the 16-class task instead, conv1 settled on
   polysemantic mixtures (several bars of different orientations per channel, the orthogonal
   line still reaching a third to two thirds of the preferred response) in every setting tried:
   activity penalties, weight normalisation, 16 channels. The curve channels' inputs were then
   dominated by one broad channel and no tangent structure could be read. The warm-up gives
   conv1 one orientation per channel, as natural images give early vision; it says nothing about
   curves.
2. Curves (STAGE2_STEPS): conv1 frozen, conv2 learns the 16-class task (`curve_cnn`'s module
   docstring). With conv1 trainable here, it drifts back towards mixtures. conv2 is free: which
   line detectors a curve channel reads, and where, is what it learns.
3. The loss, in both stages: softmax cross-entropy plus a one-vs-rest term,
   binary cross-entropy of (logit - TAU) against "is this the class". Cross-entropy alone only
   ranks the logits: every channel may fire on every stroke as long as the right one fires most,
   and then the curve channels' best arc beat their best line only 1.1 to 2 times (2.2 to 4.7 now).
   The one-vs-rest term asks each channel to stay below TAU unless its class is present, which
   makes the curve channels silent on lines and on arcs bulging the other way.
4. No linear readout: with one, the classes were spread over channels (each channel serving
   several classes, a few dead); with channel k as class k's logit, each channel has one job.
5. Pixel noise (std NOISE) makes integrating along a stroke pay, as oriented detectors do.

Everything is seeded and the run is deterministic on CPU (`torch.use_deterministic_algorithms`) for
a given machine and torch build: the same command writes the same bytes. The shipped file came from
the default settings on one CPU thread (75 to 100 s on a busy 2-core machine). Next to the
weights it writes a JSON record: the settings, the loss curve and the figures `evaluate` measures
(held-out accuracy, the tuning of every channel, and the conv1 -> curve channel edges by EAP-IG
and by ablation).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from circuits.attribution import attribute
from circuits.hooks import run
from circuits.site import Site
from circuits.zoo.curve import (
    CURVE_DIRECTIONS,
    LINE_ORIENTATIONS,
    N_CLASSES,
    CurveCNN,
    arc_stimuli,
    curve_images,
    line_stimuli,
    peak_responses,
    sample,
)

__all__ = ["evaluate", "main", "one_vs_rest_loss", "train"]

log = logging.getLogger(__name__)

STAGE1_STEPS, STAGE2_STEPS, BATCH_SIZE, LR, TAU = 3000, 3000, 64, 1e-3, 3.0
EVAL_SEED, EVAL_N = 12_345, 4096  # held-out data; training data come from another stream
STEP = 7.5  # degrees between tuning stimuli
Batches = Callable[[], tuple[Tensor, Tensor]]  # draws (images, labels)
Forward = Callable[[Tensor], Tensor]  # images -> logits


def one_vs_rest_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy plus binary cross-entropy of (logit - TAU) per class, summed over classes."""
    target = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    ovr = F.binary_cross_entropy_with_logits(logits - TAU, target, reduction="sum") / len(labels)
    return F.cross_entropy(logits, labels) + ovr


def train(
    *,
    seed: int = 0,
    stage1_steps: int = STAGE1_STEPS,
    stage2_steps: int = STAGE2_STEPS,
    batch_size: int = BATCH_SIZE,
    progress: bool = False,
) -> tuple[CurveCNN, list[float]]:
    """Train a fresh model from `seed`; returns it (eval mode) and the loss at every step.

    Same seed and settings, same weights (same machine and torch build).
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(seed, stage1_steps, stage2_steps, batch_size, progress)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _train(
    seed: int, stage1_steps: int, stage2_steps: int, batch_size: int, progress: bool
) -> tuple[CurveCNN, list[float]]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CurveCNN().train()
    data = torch.Generator().manual_seed(10_000 + seed)
    losses: list[float] = []

    def conv1_logits(images: Tensor) -> Tensor:
        return model.relu1(model.conv1(images)).amax(dim=(-2, -1))

    def line_batch() -> tuple[Tensor, Tensor]:
        classes = torch.randint(len(LINE_ORIENTATIONS), (batch_size,), generator=data)
        batch = sample(batch_size, data, label=classes)
        return batch.images, batch.label

    def curve_batch() -> tuple[Tensor, Tensor]:
        batch = sample(batch_size, data)
        return batch.images, batch.label

    stages: list[tuple[str, nn.Module, int, Batches, Forward]] = [
        ("conv1 lines", model.conv1, stage1_steps, line_batch, conv1_logits),
        ("conv2 curves", model.conv2, stage2_steps, curve_batch, model),
    ]
    for desc, layer, steps, draw, forward in stages:
        opt = torch.optim.Adam(layer.parameters(), lr=LR)
        bar = tqdm(range(steps), disable=not progress, desc=desc)
        for _ in bar:
            images, labels = draw()
            loss = one_vs_rest_loss(forward(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        layer.requires_grad_(False)  # frozen from here on
    model.requires_grad_(True)
    return model.eval(), losses


def evaluate(model: CurveCNN) -> dict[str, Any]:
    """Held-out accuracy, the tuning of every channel, and the circuit into each curve channel."""
    return {
        "accuracy": _accuracy(model),
        "conv1": _conv1_tuning(model),
        "conv2": _conv2_tuning(model),
        "circuit": [_curve_inputs(model, k) for k in range(len(CURVE_DIRECTIONS))],
    }


def _accuracy(model: CurveCNN) -> dict[str, float]:
    batch = curve_images(EVAL_N, seed=EVAL_SEED)
    with torch.no_grad():
        predicted = model(batch.images).argmax(1)
    right = predicted == batch.label
    lines = batch.kind == 0
    same_kind = (predicted >= len(LINE_ORIENTATIONS)) == (batch.kind == 1)
    return {
        "n": EVAL_N,
        "seed": EVAL_SEED,
        "all": float(right.float().mean()),
        "lines": float(right[lines].float().mean()),
        "curves": float(right[~lines].float().mean()),
        "line_vs_curve": float(same_kind.float().mean()),
    }


def _conv1_tuning(model: CurveCNN) -> dict[str, Any]:
    """Per conv1 channel: preferred line orientation, peak, and the orthogonal line's response."""
    angles = torch.arange(0.0, 180.0, STEP)
    resp = peak_responses(model, line_stimuli(angles), "relu1")  # [angle, channel]
    best = resp.argmax(0)
    orth = resp[(best + len(angles) // 2) % len(angles), torch.arange(resp.shape[1])]
    return {
        "stimulus": f"noise-free lines through the centre, length 20, every {STEP} degrees",
        "preferred_orientation": angles[best].tolist(),
        "peak": resp.amax(0).tolist(),
        "orthogonal": orth.tolist(),
    }


def _conv2_tuning(model: CurveCNN) -> dict[str, Any]:
    """Per conv2 channel: best line and best arc (and the opposite arc's response)."""
    angles = torch.arange(0.0, 360.0, STEP)
    arcs = torch.stack([peak_responses(model, arc_stimuli(angles, radius=r), "relu2")
                        for r in (6.0, 8.0, 10.0)]).amax(0)  # fmt: skip
    orientations = angles[angles < 180]
    lines = torch.stack([peak_responses(model, line_stimuli(orientations, length=n), "relu2")
                         for n in (10.0, 20.0)]).amax(0)  # fmt: skip
    best = arcs.argmax(0)
    opposite = arcs[(best + len(angles) // 2) % len(angles), torch.arange(arcs.shape[1])]
    return {
        "stimulus": f"noise-free centred arcs (radius 6, 8, 10; 120 degrees) and lines "
        f"(length 10, 20), every {STEP} degrees",
        "preferred_curve_direction": angles[best].tolist(),
        "curve_peak": arcs.amax(0).tolist(),
        "opposite_curve": opposite.tolist(),
        "preferred_line_orientation": orientations[lines.argmax(0)].tolist(),
        "line_peak": lines.amax(0).tolist(),
    }


def _curve_inputs(model: CurveCNN, k: int) -> dict[str, Any]:
    """Edges conv1 -> curve channel 8 + k on its own arcs: EAP-IG and single-channel ablations."""
    channel = len(LINE_ORIENTATIONS) + k
    clean = curve_images(64, label=channel, noise=0.0, seed=EVAL_SEED + channel).images

    def metric(logits: Tensor) -> Tensor:
        return logits[:, channel].mean()

    res = attribute(model, clean, torch.zeros_like(clean), metric, method="eap-ig",
                    direction="denoise")  # fmt: skip
    sources = [res.coords["source"].index(f"conv1[{c}]") for c in range(len(LINE_ORIENTATIONS))]
    eap = res.scores[sources, res.coords["target"].index(f"conv2[{channel}]")]
    with torch.no_grad():
        base = float(metric(model(clean)))
    drop = [1 - _ablated(model, clean, c, metric) / base for c in range(len(LINE_ORIENTATIONS))]
    return {
        "channel": channel,
        "direction": CURVE_DIRECTIONS[k],
        "tangent_at_midpoint": (CURVE_DIRECTIONS[k] + 90.0) % 180.0,
        "response": base,
        "eap_ig_from_conv1": eap.tolist(),
        "ablation_drop_from_conv1": drop,
    }


def _ablated(model: CurveCNN, images: Tensor, channel: int, metric: Any) -> float:
    """`metric` with conv1 channel `channel` zeroed after its ReLU."""

    def zero(act: Tensor, site: Site) -> Tensor:
        act = act.clone()
        act[:, channel] = 0.0
        return act

    return float(metric(run(model, images, replace={"relu1": zero}).output))


def main(argv: list[str] | None = None) -> None:
    """The command line: train, save the weights and the JSON record, log the figures."""
    parser = argparse.ArgumentParser(description="Train the circuits.zoo curve detector.")
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    from safetensors.torch import save_file

    start = time.perf_counter()
    model, losses = train(seed=args.seed, progress=True)
    seconds = time.perf_counter() - start
    figures = evaluate(model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    record = {
        "classes": N_CLASSES,
        "training": {
            "command": f"python -m circuits.zoo.train_curve --out PATH --seed {args.seed}",
            "seed": args.seed,
            "stage1_steps": STAGE1_STEPS,
            "stage2_steps": STAGE2_STEPS,
            "batch_size": BATCH_SIZE,
            "lr": LR,
            "tau": TAU,
            "seconds": round(seconds, 1),
            "threads": args.threads,
            "torch": torch.__version__,
            "loss_every_100_steps": [round(x, 4) for x in losses[::100]] + [round(losses[-1], 4)],
        },
        "eval": figures,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    log.info("trained in %.0f s; held-out accuracy %.3f", seconds, figures["accuracy"]["all"])
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
