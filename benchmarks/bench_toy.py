"""Benchmark: training a sparsity sweep of toy models as one batched model vs one model at a time.

The paper's sweeps train many small ReLU output models (n=20, m=5 here, batch 1024). Ours trains
all instances together as one `ToyModel` with W of shape [instances, m, n]. Two references are
timed in the same run, with fewer steps, and everything is reported per instance-step:
- the same instances trained one after another as separate unbatched models (instances=1) with
  the same code: ratio = reference / ours is the speed-up from batching;
- the batched model trained with gradients from autograd through `model.loss` instead of the
  closed-form gradients `train` uses: the ratio is the speed-up from the closed form.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import torch

from benchmarks.timing import threads as set_threads
from circuits.toy import ToyConfig, ToyModel, train

logger = logging.getLogger(__name__)


def _timed(work: Callable[[], object]) -> tuple[float, float]:
    """CPU and wall-clock seconds that `work()` takes."""
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return time.process_time() - cpu, time.perf_counter() - wall


def _train_with_autograd(model: ToyModel, *, steps: int, batch_size: int) -> None:
    """The reference training loop: Adam at lr 1e-3 on autograd gradients of model.loss."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        model.loss(model.generate_batch(batch_size, generator)).sum().backward()
        optimizer.step()


def run(
    *,
    instances: int = 20,
    steps: int = 10_000,
    reference_steps: int = 300,
    autograd_steps: int = 1000,
    batch_size: int = 1024,
    threads: int = 1,
) -> list[dict[str, object]]:
    """Time the batched sweep against both references; one row per comparison.

    Times are CPU seconds of this process on `threads` torch threads (1 by default, restored
    afterwards): on a shared machine, time spent waiting for other jobs would otherwise swamp
    the comparison. Wall-clock totals and the load average go in the notes.
    """
    sparsity = [1 - 10 ** (-3 * i / max(instances - 1, 1)) for i in range(instances)]
    batched = ToyConfig(n_features=20, n_hidden=5, n_instances=instances, sparsity=sparsity)
    load = os.getloadavg()[0]
    with set_threads(threads):
        train(ToyModel(batched), steps=5, progress=False)  # warm-up: first-call setup costs
        ours = _timed(
            lambda: train(ToyModel(batched), steps=steps, batch_size=batch_size, progress=False)
        )
        looped = _timed(
            lambda: [
                train(
                    ToyModel(ToyConfig(n_features=20, n_hidden=5, sparsity=s)),
                    steps=reference_steps,
                    batch_size=batch_size,
                    progress=False,
                )
                for s in sparsity
            ]
        )
        autograd = _timed(
            lambda: _train_with_autograd(
                ToyModel(batched), steps=autograd_steps, batch_size=batch_size
            )
        )
    ours_s = ours[0] / (steps * instances)
    logger.info(
        "batched %.1f s, looped %.1f s, autograd %.1f s (CPU)", ours[0], looped[0], autograd[0]
    )
    common = f"CPU s per instance-step, torch threads={threads}, load average {load:.1f}; "
    ours_note = f"ours: {steps} batched steps, {ours[0]:.1f} s CPU / {ours[1]:.1f} s wall; "
    rows = [
        (
            "batched vs one model at a time",
            looped[0] / (reference_steps * instances),
            f"reference: {instances} unbatched models, {reference_steps} steps each, "
            f"{looped[0]:.1f} s CPU / {looped[1]:.1f} s wall",
        ),
        (
            "closed-form vs autograd gradients",
            autograd[0] / (autograd_steps * instances),
            f"reference: {autograd_steps} batched steps with autograd, {autograd[0]:.1f} s CPU "
            f"/ {autograd[1]:.1f} s wall",
        ),
    ]
    return [
        {
            "benchmark": f"toy sweep train ({instances} instances, n=20, m=5, batch "
            f"{batch_size}): {name}",
            "ours_s": ours_s,
            "reference_s": reference_s,
            "ratio": reference_s / ours_s,
            "note": common + ours_note + note,
        }
        for name, reference_s, note in rows
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
