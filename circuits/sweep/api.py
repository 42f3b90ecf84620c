"""`sweep`: a function or a built-in job mapped over items in batches, here or on Ray."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

from circuits.capture import capture_to_disk
from circuits.capture.remote import require_ray
from circuits.checks import check_int
from circuits.options import check_choice
from circuits.sweep.backends import run_local, run_ray, task_options
from circuits.sweep.jobs import Capture, Job, capture_job, cut, items_of, job_for, spans
from circuits.sweep.result import Failure, Part, SweepError, SweepResult

logger = logging.getLogger(__name__)

Backend = Literal["local", "ray"]
"""Where a sweep runs: this process ("local"), or tasks on a Ray cluster ("ray")."""


def sweep(
    fn: Callable[..., Any],
    items: Any,
    *,
    model: Any = None,
    backend: Backend = "local",
    batch_size: int | None = None,
    resources: Mapping[str, float] | None = None,
    retries: int = 3,
    progress: bool | None = None,
    **options: Any,
) -> Any:
    """Map `fn` over `items` in batches, here or on a Ray cluster, and gather the results.

    fn: your function, called `fn(model, batch, **options)` (`fn(batch, **options)` without a
        model), or a built-in job: `cc.patch`, `cc.path_patch`, `cc.attribute` or `cc.discover`
        (batches of prompt pairs; `metric=` the same for every batch, or `metric_for=` a
        function of the batch that builds its metric), `cc.fit_probe` (items (acts, labels)),
        or `cc.capture_to_disk` (`path=` a folder: each batch becomes one shard of one store,
        written by whichever worker runs it; `sites=`, `columns=`, `overwrite=` as there).
    items: a tensor (its rows), a mapping of equal-length columns ({"clean": ..., "corrupt":
        ..., "mask": ...}) or a list (seeds, models, batches). A batch is `items[lo:hi]`, cut
        alike from each column; with batch_size None each item of a list comes alone, as is,
        and a tensor's or columns' rows one at a time (keeping the batch axis).
    model: shipped once to each worker (Ray's object store), not once per batch.
    backend: "local" (this process, nothing to install) or "ray": the cluster `ray.init()`
        finds, else a local one it starts (`pip install 'circuits-mi[ray]'`). Both give the
        same results. resources: per task, as Ray names them ({"num_cpus": 1, "num_gpus": 1,
        "memory": bytes, or a custom resource}; default one CPU). retries: times a task whose
        worker died is run again. progress: one bar over the items (None: on a terminal).

    Returns a SweepResult (`to_frame()`: the results' frames concatenated with each row's
    `item` and `n_items`; `graph()`: graphs merged by summing scores), or for
    `cc.capture_to_disk` the DiskCache of the store.
    A batch that raises is run again item by item, so a failure names its item; when any item
    fails, a SweepError lists the failures and carries every other item's result.

    For example:

        clean, corrupt, info = cc.zoo.induction_pair(64)
        pairs = {"clean": clean, "corrupt": corrupt, "mask": info.is_repeat}
        res = cc.sweep(cc.patch, pairs, model=model, backend="ray", batch_size=8,
                       metric_for=lambda b: cc.metrics.cross_entropy(b["clean"], mask=b["mask"]),
                       site="blocks.{L}.attn.hook_z", unit="head")
        res.to_frame()                           # item, n_items, layer, head, value, effect
        cc.sweep(lambda seed: train(seed), range(8), backend="ray").values
        disk = cc.sweep(cc.capture_to_disk, tokens, model=model, backend="ray", batch_size=64,
                        path="acts/", sites=["blocks.0.hook_resid_post"])

    Raises:
        ConfigError: `backend` is not "local" / "ray", or is "ray" without Ray installed (the
            message names the extra); `batch_size`, `retries` or `resources` is invalid; a
            built-in job lacks what it needs (a model, a metric, a path) or gets a model it
            does not take; the store's folder holds a capture and `overwrite` is not set.
        InputError: `items` holds no item, columns of different lengths, or is a string.
        SweepError: one or more items raised (each named, with its traceback; the other
            results in `err.result`; a capture's shards are removed and no index is written).
    """
    check_choice(backend, Backend, "backend")
    if backend == "ray":
        require_ray("backend='ray'")
    check_int(batch_size, "batch_size", allow_none=True)
    check_int(retries, "retries", low=0)
    resources = {"num_cpus": 1} if resources is None else resources
    task_options(resources)
    n, items = items_of(items)
    job: Job
    if fn is capture_to_disk:
        job, columns = capture_job(model, options, None if isinstance(items, list) else n)
    else:
        job, columns = job_for(fn, model, options), None
    lists = isinstance(items, list) and batch_size is None
    batches = [
        (s, items[s.start] if lists else cut(items, s.start, s.stop))
        for s in spans(n, batch_size or 1)
    ]
    if isinstance(job, Capture):
        job.start()
    logger.info("sweep: %d items in %d batches on %s", n, len(batches), backend)
    if backend == "ray":
        outcome = run_ray(job, model, batches, progress, resources=resources, retries=retries)
    else:
        outcome = run_local(job, model, batches, progress)
    parts = tuple(sorted((o for o in outcome if isinstance(o, Part)), key=lambda p: p.start))
    failures = tuple(sorted((o for o in outcome if isinstance(o, Failure)), key=lambda f: f.start))
    if isinstance(job, Capture):
        return job.store([p.value for p in parts], failures, columns)
    result = SweepResult(parts, failures, n)
    if failures:
        raise SweepError(failures, result)
    return result
