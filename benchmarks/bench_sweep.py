"""A sweep of 64 prompt pairs of the induction model, patching every head: Ray against local.

The sweep cuts the pairs into 8 batches of 8 and runs `cc.patch` on each: locally, one batch
after another in this process; on Ray, as 8 tasks on a local cluster of 2 CPUs started here
(2 workers, one thread each, as Ray sets them), after a first sweep that starts the workers
and ships them the model (not timed: it happens once per cluster). The reference for both is
one `cc.patch` over the whole batch. The sides run in turn, best of ROUNDS, under the same load.
The per-item cost (local sweep time / items) is what docs/scale.md scales to 100k prompts.
"""

from __future__ import annotations

import os
import sys

import torch

import circuits as cc

from .timing import interleaved, row

N, BATCH, ROUNDS = 64, 8, 5
HEADS = {"site": "blocks.{L}.attn.hook_z", "unit": "head"}


def _loss(batch: dict) -> cc.metrics.Metric:
    return cc.metrics.cross_entropy(batch["clean"], mask=batch["mask"])


def _nothing(batch: list[int]) -> None:
    return None


def run() -> list[dict[str, object]]:
    try:
        import ray
    except ImportError:
        print("bench_sweep: ray is not installed; pip install 'circuits-mi[ray]'", file=sys.stderr)
        return []
    model = cc.zoo.induction_transformer()
    clean, corrupt, info = cc.zoo.induction_pair(N, seed=3)
    pairs = {"clean": clean, "corrupt": corrupt, "mask": info.is_repeat}
    options = dict(model=model, batch_size=BATCH, metric_for=_loss, progress=False, **HEADS)
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cc.sweep(cc.patch, pairs, backend="ray", **options)  # workers start, the model ships
        idle = {"batch_size": BATCH, "progress": False}
        whole, local, remote, empty = interleaved(
            [
                lambda: cc.patch(model, clean, corrupt, _loss(pairs), progress=False, **HEADS),
                lambda: cc.sweep(cc.patch, pairs, **options),
                lambda: cc.sweep(cc.patch, pairs, backend="ray", **options),
                lambda: cc.sweep(_nothing, list(range(N)), backend="ray", **idle),
            ],
            repeat=ROUNDS,
        )
    finally:
        if started:
            ray.shutdown()
    omp = os.environ.get("OMP_NUM_THREADS")
    threads = f"{torch.get_num_threads()} torch thread(s) here (OMP_NUM_THREADS={omp})"
    setup = f"{N} pairs, batches of {BATCH}, best of {ROUNDS}"
    return [
        row(
            "sweep on Ray (2 workers) / local sweep, patch every head",
            remote,
            local,
            f"{setup}; ratio = local/ray, above 1 when Ray is faster; local uses {threads}",
        ),
        row(
            "local sweep / one cc.patch over all pairs",
            local,
            whole,
            f"{setup}; ratio = one call/sweep: the cost of cutting the sweep into batches",
        ),
        {
            "benchmark": "per-item cost of the sweep (local, patch every head)",
            "ours_s": local / N,
            "reference_s": remote / N,
            "ratio": None,
            "note": "seconds per prompt pair: ours_s local, reference_s Ray with 2 workers; "
            "the figure docs/scale.md scales to 100k prompts",
        },
        {
            "benchmark": "Ray overhead per task (a function that does nothing)",
            "ours_s": empty / (N // BATCH),
            "reference_s": None,
            "ratio": None,
            "note": f"a sweep of {N // BATCH} empty tasks on 2 workers / tasks: submitting, "
            "scheduling, and gathering results, with the model already on the workers",
        },
    ]


if __name__ == "__main__":
    for r in run():
        print(r)
